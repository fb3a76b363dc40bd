//! The simulated kernel's answers to each VFIO and iommufd call: the state machine's order
//! rules and errnos, region reads and writes through the function's models, DMA mapping with
//! the type1 rules, and close semantics.

use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::window::WindowAt;
use super::*;

/// DMA map checks common to type1 and iommufd: alignment, size, wrap, windows, overlap.
fn check_map(
    config: &SimConfig,
    mappings: &Mappings,
    va: u64,
    iova: u64,
    size: u64,
) -> io::Result<()> {
    if size == 0 || iova % SIM_PAGE != 0 || va % SIM_PAGE != 0 || size % SIM_PAGE != 0 {
        return Err(errno(libc::EINVAL));
    }
    if iova.checked_add(size).is_none() || va.checked_add(size).is_none() {
        return Err(errno(libc::EOVERFLOW));
    }
    let last = iova + size - 1;
    if !config
        .iova_ranges
        .iter()
        .any(|r| *r.start() <= iova && last <= *r.end())
    {
        return Err(errno(libc::EINVAL));
    }
    if mappings.overlaps(iova, size) {
        return Err(errno(libc::EEXIST));
    }
    Ok(())
}

impl VfioKernel for SimKernel {
    fn open_container(&self) -> io::Result<Fd> {
        let mut state = lock_std(&self.state);
        let fd = SimKernel::new_fd(&mut state, Handle::Container);
        state.containers.insert(
            fd,
            Container {
                model: None,
                groups: Vec::new(),
                mappings: Mappings::default(),
            },
        );
        Ok(fd)
    }

    fn api_version(&self, container: Fd) -> io::Result<i32> {
        lock_std(&self.state).container(container)?;
        Ok(API_VERSION)
    }

    fn check_extension(&self, container: Fd, ext: u32) -> io::Result<bool> {
        lock_std(&self.state).container(container)?;
        Ok(if self.config.noiommu {
            ext == extension::NOIOMMU
        } else {
            ext == extension::TYPE1 || ext == extension::TYPE1V2
        })
    }

    fn set_iommu(&self, container: Fd, model: u32) -> io::Result<()> {
        let noiommu = self.config.noiommu;
        let mut state = lock_std(&self.state);
        let c = state.container(container)?;
        if c.groups.is_empty() || c.model.is_some() {
            return Err(errno(libc::EINVAL));
        }
        let fits = if noiommu {
            model == extension::NOIOMMU
        } else {
            model == extension::TYPE1 || model == extension::TYPE1V2
        };
        if !fits {
            return Err(errno(libc::ENODEV));
        }
        c.model = Some(model);
        Ok(())
    }

    fn iommu_info(&self, container: Fd) -> io::Result<IommuInfo> {
        let mut state = lock_std(&self.state);
        let limit = self.config.dma_entry_limit;
        let c = state.container(container)?;
        match c.model {
            None => Err(errno(libc::EINVAL)),
            Some(extension::NOIOMMU) => Err(errno(libc::ENOTTY)),
            Some(_) => Ok(IommuInfo {
                page_sizes: SIM_PAGE | (2 << 20) | (1 << 30),
                iova_ranges: self.config.iova_ranges.clone(),
                dma_avail: Some(limit.saturating_sub(c.mappings.0.len()) as u32),
            }),
        }
    }

    fn map_dma(&self, container: Fd, va: u64, iova: u64, size: u64) -> io::Result<()> {
        let mut state = lock_std(&self.state);
        let limit = self.config.dma_entry_limit;
        let c = state.container(container)?;
        match c.model {
            None => return Err(errno(libc::EINVAL)),
            Some(extension::NOIOMMU) => return Err(errno(libc::ENOTTY)),
            Some(_) => {}
        }
        check_map(&self.config, &c.mappings, va, iova, size)?;
        if c.mappings.0.len() >= limit {
            return Err(errno(libc::ENOSPC));
        }
        c.mappings.0.insert(iova, (va, size));
        Ok(())
    }

    fn unmap_dma(&self, container: Fd, iova: u64, size: u64) -> io::Result<u64> {
        let mut state = lock_std(&self.state);
        let c = state.container(container)?;
        match c.model {
            None => return Err(errno(libc::EINVAL)),
            Some(extension::NOIOMMU) => return Err(errno(libc::ENOTTY)),
            Some(_) => {}
        }
        if size == 0 || iova % SIM_PAGE != 0 || size % SIM_PAGE != 0 {
            return Err(errno(libc::EINVAL));
        }
        // type1v2 refuses to split a mapping.
        c.mappings
            .remove_inside(iova, size)
            .ok_or(errno(libc::EINVAL))
    }

    fn open_group(&self, group: u32, noiommu: bool) -> io::Result<Fd> {
        let mut state = lock_std(&self.state);
        if noiommu != self.config.noiommu {
            return Err(errno(libc::ENOENT));
        }
        let g = state.groups.get_mut(&group).ok_or(errno(libc::ENOENT))?;
        if g.open.is_some() {
            return Err(errno(libc::EBUSY));
        }
        let instance = g.instance;
        let fd = SimKernel::new_fd(&mut state, Handle::Group(group, instance));
        if let Some(g) = state.groups.get_mut(&group) {
            g.open = Some(fd);
        }
        Ok(fd)
    }

    fn group_status(&self, group: Fd) -> io::Result<u32> {
        let state = lock_std(&self.state);
        let Some(&Handle::Group(number, instance)) = state.handles.get(&group) else {
            return Err(errno(libc::EBADF));
        };
        let g = state.group(number, instance)?;
        let mut flags = 0;
        if g.viable {
            flags |= group_flags::VIABLE;
        }
        if g.container.is_some() {
            flags |= group_flags::CONTAINER_SET;
        }
        Ok(flags)
    }

    fn set_container(&self, group: Fd, container: Fd) -> io::Result<()> {
        let mut state = lock_std(&self.state);
        let Some(&Handle::Group(number, instance)) = state.handles.get(&group) else {
            return Err(errno(libc::EBADF));
        };
        state.container(container)?;
        let g = state.group(number, instance)?;
        if g.container.is_some() {
            return Err(errno(libc::EINVAL));
        }
        if !g.viable {
            return Err(errno(libc::EPERM));
        }
        if let Some(g) = state.groups.get_mut(&number) {
            g.container = Some(container);
        }
        state.container(container)?.groups.push((number, instance));
        Ok(())
    }

    fn group_device(&self, group: Fd, name: &str) -> io::Result<Fd> {
        let mut state = lock_std(&self.state);
        let Some(&Handle::Group(number, instance)) = state.handles.get(&group) else {
            return Err(errno(libc::EBADF));
        };
        let g = state.group(number, instance)?;
        let ready = g
            .container
            .and_then(|c| state.containers.get(&c))
            .is_some_and(|c| c.model.is_some());
        if !ready {
            return Err(errno(libc::EINVAL));
        }
        if !g.devices.iter().any(|d| d == name) {
            return Err(errno(libc::ENODEV));
        }
        let bdf = name.to_string();
        let fd = SimKernel::new_fd(
            &mut state,
            Handle::Device(OpenDevice {
                bdf: bdf.clone(),
                bound: true,
                cdev: false,
                attached_ioas: None,
            }),
        );
        drop(state);
        self.on_open(&bdf);
        Ok(fd)
    }

    fn open_iommufd(&self) -> io::Result<Fd> {
        if !self.config.iommufd {
            return Err(errno(libc::ENOENT));
        }
        let mut state = lock_std(&self.state);
        Ok(SimKernel::new_fd(&mut state, Handle::Iommufd))
    }

    fn open_device_cdev(&self, cdev: &str) -> io::Result<Fd> {
        if !self.config.iommufd {
            return Err(errno(libc::ENOENT));
        }
        let mut state = lock_std(&self.state);
        let bdf = state
            .functions
            .values()
            .find(|f| f.cdev.as_deref() == Some(cdev))
            .map(|f| f.bdf.clone())
            .ok_or(errno(libc::ENOENT))?;
        Ok(SimKernel::new_fd(
            &mut state,
            Handle::Device(OpenDevice {
                bdf,
                bound: false,
                cdev: true,
                attached_ioas: None,
            }),
        ))
    }

    fn bind_iommufd(&self, device: Fd, iommufd: Fd) -> io::Result<u32> {
        let mut state = lock_std(&self.state);
        if !matches!(state.handles.get(&iommufd), Some(Handle::Iommufd)) {
            return Err(errno(libc::EINVAL));
        }
        let bdf = match state.handles.get_mut(&device) {
            Some(Handle::Device(d)) if d.cdev && !d.bound => d.bdf.clone(),
            Some(Handle::Device(_)) => return Err(errno(libc::EINVAL)),
            _ => return Err(errno(libc::EBADF)),
        };
        // A group open through the legacy path blocks the cdev.
        let group = state.functions[&bdf].group;
        if state.groups.get(&group).is_some_and(|g| g.open.is_some()) {
            return Err(errno(libc::EBUSY));
        }
        if let Some(Handle::Device(d)) = state.handles.get_mut(&device) {
            d.bound = true;
        }
        drop(state);
        self.on_open(&bdf);
        Ok(device as u32)
    }

    fn ioas_alloc(&self, iommufd: Fd) -> io::Result<u32> {
        let mut state = lock_std(&self.state);
        if !matches!(state.handles.get(&iommufd), Some(Handle::Iommufd)) {
            return Err(errno(libc::EBADF));
        }
        let id = state.next_ioas;
        state.next_ioas += 1;
        state.ioas.insert(
            (iommufd, id),
            Ioas {
                mappings: Mappings::default(),
            },
        );
        Ok(id)
    }

    fn attach_ioas(&self, device: Fd, ioas: u32) -> io::Result<()> {
        let mut state = lock_std(&self.state);
        let iommufd = state
            .ioas
            .keys()
            .find(|(_, id)| *id == ioas)
            .map(|(fd, _)| *fd)
            .ok_or(errno(libc::ENOENT))?;
        let d = state.device(device)?;
        if !d.cdev {
            return Err(errno(libc::EINVAL));
        }
        d.attached_ioas = Some((iommufd, ioas));
        Ok(())
    }

    fn ioas_ranges(&self, iommufd: Fd, ioas: u32) -> io::Result<Vec<RangeInclusive<u64>>> {
        let state = lock_std(&self.state);
        state
            .ioas
            .get(&(iommufd, ioas))
            .ok_or(errno(libc::ENOENT))?;
        Ok(self.config.iova_ranges.clone())
    }

    fn ioas_map(&self, iommufd: Fd, ioas: u32, va: u64, iova: u64, len: u64) -> io::Result<()> {
        let mut state = lock_std(&self.state);
        let space = state
            .ioas
            .get_mut(&(iommufd, ioas))
            .ok_or(errno(libc::ENOENT))?;
        check_map(&self.config, &space.mappings, va, iova, len)?;
        space.mappings.0.insert(iova, (va, len));
        Ok(())
    }

    fn ioas_unmap(&self, iommufd: Fd, ioas: u32, iova: u64, len: u64) -> io::Result<u64> {
        let mut state = lock_std(&self.state);
        let space = state
            .ioas
            .get_mut(&(iommufd, ioas))
            .ok_or(errno(libc::ENOENT))?;
        // iommufd: splitting a mapping, or covering none, is ENOENT.
        match space.mappings.remove_inside(iova, len) {
            Some(0) | None => Err(errno(libc::ENOENT)),
            Some(bytes) => Ok(bytes),
        }
    }

    fn device_info(&self, device: Fd) -> io::Result<DeviceInfo> {
        let mut state = lock_std(&self.state);
        let bdf = state.device(device)?.bdf.clone();
        let mut flags = device_flags::PCI;
        if state.functions[&bdf].reset.is_some() {
            flags |= device_flags::RESET;
        }
        Ok(DeviceInfo {
            flags,
            num_regions: 9,
            num_irqs: 5,
        })
    }

    fn region_info(&self, device: Fd, index: u32) -> io::Result<RegionInfo> {
        let mut state = lock_std(&self.state);
        let bdf = state.device(device)?.bdf.clone();
        let f = &state.functions[&bdf];
        Ok(match index {
            region_index::BAR0 => RegionInfo {
                flags: region_flags::READ | region_flags::WRITE | region_flags::MMAP,
                size: f.bar0_len,
                offset: region_offset(index),
                sparse_areas: f.sparse_areas.clone(),
            },
            region_index::CONFIG => RegionInfo {
                flags: region_flags::READ | region_flags::WRITE,
                size: 4096,
                offset: region_offset(index),
                sparse_areas: None,
            },
            1..=6 | 8 => RegionInfo {
                offset: region_offset(index),
                ..RegionInfo::default()
            },
            _ => return Err(errno(libc::EINVAL)),
        })
    }

    fn read(&self, device: Fd, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (registers, config, within) = self.access(device, offset, buf.len())?;
        let value = match (&registers, &config) {
            (Some(r), _) => match buf.len() {
                1 => u64::from(r.read8(within)),
                2 => u64::from(r.read16(within)),
                4 => u64::from(r.read32(within)),
                8 => r.read64(within),
                _ => return Err(errno(libc::EINVAL)),
            },
            (None, Some(c)) => match buf.len() {
                1 => u64::from(c.read16(within & !1)? >> (8 * (within & 1))) & 0xff,
                2 => u64::from(c.read16(within)?),
                4 => u64::from(c.read32(within)?),
                _ => return Err(errno(libc::EINVAL)),
            },
            (None, None) => return Err(errno(libc::EINVAL)),
        };
        buf.copy_from_slice(&value.to_le_bytes()[..buf.len()]);
        Ok(())
    }

    fn write(&self, device: Fd, offset: u64, data: &[u8]) -> io::Result<()> {
        let (registers, config, within) = self.access(device, offset, data.len())?;
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        match (&registers, &config) {
            (Some(r), _) => match data.len() {
                1 => r.write8(within, value as u8),
                2 => r.write16(within, value as u16),
                4 => r.write32(within, value as u32),
                8 => r.write64(within, value),
                _ => return Err(errno(libc::EINVAL)),
            },
            (None, Some(c)) => match data.len() {
                2 => c.write16(within, value as u16)?,
                4 => c.write32(within, value as u32)?,
                _ => return Err(errno(libc::EINVAL)),
            },
            (None, None) => return Err(errno(libc::EINVAL)),
        }
        Ok(())
    }

    fn map_region(
        &self,
        device: Fd,
        offset: u64,
        len: usize,
    ) -> io::Result<Arc<dyn RegisterWindow>> {
        let mut state = lock_std(&self.state);
        let bdf = state.device(device)?.bdf.clone();
        let f = &state.functions[&bdf];
        let base = region_offset(region_index::BAR0);
        // Only BAR0 has the MMAP flag; config space and absent regions refuse.
        if offset < base || offset + len as u64 > base + f.bar0_len || len == 0 {
            return Err(errno(libc::EINVAL));
        }
        let within = offset - base;
        if let Some(areas) = &f.sparse_areas {
            let inside = areas
                .iter()
                .any(|&(o, s)| o <= within && within + len as u64 <= o + s);
            if !inside {
                return Err(errno(libc::EINVAL));
            }
        }
        Ok(Arc::new(WindowAt {
            inner: Arc::clone(&f.registers),
            base: within as usize,
            len,
            revoked: AtomicBool::new(false),
        }))
    }

    fn reset(&self, device: Fd) -> io::Result<()> {
        let mut state = lock_std(&self.state);
        let bdf = state.device(device)?.bdf.clone();
        let f = &state.functions[&bdf];
        let reset = f.reset.clone().ok_or(errno(libc::EINVAL))?;
        let config = Arc::clone(&f.config);
        drop(state);
        // The PCI core saves standard configuration space around the reset.
        let command = config.read16(regs::COMMAND)?;
        reset();
        config.write16(regs::COMMAND, command)?;
        Ok(())
    }

    fn set_request_eventfd(&self, device: Fd, eventfd: RawFd) -> io::Result<()> {
        let mut state = lock_std(&self.state);
        let bdf = state.device(device)?.bdf.clone();
        // SAFETY: `dup` of a descriptor the caller owns; the duplicate is ours.
        let duplicate = unsafe { libc::dup(eventfd) };
        if duplicate < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from `dup`, owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(duplicate) };
        state.request_fds.insert(bdf, owned);
        Ok(())
    }

    fn close(&self, fd: Fd) {
        let mut state = lock_std(&self.state);
        match state.handles.remove(&fd) {
            Some(Handle::Container) => {
                if let Some(c) = state.containers.remove(&fd) {
                    for (number, instance) in c.groups {
                        if let Some(g) = state
                            .groups
                            .get_mut(&number)
                            .filter(|g| g.instance == instance)
                        {
                            g.container = None;
                        }
                    }
                }
            }
            Some(Handle::Group(number, instance)) => {
                if let Some(g) = state
                    .groups
                    .get_mut(&number)
                    .filter(|g| g.instance == instance)
                {
                    g.open = None;
                    g.container = None;
                }
                // A group closed while attached (removed since, or not) leaves its container;
                // with the last group the container loses its IOMMU model and every mapping.
                for c in state.containers.values_mut() {
                    let before = c.groups.len();
                    c.groups.retain(|&g| g != (number, instance));
                    if c.groups.len() < before && c.groups.is_empty() {
                        c.model = None;
                        c.mappings = Mappings::default();
                    }
                }
            }
            Some(Handle::Device(d)) => {
                let last = !state
                    .handles
                    .values()
                    .any(|h| matches!(h, Handle::Device(o) if o.bdf == d.bdf));
                if last {
                    state.request_fds.remove(&d.bdf);
                    let config = state.functions.get(&d.bdf).map(|f| Arc::clone(&f.config));
                    drop(state);
                    if let Some(config) = config {
                        // vfio-pci's release: bus mastering off first, then the function
                        // goes to D3 (its BAR reads all-ones until it is opened again).
                        let _ = config.write16(regs::COMMAND, 0);
                    }
                }
            }
            Some(Handle::Iommufd) => {
                state.ioas.retain(|(owner, _), _| *owner != fd);
            }
            None => {}
        }
    }
}

impl SimKernel {
    /// vfio-pci's first open: the function is enabled (memory decoding on) and bus
    /// mastering is cleared; the user sets it.
    fn on_open(&self, bdf: &str) {
        let config = lock_std(&self.state)
            .functions
            .get(bdf)
            .map(|f| Arc::clone(&f.config));
        if let Some(config) = config {
            let _ = config.write16(regs::COMMAND, regs::COMMAND_MEMORY);
        }
    }

    /// The function's BAR0 or configuration space for a pread/pwrite at `offset` of `len`
    /// bytes, and the offset inside it.
    #[allow(clippy::type_complexity)]
    fn access(
        &self,
        device: Fd,
        offset: u64,
        len: usize,
    ) -> io::Result<(
        Option<Arc<dyn RegisterWindow>>,
        Option<Arc<dyn ConfigSpace>>,
        usize,
    )> {
        let mut state = lock_std(&self.state);
        let bdf = state.device(device)?.bdf.clone();
        let f = &state.functions[&bdf];
        let bar = region_offset(region_index::BAR0);
        let config = region_offset(region_index::CONFIG);
        let end = offset + len as u64;
        if (bar..bar + f.bar0_len).contains(&offset) && end <= bar + f.bar0_len {
            let within = (offset - bar) as usize;
            if within % len != 0 {
                return Err(errno(libc::EINVAL));
            }
            // A BAR access with memory decoding off fails (EIO) instead of reading all-ones.
            if f.config.read16(regs::COMMAND)? & regs::COMMAND_MEMORY == 0 {
                return Err(errno(libc::EIO));
            }
            return Ok((Some(Arc::clone(&f.registers)), None, within));
        }
        if (config..config + 4096).contains(&offset) && end <= config + 4096 {
            return Ok((
                None,
                Some(Arc::clone(&f.config)),
                (offset - config) as usize,
            ));
        }
        Err(errno(libc::EINVAL))
    }
}
