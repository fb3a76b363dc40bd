//! Benchmarks of hot-removal: how long a removal takes to move the per-CPU table off a device
//! and to release the device's channels, with 256 operations in flight on it, next to a plain
//! rebalance measured in the same run.
//!
//! - `hotplug_remove/rebalance/idle`: the baseline, `Engine::unregister_device` of an idle
//!   device (the table rebalanced and published, nothing to drain);
//! - `hotplug_remove/table_move/<kind>_256` and `hotplug_remove/release/<kind>_256`: the
//!   `table_moved_after` and `released_after` of the [`RemovalReport`] of a removal that begins
//!   with 256 64-byte copies in flight on the device's only channel, submitted by a client on
//!   another thread that keeps polling. `orderly`: the device still works, slowed to 2 µs per
//!   descriptor, so the release waits for the operations to drain (about 0.5 ms of device
//!   work); `surprise`: the device is stalled, then surprise-removed, so every operation is
//!   failed at once and the release waits only for the client's next poll.
//!
//! Each iteration builds a fresh threaded emulated device, registers it and fills it; only the
//! figure from the report counts.
//!
//! `cargo bench -p dmaplane --bench hotplug`; `cargo test --benches` runs each once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dmaplane::datapath::{Client, ClientConfig, ClientError};
use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, Fault, PoolMemory};
use dmaplane::ioat::{IoatConfig, IoatDevice};
use dmaplane::log::LogHook;
use dmaplane::mem::{DmaPool, DmaPoolConfig};
use dmaplane::{
    CapMask, DeviceSpec, Engine, EngineConfig, NullChannel, RemovalOptions, RemovalReport,
};
use dmaplane::{Completion, OpFlags};

/// Operations in flight when a removal begins.
const IN_FLIGHT: u64 = 256;
const OP_BYTES: usize = 64;
/// How long the bench waits for anything before it gives up instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

/// The pool as the emulated device's memory.
fn device_memory(pool: &DmaPool) -> Arc<PoolMemory> {
    // SAFETY: descriptors reach the device only through the client's `unsafe` submit calls,
    // whose caller keeps the named buffers alive and untouched until completion.
    Arc::new(unsafe { PoolMemory::new(pool.clone()) })
}

/// Which duration of a removal's report a benchmark reports.
type Figure = fn(&RemovalReport) -> Duration;

#[derive(Clone, Copy)]
enum Kind {
    Orderly,
    Surprise,
}

/// Round counters shared with the client thread: the bench raises `wanted` to ask for a
/// round of `IN_FLIGHT` operations; the client raises `submitted` once they are all in
/// flight and `collected` once their completions are all back.
struct Rounds {
    wanted: AtomicU64,
    submitted: AtomicU64,
    collected: AtomicU64,
}

fn wait_for(counter: &AtomicU64, value: u64, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while counter.load(Ordering::Acquire) < value {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// The client thread: one client for CPU 0 that polls until the bench stops it (`wanted` set
/// to `u64::MAX`), submitting a round when asked.
fn client_loop(engine: &Engine, pool: &DmaPool, rounds: &Rounds) {
    let mut client = Client::new(engine, Some(0), ClientConfig::default()).unwrap();
    let src = pool.alloc(OP_BYTES, 64).unwrap();
    let dst = pool.alloc(OP_BYTES * IN_FLIGHT as usize, 64).unwrap();
    let mut batch = [Completion::default(); 64];
    let mut round = 0;
    let mut outstanding = 0u64;
    loop {
        let wanted = rounds.wanted.load(Ordering::Acquire);
        if wanted == u64::MAX && outstanding == 0 {
            return;
        }
        if wanted > round && outstanding == 0 {
            round = wanted;
            let deadline = Instant::now() + PATIENCE;
            let mut i = 0;
            while i < IN_FLIGHT {
                // SAFETY: both blocks outlive the round, whose completions are all collected
                // before the next one starts.
                let result = unsafe {
                    client.copy(
                        dst.as_mut_ptr().add(i as usize * OP_BYTES),
                        src.as_ptr(),
                        OP_BYTES,
                        i,
                        OpFlags::NONE,
                    )
                };
                match result {
                    Ok(()) => i += 1,
                    // The client follows the new device into the table.
                    Err(err @ (ClientError::Migrating | ClientError::NoChannel(_))) => {
                        assert!(
                            Instant::now() < deadline,
                            "round {round}: still refused: {err}; {client:?}; {}",
                            engine.dump()
                        );
                        client.poll(&mut batch);
                        std::thread::yield_now();
                    }
                    Err(err) => panic!("round {round}: {err}"),
                }
            }
            client.submit();
            outstanding = IN_FLIGHT;
            rounds.submitted.store(round, Ordering::Release);
        }
        let n = client.poll(&mut batch) as u64;
        outstanding -= n;
        if n > 0 && outstanding == 0 {
            rounds.collected.store(round, Ordering::Release);
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
}

/// One removal with `IN_FLIGHT` operations on the device when it begins.
fn removal(engine: &Engine, pool: &DmaPool, rounds: &Rounds, kind: Kind) -> RemovalReport {
    let emu = EmuConfig {
        channels: 1,
        mode: EmuMode::Threaded,
        ..EmuConfig::default()
    };
    let device = EmulatedDevice::new(emu, device_memory(pool)).unwrap();
    let ioat = IoatDevice::probe(
        "bench",
        device.registers(),
        Some(device.config_space()),
        pool.clone(),
        IoatConfig {
            ring_order: 9,
            ..IoatConfig::default()
        },
    )
    .unwrap();
    let fault = match kind {
        Kind::Orderly => Fault::Latency {
            channel: 0,
            per_descriptor: Duration::from_micros(2),
        },
        Kind::Surprise => Fault::Stall { channel: 0 },
    };
    // After the registration, which starts the channel: a stalled channel cannot start.
    let id = engine.register_device(ioat.spec()).unwrap();
    device.inject(fault).unwrap();
    let round = rounds.wanted.load(Ordering::Relaxed) + 1;
    rounds.wanted.store(round, Ordering::Release);
    wait_for(&rounds.submitted, round, "the round's submits");
    if let Kind::Surprise = kind {
        device.inject(Fault::SurpriseRemoval).unwrap();
    }
    let options = RemovalOptions {
        drain_timeout: PATIENCE,
        release_timeout: PATIENCE,
    };
    let report = engine.remove_device(id, options).unwrap();
    wait_for(&rounds.collected, round, "the round's completions");
    assert_eq!(report.in_flight_at_start, IN_FLIGHT, "{report}");
    assert!(report.released_after.is_some(), "{report}");
    report
}

fn hotplug_remove(c: &mut Criterion) {
    let mut group = c.benchmark_group("hotplug_remove");
    let engine = Engine::new(EngineConfig::with_cpus(1).log_hook(quiet())).unwrap();
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();

    group.bench_function(BenchmarkId::new("rebalance", "idle"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let spec = DeviceSpec::new("idle", CapMask::MEMCPY, NullChannel::many(1));
                let id = engine.register_device(spec).unwrap();
                let start = Instant::now();
                engine.unregister_device(id).unwrap();
                total += start.elapsed();
                engine.reclaim();
            }
            total
        })
    });

    let rounds = Rounds {
        wanted: AtomicU64::new(0),
        submitted: AtomicU64::new(0),
        collected: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        s.spawn(|| client_loop(&engine, &pool, &rounds));
        for (kind, label) in [(Kind::Orderly, "orderly"), (Kind::Surprise, "surprise")] {
            let figures: [(&str, Figure); 2] = [
                ("table_move", |r| r.table_moved_after),
                ("release", |r| r.released_after.unwrap()),
            ];
            for (figure, of) in figures {
                group.bench_function(
                    BenchmarkId::new(figure, format!("{label}_{IN_FLIGHT}")),
                    |b| {
                        b.iter_custom(|iters| {
                            (0..iters)
                                .map(|_| of(&removal(&engine, &pool, &rounds, kind)))
                                .sum()
                        })
                    },
                );
            }
        }
        rounds.wanted.store(u64::MAX, Ordering::Release);
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Every iteration builds a device and waits for a round of copies; the timed part is
    // microseconds, so a short measurement keeps the iteration count (and the run) small.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(20))
        .measurement_time(Duration::from_millis(100));
    targets = hotplug_remove
}
criterion_main!(benches);
