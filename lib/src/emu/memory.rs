//! How the emulated device reaches host memory: through [`DeviceMemory`], as silicon reaches
//! it through an IOMMU, and never any other way.
//!
//! The device is handed bus addresses (IOVAs) in registers and descriptors; it asks its
//! `DeviceMemory` which host bytes an IOVA names and how far they run contiguously, then reads
//! and writes them through raw pointers (see `dma.rs`). Two small implementations serve tests
//! and examples: [`IdentityRanges`] (IOVA = virtual address over a list of allowed ranges, as
//! under VFIO in IOVA=VA mode) and [`ScrambledPages`] (each 4 KiB page of a buffer at a fake,
//! out-of-order IOVA, which only a driver that splits at IOVA discontinuities survives).
//! [`HostBuffer`] is a zeroed, page-aligned allocation to put rings, completion words and data
//! in.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ioat::spec::Descriptor;

/// Size of the pages [`ScrambledPages`] maps and [`HostBuffer`] aligns to.
pub const PAGE_SIZE: usize = 4096;

/// How the device turns bus addresses into host memory, as an IOMMU would.
///
/// # Safety
///
/// Implementors promise that for every `Some((host, run))` returned by [`resolve`]:
///
/// - the `run` bytes from `host` are valid for raw reads and writes for as long as any device
///   that holds this memory may use it (until the device is dropped or surprise-removed);
/// - no Rust reference (`&`/`&mut`) to those bytes is live while a device may access them,
///   and host code does not access bytes that a descriptor in flight reads or writes (the
///   completion word excepted, which must be read with atomic loads): the device accesses
///   them with plain, non-atomic loads and stores, so anything else is a data race.
///
/// [`resolve`]: DeviceMemory::resolve
pub unsafe trait DeviceMemory: Send + Sync {
    /// The host address of `iova` and how many bytes from there are contiguous in host
    /// memory (at most `len`), or `None` if `iova` is not mapped.
    fn resolve(&self, iova: u64, len: usize) -> Option<(usize, usize)>;

    /// A resolver for one channel's own use, which may keep state between calls (a cached
    /// translation, say) to spare the shared lookup. `None`, the default, means each lookup
    /// goes through [`DeviceMemory::resolve`].
    fn resolver(&self) -> Option<Box<dyn Resolver>> {
        None
    }
}

/// A per-channel view of [`DeviceMemory`], used by one thread at a time.
///
/// # Safety
///
/// The same promise as [`DeviceMemory`]'s, for every answer of [`Resolver::resolve`].
pub unsafe trait Resolver: Send {
    /// As [`DeviceMemory::resolve`].
    fn resolve(&mut self, iova: u64, len: usize) -> Option<(usize, usize)>;
}

/// A zeroed, page-aligned heap allocation for rings, completion words and data buffers.
///
/// It hands out its address; making it visible to a device is a separate, `unsafe` step
/// (building an [`IdentityRanges`] or [`ScrambledPages`] over it), which is where the promise
/// not to race the device is made. Host-side accesses go through raw pointers, so no Rust
/// reference to memory a device writes is ever formed.
pub struct HostBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer owns its allocation and reaches it only through raw pointers; writes need
// `&mut self`, so host threads cannot race each other through it (device accesses are covered
// by the `DeviceMemory` contract of whoever mapped it).
unsafe impl Send for HostBuffer {}
// SAFETY: as above; shared access only reads (or loads the completion word atomically).
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// Allocates `len` bytes (rounded up to whole pages, at least one), zeroed and aligned to
    /// [`PAGE_SIZE`]. Panics if the rounded size overflows.
    pub fn new(len: usize) -> HostBuffer {
        let len = len
            .max(1)
            .checked_next_multiple_of(PAGE_SIZE)
            .expect("buffer size overflows");
        let layout = Layout::from_size_align(len, PAGE_SIZE).expect("buffer size overflows");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        HostBuffer { ptr, layout }
    }

    /// The buffer's address, which is also its IOVA under [`IdentityRanges`].
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the buffer is empty (never: it holds at least one page).
    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }

    /// Raw pointer to the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn at(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "{len} bytes at {offset:#x} lie outside a {:#x}-byte buffer",
            self.len()
        );
        // SAFETY: the range is inside the allocation (checked above).
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// Copies `bytes` into the buffer at `offset`.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) {
        let dst = self.at(offset, bytes.len());
        // SAFETY: `dst` has room for `bytes` (checked by `at`); a slice cannot overlap memory
        // only reachable through this buffer's pointer while we hold `&mut self`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&mut self, offset: usize, len: usize, byte: u8) {
        let dst = self.at(offset, len);
        // SAFETY: `dst` has room for `len` bytes (checked by `at`).
        unsafe { std::ptr::write_bytes(dst, byte, len) }
    }

    /// Copies `len` bytes out of the buffer from `offset`.
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let src = self.at(offset, len);
        let mut out = vec![0u8; len];
        // SAFETY: `src` holds `len` readable bytes (checked by `at`); `out` is a fresh vector.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len) }
        out
    }

    /// Stores a descriptor at `offset` (byte-wise: any offset works, so tests can also build
    /// misplaced ones).
    pub fn write_descriptor(&mut self, offset: usize, descriptor: &Descriptor) {
        let dst = self.at(offset, std::mem::size_of::<Descriptor>());
        // SAFETY: `dst` has room for one descriptor (checked by `at`); the unaligned write
        // makes no alignment assumption.
        unsafe { dst.cast::<Descriptor>().write_unaligned(*descriptor) }
    }

    /// Loads the naturally aligned 64-bit word at `offset` with Acquire ordering: the way to
    /// read a completion word, pairing with the device's Release store of it, after which the
    /// data the completed descriptors wrote is visible.
    pub fn load_u64(&self, offset: usize) -> u64 {
        assert!(offset % 8 == 0, "completion words are 8-byte aligned");
        let word = self.at(offset, 8).cast::<u64>();
        // SAFETY: `word` is in the allocation, 8-byte aligned (page-aligned base, checked
        // offset), and the device writes it only with atomic stores.
        unsafe { AtomicU64::from_ptr(word) }.load(Ordering::Acquire)
    }

    /// Stores the naturally aligned 64-bit word at `offset` atomically (to prime a completion
    /// word before the device may write it).
    pub fn store_u64(&mut self, offset: usize, value: u64) {
        assert!(offset % 8 == 0, "completion words are 8-byte aligned");
        let word = self.at(offset, 8).cast::<u64>();
        // SAFETY: as in `load_u64`.
        unsafe { AtomicU64::from_ptr(word) }.store(value, Ordering::Release)
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuffer")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .finish()
    }
}

/// IOVA = virtual address, over a list of `[start, start + len)` ranges the device may touch;
/// everything else is unmapped, as an IOMMU in IOVA=VA mode maps only registered memory.
///
/// A run never crosses from one range into the next, even when they happen to be adjacent.
#[derive(Clone, Debug)]
pub struct IdentityRanges {
    ranges: Vec<(u64, usize)>,
}

impl IdentityRanges {
    /// Maps each `(start, len)` range at IOVA = `start`.
    ///
    /// # Safety
    ///
    /// Each range must stay valid for reads and writes while any device holding this mapping
    /// may use it, and the host must keep to the access rules of [`DeviceMemory`] for it.
    pub unsafe fn new(ranges: &[(u64, usize)]) -> IdentityRanges {
        IdentityRanges {
            ranges: ranges.to_vec(),
        }
    }
}

// SAFETY: every run returned lies inside one of the ranges the constructor's caller vouched for.
unsafe impl DeviceMemory for IdentityRanges {
    fn resolve(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        self.ranges.iter().find_map(|&(start, size)| {
            let offset = iova.checked_sub(start)?;
            let left = (size as u64).checked_sub(offset).filter(|&left| left > 0)?;
            let run = len.min(usize::try_from(left).unwrap_or(usize::MAX));
            Some((usize::try_from(iova).ok()?, run))
        })
    }
}

/// Each 4 KiB page of a host buffer at a fake IOVA, in reverse page order, so that no two
/// pages adjacent in host memory are adjacent (in the same direction) in IOVA space.
///
/// Page `i` of `n` sits at `iova_base + (n - 1 - i) * 4096`. A transfer crossing a page
/// boundary in IOVA space therefore continues in a host page that is not the next one: the
/// device reports it as an address error, and a driver must split every transfer at the IOVA
/// discontinuities [`ScrambledPages::translate`] reports, as it would for memory whose
/// physical pages are scattered.
#[derive(Clone, Debug)]
pub struct ScrambledPages {
    host: u64,
    pages: u64,
    iova_base: u64,
}

impl ScrambledPages {
    /// Maps the `len` bytes at `host` (both multiples of [`PAGE_SIZE`]) at fake IOVAs from
    /// `iova_base` (page-aligned, not zero).
    ///
    /// # Safety
    ///
    /// The host range must stay valid for reads and writes while any device holding this
    /// mapping may use it, and the host must keep to the access rules of [`DeviceMemory`].
    pub unsafe fn new(host: u64, len: usize, iova_base: u64) -> ScrambledPages {
        let page = PAGE_SIZE as u64;
        assert!(
            host % page == 0 && len % PAGE_SIZE == 0 && len > 0,
            "scrambled memory maps whole pages"
        );
        assert!(
            iova_base != 0 && iova_base % page == 0,
            "the IOVA base must be a non-zero page boundary"
        );
        ScrambledPages {
            host,
            pages: len as u64 / page,
            iova_base,
        }
    }

    /// The IOVA of the host address `host` and how many bytes from there are contiguous in
    /// both spaces (at most `len`, never past the page), or `None` outside the buffer: the
    /// driver's side of the mapping, what a DMA pool's `translate` would answer.
    pub fn translate(&self, host: u64, len: usize) -> Option<(u64, usize)> {
        let page = PAGE_SIZE as u64;
        let offset = host.checked_sub(self.host)?;
        let index = offset / page;
        if index >= self.pages {
            return None;
        }
        let within = offset % page;
        let iova = self.iova_base + (self.pages - 1 - index) * page + within;
        Some((iova, len.min((page - within) as usize)))
    }
}

// SAFETY: every run returned lies inside one page of the host range the constructor's caller
// vouched for.
unsafe impl DeviceMemory for ScrambledPages {
    fn resolve(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        let page = PAGE_SIZE as u64;
        let offset = iova.checked_sub(self.iova_base)?;
        let slot = offset / page;
        if slot >= self.pages {
            return None;
        }
        let within = offset % page;
        let host = self.host + (self.pages - 1 - slot) * page + within;
        Some((
            usize::try_from(host).ok()?,
            len.min((page - within) as usize),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_buffer_round_trips_bytes_and_words() {
        let mut buffer = HostBuffer::new(100);
        assert_eq!(buffer.len(), PAGE_SIZE);
        assert_eq!(buffer.addr() % PAGE_SIZE as u64, 0);
        assert!(buffer.read(0, PAGE_SIZE).iter().all(|&b| b == 0));
        buffer.write(10, &[1, 2, 3]);
        buffer.fill(13, 2, 9);
        assert_eq!(buffer.read(9, 7), [0, 1, 2, 3, 9, 9, 0]);
        buffer.store_u64(64, 0x0102_0304_0506_0708);
        assert_eq!(buffer.load_u64(64), 0x0102_0304_0506_0708);
        assert_eq!(buffer.read(64, 2), [8, 7]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn host_buffer_refuses_out_of_range_access() {
        HostBuffer::new(PAGE_SIZE).read(PAGE_SIZE - 1, 2);
    }

    #[test]
    fn identity_ranges_resolve_only_inside_ranges() {
        let buffer = HostBuffer::new(2 * PAGE_SIZE);
        let base = buffer.addr();
        // SAFETY: the buffer outlives the mapping and no device uses it.
        let memory = unsafe { IdentityRanges::new(&[(base, 100), (base + 4096, 4096)]) };
        assert_eq!(memory.resolve(base, 64), Some((base as usize, 64)));
        assert_eq!(
            memory.resolve(base + 90, 64),
            Some((base as usize + 90, 10))
        );
        assert_eq!(memory.resolve(base + 100, 1), None);
        assert_eq!(
            memory.resolve(base + 8191, 8),
            Some((base as usize + 8191, 1))
        );
        assert_eq!(memory.resolve(base + 8192, 1), None);
        assert_eq!(memory.resolve(0, 1), None);
    }

    #[test]
    fn scrambled_pages_reverse_the_page_order() {
        let buffer = HostBuffer::new(3 * PAGE_SIZE);
        let base = buffer.addr();
        let iova = 0x40_0000_0000;
        // SAFETY: the buffer outlives the mapping and no device uses it.
        let memory = unsafe { ScrambledPages::new(base, buffer.len(), iova) };
        assert_eq!(
            memory.translate(base, 10_000),
            Some((iova + 2 * 4096, 4096))
        );
        assert_eq!(
            memory.translate(base + 4096 + 96, 8),
            Some((iova + 4096 + 96, 8))
        );
        assert_eq!(memory.translate(base + 3 * 4096, 1), None);
        // The page after the first IOVA page is the host page *before* it.
        assert_eq!(
            memory.resolve(iova, 8192),
            Some((base as usize + 8192, 4096))
        );
        assert_eq!(
            memory.resolve(iova + 4096, 1),
            Some((base as usize + 4096, 1))
        );
        assert_eq!(memory.resolve(iova + 3 * 4096, 1), None);
        assert_eq!(memory.resolve(iova - 1, 1), None);
        for offset in [0u64, 100, 4095, 4096, 9000] {
            let (bus, _) = memory.translate(base + offset, 1).unwrap();
            assert_eq!(memory.resolve(bus, 1).unwrap().0 as u64, base + offset);
        }
    }
}
