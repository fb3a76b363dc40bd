//! Benchmarks of the data path: a [`Client`] copying through the channel the per-CPU table
//! gives its CPU, on the threaded emulated device, owned and shared, each next to a plain
//! memcpy baseline measured in the same run:
//!
//! - `datapath_copy/<size>` for 64 B, 4 KiB and 64 KiB: end-to-end operations per second at
//!   queue depth 1, 32 and 256 (`owned/qd<n>`, `shared/qd<n>`), a doorbell every
//!   min(depth, 32) operations and completions polled to refill the window, next to `memcpy`
//!   of the same size on the calling CPU. At depth 32 the window is a single doorbell batch;
//!   an owned channel asks for a completion write every 16 operations as well as at a batch's
//!   end, so the client sees progress and refills while the device is still busy;
//! - `datapath_driver_cost`: submitting-CPU time per 64-byte copy at batch 1 and 32
//!   (`owned/batch<n>`, `shared/batch<n>`): building, the doorbell share, and harvesting
//!   completions, with the time spent waiting for the device left out, next to one 64-byte
//!   `memcpy`. Each timed stretch brackets itself with two clock reads, which the figures
//!   include: about 20 ns per batch and per harvesting poll, and a shared client, chasing
//!   per-operation completion writes, harvests a batch in many polls where an owned one
//!   needs one.
//!
//! Owned: a one-CPU engine, so its client is alone on the channel and uses it without atomic
//! read-modify-writes. Shared: a two-CPU engine and a one-channel device, so both CPUs' table
//! slots name the same channel; the client for CPU 1 exists only to make it shared and never
//! submits or polls, so the measured client (CPU 0) does all the retiring, taking the retire
//! token and routing its own completions through its completion ring.
//!
//! `cargo bench -p dmaplane --bench datapath`; `cargo test --benches` runs each once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dmaplane::datapath::{Client, ClientConfig};
use dmaplane::dsa::{DsaConfig, DsaDevice, DsaLayout, DsaQueueConfig};
use dmaplane::emu::{DsaEmuConfig, EmuConfig, EmuMode, EmulatedDevice, EmulatedDsa, PoolMemory};
use dmaplane::ioat::{IoatConfig, IoatDevice};
use dmaplane::log::LogHook;
use dmaplane::mem::{DmaBlock, DmaPool, DmaPoolConfig};
use dmaplane::{Capability, Engine, EngineConfig};
use dmaplane::{Completion, OpFlags};

/// Copy sizes, with the labels their groups carry.
const SIZES: [(usize, &str); 3] = [(64, "64B"), (4096, "4KiB"), (65536, "64KiB")];
const QUEUE_DEPTHS: [u64; 3] = [1, 32, 256];
/// Operations per doorbell at the deeper queue depths, as in `benches/ioat.rs`: several batches
/// stay in flight, so the device works on one while the client harvests and refills another.
const KICK_BATCH: u64 = 32;
/// 1024 descriptor slots: room for the deepest queue with every operation one descriptor
/// (the device's XFERCAP is 1 MiB and the pool's IOVAs are its virtual addresses).
const RING_ORDER: u32 = 10;
/// How long a poll loop may see no completion before the bench gives up instead of hanging.
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// The pool as the emulated device's memory.
fn device_memory(pool: &DmaPool) -> Arc<PoolMemory> {
    // SAFETY: descriptors reach the device only through the clients' `unsafe` submit calls,
    // whose callers keep the named buffers alive and untouched until completion.
    Arc::new(unsafe { PoolMemory::new(pool.clone()) })
}

fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Owned,
    Shared,
}

impl Sharing {
    fn label(self) -> &'static str {
        match self {
            Sharing::Owned => "owned",
            Sharing::Shared => "shared",
        }
    }
}

/// An engine whose table hands out the one channel of a threaded emulated device, and the
/// client measured on it.
///
/// Fields drop in order: the clients drain and detach while their channel still runs.
struct Rig {
    sharing: Sharing,
    client: Client,
    /// The shared rig's client for CPU 1. Once made it never polls, so it never reports a
    /// quiescent state either; that would hold up a table change, but none happens here.
    _idle: Option<Client>,
    _engine: Engine,
    pool: DmaPool,
    /// The driver and the emulated device behind the channel, kept until the clients go.
    _devices: Box<dyn std::any::Any>,
    /// `""` for IOAT, `"dsa_"` for DSA: the prefix of the rig's benchmark ids.
    prefix: &'static str,
}

/// Which emulated engine a rig drives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ioat,
    Dsa,
}

impl Rig {
    fn new(sharing: Sharing, kind: Kind) -> Rig {
        let cpus = match sharing {
            Sharing::Owned => 1,
            Sharing::Shared => 2,
        };
        let engine = Engine::new(EngineConfig::with_cpus(cpus).log_hook(quiet())).unwrap();
        let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
        let (spec, devices): (_, Box<dyn std::any::Any>) = match kind {
            Kind::Ioat => {
                let emu = EmuConfig {
                    channels: 1,
                    mode: EmuMode::Threaded,
                    ..EmuConfig::default()
                };
                let device = EmulatedDevice::new(emu, device_memory(&pool)).unwrap();
                let ioat = IoatDevice::probe(
                    format!("emu-{}", sharing.label()),
                    device.registers(),
                    Some(device.config_space()),
                    pool.clone(),
                    IoatConfig {
                        ring_order: RING_ORDER,
                        ..IoatConfig::default()
                    },
                )
                .unwrap();
                (ioat.spec(), Box::new((ioat, device)))
            }
            Kind::Dsa => {
                let emu = DsaEmuConfig {
                    wqs: 1,
                    mode: EmuMode::Threaded,
                    ..DsaEmuConfig::default()
                };
                let device = EmulatedDsa::new(emu, device_memory(&pool)).unwrap();
                let dsa = DsaDevice::probe(
                    format!("dsa-{}", sharing.label()),
                    device.registers(),
                    device.portals(),
                    Some(device.config_space()),
                    pool.clone(),
                    DsaConfig {
                        layout: DsaLayout {
                            wqs: 1,
                            ..DsaLayout::default()
                        },
                        queue: DsaQueueConfig {
                            ring_order: RING_ORDER.min(12),
                            ..DsaQueueConfig::default()
                        },
                        ..DsaConfig::default()
                    },
                )
                .unwrap();
                (dsa.spec(), Box::new((dsa, device)))
            }
        };
        engine.register_device(spec).unwrap();
        let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
        let mut idle = (sharing == Sharing::Shared)
            .then(|| Client::new(&engine, Some(1), ClientConfig::default()).unwrap());
        let (id, owned) = client
            .channel(Capability::Memcpy)
            .expect("the table gives cpu 0 a memcpy channel");
        assert_eq!(
            owned,
            sharing == Sharing::Owned,
            "cpu 0 should use its channel {}",
            sharing.label()
        );
        if let Some(idle) = &mut idle {
            assert_eq!(
                idle.channel(Capability::Memcpy),
                Some((id, false)),
                "cpu 1 should share cpu 0's channel"
            );
        }
        Rig {
            sharing,
            client,
            _idle: idle,
            _engine: engine,
            pool,
            _devices: devices,
            prefix: match kind {
                Kind::Ioat => "",
                Kind::Dsa => "dsa_",
            },
        }
    }

    /// A source holding a pattern and a destination of `len` bytes, checked with one copy
    /// through the client, so a rig that moves no data fails here rather than benching.
    fn buffers(&mut self, len: usize) -> (DmaBlock, DmaBlock) {
        let mut src = self.pool.alloc(len, 64).unwrap();
        let dst = self.pool.alloc(len, 64).unwrap();
        let pattern: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ 0x5a)
            .collect();
        src.write_at(0, &pattern).unwrap();
        copy_at_depth(&mut self.client, &dst, &src, len, 1, 1);
        assert!(
            dst.to_vec() == pattern,
            "a {len}-byte copy through the {} client did not arrive",
            self.sharing.label()
        );
        (src, dst)
    }
}

/// Bounds a poll loop: panics once polls have found nothing for [`STALL_LIMIT`]. Looks at the
/// clock only every 1024 empty polls, so a loop making progress never reads it.
struct Watchdog {
    empty: u32,
    since: Option<Instant>,
}

impl Watchdog {
    fn new() -> Watchdog {
        Watchdog {
            empty: 0,
            since: None,
        }
    }

    #[inline]
    fn progress(&mut self) {
        self.empty = 0;
        self.since = None;
    }

    #[inline]
    fn empty_poll(&mut self, client: &Client) {
        self.empty = self.empty.wrapping_add(1);
        if self.empty % 1024 == 0 {
            let now = Instant::now();
            let since = *self.since.get_or_insert(now);
            assert!(
                now.duration_since(since) < STALL_LIMIT,
                "no completion for {STALL_LIMIT:?} with {} operation(s) in flight: {client:?}",
                client.in_flight()
            );
        }
        std::hint::spin_loop();
    }
}

/// Fails the bench on an operation the device reports as failed: its time would not be a
/// copy's.
#[inline]
fn check(done: &[Completion]) {
    if let Some(bad) = done.iter().find(|c| c.result.is_err()) {
        panic!("operation {} failed: {:?}", bad.user_data, bad.result);
    }
}

/// Copies `len` bytes from `src` to `dst` `iters` times with up to `depth` operations in
/// flight, and returns the time from the first submit to the last completion.
fn copy_at_depth(
    client: &mut Client,
    dst: &DmaBlock,
    src: &DmaBlock,
    len: usize,
    depth: u64,
    iters: u64,
) -> Duration {
    let batch = depth.min(KICK_BATCH);
    let mut done = [Completion::default(); 64];
    let mut watchdog = Watchdog::new();
    let (mut submitted, mut completed) = (0u64, 0u64);
    let start = Instant::now();
    while completed < iters {
        while submitted < iters && submitted - completed < depth {
            let last = submitted + 1 == iters
                || submitted - completed + 1 == depth
                || submitted % batch == batch - 1;
            let flags = if last { OpFlags::SUBMIT } else { OpFlags::NONE };
            // SAFETY: both blocks outlive every operation, all collected before this returns,
            // and nothing reads or writes them meanwhile (all operations write the same bytes).
            unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), len, submitted, flags) }
                .unwrap_or_else(|e| panic!("copy {submitted} refused: {e}"));
            submitted += 1;
        }
        let n = client.poll(&mut done);
        if n == 0 {
            watchdog.empty_poll(client);
        } else {
            check(&done[..n]);
            completed += n as u64;
            watchdog.progress();
        }
    }
    start.elapsed()
}

/// Copies 64 bytes `iters` times in batches of `batch` (a doorbell each), waiting for each
/// batch to complete before the next, and returns only the time the client's calls took:
/// building, ringing, and the polls that harvested something. Empty polls are the wait for
/// the device, which the driver does not cost.
fn driver_time(
    client: &mut Client,
    dst: &DmaBlock,
    src: &DmaBlock,
    batch: u64,
    iters: u64,
) -> Duration {
    let mut done = [Completion::default(); 64];
    let mut watchdog = Watchdog::new();
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
            // SAFETY: both blocks outlive every operation, all collected before this returns,
            // and nothing reads or writes them meanwhile.
            unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 64, issued + i, flags) }
                .unwrap_or_else(|e| panic!("copy {} refused: {e}", issued + i));
        }
        cpu += t.elapsed();
        let mut harvested = 0;
        while harvested < n {
            let t = Instant::now();
            let got = client.poll(&mut done);
            if got > 0 {
                cpu += t.elapsed();
                check(&done[..got]);
                harvested += got as u64;
                watchdog.progress();
            } else {
                watchdog.empty_poll(client);
            }
        }
        issued += n;
    }
    cpu
}

fn memcpy(src: &DmaBlock, dst: &DmaBlock, len: usize) {
    // SAFETY: two distinct live blocks of at least `len` bytes; the check copy that went
    // through them has completed, and no operation names them after it.
    unsafe {
        std::ptr::copy_nonoverlapping(black_box(src.as_ptr()), black_box(dst.as_mut_ptr()), len)
    }
}

/// IOAT and DSA, each owned and shared.
fn all_rigs() -> [Rig; 4] {
    [
        Rig::new(Sharing::Owned, Kind::Ioat),
        Rig::new(Sharing::Shared, Kind::Ioat),
        Rig::new(Sharing::Owned, Kind::Dsa),
        Rig::new(Sharing::Shared, Kind::Dsa),
    ]
}

fn datapath_copy(c: &mut Criterion) {
    let mut rigs = all_rigs();
    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("datapath_copy/{label}"));
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: size as u64,
        });
        let (src, dst) = rigs[0].buffers(size);
        group.bench_function("memcpy", |b| b.iter(|| memcpy(&src, &dst, size)));
        for rig in &mut rigs {
            let (src, dst) = rig.buffers(size);
            for depth in QUEUE_DEPTHS {
                group.bench_function(
                    BenchmarkId::new(
                        format!("{}{}", rig.prefix, rig.sharing.label()),
                        format!("qd{depth}"),
                    ),
                    |b| {
                        b.iter_custom(|iters| {
                            copy_at_depth(&mut rig.client, &dst, &src, size, depth, iters)
                        })
                    },
                );
            }
        }
        group.finish();
    }
}

fn datapath_driver_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("datapath_driver_cost");
    group.throughput(Throughput::Elements(1));
    let mut rigs = all_rigs();
    let (src, dst) = rigs[0].buffers(64);
    group.bench_function("memcpy_64B", |b| b.iter(|| memcpy(&src, &dst, 64)));
    for rig in &mut rigs {
        let (src, dst) = rig.buffers(64);
        for batch in [1u64, 32] {
            group.bench_function(
                BenchmarkId::new(
                    format!("{}{}", rig.prefix, rig.sharing.label()),
                    format!("batch{batch}"),
                ),
                |b| b.iter_custom(|iters| driver_time(&mut rig.client, &dst, &src, batch, iters)),
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: every client bench keeps two threads busy (the bench's and the emulated
    // device's device thread) on hosts that may have only two cores, shared.
    config = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(2500));
    targets = datapath_copy, datapath_driver_cost
}
criterion_main!(benches);
