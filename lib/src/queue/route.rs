//! Handing each completion of a shared channel back to the client that submitted it.
//!
//! When several CPUs share a channel, whichever of them polls may find operations finished,
//! most of them other CPUs'. One poller at a time, the holder of the [`RetireToken`], walks the
//! finished slots and delivers each completion into its submitter's own single-producer,
//! single-consumer ring ([`Routes`]). The token makes its holder the single producer of every
//! route while it holds it; handing the token over (a release store, then an acquire
//! compare-and-swap) carries each ring's producer state from one holder to the next. A client
//! pops only its own ring. Nothing here takes a lock; a poll that finds the token free costs one
//! compare-and-swap, one that finds it taken costs a load.
//!
//! A client never has more operations in flight on a channel than its ring holds (the data
//! path refuses the submit instead), so deliveries find room. Should one not, the holder stops
//! retiring at that slot and the next poll carries on from it: nothing is dropped.

use crossbeam_utils::CachePadded;

use super::spsc::{self, Consumer, Full, Producer};
use crate::sync::{AtomicBool, AtomicU32, Ordering, UnsafeCell};

/// The right to retire a shared channel's finished slots, held by one poller at a time.
pub struct RetireToken {
    held: CachePadded<AtomicBool>,
}

impl Default for RetireToken {
    fn default() -> Self {
        Self::new()
    }
}

impl RetireToken {
    /// A token nobody holds.
    pub fn new() -> RetireToken {
        RetireToken {
            held: CachePadded::new(AtomicBool::new(false)),
        }
    }

    /// Takes the token if nobody holds it; never waits.
    #[inline]
    pub fn try_acquire(&self) -> Option<RetireGuard<'_>> {
        // A load first: a poller that finds the token taken leaves the line shared.
        if self.held.load(Ordering::Relaxed) {
            return None;
        }
        // Acquire pairs with the last holder's release: its retiring and deliveries happen
        // before ours.
        crate::sync::rmw::note();
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RetireGuard { token: self })
    }
}

/// Holding the [`RetireToken`]; dropping it hands the token back.
pub struct RetireGuard<'a> {
    token: &'a RetireToken,
}

impl Drop for RetireGuard<'_> {
    fn drop(&mut self) {
        // Release pairs with the next holder's acquire.
        self.token.held.store(false, Ordering::Release);
    }
}

struct RouteCell<T> {
    claimed: AtomicBool,
    producer: UnsafeCell<Option<Producer<T>>>,
}

/// The completion rings of the clients attached to one channel, indexed by route number.
pub struct Routes<T> {
    cells: Box<[RouteCell<T>]>,
    /// Routes claimed now.
    attached: AtomicU32,
}

// SAFETY: a cell's producer is touched by the client that claimed it (at attach and detach)
// and by one retirer at a time in between, each access ordered after the previous one (see the
// safety contracts of `deliver` and `detach`); what crosses threads is the `Producer<T>`,
// which is `Send` when `T` is.
unsafe impl<T: Send> Sync for Routes<T> {}
// SAFETY: as above; the cells own their producers.
unsafe impl<T: Send> Send for Routes<T> {}

impl<T> Routes<T> {
    /// Room for `count` attached clients at once.
    pub fn new(count: usize) -> Routes<T> {
        assert!(
            count <= usize::from(u16::MAX),
            "{count} routes do not fit a u16"
        );
        Routes {
            cells: (0..count)
                .map(|_| RouteCell {
                    claimed: AtomicBool::new(false),
                    producer: UnsafeCell::new(None),
                })
                .collect(),
            attached: AtomicU32::new(0),
        }
    }

    /// How many routes are claimed. Acquire pairs with the release in `detach`: a client that
    /// reads 1 after its own attach knows every earlier client's use of the channel happened
    /// before.
    pub fn attached(&self) -> u32 {
        self.attached.load(Ordering::Acquire)
    }

    /// Claims a free route with a ring of at least `capacity` completions; `None` when every
    /// route is taken. The route's number goes into each operation submitted under it, and is
    /// only valid once such an operation is published to the retirer (with release ordering).
    pub fn attach(&self, capacity: usize) -> Option<(u16, Consumer<T>)> {
        for (number, cell) in self.cells.iter().enumerate() {
            // Acquire pairs with the release in `detach`: the previous owner's last use of
            // the cell happens before ours.
            crate::sync::rmw::note();
            if cell
                .claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                crate::sync::rmw::note();
                self.attached.fetch_add(1, Ordering::AcqRel);
                let (producer, consumer) = spsc::channel(capacity);
                // SAFETY: the claim gives us the cell; no retirer reads it before an operation
                // naming this route is published, which happens after this write.
                cell.producer
                    .with_mut(|slot| unsafe { *slot = Some(producer) });
                return Some((number as u16, consumer));
            }
        }
        None
    }

    /// Whether `route`'s ring can take one more completion.
    ///
    /// # Safety
    ///
    /// As for [`Routes::deliver`].
    #[cfg(any(test, loom))]
    #[inline]
    pub unsafe fn has_room(&self, route: u16) -> bool {
        // SAFETY: the caller is the only thread touching this producer now (contract).
        self.cells[usize::from(route)]
            .producer
            .with(|slot| unsafe { (*slot).as_ref().is_some_and(|p| p.slots() > 0) })
    }

    /// Delivers `value` to the client attached as `route`.
    ///
    /// # Safety
    ///
    /// The caller holds the channel's [`RetireToken`] (or is, by the data path's protocol, the
    /// channel's only user), and read the operation naming `route` from a publication made
    /// with release ordering after the route was attached.
    #[inline]
    pub unsafe fn deliver(&self, route: u16, value: T) -> Result<(), Full<T>> {
        // SAFETY: the token holder is the single producer of every route (contract).
        self.cells[usize::from(route)]
            .producer
            .with_mut(|slot| match unsafe { &mut *slot } {
                Some(producer) => producer.push(value),
                None => Err(Full(value)),
            })
    }

    /// Gives `route` back; a later [`Routes::attach`] may reuse its number.
    ///
    /// # Safety
    ///
    /// The caller attached `route`, and every operation submitted under it has been delivered
    /// and popped from the ring (so no retirer will touch the cell again, and its last
    /// delivery happened before the pop that observed it).
    pub unsafe fn detach(&self, route: u16) {
        let cell = &self.cells[usize::from(route)];
        // SAFETY: no delivery can race with this (contract).
        cell.producer.with_mut(|slot| unsafe { *slot = None });
        // Release pairs with the acquire in `attach` and in `attached`.
        cell.claimed.store(false, Ordering::Release);
        crate::sync::rmw::note();
        self.attached.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn routes_are_claimed_once_and_reused_after_detach() {
        let routes: Routes<u64> = Routes::new(2);
        let (a, mut ring_a) = routes.attach(4).unwrap();
        let (b, _ring_b) = routes.attach(4).unwrap();
        assert_ne!(a, b);
        assert!(routes.attach(4).is_none(), "only two routes exist");
        // SAFETY: this thread is the only user of the routes.
        unsafe {
            routes.deliver(a, 7).unwrap();
            assert!(routes.has_room(a));
        }
        assert_eq!(ring_a.pop(), Some(7));
        // SAFETY: everything delivered to `a` was popped.
        unsafe { routes.detach(a) };
        let (again, _) = routes.attach(1).unwrap();
        assert_eq!(again, a);
        // SAFETY: as above.
        unsafe {
            routes.deliver(again, 1).unwrap();
            assert!(!routes.has_room(again), "a ring of one is full after one");
            assert_eq!(routes.deliver(again, 2), Err(Full(2)));
        }
    }

    #[test]
    fn only_one_poller_holds_the_token() {
        let token = RetireToken::new();
        let held = token.try_acquire().unwrap();
        assert!(token.try_acquire().is_none());
        drop(held);
        assert!(token.try_acquire().is_some());
    }
}
