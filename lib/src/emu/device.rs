//! The emulated device as a whole: its channels, its configuration space, its view of memory,
//! the fault switches that act on all of it, and its life cycle (registration with the shared
//! device thread in threaded mode, and a teardown after which it never touches memory again).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::channel::Channel;
use super::channel::Service;
use super::config::{ConfigModel, PciState};
use super::registers::{Bar0, GlobalRegisters};
use super::runtime::{self, Serve, Wake};
use super::{DeviceMemory, EmuConfig, EmuError, EmuMode, EmuStats, Fault, TraceEvent};
use crate::ioat::spec::{chan, dmacap, max_transfer};
use crate::mmio::RegisterWindow;
use crate::pci::ConfigSpace;

/// State shared by the register windows, the configuration space and the device thread.
pub(super) struct DeviceShared {
    pub(super) config: EmuConfig,
    pub(super) memory: Arc<dyn DeviceMemory>,
    pub(super) channels: Box<[Channel]>,
    pub(super) pci: PciState,
    pub(super) globals: GlobalRegisters,
    /// Surprise removal has begun: the engine starts nothing more.
    leaving: AtomicBool,
    /// Surprise removal is complete: the engine has stopped, and the bus reads all-ones. Set
    /// only after the engine is quiet, so a driver that sees all-ones may free what the device
    /// was using (release, paired with the acquire in `is_removed`).
    removed: AtomicBool,
    /// The owner dropped the device: the engine stops.
    detached: AtomicBool,
    tracing: AtomicBool,
    sequence: AtomicU64,
    trace: Mutex<Vec<TraceEvent>>,
    /// How to wake the device thread (threaded mode only).
    wake: Option<Arc<Wake>>,
}

impl DeviceShared {
    fn new(config: EmuConfig, memory: Arc<dyn DeviceMemory>, wake: Option<Arc<Wake>>) -> Self {
        let channels = (0..config.channels)
            .map(|index| Channel::new(index, memory.resolver()))
            .collect();
        DeviceShared {
            config,
            memory,
            channels,
            pci: PciState::new(config.cbver, config.device_id),
            globals: GlobalRegisters::default(),
            leaving: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            tracing: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            trace: Mutex::new(Vec::new()),
            wake,
        }
    }

    pub(super) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Whether the device must not start anything more (being removed, or dropped).
    pub(super) fn is_dead(&self) -> bool {
        self.leaving.load(Ordering::Acquire) || self.detached.load(Ordering::Acquire)
    }

    pub(super) fn bus_master(&self) -> bool {
        self.pci.bus_master()
    }

    /// Whether 64-bit registers need two 32-bit accesses on this version.
    pub(super) fn split_64(&self) -> bool {
        crate::ioat::spec::cbver::needs_split_64(self.config.cbver)
    }

    /// Whether a halted channel stays HALTED until CHANERR_INT is cleared: the parts before
    /// v3.3, and Skylake-SP whatever its CBVER says.
    pub(super) fn chanerr_int_holds_halt(&self) -> bool {
        self.split_64() || self.pci.device_id() == crate::ioat::spec::SKYLAKE_SP_DEVICE_ID
    }

    pub(super) fn max_transfer(&self) -> u64 {
        max_transfer(self.config.xfercap)
    }

    pub(super) fn dmacapability(&self) -> u32 {
        if self.config.fill {
            dmacap::FILL
        } else {
            0
        }
    }

    /// The channel whose block holds BAR offset `offset`, and the offset inside the block.
    pub(super) fn channel_at(&self, offset: usize) -> Option<(&Channel, usize)> {
        let index = (offset / chan::BLOCK_SIZE).checked_sub(1)?;
        Some((self.channels.get(index)?, offset % chan::BLOCK_SIZE))
    }

    /// Tells the device thread that a register write left it work.
    pub(super) fn notify(&self) {
        if let Some(wake) = &self.wake {
            wake.notify();
        }
    }

    /// Whether any channel has work for the device thread.
    pub(super) fn wants_service(&self) -> bool {
        !self.is_dead() && self.channels.iter().any(Channel::wants_service)
    }

    /// The next trace sequence number, or None while tracing is off.
    pub(super) fn trace_sequence(&self) -> Option<u64> {
        self.tracing
            .load(Ordering::Relaxed)
            .then(|| self.sequence.fetch_add(1, Ordering::Relaxed))
    }

    pub(super) fn record(&self, event: TraceEvent) {
        self.trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    /// Waits until no channel is in the middle of a descriptor; every later descriptor sees
    /// the flag the caller set before.
    fn quiesce(&self) {
        self.channels.iter().for_each(Channel::quiesce);
    }
}

impl Serve for DeviceShared {
    fn service(&self) -> Service {
        let (mut progress, mut waiting) = (false, false);
        for channel in self.channels.iter() {
            match channel.service(self) {
                Service::Progress => progress = true,
                Service::Waiting => waiting = true,
                Service::Idle => {}
            }
        }
        if progress {
            Service::Progress
        } else if waiting {
            Service::Waiting
        } else {
            Service::Idle
        }
    }

    fn wants_service(&self) -> bool {
        DeviceShared::wants_service(self)
    }
}

/// An emulated IOAT v3 PCI function: a BAR0 register window, a configuration space, and the
/// DMA engine behind them.
///
/// ```
/// use std::sync::Arc;
/// use dmaplane::emu::{EmuConfig, EmulatedDevice, HostBuffer, IdentityRanges};
/// use dmaplane::ioat::spec::{chan, channel_base, chansts, config, ctl, op, Descriptor};
///
/// let mut ring = HostBuffer::new(4096);
/// let base = ring.addr();
/// // SAFETY: `ring` outlives the device (declared first, dropped last) and is only touched
/// // while the device is idle.
/// let memory = unsafe { IdentityRanges::new(&[(base, ring.len())]) };
/// let device = EmulatedDevice::new(EmuConfig::default(), Arc::new(memory)).unwrap();
/// let (regs, pci) = (device.registers(), device.config_space());
/// let command = pci.read16(config::COMMAND).unwrap();
/// pci.write16(config::COMMAND, command | config::COMMAND_BUS_MASTER).unwrap();
///
/// // One null descriptor at the start of the page, completion word at offset 1024.
/// let null = Descriptor {
///     size: 8,
///     control: ctl::with_op(op::COPY, ctl::NULL | ctl::COMPLETION_UPDATE),
///     next: base,
///     ..Descriptor::default()
/// };
/// ring.write_descriptor(0, &null);
/// let ch = channel_base(0);
/// regs.write64(ch + chan::CHANCMP, base + 1024);
/// regs.write64(ch + chan::CHAINADDR, base);
/// assert_eq!(chansts::state(regs.read64(ch + chan::CHANSTS)), chansts::ARMED);
/// regs.write16(ch + chan::DMACOUNT, 1);
/// assert_eq!(ring.load_u64(1024), base | chansts::IDLE);
/// ```
pub struct EmulatedDevice {
    shared: Arc<DeviceShared>,
}

impl EmulatedDevice {
    /// Powers on a device with `config` that reaches host memory through `memory`.
    ///
    /// Every channel starts HALTED with count 0 and no error; PCI bus mastering starts off.
    pub fn new(
        config: EmuConfig,
        memory: Arc<dyn DeviceMemory>,
    ) -> Result<Arc<EmulatedDevice>, EmuError> {
        config.validate()?;
        let shared = match config.mode {
            EmuMode::Inline => Arc::new(DeviceShared::new(config, memory, None)),
            EmuMode::Threaded => {
                runtime::register(|wake| Arc::new(DeviceShared::new(config, memory, Some(wake))))?
            }
        };
        Ok(Arc::new(EmulatedDevice { shared }))
    }

    pub(super) fn shared(&self) -> &DeviceShared {
        &self.shared
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> &EmuConfig {
        &self.shared.config
    }

    /// BAR0, the 16 KiB register window; it keeps the device alive.
    pub fn registers(self: &Arc<Self>) -> Arc<dyn RegisterWindow> {
        Arc::new(Bar0 {
            device: Arc::clone(self),
        })
    }

    /// The PCI configuration space; it keeps the device alive.
    pub fn config_space(self: &Arc<Self>) -> Arc<dyn ConfigSpace> {
        Arc::new(ConfigModel {
            device: Arc::clone(self),
        })
    }

    /// Injects `fault`.
    pub fn inject(&self, fault: Fault) -> Result<(), EmuError> {
        let shared = &*self.shared;
        match fault {
            Fault::FailDescriptor {
                channel,
                nth,
                error,
            } => {
                if nth == 0 {
                    return Err(EmuError::InvalidFault("descriptors are counted from 1"));
                }
                if error == 0 {
                    return Err(EmuError::InvalidFault("a failure needs a CHANERR bit"));
                }
                self.channel(channel)?.fail_nth(nth, error);
            }
            Fault::Latency {
                channel,
                per_descriptor,
            } => self.channel(channel)?.set_latency(per_descriptor),
            Fault::Stall { channel } => self.channel(channel)?.set_stalled(shared, true),
            Fault::Unstall { channel } => self.channel(channel)?.set_stalled(shared, false),
            Fault::SurpriseRemoval => {
                shared.leaving.store(true, Ordering::SeqCst);
                // After this no descriptor is under way, and none starts again.
                shared.quiesce();
                // Only now does the bus go all-ones: the engine's last memory accesses happen
                // before any driver can observe the removal.
                shared.removed.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    fn channel(&self, channel: usize) -> Result<&Channel, EmuError> {
        self.shared
            .channels
            .get(channel)
            .ok_or(EmuError::NoSuchChannel {
                channel,
                channels: self.shared.channels.len(),
            })
    }

    /// A function-level reset (what `VFIO_DEVICE_RESET` does): every channel back at its
    /// power-on state, CHANERR and CHANERR_INT cleared, the work in progress dropped.
    /// Configuration space's header is the kernel's to save and restore around it.
    pub fn reset_function(&self) {
        for channel in &self.shared.channels {
            channel.power_on();
        }
        self.shared.pci.clear_chanerr_int();
    }

    /// Whether the device was surprise-removed.
    pub fn is_removed(&self) -> bool {
        self.shared.is_removed()
    }

    /// Starts or stops recording a [`TraceEvent`] per completed descriptor.
    pub fn enable_trace(&self, on: bool) {
        self.shared.tracing.store(on, Ordering::Relaxed);
    }

    /// The events recorded so far, oldest first, leaving the record empty.
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        std::mem::take(
            &mut *self
                .shared
                .trace
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Per-channel counters.
    pub fn stats(&self) -> Vec<EmuStats> {
        self.shared.channels.iter().map(Channel::stats).collect()
    }
}

impl Drop for EmulatedDevice {
    fn drop(&mut self) {
        // The owner may free the memory it mapped as soon as this returns: stop the engine on
        // this device first, then let the device thread forget it.
        self.shared.detached.store(true, Ordering::SeqCst);
        self.shared.quiesce();
        if self.shared.config.mode == EmuMode::Threaded {
            runtime::deregister(&self.shared);
        }
    }
}

impl std::fmt::Debug for EmulatedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedDevice")
            .field("config", &self.shared.config)
            .field("removed", &self.shared.is_removed())
            .finish()
    }
}
