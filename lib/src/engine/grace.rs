//! Quiescent-state-based reclamation (QSBR) for the per-CPU table.
//!
//! The table is read on every operation by pinned polling threads and rebuilt rarely by the
//! control plane. Readers must not pay for the writer: a lookup is one acquire load of the
//! published pointer and an index, with no lock and no read-modify-write. In exchange each
//! reader periodically reports a *quiescent state*, a moment at which it holds nothing it
//! read from the table (a polling loop does so once per iteration).
//!
//! The protocol:
//!
//! - A global `epoch` counts grace periods. Each reader owns a cache-padded slot holding the
//!   epoch it last observed, or `OFFLINE` (the largest value) while it promises not to read.
//! - The writer publishes a new table with a release store, then begins a grace period by
//!   bumping the epoch (release: a reader that observes the new epoch also observes the new
//!   table) and issues a full fence before it reads any slot.
//! - A reader reports a quiescent state by loading the epoch (acquire, pairs with the bump)
//!   and storing it into its slot (release: its earlier table reads happen before the writer
//!   sees the slot). This is two plain moves on x86-64; the slot's cache line is written by
//!   its reader alone.
//! - Coming back online is the one place a reader needs a full fence: it stores its slot,
//!   fences, and only then may read the table. Together with the writer's fence this is a
//!   store-buffering pair: either the writer sees the slot and waits, or the reader sees the
//!   new table.
//! - Whatever was retired when the epoch became `e` may be freed once every slot reads at
//!   least `e`. The writer never blocks on a reader: retired tables wait in a list and are
//!   freed by a later control-plane call (or an explicit bounded wait), so a reader that
//!   stops polling delays only the freeing of memory, never the move of the table.
//!
//! The same code runs under loom (`tests/loom_grace.rs`), which checks that a reader never
//! touches a retired value after it was freed.

use crossbeam_utils::CachePadded;

use crate::sync::{fence, lock, Arc, AtomicPtr, AtomicU64, Mutex, Ordering};

/// Slot value of a reader that promises not to read (never waited for).
const OFFLINE: u64 = u64::MAX;

/// The grace period that began when the epoch reached this value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GracePeriod(u64);

impl GracePeriod {
    /// The epoch this grace period began at.
    pub fn epoch(self) -> u64 {
        self.0
    }

    /// The grace period that began at `epoch`.
    pub fn from_epoch(epoch: u64) -> GracePeriod {
        GracePeriod(epoch)
    }
}

/// The shared state of one reclamation domain: the epoch and the registered readers.
pub struct GraceDomain {
    epoch: CachePadded<AtomicU64>,
    readers: Mutex<Vec<Arc<ReaderSlot>>>,
}

/// A reader's announcement slot. Only its owner stores to it.
pub struct ReaderSlot {
    observed: CachePadded<AtomicU64>,
    label: String,
}

impl Default for GraceDomain {
    fn default() -> Self {
        Self::new()
    }
}

impl GraceDomain {
    /// A domain with no readers.
    pub fn new() -> Self {
        GraceDomain {
            epoch: CachePadded::new(AtomicU64::new(1)),
            readers: Mutex::new(Vec::new()),
        }
    }

    /// Registers a reader, online from the moment this returns.
    pub fn register(&self, label: String) -> Arc<ReaderSlot> {
        let slot = Arc::new(ReaderSlot {
            observed: CachePadded::new(AtomicU64::new(OFFLINE)),
            label,
        });
        lock(&self.readers).push(Arc::clone(&slot));
        slot.online(self);
        slot
    }

    /// Removes a reader; it must not read again through this slot.
    pub fn unregister(&self, slot: &Arc<ReaderSlot>) {
        slot.offline();
        lock(&self.readers).retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// Begins a grace period. Everything unpublished before this call may be freed once
    /// [`GraceDomain::elapsed`] says so. Callers serialise (the engine holds its lock).
    pub fn begin(&self) -> GracePeriod {
        // Release: a reader that observes the new epoch also observes every table published
        // before it (pairs with the acquire load in `ReaderSlot::quiescent`/`online`).
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        // Store-buffering pair with the fence in `ReaderSlot::online`: after this fence either
        // the slot scan below sees an onlining reader's slot, or that reader sees the new table.
        fence(Ordering::SeqCst);
        GracePeriod(epoch)
    }

    /// Whether every reader has reported a quiescent state (or gone offline) since `gp` began.
    pub fn elapsed(&self, gp: GracePeriod) -> bool {
        // Acquire pairs with the release store of each slot: the reader's table reads before
        // its quiescent state happen before whatever the caller frees next.
        lock(&self.readers)
            .iter()
            .all(|s| s.observed.load(Ordering::Acquire) >= gp.0)
    }

    /// [`GraceDomain::elapsed`] without waiting: `None` when the reader list is locked by
    /// someone else.
    pub fn try_elapsed(&self, gp: GracePeriod) -> Option<bool> {
        let readers = self.readers.try_lock().ok()?;
        // Acquire: as in `elapsed`.
        Some(
            readers
                .iter()
                .all(|s| s.observed.load(Ordering::Acquire) >= gp.0),
        )
    }

    /// Labels of the readers that have not yet let `gp` end.
    pub fn laggards(&self, gp: GracePeriod) -> Vec<String> {
        lock(&self.readers)
            .iter()
            .filter(|s| s.observed.load(Ordering::Acquire) < gp.0)
            .map(|s| s.label.clone())
            .collect()
    }

    /// Number of registered readers.
    pub fn reader_count(&self) -> usize {
        lock(&self.readers).len()
    }
}

impl ReaderSlot {
    /// Reports that the reader holds nothing it read before this call.
    #[inline]
    pub fn quiescent(&self, domain: &GraceDomain) {
        // Acquire pairs with the release in `GraceDomain::begin`: having seen epoch `e`, later
        // table loads see at least the table published before `e` began.
        let epoch = domain.epoch.load(Ordering::Acquire);
        // Release: every table read before this point happens before a writer that sees this
        // value frees anything.
        self.observed.store(epoch, Ordering::Release);
    }

    /// Reports a quiescent state only if `still_current()`, called after the epoch is read,
    /// says the reader has caught up with the table: the epoch's acquire makes every table
    /// published before that grace period began visible to the check. A reader that acts on
    /// what it read (a data-path client following the table) thereby never lets a grace period
    /// end for a table it has not acted on yet. Returns whether it reported.
    #[inline]
    pub fn quiescent_if(&self, domain: &GraceDomain, still_current: impl FnOnce() -> bool) -> bool {
        // Acquire: as in `quiescent`.
        let epoch = domain.epoch.load(Ordering::Acquire);
        if !still_current() {
            return false;
        }
        // Release: as in `quiescent`.
        self.observed.store(epoch, Ordering::Release);
        true
    }

    /// Promises not to read until [`ReaderSlot::online`]; writers stop waiting for this reader.
    pub fn offline(&self) {
        self.observed.store(OFFLINE, Ordering::Release);
    }

    /// Ends an offline period; the reader may read the table once this returns.
    pub fn online(&self, domain: &GraceDomain) {
        // Release, not relaxed: a writer that reads this value must also see the reads this
        // reader made before it last went offline (a relaxed store would end the release
        // sequence of the offline store, and the writer could free what those reads saw).
        self.observed
            .store(domain.epoch.load(Ordering::Acquire), Ordering::Release);
        // Store-buffering pair with the fence in `GraceDomain::begin` (see there).
        fence(Ordering::SeqCst);
    }

    /// The label given at registration, used in reports about readers that hold things up.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// A value published to lock-free readers and replaced by a single writer.
pub struct Published<T> {
    current: AtomicPtr<T>,
}

impl<T> Published<T> {
    /// Publishes `initial`.
    pub fn new(initial: Box<T>) -> Self {
        Published {
            current: AtomicPtr::new(Box::into_raw(initial)),
        }
    }

    /// Publishes `next` and hands back the previous value, which readers may still be using.
    ///
    /// # Safety
    ///
    /// Callers serialise, and the caller must not drop the returned value before a grace
    /// period begun after this call has elapsed: readers' borrows from [`Published::read`]
    /// rely on it.
    pub unsafe fn replace(&self, next: Box<T>) -> Box<T> {
        // Release pairs with the acquire in `read`: readers see `next` fully built.
        let previous = self.current.swap(Box::into_raw(next), Ordering::AcqRel);
        // SAFETY: every pointer stored in `current` came from `Box::into_raw`, and the swap
        // moved ownership of this one out of the cell; readers only borrow it.
        unsafe { Box::from_raw(previous) }
    }

    /// Reads the current value.
    ///
    /// # Safety
    ///
    /// The caller must be an online reader of the domain whose grace periods protect this
    /// value, and must not report a quiescent state or go offline while the returned borrow
    /// lives: that is what keeps the writer from freeing it.
    #[inline]
    pub unsafe fn read<'r>(&self) -> &'r T {
        // Acquire pairs with the release swap in `replace`.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: non-null and from `Box::into_raw`; the caller's contract keeps the writer
        // from freeing it for `'r`.
        unsafe { &*ptr }
    }
}

impl<T> Drop for Published<T> {
    fn drop(&mut self) {
        let ptr = self.current.load(Ordering::Relaxed);
        // SAFETY: `&mut self` proves no reader borrow is alive; the pointer is the last value
        // from `Box::into_raw` and is freed exactly once, here.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

// SAFETY: `Published<T>` hands out `&T` to other threads and moves `Box<T>` between them, so it
// is as thread-safe as `T` is both `Send` and `Sync`.
unsafe impl<T: Send + Sync> Send for Published<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Published<T> {}
