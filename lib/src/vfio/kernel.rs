//! The kernel interface the VFIO layer is written against, one method per system call it
//! makes, so that a simulated kernel ([`super::sim::SimKernel`]) can stand in for the real one
//! ([`super::linux::LinuxVfio`]) and every path above it runs in tests without hardware.
//!
//! Errors are `io::Error`s carrying the errno the kernel returns for the condition
//! (`reference/vfio.md` §10); the layer above turns them into [`super::VfioError`]s that name
//! the fix.

use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::mmio::RegisterWindow;

/// A file descriptor the interface hands out (a real one, or a simulated handle).
pub type Fd = i32;

/// `VFIO_API_VERSION`.
pub const API_VERSION: i32 = 0;

/// IOMMU models and extensions (`VFIO_CHECK_EXTENSION`, `VFIO_SET_IOMMU`).
pub mod extension {
    /// Type1 IOMMU, v1 (unmaps may split mappings).
    pub const TYPE1: u32 = 1;
    /// Type1 IOMMU, v2 (no splitting; what the layer uses).
    pub const TYPE1V2: u32 = 3;
    /// No IOMMU: only for the unsafe no-IOMMU mode.
    pub const NOIOMMU: u32 = 8;
}

/// `VFIO_GROUP_GET_STATUS` flags.
pub mod group_flags {
    /// Every device of the group is bound to VFIO (or a driver that lets user space own DMA).
    pub const VIABLE: u32 = 1;
    /// The group is attached to a container.
    pub const CONTAINER_SET: u32 = 2;
}

/// `VFIO_DEVICE_GET_INFO` flags.
pub mod device_flags {
    /// The device has a reset method.
    pub const RESET: u32 = 1;
    /// A PCI device.
    pub const PCI: u32 = 2;
}

/// `VFIO_DEVICE_GET_REGION_INFO` flags.
pub mod region_flags {
    /// Readable with pread.
    pub const READ: u32 = 1;
    /// Writable with pwrite.
    pub const WRITE: u32 = 2;
    /// May be mmapped (within the sparse areas, when there are any).
    pub const MMAP: u32 = 4;
}

/// PCI region indexes of vfio-pci.
pub mod region_index {
    /// BAR0, the register window (IOAT, DSA).
    pub const BAR0: u32 = 0;
    /// BAR2, DSA's work-queue portals.
    pub const BAR2: u32 = 2;
    /// PCI configuration space.
    pub const CONFIG: u32 = 7;
}

/// What `VFIO_IOMMU_GET_INFO` says of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuInfo {
    /// Bitmap of the IOMMU page sizes.
    pub page_sizes: u64,
    /// The usable IOVA windows, ends inclusive.
    pub iova_ranges: Vec<RangeInclusive<u64>>,
    /// How many more DMA mappings the container accepts, where the kernel says.
    pub dma_avail: Option<u32>,
}

/// What `VFIO_DEVICE_GET_INFO` says of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// [`device_flags`].
    pub flags: u32,
    /// Regions.
    pub num_regions: u32,
    /// Interrupt indexes.
    pub num_irqs: u32,
}

/// What `VFIO_DEVICE_GET_REGION_INFO` says of one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// [`region_flags`].
    pub flags: u32,
    /// Bytes; 0 when the region does not exist.
    pub size: u64,
    /// Where the region starts in the device fd's file offsets.
    pub offset: u64,
    /// The sparse-mmap capability's areas (offset and size inside the region), when the
    /// kernel allows mmapping only those parts.
    pub sparse_areas: Option<Vec<(u64, u64)>>,
}

/// The system calls of VFIO (type1 container and group, and iommufd with device cdevs) that
/// the layer makes. Each mirrors one ioctl, open or mmap; see `reference/vfio.md` §1-§3.
pub trait VfioKernel: Send + Sync + fmt::Debug {
    /// `open("/dev/vfio/vfio")`.
    fn open_container(&self) -> io::Result<Fd>;
    /// `VFIO_GET_API_VERSION`.
    fn api_version(&self, container: Fd) -> io::Result<i32>;
    /// `VFIO_CHECK_EXTENSION`.
    fn check_extension(&self, container: Fd, extension: u32) -> io::Result<bool>;
    /// `VFIO_SET_IOMMU`.
    fn set_iommu(&self, container: Fd, model: u32) -> io::Result<()>;
    /// `VFIO_IOMMU_GET_INFO`, capabilities read.
    fn iommu_info(&self, container: Fd) -> io::Result<IommuInfo>;
    /// `VFIO_IOMMU_MAP_DMA`, read and write.
    fn map_dma(&self, container: Fd, va: u64, iova: u64, size: u64) -> io::Result<()>;
    /// `VFIO_IOMMU_UNMAP_DMA`; returns the bytes unmapped.
    fn unmap_dma(&self, container: Fd, iova: u64, size: u64) -> io::Result<u64>;

    /// `open("/dev/vfio/<group>")` (or `noiommu-<group>`).
    fn open_group(&self, group: u32, noiommu: bool) -> io::Result<Fd>;
    /// `VFIO_GROUP_GET_STATUS`.
    fn group_status(&self, group: Fd) -> io::Result<u32>;
    /// `VFIO_GROUP_SET_CONTAINER`.
    fn set_container(&self, group: Fd, container: Fd) -> io::Result<()>;
    /// `VFIO_GROUP_GET_DEVICE_FD`.
    fn group_device(&self, group: Fd, name: &str) -> io::Result<Fd>;

    /// `open("/dev/iommu")`.
    fn open_iommufd(&self) -> io::Result<Fd>;
    /// `open("/dev/vfio/devices/<cdev>")`.
    fn open_device_cdev(&self, cdev: &str) -> io::Result<Fd>;
    /// `VFIO_DEVICE_BIND_IOMMUFD`; returns the device id in the iommufd.
    fn bind_iommufd(&self, device: Fd, iommufd: Fd) -> io::Result<u32>;
    /// `IOMMU_IOAS_ALLOC`; returns the address space's id.
    fn ioas_alloc(&self, iommufd: Fd) -> io::Result<u32>;
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` to an address space.
    fn attach_ioas(&self, device: Fd, ioas: u32) -> io::Result<()>;
    /// `IOMMU_IOAS_IOVA_RANGES`.
    fn ioas_ranges(&self, iommufd: Fd, ioas: u32) -> io::Result<Vec<RangeInclusive<u64>>>;
    /// `IOMMU_IOAS_MAP` at a fixed IOVA, read and write.
    fn ioas_map(&self, iommufd: Fd, ioas: u32, va: u64, iova: u64, len: u64) -> io::Result<()>;
    /// `IOMMU_IOAS_UNMAP`; returns the bytes unmapped.
    fn ioas_unmap(&self, iommufd: Fd, ioas: u32, iova: u64, len: u64) -> io::Result<u64>;

    /// `VFIO_DEVICE_GET_INFO`.
    fn device_info(&self, device: Fd) -> io::Result<DeviceInfo>;
    /// `VFIO_DEVICE_GET_REGION_INFO`, capabilities read.
    fn region_info(&self, device: Fd, index: u32) -> io::Result<RegionInfo>;
    /// `pread` on the device fd.
    fn read(&self, device: Fd, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// `pwrite` on the device fd.
    fn write(&self, device: Fd, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `mmap(MAP_SHARED)` of `len` bytes at file offset `offset` of the device fd, as a
    /// register window (volatile accesses only).
    fn map_region(
        &self,
        device: Fd,
        offset: u64,
        len: usize,
    ) -> io::Result<Arc<dyn RegisterWindow>>;
    /// `VFIO_DEVICE_RESET`.
    fn reset(&self, device: Fd) -> io::Result<()>;
    /// `VFIO_DEVICE_SET_IRQS` on the device-request index with `eventfd`: the kernel signals
    /// it when it wants the device back (unbind, removal).
    fn set_request_eventfd(&self, device: Fd, eventfd: RawFd) -> io::Result<()>;
    /// `close`.
    fn close(&self, fd: Fd);
}
