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

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;

use super::reserve::{Doorbell, SlotReservation};
use super::route::{RetireToken, Routes};
use super::spsc::Consumer;
use super::{
    ChannelQueue, ChannelStats, Completion, Health, OpError, OpFlags, QueueHandle, SubmitError,
    MAX_CLIENTS_PER_CHANNEL,
};
use crate::sync::lock_std;

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
    /// No data: a marker that completes in order.
    Null,
}

/// What a backend supplies to make a [`RingQueue`] of its device.
pub(crate) trait RingEngine: Send + Sync + Sized + 'static {
    /// The retire side's own state, touched only by the token holder or the owner.
    type RetireState: Default + Send;
    /// A submitter's own state (planning space, batching counters).
    type Scratch: Send;

    /// A new submitter's state.
    fn scratch(&self) -> Self::Scratch;

    /// Whether the device fills.
    fn fill_supported(&self) -> bool;

    /// Builds `op` into the ring: claims its slots through `producer`, writes them and their
    /// bookkeeping (the last slot carries `user_data`), and publishes them. All or nothing.
    /// The channel accepted work when this was called; `op` has a non-zero length.
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

/// Completions delivered straight into a poller's output buffer (owned mode).
pub(crate) struct Direct<'a> {
    /// The poller's route: its completions land in `out`, everybody else's in their rings.
    pub(crate) route: u16,
    pub(crate) out: &'a mut [Completion],
    pub(crate) filled: usize,
}

/// Where retired completions go.
pub(crate) struct Sink<'a> {
    /// The caller's route and output buffer, filled directly (owned mode); every other route,
    /// and every completion in shared mode, goes through [`Routes`].
    pub(crate) direct: Option<Direct<'a>>,
}

impl<'a> Sink<'a> {
    /// Routes only.
    pub(crate) fn routed() -> Sink<'static> {
        Sink { direct: None }
    }

    /// `route`'s completions into `out`.
    pub(crate) fn direct(route: u16, out: &'a mut [Completion]) -> Sink<'a> {
        Sink {
            direct: Some(Direct {
                route,
                out,
                filled: 0,
            }),
        }
    }

    /// How many completions went into the output buffer.
    pub(crate) fn filled(&self) -> usize {
        self.direct.as_ref().map_or(0, |d| d.filled)
    }
}

/// The retire side at work: the ring and exclusive access to its retire state.
pub(crate) struct Retirer<'a, X> {
    pub(crate) ring: &'a Ring<X>,
    pub(crate) side: &'a mut RetireSide<X>,
}

impl<X> Retirer<'_, X> {
    /// Hands one completion to its sink; false when it has no room (nothing was taken).
    fn deliver(
        &mut self,
        sink: &mut Sink<'_>,
        meta: SlotMeta,
        result: Result<(), OpError>,
    ) -> bool {
        let completion = Completion {
            user_data: meta.user_data,
            result,
        };
        match &mut sink.direct {
            Some(direct) if direct.route == meta.route => {
                if direct.filled == direct.out.len() {
                    return false;
                }
                direct.out[direct.filled] = completion;
                direct.filled += 1;
            }
            _ => {
                // SAFETY: we are the retirer (token or owner), and read `meta` from a slot
                // published after the route was attached.
                if unsafe { self.ring.routes.deliver(meta.route, completion) }.is_err() {
                    return false;
                }
            }
        }
        let stats = &self.ring.stats;
        match result {
            Ok(()) => bump(&stats.ops_ok, 1),
            Err(cause) => {
                bump(&stats.ops_failed, 1);
                if cause == OpError::DeviceRemoved {
                    bump(&stats.ops_removed, 1);
                }
            }
        }
        true
    }

    /// Retires up to `count` slots from the tail, reporting each operation that ends among
    /// them with `result`, and stops early when a sink is full. Returns how many it retired.
    pub(crate) fn retire(
        &mut self,
        count: u32,
        sink: &mut Sink<'_>,
        result: Result<(), OpError>,
    ) -> u32 {
        let mut retired = 0;
        let mut moved = 0u64;
        while retired < count {
            // SAFETY: the slot is published (the caller retires only those), and we are the
            // retirer.
            let meta = unsafe { self.ring.meta(self.side.tail) };
            if meta.ends_op && !self.deliver(sink, meta, result) {
                break;
            }
            if result.is_ok() {
                moved += u64::from(meta.bytes);
            }
            self.side.tail = self.side.tail.wrapping_add(1);
            retired += 1;
        }
        if retired > 0 {
            bump(&self.ring.stats.descriptors, u64::from(retired));
            bump(&self.ring.stats.bytes, moved);
        }
        // Release pairs with the reservers' acquire: our reads of these slots happen before
        // they are overwritten.
        self.ring.retired.store(self.side.tail, Ordering::Release);
        retired
    }

    /// Counts one recovery of the device.
    pub(crate) fn note_recovery(&mut self) {
        bump(&self.ring.stats.recoveries, 1);
    }

    /// Fails every outstanding operation with `cause` and stops accepting work (moving a
    /// working channel to `health`). Operations are completed only once `device_stopped`
    /// says the device no longer touches their buffers (a later poll retries until it does),
    /// and those that do not fit are reported by later polls. Producers that publish after
    /// this are caught by the next poll.
    pub(crate) fn abandon(
        &mut self,
        cause: OpError,
        health: Health,
        sink: &mut Sink<'_>,
        device_stopped: impl FnOnce() -> bool,
    ) {
        let ring = self.ring;
        if ring.health().works() {
            // Under the doorbell: a producer that saw the channel working finishes its
            // doorbell write before this, and none writes one after.
            let _doorbell = ring.doorbell.exclusive();
            ring.set_health(health);
        }
        let published = ring.slots.published();
        if self.side.tail == published || !device_stopped() {
            return;
        }
        let count = published.wrapping_sub(self.side.tail);
        self.retire(count, sink, Err(cause));
    }

    /// Abandons a channel that stopped working, with the cause its health names.
    pub(crate) fn abandon_stopped(
        &mut self,
        sink: &mut Sink<'_>,
        device_stopped: impl FnOnce() -> bool,
    ) {
        match self.ring.health() {
            Health::Removed => self.abandon(
                OpError::DeviceRemoved,
                Health::Removed,
                sink,
                device_stopped,
            ),
            _ => self.abandon(OpError::ChannelFailed, Health::Failed, sink, device_stopped),
        }
    }
}

/// A submitter's indices: where it builds and what it has announced.
pub(crate) struct Producer {
    /// Completions of this submitter's operations go to this route.
    pub(crate) route: u16,
    owned: bool,
    /// Owned mode: next slot to build into (free-running).
    head: u32,
    /// Owned mode: slots before this have been published and announced.
    submitted: u32,
    /// Shared mode: something was published since the last ring.
    unrung: bool,
}

impl Producer {
    /// A sharer of `ring` whose completions go to `route`.
    pub(crate) fn new<X>(ring: &Ring<X>, route: u16) -> Producer {
        let head = ring.slots.reserved();
        Producer {
            route,
            owned: false,
            head,
            submitted: head,
            unrung: false,
        }
    }

    /// Whether this producer owns the ring.
    #[inline]
    pub(crate) fn is_owner(&self) -> bool {
        self.owned
    }

    /// Free-running index of the next slot to be built.
    #[inline]
    pub(crate) fn head<X>(&self, ring: &Ring<X>) -> u32 {
        if self.owned {
            self.head
        } else {
            ring.slots.reserved()
        }
    }

    /// Slots free for building now.
    #[inline]
    pub(crate) fn capacity<X>(&self, ring: &Ring<X>) -> u32 {
        ring.free_slots(self.head(ring))
    }

    /// Owned mode: whether everything built has been announced to the device (so the slot
    /// before the head may no longer be changed).
    #[inline]
    pub(crate) fn all_announced(&self) -> bool {
        self.submitted == self.head
    }

    /// Claims `needed` consecutive slots and returns the first: at the head in owned mode, by
    /// reservation in shared mode.
    #[inline]
    pub(crate) fn claim<X>(&mut self, ring: &Ring<X>, needed: u32) -> Result<u32, SubmitError> {
        if self.owned {
            let free = ring.free_slots(self.head);
            if needed > free {
                return Err(SubmitError::RingFull { needed, free });
            }
            let start = self.head;
            self.head = self.head.wrapping_add(needed);
            Ok(start)
        } else {
            ring.slots
                .reserve(needed, &ring.retired)
                .map_err(|s| SubmitError::RingFull {
                    needed: s.needed,
                    free: s.free,
                })
        }
    }

    /// The `count` slots claimed at `start` are written. A sharer publishes them now (in ring
    /// order); an owner publishes at its next submit.
    #[inline]
    pub(crate) fn written<X>(&mut self, ring: &Ring<X>, start: u32, count: u32) {
        if !self.owned {
            ring.slots.publish(start, count);
            self.unrung = true;
        }
    }

    /// Tells the device about everything built (owned) or published (shared) since the last
    /// call. On a channel that no longer works the work is published but not rung, so the
    /// retirer completes it with the channel's error.
    #[inline]
    pub(crate) fn submit<E: RingEngine>(
        &mut self,
        ring: &Ring<E::RetireState>,
        engine: &E,
        scratch: &mut E::Scratch,
    ) {
        if self.owned {
            if self.submitted == self.head {
                return;
            }
            engine.seal_batch(scratch, self.head.wrapping_sub(1));
            ring.slots.advance_owned(self.head);
            self.submitted = self.head;
            if ring.health().works() {
                ring.doorbell.announce_owned(self.head);
                engine.write_doorbell(self.head);
                ring.note_doorbell();
            }
        } else {
            if !self.unrung {
                return;
            }
            self.unrung = false;
            ring.doorbell.ring(&ring.slots, |target| {
                if ring.health().works() {
                    engine.write_doorbell(target);
                    ring.note_doorbell();
                }
            });
        }
    }

    /// Enters owned mode at the reservation index.
    ///
    /// # Safety
    ///
    /// Nobody else builds into or retires from the ring until this producer leaves owned mode;
    /// no other producer has an unpublished reservation.
    pub(crate) unsafe fn own<X>(&mut self, ring: &Ring<X>) {
        self.head = ring.slots.reserved();
        self.submitted = self.head;
        self.owned = true;
    }

    /// Leaves owned mode. The caller has submitted everything built.
    pub(crate) fn share(&mut self) {
        debug_assert!(!self.owned || self.submitted == self.head);
        self.owned = false;
    }
}

/// The started queue of one channel backend, while the engine holds a reference to the
/// channel, and what its earlier starts did: the part of a [`ChannelBackend`]
/// (`crate::queue::ChannelBackend`) that is the same for every ring backend.
pub(crate) struct QueueCell<E: RingEngine> {
    current: Mutex<Option<Arc<RingQueue<E>>>>,
    /// What the channel's earlier starts did, so statistics outlive each start.
    earlier: Mutex<ChannelStats>,
}

impl<E: RingEngine> Default for QueueCell<E> {
    fn default() -> Self {
        QueueCell {
            current: Mutex::new(None),
            earlier: Mutex::new(ChannelStats::default()),
        }
    }
}

impl<E: RingEngine> QueueCell<E> {
    /// Holds a newly started queue.
    pub(crate) fn set(&self, queue: Arc<RingQueue<E>>) {
        *lock_std(&self.current) = Some(queue);
    }

    /// Closes the current queue, if any: the device stops reading its ring and later submits
    /// are refused. Its memory goes back with the last handle (normally the cell's: a client
    /// lets go of a channel once it neither follows a table naming it nor has operations
    /// there, and then holds no reference).
    pub(crate) fn close(&self) {
        if let Some(queue) = lock_std(&self.current).take() {
            queue.stop(Health::Closed);
            let mut earlier = lock_std(&self.earlier);
            *earlier = *earlier + queue.ring.stats();
        }
    }

    /// The current queue.
    pub(crate) fn get(&self) -> Option<Arc<RingQueue<E>>> {
        lock_std(&self.current).clone()
    }

    /// The current queue behind the seam.
    pub(crate) fn queue(&self) -> Option<Arc<dyn ChannelQueue>> {
        self.get().map(|queue| queue as Arc<dyn ChannelQueue>)
    }

    /// Whether a queue is started.
    pub(crate) fn is_started(&self) -> bool {
        lock_std(&self.current).is_some()
    }

    /// What every start of the channel did.
    pub(crate) fn stats(&self) -> ChannelStats {
        let current = lock_std(&self.current)
            .as_ref()
            .map(|queue| queue.ring.stats())
            .unwrap_or_default();
        *lock_std(&self.earlier) + current
    }
}

/// A started ring channel: the generic ring and the backend's engine.
pub(crate) struct RingQueue<E: RingEngine> {
    pub(crate) ring: Ring<E::RetireState>,
    pub(crate) engine: E,
}

impl<E: RingEngine> RingQueue<E> {
    /// Retires what the device finished, with `retirer`'s exclusive use of the retire side.
    #[inline]
    pub(crate) fn retire_with(
        &self,
        retirer: &mut Retirer<'_, E::RetireState>,
        sink: &mut Sink<'_>,
    ) {
        if self.ring.health().works() {
            self.engine.retire(retirer, sink);
        } else {
            retirer.abandon_stopped(sink, || self.engine.device_stopped());
        }
    }

    /// Retires as the queue's only user.
    ///
    /// # Safety
    ///
    /// As for [`Ring::retirer_exclusive`].
    #[inline]
    pub(crate) unsafe fn poll_exclusive(&self, sink: &mut Sink<'_>) {
        // SAFETY: forwarded contract.
        let mut retirer = unsafe { self.ring.retirer_exclusive() };
        self.retire_with(&mut retirer, sink);
    }

    /// Retires if no other poller is at it, delivering every completion through the routes.
    /// Returns whether it got to retire.
    pub(crate) fn poll_shared(&self) -> bool {
        self.ring
            .with_retire_token(|retirer| self.retire_with(retirer, &mut Sink::routed()))
    }

    /// Moves a working channel to `health` under the doorbell and stops the device. Returns
    /// whether this call stopped it.
    pub(crate) fn stop(&self, health: Health) -> bool {
        let _doorbell = self.ring.doorbell.exclusive();
        let stopped = self.ring.set_health(health);
        if stopped {
            self.engine.halt();
        }
        stopped
    }

    /// A new sharer's handle with completions in `completions`.
    pub(crate) fn handle(
        self: Arc<Self>,
        route: u16,
        completions: Consumer<Completion>,
    ) -> RingHandle<E> {
        RingHandle {
            producer: Producer::new(&self.ring, route),
            scratch: self.engine.scratch(),
            queue: self,
            completions,
        }
    }
}

impl<E: RingEngine> fmt::Debug for RingQueue<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.ring, f)
    }
}

impl<E: RingEngine> ChannelQueue for RingQueue<E> {
    fn attach(self: Arc<Self>, completion_ring: usize) -> Option<Box<dyn QueueHandle>> {
        let (route, completions) = self.ring.routes.attach(completion_ring)?;
        Some(Box::new(self.handle(route, completions)))
    }

    fn attached(&self) -> u32 {
        self.ring.routes.attached()
    }

    fn health(&self) -> Health {
        self.ring.health()
    }

    fn in_flight(&self) -> u64 {
        u64::from(self.ring.in_flight())
    }

    fn drain(&self) {
        self.ring.begin_draining();
    }

    fn remove(&self) {
        self.stop(Health::Removed);
    }

    fn stats(&self) -> ChannelStats {
        self.ring.stats()
    }
}

/// One submitter's handle on a ring channel.
pub(crate) struct RingHandle<E: RingEngine> {
    pub(crate) queue: Arc<RingQueue<E>>,
    pub(crate) producer: Producer,
    pub(crate) scratch: E::Scratch,
    completions: Consumer<Completion>,
}

impl<E: RingEngine> RingHandle<E> {
    /// Refuses work on a channel that no longer accepts it.
    #[inline]
    fn accepting(&self) -> Result<(), SubmitError> {
        match self.queue.ring.health().refusal() {
            None => Ok(()),
            Some(refused) => Err(refused),
        }
    }

    /// Builds an accepted, non-empty operation.
    #[inline]
    fn queue_op(&mut self, op: Op, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        let queue = &*self.queue;
        queue.engine.build(
            &queue.ring,
            &mut self.producer,
            &mut self.scratch,
            op,
            user_data,
            flags,
        )?;
        if flags.contains(OpFlags::SUBMIT) {
            self.submit();
        }
        Ok(())
    }

    /// Queues a null operation that completes with `user_data` (a marker, or a flush).
    pub(crate) fn null(&mut self, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        self.accepting()?;
        self.queue_op(Op::Null, user_data, flags)
    }

    /// Free-running index of the next slot to be built.
    pub(crate) fn head(&self) -> u32 {
        self.producer.head(&self.queue.ring)
    }
}

impl<E: RingEngine> QueueHandle for RingHandle<E> {
    #[inline]
    unsafe fn copy(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.accepting()?;
        if len == 0 {
            return Err(SubmitError::ZeroLength);
        }
        let op = Op::Copy {
            dst: dst as usize,
            src: src as usize,
            len,
        };
        self.queue_op(op, user_data, flags)
    }

    #[inline]
    unsafe fn fill(
        &mut self,
        dst: *mut u8,
        pattern: u64,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.accepting()?;
        if !self.queue.engine.fill_supported() {
            return Err(SubmitError::FillUnsupported);
        }
        if len == 0 {
            return Err(SubmitError::ZeroLength);
        }
        let op = Op::Fill {
            dst: dst as usize,
            pattern,
            len,
        };
        self.queue_op(op, user_data, flags)
    }

    #[inline]
    fn submit(&mut self) {
        let queue = &*self.queue;
        self.producer
            .submit(&queue.ring, &queue.engine, &mut self.scratch);
    }

    #[inline]
    fn capacity(&self) -> u32 {
        self.producer.capacity(&self.queue.ring)
    }

    #[inline]
    fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut got = self.completions.pop_into(out);
        if self.producer.is_owner() {
            let mut sink = Sink::direct(self.producer.route, &mut out[got..]);
            // SAFETY: an owner is the queue's only user (the contract of `own`).
            unsafe { self.queue.poll_exclusive(&mut sink) };
            got += sink.filled();
        } else if self.queue.poll_shared() {
            got += self.completions.pop_into(&mut out[got..]);
        }
        got
    }

    fn collect(&mut self, out: &mut [Completion]) -> usize {
        self.completions.pop_into(out)
    }

    fn completion_capacity(&self) -> usize {
        self.completions.capacity()
    }

    fn queue(&self) -> &dyn ChannelQueue {
        &*self.queue
    }

    fn is_owner(&self) -> bool {
        self.producer.is_owner()
    }

    fn share(&mut self) {
        self.submit();
        self.producer.share();
    }

    unsafe fn own(&mut self) {
        self.submit();
        // SAFETY: forwarded contract.
        unsafe { self.producer.own(&self.queue.ring) };
    }

    unsafe fn detach(self: Box<Self>) {
        // SAFETY: forwarded contract: nothing of ours is in flight.
        unsafe { self.queue.ring.detach_route(self.producer.route) };
    }
}
