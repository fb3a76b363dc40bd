//! An IOAT function as an engine device: probing its registers for channels and capabilities,
//! and the per-channel backend whose resources (ring, completion word, a started hardware
//! channel) exist exactly while the engine holds a reference to the channel.
//!
//! The same code serves a real function (registers from a mapped BAR, configuration space from
//! sysfs) and the emulated device (its register and configuration models).

use std::any::Any;
use std::sync::Arc;

use super::channel::IoatConfig;
use super::error::IoatError;
use super::function::{bring_up, check_addressing};
use super::queue::IoatEngine;
use crate::capability::{CapMask, Capability};
use crate::mem::DmaPool;
use crate::mmio::RegisterWindow;
use crate::pci::ConfigSpace;
use crate::queue::ring::QueueCell;
use crate::queue::{BackendError, ChannelBackend, ChannelQueue, ChannelStats, DeviceSpec};

struct Function {
    registers: Arc<dyn RegisterWindow>,
    config_space: Option<Arc<dyn ConfigSpace>>,
    pool: DmaPool,
    channel_config: IoatConfig,
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
        channel_config: IoatConfig,
    ) -> Result<IoatDevice, IoatError> {
        check_addressing(&*registers, &pool)?;
        let identity = bring_up(&*registers, config_space.as_deref())?;
        let count = identity.channels;
        if count == 0 {
            return Err(IoatError::NoSuchChannel { index: 0, count });
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
                    queue: QueueCell::default(),
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
    queue: QueueCell<IoatEngine>,
}

impl IoatChannelBackend {
    /// The channel's index in its function.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the channel is started (the engine holds a reference to it).
    pub fn is_started(&self) -> bool {
        self.queue.is_started()
    }
}

impl ChannelBackend for IoatChannelBackend {
    fn allocate_resources(&self) -> Result<(), BackendError> {
        let f = &self.function;
        self.queue.set(IoatEngine::start(
            Arc::clone(&f.registers),
            f.config_space.clone(),
            self.index,
            &f.pool,
            f.channel_config,
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
        self.function.registers.read8(super::spec::device::CBVER) != u8::MAX
    }
}
