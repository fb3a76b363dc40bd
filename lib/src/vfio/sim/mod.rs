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
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::kernel::{
    device_flags, extension, group_flags, region_flags, region_index, DeviceInfo, Fd, IommuInfo,
    RegionInfo, VfioKernel, API_VERSION,
};
use crate::mmio::RegisterWindow;
use crate::pci::{regs, ConfigSpace};
use crate::sync::lock_std;

mod calls;
mod window;

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
