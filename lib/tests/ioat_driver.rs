//! The IOAT channel driver on the emulated device: copies and fills land exactly, long runs
//! wrap the ring and the 16-bit doorbell, failures complete exactly the failing operation,
//! scrambled IOVAs split at every page, a full ring refuses cleanly, surprise removal fails
//! what is outstanding, and the engine starts and stops channels through the backend hooks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, Fault};
use dmaplane::ioat::spec::chanerr;
use dmaplane::ioat::{IoatChannel, IoatChannelBackend, IoatConfig, IoatDevice};
use dmaplane::log::LogHook;
use dmaplane::mem::{BackingChoice, DmaBlock, DmaPool, DmaPoolConfig, IovaMode};
use dmaplane::{Capability, Engine, EngineConfig};
use dmaplane::{Completion, OpError, OpFlags, SubmitError};

mod common;
use common::{block, device_memory, SplitMix};

fn pool(iova_mode: IovaMode) -> DmaPool {
    DmaPool::new(DmaPoolConfig {
        iova_mode,
        backing: BackingChoice::Auto,
        ..DmaPoolConfig::default()
    })
    .unwrap()
}

struct Rig {
    pool: DmaPool,
    device: Arc<EmulatedDevice>,
    chan: IoatChannel,
}

fn rig_with(emu: EmuConfig, iova_mode: IovaMode, config: IoatConfig) -> Rig {
    rig_on(pool(iova_mode), emu, config)
}

/// An emulated device over `pool` and its channel 0, started.
fn rig_on(pool: DmaPool, emu: EmuConfig, config: IoatConfig) -> Rig {
    let device = EmulatedDevice::new(emu, device_memory(&pool)).unwrap();
    let chan = IoatChannel::start(
        device.registers(),
        Some(device.config_space()),
        0,
        &pool,
        config,
    )
    .unwrap();
    Rig { pool, device, chan }
}

fn rig(emu: EmuConfig) -> Rig {
    rig_with(emu, IovaMode::Va, IoatConfig::default())
}

/// Polls until `count` completions arrived, yielding between polls, for at most 10 s.
fn drain(chan: &mut IoatChannel, count: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = Vec::with_capacity(count);
    let mut batch = [Completion {
        user_data: 0,
        result: Ok(()),
        value: 0,
    }; 64];
    while done.len() < count {
        let n = chan.poll(&mut batch);
        done.extend_from_slice(&batch[..n]);
        assert!(
            Instant::now() < deadline,
            "only {} of {count} completions arrived: {chan:?}",
            done.len()
        );
        if n == 0 {
            std::thread::yield_now();
        }
    }
    done
}

const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xee;

/// A buffer with guard bytes on both sides of the `len` bytes at `GUARD + offset`.
fn guarded(pool: &DmaPool, offset: usize, len: usize, fill: impl Fn(usize) -> u8) -> DmaBlock {
    let mut block = pool.alloc(GUARD + offset + len + GUARD, 64).unwrap();
    block.fill(GUARD_BYTE);
    let body: Vec<u8> = (0..len).map(fill).collect();
    block.write_at(GUARD + offset, &body).unwrap();
    block
}

/// A source and a destination block of `len` bytes, aligned to `align`.
fn pair(pool: &DmaPool, len: usize, align: usize) -> (DmaBlock, DmaBlock) {
    (
        pool.alloc(len, align).unwrap(),
        pool.alloc(len, align).unwrap(),
    )
}

fn assert_guards(block: &DmaBlock, offset: usize, len: usize, what: &str) {
    let bytes = block.to_vec();
    let body = GUARD + offset..GUARD + offset + len;
    for (i, &b) in bytes.iter().enumerate() {
        if !body.contains(&i) {
            assert_eq!(b, GUARD_BYTE, "{what}: guard byte {i} overwritten");
        }
    }
}

/// Copies `len` bytes between guarded buffers and checks source, destination and guards.
fn copy_and_check(r: &mut Rig, rng: &mut SplitMix, len: usize) {
    let (src_off, dst_off) = (rng.below(64), rng.below(64));
    let seed = rng.next() as u8;
    let src = guarded(&r.pool, src_off, len, |i| (i as u8).wrapping_mul(31) ^ seed);
    let dst = guarded(&r.pool, dst_off, len, |_| GUARD_BYTE);
    // SAFETY: both blocks outlive the operation, which is drained below before they are read.
    unsafe {
        r.chan
            .copy(
                dst.as_mut_ptr().add(GUARD + dst_off),
                src.as_ptr().add(GUARD + src_off),
                len,
                len as u64,
                OpFlags::SUBMIT,
            )
            .unwrap();
    }
    let done = drain(&mut r.chan, 1);
    assert_eq!(
        done,
        [Completion {
            user_data: len as u64,
            result: Ok(()),
            value: 0,
        }]
    );
    let expected: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let mut got = vec![0; len];
    dst.read_at(GUARD + dst_off, &mut got).unwrap();
    assert!(got == expected, "copy of {len} bytes differs");
    let mut source = vec![0; len];
    src.read_at(GUARD + src_off, &mut source).unwrap();
    assert!(source == expected, "source of {len} bytes changed");
    assert_guards(&dst, dst_off, len, "destination");
    assert_guards(&src, src_off, len, "source");
}

#[test]
fn copies_from_one_byte_to_four_mebibytes_land_exactly() {
    let mut r = rig(EmuConfig::default());
    let mut rng = SplitMix(1);
    let mut sizes = vec![1, 2, 3, 7, 8, 9, 63, 64, 65, 511, 4095, 4096, 4097, 65_549];
    sizes.extend([(1 << 20) - 3, (1 << 20) + 5, 3 << 20, 4 << 20]);
    for _ in 0..16 {
        sizes.push(1 + rng.below(200_000));
    }
    for len in sizes {
        copy_and_check(&mut r, &mut rng, len);
    }
    // Transfers above XFERCAP (1 MiB here) were split.
    assert!(r.chan.stats().descriptors > r.chan.stats().ops_ok);
}

/// Fills `len` bytes at `offset` in a guarded buffer and checks that byte `i` is byte `i % 8`
/// of the pattern in little-endian order, and that the guards are intact.
fn fill_and_check(r: &mut Rig, offset: usize, len: usize, pattern: u64) {
    let dst = guarded(&r.pool, offset, len, |_| GUARD_BYTE);
    // SAFETY: the block outlives the drained operation.
    unsafe {
        let at = dst.as_mut_ptr().add(GUARD + offset);
        r.chan
            .fill(at, pattern, len, len as u64, OpFlags::SUBMIT)
            .unwrap();
    }
    assert_eq!(drain(&mut r.chan, 1)[0].result, Ok(()));
    let mut got = vec![0; len];
    dst.read_at(GUARD + offset, &mut got).unwrap();
    for (i, &b) in got.iter().enumerate() {
        let want = pattern.to_le_bytes()[i % 8];
        assert_eq!(b, want, "fill of {len} at offset {offset}: byte {i}");
    }
    assert_guards(&dst, offset, len, "fill");
}

#[test]
fn fills_repeat_the_pattern_in_byte_order_without_overrun() {
    let mut r = rig(EmuConfig::default());
    let mut rng = SplitMix(2);
    for len in [8, 50, 64, 89, 100, 1024, 4096 + 13] {
        // Bytes 01 02 .. 08 in memory order.
        fill_and_check(&mut r, rng.below(64), len, 0x0807_0605_0403_0201);
    }
}

#[test]
fn a_fill_split_at_scrambled_pages_keeps_the_pattern_phase() {
    let mut r = rig_with(
        EmuConfig::default(),
        IovaMode::Scrambled { seed: 9 },
        IoatConfig::default(),
    );
    fill_and_check(&mut r, 3, 3 * 4096 + 77, 0x8877_6655_4433_2211);
    assert!(r.chan.stats().descriptors >= 4, "split at each page");
}

#[test]
fn scrambled_iovas_split_copies_at_every_page_boundary() {
    let mut r = rig_with(
        EmuConfig::default(),
        IovaMode::Scrambled { seed: 5 },
        IoatConfig::default(),
    );
    let mut rng = SplitMix(3);
    let before = r.chan.stats().descriptors;
    for len in [4096, 4097, 3 * 4096 + 5, 64 * 1024 + 33] {
        copy_and_check(&mut r, &mut rng, len);
    }
    // Each page boundary of source or destination ends a descriptor: at least one per page.
    let pages: u64 = [4096u64, 4097, 3 * 4096 + 5, 64 * 1024 + 33]
        .iter()
        .map(|len| len.div_ceil(4096))
        .sum();
    assert!(r.chan.stats().descriptors - before >= pages);
}

#[test]
fn more_than_65536_descriptors_wrap_the_ring_and_the_doorbell() {
    let config = IoatConfig {
        ring_order: 8,
        ..IoatConfig::default()
    };
    let mut r = rig_with(EmuConfig::default(), IovaMode::Va, config);
    let (src, dst) = pair(&r.pool, 4096, 64);
    let total = 70_000u64;
    let mut next_expected = 0u64;
    let mut submitted = 0u64;
    let mut batch = [Completion {
        user_data: 0,
        result: Ok(()),
        value: 0,
    }; 64];
    while next_expected < total {
        while submitted < total && r.chan.capacity() > 0 {
            let offset = (submitted % 64) as usize * 64;
            let flags = if submitted % 32 == 31 {
                OpFlags::SUBMIT
            } else {
                OpFlags::NONE
            };
            // SAFETY: both blocks outlive every operation (all drained below).
            unsafe {
                r.chan
                    .copy(
                        dst.as_mut_ptr().add(offset),
                        src.as_ptr().add(offset),
                        64,
                        submitted,
                        flags,
                    )
                    .unwrap();
            }
            submitted += 1;
        }
        r.chan.submit();
        let n = r.chan.poll(&mut batch);
        for c in &batch[..n] {
            assert_eq!(
                c.user_data, next_expected,
                "completions come in order, once each"
            );
            assert_eq!(c.result, Ok(()));
            next_expected += 1;
        }
    }
    assert!(r.chan.stats().descriptors > 65_536);
    assert_eq!(r.device.stats()[0].descriptors, r.chan.stats().descriptors);
}

/// Sixteen one-descriptor copies with the one at `failing` made to fail; `fence` puts a
/// fence on every operation. Exactly one completion each, only the failing one an error.
fn burst_with_failure(cbver: u8, failing: usize, fence: bool) {
    let emu = EmuConfig {
        cbver,
        ..EmuConfig::default()
    };
    let mut r = rig(emu);
    let src = guarded(&r.pool, 0, 16 * 256, |i| (i % 251) as u8);
    let dst = guarded(&r.pool, 0, 16 * 256, |_| 0);
    r.device
        .inject(Fault::FailDescriptor {
            channel: 0,
            nth: failing as u32 + 1,
            error: chanerr::READ_DATA,
        })
        .unwrap();
    for i in 0..16 {
        let mut flags = if i == 15 {
            OpFlags::SUBMIT
        } else {
            OpFlags::NONE
        };
        if fence {
            flags = flags | OpFlags::FENCE;
        }
        // SAFETY: the blocks outlive the drained operations.
        unsafe {
            r.chan
                .copy(
                    dst.as_mut_ptr().add(GUARD + i * 256),
                    src.as_ptr().add(GUARD + i * 256),
                    256,
                    i as u64,
                    flags,
                )
                .unwrap();
        }
    }
    let mut done = drain(&mut r.chan, 16);
    done.sort_by_key(|c| c.user_data);
    let got = dst.to_vec();
    let want = src.to_vec();
    for (i, c) in done.iter().enumerate() {
        assert_eq!(c.user_data, i as u64, "each operation completes once");
        let range = GUARD + i * 256..GUARD + (i + 1) * 256;
        if i == failing {
            assert_eq!(
                c.result,
                Err(dmaplane::ioat::device_error(chanerr::READ_DATA))
            );
            assert!(
                got[range].iter().all(|&b| b == 0),
                "failed copy moved no data"
            );
        } else {
            assert_eq!(c.result, Ok(()), "op {i} with op {failing} failing");
            assert_eq!(got[range.clone()], want[range], "op {i} data");
        }
    }
    assert_eq!(r.chan.stats().recoveries, 1);
    // The channel carries on after the recovery.
    copy_and_check(&mut r, &mut SplitMix(4), 100);
}

#[test]
fn a_failure_in_a_burst_completes_only_that_operation_with_an_error() {
    for failing in [0, 7, 14, 15] {
        for fence in [false, true] {
            burst_with_failure(0x33, failing, fence);
        }
    }
}

#[test]
fn recovery_on_a_v3_2_part_clears_chanerr_int_too() {
    burst_with_failure(0x32, 7, false);
}

#[test]
fn ops_queued_behind_a_halt_are_restarted_and_later_ones_still_go_out() {
    let mut r = rig(EmuConfig::default());
    let src = guarded(&r.pool, 0, 8 * 64, |i| i as u8);
    let dst = guarded(&r.pool, 0, 8 * 64, |_| 0);
    r.device
        .inject(Fault::FailDescriptor {
            channel: 0,
            nth: 1,
            error: chanerr::SRC_ADDR,
        })
        .unwrap();
    let copy = |chan: &mut IoatChannel, i: usize, flags| {
        // SAFETY: the blocks outlive the drained operations.
        unsafe {
            chan.copy(
                dst.as_mut_ptr().add(GUARD + i * 64),
                src.as_ptr().add(GUARD + i * 64),
                64,
                i as u64,
                flags,
            )
        }
    };
    for i in 0..4 {
        copy(&mut r.chan, i, OpFlags::NONE).unwrap();
    }
    r.chan.submit(); // 0 fails; 1..3 are queued behind the halt
    for i in 4..8 {
        copy(&mut r.chan, i, OpFlags::NONE).unwrap(); // built, not yet submitted
    }
    let first = drain(&mut r.chan, 4);
    assert_eq!(
        first[0],
        Completion {
            user_data: 0,
            result: Err(dmaplane::ioat::device_error(chanerr::SRC_ADDR)),
            value: 0,
        }
    );
    assert!(first[1..].iter().all(|c| c.result.is_ok()));
    r.chan.submit();
    let rest = drain(&mut r.chan, 4);
    assert_eq!(
        rest.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert!(rest.iter().all(|c| c.result.is_ok()));
    assert_eq!(
        dst.to_vec()[GUARD + 64..GUARD + 512],
        src.to_vec()[GUARD + 64..GUARD + 512]
    );
}

#[test]
fn a_full_ring_refuses_with_a_distinct_error_and_loses_nothing() {
    let config = IoatConfig {
        ring_order: 4,
        ..IoatConfig::default()
    };
    let mut r = rig_with(EmuConfig::default(), IovaMode::Va, config);
    let (src, dst) = pair(&r.pool, 1 << 16, 64);
    r.device.inject(Fault::Stall { channel: 0 }).unwrap();
    let mut accepted = 0;
    loop {
        // SAFETY: the blocks outlive the drained operations.
        let result = unsafe {
            r.chan.copy(
                dst.as_mut_ptr(),
                src.as_ptr(),
                64,
                accepted,
                OpFlags::SUBMIT,
            )
        };
        match result {
            Ok(()) => accepted += 1,
            Err(err) => {
                assert_eq!(err, SubmitError::RingFull { needed: 1, free: 0 });
                break;
            }
        }
    }
    assert_eq!(accepted, 15, "a 16-slot ring holds 15 descriptors");
    r.device.inject(Fault::Unstall { channel: 0 }).unwrap();
    let done = drain(&mut r.chan, 15);
    assert_eq!(
        done.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        (0..15).collect::<Vec<_>>()
    );
    // An operation needing more descriptors than are free is refused whole.
    let big = 20 << 20; // 20 descriptors at XFERCAP 1 MiB, more than the ring holds
    let huge_src = r.pool.alloc(big, 64).unwrap();
    let huge_dst = r.pool.alloc(big, 64).unwrap();
    let free = r.chan.capacity();
    // SAFETY: nothing is built, so nothing touches the blocks.
    let err = unsafe {
        r.chan.copy(
            huge_dst.as_mut_ptr(),
            huge_src.as_ptr(),
            big,
            99,
            OpFlags::SUBMIT,
        )
    };
    assert_eq!(err, Err(SubmitError::RingFull { needed: 20, free }));
    assert_eq!(r.chan.capacity(), free, "nothing was built");
}

#[test]
fn bad_input_is_refused_without_building_anything() {
    let mut r = rig(EmuConfig {
        fill: false,
        ..EmuConfig::default()
    });
    let block = r.pool.alloc(4096, 64).unwrap();
    let mut outside = vec![0u8; 4096];
    let free = r.chan.capacity();
    // SAFETY: refused operations build nothing, so nothing touches the buffers.
    unsafe {
        assert_eq!(
            r.chan
                .copy(block.as_mut_ptr(), block.as_ptr(), 0, 0, OpFlags::SUBMIT),
            Err(SubmitError::ZeroLength)
        );
        assert!(matches!(
            r.chan
                .copy(outside.as_mut_ptr(), block.as_ptr(), 64, 0, OpFlags::SUBMIT),
            Err(SubmitError::Unmapped(_))
        ));
        assert!(matches!(
            r.chan
                .copy(block.as_mut_ptr(), outside.as_ptr(), 64, 0, OpFlags::SUBMIT),
            Err(SubmitError::Unmapped(_))
        ));
        assert_eq!(
            r.chan.fill(block.as_mut_ptr(), 0, 64, 0, OpFlags::SUBMIT),
            Err(SubmitError::Unsupported(Capability::Fill))
        );
    }
    assert_eq!(r.chan.capacity(), free);
}

#[test]
fn surprise_removal_fails_everything_outstanding_and_later_submits() {
    let config = IoatConfig {
        stall_check_polls: 8,
        ..IoatConfig::default()
    };
    let mut r = rig_with(EmuConfig::default(), IovaMode::Va, config);
    let (src, dst) = pair(&r.pool, 4096, 64);
    r.device.inject(Fault::Stall { channel: 0 }).unwrap();
    for i in 0..5 {
        // SAFETY: the blocks outlive the drained operations.
        unsafe {
            r.chan
                .copy(dst.as_mut_ptr(), src.as_ptr(), 64, i, OpFlags::SUBMIT)
                .unwrap()
        };
    }
    r.device.inject(Fault::SurpriseRemoval).unwrap();
    let done = drain(&mut r.chan, 5);
    assert!(done.iter().all(|c| c.result == Err(OpError::DeviceRemoved)));
    assert_eq!(
        done.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // SAFETY: refused, nothing built.
    let refused = unsafe {
        r.chan
            .copy(dst.as_mut_ptr(), src.as_ptr(), 64, 9, OpFlags::SUBMIT)
    };
    assert_eq!(refused, Err(SubmitError::DeviceRemoved));
}

#[test]
fn threaded_mode_moves_many_random_copies_exactly_once() {
    let mut r = rig(EmuConfig {
        mode: EmuMode::Threaded,
        ..EmuConfig::default()
    });
    let mut rng = SplitMix(6);
    let len = 1 << 20;
    let src = guarded(&r.pool, 0, len, |i| (i * 7 % 253) as u8);
    let dst = guarded(&r.pool, 0, len, |_| 0);
    let started = Instant::now();
    let mut ops = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut batch = [Completion {
        user_data: 0,
        result: Ok(()),
        value: 0,
    }; 64];
    let mut expected = Vec::new();
    while ops < 20_000 && started.elapsed() < Duration::from_secs(5) {
        let size = 1 + rng.below(2048);
        let offset = rng.below(len - size);
        let flags = if ops % 16 == 15 {
            OpFlags::SUBMIT
        } else {
            OpFlags::NONE
        };
        // Copy src[offset..] to the same place in dst: overlapping copies write equal bytes.
        // SAFETY: the blocks outlive the drained operations.
        match unsafe {
            r.chan.copy(
                dst.as_mut_ptr().add(GUARD + offset),
                src.as_ptr().add(GUARD + offset),
                size,
                ops,
                flags,
            )
        } {
            Ok(()) => {
                expected.push((offset, size));
                ops += 1;
            }
            Err(SubmitError::RingFull { .. }) => r.chan.submit(),
            Err(e) => panic!("{e}"),
        }
        let n = r.chan.poll(&mut batch);
        for c in &batch[..n] {
            assert_eq!(c.result, Ok(()));
            assert!(
                seen.insert(c.user_data),
                "op {} completed twice",
                c.user_data
            );
        }
    }
    r.chan.submit();
    for c in drain(&mut r.chan, ops as usize - seen.len()) {
        assert!(
            seen.insert(c.user_data),
            "op {} completed twice",
            c.user_data
        );
    }
    assert_eq!(seen.len() as u64, ops);
    let (got, want) = (dst.to_vec(), src.to_vec());
    for (offset, size) in expected {
        assert_eq!(
            got[GUARD + offset..GUARD + offset + size],
            want[GUARD + offset..GUARD + offset + size]
        );
    }
}

#[test]
fn the_engine_starts_channels_on_first_reference_and_frees_them_on_last() {
    let quiet: LogHook = Arc::new(|_, _| {});
    let engine = Engine::new(EngineConfig::with_cpus(2).log_hook(quiet)).unwrap();
    let pool = pool(IovaMode::Va);
    let emu = EmuConfig {
        channels: 2,
        ..EmuConfig::default()
    };
    let device = EmulatedDevice::new(emu, device_memory(&pool)).unwrap();
    let ioat = IoatDevice::probe(
        "emu0",
        device.registers(),
        Some(device.config_space()),
        pool.clone(),
        IoatConfig::default(),
    )
    .unwrap();
    assert!(ioat.capabilities().has(Capability::Fill));
    let baseline = pool.live_blocks();
    engine.register_device(ioat.spec()).unwrap();
    assert!(
        ioat.channels().iter().all(|c| !c.is_started()),
        "nothing started yet"
    );

    engine.get_client();
    let reader = engine.table_reader(1).unwrap();
    let chan = reader.lookup(Capability::Memcpy).unwrap();
    let backend = chan
        .backend()
        .as_any()
        .downcast_ref::<IoatChannelBackend>()
        .unwrap();
    assert_eq!(backend.index(), 1);
    assert!(backend.is_started(), "started by the first reference");
    drop(reader); // a registered reader would hold the old table's channels past put_client
    assert!(
        pool.live_blocks() > baseline,
        "rings and completion words allocated"
    );
    engine.put_client().unwrap();
    assert!(
        ioat.channels().iter().all(|c| !c.is_started()),
        "stopped on last put"
    );
    assert_eq!(
        pool.live_blocks(),
        baseline,
        "rings and completion words returned"
    );
}

#[test]
fn a_channel_that_does_not_come_back_fails_everything_outstanding() {
    // A v3.2 part leaves HALTED only once CHANERR_INT in configuration space is cleared too.
    // Started without configuration-space access (bus mastering enabled by hand), the driver
    // cannot clear it, so the restart after a failure never arms and the channel is failed.
    let pool = pool(IovaMode::Va);
    let emu = EmuConfig {
        cbver: 0x32,
        ..EmuConfig::default()
    };
    let device = EmulatedDevice::new(emu, device_memory(&pool)).unwrap();
    let config = device.config_space();
    let command = config.read16(0x04).unwrap();
    config.write16(0x04, command | 0x4).unwrap();
    let mut chan =
        IoatChannel::start(device.registers(), None, 0, &pool, IoatConfig::default()).unwrap();
    let (src, dst) = pair(&pool, 4096, 64);
    device
        .inject(Fault::FailDescriptor {
            channel: 0,
            nth: 2,
            error: chanerr::WRITE_DATA,
        })
        .unwrap();
    for i in 0..5 {
        let flags = if i == 4 {
            OpFlags::SUBMIT
        } else {
            OpFlags::NONE
        };
        // SAFETY: the blocks outlive the drained operations.
        unsafe {
            chan.copy(dst.as_mut_ptr(), src.as_ptr(), 64, i, flags)
                .unwrap()
        };
    }
    let done = drain(&mut chan, 5);
    let results: Vec<_> = done.iter().map(|c| (c.user_data, c.result)).collect();
    assert_eq!(
        results,
        [
            (0, Ok(())),
            (1, Err(dmaplane::ioat::device_error(chanerr::WRITE_DATA))),
            (2, Err(OpError::ChannelFailed)),
            (3, Err(OpError::ChannelFailed)),
            (4, Err(OpError::ChannelFailed)),
        ]
    );
    assert!(!chan.is_running());
    // SAFETY: refused, nothing built.
    let refused = unsafe { chan.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 9, OpFlags::SUBMIT) };
    assert_eq!(refused, Err(SubmitError::ChannelFailed));
}

#[test]
fn a_partial_poll_followed_by_a_ring_lap_loses_no_completion() {
    // Regression: after a poll that could take only part of a batch, the next batch's end may
    // land on the slot the driver last remembered, once the ring has lapped.
    let config = IoatConfig {
        ring_order: 4,
        ..IoatConfig::default()
    };
    let mut r = rig_with(EmuConfig::default(), IovaMode::Va, config);
    for i in 0..4 {
        r.chan.null(i, OpFlags::NONE).unwrap();
    }
    r.chan.submit();
    let mut one = [Completion {
        user_data: 0,
        result: Ok(()),
        value: 0,
    }; 1];
    assert_eq!(r.chan.poll(&mut one), 1, "room for one of four");
    let mut n = 4u64;
    while r.chan.capacity() > 0 {
        r.chan.null(n, OpFlags::NONE).unwrap();
        n += 1;
    }
    r.chan.submit();
    let rest = drain(&mut r.chan, n as usize - 1);
    let ids: Vec<u64> = rest.iter().map(|c| c.user_data).collect();
    assert_eq!(ids, (1..n).collect::<Vec<_>>());
}

/// A threaded device whose descriptors may move up to 1 GiB: one copy outlasts any wait.
const LONG_COPIES: EmuConfig = EmuConfig {
    channels: 1,
    cbver: 0x33,
    xfercap: 30,
    fill: true,
    mode: EmuMode::Threaded,
    device_id: None,
};

/// Waits until channel 0 is ACTIVE (a long descriptor under way) or has written a completion
/// since `writes_before` (it finished before this thread looked: on a loaded machine the
/// waiting thread may not run for the whole descriptor; the checks that follow still hold).
fn wait_until_under_way_or_done(
    device: &Arc<EmulatedDevice>,
    writes_before: u64,
    deadline: Instant,
) {
    let regs = device.registers();
    while regs.read64(0x88) & 0x7 != 0 && device.stats()[0].completion_writes == writes_before {
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::yield_now();
    }
}

#[test]
fn a_channel_the_device_will_not_release_keeps_its_memory_out_of_reuse() {
    // A descriptor that outlasts the suspend timeout: dropping the channel cannot stop the
    // device, so the ring and completion word must not go back to the pool, or the device's
    // completion write would land in whoever allocates them next.
    let timeouts = dmaplane::ioat::Timeouts {
        suspend: Duration::from_micros(100),
        ..dmaplane::ioat::Timeouts::default()
    };
    let config = IoatConfig {
        ring_order: 4,
        timeouts,
        ..IoatConfig::default()
    };
    let Rig {
        pool,
        device,
        mut chan,
    } = rig_on(pool(IovaMode::Va), LONG_COPIES, config);
    let len = 128 << 20;
    let (src, dst) = pair(&pool, len, 4096);
    let writes_before = device.stats()[0].completion_writes;
    // SAFETY: `src` and `dst` live until the device has finished (waited for below).
    unsafe {
        chan.copy(dst.as_mut_ptr(), src.as_ptr(), len, 1, OpFlags::SUBMIT)
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    wait_until_under_way_or_done(&device, writes_before, deadline);
    drop(chan);
    let reused: Vec<_> = (0..256).map(|_| pool.alloc(8, 8).unwrap()).collect();
    while device.stats()[0].completion_writes == writes_before {
        assert!(Instant::now() < deadline, "the copy never completed");
        std::thread::yield_now();
    }
    let dirty = reused.iter().filter(|b| b.to_vec() != [0u8; 8]).count();
    assert_eq!(
        dirty, 0,
        "the device wrote into memory the driver had given back"
    );
}

#[test]
fn once_the_driver_sees_a_surprise_removal_the_device_writes_nothing_more() {
    let config = IoatConfig {
        stall_check_polls: 1,
        ..IoatConfig::default()
    };
    let Rig {
        pool,
        device,
        mut chan,
    } = rig_on(pool(IovaMode::Va), LONG_COPIES, config);
    let len = 128 << 20;
    let mut src = pool.alloc(len, 4096).unwrap();
    src.fill(0xab);
    let dst = pool.alloc(len, 4096).unwrap();
    let writes_before = device.stats()[0].completion_writes;
    // SAFETY: the blocks outlive the device's last access (the removal below waits for it).
    unsafe {
        chan.copy(dst.as_mut_ptr(), src.as_ptr(), len, 1, OpFlags::SUBMIT)
            .unwrap()
    };
    wait_until_under_way_or_done(
        &device,
        writes_before,
        Instant::now() + Duration::from_secs(10),
    );
    let remover = {
        let device = Arc::clone(&device);
        std::thread::spawn(move || device.inject(Fault::SurpriseRemoval).unwrap())
    };
    let done = drain(&mut chan, 1);
    // Sample the destination the moment the driver learns of the removal...
    let sample = |block: &DmaBlock| {
        let mut byte = [0u8];
        (0..len)
            .step_by(4096)
            .map(|offset| {
                block.read_at(offset, &mut byte).unwrap();
                u64::from(byte[0])
            })
            .sum::<u64>()
    };
    let seen = sample(&dst);
    remover.join().unwrap();
    // ...and after the removal is complete: the device must not have written in between.
    assert_eq!(
        sample(&dst),
        seen,
        "the device wrote after the driver saw it removed"
    );
    assert!(
        done[0].result == Err(OpError::DeviceRemoved) || done[0].result == Ok(()),
        "{done:?}"
    );
}

#[test]
fn registered_application_memory_is_dma_memory_until_unregistered() {
    let mut r = rig(EmuConfig::default());
    let len = 64 * 1024;
    let mut app: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    let dst = r.pool.alloc(len, 64).unwrap();
    let registration = r.pool.register(app.as_mut_ptr(), len).unwrap();
    // SAFETY: `app` and `dst` outlive the drained copy, and nothing touches them meanwhile.
    unsafe {
        r.chan
            .copy(dst.as_mut_ptr(), app.as_ptr(), len, 3, OpFlags::SUBMIT)
            .unwrap()
    };
    assert_eq!(drain(&mut r.chan, 1)[0].result, Ok(()));
    assert!(dst.to_vec() == app, "copied from registered memory");
    drop(registration);
    // SAFETY: refused, nothing built.
    let refused = unsafe {
        r.chan
            .copy(dst.as_mut_ptr(), app.as_ptr(), len, 4, OpFlags::SUBMIT)
    };
    assert!(
        matches!(refused, Err(SubmitError::Unmapped(_))),
        "{refused:?}"
    );
}

#[test]
fn copies_work_on_physical_addresses_from_pagemap() {
    // The hardware path without an IOMMU: IOVAs are physical addresses read from
    // /proc/self/pagemap, and the emulated device resolves them back as an IOMMU would.
    let config = DmaPoolConfig {
        iova_mode: IovaMode::Physical,
        ..DmaPoolConfig::default()
    };
    let pool = match DmaPool::new(config) {
        Ok(pool) => pool,
        Err(err) => {
            println!("physical addresses unavailable here ({err}); nothing to check");
            return;
        }
    };
    let mut r = rig_on(pool, EmuConfig::default(), IoatConfig::default());
    let mut rng = SplitMix(8);
    for len in [1, 4096, 3 * 4096 + 7, 300_000] {
        copy_and_check(&mut r, &mut rng, len);
    }
}

#[test]
fn a_reader_holding_an_ioat_channel_keeps_it_running_through_an_unregister() {
    let quiet: LogHook = Arc::new(|_, _| {});
    let engine = Engine::new(EngineConfig::with_cpus(1).log_hook(quiet)).unwrap();
    let pool = pool(IovaMode::Va);
    let probe = |name: &str| {
        let device = EmulatedDevice::new(EmuConfig::default(), device_memory(&pool)).unwrap();
        let ioat = IoatDevice::probe(
            name,
            device.registers(),
            Some(device.config_space()),
            pool.clone(),
            IoatConfig::default(),
        )
        .unwrap();
        (device, ioat)
    };
    let (_first_device, first) = probe("first");
    let (_second_device, second) = probe("second");
    let first_id = engine.register_device(first.spec()).unwrap();
    engine.register_device(second.spec()).unwrap();
    engine.get_client();
    let mut reader = engine.table_reader(0).unwrap();
    let held = reader.lookup(Capability::Memcpy).unwrap();
    assert_eq!(held.id().device, first_id);

    // The table moves off the device at once...
    engine.unregister_device(first_id).unwrap();
    assert_ne!(
        engine
            .table_entry(Capability::Memcpy, 0)
            .unwrap()
            .unwrap()
            .device,
        first_id
    );
    // ...but the channel the reader holds stays started and usable until it is quiescent.
    let backend = held
        .backend()
        .as_any()
        .downcast_ref::<IoatChannelBackend>()
        .unwrap();
    assert!(backend.is_started(), "not freed under a reader");
    reader.quiescent();
    engine.synchronize(Duration::from_secs(5)).unwrap();
    assert!(
        !first.channels()[0].is_started(),
        "freed once the reader let go"
    );
}

#[test]
fn compare_crc_copy_crc_and_dualcast_are_refused_unsupported_building_nothing() {
    use dmaplane::queue::QueueHandle;
    use dmaplane::ChannelBackend;
    let pool = pool(IovaMode::Va);
    let device = EmulatedDevice::new(EmuConfig::default(), device_memory(&pool)).unwrap();
    let ioat = IoatDevice::probe(
        "emu0",
        device.registers(),
        Some(device.config_space()),
        pool.clone(),
        IoatConfig::default(),
    )
    .unwrap();
    let extended = [
        Capability::Compare,
        Capability::Crc32c,
        Capability::CopyCrc,
        Capability::Dualcast,
    ];
    assert!(extended.iter().all(|&cap| !ioat.capabilities().has(cap)));
    let backend = &ioat.channels()[0];
    backend.allocate_resources().unwrap();
    let queue = backend.queue().unwrap();
    let mut handle: Box<dyn QueueHandle> = Arc::clone(&queue).attach(64).unwrap();
    // SAFETY: the only handle on a queue nobody else can reach.
    unsafe { handle.own() };
    let src = block(&pool, 4096, 1);
    let (dst, dst2) = (block(&pool, 4096, 2), block(&pool, 4096, 3));
    let free = handle.capacity();
    let before = queue.stats();
    // SAFETY: refused, so never queued.
    let refusals = unsafe {
        [
            handle.compare(src.as_ptr(), dst.as_ptr(), 4096, 1, OpFlags::SUBMIT),
            handle.crc32c(src.as_ptr(), 4096, 0, 2, OpFlags::SUBMIT),
            handle.copy_crc(dst.as_mut_ptr(), src.as_ptr(), 4096, 0, 3, OpFlags::SUBMIT),
            handle.dualcast(
                dst.as_mut_ptr(),
                dst2.as_mut_ptr(),
                src.as_ptr(),
                4096,
                4,
                OpFlags::SUBMIT,
            ),
        ]
    };
    assert_eq!(
        refusals.to_vec(),
        extended
            .map(|cap| Err(SubmitError::Unsupported(cap)))
            .to_vec()
    );
    assert_eq!(handle.capacity(), free, "no slot taken");
    assert_eq!(queue.in_flight(), 0);
    assert_eq!(
        queue.stats().doorbells,
        before.doorbells,
        "no doorbell rung"
    );
    // The ring is as usable as before.
    // SAFETY: the blocks outlive the operation, polled to completion below.
    unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 5, OpFlags::SUBMIT) }.unwrap();
    let mut out = [Completion::default(); 4];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = 0;
    while got == 0 && std::time::Instant::now() < deadline {
        got = handle.poll(&mut out);
    }
    assert_eq!(
        (got, out[0].user_data, out[0].result, out[0].value),
        (1, 5, Ok(()), 0)
    );
    assert_eq!(dst.to_vec(), src.to_vec());
    // SAFETY: the one operation was polled to completion.
    unsafe { handle.detach() };
    backend.free_resources();
}
