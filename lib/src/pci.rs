//! PCI plumbing for real IOAT functions: configuration-space access and discovery in sysfs.
//!
//! The driver reaches configuration space through [`ConfigSpace`]: on hardware, reads and
//! writes of `/sys/bus/pci/devices/<bdf>/config` ([`SysfsConfig`]); on the emulated device,
//! its model. Discovery lists the functions whose vendor and device ids are IOAT's, so that
//! an application can attach them after unbinding the kernel's `ioatdma` driver.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::mmio::{Access, AccessLog, DmaAddressing, MmioRegion, Space};

/// PCI configuration space of one function.
pub trait ConfigSpace: Send + Sync {
    /// Reads the 16-bit register at `offset`.
    fn read16(&self, offset: usize) -> io::Result<u16>;
    /// Writes the 16-bit register at `offset`.
    fn write16(&self, offset: usize, value: u16) -> io::Result<()>;
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> io::Result<u32>;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32) -> io::Result<()>;
}

/// Configuration space through the sysfs `config` file (needs root for offsets past 0x40).
#[derive(Debug)]
pub struct SysfsConfig {
    file: File,
}

impl SysfsConfig {
    /// Opens `<device dir>/config` for reading and writing.
    pub fn open(device_dir: &Path) -> io::Result<SysfsConfig> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device_dir.join("config"))?;
        Ok(SysfsConfig { file })
    }

    fn read_exact<const N: usize>(&self, offset: usize) -> io::Result<[u8; N]> {
        let mut bytes = [0u8; N];
        self.file.read_exact_at(&mut bytes, offset as u64)?;
        Ok(bytes)
    }
}

impl ConfigSpace for SysfsConfig {
    fn read16(&self, offset: usize) -> io::Result<u16> {
        self.read_exact(offset).map(u16::from_le_bytes)
    }

    fn write16(&self, offset: usize, value: u16) -> io::Result<()> {
        self.file.write_all_at(&value.to_le_bytes(), offset as u64)
    }

    fn read32(&self, offset: usize) -> io::Result<u32> {
        self.read_exact(offset).map(u32::from_le_bytes)
    }

    fn write32(&self, offset: usize, value: u32) -> io::Result<()> {
        self.file.write_all_at(&value.to_le_bytes(), offset as u64)
    }
}

/// A [`ConfigSpace`] that records every access it passes on into an [`AccessLog`] (shared
/// with a [`RecordingWindow`](crate::mmio::RecordingWindow), the log keeps register and
/// configuration accesses in one order).
pub struct RecordingConfig {
    inner: Arc<dyn ConfigSpace>,
    log: AccessLog,
}

impl RecordingConfig {
    /// Records the accesses to `inner` into `log`.
    pub fn new(inner: Arc<dyn ConfigSpace>, log: AccessLog) -> RecordingConfig {
        RecordingConfig { inner, log }
    }

    fn note(&self, write: bool, offset: usize, width: u8, value: u64) {
        self.log.push(Access {
            space: Space::Config,
            write,
            offset,
            width,
            value,
        });
    }
}

impl ConfigSpace for RecordingConfig {
    fn read16(&self, offset: usize) -> io::Result<u16> {
        let value = self.inner.read16(offset)?;
        self.note(false, offset, 2, value.into());
        Ok(value)
    }

    fn write16(&self, offset: usize, value: u16) -> io::Result<()> {
        self.note(true, offset, 2, value.into());
        self.inner.write16(offset, value)
    }

    fn read32(&self, offset: usize) -> io::Result<u32> {
        let value = self.inner.read32(offset)?;
        self.note(false, offset, 4, value.into());
        Ok(value)
    }

    fn write32(&self, offset: usize, value: u32) -> io::Result<()> {
        self.note(true, offset, 4, value.into());
        self.inner.write32(offset, value)
    }
}

/// Standard PCI configuration registers and bits that any function's driver touches.
pub mod regs {
    /// u16: vendor id.
    pub const VENDOR_ID: usize = 0x00;
    /// u16: device id.
    pub const DEVICE_ID: usize = 0x02;
    /// u16: command register.
    pub const COMMAND: usize = 0x04;
    /// COMMAND: the function answers memory-space accesses (its BARs).
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// COMMAND: the function may master the bus (issue DMA).
    pub const COMMAND_MASTER: u16 = 1 << 2;
    /// u16: status register.
    pub const STATUS: usize = 0x06;
    /// STATUS: a capability list starts at [`CAPABILITIES`].
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// u8: offset of the first capability.
    pub const CAPABILITIES: usize = 0x34;
    /// Capability id of the PCI Express capability.
    pub const CAP_ID_EXP: u8 = 0x10;
    /// u16: Device Control, from the start of the PCI Express capability.
    pub const EXP_DEVCTL: usize = 0x08;
    /// Device Control: the function may set the Relaxed Ordering attribute on its writes, which
    /// would let a completion write overtake the data it reports.
    pub const EXP_DEVCTL_RELAX_EN: u16 = 1 << 4;
}

/// The offset of the capability with id `id` in `config`'s list, if the function has one.
/// The walk is bounded, so a looping list cannot hang it.
pub fn find_capability(config: &dyn ConfigSpace, id: u8) -> io::Result<Option<usize>> {
    if config.read16(regs::STATUS)? & regs::STATUS_CAP_LIST == 0 {
        return Ok(None);
    }
    let mut at = usize::from(config.read16(regs::CAPABILITIES & !1)? as u8) & !3;
    for _ in 0..48 {
        if at < 0x40 {
            return Ok(None);
        }
        let header = config.read16(at)?;
        if header as u8 == id {
            return Ok(Some(at));
        }
        at = usize::from((header >> 8) as u8) & !3;
    }
    Ok(None)
}

/// Intel's PCI vendor id.
pub const INTEL_VENDOR: u16 = 0x8086;

/// Device ids of IOAT v3 DMA functions (Tylersburg through Ice Lake).
pub const IOAT_DEVICE_IDS: &[u16] = &[
    0x3430, 0x3431, 0x3432, 0x3433, 0x3429, 0x342a, 0x342b, 0x342c, // Tylersburg
    0x3710, 0x3711, 0x3712, 0x3713, 0x3714, 0x3715, 0x3716, 0x3717, 0x3718, 0x3719, // JSF
    0x3c20, 0x3c21, 0x3c22, 0x3c23, 0x3c24, 0x3c25, 0x3c26, 0x3c27, 0x3c2e, 0x3c2f, // SNB
    0x0e20, 0x0e21, 0x0e22, 0x0e23, 0x0e24, 0x0e25, 0x0e26, 0x0e27, 0x0e2e, 0x0e2f, // IVB
    0x2f20, 0x2f21, 0x2f22, 0x2f23, 0x2f24, 0x2f25, 0x2f26, 0x2f27, 0x2f2e, 0x2f2f, // HSW
    0x6f20, 0x6f21, 0x6f22, 0x6f23, 0x6f24, 0x6f25, 0x6f26, 0x6f27, 0x6f2e, 0x6f2f, // BDX
    0x0c50, 0x0c51, 0x0c52, 0x0c53, // Avoton
    0x6f50, 0x6f51, 0x6f52, 0x6f53, // Broadwell-DE
    0x2021, // Skylake-SP
    0x0b00, // Ice Lake-SP
];

/// An IOAT function found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoatFunction {
    /// Bus/device/function address, such as `0000:00:04.0`.
    pub bdf: String,
    /// Its sysfs directory.
    pub dir: PathBuf,
    /// PCI device id.
    pub device_id: u16,
    /// NUMA node, when the kernel reports one.
    pub numa_node: Option<u32>,
    /// Kernel driver bound to it (`ioatdma`, `vfio-pci`, `uio_pci_generic`), if any.
    pub driver: Option<String>,
    /// Its IOMMU group, when the kernel runs an IOMMU (or VFIO's no-IOMMU mode) for it.
    pub iommu_group: Option<u32>,
}

impl IoatFunction {
    /// Maps the first `len` bytes of BAR0, the register window (`ioat::spec::BAR_SIZE`),
    /// through sysfs: the device will see bus addresses, physical unless an IOMMU translates
    /// for it, which the window records for the driver's check.
    pub fn map_bar0(&self, len: usize) -> io::Result<MmioRegion> {
        let iommu_translating = self.iommu_group.is_some_and(|group| {
            // .../devices/<bdf> → the sysfs root is three levels up.
            let root = self.dir.ancestors().nth(4).unwrap_or(Path::new("/sys"));
            Sysfs::at(root).group_type(group).as_deref() != Some("identity")
        });
        Ok(MmioRegion::map_resource(&self.dir.join("resource0"), len)?
            .with_addressing(DmaAddressing::Physical { iommu_translating }))
    }

    /// Opens the function's configuration space.
    pub fn config(&self) -> io::Result<SysfsConfig> {
        SysfsConfig::open(&self.dir)
    }
}

fn read_hex_u16(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// Lists the IOAT functions under `devices_dir` (normally `/sys/bus/pci/devices`), sorted by
/// address. A directory that cannot be read yields an empty list.
pub fn discover_in(devices_dir: &Path) -> Vec<IoatFunction> {
    let Ok(entries) = std::fs::read_dir(devices_dir) else {
        return Vec::new();
    };
    let mut found: Vec<IoatFunction> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            if read_hex_u16(&dir.join("vendor"))? != INTEL_VENDOR {
                return None;
            }
            let device_id = read_hex_u16(&dir.join("device"))?;
            if !IOAT_DEVICE_IDS.contains(&device_id) {
                return None;
            }
            let numa_node = std::fs::read_to_string(dir.join("numa_node"))
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .and_then(|n| u32::try_from(n).ok());
            Some(IoatFunction {
                bdf: entry.file_name().to_string_lossy().into_owned(),
                driver: link_name(&dir.join("driver")),
                iommu_group: link_name(&dir.join("iommu_group")).and_then(|n| n.parse().ok()),
                dir,
                device_id,
                numa_node,
            })
        })
        .collect();
    found.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    found
}

/// Lists the machine's IOAT functions.
pub fn discover() -> Vec<IoatFunction> {
    Sysfs::system().discover_ioat()
}

/// The last component of the target of the symbolic link at `link`.
fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Where the kernel's sysfs is: `/sys` on a machine, a fake tree in tests. Everything the
/// library and `dmaplane-setup` learn about PCI functions, IOMMU groups and VFIO from the
/// kernel they read through one of these, so that a fake tree stands in for all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// The machine's `/sys`.
    pub fn system() -> Sysfs {
        Sysfs::at("/sys")
    }

    /// A sysfs tree at `root` (a fake one, in tests).
    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `bus/pci/devices`.
    pub fn pci_devices(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    /// The directory of PCI function `bdf`.
    pub fn device_dir(&self, bdf: &str) -> PathBuf {
        self.pci_devices().join(bdf)
    }

    /// `bus/pci/drivers/<driver>`.
    pub fn driver_dir(&self, driver: &str) -> PathBuf {
        self.root.join("bus/pci/drivers").join(driver)
    }

    /// The IOAT functions, in address order.
    pub fn discover_ioat(&self) -> Vec<IoatFunction> {
        discover_in(&self.pci_devices())
    }

    /// The driver bound to `bdf`, if any.
    pub fn driver(&self, bdf: &str) -> Option<String> {
        link_name(&self.device_dir(bdf).join("driver"))
    }

    /// The IOMMU group of `bdf`, if it has one.
    pub fn iommu_group(&self, bdf: &str) -> Option<u32> {
        link_name(&self.device_dir(bdf).join("iommu_group")).and_then(|n| n.parse().ok())
    }

    /// The functions in IOMMU group `group`, in address order.
    pub fn group_devices(&self, group: u32) -> Vec<String> {
        let dir = self
            .root
            .join(format!("kernel/iommu_groups/{group}/devices"));
        let mut devices: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        devices.sort();
        devices
    }

    /// The domain type of IOMMU group `group` (`identity` in passthrough, `DMA` or `DMA-FQ`
    /// when the IOMMU translates), where the kernel reports it.
    pub fn group_type(&self, group: u32) -> Option<String> {
        let text =
            std::fs::read_to_string(self.root.join(format!("kernel/iommu_groups/{group}/type")))
                .ok()?;
        Some(text.trim().to_string())
    }

    /// Whether any IOMMU group exists: an IOMMU is on (or VFIO's no-IOMMU mode made groups).
    pub fn iommu_groups_exist(&self) -> bool {
        std::fs::read_dir(self.root.join("kernel/iommu_groups"))
            .is_ok_and(|mut entries| entries.next().is_some())
    }

    /// Whether VFIO's unsafe no-IOMMU mode is enabled.
    pub fn noiommu_enabled(&self) -> bool {
        std::fs::read_to_string(
            self.root
                .join("module/vfio/parameters/enable_unsafe_noiommu_mode"),
        )
        .is_ok_and(|t| t.trim() == "Y")
    }

    /// The VFIO character device of `bdf` (`vfioN`, under `/dev/vfio/devices`), on kernels
    /// with the device cdev interface.
    pub fn vfio_cdev(&self, bdf: &str) -> Option<String> {
        let mut entries = std::fs::read_dir(self.device_dir(bdf).join("vfio-dev")).ok()?;
        let entry = entries.next()?.ok()?;
        Some(entry.file_name().to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_function(root: &Path, bdf: &str, vendor: &str, device: &str, numa: &str) {
        let dir = root.join(bdf);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), vendor).unwrap();
        std::fs::write(dir.join("device"), device).unwrap();
        std::fs::write(dir.join("numa_node"), numa).unwrap();
        std::fs::write(dir.join("config"), [0u8; 512]).unwrap();
    }

    #[test]
    fn discovers_only_ioat_functions_in_address_order() {
        let root = std::env::temp_dir().join(format!("dmaplane-pci-{}", std::process::id()));
        fake_function(&root, "0000:80:04.1", "0x8086\n", "0x6f21\n", "1\n");
        fake_function(&root, "0000:00:04.0", "0x8086\n", "0x0b00\n", "-1\n");
        fake_function(&root, "0000:00:1f.2", "0x8086\n", "0xa102\n", "0\n"); // SATA, not IOAT
        fake_function(&root, "0000:03:00.0", "0x15b3\n", "0x6f20\n", "0\n"); // other vendor
        let found = discover_in(&root);
        let summary: Vec<_> = found
            .iter()
            .map(|f| (f.bdf.as_str(), f.device_id, f.numa_node))
            .collect();
        assert_eq!(
            summary,
            [
                ("0000:00:04.0", 0x0b00, None),
                ("0000:80:04.1", 0x6f21, Some(1))
            ]
        );

        let config = found[0].config().unwrap();
        config.write16(0x04, 0x0406).unwrap();
        config.write32(0x180, 0xdead_beef).unwrap();
        assert_eq!(config.read16(0x04).unwrap(), 0x0406);
        assert_eq!(config.read32(0x180).unwrap(), 0xdead_beef);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(discover_in(&root).is_empty());
    }
}

/// Where per-function lock files go by default (as SPDK puts its `spdk_pci_lock_*`).
pub const DEFAULT_LOCK_DIR: &str = "/var/tmp";

/// Exclusive ownership of one PCI function among the processes of a machine: an advisory
/// `flock` on `<dir>/dmaplane_pci_<bdf>`, holding the owner's pid so a refusal can name it.
/// Released when dropped, or when the process dies (the kernel drops the lock with the file).
#[derive(Debug)]
pub struct FunctionLock {
    file: File,
    bdf: String,
}

/// Why a function could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process (or another setup in this one) holds it.
    InUse {
        /// The function.
        bdf: String,
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the kernel said.
        error: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::InUse {
                bdf,
                pid: Some(pid),
            } => {
                write!(f, "{bdf} is in use by pid {pid}")
            }
            LockError::InUse { bdf, pid: None } => write!(f, "{bdf} is in use by another process"),
            LockError::Io { path, error } => {
                write!(f, "cannot lock {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

impl FunctionLock {
    /// Takes the lock of `bdf` in `dir`, or says who holds it.
    pub fn acquire(dir: &Path, bdf: &str) -> Result<FunctionLock, LockError> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!("dmaplane_pci_{bdf}"));
        let io_error = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io_error)?;
        // SAFETY: `flock` on a descriptor this file owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(io_error(error));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::InUse {
                bdf: bdf.to_string(),
                pid: text.trim().parse().ok(),
            });
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()));
        written.map_err(io_error)?;
        Ok(FunctionLock {
            file,
            bdf: bdf.to_string(),
        })
    }

    /// The function.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }
}

impl Drop for FunctionLock {
    fn drop(&mut self) {
        // The file stays (removing it could let two processes lock two different files);
        // emptied, it names no owner. Closing it releases the lock.
        let _ = self.file.set_len(0);
    }
}
