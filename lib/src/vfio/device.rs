//! A function opened through VFIO: its regions, BAR0 as a register window (the mmappable
//! parts mapped, the rest through pread and pwrite, as the sparse-mmap capability demands),
//! configuration space through the config region, reset, and the device-request eventfd.
//!
//! Dropping the [`VfioDevice`] (or [`VfioDevice::release`]) hands the function back at once,
//! even while a driver still holds its register window: each mapping of BAR0 is replaced by
//! all-ones memory ([`RegisterWindow::revoke`]) and the device fd is closed, so the kernel's
//! unbind or removal, which waits for both, can finish. The kernel then clears bus mastering
//! and puts the function in D3, as it does when a process crashes, so no DMA is left running.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, RwLock};

use super::context::VfioContext;
use super::kernel::{region_flags, region_index, DeviceInfo, Fd, RegionInfo};
use super::VfioError;
use crate::mmio::{AddressedWindow, DmaAddressing, RegisterWindow};
use crate::pci::ConfigSpace;

/// The device fd, closed when the device is released (or its last holder goes). Calls on it
/// hold the read lock, so a number closed (and perhaps reused for another file) is never
/// used.
struct DeviceFd {
    context: Arc<VfioContext>,
    fd: RwLock<Option<Fd>>,
    bdf: String,
    /// Its IOMMU group, when opened through one (type1).
    group: Option<u32>,
}

impl Drop for DeviceFd {
    fn drop(&mut self) {
        self.close();
    }
}

impl DeviceFd {
    /// Runs `call` on the open fd, or fails with `EBADF` once it is closed.
    fn with<T>(&self, call: impl FnOnce(Fd) -> io::Result<T>) -> io::Result<T> {
        let fd = self.fd.read().unwrap_or_else(|p| p.into_inner());
        match *fd {
            Some(fd) => call(fd),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    fn close(&self) {
        let mut fd = self.fd.write().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = fd.take() {
            self.context.kernel().close(fd);
            self.context.device_closed(self.group);
        }
    }

    fn call(&self, what: &'static str) -> impl FnOnce(io::Error) -> VfioError + '_ {
        move |error| VfioError::Call {
            what,
            bdf: self.bdf.clone(),
            error,
        }
    }
}

/// A function opened through VFIO. See the module documentation.
pub struct VfioDevice {
    fd: Arc<DeviceFd>,
    info: DeviceInfo,
    /// Every mapping of BAR0 handed out, to revoke on release.
    mappings: Mutex<Vec<Arc<dyn RegisterWindow>>>,
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioDevice")
            .field("bdf", &self.fd.bdf)
            .field("info", &self.info)
            .finish()
    }
}

impl VfioDevice {
    pub(super) fn new(
        context: Arc<VfioContext>,
        fd: Fd,
        bdf: &str,
        group: Option<u32>,
    ) -> Result<VfioDevice, VfioError> {
        let fd = Arc::new(DeviceFd {
            context,
            fd: RwLock::new(Some(fd)),
            bdf: bdf.to_string(),
            group,
        });
        let info = fd
            .with(|raw| fd.context.kernel().device_info(raw))
            .map_err(fd.call("VFIO_DEVICE_GET_INFO"))?;
        Ok(VfioDevice {
            fd,
            info,
            mappings: Mutex::new(Vec::new()),
        })
    }

    /// Hands the function back to the kernel now: every mapping of BAR0 reads all-ones from
    /// here on, configuration space and the rest of BAR0 answer as a removed device does, and
    /// the fd is closed. Idempotent; dropping the device does it too.
    pub fn release(&self) {
        for window in crate::sync::lock_std(&self.mappings).drain(..) {
            window.revoke();
        }
        self.fd.close();
    }

    /// The function's PCI address.
    pub fn bdf(&self) -> &str {
        &self.fd.bdf
    }

    /// The context it was opened into.
    pub fn context(&self) -> &Arc<VfioContext> {
        &self.fd.context
    }

    /// What `VFIO_DEVICE_GET_INFO` said.
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// Region `index` (see [`region_index`]).
    pub fn region(&self, index: u32) -> Result<RegionInfo, VfioError> {
        self.fd
            .with(|fd| self.fd.context.kernel().region_info(fd, index))
            .map_err(self.fd.call("VFIO_DEVICE_GET_REGION_INFO"))
    }

    /// The first `len` bytes of BAR0 as a register window: mmapped where the region allows
    /// (all of it, or its sparse areas), through pread/pwrite elsewhere.
    pub fn bar0(&self, len: usize) -> Result<Arc<dyn RegisterWindow>, VfioError> {
        self.bar(region_index::BAR0, len)
    }

    /// The first `len` bytes of BAR `index` (a region index, see [`region_index`]), as
    /// [`VfioDevice::bar0`] maps BAR0: DSA's portals are BAR2.
    pub fn bar(&self, index: u32, len: usize) -> Result<Arc<dyn RegisterWindow>, VfioError> {
        let refused = |why: String| VfioError::BarRefused {
            bdf: self.fd.bdf.clone(),
            why,
        };
        let region = self.region(index)?;
        if region.size < len as u64 {
            return Err(refused(format!(
                "the region holds {:#x} bytes, the driver needs {len:#x}",
                region.size
            )));
        }
        if region.flags & region_flags::MMAP == 0 {
            return Err(refused(format!(
                "the kernel does not let BAR{index} be mmapped"
            )));
        }
        let kernel = self.fd.context.kernel();
        let areas = match &region.sparse_areas {
            None => vec![(0, len as u64)],
            Some(areas) => areas
                .iter()
                .filter_map(|&(offset, size)| {
                    let end = (offset + size).min(len as u64);
                    (offset < end).then_some((offset, end - offset))
                })
                .collect(),
        };
        if areas.is_empty() {
            return Err(refused("no part of it may be mmapped".into()));
        }
        let mut mapped = Vec::new();
        for (offset, size) in areas {
            let window = self
                .fd
                .with(|fd| kernel.map_region(fd, region.offset + offset, size as usize))
                .map_err(|e| refused(format!("mmap of {offset:#x}+{size:#x}: {e}")))?;
            crate::sync::lock_std(&self.mappings).push(Arc::clone(&window));
            mapped.push((offset as usize, size as usize, window));
        }
        let window: Arc<dyn RegisterWindow> = match mapped.as_slice() {
            [(0, size, window)] if *size == len => Arc::clone(window),
            _ => Arc::new(SparseBar {
                fd: Arc::clone(&self.fd),
                region_offset: region.offset,
                areas: mapped,
            }),
        };
        // The driver checks the pool against this at probe.
        let addressing = DmaAddressing::Vfio {
            iommu: self.fd.context.id(),
            noiommu: self.fd.context.is_noiommu(),
        };
        Ok(Arc::new(AddressedWindow::new(window, addressing)))
    }

    /// Configuration space, through the config region.
    pub fn config_space(&self) -> Result<Arc<dyn ConfigSpace>, VfioError> {
        let region = self.region(region_index::CONFIG)?;
        Ok(Arc::new(VfioConfig {
            fd: Arc::clone(&self.fd),
            offset: region.offset,
        }))
    }

    /// Resets the function (`VFIO_DEVICE_RESET`, usually an FLR): every register is back at
    /// its power-on value; standard configuration space is restored by the kernel.
    pub fn reset(&self) -> Result<(), VfioError> {
        self.fd
            .with(|fd| self.fd.context.kernel().reset(fd))
            .map_err(self.fd.call("VFIO_DEVICE_RESET"))
    }

    /// An eventfd the kernel signals when it wants the function back (an unbind, a removal
    /// begun): the hotplug monitor watches it and removes the device.
    pub fn request_notifier(&self) -> Result<RequestNotifier, VfioError> {
        // SAFETY: plain syscall; a non-negative result is a fresh descriptor we own.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(self.fd.call("eventfd")(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor from `eventfd`, owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        self.fd
            .with(|fd| {
                self.fd
                    .context
                    .kernel()
                    .set_request_eventfd(fd, eventfd.as_raw_fd())
            })
            .map_err(self.fd.call("VFIO_DEVICE_SET_IRQS (device request)"))?;
        Ok(RequestNotifier {
            eventfd,
            bdf: self.fd.bdf.clone(),
        })
    }
}

/// The device-request eventfd of a VFIO function.
#[derive(Debug)]
pub struct RequestNotifier {
    eventfd: OwnedFd,
    bdf: String,
}

impl RequestNotifier {
    /// Whether the kernel asked for the function since the last call (never blocks).
    pub fn requested(&self) -> bool {
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into a live array from a non-blocking eventfd we own.
        let read = unsafe { libc::read(self.eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        read == 8 && u64::from_ne_bytes(count) > 0
    }

    /// The function it watches.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }
}

/// BAR0 with only some parts mmapped; the rest goes through pread and pwrite.
struct SparseBar {
    fd: Arc<DeviceFd>,
    region_offset: u64,
    /// (offset in the BAR, length, window).
    areas: Vec<(usize, usize, Arc<dyn RegisterWindow>)>,
}

impl SparseBar {
    /// The mapped window holding `[offset, offset + width)`, and the offset inside it.
    fn mapped(&self, offset: usize, width: usize) -> Option<(&dyn RegisterWindow, usize)> {
        self.areas
            .iter()
            .find(|(start, len, _)| *start <= offset && offset + width <= start + len)
            .map(|(start, _, window)| (&**window, offset - start))
    }

    fn read(&self, offset: usize, width: usize) -> u64 {
        let mut bytes = [0u8; 8];
        let at = self.region_offset + offset as u64;
        match self
            .fd
            .with(|fd| self.fd.context.kernel().read(fd, at, &mut bytes[..width]))
        {
            Ok(()) => u64::from_le_bytes(bytes),
            // A register read that fails is what a gone device answers.
            Err(_) => u64::MAX >> (64 - 8 * width),
        }
    }

    fn write(&self, offset: usize, width: usize, value: u64) {
        let at = self.region_offset + offset as u64;
        let bytes = value.to_le_bytes();
        // A failed register write is dropped, as a posted write to a gone device is.
        let _ = self
            .fd
            .with(|fd| self.fd.context.kernel().write(fd, at, &bytes[..width]));
    }
}

macro_rules! sparse_access {
    ($read:ident, $write:ident, $ty:ty, $width:expr) => {
        fn $read(&self, offset: usize) -> $ty {
            match self.mapped(offset, $width) {
                Some((window, at)) => window.$read(at),
                None => self.read(offset, $width) as $ty,
            }
        }

        fn $write(&self, offset: usize, value: $ty) {
            match self.mapped(offset, $width) {
                Some((window, at)) => window.$write(at, value),
                None => self.write(offset, $width, value.into()),
            }
        }
    };
}

impl RegisterWindow for SparseBar {
    sparse_access!(read8, write8, u8, 1);
    sparse_access!(read16, write16, u16, 2);
    sparse_access!(read32, write32, u32, 4);
    sparse_access!(read64, write64, u64, 8);
}

/// Configuration space through the config region of the device fd.
struct VfioConfig {
    fd: Arc<DeviceFd>,
    offset: u64,
}

impl VfioConfig {
    fn read<const N: usize>(&self, offset: usize) -> io::Result<[u8; N]> {
        let mut bytes = [0u8; N];
        self.fd.with(|fd| {
            self.fd
                .context
                .kernel()
                .read(fd, self.offset + offset as u64, &mut bytes)
        })?;
        Ok(bytes)
    }

    fn write(&self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        self.fd.with(|fd| {
            self.fd
                .context
                .kernel()
                .write(fd, self.offset + offset as u64, bytes)
        })
    }
}

impl ConfigSpace for VfioConfig {
    fn read16(&self, offset: usize) -> io::Result<u16> {
        self.read(offset).map(u16::from_le_bytes)
    }

    fn write16(&self, offset: usize, value: u16) -> io::Result<()> {
        self.write(offset, &value.to_le_bytes())
    }

    fn read32(&self, offset: usize) -> io::Result<u32> {
        self.read(offset).map(u32::from_le_bytes)
    }

    fn write32(&self, offset: usize, value: u32) -> io::Result<()> {
        self.write(offset, &value.to_le_bytes())
    }
}
