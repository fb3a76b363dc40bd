//! What the engine knows of a device and its channels, and the hook a backend implements.
//!
//! The engine core is bookkeeping: it never touches hardware. A backend (the IOAT driver, the
//! emulator, or [`NullChannel`] for tests and benchmarks) hands the engine one
//! [`ChannelBackend`] per channel; the engine calls `allocate_resources` when a channel gains its
//! first holder and `free_resources` when it loses its last, both under the engine's control
//! lock, so a backend hook must not call back into the engine.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::CapMask;

/// Engine-wide identifier of a registered device. Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A channel: its device and its position in the device's channel list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    /// The device the channel belongs to.
    pub device: DeviceId,
    /// The channel's position in its device's list, from 0.
    pub index: u16,
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.device, self.index)
    }
}

/// The error a backend reports when it cannot set a channel up.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// The per-channel hooks a backend gives the engine.
pub trait ChannelBackend: Send + Sync + 'static {
    /// Sets the channel up (rings, completion word, hardware reset) for its first holder.
    /// On error the channel stays unreferenced and the engine skips it.
    fn allocate_resources(&self) -> Result<(), BackendError>;

    /// Tears down what `allocate_resources` set up; called when the last holder lets go and no
    /// reader can still see the channel.
    fn free_resources(&self);

    /// The backend's concrete type, for the data path to reach its driver.
    fn as_any(&self) -> &dyn Any;

    /// A removal begins: refuse new work ("device removed") and let what was accepted run
    /// on. `surprise`: the device is gone already, so stop at once and fail everything with
    /// "device removed". Default: nothing to do.
    fn begin_removal(&self, surprise: bool) {
        let _ = surprise;
    }

    /// Descriptors (or operations) accepted and not yet completed. Default: 0.
    fn in_flight(&self) -> u64 {
        0
    }

    /// The removal's drain time is up: stop the device so whatever it has not finished
    /// completes with "device removed". Default: nothing to do.
    fn fail_in_flight(&self) {}

    /// Operations completed on the channel over its life. Default: none.
    fn completed(&self) -> OpCounts {
        OpCounts::default()
    }

    /// Whether the device still answers (a removed PCI function reads all-ones). Default:
    /// always.
    fn is_present(&self) -> bool {
        true
    }
}

/// Operations a channel completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Successfully.
    pub ok: u64,
    /// With any error.
    pub failed: u64,
    /// Of those, with "device removed".
    pub removed: u64,
    /// Bytes the channel moved (descriptors that completed successfully).
    pub bytes: u64,
}

impl std::ops::Add for OpCounts {
    type Output = OpCounts;
    fn add(self, other: OpCounts) -> OpCounts {
        OpCounts {
            ok: self.ok + other.ok,
            failed: self.failed + other.failed,
            removed: self.removed + other.removed,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// A channel as table readers and private holders see it.
pub struct Channel {
    id: ChannelId,
    name: String,
    backend: Arc<dyn ChannelBackend>,
}

impl Channel {
    pub(crate) fn new(id: ChannelId, name: String, backend: Arc<dyn ChannelBackend>) -> Self {
        Channel { id, name, backend }
    }

    /// The channel's id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// `<device name>/chan<index>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend behind the channel.
    pub fn backend(&self) -> &dyn ChannelBackend {
        &*self.backend
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
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

    fn as_any(&self) -> &dyn Any {
        self
    }
}
