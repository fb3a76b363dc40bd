//! A simulated kernel behind [`VfioKernel`]: the container/group/device state machine of
//! type1 and the iommufd address spaces, with the order rules and errnos of
//! `reference/vfio.md` §10; device regions backed by a device model's register window and
//! configuration space; DMA map and unmap with alignment, overlap, no-split, window and
//! entry-limit errors; reset; the close semantics (bus mastering cleared, the function put in
//! D3 so its BAR reads all-ones); and the device-request eventfd, signalled by
//! [`SimKernel::request_release`].
//!
//! It is also the devices' IOMMU: [`SimKernel::translate`] answers for a device with the
//! mappings of the container (or address space) it is attached to, and nothing else, so an
//! emulated device built over it (`emu::VfioMemory`) faults on an IOVA that was never mapped,
//! as hardware behind a real IOMMU does.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::kernel::{
    device_flags, extension, group_flags, region_flags, region_index, DeviceInfo, Fd, IommuInfo,
    RegionInfo, VfioKernel, API_VERSION,
};
use crate::mmio::RegisterWindow;
use crate::pci::{regs, ConfigSpace};
use crate::sync::lock_std;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The IOMMU page size the simulation enforces.
pub const SIM_PAGE: u64 = 4096;

/// Where region `index` starts in a device fd's offsets (vfio-pci's own layout; callers must
/// use the offset the region info reports).
const fn region_offset(index: u32) -> u64 {
    (index as u64) << 40
}

/// A function the simulated kernel has bound to vfio-pci.
pub struct SimFunction {
    /// Its PCI address.
    pub bdf: String,
    /// Its IOMMU group.
    pub group: u32,
    /// BAR0.
    pub registers: Arc<dyn RegisterWindow>,
    /// Its length.
    pub bar0_len: u64,
    /// Configuration space.
    pub config: Arc<dyn ConfigSpace>,
    /// When set, only these areas (offset, size) of BAR0 may be mmapped.
    pub sparse_areas: Option<Vec<(u64, u64)>>,
    /// The function-level reset, if the function has one.
    pub reset: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Its VFIO character device name (`vfioN`), on a kernel with device cdevs.
    pub cdev: Option<String>,
}

/// Settings of the simulated kernel.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Valid IOVA windows, ends inclusive.
    pub iova_ranges: Vec<RangeInclusive<u64>>,
    /// Mappings a container accepts (type1's `dma_entry_limit`).
    pub dma_entry_limit: usize,
    /// Whether the kernel has iommufd and device cdevs.
    pub iommufd: bool,
    /// Whether the groups are no-IOMMU groups (VFIO's unsafe mode; nothing translates).
    pub noiommu: bool,
}

impl Default for SimConfig {
    /// A 48-bit IOMMU with the x86 MSI window reserved, type1's default limit of 65535
    /// mappings, iommufd available.
    fn default() -> Self {
        SimConfig {
            iova_ranges: vec![SIM_PAGE..=0xfedf_ffff, 0xfef0_0000..=(1 << 48) - 1],
            dma_entry_limit: 65535,
            iommufd: true,
            noiommu: false,
        }
    }
}

/// IOVA → (virtual address, length) of one context's mappings.
#[derive(Debug, Default)]
struct Mappings(BTreeMap<u64, (u64, u64)>);

impl Mappings {
    fn overlaps(&self, iova: u64, size: u64) -> bool {
        let end = iova + size;
        self.0
            .range(..end)
            .next_back()
            .is_some_and(|(&start, &(_, len))| start + len > iova)
    }

    fn translate(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        let (&start, &(va, size)) = self.0.range(..=iova).next_back()?;
        let inside = iova - start;
        (inside < size).then(|| {
            let run = (size - inside).min(len as u64) as usize;
            ((va + inside) as usize, run)
        })
    }

    /// Removes the mappings inside `[iova, iova + size)`; `None` if one is cut by the range.
    fn remove_inside(&mut self, iova: u64, size: u64) -> Option<u64> {
        let end = iova + size;
        let cut = |start: u64, len: u64| {
            start < iova && start + len > iova || start < end && start + len > end
        };
        if self.0.iter().any(|(&s, &(_, l))| cut(s, l)) {
            return None;
        }
        let inside: Vec<u64> = self.0.range(iova..end).map(|(&s, _)| s).collect();
        Some(
            inside
                .into_iter()
                .filter_map(|s| self.0.remove(&s))
                .map(|(_, l)| l)
                .sum(),
        )
    }
}

struct Container {
    model: Option<u32>,
    /// The groups attached: (number, instance).
    groups: Vec<(u32, u64)>,
    mappings: Mappings,
}

struct Ioas {
    mappings: Mappings,
}

struct OpenDevice {
    bdf: String,
    /// iommufd path: opened through the cdev, usable once bound.
    bound: bool,
    cdev: bool,
    attached_ioas: Option<(Fd, u32)>,
}

enum Handle {
    Container,
    /// A group node: the group's number and which group of that number (a function removed
    /// and plugged in again makes a new one; the old node then answers ENODEV).
    Group(u32, u64),
    Device(OpenDevice),
    Iommufd,
}

struct Group {
    /// Which group of this number it is.
    instance: u64,
    devices: Vec<String>,
    viable: bool,
    open: Option<Fd>,
    container: Option<Fd>,
}

struct State {
    next_fd: Fd,
    handles: HashMap<Fd, Handle>,
    containers: HashMap<Fd, Container>,
    groups: BTreeMap<u32, Group>,
    functions: HashMap<String, SimFunction>,
    /// Device-request eventfds registered per function (the kernel's own reference: a dup).
    request_fds: HashMap<String, OwnedFd>,
    /// iommufd → address spaces.
    ioas: HashMap<(Fd, u32), Ioas>,
    next_ioas: u32,
}

/// The simulated kernel. See the module documentation.
pub struct SimKernel {
    config: SimConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for SimKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock_std(&self.state);
        f.debug_struct("SimKernel")
            .field("functions", &state.functions.keys().collect::<Vec<_>>())
            .field("open_handles", &state.handles.len())
            .finish()
    }
}

impl SimKernel {
    /// A kernel with no function bound yet.
    pub fn new(config: SimConfig) -> Arc<SimKernel> {
        Arc::new(SimKernel {
            config,
            state: Mutex::new(State {
                next_fd: 100,
                handles: HashMap::new(),
                containers: HashMap::new(),
                groups: BTreeMap::new(),
                functions: HashMap::new(),
                request_fds: HashMap::new(),
                ioas: HashMap::new(),
                next_ioas: 1,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Binds `function` to vfio-pci: its group node appears.
    pub fn add_function(&self, function: SimFunction) {
        let mut state = lock_std(&self.state);
        state.next_fd += 1;
        let instance = state.next_fd as u64;
        let group = state.groups.entry(function.group).or_insert(Group {
            instance,
            devices: Vec::new(),
            viable: true,
            open: None,
            container: None,
        });
        group.devices.push(function.bdf.clone());
        state.functions.insert(function.bdf.clone(), function);
    }

    /// The function leaves, as a hot-removal ends once its user let go: a group left empty
    /// goes with it, and its open nodes answer ENODEV from then on (a function plugged in again
    /// gets a new group, as on a real kernel).
    pub fn remove_function(&self, bdf: &str) {
        let mut state = lock_std(&self.state);
        let Some(function) = state.functions.remove(bdf) else {
            return;
        };
        let empty = state.groups.get_mut(&function.group).is_some_and(|g| {
            g.devices.retain(|d| d != bdf);
            g.devices.is_empty()
        });
        if empty {
            state.groups.remove(&function.group);
        }
    }

    /// Whether anything holds `bdf` open (a device handle), which a real kernel's removal of it
    /// waits for.
    pub fn is_open(&self, bdf: &str) -> bool {
        lock_std(&self.state)
            .handles
            .values()
            .any(|h| matches!(h, Handle::Device(d) if d.bdf == bdf))
    }

    /// Marks group `group` viable or not (another of its functions bound to a kernel driver).
    pub fn set_viable(&self, group: u32, viable: bool) {
        if let Some(g) = lock_std(&self.state).groups.get_mut(&group) {
            g.viable = viable;
        }
    }

    /// The kernel wants `bdf` back (an unbind or a removal started): signals the
    /// device-request eventfd its user registered. Returns whether one was registered.
    pub fn request_release(&self, bdf: &str) -> bool {
        let state = lock_std(&self.state);
        let Some(fd) = state.request_fds.get(bdf) else {
            return false;
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a live array to the simulation's own duplicate of the
        // registered eventfd, open for as long as it is in the map.
        unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        true
    }

    /// How many mappings the context `bdf` is attached to holds (for tests).
    pub fn mapping_count(&self, bdf: &str) -> Option<usize> {
        let state = lock_std(&self.state);
        state.context_of(bdf).map(|m| m.0.len())
    }

    /// Where `iova` of `bdf`'s DMA leads: the virtual address and how many bytes, at most
    /// `len`, are mapped contiguously there; `None` (an IOMMU fault) when the function is not
    /// attached to a context or nothing is mapped at `iova`. In no-IOMMU mode IOVAs are the
    /// caller's to resolve, so this answers `None`.
    pub fn translate(&self, bdf: &str, iova: u64, len: usize) -> Option<(usize, usize)> {
        let state = lock_std(&self.state);
        state.context_of(bdf)?.translate(iova, len)
    }

    fn new_fd(state: &mut State, handle: Handle) -> Fd {
        let fd = state.next_fd;
        state.next_fd += 1;
        state.handles.insert(fd, handle);
        fd
    }
}

impl State {
    /// Group `number` as the node that names `instance` of it sees it: gone (ENODEV) once its
    /// functions were removed.
    fn group(&self, number: u32, instance: u64) -> io::Result<&Group> {
        self.groups
            .get(&number)
            .filter(|g| g.instance == instance)
            .ok_or(errno(libc::ENODEV))
    }

    /// The mappings the function's DMA goes through.
    fn context_of(&self, bdf: &str) -> Option<&Mappings> {
        for handle in self.handles.values() {
            if let Handle::Device(d) = handle {
                if d.bdf == bdf {
                    if let Some(key) = d.attached_ioas {
                        return self.ioas.get(&key).map(|i| &i.mappings);
                    }
                }
            }
        }
        let group = self.functions.get(bdf)?.group;
        let container = self.groups.get(&group)?.container?;
        let c = self.containers.get(&container)?;
        c.model.filter(|&m| m != extension::NOIOMMU)?;
        Some(&c.mappings)
    }

    fn container(&mut self, fd: Fd) -> io::Result<&mut Container> {
        match self.handles.get(&fd) {
            Some(Handle::Container) => self.containers.get_mut(&fd).ok_or(errno(libc::EBADF)),
            _ => Err(errno(libc::EBADF)),
        }
    }

    fn device(&mut self, fd: Fd) -> io::Result<&mut OpenDevice> {
        match self.handles.get_mut(&fd) {
            Some(Handle::Device(d)) if d.bound || !d.cdev => Ok(d),
            // A cdev fd does nothing before it is bound to an iommufd.
            Some(Handle::Device(_)) => Err(errno(libc::EINVAL)),
            _ => Err(errno(libc::EBADF)),
        }
    }
}

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

/// A window into part of a register window (an mmap of part of a BAR).
struct WindowAt {
    inner: Arc<dyn RegisterWindow>,
    base: usize,
    len: usize,
    /// Revoked: the mapping was replaced by all-ones memory (see [`RegisterWindow::revoke`]).
    revoked: AtomicBool,
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
