//! A fake sysfs tree for tests, in a temporary directory removed on drop: what the library,
//! `dmaplane-setup` and a test of an application's own setup read from `/sys` about PCI
//! functions, drivers, IOMMU groups, VFIO and hugepages, with nothing behind it. Point a
//! [`Sysfs`](super::Sysfs) at it with [`FakeSysfs::sysfs`].
//!
//! Its methods panic when the temporary directory cannot be written: it is test support.

/// A fake sysfs tree in a temporary directory, removed on drop: PCI functions with their ids,
/// NUMA node, configuration file, resource0, driver link, IOMMU group link and VFIO cdev; the
/// groups under `kernel/iommu_groups`; the drivers' directories; VFIO's no-IOMMU parameter.
pub struct FakeSysfs {
    /// The tree's root, standing for `/sys`.
    pub root: std::path::PathBuf,
}

impl FakeSysfs {
    /// An empty tree (no function yet) under the temporary directory, named after `name`:
    /// drivers `vfio-pci` and `ioatdma` loaded, VFIO's no-IOMMU mode off, no hugepages.
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

    /// The tree as the library reads it.
    pub fn sysfs(&self) -> super::Sysfs {
        super::Sysfs::at(&self.root)
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

    /// QEMU's `edu` function `bdf`, bound to `driver`, in IOMMU group `group`.
    pub fn add_edu(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) {
        self.add_function(bdf, super::EDU_DEVICE_ID, driver, group, None);
        let dir = self.root.join("bus/pci/devices").join(bdf);
        std::fs::write(dir.join("vendor"), format!("{:#06x}\n", super::QEMU_VENDOR)).unwrap();
    }

    /// Takes function `bdf` away, as the kernel does once it is removed: its directory and its
    /// IOMMU group's link to it.
    pub fn remove_function(&self, bdf: &str) {
        let dir = self.root.join("bus/pci/devices").join(bdf);
        if let Ok(group) = std::fs::read_link(dir.join("iommu_group")) {
            let _ = std::fs::remove_file(group.join("devices").join(bdf));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Sets the domain type of IOMMU group `group` (`DMA`, `identity`).
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
