//! The kernel route: work queues that the `idxd` driver owns and accel-config configured,
//! found under `/sys/bus/dsa/devices` and reached through their character devices
//! (`/dev/dsa/wqX.Y`), as DPDK's and SPDK's kernel modes reach them.
//!
//! Only enabled WQs of type `user` qualify. Descriptors carry process virtual addresses
//! (shared virtual memory through the device's PASID), so the pool must use IOVA = VA, and
//! the device must have PASID enabled. Opening a dedicated WQ claims it (a second opener gets
//! `EBUSY`); mapping its portal page needs `CAP_SYS_RAWIO` on current kernels. The kernel
//! enables and disables the WQ: the channel only reads its `state` file, and a WQ that turns
//! disabled or disappears is a removal.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::control::{WqControl, WqSettings, WqState};
use super::device::WorkQueue;
use super::error::DsaError;
use super::hw::{MappedPortals, SubmitInstructions};
use super::spec::portal;
use crate::mem::{DmaPool, IovaMode};

/// One work queue as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelWq {
    /// The device's name (`dsa0`).
    pub device: String,
    /// The WQ's name on the bus (`wq0.1`).
    pub id: String,
    /// Its index on the device.
    pub index: u32,
    /// The name accel-config gave it (`--name`).
    pub label: String,
    /// `dedicated` or `shared`.
    pub dedicated: bool,
    /// Type `user` (usable through a character device).
    pub user: bool,
    /// State `enabled`.
    pub enabled: bool,
    /// Entries.
    pub size: u32,
    /// Largest batch.
    pub max_batch: u32,
    /// Largest transfer.
    pub max_transfer: u64,
    /// The device's NUMA node, when sysfs says.
    pub numa_node: Option<i32>,
    /// Whether the device has PASID (shared virtual memory) enabled.
    pub pasid: bool,
    /// The character device.
    pub node: PathBuf,
}

impl KernelWq {
    /// Why this WQ cannot be used through its character device, if it cannot.
    pub fn unusable(&self) -> Option<String> {
        if !self.enabled {
            Some(format!(
                "{} is disabled: accel-config enable-device {} && accel-config enable-wq {}/{}",
                self.id, self.device, self.device, self.id
            ))
        } else if !self.user {
            Some(format!(
                "{} is not a user WQ: accel-config config-wq {}/{} --type=user --name=dmaplane",
                self.id, self.device, self.id
            ))
        } else if !self.pasid {
            Some(format!(
                "{} has PASID disabled, so its descriptors cannot carry virtual addresses \
                 (enable the IOMMU's scalable mode: intel_iommu=on,sm_on)",
                self.device
            ))
        } else {
            None
        }
    }
}

/// Where the kernel route looks: the sysfs and /dev roots (a fake tree in tests).
#[derive(Clone, Debug)]
pub struct KernelRoute {
    sysfs: PathBuf,
    dev: PathBuf,
}

impl Default for KernelRoute {
    fn default() -> Self {
        KernelRoute::new("/sys", "/dev")
    }
}

impl KernelRoute {
    /// A route over these roots.
    pub fn new(sysfs: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> KernelRoute {
        KernelRoute {
            sysfs: sysfs.into(),
            dev: dev.into(),
        }
    }

    fn devices(&self) -> PathBuf {
        self.sysfs.join("bus/dsa/devices")
    }

    /// Every DSA work queue sysfs lists, in name order; empty when the `idxd` driver is not
    /// loaded.
    pub fn scan(&self) -> Result<Vec<KernelWq>, DsaError> {
        let entries = match fs::read_dir(self.devices()) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(DsaError::Kernel(format!("reading /sys/bus/dsa: {err}"))),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("wq"))
            .collect();
        names.sort();
        Ok(names
            .iter()
            .filter_map(|name| self.describe(name))
            .collect())
    }

    fn describe(&self, id: &str) -> Option<KernelWq> {
        let (device_index, index) = id.strip_prefix("wq")?.split_once('.')?;
        let device = format!("dsa{device_index}");
        let wq_dir = self.devices().join(id);
        let dev_dir = self.devices().join(&device);
        let read = |dir: &Path, attr: &str| read_attr(&dir.join(attr));
        let number = |dir: &Path, attr: &str| read(dir, attr).and_then(|v| v.parse::<u64>().ok());
        Some(KernelWq {
            id: id.to_string(),
            index: index.parse().ok()?,
            label: read(&wq_dir, "name").unwrap_or_default(),
            dedicated: read(&wq_dir, "mode").as_deref() == Some("dedicated"),
            user: read(&wq_dir, "type").as_deref() == Some("user"),
            enabled: read(&wq_dir, "state").as_deref() == Some("enabled"),
            size: number(&wq_dir, "size").unwrap_or(0) as u32,
            max_batch: number(&wq_dir, "max_batch_size").unwrap_or(1) as u32,
            max_transfer: number(&wq_dir, "max_transfer_size").unwrap_or(4096),
            numa_node: read(&dev_dir, "numa_node").and_then(|v| v.parse().ok()),
            pasid: read(&dev_dir, "pasid_enabled").as_deref() == Some("1"),
            node: self.dev.join("dsa").join(id),
            device,
        })
    }

    /// Opens `wq`'s character device and maps its portal: a work queue for
    /// [`DsaDevice::from_queues`](super::DsaDevice::from_queues). `pool` must use IOVA = VA.
    pub fn open(&self, wq: &KernelWq, pool: &DmaPool) -> Result<WorkQueue, DsaError> {
        if let Some(why) = wq.unusable() {
            return Err(DsaError::Kernel(why));
        }
        if pool.iova_mode() != IovaMode::Va {
            return Err(DsaError::Addressing(
                "a WQ opened through its character device takes virtual addresses: use a pool \
                 with IovaMode::Va"
                    .into(),
            ));
        }
        SubmitInstructions::detect().require(wq.dedicated)?;
        let file = open_node(&wq.node, wq.dedicated)?;
        let portals = MappedPortals::map(&file, portal::PAGE, wq.dedicated)?;
        // The mapping keeps the portal; the open file keeps the WQ claimed while the channel
        // lives.
        let control = SysfsWq {
            state: self.devices().join(&wq.id).join("state"),
            device_state: self.devices().join(&wq.device).join("state"),
            _claim: file,
        };
        Ok(WorkQueue {
            control: Arc::new(control),
            portals: Arc::new(portals),
            portal_offset: 0,
            settings: WqSettings {
                index: wq.index,
                size: wq.size,
                dedicated: wq.dedicated,
                max_transfer: wq.max_transfer.max(1),
                max_batch: wq.max_batch.max(1),
            },
        })
    }
}

fn read_attr(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|v| v.trim().to_string())
}

fn open_node(node: &Path, dedicated: bool) -> Result<File, DsaError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .map_err(|err| {
            let why = match err.raw_os_error() {
                Some(libc::EBUSY) if dedicated => {
                    "a dedicated WQ takes one opener and another process has it".to_string()
                }
                Some(libc::ENOENT) => "no such character device (is idxd's user driver bound to \
                                       the WQ?)"
                    .to_string(),
                Some(libc::EACCES) => {
                    "permission denied (see dmaplane-setup permissions)".to_string()
                }
                _ => err.to_string(),
            };
            DsaError::Kernel(format!("opening {}: {why}", node.display()))
        })
}

/// A WQ the kernel controls: its state from sysfs; enabling and disabling are the kernel's.
struct SysfsWq {
    state: PathBuf,
    device_state: PathBuf,
    _claim: File,
}

impl WqControl for SysfsWq {
    fn enable(&self) -> Result<(), DsaError> {
        match self.state() {
            WqState::Enabled => Ok(()),
            state => Err(DsaError::Kernel(format!(
                "{} reads {state:?}: the kernel must enable it",
                self.state.display()
            ))),
        }
    }

    fn disable(&self) -> Result<(), DsaError> {
        // Only the kernel can stop the WQ (it drains it when the last opener lets go), so
        // this cannot promise that the device is done with the channel's memory.
        match self.state() {
            WqState::Enabled => Err(DsaError::Kernel(format!(
                "{} is enabled and only the kernel can disable it",
                self.state.display()
            ))),
            _ => Ok(()),
        }
    }

    fn state(&self) -> WqState {
        if read_attr(&self.device_state).as_deref() == Some("halted") {
            return WqState::Halted;
        }
        match read_attr(&self.state).as_deref() {
            None => WqState::Gone,
            Some("enabled") => WqState::Enabled,
            Some(_) => WqState::Disabled,
        }
    }
}
