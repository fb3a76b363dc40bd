//! [`SetupBuilder`]: what a setup is made of, with the defaults an embedded user wants, and
//! [`SetupBuilder::build`], which makes the engine, the pool (its IOVA mode following how the
//! devices are reached), the monitor (with the hook that hands removed functions back), and the
//! first devices.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{release_on_removal, DeviceKind, Devices, Setup, SetupError};
use crate::dsa::KernelRoute;
use crate::emu::EmuMode;
use crate::engine::{Engine, EngineConfig, RemovalOptions};
use crate::hotplug::{Monitor, MonitorConfig};
use crate::log::LogHook;
use crate::mem::{DmaPool, DmaPoolConfig, IovaMode};
use crate::pci::{Sysfs, DEFAULT_LOCK_DIR};
use crate::vfio::{NoIommu, VfioKernel};

/// Builds a [`Setup`]. Defaults: this machine's CPUs, two emulated IOAT devices of one
/// threaded channel each with copy and fill, 1024-descriptor rings, and a monitor without
/// uevents whose removals let work drain for 100 ms.
#[derive(Clone, Debug)]
pub struct SetupBuilder {
    pub(super) engine: EngineConfig,
    pub(super) kind: DeviceKind,
    pub(super) devices: usize,
    pub(super) channels_per_device: usize,
    pub(super) fill: bool,
    pub(super) emulation: EmuMode,
    pub(super) ring_order: u32,
    pub(super) pool: Option<DmaPoolConfig>,
    pub(super) monitor: MonitorConfig,
    pub(super) sysfs: Sysfs,
    pub(super) vfio_kernel: Option<Arc<dyn VfioKernel>>,
    pub(super) noiommu: NoIommu,
    pub(super) lock_dir: PathBuf,
    pub(super) dsa_route: KernelRoute,
}

impl Default for SetupBuilder {
    fn default() -> Self {
        SetupBuilder {
            engine: EngineConfig::from_system(),
            kind: DeviceKind::EmulatedIoat,
            devices: 2,
            channels_per_device: 1,
            fill: true,
            emulation: EmuMode::Threaded,
            ring_order: 10,
            pool: None,
            monitor: MonitorConfig {
                removal: RemovalOptions {
                    drain_timeout: Duration::from_millis(100),
                    ..RemovalOptions::default()
                },
                ..MonitorConfig::default()
            },
            sysfs: Sysfs::system(),
            vfio_kernel: None,
            noiommu: NoIommu::Refused,
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
            dsa_route: KernelRoute::default(),
        }
    }
}

impl SetupBuilder {
    /// `cpus` possible CPUs, all online (instead of this machine's).
    #[must_use]
    pub fn cpus(mut self, cpus: usize) -> Self {
        let log = self.engine.log.clone();
        self.engine = EngineConfig::with_cpus(cpus).log_hook(log);
        self
    }

    /// The engine's configuration, whole.
    #[must_use]
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Where the library's warnings go.
    #[must_use]
    pub fn log(mut self, hook: LogHook) -> Self {
        self.engine = self.engine.log_hook(hook);
        self
    }

    /// Starts with `count` emulated IOAT devices.
    #[must_use]
    pub fn emulated_ioat(mut self, count: usize) -> Self {
        self.kind = DeviceKind::EmulatedIoat;
        self.devices = count;
        self
    }

    /// Starts with `count` emulated DSA devices, each with
    /// [`channels_per_device`](SetupBuilder::channels_per_device) dedicated work queues (one
    /// channel each), driven by the DSA driver.
    #[must_use]
    pub fn emulated_dsa(mut self, count: usize) -> Self {
        self.kind = DeviceKind::EmulatedDsa;
        self.devices = count;
        self
    }

    /// Starts with `count` emulated devices, IOAT and DSA by turns (IOAT first), so the
    /// per-CPU table balances across both engines; later additions keep alternating.
    #[must_use]
    pub fn mixed(mut self, count: usize) -> Self {
        self.kind = DeviceKind::Mixed;
        self.devices = count;
        self
    }

    /// Opens every enabled user work queue of the kernel's DSA driver through its character
    /// device (`/dev/dsa/wqX.Y`, configured with accel-config), a device per DSA device (at
    /// least one WQ, or the build fails with [`SetupError::NoDevice`] saying why each was
    /// passed over).
    #[must_use]
    pub fn kernel_dsa(mut self) -> Self {
        self.kind = DeviceKind::KernelDsa;
        self
    }

    /// Where the kernel route looks for DSA work queues (a fake tree in tests).
    #[must_use]
    pub fn dsa_route(mut self, route: KernelRoute) -> Self {
        self.dsa_route = route;
        self
    }

    /// Starts with `count` software devices.
    #[must_use]
    pub fn soft(mut self, count: usize) -> Self {
        self.kind = DeviceKind::Soft;
        self.devices = count;
        self
    }

    /// Attaches every IOAT function bound to `vfio-pci`, through VFIO (at least one, or the
    /// build fails with [`SetupError::NoDevice`] listing why each function was passed over).
    #[must_use]
    pub fn vfio_ioat(mut self) -> Self {
        self.kind = DeviceKind::VfioIoat;
        self
    }

    /// Attaches every IOAT function bound to no driver, through sysfs, with physical
    /// addresses (the IOMMU must be off or in passthrough for them).
    #[must_use]
    pub fn physical_ioat(mut self) -> Self {
        self.kind = DeviceKind::PhysicalIoat;
        self
    }

    /// Attaches every QEMU `edu` device bound to `vfio-pci`, through VFIO (in a KVM guest).
    #[must_use]
    pub fn vfio_edu(mut self) -> Self {
        self.kind = DeviceKind::VfioEdu;
        self
    }

    /// Where sysfs is (a fake tree in tests).
    #[must_use]
    pub fn sysfs(mut self, sysfs: Sysfs) -> Self {
        self.sysfs = sysfs;
        self
    }

    /// The VFIO kernel interface ([`SimKernel`](crate::vfio::SimKernel) in tests; the real
    /// one by default).
    #[must_use]
    pub fn vfio_kernel(mut self, kernel: Arc<dyn VfioKernel>) -> Self {
        self.vfio_kernel = Some(kernel);
        self
    }

    /// Whether functions in VFIO no-IOMMU groups may be used (then with physical addresses
    /// and no protection from a bad descriptor). Refused by default.
    #[must_use]
    pub fn allow_noiommu(mut self, allow: bool) -> Self {
        self.noiommu = if allow {
            NoIommu::Allowed
        } else {
            NoIommu::Refused
        };
        self
    }

    /// Where the per-function lock files go (`/var/tmp` by default).
    #[must_use]
    pub fn lock_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lock_dir = dir.into();
        self
    }

    /// Channels of each emulated or software device.
    #[must_use]
    pub fn channels_per_device(mut self, channels: usize) -> Self {
        self.channels_per_device = channels;
        self
    }

    /// Whether emulated and software devices fill as well as copy.
    #[must_use]
    pub fn fill(mut self, fill: bool) -> Self {
        self.fill = fill;
        self
    }

    /// Whether emulated IOAT devices work on a thread of their own (like hardware beside the
    /// CPU) or inline, at each doorbell.
    #[must_use]
    pub fn emulation(mut self, mode: EmuMode) -> Self {
        self.emulation = mode;
        self
    }

    /// log2 of the descriptors per channel ring, 4 to 16.
    #[must_use]
    pub fn ring_order(mut self, order: u32) -> Self {
        self.ring_order = order;
        self
    }

    /// The DMA pool's configuration. By default the IOVA mode follows the devices: physical
    /// addresses for real hardware, virtual ones otherwise.
    #[must_use]
    pub fn pool(mut self, config: DmaPoolConfig) -> Self {
        self.pool = Some(config);
        self
    }

    /// The hotplug monitor's configuration.
    #[must_use]
    pub fn monitor(mut self, config: MonitorConfig) -> Self {
        self.monitor = config;
        self
    }

    /// Whether the monitor listens to kernel uevents (removal and unbind of attached PCI
    /// functions).
    #[must_use]
    pub fn uevents(mut self, on: bool) -> Self {
        self.monitor.uevents = on;
        self
    }

    /// How long an orderly removal lets work drain before failing the rest.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.monitor.removal.drain_timeout = timeout;
        self
    }

    /// Makes the engine, the pool and the monitor, then the first devices; the per-CPU table
    /// is built before it returns.
    pub fn build(self) -> Result<Setup, SetupError> {
        if !(4..=16).contains(&self.ring_order) {
            return Err(SetupError::InvalidConfig(format!(
                "ring order {} is outside 4..=16",
                self.ring_order
            )));
        }
        let engine = Engine::new(self.engine.clone())?;
        // How the devices will be reached decides what their DMA addresses mean.
        let iova_mode = match self.kind {
            DeviceKind::PhysicalIoat => IovaMode::Physical,
            DeviceKind::VfioIoat
                if self.noiommu == NoIommu::Allowed && self.sysfs.noiommu_enabled() =>
            {
                IovaMode::Physical
            }
            DeviceKind::VfioIoat | DeviceKind::VfioEdu => IovaMode::Mapped,
            // The kernel route's WQs take process virtual addresses (shared virtual memory).
            DeviceKind::EmulatedIoat
            | DeviceKind::Soft
            | DeviceKind::EmulatedDsa
            | DeviceKind::Mixed
            | DeviceKind::KernelDsa => IovaMode::Va,
        };
        let pool = DmaPool::new(self.pool.unwrap_or(DmaPoolConfig {
            iova_mode,
            ..DmaPoolConfig::default()
        }))
        .map_err(SetupError::Memory)?;
        let devices = Arc::new(Mutex::new(Devices::default()));
        let mut monitor_config = self.monitor.clone();
        monitor_config.on_event = Some(release_on_removal(
            &engine,
            &devices,
            monitor_config.on_event.take(),
        ));
        let monitor = Monitor::start(&engine, monitor_config).map_err(SetupError::Monitor)?;
        let setup = Setup {
            engine,
            pool,
            monitor: Some(monitor),
            builder: self,
            devices,
            attaching: Mutex::new(()),
            vfio: Mutex::new(None),
        };
        if setup.builder.kind.is_pci() {
            setup.add_hardware(usize::MAX)?;
        } else if setup.builder.kind == DeviceKind::KernelDsa {
            setup.add_kernel_dsa()?;
        } else {
            for _ in 0..setup.builder.devices {
                setup.add_device()?;
            }
        }
        Ok(setup)
    }
}
