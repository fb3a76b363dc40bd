//! The DMA pool as the emulated device's IOMMU: the device reaches exactly the memory the pool
//! has handed out or registered, at the IOVAs the pool gave it, so a program that works on the
//! emulator programs hardware the same way.

use super::memory::{DeviceMemory, Resolver};
use crate::mem::{DmaPool, Translator};

/// A [`DmaPool`] seen from an emulated device.
#[derive(Clone, Debug)]
pub struct PoolMemory {
    pool: DmaPool,
}

impl PoolMemory {
    /// Lets devices built over the result reach every block and registration of `pool`.
    ///
    /// # Safety
    ///
    /// The device's registers are reachable from safe code, and it accesses memory with plain
    /// loads and stores. The caller promises that no descriptor handed to such a device names
    /// pool memory that host code accesses, frees or re-registers before the device is done
    /// with it: in practice, that descriptors are built only through the driver's `unsafe`
    /// submit calls, whose contracts say the same per operation.
    pub unsafe fn new(pool: DmaPool) -> PoolMemory {
        PoolMemory { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }
}

// SAFETY: `iova_to_va` answers only for live pool regions and registered application memory,
// and reports how far the mapping stays contiguous, so every range returned is mapped host
// memory. It stays valid and unraced while the device uses it by the promise made in
// `PoolMemory::new`: shared regions live as long as the pool (this handle keeps it), and
// blocks and registrations named by descriptors in flight are not freed or touched.
unsafe impl DeviceMemory for PoolMemory {
    fn resolve(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        self.pool.iova_to_va(iova, len).ok()
    }

    /// A lock-free translator per channel: the emulator resolves three or four addresses per
    /// descriptor, and the pool's lock would otherwise be taken for each.
    fn resolver(&self) -> Option<Box<dyn Resolver>> {
        Some(Box::new(PoolResolver(self.pool.translator())))
    }
}

struct PoolResolver(Translator);

// SAFETY: the translator answers as `iova_to_va` would, from a snapshot of the pool's map that
// it refreshes whenever the pool's generation changes (one acquire load per call), so the
// promise made for `PoolMemory` above holds for its answers too.
unsafe impl Resolver for PoolResolver {
    fn resolve(&mut self, iova: u64, len: usize) -> Option<(usize, usize)> {
        self.0.iova_to_va(iova, len).ok()
    }
}
