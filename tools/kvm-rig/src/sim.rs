//! The scenarios' platform on any machine: the simulated VFIO kernel with modelled `edu`
//! functions (its IOMMU is their memory) and a fake sysfs tree. Unplugging signals the
//! function's device-request eventfd and takes it out of sysfs. Replugging refuses while the
//! old function is still held open (a real kernel's removal would still be waiting), then
//! removes it from the kernel and plugs in a new one at the same address, in a new group of
//! the same number, as a real hot-add does.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dmaplane::edu::model::{bind_modelled_edu, EduModel};
use dmaplane::pci::fake::FakeSysfs;
use dmaplane::pci::Sysfs;
use dmaplane::vfio::sim::{SimConfig, SimKernel};
use dmaplane::vfio::VfioKernel;

use crate::Platform;

/// The simulated machine.
pub struct SimPlatform {
    kernel: Arc<SimKernel>,
    sysfs: FakeSysfs,
    /// Each function's address, IOMMU group and model (replaced when plugged in again).
    functions: Mutex<Vec<(String, u32, Arc<EduModel>)>>,
}

impl SimPlatform {
    /// `count` `edu` functions on buses 1, 2, … (as behind the rig's root ports), each in an
    /// IOMMU group of its own, in a kernel whose containers take `entry_limit` mappings (and
    /// with iommufd and VFIO cdevs where `iommufd`).
    pub fn new(name: &str, count: usize, entry_limit: usize, iommufd: bool) -> SimPlatform {
        let kernel = SimKernel::new(SimConfig {
            dma_entry_limit: entry_limit,
            iommufd,
            ..SimConfig::default()
        });
        let sysfs = FakeSysfs::new(name);
        std::fs::create_dir_all(sysfs.root.join("locks")).expect("a lock directory");
        let functions = (1..=count)
            .map(|bus| {
                let bdf = format!("0000:{bus:02x}:00.0");
                let group = 10 + bus as u32;
                sysfs.add_edu(&bdf, Some("vfio-pci"), Some(group));
                let cdev = iommufd.then(|| format!("vfio{bus}"));
                if let Some(cdev) = &cdev {
                    std::fs::create_dir_all(
                        sysfs
                            .root
                            .join("bus/pci/devices")
                            .join(&bdf)
                            .join("vfio-dev")
                            .join(cdev),
                    )
                    .expect("a cdev entry");
                }
                let model = bind_modelled_edu(&kernel, &bdf, group, cdev);
                (bdf, group, model)
            })
            .collect();
        SimPlatform {
            kernel,
            sysfs,
            functions: Mutex::new(functions),
        }
    }

    fn function(&self, bdf: &str) -> Result<(u32, Arc<EduModel>), String> {
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(b, _, _)| b == bdf)
            .map(|(_, group, model)| (*group, Arc::clone(model)))
            .ok_or(format!("{bdf} is not one of the simulated functions"))
    }
}

impl Platform for SimPlatform {
    fn describe(&self) -> String {
        format!(
            "simulated VFIO kernel with {} modelled edu function(s)",
            self.functions.lock().map_or(0, |f| f.len())
        )
    }

    fn kernel(&self) -> Arc<dyn VfioKernel> {
        self.kernel.clone()
    }

    fn sysfs(&self) -> Sysfs {
        self.sysfs.sysfs()
    }

    fn lock_dir(&self) -> PathBuf {
        self.sysfs.root.join("locks")
    }

    fn uevents(&self) -> bool {
        false
    }

    fn iommu_faults(&self, bdf: &str) -> u64 {
        self.function(bdf).map_or(0, |(_, model)| model.faults())
    }

    fn entry_limit(&self) -> Option<usize> {
        Some(self.kernel.config().dma_entry_limit)
    }

    fn unplug(&self, bdf: &str) -> Result<(), String> {
        self.function(bdf)?;
        if !self.kernel.request_release(bdf) {
            return Err(format!("nobody listens for {bdf}'s device requests"));
        }
        self.sysfs.remove_function(bdf);
        Ok(())
    }

    fn replug(&self, bdf: &str) -> Result<(), String> {
        let (group, _) = self.function(bdf)?;
        if self.kernel.is_open(bdf) {
            return Err(format!(
                "{bdf} is still held open: a kernel's removal of it would still be waiting"
            ));
        }
        self.kernel.remove_function(bdf);
        let model = bind_modelled_edu(&self.kernel, bdf, group, None);
        self.sysfs.add_edu(bdf, Some("vfio-pci"), Some(group));
        for entry in self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            if entry.0 == bdf {
                entry.2 = Arc::clone(&model);
            }
        }
        Ok(())
    }
}
