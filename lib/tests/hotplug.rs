//! Hot-removal and hot-add while clients work: orderly removals drain, surprise removals fail
//! what was in flight with "device removed", a client that stops polling cannot stall a
//! removal, recorded uevents remove the devices they name, the last device's departure leaves
//! "no channel" or the CPU fallback, and a stress run of hundreds of removals and re-adds
//! loses no operation and leaks nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::datapath::{Client, ClientConfig, ClientError};
use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, Fault};
use dmaplane::hotplug::{HotplugEvent, Monitor, MonitorConfig};
use dmaplane::ioat::{IoatConfig, IoatDevice};
use dmaplane::mem::{DmaBlock, DmaPool, DmaPoolConfig};
use dmaplane::{
    CapMask, Capability, DeviceId, DeviceSpec, Engine, EngineConfig, NullChannel, RemovalKind,
    RemovalOptions, RemovalReport,
};
use dmaplane::{Completion, OpError, OpFlags, SubmitError};

mod common;
use common::{block, collect, device_memory, quiet, Backend, SplitMix, TestDevice};

fn engine(cpus: usize) -> Engine {
    Engine::new(EngineConfig::with_cpus(cpus).log_hook(quiet())).unwrap()
}

/// A threaded emulated device with `channels` channels, probed.
fn device(pool: &DmaPool, name: &str, channels: usize) -> (Arc<EmulatedDevice>, IoatDevice) {
    let emu = EmuConfig {
        channels,
        mode: EmuMode::Threaded,
        ..EmuConfig::default()
    };
    let device = EmulatedDevice::new(emu, device_memory(pool)).unwrap();
    let ioat = IoatDevice::probe(
        name,
        device.registers(),
        Some(device.config_space()),
        pool.clone(),
        IoatConfig {
            ring_order: 9,
            ..IoatConfig::default()
        },
    )
    .unwrap();
    (device, ioat)
}

/// Waits for the monitor's report of `device`'s removal, polling `client` meanwhile if given (a
/// client that stops polling holds up the release, as another test shows).
fn removal_of(
    monitor: &Monitor,
    device: DeviceId,
    mut client: Option<&mut Client>,
) -> RemovalReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "no removal reported for {device}"
        );
        if let Some(client) = client.as_deref_mut() {
            client.poll(&mut []);
        }
        match monitor.next_event(Duration::from_millis(1)) {
            Some(HotplugEvent::Removed(report)) if report.device == device => return report,
            Some(HotplugEvent::Failed { device: d, error }) if d == device => {
                panic!("removal failed: {error}")
            }
            _ => {}
        }
    }
}

#[test]
fn an_orderly_removal_lets_in_flight_operations_drain_to_success() {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let engine = engine(1);
    let monitor = Monitor::start(&engine, MonitorConfig::default()).unwrap();
    let (first_device, first) = device(&pool, "first", 1);
    let (_second_device, second) = device(&pool, "second", 1);
    let first_id = monitor.add(first.spec()).unwrap();
    monitor.add(second.spec()).unwrap();
    let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
    assert_eq!(
        client.channel(Capability::Memcpy).unwrap().0.device,
        first_id
    );
    // Slow descriptors keep the operations in flight while the removal begins.
    first_device
        .inject(Fault::Latency {
            channel: 0,
            per_descriptor: Duration::from_micros(300),
        })
        .unwrap();
    let src = block(&pool, 2048, 1);
    let dsts: Vec<DmaBlock> = (0..40).map(|i| block(&pool, 2048, i)).collect();
    for (i, dst) in dsts.iter().enumerate() {
        // SAFETY: the blocks outlive the collected operations.
        unsafe {
            client.copy(
                dst.as_mut_ptr(),
                src.as_ptr(),
                2048,
                i as u64,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
    }
    monitor.remove(first_id);
    // The client keeps polling while the monitor works.
    let done = collect(&mut client, 40);
    assert!(done.iter().all(|c| c.result == Ok(())), "{done:?}");
    assert!(dsts.iter().all(|d| d.to_vec() == src.to_vec()));
    let report = removal_of(&monitor, first_id, Some(&mut client));
    println!("{report}");
    assert_eq!(report.kind, RemovalKind::Orderly);
    assert!(!report.forced);
    assert_eq!(report.ops_drained, 40);
    assert_eq!(report.ops_failed, 0);
    assert!(report.released_after.is_some(), "{report}");
    assert!(!first.channels()[0].is_started());
    // New work goes to the other device.
    // SAFETY: as above.
    let resubmit = |client: &mut Client| unsafe {
        client.copy(
            dsts[0].as_mut_ptr(),
            src.as_ptr(),
            2048,
            99,
            OpFlags::SUBMIT,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(err) = resubmit(&mut client) {
        assert_eq!(err, ClientError::Migrating);
        assert!(Instant::now() < deadline);
        client.poll(&mut []);
    }
    assert_ne!(
        client.channel(Capability::Memcpy).unwrap().0.device,
        first_id
    );
    assert_eq!(collect(&mut client, 1)[0].result, Ok(()));
}

#[test]
fn a_surprise_removal_fails_what_was_in_flight_with_device_removed() {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let engine = engine(1);
    let monitor = Monitor::start(&engine, MonitorConfig::default()).unwrap();
    let (first_device, first) = device(&pool, "first", 1);
    let (_second_device, second) = device(&pool, "second", 1);
    let first_id = monitor.add(first.spec()).unwrap();
    monitor.add(second.spec()).unwrap();
    let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
    first_device.inject(Fault::Stall { channel: 0 }).unwrap();
    let src = block(&pool, 512, 1);
    let dst = block(&pool, 512, 2);
    for i in 0..8 {
        // SAFETY: the blocks outlive the collected operations.
        unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 512, i, OpFlags::SUBMIT) }.unwrap();
    }
    // The device leaves the bus; the monitor notices its registers reading all-ones.
    first_device.inject(Fault::SurpriseRemoval).unwrap();
    let done = collect(&mut client, 8);
    assert!(
        done.iter().all(|c| c.result == Err(OpError::DeviceRemoved)),
        "{done:?}"
    );
    let report = removal_of(&monitor, first_id, Some(&mut client));
    println!("{report}");
    assert_eq!(report.kind, RemovalKind::Surprise);
    assert_eq!((report.ops_drained, report.ops_failed), (0, 8));
    assert!(report.released_after.is_some(), "{report}");
    // The application resubmits to the live device.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: as above.
        match unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 512, 100, OpFlags::SUBMIT) } {
            Ok(()) => break,
            Err(ClientError::Migrating | ClientError::Submit(SubmitError::DeviceRemoved)) => {
                assert!(Instant::now() < deadline);
                client.poll(&mut []);
            }
            Err(err) => panic!("{err}"),
        }
    }
    assert_eq!(collect(&mut client, 1)[0].result, Ok(()));
    assert_eq!(dst.to_vec(), src.to_vec());
}

#[test]
fn a_client_that_stops_polling_cannot_stall_a_removal() {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let engine = engine(1);
    let (stuck_device, stuck) = device(&pool, "stuck", 1);
    let (_other_device, other) = device(&pool, "other", 1);
    let stuck_id = engine.register_device(stuck.spec()).unwrap();
    engine.register_device(other.spec()).unwrap();
    let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
    stuck_device.inject(Fault::Stall { channel: 0 }).unwrap();
    let src = block(&pool, 256, 1);
    let dst = block(&pool, 256, 2);
    for i in 0..256 {
        // SAFETY: the blocks outlive the collected operations.
        unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 256, i, OpFlags::NONE) }.unwrap();
    }
    client.submit();
    // The client stops polling here. The removal still moves the table, fails the operations
    // that cannot drain, and reports who holds up the release.
    let options = RemovalOptions {
        drain_timeout: Duration::from_millis(20),
        release_timeout: Duration::from_millis(20),
    };
    let report = engine.remove_device(stuck_id, options).unwrap();
    println!("{report}");
    assert!(report.forced);
    assert_eq!(report.in_flight_at_start, 256);
    assert_eq!(report.released_after, None);
    assert_eq!(report.held_up_by, vec!["client@cpu0".to_string()]);
    assert_ne!(
        engine
            .table_entry(Capability::Memcpy, 0)
            .unwrap()
            .unwrap()
            .device,
        stuck_id
    );
    assert!(
        stuck.channels()[0].is_started(),
        "not freed under the client"
    );

    // At its next polls the client collects the failures, lets go, and the device is freed.
    let done = collect(&mut client, 256);
    assert!(done.iter().all(|c| c.result == Err(OpError::DeviceRemoved)));
    engine.synchronize(Duration::from_secs(5)).unwrap();
    assert!(!stuck.channels()[0].is_started());
    assert_eq!(engine.devices().len(), 1);
}

fn uevent(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
}

#[test]
fn recorded_uevents_remove_the_watched_device_and_nothing_else() {
    let engine = engine(2);
    let monitor = Monitor::start(&engine, MonitorConfig::default()).unwrap();
    let watched = monitor
        .add(DeviceSpec::new(
            "watched",
            CapMask::MEMCPY,
            NullChannel::many(1),
        ))
        .unwrap();
    let bystander = monitor
        .add(DeviceSpec::new(
            "bystander",
            CapMask::MEMCPY,
            NullChannel::many(1),
        ))
        .unwrap();
    monitor.watch_pci(watched, "0000:80:04.1");
    monitor.watch_pci(bystander, "0000:00:04.0");
    // Malformed datagrams, another device's removal, a non-PCI event, an addition.
    monitor.feed_uevent(b"\xff\xfe garbage".to_vec());
    monitor.feed_uevent(Vec::new());
    monitor.feed_uevent(uevent(&[
        "remove@/devices/pci0000:00/0000:00:1f.3",
        "ACTION=remove",
        "DEVPATH=/devices/pci0000:00/0000:00:1f.3",
        "SUBSYSTEM=pci",
        "PCI_SLOT_NAME=0000:00:1f.3",
    ]));
    monitor.feed_uevent(uevent(&[
        "remove@/devices/virtual/net/veth0",
        "ACTION=remove",
        "DEVPATH=/devices/virtual/net/veth0",
        "SUBSYSTEM=net",
    ]));
    monitor.feed_uevent(uevent(&[
        "add@/devices/pci0000:00/0000:00:05.0",
        "ACTION=add",
        "DEVPATH=/devices/pci0000:00/0000:00:05.0",
        "SUBSYSTEM=pci",
        "PCI_SLOT_NAME=0000:00:05.0",
    ]));
    // The watched function is unbound from its driver.
    monitor.feed_uevent(uevent(&[
        "unbind@/devices/pci0000:80/0000:80:04.1",
        "ACTION=unbind",
        "DEVPATH=/devices/pci0000:80/0000:80:04.1",
        "SUBSYSTEM=pci",
        "DRIVER=vfio-pci",
    ]));
    let mut seen = Vec::new();
    while let Some(event) = monitor.next_event(Duration::from_millis(500)) {
        seen.push(event);
    }
    assert!(seen.contains(&HotplugEvent::PciAppeared {
        bdf: "0000:00:05.0".into()
    }));
    let removed: Vec<DeviceId> = seen
        .iter()
        .filter_map(|e| match e {
            HotplugEvent::Removed(r) => Some(r.device),
            _ => None,
        })
        .collect();
    assert_eq!(removed, vec![watched]);
    assert_eq!(
        engine
            .devices()
            .into_iter()
            .map(|d| d.0)
            .collect::<Vec<_>>(),
        vec![bystander]
    );
}

#[test]
fn without_devices_submits_say_no_channel_or_run_on_the_cpu() {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let engine = engine(1);
    let (_device, only) = device(&pool, "only", 1);
    let id = engine.register_device(only.spec()).unwrap();
    let config = ClientConfig {
        cpu_fallback: true,
        ..ClientConfig::default()
    };
    let mut plain = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
    engine.remove_device(id, RemovalOptions::default()).unwrap();
    let src = block(&pool, 300, 1);
    let dst = block(&pool, 300, 2);
    // SAFETY: the blocks outlive the operation.
    let refused = unsafe { plain.copy(dst.as_mut_ptr(), src.as_ptr(), 300, 1, OpFlags::SUBMIT) };
    assert_eq!(refused, Err(ClientError::NoChannel(Capability::Memcpy)));
    drop(plain);

    let mut fallback = Client::new(&engine, Some(0), config).unwrap();
    // SAFETY: as above.
    unsafe { fallback.copy(dst.as_mut_ptr(), src.as_ptr(), 300, 7, OpFlags::SUBMIT) }.unwrap();
    // SAFETY: as above.
    unsafe {
        fallback.fill(
            src.as_mut_ptr(),
            0x1122_3344_5566_7788,
            300,
            8,
            OpFlags::NONE,
        )
    }
    .unwrap();
    let done = collect(&mut fallback, 2);
    assert_eq!(
        done.iter()
            .map(|c| (c.user_data, c.result))
            .collect::<Vec<_>>(),
        vec![(7, Ok(())), (8, Ok(()))]
    );
    assert_eq!(dst.to_vec(), block(&pool, 300, 1).to_vec());
    let pattern = 0x1122_3344_5566_7788u64.to_le_bytes();
    assert!(src
        .to_vec()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern[i % 8]));
    assert_eq!(fallback.stats().cpu_ops, 2);
}

/// Bytes of each destination slot in the stress run.
const STRESS_SLOT: usize = 4096;
/// What a destination slot holds outside an operation's bytes.
const POISON: u8 = 0xa5;

/// What one stress client did.
#[derive(Debug, Default)]
struct StressLedger {
    submitted: u64,
    succeeded: u64,
    removed: u64,
    refusals: u64,
}

#[derive(Clone, Copy, Debug)]
enum StressOp {
    Copy { src_offset: usize, len: usize },
    Fill { pattern: u64, len: usize },
}

/// Submits random copies and fills through `client` until `stop`, then collects every
/// completion. Each operation owns a destination slot until its completion arrives: exactly
/// one completion per operation, successes carry the right bytes and nothing past them,
/// failures say "device removed"; refusals while devices come and go are retried.
fn stress_client(
    client: &mut Client,
    pool: &DmaPool,
    thread: u64,
    stop: &std::sync::atomic::AtomicBool,
    deadline: Instant,
) -> StressLedger {
    use std::sync::atomic::Ordering;
    const DEPTH: usize = 32;
    let mut rng = SplitMix(0xfeed ^ thread);
    let mut src = pool.alloc(STRESS_SLOT, 64).unwrap();
    let pattern: Vec<u8> = (0..STRESS_SLOT)
        .map(|i| (i as u8).wrapping_mul(7) ^ (thread as u8))
        .collect();
    src.write_at(0, &pattern).unwrap();
    let mut slots: Vec<DmaBlock> = (0..DEPTH)
        .map(|_| {
            let mut b = pool.alloc(STRESS_SLOT, 64).unwrap();
            b.fill(POISON);
            b
        })
        .collect();
    let mut free: Vec<usize> = (0..DEPTH).collect();
    let mut pending: Vec<Option<(u64, StressOp)>> = vec![None; DEPTH];
    let mut ledger = StressLedger::default();
    let mut scratch = vec![0u8; STRESS_SLOT];
    let mut batch = [Completion::default(); 32];
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if stopping && free.len() == DEPTH {
            return ledger;
        }
        assert!(
            Instant::now() < deadline,
            "thread {thread}: {} operation(s) never completed: {client:?}",
            DEPTH - free.len()
        );
        if !stopping {
            if let Some(&slot) = free.last() {
                let len = 1 + rng.below(STRESS_SLOT);
                let op = if rng.below(4) == 0 {
                    StressOp::Fill {
                        pattern: rng.next(),
                        len,
                    }
                } else {
                    StressOp::Copy {
                        src_offset: rng.below(STRESS_SLOT - len + 1),
                        len,
                    }
                };
                let flags = if rng.below(3) == 0 {
                    OpFlags::NONE
                } else {
                    OpFlags::SUBMIT
                };
                let user_data = thread << 48 | ledger.submitted << 8 | slot as u64;
                let dst = slots[slot].as_mut_ptr();
                // SAFETY: the slot and the source stay allocated and untouched until the
                // operation's completion is polled below.
                let result = unsafe {
                    match op {
                        StressOp::Copy { src_offset, len } => {
                            client.copy(dst, src.as_ptr().add(src_offset), len, user_data, flags)
                        }
                        StressOp::Fill { pattern, len } => {
                            client.fill(dst, pattern, len, user_data, flags)
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        free.pop();
                        pending[slot] = Some((ledger.submitted, op));
                        ledger.submitted += 1;
                    }
                    Err(
                        ClientError::Migrating
                        | ClientError::NoChannel(_)
                        | ClientError::CompletionRingFull { .. }
                        | ClientError::Submit(
                            SubmitError::RingFull { .. } | SubmitError::DeviceRemoved,
                        ),
                    ) => {
                        ledger.refusals += 1;
                        client.submit();
                    }
                    Err(err) => panic!("thread {thread}: refused: {err}"),
                }
            }
        } else {
            client.submit();
        }
        let n = client.poll(&mut batch);
        for c in &batch[..n] {
            assert_eq!(c.user_data >> 48, thread, "routed to the wrong client");
            let seq = (c.user_data >> 8) & 0xff_ffff_ffff;
            let slot = (c.user_data & 0xff) as usize;
            let (expected_seq, op) = pending[slot]
                .take()
                .unwrap_or_else(|| panic!("thread {thread}: op {seq} completed twice"));
            assert_eq!(expected_seq, seq, "thread {thread}: slot {slot}");
            let len = match op {
                StressOp::Copy { len, .. } | StressOp::Fill { len, .. } => len,
            };
            match c.result {
                Ok(()) => {
                    slots[slot].read_at(0, &mut scratch).unwrap();
                    let right = match op {
                        StressOp::Copy { src_offset, len } => {
                            scratch[..len] == pattern[src_offset..src_offset + len]
                        }
                        StressOp::Fill { pattern, len } => {
                            let bytes = pattern.to_le_bytes();
                            scratch[..len]
                                .iter()
                                .enumerate()
                                .all(|(i, &b)| b == bytes[i % 8])
                        }
                    };
                    assert!(right, "thread {thread}: op {seq} ({op:?}) has wrong data");
                    assert!(
                        scratch[len..].iter().all(|&b| b == POISON),
                        "thread {thread}: op {seq} ({op:?}) wrote past its end"
                    );
                    ledger.succeeded += 1;
                }
                Err(OpError::DeviceRemoved) => ledger.removed += 1,
                Err(err) => panic!("thread {thread}: op {seq} failed: {err}"),
            }
            // Whatever a failed operation left behind is overwritten too: a device that wrote
            // after reporting the failure would show up at the slot's next check.
            slots[slot].fill(POISON);
            free.push(slot);
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
}

/// A device of the stress run and its engine id.
struct StressDevice {
    device: TestDevice,
    id: DeviceId,
}

fn stress_add(backend: Backend, monitor: &Monitor, pool: &DmaPool, serial: usize) -> StressDevice {
    let device = TestDevice::new(
        backend,
        pool,
        &format!("dev{serial}"),
        1,
        EmuMode::Threaded,
        9,
    );
    let id = monitor.add(device.spec()).unwrap();
    StressDevice { device, id }
}

/// The stress run on devices of `backend`.
fn removing_and_re_adding_devices_under_four_clients_loses_nothing_and_leaks_nothing(
    backend: Backend,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const CLIENTS: usize = 4;
    const DEVICES: usize = 3;
    const CYCLES: usize = 600;
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let engine = engine(CLIENTS);
    let config = MonitorConfig {
        presence_interval: Duration::from_millis(1),
        removal: RemovalOptions {
            drain_timeout: Duration::from_millis(2),
            release_timeout: Duration::from_millis(5),
        },
        ..MonitorConfig::default()
    };
    let monitor = Monitor::start(&engine, config).unwrap();
    let mut serial = 0;
    let mut live: Vec<StressDevice> = (0..DEVICES)
        .map(|_| {
            serial += 1;
            stress_add(backend, &monitor, &pool, serial)
        })
        .collect();
    let mut gone: Vec<TestDevice> = Vec::new();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    let mut rng = SplitMix(0xc0ffee);
    let (mut orderly, mut surprise, mut drained, mut failed) = (0usize, 0usize, 0u64, 0u64);
    let mut table_moves = Vec::new();
    let ledgers: Vec<StressLedger> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|cpu| {
                let (engine, pool, stop) = (&engine, &pool, &stop);
                s.spawn(move || {
                    let mut client =
                        Client::new(engine, Some(cpu), ClientConfig::default()).unwrap();
                    stress_client(&mut client, pool, cpu as u64, stop, deadline)
                })
            })
            .collect();
        for cycle in 0..CYCLES {
            // Now and then every device leaves before they come back: the clients see "no
            // channel" meanwhile.
            let leaving = if cycle % 20 == 19 { live.len() } else { 1 };
            for _ in 0..leaving {
                let victim = live.swap_remove(rng.below(live.len()));
                let kind = if rng.below(2) == 0 {
                    victim.device.surprise_remove();
                    surprise += 1;
                    RemovalKind::Surprise
                } else {
                    monitor.remove(victim.id);
                    orderly += 1;
                    RemovalKind::Orderly
                };
                let report = removal_of(&monitor, victim.id, None);
                assert_eq!(report.kind, kind, "{report}");
                drained += report.ops_drained;
                failed += report.ops_failed;
                table_moves.push(report.table_moved_after);
                gone.push(victim.device);
            }
            while live.len() < DEVICES {
                serial += 1;
                live.push(stress_add(backend, &monitor, &pool, serial));
            }
            if cycle % 100 == 99 {
                println!(
                    "{} cycles in {:?}: {orderly} orderly, {surprise} surprise removals",
                    cycle + 1,
                    started.elapsed()
                );
            }
        }
        stop.store(true, Ordering::Release);
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for device in live.drain(..) {
        monitor.remove(device.id);
        removal_of(&monitor, device.id, None);
        gone.push(device.device);
    }
    engine.synchronize(Duration::from_secs(10)).unwrap();
    monitor.stop();

    let total = |f: fn(&StressLedger) -> u64| ledgers.iter().map(f).sum::<u64>();
    let (submitted, succeeded, removed) = (
        total(|l| l.submitted),
        total(|l| l.succeeded),
        total(|l| l.removed),
    );
    table_moves.sort();
    println!(
        "{CYCLES} cycles ({orderly} orderly, {surprise} surprise) in {:?}: {submitted} ops, \
         {succeeded} succeeded, {removed} device removed, {} refusals retried; removals \
         reported {drained} drained, {failed} failed; table moved in {:?} median, {:?} max",
        started.elapsed(),
        total(|l| l.refusals),
        table_moves[table_moves.len() / 2],
        table_moves[table_moves.len() - 1],
    );
    // Exactly one completion per operation (a second one panics in the client thread).
    assert_eq!(submitted, succeeded + removed);
    assert!(submitted > CYCLES as u64 * 10, "the clients barely ran");
    assert!(orderly > 0 && surprise > 0);
    // The drivers saw the same outcomes the clients did.
    let device_counts = gone
        .iter()
        .fold(dmaplane::ChannelStats::default(), |sum, d| sum + d.stats());
    assert_eq!(
        (
            device_counts.ops_ok,
            device_counts.ops_removed,
            device_counts.ops_failed
        ),
        (succeeded, removed, removed)
    );
    // Nothing leaked: no device is listed, no retired table waits, every channel stopped, and
    // the only live DMA blocks are the clients' buffers until they go.
    let dump = engine.dump();
    assert!(dump.devices.is_empty(), "{dump}");
    assert_eq!(dump.retired_tables, 0);
    assert!(gone.iter().all(|d| d.started().iter().all(|&s| !s)));
    drop(gone);
    assert_eq!(pool.live_blocks(), 0, "DMA blocks leaked");
}

on_every_backend!(
    removing_and_re_adding_devices_under_four_clients_loses_nothing_and_leaks_nothing
);
