//! A submitter's indices on a ring: where it builds and what it has announced, as the queue's
//! owner (plain loads and stores) or as one of several sharers (reservation, in-order
//! publication, the doorbell combiner).

use super::{Ring, RingEngine};
use crate::queue::SubmitError;

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
