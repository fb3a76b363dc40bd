//! The real kernel: VFIO and iommufd ioctls on `/dev/vfio/*` and `/dev/iommu`, as
//! `include/uapi/linux/vfio.h` and `iommufd.h` define them (`reference/vfio.md`). Every ioctl
//! is `_IO(';', nr)`, so the request number is `0x3b00 | nr`, and every argument struct
//! starts with its own size.
//!
//! No machine here has a device bound to vfio-pci, so this runs in tests only as far as
//! opening `/dev/vfio/vfio` where it exists; the layer above it is tested against the
//! simulated kernel, which answers the same calls with the same errnos.

// vfio-pci places region N at file offset N << 40, which `off_t` holds only where it is 64
// bits wide.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("the VFIO layer needs a 64-bit target");

use std::ffi::CString;
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use super::kernel::{DeviceInfo, Fd, IommuInfo, RegionInfo, VfioKernel};
use crate::mmio::{MmioRegion, RegisterWindow};

mod uapi;

use uapi::*;

/// `ioctl(fd, request, arg)`, its return value or the errno.
///
/// # Safety
///
/// `arg` is what `request` expects: an integer, or a pointer to a struct (or buffer) of the
/// size its first word says, valid for the kernel to read and write during the call.
unsafe fn ioctl(fd: Fd, request: u64, arg: usize) -> io::Result<i32> {
    // SAFETY: forwarded contract.
    let result = unsafe { libc::ioctl(fd, request as _, arg) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// `ioctl` with a pointer to `value`.
///
/// # Safety
///
/// `request` must take a pointer to a `T` laid out as the kernel's struct, with its size
/// field (`argsz`, `size`) no larger than `T`, and any pointer inside `value` must cover what
/// the request will read or write through it.
unsafe fn ioctl_with<T>(fd: Fd, request: u64, value: &mut T) -> io::Result<i32> {
    // SAFETY: `value` is a live, writable `T`; the rest is the caller's contract.
    unsafe { ioctl(fd, request, std::ptr::from_mut(value) as usize) }
}

fn open(path: &str) -> io::Result<Fd> {
    let path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path; the flags ask for no file creation.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Reads an info struct whose capability chain follows it: a first call with the plain struct
/// learns the size the kernel wants, a second with a buffer that large fetches the chain.
/// Returns the buffer (the struct at its start).
fn info_with_caps<T: Copy>(
    fd: Fd,
    request: u64,
    init: T,
    argsz_of: impl Fn(&T) -> u32,
    set_argsz: impl Fn(&mut T, u32),
) -> io::Result<Vec<u8>> {
    let mut head = init;
    // SAFETY: the caller's request takes a `T` (its contract), whose argsz is `T`'s size.
    unsafe { ioctl_with(fd, request, &mut head) }?;
    let wanted = (argsz_of(&head) as usize).max(std::mem::size_of::<T>());
    // u64 storage keeps the buffer aligned for the structs read out of it.
    let mut buffer = vec![0u64; wanted.div_ceil(8)];
    let mut first = init;
    set_argsz(&mut first, wanted as u32);
    // SAFETY: the buffer holds at least a `T` and is 8-byte aligned.
    unsafe { buffer.as_mut_ptr().cast::<T>().write(first) };
    // SAFETY: a buffer of `wanted` bytes whose head is the request's struct with that argsz.
    unsafe { ioctl(fd, request, buffer.as_mut_ptr() as usize) }?;
    // SAFETY: the buffer is `wanted.div_ceil(8) * 8` bytes of initialised u64s.
    let bytes =
        unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), wanted) }.to_vec();
    Ok(bytes)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Walks a capability chain starting at `first` (0: none) and calls `visit(id, offset)`; the
/// walk is bounded, so a looping chain cannot hang it.
fn walk_caps(bytes: &[u8], first: u32, mut visit: impl FnMut(u16, usize)) {
    let mut at = first as usize;
    for _ in 0..32 {
        if at == 0 || at + 8 > bytes.len() {
            return;
        }
        let (Some(id), Some(next)) = (u16_at(bytes, at), u32_at(bytes, at + 4)) else {
            return;
        };
        visit(id, at);
        at = next as usize;
    }
}

/// The kernel's VFIO and iommufd.
#[derive(Debug, Default)]
pub struct LinuxVfio;

impl LinuxVfio {
    /// The real kernel interface.
    pub fn new() -> Arc<LinuxVfio> {
        Arc::new(LinuxVfio)
    }
}

impl VfioKernel for LinuxVfio {
    fn open_container(&self) -> io::Result<Fd> {
        open("/dev/vfio/vfio")
    }

    fn api_version(&self, container: Fd) -> io::Result<i32> {
        // SAFETY: the request takes no argument.
        unsafe { ioctl(container, nr::GET_API_VERSION, 0) }
    }

    fn check_extension(&self, container: Fd, extension: u32) -> io::Result<bool> {
        // SAFETY: the request takes an integer.
        unsafe { ioctl(container, nr::CHECK_EXTENSION, extension as usize) }.map(|r| r > 0)
    }

    fn set_iommu(&self, container: Fd, model: u32) -> io::Result<()> {
        // SAFETY: the request takes an integer.
        unsafe { ioctl(container, nr::SET_IOMMU, model as usize) }.map(drop)
    }

    fn iommu_info(&self, container: Fd) -> io::Result<IommuInfo> {
        let init = IommuInfoRaw {
            argsz: size_of::<IommuInfoRaw>(),
            ..IommuInfoRaw::default()
        };
        let bytes = info_with_caps(
            container,
            nr::IOMMU_GET_INFO,
            init,
            |i| i.argsz,
            |i, a| i.argsz = a,
        )?;
        let flags = u32_at(&bytes, 4).unwrap_or(0);
        let mut info = IommuInfo {
            page_sizes: u64_at(&bytes, 8).unwrap_or(0),
            iova_ranges: Vec::new(),
            dma_avail: None,
        };
        if flags & IOMMU_INFO_CAPS != 0 {
            walk_caps(&bytes, u32_at(&bytes, 16).unwrap_or(0), |id, at| match id {
                CAP_IOVA_RANGE => {
                    let count = u32_at(&bytes, at + 8).unwrap_or(0) as usize;
                    for i in 0..count {
                        let range = at + 16 + 16 * i;
                        if let (Some(start), Some(end)) =
                            (u64_at(&bytes, range), u64_at(&bytes, range + 8))
                        {
                            info.iova_ranges.push(start..=end);
                        }
                    }
                }
                CAP_DMA_AVAIL => info.dma_avail = u32_at(&bytes, at + 8),
                _ => {}
            });
        }
        if info.iova_ranges.is_empty() {
            // Kernels before the range capability: everything but the x86 MSI window, up to
            // 48 bits (the widest VT-d address width); the pool's default window stays below
            // 2^39 anyway, which every VT-d unit translates.
            info.iova_ranges = vec![0..=0xfedf_ffff, 0xfef0_0000..=(1 << 48) - 1];
        }
        Ok(info)
    }

    fn map_dma(&self, container: Fd, va: u64, iova: u64, size: u64) -> io::Result<()> {
        let mut map = DmaMap {
            argsz: size_of::<DmaMap>(),
            flags: DMA_READ_WRITE,
            vaddr: va,
            iova,
            size,
        };
        // SAFETY: VFIO_IOMMU_MAP_DMA takes a `vfio_iommu_type1_dma_map`, which `DmaMap` mirrors,
        // argsz its size.
        unsafe { ioctl_with(container, nr::IOMMU_MAP_DMA, &mut map) }.map(drop)
    }

    fn unmap_dma(&self, container: Fd, iova: u64, size: u64) -> io::Result<u64> {
        let mut unmap = DmaUnmap {
            argsz: size_of::<DmaUnmap>(),
            flags: 0,
            iova,
            size,
        };
        // SAFETY: VFIO_IOMMU_UNMAP_DMA takes a `vfio_iommu_type1_dma_unmap`, which `DmaUnmap`
        // mirrors, argsz its size.
        unsafe { ioctl_with(container, nr::IOMMU_UNMAP_DMA, &mut unmap) }?;
        Ok(unmap.size)
    }

    fn open_group(&self, group: u32, noiommu: bool) -> io::Result<Fd> {
        if noiommu {
            open(&format!("/dev/vfio/noiommu-{group}"))
        } else {
            open(&format!("/dev/vfio/{group}"))
        }
    }

    fn group_status(&self, group: Fd) -> io::Result<u32> {
        let mut status = GroupStatus {
            argsz: size_of::<GroupStatus>(),
            flags: 0,
        };
        // SAFETY: VFIO_GROUP_GET_STATUS takes a `vfio_group_status`, which `GroupStatus` mirrors.
        unsafe { ioctl_with(group, nr::GROUP_GET_STATUS, &mut status) }?;
        Ok(status.flags)
    }

    fn set_container(&self, group: Fd, container: Fd) -> io::Result<()> {
        let mut container = container;
        // SAFETY: VFIO_GROUP_SET_CONTAINER takes a pointer to an `int` holding the container fd.
        unsafe { ioctl_with(group, nr::GROUP_SET_CONTAINER, &mut container) }.map(drop)
    }

    fn group_device(&self, group: Fd, name: &str) -> io::Result<Fd> {
        let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the request takes a NUL-terminated device name, which outlives the call.
        unsafe { ioctl(group, nr::GROUP_GET_DEVICE_FD, name.as_ptr() as usize) }
    }

    fn open_iommufd(&self) -> io::Result<Fd> {
        open("/dev/iommu")
    }

    fn open_device_cdev(&self, cdev: &str) -> io::Result<Fd> {
        open(&format!("/dev/vfio/devices/{cdev}"))
    }

    fn bind_iommufd(&self, device: Fd, iommufd: Fd) -> io::Result<u32> {
        let mut bind = BindIommufd {
            argsz: size_of::<BindIommufd>(),
            flags: 0,
            iommufd,
            out_devid: 0,
        };
        // SAFETY: VFIO_DEVICE_BIND_IOMMUFD takes a `vfio_device_bind_iommufd`, which `BindIommufd`
        // mirrors (its optional tail omitted, argsz says so).
        unsafe { ioctl_with(device, nr::DEVICE_BIND_IOMMUFD, &mut bind) }?;
        Ok(bind.out_devid)
    }

    fn ioas_alloc(&self, iommufd: Fd) -> io::Result<u32> {
        let mut alloc = IoasAlloc {
            size: size_of::<IoasAlloc>(),
            flags: 0,
            out_ioas_id: 0,
        };
        // SAFETY: IOMMU_IOAS_ALLOC takes an `iommu_ioas_alloc`, which `IoasAlloc` mirrors.
        unsafe { ioctl_with(iommufd, nr::IOMMU_IOAS_ALLOC, &mut alloc) }?;
        Ok(alloc.out_ioas_id)
    }

    fn attach_ioas(&self, device: Fd, ioas: u32) -> io::Result<()> {
        let mut attach = AttachPt {
            argsz: size_of::<AttachPt>(),
            flags: 0,
            pt_id: ioas,
        };
        // SAFETY: VFIO_DEVICE_ATTACH_IOMMUFD_PT takes a `vfio_device_attach_iommufd_pt`, which
        // `AttachPt` mirrors (its optional tail omitted).
        unsafe { ioctl_with(device, nr::DEVICE_ATTACH_IOMMUFD_PT, &mut attach) }.map(drop)
    }

    fn ioas_ranges(&self, iommufd: Fd, ioas: u32) -> io::Result<Vec<RangeInclusive<u64>>> {
        let mut ranges = vec![IovaRange::default(); 16];
        loop {
            let mut query = IoasIovaRanges {
                size: size_of::<IoasIovaRanges>(),
                ioas_id: ioas,
                num_iovas: ranges.len() as u32,
                reserved: 0,
                allowed_iovas: ranges.as_mut_ptr() as u64,
                out_iova_alignment: 0,
            };
            // SAFETY: IOMMU_IOAS_IOVA_RANGES takes an `iommu_ioas_iova_ranges`, which
            // `IoasIovaRanges` mirrors; `allowed_iovas` points at `num_iovas` live `IovaRange`s.
            match unsafe { ioctl_with(iommufd, nr::IOMMU_IOAS_IOVA_RANGES, &mut query) } {
                Ok(_) => {
                    ranges.truncate(query.num_iovas as usize);
                    return Ok(ranges.iter().map(|r| r.start..=r.last).collect());
                }
                // The array was too small; the kernel wrote the count it needs.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    ranges = vec![IovaRange::default(); query.num_iovas as usize];
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn ioas_map(&self, iommufd: Fd, ioas: u32, va: u64, iova: u64, len: u64) -> io::Result<()> {
        let mut map = IoasMap {
            size: size_of::<IoasMap>(),
            flags: IOAS_MAP_FIXED_RW,
            ioas_id: ioas,
            reserved: 0,
            user_va: va,
            length: len,
            iova,
        };
        // SAFETY: IOMMU_IOAS_MAP takes an `iommu_ioas_map`, which `IoasMap` mirrors; the kernel
        // checks the user range itself.
        unsafe { ioctl_with(iommufd, nr::IOMMU_IOAS_MAP, &mut map) }.map(drop)
    }

    fn ioas_unmap(&self, iommufd: Fd, ioas: u32, iova: u64, len: u64) -> io::Result<u64> {
        let mut unmap = IoasUnmap {
            size: size_of::<IoasUnmap>(),
            ioas_id: ioas,
            iova,
            length: len,
        };
        // SAFETY: IOMMU_IOAS_UNMAP takes an `iommu_ioas_unmap`, which `IoasUnmap` mirrors.
        unsafe { ioctl_with(iommufd, nr::IOMMU_IOAS_UNMAP, &mut unmap) }?;
        Ok(unmap.length)
    }

    fn device_info(&self, device: Fd) -> io::Result<DeviceInfo> {
        let mut info = DeviceInfoRaw {
            argsz: size_of::<DeviceInfoRaw>(),
            ..DeviceInfoRaw::default()
        };
        // SAFETY: VFIO_DEVICE_GET_INFO takes a `vfio_device_info`, which `DeviceInfoRaw` mirrors,
        // argsz its size.
        unsafe { ioctl_with(device, nr::DEVICE_GET_INFO, &mut info) }?;
        Ok(DeviceInfo {
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    fn region_info(&self, device: Fd, index: u32) -> io::Result<RegionInfo> {
        let init = RegionInfoRaw {
            argsz: size_of::<RegionInfoRaw>(),
            index,
            ..RegionInfoRaw::default()
        };
        let bytes = info_with_caps(
            device,
            nr::DEVICE_GET_REGION_INFO,
            init,
            |i| i.argsz,
            |i, a| i.argsz = a,
        )?;
        let flags = u32_at(&bytes, 4).unwrap_or(0);
        let mut info = RegionInfo {
            flags: flags & 0x7,
            size: u64_at(&bytes, 16).unwrap_or(0),
            offset: u64_at(&bytes, 24).unwrap_or(0),
            sparse_areas: None,
        };
        if flags & REGION_INFO_FLAG_CAPS != 0 {
            walk_caps(&bytes, u32_at(&bytes, 12).unwrap_or(0), |id, at| {
                if id == CAP_SPARSE_MMAP {
                    let count = u32_at(&bytes, at + 8).unwrap_or(0) as usize;
                    let areas = (0..count)
                        .filter_map(|i| {
                            let area = at + 16 + 16 * i;
                            Some((u64_at(&bytes, area)?, u64_at(&bytes, area + 8)?))
                        })
                        .collect();
                    info.sparse_areas = Some(areas);
                }
            });
        }
        Ok(info)
    }

    fn read(&self, device: Fd, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for `buf.len()` writes.
        let done = unsafe {
            libc::pread(
                device,
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        match usize::try_from(done) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    fn write(&self, device: Fd, offset: u64, data: &[u8]) -> io::Result<()> {
        // SAFETY: the data is valid for `data.len()` reads.
        let done = unsafe {
            libc::pwrite(
                device,
                data.as_ptr().cast(),
                data.len(),
                offset as libc::off_t,
            )
        };
        match usize::try_from(done) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(_) => Err(io::Error::from(io::ErrorKind::WriteZero)),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    fn map_region(
        &self,
        device: Fd,
        offset: u64,
        len: usize,
    ) -> io::Result<Arc<dyn RegisterWindow>> {
        // SAFETY: a fresh shared mapping of the device fd; the kernel checks offset and length
        // against the region and maps it uncached.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device,
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("the region mapped at address 0"))?;
        Ok(Arc::new(MappedRegion {
            // SAFETY: the mapping lives until `MappedRegion` unmaps it in its drop, and no
            // Rust reference to it is made.
            region: unsafe { MmioRegion::from_raw_parts(base, len) },
            base,
            len,
        }))
    }

    fn reset(&self, device: Fd) -> io::Result<()> {
        // SAFETY: the request takes no argument.
        unsafe { ioctl(device, nr::DEVICE_RESET, 0) }.map(drop)
    }

    fn set_request_eventfd(&self, device: Fd, eventfd: RawFd) -> io::Result<()> {
        let mut set = IrqSetEventfd {
            argsz: size_of::<IrqSetEventfd>(),
            flags: IRQ_EVENTFD_TRIGGER,
            index: REQ_IRQ_INDEX,
            start: 0,
            count: 1,
            fd: eventfd,
        };
        // SAFETY: VFIO_DEVICE_SET_IRQS takes a `vfio_irq_set` with `count` s32 eventfds after it,
        // which `IrqSetEventfd` mirrors (count 1).
        unsafe { ioctl_with(device, nr::DEVICE_SET_IRQS, &mut set) }.map(drop)
    }

    fn close(&self, fd: Fd) {
        // SAFETY: the fd was opened by this interface and is closed once, by its owner.
        unsafe { libc::close(fd) };
    }
}

/// A BAR mapped from a device fd, unmapped when dropped.
struct MappedRegion {
    region: MmioRegion,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: as for `MmioRegion`: raw device memory, accessed only by volatile loads and stores.
unsafe impl Send for MappedRegion {}
// SAFETY: as above.
unsafe impl Sync for MappedRegion {}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map_region`, unmapped once; the region is dropped with
        // it and nothing else points into it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl RegisterWindow for MappedRegion {
    fn read8(&self, offset: usize) -> u8 {
        self.region.read8(offset)
    }
    fn read16(&self, offset: usize) -> u16 {
        self.region.read16(offset)
    }
    fn read32(&self, offset: usize) -> u32 {
        self.region.read32(offset)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.region.read64(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.region.write8(offset, value)
    }
    fn write16(&self, offset: usize, value: u16) {
        self.region.write16(offset, value)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.region.write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.region.write64(offset, value)
    }

    fn mapped_base(&self) -> Option<NonNull<u8>> {
        // After a revoke the same addresses hold anonymous memory: stores there are harmless.
        Some(self.base)
    }

    fn revoke(&self) {
        // Anonymous all-ones memory takes the BAR's place in one step (mremap), so an access
        // racing with this sees the device or all-ones, never a hole; the device file loses
        // this mapping's reference, which the kernel's unbind waits for.
        // SAFETY: a fresh private anonymous mapping, owned by nobody else.
        let fresh = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if fresh == libc::MAP_FAILED {
            return; // the BAR stays mapped: the unbind waits until the window goes
        }
        // SAFETY: `fresh` is `len` writable bytes just mapped.
        unsafe { std::ptr::write_bytes(fresh.cast::<u8>(), 0xff, self.len) };
        // SAFETY: moves the fresh mapping over our own mapping of `len` bytes at `base`, which
        // stays ours (unmapped in `drop`); nothing else lives in that range.
        let moved = unsafe {
            libc::mremap(
                fresh,
                self.len,
                self.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.base.as_ptr().cast::<libc::c_void>(),
            )
        };
        if moved == libc::MAP_FAILED {
            // SAFETY: the fresh mapping was not moved; it is ours to undo.
            unsafe { libc::munmap(fresh, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_uapi_ones() {
        // _IO(';', 100 + n): spot checks against the header's values.
        assert_eq!(nr::GET_API_VERSION, 0x3b64);
        assert_eq!(nr::GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(nr::IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(nr::DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(nr::IOMMU_IOAS_MAP, 0x3b85);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
        assert_eq!(std::mem::size_of::<RegionInfoRaw>(), 32);
        assert_eq!(std::mem::size_of::<IommuInfoRaw>(), 24);
        assert_eq!(std::mem::size_of::<IoasMap>(), 40);
        assert_eq!(std::mem::size_of::<IoasIovaRanges>(), 32);
    }

    #[test]
    fn capability_chains_are_walked_and_bounded() {
        // Two capabilities at 24 and 40, then a loop back to 24.
        let mut bytes = vec![0u8; 64];
        bytes[24..26].copy_from_slice(&3u16.to_le_bytes());
        bytes[28..32].copy_from_slice(&40u32.to_le_bytes());
        bytes[40..42].copy_from_slice(&1u16.to_le_bytes());
        bytes[44..48].copy_from_slice(&24u32.to_le_bytes());
        let mut seen = Vec::new();
        walk_caps(&bytes, 24, |id, at| seen.push((id, at)));
        assert_eq!(seen.len(), 32, "the loop is cut off");
        assert_eq!(seen[..2], [(3, 24), (1, 40)]);
    }

    #[test]
    fn without_vfio_the_container_open_says_why() {
        match LinuxVfio.open_container() {
            Ok(fd) => {
                // A machine with VFIO: the API version is the one this layer speaks.
                assert_eq!(
                    LinuxVfio.api_version(fd).unwrap(),
                    super::super::kernel::API_VERSION
                );
                LinuxVfio.close(fd);
            }
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ),
                "{e}"
            ),
        }
    }
}
