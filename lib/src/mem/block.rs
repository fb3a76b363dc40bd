//! A block of DMA memory: an owned range of a pool region, its precomputed translation,
//! and byte access through raw-pointer copies that never leave a reference to the memory
//! behind (invariant 5).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::pool::{DmaPool, Inner};
use super::MemError;

/// Where a block's IOVA run starts; it ends where the next one starts (or at the end of
/// the block), and consecutive segments are never IOVA-contiguous.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub(crate) offset: usize,
    pub(crate) iova: u64,
}

/// An aligned, zeroed, locked allocation from a [`DmaPool`], returned to it on drop.
///
/// The block keeps its pool alive. Its translation was computed at allocation, so
/// [`iova`](DmaBlock::iova) and [`translate`](DmaBlock::translate) take no lock.
///
/// # Access and the device
///
/// The bytes are never exposed as a slice: a device may write them while an operation is
/// in flight, and a Rust reference would let the compiler assume they cannot change.
/// [`write_at`](DmaBlock::write_at), [`read_at`](DmaBlock::read_at),
/// [`fill`](DmaBlock::fill) and [`to_vec`](DmaBlock::to_vec) copy through raw pointers for
/// the length of one call. They are sound because the only other writer is the device, and
/// submitting an operation that touches the block is an `unsafe` call whose contract
/// forbids touching the block until that operation has completed. Writes take `&mut self`,
/// so two threads cannot write through the same handle at once; code that writes through
/// [`as_mut_ptr`](DmaBlock::as_mut_ptr) takes that duty on itself.
pub struct DmaBlock {
    pool: Arc<Inner>,
    region: u64,
    /// Offset of the block in its region, and the length carved for it there.
    offset: usize,
    reserved: usize,
    ptr: NonNull<u8>,
    len: usize,
    segments: Box<[Segment]>,
}

// SAFETY: the block owns its range exclusively; the memory is plain process memory with no
// thread affinity, and it is returned to the pool under the pool's lock from any thread.
unsafe impl Send for DmaBlock {}
// SAFETY: `&self` methods only read the memory (concurrent reads are fine); every write
// needs `&mut self`.
unsafe impl Sync for DmaBlock {}

impl DmaBlock {
    pub(crate) fn new(
        pool: Arc<Inner>,
        region: u64,
        offset: usize,
        reserved: usize,
        va: usize,
        len: usize,
        segments: Box<[Segment]>,
    ) -> Self {
        debug_assert!(len > 0 && !segments.is_empty() && segments[0].offset == 0);
        DmaBlock {
            pool,
            region,
            offset,
            reserved,
            ptr: NonNull::new(va as *mut u8).expect("pool memory is never at address 0"),
            len,
            segments,
        }
    }

    /// The virtual address of the first byte.
    pub fn va(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The first byte, for reading.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first byte, for writing (see [Access and the device](DmaBlock#access-and-the-device)).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The IOVA of the first byte.
    pub fn iova(&self) -> u64 {
        self.segments[0].iova
    }

    /// The length in bytes, as requested.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: blocks have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A handle to the pool the block came from.
    pub fn pool(&self) -> DmaPool {
        DmaPool::from_inner(Arc::clone(&self.pool))
    }

    /// The IOVA of the byte at `offset` and the number of bytes from there, at most `len`,
    /// that are contiguous in IOVA space. Unlike [`DmaPool::translate`] it takes no lock,
    /// and `offset + len` must stay inside the block.
    pub fn translate(&self, offset: usize, len: usize) -> Result<(u64, usize), MemError> {
        self.check(offset, len)?;
        // The segment holding `offset`: the last one starting at or before it.
        let i = self.segments.partition_point(|s| s.offset <= offset) - 1;
        let seg = self.segments[i];
        let seg_end = self
            .segments
            .get(i + 1)
            .map_or(self.len, |next| next.offset);
        Ok((
            seg.iova + (offset - seg.offset) as u64,
            len.min(seg_end - offset),
        ))
    }

    /// Copies `src` into the block at `offset`.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), MemError> {
        if src.is_empty() {
            return Ok(());
        }
        self.check(offset, src.len())?;
        // SAFETY: in bounds (checked above); `&mut self` excludes other writers through this
        // handle and the submit contract excludes the device; `src` is a Rust slice, so it
        // cannot alias block memory, which is never behind a reference.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .copy_from_nonoverlapping(src.as_ptr(), src.len())
        };
        Ok(())
    }

    /// Copies `dst.len()` bytes from the block at `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemError> {
        if dst.is_empty() {
            return Ok(());
        }
        self.check(offset, dst.len())?;
        // SAFETY: in bounds (checked above); no writer runs concurrently (writes need
        // `&mut self`, the device is excluded by the submit contract); `dst` is a unique
        // Rust slice and cannot alias block memory.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .copy_to_nonoverlapping(dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    /// Sets every byte of the block to `byte`.
    pub fn fill(&mut self, byte: u8) {
        // SAFETY: exactly the block's bytes; exclusive as in `write_at`.
        unsafe { self.ptr.as_ptr().write_bytes(byte, self.len) };
    }

    /// A copy of the block's bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.read_at(0, &mut out)
            .expect("the whole block is in bounds");
        out
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), MemError> {
        if len == 0 {
            return Err(MemError::ZeroLength);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemError::OutOfBounds {
                offset,
                len,
                block_len: self.len,
            }),
        }
    }
}

impl Drop for DmaBlock {
    fn drop(&mut self) {
        self.pool
            .release(self.region, self.offset, self.reserved, self.len);
    }
}

impl fmt::Debug for DmaBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBlock")
            .field("va", &format_args!("{:#x}", self.va()))
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("len", &self.len)
            .field("iova_segments", &self.segments.len())
            .finish()
    }
}
