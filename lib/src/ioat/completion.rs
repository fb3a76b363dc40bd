//! The completion word: eight bytes of DMA memory the device writes its status into after the
//! last descriptor of each doorbell batch. It is the only memory the poll path reads, and it is
//! read and written here alone, through a transient atomic view: never a plain reference to
//! memory the device writes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::mem::{DmaBlock, DmaPool, MemError};

/// An 8-byte, 8-byte-aligned status word in DMA memory.
pub(crate) struct CompletionWord {
    block: DmaBlock,
}

impl CompletionWord {
    /// A zeroed word from `pool`.
    pub(crate) fn new(pool: &DmaPool) -> Result<CompletionWord, MemError> {
        Ok(CompletionWord {
            block: pool.alloc(8, 8)?,
        })
    }

    /// The bus address to program into CHANCMP.
    pub(crate) fn iova(&self) -> u64 {
        self.block.iova()
    }

    fn atomic(&self) -> &AtomicU64 {
        // SAFETY: the block is 8 bytes, 8-byte aligned and lives as long as `self`; the device
        // writes it with single 64-bit stores, and every host access goes through this atomic
        // view, so no access is a data race.
        unsafe { AtomicU64::from_ptr(self.block.as_mut_ptr().cast()) }
    }

    /// The status the device last wrote. Acquire pairs with the device's release: the data
    /// it moved before writing this word is visible.
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        self.atomic().load(Ordering::Acquire)
    }

    /// Overwrites the word; only while the device is not writing it (after a reset).
    pub(crate) fn prime(&self, value: u64) {
        self.atomic().store(value, Ordering::Release);
    }
}
