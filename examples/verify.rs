//! Long randomized verification of the data path: client threads submit random copies and
//! fills through threaded emulated IOAT devices and keep a ledger of every operation, while
//! (with `--hotplug`) the main thread removes devices, alternately orderly and by surprise,
//! and adds new ones in their place. Every destination sits between guard bytes; each
//! successful operation's bytes are checked, and the guard bytes and the rest of the slot
//! after every completion, success or failure. Every operation must complete exactly once,
//! and the only failure allowed is "device removed" while devices come and go. The summary
//! compares the ledgers with the drivers' own counts; any mismatch, lost operation or
//! unexpected error makes the exit status non-zero.
//!
//! `cargo run --release --example verify -- [--seconds S] [--clients N] [--devices N]
//! [--backend ioat|dsa|mixed|soft] [--hotplug] [--seed N] [--pin]`

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dmaplane::datapath::{Client, ClientConfig, ClientError};
use dmaplane::emu::EmuMode;
use dmaplane::hotplug::{HotplugEvent, MonitorConfig};
use dmaplane::mem::{DmaBlock, DmaPool};
use dmaplane::{Completion, OpError, OpFlags, SubmitError};
use dmaplane::{DeviceId, Engine, Removal, RemovalKind, RemovalOptions, Setup};

mod common;
use common::*;

const USAGE: &str = "usage: verify [--seconds S] [--clients N] [--devices N] [--hotplug]
              [--seed N] [--pin] [--backend ioat|dsa|mixed|soft]

Client threads, one per engine CPU, submit random copies and fills (1 to 4096
bytes, random source and destination offsets, random doorbell and fence flags)
through threaded emulated IOAT devices of one channel each, and check every
completion against a ledger: each operation completes exactly once, successful
ones carry the right bytes, and the guard bytes around every destination are
untouched. With --hotplug the main thread removes a device every 50 to 200 ms,
alternately orderly and by surprise, and adds a new one in its place; then, and
only then, operations may fail with \"device removed\". Exits non-zero on any
mismatch, lost operation or unexpected error.

  --seconds S    run time, may be fractional (default 10)
  --clients N    client threads, each on its own engine CPU (default 4)
  --devices N    emulated devices, one channel each (default 3)
  --backend B    ioat (emulated IOAT, the default), dsa (emulated DSA), mixed
                 (both by turns) or soft (the CPU copies)
  --hotplug      remove and re-add devices while the clients run
  --seed N       seed of the random operations and removals (default: from the clock)
  --pin          pin each client thread to its CPU (where the machine has it)
  --help         this text";

/// Operations each client keeps in flight, one per destination slot.
const DEPTH: usize = 32;
/// The longest operation, and the size of each client's source.
const MAX_LEN: usize = 4096;
/// Guard bytes before and after the range any operation may write.
const GUARD: usize = 64;
/// A destination slot: a guard, room for the longest operation, a guard.
const SLOT_BYTES: usize = GUARD + MAX_LEN + GUARD;
/// What a slot holds outside the bytes an operation wrote.
const POISON: u8 = 0xa5;
/// Problems each client describes in full; the rest are only counted.
const PROBLEMS_SHOWN: u64 = 5;
/// How long the end waits for the operations still in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long the main thread waits for the report of a removal it started.
const REMOVAL_LIMIT: Duration = Duration::from_secs(10);

struct Options {
    seconds: f64,
    clients: usize,
    devices: usize,
    backend: BackendChoice,
    hotplug: bool,
    seed: Option<u64>,
    pin: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        seconds: 10.0,
        clients: 4,
        devices: 3,
        backend: BackendChoice::Emulated,
        hotplug: false,
        seed: None,
        pin: false,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => options.seconds = option_seconds(&mut args, "--seconds")?,
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
            "--seed" => options.seed = Some(option_number(&mut args, "--seed")?),
            "--hotplug" => options.hotplug = true,
            "--pin" => options.pin = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.clients == 0 || options.devices == 0 {
        return Err("--clients and --devices must be at least 1".into());
    }
    // The user data keeps the client in its top 16 bits.
    if options.clients > 1 << 16 {
        return Err("--clients must be at most 65536".into());
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------------
// The client side: random operations and their ledger.

/// One operation; offsets are into the client's source and into the destination slot.
#[derive(Clone, Copy, Debug)]
enum Op {
    Copy {
        src_offset: usize,
        dst_offset: usize,
        len: usize,
    },
    Fill {
        pattern: u64,
        dst_offset: usize,
        len: usize,
    },
}

impl Op {
    /// The bytes of the slot the operation may write.
    fn range(self) -> std::ops::Range<usize> {
        match self {
            Op::Copy {
                dst_offset, len, ..
            }
            | Op::Fill {
                dst_offset, len, ..
            } => dst_offset..dst_offset + len,
        }
    }
}

/// What one client did. Every count is of operations.
#[derive(Clone, Copy, Debug, Default)]
struct Ledger {
    submitted: u64,
    /// Completions that matched a pending operation (each at most once).
    completed: u64,
    succeeded: u64,
    /// Completed with "device removed" (allowed only with `--hotplug`).
    removed: u64,
    /// Completed with another error (never allowed).
    failed_other: u64,
    /// Succeeded with wrong bytes, or wrote where it should not have (guard bytes or the rest
    /// of the slot), successful or not.
    mismatches: u64,
    /// Failed other than with "device removed", failed with it while devices stay put, or
    /// were refused for a reason other than backpressure or a removal.
    unexpected_errors: u64,
    /// Completions the ledger cannot account for: a second completion of an operation, one
    /// that names another client, another slot's operation, or no operation at all.
    ledger_violations: u64,
    /// Refusals retried: backpressure, migration, and removals under way.
    refusals: u64,
    /// Operations still in flight when the client gave up waiting for them.
    lost: u64,
}

impl Ledger {
    fn problems(&self) -> u64 {
        self.mismatches + self.unexpected_errors + self.ledger_violations + self.lost
    }
}

/// A client's running totals, published for the progress line.
#[derive(Default)]
struct Progress {
    submitted: PaddedCounter,
    succeeded: PaddedCounter,
    removed: PaddedCounter,
    mismatches: PaddedCounter,
}

impl Progress {
    fn publish(&self, ledger: &Ledger) {
        self.submitted.0.store(ledger.submitted, Ordering::Relaxed);
        self.succeeded.0.store(ledger.succeeded, Ordering::Relaxed);
        self.removed.0.store(ledger.removed, Ordering::Relaxed);
        self.mismatches
            .0
            .store(ledger.mismatches, Ordering::Relaxed);
    }
}

/// A client thread's buffers and bookkeeping.
struct Verifier<'a> {
    client: Client,
    thread: u64,
    hotplug: bool,
    rng: SplitMix,
    progress: &'a Progress,
    src: DmaBlock,
    pattern: Vec<u8>,
    slots: Vec<DmaBlock>,
    free: Vec<usize>,
    /// Per slot: the sequence number and description of the operation that owns it.
    pending: Vec<Option<(u64, Op)>>,
    scratch: Vec<u8>,
    ledger: Ledger,
}

impl<'a> Verifier<'a> {
    fn new(
        client: Client,
        pool: &DmaPool,
        thread: u64,
        seed: u64,
        hotplug: bool,
        progress: &'a Progress,
    ) -> Result<Verifier<'a>, String> {
        let mut src = pool.alloc(MAX_LEN, 64).map_err(|e| e.to_string())?;
        let pattern: Vec<u8> = (0..MAX_LEN)
            .map(|i| (i as u8).wrapping_mul(7) ^ (thread as u8).wrapping_mul(37) ^ 0x3c)
            .collect();
        src.write_at(0, &pattern).map_err(|e| e.to_string())?;
        let mut slots = Vec::with_capacity(DEPTH);
        for _ in 0..DEPTH {
            let mut slot = pool.alloc(SLOT_BYTES, 64).map_err(|e| e.to_string())?;
            slot.fill(POISON);
            slots.push(slot);
        }
        Ok(Verifier {
            client,
            thread,
            hotplug,
            rng: SplitMix(seed ^ thread.wrapping_mul(0x2545_f491_4f6c_dd1d)),
            progress,
            src,
            pattern,
            slots,
            free: (0..DEPTH).collect(),
            pending: vec![None; DEPTH],
            scratch: vec![0; SLOT_BYTES],
            ledger: Ledger::default(),
        })
    }

    /// Describes one problem on standard error, the first few of each client only.
    fn report(&self, problem: std::fmt::Arguments<'_>) {
        if self.ledger.problems() <= PROBLEMS_SHOWN {
            eprintln!("verify: client {}: {problem}", self.thread);
        }
    }

    /// Submits and checks operations until `stop`, then collects what is in flight.
    fn run(mut self, stop: &AtomicBool) -> Ledger {
        let mut batch = [Completion::default(); 32];
        let mut drain_deadline = None;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping {
                if self.free.len() == DEPTH {
                    break;
                }
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_LIMIT);
                if Instant::now() > deadline {
                    self.ledger.lost = (DEPTH - self.free.len()) as u64;
                    self.report(format_args!(
                        "{} operation(s) never completed: {:?}",
                        self.ledger.lost, self.client
                    ));
                    break;
                }
                self.client.submit();
            } else if let Some(&slot) = self.free.last() {
                self.submit_one(slot);
            }
            let n = self.client.poll(&mut batch);
            for completion in &batch[..n] {
                self.settle(completion);
            }
            self.progress.publish(&self.ledger);
            if n == 0 {
                std::thread::yield_now();
            }
        }
        self.progress.publish(&self.ledger);
        let ledger = self.ledger;
        if ledger.lost > 0 {
            // The client gives up on these operations when it is dropped and keeps their
            // channel referenced for good; the device may still write where they point, so
            // the buffers never go back to the pool either.
            std::mem::forget(self.slots);
            std::mem::forget(self.src);
        }
        ledger
    }

    fn random_op(&mut self) -> Op {
        // A quarter of the operations are short, where off-by-one errors show best.
        let longest = if self.rng.below(4) == 0 { 64 } else { MAX_LEN };
        let len = 1 + self.rng.below(longest);
        let dst_offset = GUARD + self.rng.below(MAX_LEN - len + 1);
        if self.rng.below(4) == 0 {
            Op::Fill {
                pattern: self.rng.next(),
                dst_offset,
                len,
            }
        } else {
            Op::Copy {
                src_offset: self.rng.below(MAX_LEN - len + 1),
                dst_offset,
                len,
            }
        }
    }

    fn submit_one(&mut self, slot: usize) {
        let op = self.random_op();
        let mut flags = if self.rng.below(3) == 0 {
            OpFlags::NONE // rung by a later operation, a later poll or `submit`
        } else {
            OpFlags::SUBMIT
        };
        if self.rng.below(8) == 0 {
            flags = flags | OpFlags::FENCE;
        }
        let seq = self.ledger.submitted;
        let user_data = self.thread << 48 | (seq & 0xff_ffff_ffff) << 8 | slot as u64;
        let range = op.range();
        // SAFETY: `range` lies inside the slot (between its guards), and the copy's source
        // range inside the source block. The slot and the source stay allocated and
        // untouched until the operation's completion is polled: the slot is not free again
        // before `settle`, and `run` collects every completion (or, giving up, leaks the
        // buffers so that they stay allocated for good).
        let result = unsafe {
            let dst = self.slots[slot].as_mut_ptr().add(range.start);
            match op {
                Op::Copy {
                    src_offset, len, ..
                } => self.client.copy(
                    dst,
                    self.src.as_ptr().add(src_offset),
                    len,
                    user_data,
                    flags,
                ),
                Op::Fill { pattern, len, .. } => {
                    self.client.fill(dst, pattern, len, user_data, flags)
                }
            }
        };
        match result {
            Ok(()) => {
                self.free.pop();
                self.pending[slot] = Some((seq, op));
                self.ledger.submitted += 1;
            }
            Err(
                ClientError::Migrating
                | ClientError::CompletionRingFull { .. }
                | ClientError::Submit(SubmitError::RingFull { .. }),
            ) => {
                self.ledger.refusals += 1;
                self.client.submit();
            }
            // A device is leaving, or none is left for a moment.
            Err(ClientError::NoChannel(_) | ClientError::Submit(SubmitError::DeviceRemoved))
                if self.hotplug =>
            {
                self.ledger.refusals += 1;
                self.client.submit();
            }
            Err(err) => {
                self.ledger.unexpected_errors += 1;
                self.report(format_args!("{op:?} refused: {err}"));
            }
        }
    }

    /// Checks one completion against the ledger and the slot's bytes, then frees the slot.
    fn settle(&mut self, completion: &Completion) {
        let thread = completion.user_data >> 48;
        let seq = (completion.user_data >> 8) & 0xff_ffff_ffff;
        let slot = (completion.user_data & 0xff) as usize;
        if thread != self.thread || slot >= DEPTH {
            self.ledger.ledger_violations += 1;
            self.report(format_args!(
                "completion {:#x} belongs to client {thread}, slot {slot}",
                completion.user_data
            ));
            return;
        }
        let op = match self.pending[slot] {
            Some((expected, op)) if expected & 0xff_ffff_ffff == seq => op,
            Some((expected, _)) => {
                self.ledger.ledger_violations += 1;
                self.report(format_args!(
                    "slot {slot}: completion of op {seq} while op {expected} is pending"
                ));
                return;
            }
            None => {
                self.ledger.ledger_violations += 1;
                self.report(format_args!(
                    "slot {slot}: op {seq} completed twice (or was never submitted)"
                ));
                return;
            }
        };
        self.pending[slot] = None;
        self.ledger.completed += 1;
        match completion.result {
            Ok(()) => {
                self.ledger.succeeded += 1;
                self.check_slot(slot, seq, op, true);
            }
            Err(OpError::DeviceRemoved) => {
                self.ledger.removed += 1;
                if !self.hotplug {
                    self.ledger.unexpected_errors += 1;
                    self.report(format_args!("op {seq} ({op:?}) failed: device removed"));
                }
                // Whatever a removed device managed to write stays inside the range.
                self.check_slot(slot, seq, op, false);
            }
            Err(err) => {
                self.ledger.failed_other += 1;
                self.ledger.unexpected_errors += 1;
                self.report(format_args!("op {seq} ({op:?}) failed: {err}"));
                self.check_slot(slot, seq, op, false);
            }
        }
        // Whatever a failed operation left behind is overwritten too: a device that wrote
        // after reporting the failure would show up at the slot's next check.
        self.slots[slot].fill(POISON);
        self.free.push(slot);
    }

    /// Reads the slot and checks that nothing outside the operation's range changed and, for
    /// a successful operation, that the range holds what the operation wrote.
    fn check_slot(&mut self, slot: usize, seq: u64, op: Op, succeeded: bool) {
        if let Err(err) = self.slots[slot].read_at(0, &mut self.scratch) {
            self.ledger.unexpected_errors += 1;
            self.report(format_args!("reading slot {slot}: {err}"));
            return;
        }
        let range = op.range();
        let outside = self
            .scratch
            .iter()
            .enumerate()
            .position(|(i, &b)| !range.contains(&i) && b != POISON);
        if let Some(at) = outside {
            self.ledger.mismatches += 1;
            self.report(format_args!(
                "op {seq} ({op:?}) wrote byte {at} of its slot, outside {range:?} \
                 (succeeded: {succeeded})"
            ));
            return;
        }
        if !succeeded {
            return;
        }
        let written = &self.scratch[range.clone()];
        let wrong = match op {
            Op::Copy {
                src_offset, len, ..
            } => written
                .iter()
                .zip(&self.pattern[src_offset..src_offset + len])
                .position(|(a, b)| a != b),
            Op::Fill { pattern, .. } => {
                let bytes = pattern.to_le_bytes();
                written
                    .iter()
                    .enumerate()
                    .position(|(i, &b)| b != bytes[i % 8])
            }
        };
        if let Some(at) = wrong {
            self.ledger.mismatches += 1;
            self.report(format_args!(
                "op {seq} ({op:?}) has wrong data at byte {at} of its range"
            ));
        }
    }
}

/// Makes the client for `cpu`, runs a verifier on it until `stop`, and returns its ledger.
fn client_thread(
    engine: &Engine,
    pool: &DmaPool,
    options: &Options,
    seed: u64,
    cpu: usize,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<Ledger, String> {
    let config = ClientConfig::default();
    let client = if options.pin {
        match Client::pinned(engine, cpu, config) {
            Err(ClientError::Pin(_)) => {
                println!("client {cpu}: cannot pin a thread to cpu{cpu}: running it unpinned");
                Client::new(engine, Some(cpu), config)
            }
            other => other,
        }
    } else {
        Client::new(engine, Some(cpu), config)
    }
    .map_err(|e| format!("client {cpu}: {e}"))?;
    let verifier = Verifier::new(client, pool, cpu as u64, seed, options.hotplug, progress)?;
    Ok(verifier.run(stop))
}

// ---------------------------------------------------------------------------------------
// The main thread: devices, removals and re-adds, progress and the summary.

/// What the main thread did and saw.
#[derive(Default)]
struct Hotplug {
    /// Removals started, orderly and surprise in turn.
    started: u64,
    /// Removals reported, by kind.
    orderly: u64,
    surprise: u64,
    re_adds: u64,
    /// Removals that failed, or whose report never came.
    errors: u64,
    /// The removal under way: the device and when it began.
    removing: Option<(DeviceId, Instant)>,
}

/// Prints an event with the run's elapsed time, and counts it.
fn on_event(event: &HotplugEvent, started: Instant, hotplug: &mut Hotplug) {
    println!("[{:7.3} s] {event}", started.elapsed().as_secs_f64());
    match event {
        HotplugEvent::Removed(report) => match report.kind {
            RemovalKind::Orderly => hotplug.orderly += 1,
            RemovalKind::Surprise => hotplug.surprise += 1,
        },
        HotplugEvent::Failed { .. } => hotplug.errors += 1,
        HotplugEvent::Added { .. } | HotplugEvent::PciAppeared { .. } => {}
    }
}

/// A pause between removals: 50 to 200 ms.
fn pause(rng: &mut SplitMix) -> Duration {
    Duration::from_millis(50 + rng.below(151) as u64)
}

/// Starts the next removal, of a random device: an orderly one (the monitor is asked to
/// remove it; the device still works, so what is in flight may drain to success) or a
/// surprise one (the device leaves the bus; the monitor notices its registers reading
/// all-ones, and what was in flight fails with "device removed"), in turn.
fn start_removal(
    setup: &Setup,
    live: &mut Vec<DeviceId>,
    hotplug: &mut Hotplug,
    rng: &mut SplitMix,
) {
    let victim = live.swap_remove(rng.below(live.len()));
    let how = if hotplug.started % 2 == 0 {
        Removal::Orderly
    } else {
        Removal::Surprise
    };
    hotplug.started += 1;
    hotplug.removing = Some((victim, Instant::now()));
    if let Err(err) = setup.remove_device(victim, how) {
        eprintln!("verify: cannot remove device {victim} ({how:?}): {err}");
        hotplug.errors += 1;
        hotplug.removing = None;
    }
}

/// The progress line: the clients' totals so far and the removals reported.
fn print_progress(progress: &[Progress], started: Instant, hotplug: &Hotplug) {
    let sum = |field: fn(&Progress) -> &PaddedCounter| {
        progress
            .iter()
            .map(|p| field(p).0.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    println!(
        "[{:7.3} s] ops {:>10}  ok {:>10}  device-removed {:>6}  mismatches {}  \
         (removals: {} orderly, {} surprise)",
        started.elapsed().as_secs_f64(),
        sum(|p| &p.submitted),
        sum(|p| &p.succeeded),
        sum(|p| &p.removed),
        sum(|p| &p.mismatches),
        hotplug.orderly,
        hotplug.surprise
    );
}

fn run(options: Options) -> Result<(), String> {
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let setup = options
        .backend
        .apply(Setup::builder(), options.devices, false)
        .cpus(options.clients)
        .log(quiet())
        .emulation(EmuMode::Threaded)
        .ring_order(9)
        .monitor(MonitorConfig {
            presence_interval: Duration::from_millis(1),
            removal: RemovalOptions {
                drain_timeout: Duration::from_millis(5),
                release_timeout: Duration::from_millis(20),
            },
            ..MonitorConfig::default()
        })
        .build()
        .map_err(|e| e.to_string())?;
    let (engine, pool, monitor) = (setup.engine(), setup.pool(), setup.monitor());
    let mut live: Vec<DeviceId> = setup.devices().iter().map(|d| d.id).collect();
    // The initial additions' events: not re-adds.
    while monitor.next_event(Duration::ZERO).is_some() {}
    println!(
        "verify: {} s, {} client(s), {} device(s){}, seed {seed} (rerun with --seed {seed})",
        options.seconds,
        options.clients,
        options.devices,
        if options.hotplug { ", hotplug" } else { "" }
    );

    let stop = AtomicBool::new(false);
    let progress: Vec<Progress> = (0..options.clients).map(|_| Progress::default()).collect();
    let mut hotplug = Hotplug::default();
    let mut rng = SplitMix(seed ^ 0x5eed_0f4e_6d0e);
    let run_time = Duration::from_secs_f64(options.seconds);
    let started = Instant::now();
    let results: Vec<Result<Ledger, String>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..options.clients)
            .map(|cpu| {
                let (options, progress, stop) = (&options, &progress[cpu], &stop);
                s.spawn(move || client_thread(engine, pool, options, seed, cpu, progress, stop))
            })
            .collect();
        let _stop_clients = StopOnDrop(&stop);
        let end = started + run_time;
        let mut next_progress = started + Duration::from_secs(1);
        let mut next_removal = started + pause(&mut rng);
        loop {
            let now = Instant::now();
            if now >= end && hotplug.removing.is_none() {
                break;
            }
            let mut wake = next_progress.min(end);
            if options.hotplug && hotplug.removing.is_none() {
                wake = wake.min(next_removal);
            }
            if let Some(event) = monitor.next_event(wake.saturating_duration_since(now)) {
                on_event(&event, started, &mut hotplug);
                let finished = match (&event, hotplug.removing) {
                    (HotplugEvent::Removed(report), Some((id, _))) => report.device == id,
                    (HotplugEvent::Failed { device, .. }, Some((id, _))) => *device == id,
                    _ => false,
                };
                if finished {
                    hotplug.removing = None;
                    // A new device takes the removed one's place.
                    match setup.add_device() {
                        Ok(id) => {
                            live.push(id);
                            hotplug.re_adds += 1;
                        }
                        Err(err) => {
                            eprintln!("verify: adding a device: {err}");
                            hotplug.errors += 1;
                        }
                    }
                    next_removal = Instant::now() + pause(&mut rng);
                }
            }
            let now = Instant::now();
            if let Some((id, since)) = hotplug.removing {
                if now.duration_since(since) > REMOVAL_LIMIT {
                    eprintln!("verify: no report of device {id}'s removal after {REMOVAL_LIMIT:?}");
                    hotplug.errors += 1;
                    hotplug.removing = None;
                    next_removal = now + pause(&mut rng);
                }
            }
            if now >= next_progress {
                print_progress(&progress, started, &hotplug);
                next_progress += Duration::from_secs(1);
            }
            if options.hotplug
                && hotplug.removing.is_none()
                && now >= next_removal
                && now < end
                && !live.is_empty()
            {
                start_removal(&setup, &mut live, &mut hotplug, &mut rng);
            }
        }
        stop.store(true, Ordering::Release);
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    while let Some(event) = monitor.next_event(Duration::from_millis(50)) {
        on_event(&event, started, &mut hotplug);
    }
    if let Err(err) = engine.synchronize(Duration::from_secs(5)) {
        eprintln!("verify: retired tables still held: {err}");
    }

    let mut errors = Vec::new();
    let mut total = Ledger::default();
    for result in results {
        match result {
            Ok(l) => {
                total.submitted += l.submitted;
                total.completed += l.completed;
                total.succeeded += l.succeeded;
                total.removed += l.removed;
                total.failed_other += l.failed_other;
                total.mismatches += l.mismatches;
                total.unexpected_errors += l.unexpected_errors;
                total.ledger_violations += l.ledger_violations;
                total.refusals += l.refusals;
            }
            Err(err) => errors.push(err),
        }
    }
    let lost = total.submitted - total.completed;
    let drivers = setup.stats();
    let drivers_agree = (drivers.ops_ok, drivers.ops_removed, drivers.ops_failed)
        == (
            total.succeeded,
            total.removed,
            total.removed + total.failed_other,
        );
    println!(
        "\nsummary after {:.1} s (seed {seed}):\n\
         \x20 submitted            {}\n\
         \x20 completed            {}\n\
         \x20 succeeded            {} (data and guard bytes checked)\n\
         \x20 failed, dev removed  {}\n\
         \x20 failed, other        {}\n\
         \x20 mismatches           {}\n\
         \x20 lost                 {lost} (submitted - completed)\n\
         \x20 unexpected errors    {}\n\
         \x20 ledger violations    {}\n\
         \x20 refusals retried     {}\n\
         \x20 removals             {} orderly, {} surprise; {} re-adds; {} removal error(s)\n\
         \x20 driver counts        {} ok, {} failed ({} device removed): {}",
        elapsed.as_secs_f64(),
        total.submitted,
        total.completed,
        total.succeeded,
        total.removed,
        total.failed_other,
        total.mismatches,
        total.unexpected_errors,
        total.ledger_violations,
        total.refusals,
        hotplug.orderly,
        hotplug.surprise,
        hotplug.re_adds,
        hotplug.errors,
        drivers.ops_ok,
        drivers.ops_failed,
        drivers.ops_removed,
        if drivers_agree {
            "agree with the ledgers"
        } else {
            "DISAGREE with the ledgers"
        }
    );
    for err in &errors {
        eprintln!("verify: {err}");
    }
    let problems = total.mismatches
        + lost
        + total.unexpected_errors
        + total.ledger_violations
        + hotplug.errors
        + u64::from(!drivers_agree)
        + errors.len() as u64;
    if problems > 0 {
        return Err(format!("{problems} problem(s); see above"));
    }
    println!("verified: no mismatch, no lost operation, no unexpected error");
    Ok(())
}

fn main() -> ExitCode {
    common::main_of("verify", USAGE, parse, run)
}
