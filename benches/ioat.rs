//! Benchmarks of the IOAT driver on the threaded emulated device, each next to a plain memcpy
//! baseline measured in the same run:
//!
//! - `copy/<size>`: copy throughput from 64 B to 1 MiB at queue depth 128, a doorbell every
//!   32 operations, through one channel,
//!   and `memcpy` of the same size on the calling CPU;
//! - `driver_cost/batch<n>`: submitting-CPU time per operation for null descriptors at batch
//!   sizes 1, 16 and 64 (building, the doorbell share, and harvesting completions; time spent
//!   waiting for the device is excluded), next to one 64-byte memcpy.
//!
//! `cargo bench -p dmaplane --bench ioat`; `cargo test --benches` runs each once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, PoolMemory};
use dmaplane::ioat::{IoatChannel, IoatConfig};
use dmaplane::mem::{DmaPool, DmaPoolConfig};
use dmaplane::{Completion, OpFlags};

const QUEUE_DEPTH: u64 = 128;
/// Operations per doorbell, as dma-perf's `kick_batch`. Several batches stay in flight, so
/// the device works on one while the submitter harvests and refills another.
const KICK_BATCH: u64 = 32;

/// The pool as the emulated device's memory.
fn device_memory(pool: &DmaPool) -> Arc<PoolMemory> {
    // SAFETY: descriptors reach the device only through the driver's `unsafe` submit calls,
    // whose callers keep the named buffers alive and untouched until completion.
    Arc::new(unsafe { PoolMemory::new(pool.clone()) })
}

fn threaded_channel(pool: &DmaPool) -> (Arc<EmulatedDevice>, IoatChannel) {
    let emu = EmuConfig {
        mode: EmuMode::Threaded,
        ..EmuConfig::default()
    };
    let device = EmulatedDevice::new(emu, device_memory(pool)).unwrap();
    let chan = IoatChannel::start(
        device.registers(),
        Some(device.config_space()),
        0,
        pool,
        IoatConfig::default(),
    )
    .unwrap();
    (device, chan)
}

fn copy(c: &mut Criterion) {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let (_device, mut chan) = threaded_channel(&pool);
    let mut group = c.benchmark_group("copy");
    for size in [64usize, 512, 4096, 65536, 1 << 20] {
        let src = pool.alloc(size, 64).unwrap();
        let dst = pool.alloc(size, 64).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, &size| {
            b.iter(|| {
                // SAFETY: two distinct live blocks of `size` bytes; no DMA touches them here.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        black_box(src.as_ptr()),
                        black_box(dst.as_mut_ptr()),
                        size,
                    )
                }
            })
        });
        group.bench_with_input(
            BenchmarkId::new("ioat_emulated_qd128", size),
            &size,
            |b, &size| {
                b.iter_custom(|iters| {
                    let mut done = [Completion {
                        user_data: 0,
                        result: Ok(()),
                        value: 0,
                    }; 64];
                    let (mut submitted, mut completed) = (0u64, 0u64);
                    let start = Instant::now();
                    while completed < iters {
                        while submitted < iters && submitted - completed < QUEUE_DEPTH {
                            let last = submitted + 1 == iters
                                || submitted - completed + 1 == QUEUE_DEPTH
                                || submitted % KICK_BATCH == KICK_BATCH - 1;
                            let flags = if last { OpFlags::SUBMIT } else { OpFlags::NONE };
                            // SAFETY: the blocks outlive every operation, all drained before
                            // this closure returns; nothing reads them meanwhile.
                            unsafe {
                                chan.copy(dst.as_mut_ptr(), src.as_ptr(), size, submitted, flags)
                                    .unwrap()
                            };
                            submitted += 1;
                        }
                        let n = chan.poll(&mut done);
                        completed += n as u64;
                        if n == 0 {
                            std::hint::spin_loop();
                        }
                    }
                    start.elapsed()
                })
            },
        );
    }
    group.finish();
}

fn driver_cost(c: &mut Criterion) {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let (_device, mut chan) = threaded_channel(&pool);
    let src = pool.alloc(64, 64).unwrap();
    let dst = pool.alloc(64, 64).unwrap();
    let mut group = c.benchmark_group("driver_cost");
    group.bench_function("memcpy_64B", |b| {
        b.iter(|| {
            // SAFETY: two distinct live 64-byte blocks; no DMA touches them here.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    black_box(src.as_ptr()),
                    black_box(dst.as_mut_ptr()),
                    64,
                )
            }
        })
    });
    for batch in [1u64, 16, 64] {
        group.bench_with_input(
            BenchmarkId::new("null_batch", batch),
            &batch,
            |b, &batch| {
                b.iter_custom(|iters| {
                    let mut done = [Completion {
                        user_data: 0,
                        result: Ok(()),
                        value: 0,
                    }; 64];
                    let mut cpu = Duration::ZERO;
                    let mut issued = 0u64;
                    while issued < iters {
                        let n = batch.min(iters - issued);
                        let t = Instant::now();
                        for i in 0..n {
                            let flags = if i + 1 == n {
                                OpFlags::SUBMIT
                            } else {
                                OpFlags::NONE
                            };
                            chan.null(issued + i, flags).unwrap();
                        }
                        cpu += t.elapsed();
                        let mut harvested = 0;
                        while harvested < n {
                            let t = Instant::now();
                            let got = chan.poll(&mut done) as u64;
                            if got > 0 {
                                cpu += t.elapsed(); // only polls that harvested count as cost
                                harvested += got;
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        issued += n;
                    }
                    cpu
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, copy, driver_cost);
criterion_main!(benches);
