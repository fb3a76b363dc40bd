//! The DSA's two BARs as a driver reaches them: BAR0 ([`Bar0`], the registers and tables) and
//! BAR2 ([`Portals`], four 4 KiB portal pages per WQ).
//!
//! BAR0 accesses of 1, 2, 4 or 8 bytes compose and split registers by byte lane over the
//! qwords the device model keeps. What no device would answer (a removed device, memory
//! decoding off, an access outside the window or not naturally aligned) reads all-ones and
//! drops writes: a guest's mistake is never a panic here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::EmulatedDsa;
use crate::dsa::portal::{Enqueue, PortalWindow};
use crate::dsa::spec::{portal, reg, Descriptor, BAR0_SIZE};
use crate::mmio::RegisterWindow;

/// The register window handed out by [`EmulatedDsa::registers`].
pub(super) struct Bar0 {
    pub(super) device: Arc<EmulatedDsa>,
}

fn width_mask(width: usize) -> u64 {
    u64::MAX >> (64 - 8 * width)
}

fn in_window(offset: usize, width: usize) -> bool {
    offset % width == 0
        && offset
            .checked_add(width)
            .is_some_and(|end| end <= BAR0_SIZE)
}

impl Bar0 {
    fn read(&self, offset: usize, width: usize) -> u64 {
        let dev = self.device.shared();
        if !dev.answers() || !in_window(offset, width) {
            return width_mask(width);
        }
        let qword = offset & !7;
        let shift = 8 * (offset - qword);
        let value = if qword == reg::CMDSTATUS {
            dev.read_cmdstatus().into()
        } else {
            dev.read_qword(qword)
        };
        (value >> shift) & width_mask(width)
    }

    fn write(&self, offset: usize, width: usize, value: u64) {
        let dev = self.device.shared();
        if !dev.answers() || !in_window(offset, width) {
            return;
        }
        let qword = offset & !7;
        let shift = 8 * (offset - qword);
        let mask = width_mask(width) << shift;
        let value = (value << shift) & mask;
        match qword {
            // CMD takes effect from a write of its whole dword; CMDSTATUS is read-only.
            reg::CMD if mask & 0xFFFF_FFFF == 0xFFFF_FFFF => dev.write_cmd(value as u32),
            reg::CMD | reg::CMDSTATUS => {}
            _ => dev.write_qword(qword, value, mask),
        }
    }
}

impl RegisterWindow for Bar0 {
    fn read8(&self, offset: usize) -> u8 {
        self.read(offset, 1) as u8
    }

    fn read16(&self, offset: usize) -> u16 {
        self.read(offset, 2) as u16
    }

    fn read32(&self, offset: usize) -> u32 {
        self.read(offset, 4) as u32
    }

    fn read64(&self, offset: usize) -> u64 {
        self.read(offset, 8)
    }

    fn write8(&self, offset: usize, value: u8) {
        self.write(offset, 1, value.into())
    }

    fn write16(&self, offset: usize, value: u16) {
        self.write(offset, 2, value.into())
    }

    fn write32(&self, offset: usize, value: u32) {
        self.write(offset, 4, value.into())
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write(offset, 8, value)
    }
}

/// The portal window handed out by [`EmulatedDsa::portals`].
pub(super) struct Portals {
    device: Arc<EmulatedDsa>,
    /// The driver let the device go: later writes reach nothing.
    revoked: AtomicBool,
}

impl Portals {
    pub(super) fn new(device: Arc<EmulatedDsa>) -> Portals {
        Portals {
            device,
            revoked: AtomicBool::new(false),
        }
    }

    /// The WQ and whether the portal is a limited one, for a write at `offset`; `None` where
    /// no portal is (outside the window, misaligned, an IMS page).
    fn target(&self, offset: usize) -> Option<(usize, bool)> {
        if self.revoked.load(Ordering::Acquire)
            || offset % portal::SLOT != 0
            || offset >= self.len()
        {
            return None;
        }
        let (wq, kind) = portal::decode(offset);
        match kind {
            k if k == portal::Kind::Unlimited as usize => Some((wq, false)),
            k if k == portal::Kind::Limited as usize => Some((wq, true)),
            _ => None,
        }
    }
}

impl PortalWindow for Portals {
    fn len(&self) -> usize {
        self.device.config().wqs * portal::PER_WQ
    }

    fn write_descriptor(&self, offset: usize, descriptor: &Descriptor) {
        if let Some((wq, limited)) = self.target(offset) {
            self.device.shared().submit(wq, limited, descriptor, false);
        }
    }

    fn enqueue_descriptor(&self, offset: usize, descriptor: &Descriptor) -> Enqueue {
        match self.target(offset) {
            Some((wq, limited)) => self.device.shared().submit(wq, limited, descriptor, true),
            None => Enqueue::Retry,
        }
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for Portals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portals")
            .field("device", &self.device)
            .field("revoked", &self.revoked.load(Ordering::Relaxed))
            .finish()
    }
}
