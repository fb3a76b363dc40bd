//! First-fit sub-allocation inside one backing region.
//!
//! A region is cut into blocks by offset. Free space is kept as extents in a map keyed by
//! offset, so first fit is "lowest address that fits", and a freed block merges with the
//! free extents on either side at once: a region whose blocks have all come back is a
//! single extent again, ready for a request as large as the first one.

use std::collections::BTreeMap;

/// The free extents of one region, by offset.
#[derive(Debug)]
pub(crate) struct FreeList {
    /// offset → length; extents never touch (they would have been merged) nor overlap.
    extents: BTreeMap<usize, usize>,
    len: usize,
}

impl FreeList {
    /// A list for a region of `len` bytes, all free.
    pub(crate) fn new(len: usize) -> Self {
        let mut extents = BTreeMap::new();
        if len > 0 {
            extents.insert(0, len);
        }
        FreeList { extents, len }
    }

    /// Takes `len` bytes at the lowest offset where `base + offset` is a multiple of
    /// `align`, or returns `None` when no extent can hold them.
    pub(crate) fn alloc(&mut self, base: usize, len: usize, align: usize) -> Option<usize> {
        debug_assert!(len > 0 && align.is_power_of_two());
        let (start, ext_len, offset) = self.extents.iter().find_map(|(&start, &ext_len)| {
            let addr = base.checked_add(start)?;
            let aligned = addr.checked_add(align - 1)? & !(align - 1);
            let offset = start + (aligned - addr);
            (offset.checked_add(len)? <= start + ext_len).then_some((start, ext_len, offset))
        })?;
        self.extents.remove(&start);
        if offset > start {
            self.extents.insert(start, offset - start);
        }
        let end = offset + len;
        if end < start + ext_len {
            self.extents.insert(end, start + ext_len - end);
        }
        Some(offset)
    }

    /// Gives `len` bytes at `offset` back, merging with the neighbouring free extents.
    pub(crate) fn free(&mut self, offset: usize, len: usize) {
        debug_assert!(offset + len <= self.len, "freed range outside the region");
        let mut start = offset;
        let mut end = offset + len;
        if let Some((&prev, &prev_len)) = self.extents.range(..offset).next_back() {
            debug_assert!(
                prev + prev_len <= offset,
                "double free at offset {offset:#x}"
            );
            if prev + prev_len == offset {
                self.extents.remove(&prev);
                start = prev;
            }
        }
        if let Some(next_len) = self.extents.remove(&end) {
            end += next_len;
        }
        debug_assert!(
            self.extents.range(offset..end).next().is_none(),
            "double free at offset {offset:#x}"
        );
        self.extents.insert(start, end - start);
    }

    /// Whether every byte of the region is free.
    #[cfg(test)]
    pub(crate) fn is_all_free(&self) -> bool {
        self.extents.get(&0) == Some(&self.len)
    }

    /// The number of free extents (fragmentation, for tests).
    #[cfg(test)]
    pub(crate) fn extent_count(&self) -> usize {
        self.extents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_takes_lowest_offset_and_respects_alignment() {
        let mut list = FreeList::new(4096);
        assert_eq!(list.alloc(0x1000, 100, 64), Some(0));
        // The next 64-aligned address after 100 bytes is offset 128.
        assert_eq!(list.alloc(0x1000, 64, 64), Some(128));
        // A base that is not aligned shifts the offset so that the address is.
        let mut list = FreeList::new(4096);
        assert_eq!(list.alloc(0x1010, 16, 256), Some(0xf0));
        // The gap before the aligned block stays free and serves a later small request.
        assert_eq!(list.alloc(0x1010, 16, 1), Some(0));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut list = FreeList::new(4096);
        assert_eq!(list.alloc(0, 4097, 1), None);
        assert_eq!(list.alloc(0x10, 4096, 1), Some(0));
        assert_eq!(list.alloc(0x10, 1, 1), None);
        // Alignment padding counts: 4000 bytes at a 4096-aligned address do not fit when the
        // region starts 16 bytes past an alignment boundary.
        let mut list = FreeList::new(4096);
        assert_eq!(list.alloc(0x10, 4000, 4096), None);
    }

    #[test]
    fn free_coalesces_both_sides() {
        let mut list = FreeList::new(3 * 64);
        let a = list.alloc(0, 64, 64).unwrap();
        let b = list.alloc(0, 64, 64).unwrap();
        let c = list.alloc(0, 64, 64).unwrap();
        assert_eq!((a, b, c), (0, 64, 128));
        list.free(a, 64);
        list.free(c, 64);
        assert_eq!(list.extent_count(), 2);
        list.free(b, 64);
        assert_eq!(list.extent_count(), 1);
        assert!(list.is_all_free());
        // The merged extent serves the whole region again.
        assert_eq!(list.alloc(0, 3 * 64, 1), Some(0));
    }
}
