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

/// A fake sysfs tree in a temporary directory, removed on drop: PCI functions with their ids,
/// NUMA node, configuration file, resource0, driver link, IOMMU group link and VFIO cdev; the
/// groups under `kernel/iommu_groups`; the drivers' directories; VFIO's no-IOMMU parameter.
pub struct FakeSysfs {
    pub root: std::path::PathBuf,
}

impl FakeSysfs {
    pub fn new(name: &str) -> FakeSysfs {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "dmaplane-sysfs-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for dir in [
            "bus/pci/devices",
            "bus/pci/drivers/vfio-pci",
            "bus/pci/drivers/ioatdma",
            "kernel/iommu_groups",
            "module/vfio/parameters",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
        for driver in ["vfio-pci", "ioatdma"] {
            Self::driver_files(&root.join("bus/pci/drivers").join(driver));
        }
        for hugepages in [
            "kernel/mm/hugepages/hugepages-2048kB",
            "devices/system/node/node0/hugepages/hugepages-2048kB",
        ] {
            let dir = root.join(hugepages);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("nr_hugepages"), "0\n").unwrap();
            std::fs::write(dir.join("free_hugepages"), "0\n").unwrap();
        }
        std::fs::write(
            root.join("module/vfio/parameters/enable_unsafe_noiommu_mode"),
            "N\n",
        )
        .unwrap();
        FakeSysfs { root }
    }

    pub fn sysfs(&self) -> dmaplane::pci::Sysfs {
        dmaplane::pci::Sysfs::at(&self.root)
    }

    /// An Intel function `bdf` with device id `device`, bound to `driver`, in IOMMU group
    /// `group` (of domain type `DMA`), with VFIO cdev `cdev`.
    pub fn add_function(
        &self,
        bdf: &str,
        device: u16,
        driver: Option<&str>,
        group: Option<u32>,
        cdev: Option<&str>,
    ) {
        let dir = self.root.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), "0x8086\n").unwrap();
        std::fs::write(dir.join("device"), format!("{device:#06x}\n")).unwrap();
        std::fs::write(dir.join("numa_node"), "0\n").unwrap();
        std::fs::write(dir.join("config"), [0u8; 256]).unwrap();
        std::fs::write(dir.join("resource0"), vec![0u8; 16384]).unwrap();
        std::fs::write(dir.join("driver_override"), "\n").unwrap();
        if let Some(driver) = driver {
            self.bind(bdf, driver);
        }
        if let Some(group) = group {
            let group_dir = self.root.join(format!("kernel/iommu_groups/{group}"));
            std::fs::create_dir_all(group_dir.join("devices")).unwrap();
            std::fs::write(group_dir.join("type"), "DMA\n").unwrap();
            std::os::unix::fs::symlink(&dir, group_dir.join("devices").join(bdf)).unwrap();
            std::os::unix::fs::symlink(&group_dir, dir.join("iommu_group")).unwrap();
        }
        if let Some(cdev) = cdev {
            std::fs::create_dir_all(dir.join("vfio-dev").join(cdev)).unwrap();
        }
    }

    /// Points `bdf`'s driver link at `driver`.
    pub fn bind(&self, bdf: &str, driver: &str) {
        let link = self.root.join("bus/pci/devices").join(bdf).join("driver");
        let _ = std::fs::remove_file(&link);
        let driver_dir = self.root.join("bus/pci/drivers").join(driver);
        Self::driver_files(&driver_dir);
        std::os::unix::fs::symlink(&driver_dir, link).unwrap();
    }

    /// A driver's directory with the attributes a binding writes.
    fn driver_files(dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        for attribute in ["bind", "unbind", "new_id"] {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(attribute))
                .unwrap();
        }
    }

    /// Removes driver `driver`'s directory, as if its module were not loaded.
    pub fn unload(&self, driver: &str) {
        std::fs::remove_dir_all(self.root.join("bus/pci/drivers").join(driver)).unwrap();
    }

    /// Reads a file of the tree, relative to its root.
    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path)).unwrap()
    }

    pub fn set_group_type(&self, group: u32, kind: &str) {
        std::fs::write(
            self.root.join(format!("kernel/iommu_groups/{group}/type")),
            format!("{kind}\n"),
        )
        .unwrap();
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
