//! `Setup` with DSA: emulated DSA devices, a mixed IOAT and DSA engine balancing per
//! capability, removal and re-adding, and the kernel route's errors on a fake sysfs tree.

use std::fs;
use std::time::{Duration, Instant};

use dmaplane::dsa::KernelRoute;
use dmaplane::hotplug::HotplugEvent;
use dmaplane::{Capability, Completion, DeviceKind, OpError, OpFlags, Removal, Setup, SetupError};

fn collect(client: &mut dmaplane::Client, count: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut out = [Completion::default(); 16];
    while got.len() < count {
        assert!(Instant::now() < deadline, "{} of {count}", got.len());
        let n = client.poll(&mut out);
        got.extend_from_slice(&out[..n]);
        if n == 0 {
            std::thread::yield_now();
        }
    }
    got
}

fn removal(setup: &Setup, device: dmaplane::DeviceId) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no removal report");
        if let Some(HotplugEvent::Removed(report)) = setup.next_event(Duration::from_millis(100)) {
            if report.device == device {
                return;
            }
        }
    }
}

#[test]
fn emulated_dsa_devices_copy_compute_and_leave_by_surprise() {
    let setup = Setup::builder()
        .cpus(2)
        .emulated_dsa(2)
        .channels_per_device(2)
        .build()
        .unwrap();
    let devices = setup.devices();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d.kind == DeviceKind::EmulatedDsa));
    assert_eq!(
        setup.engine().dump().devices[0].channels.len(),
        2,
        "a channel per WQ"
    );
    let mut client = setup.client(0).unwrap();
    let mut src = setup.pool().alloc(4096, 64).unwrap();
    src.write_at(0, &[0x42; 4096]).unwrap();
    let dst = setup.pool().alloc(4096, 64).unwrap();
    // SAFETY: the blocks outlive the operations, polled to completion below.
    unsafe {
        client
            .copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 1, OpFlags::NONE)
            .unwrap();
        client
            .crc32c(src.as_ptr(), 4096, 0, 2, OpFlags::SUBMIT)
            .unwrap();
    }
    let mut done = collect(&mut client, 2);
    done.sort_by_key(|c| c.user_data);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert_eq!(done[1].crc(), dmaplane::queue::op::crc32c(0, &[0x42; 4096]));
    assert_eq!(dst.to_vec(), vec![0x42; 4096]);

    // The device the client's copies go to leaves by surprise while work is queued.
    let first = devices[0].id;
    setup.remove_device(first, Removal::Surprise).unwrap();
    removal(&setup, first);
    // SAFETY: as above.
    unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 3, OpFlags::SUBMIT) }.unwrap();
    let result = collect(&mut client, 1)[0].result;
    assert!(
        result.is_ok() || result == Err(OpError::DeviceRemoved),
        "{result:?}"
    );
    let again = setup.add_device().unwrap();
    assert_ne!(again, first);
    assert_eq!(setup.devices().len(), 2);
}

#[test]
fn a_mixed_engine_gives_copies_to_both_and_dsa_only_operations_to_dsa() {
    let setup = Setup::builder().cpus(2).mixed(2).build().unwrap();
    let kinds: Vec<DeviceKind> = setup.devices().iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [DeviceKind::EmulatedIoat, DeviceKind::EmulatedDsa]);
    let dump = setup.engine().dump();
    let dsa = dump
        .devices
        .iter()
        .find(|d| d.name.starts_with("dsa"))
        .unwrap();
    let dsa_channels: Vec<_> = dsa.channels.iter().map(|c| c.id).collect();
    let mut clients: Vec<_> = (0..2).map(|cpu| setup.client(cpu).unwrap()).collect();
    let mut copy_channels = Vec::new();
    for client in &mut clients {
        copy_channels.push(client.channel(Capability::Memcpy).unwrap().0);
        // Only DSA computes CRCs: every CPU's CRC row names a DSA channel.
        let (crc, _) = client.channel(Capability::Crc32c).unwrap();
        assert!(dsa_channels.contains(&crc), "{crc:?} is not a DSA channel");
    }
    copy_channels.dedup();
    assert_eq!(
        copy_channels.len(),
        2,
        "copies are spread over both devices"
    );
    let mut src = setup.pool().alloc(8192, 64).unwrap();
    src.write_at(0, &[5; 8192]).unwrap();
    let dst = setup.pool().alloc(8192, 64).unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        // SAFETY: as above.
        unsafe {
            client.copy(
                dst.as_mut_ptr().add(4096 * i),
                src.as_ptr().add(4096 * i),
                4096,
                i as u64,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
        assert_eq!(collect(client, 1)[0].result, Ok(()));
    }
    assert_eq!(dst.to_vec(), vec![5; 8192]);
    // An added device is the other kind from the last one.
    let added = setup.add_device().unwrap();
    let kind = setup.devices().iter().find(|d| d.id == added).unwrap().kind;
    assert_eq!(kind, DeviceKind::EmulatedIoat);
}

#[test]
fn the_kernel_route_says_why_no_work_queue_could_be_opened() {
    let root = std::env::temp_dir().join(format!("dmaplane-setup-dsa-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("dev/dsa")).unwrap();
    let route = KernelRoute::new(root.join("sys"), root.join("dev"));
    // No DSA bus at all.
    match Setup::builder()
        .cpus(1)
        .kernel_dsa()
        .dsa_route(route.clone())
        .build()
    {
        Err(err @ SetupError::NoDevice { .. }) => {
            assert!(err.to_string().contains("accel-config"), "{err}")
        }
        other => panic!("expected NoDevice, got {:?}", other.err()),
    }
    // A disabled WQ: passed over with the command that enables it.
    let wq = root.join("sys/bus/dsa/devices/wq0.0");
    let dev = root.join("sys/bus/dsa/devices/dsa0");
    fs::create_dir_all(&wq).unwrap();
    fs::create_dir_all(&dev).unwrap();
    for (name, value) in [
        ("state", "disabled"),
        ("type", "user"),
        ("mode", "dedicated"),
        ("size", "16"),
    ] {
        fs::write(wq.join(name), value).unwrap();
    }
    fs::write(dev.join("pasid_enabled"), "1").unwrap();
    match Setup::builder()
        .cpus(1)
        .kernel_dsa()
        .dsa_route(route)
        .build()
    {
        Err(SetupError::NoDevice { kind, tried }) => {
            assert_eq!(kind, DeviceKind::KernelDsa);
            assert_eq!(tried.len(), 1);
            assert!(
                tried[0].cause.contains("accel-config enable-wq"),
                "{}",
                tried[0]
            );
        }
        other => panic!("expected NoDevice, got {:?}", other.err()),
    }
    let _ = fs::remove_dir_all(&root);
}
