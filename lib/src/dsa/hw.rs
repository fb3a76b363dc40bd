//! Real portals: a mapped portal page (or all of BAR2) written with MOVDIR64B or ENQCMD, and
//! the CPUID check that says whether this CPU has them.
//!
//! Both instructions take the destination as a register holding a 64-byte-aligned address and
//! the source as a 64-byte memory operand. MOVDIR64B is a posted write of the 64 bytes as one
//! store; ENQCMD is a non-posted request the WQ answers, with ZF set when it asks for a retry.
//! The descriptor must be complete in memory before the instruction (it is read non-atomically)
//! and ordinary stores before it (the zeroed record, a batch list) must be visible to the
//! device, hence the store fence first. None of this runs on the machines dmaplane is developed
//! on (no DSA, and no MOVDIR64B in the CPU); the CPUID check makes that a clear error.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use super::error::DsaError;
use super::portal::{Enqueue, PortalWindow};
use super::spec::{cpuid, portal, Descriptor};
use crate::mmio::RegisterWindow;

/// Which submission instructions this CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubmitInstructions {
    /// MOVDIR64B (dedicated WQs).
    pub movdir64b: bool,
    /// ENQCMD (shared WQs).
    pub enqcmd: bool,
}

impl SubmitInstructions {
    /// Asks the CPU (leaf 7, sub-leaf 0, ECX).
    pub fn detect() -> SubmitInstructions {
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(unused_unsafe)] // safe to call on newer toolchains
            // SAFETY: CPUID is available on every x86-64 CPU; leaf 7 exists on those that
            // could have these bits, and on the others it reads as zeros.
            let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
            SubmitInstructions {
                movdir64b: leaf.ecx & cpuid::MOVDIR64B != 0,
                enqcmd: leaf.ecx & cpuid::ENQCMD != 0,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            SubmitInstructions::default()
        }
    }

    /// Refuses a WQ of this kind on a CPU without its instruction.
    pub fn require(self, dedicated: bool) -> Result<(), DsaError> {
        match (dedicated, self.movdir64b, self.enqcmd) {
            (true, true, _) | (false, _, true) => Ok(()),
            (true, false, _) => Err(DsaError::Unsupported(
                "this CPU has no MOVDIR64B (CPUID.7.0:ECX bit 28), which a dedicated WQ needs"
                    .into(),
            )),
            (false, _, false) => Err(DsaError::Unsupported(
                "this CPU has no ENQCMD (CPUID.7.0:ECX bit 29), which a shared WQ needs".into(),
            )),
        }
    }
}

/// Portal pages mapped from a WQ character device (one page) or a VFIO BAR2.
pub struct MappedPortals {
    base: NonNull<u8>,
    len: usize,
    instructions: SubmitInstructions,
    /// The window whose mapping this is (VFIO), kept alive; `None` when the mapping is ours to
    /// unmap (the character device).
    window: Option<Arc<dyn RegisterWindow>>,
}

// SAFETY: the mapping is device memory reached only through the two instructions, each one
// atomic 64-byte request the device serialises; nothing forms a reference to it.
unsafe impl Send for MappedPortals {}
// SAFETY: as above.
unsafe impl Sync for MappedPortals {}

impl MappedPortals {
    /// Maps `len` bytes of `file` (a `/dev/dsa/wqX.Y` node: one page, write-only, shared),
    /// after checking that the CPU can submit to a WQ of this kind.
    pub fn map(file: &File, len: usize, dedicated: bool) -> Result<MappedPortals, DsaError> {
        let instructions = SubmitInstructions::detect();
        instructions.require(dedicated)?;
        if len == 0 || len % portal::PAGE != 0 {
            return Err(DsaError::BadConfig(format!(
                "a portal mapping of {len} bytes is not whole pages"
            )));
        }
        // SAFETY: a fresh shared mapping of the file; the kernel checks the length against
        // what it allows (one page for a WQ node) and maps the portal uncached.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            let why = if err.raw_os_error() == Some(libc::EPERM) {
                format!("mapping the portal: {err} (the kernel asks for CAP_SYS_RAWIO)")
            } else {
                format!("mapping the portal: {err}")
            };
            return Err(DsaError::Kernel(why));
        }
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| DsaError::Kernel("the portal mapped at address 0".into()))?;
        Ok(MappedPortals {
            base,
            len,
            instructions,
            window: None,
        })
    }

    /// The portals of a BAR2 someone else mapped, such as [`VfioDevice::bar`] with region 2
    /// (`len` bytes of it), after checking that the CPU can submit to WQs of this kind. A
    /// window that is not a plain mapping (a model, a file) is refused: MOVDIR64B and ENQCMD
    /// store to device memory themselves.
    ///
    /// [`VfioDevice::bar`]: crate::vfio::VfioDevice::bar
    pub fn over_window(
        window: Arc<dyn RegisterWindow>,
        len: usize,
        dedicated: bool,
    ) -> Result<MappedPortals, DsaError> {
        let instructions = SubmitInstructions::detect();
        instructions.require(dedicated)?;
        let base = window.mapped_base().ok_or_else(|| {
            DsaError::Unsupported(
                "BAR2 is not mapped into this process, so portal writes cannot reach it".into(),
            )
        })?;
        Ok(MappedPortals {
            base,
            len,
            instructions,
            window: Some(window),
        })
    }

    fn slot(&self, offset: usize) -> *mut u8 {
        assert!(
            offset % portal::SLOT == 0 && offset + portal::SLOT <= self.len,
            "portal write at {offset:#x} outside a {:#x}-byte mapping",
            self.len
        );
        // SAFETY: inside the mapping (checked above).
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl fmt::Debug for MappedPortals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedPortals")
            .field("len", &self.len)
            .field("instructions", &self.instructions)
            .finish()
    }
}

impl PortalWindow for MappedPortals {
    fn len(&self) -> usize {
        self.len
    }

    fn write_descriptor(&self, offset: usize, descriptor: &Descriptor) {
        let portal = self.slot(offset);
        debug_assert!(self.instructions.movdir64b);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `portal` is a 64-byte-aligned slot of a live portal mapping and
        // `descriptor` 64 aligned, initialised bytes; the CPU has MOVDIR64B (checked at map).
        // SFENCE first: earlier stores (record, batch list) reach memory before the device
        // can see the descriptor.
        unsafe {
            std::arch::asm!(
                "sfence",
                "movdir64b {dst}, zmmword ptr [{src}]",
                dst = in(reg) portal,
                src = in(reg) descriptor as *const Descriptor,
                options(nostack),
            );
        }
    }

    fn enqueue_descriptor(&self, offset: usize, descriptor: &Descriptor) -> Enqueue {
        let portal = self.slot(offset);
        debug_assert!(self.instructions.enqcmd);
        #[cfg(target_arch = "x86_64")]
        {
            let retry: u8;
            // SAFETY: as for `write_descriptor`; the CPU has ENQCMD (checked at map). ZF
            // reports a retry.
            unsafe {
                std::arch::asm!(
                    "sfence",
                    "enqcmd {dst}, zmmword ptr [{src}]",
                    "setz {retry}",
                    dst = in(reg) portal,
                    src = in(reg) descriptor as *const Descriptor,
                    retry = out(reg_byte) retry,
                    options(nostack),
                );
            }
            if retry == 0 {
                return Enqueue::Accepted;
            }
        }
        Enqueue::Retry
    }
}

impl Drop for MappedPortals {
    fn drop(&mut self) {
        if self.window.is_none() {
            // SAFETY: the mapping was made in `map` with this length and is unmapped once.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        }
    }
}
