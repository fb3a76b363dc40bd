//! loom models of the completion ring (`queue::spsc`): every value pushed is popped once,
//! in order, and neither end touches a slot the other is still using, across every
//! interleaving of one producer and one consumer, including the reuse of slots when the ring
//! fills. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p dmaplane --test loom_spsc --release --target-dir target/loom`.
#![cfg(loom)]

use std::sync::atomic::Ordering;

use dmaplane::loom_exports::{channel, Consumer, Producer};
use loom::sync::Arc;
use loom::thread;

/// Values pushed into a ring of capacity 2: the third reuses the first slot.
const VALUES: [u64; 3] = [11, 22, 33];

/// Pushes `VALUES` with `push`, yielding while the ring is full.
fn produce(mut tx: Producer<u64>, push: fn(&mut Producer<u64>, u64) -> Result<(), u64>) {
    for value in VALUES {
        let mut value = value;
        while let Err(refused) = push(&mut tx, value) {
            value = refused;
            thread::yield_now();
        }
    }
}

/// Runs a producer thread pushing `VALUES` through a ring of capacity 2 against a consumer
/// on the main thread that collects them with `pop_some` (which returns what one attempt got).
fn model(
    push: fn(&mut Producer<u64>, u64) -> Result<(), u64>,
    pop_some: fn(&mut Consumer<u64>) -> Vec<u64>,
) {
    loom::model(move || {
        let (tx, mut rx) = channel::<u64>(2);
        assert_eq!(tx.capacity(), 2);
        let producer = thread::spawn(move || produce(tx, push));
        let mut got = Vec::new();
        while got.len() < VALUES.len() {
            let some = pop_some(&mut rx);
            if some.is_empty() {
                thread::yield_now();
            }
            got.extend(some);
        }
        producer.join().unwrap();
        assert_eq!(got, VALUES);
        assert_eq!(rx.pop(), None);
        assert!(rx.is_abandoned());
    });
}

fn push(tx: &mut Producer<u64>, value: u64) -> Result<(), u64> {
    tx.push(value).map_err(|full| full.0)
}

fn pop(rx: &mut Consumer<u64>) -> Vec<u64> {
    rx.pop().into_iter().collect()
}

#[test]
fn values_arrive_once_and_in_order() {
    model(push, pop);
}

#[test]
fn batches_arrive_once_and_in_order() {
    model(push, |rx| {
        let mut out = [0; 2];
        let taken = rx.pop_into(&mut out);
        out[..taken].to_vec()
    });
}

/// A payload whose drop loom tracks (a leaked `loom::sync::Arc` fails the model).
type Payload = Arc<u64>;

/// The consumer gives up after one value while the producer is still pushing: the values left
/// in the ring are dropped once, by whichever end goes last, without racing the other end.
#[test]
fn leftover_values_are_dropped_once_whoever_goes_last() {
    loom::model(|| {
        let (mut tx, mut rx) = channel::<Payload>(2);
        let producer = thread::spawn(move || {
            for value in VALUES {
                if tx.push(Arc::new(value)).is_err() || tx.is_abandoned() {
                    break;
                }
            }
        });
        loop {
            if let Some(first) = rx.pop() {
                assert_eq!(*first, VALUES[0]);
                break;
            }
            thread::yield_now();
        }
        drop(rx);
        producer.join().unwrap();
    });
}

/// The model must be able to fail: a producer that publishes `tail` with a relaxed store lets
/// the consumer read a slot whose write it has not synchronised with.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_publication_is_caught() {
    model(
        |tx, value| {
            tx.push_publishing_with(value, Ordering::Relaxed)
                .map_err(|full| full.0)
        },
        pop,
    );
}

/// The model must be able to fail: a consumer that frees a slot with a relaxed store of `head`
/// lets the producer overwrite the slot while the consumer's read may still be under way.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_freeing_is_caught() {
    model(push, |rx| {
        rx.pop_releasing_with(Ordering::Relaxed)
            .into_iter()
            .collect()
    });
}
