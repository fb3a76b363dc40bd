//! Sharing one descriptor ring between several CPUs without a lock.
//!
//! When the per-CPU table gives a channel to more than one CPU, each of them builds its
//! operations straight into the channel's descriptor ring:
//!
//! - **reserve**: a producer claims `n` consecutive slots with one compare-and-swap on the
//!   reservation index, provided `n` slots are free (one slot always stays empty, as the
//!   device needs);
//! - **write**: it fills its slots with plain stores; nobody else touches them;
//! - **publish**: it waits until every earlier reservation is published, then moves the
//!   publication index past its own slots. Publication is therefore in ring order, which the
//!   device needs: it processes slots strictly in order up to the doorbell count;
//! - **ring**: the doorbell (DMACOUNT, a 16-bit running count) must only ever move forward.
//!   [`Doorbell`] lets one thread at a time write it with the latest publication index; a
//!   thread that finds another one ringing leaves it to that thread, which checks again after
//!   letting go, so every publication reaches the device and the count never goes backwards.
//!
//! In-order publication means a producer preempted between reserve and publish holds up the
//! others' publications (not their reservations) until it runs again, as with DPDK's
//! multi-producer rings. A channel owned by a single CPU does not use this module at all.

use crossbeam_utils::{Backoff, CachePadded};

use crate::sync::{pause, AtomicU32, Ordering};

/// Not enough free slots for a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// Slots asked for.
    pub needed: u32,
    /// Slots free when the reservation was refused.
    pub free: u32,
}

/// Reservation and in-order publication of the slots of one power-of-two ring.
pub struct SlotReservation {
    /// Slots before this index (free-running) are claimed by some producer.
    reserved: CachePadded<AtomicU32>,
    /// Slots before this index are written and may be announced to the device.
    published: CachePadded<AtomicU32>,
    size: u32,
}

impl SlotReservation {
    /// Reservation of a ring of `size` slots (a power of two), starting at index `start`.
    pub fn new(size: u32, start: u32) -> SlotReservation {
        assert!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        SlotReservation {
            reserved: CachePadded::new(AtomicU32::new(start)),
            published: CachePadded::new(AtomicU32::new(start)),
            size,
        }
    }

    /// Claims `n` consecutive slots and returns the index of the first. `retired` is the
    /// retirer's index: slots before it have been given back by the device.
    pub fn reserve(&self, n: u32, retired: &AtomicU32) -> Result<u32, Shortfall> {
        // Relaxed: the value is only a guess for the compare-and-swap, which checks it.
        let mut start = self.reserved.load(Ordering::Relaxed);
        loop {
            // Acquire pairs with the retirer's release store: its last reads of the slots we
            // are about to overwrite happen before our writes.
            let retired_at = retired.load(Ordering::Acquire);
            let used = start.wrapping_sub(retired_at);
            let free = (self.size - 1).saturating_sub(used);
            if n > free {
                return Err(Shortfall { needed: n, free });
            }
            // Relaxed on both outcomes: the claim needs only atomicity; the slots' contents
            // are ordered by `publish`.
            crate::sync::rmw::note();
            match self.reserved.compare_exchange_weak(
                start,
                start.wrapping_add(n),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(start),
                Err(current) => start = current,
            }
        }
    }

    /// Publishes the `n` slots reserved at `start`, once every earlier reservation has been
    /// published. The caller must have written them.
    pub fn publish(&self, start: u32, n: u32) {
        let backoff = Backoff::new();
        // Acquire pairs with the previous publisher's release store, so its slot writes happen
        // before ours are announced (a reader of our index sees both).
        while self.published.load(Ordering::Acquire) != start {
            pause(&backoff);
        }
        // Release: our slot writes happen before any reader that observes the new index.
        self.published
            .store(start.wrapping_add(n), Ordering::Release);
    }

    /// Moves both indices to `index`, for a ring with one producer (the channel's owner),
    /// which needs no reservation: plain stores, no read-modify-write.
    pub fn advance_owned(&self, index: u32) {
        self.reserved.store(index, Ordering::Relaxed);
        // Release: the slot writes happen before a reader of the new index.
        self.published.store(index, Ordering::Release);
    }

    /// Slots before this index are published.
    pub fn published(&self) -> u32 {
        // Acquire pairs with the release store in `publish`.
        self.published.load(Ordering::Acquire)
    }

    /// Slots before this index are reserved.
    pub fn reserved(&self) -> u32 {
        self.reserved.load(Ordering::Relaxed)
    }
}

/// The doorbell is being written by some thread.
const BUSY: u32 = 1;
/// Something was published since the holder last looked.
const DIRTY: u32 = 2;

/// Keeps a shared channel's doorbell monotonic: one thread at a time writes it, always with
/// the latest publication index, and no publication is left unannounced.
///
/// Every handoff is a read-modify-write of one word holding `BUSY` and `DIRTY`: a thread that
/// publishes sets both; if `BUSY` was already set, the holder will find `DIRTY` and ring again
/// before it lets go, since it may only release the word while `DIRTY` is clear.
pub struct Doorbell {
    state: CachePadded<AtomicU32>,
    /// The index last written, read and written only by the holder of `BUSY`.
    announced: AtomicU32,
}

impl Doorbell {
    /// A doorbell that has announced everything before `start`.
    pub fn new(start: u32) -> Doorbell {
        Doorbell {
            state: CachePadded::new(AtomicU32::new(0)),
            announced: AtomicU32::new(start),
        }
    }

    /// Makes sure the device hears of every slot published so far. `write` is called with the
    /// publication index to announce, only ever with increasing values, and never by two
    /// threads at once. Returns at once when another thread holds the doorbell: that thread
    /// announces this thread's publication too.
    pub fn ring(&self, slots: &SlotReservation, mut write: impl FnMut(u32)) {
        // AcqRel: release pairs with the holder's acquire below (our publication happens
        // before it reads `published`); acquire pairs with the last holder's release, so
        // `announced` is its value when we become the holder.
        crate::sync::rmw::note();
        if self.state.fetch_or(BUSY | DIRTY, Ordering::AcqRel) & BUSY != 0 {
            return;
        }
        loop {
            // Clear DIRTY before reading `published`: a publication after this sets it again.
            // AcqRel: acquire pairs with the publishers' fetch_or.
            crate::sync::rmw::note();
            self.state.fetch_and(!DIRTY, Ordering::AcqRel);
            let target = slots.published();
            // Relaxed: only the holder of BUSY touches `announced`.
            if target != self.announced.load(Ordering::Relaxed) {
                write(target);
                // Release: a retirer that reads the new value (acquire) also sees the slots
                // published before it, whose publication we acquired above.
                self.announced.store(target, Ordering::Release);
            }
            // Let go only if nothing was published meanwhile. Release pairs with the next
            // holder's acquire.
            crate::sync::rmw::note();
            if self
                .state
                .compare_exchange(BUSY, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Takes the doorbell exclusively (waiting for a ringing thread to finish), for work
    /// that must not race a doorbell write, such as restarting the channel. Publishers that
    /// find it held leave their announcement to the holder, so ring again after dropping the
    /// guard.
    pub fn exclusive(&self) -> DoorbellGuard<'_> {
        let backoff = Backoff::new();
        loop {
            let state = self.state.load(Ordering::Relaxed);
            // Acquire pairs with the previous holder's release.
            crate::sync::rmw::note();
            if state & BUSY == 0
                && self
                    .state
                    .compare_exchange(state, state | BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return DoorbellGuard { doorbell: self };
            }
            pause(&backoff);
        }
    }

    /// Takes the doorbell exclusively if nobody holds it now; `None` otherwise. For work that
    /// can wait for a later attempt (a retirer handing deferred work to the device).
    pub fn try_exclusive(&self) -> Option<DoorbellGuard<'_>> {
        let state = self.state.load(Ordering::Relaxed);
        if state & BUSY != 0 {
            return None;
        }
        // Acquire pairs with the previous holder's release.
        crate::sync::rmw::note();
        self.state
            .compare_exchange(state, state | BUSY, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| DoorbellGuard { doorbell: self })
    }

    /// The index last announced; every slot before it is published and its writes visible.
    pub fn announced(&self) -> u32 {
        // Acquire pairs with the release stores of the announcing thread.
        self.announced.load(Ordering::Acquire)
    }

    /// Records that the device was told of every slot before `index`, for a channel with one
    /// producer that writes the doorbell itself (nobody else may ring it meanwhile).
    pub fn announce_owned(&self, index: u32) {
        // Release: see `ring`.
        self.announced.store(index, Ordering::Release);
    }
}

/// Exclusive hold of a [`Doorbell`]; see [`Doorbell::exclusive`].
pub struct DoorbellGuard<'a> {
    doorbell: &'a Doorbell,
}

impl DoorbellGuard<'_> {
    /// Records that the device now counts from `index` (after a restart).
    pub fn set_announced(&mut self, index: u32) {
        // Release: see `Doorbell::ring`.
        self.doorbell.announced.store(index, Ordering::Release);
    }
}

impl Drop for DoorbellGuard<'_> {
    fn drop(&mut self) {
        // Release pairs with the next holder's acquire. DIRTY stays for the next `ring`.
        crate::sync::rmw::note();
        self.doorbell.state.fetch_and(!BUSY, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32 as StdAtomicU32;
    use std::sync::Arc;

    #[test]
    fn reservations_respect_the_free_slots_and_wrap() {
        let start = u32::MAX - 2;
        let slots = SlotReservation::new(8, start);
        let retired = StdAtomicU32::new(start);
        assert_eq!(slots.reserve(3, &retired), Ok(start));
        assert_eq!(slots.reserve(4, &retired), Ok(start.wrapping_add(3)));
        assert_eq!(
            slots.reserve(1, &retired),
            Err(Shortfall { needed: 1, free: 0 })
        );
        slots.publish(start, 3);
        slots.publish(start.wrapping_add(3), 4);
        assert_eq!(slots.published(), start.wrapping_add(7));
        retired.store(start.wrapping_add(5), std::sync::atomic::Ordering::Release);
        assert_eq!(
            slots.reserve(6, &retired),
            Err(Shortfall { needed: 6, free: 5 })
        );
        assert_eq!(slots.reserve(5, &retired), Ok(start.wrapping_add(7)));
    }

    #[test]
    fn threads_share_a_ring_and_the_doorbell_only_moves_forward() {
        let slots = Arc::new(SlotReservation::new(64, 0));
        let doorbell = Arc::new(Doorbell::new(0));
        let retired = Arc::new(StdAtomicU32::new(0));
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let per_thread = 20_000u32;
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (slots, doorbell, retired, writes) = (
                    slots.clone(),
                    doorbell.clone(),
                    retired.clone(),
                    writes.clone(),
                );
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let n = 1 + i % 3;
                        let start = loop {
                            match slots.reserve(n, &retired) {
                                Ok(start) => break start,
                                // Play the device: give back everything announced.
                                Err(_) => {
                                    retired.store(
                                        doorbell.announced(),
                                        std::sync::atomic::Ordering::Release,
                                    );
                                    std::thread::yield_now();
                                }
                            }
                        };
                        slots.publish(start, n);
                        doorbell.ring(&slots, |count| writes.lock().unwrap().push(count));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u32 = (0..per_thread).map(|i| 1 + i % 3).sum::<u32>() * 3;
        let writes = writes.lock().unwrap();
        assert!(
            writes.windows(2).all(|w| w[0] < w[1]),
            "doorbell went backwards"
        );
        assert_eq!(
            *writes.last().unwrap(),
            total,
            "the last publication was announced"
        );
        assert_eq!(slots.published(), total);
    }
}
