//! The setup's real-hardware modes without hardware: VFIO through the simulated kernel (its
//! IOMMU is the emulated functions' memory) and a fake sysfs tree, and the physical mode on the
//! same tree. Copies end to end, removal at the kernel's request with the function handed back,
//! re-adding it, the per-function lock, and the cause given for every function passed over.

use std::sync::Arc;
use std::time::Duration;

use dmaplane::emu::{bind_emulated_function, EmuConfig, EmuMode, EmulatedDevice};
use dmaplane::hotplug::HotplugEvent;
use dmaplane::ioat::spec::{self, device};
use dmaplane::mem::{DmaPoolConfig, IovaMode};
use dmaplane::pci::FunctionLock;
use dmaplane::vfio::sim::{SimConfig, SimKernel};
use dmaplane::{DeviceId, DeviceKind, OpFlags, Setup, SetupBuilder, SetupError};

mod common;
use common::{block, collect, quiet};
use dmaplane::pci::fake::FakeSysfs;

const FIRST: &str = "0000:00:04.0";
const SECOND: &str = "0000:00:04.1";

/// A simulated kernel with emulated IOAT functions bound to vfio-pci, each in its own IOMMU
/// group, a fake sysfs that says so, and a directory for the lock files.
struct Rig {
    kernel: Arc<SimKernel>,
    sysfs: FakeSysfs,
    functions: Vec<Arc<EmulatedDevice>>,
}

impl Rig {
    fn new(name: &str, bdfs: &[&str]) -> Rig {
        let kernel = SimKernel::new(SimConfig::default());
        let sysfs = FakeSysfs::new(name);
        std::fs::create_dir_all(sysfs.root.join("locks")).unwrap();
        let functions = bdfs
            .iter()
            .enumerate()
            .map(|(i, bdf)| {
                let group = 20 + i as u32;
                sysfs.add_function(bdf, 0x0b00, Some("vfio-pci"), Some(group), None);
                bind_emulated_function(
                    &kernel,
                    bdf,
                    group,
                    None,
                    None,
                    EmuConfig {
                        cbver: spec::cbver::V3_4,
                        mode: EmuMode::Inline,
                        ..EmuConfig::default()
                    },
                )
                .unwrap()
            })
            .collect();
        Rig {
            kernel,
            sysfs,
            functions,
        }
    }

    fn lock_dir(&self) -> std::path::PathBuf {
        self.sysfs.root.join("locks")
    }

    fn builder(&self) -> SetupBuilder {
        Setup::builder()
            .cpus(2)
            .log(quiet())
            .vfio_ioat()
            .vfio_kernel(self.kernel.clone())
            .sysfs(self.sysfs.sysfs())
            .lock_dir(self.lock_dir())
    }
}

/// Copies 4 KiB and fills 1 KiB on `cpu` through whatever device the table gives it, and
/// checks the bytes (and that the fill stopped where it should).
fn copy_checked(setup: &Setup, cpu: usize, seed: u8) {
    let mut client = setup.client(cpu).unwrap();
    let (src, dst) = (
        block(setup.pool(), 4096, seed),
        block(setup.pool(), 4096, 0),
    );
    let filled = block(setup.pool(), 1088, 0);
    let untouched = filled.to_vec();
    let pattern = 0x0123_4567_89ab_cdef_u64 ^ u64::from(seed);
    // SAFETY: the blocks outlive the operations, polled to completion below.
    unsafe {
        client
            .copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 7, OpFlags::NONE)
            .unwrap();
        client
            .fill(filled.as_mut_ptr(), pattern, 1024, 8, OpFlags::SUBMIT)
            .unwrap();
    }
    let done = collect(&mut client, 2);
    assert!(done.iter().all(|c| c.result == Ok(())), "{done:?}");
    assert_eq!(dst.to_vec(), src.to_vec());
    let bytes = filled.to_vec();
    let expected: Vec<u8> = pattern
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(1024)
        .collect();
    assert_eq!(bytes[..1024], expected[..]);
    assert_eq!(bytes[1024..], untouched[1024..], "past the fill");
}

fn next_removal(setup: &Setup) -> DeviceId {
    loop {
        match setup.next_event(Duration::from_secs(10)) {
            Some(HotplugEvent::Removed(report)) => break report.device,
            Some(HotplugEvent::Failed { device, error }) => panic!("{device}: {error}"),
            Some(_) => continue,
            None => panic!("no removal reported"),
        }
    }
}

fn no_device_causes(result: Result<Setup, SetupError>) -> String {
    match result {
        Err(err @ SetupError::NoDevice { .. }) => err.to_string(),
        Err(other) => panic!("expected no device, got {other}"),
        Ok(_) => panic!("expected no device, got a setup"),
    }
}

/// The line of `why` that names `bdf`.
fn cause_of(why: &str, bdf: &str) -> String {
    why.lines()
        .find(|l| l.trim_start().starts_with(bdf))
        .unwrap_or_else(|| panic!("{bdf} not named in:\n{why}"))
        .to_string()
}

#[test]
fn a_vfio_setup_copies_through_the_iommu_releases_a_function_the_kernel_asks_for_and_re_adds_it() {
    let rig = Rig::new("setup-vfio", &[FIRST, SECOND]);
    let setup = rig.builder().build().unwrap();
    assert_eq!(setup.pool().iova_mode(), IovaMode::Mapped);
    let devices = setup.devices();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d.kind == DeviceKind::VfioIoat));
    let mapped = rig.kernel.mapping_count(FIRST).unwrap();
    assert!(mapped >= setup.pool().region_count(), "the pool is mapped");
    for cpu in 0..2 {
        copy_checked(&setup, cpu, cpu as u8 + 1);
    }
    // Every byte went through the IOMMU: the emulated functions did the copies.
    let stats = setup.stats();
    assert_eq!(stats.ops_ok, 4);

    // The kernel wants the first function back (an unbind, or the slot going away).
    let first = devices.iter().find(|d| d.name == FIRST).unwrap().id;
    assert!(rig.kernel.request_release(FIRST), "the setup listens");
    assert_eq!(next_removal(&setup), first);
    // Handed back without another call into the setup: its file closed (so the kernel's
    // unbind can finish), bus mastering off, the function in D3.
    assert!(
        !rig.kernel.request_release(FIRST),
        "nobody listens any more"
    );
    assert_eq!(rig.functions[0].registers().read8(device::CBVER), u8::MAX);
    // The other function carries on for both CPUs.
    for cpu in 0..2 {
        copy_checked(&setup, cpu, 9);
    }
    assert_eq!(setup.devices().len(), 1);

    // Bound again (or plugged back in): added while the setup runs, and it copies.
    let again = setup.add_device().unwrap();
    assert_ne!(again, first);
    let names: Vec<String> = setup.devices().into_iter().map(|d| d.name).collect();
    assert!(names.contains(&FIRST.to_string()), "{names:?}");
    assert_eq!(
        rig.functions[0].registers().read8(device::CBVER) & 0xf0,
        0x30,
        "powered up again"
    );
    for cpu in 0..2 {
        copy_checked(&setup, cpu, 11);
    }
    // Nothing more to add: the error names what was tried.
    let none_left = setup.add_device().unwrap_err();
    assert!(
        matches!(none_left, SetupError::NoDevice { .. }),
        "{none_left}"
    );

    drop(setup);
    assert_eq!(rig.kernel.mapping_count(FIRST), None, "every file closed");
}

#[test]
fn a_function_another_process_holds_is_passed_over_with_the_holders_pid() {
    let rig = Rig::new("setup-lock", &[FIRST]);
    // Negative control: the same rig attaches the function while nobody holds it.
    drop(rig.builder().build().unwrap());

    let held = FunctionLock::acquire(&rig.lock_dir(), FIRST).unwrap();
    let why = no_device_causes(rig.builder().build());
    assert!(
        why.contains(&format!("{FIRST}: "))
            && why.contains("in use")
            && why.contains(&std::process::id().to_string()),
        "{why}"
    );
    // The holder's device was never opened: no mapping made behind its back.
    assert_eq!(rig.kernel.mapping_count(FIRST), None);
    drop(held);
    drop(rig.builder().build().unwrap());
}

#[test]
fn the_setup_holds_each_functions_lock_while_it_has_it() {
    let rig = Rig::new("setup-holds", &[FIRST]);
    let setup = rig.builder().build().unwrap();
    let refused = FunctionLock::acquire(&rig.lock_dir(), FIRST).unwrap_err();
    assert!(refused.to_string().contains("in use"), "{refused}");
    drop(setup);
    FunctionLock::acquire(&rig.lock_dir(), FIRST).expect("let go with the setup");
}

#[test]
fn every_function_passed_over_in_vfio_mode_is_named_with_its_cause_and_fix() {
    let rig = Rig::new("setup-causes", &[]);
    // Still on the kernel's IOAT driver.
    rig.sysfs
        .add_function("0000:00:04.0", 0x0b00, Some("ioatdma"), Some(30), None);
    // Bound to vfio-pci without an IOMMU group (the IOMMU is off).
    rig.sysfs
        .add_function("0000:00:04.1", 0x0b00, Some("vfio-pci"), None, None);
    // In a group that is not viable: another member is on a kernel driver.
    rig.sysfs
        .add_function("0000:00:04.2", 0x0b00, Some("vfio-pci"), Some(32), None);
    let other = rig.sysfs.root.join("bus/pci/devices/0000:00:04.3");
    std::fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::symlink(
        &other,
        rig.sysfs
            .root
            .join("kernel/iommu_groups/32/devices/0000:00:04.3"),
    )
    .unwrap();
    bind_emulated_function(
        &rig.kernel,
        "0000:00:04.2",
        32,
        None,
        None,
        EmuConfig::default(),
    )
    .unwrap();
    rig.kernel.set_viable(32, false);
    // Bound, grouped and viable, but another process has it.
    rig.sysfs
        .add_function("0000:00:04.4", 0x0b00, Some("vfio-pci"), Some(34), None);
    let _held = FunctionLock::acquire(&rig.lock_dir(), "0000:00:04.4").unwrap();

    let why = no_device_causes(rig.builder().build());
    let line = |bdf: &str| cause_of(&why, bdf);
    let on_ioatdma = line("0000:00:04.0");
    assert!(
        on_ioatdma.contains("ioatdma") && on_ioatdma.contains("vfio-pci"),
        "{on_ioatdma}"
    );
    let ungrouped = line("0000:00:04.1");
    assert!(ungrouped.contains("IOMMU group"), "{ungrouped}");
    let not_viable = line("0000:00:04.2");
    assert!(
        not_viable.contains("viable") && not_viable.contains("0000:00:04.3"),
        "{not_viable}"
    );
    let held = line("0000:00:04.4");
    assert!(held.contains("in use"), "{held}");
    // The group's other member is not an IOAT function: named as a member, never tried.
    assert_eq!(
        why.lines().count(),
        5,
        "a heading and one line each:\n{why}"
    );
}

#[test]
fn without_any_ioat_function_the_error_says_so() {
    let rig = Rig::new("setup-empty", &[]);
    let why = no_device_causes(rig.builder().build());
    assert!(why.contains("no IOAT function found"), "{why}");
}

#[test]
fn the_physical_mode_refuses_functions_on_a_driver_and_under_a_translating_iommu() {
    let rig = Rig::new("setup-physical", &[]);
    rig.sysfs
        .add_function("0000:00:04.0", 0x0b00, Some("ioatdma"), None, None);
    rig.sysfs
        .add_function("0000:00:04.1", 0x0b00, Some("vfio-pci"), Some(41), None);
    // Unbound, but its IOMMU group translates (type DMA): physical addresses would fault.
    rig.sysfs
        .add_function("0000:00:04.2", 0x0b00, None, Some(42), None);
    // Unbound, in an identity (passthrough) group, but the pool is not physical.
    rig.sysfs
        .add_function("0000:00:04.3", 0x0b00, None, Some(43), None);
    rig.sysfs.set_group_type(43, "identity");
    let result = Setup::builder()
        .cpus(2)
        .log(quiet())
        .physical_ioat()
        .sysfs(rig.sysfs.sysfs())
        .lock_dir(rig.lock_dir())
        // Physical addresses need root; the refusals below come before any are used.
        .pool(DmaPoolConfig {
            iova_mode: IovaMode::Va,
            ..DmaPoolConfig::default()
        })
        .build();
    let why = no_device_causes(result);
    let line = |bdf: &str| cause_of(&why, bdf);
    assert!(line("0000:00:04.0").contains("unbind it first"), "{why}");
    assert!(line("0000:00:04.1").contains("use the VFIO mode"), "{why}");
    let translated = line("0000:00:04.2");
    assert!(
        translated.contains("IOMMU translates") && translated.contains("iommu=pt"),
        "{translated}"
    );
    let wrong_pool = line("0000:00:04.3");
    assert!(wrong_pool.contains("IovaMode::Physical"), "{wrong_pool}");
    // A refused function's lock is let go with it.
    FunctionLock::acquire(&rig.lock_dir(), "0000:00:04.2").unwrap();
}
