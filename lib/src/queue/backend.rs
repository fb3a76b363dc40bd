//! The hooks a backend gives the engine for each channel, and the description of a device it
//! registers.
//!
//! The engine core is bookkeeping: it never touches hardware. A backend (the IOAT driver, the
//! software engine, or [`NullChannel`] for tests and benchmarks of the table) hands the engine
//! one [`ChannelBackend`] per channel; the engine calls `allocate_resources` when a channel
//! gains its first holder and `free_resources` when it loses its last, both under the engine's
//! control lock, so a backend hook must not call back into the engine. While the channel is
//! allocated, [`ChannelBackend::queue`] hands the data path its [`ChannelQueue`].

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{ChannelQueue, ChannelStats};
use crate::capability::CapMask;

/// The error a backend reports when it cannot set a channel up.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// The per-channel hooks a backend gives the engine. The removal hooks default to acting on
/// the channel's current [`ChannelQueue`], if it has one.
pub trait ChannelBackend: Send + Sync + 'static {
    /// Sets the channel up (rings, completion memory, hardware reset) for its first holder.
    /// On error the channel stays unreferenced and the engine skips it.
    fn allocate_resources(&self) -> Result<(), BackendError>;

    /// Tears down what `allocate_resources` set up; called when the last holder lets go and no
    /// reader can still see the channel.
    fn free_resources(&self);

    /// The started channel, while the engine holds a reference to it: what the data path
    /// submits to. `None` for a backend with no data path (bookkeeping only), or a channel
    /// not started.
    fn queue(&self) -> Option<Arc<dyn ChannelQueue>>;

    /// The backend's concrete type, for tests and tools that inspect a particular backend.
    fn as_any(&self) -> &dyn Any;

    /// A removal begins: refuse new work ("device removed") and let what was accepted run
    /// on. `surprise`: the device is gone already, so stop at once and fail everything with
    /// "device removed".
    fn begin_removal(&self, surprise: bool) {
        if let Some(queue) = self.queue() {
            if surprise {
                queue.remove();
            } else {
                queue.drain();
            }
        }
    }

    /// Descriptors (or operations) accepted and not yet completed.
    fn in_flight(&self) -> u64 {
        self.queue().map_or(0, |queue| queue.in_flight())
    }

    /// The removal's drain time is up: stop the device so whatever it has not finished
    /// completes with "device removed".
    fn fail_in_flight(&self) {
        if let Some(queue) = self.queue() {
            queue.remove();
        }
    }

    /// What the channel has done over its life (every start of it).
    fn stats(&self) -> ChannelStats {
        self.queue().map(|queue| queue.stats()).unwrap_or_default()
    }

    /// Whether the device still answers (a removed PCI function reads all-ones). Default:
    /// always.
    fn is_present(&self) -> bool {
        true
    }
}

/// What a backend registers: a named device, its capabilities and its channels in order.
pub struct DeviceSpec {
    /// Human-readable name, used in channel names and dumps.
    pub name: String,
    /// The operations every channel of the device performs.
    pub capabilities: CapMask,
    /// An always-private device never enters the per-CPU table; its channels are only
    /// handed out by [`crate::Engine::request_channel`].
    pub private: bool,
    /// The channels, in the order the table walk visits them.
    pub channels: Vec<Arc<dyn ChannelBackend>>,
}

impl DeviceSpec {
    /// A public device.
    pub fn new(
        name: impl Into<String>,
        capabilities: CapMask,
        channels: Vec<Arc<dyn ChannelBackend>>,
    ) -> Self {
        DeviceSpec {
            name: name.into(),
            capabilities,
            private: false,
            channels,
        }
    }

    /// Marks the device always-private.
    #[must_use]
    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }
}

/// A backend with no hardware behind it: it only counts allocations, and can be told to
/// refuse them. For tests, benchmarks of the engine and examples of the table.
#[derive(Debug, Default)]
pub struct NullChannel {
    allocations: AtomicU64,
    frees: AtomicU64,
    allocated: AtomicBool,
    refuse: AtomicBool,
}

impl NullChannel {
    /// A channel that accepts allocations.
    pub fn new() -> Arc<NullChannel> {
        Arc::new(NullChannel::default())
    }

    /// `count` channels as a device's channel list.
    pub fn many(count: usize) -> Vec<Arc<dyn ChannelBackend>> {
        (0..count)
            .map(|_| NullChannel::new() as Arc<dyn ChannelBackend>)
            .collect()
    }

    /// Makes later allocations fail (true) or succeed (false).
    pub fn refuse_allocations(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Whether resources are currently allocated.
    pub fn is_allocated(&self) -> bool {
        self.allocated.load(Ordering::Acquire)
    }

    /// Successful allocations so far.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Frees so far.
    pub fn frees(&self) -> u64 {
        self.frees.load(Ordering::Relaxed)
    }
}

impl ChannelBackend for NullChannel {
    fn allocate_resources(&self) -> Result<(), BackendError> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err("allocation refused by NullChannel".into());
        }
        if self.allocated.swap(true, Ordering::AcqRel) {
            return Err("NullChannel allocated twice without a free".into());
        }
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn free_resources(&self) {
        let was_allocated = self.allocated.swap(false, Ordering::AcqRel);
        debug_assert!(was_allocated, "NullChannel freed while not allocated");
        self.frees.fetch_add(1, Ordering::Relaxed);
    }

    fn queue(&self) -> Option<Arc<dyn ChannelQueue>> {
        None
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
