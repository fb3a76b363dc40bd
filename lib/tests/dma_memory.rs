//! DMA memory from the outside: allocation, zeroing, reuse and accounting, translation in
//! the three IOVA modes (both directions), registration of application memory, bad input,
//! and the hugepage and physical-address paths, whichever of their branches this machine
//! allows (each prints which one ran).

use std::collections::HashSet;
use std::os::unix::process::CommandExt as _;
use std::sync::Mutex;

use dmaplane::mem::{Backing, BackingChoice, DmaPool, DmaPoolConfig, IovaMode, MemError};

const PAGE: usize = 4096;
const MIB2: usize = 2 << 20;

/// Serialises the tests that use hugepages, so that one does not take the hugepages
/// another has just seen free in /proc/meminfo.
static HUGEPAGES: Mutex<()> = Mutex::new(());

fn pool(iova_mode: IovaMode) -> DmaPool {
    DmaPool::new(DmaPoolConfig {
        iova_mode,
        backing: BackingChoice::SmallPages,
        region_size: MIB2,
    })
    .unwrap()
}

fn scrambled() -> DmaPool {
    pool(IovaMode::Scrambled { seed: 0x5eed_f00d })
}

/// (hugepage size, hugepages free and unreserved) from /proc/meminfo.
fn meminfo_hugepages() -> (Option<usize>, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    let size = field("Hugepagesize:").map(|kib| kib as usize * 1024);
    let free = field("HugePages_Free:").unwrap_or(0);
    let rsvd = field("HugePages_Rsvd:").unwrap_or(0);
    (size, free.saturating_sub(rsvd))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn blocks_are_aligned_as_asked() {
    let pool = pool(IovaMode::Va);
    let mut blocks = Vec::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for len in [1, 63, 100, 4096, 5000] {
            let block = pool.alloc(len, align).unwrap();
            assert_eq!(block.va() % align, 0, "len {len} align {align}");
            assert_eq!(block.len(), len);
            blocks.push(block);
        }
    }
    // Blocks never overlap.
    let mut ranges: Vec<(usize, usize)> = blocks.iter().map(|b| (b.va(), b.len())).collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
    }

    // 2 MiB alignment from 4 KiB pages: a region of its own, over-mapped to find the boundary.
    let regions = pool.region_count();
    let big = pool.alloc(PAGE, MIB2).unwrap();
    assert_eq!(big.va() % MIB2, 0);
    assert_eq!(pool.region_count(), regions + 1);
    drop(big);
    assert_eq!(pool.region_count(), regions);
}

#[test]
fn memory_is_zeroed_also_when_reused() {
    let pool = pool(IovaMode::Va);
    let mut block = pool.alloc(3000, 64).unwrap();
    assert!(block.to_vec().iter().all(|&b| b == 0));
    block.fill(0xff);
    let va = block.va();
    drop(block);
    // First fit hands the same bytes out again, and they must not leak the old contents.
    let again = pool.alloc(3000, 64).unwrap();
    assert_eq!(again.va(), va);
    assert!(again.to_vec().iter().all(|&b| b == 0));
}

#[test]
fn byte_access_round_trips_and_checks_bounds() {
    let pool = pool(IovaMode::Va);
    let mut block = pool.alloc(256, 8).unwrap();
    block.write_at(10, b"hello").unwrap();
    let mut out = [0u8; 7];
    block.read_at(9, &mut out).unwrap();
    assert_eq!(&out, b"\0hello\0");
    block.write_at(251, &[7; 5]).unwrap();
    assert_eq!(block.to_vec()[251..], [7; 5]);
    let oob = MemError::OutOfBounds {
        offset: 252,
        len: 5,
        block_len: 256,
    };
    assert_eq!(block.write_at(252, &[7; 5]), Err(oob.clone()));
    assert_eq!(block.read_at(252, &mut [0; 5]), Err(oob));
    assert!(matches!(
        block.read_at(usize::MAX, &mut [0; 2]),
        Err(MemError::OutOfBounds { .. })
    ));
    // The raw pointers and the address agree.
    assert_eq!(block.as_ptr() as usize, block.va());
    assert_eq!(block.as_mut_ptr() as usize, block.va());
}

#[test]
fn va_mode_translates_to_itself_up_to_the_end_of_the_block() {
    let pool = pool(IovaMode::Va);
    let block = pool.alloc(10_000, PAGE).unwrap();
    let va = block.va();
    assert_eq!(block.iova(), va as u64);
    assert_eq!(block.translate(0, 10_000).unwrap(), (va as u64, 10_000));
    assert_eq!(
        block.translate(1234, 10_000 - 1234).unwrap(),
        (va as u64 + 1234, 8766)
    );
    assert_eq!(pool.translate(va, 10_000).unwrap(), (va as u64, 10_000));
    assert_eq!(pool.translate(va + 77, 100).unwrap(), (va as u64 + 77, 100));
    assert_eq!(pool.iova_to_va(va as u64 + 5, 10).unwrap(), (va + 5, 10));
    // The block cannot be translated past its end.
    assert!(matches!(
        block.translate(9_000, 1_001),
        Err(MemError::OutOfBounds { .. })
    ));
}

#[test]
fn scrambled_mode_breaks_contiguity_at_every_page() {
    let pool = scrambled();
    let pages = 8;
    let block = pool.alloc(pages * PAGE, PAGE).unwrap();
    let va = block.va();
    let mut iovas = HashSet::new();
    for page in 0..pages {
        let at = va + page * PAGE;
        let (iova, len) = pool.translate(at, pages * PAGE).unwrap();
        assert_eq!(len, PAGE, "page {page} runs into the next one");
        assert_ne!(iova, 0);
        assert_eq!(iova % PAGE as u64, 0);
        assert!(iova < 1 << 48);
        assert_eq!(block.translate(page * PAGE, PAGE).unwrap(), (iova, PAGE));
        // Mid-page, the run ends at the page boundary.
        assert_eq!(
            pool.translate(at + 100, PAGE).unwrap(),
            (iova + 100, PAGE - 100)
        );
        // The device's view: the same page, no further.
        assert_eq!(pool.iova_to_va(iova, 2 * PAGE).unwrap(), (at, PAGE));
        // Neither neighbouring IOVA page leads anywhere.
        assert!(pool.iova_to_va(iova + PAGE as u64, 1).is_err());
        assert!(pool.iova_to_va(iova - 1, 1).is_err());
        iovas.insert(iova);
    }
    assert_eq!(iovas.len(), pages);
    // Not simply a shifted copy of the address space.
    assert_ne!(block.iova(), va as u64);
}

#[test]
fn translate_and_iova_to_va_are_inverse() {
    for mode in [IovaMode::Va, IovaMode::Scrambled { seed: 3 }] {
        let pool = pool(mode);
        let blocks: Vec<_> = [1, 700, 5000, 3 * PAGE + 1, 200_000]
            .into_iter()
            .map(|len| pool.alloc(len, 64).unwrap())
            .collect();
        for block in &blocks {
            for offset in (0..block.len()).step_by(997) {
                let rest = block.len() - offset;
                let (iova, len) = pool.translate(block.va() + offset, rest).unwrap();
                assert!(len >= 1 && len <= rest);
                assert_eq!(block.translate(offset, rest).unwrap(), (iova, len));
                assert_eq!(
                    pool.iova_to_va(iova, len).unwrap(),
                    (block.va() + offset, len),
                    "{mode:?}"
                );
            }
        }
    }
}

#[test]
fn iova_to_va_refuses_what_an_iommu_would() {
    for mode in [IovaMode::Va, IovaMode::Scrambled { seed: 9 }] {
        let pool = pool(mode);
        let block = pool.alloc(100, 64).unwrap();
        assert_eq!(
            pool.iova_to_va(0, 1),
            Err(MemError::IovaNotMapped { iova: 0 })
        );
        let stack = 0u8;
        let outside = &stack as *const u8 as u64;
        assert_eq!(
            pool.iova_to_va(outside, 1),
            Err(MemError::IovaNotMapped { iova: outside })
        );
        assert_eq!(
            pool.iova_to_va(u64::MAX, 1),
            Err(MemError::IovaNotMapped { iova: u64::MAX })
        );
        assert!(pool.iova_to_va(block.iova(), 1).is_ok());
    }
}

#[test]
fn registered_memory_translates_until_the_guard_drops() {
    for mode in [IovaMode::Va, IovaMode::Scrambled { seed: 4 }] {
        let pool = pool(mode);
        let mut buf = vec![0u8; 3 * PAGE + 123];
        let addr = buf.as_mut_ptr() as usize;
        let reg = pool.register(buf.as_mut_ptr(), buf.len()).unwrap();
        assert_eq!(reg.va() % PAGE, 0);
        assert!(reg.va() <= addr && addr + buf.len() <= reg.va() + reg.len());
        assert_eq!(reg.len() % PAGE, 0);
        if is_root() {
            assert!(reg.locked());
        }
        assert_eq!(pool.registration_count(), 1);
        let (iova, len) = pool.translate(addr, buf.len()).unwrap();
        assert!(len >= 1 && len <= buf.len());
        if mode == IovaMode::Va {
            assert_eq!((iova, len), (addr as u64, buf.len()));
        } else {
            // Runs stop at the next 4 KiB boundary.
            assert_eq!(len, PAGE - addr % PAGE);
        }
        assert_eq!(pool.iova_to_va(iova, len).unwrap(), (addr, len));
        let last = addr + buf.len() - 1;
        assert!(pool.translate(last, 1).is_ok());

        drop(reg);
        assert_eq!(pool.registration_count(), 0);
        assert_eq!(pool.translate(addr, 1), Err(MemError::NotMapped { addr }));
        assert_eq!(
            pool.iova_to_va(iova, 1),
            Err(MemError::IovaNotMapped { iova })
        );
        // Registering again after the drop works.
        let again = pool.register(buf.as_mut_ptr(), buf.len()).unwrap();
        assert!(pool.translate(addr, 1).is_ok());
        drop(again);
    }
}

#[test]
fn overlapping_registrations_are_refused() {
    let pool = pool(IovaMode::Va);
    let mut buf = vec![0u8; 4 * PAGE];
    let base = buf.as_mut_ptr();
    let reg = pool.register(base, 2 * PAGE).unwrap();
    // The same memory, a range inside it, and a range reaching into it are all refused.
    for (offset, len) in [(0, 2 * PAGE), (PAGE, 10), (PAGE + 1, 3 * PAGE - 1)] {
        // SAFETY: the offset stays inside `buf`.
        let ptr = unsafe { base.add(offset) };
        match pool.register(ptr, len) {
            Err(MemError::Overlap {
                existing_addr,
                existing_len,
                ..
            }) => {
                assert_eq!((existing_addr, existing_len), (reg.va(), reg.len()));
            }
            other => panic!("expected an overlap, got {other:?}"),
        }
    }
    // Pool memory cannot be registered either.
    let block = pool.alloc(PAGE, PAGE).unwrap();
    assert!(matches!(
        pool.register(block.as_mut_ptr(), PAGE),
        Err(MemError::Overlap { .. })
    ));
    // The refused attempts left the first registration intact.
    assert!(pool.translate(base as usize, 1).is_ok());
    assert_eq!(pool.registration_count(), 1);
    drop(reg);
}

#[test]
fn freed_memory_is_reused_and_accounting_returns_to_zero() {
    let pool = pool(IovaMode::Va);
    let sizes = [64, 100, 4096, 7000, 30_000, 1, 512];
    for _ in 0..3 {
        let blocks: Vec<_> = (0..40)
            .map(|i| pool.alloc(sizes[i % sizes.len()], 1 << (i % 8)).unwrap())
            .collect();
        assert_eq!(pool.live_blocks(), 40);
        let expected: usize = (0..40).map(|i| sizes[i % sizes.len()]).sum();
        assert_eq!(pool.allocated_bytes(), expected);
        // Free in an interleaved order so coalescing has to merge both ways.
        let (even, odd): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        drop(odd);
        drop(even);
        assert_eq!(pool.live_blocks(), 0);
        assert_eq!(pool.allocated_bytes(), 0);
    }
    let settled = pool.region_count();
    for _ in 0..10 {
        let blocks: Vec<_> = (0..40)
            .map(|i| pool.alloc(sizes[i % sizes.len()], 1 << (i % 8)).unwrap())
            .collect();
        drop(blocks);
        assert_eq!(pool.region_count(), settled);
    }
}

#[test]
fn freed_neighbours_coalesce_into_one_free_range() {
    let region = 256 * 1024;
    let pool = DmaPool::new(DmaPoolConfig {
        iova_mode: IovaMode::Va,
        backing: BackingChoice::SmallPages,
        region_size: region,
    })
    .unwrap();
    // Fill the only region exactly.
    let blocks: Vec<_> = (0..16)
        .map(|_| pool.alloc(region / 16, 64).unwrap())
        .collect();
    assert_eq!(pool.region_count(), 1);
    let start = blocks.iter().map(|b| b.va()).min().unwrap();
    // Free in an interleaved order so that each freed block merges on one side or both.
    let (even, odd): (Vec<_>, Vec<_>) = blocks
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    drop(even);
    drop(odd);
    // Half a region in one piece fits only if the sixteen pieces merged back.
    let half = pool.alloc(region / 2, 64).unwrap();
    assert_eq!(half.va(), start);
    assert_eq!(pool.region_count(), 1);
    let other_half = pool.alloc(region / 2, 64).unwrap();
    assert_eq!(other_half.va(), start + region / 2);
    assert_eq!(pool.region_count(), 1);
}

#[test]
fn large_allocations_get_their_own_region() {
    let pool = DmaPool::new(DmaPoolConfig {
        iova_mode: IovaMode::Va,
        backing: BackingChoice::SmallPages,
        region_size: 64 * 1024,
    })
    .unwrap();
    assert_eq!(pool.region_count(), 1);
    let small = pool.alloc(1000, 64).unwrap();
    assert_eq!(pool.region_count(), 1);
    let large = pool.alloc(40 * 1024, 64).unwrap();
    assert_eq!(pool.region_count(), 2);
    let huge = pool.alloc(5 << 20, PAGE).unwrap();
    assert_eq!(pool.region_count(), 3);
    assert_eq!(pool.allocated_bytes(), 1000 + 40 * 1024 + (5 << 20));
    assert_eq!(pool.translate(huge.va(), huge.len()).unwrap().1, 5 << 20);
    // A dedicated region is unmapped when its block goes; its translation goes with it.
    let va = huge.va();
    drop(huge);
    assert_eq!(pool.region_count(), 2);
    assert_eq!(pool.translate(va, 1), Err(MemError::NotMapped { addr: va }));
    drop(large);
    assert_eq!(pool.region_count(), 1);
    drop(small);
    assert_eq!(pool.region_count(), 1);
    assert_eq!((pool.live_blocks(), pool.allocated_bytes()), (0, 0));
}

#[test]
fn two_threads_allocate_and_free_concurrently() {
    let pool = scrambled();
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let pool = pool.clone();
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..400usize {
                    let len = 1 + (i * 37 + usize::from(t) * 11) % 9000;
                    let mut block = pool.alloc(len, 1 << (i % 7)).unwrap();
                    assert!(block.to_vec().iter().all(|&b| b == 0));
                    let tag = t.wrapping_mul(100).wrapping_add(i as u8);
                    block.fill(tag);
                    held.push((block, tag));
                    if held.len() > 8 {
                        let (block, tag) = held.remove(i % held.len());
                        assert!(block.to_vec().iter().all(|&b| b == tag));
                        let (iova, _) = block.translate(0, 1).unwrap();
                        assert_eq!(pool.iova_to_va(iova, 1).unwrap().0, block.va());
                    }
                }
                for (block, tag) in held {
                    assert!(block.to_vec().iter().all(|&b| b == tag));
                }
            });
        }
    });
    assert_eq!((pool.live_blocks(), pool.allocated_bytes()), (0, 0));
}

#[test]
fn translators_answer_as_the_pool_does_including_from_their_recent_runs() {
    // The translator answers repeated lookups from the runs it used last; every answer
    // must still equal the pool's own, inside runs, across their ends, and after frees.
    for mode in [IovaMode::Va, IovaMode::Scrambled { seed: 5 }] {
        let pool = pool(mode);
        let mut blocks: Vec<_> = [100, 5000, 70_000, 3 << 20]
            .iter()
            .map(|&len| pool.alloc(len, 64).unwrap())
            .collect();
        let mut translator = pool.translator();
        let mut seed = 0x1234_5678_u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for round in 0..4000 {
            if round == 2000 {
                blocks.remove(1); // a free changes the pool's generation
            }
            let block = &blocks[next(blocks.len())];
            let offset = next(block.len() + 64); // sometimes past the end
            let len = 1 + next(9000);
            let va = block.va() + offset;
            let expected = pool.translate(va, len);
            assert_eq!(
                translator.translate(va, len),
                expected,
                "{mode:?} va {va:#x}+{len}"
            );
            if let Ok((iova, _)) = expected {
                let back = pool.iova_to_va(iova, len);
                assert_eq!(
                    translator.iova_to_va(iova, len),
                    back,
                    "{mode:?} iova {iova:#x}"
                );
            }
        }
    }
}

#[test]
fn translators_follow_allocations_and_frees() {
    let pool = DmaPool::new(DmaPoolConfig {
        iova_mode: IovaMode::Scrambled { seed: 11 },
        backing: BackingChoice::SmallPages,
        region_size: 64 * 1024,
    })
    .unwrap();
    let mut translator = pool.translator();
    // A region created after the translator was made is still seen.
    let block = pool.alloc(200_000, PAGE).unwrap();
    let (iova, len) = translator.translate(block.va(), block.len()).unwrap();
    assert_eq!((iova, len), (block.iova(), PAGE));
    assert_eq!(translator.iova_to_va(iova, 10).unwrap(), (block.va(), 10));
    let va = block.va();
    drop(block);
    assert_eq!(
        translator.translate(va, 1),
        Err(MemError::NotMapped { addr: va })
    );
    assert_eq!(
        translator.iova_to_va(iova, 1),
        Err(MemError::IovaNotMapped { iova })
    );
    assert_eq!(translator.translate(va, 0), Err(MemError::ZeroLength));
}

#[test]
fn blocks_keep_the_pool_alive() {
    let pool = pool(IovaMode::Va);
    let mut block = pool.alloc(128, 64).unwrap();
    drop(pool);
    block.write_at(0, &[1, 2, 3]).unwrap();
    let pool = block.pool();
    assert_eq!(pool.live_blocks(), 1);
    assert_eq!(
        pool.translate(block.va(), 3).unwrap(),
        (block.va() as u64, 3)
    );
    drop(block);
    assert_eq!(pool.live_blocks(), 0);
}

#[test]
fn bad_input_is_refused_with_the_cause() {
    let pool = pool(IovaMode::Va);
    assert_eq!(pool.alloc(0, 8).unwrap_err(), MemError::ZeroLength);
    assert_eq!(
        pool.alloc(8, 0).unwrap_err(),
        MemError::BadAlignment { align: 0 }
    );
    assert_eq!(
        pool.alloc(8, 48).unwrap_err(),
        MemError::BadAlignment { align: 48 }
    );
    assert_eq!(
        pool.alloc(usize::MAX, 1).unwrap_err(),
        MemError::OutOfMemory {
            requested: usize::MAX
        }
    );
    let err = pool.translate(0x1000, 1).unwrap_err();
    assert_eq!(err, MemError::NotMapped { addr: 0x1000 });
    assert!(err.to_string().contains("0x1000"), "{err}");
    let block = pool.alloc(64, 64).unwrap();
    assert_eq!(pool.translate(block.va(), 0), Err(MemError::ZeroLength));
    assert_eq!(pool.iova_to_va(block.iova(), 0), Err(MemError::ZeroLength));
    assert_eq!(
        block.translate(64, 1).unwrap_err().to_string(),
        "range 0x40+0x1 does not fit in a block of 0x40 bytes"
    );
    assert_eq!(
        pool.register(std::ptr::null_mut(), 10).unwrap_err(),
        MemError::NullPointer
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        pool.register(buf.as_mut_ptr(), 0).unwrap_err(),
        MemError::ZeroLength
    );
    // The lowest pages are never mapped (vm.mmap_min_addr).
    assert_eq!(
        pool.register(0x1000 as *mut u8, 10).unwrap_err(),
        MemError::NotMapped { addr: 0x1000 }
    );
    assert_eq!(
        pool.register(usize::MAX as *mut u8, 10).unwrap_err(),
        MemError::NotMapped { addr: usize::MAX }
    );
    let bad = DmaPool::new(DmaPoolConfig {
        region_size: 0,
        ..DmaPoolConfig::default()
    });
    assert!(matches!(bad, Err(MemError::InvalidConfig { .. })));
    // Every refusal is a std error with a message.
    let boxed: Box<dyn std::error::Error> = Box::new(MemError::ZeroLength);
    assert!(!boxed.to_string().is_empty());
}

#[test]
fn pool_and_block_types_are_shareable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<DmaPool>();
    shareable::<dmaplane::mem::DmaBlock>();
    shareable::<dmaplane::mem::Registration>();
    fn sendable<T: Send>() {}
    sendable::<dmaplane::mem::Translator>();
}

#[test]
fn small_pages_are_locked_when_privileged() {
    let pool = pool(IovaMode::Va);
    assert_eq!(pool.backing(), Backing::SmallPages);
    let _block = pool.alloc(PAGE, PAGE).unwrap();
    if is_root() {
        assert!(pool.locked(), "root may always mlock");
    }
    println!("small-page pool locked: {}", pool.locked());
}

#[test]
fn hugepage_backing_or_a_typed_error() {
    let _guard = HUGEPAGES.lock().unwrap_or_else(|e| e.into_inner());
    let (size, available) = meminfo_hugepages();
    let result = DmaPool::new(DmaPoolConfig {
        iova_mode: IovaMode::Va,
        backing: BackingChoice::Hugepages,
        region_size: MIB2,
    });
    match size.filter(|_| available > 0) {
        Some(size) => {
            println!("hugepage branch: {available} hugepages of {size} bytes free");
            let pool = result.expect("hugepages are free");
            assert_eq!(pool.backing(), Backing::Hugepages);
            assert_eq!(pool.region_count(), 1);
            // The first block sits at the start of a hugepage-aligned region.
            let first = pool.alloc(PAGE, 64).unwrap();
            assert_eq!(first.va() % size, 0);
            assert!(first.to_vec().iter().all(|&b| b == 0));
            assert_eq!(pool.translate(first.va(), MIB2).unwrap().1, MIB2.min(size));
            // A region of its own, also hugepage-aligned, if enough hugepages are left.
            if available >= 3 && size == MIB2 {
                let big = pool.alloc(3 << 20, 64).unwrap();
                assert_eq!(big.va() % size, 0);
                assert_eq!(pool.region_count(), 2);
                drop(big);
                assert_eq!(pool.region_count(), 1);
            }
            drop(first);
            drop(pool);
            // Auto takes hugepages too when they are free.
            let auto = DmaPool::new(DmaPoolConfig::default()).unwrap();
            assert_eq!(auto.backing(), Backing::Hugepages);
            // ... and falls back to small pages once they run out (checked where running
            // them out is cheap).
            if available <= 16 && size == MIB2 {
                // Each takes a hugepage of its own while there are any; the first region
                // took one already, so the last two must come from small pages.
                let blocks: Vec<_> = (0..available + 1)
                    .map(|_| auto.alloc(MIB2 / 2 + PAGE, 64).unwrap())
                    .collect();
                assert_eq!(auto.region_count() as u64, available + 2);
                assert_eq!(meminfo_hugepages().1, 0);
                for block in &blocks {
                    assert_eq!(
                        auto.translate(block.va(), block.len()).unwrap().1,
                        block.len()
                    );
                }
                println!("hugepage branch: Auto fell back to small pages after {available}");
            }
        }
        None => {
            println!("no-hugepage branch: Hugepagesize {size:?}, {available} free");
            match result {
                Err(MemError::HugepagesUnavailable {
                    hugepage_size,
                    available: seen,
                }) => {
                    assert_eq!(hugepage_size, size);
                    assert_eq!(seen, 0);
                }
                other => panic!("expected HugepagesUnavailable, got {other:?}"),
            }
            // Auto falls back to small pages.
            let auto = DmaPool::new(DmaPoolConfig::default()).unwrap();
            assert_eq!(auto.backing(), Backing::SmallPages);
        }
    }
}

/// Set in the unprivileged child that checks the non-root branch of physical mode.
const CHILD_ENV: &str = "DMAPLANE_TEST_PHYSICAL_AS_NOBODY";

#[test]
fn physical_mode_translates_or_refuses_with_a_typed_error() {
    let config = DmaPoolConfig {
        iova_mode: IovaMode::Physical,
        backing: BackingChoice::SmallPages,
        region_size: MIB2,
    };
    if !is_root() {
        let in_child = std::env::var_os(CHILD_ENV).is_some();
        println!("physical mode, unprivileged branch (child of a root run: {in_child})");
        let err = DmaPool::new(config).unwrap_err();
        assert!(
            matches!(err, MemError::FrameNumbersHidden { .. }),
            "expected FrameNumbersHidden, got {err}"
        );
        return;
    }
    println!("physical mode, root branch");
    let _guard = HUGEPAGES.lock().unwrap_or_else(|e| e.into_inner());
    let pool = DmaPool::new(config).unwrap();
    assert!(pool.locked());
    let block = pool.alloc(5 * PAGE + 100, PAGE).unwrap();
    let mut offset = 0;
    while offset < block.len() {
        let rest = block.len() - offset;
        let (phys, len) = block.translate(offset, rest).unwrap();
        assert_ne!(phys, 0);
        // Physical and virtual addresses share the offset within the page.
        assert_eq!(phys % PAGE as u64, ((block.va() + offset) % PAGE) as u64);
        // A run ends at a page boundary or at the end of the block.
        assert!((block.va() + offset + len) % PAGE == 0 || len == rest);
        assert_eq!(
            pool.translate(block.va() + offset, rest).unwrap(),
            (phys, len)
        );
        assert_eq!(
            pool.iova_to_va(phys, len).unwrap(),
            (block.va() + offset, len)
        );
        offset += len;
    }

    // Registered memory gets its physical addresses too.
    let mut buf = vec![0u8; 2 * PAGE];
    let addr = buf.as_mut_ptr() as usize;
    let reg = pool.register(buf.as_mut_ptr(), buf.len()).unwrap();
    assert!(reg.locked());
    let (phys, len) = pool.translate(addr, buf.len()).unwrap();
    assert!(phys != 0 && phys % PAGE as u64 == (addr % PAGE) as u64);
    assert_eq!(pool.iova_to_va(phys, len).unwrap(), (addr, len));
    drop(reg);

    // A hugepage is physically contiguous as a whole.
    let (size, available) = meminfo_hugepages();
    if available > 0 && size == Some(MIB2) {
        let huge = DmaPool::new(DmaPoolConfig {
            backing: BackingChoice::Hugepages,
            ..config
        })
        .unwrap();
        let block = huge.alloc(PAGE, 64).unwrap();
        assert_eq!(block.va() % MIB2, 0);
        let (phys, len) = huge.translate(block.va(), MIB2).unwrap();
        println!("physical mode: hugepage at {phys:#x}, {len:#x} contiguous bytes");
        assert_eq!(len, MIB2);
        assert_eq!(phys % MIB2 as u64, 0);
    } else {
        println!("physical mode: no free 2 MiB hugepages, contiguity check skipped");
    }
    drop(_guard);

    // The unprivileged branch, in a child running this very test as nobody.
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args([
            "--exact",
            "physical_mode_translates_or_refuses_with_a_typed_error",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("unprivileged branch"),
        "the unprivileged child failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An IOMMU context that records its mappings, with a window and an entry limit.
#[derive(Debug)]
struct RecordingIommu {
    id: dmaplane::mem::IommuId,
    /// What it accepts now: a device joining the context may narrow it.
    window: Mutex<std::ops::RangeInclusive<u64>>,
    limit: usize,
    /// IOVA → (VA, length) of what is mapped now.
    mapped: Mutex<std::collections::BTreeMap<u64, (usize, usize)>>,
}

impl RecordingIommu {
    fn new(window: std::ops::RangeInclusive<u64>, limit: usize) -> std::sync::Arc<RecordingIommu> {
        std::sync::Arc::new(RecordingIommu {
            id: dmaplane::mem::IommuId::fresh(),
            window: Mutex::new(window),
            limit,
            mapped: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    fn mapped(&self) -> Vec<(u64, usize, usize)> {
        self.mapped
            .lock()
            .unwrap()
            .iter()
            .map(|(&iova, &(va, len))| (iova, va, len))
            .collect()
    }
}

impl dmaplane::mem::IommuMapper for RecordingIommu {
    fn id(&self) -> dmaplane::mem::IommuId {
        self.id
    }

    fn iova_ranges(&self) -> std::io::Result<Vec<std::ops::RangeInclusive<u64>>> {
        Ok(vec![self.window.lock().unwrap().clone()])
    }

    fn entries_left(&self) -> Option<u32> {
        Some((self.limit - self.mapped.lock().unwrap().len()) as u32)
    }

    fn map(&self, va: usize, iova: u64, len: usize) -> std::io::Result<()> {
        let mut mapped = self.mapped.lock().unwrap();
        if mapped.len() == self.limit {
            // What type1 answers past dma_entry_limit.
            return Err(std::io::Error::from_raw_os_error(28 /* ENOSPC */));
        }
        assert!(
            mapped.insert(iova, (va, len)).is_none(),
            "IOVA {iova:#x} mapped twice"
        );
        Ok(())
    }

    fn unmap(&self, iova: u64, len: usize) -> std::io::Result<()> {
        let removed = self.mapped.lock().unwrap().remove(&iova);
        assert_eq!(
            removed.map(|(_, l)| l),
            Some(len),
            "unmapped what was not mapped"
        );
        Ok(())
    }
}

#[test]
fn a_mapped_pool_maps_every_region_and_registration_into_its_iommus_and_unmaps_them() {
    let pool = pool(IovaMode::Mapped);
    let block = pool.alloc(4096, 64).unwrap();
    assert!(
        dmaplane::mem::DEFAULT_IOVA_WINDOW.contains(&block.iova()),
        "IOVA {:#x} outside the default window",
        block.iova()
    );
    let iommu = RecordingIommu::new(0..=(1 << 40), 64);
    pool.attach_iommu(iommu.clone()).unwrap();
    pool.attach_iommu(iommu.clone()).unwrap(); // twice: a no-op
    assert_eq!(pool.iommus(), vec![iommu.id]);
    let first = iommu.mapped();
    assert_eq!(first.len(), pool.region_count(), "every region, once");
    let (iova, va, len) = first[0];
    assert!(iova <= block.iova() && block.iova() < iova + len as u64);
    assert_eq!(
        pool.translate(va, 1).unwrap().0,
        iova,
        "the pool's IOVA is the mapped one"
    );

    // A block of its own region: mapped while it lives, unmapped when it goes.
    let large = pool.alloc(pool.region_size() * 2, 4096).unwrap();
    assert_eq!(iommu.mapped().len(), first.len() + 1);
    assert_eq!(iommu.mapped()[1].0 % (2 << 20), 0, "hugepage-aligned IOVA");
    drop(large);
    assert_eq!(iommu.mapped(), first);

    // Registered application memory, the same.
    let mut app = vec![0u8; 3 * 4096];
    let registration = pool.register(app.as_mut_ptr(), app.len()).unwrap();
    assert_eq!(iommu.mapped().len(), first.len() + 1);
    drop(registration);
    assert_eq!(iommu.mapped(), first);

    drop(block);
    drop(pool);
    assert!(
        iommu.mapped().is_empty(),
        "the pool unmapped everything it mapped"
    );
}

#[test]
fn a_mapped_pool_respects_the_iommus_windows_and_entry_limit() {
    // Refused: a context that does not cover what is mapped already.
    let pool = pool(IovaMode::Mapped);
    let narrow = RecordingIommu::new(0..=0xffff_ffff, 64);
    assert!(matches!(
        pool.attach_iommu(narrow.clone()),
        Err(MemError::IovaOutsideIommu { .. })
    ));
    assert!(
        narrow.mapped().is_empty(),
        "nothing left mapped after a refusal"
    );

    // Accepted: later IOVAs come from the context's window only.
    let iommu = RecordingIommu::new((1 << 32)..=((1 << 34) - 1), 3);
    pool.attach_iommu(iommu.clone()).unwrap();
    let large = pool.alloc(pool.region_size() * 2, 4096).unwrap();
    assert!(iommu
        .mapped()
        .iter()
        .all(|&(iova, _, len)| iova + len as u64 <= 1 << 34));
    // The entry limit: the context took 3 mappings at most.
    let mut blocks = vec![large];
    let refused = loop {
        match pool.alloc(pool.region_size() * 2, 4096) {
            Ok(block) => blocks.push(block),
            Err(e) => break e,
        }
        assert!(blocks.len() < 8, "the entry limit was never reached");
    };
    assert_eq!(refused, MemError::IommuEntriesExhausted);
    assert_eq!(iommu.mapped().len(), 3);
    drop(blocks);

    // A pool whose IOVAs the pool does not pick cannot take a context.
    let va = self::pool(IovaMode::Va);
    assert!(matches!(
        va.attach_iommu(RecordingIommu::new(0..=u64::MAX, 8)),
        Err(MemError::InvalidConfig { .. })
    ));
}

#[test]
fn attaching_a_context_again_narrows_later_iovas_to_its_new_windows() {
    let pool = pool(IovaMode::Mapped);
    let iommu = RecordingIommu::new((1 << 32)..=((1 << 36) - 1), 64);
    pool.attach_iommu(iommu.clone()).unwrap();
    let highest_mapped = iommu
        .mapped()
        .iter()
        .map(|&(iova, _, len)| iova + len as u64)
        .max()
        .unwrap();
    // A device joins the context and the kernel reserves everything above what is mapped
    // plus a little room.
    let top = highest_mapped + 4 * pool.region_size() as u64 - 1;
    *iommu.window.lock().unwrap() = (1 << 32)..=top;
    pool.attach_iommu(iommu.clone()).unwrap();
    let mut blocks = Vec::new();
    for _ in 0..3 {
        blocks.push(pool.alloc(pool.region_size(), 4096).unwrap());
    }
    for (iova, _, len) in iommu.mapped() {
        assert!(
            iova + len as u64 - 1 <= top,
            "{iova:#x}+{len:#x} above {top:#x}"
        );
    }
    // Negative control: a window that no longer covers what is mapped is refused.
    *iommu.window.lock().unwrap() = (1 << 35)..=((1 << 36) - 1);
    assert!(matches!(
        pool.attach_iommu(iommu.clone()),
        Err(MemError::IovaOutsideIommu { .. })
    ));
}
