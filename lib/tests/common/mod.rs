//! Helpers shared by the integration tests that drive the emulated device.

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::datapath::Client;
use dmaplane::dsa::{DsaConfig, DsaDevice, DsaLayout, DsaQueueConfig};
use dmaplane::emu::{
    DsaEmuConfig, DsaFault, EmuConfig, EmuMode, EmulatedDevice, EmulatedDsa, Fault, PoolMemory,
};
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
    /// The DSA driver on the emulated DSA.
    Dsa,
    /// IOAT and DSA devices together: each new device is the other kind from the last one.
    Mixed,
}

/// Which kind the next device of a mixed run is.
static MIXED_NEXT_IS_DSA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A device of either backend, with what the tests do to it.
pub enum TestDevice {
    Ioat {
        emu: Arc<EmulatedDevice>,
        driver: IoatDevice,
    },
    Soft(SoftDevice),
    Dsa {
        emu: Arc<EmulatedDsa>,
        driver: DsaDevice,
    },
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
        let backend = match backend {
            Backend::Mixed => {
                if MIXED_NEXT_IS_DSA.fetch_xor(true, std::sync::atomic::Ordering::Relaxed) {
                    Backend::Dsa
                } else {
                    Backend::Ioat
                }
            }
            other => other,
        };
        match backend {
            Backend::Dsa => {
                let config = DsaEmuConfig {
                    wqs: channels.max(1),
                    mode,
                    ..DsaEmuConfig::default()
                };
                let emu = EmulatedDsa::new(config, device_memory(pool)).unwrap();
                let driver = DsaDevice::probe(
                    name,
                    emu.registers(),
                    emu.portals(),
                    Some(emu.config_space()),
                    pool.clone(),
                    DsaConfig {
                        layout: DsaLayout {
                            wqs: channels,
                            ..DsaLayout::default()
                        },
                        queue: DsaQueueConfig {
                            ring_order: ring_order.min(12),
                            ..DsaQueueConfig::default()
                        },
                        ..DsaConfig::default()
                    },
                )
                .unwrap();
                TestDevice::Dsa { emu, driver }
            }
            Backend::Ioat | Backend::Mixed => {
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
            TestDevice::Dsa { driver, .. } => driver.spec(),
        }
    }

    /// Whether each channel is started.
    pub fn started(&self) -> Vec<bool> {
        match self {
            TestDevice::Ioat { driver, .. } => {
                driver.channels().iter().map(|c| c.is_started()).collect()
            }
            TestDevice::Soft(device) => device.channels().iter().map(|c| c.is_started()).collect(),
            TestDevice::Dsa { driver, .. } => {
                driver.channels().iter().map(|c| c.is_started()).collect()
            }
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
            TestDevice::Dsa { emu, .. } => emu
                .inject(if stalled {
                    DsaFault::Stall { wq: channel }
                } else {
                    DsaFault::Unstall { wq: channel }
                })
                .unwrap(),
        }
    }

    /// The device leaves at once.
    pub fn surprise_remove(&self) {
        match self {
            TestDevice::Ioat { emu, .. } => emu.inject(Fault::SurpriseRemoval).unwrap(),
            TestDevice::Soft(device) => device.inject(SoftFault::SurpriseRemoval).unwrap(),
            TestDevice::Dsa { emu, .. } => emu.inject(DsaFault::SurpriseRemoval).unwrap(),
        }
    }

    pub fn enable_trace(&self, on: bool) {
        match self {
            TestDevice::Ioat { emu, .. } => emu.enable_trace(on),
            TestDevice::Soft(device) => device.enable_trace(on),
            TestDevice::Dsa { emu, .. } => emu.set_tracing(on),
        }
    }

    /// What the device carried out since tracing was enabled, in the order it started (DSA:
    /// in the order it was submitted, with start and finish both its completion, since the
    /// model runs each descriptor at once when it completes it).
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
            TestDevice::Dsa { emu, .. } => {
                let mut trace: Vec<_> = emu
                    .take_trace()
                    .into_iter()
                    .filter(|e| e.bytes > 0)
                    .collect();
                trace.sort_by_key(|e| (e.submitted, e.member.unwrap_or(0)));
                trace
                    .into_iter()
                    .map(|e| Executed {
                        start: e.completed,
                        finish: e.completed,
                        bytes: e.bytes,
                        fence: None,
                    })
                    .collect()
            }
        }
    }
}

/// Runs each named test body (a `fn(Backend)`) once per backend, as `ioat::name`,
/// `soft::name`, `dsa::name` and `mixed::name`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod ioat {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Ioat) })*
        }
        mod soft {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Soft) })*
        }
        mod dsa {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Dsa) })*
        }
        mod mixed {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Mixed) })*
        }
    };
}
