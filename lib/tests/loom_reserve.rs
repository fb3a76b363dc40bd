//! loom models of shared-ring submission: slots written by several producers are visible to
//! the device once publication reaches them, and the doorbell announces the last publication
//! with monotonically increasing values. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p dmaplane --test loom_reserve --release --target-dir target/loom`.
//!
//! A limit of the tool worth knowing: loom 0.7 lets a relaxed store that follows an acquire
//! load of the same atomic synchronise as if it were a release store, so weakening `publish`'s
//! release store is *not* caught here (checked by hand); the doorbell's negative control shows
//! the models do catch lost announcements.
#![cfg(loom)]

use dmaplane::loom_exports::{Doorbell, SlotReservation};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;

struct Ring {
    slots: SlotReservation,
    retired: AtomicU32,
    data: [UnsafeCell<u32>; 4],
    doorbell: Doorbell,
    /// The device's view: the last doorbell value written.
    dmacount: AtomicU32,
}

fn ring() -> Arc<Ring> {
    Arc::new(Ring {
        slots: SlotReservation::new(4, 0),
        retired: AtomicU32::new(0),
        data: [
            UnsafeCell::new(0),
            UnsafeCell::new(0),
            UnsafeCell::new(0),
            UnsafeCell::new(0),
        ],
        doorbell: Doorbell::new(0),
        dmacount: AtomicU32::new(0),
    })
}

/// Reserves one slot, writes `value` into it, publishes it.
fn produce(ring: &Ring, value: u32) {
    let start = ring.slots.reserve(1, &ring.retired).unwrap();
    // SAFETY: the reservation gives this thread the slot exclusively until it is published.
    ring.data[start as usize % 4].with_mut(|p| unsafe { *p = value });
    ring.slots.publish(start, 1);
}

/// Records a doorbell write, checking that the count never goes backwards.
fn write_doorbell(ring: &Ring, count: u32) {
    let previous = ring.dmacount.swap(count, Ordering::Relaxed);
    assert!(
        count > previous,
        "doorbell went from {previous} back to {count}"
    );
}

#[test]
fn published_slots_are_visible_to_the_device_in_order() {
    loom::model(|| {
        let ring = ring();
        let producers: Vec<_> = [7, 9]
            .into_iter()
            .map(|value| {
                let ring = ring.clone();
                thread::spawn(move || produce(&ring, value))
            })
            .collect();
        // The device, at any moment: every slot publication covers is fully written.
        let published = ring.slots.published();
        for i in 0..published as usize {
            // SAFETY: published slots are no longer written by their producer.
            let value = ring.data[i].with(|p| unsafe { *p });
            assert!(
                value == 7 || value == 9,
                "slot {i} published before it was written"
            );
        }
        for p in producers {
            p.join().unwrap();
        }
    });
}

#[test]
fn the_doorbell_announces_the_last_publication_and_never_goes_back() {
    loom::model(|| {
        let ring = ring();
        let producers: Vec<_> = [1, 2]
            .into_iter()
            .map(|value| {
                let ring = ring.clone();
                thread::spawn(move || {
                    produce(&ring, value);
                    ring.doorbell
                        .ring(&ring.slots, |count| write_doorbell(&ring, count));
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(
            ring.dmacount.load(Ordering::Relaxed),
            2,
            "a publication went unannounced"
        );
    });
}

/// The same doorbell releasing with a plain store (dropping a DIRTY set meanwhile): loom
/// must find the lost announcement, which shows the model can fail.
#[test]
#[should_panic(expected = "unannounced")]
fn a_doorbell_released_with_a_plain_store_loses_a_publication() {
    fn ring_carelessly(state: &AtomicU32, announced: &AtomicU32, r: &Ring) {
        if state.fetch_or(3, Ordering::AcqRel) & 1 != 0 {
            return;
        }
        state.fetch_and(!2, Ordering::AcqRel);
        let target = r.slots.published();
        if target != announced.load(Ordering::Relaxed) {
            write_doorbell(r, target);
            announced.store(target, Ordering::Relaxed);
        }
        state.store(0, Ordering::Release);
    }
    loom::model(|| {
        let ring = ring();
        let state = Arc::new(AtomicU32::new(0));
        let announced = Arc::new(AtomicU32::new(0));
        let producers: Vec<_> = [1, 2]
            .into_iter()
            .map(|value| {
                let (ring, state, announced) = (ring.clone(), state.clone(), announced.clone());
                thread::spawn(move || {
                    produce(&ring, value);
                    ring_carelessly(&state, &announced, &ring);
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(
            ring.dmacount.load(Ordering::Relaxed),
            2,
            "a publication went unannounced"
        );
    });
}
