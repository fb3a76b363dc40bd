//! The rig's tests, written once against a [`Platform`], so that the same code runs against
//! the simulated kernel on any machine and against the guest's real kernel and IOMMU:
//!
//! - [`vfio_layer`]: open, regions, BAR0 mapped, configuration space, reset, DMA mapping and
//!   unmapping as the IOMMU counts it, the entry limit, the valid IOVA windows;
//! - [`edu_copy`]: copies of every size through the `edu` backend, with guard bytes;
//! - [`ledger`]: random copies from every CPU, each completed once with its bytes checked;
//! - [`iommu_fault`]: a buffer whose mapping the IOMMU no longer has: the fault is logged by
//!   the kernel and fails the operation with its cause, and no destination is written (the
//!   negative control: the same copy mapped goes through);
//! - [`hot_removal`]: a function pulled while clients copy, learned of through the VFIO
//!   device request (and uevents), drained, the table moved off it, nothing lost; then put
//!   back, added, and the table moved onto it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use dmaplane::edu::{spec, EduConfig, EduDevice, SOURCE_FAULT};
use dmaplane::hotplug::HotplugEvent;
use dmaplane::mem::{DmaBlock, DmaPool, DmaPoolConfig, IommuMapper, IovaMode, MemError};
use dmaplane::pci::{enable_dma, regs};
use dmaplane::vfio::{device_flags, region_flags, region_index, NoIommu, VfioContext};
use dmaplane::{
    Client, ClientConfig, ClientError, Completion, DeviceId, Engine, EngineConfig, OpError,
    OpFlags, Setup, SubmitError,
};

use crate::Platform;

/// A scenario: `Ok` or what went wrong.
pub type Outcome = Result<(), String>;

/// A scenario, run against a platform.
pub type Scenario = fn(&dyn Platform) -> Outcome;

/// The scenarios by name, in the order the rig runs them.
pub const ALL: &[(&str, Scenario)] = &[
    ("vfio_layer", vfio_layer),
    ("edu_copy", edu_copy),
    ("ledger", ledger),
    ("iommu_fault", iommu_fault),
    ("hot_removal", hot_removal),
];

/// The scenario called `name`.
pub fn named(name: &str) -> Option<Scenario> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// How long a device may take to finish what a test waits for: under TCG on a shared machine
/// a guest runs many times slower than the `edu` device's 100 ms per transfer suggests.
const PATIENCE: Duration = Duration::from_secs(180);

fn first_function(p: &dyn Platform) -> Result<String, String> {
    p.edu_functions()
        .into_iter()
        .next()
        .ok_or_else(|| "no edu function bound to vfio-pci".to_string())
}

fn mapped_pool() -> Result<DmaPool, String> {
    DmaPool::new(DmaPoolConfig {
        iova_mode: IovaMode::Mapped,
        ..DmaPoolConfig::default()
    })
    .map_err(|e| e.to_string())
}

fn quiet() -> dmaplane::log::LogHook {
    Arc::new(|_, _| {})
}

/// A block of `len` bytes holding a pattern of `seed`.
fn patterned(pool: &DmaPool, len: usize, seed: u64) -> Result<DmaBlock, String> {
    let mut block = pool.alloc(len, 64).map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37_79b9)) as u8)
        .collect();
    block.write_at(0, &bytes).map_err(|e| e.to_string())?;
    Ok(block)
}

/// Polls until `count` completions arrived, or fails after [`PATIENCE`].
fn collect(client: &mut Client, count: usize) -> Result<Vec<Completion>, String> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    let mut batch = [Completion::default(); 16];
    while got.len() < count {
        ensure!(
            Instant::now() < deadline,
            "only {} of {count} completions within {PATIENCE:?}",
            got.len()
        );
        let n = client.poll(&mut batch);
        got.extend_from_slice(&batch[..n]);
        if n == 0 {
            std::thread::yield_now();
        }
    }
    Ok(got)
}

/// The VFIO layer on its own: the context the kernel offers (iommufd where the function has a
/// VFIO cdev, a type1 container otherwise), the function's regions, BAR0 and configuration
/// space, reset, and the pool's mappings as the IOMMU counts them, up to the entry limit.
pub fn vfio_layer(p: &dyn Platform) -> Outcome {
    let bdf = first_function(p)?;
    let sysfs = p.sysfs();
    let context = VfioContext::for_function(p.kernel(), &sysfs, &bdf, NoIommu::Refused)
        .map_err(|e| e.to_string())?;
    println!(
        "vfio_layer: {bdf} through {}",
        if context.is_iommufd() {
            "iommufd"
        } else {
            "a type1 container"
        }
    );
    let device = context
        .open_device(&sysfs, &bdf)
        .map_err(|e| e.to_string())?;

    let info = device.info();
    ensure!(
        info.num_regions > region_index::CONFIG,
        "{} regions: no configuration region",
        info.num_regions
    );
    let bar = device.region(0).map_err(|e| e.to_string())?;
    ensure!(
        bar.size == spec::BAR_SIZE as u64 && bar.flags & region_flags::MMAP != 0,
        "BAR0 is {:#x} bytes with flags {:#x}: expected 1 MiB, mmappable",
        bar.size,
        bar.flags
    );
    let config = device.config_space().map_err(|e| e.to_string())?;
    let ids = (
        config.read16(regs::VENDOR_ID).map_err(|e| e.to_string())?,
        config.read16(regs::DEVICE_ID).map_err(|e| e.to_string())?,
    );
    ensure!(
        ids == (spec::VENDOR, spec::DEVICE),
        "configuration space says {ids:04x?}"
    );
    enable_dma(&*config).map_err(|e| e.to_string())?;
    let registers = device.bar0(spec::BAR_SIZE).map_err(|e| e.to_string())?;
    let ident = registers.read32(spec::IDENT);
    ensure!(ident & 0xff == spec::MAGIC, "BAR0 reads {ident:#x}");
    registers.write32(spec::LIVENESS, 0x1234_5678);
    ensure!(
        registers.read32(spec::LIVENESS) == !0x1234_5678,
        "the liveness register does not answer through the mapping"
    );

    // A reset where the function offers one; the kernel saves configuration space around it
    // and puts it back, so the function answers afterwards as before.
    let command = || config.read16(regs::COMMAND).unwrap_or(0);
    let enabled = regs::COMMAND_MEMORY | regs::COMMAND_MASTER;
    match device.reset() {
        Ok(()) => {
            ensure!(
                info.flags & device_flags::RESET != 0,
                "a reset the function does not offer succeeded"
            );
            ensure!(
                command() & enabled == enabled && registers.read32(spec::IDENT) == ident,
                "after a reset COMMAND is {:#x} and BAR0 reads {:#x}",
                command(),
                registers.read32(spec::IDENT)
            );
        }
        Err(e) => ensure!(
            info.flags & device_flags::RESET == 0,
            "the function offers reset, but it failed: {e}"
        ),
    }

    // The IOVA windows leave out the x86 interrupt window.
    let windows = context.iova_ranges().map_err(|e| e.to_string())?;
    ensure!(!windows.is_empty(), "no valid IOVA window");
    ensure!(
        !windows.iter().any(|w| w.contains(&0xfee0_0000)),
        "the interrupt window 0xfee00000 is offered for DMA: {windows:x?}"
    );

    // Mappings, as the IOMMU counts them.
    let pool = mapped_pool()?;
    let left = || context.entries_left();
    let before = left();
    pool.attach_iommu(context.clone())
        .map_err(|e| e.to_string())?;
    let regions = pool.region_count() as u32;
    ensure!(
        before.zip(left()).map_or(true, |(b, a)| b - a == regions),
        "{regions} regions mapped, but the entries left went {before:?} -> {:?}",
        left()
    );
    let mut page = vec![0u8; 3 * 4096];
    let at = page.as_ptr().align_offset(4096);
    let registration = pool
        .register(page[at..].as_mut_ptr(), 4096)
        .map_err(|e| e.to_string())?;
    let with_registration = left();
    drop(registration);
    ensure!(
        with_registration
            .zip(left())
            .map_or(true, |(w, a)| a == w + 1),
        "unregistering did not unmap: {with_registration:?} -> {:?}",
        left()
    );

    // The entry limit: registrations are refused, typed, once the container is full (where
    // the limit is small enough to reach; the rig sets it low).
    if let (Some(limit), Some(now)) = (p.entry_limit(), left().filter(|&n| n <= 1024)) {
        ensure!(
            now as usize <= limit,
            "{now} entries left of a limit of {limit}"
        );
        let mut pages = vec![0u8; (now as usize + 2) * 4096 + 4096];
        let base = pages.as_ptr().align_offset(4096);
        let mut held = Vec::new();
        let refused = loop {
            let at = base + held.len() * 4096;
            ensure!(
                at + 4096 <= pages.len(),
                "{} registrations accepted with {now} entries left",
                held.len()
            );
            match pool.register(pages[at..].as_mut_ptr(), 4096) {
                Ok(r) => held.push(r),
                Err(e) => break e,
            }
        };
        ensure!(
            refused == MemError::IommuEntriesExhausted && held.len() == now as usize,
            "after {} registrations with {now} left: {refused}",
            held.len()
        );
        drop(held);
        ensure!(
            left() == Some(now),
            "entries not given back: {:?} of {now}",
            left()
        );
    }
    drop(pool);
    ensure!(
        before.is_none() || left() == before,
        "the pool's mappings outlived it: {:?} of {before:?} left",
        left()
    );
    Ok(())
}

/// A setup of every `edu` function; an orderly removal lets work drain for `drain`.
fn edu_setup(p: &dyn Platform, drain: Duration) -> Result<Setup, String> {
    Setup::builder()
        .log(quiet())
        .vfio_edu()
        .vfio_kernel(p.kernel())
        .sysfs(p.sysfs())
        .lock_dir(p.lock_dir())
        .uevents(p.uevents())
        .drain_timeout(drain)
        .build()
        .map_err(|e| e.to_string())
}

/// How long a removal lets work drain in [`hot_removal`]: shorter than one piece takes, so
/// that a removal usually meets work it must fail with "device removed" (the seed's
/// "drain, then fail the rest").
const SHORT_DRAIN: Duration = Duration::from_millis(150);

/// Copies of every size through the `edu` backend on each CPU, with guard bytes past the end.
pub fn edu_copy(p: &dyn Platform) -> Outcome {
    let setup = edu_setup(p, PATIENCE)?;
    let cpus = setup.engine().possible_cpus();
    let sizes = [1usize, 63, 4096, 4097, 9000];
    for cpu in 0..cpus {
        let mut client = setup.client(cpu).map_err(|e| e.to_string())?;
        for (i, &len) in sizes.iter().enumerate() {
            let src = patterned(setup.pool(), len, (cpu * 10 + i) as u64)?;
            let dst = patterned(setup.pool(), len + 64, 0xdead)?;
            let guard = dst.to_vec()[len..].to_vec();
            // SAFETY: both blocks outlive the operation, collected below.
            unsafe {
                client.copy(
                    dst.as_mut_ptr(),
                    src.as_ptr(),
                    len,
                    i as u64,
                    OpFlags::SUBMIT,
                )
            }
            .map_err(|e| e.to_string())?;
            let done = collect(&mut client, 1)?;
            ensure!(
                done[0].result == Ok(()),
                "cpu{cpu}: {len} B: {:?}",
                done[0].result
            );
            let bytes = dst.to_vec();
            ensure!(bytes[..len] == src.to_vec()[..], "cpu{cpu}: {len} B differ");
            ensure!(
                bytes[len..] == guard[..],
                "cpu{cpu}: {len} B: written past the end"
            );
        }
    }
    let stats = setup.stats();
    ensure!(
        stats.ops_ok == (cpus * sizes.len()) as u64 && stats.ops_failed == 0,
        "statistics: {stats:?}"
    );
    Ok(())
}

/// One client's record: what it submitted, and how each one ended.
#[derive(Default)]
struct Ledger {
    submitted: u64,
    ok: u64,
    removed: u64,
    problems: Vec<String>,
}

/// Keeps up to `depth` random copies in flight on `cpu` until `keep_going` turns false (or
/// `limit` were submitted), checking each completion; returns the ledger.
fn copy_loop(
    setup: &Setup,
    cpu: usize,
    depth: usize,
    limit: u64,
    keep_going: &AtomicBool,
    completed: &Progress,
) -> Ledger {
    let mut ledger = Ledger::default();
    let mut client = match Client::new(setup.engine(), Some(cpu), ClientConfig::default()) {
        Ok(client) => client,
        Err(e) => {
            ledger.problems.push(format!("cpu{cpu}: no client: {e}"));
            return ledger;
        }
    };
    let mut in_flight: HashMap<u64, (DmaBlock, DmaBlock, usize)> = HashMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (cpu as u64 + 1);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Once submitting stops, what is in flight must finish within [`PATIENCE`].
    let mut drain_deadline = None;
    let mut batch = [Completion::default(); 8];
    loop {
        let submitting = keep_going.load(Ordering::Acquire) && ledger.submitted < limit;
        if !submitting && in_flight.is_empty() {
            break;
        }
        if !submitting {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + PATIENCE);
            if Instant::now() > deadline {
                ledger.problems.push(format!(
                    "cpu{cpu}: {} still in flight {PATIENCE:?} after the end",
                    in_flight.len()
                ));
                break;
            }
        }
        if submitting && in_flight.len() < depth {
            let len = 1 + (next() % 6000) as usize;
            let tag = (cpu as u64) << 32 | ledger.submitted;
            let blocks = patterned(setup.pool(), len, tag)
                .and_then(|src| Ok((src, patterned(setup.pool(), len, !tag)?)));
            let (src, dst) = match blocks {
                Ok(blocks) => blocks,
                Err(e) => {
                    ledger.problems.push(e);
                    break;
                }
            };
            // SAFETY: both blocks stay in the ledger, untouched, until their completion.
            match unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), len, tag, OpFlags::SUBMIT) }
            {
                Ok(()) => {
                    ledger.submitted += 1;
                    in_flight.insert(tag, (src, dst, len));
                }
                // Full, moving, or a device leaving with none other yet: poll and retry.
                Err(
                    ClientError::Migrating
                    | ClientError::CompletionRingFull { .. }
                    | ClientError::NoChannel(_)
                    | ClientError::Submit(SubmitError::RingFull { .. } | SubmitError::DeviceRemoved),
                ) => {}
                Err(e) => ledger.problems.push(format!("cpu{cpu}: refused: {e}")),
            }
        }
        let n = client.poll(&mut batch);
        for done in &batch[..n] {
            completed.completed_one();
            let Some((src, dst, len)) = in_flight.remove(&done.user_data) else {
                ledger.problems.push(format!(
                    "cpu{cpu}: completion {:#x} twice or unknown",
                    done.user_data
                ));
                continue;
            };
            match done.result {
                Ok(()) if dst.to_vec() == src.to_vec() => ledger.ok += 1,
                Ok(()) => ledger.problems.push(format!(
                    "cpu{cpu}: {len} B copy {:#x} differs",
                    done.user_data
                )),
                Err(OpError::DeviceRemoved) => ledger.removed += 1,
                Err(e) => ledger
                    .problems
                    .push(format!("cpu{cpu}: copy {:#x} failed: {e}", done.user_data)),
            }
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
    ledger
}

/// Sums the ledgers of every CPU; fails on any problem or lost operation.
fn settle(ledgers: Vec<Ledger>) -> Result<Ledger, String> {
    let mut total = Ledger::default();
    for ledger in ledgers {
        total.submitted += ledger.submitted;
        total.ok += ledger.ok;
        total.removed += ledger.removed;
        total.problems.extend(ledger.problems);
    }
    ensure!(total.problems.is_empty(), "{}", total.problems.join("; "));
    ensure!(
        total.ok + total.removed == total.submitted,
        "{} submitted, {} completed",
        total.submitted,
        total.ok + total.removed
    );
    Ok(total)
}

/// Random copies from every CPU at once, two in flight each.
pub fn ledger(p: &dyn Platform) -> Outcome {
    let setup = edu_setup(p, PATIENCE)?;
    let cpus = setup.engine().possible_cpus();
    let each = 12 * u64::from(p.scale());
    let go = AtomicBool::new(true);
    let completed = Progress::default();
    let ledgers = std::thread::scope(|s| {
        let threads: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (setup, go, completed) = (&setup, &go, &completed);
                s.spawn(move || copy_loop(setup, cpu, 2, each, go, completed))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let total = settle(ledgers)?;
    ensure!(
        total.removed == 0 && total.ok == each * cpus as u64,
        "{} of {} copies succeeded",
        total.ok,
        each * cpus as u64
    );
    Ok(())
}

/// A copy from a buffer whose IOVA the IOMMU no longer maps: refused by the IOMMU, logged by
/// the kernel, and failed with the cause, the destination untouched. The same copy before the
/// mapping was taken away is the control.
pub fn iommu_fault(p: &dyn Platform) -> Outcome {
    let bdf = first_function(p)?;
    let context = VfioContext::type1(p.kernel(), NoIommu::Refused).map_err(|e| e.to_string())?;
    let device = context
        .open_device(&p.sysfs(), &bdf)
        .map_err(|e| e.to_string())?;
    let pool = mapped_pool()?;
    pool.attach_iommu(context.clone())
        .map_err(|e| e.to_string())?;
    let edu = EduDevice::probe(
        bdf.clone(),
        device.bar0(spec::BAR_SIZE).map_err(|e| e.to_string())?,
        Some(device.config_space().map_err(|e| e.to_string())?),
        pool.clone(),
        EduConfig::default(),
    )
    .map_err(|e| e.to_string())?;
    let engine =
        Engine::new(EngineConfig::with_cpus(1).log_hook(quiet())).map_err(|e| e.to_string())?;
    engine
        .register_device(edu.spec())
        .map_err(|e| e.to_string())?;
    let mut client =
        Client::new(&engine, Some(0), ClientConfig::default()).map_err(|e| e.to_string())?;

    // An application buffer registered on its own, so its mapping is one the IOMMU can drop.
    let mut page = vec![0x5au8; 3 * 4096];
    let at = page.as_ptr().align_offset(4096);
    let src = page[at..].as_mut_ptr();
    let registration = pool.register(src, 4096).map_err(|e| e.to_string())?;
    let copy = |client: &mut Client, dst: &DmaBlock, tag: u64| -> Result<Completion, String> {
        // SAFETY: the registered page and the block outlive the copy, collected here.
        unsafe { client.copy(dst.as_mut_ptr(), src, 4096, tag, OpFlags::SUBMIT) }
            .map_err(|e| e.to_string())?;
        Ok(collect(client, 1)?[0])
    };

    let faults_before = p.iommu_faults(&bdf);
    let control = patterned(&pool, 4096, 1)?;
    let done = copy(&mut client, &control, 1)?;
    ensure!(
        done.result == Ok(()) && control.to_vec().iter().all(|&b| b == 0x5a),
        "the mapped copy (the control): {:?}",
        done.result
    );
    ensure!(
        p.iommu_faults(&bdf) == faults_before,
        "the IOMMU reported a fault on the mapped copy"
    );

    let (iova, _) = pool
        .translate(src as usize, 4096)
        .map_err(|e| e.to_string())?;
    context.unmap(iova, 4096).map_err(|e| e.to_string())?;
    let target = patterned(&pool, 4096, 2)?;
    let before = target.to_vec();
    let done = copy(&mut client, &target, 2)?;
    ensure!(
        done.result
            == Err(OpError::Device {
                code: SOURCE_FAULT.code,
                cause: SOURCE_FAULT.cause
            }),
        "the unmapped copy completed with {:?}",
        done.result
    );
    ensure!(
        target.to_vec() == before,
        "the destination was written after the fault"
    );
    // The kernel logs the fault from its interrupt handler, a moment after the device.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.iommu_faults(&bdf) == faults_before {
        ensure!(
            Instant::now() < deadline,
            "the IOMMU reported no fault for {bdf}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(registration);
    Ok(())
}

/// Waits for the monitor to report `device` removed.
fn wait_removed(setup: &Setup, device: DeviceId) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match setup.next_event(Duration::from_millis(200)) {
            Some(HotplugEvent::Removed(report)) if report.device == device => return Ok(()),
            Some(HotplugEvent::Failed { device: d, error }) if d == device => {
                return Err(format!("removing {device} failed: {error}"))
            }
            _ => {}
        }
    }
    Err(format!("{device} was not removed within {PATIENCE:?}"))
}

/// Completions counted across the clients, for the scenario's thread to wait on.
#[derive(Default)]
struct Progress {
    completed: Mutex<u64>,
    changed: Condvar,
}

impl Progress {
    fn completed_one(&self) {
        *self.completed.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Waits, up to [`PATIENCE`], until `done` holds; it is asked again at each completion
    /// (and at least every 100 ms, for conditions completions do not change).
    fn wait_for(&self, what: &str, mut done: impl FnMut(u64) -> bool) -> Outcome {
        let deadline = Instant::now() + PATIENCE;
        let mut completed = self.completed.lock().unwrap_or_else(|p| p.into_inner());
        while !done(*completed) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(format!(
                    "{what}: not within {PATIENCE:?} ({} completions)",
                    *completed
                ));
            };
            completed = self
                .changed
                .wait_timeout(completed, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Waits until `count` more operations completed.
    fn wait_more(&self, count: u64) -> Outcome {
        let target = *self.completed.lock().unwrap_or_else(|p| p.into_inner()) + count;
        self.wait_for(&format!("{count} more completions"), |now| now >= target)
    }
}

/// Pulls `pulled` while the clients copy, waits for the removal and for the kernel to let it
/// go, puts it back, adds it, and waits for the table to send it work.
fn pull_and_put_back(
    p: &dyn Platform,
    setup: &Setup,
    pulled: &str,
    completed: &Progress,
) -> Outcome {
    let cpus = setup.engine().possible_cpus() as u64;
    let pulled_id = setup
        .devices()
        .iter()
        .find(|d| d.name == pulled)
        .map(|d| d.id)
        .ok_or(format!("{pulled} is not attached"))?;
    completed.wait_more(2 * cpus)?;
    p.unplug(pulled)?;
    wait_removed(setup, pulled_id)?;
    // The table moved off the function: it is no longer registered, and work goes on.
    let dump = setup.engine().dump();
    ensure!(
        dump.devices
            .iter()
            .all(|d| d.id != pulled_id || !d.registered),
        "{pulled} still registered after its removal"
    );
    completed.wait_more(2)?;
    // The kernel lets the function go once the setup closed it.
    let deadline = Instant::now() + PATIENCE;
    while p.edu_functions().iter().any(|f| f == pulled) {
        ensure!(
            Instant::now() < deadline,
            "{pulled} never left the kernel's device list"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.replug(pulled)?;
    let again = setup.add_device().map_err(|e| e.to_string())?;
    // The table moved onto it: its channel does work.
    let channel = dmaplane::ChannelId {
        device: again,
        index: 0,
    };
    completed.wait_for(&format!("work on the re-added {pulled}"), |_| {
        setup
            .engine()
            .channel_stats(channel)
            .is_ok_and(|stats| stats.ops_ok > 0)
    })
}

/// The seed's scenario on a real kernel: a function pulled while clients copy, then put back,
/// once per unit of scale, alternating between the first two functions.
pub fn hot_removal(p: &dyn Platform) -> Outcome {
    let functions = p.edu_functions();
    ensure!(
        functions.len() >= 2,
        "hot-removal needs two edu functions, found {functions:?}"
    );
    let setup = edu_setup(p, SHORT_DRAIN)?;
    let cpus = setup.engine().possible_cpus();
    let go = AtomicBool::new(true);
    let completed = Progress::default();
    let (ledgers, steps) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (setup, go, completed) = (&setup, &go, &completed);
                s.spawn(move || copy_loop(setup, cpu, 2, u64::MAX, go, completed))
            })
            .collect();
        let steps = (0..p.scale() as usize).try_for_each(|round| {
            pull_and_put_back(p, &setup, &functions[round % 2], &completed)
                .map_err(|e| format!("round {round}: {e}"))
        });
        go.store(false, Ordering::Release);
        let ledgers: Vec<Ledger> = threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect();
        (ledgers, steps)
    });
    steps?;
    let total = settle(ledgers)?;
    ensure!(total.ok > 0, "no copy succeeded");
    println!(
        "hot_removal: {} round(s); {} copies: {} succeeded and checked, {} failed with \
         \"device removed\", none lost",
        p.scale(),
        total.submitted,
        total.ok,
        total.removed
    );
    Ok(())
}
