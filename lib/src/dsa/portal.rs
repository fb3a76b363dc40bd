//! How descriptors reach a DSA work queue: a portal, one 4 KiB page of BAR2 per WQ and kind,
//! written 64 bytes at a time.
//!
//! [`PortalWindow`] is BAR2 as the driver sees it, whatever is behind it: the emulated device
//! takes the 64 bytes through a plain call, real hardware through MOVDIR64B (dedicated WQs) or
//! ENQCMD (shared WQs) on the mapped page. A dedicated WQ gives no answer (what overflows is
//! dropped, so the driver counts its credits); a shared one answers accepted or retry.

use std::fmt;

use super::spec::Descriptor;

/// What a shared WQ answers an enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueue {
    /// The WQ took the descriptor.
    Accepted,
    /// The WQ is full, over its threshold, or disabled: try again later.
    Retry,
}

/// BAR2 of a DSA device: the portals of its WQs.
pub trait PortalWindow: Send + Sync + fmt::Debug {
    /// Bytes of BAR2 this window covers.
    fn len(&self) -> usize;

    /// Whether the window covers nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A posted 64-byte write of `descriptor` at `offset` (64-byte aligned): MOVDIR64B, for
    /// dedicated WQs. No answer: a full or disabled WQ drops it.
    fn write_descriptor(&self, offset: usize, descriptor: &Descriptor);

    /// A 64-byte enqueue of `descriptor` at `offset` (64-byte aligned): ENQCMD, for shared WQs.
    fn enqueue_descriptor(&self, offset: usize, descriptor: &Descriptor) -> Enqueue;

    /// The device is being let go: later writes must not reach it (a VFIO release unmaps BAR2).
    fn revoke(&self) {}
}
