//! Everything an application sets up before its clients run, in one place: the engine, the
//! DMA memory pool, the devices (emulated IOAT, the software engine, or real IOAT functions
//! found in sysfs), and the hotplug monitor with PCI watching. Built with [`SetupBuilder`];
//! the C ABI and the examples are thin users of it.
//!
//! The [`Setup`] keeps each device it added (the emulator behind an emulated device, the driver
//! behind a real one) for as long as the engine may use it, adds more while clients run, and
//! removes them in order or by surprise.
//!
//! ```
//! use std::time::Duration;
//! use dmaplane::hotplug::HotplugEvent;
//! use dmaplane::{Removal, Setup};
//!
//! let setup = Setup::builder().cpus(2).emulated_ioat(2).build().unwrap();
//! let first = setup.devices()[0].id;
//! setup.remove_device(first, Removal::Surprise).unwrap();
//! loop {
//!     match setup.next_event(Duration::from_secs(5)) {
//!         Some(HotplugEvent::Removed(report)) => break assert_eq!(report.device, first),
//!         Some(_) => continue,
//!         None => panic!("no removal report"),
//!     }
//! }
//! let again = setup.add_device().unwrap();
//! assert_ne!(again, first);
//! ```

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::datapath::{Client, ClientConfig, ClientError};
use crate::edu::{EduConfig, EduDevice};
use crate::emu::{EmuConfig, EmuError, EmuMode, EmulatedDevice, Fault, PoolMemory};
use crate::engine::{DeviceId, Engine, EngineConfig, EngineError, RemovalOptions};
use crate::hotplug::{EventHook, HotplugEvent, Monitor, MonitorConfig};
use crate::ioat::{IoatConfig, IoatDevice, IoatError, Timeouts};
use crate::log::{LogHook, LogLevel};
use crate::mem::{DmaPool, DmaPoolConfig, IovaMode, MemError};
use crate::pci::{EngineKind, FunctionLock, PciFunction, Sysfs, DEFAULT_LOCK_DIR};
use crate::queue::{ChannelBackend, ChannelStats, DeviceSpec};
use crate::soft::{SoftConfig, SoftDevice, SoftError, SoftFault};
use crate::sync::lock_std;
use crate::vfio::{NoIommu, RequestNotifier, VfioContext, VfioDevice, VfioKernel};

/// The kind of device a setup starts with, and adds with [`Setup::add_device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Emulated IOAT devices driven by the IOAT driver: the embedded default.
    EmulatedIoat,
    /// The software engine.
    Soft,
    /// Real IOAT functions bound to `vfio-pci`, opened through VFIO with the IOMMU
    /// translating: the pool picks IOVAs and maps its memory into the VFIO container. The
    /// usual way on a server.
    VfioIoat,
    /// Real IOAT functions unbound from every driver, their registers mapped through sysfs,
    /// with physical addresses: only with the IOMMU off or in passthrough, and as root.
    PhysicalIoat,
    /// QEMU `edu` devices bound to `vfio-pci`, opened through VFIO as [`DeviceKind::VfioIoat`]
    /// functions are: the KVM rig's DMA engine (see [`crate::edu`]).
    VfioEdu,
}

impl DeviceKind {
    /// Whether devices of this kind are PCI functions the machine has (rather than made by
    /// the setup).
    fn is_pci(self) -> bool {
        matches!(
            self,
            DeviceKind::VfioIoat | DeviceKind::PhysicalIoat | DeviceKind::VfioEdu
        )
    }
}

/// How a device leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// In order: new work is refused, work in flight drains up to the monitor's deadline, the
    /// rest completes with "device removed".
    Orderly,
    /// The device leaves at once (emulated and software devices only): work in flight
    /// completes with "device removed", and the monitor notices by itself.
    Surprise,
}

/// Why a setup could not be built, or a device added or removed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SetupError {
    /// A setting is out of range; the text says which.
    InvalidConfig(String),
    /// The engine refused.
    Engine(EngineError),
    /// The DMA memory pool could not be made.
    Memory(MemError),
    /// The hotplug monitor could not start (its uevent socket, its thread).
    Monitor(io::Error),
    /// An emulated device could not be made.
    Emulator(EmuError),
    /// A software device could not be made, or a fault injected.
    Soft(SoftError),
    /// A device did not probe.
    Probe(IoatError),
    /// No function of the setup's kind could be attached; each one tried, with why not.
    NoDevice {
        /// The kind looked for.
        kind: DeviceKind,
        /// The functions tried.
        tried: Vec<AttachFailure>,
    },
    /// The setup added no device with this id, or it is gone, or its removal was already
    /// asked for.
    UnknownDevice(DeviceId),
    /// A surprise removal of real hardware (only the hardware can leave by surprise).
    SurpriseUnsupported(DeviceId),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::InvalidConfig(why) => write!(f, "invalid setup: {why}"),
            SetupError::Engine(err) => err.fmt(f),
            SetupError::Memory(err) => write!(f, "DMA memory: {err}"),
            SetupError::Monitor(err) => write!(f, "starting the hotplug monitor: {err}"),
            SetupError::Emulator(err) => write!(f, "emulated device: {err}"),
            SetupError::Soft(err) => err.fmt(f),
            SetupError::Probe(err) => write!(f, "probing a device: {err}"),
            SetupError::NoDevice {
                kind: DeviceKind::VfioEdu,
                tried,
            } if tried.is_empty() => f.write_str("no edu function found"),
            SetupError::NoDevice { tried, .. } if tried.is_empty() => {
                f.write_str("no IOAT function found (is this an Intel Xeon with CBDMA?)")
            }
            SetupError::NoDevice { tried, .. } => {
                f.write_str("no function could be attached:")?;
                for failure in tried {
                    write!(f, "\n  {failure}")?;
                }
                Ok(())
            }
            SetupError::UnknownDevice(id) => {
                write!(f, "device {id} is not one of this setup's present devices")
            }
            SetupError::SurpriseUnsupported(id) => {
                write!(
                    f,
                    "device {id} is real hardware: it cannot be removed by surprise"
                )
            }
        }
    }
}

impl std::error::Error for SetupError {}

impl From<EngineError> for SetupError {
    fn from(err: EngineError) -> Self {
        SetupError::Engine(err)
    }
}

/// Why a sysfs file of a function could not be used, with the fix where there is one: its
/// registers and configuration space are root's (and a kernel in lockdown refuses even root).
fn sysfs_cause(what: &str, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "{what}: permission denied (run as root; with Secure Boot the kernel's lockdown \
             refuses it even then, so use the VFIO mode)"
        ),
        _ => format!("{what}: {error}"),
    }
}

/// A function that was tried and not attached, with the cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachFailure {
    /// Its PCI address.
    pub bdf: String,
    /// Why, with what to do about it.
    pub cause: String,
}

impl fmt::Display for AttachFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.bdf, self.cause)
    }
}

/// Builds a [`Setup`]. Defaults: this machine's CPUs, two emulated IOAT devices of one
/// threaded channel each with copy and fill, 1024-descriptor rings, and a monitor without
/// uevents whose removals let work drain for 100 ms.
#[derive(Clone, Debug)]
pub struct SetupBuilder {
    engine: EngineConfig,
    kind: DeviceKind,
    devices: usize,
    channels_per_device: usize,
    fill: bool,
    emulation: EmuMode,
    ring_order: u32,
    pool: Option<DmaPoolConfig>,
    monitor: MonitorConfig,
    sysfs: Sysfs,
    vfio_kernel: Option<Arc<dyn VfioKernel>>,
    noiommu: NoIommu,
    lock_dir: PathBuf,
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
            DeviceKind::EmulatedIoat | DeviceKind::Soft => IovaMode::Va,
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
        } else {
            for _ in 0..setup.builder.devices {
                setup.add_device()?;
            }
        }
        Ok(setup)
    }
}

/// What is behind a device the setup added.
enum Behind {
    Emulated {
        emulator: Arc<EmulatedDevice>,
        driver: IoatDevice,
    },
    Soft(SoftDevice),
    /// Fields drop in order: the driver's channels stop before the function is let go.
    Physical {
        driver: IoatDevice,
        lock: Option<FunctionLock>,
    },
    Vfio {
        driver: IoatDevice,
        device: VfioDevice,
        lock: Option<FunctionLock>,
    },
    VfioEdu {
        driver: EduDevice,
        device: VfioDevice,
        lock: Option<FunctionLock>,
    },
}

impl Behind {
    /// The VFIO device behind it, if it was opened through VFIO.
    fn vfio(&self) -> Option<&VfioDevice> {
        match self {
            Behind::Vfio { device, .. } | Behind::VfioEdu { device, .. } => Some(device),
            _ => None,
        }
    }

    /// Lets other processes (and a later attach) have the function.
    fn unlock(&mut self) {
        if let Behind::Physical { lock, .. }
        | Behind::Vfio { lock, .. }
        | Behind::VfioEdu { lock, .. } = self
        {
            lock.take();
        }
    }

    fn is_pci(&self) -> bool {
        matches!(
            self,
            Behind::Physical { .. } | Behind::Vfio { .. } | Behind::VfioEdu { .. }
        )
    }
}

/// A device the setup added, kept until the engine has released it.
struct Attached {
    id: DeviceId,
    name: String,
    behind: Behind,
    channels: Vec<Arc<dyn ChannelBackend>>,
    /// Its removal was asked for (the monitor may not have unregistered it yet).
    removal_requested: bool,
    /// The function was handed back to the kernel after its removal (the engine may still be
    /// waiting for holders to let go): it may be attached again.
    handed_back: bool,
}

#[derive(Default)]
struct Devices {
    attached: Vec<Attached>,
    /// Request notifiers of VFIO functions probed but not yet registered, by address.
    notifiers: std::collections::HashMap<String, Arc<RequestNotifier>>,
    serial: u32,
    /// What the channels of released devices did.
    released: ChannelStats,
}

impl Devices {
    /// Drops what the engine has released (its channels are stopped, their statistics final),
    /// so a long run of removals and additions does not keep every device it ever had, and a
    /// VFIO function goes back to the kernel (whose unbind waits for its file to close).
    fn let_go_of_released(&mut self, engine: &Engine) {
        let Devices {
            attached, released, ..
        } = self;
        attached.retain(|d| {
            let keep = engine.device_present(d.id).is_some();
            if !keep {
                *released = *released + device_stats(&d.channels);
            }
            keep
        });
    }
}

/// The monitor's event hook: after each removal, hands a VFIO function back to the kernel at
/// once (its unbind or removal waits for that; the channels are stopped, so whatever still
/// reads the registers gets the all-ones of a removed device) and lets go of what the engine
/// released (the application may not call the setup again for a while), then calls the
/// application's own hook.
fn release_on_removal(
    engine: &Engine,
    devices: &Arc<Mutex<Devices>>,
    application: Option<EventHook>,
) -> EventHook {
    let engine = engine.clone();
    let devices = Arc::downgrade(devices);
    Arc::new(move |event| {
        if let (HotplugEvent::Removed(report), Some(devices)) = (event, devices.upgrade()) {
            let mut devices = lock_std(&devices);
            if let Some(removed) = devices.attached.iter_mut().find(|d| d.id == report.device) {
                if let Some(vfio) = removed.behind.vfio() {
                    vfio.release();
                    removed.behind.unlock();
                    removed.handed_back = true;
                }
            }
            devices.let_go_of_released(&engine);
        }
        if let Some(hook) = &application {
            hook(event);
        }
    })
}

/// What a device's channels did, summed.
fn device_stats(channels: &[Arc<dyn ChannelBackend>]) -> ChannelStats {
    channels
        .iter()
        .fold(ChannelStats::default(), |sum, c| sum + c.stats())
}

/// A device of the setup, as [`Setup::devices`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its engine id.
    pub id: DeviceId,
    /// Its name (`emuN`, `softN`, or the PCI address).
    pub name: String,
    /// What it is.
    pub kind: DeviceKind,
    /// Whether its removal was asked for and has not finished.
    pub removal_requested: bool,
}

/// An engine with its DMA memory, devices and hotplug monitor. See the module documentation.
pub struct Setup {
    engine: Engine,
    pool: DmaPool,
    monitor: Option<Monitor>,
    builder: SetupBuilder,
    /// Shared with the monitor's event hook, which lets go of removed devices.
    devices: Arc<Mutex<Devices>>,
    /// Serializes hardware attaches, so two threads never probe the same PCI function.
    attaching: Mutex<()>,
    /// The VFIO context every function joins, made with the first one.
    vfio: Mutex<Option<Arc<VfioContext>>>,
}

impl Setup {
    /// A builder with the defaults.
    pub fn builder() -> SetupBuilder {
        SetupBuilder::default()
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The DMA memory pool the devices reach.
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }

    /// The hotplug monitor.
    pub fn monitor(&self) -> &Monitor {
        self.monitor
            .as_ref()
            .expect("the monitor lives as long as the setup")
    }

    /// The kind of device the setup adds.
    pub fn device_kind(&self) -> DeviceKind {
        self.builder.kind
    }

    /// A client for `cpu` with the default settings; see [`Client::new`].
    pub fn client(&self, cpu: usize) -> Result<Client, ClientError> {
        Client::new(&self.engine, Some(cpu), ClientConfig::default())
    }

    /// The next hotplug event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<HotplugEvent> {
        self.monitor().next_event(timeout)
    }

    fn devices_locked(&self) -> MutexGuard<'_, Devices> {
        let mut devices = lock_std(&self.devices);
        devices.let_go_of_released(&self.engine);
        devices
    }

    /// The devices the setup added that the engine has not released yet.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.devices_locked()
            .attached
            .iter()
            .map(|d| DeviceInfo {
                id: d.id,
                name: d.name.clone(),
                kind: match d.behind {
                    Behind::Emulated { .. } => DeviceKind::EmulatedIoat,
                    Behind::Soft(_) => DeviceKind::Soft,
                    Behind::Physical { .. } => DeviceKind::PhysicalIoat,
                    Behind::Vfio { .. } => DeviceKind::VfioIoat,
                    Behind::VfioEdu { .. } => DeviceKind::VfioEdu,
                },
                removal_requested: d.removal_requested,
            })
            .collect()
    }

    /// What the channels of every device the setup ever added have done: operations by
    /// outcome, bytes, descriptors (released devices included).
    pub fn stats(&self) -> ChannelStats {
        let devices = self.devices_locked();
        devices
            .attached
            .iter()
            .fold(devices.released, |sum, d| sum + device_stats(&d.channels))
    }

    /// The settings of an IOAT channel: emulated channels get deadlines no scheduler delay
    /// reaches, since the emulator is a thread sharing the CPUs with the application (and,
    /// in tests, with valgrind); a channel whose start timed out would be left out.
    fn channel_config(&self, emulated: bool) -> IoatConfig {
        let mut config = IoatConfig {
            ring_order: self.builder.ring_order,
            ..IoatConfig::default()
        };
        if emulated {
            config.timeouts = Timeouts {
                suspend: Duration::from_secs(1),
                reset: Duration::from_secs(5),
                start: Duration::from_secs(5),
            };
        }
        config
    }

    /// Adds one device of the setup's kind while clients run (for real hardware, the first
    /// IOAT function not attached yet); the table is rebalanced onto it before this returns
    /// and the monitor reports it.
    pub fn add_device(&self) -> Result<DeviceId, SetupError> {
        let b = &self.builder;
        let serial = {
            let mut devices = lock_std(&self.devices);
            devices.serial += 1;
            devices.serial - 1
        };
        let (name, behind) = match b.kind {
            DeviceKind::PhysicalIoat | DeviceKind::VfioIoat | DeviceKind::VfioEdu => {
                return self
                    .add_hardware(1)?
                    .first()
                    .copied()
                    .ok_or(SetupError::NoDevice {
                        kind: b.kind,
                        tried: Vec::new(),
                    })
            }
            DeviceKind::EmulatedIoat => {
                let config = EmuConfig {
                    channels: b.channels_per_device,
                    fill: b.fill,
                    mode: b.emulation,
                    ..EmuConfig::default()
                };
                // SAFETY: descriptors reach the emulated device only through the clients' and
                // the driver's `unsafe` submit calls, whose callers keep the named buffers
                // allocated and untouched until the completion.
                let memory = Arc::new(unsafe { PoolMemory::new(self.pool.clone()) });
                let emulator = EmulatedDevice::new(config, memory).map_err(SetupError::Emulator)?;
                let name = format!("emu{serial}");
                let driver = IoatDevice::probe(
                    name.clone(),
                    emulator.registers(),
                    Some(emulator.config_space()),
                    self.pool.clone(),
                    self.channel_config(true),
                )
                .map_err(SetupError::Probe)?;
                (name, Behind::Emulated { emulator, driver })
            }
            DeviceKind::Soft => {
                let name = format!("soft{serial}");
                let config = SoftConfig {
                    channels: b.channels_per_device,
                    ring_order: b.ring_order,
                    fill: b.fill,
                    pool: Some(self.pool.clone()),
                    ..SoftConfig::default()
                };
                let device = SoftDevice::new(name.clone(), config).map_err(SetupError::Soft)?;
                (name, Behind::Soft(device))
            }
        };
        self.attach(name, behind)
    }

    /// Registers a device through the monitor and keeps what is behind it.
    fn attach(&self, name: String, behind: Behind) -> Result<DeviceId, SetupError> {
        let spec: DeviceSpec = match &behind {
            Behind::Emulated { driver, .. }
            | Behind::Physical { driver, .. }
            | Behind::Vfio { driver, .. } => driver.spec(),
            Behind::Soft(device) => device.spec(),
            Behind::VfioEdu { driver, .. } => driver.spec(),
        };
        let channels = spec.channels.clone();
        let id = self.monitor().add(spec)?;
        if behind.is_pci() {
            // The kernel removing or unbinding the function removes the device; for a VFIO
            // function, so does the kernel asking for it back.
            self.monitor().watch_pci(id, name.clone());
            if let Some(notifier) = lock_std(&self.devices).notifiers.remove(&name) {
                self.monitor().watch_request(id, notifier);
            }
        }
        self.devices_locked().attached.push(Attached {
            id,
            name,
            behind,
            channels,
            removal_requested: false,
            handed_back: false,
        });
        Ok(id)
    }

    /// Attaches up to `limit` IOAT functions not attached yet, the setup's way (VFIO or
    /// physical); returns their ids. A function that cannot be attached is passed over with
    /// its cause logged; when none could be, the error lists every cause.
    fn add_hardware(&self, limit: usize) -> Result<Vec<DeviceId>, SetupError> {
        let _one_at_a_time = lock_std(&self.attaching);
        let attached: Vec<String> = self
            .devices_locked()
            .attached
            .iter()
            .filter(|d| d.behind.is_pci() && !d.handed_back)
            .map(|d| d.name.clone())
            .collect();
        let mut added = Vec::new();
        let mut tried = Vec::new();
        let kind = match self.builder.kind {
            DeviceKind::VfioEdu => EngineKind::Edu,
            _ => EngineKind::Ioat,
        };
        for function in self.builder.sysfs.discover(kind) {
            if added.len() == limit {
                break;
            }
            if attached.contains(&function.bdf) {
                continue;
            }
            let outcome = match self.builder.kind {
                DeviceKind::PhysicalIoat => self.physical_function(&function),
                _ => self.vfio_function(&function),
            };
            match outcome.and_then(|behind| {
                self.attach(function.bdf.clone(), behind)
                    .map_err(|e| e.to_string())
            }) {
                Ok(id) => added.push(id),
                Err(cause) => {
                    (self.builder.engine.log)(
                        LogLevel::Warn,
                        &format!("{} not attached: {cause}", function.bdf),
                    );
                    tried.push(AttachFailure {
                        bdf: function.bdf,
                        cause,
                    });
                }
            }
        }
        if added.is_empty() {
            return Err(SetupError::NoDevice {
                kind: self.builder.kind,
                tried,
            });
        }
        Ok(added)
    }

    /// A function unbound from every driver, through sysfs, with physical addresses.
    fn physical_function(&self, function: &PciFunction) -> Result<Behind, String> {
        match function.driver.as_deref() {
            None => {}
            // The kernel driver owns a bound function; sharing its registers would corrupt
            // both. Bound to vfio-pci, it idles in D3 and its BAR reads all-ones.
            Some("vfio-pci") => {
                return Err("bound to vfio-pci: use the VFIO mode, or unbind it".into())
            }
            Some(driver) => {
                return Err(format!(
                    "bound to {driver}: unbind it first (`dmaplane-setup unbind {}`)",
                    function.bdf
                ))
            }
        }
        let lock = FunctionLock::acquire(&self.builder.lock_dir, &function.bdf)
            .map_err(|e| e.to_string())?;
        let registers = function
            .map_bar0(crate::ioat::spec::BAR_SIZE)
            .map_err(|e| sysfs_cause("mapping resource0", &e))?;
        let config = function
            .config()
            .map_err(|e| sysfs_cause("opening configuration space", &e))?;
        let driver = IoatDevice::probe(
            function.bdf.clone(),
            Arc::new(registers),
            Some(Arc::new(config)),
            self.pool.clone(),
            self.channel_config(false),
        )
        .map_err(|e| e.to_string())?;
        Ok(Behind::Physical {
            driver,
            lock: Some(lock),
        })
    }

    /// A function bound to vfio-pci, opened through VFIO into the setup's context, with the
    /// pool mapped into it and the kernel's device requests watched.
    fn vfio_function(&self, function: &PciFunction) -> Result<Behind, String> {
        if function.driver.as_deref() != Some("vfio-pci") {
            return Err(crate::vfio::VfioError::NotBound {
                bdf: function.bdf.clone(),
                driver: function.driver.clone(),
            }
            .to_string());
        }
        let lock = FunctionLock::acquire(&self.builder.lock_dir, &function.bdf)
            .map_err(|e| e.to_string())?;
        let context = {
            let mut vfio = lock_std(&self.vfio);
            match &*vfio {
                Some(context) => Arc::clone(context),
                None => {
                    let kernel = self
                        .builder
                        .vfio_kernel
                        .clone()
                        .unwrap_or_else(|| crate::vfio::LinuxVfio::new());
                    let context = VfioContext::for_function(
                        kernel,
                        &self.builder.sysfs,
                        &function.bdf,
                        self.builder.noiommu,
                    )
                    .map_err(|e| e.to_string())?;
                    *vfio = Some(Arc::clone(&context));
                    context
                }
            }
        };
        let device = context
            .open_device(&self.builder.sysfs, &function.bdf)
            .map_err(|e| e.to_string())?;
        if self.pool.iova_mode() == IovaMode::Mapped {
            self.pool
                .attach_iommu(context.clone())
                .map_err(|e| format!("mapping the DMA pool: {e}"))?;
        }
        let bar_size = match function.kind {
            EngineKind::Edu => crate::edu::spec::BAR_SIZE,
            _ => crate::ioat::spec::BAR_SIZE,
        };
        let registers = device.bar0(bar_size).map_err(|e| e.to_string())?;
        let config = device.config_space().map_err(|e| e.to_string())?;
        let notifier = device.request_notifier().map_err(|e| e.to_string())?;
        let behind = if function.kind == EngineKind::Edu {
            let driver = EduDevice::probe(
                function.bdf.clone(),
                registers,
                Some(config),
                self.pool.clone(),
                EduConfig::default(),
            )
            .map_err(|e| e.to_string())?;
            Behind::VfioEdu {
                driver,
                device,
                lock: Some(lock),
            }
        } else {
            let driver = IoatDevice::probe(
                function.bdf.clone(),
                registers,
                Some(config),
                self.pool.clone(),
                self.channel_config(false),
            )
            .map_err(|e| e.to_string())?;
            Behind::Vfio {
                driver,
                device,
                lock: Some(lock),
            }
        };
        self.pending_notifier(&function.bdf, notifier);
        Ok(behind)
    }

    /// Keeps a VFIO function's request notifier until its device id is known.
    fn pending_notifier(&self, bdf: &str, notifier: RequestNotifier) {
        lock_std(&self.devices)
            .notifiers
            .insert(bdf.to_string(), Arc::new(notifier));
    }

    /// Starts the removal of `device` while clients keep working; the outcome arrives as a
    /// [`HotplugEvent::Removed`] (or `Failed`) event. Clients must keep polling for the
    /// release to complete. A second request for the same device is refused.
    pub fn remove_device(&self, device: DeviceId, how: Removal) -> Result<(), SetupError> {
        let mut devices = self.devices_locked();
        let attached = devices
            .attached
            .iter_mut()
            .find(|d| d.id == device && !d.removal_requested)
            .filter(|_| self.engine.devices().iter().any(|(id, _)| *id == device))
            .ok_or(SetupError::UnknownDevice(device))?;
        match (how, &attached.behind) {
            (Removal::Orderly, _) => self.monitor().remove(device),
            // The device leaves the bus: the monitor notices it reading all-ones (or gone)
            // and runs the removal.
            (Removal::Surprise, Behind::Emulated { emulator, .. }) => emulator
                .inject(Fault::SurpriseRemoval)
                .map_err(SetupError::Emulator)?,
            (Removal::Surprise, Behind::Soft(soft)) => soft
                .inject(SoftFault::SurpriseRemoval)
                .map_err(SetupError::Soft)?,
            (Removal::Surprise, _) => return Err(SetupError::SurpriseUnsupported(device)),
        }
        attached.removal_requested = true;
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The monitor first, so no removal runs while the devices go.
        if let Some(monitor) = self.monitor.take() {
            monitor.stop();
        }
    }
}

impl fmt::Debug for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup")
            .field("kind", &self.builder.kind)
            .field("devices", &self.devices())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_sysfs_file_names_the_fix() {
        let refused = io::Error::from_raw_os_error(libc::EACCES);
        let cause = sysfs_cause("mapping resource0", &refused);
        assert!(
            cause.contains("run as root") && cause.contains("VFIO"),
            "{cause}"
        );
        let missing = io::Error::from_raw_os_error(libc::ENOENT);
        let cause = sysfs_cause("mapping resource0", &missing);
        assert!(!cause.contains("root"), "{cause}");
    }
}
