//! Attaching PCI functions the machine has: each IOAT (or `edu`) function that discovery
//! lists is tried the setup's way (through VFIO, or through sysfs with physical addresses),
//! under its per-function lock; one that cannot be attached is passed over with its cause and
//! the fix, and when none could be, the error lists them all.

use std::fmt;
use std::io;
use std::sync::Arc;

use super::{Behind, DeviceKind, Setup, SetupError};
use crate::edu::{EduConfig, EduDevice};
use crate::engine::DeviceId;
use crate::ioat::IoatDevice;
use crate::log::LogLevel;
use crate::mem::IovaMode;
use crate::pci::{EngineKind, FunctionLock, PciFunction};
use crate::sync::lock_std;
use crate::vfio::{RequestNotifier, VfioContext};

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

impl Setup {
    /// Attaches up to `limit` IOAT functions not attached yet, the setup's way (VFIO or
    /// physical); returns their ids. A function that cannot be attached is passed over with
    /// its cause logged; when none could be, the error lists every cause.
    pub(super) fn add_hardware(&self, limit: usize) -> Result<Vec<DeviceId>, SetupError> {
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
