//! Helpers shared by the integration tests that drive the emulated device.

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::datapath::Client;
use dmaplane::emu::PoolMemory;
use dmaplane::log::LogHook;
use dmaplane::mem::{DmaBlock, DmaPool};
use dmaplane::Completion;

/// A small deterministic generator, so failures reproduce.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The pool as the emulated device's memory.
pub fn device_memory(pool: &DmaPool) -> Arc<PoolMemory> {
    // SAFETY: descriptors reach the device only through the driver's and the clients'
    // `unsafe` submit calls, whose callers keep the named buffers alive and untouched until
    // completion.
    Arc::new(unsafe { PoolMemory::new(pool.clone()) })
}

/// A log hook that drops every message.
pub fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

/// A block of `len` bytes holding a pattern that depends on `seed`.
pub fn block(pool: &DmaPool, len: usize, seed: u8) -> DmaBlock {
    let mut b = pool.alloc(len, 64).unwrap();
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    b.write_at(0, &bytes).unwrap();
    b
}

/// Polls `client` until `count` completions arrived (at most 10 s).
pub fn collect(client: &mut Client, count: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut batch = [Completion::default(); 32];
    while got.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} completions",
            got.len()
        );
        let n = client.poll(&mut batch);
        got.extend_from_slice(&batch[..n]);
        if n == 0 {
            std::thread::yield_now();
        }
    }
    got
}
