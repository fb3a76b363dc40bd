//! The DSA driver on the emulated DSA, through the seam (`ChannelBackend`, `ChannelQueue`,
//! `QueueHandle`) as the client drives it: bring-up through the registers, copies and fills
//! of every size with guard bytes, batches from 1 to the WQ's largest, a shared WQ that fills
//! and retries, out-of-order completions routed home, page faults resumed or failed, device
//! errors, a WQ disabled under the driver, and surprise removal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::dsa::spec::{cmd, reg, status};
use dmaplane::dsa::{DsaConfig, DsaDevice, DsaLayout, DsaQueueConfig, ABANDONED, UNRESOLVED_FAULT};
use dmaplane::emu::{DsaEmuConfig, DsaFault, EmuMode, EmulatedDsa, PoolMemory};
use dmaplane::mem::{DmaBlock, DmaPool, DmaPoolConfig, IovaMode};
use dmaplane::queue::{ChannelQueue, Health, QueueHandle};
use dmaplane::{ChannelBackend, Completion, OpError, OpFlags};

struct Rig {
    pool: DmaPool,
    emulator: Arc<EmulatedDsa>,
    device: DsaDevice,
}

fn rig_with(emu: DsaEmuConfig, layout: DsaLayout, queue: DsaQueueConfig, mode: IovaMode) -> Rig {
    let pool = DmaPool::new(DmaPoolConfig {
        iova_mode: mode,
        ..DmaPoolConfig::default()
    })
    .unwrap();
    // SAFETY: descriptors reach the device only through the handles' `unsafe` submit calls,
    // whose buffers these tests keep allocated and untouched until their completions.
    let memory = Arc::new(unsafe { PoolMemory::new(pool.clone()) });
    let emulator = EmulatedDsa::new(emu, memory).unwrap();
    let device = DsaDevice::probe(
        "dsa0",
        emulator.registers(),
        emulator.portals(),
        Some(emulator.config_space()),
        pool.clone(),
        DsaConfig {
            layout,
            queue,
            ..DsaConfig::default()
        },
    )
    .unwrap();
    Rig {
        pool,
        emulator,
        device,
    }
}

fn rig(mode: EmuMode) -> Rig {
    rig_with(
        DsaEmuConfig {
            mode,
            ..DsaEmuConfig::default()
        },
        DsaLayout {
            wqs: 2,
            ..DsaLayout::default()
        },
        DsaQueueConfig {
            stall_check_polls: 64,
            ..DsaQueueConfig::default()
        },
        IovaMode::Va,
    )
}

const MODES: [EmuMode; 2] = [EmuMode::Inline, EmuMode::Threaded];

/// Channel `wq` started, and an owned handle on it.
fn owned(rig: &Rig, wq: usize) -> (Arc<dyn ChannelQueue>, Box<dyn QueueHandle>) {
    let backend = &rig.device.channels()[wq];
    backend.allocate_resources().unwrap();
    let queue = backend.queue().unwrap();
    let mut handle = Arc::clone(&queue).attach(4096).unwrap();
    // SAFETY: the only handle on a queue nobody else can reach.
    unsafe { handle.own() };
    (queue, handle)
}

/// Polls until `count` completions came, or a deadline.
fn poll_all(handle: &mut dyn QueueHandle, count: usize) -> Vec<Completion> {
    let mut got = Vec::new();
    let mut out = [Completion::default(); 64];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < count {
        let n = handle.poll(&mut out);
        got.extend_from_slice(&out[..n]);
        if n == 0 {
            assert!(
                Instant::now() < deadline,
                "{} of {count}: {got:?}",
                got.len()
            );
            std::thread::yield_now();
        }
    }
    got
}

fn block(pool: &DmaPool, len: usize) -> DmaBlock {
    pool.alloc(len, 64).unwrap()
}

#[test]
fn bring_up_configures_every_wq_in_one_group_and_enables_the_device() {
    let rig = rig(EmuMode::Inline);
    let settings: Vec<_> = rig.device.channels().iter().map(|c| c.settings()).collect();
    assert_eq!(settings.len(), 2);
    for (i, wq) in settings.iter().enumerate() {
        assert_eq!(wq.index, i as u32);
        assert_eq!(wq.size, 64, "128 entries shared by two WQs");
        assert!(wq.dedicated);
        assert_eq!((wq.max_transfer, wq.max_batch), (1 << 31, 1024));
    }
    let regs = rig.emulator.registers();
    assert_eq!(regs.read32(reg::GENSTS) & 3, 1, "device enabled");
    // A WQ is enabled only while its channel runs.
    let backend = &rig.device.channels()[0];
    assert_eq!(backend.state(), dmaplane::dsa::WqState::Disabled);
    backend.allocate_resources().unwrap();
    assert_eq!(backend.state(), dmaplane::dsa::WqState::Enabled);
    backend.free_resources();
    assert_eq!(backend.state(), dmaplane::dsa::WqState::Disabled);
}

#[test]
fn a_device_without_bus_mastering_access_is_refused_clearly() {
    // Without configuration space the driver cannot turn bus mastering on: Enable Device
    // fails with 0x12, and the error says so.
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    // SAFETY: nothing is submitted.
    let memory = Arc::new(unsafe { PoolMemory::new(pool.clone()) });
    let emulator = EmulatedDsa::new(DsaEmuConfig::default(), memory).unwrap();
    let err = DsaDevice::probe(
        "dsa0",
        emulator.registers(),
        emulator.portals(),
        None,
        pool,
        DsaConfig::default(),
    )
    .err()
    .expect("no bus mastering");
    assert!(err.to_string().contains("bus mastering disabled"), "{err}");
}

#[test]
fn copies_and_fills_of_every_size_land_exactly_with_guards_intact() {
    for mode in MODES {
        // A 64 KiB largest transfer splits the big ones.
        let rig = rig_with(
            DsaEmuConfig {
                mode,
                ..DsaEmuConfig::default()
            },
            DsaLayout {
                wqs: 1,
                max_transfer_shift: 16,
                ..DsaLayout::default()
            },
            DsaQueueConfig::default(),
            IovaMode::Va,
        );
        let (_queue, mut handle) = owned(&rig, 0);
        const GUARD: usize = 64;
        for (i, len) in [1usize, 7, 64, 4095, 4096, 65_537, 1 << 20, 4 << 20]
            .into_iter()
            .enumerate()
        {
            let mut src = block(&rig.pool, len);
            let pattern: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
            src.write_at(0, &pattern).unwrap();
            let mut dst = block(&rig.pool, len + 2 * GUARD);
            dst.fill(0xEE);
            let mut filled = block(&rig.pool, len + 2 * GUARD);
            filled.fill(0xEE);
            let fill_pattern = 0x0102_0304_0506_0708u64;
            // SAFETY: the blocks outlive the operations, polled to completion below.
            unsafe {
                handle
                    .copy(
                        dst.as_mut_ptr().add(GUARD),
                        src.as_ptr(),
                        len,
                        2 * i as u64,
                        OpFlags::NONE,
                    )
                    .unwrap();
                handle
                    .fill(
                        filled.as_mut_ptr().add(GUARD),
                        fill_pattern,
                        len,
                        2 * i as u64 + 1,
                        OpFlags::SUBMIT,
                    )
                    .unwrap();
            }
            let done = poll_all(&mut *handle, 2);
            assert!(
                done.iter().all(|c| c.result.is_ok()),
                "{mode:?} {len}: {done:?}"
            );
            let copied = dst.to_vec();
            assert!(
                copied[..GUARD].iter().all(|&b| b == 0xEE),
                "{len}: front guard"
            );
            assert!(
                copied[GUARD + len..].iter().all(|&b| b == 0xEE),
                "{len}: back guard"
            );
            assert!(
                copied[GUARD..GUARD + len] == pattern[..],
                "{mode:?} {len}: copy"
            );
            let fill = filled.to_vec();
            assert!(fill[..GUARD].iter().all(|&b| b == 0xEE));
            assert!(fill[GUARD + len..].iter().all(|&b| b == 0xEE));
            for (k, &b) in fill[GUARD..GUARD + len].iter().enumerate() {
                assert_eq!(b, fill_pattern.to_le_bytes()[k % 8], "{len}: fill byte {k}");
            }
        }
    }
}

#[test]
fn batches_from_one_to_the_largest_go_out_as_one_portal_write_each() {
    for mode in MODES {
        let rig = rig_with(
            DsaEmuConfig {
                mode,
                ..DsaEmuConfig::default()
            },
            DsaLayout {
                wqs: 1,
                max_batch_shift: 5,
                ..DsaLayout::default()
            },
            DsaQueueConfig {
                ring_order: 8,
                ..DsaQueueConfig::default()
            },
            IovaMode::Va,
        );
        let (_queue, mut handle) = owned(&rig, 0);
        let src = {
            let mut b = block(&rig.pool, 32 * 64);
            b.write_at(0, &[0x5A; 32 * 64]).unwrap();
            b
        };
        let dst = block(&rig.pool, 32 * 64);
        for count in [1u32, 2, 3, 16, 31, 32] {
            let before = rig.emulator.stats(0);
            for k in 0..count {
                // SAFETY: as above.
                unsafe {
                    handle.copy(
                        dst.as_mut_ptr().add(64 * k as usize),
                        src.as_ptr().add(64 * k as usize),
                        64,
                        u64::from(k),
                        OpFlags::NONE,
                    )
                }
                .unwrap();
            }
            handle.submit();
            let done = poll_all(&mut *handle, count as usize);
            let mut ids: Vec<u64> = done.iter().map(|c| c.user_data).collect();
            ids.sort();
            assert_eq!(ids, (0..u64::from(count)).collect::<Vec<_>>());
            assert!(done.iter().all(|c| c.result.is_ok()));
            let after = rig.emulator.stats(0);
            // The ring may wrap inside a run, which splits it in two.
            let batches = after.batches - before.batches;
            if count == 1 {
                assert_eq!(batches, 0, "one descriptor goes as itself");
            } else {
                assert!((1..=2).contains(&batches), "{count}: {batches} batches");
            }
            assert!(after.descriptors - before.descriptors >= u64::from(count));
        }
        assert_eq!(dst.to_vec(), vec![0x5A; 32 * 64]);
    }
}

#[test]
fn a_shared_wq_that_fills_is_retried_until_it_takes_everything() {
    let rig = rig_with(
        DsaEmuConfig {
            mode: EmuMode::Threaded,
            ..DsaEmuConfig::default()
        },
        DsaLayout {
            wqs: 1,
            wq_size: 4,
            shared: true,
            max_batch_shift: 1,
            ..DsaLayout::default()
        },
        DsaQueueConfig {
            enqueue_attempts: 2,
            ..DsaQueueConfig::default()
        },
        IovaMode::Va,
    );
    let (_queue, mut handle) = owned(&rig, 0);
    rig.emulator.inject(DsaFault::Stall { wq: 0 }).unwrap();
    let mut src = block(&rig.pool, 64 * 64);
    let bytes: Vec<u8> = (0..64 * 64).map(|k| k as u8).collect();
    src.write_at(0, &bytes).unwrap();
    let dst = block(&rig.pool, 64 * 64);
    for k in 0..64usize {
        // SAFETY: as above.
        unsafe {
            handle.copy(
                dst.as_mut_ptr().add(64 * k),
                src.as_ptr().add(64 * k),
                64,
                k as u64,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
    }
    // Four entries hold at most four batches of two: the rest waits announced.
    let mut out = [Completion::default(); 64];
    assert_eq!(handle.poll(&mut out), 0);
    assert!(
        rig.emulator.stats(0).retries_answered > 0,
        "the WQ answered retry"
    );
    rig.emulator.inject(DsaFault::Unstall { wq: 0 }).unwrap();
    let done = poll_all(&mut *handle, 64);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert_eq!(dst.to_vec(), bytes);
}

#[test]
fn out_of_order_completions_reach_the_submitter_that_owns_them() {
    let rig = rig_with(
        DsaEmuConfig {
            mode: EmuMode::Threaded,
            engines: 4,
            ..DsaEmuConfig::default()
        },
        DsaLayout {
            wqs: 1,
            ..DsaLayout::default()
        },
        DsaQueueConfig::default(),
        IovaMode::Va,
    );
    let backend = &rig.device.channels()[0];
    backend.allocate_resources().unwrap();
    let queue = backend.queue().unwrap();
    let mut a = Arc::clone(&queue).attach(512).unwrap();
    let mut b = Arc::clone(&queue).attach(512).unwrap();
    rig.emulator.set_tracing(true);
    let src = {
        let mut s = block(&rig.pool, 4096);
        s.write_at(0, &[9; 4096]).unwrap();
        s
    };
    let dst = block(&rig.pool, 400 * 64);
    // Interleave the two submitters; each marks its operations with its own tag.
    for k in 0..200u64 {
        for (tag, handle) in [(1u64 << 32, &mut a), (2u64 << 32, &mut b)] {
            let at = 64 * (2 * k as usize + (tag >> 33) as usize);
            // SAFETY: as above.
            unsafe {
                handle.copy(
                    dst.as_mut_ptr().add(at),
                    src.as_ptr(),
                    64,
                    tag | k,
                    OpFlags::NONE,
                )
            }
            .unwrap();
        }
        if k % 7 == 6 {
            a.submit();
            b.submit();
        }
    }
    a.submit();
    b.submit();
    let got_a = poll_all(&mut *a, 200);
    let got_b = poll_all(&mut *b, 200);
    for (tag, got) in [(1u64, got_a), (2u64, got_b)] {
        let mut ids: Vec<u64> = got.iter().map(|c| c.user_data).collect();
        assert!(
            ids.iter().all(|id| id >> 32 == tag),
            "a completion went astray"
        );
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "each completes once");
    }
    let trace = rig.emulator.take_trace();
    // Submission order: portal writes in order, members of a batch in list order.
    let completion_order: Vec<(u64, u32)> = {
        let mut t = trace.clone();
        t.sort_by_key(|e| e.completed);
        t.iter()
            .map(|e| (e.submitted, e.member.unwrap_or(0)))
            .collect()
    };
    assert!(
        completion_order.windows(2).any(|w| w[0] > w[1]),
        "the device completed out of order"
    );
    assert_eq!(dst.to_vec(), vec![9; 400 * 64]);
    // SAFETY: every operation's completion was returned above.
    unsafe {
        a.detach();
        b.detach();
    }
    backend.free_resources();
}

#[test]
fn a_page_fault_is_resumed_with_virtual_addresses() {
    for mode in MODES {
        let rig = rig(mode);
        let (_queue, mut handle) = owned(&rig, 0);
        let len = 10_000;
        let mut src = block(&rig.pool, len);
        let bytes: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
        src.write_at(0, &bytes).unwrap();
        let dst = block(&rig.pool, len);
        rig.emulator
            .inject(DsaFault::PageFault {
                wq: 0,
                nth: 1,
                at_byte: 4321,
                write: true,
            })
            .unwrap();
        // SAFETY: as above.
        unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), len, 7, OpFlags::SUBMIT) }.unwrap();
        let done = poll_all(&mut *handle, 1);
        assert_eq!(done[0].result, Ok(()), "{mode:?}: resumed after the fault");
        assert_eq!(dst.to_vec(), bytes, "{mode:?}");
        // Two descriptors ran: the first stopped at the fault, the second did the rest.
        assert!(rig.emulator.stats(0).descriptors >= 2);
    }
}

#[test]
fn a_page_fault_behind_an_iommu_fails_with_its_cause() {
    let rig = rig_with(
        DsaEmuConfig::default(),
        DsaLayout {
            wqs: 1,
            ..DsaLayout::default()
        },
        DsaQueueConfig::default(),
        IovaMode::Scrambled { seed: 11 },
    );
    let (_queue, mut handle) = owned(&rig, 0);
    let mut src = block(&rig.pool, 8192);
    src.write_at(0, &[3; 8192]).unwrap();
    let dst = block(&rig.pool, 8192);
    rig.emulator
        .inject(DsaFault::PageFault {
            wq: 0,
            nth: 1,
            at_byte: 100,
            write: false,
        })
        .unwrap();
    // SAFETY: as above.
    unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 1, OpFlags::SUBMIT) }.unwrap();
    let done = poll_all(&mut *handle, 1);
    assert_eq!(done[0].result, Err(UNRESOLVED_FAULT));
    // The channel goes on.
    // SAFETY: as above.
    unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 8192, 2, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(poll_all(&mut *handle, 1)[0].result, Ok(()));
    assert_eq!(dst.to_vec(), vec![3; 8192]);
}

#[test]
fn a_device_error_fails_its_operation_alone_and_a_fence_after_it_is_abandoned() {
    for mode in MODES {
        let rig = rig(mode);
        let (_queue, mut handle) = owned(&rig, 0);
        let mut src = block(&rig.pool, 4 * 64);
        src.write_at(0, &[1; 256]).unwrap();
        let dst = block(&rig.pool, 4 * 64);
        // The whole batch is the first top-level descriptor: its first member fails.
        rig.emulator
            .inject(DsaFault::FailDescriptor {
                wq: 0,
                nth: 1,
                status: status::INVALID_OPCODE,
            })
            .unwrap();
        // SAFETY: as above.
        unsafe {
            handle
                .copy(dst.as_mut_ptr(), src.as_ptr(), 64, 0, OpFlags::NONE)
                .unwrap();
            handle
                .copy(
                    dst.as_mut_ptr().add(64),
                    src.as_ptr().add(64),
                    64,
                    1,
                    OpFlags::NONE,
                )
                .unwrap();
            handle
                .copy(
                    dst.as_mut_ptr().add(128),
                    src.as_ptr().add(128),
                    64,
                    2,
                    OpFlags::FENCE,
                )
                .unwrap();
            handle
                .copy(
                    dst.as_mut_ptr().add(192),
                    src.as_ptr().add(192),
                    64,
                    3,
                    OpFlags::SUBMIT,
                )
                .unwrap();
        }
        let mut done = poll_all(&mut *handle, 4);
        done.sort_by_key(|c| c.user_data);
        let results: Vec<_> = done.iter().map(|c| c.result).collect();
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert!(failed >= 1, "{mode:?}: {results:?}");
        // Whatever the device failed is reported with its cause; the fenced operation and the
        // one after it did not run once an earlier member failed.
        for result in &results {
            match result {
                Ok(()) => {}
                Err(OpError::Device { code, .. }) if *code == u32::from(status::INVALID_OPCODE) => {
                }
                Err(err) if *err == ABANDONED => {}
                other => panic!("{mode:?}: unexpected {other:?}"),
            }
        }
        assert_eq!(results[2], Err(ABANDONED), "{mode:?}: {results:?}");
        assert_eq!(results[3], Err(ABANDONED), "{mode:?}: {results:?}");
        // The channel carries on.
        // SAFETY: as above.
        unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 256, 9, OpFlags::SUBMIT) }.unwrap();
        assert_eq!(poll_all(&mut *handle, 1)[0].result, Ok(()));
        assert_eq!(dst.to_vec(), vec![1; 256]);
    }
}

#[test]
fn a_wq_disabled_under_the_driver_fails_what_it_holds_as_removed() {
    let rig = rig(EmuMode::Threaded);
    let (queue, mut handle) = owned(&rig, 0);
    rig.emulator.inject(DsaFault::Stall { wq: 0 }).unwrap();
    let src = block(&rig.pool, 4096);
    let dst = block(&rig.pool, 4096);
    for k in 0..8u64 {
        // SAFETY: as above.
        unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 512, k, OpFlags::SUBMIT) }.unwrap();
    }
    // An administrator aborts and disables the WQ (its descriptors are dropped, no records).
    let regs = rig.emulator.registers();
    regs.write32(reg::CMD, cmd::encode(cmd::ABORT_WQ, cmd::wq_operand(0)));
    while regs.read32(reg::CMDSTATUS) & (1 << 31) != 0 {
        std::thread::yield_now();
    }
    rig.emulator.inject(DsaFault::Unstall { wq: 0 }).unwrap();
    regs.write32(reg::CMD, cmd::encode(cmd::DISABLE_WQ, cmd::wq_operand(0)));
    while regs.read32(reg::CMDSTATUS) & (1 << 31) != 0 {
        std::thread::yield_now();
    }
    let done = poll_all(&mut *handle, 8);
    assert!(
        done.iter().all(|c| c.result == Err(OpError::DeviceRemoved)),
        "{done:?}"
    );
    assert_eq!(queue.health(), Health::Removed);
}

#[test]
fn surprise_removal_fails_outstanding_work_as_removed() {
    for mode in MODES {
        let rig = rig(mode);
        let (queue, mut handle) = owned(&rig, 0);
        if mode == EmuMode::Threaded {
            rig.emulator.inject(DsaFault::Stall { wq: 0 }).unwrap();
        }
        let src = block(&rig.pool, 4096);
        let dst = block(&rig.pool, 4096);
        // SAFETY: as above.
        unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 1, OpFlags::SUBMIT) }.unwrap();
        rig.emulator.inject(DsaFault::SurpriseRemoval).unwrap();
        // SAFETY: as above.
        unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 2, OpFlags::SUBMIT) }.unwrap();
        let done = poll_all(&mut *handle, 2);
        // Inline, the first finished inside its portal write; the second went nowhere.
        let removed = done
            .iter()
            .filter(|c| c.result == Err(OpError::DeviceRemoved))
            .count();
        assert!(removed >= 1, "{mode:?}: {done:?}");
        assert_eq!(queue.health(), Health::Removed);
        assert!(!rig.device.channels()[0].is_present());
    }
}

#[test]
fn compare_crc_copy_crc_and_dualcast_run_on_the_device_split_or_whole() {
    use dmaplane::queue::op::crc32c;
    for mode in MODES {
        // 4 KiB transfers: a 20,000-byte operation takes five descriptors; the CRC chains
        // through the records.
        let rig = rig_with(
            DsaEmuConfig {
                mode,
                ..DsaEmuConfig::default()
            },
            DsaLayout {
                wqs: 1,
                max_transfer_shift: 12,
                ..DsaLayout::default()
            },
            DsaQueueConfig::default(),
            IovaMode::Va,
        );
        let (_queue, mut handle) = owned(&rig, 0);
        let len = 20_000;
        let bytes: Vec<u8> = (0..len).map(|k| (k * 7 % 253) as u8).collect();
        let mut a = block(&rig.pool, len);
        a.write_at(0, &bytes).unwrap();
        let mut b = block(&rig.pool, len);
        b.write_at(0, &bytes).unwrap();
        let mut check = block(&rig.pool, 9);
        check.write_at(0, b"123456789").unwrap();
        let copy = block(&rig.pool, len + 64);
        let dual = block(&rig.pool, 2 * 4096 + len);
        // SAFETY: the blocks outlive the operations, polled to completion below.
        unsafe {
            handle
                .compare(a.as_ptr(), b.as_ptr(), len, 1, OpFlags::NONE)
                .unwrap();
            handle
                .crc32c(check.as_ptr(), 9, 0, 2, OpFlags::NONE)
                .unwrap();
            handle
                .crc32c(a.as_ptr(), len, 0x1234, 3, OpFlags::NONE)
                .unwrap();
            handle
                .copy_crc(copy.as_mut_ptr(), a.as_ptr(), len, 0, 4, OpFlags::NONE)
                .unwrap();
            handle
                .dualcast(
                    dual.as_mut_ptr(),
                    dual.as_mut_ptr().add(5 * 4096),
                    a.as_ptr(),
                    len.min(4096),
                    5,
                    OpFlags::SUBMIT,
                )
                .unwrap();
        }
        let mut done = poll_all(&mut *handle, 5);
        done.sort_by_key(|c| c.user_data);
        assert!(done.iter().all(|c| c.result.is_ok()), "{mode:?}: {done:?}");
        assert_eq!(done[0].mismatch_at(), None);
        assert_eq!(done[1].crc(), 0xE306_9283, "{mode:?}: the check value");
        assert_eq!(done[2].crc(), crc32c(0x1234, &bytes), "{mode:?}: chained");
        assert_eq!(done[3].crc(), crc32c(0, &bytes));
        assert_eq!(copy.to_vec()[..len], bytes[..]);
        let dual_bytes = dual.to_vec();
        let second = 5 * 4096;
        assert_eq!(dual_bytes[..4096], bytes[..4096]);
        assert_eq!(dual_bytes[second..second + 4096], bytes[..4096]);

        // A difference in the fourth piece is found at its offset.
        b.write_at(12_345, &[bytes[12_345] ^ 0xFF]).unwrap();
        // SAFETY: as above.
        unsafe { handle.compare(a.as_ptr(), b.as_ptr(), len, 6, OpFlags::SUBMIT) }.unwrap();
        assert_eq!(poll_all(&mut *handle, 1)[0].mismatch_at(), Some(12_345));

        // Destinations at different offsets in their pages are refused before anything is
        // built.
        // SAFETY: as above (refused, so nothing runs).
        let refused = unsafe {
            handle.dualcast(
                dual.as_mut_ptr(),
                dual.as_mut_ptr().add(4096 + 8 + len),
                a.as_ptr(),
                64,
                7,
                OpFlags::SUBMIT,
            )
        };
        assert!(
            matches!(refused, Err(dmaplane::SubmitError::InvalidArgument(_))),
            "{refused:?}"
        );
    }
}

#[test]
fn real_portals_need_the_instruction_and_a_mapped_bar() {
    use dmaplane::dsa::{DsaError, MappedPortals, SubmitInstructions};
    // The emulated device's BAR0 is a model, not a mapping: MOVDIR64B could not reach it.
    let rig = rig(EmuMode::Inline);
    let refused = MappedPortals::over_window(rig.emulator.registers(), 4096, true)
        .expect_err("a model is not a mapping");
    let DsaError::Unsupported(why) = refused else {
        panic!("{refused:?}");
    };
    if SubmitInstructions::detect().movdir64b {
        assert!(why.contains("not mapped"), "{why}");
    } else {
        // The CPU check comes first, and this CPU fails it.
        assert!(why.contains("MOVDIR64B"), "{why}");
    }
}
