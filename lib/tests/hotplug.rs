//! Hot-removal and hot-add while clients work: orderly removals drain, surprise removals fail
//! what was in flight with "device removed", a client that stops polling cannot stall a
//! removal, recorded uevents remove the devices they name, the last device's departure leaves
//! "no channel" or the CPU fallback, and a stress run of hundreds of removals and re-adds
//! loses no operation and leaks nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::datapath::client::{Client, ClientConfig, ClientError};
use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, Fault};
use dmaplane::hotplug::monitor::{HotplugEvent, Monitor, MonitorConfig};
use dmaplane::ioat::{ChannelConfig, Completion, IoatDevice, OpError, OpFlags, SubmitError};
use dmaplane::log::LogHook;
use dmaplane::mem::{DmaBlock, DmaPool, DmaPoolConfig};
use dmaplane::{
    CapMask, Capability, DeviceId, DeviceSpec, Engine, EngineConfig, NullChannel, RemovalKind,
    RemovalOptions, RemovalReport,
};

mod common;
use common::device_memory;

fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

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
        ChannelConfig {
            ring_order: 9,
            ..ChannelConfig::default()
        },
    )
    .unwrap();
    (device, ioat)
}

fn block(pool: &DmaPool, len: usize, seed: u8) -> DmaBlock {
    let mut b = pool.alloc(len, 64).unwrap();
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    b.write_at(0, &bytes).unwrap();
    b
}

/// Waits for the monitor's report of `device`'s removal, polling `client` meanwhile (a client
/// that stops polling holds up the release, as another test shows).
fn removal_of(monitor: &Monitor, device: DeviceId, client: &mut Client) -> RemovalReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "no removal reported for {device}"
        );
        client.poll(&mut []);
        match monitor.next_event(Duration::from_millis(1)) {
            Some(HotplugEvent::Removed(report)) if report.device == device => return report,
            Some(HotplugEvent::Failed { device: d, error }) if d == device => {
                panic!("removal failed: {error}")
            }
            _ => {}
        }
    }
}

/// Polls until `count` completions arrived (at most 10 s).
fn collect(client: &mut Client, count: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut batch = [Completion::default(); 32];
    while got.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} completions",
            got.len()
        );
        let n = client.poll(&mut batch);
        got.extend_from_slice(&batch[..n]);
        if n == 0 {
            std::thread::yield_now();
        }
    }
    got
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
    let report = removal_of(&monitor, first_id, &mut client);
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
    let report = removal_of(&monitor, first_id, &mut client);
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
