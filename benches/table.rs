//! Benchmarks of the engine core: a full table rebalance for 2..256 CPUs and 1..64 channels
//! (target: 256 CPUs x 64 channels in at most 1 ms), and the per-CPU lookup against a plain
//! slice index (the floor any table lookup could reach) measured in the same run.
//!
//! `cargo bench -p dmaplane --bench table`; `cargo test --benches` runs each once.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dmaplane::log::LogHook;
use dmaplane::{CapMask, Capability, DeviceSpec, Engine, EngineConfig, NullChannel};

fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

/// An engine of `cpus` CPUs with `channels` one-channel devices (as IOAT functions come) and
/// one client, so the table is populated.
fn populated(cpus: usize, channels: usize) -> Engine {
    let caps = CapMask::of(&[Capability::Memcpy, Capability::Fill]);
    let engine = Engine::new(EngineConfig::with_cpus(cpus).log_hook(quiet())).unwrap();
    for i in 0..channels {
        let spec = DeviceSpec::new(format!("ioat{i}"), caps, NullChannel::many(1));
        engine.register_device(spec).unwrap();
    }
    engine.get_client();
    engine
}

fn rebalance(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebalance");
    for cpus in [2, 16, 64, 256] {
        for channels in [1, 8, 64] {
            let engine = populated(cpus, channels);
            let mut online = true;
            group.bench_with_input(
                BenchmarkId::new(format!("{cpus}cpus"), format!("{channels}chan")),
                &cpus,
                |b, &cpus| {
                    // Each toggle of the last CPU is one full rebalance and publication.
                    b.iter(|| {
                        online = !online;
                        engine.set_cpu_online(cpus - 1, online).unwrap();
                    })
                },
            );
        }
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    let engine = populated(4, 4);
    let mut reader = engine.table_reader(2).unwrap();
    // Baseline: the same (row * cpus + cpu) index into a plain slice of shared channels and
    // the same read of the channel, with no publication and no grace period.
    let plain: Vec<Option<Arc<(u32, u16)>>> = (0..24).map(|i| Some(Arc::new((0, i)))).collect();
    group.bench_function("plain_slice_index", |b| {
        b.iter(|| {
            let (row, cpu) = (black_box(0usize), black_box(2usize));
            black_box(plain[row * 4 + cpu].as_deref().map(|c| c.1))
        })
    });
    group.bench_function("table_reader", |b| {
        b.iter(|| black_box(reader.lookup(black_box(Capability::Memcpy)).map(|c| c.id())))
    });
    group.bench_function("table_reader_with_quiescent", |b| {
        b.iter(|| {
            let id = reader.lookup(black_box(Capability::Memcpy)).map(|c| c.id());
            reader.quiescent();
            black_box(id)
        })
    });
    group.bench_function("engine_table_entry_locked", |b| {
        b.iter(|| {
            black_box(
                engine
                    .table_entry(black_box(Capability::Memcpy), 2)
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, rebalance, lookup);
criterion_main!(benches);
