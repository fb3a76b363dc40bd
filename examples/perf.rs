//! Measures copy throughput through emulated IOAT devices (or the devices `--backend` names:
//! the software engine, or real IOAT functions through VFIO or sysfs), in the manner of SPDK's ioat `perf`
//! tool: one client thread per chosen CPU keeps a fixed number of copies in flight on the
//! channel the per-CPU table gives it, a progress line is printed every second, and the end
//! shows operations and MiB per second per channel, the total, the engine's own per-channel
//! counts, and a single-thread memcpy baseline of the same size measured in the same run.
//! A sample of the copies is checked byte for byte (each slot's first copy, and each slot's
//! next copy after every second), so a device that moved the wrong bytes makes the run fail.
//!
//! `cargo run --release --example perf -- [--size BYTES] [--queue-depth N] [--seconds S]
//! [--devices N] [--channels N] [--cpus LIST] [--no-pin] [--backend B]`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Barrier};
use std::time::{Duration, Instant};

use dmaplane::cpu::{format_cpu_list, parse_cpu_list, system_cpus};
use dmaplane::datapath::{Client, ClientConfig, ClientError};
use dmaplane::emu::EmuMode;
use dmaplane::mem::{DmaBlock, DmaPool};
use dmaplane::{Capability, ChannelId, Engine, EngineConfig};
use dmaplane::{Completion, OpFlags, SubmitError};

mod common;
use common::*;

const USAGE: &str = "usage: perf [--size BYTES] [--queue-depth N] [--seconds S] [--devices N]
            [--channels N] [--cpus LIST] [--no-pin] [--backend B]

Copies through threaded emulated IOAT devices (or the devices --backend names)
from one client thread per CPU,
each keeping N copies in flight on the channel the per-CPU table gives its CPU
(a doorbell every min(N, 32) copies). Prints progress every second, then
operations and MiB per second per channel and in total, the engine's counts per
channel, and a single-thread memcpy of the same size measured in the same run.
Each slot's first copy, and its next copy after every second, is checked byte
for byte; a mismatch or a failed copy makes the exit status non-zero.

  --size BYTES        bytes per copy; suffixes k, m, g (binary) (default 4096)
  --queue-depth N     copies in flight per thread, 1 to 255 (default 32)
  --seconds S         run time, may be fractional (default 5)
  --devices N         emulated devices (default 1)
  --channels N        channels per device, 1 to 4 (default 2)
  --cpus LIST         CPUs to run client threads on, such as 0,1 or 0-3
                      (default: the first 2 online CPUs, fewer on a smaller machine)
  --no-pin            do not pin the client threads to their CPUs";

/// Operations per doorbell at most, as in `benches/datapath.rs`: with a deeper queue several
/// batches stay in flight, so the device works on one while the client refills another.
const KICK_BATCH: usize = 32;
/// Slots are told apart by the low byte of the user data.
const MAX_QUEUE_DEPTH: usize = 255;
/// What a sampled destination holds before its copy: the source pattern never starts with it,
/// so a copy that moved nothing shows.
const POISON: u8 = 0xa5;
/// Mismatches each thread describes; the rest are only counted.
const MISMATCHES_SHOWN: u64 = 4;
/// How long a thread may see no completion, with copies in flight, before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(10);

struct Options {
    size: usize,
    queue_depth: usize,
    seconds: f64,
    devices: usize,
    channels: usize,
    cpus: Option<Vec<usize>>,
    pin: bool,
    backend: BackendChoice,
    allow_noiommu: bool,
}

/// A byte count such as `64`, `4k`, `64K`, `1m` or `2g` (binary multiples).
fn parse_size(text: &str) -> Option<usize> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, multiplier) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 1usize << 10),
        'm' => (&lower[..lower.len() - 1], 1 << 20),
        'g' => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(multiplier)
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        size: 4096,
        queue_depth: 32,
        seconds: 5.0,
        devices: 1,
        channels: 2,
        cpus: None,
        pin: true,
        backend: BackendChoice::Emulated,
        allow_noiommu: false,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size" => {
                let text = option_value(&mut args, "--size")?;
                options.size = parse_size(&text)
                    .filter(|&s| s > 0)
                    .ok_or(format!("--size: {text:?} is not a byte count such as 4k"))?;
            }
            "--queue-depth" => {
                options.queue_depth = option_number(&mut args, "--queue-depth")?;
                if !(1..=MAX_QUEUE_DEPTH).contains(&options.queue_depth) {
                    return Err(format!("--queue-depth must be 1 to {MAX_QUEUE_DEPTH}"));
                }
            }
            "--seconds" => options.seconds = option_seconds(&mut args, "--seconds")?,
            "--devices" => options.devices = option_number(&mut args, "--devices")?,
            "--channels" => options.channels = option_number(&mut args, "--channels")?,
            "--cpus" => {
                let text = option_value(&mut args, "--cpus")?;
                let cpus = parse_cpu_list(&text)
                    .filter(|c| !c.is_empty())
                    .ok_or(format!("--cpus: {text:?} is not a CPU list such as 0-3"))?;
                options.cpus = Some(cpus);
            }
            "--no-pin" => options.pin = false,
            "--backend" => options.backend = option_backend(&mut args, "--backend")?,
            "--allow-noiommu" => options.allow_noiommu = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    Ok(options)
}

fn mib_per_second(bytes: f64, seconds: f64) -> f64 {
    bytes / seconds / (1u64 << 20) as f64
}

/// What the main thread shares with the client threads.
struct Shared {
    /// Set when the run time is over: stop submitting, collect what is in flight.
    stop: AtomicBool,
    /// Bumped every second: each thread then checks the next copy of each of its slots.
    sample_epoch: AtomicU64,
    /// Copies completed so far, per thread (written by that thread only).
    completed: Vec<PaddedCounter>,
    /// Where the client threads, once set up, wait for the main thread to start the clock.
    start: Barrier,
}

/// What a client thread reports once it is set up.
struct ThreadReady {
    cpu: usize,
    note: Option<String>,
}

/// What a client thread did.
struct ThreadResult {
    cpu: usize,
    /// The channel the table gave the thread's CPU, and whether the client owned it.
    channel: Option<(ChannelId, bool)>,
    /// Copies completed before the stop.
    ops_in_window: u64,
    /// Copies collected after the stop (not counted in the rates).
    ops_after_stop: u64,
    checked: u64,
    mismatches: u64,
    failed: u64,
    /// Copies still in flight when the thread gave up waiting.
    lost: u64,
    error: Option<String>,
}

/// One client thread: `queue_depth` copies of `size` bytes in flight until `shared.stop`, then
/// collects the rest.
struct CopyLoop<'a> {
    client: Client,
    shared: &'a Shared,
    index: usize,
    size: usize,
    queue_depth: usize,
    src: DmaBlock,
    pattern: Vec<u8>,
    /// One destination per slot: a slot's copy is the only one that writes it, so a sampled
    /// slot can be checked when its completion arrives.
    dsts: Vec<DmaBlock>,
    scratch: Vec<u8>,
    result: ThreadResult,
}

impl CopyLoop<'_> {
    fn run(&mut self) {
        let batch = self.queue_depth.min(KICK_BATCH);
        let mut free: Vec<usize> = (0..self.queue_depth).rev().collect();
        // Every slot's first copy is checked.
        let mut sample_next = vec![true; self.queue_depth];
        let mut checking = vec![false; self.queue_depth];
        let mut seen_epoch = 0u64;
        let mut queued = 0usize;
        let mut done = [Completion::default(); 64];
        let mut completed = 0u64;
        let mut stopped = false;
        let mut last_progress = Instant::now();
        let mut empty_polls = 0u32;
        loop {
            if !stopped && self.shared.stop.load(Ordering::Relaxed) {
                stopped = true;
                self.result.ops_in_window = completed;
                self.client.submit();
            }
            if stopped && free.len() == self.queue_depth {
                break;
            }
            let epoch = self.shared.sample_epoch.load(Ordering::Relaxed);
            if epoch != seen_epoch {
                seen_epoch = epoch;
                sample_next.fill(true);
            }
            while let Some(&slot) = free.last().filter(|_| !stopped) {
                // The doorbell rings at a batch's end and when the window is full.
                let ring = free.len() == 1 || queued + 1 == batch;
                let flags = if ring { OpFlags::SUBMIT } else { OpFlags::NONE };
                if sample_next[slot] {
                    self.dsts[slot].fill(POISON);
                }
                // SAFETY: the slot's destination and the source stay allocated and untouched
                // until the copy's completion is polled: the slot is not reused before then,
                // and the loop collects every completion before returning (or, giving up,
                // `client_thread` leaks the buffers so that they stay allocated for good).
                let result = unsafe {
                    self.client.copy(
                        self.dsts[slot].as_mut_ptr(),
                        self.src.as_ptr(),
                        self.size,
                        slot as u64,
                        flags,
                    )
                };
                match result {
                    Ok(()) => {
                        free.pop();
                        checking[slot] = sample_next[slot];
                        sample_next[slot] = false;
                        queued = if ring { 0 } else { queued + 1 };
                    }
                    // Backpressure: ring what is queued, collect completions, try again.
                    Err(
                        ClientError::Migrating
                        | ClientError::CompletionRingFull { .. }
                        | ClientError::Submit(SubmitError::RingFull { .. }),
                    ) => {
                        self.client.submit();
                        queued = 0;
                        break;
                    }
                    Err(err) => {
                        self.result.error = Some(format!("copy refused: {err}"));
                        self.shared.stop.store(true, Ordering::Relaxed);
                        self.client.submit();
                        queued = 0;
                        stopped = true;
                        self.result.ops_in_window = completed;
                        break;
                    }
                }
            }
            let n = self.client.poll(&mut done);
            for completion in &done[..n] {
                let slot = completion.user_data as usize;
                if completion.result.is_err() {
                    self.result.failed += 1;
                    if self.result.failed == 1 {
                        eprintln!(
                            "perf: cpu{}: copy failed: {:?}",
                            self.result.cpu, completion.result
                        );
                    }
                } else if checking[slot] {
                    self.check(slot);
                }
                checking[slot] = false;
                free.push(slot);
            }
            if n > 0 {
                completed += n as u64;
                self.shared.completed[self.index]
                    .0
                    .store(completed, Ordering::Relaxed);
                last_progress = Instant::now();
                empty_polls = 0;
            } else {
                empty_polls += 1;
                // Read the clock only now and then: a loop making progress never does.
                if empty_polls % 1024 == 0 && last_progress.elapsed() > STALL_LIMIT {
                    self.result.lost = (self.queue_depth - free.len()) as u64;
                    self.result.error = Some(format!(
                        "no completion for {STALL_LIMIT:?} with {} copies in flight",
                        self.result.lost
                    ));
                    self.shared.stop.store(true, Ordering::Relaxed);
                    break;
                }
                // The emulated devices' device thread may share this core: let it run.
                if empty_polls % 64 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        if !stopped {
            self.result.ops_in_window = completed;
        }
        self.result.ops_after_stop = completed.saturating_sub(self.result.ops_in_window);
        self.result.channel = self.client.channel(Capability::Memcpy);
    }

    /// Compares a sampled slot's destination with the source.
    fn check(&mut self, slot: usize) {
        self.result.checked += 1;
        if self.dsts[slot].read_at(0, &mut self.scratch).is_err() {
            self.result.mismatches += 1;
            return;
        }
        if self.scratch != self.pattern {
            self.result.mismatches += 1;
            if self.result.mismatches > MISMATCHES_SHOWN {
                return;
            }
            let first = self
                .scratch
                .iter()
                .zip(&self.pattern)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            eprintln!(
                "perf: cpu{}: slot {slot}: MISMATCH at byte {first}: {:#04x}, expected {:#04x}",
                self.result.cpu, self.scratch[first], self.pattern[first]
            );
        }
    }
}

/// Sets up a client for `cpu` (pinned if asked and possible), reports through `ready`, waits
/// for the start, and runs the copy loop.
fn client_thread(
    engine: &Engine,
    pool: &DmaPool,
    shared: &Shared,
    index: usize,
    cpu: usize,
    options: &Options,
    ready: mpsc::Sender<ThreadReady>,
) -> ThreadResult {
    let mut result = ThreadResult {
        cpu,
        channel: None,
        ops_in_window: 0,
        ops_after_stop: 0,
        checked: 0,
        mismatches: 0,
        failed: 0,
        lost: 0,
        error: None,
    };
    let config = ClientConfig::default();
    let mut note = None;
    let client = if options.pin {
        match Client::pinned(engine, cpu, config) {
            Err(ClientError::Pin(_)) => {
                note = Some(format!(
                    "cannot pin a thread to cpu{cpu}: running it unpinned"
                ));
                Client::new(engine, Some(cpu), config)
            }
            other => other,
        }
    } else {
        Client::new(engine, Some(cpu), config)
    };
    let buffers = (|| -> Result<(DmaBlock, Vec<u8>, Vec<DmaBlock>), String> {
        let mut src = pool.alloc(options.size, 64).map_err(|e| e.to_string())?;
        let pattern: Vec<u8> = (0..options.size)
            .map(|i| (i as u8).wrapping_mul(31) ^ 0x5a ^ (cpu as u8).wrapping_mul(16))
            .collect();
        src.write_at(0, &pattern).map_err(|e| e.to_string())?;
        let dsts = (0..options.queue_depth)
            .map(|_| pool.alloc(options.size, 64).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok((src, pattern, dsts))
    })();
    let _ = ready.send(ThreadReady { cpu, note });
    // Every thread reaches the barrier, set up or not, so the main thread never waits forever.
    shared.start.wait();
    let (client, (src, pattern, dsts)) = match (client, buffers) {
        (Ok(client), Ok(buffers)) => (client, buffers),
        (Err(err), _) => {
            result.error = Some(format!("no client: {err}"));
            return result;
        }
        (_, Err(err)) => {
            result.error = Some(format!("no DMA buffers: {err}"));
            return result;
        }
    };
    let mut copy_loop = CopyLoop {
        client,
        shared,
        index,
        size: options.size,
        queue_depth: options.queue_depth,
        src,
        pattern,
        dsts,
        scratch: vec![0; options.size],
        result,
    };
    copy_loop.run();
    let CopyLoop {
        client,
        src,
        dsts,
        result,
        ..
    } = copy_loop;
    if result.lost > 0 {
        // The client gives up on the copies still in flight when it is dropped and keeps
        // their channel referenced for good; the device may still write where they point, so
        // the buffers never go back to the pool either.
        std::mem::forget(src);
        std::mem::forget(dsts);
    }
    drop(client);
    result
}

/// Copies `size` bytes between two buffers on the calling thread for about `duration`;
/// returns copies and the time they took.
fn memcpy_baseline(pool: &DmaPool, size: usize, duration: Duration) -> Result<(u64, f64), String> {
    let mut src = pool.alloc(size, 64).map_err(|e| e.to_string())?;
    let dst = pool.alloc(size, 64).map_err(|e| e.to_string())?;
    src.fill(0x5a);
    // Read the clock about every 10 µs of copying, so that its cost stays out of the figure.
    let per_clock_read = (10_000 / size.max(1)).clamp(1, 4096) as u64;
    let mut copies = 0u64;
    let started = Instant::now();
    loop {
        for _ in 0..per_clock_read {
            // SAFETY: two distinct live blocks of `size` bytes; no DMA operation names them.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    black_box(src.as_ptr()),
                    black_box(dst.as_mut_ptr()),
                    size,
                )
            };
        }
        copies += per_clock_read;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            if dst.to_vec() != src.to_vec() {
                return Err("the memcpy baseline copied the wrong bytes".into());
            }
            return Ok((copies, elapsed.as_secs_f64()));
        }
    }
}

fn run(options: Options) -> Result<(), String> {
    let cpus = match &options.cpus {
        Some(cpus) => cpus.clone(),
        None => system_cpus().1.into_iter().take(2).collect(),
    };
    let possible_cpus = cpus.iter().max().map_or(1, |&max| max + 1);
    // Only the CPUs with a client thread are online, so the table spreads the channels over
    // them alone.
    let config = EngineConfig {
        possible_cpus,
        online_cpus: cpus.clone(),
        ..EngineConfig::with_cpus(possible_cpus)
    }
    .log_hook(quiet());
    let builder = dmaplane::Setup::builder()
        .engine_config(config)
        .channels_per_device(options.channels)
        .emulation(EmuMode::Threaded)
        .ring_order(12);
    let setup = options
        .backend
        .apply(builder, options.devices, options.allow_noiommu)
        .build()
        .map_err(|e| e.to_string())?;
    let (engine, pool) = (setup.engine(), setup.pool());
    let devices = setup.devices();
    let channels: usize = engine.dump().devices.iter().map(|d| d.channels.len()).sum();
    println!(
        "perf: {} B copies, queue depth {}, {} s, {} {:?} device(s) ({}) with {} channel(s), \
         cpus {}{}",
        options.size,
        options.queue_depth,
        options.seconds,
        devices.len(),
        setup.device_kind(),
        devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        channels,
        format_cpu_list(&cpus),
        if options.pin { "" } else { " (not pinned)" }
    );

    let shared = Shared {
        stop: AtomicBool::new(false),
        sample_epoch: AtomicU64::new(0),
        completed: cpus.iter().map(|_| PaddedCounter::default()).collect(),
        start: Barrier::new(cpus.len() + 1),
    };
    let run_time = Duration::from_secs_f64(options.seconds);
    let (results, window) = std::thread::scope(|s| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let threads: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(index, &cpu)| {
                let (shared, options) = (&shared, &options);
                let ready = ready_tx.clone();
                s.spawn(move || client_thread(engine, pool, shared, index, cpu, options, ready))
            })
            .collect();
        drop(ready_tx);
        let readies: Vec<ThreadReady> = ready_rx.iter().take(cpus.len()).collect();
        shared.start.wait();
        let started = Instant::now();
        let _stop_clients = StopOnDrop(&shared.stop);
        for ready in readies {
            if let Some(note) = ready.note {
                println!("cpu{}: {note}", ready.cpu);
            }
        }
        let mut last = (started, 0u64);
        let mut second = 1u32;
        loop {
            let next = started + Duration::from_secs(u64::from(second));
            let end = started + run_time;
            let now = Instant::now();
            if now >= end || shared.stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(next.min(end) - now);
            if Instant::now() >= next {
                shared.sample_epoch.fetch_add(1, Ordering::Relaxed);
                let total: u64 = shared
                    .completed
                    .iter()
                    .map(|c| c.0.load(Ordering::Relaxed))
                    .sum();
                let now = Instant::now();
                let interval = now.duration_since(last.0).as_secs_f64();
                let ops = (total - last.1) as f64;
                println!(
                    "[{:5.1} s] {:>12.0} ops/s {:>10.1} MiB/s",
                    now.duration_since(started).as_secs_f64(),
                    ops / interval,
                    mib_per_second(ops * options.size as f64, interval)
                );
                last = (now, total);
                second += 1;
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
        let window = started.elapsed().as_secs_f64();
        let results: Vec<ThreadResult> = threads
            .into_iter()
            .map(|t| t.join().expect("a client thread panicked"))
            .collect();
        (results, window)
    });

    // Clients aggregated by the channel they used.
    let mut by_channel: BTreeMap<Option<ChannelId>, (Vec<usize>, bool, u64)> = BTreeMap::new();
    for r in &results {
        let entry = by_channel
            .entry(r.channel.map(|c| c.0))
            .or_insert((Vec::new(), true, 0));
        entry.0.push(r.cpu);
        entry.1 &= r.channel.is_some_and(|c| c.1);
        entry.2 += r.ops_in_window;
    }
    let size = options.size as f64;
    println!(
        "\n{:<9} {:<7} {:<8} {:>14} {:>12}",
        "channel", "mode", "cpus", "ops/s", "MiB/s"
    );
    let mut total_ops = 0u64;
    for (channel, (channel_cpus, owned, ops)) in &by_channel {
        total_ops += ops;
        let name = channel.map_or("none".to_string(), |c| c.to_string());
        let mode = if channel.is_none() {
            "-"
        } else if *owned {
            "owned"
        } else {
            "shared"
        };
        println!(
            "{name:<9} {mode:<7} {:<8} {:>14.0} {:>12.1}",
            format_cpu_list(channel_cpus),
            *ops as f64 / window,
            mib_per_second(*ops as f64 * size, window)
        );
    }
    let total_rate = total_ops as f64 / window;
    println!(
        "{:<9} {:<7} {:<8} {:>14.0} {:>12.1}",
        "total",
        "",
        format_cpu_list(&cpus),
        total_rate,
        mib_per_second(total_ops as f64 * size, window)
    );
    let baseline_time = (run_time / 5).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let (copies, seconds) = memcpy_baseline(pool, options.size, baseline_time)?;
    let memcpy_rate = copies as f64 / seconds;
    println!(
        "{:<9} {:<7} {:<8} {:>14.0} {:>12.1}   dmaplane total / memcpy = {:.3}",
        "memcpy",
        "1 thread",
        "",
        memcpy_rate,
        mib_per_second(copies as f64 * size, seconds),
        total_rate / memcpy_rate
    );

    println!("\nengine counts per channel (whole run, checks included):");
    for device in engine.dump().devices {
        for channel in device.channels {
            match engine.channel_stats(channel.id) {
                Ok(counts) => println!(
                    "  channel {:<6} ops ok {:>12}  failed {:>6}  bytes {:>16}",
                    channel.id.to_string(),
                    counts.ops_ok,
                    counts.ops_failed,
                    counts.bytes
                ),
                Err(err) => println!("  channel {}: {err}", channel.id),
            }
        }
    }

    let sum = |f: fn(&ThreadResult) -> u64| results.iter().map(f).sum::<u64>();
    let (checked, mismatches, failed, lost) = (
        sum(|r| r.checked),
        sum(|r| r.mismatches),
        sum(|r| r.failed),
        sum(|r| r.lost),
    );
    println!(
        "\n{} copies in the {window:.2} s window, {} collected after it; {checked} checked \
         byte for byte, {mismatches} mismatched; {failed} failed; {lost} lost",
        total_ops,
        sum(|r| r.ops_after_stop)
    );
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("cpu{}: {e}", r.cpu)))
        .collect();
    for error in &errors {
        eprintln!("perf: {error}");
    }
    if mismatches > 0 || failed > 0 || lost > 0 || !errors.is_empty() {
        return Err("the run did not verify".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let usage = format!("{USAGE}\n{BACKEND_USAGE}\n  --help              this text");
    common::main_of("perf", &usage, parse, run)
}
