//! The device seam: what every DMA backend offers the engine and the client, whatever its
//! hardware looks like.
//!
//! - [`op`]: operations as every backend and the client see them: [`OpFlags`], [`Completion`],
//!   [`OpError`], [`SubmitError`];
//! - [`ChannelBackend`]: the per-channel hooks the engine's reference counting and removal
//!   call ([`DeviceSpec`] registers a device's channels with the engine);
//! - [`ChannelQueue`] and [`QueueHandle`]: a started channel, and one submitter's handle on it:
//!   what the client drives without knowing which backend is behind it;
//! - underneath, crate-private, the pieces every ring-based backend builds on: the generic
//!   ring with its retire side (`ring`), lock-free slot reservation and the doorbell combiner
//!   (`reserve`), completion routes and the retire token (`route`), and the single-producer,
//!   single-consumer ring that carries each completion home (`spsc`).
//!
//! # Why the queue trait looks the way it does
//!
//! It has to fit two quite different engines (`reference/dsa.md` §14):
//!
//! | need | IOAT | DSA |
//! |---|---|---|
//! | build | descriptors in a host ring, split at XFERCAP and IOVA breaks | 64-byte descriptors in host memory, a batch descriptor per doorbell |
//! | ring | one 16-bit DMACOUNT write per batch | a MOVDIR64B / ENQCMD portal write per batch |
//! | completion | one status word naming the last descriptor done, in order | a 32-byte record per descriptor or batch, out of order across engines |
//! | errors | the channel halts; the driver resets and restarts after the failed one | a status per descriptor; the others go on; only the device halts |
//! | back-pressure | ring indices | WQ credits (a dedicated WQ drops what overflows) |
//! | removal | registers read all-ones | WQ disabled, portal writes dropped, VFIO request |
//!
//! So the trait does not expose slots, doorbell counts or completion words. A submitter's
//! [`QueueHandle`] builds a whole operation in one call (however many descriptors it takes),
//! rings once per batch, and polls for completions of *its own* operations in whatever order
//! the device finishes them; the queue reports its [`Health`], how much is in flight, and
//! carries out the two halves of a removal. Owned and shared use are part of the contract
//! because both engines profit from knowing a submitter is alone: no atomic on the per-op
//! path (IOAT ring indices, DSA WQ credits).

mod backend;
pub mod op;
pub(crate) mod plan;
pub(crate) mod reserve;
pub(crate) mod ring;
pub(crate) mod route;
pub(crate) mod spsc;

use std::fmt;
use std::sync::Arc;

pub use backend::{BackendError, ChannelBackend, DeviceSpec, NullChannel};
pub use op::{Completion, OpError, OpFlags, SubmitError};

/// Submitters that may be attached to one channel at once (each has a completion route).
pub const MAX_CLIENTS_PER_CHANNEL: usize = 256;

/// Where a channel stands, readable by submitters without any lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Accepting and running work.
    Running = 0,
    /// Failed and could not be recovered: nothing more is accepted, and what was in flight
    /// completes with [`OpError::ChannelFailed`].
    Failed = 1,
    /// The device is gone: what was in flight completes with [`OpError::DeviceRemoved`].
    Removed = 2,
    /// Shut down by its backend (the engine freed it); nothing more may be submitted.
    Closed = 3,
    /// Being removed: new work is refused ("device removed"), work already accepted runs on.
    Draining = 4,
}

impl Health {
    /// Whether the channel still works through what it has accepted.
    #[inline]
    pub fn works(self) -> bool {
        matches!(self, Health::Running | Health::Draining)
    }

    /// The value stored in an atomic byte.
    #[inline]
    pub(crate) fn from_u8(value: u8) -> Health {
        match value {
            0 => Health::Running,
            1 => Health::Failed,
            2 => Health::Removed,
            3 => Health::Closed,
            _ => Health::Draining,
        }
    }

    /// Why a submit to a channel in this state is refused, if it is.
    #[inline]
    pub fn refusal(self) -> Option<SubmitError> {
        match self {
            Health::Running => None,
            Health::Removed | Health::Draining => Some(SubmitError::DeviceRemoved),
            Health::Failed | Health::Closed => Some(SubmitError::ChannelFailed),
        }
    }
}

/// What a channel has done: the one statistics type of the channel level, the same for every
/// backend, summed over the channel's starts by its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Operations completed successfully.
    pub ops_ok: u64,
    /// Operations completed with an error.
    pub ops_failed: u64,
    /// Of those, with [`OpError::DeviceRemoved`].
    pub ops_removed: u64,
    /// Bytes moved by operations that succeeded.
    pub bytes: u64,
    /// Descriptors the device finished (or the channel gave up on), null ones included.
    pub descriptors: u64,
    /// Doorbell writes.
    pub doorbells: u64,
    /// Error recoveries (IOAT: halt, reset, restart).
    pub recoveries: u64,
}

impl std::ops::Add for ChannelStats {
    type Output = ChannelStats;
    fn add(self, other: ChannelStats) -> ChannelStats {
        ChannelStats {
            ops_ok: self.ops_ok + other.ops_ok,
            ops_failed: self.ops_failed + other.ops_failed,
            ops_removed: self.ops_removed + other.ops_removed,
            bytes: self.bytes + other.bytes,
            descriptors: self.descriptors + other.descriptors,
            doorbells: self.doorbells + other.doorbells,
            recoveries: self.recoveries + other.recoveries,
        }
    }
}

/// A started channel, as every submitter of it shares it. A backend hands it out through
/// [`ChannelBackend::queue`] while the engine holds a reference to the channel.
///
/// Each method exists for one caller:
///
/// - [`attach`](ChannelQueue::attach): a client starts submitting to the channel (the table
///   gave it the channel); it gets its own handle, whose completions come back to it alone;
/// - [`attached`](ChannelQueue::attached): the client may own the channel only while it is
///   the one submitter attached;
/// - [`health`](ChannelQueue::health): submitters refuse work early, the dump reports it;
/// - [`in_flight`](ChannelQueue::in_flight), [`drain`](ChannelQueue::drain) and
///   [`remove`](ChannelQueue::remove): the two halves of a removal, run by the engine through
///   the channel's backend (refuse new work and let accepted work run; then stop the device
///   so the rest completes with "device removed");
/// - [`stats`](ChannelQueue::stats): the engine's per-channel statistics.
pub trait ChannelQueue: Send + Sync + fmt::Debug {
    /// A new submitter whose completions go to a ring of at least `completion_ring` entries.
    /// The handle starts in shared mode. `None` when every completion route is taken
    /// ([`MAX_CLIENTS_PER_CHANNEL`]).
    fn attach(self: Arc<Self>, completion_ring: usize) -> Option<Box<dyn QueueHandle>>;

    /// Submitters attached now. Reading 1 after one's own attach means every earlier
    /// submitter's use of the queue happened before (acquire).
    fn attached(&self) -> u32;

    /// Where the channel stands.
    fn health(&self) -> Health;

    /// Descriptors (or operations) accepted and not yet completed.
    fn in_flight(&self) -> u64;

    /// An orderly removal begins: refuse new work ("device removed") and let what was
    /// accepted run on.
    fn drain(&self);

    /// The device is gone, or its work did not drain in time: stop it, so whatever it has not
    /// finished completes with "device removed" at its submitters' next polls.
    fn remove(&self);

    /// What this start of the channel has done.
    fn stats(&self) -> ChannelStats;
}

/// One submitter's handle on a [`ChannelQueue`]: builds operations, rings the doorbell,
/// and collects the completions of its own operations.
///
/// A handle is either the queue's **owner** (the only submitter, so it builds, rings and
/// retires with plain loads and stores) or one of several **sharers** (slots are reserved
/// atomically, and whoever polls retires for everybody and routes each completion home).
/// It starts shared; the client makes it owned only when the per-CPU table gives the channel
/// to its CPU alone and nobody else is attached, which is why [`QueueHandle::own`] is
/// `unsafe`.
pub trait QueueHandle: Send {
    /// Queues a copy of `len` bytes from `src` to `dst` (virtual addresses of DMA memory).
    /// An operation longer than one descriptor is split but completes once.
    ///
    /// # Safety
    ///
    /// Both buffers stay allocated, and nothing reads `dst` or writes either buffer, until
    /// the operation's completion has been returned by [`QueueHandle::poll`].
    unsafe fn copy(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError>;

    /// Queues a fill of `len` bytes at `dst` with the 64-bit `pattern` repeated: byte `i`
    /// gets byte `i % 8` of the pattern, little-endian.
    ///
    /// # Safety
    ///
    /// As for [`QueueHandle::copy`], for `dst`.
    unsafe fn fill(
        &mut self,
        dst: *mut u8,
        pattern: u64,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError>;

    /// Queues a compare of the `len` bytes at `a` and `b`. The completion's
    /// [`value`](Completion::value) is 0 when they are equal, else 1 + the offset of the first
    /// byte that differs ([`Completion::mismatch_at`]). A compare longer than one descriptor is
    /// split; the first difference in piece order wins, and it completes once.
    ///
    /// A queue whose device lacks the operation refuses it with
    /// [`SubmitError::Unsupported`], building nothing (so do the three after it).
    ///
    /// # Safety
    ///
    /// Both buffers stay allocated, and nothing writes either, until the operation's
    /// completion has been returned by [`QueueHandle::poll`].
    unsafe fn compare(
        &mut self,
        a: *const u8,
        b: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError>;

    /// Queues a CRC-32C of the `len` bytes at `src`, continuing from `initial` (the CRC-32C
    /// of the data before them; 0 to start). The completion's value is the standard CRC-32C,
    /// `!crc32c_raw(!initial, data)` ([`op::crc32c`]). An operation longer than one
    /// descriptor is split, each piece's raw CRC seeding the next, and completes once.
    ///
    /// # Safety
    ///
    /// `src` stays allocated, and nothing writes it, until the completion has been returned.
    unsafe fn crc32c(
        &mut self,
        src: *const u8,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError>;

    /// Queues a copy of `len` bytes from `src` to `dst` that also computes the CRC-32C of the
    /// data, as [`QueueHandle::crc32c`] does.
    ///
    /// # Safety
    ///
    /// As for [`QueueHandle::copy`].
    unsafe fn copy_crc(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError>;

    /// Queues a copy of `len` bytes from `src` to both `dst1` and `dst2`. No two of the three
    /// buffers may overlap ([`SubmitError::InvalidArgument`]).
    ///
    /// # Safety
    ///
    /// As for [`QueueHandle::copy`], for both destinations.
    unsafe fn dualcast(
        &mut self,
        dst1: *mut u8,
        dst2: *mut u8,
        src: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError>;

    /// Tells the device about everything queued since the last call: one doorbell per batch.
    fn submit(&mut self);

    /// One-descriptor operations that could be queued now without a refusal.
    fn capacity(&self) -> u32;

    /// Collects finished operations of this handle into `out` and returns how many it wrote;
    /// the rest come with later calls. Retires for every submitter of the queue when it can
    /// (an owner always does; a sharer when no other poller is at it).
    fn poll(&mut self, out: &mut [Completion]) -> usize;

    /// Collects only what other pollers have already retired for this handle, never
    /// touching the retire side: for a handle whose queue may still have an owner that has
    /// not yet seen it arrive.
    fn collect(&mut self, out: &mut [Completion]) -> usize;

    /// Operations that may be in flight through this handle at once: the size of its
    /// completion ring (at least what `attach` asked for).
    fn completion_capacity(&self) -> usize;

    /// The queue.
    fn queue(&self) -> &dyn ChannelQueue;

    /// Whether this handle owns the queue.
    fn is_owner(&self) -> bool;

    /// Leaves owned mode: everything built is announced first.
    fn share(&mut self);

    /// Enters owned mode.
    ///
    /// # Safety
    ///
    /// No other submitter builds into or retires from the queue until this handle leaves
    /// owned mode (or is detached); in particular none has an unpublished reservation.
    unsafe fn own(&mut self);

    /// Gives the handle's completion route back, so another submitter may use it.
    ///
    /// # Safety
    ///
    /// Every operation submitted through this handle has had its completion returned by
    /// [`QueueHandle::poll`] or [`QueueHandle::collect`].
    unsafe fn detach(self: Box<Self>);
}
