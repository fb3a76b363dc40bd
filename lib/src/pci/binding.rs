//! Moving a PCI function between drivers the way the kernel expects it: bound to `vfio-pci` for
//! the VFIO mode, bound to nothing for the physical mode, or given back to its own driver
//! (`ioatdma`, `idxd`). Each move is planned first as the sysfs writes it takes, so that
//! `dmaplane-setup --dry-run` can print them, then made write by write.
//!
//! The writes follow the kernel's interface: `driver_override` names the only driver that may
//! take the function (an empty line clears it), `<driver>/unbind` releases it, and
//! `drivers_probe` asks the kernel to bind it again, which honours the override.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;

use super::{PciFunction, Sysfs};

/// Where a function should end up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Bound to `vfio-pci`, for the VFIO mode.
    Vfio,
    /// Bound to no driver, for the physical mode.
    Unbound,
    /// Bound to the kernel's own driver for it again.
    Kernel,
}

impl Target {
    /// The driver the function has once the move is done (`None`: unbound).
    pub fn driver(self, function: &PciFunction) -> Option<&'static str> {
        match self {
            Target::Vfio => Some(VFIO_PCI),
            Target::Unbound => None,
            // A function without a kernel driver of its own is simply unbound.
            Target::Kernel => function.kind.kernel_driver(),
        }
    }
}

const VFIO_PCI: &str = "vfio-pci";

/// One write into sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsWrite {
    /// The attribute written.
    pub path: PathBuf,
    /// What is written (a newline is added).
    pub value: String,
}

impl fmt::Display for SysfsWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "echo '{}' > {}", self.value, self.path.display())
    }
}

/// The writes that move one function, with what the user should know about the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The function.
    pub bdf: String,
    /// Where it goes.
    pub target: Target,
    /// The driver it ends up with (`None`: unbound).
    pub driver: Option<&'static str>,
    /// The writes, in order; none when the function is there already.
    pub writes: Vec<SysfsWrite>,
    /// What will still stand in the way of using it (no IOMMU group, a group that is not
    /// viable), each with what to do.
    pub warnings: Vec<String>,
}

/// Why a function could not be moved.
#[derive(Debug)]
pub enum BindError {
    /// The driver it should go to is not loaded.
    DriverNotLoaded {
        /// The driver (also its module's name).
        driver: &'static str,
    },
    /// A sysfs write failed.
    Write {
        /// The attribute.
        path: PathBuf,
        /// What the kernel said.
        error: io::Error,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::DriverNotLoaded { driver } => {
                write!(
                    f,
                    "the {driver} driver is not loaded: run `modprobe {driver}`"
                )
            }
            BindError::Write { path, error } if error.kind() == io::ErrorKind::PermissionDenied => {
                write!(
                    f,
                    "writing {}: permission denied (run as root)",
                    path.display()
                )
            }
            BindError::Write { path, error } => write!(f, "writing {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for BindError {}

/// The writes that move `function` to `target`, or why it cannot go there.
pub fn plan(sysfs: &Sysfs, function: &PciFunction, target: Target) -> Result<Plan, BindError> {
    let bdf = &function.bdf;
    let driver = target.driver(function);
    let current = sysfs.driver(bdf);
    let mut plan = Plan {
        bdf: bdf.clone(),
        target,
        driver,
        writes: Vec::new(),
        warnings: Vec::new(),
    };
    if target == Target::Vfio {
        plan.warnings = vfio_warnings(sysfs, bdf);
    }
    if current.as_deref() == driver {
        return Ok(plan);
    }
    if let Some(driver) = driver {
        if !sysfs.driver_dir(driver).is_dir() {
            return Err(BindError::DriverNotLoaded { driver });
        }
    }
    let device = sysfs.device_dir(bdf);
    let write = |path: PathBuf, value: &str| SysfsWrite {
        path,
        value: value.to_string(),
    };
    // The override first. Towards vfio-pci it keeps every other driver from taking the
    // function, even the one it leaves if something probes it between the unbind and the
    // bind; otherwise it is cleared (an empty line), so that the kernel matches the function
    // to its own driver by id, then and on later probes.
    let override_with = if target == Target::Vfio { VFIO_PCI } else { "" };
    plan.writes
        .push(write(device.join("driver_override"), override_with));
    if let Some(current) = current {
        plan.writes
            .push(write(sysfs.driver_dir(&current).join("unbind"), bdf));
    }
    if driver.is_some() {
        plan.writes
            .push(write(sysfs.root().join("bus/pci/drivers_probe"), bdf));
    }
    Ok(plan)
}

/// What will keep VFIO from opening `bdf` once it is bound to `vfio-pci`.
fn vfio_warnings(sysfs: &Sysfs, bdf: &str) -> Vec<String> {
    let Some(group) = sysfs.iommu_group(bdf) else {
        return vec![format!(
            "{bdf} has no IOMMU group, so VFIO cannot open it: boot with intel_iommu=on \
             (and VT-d enabled in the BIOS), or, knowing that nothing then stops a bad \
             descriptor, enable VFIO's no-IOMMU mode"
        )];
    };
    sysfs
        .group_devices(group)
        .into_iter()
        .filter(|member| member != bdf)
        .filter_map(|member| {
            let driver = sysfs.driver(&member)?;
            // Drivers that do no DMA of their own (bridges, stubs) leave the group viable.
            (!matches!(driver.as_str(), VFIO_PCI | "pcieport" | "pci-stub")).then(|| {
                format!(
                    "IOMMU group {group} also holds {member}, bound to {driver}: VFIO refuses \
                     the group until it is bound to vfio-pci or unbound"
                )
            })
        })
        .collect()
}

/// Makes the writes of `plan`, in order, stopping at the first that fails.
pub fn apply(plan: &Plan) -> Result<(), BindError> {
    plan.writes.iter().try_for_each(SysfsWrite::apply)
}

impl SysfsWrite {
    /// Makes the write, as a shell's `echo value > attribute`: the attribute must exist
    /// (nothing is created in sysfs), and the value goes in one write.
    pub fn apply(&self) -> Result<(), BindError> {
        let failed = |error| BindError::Write {
            path: self.path.clone(),
            error,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .map_err(failed)?;
        file.write_all(format!("{}\n", self.value).as_bytes())
            .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_write_says_to_run_as_root_and_a_missing_driver_how_to_load_it() {
        let refused = BindError::Write {
            path: PathBuf::from("/sys/bus/pci/drivers_probe"),
            error: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(refused.to_string().contains("run as root"), "{refused}");
        let missing = BindError::Write {
            path: PathBuf::from("/sys/bus/pci/drivers_probe"),
            error: io::Error::from_raw_os_error(libc::ENODEV),
        };
        assert!(!missing.to_string().contains("root"), "{missing}");
        let unloaded = BindError::DriverNotLoaded { driver: "vfio-pci" };
        assert!(unloaded.to_string().contains("modprobe vfio-pci"));
    }
}
