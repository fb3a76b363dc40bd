//! The DMA pool as the emulated device's IOMMU: the device reaches exactly the memory the pool
//! has handed out or registered, at the IOVAs the pool gave it, so a program that works on the
//! emulator programs hardware the same way.

use super::memory::DeviceMemory;
use crate::mem::DmaPool;

// SAFETY: `iova_to_va` answers only for live pool regions and registered application memory,
// and reports how far the mapping stays contiguous, so every range it returns is mapped host
// memory. That memory stays valid while the device may use it because the pool keeps shared
// regions until it is dropped (and the device holds a pool handle), while blocks with their own
// region and registrations end only when their owner drops them, which the driver's `unsafe`
// submit contract forbids while an operation on them is in flight. The same contract keeps
// host code from touching buffers a descriptor in flight reads or writes.
unsafe impl DeviceMemory for DmaPool {
    fn resolve(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        self.iova_to_va(iova, len).ok()
    }
}
