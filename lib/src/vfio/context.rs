//! The IOMMU context functions are opened into, and the DMA pool maps its memory into: a
//! type1 container with its groups (every kernel with VFIO), or an iommufd address space with
//! device cdevs bound to it (kernels with `CONFIG_VFIO_DEVICE_CDEV`). One context serves every
//! function of a setup, so one mapping of a region serves them all.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use super::device::VfioDevice;
use super::kernel::{extension, group_flags, Fd, VfioKernel, API_VERSION};
use super::VfioError;
use crate::mem::{IommuId, IommuMapper};
use crate::pci::Sysfs;
use crate::sync::lock_std;

/// Whether VFIO's unsafe no-IOMMU mode may be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoIommu {
    /// Refused: a function in a no-IOMMU group is an error.
    #[default]
    Refused,
    /// Allowed: such functions open, nothing translates their DMA, and the pool must use
    /// physical addresses. A descriptor can then write anywhere in memory.
    Allowed,
}

enum Kind {
    Type1 { container: Fd },
    Iommufd { iommufd: Fd, ioas: u32 },
}

#[derive(Default)]
struct Type1State {
    /// Group number → its open node.
    groups: HashMap<u32, Fd>,
    /// Group number → devices open through it; a group whose last device closes leaves the
    /// container (its node may name a new group once its function is plugged in again).
    open_devices: HashMap<u32, usize>,
    /// The IOMMU model is set (after the first group joined).
    model: Option<u32>,
    iova_ranges: Vec<RangeInclusive<u64>>,
    /// What the pool asked to map (IOVA → virtual address, length). When the last group leaves,
    /// the kernel forgets every mapping with the container's model; they are made again when a
    /// group joins, and meanwhile recorded only.
    mappings: BTreeMap<u64, (u64, u64)>,
}

/// An IOMMU context. See the module documentation.
pub struct VfioContext {
    kernel: Arc<dyn VfioKernel>,
    id: IommuId,
    kind: Kind,
    noiommu: NoIommu,
    state: Mutex<Type1State>,
}

impl std::fmt::Debug for VfioContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioContext")
            .field("id", &self.id)
            .field(
                "kind",
                &match self.kind {
                    Kind::Type1 { .. } => "type1",
                    Kind::Iommufd { .. } => "iommufd",
                },
            )
            .field("noiommu", &self.is_noiommu())
            .finish()
    }
}

fn call<'a>(what: &'static str, bdf: &'a str) -> impl FnOnce(io::Error) -> VfioError + 'a {
    move |error| VfioError::Call {
        what,
        bdf: bdf.to_string(),
        error,
    }
}

impl VfioContext {
    /// A type1 container. `noiommu` says whether functions in no-IOMMU groups may join it.
    pub fn type1(
        kernel: Arc<dyn VfioKernel>,
        noiommu: NoIommu,
    ) -> Result<Arc<VfioContext>, VfioError> {
        let container = kernel.open_container().map_err(VfioError::NotAvailable)?;
        let context = VfioContext {
            kernel,
            id: IommuId::fresh(),
            kind: Kind::Type1 { container },
            noiommu,
            state: Mutex::new(Type1State::default()),
        };
        let version = context
            .kernel
            .api_version(container)
            .map_err(call("VFIO_GET_API_VERSION", "the container"))?;
        if version != API_VERSION {
            return Err(VfioError::ApiVersion(version));
        }
        Ok(Arc::new(context))
    }

    /// An iommufd address space (functions join through their device cdevs).
    pub fn iommufd(kernel: Arc<dyn VfioKernel>) -> Result<Arc<VfioContext>, VfioError> {
        let iommufd = kernel.open_iommufd().map_err(VfioError::NotAvailable)?;
        let ioas = match kernel.ioas_alloc(iommufd) {
            Ok(ioas) => ioas,
            Err(e) => {
                kernel.close(iommufd);
                return Err(call("IOMMU_IOAS_ALLOC", "the iommufd")(e));
            }
        };
        Ok(Arc::new(VfioContext {
            kernel,
            id: IommuId::fresh(),
            kind: Kind::Iommufd { iommufd, ioas },
            noiommu: NoIommu::Refused,
            state: Mutex::new(Type1State::default()),
        }))
    }

    /// The context a function should use: iommufd where the kernel has device cdevs for it
    /// and `/dev/iommu` opens, a type1 container otherwise (and for no-IOMMU groups).
    pub fn for_function(
        kernel: Arc<dyn VfioKernel>,
        sysfs: &Sysfs,
        bdf: &str,
        noiommu: NoIommu,
    ) -> Result<Arc<VfioContext>, VfioError> {
        if sysfs.vfio_cdev(bdf).is_some() && !sysfs.noiommu_enabled() {
            if let Ok(context) = VfioContext::iommufd(Arc::clone(&kernel)) {
                return Ok(context);
            }
        }
        VfioContext::type1(kernel, noiommu)
    }

    /// The context's identity, as the pool knows it.
    pub fn id(&self) -> IommuId {
        self.id
    }

    /// The kernel interface.
    pub fn kernel(&self) -> &Arc<dyn VfioKernel> {
        &self.kernel
    }

    /// Whether functions of this context are in no-IOMMU groups (nothing translates).
    pub fn is_noiommu(&self) -> bool {
        lock_std(&self.state).model == Some(extension::NOIOMMU)
    }

    /// Whether this is an iommufd address space (or a type1 container).
    pub fn is_iommufd(&self) -> bool {
        matches!(self.kind, Kind::Iommufd { .. })
    }

    /// Opens function `bdf` (bound to vfio-pci) into this context.
    pub fn open_device(
        self: &Arc<Self>,
        sysfs: &Sysfs,
        bdf: &str,
    ) -> Result<VfioDevice, VfioError> {
        match self.kind {
            Kind::Type1 { container } => self.open_type1(sysfs, bdf, container),
            Kind::Iommufd { iommufd, ioas } => self.open_cdev(sysfs, bdf, iommufd, ioas),
        }
    }

    fn open_type1(
        self: &Arc<Self>,
        sysfs: &Sysfs,
        bdf: &str,
        container: Fd,
    ) -> Result<VfioDevice, VfioError> {
        let group = sysfs
            .iommu_group(bdf)
            .ok_or_else(|| VfioError::NoIommuGroup {
                bdf: bdf.to_string(),
            })?;
        let group_fd = self.join_group(sysfs, bdf, group, container)?;
        let fd = match self.kernel.group_device(group_fd, bdf) {
            Ok(fd) => fd,
            Err(e) => {
                // A group joined for this device alone leaves again.
                self.device_closed(Some(group));
                return Err(call("VFIO_GROUP_GET_DEVICE_FD", bdf)(e));
            }
        };
        VfioDevice::new(Arc::clone(self), fd, bdf, Some(group))
    }

    /// A device of `group` was closed: the group leaves the container with its last device.
    /// When no group is left, the kernel has dropped the container's IOMMU model and with it
    /// every mapping; the next group to join sets the model again and the mappings are made
    /// again.
    pub(super) fn device_closed(&self, group: Option<u32>) {
        let (Kind::Type1 { .. }, Some(group)) = (&self.kind, group) else {
            return;
        };
        let mut state = lock_std(&self.state);
        let open = state.open_devices.entry(group).or_insert(1);
        *open -= 1;
        if *open > 0 {
            return;
        }
        state.open_devices.remove(&group);
        if let Some(fd) = state.groups.remove(&group) {
            self.kernel.close(fd);
        }
        if state.groups.is_empty() {
            state.model = None;
        }
    }

    /// The group's node, opened and attached to the container (once per group).
    fn join_group(
        &self,
        sysfs: &Sysfs,
        bdf: &str,
        group: u32,
        container: Fd,
    ) -> Result<Fd, VfioError> {
        let mut state = lock_std(&self.state);
        if let Some(&fd) = state.groups.get(&group) {
            *state.open_devices.entry(group).or_default() += 1;
            return Ok(fd);
        }
        let kernel = &self.kernel;
        let (fd, noiommu) = match kernel.open_group(group, false) {
            Ok(fd) => (fd, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound && sysfs.noiommu_enabled() => {
                let fd = kernel
                    .open_group(group, true)
                    .map_err(|e| open_error(e, sysfs, bdf, group, true))?;
                (fd, true)
            }
            Err(e) => return Err(open_error(e, sysfs, bdf, group, false)),
        };
        let close_on_error = |error: VfioError| {
            kernel.close(fd);
            error
        };
        if noiommu && self.noiommu != NoIommu::Allowed {
            return Err(close_on_error(VfioError::NoIommuRefused {
                bdf: bdf.to_string(),
            }));
        }
        let status = kernel
            .group_status(fd)
            .map_err(|e| close_on_error(call("VFIO_GROUP_GET_STATUS", bdf)(e)))?;
        let not_viable = || VfioError::GroupNotViable {
            group,
            members: sysfs.group_devices(group),
        };
        if status & group_flags::VIABLE == 0 {
            return Err(close_on_error(not_viable()));
        }
        match kernel.set_container(fd, container) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Err(close_on_error(not_viable()))
            }
            Err(e) => return Err(close_on_error(call("VFIO_GROUP_SET_CONTAINER", bdf)(e))),
        }
        let model = if noiommu {
            extension::NOIOMMU
        } else {
            extension::TYPE1V2
        };
        if state.model.is_none() {
            let offered = kernel
                .check_extension(container, model)
                .map_err(|e| close_on_error(call("VFIO_CHECK_EXTENSION", bdf)(e)))?;
            if !offered {
                return Err(close_on_error(VfioError::NoIommuModel));
            }
            kernel
                .set_iommu(container, model)
                .map_err(|e| close_on_error(call("VFIO_SET_IOMMU", bdf)(e)))?;
        } else if (state.model == Some(extension::NOIOMMU)) != noiommu {
            // The kernel refuses to mix no-IOMMU and translated groups in one container.
            return Err(close_on_error(VfioError::Call {
                what: "VFIO_GROUP_SET_CONTAINER",
                bdf: bdf.to_string(),
                error: io::Error::from_raw_os_error(libc::EPERM),
            }));
        }
        if !noiommu {
            // Every group that joins may bring reserved regions of its own, which the kernel
            // takes out of the container's windows; the pool re-reads them when the device
            // is attached to it.
            match kernel.iommu_info(container) {
                Ok(info) => state.iova_ranges = info.iova_ranges,
                Err(e) => return Err(close_on_error(call("VFIO_IOMMU_GET_INFO", bdf)(e))),
            }
        }
        if state.model.is_none() && !noiommu {
            // The first group of an empty container: the mappings made before (or lost when
            // the last group left) are made again.
            for (&iova, &(va, len)) in &state.mappings {
                if let Err(e) = kernel.map_dma(container, va, iova, len) {
                    return Err(close_on_error(call("VFIO_IOMMU_MAP_DMA", bdf)(e)));
                }
            }
        }
        // Recorded only once a group holds it: when the only group closes, the kernel drops
        // the container's model, and the next group must set it again.
        state.model = Some(model);
        state.groups.insert(group, fd);
        *state.open_devices.entry(group).or_default() += 1;
        Ok(fd)
    }

    fn open_cdev(
        self: &Arc<Self>,
        sysfs: &Sysfs,
        bdf: &str,
        iommufd: Fd,
        ioas: u32,
    ) -> Result<VfioDevice, VfioError> {
        let cdev = sysfs.vfio_cdev(bdf).ok_or_else(|| VfioError::NotBound {
            bdf: bdf.to_string(),
            driver: sysfs.driver(bdf),
        })?;
        let fd = self
            .kernel
            .open_device_cdev(&cdev)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => VfioError::Permission {
                    node: format!("/dev/vfio/devices/{cdev}"),
                },
                _ => call("open", bdf)(e),
            })?;
        let bound = self
            .kernel
            .bind_iommufd(fd, iommufd)
            .map_err(call("VFIO_DEVICE_BIND_IOMMUFD", bdf))
            .and_then(|_| {
                self.kernel
                    .attach_ioas(fd, ioas)
                    .map_err(call("VFIO_DEVICE_ATTACH_IOMMUFD_PT", bdf))
            });
        if let Err(e) = bound {
            self.kernel.close(fd);
            return Err(e);
        }
        VfioDevice::new(Arc::clone(self), fd, bdf, None)
    }
}

/// Why a group node did not open.
fn open_error(e: io::Error, sysfs: &Sysfs, bdf: &str, group: u32, noiommu: bool) -> VfioError {
    let node = if noiommu {
        format!("/dev/vfio/noiommu-{group}")
    } else {
        format!("/dev/vfio/{group}")
    };
    match e.raw_os_error() {
        Some(libc::ENOENT) => VfioError::NotBound {
            bdf: bdf.to_string(),
            driver: sysfs.driver(bdf),
        },
        Some(libc::EACCES | libc::EPERM) => VfioError::Permission { node },
        Some(libc::EBUSY) => VfioError::GroupBusy { group },
        _ => call("open", bdf)(e),
    }
}

impl IommuMapper for VfioContext {
    fn id(&self) -> IommuId {
        self.id
    }

    fn iova_ranges(&self) -> io::Result<Vec<RangeInclusive<u64>>> {
        match self.kind {
            // Re-read as each group joins (see `join_group`).
            Kind::Type1 { .. } => Ok(lock_std(&self.state).iova_ranges.clone()),
            // The IOAS narrows as each device attaches; asked afresh.
            Kind::Iommufd { iommufd, ioas } => self.kernel.ioas_ranges(iommufd, ioas),
        }
    }

    fn entries_left(&self) -> Option<u32> {
        match self.kind {
            Kind::Type1 { container } => self.kernel.iommu_info(container).ok()?.dma_avail,
            Kind::Iommufd { .. } => None,
        }
    }

    fn map(&self, va: usize, iova: u64, len: usize) -> io::Result<()> {
        match self.kind {
            Kind::Type1 { container } => {
                let mut state = lock_std(&self.state);
                // Without a group the container has no model to map with: recorded, and made
                // when a group joins.
                if state.model.is_some() {
                    self.kernel
                        .map_dma(container, va as u64, iova, len as u64)?;
                }
                state.mappings.insert(iova, (va as u64, len as u64));
                Ok(())
            }
            Kind::Iommufd { iommufd, ioas } => self
                .kernel
                .ioas_map(iommufd, ioas, va as u64, iova, len as u64),
        }
    }

    fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        let unmapped = match self.kind {
            Kind::Type1 { container } => {
                let mut state = lock_std(&self.state);
                let inside: Vec<u64> = state
                    .mappings
                    .range(iova..iova + len as u64)
                    .map(|(&at, _)| at)
                    .collect();
                for at in inside {
                    state.mappings.remove(&at);
                }
                if state.model.is_none() {
                    return Ok(());
                }
                self.kernel.unmap_dma(container, iova, len as u64)?
            }
            Kind::Iommufd { iommufd, ioas } => {
                self.kernel.ioas_unmap(iommufd, ioas, iova, len as u64)?
            }
        };
        if unmapped != len as u64 {
            return Err(io::Error::other(format!(
                "unmapped {unmapped:#x} of {len:#x} bytes at {iova:#x}"
            )));
        }
        Ok(())
    }
}

impl Drop for VfioContext {
    fn drop(&mut self) {
        // Groups first, then the container (closing it releases every mapping).
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, fd) in state.groups.drain() {
            self.kernel.close(fd);
        }
        match self.kind {
            Kind::Type1 { container } => self.kernel.close(container),
            Kind::Iommufd { iommufd, .. } => self.kernel.close(iommufd),
        }
    }
}
