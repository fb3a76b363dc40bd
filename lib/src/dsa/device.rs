//! A DSA device as an engine device: a channel per work queue, each started (WQ enabled,
//! ring and records allocated) exactly while the engine holds a reference to it.
//!
//! Two ways to get one. [`DsaDevice::probe`] takes the device's registers and portals (a VFIO
//! function, or the emulated device) and configures it itself; [`DsaDevice::from_queues`]
//! takes work queues someone else configured and enabled (the kernel's `idxd` driver through
//! accel-config, reached through `/dev/dsa`).

use std::any::Any;
use std::sync::Arc;

use super::control::{
    DsaLayout, DsaRegisters, DsaTimeouts, RegisterWq, WqControl, WqSettings, WqState,
};
use super::error::DsaError;
use super::portal::PortalWindow;
use super::queue::{DsaEngine, DsaQueueConfig};
use super::spec::{opcode, portal};
use crate::capability::{CapMask, Capability};
use crate::mem::DmaPool;
use crate::mmio::RegisterWindow;
use crate::pci::ConfigSpace;
use crate::queue::ring::QueueCell;
use crate::queue::{BackendError, ChannelBackend, ChannelQueue, ChannelStats, DeviceSpec};

/// How a DSA device is set up and its channels run.
#[derive(Clone, Copy, Debug, Default)]
pub struct DsaConfig {
    /// The WQs the driver configures (VFIO route and emulated device only).
    pub layout: DsaLayout,
    /// Each channel's settings.
    pub queue: DsaQueueConfig,
    /// Waits for commands.
    pub timeouts: DsaTimeouts,
}

/// One work queue as a channel sees it: who controls it, where its portal is, how it was set.
#[derive(Clone)]
pub struct WorkQueue {
    /// Enables, disables and reports on the WQ.
    pub control: Arc<dyn WqControl>,
    /// BAR2, or the one portal page the character device maps.
    pub portals: Arc<dyn PortalWindow>,
    /// Where in `portals` the WQ's portal is.
    pub portal_offset: usize,
    /// Its settings.
    pub settings: WqSettings,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("settings", &self.settings)
            .field("portals", &self.portals)
            .field("portal_offset", &self.portal_offset)
            .field("state", &self.control.state())
            .finish()
    }
}

/// A probed DSA device, ready to register with an engine.
pub struct DsaDevice {
    name: String,
    capabilities: CapMask,
    channels: Vec<Arc<DsaChannelBackend>>,
    registers: Option<Arc<DsaRegisters>>,
}

impl DsaDevice {
    /// Brings the device behind `registers` and `portals` up (bus mastering on, reset, groups
    /// and WQs programmed, device enabled) and makes a channel of each WQ.
    pub fn probe(
        name: impl Into<String>,
        registers: Arc<dyn RegisterWindow>,
        portals: Arc<dyn PortalWindow>,
        config_space: Option<Arc<dyn ConfigSpace>>,
        pool: DmaPool,
        config: DsaConfig,
    ) -> Result<DsaDevice, DsaError> {
        crate::mmio::check_addressing(&*registers, &pool).map_err(DsaError::Addressing)?;
        let device = Arc::new(DsaRegisters::open(
            registers,
            config_space.as_deref(),
            config.timeouts,
        )?);
        let settings = device.configure(&config.layout)?;
        let capabilities = capabilities_of(|op| device.identity().supports(op));
        let queues = settings
            .into_iter()
            .map(|settings| WorkQueue {
                control: Arc::new(RegisterWq {
                    device: Arc::clone(&device),
                    index: settings.index,
                }),
                portals: Arc::clone(&portals),
                portal_offset: portal::offset(settings.index as usize, portal::Kind::Unlimited),
                settings,
            })
            .collect();
        let mut dsa = DsaDevice::with_capabilities(name, queues, pool, config.queue, capabilities);
        dsa.registers = Some(device);
        Ok(dsa)
    }

    /// A device of work queues configured and enabled by someone else (the kernel route). It
    /// offers what every DSA 1.0 part does: copy, fill, compare, CRC-32C, copy with CRC and
    /// dualcast.
    pub fn from_queues(
        name: impl Into<String>,
        queues: Vec<WorkQueue>,
        pool: DmaPool,
        config: DsaQueueConfig,
    ) -> DsaDevice {
        let every = capabilities_of(|_| true);
        DsaDevice::with_capabilities(name, queues, pool, config, every)
    }

    fn with_capabilities(
        name: impl Into<String>,
        queues: Vec<WorkQueue>,
        pool: DmaPool,
        config: DsaQueueConfig,
        capabilities: CapMask,
    ) -> DsaDevice {
        let channels = queues
            .into_iter()
            .map(|wq| {
                Arc::new(DsaChannelBackend {
                    wq,
                    capabilities,
                    pool: pool.clone(),
                    config,
                    queue: QueueCell::default(),
                })
            })
            .collect();
        DsaDevice {
            name: name.into(),
            capabilities,
            channels,
            registers: None,
        }
    }

    /// The capabilities probed.
    pub fn capabilities(&self) -> CapMask {
        self.capabilities
    }

    /// The channel backends, one per WQ, in WQ order.
    pub fn channels(&self) -> &[Arc<DsaChannelBackend>] {
        &self.channels
    }

    /// The device's registers, when the driver configured it.
    pub fn registers(&self) -> Option<&Arc<DsaRegisters>> {
        self.registers.as_ref()
    }

    /// The description to register with an engine.
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec::new(
            self.name.clone(),
            self.capabilities,
            self.channels
                .iter()
                .map(|c| Arc::clone(c) as Arc<dyn ChannelBackend>)
                .collect(),
        )
    }

    /// Resets a device the driver configured, leaving every WQ disabled (after the engine let
    /// go of its channels). A kernel-route device is left as it is.
    pub fn shut_down(&self) {
        if let Some(registers) = &self.registers {
            registers.shut_down();
        }
    }
}

/// What a device offers, from the opcodes it supports.
fn capabilities_of(supports: impl Fn(u8) -> bool) -> CapMask {
    let mut caps = CapMask::EMPTY;
    if supports(opcode::MEMMOVE) {
        caps = caps.with(Capability::Memcpy);
    }
    for (op, cap) in [
        (opcode::MEMFILL, Capability::Fill),
        (opcode::COMPARE, Capability::Compare),
        (opcode::CRC_GEN, Capability::Crc32c),
        (opcode::COPY_CRC, Capability::CopyCrc),
        (opcode::DUALCAST, Capability::Dualcast),
    ] {
        if supports(op) {
            caps = caps.with(cap);
        }
    }
    caps
}

/// One DSA work queue behind the engine's reference counting.
pub struct DsaChannelBackend {
    wq: WorkQueue,
    capabilities: CapMask,
    pool: DmaPool,
    config: DsaQueueConfig,
    queue: QueueCell<DsaEngine>,
}

impl DsaChannelBackend {
    /// The WQ's settings.
    pub fn settings(&self) -> WqSettings {
        self.wq.settings
    }

    /// Whether the channel is started.
    pub fn is_started(&self) -> bool {
        self.queue.is_started()
    }

    /// Where the WQ stands.
    pub fn state(&self) -> WqState {
        self.wq.control.state()
    }
}

impl ChannelBackend for DsaChannelBackend {
    fn allocate_resources(&self) -> Result<(), BackendError> {
        self.queue.set(DsaEngine::start(
            Arc::clone(&self.wq.control),
            Arc::clone(&self.wq.portals),
            self.wq.portal_offset,
            &self.wq.settings,
            self.capabilities,
            &self.pool,
            self.config,
        )?);
        Ok(())
    }

    fn free_resources(&self) {
        self.queue.close();
    }

    fn queue(&self) -> Option<Arc<dyn ChannelQueue>> {
        self.queue.queue()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn stats(&self) -> ChannelStats {
        self.queue.stats()
    }

    fn is_present(&self) -> bool {
        self.wq.control.state() != WqState::Gone
    }
}
