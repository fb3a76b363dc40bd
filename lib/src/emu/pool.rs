//! The DMA pool as the emulated device's IOMMU: the device reaches exactly the memory the pool
//! has handed out or registered, at the IOVAs the pool gave it, so a program that works on the
//! emulator programs hardware the same way.
//!
//! The device resolves three or four addresses per descriptor, so it must not take the pool's
//! lock each time: each thread that runs device work (the engine thread, or the submitting
//! thread in inline mode) keeps a lock-free [`Translator`] of the last pool it served.

use std::cell::RefCell;

use super::memory::DeviceMemory;
use crate::mem::{DmaPool, Translator};

thread_local! {
    static TRANSLATOR: RefCell<Option<Translator>> = const { RefCell::new(None) };
}

// SAFETY: the translator answers only for live pool regions and registered application memory
// (it rechecks the pool's generation on every call), and reports how far the mapping stays
// contiguous, so every range it returns is mapped host memory. That memory stays valid while
// the device may use it: shared regions live as long as the pool (the device holds a pool
// handle), and blocks with their own region and registrations end only when their owner drops
// them, which the driver's `unsafe` submit contract forbids while an operation on them is in
// flight. The same contract keeps host code off buffers a descriptor in flight uses.
unsafe impl DeviceMemory for DmaPool {
    fn resolve(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        TRANSLATOR.with(|cell| {
            let mut cached = cell.borrow_mut();
            if !cached.as_ref().is_some_and(|t| t.serves(self)) {
                *cached = Some(self.translator());
            }
            cached.as_mut()?.iova_to_va(iova, len).ok()
        })
    }
}
