//! DMA memory: the bottom layer, where rings, completion words and data buffers come from.
//!
//! A [`DmaPool`] hands out [`DmaBlock`]s: aligned, zeroed, locked memory whose IOVA, the
//! address a device uses for it, is known. It plays the part of SPDK's env layer for the
//! user-space IOAT driver and the emulated device: the driver asks
//! [`translate`](DmaPool::translate) for the IOVA of each buffer and splits transfers where
//! the IOVA stops being contiguous, the emulated device asks
//! [`iova_to_va`](DmaPool::iova_to_va) where an IOVA leads and is refused, as by an IOMMU,
//! when it leads nowhere. Application memory joins through [`DmaPool::register`].
//!
//! # IOVA modes
//!
//! - [`IovaMode::Va`]: the IOVA is the virtual address, as under VFIO with IOVA=VA. What
//!   the emulator uses.
//! - [`IovaMode::Physical`]: the IOVA is the physical address from `/proc/self/pagemap`,
//!   for real hardware without an IOMMU. Needs `CAP_SYS_ADMIN` (the kernel hides frame
//!   numbers from other readers). Hugepage backing is strongly preferred: the kernel does
//!   not move hugetlb pages, while locked 4 KiB pages may still be migrated by compaction.
//! - [`IovaMode::Scrambled`]: every 4 KiB page gets a made-up IOVA adjacent to no other, so
//!   a driver that does not split at every page boundary is caught by the device's refusal.
//! - [`IovaMode::Mapped`]: the pool allocates IOVAs and maps each region and registration
//!   into the IOMMU contexts (VFIO containers) attached to it ([`DmaPool::attach_iommu`]),
//!   unmapping it when it goes; what is not mapped faults in the IOMMU.
//!
//! # Backing
//!
//! Backing regions are mapped as 2 MiB hugepages through hugepage-rs when
//! `/proc/meminfo` shows free ones ([`Backing::Hugepages`]), or as locked, pre-faulted
//! 4 KiB pages ([`Backing::SmallPages`]). Either way they are excluded from `fork` (a
//! copy-on-write fault in the parent would move a page under the device), locked with
//! `mlock` and touched page by page before use. Small requests are carved first-fit out of
//! shared regions; requests above half a region get a region of their own, unmapped when
//! they are freed.
//!
//! # Who may touch block memory
//!
//! A device may write a block at any time while an operation on it is in flight, so no
//! Rust reference to block memory is ever kept (invariant 5): blocks are accessed through
//! raw-pointer copies that last one call ([`DmaBlock::write_at`], [`DmaBlock::read_at`]).
//! Submitting an operation that touches a block is `unsafe` in the driver layers, and its
//! contract forbids touching the block until the operation completes; that contract is
//! what makes these safe accessors sound.
//!
//! ```
//! use dmaplane::mem::{DmaPool, DmaPoolConfig, IovaMode};
//!
//! let pool = DmaPool::new(DmaPoolConfig {
//!     iova_mode: IovaMode::Scrambled { seed: 1 },
//!     ..DmaPoolConfig::default()
//! })
//! .unwrap();
//! let mut block = pool.alloc(3 * 4096, 4096).unwrap();
//! block.write_at(0, b"descriptor ring").unwrap();
//!
//! // Scrambled IOVAs break at every page: a transfer must be split in three.
//! let (iova, contiguous) = pool.translate(block.va(), block.len()).unwrap();
//! assert_eq!((iova, contiguous), (block.iova(), 4096));
//! // The device's view leads back to the block.
//! assert_eq!(pool.iova_to_va(iova, 15).unwrap(), (block.va(), 15));
//! drop(block);
//! assert_eq!(pool.live_blocks(), 0);
//! ```

mod block;
mod error;
mod freelist;
mod iommu;
mod map;
mod os;
mod pool;
mod procfs;
mod scramble;
mod translator;

pub use block::DmaBlock;
pub use error::MemError;
pub use iommu::{IommuId, IommuMapper, DEFAULT_IOVA_WINDOW};
pub use pool::{DmaPool, Registration};
pub use translator::Translator;

/// The default size of a shared backing region: one 2 MiB hugepage.
pub const DEFAULT_REGION_SIZE: usize = 2 << 20;

/// How the IOVA, the address a device uses, is derived from a virtual address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IovaMode {
    /// The IOVA is the virtual address (VFIO's IOVA=VA; the emulated device).
    #[default]
    Va,
    /// The IOVA is the physical address, read from `/proc/self/pagemap` (real hardware
    /// without an IOMMU; needs `CAP_SYS_ADMIN`, and every page locked).
    Physical,
    /// A test mode: every 4 KiB page gets a seeded, made-up IOVA that is never 0, always
    /// 4 KiB-aligned, below 2^48 and adjacent to no other page's IOVA, so transfers must be
    /// split at every page boundary.
    Scrambled {
        /// The seed of the page permutation; equal seeds give equal IOVA sequences.
        seed: u64,
    },
    /// The pool picks each region's IOVA itself (inside [`DEFAULT_IOVA_WINDOW`], narrowed to
    /// what attached contexts accept) and maps it into every IOMMU context attached with
    /// [`DmaPool::attach_iommu`]: a VFIO container with the IOMMU translating. Devices reach
    /// exactly what is mapped; the rest faults.
    Mapped,
}

/// The kind of pages behind a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Hugepages (usually 2 MiB, as `/proc/meminfo` reports) from hugepage-rs.
    Hugepages,
    /// Locked, pre-faulted base pages (4 KiB) from memmap2.
    SmallPages,
}

/// Which backing a pool should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackingChoice {
    /// Hugepages when `/proc/meminfo` shows free ones, else small pages; a later region
    /// falls back to small pages too when the hugepages have run out.
    #[default]
    Auto,
    /// Hugepages only: creating the pool fails with
    /// [`MemError::HugepagesUnavailable`] when there are none, growing it with
    /// [`MemError::MapFailed`].
    Hugepages,
    /// Small pages only.
    SmallPages,
}

/// How to build a [`DmaPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaPoolConfig {
    /// How IOVAs are derived.
    pub iova_mode: IovaMode,
    /// Which pages back the pool.
    pub backing: BackingChoice,
    /// The size of a shared region, rounded up to the backing's page size; requests larger
    /// than half of it get a region of their own.
    pub region_size: usize,
}

impl Default for DmaPoolConfig {
    /// IOVA = VA, hugepages when available, 2 MiB regions.
    fn default() -> Self {
        DmaPoolConfig {
            iova_mode: IovaMode::Va,
            backing: BackingChoice::Auto,
            region_size: DEFAULT_REGION_SIZE,
        }
    }
}
