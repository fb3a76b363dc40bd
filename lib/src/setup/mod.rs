//! Everything an application sets up before its clients run, in one place: the engine, the
//! DMA memory pool, the devices (emulated IOAT, the software engine, real IOAT functions
//! through VFIO or sysfs, QEMU `edu` devices), and the hotplug monitor with PCI watching.
//! Built with [`SetupBuilder`] (`builder.rs`); PCI functions are attached in `hardware.rs`.
//! The C ABI and the examples are thin users of it.
//!
//! The [`Setup`] keeps each device it added (the emulator behind an emulated device, the driver
//! and the VFIO device behind a real one) for as long as the engine may use it, adds more
//! while clients run, and removes them in order or by surprise; a VFIO function goes back to
//! the kernel as soon as its removal completes.
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::datapath::{Client, ClientConfig, ClientError};
use crate::dsa::{DsaConfig, DsaDevice, DsaError, DsaLayout, DsaQueueConfig};
use crate::edu::EduDevice;
use crate::emu::{
    DsaEmuConfig, DsaFault, EmuConfig, EmuError, EmulatedDevice, EmulatedDsa, Fault, PoolMemory,
};
use crate::engine::{DeviceId, Engine, EngineError};
use crate::hotplug::{EventHook, HotplugEvent, Monitor};
use crate::ioat::{IoatConfig, IoatDevice, IoatError, Timeouts};
use crate::mem::{DmaPool, MemError};
use crate::pci::FunctionLock;
use crate::queue::{ChannelBackend, ChannelStats, DeviceSpec};
use crate::soft::{SoftConfig, SoftDevice, SoftError, SoftFault};
use crate::sync::lock_std;
use crate::vfio::{RequestNotifier, VfioContext, VfioDevice};

mod builder;
mod hardware;

pub use builder::SetupBuilder;
pub use hardware::AttachFailure;

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
    /// Emulated DSA devices driven by the DSA driver, a channel per work queue.
    EmulatedDsa,
    /// Emulated IOAT and DSA devices by turns: one engine balancing across both.
    Mixed,
    /// DSA work queues of the kernel's `idxd` driver, opened through `/dev/dsa`.
    KernelDsa,
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
    /// A DSA device or work queue could not be brought up.
    Dsa(DsaError),
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
            SetupError::Dsa(err) => write!(f, "DSA: {err}"),
            SetupError::NoDevice {
                kind: DeviceKind::KernelDsa,
                tried,
            } if tried.is_empty() => f.write_str(
                "no DSA work queue found under /sys/bus/dsa (is the idxd driver loaded, and a \
                 user WQ configured with accel-config?)",
            ),
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
    EmulatedDsa {
        emulator: Arc<EmulatedDsa>,
        driver: DsaDevice,
    },
    KernelDsa(DsaDevice),
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
                    Behind::EmulatedDsa { .. } => DeviceKind::EmulatedDsa,
                    Behind::KernelDsa(_) => DeviceKind::KernelDsa,
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
            DeviceKind::KernelDsa => {
                return self
                    .add_kernel_dsa()?
                    .first()
                    .copied()
                    .ok_or(SetupError::NoDevice {
                        kind: b.kind,
                        tried: Vec::new(),
                    })
            }
            DeviceKind::EmulatedDsa => self.emulated_dsa(serial)?,
            DeviceKind::Mixed if serial % 2 == 1 => self.emulated_dsa(serial)?,
            DeviceKind::EmulatedIoat | DeviceKind::Mixed => {
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

    /// An emulated DSA device of the setup's WQ count, configured by the DSA driver.
    fn emulated_dsa(&self, serial: u32) -> Result<(String, Behind), SetupError> {
        let b = &self.builder;
        let config = DsaEmuConfig {
            wqs: b.channels_per_device.max(1),
            mode: b.emulation,
            ..DsaEmuConfig::default()
        };
        // SAFETY: as for the emulated IOAT device: descriptors name only buffers of the
        // clients' and the driver's `unsafe` submit calls, kept alive until completion.
        let memory = Arc::new(unsafe { PoolMemory::new(self.pool.clone()) });
        let emulator = EmulatedDsa::new(config, memory).map_err(SetupError::Emulator)?;
        let name = format!("dsa{serial}");
        let driver = DsaDevice::probe(
            name.clone(),
            emulator.registers(),
            emulator.portals(),
            Some(emulator.config_space()),
            self.pool.clone(),
            DsaConfig {
                layout: DsaLayout {
                    wqs: b.channels_per_device,
                    ..DsaLayout::default()
                },
                queue: DsaQueueConfig {
                    ring_order: b.ring_order.min(12),
                    ..DsaQueueConfig::default()
                },
                ..DsaConfig::default()
            },
        )
        .map_err(SetupError::Dsa)?;
        Ok((name, Behind::EmulatedDsa { emulator, driver }))
    }

    /// Opens the kernel's usable DSA work queues not opened yet, a device per DSA device.
    fn add_kernel_dsa(&self) -> Result<Vec<DeviceId>, SetupError> {
        let _one_at_a_time = lock_std(&self.attaching);
        let route = &self.builder.dsa_route;
        let wqs = route.scan().map_err(SetupError::Dsa)?;
        let open: Vec<String> = self
            .devices_locked()
            .attached
            .iter()
            .filter(|d| matches!(d.behind, Behind::KernelDsa(_)))
            .map(|d| d.name.clone())
            .collect();
        let mut tried = Vec::new();
        let mut by_device: Vec<(String, Vec<crate::dsa::WorkQueue>)> = Vec::new();
        for wq in wqs.iter().filter(|wq| !open.contains(&wq.device)) {
            match route.open(wq, &self.pool) {
                Ok(queue) => match by_device.iter_mut().find(|(d, _)| *d == wq.device) {
                    Some((_, queues)) => queues.push(queue),
                    None => by_device.push((wq.device.clone(), vec![queue])),
                },
                Err(err) => tried.push(AttachFailure {
                    bdf: format!("{}/{}", wq.device, wq.id),
                    cause: err.to_string(),
                }),
            }
        }
        if by_device.is_empty() {
            return Err(SetupError::NoDevice {
                kind: DeviceKind::KernelDsa,
                tried,
            });
        }
        for failure in &tried {
            (self.builder.engine.log)(
                crate::log::LogLevel::Warn,
                &format!("DSA work queue passed over: {failure}"),
            );
        }
        let mut ids = Vec::new();
        for (name, queues) in by_device {
            let queue = DsaQueueConfig {
                ring_order: self.builder.ring_order.min(12),
                ..DsaQueueConfig::default()
            };
            let driver = DsaDevice::from_queues(name.clone(), queues, self.pool.clone(), queue);
            ids.push(self.attach(name, Behind::KernelDsa(driver))?);
        }
        Ok(ids)
    }

    /// Registers a device through the monitor and keeps what is behind it.
    fn attach(&self, name: String, behind: Behind) -> Result<DeviceId, SetupError> {
        let spec: DeviceSpec = match &behind {
            Behind::Emulated { driver, .. }
            | Behind::Physical { driver, .. }
            | Behind::Vfio { driver, .. } => driver.spec(),
            Behind::Soft(device) => device.spec(),
            Behind::VfioEdu { driver, .. } => driver.spec(),
            Behind::EmulatedDsa { driver, .. } | Behind::KernelDsa(driver) => driver.spec(),
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
            (Removal::Surprise, Behind::EmulatedDsa { emulator, .. }) => emulator
                .inject(DsaFault::SurpriseRemoval)
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
