//! Helpers shared by the integration tests that drive the emulated device.

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;

use dmaplane::emu::PoolMemory;
use dmaplane::mem::DmaPool;

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
