//! Where the kernel's view of PCI lives: functions, their drivers, IOMMU groups and VFIO
//! character devices, read from a sysfs tree whose root is injectable, so that a fake tree in a
//! temporary directory stands in for `/sys` in tests.

use std::path::{Path, PathBuf};

use super::{discover_kinds, link_name, EngineKind, PciFunction};

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
    pub fn discover_ioat(&self) -> Vec<PciFunction> {
        discover_kinds(&self.pci_devices(), &[EngineKind::Ioat])
    }

    /// The IOAT and DSA functions, in address order.
    pub fn discover_dma(&self) -> Vec<PciFunction> {
        discover_kinds(&self.pci_devices(), &[EngineKind::Ioat, EngineKind::Dsa])
    }

    /// The functions of kind `kind`, in address order.
    pub fn discover(&self, kind: EngineKind) -> Vec<PciFunction> {
        discover_kinds(&self.pci_devices(), &[kind])
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
