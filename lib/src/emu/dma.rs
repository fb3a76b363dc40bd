//! The device's raw accesses to host memory: descriptor fetch, copy, fill and the completion
//! write, each through a raw pointer and never through a Rust reference.
//!
//! A [`HostRange`] can only be made by [`resolve`], from the answer of a
//! [`DeviceMemory`], whose `unsafe` contract makes the bytes valid for the device's accesses
//! and keeps the host off them (the completion word excepted, which both sides access
//! atomically). The accessors below rely on that alone, so the rest of the device is safe
//! code and this module holds all of its `unsafe`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::memory::{DeviceMemory, Resolver};
use crate::ioat::spec::{Descriptor, DESCRIPTOR_SIZE};

/// Host bytes a device may access: `len` bytes at `addr`, contiguous in host memory.
#[derive(Clone, Copy, Debug)]
pub(super) struct HostRange {
    addr: usize,
    len: usize,
}

/// Where a channel's lookups go: its own resolver when the memory offers one, else the
/// shared memory. Either way the answer carries an `unsafe` trait's promise.
pub(super) enum Lookup<'a> {
    /// Through [`DeviceMemory::resolve`].
    Shared(&'a dyn DeviceMemory),
    /// Through the channel's own [`Resolver`].
    Own(&'a mut dyn Resolver),
}

impl Lookup<'_> {
    fn resolve(&mut self, iova: u64, len: usize) -> Option<(usize, usize)> {
        match self {
            Lookup::Shared(memory) => memory.resolve(iova, len),
            Lookup::Own(resolver) => resolver.resolve(iova, len),
        }
    }
}

impl HostRange {
    /// Bytes in the range.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The range without its first `n` bytes (empty if it is shorter).
    pub(super) fn skip(self, n: usize) -> HostRange {
        let n = n.min(self.len);
        HostRange {
            addr: self.addr + n,
            len: self.len - n,
        }
    }

    /// The first `len` bytes of the range (all of it if it is shorter).
    pub(super) fn prefix(self, len: usize) -> HostRange {
        HostRange {
            addr: self.addr,
            len: self.len.min(len),
        }
    }
}

/// The longest run from `iova` (at most `len` bytes) that is mapped and contiguous in host
/// memory, or `None` if `iova` itself is unmapped: for devices that walk a range piece by
/// piece and report where the mapping ends (DSA's partial completion).
pub(super) fn resolve_run(memory: &dyn DeviceMemory, iova: u64, len: usize) -> Option<HostRange> {
    if iova == 0 || len == 0 {
        return None;
    }
    let (addr, run) = memory.resolve(iova, len)?;
    let run = run.min(len);
    (run > 0 && addr != 0 && addr.checked_add(run).is_some())
        .then_some(HostRange { addr, len: run })
}

/// Copies the first `out.len()` bytes of `src` (at most its length) into `out`.
pub(super) fn read_bytes(src: HostRange, out: &mut [u8]) {
    assert!(out.len() <= src.len, "a read past its range");
    // SAFETY: `resolve`/`resolve_run` vouched for `src.len` readable bytes; `out` is a
    // distinct Rust buffer, so the two cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(src.addr as *const u8, out.as_mut_ptr(), out.len()) }
}

/// Writes `bytes` at the start of `dst` (at most its length).
pub(super) fn write_bytes(dst: HostRange, bytes: &[u8]) {
    assert!(bytes.len() <= dst.len, "a write past its range");
    // SAFETY: `resolve`/`resolve_run` vouched for `dst.len` writable bytes; `bytes` is a
    // Rust buffer, which device memory never is.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.addr as *mut u8, bytes.len()) }
}

/// Stores the byte at the start of `range` with Release ordering: a DSA completion record's
/// status, written last, so that the data and the record's other fields happen before any
/// host load (Acquire) that sees it non-zero.
pub(super) fn store_status(range: HostRange, value: u8) {
    assert!(range.len >= 1, "a status store needs a byte");
    // SAFETY: one writable byte (vouched for by `resolve`); a byte is always aligned, and the
    // host reads a status byte only atomically (the `DeviceMemory` contract's exception).
    let atomic = unsafe { AtomicU8::from_ptr(range.addr as *mut u8) };
    atomic.store(value, Ordering::Release);
}

/// The host bytes behind `[iova, iova + len)`, provided the whole range is mapped and
/// contiguous in host memory. IOVA 0 is never valid (drivers use it as "no address").
pub(super) fn resolve(memory: &mut Lookup<'_>, iova: u64, len: usize) -> Option<HostRange> {
    if iova == 0 || len == 0 {
        return None;
    }
    let (addr, run) = memory.resolve(iova, len)?;
    (run >= len && addr != 0 && addr.checked_add(len).is_some()).then_some(HostRange { addr, len })
}

/// Reads the descriptor at the start of `range` (which need not be aligned).
pub(super) fn read_descriptor(range: HostRange) -> Descriptor {
    assert!(
        range.len >= DESCRIPTOR_SIZE,
        "a descriptor fetch needs 64 bytes"
    );
    // SAFETY: `resolve` vouched for `range.len` >= 64 readable bytes; every bit pattern is a
    // valid `Descriptor` (plain integers); the unaligned read assumes no alignment.
    unsafe { (range.addr as *const Descriptor).read_unaligned() }
}

/// Moves `src` to `dst` (equal lengths); the ranges may overlap, as they may on silicon.
pub(super) fn copy(src: HostRange, dst: HostRange) {
    assert_eq!(src.len, dst.len, "copy ranges differ in length");
    // SAFETY: `resolve` vouched for both ranges; `ptr::copy` (memmove) tolerates overlap.
    unsafe { std::ptr::copy(src.addr as *const u8, dst.addr as *mut u8, src.len) }
}

/// Writes `pattern` repeatedly over `dst`, little-endian, starting with the pattern's first
/// byte at the start of the range; a partial last word gets the pattern's leading bytes.
pub(super) fn fill(dst: HostRange, pattern: u64) {
    let bytes = pattern.to_le_bytes();
    let base = dst.addr as *mut u8;
    let words = dst.len / 8;
    for word in 0..words {
        // SAFETY: `word * 8 + 8 <= dst.len`, inside the range `resolve` vouched for; the
        // unaligned write assumes no alignment.
        unsafe { base.add(word * 8).cast::<[u8; 8]>().write_unaligned(bytes) }
    }
    // SAFETY: the last `dst.len % 8` bytes of the range; the source is a local array.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(words * 8), dst.len % 8) }
}

/// Stores the completion word at the start of `word` with Release ordering, so that every
/// data write this thread made for the descriptors it reports happens before any host load
/// (Acquire) that reads the value. Returns false, writing nothing, when the host address is
/// not 8-byte aligned.
pub(super) fn store_completion(word: HostRange, value: u64) -> bool {
    if word.addr % 8 != 0 || word.len < 8 {
        return false;
    }
    // SAFETY: 8 writable bytes (vouched for by `resolve`), aligned (checked above), and the
    // host accesses a completion word only atomically (the `DeviceMemory` contract).
    let atomic = unsafe { AtomicU64::from_ptr(word.addr as *mut u64) };
    atomic.store(value, Ordering::Release);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{HostBuffer, IdentityRanges};

    fn mapped(buffer: &HostBuffer) -> IdentityRanges {
        // SAFETY: each test keeps its buffer alive past the mapping and touches it only while
        // no device access is under way (the accesses here are synchronous).
        unsafe { IdentityRanges::new(&[(buffer.addr(), buffer.len())]) }
    }

    #[test]
    fn fill_restarts_the_pattern_and_truncates_the_tail() {
        let buffer = HostBuffer::new(64);
        let memory = mapped(&buffer);
        fill(
            resolve(&mut Lookup::Shared(&memory), buffer.addr() + 1, 19).unwrap(),
            0x8877_6655_4433_2211,
        );
        let out = buffer.read(0, 21);
        assert_eq!(out[0], 0);
        assert_eq!(out[1..9], [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        assert_eq!(out[9..17], out[1..9]);
        assert_eq!(out[17..20], [0x11, 0x22, 0x33]);
        assert_eq!(out[20], 0);
    }

    #[test]
    fn copy_tolerates_overlap() {
        let mut buffer = HostBuffer::new(64);
        buffer.write(0, b"abcdefgh");
        let memory = mapped(&buffer);
        let base = buffer.addr();
        copy(
            resolve(&mut Lookup::Shared(&memory), base, 6).unwrap(),
            resolve(&mut Lookup::Shared(&memory), base + 2, 6).unwrap(),
        );
        assert_eq!(buffer.read(0, 8), b"ababcdef");
    }

    #[test]
    fn resolve_wants_the_whole_range_and_a_real_address() {
        let buffer = HostBuffer::new(4096);
        let memory = mapped(&buffer);
        assert!(resolve(&mut Lookup::Shared(&memory), buffer.addr() + 4095, 1).is_some());
        assert!(resolve(&mut Lookup::Shared(&memory), buffer.addr() + 4095, 2).is_none());
        assert!(resolve(&mut Lookup::Shared(&memory), 0, 8).is_none());
        assert!(resolve(&mut Lookup::Shared(&memory), buffer.addr(), 0).is_none());
        let word = resolve(&mut Lookup::Shared(&memory), buffer.addr() + 4, 8).unwrap();
        assert!(!store_completion(word, 1), "a misaligned word is refused");
    }
}
