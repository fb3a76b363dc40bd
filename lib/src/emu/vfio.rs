//! Emulated IOAT functions bound to the simulated VFIO kernel: the kernel's IOMMU is the
//! device's view of memory ([`VfioMemory`]), so a descriptor naming an IOVA nobody mapped
//! fails with an address error, as behind a real IOMMU, instead of reaching memory.

use std::sync::{Arc, Weak};

use super::memory::DeviceMemory;
use super::{EmuConfig, EmuError, EmulatedDevice};
use crate::ioat::spec::BAR_SIZE;
use crate::vfio::sim::{SimFunction, SimKernel};

/// Host memory as the function `bdf` of a simulated VFIO kernel reaches it: through the
/// mappings of the IOMMU context it is attached to, and nothing else.
#[derive(Debug)]
pub struct VfioMemory {
    /// Weak: the kernel holds the function's register window, which holds the device, which
    /// holds this; the kernel's owner keeps it alive while the device is used.
    kernel: Weak<SimKernel>,
    bdf: String,
}

impl VfioMemory {
    /// The view of function `bdf`.
    ///
    /// # Safety
    ///
    /// As for [`PoolMemory::new`](super::PoolMemory::new): whatever is mapped into the
    /// context is memory the device may access with plain loads and stores until it is
    /// unmapped, and no descriptor names memory host code accesses or frees meanwhile (the
    /// driver's `unsafe` submit contracts). The DMA pool maps only live regions and
    /// registrations and unmaps them before freeing them.
    pub unsafe fn new(kernel: Arc<SimKernel>, bdf: impl Into<String>) -> VfioMemory {
        VfioMemory {
            kernel: Arc::downgrade(&kernel),
            bdf: bdf.into(),
        }
    }
}

// SAFETY: `translate` answers only inside mappings of the function's context, which the pool
// made for live memory and removes before that memory goes (see `VfioMemory::new`).
unsafe impl DeviceMemory for VfioMemory {
    fn resolve(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        self.kernel.upgrade()?.translate(&self.bdf, iova, len)
    }
}

/// Makes an emulated IOAT function and binds it to `kernel` as `bdf` in IOMMU group `group`
/// (with VFIO cdev `cdev` where given, and BAR0 mmappable only in `sparse_areas` where
/// given): its registers, configuration space and function reset back the simulated regions,
/// and the kernel's IOMMU is its memory.
pub fn bind_emulated_function(
    kernel: &Arc<SimKernel>,
    bdf: &str,
    group: u32,
    cdev: Option<String>,
    sparse_areas: Option<Vec<(u64, u64)>>,
    config: EmuConfig,
) -> Result<Arc<EmulatedDevice>, EmuError> {
    // SAFETY: the device reaches memory only through descriptors built by the driver's
    // `unsafe` submit calls, whose contracts keep the named buffers live and untouched, and
    // through mappings the pool makes for live memory.
    let memory = Arc::new(unsafe { VfioMemory::new(Arc::clone(kernel), bdf) });
    let device = EmulatedDevice::new(config, memory)?;
    let for_reset = Arc::clone(&device);
    kernel.add_function(SimFunction {
        bdf: bdf.to_string(),
        group,
        registers: device.registers(),
        bar0_len: BAR_SIZE as u64,
        config: device.config_space(),
        sparse_areas,
        reset: Some(Arc::new(move || for_reset.reset_function())),
        cdev,
    });
    Ok(device)
}
