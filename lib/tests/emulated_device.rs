//! The emulated IOAT device driven through its registers only, as a driver would drive the
//! silicon: descriptors are written into test memory, the device is told about them through
//! CHAINADDR and DMACOUNT, and results are read back from the completion word, CHANSTS,
//! CHANERR and the data buffers. Each behavioural test runs in inline and threaded mode.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use dmaplane::emu::{
    device_thread_running, DeviceMemory, EmuConfig, EmuError, EmuMode, EmulatedDevice, Fault,
    HostBuffer, IdentityRanges, ScrambledPages, PAGE_SIZE,
};
use dmaplane::ioat::spec as ioat_spec;
use dmaplane::ioat::spec::{
    cbver, chan, chancmd, chanctrl, chanerr, channel_base, chansts, config, ctl, device, dmacap,
    op, Descriptor, NULL_DESCRIPTOR_SIZE,
};
use dmaplane::mmio::RegisterWindow;
use dmaplane::pci::ConfigSpace;

/// Threaded tests share the process's device thread; the test that watches it stop takes
/// this exclusively.
static ENGINE: RwLock<()> = RwLock::new(());

const MODES: [EmuMode; 2] = [EmuMode::Inline, EmuMode::Threaded];

/// Ring slots per channel; channel `n`'s ring starts at `n * RING_BYTES`.
const SLOTS: usize = 64;
const RING_BYTES: usize = SLOTS * 64;
/// Completion words, one 64-byte line per channel.
const COMPLETIONS: usize = 4 * RING_BYTES;
/// Data area.
const DATA: usize = COMPLETIONS + 4096;
const BUFFER: usize = 2 << 20;

fn config(mode: EmuMode) -> EmuConfig {
    EmuConfig {
        mode,
        ..EmuConfig::default()
    }
}

/// Waits, boundedly, for a condition another thread (the engine) makes true.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let backoff = Backoff::new();
    while !done() {
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

fn null() -> Descriptor {
    Descriptor {
        size: NULL_DESCRIPTOR_SIZE,
        control: ctl::with_op(op::COPY, ctl::NULL),
        ..Descriptor::default()
    }
}

fn copy(src: u64, dest: u64, size: u32) -> Descriptor {
    Descriptor {
        size,
        control: ctl::with_op(op::COPY, 0),
        src_or_pattern: src,
        dest,
        ..Descriptor::default()
    }
}

fn fill(pattern: u64, dest: u64, size: u32) -> Descriptor {
    Descriptor {
        size,
        control: ctl::with_op(op::FILL, 0),
        src_or_pattern: pattern,
        dest,
        ..Descriptor::default()
    }
}

fn with(mut descriptor: Descriptor, flags: u32) -> Descriptor {
    descriptor.control |= flags;
    descriptor
}

/// A device, its windows and the memory it sees, with a driver's worth of helpers.
struct Bench {
    device: Arc<EmulatedDevice>,
    regs: Arc<dyn RegisterWindow>,
    pci: Arc<dyn ConfigSpace>,
    _engine: std::sync::RwLockReadGuard<'static, ()>,
    /// Declared last: dropped after every handle on the device.
    mem: HostBuffer,
    /// Host address -> IOVA for this bench's mapping.
    iova_of: Box<dyn Fn(u64) -> u64>,
}

impl Bench {
    /// A device over an identity-mapped buffer, bus mastering on, every channel reset and
    /// given CHANCTRL (abort + completion on error) and a completion address.
    fn new(config: EmuConfig) -> Bench {
        let mem = HostBuffer::new(BUFFER);
        // SAFETY: the bench drops the device before the buffer, and the tests touch data only
        // before ringing or after the completion that covers it.
        let map = unsafe { IdentityRanges::new(&[(mem.addr(), mem.len())]) };
        Bench::with_memory(config, mem, Arc::new(map), Box::new(|host| host))
    }

    fn with_memory(
        config: EmuConfig,
        mem: HostBuffer,
        map: Arc<dyn DeviceMemory>,
        iova_of: Box<dyn Fn(u64) -> u64>,
    ) -> Bench {
        let engine = ENGINE.read().unwrap_or_else(PoisonError::into_inner);
        let device = EmulatedDevice::new(config, map).unwrap();
        let (regs, pci) = (device.registers(), device.config_space());
        let command = pci.read16(config::COMMAND).unwrap();
        pci.write16(config::COMMAND, command | config::COMMAND_BUS_MASTER)
            .unwrap();
        let bench = Bench {
            device,
            regs,
            pci,
            _engine: engine,
            mem,
            iova_of,
        };
        for ch in 0..config.channels {
            assert!(bench.reset(ch), "RESET never read back set");
            bench.regs.write16(
                channel_base(ch) + chan::CHANCTRL,
                chanctrl::ANY_ERR_ABORT_EN | chanctrl::ERR_COMPLETION_EN,
            );
            bench.write64(ch, chan::CHANCMP, bench.completion_iova(ch));
        }
        bench
    }

    fn split(&self) -> bool {
        cbver::needs_split_64(self.device.config().cbver)
    }

    fn write64(&self, ch: usize, reg: usize, value: u64) {
        let at = channel_base(ch) + reg;
        if self.split() {
            self.regs.write32(at, value as u32);
            self.regs.write32(at + 4, (value >> 32) as u32);
        } else {
            self.regs.write64(at, value);
        }
    }

    fn read64(&self, ch: usize, reg: usize) -> u64 {
        let at = channel_base(ch) + reg;
        if self.split() {
            u64::from(self.regs.read32(at)) | u64::from(self.regs.read32(at + 4)) << 32
        } else {
            self.regs.read64(at)
        }
    }

    fn iova(&self, offset: usize) -> u64 {
        (self.iova_of)(self.mem.addr() + offset as u64)
    }

    fn slot_offset(ch: usize, slot: usize) -> usize {
        ch * RING_BYTES + (slot % SLOTS) * 64
    }

    fn slot(&self, ch: usize, slot: usize) -> u64 {
        self.iova(Self::slot_offset(ch, slot))
    }

    fn completion_iova(&self, ch: usize) -> u64 {
        self.iova(COMPLETIONS + 64 * ch)
    }

    fn completion(&self, ch: usize) -> u64 {
        self.mem.load_u64(COMPLETIONS + 64 * ch)
    }

    /// Writes `descriptors` into consecutive slots from `first`, each linked to the next
    /// slot of the circular ring.
    fn put(&mut self, ch: usize, first: usize, descriptors: &[Descriptor]) {
        for (i, descriptor) in descriptors.iter().enumerate() {
            let slot = first + i;
            let linked = Descriptor {
                next: self.slot(ch, slot + 1),
                ..*descriptor
            };
            self.mem
                .write_descriptor(Self::slot_offset(ch, slot), &linked);
        }
    }

    fn status(&self, ch: usize) -> u64 {
        self.read64(ch, chan::CHANSTS)
    }

    fn state(&self, ch: usize) -> u64 {
        chansts::state(self.status(ch))
    }

    fn chanerr(&self, ch: usize) -> u32 {
        self.regs.read32(channel_base(ch) + chan::CHANERR)
    }

    /// CHANCMD = RESET, then polls until the bit clears; returns whether it was seen set.
    fn reset(&self, ch: usize) -> bool {
        let at = channel_base(ch) + chan::CHANCMD;
        self.regs.write8(at, chancmd::RESET);
        let mut seen = false;
        wait_until("RESET to clear", || {
            let pending = self.regs.read8(at) & chancmd::RESET != 0;
            seen |= pending;
            !pending
        });
        seen
    }

    fn arm(&self, ch: usize, slot: usize) {
        self.write64(ch, chan::CHAINADDR, self.slot(ch, slot));
    }

    fn ring(&self, ch: usize, count: u16) {
        self.regs.write16(channel_base(ch) + chan::DMACOUNT, count);
    }

    fn command(&self, ch: usize, command: u8) {
        self.regs.write8(channel_base(ch) + chan::CHANCMD, command);
    }

    fn wait_state(&self, ch: usize, state: u64) {
        wait_until(&format!("channel {ch} to reach state {state}"), || {
            self.state(ch) == state
        });
    }

    fn wait_completion(&self, ch: usize, value: u64) {
        wait_until(&format!("completion word {value:#x}"), || {
            self.completion(ch) == value
        });
    }

    /// The recovery drivers do after a halt: CHANERR (and on < 3.3 CHANERR_INT) written
    /// back, RESET, CHAINADDR again.
    fn recover(&self, ch: usize, restart_slot: usize) {
        let at = channel_base(ch) + chan::CHANERR;
        self.regs.write32(at, self.regs.read32(at));
        if self.split() {
            let int = self.pci.read32(config::CHANERR_INT).unwrap();
            self.pci.write32(config::CHANERR_INT, int).unwrap();
        }
        assert!(self.reset(ch));
        self.arm(ch, restart_slot);
        self.wait_state(ch, chansts::ARMED);
    }

    fn data(&self, offset: usize) -> u64 {
        self.iova(DATA + offset)
    }

    fn pattern(&mut self, offset: usize, len: usize, seed: u8) -> Vec<u8> {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        self.mem.write(DATA + offset, &bytes);
        bytes
    }
}

#[test]
fn device_registers_identify_the_part() {
    let _engine = ENGINE.read().unwrap_or_else(PoisonError::into_inner);
    let buffer = HostBuffer::new(PAGE_SIZE);
    // SAFETY: the buffer outlives every device below and no descriptor is ever run.
    let map: Arc<dyn DeviceMemory> =
        Arc::new(unsafe { IdentityRanges::new(&[(buffer.addr(), buffer.len())]) });
    for (channels, version, xfercap, with_fill) in [
        (1, cbver::V3_2, 20, true),
        (4, cbver::V3_4, 12, false),
        (2, cbver::V3_3, 0, true),
    ] {
        let cfg = EmuConfig {
            channels,
            cbver: version,
            xfercap,
            fill: with_fill,
            mode: EmuMode::Inline,
            device_id: None,
        };
        let device = EmulatedDevice::new(cfg, Arc::clone(&map)).unwrap();
        let regs = device.registers();
        assert_eq!(regs.read8(device::CHANCNT) as usize, channels);
        assert_eq!(regs.read8(device::XFERCAP), xfercap);
        assert_eq!(regs.read8(device::CBVER), version);
        let caps = regs.read32(device::DMACAPABILITY);
        assert_eq!(caps & dmacap::FILL != 0, with_fill);
        // A 32-bit read at 0 composes CHANCNT, XFERCAP, GENCTRL, INTRCTRL.
        assert_eq!(regs.read32(0), channels as u32 | u32::from(xfercap) << 8);
        for ch in 0..4 {
            let expected = if ch < channels { chansts::HALTED } else { 0 };
            assert_eq!(regs.read64(channel_base(ch) + chan::CHANSTS), expected);
            assert_eq!(regs.read32(channel_base(ch) + chan::CHANERR), 0);
        }
        let pci = device.config_space();
        assert_eq!(pci.read16(0).unwrap(), dmaplane::pci::INTEL_VENDOR);
        let id = pci.read16(2).unwrap();
        assert!(dmaplane::pci::IOAT_DEVICE_IDS.contains(&id), "{id:#x}");
        assert_eq!(pci.read32(8).unwrap() >> 8, 0x08_80_00, "class code");
        assert_eq!(
            pci.read16(config::COMMAND).unwrap() & config::COMMAND_BUS_MASTER,
            0,
            "bus mastering starts off"
        );
        assert!(pci.read32(config::CHANERR_INT + 2).is_err(), "misaligned");
        // GENCTRL and INTRCTRL are writable; CBVER is not.
        regs.write8(device::INTRCTRL, 0);
        regs.write8(device::CBVER, 0x99);
        assert_eq!(regs.read8(device::CBVER), version);
    }
    let bad = |cfg: EmuConfig| EmulatedDevice::new(cfg, Arc::clone(&map)).unwrap_err();
    let base = EmuConfig::default();
    assert_eq!(
        bad(EmuConfig {
            channels: 5,
            ..base
        }),
        EmuError::ChannelCount(5)
    );
    assert_eq!(
        bad(EmuConfig {
            cbver: 0x31,
            ..base
        }),
        EmuError::Version(0x31)
    );
    assert_eq!(
        bad(EmuConfig {
            xfercap: 11,
            ..base
        }),
        EmuError::TransferCap(11)
    );
}

#[test]
fn reset_leaves_the_channel_halted_and_clean() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        assert_eq!(b.status(0), chansts::HALTED);
        // Break it: a copy from IOVA 0.
        b.put(0, 0, &[copy(0, b.data(0), 8)]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::SRC_ADDR);
        assert_eq!(
            b.pci.read32(config::CHANERR_INT).unwrap(),
            chanerr::SRC_ADDR,
            "mirrored in config space"
        );
        // CHANERR is write-1-to-clear: writing 0 changes nothing, writing it back clears it.
        let at = channel_base(0) + chan::CHANERR;
        b.regs.write32(at, 0);
        assert_eq!(b.chanerr(0), chanerr::SRC_ADDR);
        b.regs.write32(at, b.chanerr(0));
        assert_eq!(b.chanerr(0), 0);
        assert_eq!(
            b.pci.read32(config::CHANERR_INT).unwrap(),
            chanerr::SRC_ADDR
        );
        b.pci
            .write32(config::CHANERR_INT, chanerr::SRC_ADDR)
            .unwrap();
        assert_eq!(b.pci.read32(config::CHANERR_INT).unwrap(), 0);

        assert!(b.reset(0), "{mode:?}: RESET seen set before it cleared");
        assert_eq!(b.status(0), chansts::HALTED, "reset clears the address too");
        assert_eq!(b.read64(0, chan::CDAR), 0);
        assert_eq!(b.regs.read16(channel_base(0) + chan::DMACOUNT), 0);
        // The count restarted at 0: DMACOUNT = 1 runs exactly one descriptor.
        b.put(0, 0, &[with(null(), ctl::COMPLETION_UPDATE); 2]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_completion(0, b.slot(0, 0) | chansts::IDLE);
        assert_eq!(b.device.stats()[0].descriptors, 1);
    }
}

#[test]
fn chainaddr_arms_and_a_null_descriptor_completes_idle() {
    for mode in MODES {
        for version in [cbver::V3_2, cbver::V3_3] {
            let cfg = EmuConfig {
                cbver: version,
                ..config(mode)
            };
            let mut b = Bench::new(cfg);
            b.put(0, 0, &[with(null(), ctl::COMPLETION_UPDATE)]);
            b.arm(0, 0);
            assert_eq!(b.state(0), chansts::ARMED, "{mode:?} {version:#x}");
            assert_eq!(b.read64(0, chan::CHAINADDR), b.slot(0, 0));
            b.ring(0, 1);
            b.wait_state(0, chansts::IDLE);
            assert_eq!(b.completion(0), b.slot(0, 0) | chansts::IDLE);
            assert_eq!(b.status(0), b.slot(0, 0) | chansts::IDLE);
            assert_eq!(b.read64(0, chan::CDAR), b.slot(0, 0));
            let stats = b.device.stats()[0];
            assert_eq!((stats.descriptors, stats.bytes), (1, 0));
            assert_eq!(stats.completion_writes, 1);
        }
    }
}

#[test]
fn single_64_bit_writes_do_not_arm_parts_before_v3_3() {
    let mut b = Bench::new(EmuConfig {
        cbver: cbver::V3_2,
        ..EmuConfig::default()
    });
    b.put(0, 0, &[null()]);
    let at = channel_base(0) + chan::CHAINADDR;
    let target = b.slot(0, 0) | 0x1234_5678 << 32;
    b.regs.write64(at, target);
    assert_eq!(b.state(0), chansts::HALTED, "the high half never landed");
    assert_eq!(b.read64(0, chan::CHAINADDR), target & 0xffff_ffff);
    // The low half alone does not arm either; the high half does.
    b.regs.write32(at, b.slot(0, 0) as u32);
    assert_eq!(b.state(0), chansts::HALTED);
    b.regs.write32(at + 4, (b.slot(0, 0) >> 32) as u32);
    assert_eq!(b.state(0), chansts::ARMED);
    assert_eq!(b.read64(0, chan::CHAINADDR), b.slot(0, 0));
}

#[test]
fn copies_complete_with_one_completion_per_batch() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        let sizes = [1usize, 7, 64, 100, 4096, 5000, 3, 65536];
        let mut expected = Vec::new();
        let mut descriptors = Vec::new();
        let (mut src, mut dst) = (0usize, 512 * 1024);
        for (i, &size) in sizes.iter().enumerate() {
            expected.push((dst, b.pattern(src, size, i as u8)));
            descriptors.push(copy(b.data(src), b.data(dst), size as u32));
            src += size + 13;
            dst += size + 29;
        }
        // Two batches, each with the completion request on its last descriptor only.
        descriptors[2] = with(descriptors[2], ctl::COMPLETION_UPDATE);
        descriptors[7] = with(descriptors[7], ctl::COMPLETION_UPDATE);
        b.put(0, 0, &descriptors);
        b.arm(0, 0);
        b.ring(0, 3);
        b.wait_completion(0, b.slot(0, 2) | chansts::IDLE);
        b.ring(0, 8);
        b.wait_completion(0, b.slot(0, 7) | chansts::IDLE);
        b.wait_state(0, chansts::IDLE);
        for (dst, bytes) in &expected {
            assert_eq!(&b.mem.read(DATA + dst, bytes.len()), bytes, "{mode:?}");
        }
        let stats = b.device.stats()[0];
        assert_eq!(stats.descriptors, 8);
        assert_eq!(stats.bytes, sizes.iter().sum::<usize>() as u64);
        assert_eq!(stats.completion_writes, 2);
        assert_eq!(b.chanerr(0), 0);
    }
}

#[test]
fn fill_repeats_the_pattern_little_endian_from_each_descriptor() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        b.mem.fill(DATA, 64, 0xee);
        let pattern = 0x8877_6655_4433_2211;
        b.put(
            0,
            0,
            &[
                fill(pattern, b.data(1), 21),
                with(fill(pattern, b.data(22), 3), ctl::COMPLETION_UPDATE),
            ],
        );
        b.arm(0, 0);
        b.ring(0, 2);
        b.wait_completion(0, b.slot(0, 1) | chansts::IDLE);
        let out = b.mem.read(DATA, 27);
        let word = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        assert_eq!(out[0], 0xee, "{mode:?}: nothing before the destination");
        assert_eq!(out[1..9], word);
        assert_eq!(out[9..17], word);
        assert_eq!(out[17..22], word[..5], "partial last word: leading bytes");
        assert_eq!(
            out[22..25],
            word[..3],
            "the next descriptor starts the pattern over"
        );
        assert_eq!(out[25..27], [0xee, 0xee]);
        assert_eq!(b.device.stats()[0].bytes, 24);
    }
}

#[test]
fn dmacount_wraps_past_65535_on_a_16_slot_ring() {
    let mut b = Bench::new(config(EmuMode::Inline));
    const RING: usize = 16;
    // A circular ring of 16 null descriptors, each asking for a completion, and one copy
    // that keeps re-copying a word so that data moves on every lap too.
    for slot in 0..RING {
        let descriptor = if slot == 5 {
            copy(b.data(0), b.data(64), 8)
        } else {
            null()
        };
        let linked = Descriptor {
            next: b.slot(0, (slot + 1) % RING),
            ..with(descriptor, ctl::COMPLETION_UPDATE)
        };
        b.mem.write_descriptor(Bench::slot_offset(0, slot), &linked);
    }
    b.mem.write(DATA, &0xfeed_f00d_u64.to_le_bytes());
    b.arm(0, 0);
    let total: u64 = 70_000;
    let mut issued: u64 = 0;
    let mut batch = 1;
    while issued < total {
        issued = (issued + batch).min(total);
        b.ring(0, issued as u16);
        let last = ((issued - 1) % RING as u64) as usize;
        assert_eq!(
            b.completion(0),
            b.slot(0, last) | chansts::IDLE,
            "after {issued} descriptors"
        );
        // Batches of 1 to 15 keep at least one slot free, as a driver would.
        batch = batch % 15 + 1;
    }
    assert_eq!(b.state(0), chansts::IDLE);
    assert_eq!(
        b.regs.read16(channel_base(0) + chan::DMACOUNT),
        total as u16
    );
    let stats = b.device.stats()[0];
    assert_eq!(stats.descriptors, total);
    assert_eq!(
        stats.bytes,
        8 * (total / RING as u64 + u64::from(total % 16 > 5))
    );
    assert_eq!(b.mem.read(DATA + 64, 8), 0xfeed_f00d_u64.to_le_bytes());
}

#[test]
fn oversized_descriptor_halts_with_length_naming_the_last_good_one() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        let cap = 1u32 << 20;
        let first = b.pattern(0, 16, 1);
        b.pattern(64, 16, 2);
        b.put(
            0,
            0,
            &[
                copy(b.data(0), b.data(1024), 16),
                copy(b.data(64), b.data(2048), cap + 1),
                with(copy(b.data(64), b.data(4096), 16), ctl::COMPLETION_UPDATE),
            ],
        );
        b.arm(0, 0);
        b.ring(0, 3);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::LENGTH, "{mode:?}");
        assert_eq!(b.completion(0), b.slot(0, 0) | chansts::HALTED);
        assert_eq!(b.status(0), b.slot(0, 0) | chansts::HALTED);
        assert_eq!(b.mem.read(DATA + 1024, 16), first);
        assert_eq!(
            b.mem.read(DATA + 4096, 16),
            [0; 16],
            "nothing after the failure"
        );
        // A doorbell on a halted channel does nothing.
        b.ring(0, 4);
        assert_eq!(b.device.stats()[0].descriptors, 1);
        assert_eq!(b.state(0), chansts::HALTED);
        // Nor does CHAINADDR before the recovery.
        b.arm(0, 2);
        assert_eq!(b.state(0), chansts::HALTED);

        // Recovery: skip the bad descriptor and restart at the next one; the count is 0.
        b.recover(0, 2);
        b.ring(0, 1);
        b.wait_completion(0, b.slot(0, 2) | chansts::IDLE);
        assert_eq!(b.mem.read(DATA + 4096, 16), b.mem.read(DATA + 64, 16));

        // When the very first descriptor after a reset fails, the address field is 0.
        b.put(0, 3, &[copy(b.data(0), b.data(0), cap * 2)]);
        b.recover(0, 3);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.completion(0), chansts::HALTED);
    }
}

#[test]
fn unmapped_or_discontiguous_addresses_are_address_errors() {
    fn outside(b: &Bench) -> u64 {
        b.iova(BUFFER) + 4096
    }
    /// What goes wrong, the descriptor that does it, and the error expected.
    type Case = (&'static str, fn(&Bench) -> Descriptor, u32);
    let cases: [Case; 5] = [
        (
            "unmapped source",
            |b| copy(outside(b), b.data(0), 8),
            chanerr::SRC_ADDR,
        ),
        ("zero source", |b| copy(0, b.data(0), 8), chanerr::SRC_ADDR),
        (
            "source running off the map",
            |b| copy(b.iova(BUFFER - 4), b.data(0), 8),
            chanerr::SRC_ADDR,
        ),
        (
            "unmapped destination",
            |b| copy(b.data(0), outside(b), 8),
            chanerr::DEST_ADDR,
        ),
        (
            "unmapped fill",
            |b| fill(1, outside(b), 8),
            chanerr::DEST_ADDR,
        ),
    ];
    for mode in MODES {
        for (what, make, error) in cases {
            let mut b = Bench::new(config(mode));
            let bad = make(&b);
            b.put(0, 0, &[with(null(), ctl::COMPLETION_UPDATE), bad]);
            b.arm(0, 0);
            b.ring(0, 2);
            b.wait_state(0, chansts::HALTED);
            assert_eq!(b.chanerr(0), error, "{mode:?}: {what}");
            assert_eq!(b.completion(0), b.slot(0, 0) | chansts::HALTED, "{what}");
            assert_eq!(b.device.stats()[0].errors, 1);
        }
    }
}

#[test]
fn bad_descriptor_addresses_are_chain_errors() {
    for mode in MODES {
        // `next` misaligned, `next` unmapped, then a misaligned chain start.
        let mut b = Bench::new(config(mode));
        let first = Descriptor {
            next: b.slot(0, 1) + 8,
            ..null()
        };
        b.mem.write_descriptor(0, &first);
        b.arm(0, 0);
        b.ring(0, 2);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::NEXT_DESC_ALIGN, "{mode:?}");
        assert_eq!(b.completion(0), b.slot(0, 0) | chansts::HALTED);

        let first = Descriptor {
            next: b.iova(BUFFER),
            ..null()
        };
        b.mem.write_descriptor(0, &first);
        b.recover(0, 0);
        b.ring(0, 2);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::NEXT_ADDR);

        b.recover(0, 0);
        b.write64(0, chan::CHAINADDR, b.slot(0, 0) + 32);
        b.wait_state(0, chansts::ARMED);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::CHAIN_ADDR_VALUE);
        assert_eq!(
            b.completion(0),
            chansts::HALTED,
            "nothing completed since the reset"
        );
    }
}

#[test]
fn control_errors_for_fill_without_capability_and_unknown_opcodes() {
    let cases: [(&str, bool, Descriptor); 4] = [
        ("fill without capability", false, fill(7, 0, 8)),
        (
            "unknown opcode",
            true,
            Descriptor {
                size: 8,
                control: ctl::with_op(0x87, 0),
                ..Descriptor::default()
            },
        ),
        ("page break", true, with(copy(0, 0, 8), ctl::SRC_PAGE_BREAK)),
        ("null fill", true, with(fill(7, 0, 8), ctl::NULL)),
    ];
    for mode in MODES {
        for (what, with_fill, descriptor) in cases {
            let mut b = Bench::new(EmuConfig {
                fill: with_fill,
                ..config(mode)
            });
            let bad = Descriptor {
                src_or_pattern: if ctl::op(descriptor.control) == op::FILL {
                    descriptor.src_or_pattern
                } else {
                    b.data(0)
                },
                dest: b.data(64),
                ..descriptor
            };
            b.put(0, 0, &[bad]);
            b.arm(0, 0);
            b.ring(0, 1);
            b.wait_state(0, chansts::HALTED);
            assert_eq!(b.chanerr(0), chanerr::CONTROL, "{mode:?}: {what}");
            assert_eq!(b.mem.read(DATA + 64, 8), [0; 8], "{what} moved data");
        }
    }
}

#[test]
fn injected_failure_hits_the_nth_descriptor() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        let data: Vec<Vec<u8>> = (0..4).map(|i| b.pattern(i * 64, 32, i as u8)).collect();
        let descriptors: Vec<Descriptor> = (0..4)
            .map(|i| copy(b.data(i * 64), b.data(4096 + i * 64), 32))
            .collect();
        b.put(0, 0, &descriptors);
        assert_eq!(
            b.device.inject(Fault::FailDescriptor {
                channel: 0,
                nth: 0,
                error: chanerr::READ_DATA
            }),
            Err(EmuError::InvalidFault("descriptors are counted from 1"))
        );
        assert!(matches!(
            b.device.inject(Fault::Stall { channel: 1 }),
            Err(EmuError::NoSuchChannel {
                channel: 1,
                channels: 1
            })
        ));
        b.device
            .inject(Fault::FailDescriptor {
                channel: 0,
                nth: 3,
                error: chanerr::READ_DATA,
            })
            .unwrap();
        b.arm(0, 0);
        b.ring(0, 4);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::READ_DATA, "{mode:?}");
        assert_eq!(b.completion(0), b.slot(0, 1) | chansts::HALTED);
        assert_eq!(b.mem.read(DATA + 4096, 32), data[0]);
        assert_eq!(b.mem.read(DATA + 4096 + 64, 32), data[1]);
        assert_eq!(
            b.mem.read(DATA + 4096 + 128, 32),
            [0; 32],
            "the failed one moved nothing"
        );
        // The fault fires once: after recovery the same descriptor goes through.
        b.recover(0, 2);
        b.ring(0, 2);
        b.wait_state(0, chansts::IDLE);
        assert_eq!(b.mem.read(DATA + 4096 + 128, 32), data[2]);
        assert_eq!(b.mem.read(DATA + 4096 + 192, 32), data[3]);
    }
}

#[test]
fn a_stalled_channel_keeps_its_work_pending() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        let bytes = b.pattern(0, 256, 9);
        b.put(
            0,
            0,
            &[with(
                copy(b.data(0), b.data(4096), 256),
                ctl::COMPLETION_UPDATE,
            )],
        );
        b.device.inject(Fault::Stall { channel: 0 }).unwrap();
        b.arm(0, 0);
        b.ring(0, 1);
        // ACTIVE shows the engine saw the doorbell; the stall keeps it from the descriptor.
        b.wait_state(0, chansts::ACTIVE);
        assert_eq!(b.device.stats()[0].descriptors, 0, "{mode:?}");
        assert_eq!(b.completion(0), 0);
        assert_eq!(b.mem.read(DATA + 4096, 256), [0; 256]);
        b.device.inject(Fault::Unstall { channel: 0 }).unwrap();
        b.wait_completion(0, b.slot(0, 0) | chansts::IDLE);
        assert_eq!(b.mem.read(DATA + 4096, 256), bytes);
    }
}

#[test]
fn suspend_stops_after_the_current_descriptor() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        b.put(0, 0, &[with(null(), ctl::COMPLETION_UPDATE); 8]);
        b.arm(0, 0);
        // A channel that never started cannot be suspended.
        b.command(0, chancmd::SUSPEND);
        b.wait_until_no_command_pending();
        assert_eq!(b.state(0), chansts::ARMED, "{mode:?}");
        b.ring(0, 1);
        b.wait_state(0, chansts::IDLE);
        b.command(0, chancmd::SUSPEND);
        b.wait_state(0, chansts::SUSPENDED);
        assert_eq!(b.status(0), b.slot(0, 0) | chansts::SUSPENDED);
        // The doorbell of a suspended channel is recorded but starts nothing...
        b.ring(0, 3);
        b.wait_until_no_command_pending();
        assert_eq!(b.device.stats()[0].descriptors, 1);
        // ...until it resumes.
        b.command(0, chancmd::RESUME);
        b.wait_completion(0, b.slot(0, 2) | chansts::IDLE);
        assert_eq!(b.device.stats()[0].descriptors, 3);
    }
}

impl Bench {
    fn wait_until_no_command_pending(&self) {
        let at = channel_base(0) + chan::CHANCMD;
        wait_until("commands to be carried out", || {
            self.regs.read8(at) & (chancmd::SUSPEND | chancmd::RESUME) == 0
        });
    }
}

/// Threaded mode with an injected latency, so the tests can act while a chain is running.
fn slow_chain(b: &mut Bench, count: usize) {
    let descriptors = vec![with(null(), ctl::COMPLETION_UPDATE); count];
    b.put(0, 0, &descriptors);
    b.device
        .inject(Fault::Latency {
            channel: 0,
            per_descriptor: Duration::from_micros(500),
        })
        .unwrap();
    let before = b.device.stats()[0].descriptors;
    b.arm(0, 0);
    b.ring(0, count as u16);
    wait_until("the chain to get going", || {
        b.device.stats()[0].descriptors >= before + 2
    });
}

#[test]
fn suspend_and_reset_in_the_middle_of_a_threaded_chain() {
    let mut b = Bench::new(config(EmuMode::Threaded));
    slow_chain(&mut b, 60);
    b.command(0, chancmd::SUSPEND);
    b.wait_state(0, chansts::SUSPENDED);
    let done = b.device.stats()[0].descriptors as usize;
    assert!(done < 60, "suspended only after {done} descriptors");
    assert!(done >= 2);
    assert_eq!(b.status(0), b.slot(0, done - 1) | chansts::SUSPENDED);
    assert_eq!(b.completion(0), b.slot(0, done - 1) | chansts::ACTIVE);
    assert!(stays(Duration::from_millis(3), || {
        b.device.stats()[0].descriptors as usize == done
    }));

    // RESET while a chain runs: the engine stops after the descriptor under way.
    assert!(b.reset(0));
    slow_chain(&mut b, 60);
    assert!(b.reset(0));
    assert_eq!(b.status(0), chansts::HALTED);
    let done = b.device.stats()[0].descriptors;
    assert!(stays(Duration::from_millis(3), || {
        b.device.stats()[0].descriptors == done
    }));
    // And the channel works again from a fresh chain.
    b.device
        .inject(Fault::Latency {
            channel: 0,
            per_descriptor: Duration::ZERO,
        })
        .unwrap();
    b.arm(0, 10);
    b.ring(0, 2);
    b.wait_completion(0, b.slot(0, 11) | chansts::IDLE);
}

#[test]
fn surprise_removal_reads_all_ones_and_stops_the_engine() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        if mode == EmuMode::Threaded {
            slow_chain(&mut b, 60);
        } else {
            b.put(0, 0, &[with(null(), ctl::COMPLETION_UPDATE); 4]);
            b.arm(0, 0);
            b.ring(0, 2);
        }
        b.device.inject(Fault::SurpriseRemoval).unwrap();
        assert!(b.device.is_removed());
        let (word, stats) = (b.completion(0), b.device.stats()[0]);
        let ch = channel_base(0);
        assert_eq!(b.regs.read8(device::CBVER), 0xff, "{mode:?}");
        assert_eq!(b.regs.read16(ch + chan::DMACOUNT), 0xffff);
        assert_eq!(b.regs.read32(ch + chan::CHANERR), u32::MAX);
        assert_eq!(b.regs.read64(ch + chan::CHANSTS), u64::MAX);
        assert_eq!(chansts::state(b.regs.read64(ch + chan::CHANSTS)), 7);
        assert_eq!(
            b.regs.read8(ch + chan::CHANCMD) & chancmd::RESET,
            chancmd::RESET
        );
        assert_eq!(b.pci.read16(0).unwrap(), 0xffff);
        assert_eq!(b.pci.read32(config::CHANERR_INT).unwrap(), u32::MAX);
        // Writes go nowhere: more work, a reset, a new chain.
        b.ring(0, 4);
        b.command(0, chancmd::RESET);
        b.arm(0, 0);
        b.ring(0, 1);
        assert!(stays(Duration::from_millis(3), || {
            b.completion(0) == word && b.device.stats()[0] == stats
        }));
    }
}

#[test]
fn bus_mastering_gates_every_memory_access() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        b.pci.write16(config::COMMAND, 0x0002).unwrap();
        b.put(0, 0, &[with(null(), ctl::COMPLETION_UPDATE)]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::READ_DATA, "{mode:?}");
        assert_eq!(
            b.completion(0),
            0,
            "no completion write without bus mastering"
        );
    }
}

#[test]
fn an_unusable_completion_address_halts_the_channel() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        b.write64(0, chan::CHANCMP, b.completion_iova(0) + 4);
        b.put(0, 0, &[with(null(), ctl::COMPLETION_UPDATE)]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::COMPLETION_ADDR, "{mode:?}");
        assert_eq!(b.status(0), b.slot(0, 0) | chansts::HALTED);
    }
}

#[test]
fn chanerr_int_must_be_cleared_before_v3_2_leaves_halted() {
    for mode in MODES {
        let mut b = Bench::new(EmuConfig {
            cbver: cbver::V3_2,
            ..config(mode)
        });
        b.put(0, 0, &[copy(0, 0, 8), with(null(), ctl::COMPLETION_UPDATE)]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        let at = channel_base(0) + chan::CHANERR;
        b.regs.write32(at, b.chanerr(0));
        assert!(b.reset(0));
        b.arm(0, 1);
        assert_eq!(
            b.state(0),
            chansts::HALTED,
            "{mode:?}: CHANERR_INT still set"
        );
        b.pci.write32(config::CHANERR_INT, u32::MAX).unwrap();
        b.arm(0, 1);
        b.wait_state(0, chansts::ARMED);
        b.ring(0, 1);
        b.wait_completion(0, b.slot(0, 1) | chansts::IDLE);
    }
}

#[test]
fn scrambled_memory_needs_transfers_split_at_iova_discontinuities() {
    for mode in MODES {
        let mem = HostBuffer::new(BUFFER);
        let (host, iova_base) = (mem.addr(), 0x7_0000_0000);
        // SAFETY: the bench drops the device before the buffer; data is touched only before
        // ringing or after the completion that covers it.
        let scrambled = unsafe { ScrambledPages::new(host, mem.len(), iova_base) };
        let lookup = scrambled.clone();
        let iova_of = Box::new(move |va: u64| lookup.translate(va, 1).unwrap().0);
        let mut b = Bench::with_memory(config(mode), mem, Arc::new(scrambled.clone()), iova_of);
        let len = 3 * PAGE_SIZE - 100;
        let (src, dst) = (100, 16 * PAGE_SIZE + 10);
        let bytes = b.pattern(src, len, 3);

        // One descriptor over the whole range crosses into a page that is not the next one.
        b.put(0, 0, &[copy(b.data(src), b.data(dst), len as u32)]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        assert_eq!(b.chanerr(0), chanerr::SRC_ADDR, "{mode:?}");

        // Split where either side's translation stops being contiguous, as a driver must.
        let mut pieces = Vec::new();
        let mut done = 0;
        while done < len {
            let (s, s_run) = scrambled
                .translate(host + (DATA + src + done) as u64, len - done)
                .unwrap();
            let (d, d_run) = scrambled
                .translate(host + (DATA + dst + done) as u64, len - done)
                .unwrap();
            let run = s_run.min(d_run);
            pieces.push(copy(s, d, run as u32));
            done += run;
        }
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        let last = pieces.len() - 1;
        pieces[last] = with(pieces[last], ctl::COMPLETION_UPDATE);
        b.put(0, 1, &pieces);
        b.recover(0, 1);
        b.ring(0, pieces.len() as u16);
        b.wait_completion(0, b.slot(0, pieces.len()) | chansts::IDLE);
        assert_eq!(b.mem.read(DATA + dst, len), bytes);
    }
}

#[test]
fn threaded_channels_run_side_by_side_in_descriptor_order() {
    let mut b = Bench::new(EmuConfig {
        channels: 4,
        ..config(EmuMode::Threaded)
    });
    b.device.enable_trace(true);
    const PER_CHANNEL: usize = 32;
    const SIZE: usize = 4096;
    let mut expected = Vec::new();
    for ch in 0..4 {
        let descriptors: Vec<Descriptor> = (0..PER_CHANNEL)
            .map(|i| {
                let at = (ch * PER_CHANNEL + i) * SIZE;
                expected.push((at, b.pattern(at, SIZE, (ch * 7 + i) as u8)));
                let dest = b.data(at + 1024 * 1024);
                // Every fourth descriptor is fenced; the last asks for a completion.
                let mut descriptor = copy(b.data(at), dest, SIZE as u32);
                if i % 4 == 3 {
                    descriptor = with(descriptor, ctl::FENCE);
                }
                if i == PER_CHANNEL - 1 {
                    descriptor = with(descriptor, ctl::COMPLETION_UPDATE);
                }
                descriptor
            })
            .collect();
        b.put(ch, 0, &descriptors);
        b.arm(ch, 0);
    }
    for ch in 0..4 {
        b.ring(ch, PER_CHANNEL as u16);
    }
    for ch in 0..4 {
        b.wait_completion(ch, b.slot(ch, PER_CHANNEL - 1) | chansts::IDLE);
    }
    for (at, bytes) in &expected {
        assert_eq!(&b.mem.read(DATA + at + 1024 * 1024, SIZE), bytes);
    }
    let trace = b.device.take_trace();
    assert_eq!(trace.len(), 4 * PER_CHANNEL);
    for ch in 0..4 {
        let events: Vec<_> = trace.iter().filter(|e| e.channel == ch).collect();
        let order: Vec<u64> = events.iter().map(|e| e.descriptor).collect();
        let slots: Vec<u64> = (0..PER_CHANNEL).map(|i| b.slot(ch, i)).collect();
        assert_eq!(order, slots, "channel {ch} ran its chain in order");
        for pair in events.windows(2) {
            assert!(pair[0].start < pair[0].finish);
            assert!(
                pair[0].finish < pair[1].start,
                "a descriptor started before the previous finished"
            );
        }
        assert_eq!(events.iter().filter(|e| e.fence).count(), PER_CHANNEL / 4);
        assert_eq!(b.device.stats()[ch].bytes, (PER_CHANNEL * SIZE) as u64);
    }
    assert!(b.device.take_trace().is_empty());
}

#[test]
fn the_engine_thread_stops_with_the_last_threaded_device() {
    let _alone = ENGINE.write().unwrap_or_else(PoisonError::into_inner);
    let mem = HostBuffer::new(PAGE_SIZE);
    // SAFETY: the buffer outlives both devices and no descriptor is ever run.
    let map: Arc<dyn DeviceMemory> =
        Arc::new(unsafe { IdentityRanges::new(&[(mem.addr(), mem.len())]) });
    assert!(!device_thread_running());
    let first = EmulatedDevice::new(config(EmuMode::Threaded), Arc::clone(&map)).unwrap();
    let second = EmulatedDevice::new(config(EmuMode::Threaded), Arc::clone(&map)).unwrap();
    let inline = EmulatedDevice::new(config(EmuMode::Inline), Arc::clone(&map)).unwrap();
    assert!(device_thread_running());
    let regs = first.registers();
    drop(first);
    assert!(
        device_thread_running(),
        "the register window keeps the device"
    );
    drop(regs);
    assert!(device_thread_running(), "the second device still needs it");
    drop(second);
    assert!(
        !device_thread_running(),
        "joined with the last threaded device"
    );
    drop(inline);
    // And it comes back for the next one.
    let again = EmulatedDevice::new(config(EmuMode::Threaded), map).unwrap();
    assert!(device_thread_running());
    drop(again);
    assert!(!device_thread_running());
}

#[test]
fn reset_keeps_chanerr_so_a_driver_that_forgets_to_clear_it_cannot_rearm() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        b.put(0, 0, &[copy(0, 0, 8), with(null(), ctl::COMPLETION_UPDATE)]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        let errors = b.chanerr(0);
        assert_ne!(errors, 0);
        // RESET alone: CHANERR survives it and the chain is refused.
        assert!(b.reset(0));
        assert_eq!(b.chanerr(0), errors, "{mode:?}: RESET cleared CHANERR");
        b.arm(0, 1);
        assert_eq!(
            b.state(0),
            chansts::HALTED,
            "{mode:?}: armed with CHANERR set"
        );
        // The control: write CHANERR back, RESET, and the same CHAINADDR arms.
        b.regs.write32(channel_base(0) + chan::CHANERR, errors);
        assert!(b.reset(0));
        b.arm(0, 1);
        b.wait_state(0, chansts::ARMED);
        b.ring(0, 1);
        b.wait_completion(0, b.slot(0, 1) | chansts::IDLE);
    }
}

#[test]
fn chainaddr_rewritten_after_suspend_restarts_the_descriptor_count() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        let done = [null(), null(), with(null(), ctl::COMPLETION_UPDATE)];
        b.put(0, 0, &done);
        b.arm(0, 0);
        b.ring(0, 3);
        b.wait_completion(0, b.slot(0, 2) | chansts::IDLE);
        b.command(0, chancmd::SUSPEND);
        b.wait_state(0, chansts::SUSPENDED);
        // A new chain of two at slot 8, counted from zero again: DMACOUNT 0 before CHAINADDR
        // (so nothing counted runs at the arming write), then 2, and the device runs both. Had
        // the count gone on from 3, either write would lie tens of thousands ahead of it.
        b.put(0, 8, &[null(), with(null(), ctl::COMPLETION_UPDATE)]);
        b.ring(0, 0);
        b.arm(0, 8);
        b.wait_state(0, chansts::ARMED);
        b.ring(0, 2);
        b.wait_completion(0, b.slot(0, 9) | chansts::IDLE);
        assert_eq!(
            b.device.stats()[0].descriptors,
            5,
            "{mode:?}: 3 then 2, no more"
        );
    }
}

#[test]
fn abort_drops_the_work_in_progress_and_needs_a_reset() {
    for mode in MODES {
        let mut b = Bench::new(config(mode));
        b.device.inject(Fault::Stall { channel: 0 }).unwrap();
        b.put(0, 0, &[null(), with(null(), ctl::COMPLETION_UPDATE)]);
        b.arm(0, 0);
        b.ring(0, 2);
        b.command(0, chancmd::ABORT);
        b.wait_state(0, chansts::HALTED);
        b.device.inject(Fault::Unstall { channel: 0 }).unwrap();
        assert_eq!(b.device.stats()[0].descriptors, 0, "{mode:?}: nothing ran");
        assert_eq!(b.completion(0), 0, "{mode:?}: no completion write");
        assert_eq!(b.chanerr(0), 0, "{mode:?}: an abort is not an error");
        b.arm(0, 0);
        assert_eq!(
            b.state(0),
            chansts::HALTED,
            "{mode:?}: re-armed without a reset"
        );
        assert!(b.reset(0));
        b.arm(0, 0);
        b.wait_state(0, chansts::ARMED);
        b.ring(0, 2);
        b.wait_completion(0, b.slot(0, 1) | chansts::IDLE);
    }
}

#[test]
fn skylake_sp_reports_v3_3_but_keeps_a_halted_channel_until_chanerr_int_is_cleared() {
    for (device_id, held) in [(ioat_spec::SKYLAKE_SP_DEVICE_ID, true), (0x6f50, false)] {
        let mut b = Bench::new(EmuConfig {
            cbver: cbver::V3_3,
            device_id: Some(device_id),
            ..config(EmuMode::Inline)
        });
        assert_eq!(b.regs.read8(device::CBVER), cbver::V3_3);
        assert_eq!(
            b.pci.read16(dmaplane::pci::regs::DEVICE_ID).unwrap(),
            device_id
        );
        b.put(0, 0, &[copy(0, 0, 8), with(null(), ctl::COMPLETION_UPDATE)]);
        b.arm(0, 0);
        b.ring(0, 1);
        b.wait_state(0, chansts::HALTED);
        b.regs
            .write32(channel_base(0) + chan::CHANERR, b.chanerr(0));
        assert!(b.reset(0));
        b.arm(0, 1);
        let state = b.state(0);
        assert_eq!(
            state == chansts::HALTED,
            held,
            "device {device_id:#x}: state {state} with CHANERR_INT still set"
        );
        b.pci.write32(config::CHANERR_INT, u32::MAX).unwrap();
        b.arm(0, 1);
        b.wait_state(0, chansts::ARMED);
    }
}

#[test]
fn memory_decoding_off_reads_all_ones_and_drops_writes() {
    let b = Bench::new(config(EmuMode::Inline));
    let command = b.pci.read16(dmaplane::pci::regs::COMMAND).unwrap();
    let at = channel_base(0) + chan::CHANCTRL;
    b.pci
        .write16(
            dmaplane::pci::regs::COMMAND,
            command & !dmaplane::pci::regs::COMMAND_MEMORY,
        )
        .unwrap();
    assert_eq!(b.regs.read8(device::CBVER), u8::MAX);
    b.regs.write16(at, 0);
    b.pci
        .write16(dmaplane::pci::regs::COMMAND, command)
        .unwrap();
    assert_eq!(b.regs.read8(device::CBVER), cbver::V3_3);
    assert_ne!(
        b.regs.read16(at),
        0,
        "the write with decoding off never arrived"
    );
}

#[test]
fn the_pci_express_capability_starts_with_relaxed_ordering_enabled() {
    use dmaplane::pci::{find_capability, regs};
    let b = Bench::new(config(EmuMode::Inline));
    let exp = find_capability(&*b.pci, regs::CAP_ID_EXP)
        .unwrap()
        .expect("a PCI Express capability");
    let devctl = b.pci.read16(exp + regs::EXP_DEVCTL).unwrap();
    assert_ne!(devctl & regs::EXP_DEVCTL_RELAX_EN, 0);
    b.pci
        .write16(exp + regs::EXP_DEVCTL, devctl & !regs::EXP_DEVCTL_RELAX_EN)
        .unwrap();
    assert_eq!(
        b.pci.read16(exp + regs::EXP_DEVCTL).unwrap(),
        devctl & !regs::EXP_DEVCTL_RELAX_EN
    );
    assert_eq!(
        find_capability(&*b.pci, 0x05).unwrap(),
        None,
        "no MSI capability"
    );
}
