//! The VFIO layer against the simulated kernel: the container/group/device state machine and
//! its errnos, the iommufd path, regions and BAR0 (whole or sparse), configuration space, DMA
//! mapping through the pool with unmapping on release, the entry limit, reset, close, the
//! device-request eventfd, and an emulated IOAT function whose DMA goes through the simulated
//! IOMMU: copies run end to end, and an IOVA nobody mapped faults instead of reaching memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::emu::{bind_emulated_function, EmuConfig, EmuMode, EmulatedDevice};
use dmaplane::ioat::spec::{self, chanerr, device, BAR_SIZE};
use dmaplane::ioat::{IoatConfig, IoatDevice, IoatError};
use dmaplane::mem::{DmaPool, DmaPoolConfig, IommuMapper, IovaMode, MemError};
use dmaplane::pci::regs;
use dmaplane::vfio::sim::{SimConfig, SimKernel};
use dmaplane::vfio::{
    extension, group_flags, region_flags, region_index, NoIommu, VfioContext, VfioError, VfioKernel,
};
use dmaplane::{Client, ClientConfig, Completion, Engine, EngineConfig, OpFlags};

mod common;
use common::{block, quiet};
use dmaplane::pci::fake::FakeSysfs;

const BDF: &str = "0000:00:04.0";

fn errno_of<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    result.unwrap_err().raw_os_error().unwrap()
}

/// A simulated kernel with one emulated IOAT function bound to vfio-pci in group 12, and a
/// fake sysfs that says so.
struct Rig {
    kernel: Arc<SimKernel>,
    sysfs: FakeSysfs,
    device: Arc<EmulatedDevice>,
}

fn rig(name: &str, config: SimConfig, cdev: bool, sparse: Option<Vec<(u64, u64)>>) -> Rig {
    let kernel = SimKernel::new(config);
    let sysfs = FakeSysfs::new(name);
    let cdev = cdev.then(|| "vfio0".to_string());
    sysfs.add_function(BDF, 0x0b00, Some("vfio-pci"), Some(12), cdev.as_deref());
    let device = bind_emulated_function(
        &kernel,
        BDF,
        12,
        cdev,
        sparse,
        EmuConfig {
            cbver: spec::cbver::V3_4,
            mode: EmuMode::Inline,
            ..EmuConfig::default()
        },
    )
    .unwrap();
    Rig {
        kernel,
        sysfs,
        device,
    }
}

fn mapped_pool() -> DmaPool {
    DmaPool::new(DmaPoolConfig {
        iova_mode: IovaMode::Mapped,
        ..DmaPoolConfig::default()
    })
    .unwrap()
}

#[test]
fn the_type1_state_machine_answers_each_misuse_with_the_kernels_errno() {
    let r = rig("errnos", SimConfig::default(), false, None);
    let k: &dyn VfioKernel = &*r.kernel;
    let container = k.open_container().unwrap();
    assert_eq!(k.api_version(container).unwrap(), 0);
    assert!(k.check_extension(container, extension::TYPE1V2).unwrap());
    assert!(!k.check_extension(container, extension::NOIOMMU).unwrap());
    assert_eq!(
        errno_of(k.open_group(99, false)),
        libc::ENOENT,
        "no such group"
    );
    assert_eq!(
        errno_of(k.set_iommu(container, extension::TYPE1V2)),
        libc::EINVAL,
        "SET_IOMMU before any group"
    );
    let group = k.open_group(12, false).unwrap();
    assert_eq!(
        errno_of(k.open_group(12, false)),
        libc::EBUSY,
        "opened twice"
    );
    assert_eq!(k.group_status(group).unwrap(), group_flags::VIABLE);
    assert_eq!(
        errno_of(k.group_device(group, BDF)),
        libc::EINVAL,
        "GET_DEVICE_FD before the container"
    );
    k.set_container(group, container).unwrap();
    assert_eq!(
        errno_of(k.set_container(group, container)),
        libc::EINVAL,
        "a group with a container already"
    );
    assert_eq!(
        errno_of(k.map_dma(container, 0x10000, 0x10000, 4096)),
        libc::EINVAL,
        "MAP_DMA before SET_IOMMU"
    );
    assert_eq!(
        errno_of(k.group_device(group, BDF)),
        libc::EINVAL,
        "GET_DEVICE_FD before SET_IOMMU"
    );
    assert_eq!(
        errno_of(k.set_iommu(container, extension::NOIOMMU)),
        libc::ENODEV
    );
    k.set_iommu(container, extension::TYPE1V2).unwrap();
    assert_eq!(
        errno_of(k.set_iommu(container, extension::TYPE1V2)),
        libc::EINVAL,
        "SET_IOMMU twice"
    );
    assert_eq!(
        errno_of(k.group_device(group, "0000:00:04.1")),
        libc::ENODEV,
        "a name not in the group"
    );

    // DMA mapping rules.
    let (va, iova) = (0x7f00_0000_0000u64, 0x1_0000_0000u64);
    assert_eq!(
        errno_of(k.map_dma(container, va, iova, 0)),
        libc::EINVAL,
        "size 0"
    );
    assert_eq!(
        errno_of(k.map_dma(container, va, iova + 8, 4096)),
        libc::EINVAL,
        "misaligned"
    );
    assert_eq!(
        errno_of(k.map_dma(container, va, 0xfee0_0000, 4096)),
        libc::EINVAL,
        "the MSI window"
    );
    assert_eq!(
        errno_of(k.map_dma(container, va, u64::MAX - 4095, 8192)),
        libc::EOVERFLOW
    );
    k.map_dma(container, va, iova, 3 * 4096).unwrap();
    assert_eq!(
        errno_of(k.map_dma(container, va, iova + 4096, 4096)),
        libc::EEXIST,
        "overlap"
    );
    assert_eq!(
        errno_of(k.unmap_dma(container, iova, 4096)),
        libc::EINVAL,
        "type1v2 does not split a mapping"
    );
    assert_eq!(
        k.unmap_dma(container, iova + (1 << 20), 4096).unwrap(),
        0,
        "nothing there"
    );
    assert_eq!(k.unmap_dma(container, iova, 3 * 4096).unwrap(), 3 * 4096);
    k.close(group);
    k.close(container);
}

#[test]
fn a_group_with_a_function_on_a_kernel_driver_is_not_viable_and_the_error_names_its_members() {
    let r = rig("viable", SimConfig::default(), false, None);
    r.kernel.set_viable(12, false);
    let context = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    let err = context.open_device(&r.sysfs.sysfs(), BDF).unwrap_err();
    assert!(
        matches!(&err, VfioError::GroupNotViable { group: 12, members } if members == &[BDF]),
        "{err}"
    );
    assert!(
        err.to_string().contains("must be bound to vfio-pci"),
        "{err}"
    );
    // The control: viable again, the same open works.
    r.kernel.set_viable(12, true);
    context.open_device(&r.sysfs.sysfs(), BDF).unwrap();
}

#[test]
fn opening_refuses_unbound_ungrouped_busy_and_no_iommu_functions_with_the_fix() {
    // Not bound to vfio-pci: no group node.
    let kernel = SimKernel::new(SimConfig::default());
    let sysfs = FakeSysfs::new("unbound");
    sysfs.add_function(BDF, 0x0b00, Some("ioatdma"), Some(3), None);
    let context = VfioContext::type1(kernel.clone(), NoIommu::Refused).unwrap();
    let err = context.open_device(&sysfs.sysfs(), BDF).unwrap_err();
    assert!(
        matches!(&err, VfioError::NotBound { driver: Some(d), .. } if d == "ioatdma"),
        "{err}"
    );
    assert!(err.to_string().contains("dmaplane-setup bind"), "{err}");
    // No IOMMU group at all.
    sysfs.add_function("0000:00:04.1", 0x0b00, None, None, None);
    let err = context
        .open_device(&sysfs.sysfs(), "0000:00:04.1")
        .unwrap_err();
    assert!(matches!(err, VfioError::NoIommuGroup { .. }), "{err}");

    // Another process (another context) has the group open.
    let r = rig("busy", SimConfig::default(), false, None);
    let first = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    let _held = first.open_device(&r.sysfs.sysfs(), BDF).unwrap();
    let second = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    assert!(matches!(
        second.open_device(&r.sysfs.sysfs(), BDF),
        Err(VfioError::GroupBusy { group: 12 })
    ));

    // A no-IOMMU kernel: refused without the opt-in.
    let r = rig(
        "noiommu",
        SimConfig {
            noiommu: true,
            ..SimConfig::default()
        },
        false,
        None,
    );
    std::fs::write(
        r.sysfs
            .root
            .join("module/vfio/parameters/enable_unsafe_noiommu_mode"),
        "Y\n",
    )
    .unwrap();
    let refused = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    assert!(matches!(
        refused.open_device(&r.sysfs.sysfs(), BDF),
        Err(VfioError::NoIommuRefused { .. })
    ));
    let allowed = VfioContext::type1(r.kernel.clone(), NoIommu::Allowed).unwrap();
    let device = allowed.open_device(&r.sysfs.sysfs(), BDF).unwrap();
    assert!(allowed.is_noiommu());
    // Nothing translates: the pool must use physical addresses, and a mapped pool is refused
    // at probe.
    let bar = device.bar0(BAR_SIZE).unwrap();
    let err = IoatDevice::probe(
        "noiommu",
        bar,
        Some(device.config_space().unwrap()),
        mapped_pool(),
        IoatConfig::default(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, IoatError::Addressing(why) if why.contains("IovaMode::Physical")),
        "{err}"
    );
}

#[test]
fn regions_config_space_and_bar0_behave_as_vfio_pci_gives_them() {
    let r = rig("regions", SimConfig::default(), false, None);
    let context = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    let device = context.open_device(&r.sysfs.sysfs(), BDF).unwrap();
    let bar = device.region(region_index::BAR0).unwrap();
    assert_eq!(bar.size, BAR_SIZE as u64);
    assert_ne!(bar.flags & region_flags::MMAP, 0);
    let config = device.region(region_index::CONFIG).unwrap();
    assert_eq!(
        config.flags & region_flags::MMAP,
        0,
        "config space is never mmapped"
    );
    assert!(
        r.kernel.map_region(0, config.offset, 4096).is_err(),
        "not through a made-up fd either"
    );

    // Opening enabled memory decoding and cleared bus mastering, as vfio-pci does.
    let cs = device.config_space().unwrap();
    let command = cs.read16(regs::COMMAND).unwrap();
    assert_eq!(
        command & (regs::COMMAND_MEMORY | regs::COMMAND_MASTER),
        regs::COMMAND_MEMORY
    );
    assert_eq!(cs.read16(regs::DEVICE_ID).unwrap(), 0x0b00);
    let window = device.bar0(BAR_SIZE).unwrap();
    assert_eq!(window.read8(device::CBVER), spec::cbver::V3_4);
    // With memory decoding off, a BAR read through the region fails as the kernel's does.
    cs.write16(regs::COMMAND, 0).unwrap();
    assert_eq!(window.read8(device::CBVER), u8::MAX);
    cs.write16(regs::COMMAND, regs::COMMAND_MEMORY).unwrap();

    // A BAR too small for the driver is refused with the reason.
    assert!(matches!(
        device.bar0(BAR_SIZE * 2),
        Err(VfioError::BarRefused { .. })
    ));
}

/// Probes the function behind `context` with `pool`, registers it with a one-CPU engine, and
/// copies 4 KiB through a client; returns the engine, the driver and the client.
fn copy_through(
    context: &Arc<VfioContext>,
    sysfs: &dmaplane::pci::Sysfs,
    pool: &DmaPool,
) -> (Engine, IoatDevice, Client, dmaplane::vfio::VfioDevice) {
    let device = context.open_device(sysfs, BDF).unwrap();
    pool.attach_iommu(context.clone()).unwrap();
    let ioat = IoatDevice::probe(
        BDF,
        device.bar0(BAR_SIZE).unwrap(),
        Some(device.config_space().unwrap()),
        pool.clone(),
        IoatConfig::default(),
    )
    .unwrap();
    let engine = Engine::new(EngineConfig::with_cpus(1).log_hook(quiet())).unwrap();
    engine.register_device(ioat.spec()).unwrap();
    let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
    let (src, dst) = (block(pool, 4096, 1), block(pool, 4096, 2));
    // SAFETY: the blocks outlive the operation, polled to completion below.
    unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 1, OpFlags::SUBMIT) }.unwrap();
    let done = poll(&mut client, 1);
    assert_eq!(done[0].result, Ok(()));
    assert_eq!(dst.to_vec(), src.to_vec());
    (engine, ioat, client, device)
}

fn poll(client: &mut Client, count: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut batch = [Completion::default(); 16];
    while got.len() < count {
        assert!(Instant::now() < deadline, "only {got:?}");
        let n = client.poll(&mut batch);
        got.extend_from_slice(&batch[..n]);
    }
    got
}

#[test]
fn copies_run_through_the_simulated_iommu_and_everything_mapped_is_unmapped_again() {
    for (name, sparse) in [
        ("whole-bar", None),
        // Only the device registers mmappable: the channel's go through pread and pwrite.
        ("sparse-bar", Some(vec![(0, 0x80)])),
    ] {
        let r = rig(name, SimConfig::default(), false, sparse);
        let context = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
        let pool = mapped_pool();
        let (engine, ioat, client, device) = copy_through(&context, &r.sysfs.sysfs(), &pool);
        let mapped = r.kernel.mapping_count(BDF).unwrap();
        assert_eq!(mapped, pool.region_count(), "{name}: every region, once");
        let mut app = vec![0u8; 8192];
        let registration = pool.register(app.as_mut_ptr(), app.len()).unwrap();
        assert_eq!(r.kernel.mapping_count(BDF), Some(mapped + 1));
        drop(registration);
        assert_eq!(
            r.kernel.mapping_count(BDF),
            Some(mapped),
            "{name}: unmapped on unregister"
        );
        drop((client, engine, ioat));
        drop(pool);
        assert_eq!(
            r.kernel.mapping_count(BDF),
            Some(0),
            "{name}: unmapped with the pool"
        );
        drop(device);
        drop(context);
        // Closed: bus mastering off and the function in D3.
        let command = r.device.config_space().read16(regs::COMMAND).unwrap();
        assert_eq!(command & regs::COMMAND_MASTER, 0, "{name}");
        assert_eq!(
            r.device.registers().read8(device::CBVER),
            u8::MAX,
            "{name}: D3"
        );
    }
}

#[test]
fn the_iommufd_path_opens_through_the_cdev_and_copies_alike() {
    let r = rig("iommufd", SimConfig::default(), true, None);
    let sysfs = r.sysfs.sysfs();
    let context =
        VfioContext::for_function(r.kernel.clone(), &sysfs, BDF, NoIommu::Refused).unwrap();
    assert!(context.is_iommufd());
    let pool = mapped_pool();
    let (_engine, _ioat, _client, _device) = copy_through(&context, &sysfs, &pool);
    assert_eq!(r.kernel.mapping_count(BDF), Some(pool.region_count()));

    // iommufd's own rules: a cdev does nothing before it is bound, and an unmap must cover
    // whole mappings (ENOENT, where type1 says EINVAL).
    let k: &dyn VfioKernel = &*r.kernel;
    let unbound = k.open_device_cdev("vfio0").unwrap();
    assert_eq!(errno_of(k.device_info(unbound)), libc::EINVAL);
    let iommufd = k.open_iommufd().unwrap();
    let ioas = k.ioas_alloc(iommufd).unwrap();
    k.ioas_map(iommufd, ioas, 0x10_0000, 0x1_0000_0000, 2 * 4096)
        .unwrap();
    assert_eq!(
        errno_of(k.ioas_unmap(iommufd, ioas, 0x1_0000_0000, 4096)),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(k.ioas_unmap(iommufd, ioas, 0x2_0000_0000, 4096)),
        libc::ENOENT
    );
    assert_eq!(
        k.ioas_unmap(iommufd, ioas, 0x1_0000_0000, 2 * 4096)
            .unwrap(),
        8192
    );
    k.close(unbound);
    k.close(iommufd);
}

#[test]
fn a_dma_to_an_iova_nobody_mapped_faults_and_fails_the_operation_with_its_cause() {
    let r = rig("fault", SimConfig::default(), false, None);
    let context = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    let pool = mapped_pool();
    let (_engine, _ioat, mut client, _device) = copy_through(&context, &r.sysfs.sysfs(), &pool);
    // Application memory registered (so mapped), then its mapping taken away behind the
    // pool's back: the pool still hands out the IOVA, the IOMMU no longer has it.
    let mut src = vec![7u8; 4096];
    let registration = pool.register(src.as_mut_ptr(), src.len()).unwrap();
    let (iova, _) = pool.translate(src.as_ptr() as usize, 4096).unwrap();
    let page = iova & !4095;
    let region_len = registration.len();
    IommuMapper::unmap(&*context, page, region_len).unwrap();
    let dst = block(&pool, 4096, 0);
    let before = dst.to_vec();
    // SAFETY: both buffers outlive the operation, polled below.
    unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 9, OpFlags::SUBMIT) }.unwrap();
    let done = poll(&mut client, 1);
    assert_eq!(
        done[0].result,
        Err(dmaplane::ioat::device_error(chanerr::SRC_ADDR)),
        "the IOMMU refused the read"
    );
    assert_eq!(dst.to_vec(), before, "nothing reached the destination");
    // The control: with the mapping put back, the same copy goes through.
    IommuMapper::map(&*context, registration.va(), page, region_len).unwrap();
    // SAFETY: as above.
    unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 10, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(poll(&mut client, 1)[0].result, Ok(()));
    assert_eq!(dst.to_vec(), src);
}

#[test]
fn the_entry_limit_is_respected_and_reported() {
    let r = rig(
        "limit",
        SimConfig {
            dma_entry_limit: 3,
            ..SimConfig::default()
        },
        false,
        None,
    );
    let context = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    let pool = mapped_pool();
    let _device = context.open_device(&r.sysfs.sysfs(), BDF).unwrap();
    pool.attach_iommu(context.clone()).unwrap();
    let mut blocks = Vec::new();
    let refused = loop {
        match pool.alloc(pool.region_size() * 2, 4096) {
            Ok(b) => blocks.push(b),
            Err(e) => break e,
        }
        assert!(blocks.len() < 8, "never refused");
    };
    assert_eq!(refused, MemError::IommuEntriesExhausted);
    assert_eq!(r.kernel.mapping_count(BDF), Some(3));
}

#[test]
fn reset_brings_the_function_back_to_power_on_and_the_request_eventfd_reports_a_release() {
    let r = rig("reset", SimConfig::default(), false, None);
    let context = VfioContext::type1(r.kernel.clone(), NoIommu::Refused).unwrap();
    let device = context.open_device(&r.sysfs.sysfs(), BDF).unwrap();
    let window = device.bar0(BAR_SIZE).unwrap();
    let chanctrl = spec::channel_base(0) + spec::chan::CHANCTRL;
    window.write16(chanctrl, 0x000c);
    assert_eq!(window.read16(chanctrl), 0x000c);
    device.reset().unwrap();
    assert_eq!(window.read16(chanctrl), 0, "power-on value after the reset");

    assert!(!r.kernel.request_release(BDF), "nobody listens yet");
    let notifier = device.request_notifier().unwrap();
    assert!(!notifier.requested());
    assert!(r.kernel.request_release(BDF));
    assert!(notifier.requested());
    assert!(!notifier.requested(), "read once");
}
