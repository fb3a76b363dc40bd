//! The descriptor ring in DMA memory: a power-of-two array of 64-byte descriptors linked into a
//! circle once, at creation, through their `next` fields.
//!
//! Each slot's bus address is translated on its own, so the ring may straddle pages that are not
//! IOVA-contiguous; the device only ever follows `next`. This is the one place the driver writes
//! memory the device reads, always through raw pointers: no Rust reference to ring memory exists.

use crate::ioat::spec::{ctl, Descriptor, DESCRIPTOR_SIZE};
use crate::mem::{DmaBlock, DmaPool, MemError};

/// A circular chain of descriptors.
pub(crate) struct DescriptorRing {
    block: DmaBlock,
    bus_addresses: Box<[u64]>,
    mask: u32,
}

impl DescriptorRing {
    /// A ring of `1 << order` zeroed descriptors, each `next` pointing at the following slot.
    pub(crate) fn new(pool: &DmaPool, order: u32) -> Result<DescriptorRing, MemError> {
        let slots = 1usize << order;
        let block = pool.alloc(slots * DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)?;
        let bus_addresses = (0..slots)
            .map(|slot| {
                block
                    .translate(slot * DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)
                    .map(|(iova, _)| iova)
            })
            .collect::<Result<Box<[u64]>, MemError>>()?;
        let ring = DescriptorRing {
            block,
            bus_addresses,
            mask: (slots - 1) as u32,
        };
        for slot in 0..slots as u32 {
            let next = ring.bus_address(slot.wrapping_add(1));
            ring.write(slot, &Descriptor::default(), next);
        }
        Ok(ring)
    }

    /// Number of slots.
    pub(crate) fn size(&self) -> u32 {
        self.mask + 1
    }

    /// Bus address of the slot holding free-running index `index`.
    #[inline]
    pub(crate) fn bus_address(&self, index: u32) -> u64 {
        self.bus_addresses[(index & self.mask) as usize]
    }

    #[inline]
    fn slot_ptr(&self, index: u32) -> *mut Descriptor {
        let offset = (index & self.mask) as usize * DESCRIPTOR_SIZE;
        // SAFETY: `offset` is below the block's length (slots * 64) and the block is 64-byte
        // aligned, so the result is an in-bounds, aligned descriptor slot.
        unsafe { self.block.as_mut_ptr().add(offset).cast() }
    }

    /// Writes the descriptor of slot `index`, keeping the chain link `next`.
    #[inline]
    pub(crate) fn write(&self, index: u32, descriptor: &Descriptor, next: u64) {
        let mut d = *descriptor;
        d.next = next;
        // SAFETY: an aligned in-bounds slot; the device does not read this slot until the
        // doorbell that follows (the caller's release fence orders the two).
        unsafe { self.slot_ptr(index).write(d) }
    }

    /// Writes a descriptor into slot `index`, preserving the slot's chain link.
    #[inline]
    pub(crate) fn fill(&self, index: u32, descriptor: &Descriptor) {
        self.write(index, descriptor, self.bus_address(index.wrapping_add(1)));
    }

    /// Sets control bits on the descriptor in slot `index`, which the device has not been told
    /// about yet.
    #[inline]
    pub(crate) fn set_control_bits(&self, index: u32, bits: u32) {
        let control = self.slot_ptr(index).cast::<u32>().wrapping_add(1);
        // SAFETY: `control` is the aligned `control` field of an in-bounds slot the device will
        // not read before the next doorbell.
        unsafe { control.write(control.read() | bits) }
    }

    /// The control word of slot `index` (for tests and assertions).
    pub(crate) fn control(&self, index: u32) -> u32 {
        let control = self.slot_ptr(index).cast::<u32>().wrapping_add(1);
        // SAFETY: aligned in-bounds field; the device never writes descriptors.
        unsafe { control.read() }
    }

    /// Whether slot `index` holds a fence.
    pub(crate) fn has_fence(&self, index: u32) -> bool {
        self.control(index) & ctl::FENCE != 0
    }
}
