//! The operating-system side of DMA memory, and the only unsafe code of the pool's
//! bookkeeping: mapping backing regions (hugepages through hugepage-rs, 4 KiB pages through
//! memmap2), keeping them out of forked children, pre-faulting and locking them, and
//! locking application memory that is registered for DMA.
//!
//! Nothing here hands out a Rust reference to mapped memory: regions are known by address
//! and length only, because a device may write them at any time (invariant 5).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::OnceLock;

use memmap2::{Advice, MmapOptions, MmapRaw};

/// The base page size of the system.
pub(crate) fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two())
            .unwrap_or(4096)
    })
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// One backing region: a private anonymous mapping, pre-faulted, not inherited by
/// children. Unmapped on drop.
#[derive(Debug)]
pub(crate) enum Mapping {
    /// Hugepages from hugepage-rs; `layout` is what it needs back to unmap.
    Huge { ptr: NonNull<u8>, layout: Layout },
    /// 4 KiB pages from memmap2.
    Small(MmapRaw),
}

// SAFETY: a mapping is plain process memory with no thread affinity; the pointer is only an
// address that any thread may unmap once, which `Drop` does through `&mut self`.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes (a multiple of the hugepage size, which the caller has checked
    /// `/proc/meminfo` reports) of hugepages, or fails with the kernel's errno.
    pub(crate) fn hugepages(len: usize, hugepage_size: usize) -> Result<Mapping, i32> {
        debug_assert!(len > 0 && len % hugepage_size == 0);
        // hugepage-rs rounds the size up to its hugepage size itself and refuses alignments
        // above it; the mapping comes back hugepage-aligned whatever alignment we ask.
        let layout = Layout::from_size_align(len, page_size()).map_err(|_| libc::EINVAL)?;
        // SAFETY: the layout's size is non-zero (debug-asserted above, and every caller
        // passes a whole number of hugepages).
        let ptr = unsafe { hugepage_rs::alloc(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(last_errno)?;
        let mapping = Mapping::Huge { ptr, layout };
        mapping.dont_fork()?;
        mapping.touch(hugepage_size);
        Ok(mapping)
    }

    /// Maps `len` bytes (a multiple of the page size) of pre-faulted 4 KiB pages.
    pub(crate) fn small_pages(len: usize) -> Result<Mapping, i32> {
        debug_assert!(len > 0 && len % page_size() == 0);
        let io_errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let map = MmapOptions::new()
            .len(len)
            .populate()
            .map_anon()
            .map_err(io_errno)?;
        // The raw form never derefs to a slice, so no `&mut [u8]` over DMA memory exists.
        let mapping = Mapping::Small(MmapRaw::from(map));
        mapping.dont_fork()?;
        mapping.touch(page_size());
        Ok(mapping)
    }

    /// The first address of the region.
    pub(crate) fn base(&self) -> usize {
        match self {
            Mapping::Huge { ptr, .. } => ptr.as_ptr() as usize,
            Mapping::Small(map) => map.as_ptr() as usize,
        }
    }

    /// The length of the region in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Mapping::Huge { layout, .. } => layout.size(),
            Mapping::Small(map) => map.len(),
        }
    }

    /// Keeps the region out of children created by `fork`: a copy-on-write fault in the
    /// parent would move a page the device is writing to a new frame.
    fn dont_fork(&self) -> Result<(), i32> {
        match self {
            Mapping::Huge { .. } => {
                // SAFETY: the range is exactly our own mapping; DONTFORK changes no content.
                let rc = unsafe {
                    libc::madvise(
                        self.base() as *mut libc::c_void,
                        self.len(),
                        libc::MADV_DONTFORK,
                    )
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(last_errno())
                }
            }
            Mapping::Small(map) => map
                .advise(Advice::DontFork)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// Writes a zero into every page so each has a real frame before anyone asks for its
    /// physical address; anonymous memory already reads as zero, so contents do not change.
    fn touch(&self, stride: usize) {
        let base = self.base() as *mut u8;
        for offset in (0..self.len()).step_by(stride) {
            // SAFETY: `offset` is inside the mapping, which is writable and not yet known to
            // anyone but its constructor.
            unsafe { base.add(offset).write_volatile(0) };
        }
    }

    /// Locks the region in RAM, or returns the errno of the failed `mlock`.
    pub(crate) fn lock(&self) -> Result<(), i32> {
        match self {
            Mapping::Huge { .. } => lock_range(self.base(), self.len()),
            Mapping::Small(map) => map
                .lock()
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// Zeroes `len` bytes at `offset`.
    ///
    /// # Safety
    ///
    /// The range must be inside the mapping and nobody else (no block handle, no device)
    /// may access it during the call.
    pub(crate) unsafe fn zero(&self, offset: usize, len: usize) {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.len()));
        // SAFETY: in bounds and unshared by the caller's contract.
        unsafe { (self.base() as *mut u8).add(offset).write_bytes(0, len) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Mapping::Huge { ptr, layout } = self {
            // SAFETY: `ptr` came from hugepage_rs::alloc with this very layout, and dropping
            // the mapping is the only way it is given back.
            unsafe { hugepage_rs::dealloc(ptr.as_ptr(), *layout) };
        }
        // memmap2 unmaps the small-page form itself; munmap also drops the lock.
    }
}

/// Locks `[addr, addr + len)` (page-aligned) in RAM, faulting it in writable.
pub(crate) fn lock_range(addr: usize, len: usize) -> Result<(), i32> {
    // SAFETY: mlock changes residency only, never contents; the kernel checks the range.
    let rc = unsafe { libc::mlock(addr as *const libc::c_void, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// Undoes [`lock_range`].
pub(crate) fn unlock_range(addr: usize, len: usize) {
    // SAFETY: munlock changes residency only, never contents; the kernel checks the range.
    // A failure (the memory was unmapped meanwhile) leaves nothing to unlock.
    let _ = unsafe { libc::munlock(addr as *const libc::c_void, len) };
}

/// Whether every page of `[addr, addr + len)` (page-aligned) is mapped.
pub(crate) fn is_mapped(addr: usize, len: usize) -> bool {
    // SAFETY: an asynchronous msync schedules nothing for anonymous memory and reads or
    // writes no memory; its only use here is its ENOMEM for ranges with unmapped pages.
    let rc = unsafe { libc::msync(addr as *mut libc::c_void, len, libc::MS_ASYNC) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pages_are_zeroed_and_page_aligned() {
        let page = page_size();
        let map = Mapping::small_pages(4 * page).unwrap();
        assert_eq!(map.base() % page, 0);
        assert_eq!(map.len(), 4 * page);
        assert!(is_mapped(map.base(), map.len()));
        // SAFETY: in bounds; only this test sees the mapping.
        let byte = unsafe { (map.base() as *const u8).add(3 * page + 5).read() };
        assert_eq!(byte, 0);
    }

    #[test]
    fn unmapped_memory_is_detected() {
        let page = page_size();
        // The kernel keeps the lowest pages unmappable (vm.mmap_min_addr).
        assert!(!is_mapped(page, page));
        let map = Mapping::small_pages(page).unwrap();
        assert!(is_mapped(map.base(), page));
        // `[page, page + base)` starts in that hole and ends past the mapping: refused whole.
        assert!(!is_mapped(page, map.base()));
    }
}
