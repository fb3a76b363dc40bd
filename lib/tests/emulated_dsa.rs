//! The emulated DSA driven through its registers and portals only, as a driver would drive
//! the silicon: groups and WQs are programmed in the tables, commands through CMD and
//! CMDSTATUS, descriptors written to portals, and results read back from completion records
//! (status byte first, with Acquire), SWERROR and the data buffers. Behavioural tests run in
//! inline and threaded mode.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use dmaplane::dsa::portal::{Enqueue, PortalWindow};
use dmaplane::dsa::spec::{
    self, cmd, cmdsts, crc32c, flags, gencap, gensts, grpcfg, offsets, opcode, portal, reg, status,
    swerr, wqcap, wqcfg, Descriptor,
};
use dmaplane::emu::{DsaEmuConfig, DsaFault, EmuMode, EmulatedDsa, HostBuffer, IdentityRanges};
use dmaplane::mmio::RegisterWindow;
use dmaplane::pci::{regs as pci_regs, ConfigSpace};

const MODES: [EmuMode; 2] = [EmuMode::Inline, EmuMode::Threaded];

/// Completion records, 32 bytes each: record `i` at `i * 32`.
const RECORDS: usize = 0;
/// Batch lists.
const LISTS: usize = 0x10000;
/// Data.
const DATA: usize = 0x20000;
const BUFFER: usize = 1 << 20;
const GRPCFG: usize = 0x300;
const WQCFG: usize = 0x400;

fn record_at(i: usize) -> usize {
    RECORDS + i * 32
}

/// A device and the memory it may touch; the device drops first.
struct Bench {
    dsa: Arc<EmulatedDsa>,
    regs: Arc<dyn RegisterWindow>,
    portals: Arc<dyn PortalWindow>,
    pci: Arc<dyn ConfigSpace>,
    buffer: HostBuffer,
}

/// One WQ to set up: index, size, dedicated, group.
#[derive(Clone, Copy)]
struct WqSetup {
    wq: usize,
    size: u32,
    dedicated: bool,
    threshold: u32,
}

fn dwq(wq: usize, size: u32) -> WqSetup {
    WqSetup {
        wq,
        size,
        dedicated: true,
        threshold: 0,
    }
}

impl Bench {
    fn new(config: DsaEmuConfig) -> Bench {
        let buffer = HostBuffer::new(BUFFER);
        // SAFETY: the buffer outlives the device (`Bench` drops `dsa` and its windows first)
        // and the tests touch bytes a descriptor uses only before submitting it or after its
        // record (read with Acquire) says it is done.
        let memory = unsafe { IdentityRanges::new(&[(buffer.addr(), buffer.len())]) };
        let dsa = EmulatedDsa::new(config, Arc::new(memory)).unwrap();
        let (regs, portals, pci) = (dsa.registers(), dsa.portals(), dsa.config_space());
        Bench {
            dsa,
            regs,
            portals,
            pci,
            buffer,
        }
    }

    fn mode(mode: EmuMode) -> Bench {
        Bench::new(DsaEmuConfig {
            mode,
            ..DsaEmuConfig::default()
        })
    }

    fn at(&self, offset: usize) -> u64 {
        self.buffer.addr() + offset as u64
    }

    fn bus_master(&self, on: bool) {
        let command = self.pci.read16(pci_regs::COMMAND).unwrap();
        let command = if on {
            command | pci_regs::COMMAND_MASTER
        } else {
            command & !pci_regs::COMMAND_MASTER
        };
        self.pci.write16(pci_regs::COMMAND, command).unwrap();
    }

    /// Writes CMD, waits for ACTIVE to clear, returns the error code.
    fn command(&self, code: u32, operand: u32) -> u32 {
        self.regs.write32(reg::CMD, cmd::encode(code, operand));
        let value = wait_for("the command", || {
            let value = self.regs.read32(reg::CMDSTATUS);
            (value & cmdsts::ACTIVE == 0).then_some(value)
        });
        cmdsts::error(value)
    }

    fn program_wq(&self, setup: WqSetup, transfer_shift: u32, batch_shift: u32) {
        let base = WQCFG + setup.wq * 32;
        let mut mode = wqcfg::mode(setup.dedicated, 1);
        if !setup.dedicated {
            mode |= wqcfg::MODE_PASID_ENABLE;
        }
        self.regs.write32(base + wqcfg::SIZE, setup.size);
        self.regs.write32(base + wqcfg::THRESHOLD, setup.threshold);
        self.regs.write32(base + wqcfg::MODE, mode);
        self.regs.write32(
            base + wqcfg::LIMITS,
            wqcfg::limits(transfer_shift, batch_shift),
        );
    }

    /// Group 0 with `engines` engines and the WQs; device and WQs enabled.
    fn configure(&self, wqs: &[WqSetup], engines: u32) {
        self.bus_master(true);
        assert_eq!(self.command(cmd::RESET_DEVICE, 0), 0);
        let wq_bits = wqs.iter().fold(0u64, |bits, w| bits | 1 << w.wq);
        self.regs.write64(GRPCFG + grpcfg::WQS, wq_bits);
        self.regs
            .write64(GRPCFG + grpcfg::ENGINES, (1u64 << engines) - 1);
        for &setup in wqs {
            self.program_wq(setup, 21, 10);
        }
        assert_eq!(self.command(cmd::ENABLE_DEVICE, 0), 0);
        for setup in wqs {
            assert_eq!(self.command(cmd::ENABLE_WQ, setup.wq as u32), 0);
        }
    }

    fn submit(&self, wq: usize, descriptor: &Descriptor) {
        // Any 64-byte slot of the page is the portal: rotate as drivers do.
        let slot = (descriptor.completion as usize / 32 % 64) * portal::SLOT;
        self.portals.write_descriptor(
            portal::offset(wq, portal::Kind::Unlimited) + slot,
            descriptor,
        );
    }

    /// The status byte of record `i`, loaded with Acquire.
    fn status(&self, i: usize) -> u8 {
        // SAFETY: inside the buffer; the device stores status bytes only atomically.
        let byte = unsafe { AtomicU8::from_ptr(self.buffer.as_ptr().add(record_at(i))) };
        byte.load(Ordering::Acquire)
    }

    /// Waits for record `i` and returns its fields.
    fn record(&self, i: usize) -> Record {
        let status = wait_for("a completion record", || {
            let s = self.status(i);
            (s != 0).then_some(s)
        });
        let bytes = self.buffer.read(record_at(i), 32);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        Record {
            status,
            result: bytes[1],
            bytes_completed: u32_at(4),
            fault_address: u64_at(8),
            op_specific: u64_at(16),
        }
    }

    fn swerror(&self) -> u64 {
        self.regs.read64(reg::SWERROR)
    }

    fn clear_swerror(&self) {
        self.regs
            .write64(reg::SWERROR, swerr::VALID | swerr::OVERFLOW);
    }

    fn gensts(&self) -> u32 {
        gensts::state(self.regs.read32(reg::GENSTS))
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Record {
    status: u8,
    result: u8,
    bytes_completed: u32,
    fault_address: u64,
    op_specific: u64,
}

/// Waits, boundedly, for another thread (the engine) to produce something.
fn wait_for<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let backoff = Backoff::new();
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        backoff.snooze();
    }
}

/// Watches for `window` that `unchanged` stays true (for checks that nothing happens).
fn stays(window: Duration, mut unchanged: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < window {
        if !unchanged() {
            return false;
        }
        std::thread::yield_now();
    }
    unchanged()
}

/// A descriptor of `op` with a record (CRAV | RCR) in slot `record`.
fn desc(bench: &Bench, op: u8, record: usize) -> Descriptor {
    let mut d = Descriptor::new(op, flags::CRAV | flags::RCR);
    d.completion = bench.at(record_at(record));
    d
}

fn memmove(bench: &Bench, record: usize, src: usize, dst: usize, size: u32) -> Descriptor {
    let mut d = desc(bench, opcode::MEMMOVE, record);
    (d.src, d.dst, d.size) = (bench.at(src), bench.at(dst), size);
    d
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn capability_registers_and_offsets_describe_an_spr_part() {
    let bench = Bench::mode(EmuMode::Inline);
    let regs = &bench.regs;
    assert_eq!(regs.read32(reg::VERSION), spec::version::V1_0);
    let gencap = regs.read64(reg::GENCAP);
    assert_eq!(gencap::max_transfer_shift(gencap), 31);
    assert_eq!(gencap::max_batch_shift(gencap), 10);
    assert_ne!(gencap & gencap::CONFIGURABLE, 0);
    let wqcap = regs.read64(reg::WQCAP);
    assert_eq!(wqcap::total_size(wqcap), 128);
    assert_eq!(wqcap::count(wqcap), 8);
    assert_eq!(wqcap::entry_size(wqcap), 32);
    assert_ne!(wqcap & wqcap::DEDICATED, 0);
    assert_ne!(wqcap & wqcap::SHARED, 0);
    assert_eq!(spec::grpcap::groups(regs.read64(reg::GRPCAP)), 4);
    assert_eq!(regs.read64(reg::ENGCAP) & 0xFF, 4);
    let opcap = regs.read64(reg::OPCAP);
    for op in [
        opcode::NOOP,
        opcode::BATCH,
        opcode::DRAIN,
        opcode::MEMMOVE,
        opcode::MEMFILL,
        opcode::COMPARE,
        opcode::COMPARE_PATTERN,
        opcode::DUALCAST,
        opcode::CRC_GEN,
        opcode::COPY_CRC,
    ] {
        let (qword, bit) = opcode::opcap_position(op);
        assert_eq!(qword, 0);
        assert_ne!(opcap & bit, 0, "opcode {op:#x}");
    }
    assert_eq!(opcap & (1 << opcode::CREATE_DELTA), 0);
    let offsets = regs.read64(reg::OFFSETS);
    assert_eq!(offsets::grpcfg(offsets), 0x300);
    assert_eq!(offsets::wqcfg(offsets), 0x400);
    assert_eq!(offsets::msix_perm(offsets), 0x200);
    // Narrow reads split registers by byte lane.
    assert_eq!(regs.read8(reg::WQCAP), 128);
    assert_eq!(regs.read16(reg::OFFSETS + 2), 4);
    assert_eq!(bench.gensts(), gensts::DISABLED);
    // Configuration space: identity, memory space on, bus mastering off.
    let pci = &bench.pci;
    assert_eq!(pci.read16(0).unwrap(), spec::VENDOR_INTEL);
    assert_eq!(pci.read16(2).unwrap(), spec::device_id::SPR);
    assert_eq!(pci.read32(8).unwrap() >> 8, spec::CLASS_CODE);
    let command = pci.read16(pci_regs::COMMAND).unwrap();
    assert_ne!(command & pci_regs::COMMAND_MEMORY, 0);
    assert_eq!(command & pci_regs::COMMAND_MASTER, 0);
    // A misaligned or out-of-window access reads all-ones instead of panicking.
    assert_eq!(regs.read32(0x2), u32::MAX);
    assert_eq!(regs.read64(spec::BAR0_SIZE), u64::MAX);
}

#[test]
fn configs_out_of_range_are_refused() {
    let memory = Arc::new(unsafe_identity_none());
    for config in [
        DsaEmuConfig {
            wqs: 9,
            ..DsaEmuConfig::default()
        },
        DsaEmuConfig {
            engines: 0,
            ..DsaEmuConfig::default()
        },
        DsaEmuConfig {
            max_batch_shift: 0,
            ..DsaEmuConfig::default()
        },
    ] {
        assert!(EmulatedDsa::new(config, memory.clone()).is_err());
    }
}

fn unsafe_identity_none() -> IdentityRanges {
    // SAFETY: no range: the device can reach nothing.
    unsafe { IdentityRanges::new(&[]) }
}

#[test]
fn enable_sequence_and_command_errors() {
    let bench = Bench::new(DsaEmuConfig {
        max_transfer_shift: 24,
        ..DsaEmuConfig::default()
    });
    let regs = &bench.regs;
    // Bus mastering off: Enable Device refuses.
    assert_eq!(bench.command(cmd::RESET_DEVICE, 0), 0);
    regs.write64(GRPCFG + grpcfg::WQS, 1);
    regs.write64(GRPCFG + grpcfg::ENGINES, 1);
    bench.program_wq(dwq(0, 100), 21, 5);
    bench.program_wq(dwq(1, 100), 21, 5);
    assert_eq!(
        bench.command(cmd::ENABLE_DEVICE, 0),
        cmdsts::BUS_MASTER_DISABLED
    );
    bench.bus_master(true);
    // 200 entries of 128.
    assert_eq!(
        bench.command(cmd::ENABLE_DEVICE, 0),
        cmdsts::WQ_SIZES_EXCEED_TOTAL
    );
    bench.program_wq(dwq(1, 0), 21, 5);
    // A group with a WQ and no engine.
    regs.write64(GRPCFG + 64 + grpcfg::WQS, 1 << 2);
    assert_eq!(bench.command(cmd::ENABLE_DEVICE, 0), cmdsts::GROUP_CONFIG);
    regs.write64(GRPCFG + 64 + grpcfg::WQS, 0);
    // Enable WQ before the device.
    assert_eq!(bench.command(cmd::ENABLE_WQ, 0), cmdsts::DEVICE_NOT_ENABLED);
    assert_eq!(bench.command(cmd::ENABLE_DEVICE, 0), 0);
    assert_eq!(bench.gensts(), gensts::ENABLED);
    assert_eq!(
        bench.command(cmd::ENABLE_DEVICE, 0),
        cmdsts::DEVICE_NOT_DISABLED
    );
    // GRPCFG is read-only while enabled; WQCFG of a disabled WQ stays writable (but its size
    // does not).
    regs.write64(GRPCFG + grpcfg::WQS, 3);
    assert_eq!(regs.read64(GRPCFG + grpcfg::WQS), 1);
    assert_eq!(bench.command(cmd::ENABLE_WQ, 9), cmdsts::INVALID_WQ);
    assert_eq!(bench.command(cmd::ENABLE_WQ, 1), cmdsts::WQ_SIZE_ZERO);
    let base = WQCFG;
    regs.write32(base + wqcfg::MODE, wqcfg::mode(true, 0));
    assert_eq!(bench.command(cmd::ENABLE_WQ, 0), cmdsts::WQ_PRIORITY_ZERO);
    regs.write32(base + wqcfg::MODE, wqcfg::mode(false, 1));
    assert_eq!(
        bench.command(cmd::ENABLE_WQ, 0),
        cmdsts::SHARED_WITHOUT_PASID
    );
    regs.write32(base + wqcfg::MODE, wqcfg::mode(true, 1));
    regs.write32(base + wqcfg::LIMITS, wqcfg::limits(21, 11));
    assert_eq!(bench.command(cmd::ENABLE_WQ, 0), cmdsts::WQ_BAD_MAX_BATCH);
    regs.write32(base + wqcfg::LIMITS, wqcfg::limits(25, 5));
    assert_eq!(
        bench.command(cmd::ENABLE_WQ, 0),
        cmdsts::WQ_BAD_MAX_TRANSFER
    );
    regs.write32(base + wqcfg::LIMITS, wqcfg::limits(21, 5));
    assert_eq!(bench.command(cmd::ENABLE_WQ, 0), 0);
    assert_eq!(
        wqcfg::state(regs.read32(base + wqcfg::STATUS)),
        wqcfg::STATE_ENABLED
    );
    assert_eq!(bench.command(cmd::ENABLE_WQ, 0), cmdsts::WQ_NOT_DISABLED);
    // An enabled WQ's entry is read-only.
    regs.write32(base + wqcfg::MODE, 0);
    assert_eq!(regs.read32(base + wqcfg::MODE), wqcfg::mode(true, 1));
    // A second command before CMDSTATUS was read: dropped, SWERROR 0x52.
    bench.clear_swerror();
    regs.write32(reg::CMD, cmd::encode(cmd::DRAIN_ALL, 0));
    regs.write32(reg::CMD, cmd::encode(cmd::ABORT_ALL, 0));
    let error = bench.swerror();
    assert_ne!(error & swerr::VALID, 0);
    assert_eq!(swerr::code(error), swerr::COMMAND_WHILE_ACTIVE);
    assert_ne!(regs.read32(reg::CMDSTATUS) & cmdsts::ACTIVE, 0);
    assert_eq!(regs.read32(reg::CMDSTATUS), 0);
    // SWERROR's valid bit is write-1-to-clear.
    regs.write64(reg::SWERROR, 0);
    assert_ne!(bench.swerror() & swerr::VALID, 0);
    bench.clear_swerror();
    assert_eq!(bench.swerror() & swerr::VALID, 0);
    assert_eq!(bench.command(0x1F, 0), cmdsts::INVALID_COMMAND);
    // Reset Device: disabled, every table zero.
    assert_eq!(bench.command(cmd::RESET_DEVICE, 0), 0);
    assert_eq!(bench.gensts(), gensts::DISABLED);
    assert_eq!(regs.read64(GRPCFG + grpcfg::WQS), 0);
    assert_eq!(regs.read64(GRPCFG + grpcfg::ENGINES), 0);
    assert_eq!(regs.read32(base + wqcfg::SIZE), 0);
    assert_eq!(regs.read32(base + wqcfg::STATUS), 0);
}

#[test]
fn operations_complete_with_records() {
    for mode in MODES {
        let mut bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 32)], 1);
        let src = pattern(4096, 7);
        bench.buffer.write(DATA, &src);
        // Memory move.
        bench.submit(0, &memmove(&bench, 0, DATA, DATA + 0x2000, 4096));
        let ok = Record {
            status: status::SUCCESS,
            result: 0,
            bytes_completed: 0,
            fault_address: 0,
            op_specific: 0,
        };
        assert_eq!(bench.record(0), ok, "{mode:?}");
        assert_eq!(bench.buffer.read(DATA + 0x2000, 4096), src);
        // Fill, 8 and 16 bytes.
        let mut fill = desc(&bench, opcode::MEMFILL, 1);
        (fill.src, fill.dst, fill.size) = (0x0807_0605_0403_0201, bench.at(DATA + 0x4000), 21);
        bench.submit(0, &fill);
        assert_eq!(bench.record(1).status, status::SUCCESS);
        let out = bench.buffer.read(DATA + 0x4000, 22);
        assert_eq!(&out[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&out[16..21], &[1, 2, 3, 4, 5]);
        assert_eq!(out[21], 0);
        let mut fill16 = desc(&bench, opcode::MEMFILL, 2);
        fill16.set_flags(flags::FILL_16B);
        (fill16.src, fill16.op_specific0) = (0x1111_1111_1111_1111, 0x2222_2222_2222_2222);
        (fill16.dst, fill16.size) = (bench.at(DATA + 0x5000), 40);
        bench.submit(0, &fill16);
        assert_eq!(bench.record(2).status, status::SUCCESS);
        let out = bench.buffer.read(DATA + 0x5000, 40);
        assert_eq!(
            (out[0], out[8], out[16], out[24], out[32]),
            (0x11, 0x22, 0x11, 0x22, 0x11)
        );
        // Compare: equal, then different at byte 1000.
        let mut compare = desc(&bench, opcode::COMPARE, 3);
        (compare.src, compare.dst, compare.size) = (bench.at(DATA), bench.at(DATA + 0x2000), 4096);
        bench.submit(0, &compare);
        assert_eq!(bench.record(3), ok);
        bench.buffer.write(DATA + 0x2000 + 1000, &[!src[1000]]);
        compare.completion = bench.at(record_at(4));
        bench.submit(0, &compare);
        let r = bench.record(4);
        assert_eq!(
            (r.status, r.result, r.bytes_completed),
            (status::SUCCESS, 1, 1000)
        );
        // With Check Result a difference is a false predicate.
        compare.completion = bench.at(record_at(5));
        compare.set_flags(flags::CHECK_RESULT);
        bench.submit(0, &compare);
        let r = bench.record(5);
        assert_eq!((r.status, r.result), (status::SUCCESS_FALSE_PREDICATE, 1));
        // Compare pattern against a fill.
        let mut cp = desc(&bench, opcode::COMPARE_PATTERN, 6);
        (cp.src, cp.dst, cp.size) = (bench.at(DATA + 0x4000), 0x0807_0605_0403_0201, 16);
        bench.submit(0, &cp);
        let r = bench.record(6);
        assert_eq!((r.status, r.result), (status::SUCCESS, 0));
        // CRC generation, with a seed.
        let mut crc = desc(&bench, opcode::CRC_GEN, 7);
        (crc.src, crc.size, crc.op_specific0) = (bench.at(DATA), 4096, 0xFFFF_FFFF);
        bench.submit(0, &crc);
        let r = bench.record(7);
        assert_eq!(r.status, status::SUCCESS);
        assert_eq!(r.op_specific as u32, crc32c(0xFFFF_FFFF, &src));
        // Copy with CRC.
        let mut copy_crc = desc(&bench, opcode::COPY_CRC, 8);
        (copy_crc.src, copy_crc.dst, copy_crc.size) =
            (bench.at(DATA), bench.at(DATA + 0x6000), 1000);
        bench.submit(0, &copy_crc);
        let r = bench.record(8);
        assert_eq!(r.status, status::SUCCESS);
        assert_eq!(r.op_specific as u32, crc32c(0, &src[..1000]));
        assert_eq!(bench.buffer.read(DATA + 0x6000, 1000), &src[..1000]);
        // Dualcast, then destinations that disagree in bits 11:0.
        let mut dual = desc(&bench, opcode::DUALCAST, 9);
        (dual.src, dual.dst, dual.size) = (bench.at(DATA), bench.at(DATA + 0x8010), 500);
        dual.op_specific0 = bench.at(DATA + 0x9010);
        bench.submit(0, &dual);
        assert_eq!(bench.record(9), ok);
        assert_eq!(bench.buffer.read(DATA + 0x8010, 500), &src[..500]);
        assert_eq!(bench.buffer.read(DATA + 0x9010, 500), &src[..500]);
        dual.completion = bench.at(record_at(10));
        dual.op_specific0 = bench.at(DATA + 0xA020);
        bench.submit(0, &dual);
        assert_eq!(bench.record(10).status, status::DUALCAST_ALIGN);
        // Without RCR a success writes no record (and a no-op still completes).
        let mut quiet = memmove(&bench, 11, DATA, DATA + 0xB000, 64);
        quiet.clear_flags(flags::RCR);
        bench.submit(0, &quiet);
        let mut noop = desc(&bench, opcode::NOOP, 12);
        noop.size = 0;
        bench.submit(0, &noop);
        assert_eq!(bench.record(12).status, status::SUCCESS);
        assert_eq!(bench.status(11), 0);
        let stats = bench.dsa.stats(0);
        assert_eq!(stats.descriptors, 13);
        assert_eq!(stats.records_written, 12);
    }
}

#[test]
fn descriptor_errors_go_to_the_record_or_swerror() {
    for mode in MODES {
        let bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 16)], 1);
        // Max transfer 2^21.
        let mut bad = desc(&bench, 0x07, 0);
        bad.size = 64;
        bench.submit(0, &bad);
        assert_eq!(bench.record(0).status, status::INVALID_OPCODE, "{mode:?}");
        bench.submit(0, &memmove(&bench, 1, DATA, DATA + 0x1000, (1 << 21) + 1));
        assert_eq!(bench.record(1).status, status::INVALID_SIZE);
        bench.submit(0, &memmove(&bench, 2, DATA, DATA + 0x1000, 0));
        assert_eq!(bench.record(2).status, status::INVALID_SIZE);
        // Fence outside a batch.
        let mut fenced = memmove(&bench, 3, DATA, DATA + 0x1000, 8);
        fenced.set_flags(flags::FENCE);
        bench.submit(0, &fenced);
        let r = bench.record(3);
        assert_eq!((r.status, r.op_specific), (status::INVALID_FLAGS, 1));
        // A compare must ask for a record.
        let mut compare = desc(&bench, opcode::COMPARE, 4);
        compare.clear_flags(flags::RCR);
        (compare.src, compare.dst, compare.size) = (bench.at(DATA), bench.at(DATA), 8);
        bench.submit(0, &compare);
        assert_eq!(bench.record(4).status, status::INVALID_FLAGS);
        // Overlapping copy.
        bench.submit(0, &memmove(&bench, 5, DATA, DATA + 8, 64));
        assert_eq!(bench.record(5).status, status::OVERLAP);
        // A misaligned record: SWERROR 0x1b, nothing written.
        bench.clear_swerror();
        let mut misaligned = memmove(&bench, 6, DATA, DATA + 0x1000, 8);
        misaligned.completion += 8;
        bench.submit(0, &misaligned);
        let error = wait_for("SWERROR", || {
            let e = bench.swerror();
            (e & swerr::VALID != 0).then_some(e)
        });
        assert_eq!(swerr::code(error), status::MISALIGNED_RECORD.into());
        assert_eq!(swerr::opcode(error), opcode::MEMMOVE);
        assert_eq!(swerr::wq(error), 0);
        assert_eq!(bench.regs.read64(reg::SWERROR + 16), misaligned.completion);
        assert!(bench.buffer.read(record_at(6), 32).iter().all(|&b| b == 0));
        // No CRAV: the error goes to SWERROR.
        bench.clear_swerror();
        let mut blind = Descriptor::new(opcode::MEMMOVE, 0);
        (blind.src, blind.dst, blind.size) = (bench.at(DATA), bench.at(DATA + 0x1000), 0);
        bench.submit(0, &blind);
        let error = wait_for("SWERROR", || {
            let e = bench.swerror();
            (e & swerr::VALID != 0).then_some(e)
        });
        assert_eq!(swerr::code(error), status::INVALID_SIZE.into());
        // An injected failure.
        bench
            .dsa
            .inject(DsaFault::FailDescriptor {
                wq: 0,
                nth: 2,
                status: 0x20,
            })
            .unwrap();
        bench.submit(0, &memmove(&bench, 7, DATA, DATA + 0x1000, 8));
        bench.submit(0, &memmove(&bench, 8, DATA, DATA + 0x1000, 8));
        assert_eq!(bench.record(7).status, status::SUCCESS);
        assert_eq!(bench.record(8).status, 0x20);
    }
}

#[test]
fn page_faults_complete_partially() {
    for mode in MODES {
        let mut bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 16)], 1);
        let src = pattern(4096, 3);
        bench.buffer.write(DATA, &src);
        bench
            .dsa
            .inject(DsaFault::PageFault {
                wq: 0,
                nth: 1,
                at_byte: 100,
                write: true,
            })
            .unwrap();
        let copy = memmove(&bench, 0, DATA, DATA + 0x2000, 4096);
        bench.submit(0, &copy);
        let r = bench.record(0);
        assert_eq!(
            r.status,
            status::PAGE_FAULT | status::FAULT_ON_WRITE,
            "{mode:?}"
        );
        assert_eq!(r.bytes_completed, 100);
        assert_eq!(r.fault_address, copy.dst + 100);
        let out = bench.buffer.read(DATA + 0x2000, 4096);
        assert_eq!(&out[..100], &src[..100]);
        assert!(out[100..].iter().all(|&b| b == 0));
        // A source running off the mapping: a read fault at the first unmapped byte.
        let end = BUFFER - 96;
        bench.submit(0, &memmove(&bench, 1, end, DATA + 0x4000, 200));
        let r = bench.record(1);
        assert_eq!(r.status, status::PAGE_FAULT);
        assert_eq!(r.bytes_completed, 96);
        assert_eq!(r.fault_address, bench.at(BUFFER));
    }
}

#[test]
fn a_full_dwq_drops_and_a_shared_wq_answers_retry() {
    for mode in MODES {
        let bench = Bench::mode(mode);
        let shared = WqSetup {
            wq: 1,
            size: 4,
            dedicated: false,
            threshold: 2,
        };
        bench.configure(&[dwq(0, 4), shared], 1);
        bench.dsa.inject(DsaFault::Stall { wq: 0 }).unwrap();
        bench.clear_swerror();
        for i in 0..5 {
            bench.submit(0, &memmove(&bench, i, DATA, DATA + 0x1000, 64));
        }
        let error = bench.swerror();
        assert_eq!(swerr::code(error), swerr::DWQ_OVERFLOW, "{mode:?}");
        assert_eq!(swerr::wq(error), 0);
        assert_eq!(
            bench.regs.read32(WQCFG + wqcfg::STATUS) & 0xFFFF,
            4,
            "occupancy"
        );
        bench.dsa.inject(DsaFault::Unstall { wq: 0 }).unwrap();
        for i in 0..4 {
            assert_eq!(bench.record(i).status, status::SUCCESS);
        }
        assert!(stays(Duration::from_millis(20), || bench.status(4) == 0));
        assert_eq!(bench.dsa.stats(0).dropped_on_overflow, 1);
        // ENQCMD to a dedicated WQ, MOVDIR64B to a shared one.
        let unlimited0 = portal::offset(0, portal::Kind::Unlimited);
        let d = memmove(&bench, 5, DATA, DATA + 0x1000, 64);
        assert_eq!(
            bench.portals.enqueue_descriptor(unlimited0, &d),
            Enqueue::Retry
        );
        bench.submit(1, &d);
        assert!(stays(Duration::from_millis(20), || bench.status(5) == 0));
        // The shared WQ: threshold 2 on the limited portal, size 4 on the unlimited one.
        bench.dsa.inject(DsaFault::Stall { wq: 1 }).unwrap();
        let unlimited = portal::offset(1, portal::Kind::Unlimited);
        let limited = portal::offset(1, portal::Kind::Limited) + 0x40;
        let answers: Vec<Enqueue> = (0..6)
            .map(|i| {
                let d = memmove(&bench, 10 + i, DATA, DATA + 0x1000, 64);
                let at = if i < 3 { limited } else { unlimited };
                bench.portals.enqueue_descriptor(at, &d)
            })
            .collect();
        use Enqueue::{Accepted, Retry};
        assert_eq!(
            answers,
            [Accepted, Accepted, Retry, Accepted, Accepted, Retry]
        );
        bench.dsa.inject(DsaFault::Unstall { wq: 1 }).unwrap();
        for i in [10, 11, 13, 14] {
            assert_eq!(bench.record(i).status, status::SUCCESS);
        }
        let d = memmove(&bench, 20, DATA, DATA + 0x1000, 64);
        assert_eq!(bench.portals.enqueue_descriptor(unlimited, &d), Accepted);
        assert_eq!(bench.record(20).status, status::SUCCESS);
        assert_eq!(bench.dsa.stats(1).retries_answered, 2);
    }
}

#[test]
fn a_disabled_wq_ignores_portal_writes() {
    let bench = Bench::mode(EmuMode::Inline);
    bench.configure(&[dwq(0, 4)], 1);
    let d = memmove(&bench, 0, DATA, DATA + 0x1000, 64);
    bench.submit(1, &d);
    assert_eq!(
        bench
            .portals
            .enqueue_descriptor(portal::offset(1, portal::Kind::Unlimited), &d),
        Enqueue::Retry
    );
    assert_eq!(bench.status(0), 0);
    assert_eq!(bench.dsa.stats(1), Default::default());
}

/// Writes `members` as a list at LISTS and returns the batch descriptor (record `record`).
fn batch(bench: &mut Bench, record: usize, members: &[Descriptor]) -> Descriptor {
    for (i, member) in members.iter().enumerate() {
        bench.buffer.write(LISTS + 64 * i, &member.to_bytes());
    }
    let mut b = desc(bench, opcode::BATCH, record);
    (b.src, b.size) = (bench.at(LISTS), members.len() as u32);
    b
}

#[test]
fn batches_write_member_records_then_the_batch_record() {
    for mode in MODES {
        for count in [2usize, 1024] {
            let mut bench = Bench::mode(mode);
            bench.configure(&[dwq(0, 16)], 1);
            bench.dsa.set_tracing(true);
            let src = pattern(64, 9);
            bench.buffer.write(DATA, &src);
            let members: Vec<Descriptor> = (0..count)
                .map(|i| memmove(&bench, i, DATA, DATA + 0x1000 + 64 * i, 64))
                .collect();
            let b = batch(&mut bench, 1100, &members);
            bench.submit(0, &b);
            let r = bench.record(1100);
            assert_eq!(
                (r.status, r.bytes_completed),
                (status::SUCCESS, count as u32)
            );
            for i in 0..count {
                assert_eq!(bench.status(i), status::SUCCESS, "{mode:?} member {i}");
                assert_eq!(bench.buffer.read(DATA + 0x1000 + 64 * i, 64), src);
            }
            let trace = bench.dsa.take_trace();
            assert_eq!(trace.len(), count + 1);
            let last = trace.iter().max_by_key(|e| e.completed).unwrap();
            assert_eq!((last.opcode, last.member), (opcode::BATCH, None));
            assert_eq!(bench.dsa.stats(0).batches, 1);
        }
        // Count and list checks.
        let mut bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 16)], 1);
        let one = [memmove(&bench, 0, DATA, DATA + 0x1000, 8)];
        let b = batch(&mut bench, 1, &one);
        bench.submit(0, &b);
        assert_eq!(bench.record(1).status, status::INVALID_COUNT);
        let mut b = batch(&mut bench, 2, &[one[0], one[0]]);
        b.src += 32;
        bench.submit(0, &b);
        assert_eq!(bench.record(2).status, status::MISALIGNED_LIST);
        let mut b = batch(&mut bench, 3, &[one[0], one[0]]);
        b.size = 1025;
        bench.submit(0, &b);
        assert_eq!(bench.record(3).status, status::INVALID_COUNT);
    }
}

#[test]
fn a_failed_member_fails_the_batch_and_a_fence_abandons_the_rest() {
    for mode in MODES {
        let mut bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 16)], 2);
        let good = memmove(&bench, 0, DATA, DATA + 0x1000, 64);
        let mut bad = desc(&bench, opcode::MEMMOVE, 1);
        bad.size = 0;
        let mut fenced = memmove(&bench, 2, DATA, DATA + 0x2000, 64);
        fenced.set_flags(flags::FENCE);
        let after = memmove(&bench, 3, DATA, DATA + 0x3000, 64);
        let b = batch(&mut bench, 4, &[good, bad, fenced, after]);
        bench.submit(0, &b);
        let r = bench.record(4);
        assert_eq!(
            (r.status, r.bytes_completed),
            (status::BATCH_FAILED, 2),
            "{mode:?}"
        );
        assert_eq!(bench.status(0), status::SUCCESS);
        assert_eq!(bench.status(1), status::INVALID_SIZE);
        assert_eq!((bench.status(2), bench.status(3)), (0, 0));
        // Without a failure the fenced member runs after the earlier ones.
        let b = batch(&mut bench, 8, &[good, after, fenced]);
        let mut b2 = b;
        b2.completion = bench.at(record_at(9));
        bench.submit(0, &b2);
        assert_eq!(bench.record(9).status, status::SUCCESS);
        assert_eq!(bench.status(2), status::SUCCESS);
    }
}

/// Completion order of the trace's events, as their submission (or member) keys.
fn completion_order(trace: &[dmaplane::emu::DsaTraceEvent]) -> Vec<u64> {
    let mut events = trace.to_vec();
    events.sort_by_key(|e| e.completed);
    events
        .iter()
        .map(|e| e.member.map_or(e.submitted, u64::from))
        .collect()
}

#[test]
fn several_engines_complete_out_of_order_and_one_in_order() {
    for mode in MODES {
        for engines in [1, 4] {
            let mut bench = Bench::mode(mode);
            bench.configure(&[dwq(0, 16)], engines);
            bench.dsa.set_tracing(true);
            bench.dsa.inject(DsaFault::Stall { wq: 0 }).unwrap();
            for i in 0..8 {
                bench.submit(0, &memmove(&bench, i, DATA, DATA + 0x1000 + 64 * i, 64));
            }
            bench.dsa.inject(DsaFault::Unstall { wq: 0 }).unwrap();
            for i in 0..8 {
                assert_eq!(bench.record(i).status, status::SUCCESS);
            }
            let order = completion_order(&bench.dsa.take_trace());
            let mut sorted = order.clone();
            sorted.sort();
            if engines == 1 {
                assert_eq!(order, sorted, "{mode:?}: one engine completes in order");
            } else {
                assert_ne!(order, sorted, "{mode:?}: several engines reorder");
            }
            // Batch members likewise.
            let members: Vec<Descriptor> = (0..6)
                .map(|i| memmove(&bench, 20 + i, DATA, DATA + 0x4000 + 64 * i, 64))
                .collect();
            let b = batch(&mut bench, 30, &members);
            bench.submit(0, &b);
            assert_eq!(bench.record(30).status, status::SUCCESS);
            let trace = bench.dsa.take_trace();
            let members: Vec<_> = trace
                .iter()
                .filter(|e| e.member.is_some())
                .copied()
                .collect();
            let order = completion_order(&members);
            let in_order = order.windows(2).all(|w| w[0] < w[1]);
            assert_eq!(
                in_order,
                engines == 1,
                "{mode:?} batch with {engines} engines"
            );
        }
    }
}

#[test]
fn disable_wq_drains_first_and_abort_wq_drops() {
    for mode in MODES {
        let bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 8), dwq(1, 8)], 1);
        bench.dsa.inject(DsaFault::Stall { wq: 0 }).unwrap();
        for i in 0..3 {
            bench.submit(0, &memmove(&bench, i, DATA, DATA + 0x1000, 64));
        }
        // Disable WQ waits for the stalled WQ's descriptors.
        bench
            .regs
            .write32(reg::CMD, cmd::encode(cmd::DISABLE_WQ, cmd::wq_operand(0)));
        assert!(stays(Duration::from_millis(20), || {
            bench.regs.read32(reg::CMDSTATUS) & cmdsts::ACTIVE != 0
        }));
        bench.dsa.inject(DsaFault::Unstall { wq: 0 }).unwrap();
        let done = wait_for("Disable WQ", || {
            let v = bench.regs.read32(reg::CMDSTATUS);
            (v & cmdsts::ACTIVE == 0).then_some(v)
        });
        assert_eq!(done, 0, "{mode:?}");
        for i in 0..3 {
            assert_eq!(bench.status(i), status::SUCCESS);
        }
        assert_eq!(
            wqcfg::state(bench.regs.read32(WQCFG + wqcfg::STATUS)),
            wqcfg::STATE_DISABLED
        );
        bench.submit(0, &memmove(&bench, 3, DATA, DATA + 0x1000, 64));
        assert!(stays(Duration::from_millis(20), || bench.status(3) == 0));
        // Abort WQ drops what WQ 1 holds, without records.
        bench.dsa.inject(DsaFault::Stall { wq: 1 }).unwrap();
        for i in 4..7 {
            bench.submit(1, &memmove(&bench, i, DATA, DATA + 0x1000, 64));
        }
        assert_eq!(bench.command(cmd::ABORT_WQ, cmd::wq_operand(1)), 0);
        assert_eq!(bench.regs.read32(WQCFG + 32 + wqcfg::STATUS) & 0xFFFF, 0);
        bench.dsa.inject(DsaFault::Unstall { wq: 1 }).unwrap();
        assert!(stays(Duration::from_millis(20), || {
            (4..7).all(|i| bench.status(i) == 0)
        }));
        // The WQ still works.
        bench.submit(1, &memmove(&bench, 7, DATA, DATA + 0x1000, 64));
        assert_eq!(bench.record(7).status, status::SUCCESS);
    }
}

#[test]
fn clearing_bus_mastering_while_enabled_halts_until_reset() {
    for mode in MODES {
        let bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 8)], 1);
        bench.clear_swerror();
        bench.bus_master(false);
        assert_eq!(bench.gensts(), gensts::HALTED, "{mode:?}");
        assert_eq!(gensts::reset_type(bench.regs.read32(reg::GENSTS)), 0);
        assert_eq!(swerr::code(bench.swerror()), swerr::HALT_CONFIG_CHANGE);
        bench.submit(0, &memmove(&bench, 0, DATA, DATA + 0x1000, 64));
        assert!(stays(Duration::from_millis(20), || bench.status(0) == 0));
        assert_eq!(bench.command(cmd::ENABLE_WQ, 0), cmdsts::HALTED);
        assert_eq!(bench.command(cmd::RESET_DEVICE, 0), 0);
        assert_eq!(bench.gensts(), gensts::DISABLED);
        assert_eq!(bench.regs.read64(GRPCFG + grpcfg::WQS), 0);
        bench.configure(&[dwq(0, 8)], 1);
        bench.submit(0, &memmove(&bench, 1, DATA, DATA + 0x1000, 64));
        assert_eq!(bench.record(1).status, status::SUCCESS);
    }
}

#[test]
fn surprise_removal_reads_all_ones_and_writes_no_record() {
    for mode in MODES {
        let bench = Bench::mode(mode);
        bench.configure(&[dwq(0, 8)], 1);
        bench.dsa.inject(DsaFault::Stall { wq: 0 }).unwrap();
        bench.submit(0, &memmove(&bench, 0, DATA, DATA + 0x1000, 64));
        bench.dsa.inject(DsaFault::SurpriseRemoval).unwrap();
        assert!(bench.dsa.is_removed());
        assert_eq!(bench.regs.read32(reg::GENSTS), u32::MAX, "{mode:?}");
        assert_eq!(bench.regs.read64(reg::GENCAP), u64::MAX);
        assert_eq!(bench.pci.read16(0).unwrap(), u16::MAX);
        bench.dsa.inject(DsaFault::Unstall { wq: 0 }).unwrap();
        bench.submit(0, &memmove(&bench, 1, DATA, DATA + 0x1000, 64));
        let d = memmove(&bench, 2, DATA, DATA + 0x1000, 64);
        assert_eq!(
            bench
                .portals
                .enqueue_descriptor(portal::offset(0, portal::Kind::Unlimited), &d),
            Enqueue::Retry
        );
        assert!(stays(Duration::from_millis(20), || {
            (0..3).all(|i| bench.status(i) == 0)
        }));
    }
}

#[test]
fn latency_delays_threaded_completions() {
    let bench = Bench::mode(EmuMode::Threaded);
    bench.configure(&[dwq(0, 8)], 1);
    let latency = Duration::from_millis(5);
    bench
        .dsa
        .inject(DsaFault::Latency {
            wq: 0,
            per_descriptor: latency,
        })
        .unwrap();
    let start = Instant::now();
    bench.submit(0, &memmove(&bench, 0, DATA, DATA + 0x1000, 64));
    bench.submit(0, &memmove(&bench, 1, DATA, DATA + 0x1000, 64));
    assert_eq!(bench.record(1).status, status::SUCCESS);
    assert!(start.elapsed() >= 2 * latency);
}
