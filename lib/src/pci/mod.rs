//! PCI plumbing for real DMA functions: configuration-space access, discovery in sysfs
//! ([`Sysfs`], whose root a test may point at a fake tree), moving functions between drivers
//! ([`binding`], what `dmaplane-setup` does), and per-function ownership ([`FunctionLock`]).
//!
//! The driver reaches configuration space through [`ConfigSpace`]: on hardware, reads and
//! writes of `/sys/bus/pci/devices/<bdf>/config` ([`SysfsConfig`]) or of VFIO's configuration
//! region; on the emulated device, its model. Discovery lists the functions whose vendor and
//! device ids are IOAT's (or DSA's).

pub mod binding;
pub mod fake;
mod lock;
mod sysfs;

pub use lock::{FunctionLock, LockError, DEFAULT_LOCK_DIR};
pub use sysfs::Sysfs;

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

/// Readies a function for DMA: memory space and bus mastering on, Relaxed Ordering off in its
/// PCI Express Device Control (so its writes reach memory in order, and a completion never
/// overtakes the data it reports); returns its device id. A VFIO open leaves bus mastering
/// off, and a function reset may clear both bits, so drivers call this at every start.
pub fn enable_dma(config: &dyn ConfigSpace) -> io::Result<u16> {
    let wanted = regs::COMMAND_MEMORY | regs::COMMAND_MASTER;
    let command = config.read16(regs::COMMAND)?;
    if command & wanted != wanted {
        config.write16(regs::COMMAND, command | wanted)?;
    }
    if let Some(exp) = find_capability(config, regs::CAP_ID_EXP)? {
        let devctl = config.read16(exp + regs::EXP_DEVCTL)?;
        if devctl & regs::EXP_DEVCTL_RELAX_EN != 0 {
            config.write16(exp + regs::EXP_DEVCTL, devctl & !regs::EXP_DEVCTL_RELAX_EN)?;
        }
    }
    config.read16(regs::DEVICE_ID)
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

/// Device ids of DSA functions (Sapphire Rapids and later Xeons, Granite Rapids-D, Diamond
/// Rapids), which `dmaplane-setup` lists and binds beside IOAT's.
pub const DSA_DEVICE_IDS: &[u16] = &[0x0b25, 0x11fb, 0x1212];

/// What kind of DMA engine a function is, by its device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// IOAT (QuickData, CBDMA).
    Ioat,
    /// DSA (Data Streaming Accelerator).
    Dsa,
    /// QEMU's `edu` device: a test device with a small DMA engine, in KVM guests.
    Edu,
}

/// QEMU's PCI vendor id, which its `edu` device carries.
pub const QEMU_VENDOR: u16 = 0x1234;
/// The `edu` device's id.
pub const EDU_DEVICE_ID: u16 = 0x11e8;

impl EngineKind {
    /// The kind of function `vendor:device_id`, if it is a DMA engine this library knows.
    pub fn of(vendor: u16, device_id: u16) -> Option<EngineKind> {
        match vendor {
            INTEL_VENDOR if IOAT_DEVICE_IDS.contains(&device_id) => Some(EngineKind::Ioat),
            INTEL_VENDOR if DSA_DEVICE_IDS.contains(&device_id) => Some(EngineKind::Dsa),
            QEMU_VENDOR if device_id == EDU_DEVICE_ID => Some(EngineKind::Edu),
            _ => None,
        }
    }

    /// The kernel's own driver for it (the `edu` device has none).
    pub fn kernel_driver(self) -> Option<&'static str> {
        match self {
            EngineKind::Ioat => Some("ioatdma"),
            EngineKind::Dsa => Some("idxd"),
            EngineKind::Edu => None,
        }
    }
}

/// A DMA function found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Bus/device/function address, such as `0000:00:04.0`.
    pub bdf: String,
    /// Its sysfs directory.
    pub dir: PathBuf,
    /// PCI device id.
    pub device_id: u16,
    /// What kind of engine it is.
    pub kind: EngineKind,
    /// NUMA node, when the kernel reports one.
    pub numa_node: Option<u32>,
    /// Kernel driver bound to it (`ioatdma`, `vfio-pci`, `uio_pci_generic`), if any.
    pub driver: Option<String>,
    /// Its IOMMU group, when the kernel runs an IOMMU (or VFIO's no-IOMMU mode) for it.
    pub iommu_group: Option<u32>,
}

impl PciFunction {
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
pub fn discover_in(devices_dir: &Path) -> Vec<PciFunction> {
    discover_kinds(devices_dir, &[EngineKind::Ioat])
}

/// Lists the functions of the kinds `kinds` under `devices_dir`, sorted by address.
pub(crate) fn discover_kinds(devices_dir: &Path, kinds: &[EngineKind]) -> Vec<PciFunction> {
    let Ok(entries) = std::fs::read_dir(devices_dir) else {
        return Vec::new();
    };
    let mut found: Vec<PciFunction> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let vendor = read_hex_u16(&dir.join("vendor"))?;
            let device_id = read_hex_u16(&dir.join("device"))?;
            let kind = EngineKind::of(vendor, device_id).filter(|kind| kinds.contains(kind))?;
            let numa_node = std::fs::read_to_string(dir.join("numa_node"))
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .and_then(|n| u32::try_from(n).ok());
            Some(PciFunction {
                bdf: entry.file_name().to_string_lossy().into_owned(),
                driver: link_name(&dir.join("driver")),
                iommu_group: link_name(&dir.join("iommu_group")).and_then(|n| n.parse().ok()),
                dir,
                device_id,
                kind,
                numa_node,
            })
        })
        .collect();
    found.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    found
}

/// Lists the machine's IOAT functions.
pub fn discover() -> Vec<PciFunction> {
    Sysfs::system().discover_ioat()
}

/// The last component of the target of the symbolic link at `link`.
pub(crate) fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
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
