//! A window onto part of a function's registers, as an mmap of part of its BAR: bounded, and
//! revocable (all-ones once revoked), as [`RegisterWindow::revoke`] asks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::mmio::RegisterWindow;

/// A window into part of a register window (an mmap of part of a BAR).
pub(super) struct WindowAt {
    pub(super) inner: Arc<dyn RegisterWindow>,
    pub(super) base: usize,
    pub(super) len: usize,
    /// Revoked: the mapping was replaced by all-ones memory (see [`RegisterWindow::revoke`]).
    pub(super) revoked: AtomicBool,
}

impl WindowAt {
    /// Where an access of `width` bytes at `offset` goes in the function's window, or `None`
    /// once revoked.
    fn at(&self, offset: usize, width: usize) -> Option<usize> {
        assert!(
            offset + width <= self.len,
            "access of {width} bytes at {offset:#x} past a {:#x}-byte mapping",
            self.len
        );
        (!self.revoked.load(Ordering::Acquire)).then_some(self.base + offset)
    }
}

macro_rules! window_access {
    ($read:ident, $write:ident, $ty:ty, $width:expr) => {
        fn $read(&self, offset: usize) -> $ty {
            self.at(offset, $width)
                .map_or(<$ty>::MAX, |at| self.inner.$read(at))
        }
        fn $write(&self, offset: usize, value: $ty) {
            if let Some(at) = self.at(offset, $width) {
                self.inner.$write(at, value)
            }
        }
    };
}

impl RegisterWindow for WindowAt {
    window_access!(read8, write8, u8, 1);
    window_access!(read16, write16, u16, 2);
    window_access!(read32, write32, u32, 4);
    window_access!(read64, write64, u64, 8);

    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }
}
