//! A bounded single-producer, single-consumer ring that carries completions back to the
//! client that submitted the operation.
//!
//! Each client (a pinned CPU) owns the [`Consumer`] of its ring and drains it from its polling
//! loop; the [`Producer`] belongs to whichever thread harvests the channel's completions at the
//! moment. The handles are `Send` but not `Sync`: the producer role may travel between threads
//! (handed over under the harvester's try-lock, which orders one holder's pushes before the
//! next holder's), but never be shared by two at once.
//!
//! The ring is two free-running `u32` indices over a power-of-two array, as in rtrb and DPDK's
//! `rte_ring`: `tail` counts values ever pushed and is stored by the producer alone, `head`
//! counts values ever popped and is stored by the consumer alone, each on its own cache line.
//! `tail - head` (wrapping) is the number of values in the ring, so every slot is usable: a
//! ring of capacity `n` holds exactly `n` values. The protocol has two edges:
//!
//! - **publish** (producer → consumer): the producer writes a slot, then release-stores
//!   `tail`; the consumer acquire-loads `tail` before it reads a slot below it;
//! - **free** (consumer → producer): the consumer reads a slot, then release-stores `head`;
//!   the producer acquire-loads `head` before it overwrites a slot below `head + n`.
//!
//! Each side also keeps a private copy of the other side's index and reloads it only when that
//! copy says the ring is full (producer) or empty (consumer). In steady state a push is
//! therefore a plain store into the slot plus one release store of `tail`, and a pop a plain
//! load plus one release store of `head`: no read-modify-write, and no read of the other
//! side's cache line until it is needed. [`Consumer::pop_into`] stores `head` once per batch.
//!
//! The same code runs under loom (`tests/loom_spsc.rs`), which checks both edges against the
//! slot accesses.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{self, MaybeUninit};

use crossbeam_utils::CachePadded;

use crate::sync::{Arc, AtomicU32, Ordering};

use crate::sync::UnsafeCell;

/// The largest capacity: with `u32` indices, `tail - head` must tell a full ring from an empty
/// one, so it may range over at most 2^31 + 1 values.
const MAX_CAPACITY: usize = 1 << 31;

/// A push refused because the ring was full; holds the value that was not pushed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The value that was not pushed.
    #[cfg(any(test, loom))]
    pub fn into_inner(self) -> T {
        self.0
    }
}

// By hand rather than derived, so `push(..).unwrap()` works for values that are not `Debug`.
impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the ring is full")
    }
}

impl<T> std::error::Error for Full<T> {}

/// What both handles point to.
struct Shared<T> {
    /// Values ever popped (wrapping). Stored by the consumer only.
    head: CachePadded<AtomicU32>,
    /// Values ever pushed (wrapping). Stored by the producer only.
    tail: CachePadded<AtomicU32>,
    /// Slots `head..tail` (modulo the length) hold values; the others are uninitialised.
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: u32,
}

// SAFETY: the handles touch each slot in turn, never together, handed over by the two edges
// described in the module docs; what moves between threads is a `T`, hence `T: Send`.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    #[inline(always)]
    fn slot(&self, index: u32) -> &UnsafeCell<MaybeUninit<T>> {
        &self.slots[(index & self.mask) as usize]
    }

    fn capacity(&self) -> u32 {
        self.mask + 1
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        if !mem::needs_drop::<T>() {
            return;
        }
        // Relaxed: this is the last `Arc`; its release/acquire count already ordered both
        // handles' final index stores and slot accesses before this point.
        let mut head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        while head != tail {
            // SAFETY: slots in `head..tail` hold values nobody popped, each dropped here once;
            // no handle is left to touch them.
            self.slot(head)
                .with_mut(|slot| unsafe { (*slot).assume_init_drop() });
            head = head.wrapping_add(1);
        }
    }
}

/// Creates a ring of at least `capacity` values and returns its two ends.
///
/// The capacity is rounded up to a power of two, and to 1 if zero; all of it is usable: the
/// ring holds exactly its capacity in values before [`Producer::push`] refuses one.
///
/// # Panics
///
/// If `capacity` exceeds 2^31 (the indices are `u32`), before allocating anything.
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    channel_starting_at(capacity, 0)
}

/// [`channel`] with both indices starting at `start`, so tests can cross the `u32` wrap.
fn channel_starting_at<T>(capacity: usize, start: u32) -> (Producer<T>, Consumer<T>) {
    assert!(
        capacity <= MAX_CAPACITY,
        "ring capacity {capacity} exceeds {MAX_CAPACITY}"
    );
    let len = capacity.max(1).next_power_of_two();
    let slots = (0..len)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicU32::new(start)),
        tail: CachePadded::new(AtomicU32::new(start)),
        slots,
        mask: (len - 1) as u32,
    });
    let producer = Producer {
        shared: shared.clone(),
        tail: start,
        head_seen: start,
        _not_sync: PhantomData,
    };
    let consumer = Consumer {
        shared,
        head: start,
        tail_seen: start,
        _not_sync: PhantomData,
    };
    (producer, consumer)
}

/// The pushing end of a ring made by [`channel`].
///
/// `Send` but not `Sync`: one thread at a time pushes.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Our own index, mirrored here so a push never loads it.
    tail: u32,
    /// The consumer's `head` when we last looked; it only grows, so this underestimates the
    /// free space and is safe to act on.
    head_seen: u32,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Producer<T> {
    /// Appends `value`, or gives it back in [`Full`] if the ring holds
    /// `capacity` values.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), Full<T>> {
        // Release: the publish edge, paired with the consumer's acquire loads of `tail` in
        // `pop` and `pop_into`: our write of the slot happens before its read.
        self.push_publishing(value, Ordering::Release)
    }

    /// [`push`](Self::push) with the ordering of its `tail` store as a parameter, so the loom
    /// negative control can weaken exactly that edge of the shipped code.
    #[inline(always)]
    fn push_publishing(&mut self, value: T, publish: Ordering) -> Result<(), Full<T>> {
        let capacity = self.shared.capacity();
        if self.tail.wrapping_sub(self.head_seen) == capacity {
            // Acquire: the free edge, paired with the consumer's release store of `head`: its
            // reads of the slots it freed happen before we overwrite them.
            self.head_seen = self.shared.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_seen) == capacity {
                return Err(Full(value));
            }
        }
        // SAFETY: the slot lies outside `head_seen..tail`, so the consumer has finished with it
        // (acquire above) and will not read it before the store of `tail` below.
        self.shared
            .slot(self.tail)
            .with_mut(|slot| unsafe { slot.write(MaybeUninit::new(value)) });
        self.tail = self.tail.wrapping_add(1);
        self.shared.tail.store(self.tail, publish);
        Ok(())
    }

    /// Loom only: [`push`](Self::push) storing `tail` with `publish` instead of `Release`.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn push_publishing_with(&mut self, value: T, publish: Ordering) -> Result<(), Full<T>> {
        self.push_publishing(value, publish)
    }

    /// Free slots: at least this many pushes in a row will succeed (more if the consumer pops
    /// meanwhile).
    #[cfg(any(test, loom))]
    pub fn slots(&self) -> usize {
        // Relaxed: only a count. A push that then finds its cached view full reloads `head`
        // with acquire, and coherence guarantees it sees at least this value.
        let head = self.shared.head.load(Ordering::Relaxed);
        (self.shared.capacity() - self.tail.wrapping_sub(head)) as usize
    }

    /// The number of values the ring holds when full.
    #[cfg(any(test, loom))]
    pub fn capacity(&self) -> usize {
        self.shared.capacity() as usize
    }

    /// Whether the [`Consumer`] has been dropped, so nothing pushed will ever be popped.
    /// Once true, stays true.
    #[cfg(any(test, loom))]
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.shared) < 2
    }
}

/// The popping end of a ring made by [`channel`].
///
/// `Send` but not `Sync`: one thread at a time pops.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Our own index, mirrored here so a pop never loads it.
    head: u32,
    /// The producer's `tail` when we last looked; it only grows, so this underestimates what
    /// is ready and is safe to act on.
    tail_seen: u32,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Consumer<T> {
    /// Takes the oldest value, or `None` if the ring is empty.
    #[cfg(any(test, loom))]
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        // Release: the free edge, paired with the producer's acquire load of `head` in `push`:
        // our read of the slot happens before it is overwritten.
        self.pop_releasing(Ordering::Release)
    }

    /// [`pop`](Self::pop) with the ordering of its `head` store as a parameter, so the loom
    /// negative control can weaken exactly that edge of the shipped code.
    #[cfg(any(test, loom))]
    #[inline(always)]
    fn pop_releasing(&mut self, release: Ordering) -> Option<T> {
        if self.head == self.tail_seen {
            // Acquire: the publish edge, paired with the producer's release store of `tail`:
            // its writes of the slots below it happen before our reads.
            self.tail_seen = self.shared.tail.load(Ordering::Acquire);
            if self.head == self.tail_seen {
                return None;
            }
        }
        // SAFETY: the slot lies in `head..tail_seen`: written and published (acquire above),
        // and the producer will not overwrite it before our store of `head` below.
        let value = self
            .shared
            .slot(self.head)
            .with(|slot| unsafe { (*slot).assume_init_read() });
        self.head = self.head.wrapping_add(1);
        self.shared.head.store(self.head, release);
        Some(value)
    }

    /// Loom only: [`pop`](Self::pop) storing `head` with `release` instead of `Release`.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn pop_releasing_with(&mut self, release: Ordering) -> Option<T> {
        self.pop_releasing(release)
    }

    /// Moves the oldest values into `out`, as many as are ready and fit, and returns how many.
    /// The slots are given back to the producer with a single store, after the whole batch.
    pub fn pop_into(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        let wanted = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let mut ready = self.tail_seen.wrapping_sub(self.head);
        if ready < wanted {
            // Acquire: the publish edge, paired with the producer's release store of `tail`,
            // as in `pop`.
            self.tail_seen = self.shared.tail.load(Ordering::Acquire);
            ready = self.tail_seen.wrapping_sub(self.head);
        }
        let taken = ready.min(wanted);
        if taken == 0 {
            return 0;
        }
        for (offset, out) in (0..taken).zip(out.iter_mut()) {
            // SAFETY: as in `pop`: every slot of the batch lies in `head..tail_seen`.
            *out = self
                .shared
                .slot(self.head.wrapping_add(offset))
                .with(|slot| unsafe { (*slot).assume_init() });
        }
        self.head = self.head.wrapping_add(taken);
        // Release: the free edge, paired with the producer's acquire load of `head`, as in
        // `pop`; it covers every read of the batch.
        self.shared.head.store(self.head, Ordering::Release);
        taken as usize
    }

    /// The number of values ready to pop.
    #[cfg(any(test, loom))]
    pub fn len(&self) -> usize {
        // Relaxed: only a count. A pop that then finds its cached view empty reloads `tail`
        // with acquire, and coherence guarantees it sees at least this value.
        let tail = self.shared.tail.load(Ordering::Relaxed);
        tail.wrapping_sub(self.head) as usize
    }

    /// Whether no value is ready to pop.
    #[cfg(any(test, loom))]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of values the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.shared.capacity() as usize
    }

    /// Whether the [`Producer`] has been dropped, so no value will arrive beyond those ready.
    /// Once true, stays true.
    #[cfg(any(test, loom))]
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.shared) < 2
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::rc::Rc;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    fn assert_send<T: Send>() {}

    /// `IS_SYNC` of a concrete type: the inherent constant when the type is `Sync`, the trait's
    /// default otherwise (inherent items win over trait items where both apply).
    struct SyncCheck<T>(PhantomData<T>);
    trait NotSync {
        const IS_SYNC: bool = false;
    }
    impl<T> NotSync for SyncCheck<T> {}
    impl<T: Sync> SyncCheck<T> {
        const IS_SYNC: bool = true;
    }

    #[test]
    fn handles_are_not_sync_so_one_thread_at_a_time_uses_each_end() {
        const { assert!(!SyncCheck::<Producer<u64>>::IS_SYNC) };
        const { assert!(!SyncCheck::<Consumer<u64>>::IS_SYNC) };
        // The control: a `Sync` type reads true.
        const { assert!(SyncCheck::<Shared<u64>>::IS_SYNC) };
    }

    #[test]
    fn a_full_ring_gives_the_value_back_and_pop_into_takes_a_batch() {
        let (mut producer, mut consumer) = channel::<u64>(3); // rounded up to 4
        assert_eq!(producer.capacity(), 4);
        for n in 0..4 {
            producer.push(n).unwrap();
        }
        assert_eq!(producer.push(4), Err(Full(4))); // the value comes back
        assert_eq!(consumer.pop(), Some(0));
        let mut batch = [0; 8];
        assert_eq!(consumer.pop_into(&mut batch), 3);
        assert_eq!(batch[..3], [1, 2, 3]);
        assert_eq!(consumer.pop(), None);
    }

    #[test]
    fn handles_are_send() {
        assert_send::<Producer<Box<u64>>>();
        assert_send::<Consumer<Box<u64>>>();
    }

    #[test]
    fn values_come_out_in_order() {
        let (mut tx, mut rx) = channel(8);
        for n in 0..5 {
            tx.push(n).unwrap();
        }
        assert_eq!(rx.len(), 5);
        for n in 0..5 {
            assert_eq!(rx.pop(), Some(n));
        }
        assert_eq!(rx.pop(), None);
        assert!(rx.is_empty());
    }

    #[test]
    fn capacity_is_rounded_up_to_a_power_of_two() {
        for (asked, got) in [(0, 1), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024)] {
            let (tx, rx) = channel::<u8>(asked);
            assert_eq!((tx.capacity(), rx.capacity()), (got, got), "asked {asked}");
        }
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn capacity_beyond_the_index_range_is_refused() {
        let _ = channel::<u8>(MAX_CAPACITY + 1);
    }

    #[test]
    fn every_slot_is_usable_and_a_full_ring_gives_the_value_back() {
        for capacity in [1, 2, 4, 16] {
            let (mut tx, mut rx) = channel(capacity);
            for n in 0..capacity {
                assert_eq!(tx.slots(), capacity - n);
                tx.push(n).unwrap();
            }
            assert_eq!(tx.slots(), 0);
            assert_eq!(tx.push(99), Err(Full(99)));
            assert_eq!(rx.len(), capacity);
            assert_eq!(rx.pop(), Some(0));
            // One pop frees exactly one slot.
            assert_eq!(tx.slots(), 1);
            tx.push(capacity).unwrap();
            assert_eq!(tx.push(100).unwrap_err().into_inner(), 100);
            for n in 1..=capacity {
                assert_eq!(rx.pop(), Some(n));
            }
            assert_eq!(rx.pop(), None);
            assert_eq!(tx.slots(), capacity);
        }
    }

    #[test]
    fn empty_ring_pops_nothing_until_a_push() {
        let (mut tx, mut rx) = channel(2);
        assert_eq!(rx.pop(), None);
        assert_eq!(rx.pop_into(&mut [0u32; 4]), 0);
        tx.push(7u32).unwrap();
        // The consumer's cached view said empty; it must look again.
        assert_eq!(rx.pop(), Some(7));
        assert_eq!(rx.pop(), None);
    }

    #[test]
    fn indices_wrap_around_u32() {
        let start = u32::MAX - 5;
        let (mut tx, mut rx) = channel_starting_at(4, start);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        let mut batch = [0u64; 3];
        // Enough rounds to carry both indices well past zero, in uneven steps.
        for round in 0..20 {
            while tx.push(next_in).is_ok() {
                next_in += 1;
            }
            assert_eq!(rx.len(), 4);
            if round % 2 == 0 {
                let taken = rx.pop_into(&mut batch);
                assert_eq!(taken, 3);
                for value in &batch[..taken] {
                    assert_eq!(*value, next_out);
                    next_out += 1;
                }
            } else {
                assert_eq!(rx.pop(), Some(next_out));
                next_out += 1;
            }
        }
        while let Some(value) = rx.pop() {
            assert_eq!(value, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        let tail = tx.shared.tail.load(Ordering::Relaxed);
        assert!(tail < start, "the indices never wrapped (tail {tail})");
        assert_eq!(tail.wrapping_sub(start) as u64, next_in);
    }

    #[test]
    fn pop_into_a_short_buffer_takes_only_what_fits() {
        let (mut tx, mut rx) = channel(8);
        for n in 0..6u16 {
            tx.push(n).unwrap();
        }
        let mut short = [u16::MAX; 4];
        assert_eq!(rx.pop_into(&mut short), 4);
        assert_eq!(short, [0, 1, 2, 3]);
        assert_eq!(rx.pop_into(&mut []), 0);
        // Only two left: the rest of the buffer is untouched.
        let mut long = [u16::MAX; 4];
        assert_eq!(rx.pop_into(&mut long), 2);
        assert_eq!(long, [4, 5, u16::MAX, u16::MAX]);
        assert_eq!(tx.slots(), 8);
    }

    #[test]
    fn pop_into_sees_values_pushed_after_its_cached_view() {
        let (mut tx, mut rx) = channel(4);
        tx.push(1u8).unwrap();
        assert_eq!(rx.pop(), Some(1));
        for n in 2..5 {
            tx.push(n).unwrap();
        }
        let mut out = [0u8; 4];
        assert_eq!(rx.pop_into(&mut out), 3);
        assert_eq!(out[..3], [2, 3, 4]);
    }

    #[test]
    fn leftover_values_are_dropped_exactly_once() {
        for consumer_first in [false, true] {
            let token = Rc::new(());
            // Once from zero, once near the wrap so the drop loop crosses it.
            let start = if consumer_first { u32::MAX - 1 } else { 0 };
            let (mut tx, mut rx) = channel_starting_at(4, start);
            for _ in 0..4 {
                tx.push(token.clone()).unwrap();
            }
            drop(rx.pop());
            assert_eq!(Rc::strong_count(&token), 4);
            if consumer_first {
                drop(rx);
                assert!(tx.is_abandoned());
                assert_eq!(Rc::strong_count(&token), 4, "dropped too early");
                drop(tx);
            } else {
                drop(tx);
                assert!(rx.is_abandoned());
                drop(rx);
            }
            assert_eq!(Rc::strong_count(&token), 1);
        }
    }

    #[test]
    fn a_refused_value_is_not_dropped_by_the_ring() {
        let token = Rc::new(());
        let (mut tx, rx) = channel(1);
        tx.push(token.clone()).unwrap();
        let refused = tx.push(token.clone()).unwrap_err().into_inner();
        assert_eq!(Rc::strong_count(&token), 3);
        drop((tx, rx));
        assert_eq!(Rc::strong_count(&token), 2);
        drop(refused);
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn abandonment_is_seen_by_the_other_end() {
        let (tx, rx) = channel::<u8>(1);
        assert!(!tx.is_abandoned());
        assert!(!rx.is_abandoned());
        drop(rx);
        assert!(tx.is_abandoned());
        let (tx, rx) = channel::<u8>(1);
        drop(tx);
        assert!(rx.is_abandoned());
    }

    /// One producer thread and one consumer thread move up to a million values through a
    /// small ring, for at most 5 s (a loaded machine moves fewer); the consumer checks each
    /// value arrives once and in order, alternating single and batch pops.
    #[test]
    fn threads_move_a_million_values_in_order() {
        const COUNT: u64 = 1_000_000;
        const UNKNOWN: u64 = u64::MAX;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut tx, mut rx) = channel::<u64>(64);
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(UNKNOWN));
        let producer = {
            let total = std::sync::Arc::clone(&total);
            thread::spawn(move || {
                let mut next = 0;
                while next < COUNT && Instant::now() < deadline {
                    match tx.push(next) {
                        Ok(()) => next += 1,
                        Err(_) => thread::yield_now(),
                    }
                }
                // Release pairs with the consumer's acquire: every push happens before.
                total.store(next, std::sync::atomic::Ordering::Release);
            })
        };
        let mut expected = 0;
        let mut batch = [0u64; 7];
        let mut round = 0u64;
        loop {
            round += 1;
            let taken = if round % 2 == 0 {
                rx.pop_into(&mut batch)
            } else {
                rx.pop().map_or(0, |value| {
                    batch[0] = value;
                    1
                })
            };
            for value in &batch[..taken] {
                assert_eq!(*value, expected);
                expected += 1;
            }
            if taken == 0 {
                let pushed = total.load(std::sync::atomic::Ordering::Acquire);
                if pushed != UNKNOWN && expected == pushed {
                    break;
                }
                thread::yield_now();
            }
        }
        assert!(expected >= 10_000, "only {expected} values moved in 5 s");
        producer.join().unwrap();
        assert_eq!(rx.pop(), None);
        assert!(rx.is_abandoned());
    }
}
