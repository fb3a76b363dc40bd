//! Register access: the one way the driver reaches a device's registers.
//!
//! A [`RegisterWindow`] reads and writes 8/16/32/64-bit registers at byte offsets. On hardware
//! it is an [`MmioRegion`], volatile accesses through a raw pointer into the mapped BAR (never a
//! Rust reference: the compiler may merge, split or drop accesses through one). The emulated
//! device implements the same trait with its register model, so write-1-to-clear bits,
//! self-clearing commands and doorbells behave as on silicon, and the same driver code runs on
//! both.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};

use crate::mem::{DmaPool, IovaMode};

/// How the device behind a register window addresses host memory, as the way its registers
/// were reached implies: the driver checks it against the DMA pool's IOVA mode at probe, so a
/// pool whose addresses the device would misread is refused before any descriptor is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaAddressing {
    /// A model of a device (or a test double): it resolves whatever IOVAs the pool gives.
    Emulated,
    /// BAR0 mapped through sysfs: the device puts bus addresses on the bus, which are
    /// physical ones unless an IOMMU translates for it (then they fault).
    Physical {
        /// An IOMMU translates this function's DMA (its group's domain is not `identity`).
        iommu_translating: bool,
    },
    /// Opened through VFIO into IOMMU context `iommu`: the device uses the IOVAs mapped
    /// there; in no-IOMMU mode nothing translates and they are physical addresses.
    Vfio {
        /// The context.
        iommu: crate::mem::IommuId,
        /// VFIO's unsafe no-IOMMU mode.
        noiommu: bool,
    },
}

/// Why a pool's IOVAs would mean nothing to the device behind `registers`, or `Ok`: each way
/// of reaching a function fixes what its DMA addresses mean, and a mismatch is refused before
/// the function is enabled, with the fix named.
pub fn check_addressing(registers: &dyn RegisterWindow, pool: &DmaPool) -> Result<(), String> {
    let mode = pool.iova_mode();
    let refuse = |why: &str| Err(format!("{why} (the pool is {mode:?})"));
    match registers.addressing() {
        DmaAddressing::Emulated => Ok(()),
        DmaAddressing::Physical {
            iommu_translating: true,
        } => refuse(
            "an IOMMU translates this function's DMA, so physical addresses would fault: \
             open it through VFIO (bind it to vfio-pci), or boot with iommu=pt",
        ),
        DmaAddressing::Physical { .. } if mode != IovaMode::Physical => refuse(
            "registers mapped through sysfs: the device sees bus addresses, so the pool \
             must use IovaMode::Physical",
        ),
        DmaAddressing::Vfio { noiommu: true, .. } if mode != IovaMode::Physical => {
            refuse("VFIO's no-IOMMU mode translates nothing: the pool must use IovaMode::Physical")
        }
        DmaAddressing::Vfio {
            iommu,
            noiommu: false,
        } if mode != IovaMode::Mapped || !pool.iommus().contains(&iommu) => refuse(
            "opened through VFIO: the pool must be IovaMode::Mapped and attached to the \
             function's IOMMU context (DmaPool::attach_iommu)",
        ),
        DmaAddressing::Physical { .. } | DmaAddressing::Vfio { .. } => Ok(()),
    }
}

/// Byte-addressed device registers.
pub trait RegisterWindow: Send + Sync {
    /// How the device behind this window addresses memory; see [`DmaAddressing`].
    fn addressing(&self) -> DmaAddressing {
        DmaAddressing::Emulated
    }

    /// Reads the 8-bit register at `offset`.
    fn read8(&self, offset: usize) -> u8;
    /// Reads the 16-bit register at `offset`.
    fn read16(&self, offset: usize) -> u16;
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Reads the 64-bit register at `offset` in one access.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 8-bit register at `offset`.
    fn write8(&self, offset: usize, value: u8);
    /// Writes the 16-bit register at `offset`.
    fn write16(&self, offset: usize, value: u16);
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Writes the 64-bit register at `offset` in one access.
    fn write64(&self, offset: usize, value: u64);

    /// Lets go of the device while others may still hold the window: from now on reads return
    /// all-ones (what a removed device answers) and writes go nowhere. A window over a VFIO
    /// device's mapping does this so that the device can be closed and handed back to the
    /// kernel (whose unbind waits for every mapping of it to go) without leaving a hole that
    /// a late access would fault on. Windows that map nothing of a device keep the default,
    /// which does nothing.
    fn revoke(&self) {}

    /// Where the window is mapped in this process, for a window that is a plain mapping of
    /// the device: what instructions that store to device memory themselves (DSA's MOVDIR64B
    /// and ENQCMD) need. `None`, the default, for windows that are models or go through a
    /// file. Storing through it is the caller's `unsafe` business.
    fn mapped_base(&self) -> Option<NonNull<u8>> {
        None
    }
}

/// A mapped register region accessed with volatile loads and stores.
pub struct MmioRegion {
    base: NonNull<u8>,
    len: usize,
    addressing: DmaAddressing,
    /// Keeps the mapping alive when the region owns it.
    _mapping: Option<MmapRaw>,
}

// SAFETY: the region is plain device memory addressed by raw pointers; every access is a
// single volatile load or store, which the device serialises, so sharing it between threads
// cannot create a data race in the Rust sense (no reference to the memory is ever formed).
unsafe impl Send for MmioRegion {}
// SAFETY: as above.
unsafe impl Sync for MmioRegion {}

impl MmioRegion {
    /// Maps `len` bytes of a BAR resource file such as
    /// `/sys/bus/pci/devices/<bdf>/resource0`, shared and uncached as sysfs provides it.
    pub fn map_resource(path: &Path, len: usize) -> io::Result<MmioRegion> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mapping = MmapOptions::new().len(len).map_raw(&file)?;
        let base = NonNull::new(mapping.as_mut_ptr())
            .ok_or_else(|| io::Error::other("the BAR mapped at address 0"))?;
        Ok(MmioRegion {
            base,
            len,
            addressing: DmaAddressing::Physical {
                iommu_translating: false,
            },
            _mapping: Some(mapping),
        })
    }

    /// A region over memory the caller keeps mapped.
    ///
    /// # Safety
    ///
    /// `base..base + len` must stay mapped, readable and writable for the region's lifetime,
    /// and nothing may hold a Rust reference to it.
    pub unsafe fn from_raw_parts(base: NonNull<u8>, len: usize) -> MmioRegion {
        MmioRegion {
            base,
            len,
            addressing: DmaAddressing::Physical {
                iommu_translating: false,
            },
            _mapping: None,
        }
    }

    /// The same region, recording how its device addresses memory.
    #[must_use]
    pub fn with_addressing(mut self, addressing: DmaAddressing) -> MmioRegion {
        self.addressing = addressing;
        self
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to the naturally aligned register of `width` bytes at `offset`.
    #[inline]
    fn register<T>(&self, offset: usize) -> *mut T {
        let width = std::mem::size_of::<T>();
        assert!(
            offset % width == 0 && offset.checked_add(width).is_some_and(|end| end <= self.len),
            "register access of {width} bytes at {offset:#x} outside a {:#x}-byte window",
            self.len
        );
        // SAFETY: the offset is inside the mapping (checked above).
        unsafe { self.base.as_ptr().add(offset) }.cast()
    }
}

macro_rules! volatile_access {
    ($read:ident, $write:ident, $ty:ty) => {
        #[inline]
        fn $read(&self, offset: usize) -> $ty {
            // SAFETY: `register` checked bounds and alignment; the mapping is live.
            unsafe { self.register::<$ty>(offset).read_volatile() }
        }

        #[inline]
        fn $write(&self, offset: usize, value: $ty) {
            // SAFETY: `register` checked bounds and alignment; the mapping is live.
            unsafe { self.register::<$ty>(offset).write_volatile(value) }
        }
    };
}

impl RegisterWindow for MmioRegion {
    fn mapped_base(&self) -> Option<NonNull<u8>> {
        Some(self.base)
    }

    fn addressing(&self) -> DmaAddressing {
        self.addressing
    }

    volatile_access!(read8, write8, u8);
    volatile_access!(read16, write16, u16);
    volatile_access!(read32, write32, u32);
    volatile_access!(read64, write64, u64);
}

impl std::fmt::Debug for MmioRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioRegion")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

/// 64-bit register access that honours parts needing two 32-bit halves, low first.
pub fn read64_split(window: &dyn RegisterWindow, offset: usize, split: bool) -> u64 {
    if split {
        let low = window.read32(offset);
        let high = window.read32(offset + 4);
        u64::from(high) << 32 | u64::from(low)
    } else {
        window.read64(offset)
    }
}

/// Writes a 64-bit register, as two 32-bit halves (low first) when `split`.
pub fn write64_split(window: &dyn RegisterWindow, offset: usize, value: u64, split: bool) {
    if split {
        window.write32(offset, value as u32);
        window.write32(offset + 4, (value >> 32) as u32);
    } else {
        window.write64(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region_over(buffer: &mut [u64]) -> MmioRegion {
        let len = std::mem::size_of_val(buffer);
        let base = NonNull::new(buffer.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: the buffer outlives the region in each test and is not otherwise borrowed
        // while the region is used.
        unsafe { MmioRegion::from_raw_parts(base, len) }
    }

    #[test]
    fn widths_land_at_their_offsets_little_endian() {
        let mut backing = [0u64; 4];
        let regs = region_over(&mut backing);
        regs.write8(0, 0x11);
        regs.write16(2, 0x2233);
        regs.write32(4, 0x4455_6677);
        regs.write64(8, 0x8899_aabb_ccdd_eeff);
        assert_eq!(regs.read64(0), 0x4455_6677_2233_0011);
        assert_eq!(regs.read32(8), 0xccdd_eeff);
        assert_eq!(regs.read16(10), 0xccdd);
        assert_eq!(regs.read8(15), 0x88);
        drop(regs);
        assert_eq!(backing[1], 0x8899_aabb_ccdd_eeff);
    }

    #[test]
    fn split_access_matches_single_access() {
        let mut backing = [0u64; 4];
        let regs = region_over(&mut backing);
        write64_split(&regs, 16, 0x0123_4567_89ab_cdef, true);
        assert_eq!(regs.read64(16), 0x0123_4567_89ab_cdef);
        assert_eq!(read64_split(&regs, 16, true), 0x0123_4567_89ab_cdef);
        write64_split(&regs, 24, 7, false);
        assert_eq!(read64_split(&regs, 24, true), 7);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn access_past_the_window_is_refused() {
        let mut backing = [0u64; 1];
        let regs = region_over(&mut backing);
        regs.read32(6);
    }

    #[test]
    fn maps_a_resource_file() {
        let path = std::env::temp_dir().join(format!("dmaplane-bar-{}", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let regs = MmioRegion::map_resource(&path, 4096).unwrap();
        regs.write32(0x80, 0xfeed_beef);
        assert_eq!(regs.read16(0x82), 0xfeed);
        drop(regs);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&bytes[0x80..0x84], &0xfeed_beefu32.to_le_bytes());
    }
}

/// A register window with the addressing of the way it was reached, for windows whose maker
/// cannot know it (a mapping handed out by a kernel interface that does not know the IOMMU
/// context).
pub struct AddressedWindow {
    inner: std::sync::Arc<dyn RegisterWindow>,
    addressing: DmaAddressing,
}

impl AddressedWindow {
    /// `inner`, reporting `addressing`.
    pub fn new(
        inner: std::sync::Arc<dyn RegisterWindow>,
        addressing: DmaAddressing,
    ) -> AddressedWindow {
        AddressedWindow { inner, addressing }
    }
}

impl RegisterWindow for AddressedWindow {
    fn addressing(&self) -> DmaAddressing {
        self.addressing
    }
    fn read8(&self, offset: usize) -> u8 {
        self.inner.read8(offset)
    }
    fn read16(&self, offset: usize) -> u16 {
        self.inner.read16(offset)
    }
    fn read32(&self, offset: usize) -> u32 {
        self.inner.read32(offset)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.inner.read64(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.inner.write8(offset, value)
    }
    fn write16(&self, offset: usize, value: u16) {
        self.inner.write16(offset, value)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.inner.write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
    fn mapped_base(&self) -> Option<NonNull<u8>> {
        self.inner.mapped_base()
    }
    fn revoke(&self) {
        self.inner.revoke()
    }
}

/// Which address space an [`Access`] went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// The register window (BAR0).
    Registers,
    /// PCI configuration space.
    Config,
}

/// One register or configuration-space access, as an [`AccessLog`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Where it went.
    pub space: Space,
    /// A write (or a read).
    pub write: bool,
    /// Byte offset in its space.
    pub offset: usize,
    /// Bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// The value written, or the value the read returned.
    pub value: u64,
}

/// The accesses made through [`RecordingWindow`]s (and the PCI configuration-space recorder)
/// that share it, in the order they were made: what a bring-up sequence is checked against.
#[derive(Clone, Debug, Default)]
pub struct AccessLog(std::sync::Arc<std::sync::Mutex<Vec<Access>>>);

impl AccessLog {
    /// An empty log.
    pub fn new() -> AccessLog {
        AccessLog::default()
    }

    /// Appends an access.
    pub fn push(&self, access: Access) {
        crate::sync::lock_std(&self.0).push(access);
    }

    /// The accesses so far, in order; the log is emptied.
    pub fn take(&self) -> Vec<Access> {
        std::mem::take(&mut *crate::sync::lock_std(&self.0))
    }
}

/// A [`RegisterWindow`] that records every access it passes on, for checking a driver's
/// register sequences against the programming rules (the order, the widths).
pub struct RecordingWindow {
    inner: std::sync::Arc<dyn RegisterWindow>,
    log: AccessLog,
}

impl RecordingWindow {
    /// Records the accesses to `inner` into `log`.
    pub fn new(inner: std::sync::Arc<dyn RegisterWindow>, log: AccessLog) -> RecordingWindow {
        RecordingWindow { inner, log }
    }

    fn note(&self, write: bool, offset: usize, width: u8, value: u64) {
        self.log.push(Access {
            space: Space::Registers,
            write,
            offset,
            width,
            value,
        });
    }
}

/// The read and write methods of one width, each recorded.
macro_rules! recorded_access {
    ($read:ident, $write:ident, $ty:ty, $width:expr) => {
        fn $read(&self, offset: usize) -> $ty {
            let value = self.inner.$read(offset);
            self.note(false, offset, $width, value.into());
            value
        }

        fn $write(&self, offset: usize, value: $ty) {
            self.note(true, offset, $width, value.into());
            self.inner.$write(offset, value);
        }
    };
}

impl RegisterWindow for RecordingWindow {
    fn addressing(&self) -> DmaAddressing {
        self.inner.addressing()
    }

    recorded_access!(read8, write8, u8, 1);
    recorded_access!(read16, write16, u16, 2);
    recorded_access!(read32, write32, u32, 4);
    recorded_access!(read64, write64, u64, 8);
}
