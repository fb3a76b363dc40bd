//! The per-CPU client: owned and shared channels, completion routing, backpressure, fences,
//! migration while clients submit, and the ledger of hundreds of thousands of operations from
//! more threads than cores. Every test body runs twice, through the same seam: on the IOAT
//! driver over the emulated IOAT device (`ioat::`), and on the software engine (`soft::`).

use std::time::{Duration, Instant};

use dmaplane::datapath::{Client, ClientConfig, ClientError};
use dmaplane::emu::EmuMode;
use dmaplane::mem::{DmaBlock, DmaPool, DmaPoolConfig};
use dmaplane::{Capability, DeviceId, Engine, EngineConfig};
use dmaplane::{Completion, OpFlags, SubmitError};

mod common;
use common::{block, collect, quiet, Backend, Executed, SplitMix, TestDevice};

struct Rig {
    backend: Backend,
    engine: Engine,
    pool: DmaPool,
    devices: Vec<(TestDevice, DeviceId)>,
}

/// An engine with `cpus` CPUs and the memcpy and fill tables, for devices of `backend`.
fn rig(cpus: usize, backend: Backend) -> Rig {
    Rig {
        backend,
        engine: Engine::new(EngineConfig::with_cpus(cpus).log_hook(quiet())).unwrap(),
        pool: DmaPool::new(DmaPoolConfig::default()).unwrap(),
        devices: Vec::new(),
    }
}

impl Rig {
    fn add_device(&mut self, channels: usize, mode: EmuMode, ring_order: u32) -> DeviceId {
        let name = format!("dev{}", self.devices.len());
        let device = TestDevice::new(self.backend, &self.pool, &name, channels, mode, ring_order);
        let id = self.engine.register_device(device.spec()).unwrap();
        self.devices.push((device, id));
        id
    }

    fn client(&self, cpu: usize) -> Client {
        Client::new(&self.engine, Some(cpu), ClientConfig::default()).unwrap()
    }
}

fn a_client_alone_on_its_channel_owns_it_and_moves_data(backend: Backend) {
    let mut r = rig(1, backend);
    r.add_device(1, EmuMode::Inline, 8);
    let mut client = r.client(0);
    let (channel, owned) = client.channel(Capability::Memcpy).unwrap();
    assert!(owned, "the only CPU owns its channel");
    let src = block(&r.pool, 10_000, 1);
    let dst = block(&r.pool, 10_000, 2);
    let filled = block(&r.pool, 777, 3);
    // SAFETY: the blocks outlive the collected operations.
    unsafe {
        client
            .copy(dst.as_mut_ptr(), src.as_ptr(), 10_000, 1, OpFlags::NONE)
            .unwrap();
        client
            .fill(
                filled.as_mut_ptr(),
                0x0102_0304_0506_0708,
                777,
                2,
                OpFlags::SUBMIT,
            )
            .unwrap();
    }
    let done = collect(&mut client, 2);
    assert_eq!(
        done.iter()
            .map(|c| (c.user_data, c.result))
            .collect::<Vec<_>>(),
        vec![(1, Ok(())), (2, Ok(()))]
    );
    assert_eq!(dst.to_vec(), src.to_vec());
    let pattern = 0x0102_0304_0506_0708u64.to_le_bytes();
    assert!(filled
        .to_vec()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern[i % 8]));
    let stats = client.stats();
    assert_eq!((stats.owned_ops, stats.shared_ops), (2, 0));
    // The engine's view of the channel: both operations and every byte they moved.
    let counts = r.engine.channel_stats(channel).unwrap();
    assert_eq!(
        (counts.ops_ok, counts.ops_failed, counts.bytes),
        (2, 0, 10_777)
    );
}

fn clients_sharing_a_channel_get_their_own_completions_whoever_polls(backend: Backend) {
    let mut r = rig(2, backend);
    r.add_device(1, EmuMode::Inline, 8);
    let mut a = r.client(0);
    let mut b = r.client(1);
    assert_eq!(
        a.channel(Capability::Memcpy).unwrap(),
        b.channel(Capability::Memcpy).unwrap()
    );
    assert!(
        !a.channel(Capability::Memcpy).unwrap().1,
        "two CPUs share the one channel"
    );
    let src = block(&r.pool, 4096, 5);
    let dsts: Vec<DmaBlock> = (0..6).map(|i| block(&r.pool, 4096, i)).collect();
    for (i, dst) in dsts.iter().enumerate() {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        // SAFETY: the blocks outlive the collected operations.
        unsafe {
            client.copy(
                dst.as_mut_ptr(),
                src.as_ptr(),
                4096,
                i as u64,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
    }
    // `b` polls first: it retires everything and routes `a`'s completions to `a`.
    let from_b = collect(&mut b, 3);
    let from_a = collect(&mut a, 3);
    let ids = |v: &[Completion]| v.iter().map(|c| c.user_data).collect::<Vec<_>>();
    assert_eq!(ids(&from_a), vec![0, 2, 4]);
    assert_eq!(ids(&from_b), vec![1, 3, 5]);
    assert!(dsts.iter().all(|d| d.to_vec() == src.to_vec()));
    assert_eq!(a.stats().shared_ops + b.stats().shared_ops, 6);
}

fn a_full_completion_ring_or_descriptor_ring_refuses_distinctly_and_loses_nothing(
    backend: Backend,
) {
    let mut r = rig(1, backend);
    r.add_device(1, EmuMode::Threaded, 4); // 16 slots: 15 usable
    let mut small = Client::new(
        &r.engine,
        Some(0),
        ClientConfig {
            completion_ring: 8,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let src = block(&r.pool, 64, 1);
    let dst = block(&r.pool, 64, 2);
    assert_eq!(small.capacity(Capability::Memcpy), 8);
    for i in 0..8 {
        // SAFETY: the blocks outlive the collected operations.
        unsafe { small.copy(dst.as_mut_ptr(), src.as_ptr(), 64, i, OpFlags::NONE) }.unwrap();
    }
    // SAFETY: as above (refused, so never queued).
    let refused = unsafe { small.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 8, OpFlags::NONE) };
    assert_eq!(
        refused,
        Err(ClientError::CompletionRingFull { in_flight: 8 })
    );
    assert_eq!(small.capacity(Capability::Memcpy), 0);
    let done = collect(&mut small, 8);
    assert_eq!(
        done.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    drop(small);

    let mut client = r.client(0);
    let mut accepted = 0u64;
    let refusal = loop {
        // SAFETY: as above.
        match unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 64, accepted, OpFlags::NONE) } {
            Ok(()) => accepted += 1,
            Err(err) => break err,
        }
    };
    assert_eq!(accepted, 15, "one slot of sixteen stays empty");
    assert_eq!(
        refusal,
        ClientError::Submit(SubmitError::RingFull { needed: 1, free: 0 })
    );
    let done = collect(&mut client, 15);
    assert_eq!(
        done.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        (0..15).collect::<Vec<_>>()
    );
    assert_eq!(client.in_flight(), 0);
}

fn an_owned_channel_does_no_atomic_read_modify_write_per_operation(backend: Backend) {
    let Some(_) = dmaplane::datapath::debug_rmw_count() else {
        println!("release build: read-modify-writes are not counted");
        return;
    };
    /// Read-modify-writes this thread performs for 2,000 copies with batched doorbells.
    fn run(client: &mut Client, pool: &DmaPool) -> u64 {
        let src = block(pool, 256, 1);
        let dst = block(pool, 256, 2);
        let before = dmaplane::datapath::debug_rmw_count().unwrap();
        for i in 0..2_000u64 {
            let flags = if i % 16 == 15 {
                OpFlags::SUBMIT
            } else {
                OpFlags::NONE
            };
            // SAFETY: the blocks outlive the collected operations.
            unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 256, i, flags) }.unwrap();
            if i % 64 == 63 {
                collect(client, 64);
            }
        }
        dmaplane::datapath::debug_rmw_count().unwrap() - before
    }
    let mut r = rig(2, backend);
    r.add_device(2, EmuMode::Threaded, 10);
    let mut owner = r.client(0);
    assert!(owner.channel(Capability::Memcpy).unwrap().1);
    assert_eq!(
        run(&mut owner, &r.pool),
        0,
        "owned: no read-modify-write at all"
    );
    drop(owner);

    // The control: with one channel for two CPUs the same loop pays for sharing.
    let mut r = rig(2, backend);
    r.add_device(1, EmuMode::Threaded, 10);
    let mut sharer = r.client(0);
    let _other = r.client(1);
    assert!(!sharer.channel(Capability::Memcpy).unwrap().1);
    assert!(
        run(&mut sharer, &r.pool) >= 2_000,
        "shared: at least one per operation"
    );
}

const SLOT_BYTES: usize = 64 * 1024;
const GUARD: u8 = 0xEE;

/// What an operation in flight must leave in its destination slot.
#[derive(Clone, Copy)]
enum Expect {
    Copy { src_offset: usize, len: usize },
    Fill { pattern: u64, len: usize },
}

/// Sizes mostly small, some page-sized, a few up to a slot.
fn random_len(rng: &mut SplitMix) -> usize {
    match rng.below(20) {
        0 => 1 + rng.below(SLOT_BYTES - 1),
        1..=5 => 1 + rng.below(4096),
        _ => 1 + rng.below(256),
    }
}

/// What a driven client did.
#[derive(Debug, Default)]
struct Ledger {
    completed: u64,
    refusals: u64,
}

/// Submits `ops` random copies and fills (random flags) through `client`, keeping up to
/// `depth` in flight, checks that each completes exactly once, successfully, with its data in
/// place and nothing past it touched. Gives up with a panic at `deadline`.
fn drive(
    client: &mut Client,
    pool: &DmaPool,
    thread: u64,
    ops: u64,
    deadline: Instant,
    progress: &std::sync::atomic::AtomicU64,
) -> Ledger {
    let depth = 24usize;
    let mut rng = SplitMix(0x5eed ^ thread);
    let mut src = pool.alloc(SLOT_BYTES, 64).unwrap();
    let pattern: Vec<u8> = (0..SLOT_BYTES)
        .map(|i| (i as u8) ^ (thread as u8).wrapping_mul(17))
        .collect();
    src.write_at(0, &pattern).unwrap();
    let mut slots: Vec<DmaBlock> = (0..depth)
        .map(|_| {
            let mut b = pool.alloc(SLOT_BYTES, 64).unwrap();
            b.fill(GUARD);
            b
        })
        .collect();
    let mut free: Vec<usize> = (0..depth).collect();
    let mut expect: Vec<Option<(u64, Expect)>> = vec![None; depth];
    let mut seen = vec![false; ops as usize];
    let mut ledger = Ledger::default();
    let mut scratch = vec![0u8; SLOT_BYTES + 1];
    let mut batch = [Completion::default(); 32];
    let mut next = 0u64;
    while ledger.completed < ops {
        assert!(
            Instant::now() < deadline,
            "thread {thread}: {} of {ops} completed, {} in flight, {client:?}",
            ledger.completed,
            client.in_flight()
        );
        if next < ops {
            if let Some(&slot) = free.last() {
                let len = random_len(&mut rng);
                let mut flags = OpFlags::NONE;
                if rng.below(10) == 0 {
                    flags = flags | OpFlags::FENCE;
                }
                if rng.below(4) == 0 {
                    flags = flags | OpFlags::SUBMIT;
                }
                let user_data = thread << 48 | next << 8 | slot as u64;
                let dst = slots[slot].as_mut_ptr();
                let op = if rng.below(5) == 0 {
                    Expect::Fill {
                        pattern: rng.next(),
                        len,
                    }
                } else {
                    Expect::Copy {
                        src_offset: rng.below(SLOT_BYTES - len + 1),
                        len,
                    }
                };
                // SAFETY: the slot and the source stay allocated and untouched until the
                // completion is polled below.
                let result = unsafe {
                    match op {
                        Expect::Copy { src_offset, len } => {
                            client.copy(dst, src.as_ptr().add(src_offset), len, user_data, flags)
                        }
                        Expect::Fill { pattern, len } => {
                            client.fill(dst, pattern, len, user_data, flags)
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        free.pop();
                        expect[slot] = Some((next, op));
                        next += 1;
                    }
                    Err(
                        ClientError::Migrating
                        | ClientError::NoChannel(_)
                        | ClientError::CompletionRingFull { .. }
                        | ClientError::Submit(SubmitError::RingFull { .. }),
                    ) => {
                        ledger.refusals += 1;
                        client.submit();
                    }
                    Err(err) => panic!("thread {thread}: refused: {err}"),
                }
            }
        }
        let n = client.poll(&mut batch);
        for c in &batch[..n] {
            assert_eq!(c.result, Ok(()), "thread {thread}: {c:?}");
            assert_eq!(c.user_data >> 48, thread, "routed to the wrong client");
            let seq = (c.user_data >> 8) & 0xff_ffff_ffff;
            let slot = (c.user_data & 0xff) as usize;
            assert!(
                !seen[seq as usize],
                "thread {thread}: op {seq} completed twice"
            );
            seen[seq as usize] = true;
            let (expected_seq, op) = expect[slot].take().expect("a completion for an idle slot");
            assert_eq!(expected_seq, seq);
            let len = match op {
                Expect::Copy { len, .. } | Expect::Fill { len, .. } => len,
            };
            let checked = (len + 1).min(SLOT_BYTES);
            slots[slot].read_at(0, &mut scratch[..checked]).unwrap();
            match op {
                Expect::Copy { src_offset, len } => {
                    assert!(
                        scratch[..len] == pattern[src_offset..src_offset + len],
                        "thread {thread}: op {seq}: copy of {len} bytes wrong"
                    );
                }
                Expect::Fill { pattern, len } => {
                    let bytes = pattern.to_le_bytes();
                    assert!(
                        scratch[..len]
                            .iter()
                            .enumerate()
                            .all(|(i, &b)| b == bytes[i % 8]),
                        "thread {thread}: op {seq}: fill of {len} bytes wrong"
                    );
                }
            }
            if len < SLOT_BYTES {
                assert_eq!(
                    scratch[len], GUARD,
                    "thread {thread}: op {seq} wrote past its end"
                );
            }
            slots[slot].write_at(0, &vec![GUARD; len]).unwrap();
            free.push(slot);
            ledger.completed += 1;
            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
    assert!(seen.iter().all(|&s| s));
    ledger
}

/// `threads` clients, one per CPU, share the `channels` of one threaded device.
fn ledger(backend: Backend, threads: u64, channels: usize, ops: u64) {
    let mut r = rig(threads as usize, backend);
    r.add_device(channels, EmuMode::Threaded, 6); // 64 slots: fewer than the depth wants
    let engine = r.engine.clone();
    let progress = std::sync::atomic::AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(240);
    let ledgers: Vec<Ledger> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (engine, pool, progress) = (&engine, &r.pool, &progress);
                s.spawn(move || {
                    let mut client =
                        Client::new(engine, Some(t as usize), ClientConfig::default()).unwrap();
                    let (_, owned) = client.channel(Capability::Memcpy).unwrap();
                    assert!(!owned, "{threads} CPUs share {channels} channel(s)");
                    drive(&mut client, pool, t, ops, deadline, progress)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: u64 = ledgers.iter().map(|l| l.completed).sum();
    assert_eq!(total, threads * ops);
    println!(
        "{total} operations, {} refusals retried",
        ledgers.iter().map(|l| l.refusals).sum::<u64>()
    );
}

fn every_operation_of_six_threads_on_two_shared_channels_completes_once_with_its_data(
    backend: Backend,
) {
    ledger(backend, 6, 2, 40_000);
}

fn every_operation_of_four_threads_on_one_shared_channel_completes_once_with_its_data(
    backend: Backend,
) {
    ledger(backend, 4, 1, 40_000);
}

/// Waits until `progress` has moved by `by` since the call (at most 60 s).
fn wait_progress(progress: &std::sync::atomic::AtomicU64, by: u64) {
    let start = progress.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < start + by {
        assert!(Instant::now() < deadline, "clients stopped making progress");
        std::thread::yield_now();
    }
}

fn clients_follow_rebalances_without_losing_or_repeating_an_operation(backend: Backend) {
    let threads = 4u64;
    let mut r = rig(threads as usize, backend);
    let first = r.add_device(1, EmuMode::Threaded, 6);
    let engine = r.engine.clone();
    let progress = std::sync::atomic::AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(240);
    let first_device = &r.devices[0].0;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (engine, pool, progress) = (&engine, &r.pool, &progress);
                // Thread 0 leaves early: a client going away is one of the moves.
                let ops = if t == 0 { 15_000 } else { 60_000 };
                s.spawn(move || {
                    let mut client =
                        Client::new(engine, Some(t as usize), ClientConfig::default()).unwrap();
                    let ledger = drive(&mut client, pool, t, ops, deadline, progress);
                    (ledger, client.stats())
                })
            })
            .collect();

        // A second device arrives: the four CPUs spread over three channels.
        wait_progress(&progress, 5_000);
        let second = TestDevice::new(backend, &r.pool, "late", 2, EmuMode::Threaded, 6);
        engine.register_device(second.spec()).unwrap();
        // A CPU goes offline and comes back: its client finds no channel meanwhile.
        wait_progress(&progress, 5_000);
        engine.set_cpu_online(3, false).unwrap();
        wait_progress(&progress, 5_000);
        engine.set_cpu_online(3, true).unwrap();
        // The first device leaves while its channel has operations in flight; it is released
        // once they have drained, while the clients carry on elsewhere.
        wait_progress(&progress, 5_000);
        engine.unregister_device(first).unwrap();
        let released_by = Instant::now() + Duration::from_secs(60);
        while first_device.started().iter().any(|&started| started) {
            assert!(
                Instant::now() < released_by,
                "the removed device's channel was never released"
            );
            engine.reclaim();
            std::thread::yield_now();
        }
        let still_running = handles.iter().filter(|h| !h.is_finished()).count();
        println!("first device released while {still_running} client(s) still ran");
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (t, (ledger, stats)) in results.iter().enumerate() {
            println!("client {t}: {ledger:?} {stats:?}");
            assert_eq!(stats.submitted, stats.completed);
            assert!(stats.migrations >= 2, "client {t} followed the table");
        }
        drop(second);
    });
    engine.synchronize(Duration::from_secs(5)).unwrap();
}

/// Checks the device's record: every piece of work of `fenced_len` bytes (the fenced
/// operations) starts only after every piece before it has finished, and on IOAT follows a
/// descriptor carrying the fence bit. Returns how many fenced operations it found.
fn check_fences(trace: &[Executed], fenced_len: impl Fn(u64) -> bool) -> usize {
    let mut found = 0;
    for (i, event) in trace.iter().enumerate() {
        if !fenced_len(event.bytes) {
            continue;
        }
        found += 1;
        assert!(i > 0, "a fenced operation ran first");
        assert_ne!(
            trace[i - 1].fence,
            Some(false),
            "the descriptor before a fenced operation carries no fence: {:?}",
            &trace[i.saturating_sub(3)..=i]
        );
        let latest_finish = trace[..i].iter().map(|e| e.finish).max().unwrap();
        assert!(
            event.start > latest_finish,
            "a fenced operation started before earlier ones finished"
        );
    }
    found
}

fn a_fenced_operation_starts_only_after_everything_before_it_finished(backend: Backend) {
    // Owned (the fence rides on the previous unannounced descriptor, or on a null one after
    // a doorbell) and shared (always a null descriptor of its own, from either client).
    for shared in [false, true] {
        let mut r = rig(2, backend);
        r.add_device(if shared { 1 } else { 2 }, EmuMode::Threaded, 10);
        let device = &r.devices[0].0;
        let mut a = r.client(0);
        let mut b = r.client(1);
        assert_eq!(a.channel(Capability::Memcpy).unwrap().1, !shared);
        device.enable_trace(true);
        let src = block(&r.pool, 8192, 1);
        let dsts: Vec<DmaBlock> = (0..4).map(|i| block(&r.pool, 8192, i)).collect();
        let mut fenced = 0;
        for i in 0..400u64 {
            let client = if shared && i % 3 == 2 { &mut b } else { &mut a };
            let fence = i % 7 == 3;
            // Fenced operations have lengths no other operation has.
            let len = if fence {
                4097 + (i % 5) as usize
            } else {
                64 + (i % 64) as usize
            };
            let flags = match (fence, i % 4 == 0) {
                (true, true) => OpFlags::FENCE | OpFlags::SUBMIT,
                (true, false) => OpFlags::FENCE,
                (false, true) => OpFlags::SUBMIT,
                (false, false) => OpFlags::NONE,
            };
            let dst = &dsts[(i % 4) as usize];
            // SAFETY: the blocks outlive the operations, drained below.
            unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), len, i, flags) }.unwrap();
            fenced += u64::from(fence);
            // Drain now and then, but never right before a fenced operation: with nothing
            // outstanding, an owner rightly leaves the fence out.
            if i % 50 == 49 && (i + 1) % 7 != 3 {
                a.drain(Duration::from_secs(10));
                b.drain(Duration::from_secs(10));
            }
        }
        a.drain(Duration::from_secs(10));
        b.drain(Duration::from_secs(10));
        assert_eq!(a.in_flight() + b.in_flight(), 0);
        let trace = device.take_trace();
        let found = check_fences(&trace, |bytes| (4097..4102).contains(&bytes));
        assert_eq!(
            found as u64, fenced,
            "every fenced operation ran (shared: {shared})"
        );
    }
}

fn owned_buffers_come_back_with_their_completion_or_their_refusal(backend: Backend) {
    use dmaplane::datapath::{BufferClient, Buffers};
    let mut r = rig(1, backend);
    r.add_device(1, EmuMode::Threaded, 8);
    let mut buffers = BufferClient::new(r.client(0));
    // Too long for its buffer: refused, the buffers handed back untouched.
    let small = block(&r.pool, 100, 1);
    let refused = buffers
        .fill(small, 0, 101, 7, OpFlags::SUBMIT)
        .expect_err("longer than the buffer");
    assert_eq!(
        refused.error,
        ClientError::BufferTooSmall {
            len: 101,
            capacity: 100
        }
    );
    let Buffers::Fill { dst: small } = refused.buffers else {
        panic!("a fill's buffers")
    };
    assert_eq!(small.to_vec(), block(&r.pool, 100, 1).to_vec());
    // Memory that is not DMA memory is refused too, buffers back.
    let other_pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let foreign = other_pool.alloc(64, 64).unwrap();
    let refused = buffers
        .fill(foreign, 0, 64, 8, OpFlags::SUBMIT)
        .unwrap_err();
    assert!(matches!(
        refused.error,
        ClientError::Submit(SubmitError::Unmapped(_))
    ));

    let mut done = Vec::new();
    for i in 0..100u64 {
        let src = block(&r.pool, 1000, i as u8);
        let dst = block(&r.pool, 1000, 0);
        buffers.copy(dst, src, 1000, i, OpFlags::SUBMIT).unwrap();
        if i % 10 == 9 {
            buffers.poll(&mut done, 64);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.len() < 100 {
        assert!(Instant::now() < deadline);
        buffers.poll(&mut done, 64);
    }
    for (i, finished) in done.iter().enumerate() {
        assert_eq!(finished.user_data, i as u64);
        assert_eq!(finished.result, Ok(()));
        let Buffers::Copy { dst, src } = &finished.buffers else {
            panic!("a copy's buffers")
        };
        assert_eq!(dst.to_vec(), src.to_vec());
    }
    assert_eq!(buffers.in_flight(), 0);
}

fn pinned_workers_each_drive_their_own_client_and_stop_cleanly(backend: Backend) {
    use dmaplane::datapath::{Step, WorkerError, Workers};
    let cpus = 2usize;
    let mut r = rig(cpus, backend);
    r.add_device(2, EmuMode::Threaded, 8);
    let pool = r.pool.clone();
    assert_eq!(
        Workers::spawn_clients(
            &r.engine,
            &[cpus],
            ClientConfig::default(),
            |_| (),
            |_| Step::Done
        )
        .err(),
        Some(WorkerError::UnknownCpu(cpus))
    );
    let workers = Workers::spawn_clients(
        &r.engine,
        &(0..cpus).collect::<Vec<_>>(),
        ClientConfig::default(),
        move |cpu| (block(&pool, 512, cpu as u8), block(&pool, 512, 0), 0u64),
        |w| {
            let (src, dst, copied) = &mut w.state;
            let mut batch = [Completion::default(); 8];
            *copied += w.client.poll(&mut batch) as u64;
            if *copied >= 1_000 {
                return Step::Done;
            }
            if w.client.in_flight() == 0 {
                // SAFETY: the blocks live in the worker's state until it is joined, and one
                // copy at a time is in flight.
                unsafe {
                    w.client
                        .copy(dst.as_mut_ptr(), src.as_ptr(), 512, 0, OpFlags::SUBMIT)
                }
                .unwrap();
            }
            Step::Busy
        },
    )
    .unwrap();
    let states = workers.join().unwrap();
    assert_eq!(states.len(), cpus);
    for (cpu, w) in &states {
        assert_eq!(w.client.cpu(), *cpu);
        assert_eq!(w.state.2, 1_000);
        assert_eq!(w.state.1.to_vec(), w.state.0.to_vec());
    }
}

fn a_removed_devices_channel_lives_until_the_operations_on_it_drain_while_the_client_moves_on(
    backend: Backend,
) {
    let mut r = rig(1, backend);
    let first = r.add_device(1, EmuMode::Threaded, 8);
    r.add_device(1, EmuMode::Threaded, 8);
    let mut client = r.client(0);
    assert_eq!(client.channel(Capability::Memcpy).unwrap().0.device, first);
    let old_device = &r.devices[0].0;
    old_device.stall(0, true);
    let src = block(&r.pool, 4096, 1);
    let dsts: Vec<DmaBlock> = (0..4).map(|i| block(&r.pool, 4096, i)).collect();
    for (i, dst) in dsts.iter().take(3).enumerate() {
        // SAFETY: the blocks outlive the collected operations.
        unsafe {
            client.copy(
                dst.as_mut_ptr(),
                src.as_ptr(),
                4096,
                i as u64,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
    }

    r.engine.unregister_device(first).unwrap();
    // The client moves on: its next operation goes to the other device once the table has
    // settled, while the three stay in flight on the stalled one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: as above.
        match unsafe { client.copy(dsts[3].as_mut_ptr(), src.as_ptr(), 4096, 3, OpFlags::SUBMIT) } {
            Ok(()) => break,
            Err(ClientError::Migrating) => {
                assert!(Instant::now() < deadline, "never settled");
                client.poll(&mut []);
            }
            Err(err) => panic!("{err}"),
        }
    }
    assert_ne!(client.channel(Capability::Memcpy).unwrap().0.device, first);
    let moved = collect(&mut client, 1);
    assert_eq!(moved[0].user_data, 3);
    // Every table reference to the old channel is gone (the client keeps reporting quiescent
    // states), yet the channel stays started: the client holds it for its three operations.
    r.engine.synchronize(Duration::from_secs(5)).unwrap();
    assert!(old_device.started()[0]);
    assert_eq!(client.in_flight(), 3);

    old_device.stall(0, false);
    let drained = collect(&mut client, 3);
    assert_eq!(
        drained.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(dsts.iter().all(|d| d.to_vec() == src.to_vec()));
    assert!(!old_device.started()[0], "released once drained");
}

fn a_cpu_has_one_client_at_a_time(backend: Backend) {
    let mut r = rig(1, backend);
    r.add_device(1, EmuMode::Inline, 8);
    let first = r.client(0);
    let second = Client::new(&r.engine, Some(0), ClientConfig::default());
    assert_eq!(
        second.err(),
        Some(ClientError::Engine(dmaplane::EngineError::CpuHasClient(0)))
    );
    drop(first);
    let mut again = r.client(0);
    assert!(
        again.channel(Capability::Memcpy).unwrap().1,
        "owned once alone again"
    );
}

fn a_channel_whose_routes_are_all_taken_refuses_with_too_many_clients(backend: Backend) {
    use dmaplane::queue::MAX_CLIENTS_PER_CHANNEL;
    let cpus = MAX_CLIENTS_PER_CHANNEL + 1;
    let mut r = rig(cpus, backend);
    let id = r.add_device(1, EmuMode::Inline, 6);
    let mut clients: Vec<Client> = (0..cpus).map(|cpu| r.client(cpu)).collect();
    let src = block(&r.pool, 64, 1);
    let dst = block(&r.pool, 64, 2);
    let mut refused = Vec::new();
    for client in &mut clients {
        // SAFETY: the blocks outlive the collected operations.
        match unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 64, 0, OpFlags::SUBMIT) } {
            Ok(()) => assert_eq!(collect(client, 1)[0].result, Ok(())),
            Err(err) => refused.push((client.cpu(), err)),
        }
    }
    // One channel has MAX_CLIENTS_PER_CHANNEL routes: the last client gets none, and is told
    // so rather than "no channel".
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        matches!(refused[0].1, ClientError::TooManyClients(channel) if channel.device == id),
        "{refused:?}"
    );
}

on_every_backend!(
    a_client_alone_on_its_channel_owns_it_and_moves_data,
    clients_sharing_a_channel_get_their_own_completions_whoever_polls,
    a_full_completion_ring_or_descriptor_ring_refuses_distinctly_and_loses_nothing,
    an_owned_channel_does_no_atomic_read_modify_write_per_operation,
    every_operation_of_six_threads_on_two_shared_channels_completes_once_with_its_data,
    every_operation_of_four_threads_on_one_shared_channel_completes_once_with_its_data,
    clients_follow_rebalances_without_losing_or_repeating_an_operation,
    a_fenced_operation_starts_only_after_everything_before_it_finished,
    owned_buffers_come_back_with_their_completion_or_their_refusal,
    pinned_workers_each_drive_their_own_client_and_stop_cleanly,
    a_removed_devices_channel_lives_until_the_operations_on_it_drain_while_the_client_moves_on,
    a_cpu_has_one_client_at_a_time,
    a_channel_whose_routes_are_all_taken_refuses_with_too_many_clients,
);

/// The extended operations through the table, on a device that offers them (the software
/// engine): each goes to the channel the table gives the CPU for its capability, and comes
/// back with its value, on an owned channel and on channels two CPUs share.
#[test]
fn compare_crc_copy_crc_and_dualcast_go_through_the_table_to_a_device_that_offers_them() {
    use dmaplane::queue::op::crc32c;
    for (cpus, channels) in [(1, 1), (2, 1)] {
        let mut r = rig(cpus, Backend::Soft);
        r.add_device(channels, EmuMode::Inline, 8);
        let mut client = r.client(0);
        for cap in [
            Capability::Compare,
            Capability::Crc32c,
            Capability::CopyCrc,
            Capability::Dualcast,
        ] {
            assert_eq!(
                client.channel(cap).map(|(id, _)| id),
                client.channel(Capability::Memcpy).map(|(id, _)| id),
                "{cap}: the device's one channel"
            );
        }
        let src = block(&r.pool, 5000, 1);
        let other = block(&r.pool, 5000, 1);
        let (dst1, dst2) = (block(&r.pool, 5000, 2), block(&r.pool, 5000, 3));
        let mut differing = block(&r.pool, 5000, 1);
        differing.write_at(4321, &[!src.to_vec()[4321]]).unwrap();
        // SAFETY: the blocks outlive the collected operations.
        unsafe {
            client
                .compare(src.as_ptr(), other.as_ptr(), 5000, 1, OpFlags::NONE)
                .unwrap();
            client
                .compare(src.as_ptr(), differing.as_ptr(), 5000, 2, OpFlags::NONE)
                .unwrap();
            client
                .crc32c(src.as_ptr(), 5000, 0, 3, OpFlags::NONE)
                .unwrap();
            client
                .copy_crc(dst1.as_mut_ptr(), src.as_ptr(), 5000, 0, 4, OpFlags::NONE)
                .unwrap();
            client.submit();
        }
        let mut done = collect(&mut client, 4);
        done.sort_by_key(|c| c.user_data);
        let expected_crc = u64::from(crc32c(0, &src.to_vec()));
        assert_eq!(
            done.iter()
                .map(|c| (c.user_data, c.result, c.value))
                .collect::<Vec<_>>(),
            vec![
                (1, Ok(()), 0),
                (2, Ok(()), 4322),
                (3, Ok(()), expected_crc),
                (4, Ok(()), expected_crc)
            ],
            "{cpus} cpu(s)"
        );
        assert_eq!(dst1.to_vec(), src.to_vec());
        let (dst1, dst2) = (block(&r.pool, 5000, 4), dst2);
        // SAFETY: as above.
        unsafe {
            client.dualcast(
                dst1.as_mut_ptr(),
                dst2.as_mut_ptr(),
                src.as_ptr(),
                5000,
                5,
                OpFlags::SUBMIT,
            )
        }
        .unwrap();
        assert_eq!(collect(&mut client, 1)[0].result, Ok(()));
        assert_eq!((dst1.to_vec(), dst2.to_vec()), (src.to_vec(), src.to_vec()));
        assert_eq!(client.stats().cpu_ops, 0, "all on the device");
    }
}

/// A device without the extended operations (IOAT): the table has no channel for them, so the
/// client refuses them with `NoChannel(cap)`, or, with the CPU fallback, carries them out on
/// its own CPU; copies still go to the device either way.
#[test]
fn without_a_channel_for_an_operation_the_client_refuses_it_or_falls_back_on_the_cpu() {
    let mut r = rig(1, Backend::Ioat);
    r.add_device(1, EmuMode::Inline, 8);
    for cap in [
        Capability::Compare,
        Capability::Crc32c,
        Capability::CopyCrc,
        Capability::Dualcast,
    ] {
        assert_eq!(r.engine.table_entry(cap, 0).unwrap(), None, "{cap}");
    }
    let src = block(&r.pool, 64, 1);
    let (dst1, dst2) = (block(&r.pool, 64, 2), block(&r.pool, 64, 3));
    {
        let mut client = r.client(0);
        assert_eq!(client.channel(Capability::Crc32c), None);
        // SAFETY: refused, so never queued.
        let refused = unsafe {
            [
                client.compare(src.as_ptr(), dst1.as_ptr(), 64, 1, OpFlags::SUBMIT),
                client.crc32c(src.as_ptr(), 64, 0, 2, OpFlags::SUBMIT),
                client.copy_crc(dst1.as_mut_ptr(), src.as_ptr(), 64, 0, 3, OpFlags::SUBMIT),
                client.dualcast(
                    dst1.as_mut_ptr(),
                    dst2.as_mut_ptr(),
                    src.as_ptr(),
                    64,
                    4,
                    OpFlags::SUBMIT,
                ),
            ]
        };
        assert_eq!(
            refused.to_vec(),
            [
                Capability::Compare,
                Capability::Crc32c,
                Capability::CopyCrc,
                Capability::Dualcast
            ]
            .map(|cap| Err(ClientError::NoChannel(cap)))
            .to_vec()
        );
        assert_eq!(client.in_flight(), 0);
    }
    let config = ClientConfig {
        cpu_fallback: true,
        ..ClientConfig::default()
    };
    let mut client = Client::new(&r.engine, Some(0), config).unwrap();
    // SAFETY: the blocks outlive the collected operations.
    unsafe {
        client
            .crc32c(src.as_ptr(), 64, 0, 1, OpFlags::SUBMIT)
            .unwrap();
        client
            .copy(dst2.as_mut_ptr(), src.as_ptr(), 64, 2, OpFlags::SUBMIT)
            .unwrap();
    }
    let mut done = collect(&mut client, 2);
    done.sort_by_key(|c| c.user_data);
    let crc = dmaplane::queue::op::crc32c(0, &src.to_vec());
    assert_eq!(
        done.iter()
            .map(|c| (c.user_data, c.result, c.value))
            .collect::<Vec<_>>(),
        vec![(1, Ok(()), u64::from(crc)), (2, Ok(()), 0)]
    );
    let stats = client.stats();
    assert_eq!(
        (stats.cpu_ops, stats.owned_ops),
        (1, 1),
        "the CRC on the CPU, the copy on the device"
    );
}

/// The safe client's extended operations hand their buffers back with the value, and a
/// refusal hands them back at once.
#[test]
fn owned_buffers_of_the_extended_operations_come_back_with_the_value() {
    use dmaplane::datapath::{BufferClient, Buffers};
    let mut r = rig(1, Backend::Soft);
    r.add_device(1, EmuMode::Inline, 8);
    let mut buffers = BufferClient::new(r.client(0));
    let src = block(&r.pool, 256, 1);
    let expected = dmaplane::queue::op::crc32c(0, &src.to_vec());
    let dst = block(&r.pool, 256, 2);
    buffers
        .copy_crc(dst, src, 256, 0, 10, OpFlags::SUBMIT)
        .map_err(|r| r.error)
        .unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        buffers.poll(&mut done, 8);
    }
    assert_eq!((done[0].user_data, done[0].crc()), (10, expected));
    let Some(Buffers::CopyCrc { dst, src }) = done.pop().map(|f| f.buffers) else {
        panic!("the copy with CRC's buffers")
    };
    assert_eq!(dst.to_vec(), src.to_vec());
    let refused = buffers
        .compare(dst, src, 257, 11, OpFlags::SUBMIT)
        .unwrap_err();
    assert_eq!(
        refused.error,
        ClientError::BufferTooSmall {
            len: 257,
            capacity: 256
        }
    );
    assert!(matches!(refused.buffers, Buffers::Compare { .. }));
    let Buffers::Compare { a, b } = refused.buffers else {
        unreachable!()
    };
    buffers
        .compare(a, b, 256, 12, OpFlags::SUBMIT)
        .map_err(|r| r.error)
        .unwrap();
    while done.is_empty() {
        buffers.poll(&mut done, 8);
    }
    assert_eq!((done[0].user_data, done[0].mismatch_at()), (12, None));
}
