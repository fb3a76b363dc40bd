//! What a scenario needs from the machine it runs on: the VFIO kernel interface and sysfs, the
//! `edu` functions there, the IOMMU faults the kernel saw, and a way to take a function away
//! and bring it back. The simulated kernel ([`crate::sim`]) and the guest's real one
//! ([`crate::guest`]) both provide it.

use std::path::PathBuf;
use std::sync::Arc;

use dmaplane::pci::Sysfs;
use dmaplane::vfio::VfioKernel;

/// A machine the scenarios run on.
pub trait Platform: Send + Sync {
    /// What it is, for the report.
    fn describe(&self) -> String;

    /// The VFIO kernel interface.
    fn kernel(&self) -> Arc<dyn VfioKernel>;

    /// Its sysfs.
    fn sysfs(&self) -> Sysfs;

    /// Where the per-function lock files go.
    fn lock_dir(&self) -> PathBuf;

    /// Whether the hotplug monitor should listen to the kernel's uevents.
    fn uevents(&self) -> bool;

    /// The `edu` functions bound to `vfio-pci` now, in address order.
    fn edu_functions(&self) -> Vec<String> {
        self.sysfs()
            .discover(dmaplane::pci::EngineKind::Edu)
            .into_iter()
            .filter(|f| f.driver.as_deref() == Some("vfio-pci"))
            .map(|f| f.bdf)
            .collect()
    }

    /// How many DMA faults the IOMMU reported for `bdf` so far.
    fn iommu_faults(&self, bdf: &str) -> u64;

    /// The most mappings a VFIO container accepts (type1's `dma_entry_limit`).
    fn entry_limit(&self) -> Option<usize>;

    /// Starts taking `bdf` away, as pulling it from its slot would; returns at once.
    fn unplug(&self, bdf: &str) -> Result<(), String>;

    /// Puts `bdf` back and returns once it is bound to `vfio-pci` again.
    fn replug(&self, bdf: &str) -> Result<(), String>;

    /// How much work the scenarios do: 1 for the short run, more for the long one.
    fn scale(&self) -> u32 {
        1
    }
}
