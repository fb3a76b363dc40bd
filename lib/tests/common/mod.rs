//! Helpers shared by the integration tests that drive the emulated device.

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::datapath::Client;
use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, Fault, PoolMemory};
use dmaplane::ioat::{IoatConfig, IoatDevice};
use dmaplane::log::LogHook;
use dmaplane::mem::{DmaBlock, DmaPool};
use dmaplane::soft::{SoftConfig, SoftDevice, SoftFault};
use dmaplane::{Completion, DeviceSpec};

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

/// The backends the client tests run on: one test body, each backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The IOAT driver on the emulated IOAT device.
    Ioat,
    /// The software engine.
    Soft,
}

/// A device of either backend, with what the tests do to it.
pub enum TestDevice {
    Ioat {
        emu: Arc<EmulatedDevice>,
        driver: IoatDevice,
    },
    Soft(SoftDevice),
}

/// One piece of work a device carried out, whichever backend.
#[derive(Clone, Copy, Debug)]
pub struct Executed {
    pub start: u64,
    pub finish: u64,
    pub bytes: u64,
    /// IOAT: whether the descriptor carried the fence bit (the software engine has none: it
    /// runs everything in order).
    pub fence: Option<bool>,
}

impl TestDevice {
    /// A device of `channels` channels of `ring_order` slots; `mode` is the emulated IOAT
    /// device's (the software engine always runs at poll time). Buffers must be DMA memory of
    /// `pool` on both.
    pub fn new(
        backend: Backend,
        pool: &DmaPool,
        name: &str,
        channels: usize,
        mode: EmuMode,
        ring_order: u32,
    ) -> TestDevice {
        match backend {
            Backend::Ioat => {
                let config = EmuConfig {
                    channels,
                    mode,
                    ..EmuConfig::default()
                };
                let emu = EmulatedDevice::new(config, device_memory(pool)).unwrap();
                let driver = IoatDevice::probe(
                    name,
                    emu.registers(),
                    Some(emu.config_space()),
                    pool.clone(),
                    IoatConfig {
                        ring_order,
                        ..IoatConfig::default()
                    },
                )
                .unwrap();
                TestDevice::Ioat { emu, driver }
            }
            Backend::Soft => {
                let config = SoftConfig {
                    channels,
                    ring_order,
                    pool: Some(pool.clone()),
                    ..SoftConfig::default()
                };
                TestDevice::Soft(SoftDevice::new(name, config).unwrap())
            }
        }
    }

    pub fn spec(&self) -> DeviceSpec {
        match self {
            TestDevice::Ioat { driver, .. } => driver.spec(),
            TestDevice::Soft(device) => device.spec(),
        }
    }

    /// Whether each channel is started.
    pub fn started(&self) -> Vec<bool> {
        match self {
            TestDevice::Ioat { driver, .. } => {
                driver.channels().iter().map(|c| c.is_started()).collect()
            }
            TestDevice::Soft(device) => device.channels().iter().map(|c| c.is_started()).collect(),
        }
    }

    /// What the device's channels did, summed over their starts.
    pub fn stats(&self) -> dmaplane::ChannelStats {
        let backends: Vec<Arc<dyn dmaplane::ChannelBackend>> = self.spec().channels;
        backends
            .iter()
            .fold(dmaplane::ChannelStats::default(), |sum, c| sum + c.stats())
    }

    /// Channel `channel` stops (or resumes) taking work.
    pub fn stall(&self, channel: usize, stalled: bool) {
        match self {
            TestDevice::Ioat { emu, .. } => emu
                .inject(if stalled {
                    Fault::Stall { channel }
                } else {
                    Fault::Unstall { channel }
                })
                .unwrap(),
            TestDevice::Soft(device) => device
                .inject(if stalled {
                    SoftFault::Stall { channel }
                } else {
                    SoftFault::Unstall { channel }
                })
                .unwrap(),
        }
    }

    /// The device leaves at once.
    pub fn surprise_remove(&self) {
        match self {
            TestDevice::Ioat { emu, .. } => emu.inject(Fault::SurpriseRemoval).unwrap(),
            TestDevice::Soft(device) => device.inject(SoftFault::SurpriseRemoval).unwrap(),
        }
    }

    pub fn enable_trace(&self, on: bool) {
        match self {
            TestDevice::Ioat { emu, .. } => emu.enable_trace(on),
            TestDevice::Soft(device) => device.enable_trace(on),
        }
    }

    /// What the device carried out since tracing was enabled, in the order it started.
    pub fn take_trace(&self) -> Vec<Executed> {
        match self {
            TestDevice::Ioat { emu, .. } => emu
                .take_trace()
                .into_iter()
                .map(|e| Executed {
                    start: e.start,
                    finish: e.finish,
                    bytes: e.bytes,
                    fence: Some(e.fence),
                })
                .collect(),
            TestDevice::Soft(device) => device
                .take_trace()
                .into_iter()
                .map(|e| Executed {
                    start: e.start,
                    finish: e.finish,
                    bytes: e.bytes,
                    fence: None,
                })
                .collect(),
        }
    }
}

/// Runs each named test body (a `fn(Backend)`) once per backend, as `ioat::name` and
/// `soft::name`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod ioat {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Ioat) })*
        }
        mod soft {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Soft) })*
        }
    };
}
