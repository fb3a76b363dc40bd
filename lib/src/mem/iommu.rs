//! IOVAs the pool hands out itself, for memory that a device reaches through an IOMMU context
//! the application controls (a VFIO container): the [`IommuMapper`] trait such a context
//! implements, and the allocator that picks IOVAs inside the windows every attached context
//! accepts.
//!
//! In [`IovaMode::Mapped`](super::IovaMode::Mapped) each backing region and registration gets
//! one IOVA range of its own, chosen here, and is mapped into every attached context before
//! any device can be told of it; it is unmapped when the region or registration goes, and
//! everything left is unmapped when the pool does. Mapping is a system call that pins pages:
//! it happens per region (2 MiB by default), never per operation.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

/// The IOVA window a pool uses before any IOMMU context says otherwise: from 4 GiB (above the
/// x86 MSI window at 0xFEE0_0000 and the low ranges firmware reserves) to 2^39 (the narrowest
/// address width of IOMMUs in the field), as DPDK chooses for the same reasons.
pub const DEFAULT_IOVA_WINDOW: RangeInclusive<u64> = (1 << 32)..=((1 << 39) - 1);

/// Identifies one IOMMU context, so that a device can be checked to use the one its memory is
/// mapped into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IommuId(pub u64);

impl IommuId {
    /// A process-wide fresh id.
    pub fn fresh() -> IommuId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        IommuId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for IommuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iommu#{}", self.0)
    }
}

/// An IOMMU context a pool maps its memory into: a VFIO container or an iommufd address
/// space, or a simulation of one.
pub trait IommuMapper: Send + Sync + fmt::Debug {
    /// The context's identity.
    fn id(&self) -> IommuId;

    /// The IOVA windows its devices may use, ends inclusive (reserved regions and the address
    /// width already taken out), as they are now: each device or group that joins the context
    /// may narrow them.
    fn iova_ranges(&self) -> io::Result<Vec<RangeInclusive<u64>>>;

    /// How many more mappings the context accepts (type1's `dma_entry_limit` less those made),
    /// when it says.
    fn entries_left(&self) -> Option<u32>;

    /// Makes `len` bytes at virtual `va` reachable, read and write, at `iova`. The range is
    /// page-aligned on both sides.
    fn map(&self, va: usize, iova: u64, len: usize) -> io::Result<()>;

    /// Undoes a [`IommuMapper::map`] of exactly this range.
    fn unmap(&self, iova: u64, len: usize) -> io::Result<()>;
}

/// Free IOVA space: disjoint extents, first fit.
#[derive(Clone, Debug)]
pub(crate) struct IovaSpace {
    /// Start → end (exclusive) of each free extent.
    free: BTreeMap<u64, u64>,
}

impl IovaSpace {
    /// Everything in `window` free.
    pub(crate) fn new(window: RangeInclusive<u64>) -> IovaSpace {
        let mut free = BTreeMap::new();
        if window.start() <= window.end() {
            free.insert(*window.start(), window.end().saturating_add(1));
        }
        IovaSpace { free }
    }

    /// `len` bytes aligned to `align` (a power of two), lowest first.
    pub(crate) fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        debug_assert!(len > 0 && align.is_power_of_two());
        let (start, end, at) = self.free.iter().find_map(|(&start, &end)| {
            let at = start.checked_add(align - 1)? & !(align - 1);
            (at.checked_add(len)? <= end).then_some((start, end, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at);
        }
        if at + len < end {
            self.free.insert(at + len, end);
        }
        Some(at)
    }

    /// Gives `[iova, iova + len)` back.
    pub(crate) fn free(&mut self, iova: u64, len: u64) {
        let (mut start, mut end) = (iova, iova + len);
        if let Some((&before, &before_end)) = self.free.range(..iova).next_back() {
            debug_assert!(before_end <= iova, "IOVA {iova:#x} freed twice");
            if before_end == iova {
                self.free.remove(&before);
                start = before;
            }
        }
        if let Some(after_end) = self.free.remove(&end) {
            end = after_end;
        }
        self.free.insert(start, end);
    }

    /// Keeps only the free space inside `ranges` (ends inclusive): what is handed out from now
    /// on suits a context with those windows too.
    pub(crate) fn restrict(&mut self, ranges: &[RangeInclusive<u64>]) {
        let mut kept = BTreeMap::new();
        for (&start, &end) in &self.free {
            for range in ranges {
                let from = start.max(*range.start());
                let to = end.min(range.end().saturating_add(1));
                if from < to {
                    kept.insert(from, to);
                }
            }
        }
        self.free = kept;
    }
}

/// Whether `[iova, iova + len)` lies inside one of `ranges` (ends inclusive).
pub(crate) fn within(ranges: &[RangeInclusive<u64>], iova: u64, len: usize) -> bool {
    let last = iova.saturating_add(len as u64 - 1);
    ranges
        .iter()
        .any(|r| *r.start() <= iova && last <= *r.end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_aligns_splits_and_coalesces() {
        let mut space = IovaSpace::new(0x1000..=0xffff);
        assert_eq!(space.alloc(0x1000, 0x1000), Some(0x1000));
        assert_eq!(space.alloc(0x800, 0x4000), Some(0x4000));
        assert_eq!(space.alloc(0x1000, 0x1000), Some(0x2000));
        space.free(0x1000, 0x1000);
        space.free(0x2000, 0x1000);
        assert_eq!(
            space.alloc(0x3000, 0x1000),
            Some(0x1000),
            "the two coalesced"
        );
        assert_eq!(
            space.alloc(0x10000, 0x1000),
            None,
            "larger than what is left"
        );
    }

    #[test]
    fn restricting_keeps_only_what_every_window_allows() {
        let mut space = IovaSpace::new(DEFAULT_IOVA_WINDOW);
        // A context that reserves 5 GiB..6 GiB and translates only 34 bits.
        space.restrict(&[0..=(5 << 30) - 1, (6 << 30)..=(1 << 34) - 1]);
        let first = space.alloc(1 << 30, 1 << 30).unwrap();
        assert_eq!(first, 4 << 30);
        let second = space.alloc(1 << 30, 1 << 30).unwrap();
        assert_eq!(second, 6 << 30, "the reserved gigabyte is skipped");
        assert!(within(&[(4 << 30)..=(7 << 30) - 1], first, 1 << 30));
        assert!(!within(&[(4 << 30)..=(5 << 30) - 1], first, (1 << 30) + 1));
    }
}
