//! The `edu` backend against its model behind the simulated VFIO kernel: copies of every size
//! split at the device's 4 KiB buffer, each piece checked through the bounce block; a buffer
//! whose IOMMU mapping was taken away failing its operation with the fault as the cause and the
//! destination left alone; a device that is not `edu`, and one that went away.

use std::sync::Arc;

use dmaplane::edu::model::{bind_modelled_edu, EduModel};
use dmaplane::edu::{
    spec, EduConfig, EduDevice, EduError, DESTINATION_FAULT, MAX_TRANSFER, SOURCE_FAULT,
};
use dmaplane::mem::{DmaPool, DmaPoolConfig, IommuMapper, IovaMode};
use dmaplane::pci::fake::FakeSysfs;
use dmaplane::vfio::sim::{SimConfig, SimKernel};
use dmaplane::vfio::{NoIommu, VfioContext, VfioDevice};
use dmaplane::{Client, ClientConfig, Engine, EngineConfig, OpError, OpFlags};

mod common;
use common::{block, collect, quiet};

const BDF: &str = "0000:01:00.0";

struct Rig {
    _kernel: Arc<SimKernel>,
    _sysfs: FakeSysfs,
    model: Arc<EduModel>,
    context: Arc<VfioContext>,
    pool: DmaPool,
    _device: VfioDevice,
    engine: Engine,
    _edu: EduDevice,
}

fn rig(name: &str) -> Rig {
    let kernel = SimKernel::new(SimConfig::default());
    let sysfs = FakeSysfs::new(name);
    sysfs.add_edu(BDF, Some("vfio-pci"), Some(7));
    let model = bind_modelled_edu(&kernel, BDF, 7, None);
    let context = VfioContext::type1(kernel.clone(), NoIommu::Refused).unwrap();
    let device = context.open_device(&sysfs.sysfs(), BDF).unwrap();
    let pool = DmaPool::new(DmaPoolConfig {
        iova_mode: IovaMode::Mapped,
        ..DmaPoolConfig::default()
    })
    .unwrap();
    pool.attach_iommu(context.clone()).unwrap();
    let edu = EduDevice::probe(
        BDF,
        device.bar0(spec::BAR_SIZE).unwrap(),
        Some(device.config_space().unwrap()),
        pool.clone(),
        EduConfig::default(),
    )
    .unwrap();
    let engine = Engine::new(EngineConfig::with_cpus(1).log_hook(quiet())).unwrap();
    engine.register_device(edu.spec()).unwrap();
    Rig {
        _kernel: kernel,
        _sysfs: sysfs,
        model,
        context,
        pool,
        _device: device,
        engine,
        _edu: edu,
    }
}

fn client(rig: &Rig) -> Client {
    Client::new(&rig.engine, Some(0), ClientConfig::default()).unwrap()
}

#[test]
fn copies_of_every_size_arrive_whole_with_three_transfers_per_piece() {
    // Pieces end inside the buffer, or the model (like QEMU 7.2) stops for good: the negative
    // control is a driver that uses the whole buffer.
    let rig = rig("edu-copies");
    let mut client = client(&rig);
    let mut transfers = 0;
    for (i, len) in [1usize, 100, 4094, 4095, 4096, 4097, 10_000]
        .into_iter()
        .enumerate()
    {
        let src = block(&rig.pool, len, i as u8 + 1);
        let dst = block(&rig.pool, len + 64, 0);
        let guard = dst.to_vec()[len..].to_vec();
        // SAFETY: the blocks outlive the operation, polled to completion below.
        unsafe {
            client.copy(
                dst.as_mut_ptr(),
                src.as_ptr(),
                len,
                i as u64,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
        let done = collect(&mut client, 1);
        assert_eq!(
            (done[0].user_data, done[0].result),
            (i as u64, Ok(())),
            "{len} B"
        );
        let bytes = dst.to_vec();
        assert_eq!(bytes[..len], src.to_vec()[..], "{len} B");
        assert_eq!(bytes[len..], guard[..], "{len} B: past the end");
        // Read into the buffer, back to the bounce block, out to the destination.
        transfers += 3 * len.div_ceil(MAX_TRANSFER) as u64;
        assert_eq!(rig.model.transfers(), transfers, "{len} B");
    }
    assert_eq!(rig.model.faults(), 0);
}

/// An application buffer of one page, registered with the pool: a mapping of its own.
struct Registered {
    bytes: Box<[u8]>,
    offset: usize,
    _registration: dmaplane::mem::Registration,
}

fn registered(pool: &DmaPool, fill: u8) -> Registered {
    let mut bytes = vec![fill; 3 * 4096].into_boxed_slice();
    let offset = bytes.as_ptr().align_offset(4096);
    let registration = pool.register(bytes[offset..].as_mut_ptr(), 4096).unwrap();
    Registered {
        bytes,
        offset,
        _registration: registration,
    }
}

impl Registered {
    fn ptr(&mut self) -> *mut u8 {
        self.bytes[self.offset..].as_mut_ptr()
    }
    fn page(&self) -> &[u8] {
        &self.bytes[self.offset..self.offset + 4096]
    }
}

#[test]
fn a_source_whose_mapping_was_taken_away_fails_with_the_fault_and_leaves_the_destination_alone() {
    let rig = rig("edu-src-fault");
    let mut client = client(&rig);
    let mut src = registered(&rig.pool, 0x5a);
    let dst = block(&rig.pool, 4096, 0x11);
    // Control: mapped, the copy goes through.
    // SAFETY: both buffers outlive the operation, polled to completion below.
    unsafe { client.copy(dst.as_mut_ptr(), src.ptr(), 4096, 1, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(collect(&mut client, 1)[0].result, Ok(()));
    assert_eq!(dst.to_vec(), src.page());

    // The IOMMU forgets the source (the pool still believes it mapped).
    let (iova, _) = rig.pool.translate(src.ptr() as usize, 4096).unwrap();
    rig.context.unmap(iova, 4096).unwrap();
    let untouched = block(&rig.pool, 4096, 0x22);
    let before = untouched.to_vec();
    // SAFETY: as above.
    unsafe { client.copy(untouched.as_mut_ptr(), src.ptr(), 4096, 2, OpFlags::SUBMIT) }.unwrap();
    let done = collect(&mut client, 1);
    assert_eq!(
        done[0].result,
        Err(OpError::Device {
            code: SOURCE_FAULT.code,
            cause: SOURCE_FAULT.cause
        })
    );
    assert_eq!(
        untouched.to_vec(),
        before,
        "never written with what the fault brought"
    );
    assert!(rig.model.faults() > 0, "the IOMMU refused the read");
}

#[test]
fn a_destination_whose_mapping_was_taken_away_fails_with_the_fault() {
    let rig = rig("edu-dst-fault");
    let mut client = client(&rig);
    let src = block(&rig.pool, 4096, 0x33);
    let mut dst = registered(&rig.pool, 0x44);
    let (iova, _) = rig.pool.translate(dst.ptr() as usize, 4096).unwrap();
    rig.context.unmap(iova, 4096).unwrap();
    // SAFETY: both buffers outlive the operation, polled to completion below.
    unsafe { client.copy(dst.ptr(), src.as_ptr(), 4096, 3, OpFlags::SUBMIT) }.unwrap();
    let done = collect(&mut client, 1);
    assert_eq!(
        done[0].result,
        Err(OpError::Device {
            code: DESTINATION_FAULT.code,
            cause: DESTINATION_FAULT.cause
        })
    );
    assert!(
        dst.page().iter().all(|&b| b == 0x44),
        "the write landed nowhere"
    );
}

#[test]
fn a_device_that_went_away_fails_its_work_and_reads_as_absent() {
    let rig = rig("edu-gone");
    let mut client = client(&rig);
    let (src, dst) = (block(&rig.pool, 64, 1), block(&rig.pool, 64, 0));
    let before = dst.to_vec();
    rig.model.surprise_remove();
    assert_eq!(
        rig.engine.device_present(rig.engine.devices()[0].0),
        Some(false)
    );
    // SAFETY: both blocks outlive the operation, polled to completion below.
    unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 4, OpFlags::SUBMIT) }.unwrap();
    let done = collect(&mut client, 1);
    assert!(done[0].result.is_err(), "{:?}", done[0].result);
    assert_eq!(dst.to_vec(), before);
}

#[test]
fn a_function_that_is_not_edu_is_refused() {
    let rig = rig("edu-not");
    // An IOAT register window: its first word is not the edu's identification.
    let emulated = dmaplane::emu::EmulatedDevice::new(
        dmaplane::emu::EmuConfig::default(),
        common::device_memory(&rig.pool),
    )
    .unwrap();
    match EduDevice::probe(
        "ioat",
        emulated.registers(),
        None,
        rig.pool.clone(),
        EduConfig::default(),
    ) {
        Err(EduError::NotEdu { .. }) => {}
        other => panic!("expected NotEdu, got {other:?}"),
    }
}
