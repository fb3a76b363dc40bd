//! The kernel's user API for VFIO and iommufd as this layer uses it: request numbers,
//! flags and capability ids, and the argument structs laid out as
//! `include/uapi/linux/vfio.h` and `iommufd.h` define them (checked by size in the tests).

/// Request numbers.
pub(super) mod nr {
    const fn io(nr: u32) -> u64 {
        0x3b00 | nr as u64
    }
    pub(crate) const GET_API_VERSION: u64 = io(100);
    pub(crate) const CHECK_EXTENSION: u64 = io(101);
    pub(crate) const SET_IOMMU: u64 = io(102);
    pub(crate) const GROUP_GET_STATUS: u64 = io(103);
    pub(crate) const GROUP_SET_CONTAINER: u64 = io(104);
    pub(crate) const GROUP_GET_DEVICE_FD: u64 = io(106);
    pub(crate) const DEVICE_GET_INFO: u64 = io(107);
    pub(crate) const DEVICE_GET_REGION_INFO: u64 = io(108);
    pub(crate) const DEVICE_SET_IRQS: u64 = io(110);
    pub(crate) const DEVICE_RESET: u64 = io(111);
    pub(crate) const IOMMU_GET_INFO: u64 = io(112);
    pub(crate) const IOMMU_MAP_DMA: u64 = io(113);
    pub(crate) const IOMMU_UNMAP_DMA: u64 = io(114);
    pub(crate) const DEVICE_BIND_IOMMUFD: u64 = io(118);
    pub(crate) const DEVICE_ATTACH_IOMMUFD_PT: u64 = io(119);
    pub(crate) const IOMMU_IOAS_ALLOC: u64 = io(0x81);
    pub(crate) const IOMMU_IOAS_IOVA_RANGES: u64 = io(0x84);
    pub(crate) const IOMMU_IOAS_MAP: u64 = io(0x85);
    pub(crate) const IOMMU_IOAS_UNMAP: u64 = io(0x86);
}

/// Capability ids of the info chains.
pub(super) const CAP_IOVA_RANGE: u16 = 1;
pub(super) const CAP_DMA_AVAIL: u16 = 3;
pub(super) const CAP_SPARSE_MMAP: u16 = 1;
/// `vfio_region_info.flags`: a capability chain follows.
pub(super) const REGION_INFO_FLAG_CAPS: u32 = 8;
/// `vfio_iommu_type1_info.flags`: a capability chain follows.
pub(super) const IOMMU_INFO_CAPS: u32 = 2;
/// `VFIO_DMA_MAP_FLAG_READ | WRITE`.
pub(super) const DMA_READ_WRITE: u32 = 1 | 2;
/// `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`.
pub(super) const IRQ_EVENTFD_TRIGGER: u32 = 4 | 0x20;
/// `VFIO_PCI_REQ_IRQ_INDEX`.
pub(super) const REQ_IRQ_INDEX: u32 = 4;
/// `IOMMU_IOAS_MAP_FIXED_IOVA | WRITEABLE | READABLE`.
pub(super) const IOAS_MAP_FIXED_RW: u32 = 1 | 2 | 4;

#[repr(C)]
#[derive(Default)]
pub(super) struct GroupStatus {
    pub(super) argsz: u32,
    pub(super) flags: u32,
}

#[repr(C)]
#[derive(Default)]
pub(super) struct DeviceInfoRaw {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) num_regions: u32,
    pub(super) num_irqs: u32,
    pub(super) cap_offset: u32,
    pub(super) pad: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(super) struct RegionInfoRaw {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) index: u32,
    pub(super) cap_offset: u32,
    pub(super) size: u64,
    pub(super) offset: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(super) struct IommuInfoRaw {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) iova_pgsizes: u64,
    pub(super) cap_offset: u32,
    pub(super) pad: u32,
}

#[repr(C)]
pub(super) struct DmaMap {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) vaddr: u64,
    pub(super) iova: u64,
    pub(super) size: u64,
}

#[repr(C)]
pub(super) struct DmaUnmap {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) iova: u64,
    pub(super) size: u64,
}

#[repr(C)]
pub(super) struct IrqSetEventfd {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) index: u32,
    pub(super) start: u32,
    pub(super) count: u32,
    pub(super) fd: i32,
}

#[repr(C)]
pub(super) struct BindIommufd {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) iommufd: i32,
    pub(super) out_devid: u32,
}

#[repr(C)]
pub(super) struct AttachPt {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) pt_id: u32,
}

#[repr(C)]
pub(super) struct IoasAlloc {
    pub(super) size: u32,
    pub(super) flags: u32,
    pub(super) out_ioas_id: u32,
}

#[repr(C)]
pub(super) struct IoasIovaRanges {
    pub(super) size: u32,
    pub(super) ioas_id: u32,
    pub(super) num_iovas: u32,
    pub(super) reserved: u32,
    pub(super) allowed_iovas: u64,
    pub(super) out_iova_alignment: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(super) struct IovaRange {
    pub(super) start: u64,
    pub(super) last: u64,
}

#[repr(C)]
pub(super) struct IoasMap {
    pub(super) size: u32,
    pub(super) flags: u32,
    pub(super) ioas_id: u32,
    pub(super) reserved: u32,
    pub(super) user_va: u64,
    pub(super) length: u64,
    pub(super) iova: u64,
}

#[repr(C)]
pub(super) struct IoasUnmap {
    pub(super) size: u32,
    pub(super) ioas_id: u32,
    pub(super) iova: u64,
    pub(super) length: u64,
}

/// The size of `T` as the `argsz`/`size` word.
pub(super) fn size_of<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}
