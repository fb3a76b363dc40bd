//! The software engine driven through the seam alone (`ChannelBackend::queue`, `ChannelQueue`,
//! `QueueHandle`), as the client drives any backend: work runs only once announced, in order,
//! split at the largest transfer and completed once; faults injected into it surface as the
//! completions a device's would; removal fails what is left with "device removed".

use std::sync::Arc;

use dmaplane::mem::{DmaPool, DmaPoolConfig};
use dmaplane::queue::{ChannelQueue, Health, QueueHandle};
use dmaplane::soft::{SoftConfig, SoftDevice, SoftFault};
use dmaplane::{ChannelBackend, Completion, OpError, OpFlags, SubmitError};

mod common;
use common::block;

/// A started channel 0 of `device` and one owned handle on it.
fn owned_handle(device: &SoftDevice) -> (Arc<dyn ChannelQueue>, Box<dyn QueueHandle>) {
    let backend = &device.channels()[0];
    backend.allocate_resources().unwrap();
    let queue = backend.queue().expect("a started channel has a queue");
    let mut handle = Arc::clone(&queue).attach(64).unwrap();
    // SAFETY: the only handle on a queue nobody else can reach.
    unsafe { handle.own() };
    (queue, handle)
}

fn poll_all(handle: &mut Box<dyn QueueHandle>, count: usize) -> Vec<Completion> {
    let mut got = Vec::new();
    let mut out = [Completion::default(); 16];
    for _ in 0..1000 {
        if got.len() == count {
            break;
        }
        let n = handle.poll(&mut out);
        got.extend_from_slice(&out[..n]);
    }
    assert_eq!(got.len(), count, "{got:?}");
    got
}

#[test]
fn nothing_runs_before_the_doorbell_and_everything_after_it_in_order() {
    let device = SoftDevice::new("soft", SoftConfig::default()).unwrap();
    let (queue, mut handle) = owned_handle(&device);
    let src: Vec<u8> = (0..200u8).collect();
    let mut dst = vec![0u8; 200];
    // SAFETY: the buffers outlive the operations, polled to completion below.
    unsafe {
        handle
            .copy(dst.as_mut_ptr(), src.as_ptr(), 100, 1, OpFlags::NONE)
            .unwrap();
        handle
            .copy(
                dst.as_mut_ptr().add(100),
                src.as_ptr().add(100),
                100,
                2,
                OpFlags::NONE,
            )
            .unwrap();
    }
    let mut out = [Completion::default(); 4];
    assert_eq!(handle.poll(&mut out), 0, "not announced: not run");
    assert_eq!(dst, vec![0u8; 200]);
    handle.submit();
    assert_eq!(queue.in_flight(), 2, "announced, not yet run");
    let done = poll_all(&mut handle, 2);
    assert_eq!(
        done.iter()
            .map(|c| (c.user_data, c.result))
            .collect::<Vec<_>>(),
        vec![(1, Ok(())), (2, Ok(()))]
    );
    assert_eq!(dst, src);
    let stats = queue.stats();
    assert_eq!((stats.ops_ok, stats.bytes, stats.doorbells), (2, 200, 1));
}

#[test]
fn long_operations_split_at_the_largest_transfer_complete_once_with_the_fill_phase_kept() {
    let config = SoftConfig {
        max_transfer: 100,
        ..SoftConfig::default()
    };
    let device = SoftDevice::new("soft", config).unwrap();
    let (queue, mut handle) = owned_handle(&device);
    let mut dst = vec![0u8; 1003];
    let pattern = 0x0807_0605_0403_0201u64;
    // SAFETY: as above.
    unsafe { handle.fill(dst.as_mut_ptr(), pattern, 1003, 9, OpFlags::SUBMIT) }.unwrap();
    let done = poll_all(&mut handle, 1);
    assert_eq!((done[0].user_data, done[0].result), (9, Ok(())));
    let bytes = pattern.to_le_bytes();
    assert!(dst.iter().enumerate().all(|(i, &b)| b == bytes[i % 8]));
    assert_eq!(
        queue.stats().descriptors,
        11,
        "eleven pieces of at most 100 bytes"
    );
    // The control: the same fill with the largest transfer left at its default is one piece.
    let device = SoftDevice::new("soft", SoftConfig::default()).unwrap();
    let (queue, mut handle) = owned_handle(&device);
    // SAFETY: as above.
    unsafe { handle.fill(dst.as_mut_ptr(), pattern, 1003, 9, OpFlags::SUBMIT) }.unwrap();
    poll_all(&mut handle, 1);
    assert_eq!(queue.stats().descriptors, 1);
}

#[test]
fn an_injected_failure_fails_that_operation_alone_and_the_channel_goes_on() {
    let config = SoftConfig {
        max_transfer: 64,
        ..SoftConfig::default()
    };
    let device = SoftDevice::new("soft", config).unwrap();
    let (queue, mut handle) = owned_handle(&device);
    let src = vec![5u8; 4 * 128];
    let mut dst = vec![0u8; 4 * 128];
    // The third piece is the first piece of operation 1 (two pieces each): operation 1 fails
    // whole, even though its second piece would have run.
    device
        .inject(SoftFault::FailOp {
            channel: 0,
            nth: 3,
            code: 0x42,
        })
        .unwrap();
    for op in 0..4usize {
        // SAFETY: as above.
        unsafe {
            handle.copy(
                dst.as_mut_ptr().add(op * 128),
                src.as_ptr().add(op * 128),
                128,
                op as u64,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
    }
    let done = poll_all(&mut handle, 4);
    let injected = OpError::Device {
        code: 0x42,
        cause: "injected fault",
    };
    assert_eq!(
        done.iter()
            .map(|c| (c.user_data, c.result))
            .collect::<Vec<_>>(),
        vec![(0, Ok(())), (1, Err(injected)), (2, Ok(())), (3, Ok(()))]
    );
    assert!(
        dst[128..256].iter().all(|&b| b == 0),
        "the failed one moved nothing"
    );
    assert!(dst[..128].iter().chain(&dst[256..]).all(|&b| b == 5));
    assert_eq!(
        queue.health(),
        Health::Running,
        "no halt: the channel goes on"
    );
    assert_eq!(queue.stats().ops_failed, 1);
}

#[test]
fn a_stalled_channel_keeps_its_work_in_flight_until_unstalled() {
    let device = SoftDevice::new("soft", SoftConfig::default()).unwrap();
    let (queue, mut handle) = owned_handle(&device);
    device.inject(SoftFault::Stall { channel: 0 }).unwrap();
    let src = vec![3u8; 64];
    let mut dst = vec![0u8; 64];
    // SAFETY: as above.
    unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 1, OpFlags::SUBMIT) }.unwrap();
    let mut out = [Completion::default(); 2];
    for _ in 0..100 {
        assert_eq!(handle.poll(&mut out), 0);
    }
    assert_eq!(queue.in_flight(), 1);
    assert_eq!(dst, vec![0u8; 64]);
    device.inject(SoftFault::Unstall { channel: 0 }).unwrap();
    assert_eq!(poll_all(&mut handle, 1)[0].result, Ok(()));
    assert_eq!(dst, src);
}

#[test]
fn a_surprise_removal_fails_what_is_left_with_device_removed_and_refuses_more() {
    let device = SoftDevice::new("soft", SoftConfig::default()).unwrap();
    let backend = Arc::clone(&device.channels()[0]);
    let (queue, mut handle) = owned_handle(&device);
    let src = [3u8; 64];
    let mut dst = vec![0u8; 64];
    // SAFETY: as above.
    unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 1, OpFlags::SUBMIT) }.unwrap();
    assert!(backend.is_present());
    device.inject(SoftFault::SurpriseRemoval).unwrap();
    assert!(
        !backend.is_present(),
        "a monitor's presence check sees it gone"
    );
    let done = poll_all(&mut handle, 1);
    assert_eq!(done[0].result, Err(OpError::DeviceRemoved));
    assert_eq!(dst, vec![0u8; 64], "nothing ran after the removal");
    assert_eq!(queue.health(), Health::Removed);
    // SAFETY: as above (refused, so never queued).
    let refused = unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 2, OpFlags::SUBMIT) };
    assert_eq!(refused, Err(SubmitError::DeviceRemoved));
    assert_eq!(queue.stats().ops_removed, 1);
}

#[test]
fn with_a_pool_only_dma_memory_is_accepted_and_without_one_any_memory() {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let config = SoftConfig {
        pool: Some(pool.clone()),
        ..SoftConfig::default()
    };
    let device = SoftDevice::new("soft", config).unwrap();
    let (_queue, mut handle) = owned_handle(&device);
    let dma = block(&pool, 64, 1);
    let mut heap = vec![0u8; 64];
    // SAFETY: refused, so never queued.
    let refused = unsafe { handle.copy(heap.as_mut_ptr(), dma.as_ptr(), 64, 1, OpFlags::SUBMIT) };
    assert!(
        matches!(refused, Err(SubmitError::Unmapped(_))),
        "{refused:?}"
    );
    let device = SoftDevice::new("soft", SoftConfig::default()).unwrap();
    let (_queue, mut handle) = owned_handle(&device);
    // SAFETY: both buffers outlive the operation, polled below.
    unsafe { handle.copy(heap.as_mut_ptr(), dma.as_ptr(), 64, 1, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(poll_all(&mut handle, 1)[0].result, Ok(()));
    assert_eq!(heap, dma.to_vec());
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    for config in [
        SoftConfig {
            channels: 0,
            ..SoftConfig::default()
        },
        SoftConfig {
            ring_order: 3,
            ..SoftConfig::default()
        },
        SoftConfig {
            max_transfer: 0,
            ..SoftConfig::default()
        },
    ] {
        let err = SoftDevice::new("bad", config).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid software device"),
            "{err}"
        );
    }
    let device = SoftDevice::new("soft", SoftConfig::default()).unwrap();
    assert!(device.inject(SoftFault::Stall { channel: 1 }).is_err());
}

/// A device that copies with the CPU, and stops its channel's queue while carrying out the
/// first piece, as a removal whose drain time runs out meanwhile does.
#[derive(Debug, Default)]
struct StoppedMidway {
    queue: std::sync::OnceLock<Arc<dyn ChannelQueue>>,
    pieces: std::sync::atomic::AtomicU32,
}

impl dmaplane::soft::PieceExecutor for StoppedMidway {
    unsafe fn copy(
        &self,
        _channel: usize,
        dst: usize,
        src: usize,
        len: usize,
    ) -> Result<(), dmaplane::soft::PieceError> {
        // SAFETY: the caller's promise: both ranges valid and ours for the piece.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
        if self
            .pieces
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            == 0
        {
            self.queue.get().expect("set before any work").remove();
        }
        Ok(())
    }

    fn is_present(&self) -> bool {
        true
    }
}

#[test]
fn a_device_stopped_while_carrying_out_work_fails_the_rest_with_device_removed() {
    let executor = Arc::new(StoppedMidway::default());
    let device = SoftDevice::new(
        "soft",
        SoftConfig {
            fill: false,
            executor: Some(executor.clone()),
            ..SoftConfig::default()
        },
    )
    .unwrap();
    let (queue, mut handle) = owned_handle(&device);
    executor.queue.set(Arc::clone(&queue)).unwrap();
    let src = vec![7u8; 64];
    let mut dsts = vec![vec![0u8; 64]; 3];
    for (i, dst) in dsts.iter_mut().enumerate() {
        // SAFETY: the buffers outlive the operations, polled to completion below.
        unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 64, i as u64, OpFlags::NONE) }
            .unwrap();
    }
    handle.submit();
    let done = poll_all(&mut handle, 3);
    let results: Vec<_> = done.iter().map(|c| (c.user_data, c.result)).collect();
    assert_eq!(
        results,
        [
            (0, Ok(())),
            (1, Err(OpError::DeviceRemoved)),
            (2, Err(OpError::DeviceRemoved))
        ]
    );
    assert_eq!(
        executor.pieces.load(std::sync::atomic::Ordering::Acquire),
        1,
        "nothing ran after the stop"
    );
    assert_eq!(dsts[0], src);
    assert!(dsts[1..].iter().all(|d| d.iter().all(|&b| b == 0)));
    assert_eq!(queue.health(), Health::Removed);
}

/// A device whose slots carry at most `max_transfer` bytes, and an owned handle on it.
fn split_at(max_transfer: usize) -> (SoftDevice, Arc<dyn ChannelQueue>, Box<dyn QueueHandle>) {
    let config = SoftConfig {
        max_transfer,
        ..SoftConfig::default()
    };
    let device = SoftDevice::new("soft", config).unwrap();
    let (queue, handle) = owned_handle(&device);
    (device, queue, handle)
}

/// `len` bytes of a deterministic, varied pattern.
fn varied(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn compare_completes_with_zero_for_equal_buffers_and_one_plus_the_first_difference() {
    let (_device, queue, mut handle) = split_at(100);
    let a = varied(1000, 1);
    let mut b = a.clone();
    // SAFETY: the buffers outlive the operation, polled to completion below.
    unsafe { handle.compare(a.as_ptr(), b.as_ptr(), 1000, 1, OpFlags::SUBMIT) }.unwrap();
    let equal = poll_all(&mut handle, 1)[0];
    assert_eq!((equal.user_data, equal.result, equal.value), (1, Ok(()), 0));
    assert_eq!(equal.mismatch_at(), None);
    // Differences in the fifth and eighth pieces: the first in piece order wins, counted from
    // the start of the operation, not of its piece.
    b[437] ^= 0x10;
    b[777] ^= 0x01;
    // SAFETY: as above.
    unsafe { handle.compare(a.as_ptr(), b.as_ptr(), 1000, 2, OpFlags::SUBMIT) }.unwrap();
    let differ = poll_all(&mut handle, 1)[0];
    assert_eq!((differ.user_data, differ.result), (2, Ok(())));
    assert_eq!((differ.value, differ.mismatch_at()), (438, Some(437)));
    // A difference in the very first byte is 1, not 0.
    // SAFETY: as above.
    unsafe {
        handle.compare(
            a.as_ptr().add(437),
            b.as_ptr().add(437),
            10,
            3,
            OpFlags::SUBMIT,
        )
    }
    .unwrap();
    assert_eq!(poll_all(&mut handle, 1)[0].mismatch_at(), Some(0));
    assert_eq!(queue.stats().ops_ok, 3);
    assert_eq!(queue.stats().descriptors, 10 + 10 + 1);
}

#[test]
fn crc32c_gives_the_check_value_and_chains_across_pieces_and_operations() {
    use dmaplane::queue::op::crc32c;
    let check = b"123456789";
    for max_transfer in [1 << 20, 4, 1] {
        let (_device, _queue, mut handle) = split_at(max_transfer);
        // SAFETY: the buffer outlives the operations, polled to completion below.
        unsafe {
            handle
                .crc32c(check.as_ptr(), 9, 0, 1, OpFlags::NONE)
                .unwrap();
            // Continued from the CRC of "1234": the CRC of the whole.
            let first = crc32c(0, b"1234");
            handle
                .crc32c(check.as_ptr().add(4), 5, first, 2, OpFlags::SUBMIT)
                .unwrap();
        }
        let done = poll_all(&mut handle, 2);
        assert_eq!(
            done.iter()
                .map(|c| (c.user_data, c.result, c.crc()))
                .collect::<Vec<_>>(),
            vec![(1, Ok(()), 0xE306_9283), (2, Ok(()), 0xE306_9283)],
            "pieces of at most {max_transfer} bytes"
        );
        assert_eq!(
            done[0].value, 0xE306_9283,
            "the CRC is the value, zero-extended"
        );
    }
    // A larger buffer split in odd places agrees with the reference.
    let data = varied(10_007, 9);
    let (_device, queue, mut handle) = split_at(333);
    // SAFETY: as above.
    unsafe { handle.crc32c(data.as_ptr(), data.len(), 0x1234_5678, 7, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(
        poll_all(&mut handle, 1)[0].crc(),
        crc32c(0x1234_5678, &data)
    );
    assert_eq!(queue.stats().descriptors, 31);
}

#[test]
fn copy_crc_copies_the_data_and_reports_its_crc_touching_nothing_around_the_destination() {
    use dmaplane::queue::op::crc32c;
    let (_device, _queue, mut handle) = split_at(64);
    let src = varied(1000, 3);
    let mut dst = vec![0xEEu8; 1000 + 2 * 32];
    // SAFETY: the buffers outlive the operation, polled to completion below.
    unsafe {
        handle.copy_crc(
            dst.as_mut_ptr().add(32),
            src.as_ptr(),
            1000,
            0,
            4,
            OpFlags::SUBMIT,
        )
    }
    .unwrap();
    let done = poll_all(&mut handle, 1)[0];
    assert_eq!((done.user_data, done.result), (4, Ok(())));
    assert_eq!(done.crc(), crc32c(0, &src));
    assert_eq!(&dst[32..1032], &src[..]);
    assert!(
        dst[..32].iter().chain(&dst[1032..]).all(|&b| b == 0xEE),
        "guard bytes"
    );
    // The check value through copy with CRC too.
    let mut out = [0u8; 9];
    // SAFETY: as above.
    unsafe {
        handle.copy_crc(
            out.as_mut_ptr(),
            b"123456789".as_ptr(),
            9,
            0,
            5,
            OpFlags::SUBMIT,
        )
    }
    .unwrap();
    assert_eq!(poll_all(&mut handle, 1)[0].crc(), 0xE306_9283);
    assert_eq!(&out, b"123456789");
}

#[test]
fn dualcast_writes_both_destinations_and_nothing_around_them_and_refuses_overlap() {
    let (_device, queue, mut handle) = split_at(100);
    let src = varied(700, 5);
    let mut one = vec![0xAAu8; 700 + 16];
    let mut two = vec![0xBBu8; 700 + 16];
    // SAFETY: the buffers outlive the operation, polled to completion below.
    unsafe {
        handle.dualcast(
            one.as_mut_ptr().add(8),
            two.as_mut_ptr().add(8),
            src.as_ptr(),
            700,
            6,
            OpFlags::SUBMIT,
        )
    }
    .unwrap();
    let done = poll_all(&mut handle, 1)[0];
    assert_eq!((done.user_data, done.result, done.value), (6, Ok(()), 0));
    assert_eq!((&one[8..708], &two[8..708]), (&src[..], &src[..]));
    assert!(one[..8].iter().chain(&one[708..]).all(|&b| b == 0xAA));
    assert!(two[..8].iter().chain(&two[708..]).all(|&b| b == 0xBB));
    // Destinations that overlap each other, or the source, are refused; nothing is built.
    let free = handle.capacity();
    let mut both = vec![0u8; 300];
    // SAFETY: refused, so never queued.
    let refusals = unsafe {
        [
            handle.dualcast(
                both.as_mut_ptr(),
                both.as_mut_ptr().add(99),
                src.as_ptr(),
                100,
                7,
                OpFlags::SUBMIT,
            ),
            handle.dualcast(
                both.as_mut_ptr(),
                both.as_mut_ptr().add(100),
                both.as_ptr().add(150),
                100,
                8,
                OpFlags::SUBMIT,
            ),
        ]
    };
    for refused in refusals {
        assert_eq!(
            refused,
            Err(SubmitError::InvalidArgument("dualcast buffers overlap"))
        );
    }
    assert_eq!(handle.capacity(), free);
    // Adjacent is not overlapping.
    // SAFETY: as above.
    unsafe {
        handle.dualcast(
            both.as_mut_ptr(),
            both.as_mut_ptr().add(100),
            src.as_ptr(),
            100,
            9,
            OpFlags::SUBMIT,
        )
    }
    .unwrap();
    assert_eq!(poll_all(&mut handle, 1)[0].result, Ok(()));
    assert_eq!((&both[..100], &both[100..200]), (&src[..100], &src[..100]));
    assert_eq!(queue.stats().ops_ok, 2);
}

#[test]
fn a_device_without_the_extended_operations_refuses_each_as_unsupported_and_goes_on() {
    use dmaplane::Capability;
    let config = SoftConfig {
        extended_ops: false,
        ..SoftConfig::default()
    };
    let device = SoftDevice::new("soft", config).unwrap();
    assert!(!device.capabilities().has(Capability::Crc32c));
    assert!(SoftDevice::new("soft", SoftConfig::default())
        .unwrap()
        .capabilities()
        .has(Capability::Dualcast));
    let (queue, mut handle) = owned_handle(&device);
    let src = vec![1u8; 64];
    let mut dst = vec![0u8; 64];
    let mut dst2 = vec![0u8; 64];
    let free = handle.capacity();
    // SAFETY: refused, so never queued.
    let refusals = unsafe {
        [
            handle.compare(src.as_ptr(), dst.as_ptr(), 64, 1, OpFlags::SUBMIT),
            handle.crc32c(src.as_ptr(), 64, 0, 2, OpFlags::SUBMIT),
            handle.copy_crc(dst.as_mut_ptr(), src.as_ptr(), 64, 0, 3, OpFlags::SUBMIT),
            handle.dualcast(
                dst.as_mut_ptr(),
                dst2.as_mut_ptr(),
                src.as_ptr(),
                64,
                4,
                OpFlags::SUBMIT,
            ),
        ]
    };
    assert_eq!(
        refusals.to_vec(),
        [
            Capability::Compare,
            Capability::Crc32c,
            Capability::CopyCrc,
            Capability::Dualcast
        ]
        .map(|cap| Err(SubmitError::Unsupported(cap)))
        .to_vec()
    );
    assert_eq!(
        SubmitError::Unsupported(Capability::CopyCrc).to_string(),
        "not supported by this device: copy_crc"
    );
    assert_eq!(
        (handle.capacity(), queue.in_flight()),
        (free, 0),
        "nothing built"
    );
    // SAFETY: the buffers outlive the operation, polled below.
    unsafe { handle.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 5, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(poll_all(&mut handle, 1)[0].result, Ok(()));
    assert_eq!(dst, src);
}

#[test]
fn an_injected_fault_fails_a_split_crc_whole_with_value_zero_and_the_next_one_is_right() {
    use dmaplane::queue::op::crc32c;
    let (device, _queue, mut handle) = split_at(4);
    device
        .inject(SoftFault::FailOp {
            channel: 0,
            nth: 2,
            code: 7,
        })
        .unwrap();
    let data = b"123456789";
    // SAFETY: the buffer outlives the operations, polled to completion below.
    unsafe {
        handle
            .crc32c(data.as_ptr(), 9, 0, 1, OpFlags::NONE)
            .unwrap();
        handle
            .crc32c(data.as_ptr(), 9, 0, 2, OpFlags::SUBMIT)
            .unwrap();
    }
    let done = poll_all(&mut handle, 2);
    let injected = OpError::Device {
        code: 7,
        cause: "injected fault",
    };
    assert_eq!(
        done.iter()
            .map(|c| (c.user_data, c.result, c.value))
            .collect::<Vec<_>>(),
        vec![
            (1, Err(injected), 0),
            (2, Ok(()), u64::from(crc32c(0, data)))
        ]
    );
}

#[test]
fn with_a_pool_every_buffer_of_the_extended_operations_must_be_dma_memory() {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let config = SoftConfig {
        pool: Some(pool.clone()),
        ..SoftConfig::default()
    };
    let device = SoftDevice::new("soft", config).unwrap();
    let (_queue, mut handle) = owned_handle(&device);
    let (a, b, c) = (
        block(&pool, 64, 1),
        block(&pool, 64, 1),
        block(&pool, 64, 2),
    );
    let heap = [0u8; 64];
    // SAFETY: refused, so never queued.
    let refusals = unsafe {
        [
            handle.compare(a.as_ptr(), heap.as_ptr(), 64, 1, OpFlags::SUBMIT),
            handle.crc32c(heap.as_ptr(), 64, 0, 2, OpFlags::SUBMIT),
            handle.dualcast(
                b.as_mut_ptr(),
                c.as_mut_ptr(),
                heap.as_ptr(),
                64,
                3,
                OpFlags::SUBMIT,
            ),
        ]
    };
    for refused in refusals {
        assert!(
            matches!(refused, Err(SubmitError::Unmapped(_))),
            "{refused:?}"
        );
    }
    // SAFETY: the blocks outlive the operation, polled below.
    unsafe { handle.compare(a.as_ptr(), b.as_ptr(), 64, 4, OpFlags::SUBMIT) }.unwrap();
    assert_eq!(poll_all(&mut handle, 1)[0].mismatch_at(), None);
}

/// With an executor (the `edu` backend's device, which only copies), the extended operations
/// are neither advertised nor accepted, even with `extended_ops` left on.
#[test]
fn a_device_with_an_executor_only_copies_and_refuses_the_rest_as_unsupported() {
    use dmaplane::Capability;
    let executor = Arc::new(StoppedMidway::default());
    let device = SoftDevice::new(
        "soft",
        SoftConfig {
            fill: false,
            executor: Some(executor.clone()),
            ..SoftConfig::default()
        },
    )
    .unwrap();
    assert_eq!(device.capabilities(), dmaplane::CapMask::MEMCPY);
    let (queue, mut handle) = owned_handle(&device);
    let src = [7u8; 64];
    let mut dst = vec![0u8; 64];
    let mut dst2 = vec![0u8; 64];
    // SAFETY: refused, so never queued.
    let refusals = unsafe {
        [
            handle.fill(dst.as_mut_ptr(), 0, 64, 1, OpFlags::SUBMIT),
            handle.compare(src.as_ptr(), dst.as_ptr(), 64, 2, OpFlags::SUBMIT),
            handle.crc32c(src.as_ptr(), 64, 0, 3, OpFlags::SUBMIT),
            handle.copy_crc(dst.as_mut_ptr(), src.as_ptr(), 64, 0, 4, OpFlags::SUBMIT),
            handle.dualcast(
                dst.as_mut_ptr(),
                dst2.as_mut_ptr(),
                src.as_ptr(),
                64,
                5,
                OpFlags::SUBMIT,
            ),
        ]
    };
    assert_eq!(
        refusals.to_vec(),
        [
            Capability::Fill,
            Capability::Compare,
            Capability::Crc32c,
            Capability::CopyCrc,
            Capability::Dualcast
        ]
        .map(|cap| Err(SubmitError::Unsupported(cap)))
        .to_vec()
    );
    assert_eq!(queue.in_flight(), 0);
}
