//! The typed errors of DMA memory: every refusal says which value was wrong and why, so a
//! driver can report "buffer 0x7f.. is not DMA memory" rather than a bare failure.

use std::fmt;

/// Why a DMA memory operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemError {
    /// A length of zero was given where at least one byte is needed.
    ZeroLength,
    /// The alignment is not a power of two.
    BadAlignment {
        /// The alignment asked for.
        align: usize,
    },
    /// A null pointer was given as memory to register.
    NullPointer,
    /// The request is too large to be represented (its size overflows once rounded and
    /// aligned).
    OutOfMemory {
        /// The number of bytes asked for.
        requested: usize,
    },
    /// The kernel refused to map (or to map hugepages for) a new backing region.
    MapFailed {
        /// The length of the mapping that was refused.
        len: usize,
        /// The `errno` the kernel reported.
        errno: i32,
    },
    /// The address is neither in pool memory nor in registered memory.
    NotMapped {
        /// The address that has no translation.
        addr: usize,
    },
    /// The IOVA is not the translation of any pool or registered memory; an IOMMU would
    /// fault the access.
    IovaNotMapped {
        /// The IOVA that has no mapping.
        iova: u64,
    },
    /// A range inside a block runs past its end (or starts beyond it).
    OutOfBounds {
        /// The offset asked for.
        offset: usize,
        /// The length asked for.
        len: usize,
        /// The length of the block.
        block_len: usize,
    },
    /// Hugepages were required but none can be had.
    HugepagesUnavailable {
        /// The hugepage size `/proc/meminfo` reports, if it reports one.
        hugepage_size: Option<usize>,
        /// Hugepages free and not reserved by other mappings when the pool looked.
        available: u64,
    },
    /// `/proc/self/pagemap` could not be opened or read.
    PagemapUnavailable {
        /// What the kernel said.
        reason: String,
    },
    /// `/proc/self/pagemap` reports frame number 0 for a present page: the kernel hides
    /// physical addresses from processes without `CAP_SYS_ADMIN`.
    FrameNumbersHidden {
        /// The page whose frame number was hidden.
        addr: usize,
    },
    /// A page that should be resident (it was touched and locked) is not present.
    PageNotPresent {
        /// The page that is not present.
        addr: usize,
    },
    /// `mlock` failed where locking is required (physical IOVAs of unlocked pages may
    /// change under the device).
    LockFailed {
        /// Start of the range that could not be locked.
        addr: usize,
        /// Its length.
        len: usize,
        /// The `errno` the kernel reported.
        errno: i32,
    },
    /// A registration overlaps pool memory or an earlier registration (after both were
    /// rounded out to whole pages).
    Overlap {
        /// Start of the page-aligned range asked for.
        addr: usize,
        /// Its length.
        len: usize,
        /// Start of the range already mapped that it overlaps.
        existing_addr: usize,
        /// Length of that range.
        existing_len: usize,
    },
    /// Two different virtual ranges would share an IOVA (the same physical pages mapped
    /// twice, in `Physical` mode).
    IovaOverlap {
        /// The IOVA that is already taken.
        iova: u64,
        /// The virtual address that would have received it.
        addr: usize,
    },
    /// The pool configuration is unusable.
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
    /// No free IOVA range of this size is left in the windows every attached IOMMU context
    /// accepts.
    IovaSpaceExhausted {
        /// The bytes asked for.
        len: usize,
    },
    /// An IOMMU context accepts no more mappings (VFIO type1's `dma_entry_limit`).
    IommuEntriesExhausted,
    /// Memory already mapped lies outside the IOVA windows of a context being attached.
    IovaOutsideIommu {
        /// The IOVA of the mapping that does not fit.
        iova: u64,
        /// Its length.
        len: usize,
    },
    /// The IOMMU context could not say which IOVAs it accepts.
    IommuQuery {
        /// The errno the kernel (or its simulation) answered with.
        errno: i32,
    },
    /// The IOMMU context refused to map (or unmap) a range.
    IommuMap {
        /// The IOVA.
        iova: u64,
        /// The length.
        len: usize,
        /// The errno the kernel (or its simulation) answered with.
        errno: i32,
    },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::ZeroLength => f.write_str("length is zero"),
            MemError::BadAlignment { align } => {
                write!(f, "alignment {align} is not a power of two")
            }
            MemError::NullPointer => f.write_str("null pointer"),
            MemError::OutOfMemory { requested } => {
                write!(f, "a request of {requested} bytes is too large")
            }
            MemError::MapFailed { len, errno } => write!(
                f,
                "mapping a {len}-byte region failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            MemError::NotMapped { addr } => {
                write!(f, "address {addr:#x} is not in DMA pool or registered memory")
            }
            MemError::IovaNotMapped { iova } => {
                write!(f, "IOVA {iova:#x} is not mapped for DMA")
            }
            MemError::OutOfBounds {
                offset,
                len,
                block_len,
            } => write!(
                f,
                "range {offset:#x}+{len:#x} does not fit in a block of {block_len:#x} bytes"
            ),
            MemError::HugepagesUnavailable {
                hugepage_size: None,
                ..
            } => f.write_str("hugepages unavailable: /proc/meminfo reports no Hugepagesize"),
            MemError::HugepagesUnavailable {
                hugepage_size: Some(size),
                available,
            } => write!(
                f,
                "hugepages unavailable: {available} free {size}-byte hugepages, not enough \
                 (reserve some in /proc/sys/vm/nr_hugepages)"
            ),
            MemError::PagemapUnavailable { reason } => {
                write!(f, "/proc/self/pagemap is unavailable: {reason}")
            }
            MemError::FrameNumbersHidden { addr } => write!(
                f,
                "the kernel hides the physical frame of page {addr:#x} (physical IOVAs need \
                 CAP_SYS_ADMIN)"
            ),
            MemError::PageNotPresent { addr } => {
                write!(f, "page {addr:#x} is not resident although it was locked")
            }
            MemError::LockFailed { addr, len, errno } => write!(
                f,
                "locking {addr:#x}+{len:#x} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            MemError::Overlap {
                addr,
                len,
                existing_addr,
                existing_len,
            } => write!(
                f,
                "range {addr:#x}+{len:#x} overlaps mapped range {existing_addr:#x}+{existing_len:#x}"
            ),
            MemError::IovaOverlap { iova, addr } => write!(
                f,
                "IOVA {iova:#x} for address {addr:#x} is already mapped to another address"
            ),
            MemError::InvalidConfig { reason } => {
                write!(f, "invalid DMA pool configuration: {reason}")
            }
            MemError::IovaSpaceExhausted { len } => {
                write!(f, "no free IOVA range of {len:#x} bytes in the IOMMU's windows")
            }
            MemError::IommuEntriesExhausted => f.write_str(
                "the IOMMU context accepts no more mappings (raise vfio_iommu_type1's \
                 dma_entry_limit, or use larger regions)",
            ),
            MemError::IovaOutsideIommu { iova, len } => write!(
                f,
                "IOVA range {iova:#x}+{len:#x} is outside the IOMMU's valid windows"
            ),
            MemError::IommuQuery { errno } => write!(
                f,
                "reading the IOMMU context's valid IOVA ranges failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            MemError::IommuMap { iova, len, errno } => write!(
                f,
                "mapping IOVA {iova:#x}+{len:#x} in the IOMMU failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for MemError {}
