//! An IOAT function as an engine device: probing its registers for channels and capabilities,
//! and the per-channel backend whose resources (ring, completion word, a started hardware
//! channel) exist exactly while the engine holds a reference to the channel.
//!
//! The same code serves a real function (registers from a mapped BAR, configuration space from
//! sysfs) and the emulated device (its register and configuration models).

use std::any::Any;
use std::sync::{Arc, Mutex};

use crate::sync::lock_std;

use super::channel::{ChannelConfig, ChannelError, Identity};
use super::core::ChannelCore;
use crate::engine::{BackendError, ChannelBackend, DeviceSpec};
use crate::mem::DmaPool;
use crate::mmio::RegisterWindow;
use crate::pci::ConfigSpace;
use crate::{CapMask, Capability};

struct Function {
    registers: Arc<dyn RegisterWindow>,
    config_space: Option<Arc<dyn ConfigSpace>>,
    pool: DmaPool,
    channel_config: ChannelConfig,
}

/// A probed IOAT function, ready to register with an engine.
pub struct IoatDevice {
    name: String,
    capabilities: CapMask,
    channels: Vec<Arc<IoatChannelBackend>>,
}

impl IoatDevice {
    /// Reads the function's version, channel count and capabilities. Copy is always offered;
    /// fill when DMACAPABILITY says so.
    pub fn probe(
        name: impl Into<String>,
        registers: Arc<dyn RegisterWindow>,
        config_space: Option<Arc<dyn ConfigSpace>>,
        pool: DmaPool,
        channel_config: ChannelConfig,
    ) -> Result<IoatDevice, ChannelError> {
        let identity = Identity::read(&*registers)?;
        let count = identity.channels;
        if count == 0 {
            return Err(ChannelError::NoSuchChannel { index: 0, count });
        }
        let mut capabilities = CapMask::MEMCPY;
        if identity.fill_supported {
            capabilities = capabilities.with(Capability::Fill);
        }
        let function = Arc::new(Function {
            registers,
            config_space,
            pool,
            channel_config,
        });
        let channels = (0..count)
            .map(|index| {
                Arc::new(IoatChannelBackend {
                    function: Arc::clone(&function),
                    index,
                    channel: Mutex::new(None),
                    earlier: Mutex::new(crate::OpCounts::default()),
                })
            })
            .collect();
        Ok(IoatDevice {
            name: name.into(),
            capabilities,
            channels,
        })
    }

    /// The capabilities probed.
    pub fn capabilities(&self) -> CapMask {
        self.capabilities
    }

    /// The channel backends, in channel order.
    pub fn channels(&self) -> &[Arc<IoatChannelBackend>] {
        &self.channels
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
}

/// One IOAT channel behind the engine's reference counting: started on the first reference,
/// shut down and its memory freed on the last.
pub struct IoatChannelBackend {
    function: Arc<Function>,
    index: usize,
    channel: Mutex<Option<Arc<ChannelCore>>>,
    /// What the channel's earlier starts completed, so counts outlive each core.
    earlier: Mutex<crate::OpCounts>,
}

impl IoatChannelBackend {
    /// The channel's index in its function.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The started channel, if the engine holds a reference to it. The data path's clients
    /// take it once, when the table gives them the channel, never per operation.
    pub fn core(&self) -> Option<Arc<ChannelCore>> {
        lock_std(&self.channel).clone()
    }

    /// Whether the channel is started (the engine holds a reference to it).
    pub fn is_started(&self) -> bool {
        lock_std(&self.channel).is_some()
    }
}

impl ChannelBackend for IoatChannelBackend {
    fn allocate_resources(&self) -> Result<(), BackendError> {
        let f = &self.function;
        let channel = ChannelCore::start(
            Arc::clone(&f.registers),
            f.config_space.clone(),
            self.index,
            &f.pool,
            f.channel_config,
        )?;
        *lock_std(&self.channel) = Some(channel);
        Ok(())
    }

    fn free_resources(&self) {
        // Shutting down resets the channel so the device stops reading the ring and refuses
        // later submits; the ring and completion word go back to the pool with the last
        // handle (normally this one: a client lets go of a channel once it neither follows a
        // table naming it nor has operations there, and then holds no engine reference).
        if let Some(core) = lock_std(&self.channel).take() {
            core.shut_down();
            let mut earlier = lock_std(&self.earlier);
            *earlier = *earlier + core.completed();
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn begin_removal(&self, surprise: bool) {
        if let Some(core) = self.core() {
            if surprise {
                core.remove();
            } else {
                core.begin_draining();
            }
        }
    }

    fn in_flight(&self) -> u64 {
        self.core()
            .map_or(0, |core| u64::from(core.in_flight_descriptors()))
    }

    fn fail_in_flight(&self) {
        if let Some(core) = self.core() {
            core.remove();
        }
    }

    fn completed(&self) -> crate::OpCounts {
        let current = self.core().map(|core| core.completed()).unwrap_or_default();
        *lock_std(&self.earlier) + current
    }

    fn is_present(&self) -> bool {
        self.function
            .registers
            .read8(crate::ioat::spec::device::CBVER)
            != u8::MAX
    }
}
