//! The half of a ring-based channel that does not depend on the device: slot indices shared by
//! producers and the retirer, per-slot bookkeeping, the retire side (delivering completions,
//! abandoning work), the channel's health and statistics, and the handle every submitter
//! holds. A backend plugs in as a [`RingEngine`]: how an operation becomes descriptors, how the
//! device is told, and how far it got. IOAT (`ioat/queue.rs`) and the software engine
//! (`soft/`) are the two.
//!
//! A ring is used in one of two ways, chosen by the client:
//!
//! - **owned**: one handle builds, rings and retires. Its indices are advanced with plain loads
//!   and stores, and it retires without the token: no atomic read-modify-write at all.
//! - **shared**: producers reserve slots with [`SlotReservation`], publish in ring order and
//!   ring through the [`Doorbell`] combiner; any of them may retire while holding the
//!   [`RetireToken`], delivering each completion through [`Routes`] to the handle that
//!   submitted it.
//!
//! The two never overlap on one ring; the client's migration protocol (grace periods of the
//! per-CPU table) guarantees it, which is why entering owned mode is `unsafe`.
//!
//! # Operations that compute a value
//!
//! Compare, CRC-32C and copy with CRC end with a value ([`Completion::value`]). The value is
//! not part of the per-slot bookkeeping ([`SlotMeta`] stays as small as copies and fills need
//! it): a backend finds it at retire time where its device reported it (a DSA completion
//! record, the software engine's slot) and hands it over with the operation's last slot
//! through [`Retirer::retire_valued`]. [`Retirer::retire`] is the same with value 0, which is
//! what copies, fills and dualcasts complete with.
//!
//! An operation split into several descriptors completes once, so the pieces must combine:
//! for a CRC the raw CRC of piece `k` seeds piece `k + 1` (the first is seeded with
//! `!initial`, the last one's raw result is inverted), and for a compare the first piece that
//! finds a difference decides, its offset counted from the operation's start. A device that
//! can chain (DSA: the CRC seed of a descriptor) builds one descriptor per piece; one that
//! cannot carries the running state in its retire side, as the software engine does.

mod producer;
mod queue;
mod retire;

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crossbeam_utils::CachePadded;

pub(crate) use producer::Producer;
pub(crate) use queue::{QueueCell, RingHandle, RingQueue};
pub(crate) use retire::{Retirer, Sink};

use super::reserve::{Doorbell, SlotReservation};
use super::route::{RetireToken, Routes};
use super::{ChannelStats, Completion, Health, OpFlags, SubmitError, MAX_CLIENTS_PER_CHANNEL};
use crate::capability::Capability;

/// One operation as a submitter asks for it, before any backend has planned it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// `len` bytes from `src` to `dst` (virtual addresses).
    Copy { dst: usize, src: usize, len: usize },
    /// `len` bytes at `dst`, byte `i` = byte `i % 8` of `pattern` (little-endian).
    Fill {
        dst: usize,
        pattern: u64,
        len: usize,
    },
    /// Compare `len` bytes at `a` and `b`; the value says where they first differ.
    Compare { a: usize, b: usize, len: usize },
    /// CRC-32C of `len` bytes at `src`, continuing from the standard CRC `initial`.
    Crc32c {
        src: usize,
        len: usize,
        initial: u32,
    },
    /// `len` bytes from `src` to `dst`, and the CRC-32C of them continuing from `initial`.
    CopyCrc {
        dst: usize,
        src: usize,
        len: usize,
        initial: u32,
    },
    /// `len` bytes from `src` to both `dst1` and `dst2` (no two of them overlapping).
    Dualcast {
        dst1: usize,
        dst2: usize,
        src: usize,
        len: usize,
    },
    /// No data: a marker that completes in order.
    Null,
}

impl Op {
    /// The capability a device needs for the operation; `None` for a null operation, which
    /// every ring carries.
    pub(crate) fn capability(&self) -> Option<Capability> {
        match self {
            Op::Copy { .. } => Some(Capability::Memcpy),
            Op::Fill { .. } => Some(Capability::Fill),
            Op::Compare { .. } => Some(Capability::Compare),
            Op::Crc32c { .. } => Some(Capability::Crc32c),
            Op::CopyCrc { .. } => Some(Capability::CopyCrc),
            Op::Dualcast { .. } => Some(Capability::Dualcast),
            Op::Null => None,
        }
    }

    /// Bytes the operation covers (0 for a null one).
    pub(crate) fn len(&self) -> usize {
        match *self {
            Op::Copy { len, .. }
            | Op::Fill { len, .. }
            | Op::Compare { len, .. }
            | Op::Crc32c { len, .. }
            | Op::CopyCrc { len, .. }
            | Op::Dualcast { len, .. } => len,
            Op::Null => 0,
        }
    }
}

/// What a backend supplies to make a [`RingQueue`] of its device.
pub(crate) trait RingEngine: Send + Sync + Sized + 'static {
    /// The retire side's own state, touched only by the token holder or the owner.
    type RetireState: Default + Send;
    /// A submitter's own state (planning space, batching counters).
    type Scratch: Send;

    /// A new submitter's state.
    fn scratch(&self) -> Self::Scratch;

    /// Whether the device performs `cap` operations. Asked before every operation but copy
    /// (which every ring device performs) with a constant `cap`, so an implementation that
    /// matches on it inlines to a load: fill costs what it did when this was a `bool`.
    fn supports(&self, cap: Capability) -> bool;

    /// Builds `op` into the ring: claims its slots through `producer`, writes them and their
    /// bookkeeping (the last slot carries `user_data`), and publishes them. All or nothing.
    /// The channel accepted work when this was called; `op` has a non-zero length, and is a
    /// copy, a null operation, or one whose capability [`RingEngine::supports`] (a backend
    /// that is handed anything else refuses it with [`SubmitError::Unsupported`], building
    /// nothing).
    fn build(
        &self,
        ring: &Ring<Self::RetireState>,
        producer: &mut Producer,
        scratch: &mut Self::Scratch,
        op: Op,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError>;

    /// An owner is about to announce a batch ending with slot `last`.
    fn seal_batch(&self, scratch: &mut Self::Scratch, last: u32);

    /// Tells the device of every slot before `announce`. The caller holds the doorbell (or is
    /// the owner), and the channel worked when it looked.
    fn write_doorbell(&self, announce: u32);

    /// Retires what the device has finished. Called only while the channel works; a backend
    /// that finds the device gone or failed abandons through `retirer`.
    fn retire(&self, retirer: &mut Retirer<'_, Self::RetireState>, sink: &mut Sink<'_>);

    /// Whether the device is known not to touch the ring's buffers any more, so operations
    /// may be completed without their descriptors having run.
    fn device_stopped(&self) -> bool;

    /// Stops the device for good (reset it so it no longer reads the ring). The caller holds
    /// the doorbell exclusively and has just moved the channel out of working health.
    fn halt(&self);
}

/// Per-slot bookkeeping kept beside the device's ring, written by the slot's producer before
/// it publishes the slot and read by the retirer after.
#[derive(Clone, Copy, Default)]
pub(crate) struct SlotMeta {
    /// The slot holds the last descriptor of an operation.
    pub(crate) ends_op: bool,
    /// The route (submitter) the operation's completion goes to.
    pub(crate) route: u16,
    /// Bytes the slot's descriptor moves.
    pub(crate) bytes: u32,
    /// What the submitter passed in.
    pub(crate) user_data: u64,
}

struct MetaCell(UnsafeCell<SlotMeta>);

/// The retire side's state: the generic cursor and the backend's own part.
#[derive(Default)]
pub(crate) struct RetireSide<X> {
    /// Oldest slot not retired.
    pub(crate) tail: u32,
    /// The backend's state.
    pub(crate) engine: X,
}

/// Counters with a single writer each (the retirer, or the doorbell's holder), so they are
/// bumped with a load and a store: no read-modify-write.
#[derive(Default)]
struct StatCells {
    ops_ok: AtomicU64,
    ops_failed: AtomicU64,
    ops_removed: AtomicU64,
    bytes: AtomicU64,
    descriptors: AtomicU64,
    doorbells: AtomicU64,
    recoveries: AtomicU64,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

/// The device-independent state of a started ring channel, shared by its submitters.
pub(crate) struct Ring<X> {
    meta: Box<[MetaCell]>,
    mask: u32,
    /// Reserved and published indices (free-running).
    pub(crate) slots: SlotReservation,
    /// The doorbell's writer and the index last announced.
    pub(crate) doorbell: Doorbell,
    /// Slots before this index are retired; published for reservers.
    pub(crate) retired: CachePadded<crate::sync::AtomicU32>,
    token: RetireToken,
    retire: UnsafeCell<RetireSide<X>>,
    health: AtomicU8,
    stats: StatCells,
    pub(crate) routes: Routes<Completion>,
}

// SAFETY: the `UnsafeCell`s are accessed under the protocols documented on them: a slot's meta
// by its producer before publication and by the retirer after; the retire side by the token
// holder or the owner. Everything else is atomic or immutable.
unsafe impl<X: Send> Sync for Ring<X> {}
// SAFETY: as above; nothing in the ring is tied to a thread.
unsafe impl<X: Send> Send for Ring<X> {}

impl<X: Default> Ring<X> {
    /// A ring of `size` slots (a power of two), every index at 0.
    pub(crate) fn new(size: u32) -> Ring<X> {
        debug_assert!(size.is_power_of_two());
        Ring {
            meta: (0..size)
                .map(|_| MetaCell(UnsafeCell::new(SlotMeta::default())))
                .collect(),
            mask: size - 1,
            slots: SlotReservation::new(size, 0),
            doorbell: Doorbell::new(0),
            retired: CachePadded::new(crate::sync::AtomicU32::new(0)),
            token: RetireToken::new(),
            retire: UnsafeCell::new(RetireSide::default()),
            health: AtomicU8::new(Health::Running as u8),
            stats: StatCells::default(),
            routes: Routes::new(MAX_CLIENTS_PER_CHANNEL),
        }
    }
}

impl<X> Ring<X> {
    /// Slots.
    #[inline]
    pub(crate) fn size(&self) -> u32 {
        self.mask + 1
    }

    /// The channel's health.
    #[inline]
    pub(crate) fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Moves a working channel (running or draining) to `health`; a channel that stopped keeps
    /// its first cause. Returns whether this call stopped it. The caller holds the doorbell, so
    /// no producer that saw the channel working rings it afterwards.
    pub(crate) fn set_health(&self, health: Health) -> bool {
        let mut current = self.health();
        while current.works() {
            crate::sync::rmw::note();
            match self.health.compare_exchange(
                current as u8,
                health as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => current = Health::from_u8(now),
            }
        }
        false
    }

    /// Starts an orderly removal: new submits are refused with "device removed", work already
    /// accepted is still rung, run and completed.
    pub(crate) fn begin_draining(&self) {
        let _ = self.health.compare_exchange(
            Health::Running as u8,
            Health::Draining as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Slots free for reservation by a producer whose next slot is `head` (one slot always
    /// stays empty).
    #[inline]
    pub(crate) fn free_slots(&self, head: u32) -> u32 {
        // Acquire pairs with the retirer's release: its reads of the slots happen before we
        // overwrite them.
        let retired = self.retired.load(Ordering::Acquire);
        (self.size() - 1).saturating_sub(head.wrapping_sub(retired))
    }

    /// Records the bookkeeping of slot `index`.
    ///
    /// # Safety
    ///
    /// The caller owns slot `index` (reserved it, or is the owner building at its head) and
    /// has not yet published it.
    #[inline]
    pub(crate) unsafe fn set_meta(&self, index: u32, meta: SlotMeta) {
        // SAFETY: nobody else touches an unpublished slot's meta (contract).
        unsafe { *self.meta[(index & self.mask) as usize].0.get() = meta }
    }

    /// The bookkeeping of slot `index`.
    ///
    /// # Safety
    ///
    /// The caller is the retirer and `index` is published.
    #[inline]
    pub(crate) unsafe fn meta(&self, index: u32) -> SlotMeta {
        // SAFETY: the producer's write happened before the publication the caller observed,
        // and no producer writes the slot again before the retirer releases it (contract).
        unsafe { *self.meta[(index & self.mask) as usize].0.get() }
    }

    /// Descriptors published and not yet retired.
    pub(crate) fn in_flight(&self) -> u32 {
        self.slots
            .published()
            .wrapping_sub(self.retired.load(Ordering::Acquire))
    }

    /// What the ring has done so far.
    pub(crate) fn stats(&self) -> ChannelStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ChannelStats {
            ops_ok: get(&s.ops_ok),
            ops_failed: get(&s.ops_failed),
            ops_removed: get(&s.ops_removed),
            bytes: get(&s.bytes),
            descriptors: get(&s.descriptors),
            doorbells: get(&s.doorbells),
            recoveries: get(&s.recoveries),
        }
    }

    /// Counts one doorbell write. The caller holds the doorbell (or is the owner).
    #[inline]
    pub(crate) fn note_doorbell(&self) {
        bump(&self.stats.doorbells, 1);
    }

    /// Retires as the ring's only user.
    ///
    /// # Safety
    ///
    /// No other thread uses the retire side, now or concurrently (the owner, or a ring nobody
    /// else can see yet).
    #[inline]
    pub(crate) unsafe fn retirer_exclusive(&self) -> Retirer<'_, X> {
        Retirer {
            ring: self,
            // SAFETY: exclusive use of the retire side (contract).
            side: unsafe { &mut *self.retire.get() },
        }
    }

    /// Retires with `f` if no other poller is at it; returns whether it got to.
    pub(crate) fn with_retire_token(&self, f: impl FnOnce(&mut Retirer<'_, X>)) -> bool {
        let Some(_guard) = self.token.try_acquire() else {
            return false;
        };
        // SAFETY: the token makes us the only user of the retire side until `_guard` drops.
        let mut retirer = unsafe { self.retirer_exclusive() };
        f(&mut retirer);
        true
    }

    /// Gives a submitter's route back, once no retirer can be inside a delivery to it.
    ///
    /// # Safety
    ///
    /// As for [`Routes::detach`].
    pub(crate) unsafe fn detach_route(&self, route: u16) {
        // The token keeps a retirer from still being inside `deliver` (holding the route's
        // producer) when the producer is dropped; detaching is rare, so waiting is fine.
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            if let Some(_guard) = self.token.try_acquire() {
                // SAFETY: forwarded contract.
                unsafe { self.routes.detach(route) };
                return;
            }
            crate::sync::pause(&backoff);
        }
    }
}

impl<X> fmt::Debug for Ring<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("size", &self.size())
            .field("reserved", &self.slots.reserved())
            .field("published", &self.slots.published())
            .field("announced", &self.doorbell.announced())
            .field("retired", &self.retired.load(Ordering::Relaxed))
            .field("health", &self.health())
            .finish()
    }
}
