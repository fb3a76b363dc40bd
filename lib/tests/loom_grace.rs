//! loom models of the table's grace-period protocol: a reader never touches a retired value
//! after the writer freed it, whether the reader was online throughout or came online while
//! the writer was publishing. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p dmaplane --test loom_grace --release`.
#![cfg(loom)]

use dmaplane::loom_exports::{GraceDomain, Published, ReaderSlot};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

const LIVE: u64 = 7;
const FREED: u64 = 0xdead;

/// Stands for a table snapshot: the writer poisons it where it would free it.
struct Table {
    value: UnsafeCell<u64>,
}

fn table() -> Box<Table> {
    Box::new(Table {
        value: UnsafeCell::new(LIVE),
    })
}

fn use_current(published: &Published<Table>) {
    // SAFETY: the calling reader is online and reports no quiescent state while `t` lives.
    let t = unsafe { published.read() };
    // SAFETY: the model checks this read against the writer's poisoning write.
    let seen = t.value.with(|v| unsafe { *v });
    assert_ne!(seen, FREED, "reader used a table after it was freed");
}

/// The writer side of a rebalance: publish, begin a grace period, wait for it, free.
fn replace_and_free(domain: &GraceDomain, published: &Published<Table>, wait: bool) {
    // SAFETY: one writer; the old table is only poisoned after the grace period (or, in the
    // negative control, deliberately too early).
    let old = unsafe { published.replace(table()) };
    let gp = domain.begin();
    while wait && !domain.elapsed(gp) {
        thread::yield_now();
    }
    // SAFETY: exclusive by the grace period (that is what the model checks).
    old.value.with_mut(|v| unsafe { *v = FREED });
}

/// One reader thread running `reader` against one writer replacing the table; the writer
/// waits for the grace period only when `wait` is set.
fn model(
    reader_starts_offline: bool,
    wait: bool,
    reader: fn(&GraceDomain, &Published<Table>, &ReaderSlot),
) {
    loom::model(move || {
        let domain = Arc::new(GraceDomain::new());
        let published = Arc::new(Published::new(table()));
        let slot = domain.register("reader".into());
        if reader_starts_offline {
            slot.offline();
        }
        let thread = {
            let (domain, published) = (domain.clone(), published.clone());
            thread::spawn(move || {
                reader(&domain, &published, &slot);
                domain.unregister(&slot);
            })
        };
        replace_and_free(&domain, &published, wait);
        thread.join().unwrap();
    });
}

#[test]
fn online_reader_never_sees_a_freed_table() {
    model(false, true, |domain, published, slot| {
        use_current(published);
        slot.quiescent(domain);
        use_current(published);
    });
}

#[test]
fn reader_coming_online_never_sees_a_freed_table() {
    model(true, true, |domain, published, slot| {
        slot.online(domain);
        use_current(published);
    });
}

#[test]
fn reader_going_offline_and_back_never_sees_a_freed_table() {
    model(false, true, |domain, published, slot| {
        use_current(published);
        slot.offline();
        slot.online(domain);
        use_current(published);
    });
}

/// The model must be able to fail: a writer that frees without waiting is caught.
#[test]
#[should_panic]
fn freeing_without_a_grace_period_is_caught() {
    model(false, false, |_, published, _| use_current(published));
}

/// A reader that acts on the table it read (a data-path client following the table) and
/// reports quiescent states, with the one check `quiescent_if` adds or without it. The writer
/// publishes a second table and, if its grace period is seen to have ended, asserts that the
/// reader acts on the second table by then: the client protocol's "nobody still follows an
/// older table" that `TableReader::settled_at` promises.
fn follower_model(checked: bool) {
    loom::model(move || {
        let domain = Arc::new(GraceDomain::new());
        let published = Arc::new(Published::new(Box::new(1u64)));
        let slot = domain.register("follower".into());
        let follows = Arc::new(loom::sync::atomic::AtomicU64::new(0));
        let thread = {
            let (domain, published, follows) = (domain.clone(), published.clone(), follows.clone());
            let slot = slot.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    // SAFETY: online, and no borrow lives past the quiescent state below.
                    let seen = *unsafe { published.read() };
                    follows.store(seen, loom::sync::atomic::Ordering::Relaxed);
                    if checked {
                        // SAFETY: as above.
                        slot.quiescent_if(&domain, || *unsafe { published.read() } == seen);
                    } else {
                        slot.quiescent(&domain);
                    }
                }
            })
        };
        // SAFETY: one writer; the first table is leaked rather than freed, this model is about
        // what the reader follows, not about reclamation.
        std::mem::forget(unsafe { published.replace(Box::new(2)) });
        let gp = domain.begin();
        if domain.elapsed(gp) {
            assert_eq!(
                follows.load(loom::sync::atomic::Ordering::Relaxed),
                2,
                "a grace period ended while the reader still followed the old table"
            );
        }
        thread.join().unwrap();
        // Only now: a reader that leaves (offline) stops following, and the model would
        // rightly let the grace period end without it.
        domain.unregister(&slot);
    });
}

#[test]
fn a_follower_lets_a_grace_period_end_only_once_it_follows_the_new_table() {
    follower_model(true);
}

#[test]
#[should_panic(expected = "still followed the old table")]
fn an_unconditional_quiescent_state_lets_it_end_too_early() {
    follower_model(false);
}
