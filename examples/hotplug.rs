//! A live demonstration of hot-removal: client threads copy through threaded emulated IOAT
//! devices in the background while, about once a second, the main thread removes one device
//! (orderly and by surprise in turn) and adds a new one in its place. Around each removal it
//! prints the per-CPU memcpy table, the removal report (operations drained and failed, how
//! soon the table moved off the device and its channels were released), and the table again
//! after the new device arrives. The clients check every copy; the summary counts operations
//! by outcome and the lost ones (submitted minus completed), and the exit status is non-zero
//! if any operation was lost or any copy's bytes were wrong.
//!
//! `cargo run --release --example hotplug -- [--seconds S] [--clients N] [--devices N]`

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dmaplane::datapath::{Client, ClientConfig, ClientError};
use dmaplane::emu::EmuMode;
use dmaplane::hotplug::{HotplugEvent, Monitor, MonitorConfig};
use dmaplane::mem::DmaPool;
use dmaplane::{Capability, DeviceId, Engine, Removal, RemovalOptions, RemovalReport, Setup};
use dmaplane::{Completion, OpError, OpFlags, SubmitError};

mod common;
use common::*;

const USAGE: &str =
    "usage: hotplug [--seconds S] [--clients N] [--devices N] [--backend ioat|dsa|mixed|soft]

Client threads, one per engine CPU, copy through threaded emulated IOAT devices
(one channel each) and check every copy. About once a second the main thread
removes a device, orderly and by surprise in turn, prints the per-CPU memcpy
table before and after, the removal report, then adds a new device and prints
the table again. Ends with operations by outcome and the lost ones; exits
non-zero if any operation was lost or any copy was wrong.

  --seconds S    run time in whole seconds, at least 2 (default 6)
  --clients N    client threads, each on its own engine CPU (default 4)
  --devices N    emulated devices (default 3)
  --backend B    ioat (emulated IOAT, the default), dsa (emulated DSA), mixed
                 (both by turns) or soft (the CPU copies)
  --help         this text";

/// Copies each client keeps in flight, one per destination slot.
const DEPTH: usize = 16;
/// The longest copy, and the size of each client's source.
const MAX_LEN: usize = 4096;
/// Bytes after each copy's end that must stay untouched.
const GUARD: usize = 64;
/// What a destination slot holds where no copy wrote.
const POISON: u8 = 0xa5;
/// How long the main thread waits for a removal's report, and the clients for their last
/// copies.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

struct Options {
    seconds: u64,
    clients: usize,
    devices: usize,
    backend: BackendChoice,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        seconds: 6,
        clients: 4,
        devices: 3,
        backend: BackendChoice::Emulated,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => options.seconds = option_number(&mut args, "--seconds")?,
            "--clients" => options.clients = option_number(&mut args, "--clients")?,
            "--devices" => options.devices = option_number(&mut args, "--devices")?,
            "--backend" => {
                options.backend = option_backend(&mut args, "--backend")?;
                if options.backend.is_hardware() {
                    return Err(
                        "--backend: this example removes devices by surprise, which \
                                only emulated and software devices can do"
                            .into(),
                    );
                }
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.seconds < 2 {
        return Err("--seconds must be at least 2: removals start after the first second".into());
    }
    if options.clients == 0 || options.devices == 0 {
        return Err("--clients and --devices must be at least 1".into());
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------------
// The clients: random copies, each checked when it completes.

/// What one client did. Every count is of operations.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    submitted: u64,
    completed: u64,
    succeeded: u64,
    /// Completed with "device removed": what was in flight on a device that left.
    removed: u64,
    /// Completed with another error, or refused for a reason a removal does not explain.
    errors: u64,
    /// Succeeded with wrong bytes, or wrote past the copy's end.
    mismatches: u64,
    /// Completions that match no pending copy (a second completion, say).
    unaccounted: u64,
}

/// Copies random stretches of a pattern into `DEPTH` slots until `stop`, then collects what is
/// in flight. Refusals while devices come and go (migrating, no channel, device removed,
/// backpressure) are retried.
fn copy_loop(
    client: &mut Client,
    pool: &DmaPool,
    thread: usize,
    stop: &AtomicBool,
    submitted: &PaddedCounter,
) -> Result<Tally, String> {
    let mut rng = SplitMix(0x0d15_ea5e ^ thread as u64);
    let mut src = pool.alloc(MAX_LEN, 64).map_err(|e| e.to_string())?;
    let pattern: Vec<u8> = (0..MAX_LEN)
        .map(|i| (i as u8).wrapping_mul(13) ^ (thread as u8).wrapping_mul(41))
        .collect();
    src.write_at(0, &pattern).map_err(|e| e.to_string())?;
    let mut slots = Vec::with_capacity(DEPTH);
    for _ in 0..DEPTH {
        let mut slot = pool.alloc(MAX_LEN + GUARD, 64).map_err(|e| e.to_string())?;
        slot.fill(POISON);
        slots.push(slot);
    }
    let mut free: Vec<usize> = (0..DEPTH).collect();
    // Per slot: the copy's sequence number, source offset and length.
    let mut pending: Vec<Option<(u64, usize, usize)>> = vec![None; DEPTH];
    let mut tally = Tally::default();
    let mut scratch = vec![0u8; MAX_LEN + GUARD];
    let mut batch = [Completion::default(); 32];
    let mut drain_deadline = None;
    loop {
        if stop.load(Ordering::Acquire) {
            if free.len() == DEPTH {
                return Ok(tally);
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + WAIT_LIMIT);
            if Instant::now() > deadline {
                // The device may still write into these buffers: never free them.
                std::mem::forget(slots);
                std::mem::forget(src);
                return Ok(tally);
            }
            client.submit();
        } else if let Some(&slot) = free.last() {
            let len = 1 + rng.below(MAX_LEN);
            let src_offset = rng.below(MAX_LEN - len + 1);
            let user_data = tally.submitted << 8 | slot as u64;
            // SAFETY: the slot and the source stay allocated and untouched until the copy's
            // completion is polled (the slot is free again only then, and the loop collects
            // every completion or leaks the buffers).
            let result = unsafe {
                client.copy(
                    slots[slot].as_mut_ptr(),
                    src.as_ptr().add(src_offset),
                    len,
                    user_data,
                    OpFlags::SUBMIT,
                )
            };
            match result {
                Ok(()) => {
                    free.pop();
                    pending[slot] = Some((tally.submitted, src_offset, len));
                    tally.submitted += 1;
                    submitted.0.store(tally.submitted, Ordering::Relaxed);
                }
                Err(
                    ClientError::Migrating
                    | ClientError::NoChannel(_)
                    | ClientError::CompletionRingFull { .. }
                    | ClientError::Submit(SubmitError::RingFull { .. } | SubmitError::DeviceRemoved),
                ) => client.submit(),
                Err(err) => {
                    tally.errors += 1;
                    eprintln!("hotplug: client {thread}: copy refused: {err}");
                }
            }
        }
        let n = client.poll(&mut batch);
        for completion in &batch[..n] {
            let slot = (completion.user_data & 0xff) as usize;
            let seq = completion.user_data >> 8;
            let Some((_, src_offset, len)) = pending
                .get_mut(slot)
                .and_then(|p| p.take_if(|(expected, _, _)| *expected == seq))
            else {
                tally.unaccounted += 1;
                eprintln!("hotplug: client {thread}: completion of copy {seq} matches nothing");
                continue;
            };
            tally.completed += 1;
            match completion.result {
                Ok(()) => {
                    tally.succeeded += 1;
                    slots[slot]
                        .read_at(0, &mut scratch)
                        .map_err(|e| e.to_string())?;
                    let right = scratch[..len] == pattern[src_offset..src_offset + len]
                        && scratch[len..].iter().all(|&b| b == POISON);
                    if !right {
                        tally.mismatches += 1;
                        eprintln!("hotplug: client {thread}: copy {seq} has wrong bytes");
                    }
                }
                Err(OpError::DeviceRemoved) => tally.removed += 1,
                Err(err) => {
                    tally.errors += 1;
                    eprintln!("hotplug: client {thread}: copy {seq} failed: {err}");
                }
            }
            slots[slot].fill(POISON);
            free.push(slot);
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The main thread: removals, re-adds and what the table does meanwhile.

/// A registered device: its engine id and name.
struct LiveDevice {
    id: DeviceId,
    name: String,
}

/// Adds one more emulated device to `setup`.
fn add_device(setup: &Setup) -> Result<LiveDevice, String> {
    let id = setup.add_device().map_err(|e| e.to_string())?;
    let name = setup
        .devices()
        .into_iter()
        .find(|d| d.id == id)
        .map_or_else(|| "?".into(), |d| d.name);
    Ok(LiveDevice { id, name })
}

/// The memcpy channel the table gives each CPU, on one line, with the devices registered.
fn table_line(engine: &Engine, cpus: usize) -> String {
    let dump = engine.dump();
    let slots: Vec<String> = (0..cpus)
        .map(|cpu| match dump.entry(Capability::Memcpy, cpu) {
            Some(channel) => format!("cpu{cpu} {channel:<5}"),
            None => format!("cpu{cpu} {:<5}", "-"),
        })
        .collect();
    let devices: Vec<String> = engine
        .devices()
        .iter()
        .map(|(id, name)| format!("{id}={name}"))
        .collect();
    format!(
        "{}   (devices {})",
        slots.join("  "),
        if devices.is_empty() {
            "none".to_string()
        } else {
            devices.join(" ")
        }
    )
}

/// Waits for the monitor's report of `device`'s removal.
fn removal_of(monitor: &Monitor, device: DeviceId) -> Result<RemovalReport, String> {
    let deadline = Instant::now() + WAIT_LIMIT;
    while Instant::now() < deadline {
        match monitor.next_event(Duration::from_millis(10)) {
            Some(HotplugEvent::Removed(report)) if report.device == device => return Ok(report),
            Some(HotplugEvent::Failed { device: d, error }) if d == device => {
                return Err(format!("removing device {device} failed: {error}"))
            }
            // Additions were printed when they were made.
            _ => {}
        }
    }
    Err(format!("no report of device {device}'s removal"))
}

fn print_report(report: &RemovalReport) {
    println!(
        "  report:      {:?} removal of device {} ({}): {} descriptor(s) in flight, \
         {} op(s) drained, {} failed{}",
        report.kind,
        report.device,
        report.name,
        report.in_flight_at_start,
        report.ops_drained,
        report.ops_failed,
        if report.forced {
            " (drain deadline passed)"
        } else {
            ""
        }
    );
    let released = match report.released_after {
        Some(after) => format!("released after {after:?}"),
        None => format!(
            "not released by the deadline; waiting for {}",
            report.held_up_by.join(", ")
        ),
    };
    println!(
        "               table moved after {:?}, {released}",
        report.table_moved_after
    );
}

fn run(options: Options) -> Result<(), String> {
    let cpus = options.clients;
    let setup = options
        .backend
        .apply(Setup::builder(), options.devices, false)
        .cpus(cpus)
        .log(quiet())
        .emulation(EmuMode::Threaded)
        .ring_order(12)
        .monitor(MonitorConfig {
            presence_interval: Duration::from_millis(1),
            removal: RemovalOptions {
                drain_timeout: Duration::from_millis(20),
                release_timeout: Duration::from_millis(100),
            },
            ..MonitorConfig::default()
        })
        .build()
        .map_err(|e| e.to_string())?;
    let (engine, pool, monitor) = (setup.engine(), setup.pool(), setup.monitor());
    let mut live: Vec<LiveDevice> = setup
        .devices()
        .into_iter()
        .map(|d| LiveDevice {
            id: d.id,
            name: d.name,
        })
        .collect();
    println!(
        "hotplug: {} client(s) copying through {} device(s) for {} s; a removal about every second\n",
        options.clients, options.devices, options.seconds
    );

    let stop = AtomicBool::new(false);
    let submitted: Vec<PaddedCounter> = (0..cpus).map(|_| PaddedCounter::default()).collect();
    let mut rng = SplitMix(0x4070_1ace);
    let mut main_errors = Vec::new();
    let started = Instant::now();
    let results: Vec<Result<Tally, String>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (engine, pool, stop, submitted) = (&engine, &pool, &stop, &submitted[cpu]);
                s.spawn(move || {
                    let mut client = Client::new(engine, Some(cpu), ClientConfig::default())
                        .map_err(|e| format!("client {cpu}: {e}"))?;
                    copy_loop(&mut client, pool, cpu, stop, submitted)
                })
            })
            .collect();
        let _stop_clients = StopOnDrop(&stop);
        for second in 1..options.seconds {
            std::thread::sleep(
                (started + Duration::from_secs(second)).saturating_duration_since(Instant::now()),
            );
            let surprise = second % 2 == 0;
            let victim = live.swap_remove(rng.below(live.len()));
            let ops: u64 = submitted.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
            println!(
                "[{:5.2} s] {} removal of device {} ({}); {ops} ops submitted so far",
                started.elapsed().as_secs_f64(),
                if surprise { "surprise" } else { "orderly" },
                victim.id,
                victim.name
            );
            println!("  before:      {}", table_line(engine, cpus));
            // A surprise removal takes the device off the bus: its registers read all-ones from
            // now on, and the monitor's presence check notices.
            let how = if surprise {
                Removal::Surprise
            } else {
                Removal::Orderly
            };
            if let Err(err) = setup.remove_device(victim.id, how) {
                main_errors.push(format!("removal of device {}: {err}", victim.id));
                continue;
            }
            match removal_of(monitor, victim.id) {
                Ok(report) => print_report(&report),
                Err(err) => {
                    println!("  {err}");
                    main_errors.push(err);
                }
            }
            println!("  after:       {}", table_line(engine, cpus));
            match add_device(&setup) {
                Ok(device) => {
                    println!("  added device {} ({})", device.id, device.name);
                    live.push(device);
                }
                Err(err) => main_errors.push(format!("adding a device: {err}")),
            }
            println!("  after add:   {}\n", table_line(engine, cpus));
        }
        std::thread::sleep(
            (started + Duration::from_secs(options.seconds))
                .saturating_duration_since(Instant::now()),
        );
        stop.store(true, Ordering::Release);
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });

    let mut total = Tally::default();
    for result in results {
        match result {
            Ok(t) => {
                total.submitted += t.submitted;
                total.completed += t.completed;
                total.succeeded += t.succeeded;
                total.removed += t.removed;
                total.errors += t.errors;
                total.mismatches += t.mismatches;
                total.unaccounted += t.unaccounted;
            }
            Err(err) => main_errors.push(err),
        }
    }
    let lost = total.submitted - total.completed;
    println!(
        "summary after {:.1} s: {} ops, {} succeeded (checked), {} failed with device removed, \
         {} other error(s), {} mismatch(es), {} unaccounted completion(s)\nlost ops: {lost}",
        started.elapsed().as_secs_f64(),
        total.submitted,
        total.succeeded,
        total.removed,
        total.errors,
        total.mismatches,
        total.unaccounted
    );
    for err in &main_errors {
        eprintln!("hotplug: {err}");
    }
    if lost > 0 || total.mismatches > 0 || total.errors > 0 || total.unaccounted > 0 {
        return Err("operations were lost or wrong".into());
    }
    if !main_errors.is_empty() {
        return Err("the demonstration did not run to the end".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    common::main_of("hotplug", USAGE, parse, run)
}
