//! VFIO: reaching a PCI function bound to `vfio-pci` from user space with the IOMMU
//! translating its DMA, as SPDK and DPDK do. A [`VfioContext`] is the IOMMU context (a type1
//! container, or an iommufd address space where the kernel has device cdevs) that the DMA pool
//! maps its memory into; [`VfioContext::open_device`] opens a function into it, and the
//! [`VfioDevice`] gives its BAR0 through the region's mmap (sparse areas honoured), its
//! configuration space through the config region, reset, and the device-request eventfd the
//! kernel signals when it wants the function back.
//!
//! Every system call goes through [`VfioKernel`]: [`LinuxVfio`] on a machine,
//! [`SimKernel`] in tests, where the same code runs against a model of the kernel's state
//! machine and IOMMU. Errors name the fix ([`VfioError`]).
//!
//! No-IOMMU mode (`enable_unsafe_noiommu_mode`) is refused unless the caller opts in with
//! [`NoIommu::Allowed`]: nothing translates then, so the pool must use physical addresses,
//! and a stray descriptor can write anywhere.

mod context;
mod device;
mod kernel;
mod linux;
pub mod sim;

use std::fmt;
use std::io;

pub use context::{NoIommu, VfioContext};
pub use device::{RequestNotifier, VfioDevice};
pub use kernel::{
    device_flags, extension, group_flags, region_flags, region_index, DeviceInfo, Fd, IommuInfo,
    RegionInfo, VfioKernel, API_VERSION,
};
pub use linux::LinuxVfio;
pub use sim::SimKernel;

/// Why a function could not be opened through VFIO, or a VFIO call failed, with what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum VfioError {
    /// `/dev/vfio/vfio` (or `/dev/iommu`) is missing: the modules are not loaded.
    NotAvailable(io::Error),
    /// The kernel speaks another VFIO API version.
    ApiVersion(i32),
    /// The kernel offers no IOMMU model this layer uses (type1 v2, or no-IOMMU when allowed).
    NoIommuModel,
    /// The function has no IOMMU group: no IOMMU is on for it.
    NoIommuGroup {
        /// The function.
        bdf: String,
    },
    /// The function is not bound to `vfio-pci` (its group node does not exist).
    NotBound {
        /// The function.
        bdf: String,
        /// The driver it is bound to, if any.
        driver: Option<String>,
    },
    /// Opening the group node was refused: its owner is another user.
    Permission {
        /// The node.
        node: String,
    },
    /// Another process has the group open.
    GroupBusy {
        /// The group.
        group: u32,
    },
    /// Another function of the group is bound to a kernel driver.
    GroupNotViable {
        /// The group.
        group: u32,
        /// The functions in it.
        members: Vec<String>,
    },
    /// The group is a no-IOMMU group and the caller did not opt in.
    NoIommuRefused {
        /// The function.
        bdf: String,
    },
    /// A VFIO call failed.
    Call {
        /// What was being done.
        what: &'static str,
        /// The function, where there is one.
        bdf: String,
        /// The kernel's answer.
        error: io::Error,
    },
    /// BAR0 cannot be mapped (absent, or no part of it mmappable).
    BarRefused {
        /// The function.
        bdf: String,
        /// Why.
        why: String,
    },
}

impl fmt::Display for VfioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfioError::NotAvailable(e) => write!(
                f,
                "VFIO is not available ({e}): load it with `modprobe vfio-pci`"
            ),
            VfioError::ApiVersion(v) => write!(f, "the kernel's VFIO API version is {v}, not 0"),
            VfioError::NoIommuModel => f.write_str(
                "the kernel offers no usable IOMMU model (type1 v2): is the IOMMU on \
                 (intel_iommu=on)?",
            ),
            VfioError::NoIommuGroup { bdf } => write!(
                f,
                "{bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on) or, knowing the \
                 risk, VFIO's no-IOMMU mode"
            ),
            VfioError::NotBound { bdf, driver } => write!(
                f,
                "{bdf} is not bound to vfio-pci (bound to {}): run `dmaplane-setup bind {bdf}`",
                driver.as_deref().unwrap_or("no driver")
            ),
            VfioError::Permission { node } => write!(
                f,
                "no permission to open {node}: run as root, or give the user the node \
                 (`dmaplane-setup bind --user NAME`)"
            ),
            VfioError::GroupBusy { group } => {
                write!(f, "IOMMU group {group} is open in another process")
            }
            VfioError::GroupNotViable { group, members } => write!(
                f,
                "IOMMU group {group} is not viable: every function in it ({}) must be bound \
                 to vfio-pci or unbound",
                members.join(", ")
            ),
            VfioError::NoIommuRefused { bdf } => write!(
                f,
                "{bdf} is in a no-IOMMU group: nothing would confine its DMA; opt in \
                 explicitly (NoIommu::Allowed) with a physical-address pool"
            ),
            VfioError::Call { what, bdf, error } => write!(f, "{what} of {bdf}: {error}"),
            VfioError::BarRefused { bdf, why } => write!(f, "BAR0 of {bdf}: {why}"),
        }
    }
}

impl std::error::Error for VfioError {}
