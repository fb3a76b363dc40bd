//! The pool: backing regions, the blocks carved out of them, registrations of application
//! memory, and the translation map that covers both.
//!
//! All bookkeeping sits behind one mutex, since allocation and registration are control
//! path. Translation has a lock-free form for the data path, [`Translator`]: the map is an
//! immutable snapshot behind an `Arc`, replaced (copy on write) when regions or
//! registrations come and go, and each change bumps a generation counter that a translator
//! checks with one plain load before using its snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::block::{DmaBlock, Segment};
use super::freelist::FreeList;
use super::iommu::{IommuId, IommuMapper, IovaSpace, DEFAULT_IOVA_WINDOW};
use super::map::{IovaMap, Owner, Run};
use super::os::{self, Mapping};
use super::procfs;
use super::scramble::{Scrambler, SCRAMBLE_PAGE};
use super::translator::Translator;
use super::{Backing, BackingChoice, DmaPoolConfig, IovaMode, MemError};
use crate::sync::lock_std;

/// Blocks are carved in multiples of this (a cache line), so two blocks never share a line
/// that the device and the CPU would both write.
const GRANULE: usize = 64;

/// A pool of DMA memory; a cheap handle (clones share the pool), `Send` and `Sync`.
///
/// The memory stays mapped as long as any handle, block or registration of the pool
/// exists. See the [module documentation](super) for the IOVA modes and backings.
///
/// ```
/// use dmaplane::mem::{BackingChoice, DmaPool, DmaPoolConfig, IovaMode};
///
/// let pool = DmaPool::new(DmaPoolConfig {
///     backing: BackingChoice::SmallPages,
///     ..DmaPoolConfig::default()
/// })
/// .unwrap();
/// let mut ring = pool.alloc(64 * 32, 64).unwrap();
/// assert_eq!(ring.va() % 64, 0);
/// assert!(ring.to_vec().iter().all(|&b| b == 0));
/// ring.fill(0xab);
///
/// // IOVA = VA: the translation is the identity, contiguous as far as asked.
/// assert_eq!(pool.iova_mode(), IovaMode::Va);
/// let (va, len) = (ring.va() + 8, ring.len() - 8);
/// assert_eq!(pool.translate(va, len).unwrap(), (va as u64, len));
/// // The block's own translation takes no lock and stays inside the block.
/// assert_eq!(ring.translate(8, len).unwrap(), (va as u64, len));
/// assert!(ring.translate(8, len + 1).is_err());
///
/// // Application memory is reachable once registered, and no longer after.
/// let mut buf = vec![0u8; 10_000];
/// let reg = pool.register(buf.as_mut_ptr(), buf.len()).unwrap();
/// assert!(pool.translate(buf.as_ptr() as usize, buf.len()).is_ok());
/// drop(reg);
/// assert!(pool.translate(buf.as_ptr() as usize, buf.len()).is_err());
/// ```
#[derive(Clone)]
pub struct DmaPool {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    iova_mode: IovaMode,
    choice: BackingChoice,
    /// The backing of the first region, chosen at creation.
    backing: Backing,
    /// The hugepage size when this pool maps hugepages.
    hugepage_size: Option<usize>,
    region_size: usize,
    /// Bumped (under the state lock) after every change of `State::map`; translators
    /// compare it with the generation of their snapshot.
    pub(super) generation: AtomicU64,
    state: Mutex<State>,
}

struct State {
    regions: BTreeMap<u64, Region>,
    next_region: u64,
    next_registration: u64,
    map: Arc<IovaMap>,
    scrambler: Option<Scrambler>,
    /// `Mapped` mode: free IOVA space, the contexts mappings go to, and what each owner has
    /// mapped there.
    iova_space: Option<IovaSpace>,
    iommus: Vec<Arc<dyn IommuMapper>>,
    mapped: BTreeMap<Owner, Run>,
    /// False once any `mlock` of the pool's memory failed.
    locked: bool,
    live_blocks: usize,
    allocated_bytes: usize,
    registrations: usize,
}

struct Region {
    mapping: Mapping,
    /// `None` for a region dedicated to one large block.
    free: Option<FreeList>,
}

impl DmaPool {
    /// Creates a pool and maps its first region, so that a backing or translation problem
    /// (no hugepages, hidden frame numbers) shows here rather than at the first `alloc`.
    pub fn new(config: DmaPoolConfig) -> Result<DmaPool, MemError> {
        if config.region_size == 0 {
            return Err(MemError::InvalidConfig {
                reason: "region_size is 0".into(),
            });
        }
        if config.iova_mode == IovaMode::Physical {
            procfs::probe(os::page_size())?;
        }
        let huge = procfs::hugepages();
        let hugepage_size = match config.backing {
            BackingChoice::SmallPages => None,
            BackingChoice::Auto => huge.filter(|h| h.available > 0).map(|h| h.size),
            BackingChoice::Hugepages => match huge {
                Some(h) if h.available > 0 => Some(h.size),
                _ => {
                    return Err(MemError::HugepagesUnavailable {
                        hugepage_size: huge.map(|h| h.size),
                        available: huge.map_or(0, |h| h.available),
                    })
                }
            },
        };
        let scrambler = match config.iova_mode {
            IovaMode::Scrambled { seed } => Some(Scrambler::new(seed)),
            _ => None,
        };
        let mut inner = Inner {
            iova_mode: config.iova_mode,
            choice: config.backing,
            backing: Backing::SmallPages,
            hugepage_size,
            region_size: config.region_size,
            generation: AtomicU64::new(0),
            state: Mutex::new(State {
                regions: BTreeMap::new(),
                next_region: 0,
                next_registration: 0,
                map: Arc::new(IovaMap::default()),
                scrambler,
                iova_space: (config.iova_mode == IovaMode::Mapped)
                    .then(|| IovaSpace::new(DEFAULT_IOVA_WINDOW)),
                iommus: Vec::new(),
                mapped: BTreeMap::new(),
                locked: true,
                live_blocks: 0,
                allocated_bytes: 0,
                registrations: 0,
            }),
        };
        let (mapping, backing) = match inner.map_backing(|page| round_up(config.region_size, page))
        {
            Err(MemError::MapFailed { .. }) if config.backing == BackingChoice::Hugepages => {
                return Err(MemError::HugepagesUnavailable {
                    hugepage_size,
                    available: procfs::hugepages().map_or(0, |h| h.available),
                })
            }
            other => other?,
        };
        inner.backing = backing;
        if backing == Backing::SmallPages {
            // Auto found hugepages but could not map them: stay on small pages from now on.
            inner.hugepage_size = None;
        }
        let state = inner.state.get_mut().unwrap_or_else(|e| e.into_inner());
        install_region(state, &inner.generation, inner.iova_mode, mapping, false)?;
        Ok(DmaPool {
            inner: Arc::new(inner),
        })
    }

    /// Allocates `len` zeroed bytes at an address that is a multiple of `align` (a power of
    /// two; blocks are at least 64-byte aligned whatever is asked).
    pub fn alloc(&self, len: usize, align: usize) -> Result<DmaBlock, MemError> {
        if len == 0 {
            return Err(MemError::ZeroLength);
        }
        if !align.is_power_of_two() {
            return Err(MemError::BadAlignment { align });
        }
        let align = align.max(GRANULE);
        let reserved = len
            .checked_next_multiple_of(GRANULE)
            .filter(|&r| r <= isize::MAX as usize / 2 && align <= isize::MAX as usize / 2)
            .ok_or(MemError::OutOfMemory { requested: len })?;
        let inner = &self.inner;
        let mut state = inner.lock();
        let shared = reserved <= inner.region_size / 2 && align <= inner.region_size / 2;
        let mut placed = None;
        if shared {
            placed = state.first_fit(reserved, align);
            if placed.is_none() {
                let (mapping, _) = inner.map_backing(|page| round_up(inner.region_size, page))?;
                let id = inner.install(&mut state, mapping, false)?;
                // Padding is below `align` and both are at most half a region: it fits.
                placed = state.carve(id, reserved, align).map(|offset| (id, offset));
            }
            if let Some((id, offset)) = placed {
                let mapping = &state.regions[&id].mapping;
                // SAFETY: the free list just handed this range out, so no block covers it and
                // no device may access it (devices only reach memory through live blocks).
                unsafe { mapping.zero(offset, len) };
            }
        }
        let (region, offset) = match placed {
            Some(p) => p,
            None => {
                let (mapping, _) = inner.map_backing(|page| {
                    round_up(reserved.checked_add(align.saturating_sub(page))?, page)
                })?;
                // Fresh anonymous memory reads as zero already.
                let offset = round_up(mapping.base(), align).map_or(0, |a| a - mapping.base());
                (inner.install(&mut state, mapping, true)?, offset)
            }
        };
        let va = state.regions[&region].mapping.base() + offset;
        let segments = match segments_of(&state.map, va, len) {
            Ok(s) => s,
            Err(e) => {
                state.release(&inner.generation, region, offset, reserved);
                return Err(e);
            }
        };
        state.live_blocks += 1;
        state.allocated_bytes += len;
        drop(state);
        Ok(DmaBlock::new(
            Arc::clone(inner),
            region,
            offset,
            reserved,
            va,
            len,
            segments,
        ))
    }

    /// The IOVA of `va` and the number of bytes from `va`, at most `len`, that are
    /// contiguous in IOVA space; a driver puts that many in one descriptor and translates
    /// again for the rest.
    ///
    /// Fails with [`MemError::NotMapped`] when `va` is in neither pool nor registered
    /// memory. Takes the pool's lock; use a [`Translator`] on the data path.
    pub fn translate(&self, va: usize, len: usize) -> Result<(u64, usize), MemError> {
        if len == 0 {
            return Err(MemError::ZeroLength);
        }
        let state = self.inner.lock();
        state
            .map
            .translate(va, len)
            .ok_or(MemError::NotMapped { addr: va })
    }

    /// The device's view: the virtual address at `iova` and the number of bytes, at most
    /// `len`, that stay contiguous in both spaces. IOVAs outside pool and registered memory
    /// (0 included) fail with [`MemError::IovaNotMapped`], as an IOMMU would fault them.
    pub fn iova_to_va(&self, iova: u64, len: usize) -> Result<(usize, usize), MemError> {
        if len == 0 {
            return Err(MemError::ZeroLength);
        }
        let state = self.inner.lock();
        state
            .map
            .iova_to_va(iova, len)
            .ok_or(MemError::IovaNotMapped { iova })
    }

    /// A lock-free translator for one thread's data path.
    pub fn translator(&self) -> Translator {
        Translator::new(Arc::clone(&self.inner))
    }

    /// Makes application memory reachable by the device, as `spdk_mem_register` does: the
    /// range is rounded out to whole pages, locked with `mlock` and given IOVAs by the
    /// pool's mode, until the returned guard is dropped.
    ///
    /// Nothing is read or written through `ptr`; the memory must stay mapped while
    /// registered, and the device only reaches it through operations whose (unsafe)
    /// submission demands that it stay valid. Refused when the range is not mapped, or
    /// overlaps pool memory or another registration after rounding (two buffers sharing a
    /// page cannot be registered separately). Locking failures are errors in
    /// [`IovaMode::Physical`] and recorded in [`Registration::locked`] otherwise. Dropping
    /// the guard unlocks the pages, even if they were locked before.
    pub fn register(&self, ptr: *mut u8, len: usize) -> Result<Registration, MemError> {
        if ptr.is_null() {
            return Err(MemError::NullPointer);
        }
        if len == 0 {
            return Err(MemError::ZeroLength);
        }
        let page = os::page_size();
        let addr = ptr as usize;
        let start = addr & !(page - 1);
        let end = addr
            .checked_add(len)
            .and_then(|end| round_up(end, page))
            .ok_or(MemError::NotMapped { addr })?;
        let span = end - start;
        if !os::is_mapped(start, span) {
            return Err(MemError::NotMapped { addr });
        }
        let inner = &self.inner;
        let mut state = inner.lock();
        // Checked before mlock so that a refused registration cannot unlock another's pages.
        if let Some((existing_addr, existing_len)) = state.map.va_overlap(start, span) {
            return Err(MemError::Overlap {
                addr: start,
                len: span,
                existing_addr,
                existing_len,
            });
        }
        let locked = match os::lock_range(start, span) {
            Ok(()) => true,
            Err(errno) if inner.iova_mode == IovaMode::Physical => {
                return Err(MemError::LockFailed {
                    addr: start,
                    len: span,
                    errno,
                })
            }
            Err(_) => false,
        };
        let id = state.next_registration;
        let owner = Owner::Registration(id);
        let recorded = state
            .runs_for(inner.iova_mode, owner, start, span)
            .and_then(|runs| state.map_mut(&inner.generation).insert(owner, &runs));
        if let Err(e) = recorded {
            state.unmap_owner(owner);
            if locked {
                os::unlock_range(start, span);
            }
            return Err(e);
        }
        state.next_registration += 1;
        state.registrations += 1;
        Ok(Registration {
            inner: Arc::clone(inner),
            id,
            va: start,
            len: span,
            locked,
        })
    }

    /// Maps every region and registration of this pool into `iommu` (a VFIO container), and
    /// every later one as it comes, at the IOVAs this pool picks; what is mapped is unmapped
    /// when its region or registration goes, and everything when the pool does. Future IOVAs
    /// are picked inside `iommu`'s windows. Only for [`IovaMode::Mapped`] pools. Attaching a
    /// context again re-reads its windows, which a device or group joining it may have
    /// narrowed, and picks later IOVAs inside what is left.
    pub fn attach_iommu(&self, iommu: Arc<dyn IommuMapper>) -> Result<(), MemError> {
        let mut state = self.inner.lock();
        if state.iova_space.is_none() {
            return Err(MemError::InvalidConfig {
                reason: format!(
                    "an IOMMU context needs a pool in IovaMode::Mapped; this one is {:?}",
                    self.inner.iova_mode
                ),
            });
        }
        let ranges = iommu.iova_ranges().map_err(|e| MemError::IommuQuery {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })?;
        let runs: Vec<Run> = state.mapped.values().copied().collect();
        let known = state.iommus.iter().any(|i| i.id() == iommu.id());
        if let Some(outside) = runs
            .iter()
            .find(|run| !super::iommu::within(&ranges, run.iova, run.len))
        {
            return Err(MemError::IovaOutsideIommu {
                iova: outside.iova,
                len: outside.len,
            });
        }
        if !known {
            if iommu
                .entries_left()
                .is_some_and(|left| (left as usize) < runs.len())
            {
                return Err(MemError::IommuEntriesExhausted);
            }
            map_everywhere(std::slice::from_ref(&iommu), &runs)?;
        }
        if let Some(space) = state.iova_space.as_mut() {
            space.restrict(&ranges);
        }
        if !known {
            state.iommus.push(iommu);
        }
        Ok(())
    }

    /// The IOMMU contexts this pool's memory is mapped into.
    pub fn iommus(&self) -> Vec<IommuId> {
        self.inner.lock().iommus.iter().map(|i| i.id()).collect()
    }

    /// How this pool derives IOVAs.
    pub fn iova_mode(&self) -> IovaMode {
        self.inner.iova_mode
    }

    /// The backing chosen when the pool was created (with [`BackingChoice::Auto`], later
    /// regions may fall back to small pages when hugepages run out).
    pub fn backing(&self) -> Backing {
        self.inner.backing
    }

    /// Whether every `mlock` of pool memory so far succeeded. Only [`IovaMode::Physical`]
    /// requires it; elsewhere a failure (a low `RLIMIT_MEMLOCK`) is tolerated.
    pub fn locked(&self) -> bool {
        self.inner.lock().locked
    }

    /// The number of blocks allocated and not yet dropped.
    pub fn live_blocks(&self) -> usize {
        self.inner.lock().live_blocks
    }

    /// The sum of the lengths of the live blocks, as requested.
    pub fn allocated_bytes(&self) -> usize {
        self.inner.lock().allocated_bytes
    }

    /// The number of backing regions mapped, shared and dedicated.
    pub fn region_count(&self) -> usize {
        self.inner.lock().regions.len()
    }

    /// The number of live registrations.
    pub fn registration_count(&self) -> usize {
        self.inner.lock().registrations
    }

    /// The configured size of a shared region.
    pub fn region_size(&self) -> usize {
        self.inner.region_size
    }
}

impl DmaPool {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> DmaPool {
        DmaPool { inner }
    }
}

impl fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("DmaPool")
            .field("iova_mode", &self.inner.iova_mode)
            .field("backing", &self.inner.backing)
            .field("regions", &state.regions.len())
            .field("live_blocks", &state.live_blocks)
            .field("allocated_bytes", &state.allocated_bytes)
            .field("registrations", &state.registrations)
            .field("locked", &state.locked)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone (blocks and registrations each hold one), so nothing the
        // device may use is left: take everything out of the IOMMU contexts.
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for run in std::mem::take(&mut state.mapped).into_values() {
            for iommu in &state.iommus {
                let _ = iommu.unmap(run.iova, run.len);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Bookkeeping is never left half-changed by a panic (nothing in it panics between
        // paired updates), so a poisoned lock is still consistent.
        lock_std(&self.state)
    }

    pub(super) fn snapshot(&self) -> (u64, Arc<IovaMap>) {
        let state = self.lock();
        (
            self.generation.load(Ordering::Relaxed),
            Arc::clone(&state.map),
        )
    }

    /// Maps a region of `len_for(page size)` bytes, on hugepages when this pool uses them
    /// (falling back to small pages under `Auto`).
    fn map_backing(
        &self,
        len_for: impl Fn(usize) -> Option<usize>,
    ) -> Result<(Mapping, Backing), MemError> {
        let too_large = || MemError::OutOfMemory {
            requested: len_for(1).unwrap_or(usize::MAX),
        };
        if let Some(huge) = self.hugepage_size {
            let len = len_for(huge).ok_or_else(too_large)?;
            match Mapping::hugepages(len, huge) {
                Ok(mapping) => return Ok((mapping, Backing::Hugepages)),
                Err(errno) if self.choice == BackingChoice::Hugepages => {
                    return Err(MemError::MapFailed { len, errno })
                }
                Err(_) => {}
            }
        }
        let len = len_for(os::page_size()).ok_or_else(too_large)?;
        Mapping::small_pages(len)
            .map(|mapping| (mapping, Backing::SmallPages))
            .map_err(|errno| MemError::MapFailed { len, errno })
    }

    fn install(
        &self,
        state: &mut State,
        mapping: Mapping,
        dedicated: bool,
    ) -> Result<u64, MemError> {
        install_region(state, &self.generation, self.iova_mode, mapping, dedicated)
    }

    /// Gives a block's memory back; called by the block's `Drop`.
    pub(crate) fn release(&self, region: u64, offset: usize, reserved: usize, len: usize) {
        let mut state = self.lock();
        state.live_blocks -= 1;
        state.allocated_bytes -= len;
        let unmapped = state.release(&self.generation, region, offset, reserved);
        // munmap outside the lock: other threads need not wait for it.
        drop(state);
        drop(unmapped);
    }
}

/// Locks a new region, records its translation and adds it to the pool.
fn install_region(
    state: &mut State,
    generation: &AtomicU64,
    mode: IovaMode,
    mapping: Mapping,
    dedicated: bool,
) -> Result<u64, MemError> {
    let (base, len) = (mapping.base(), mapping.len());
    if let Err(errno) = mapping.lock() {
        if mode == IovaMode::Physical {
            return Err(MemError::LockFailed {
                addr: base,
                len,
                errno,
            });
        }
        state.locked = false;
    }
    let id = state.next_region;
    let owner = Owner::Region(id);
    let runs = state.runs_for(mode, owner, base, len)?;
    if let Err(e) = state.map_mut(generation).insert(owner, &runs) {
        state.unmap_owner(owner);
        return Err(e);
    }
    state.next_region += 1;
    let free = (!dedicated).then(|| FreeList::new(len));
    state.regions.insert(id, Region { mapping, free });
    Ok(id)
}

impl State {
    /// The runs giving `[va, va + len)` its IOVAs for `owner`; in `Mapped` mode the range gets
    /// an IOVA of its own and is mapped into every attached context (all or none).
    fn runs_for(
        &mut self,
        mode: IovaMode,
        owner: Owner,
        va: usize,
        len: usize,
    ) -> Result<Vec<Run>, MemError> {
        let Some(space) = self.iova_space.as_mut() else {
            return runs_for(mode, &mut self.scrambler, va, len);
        };
        // Regions of a hugepage or more get hugepage-aligned IOVAs, so the IOMMU may use
        // large pages for them.
        let align = if len >= 2 << 20 {
            2 << 20
        } else {
            os::page_size() as u64
        };
        let iova = space
            .alloc(len as u64, align)
            .ok_or(MemError::IovaSpaceExhausted { len })?;
        let run = Run { va, iova, len };
        if let Err(e) = map_everywhere(&self.iommus, &[run]) {
            space.free(iova, len as u64);
            return Err(e);
        }
        self.mapped.insert(owner, run);
        Ok(vec![run])
    }

    /// Unmaps what `owner` mapped into the attached contexts and frees its IOVAs.
    fn unmap_owner(&mut self, owner: Owner) {
        if let Some(run) = self.mapped.remove(&owner) {
            for iommu in &self.iommus {
                // The context refusing to unmap what it mapped leaves nothing to do here:
                // the range stays pinned until the context is closed.
                let _ = iommu.unmap(run.iova, run.len);
            }
            if let Some(space) = self.iova_space.as_mut() {
                space.free(run.iova, run.len as u64);
            }
        }
    }

    /// The map, for changing: cloned first if translators still hold the current snapshot,
    /// and announced to them through the generation.
    fn map_mut(&mut self, generation: &AtomicU64) -> &mut IovaMap {
        // Release pairs with the Acquire load in `Translator::check`; the new snapshot
        // itself reaches translators through the state lock they take to refresh.
        generation.fetch_add(1, Ordering::Release);
        Arc::make_mut(&mut self.map)
    }

    fn first_fit(&mut self, reserved: usize, align: usize) -> Option<(u64, usize)> {
        let ids: Vec<u64> = self
            .regions
            .iter()
            .filter(|(_, r)| r.free.is_some())
            .map(|(&id, _)| id)
            .collect();
        ids.into_iter()
            .find_map(|id| self.carve(id, reserved, align).map(|offset| (id, offset)))
    }

    fn carve(&mut self, id: u64, reserved: usize, align: usize) -> Option<usize> {
        let region = self.regions.get_mut(&id)?;
        let base = region.mapping.base();
        region.free.as_mut()?.alloc(base, reserved, align)
    }

    /// Frees a block's range; a dedicated region is removed whole and returned for
    /// unmapping.
    fn release(
        &mut self,
        generation: &AtomicU64,
        id: u64,
        offset: usize,
        reserved: usize,
    ) -> Option<Region> {
        let region = self.regions.get_mut(&id)?;
        if let Some(free) = region.free.as_mut() {
            free.free(offset, reserved);
            return None;
        }
        let region = self.regions.remove(&id)?;
        let (base, len) = (region.mapping.base(), region.mapping.len());
        self.map_mut(generation)
            .remove(Owner::Region(id), base, len);
        self.unmap_owner(Owner::Region(id));
        Some(region)
    }
}

/// Maps every run into every context, all or none: what one refuses is unmapped again from
/// those that took it.
fn map_everywhere(iommus: &[Arc<dyn IommuMapper>], runs: &[Run]) -> Result<(), MemError> {
    let mut done: Vec<(&Arc<dyn IommuMapper>, Run)> = Vec::new();
    for iommu in iommus {
        for &run in runs {
            let outcome = match iommu.entries_left() {
                Some(0) => Err(MemError::IommuEntriesExhausted),
                _ => iommu
                    .map(run.va, run.iova, run.len)
                    .map_err(|e| MemError::IommuMap {
                        iova: run.iova,
                        len: run.len,
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                    }),
            };
            if let Err(e) = outcome {
                for (undo, run) in done {
                    let _ = undo.unmap(run.iova, run.len);
                }
                return Err(e);
            }
            done.push((iommu, run));
        }
    }
    Ok(())
}

/// The runs that give `[va, va + len)` (page-aligned) its IOVAs in `mode`.
fn runs_for(
    mode: IovaMode,
    scrambler: &mut Option<Scrambler>,
    va: usize,
    len: usize,
) -> Result<Vec<Run>, MemError> {
    match mode {
        IovaMode::Va => Ok(vec![Run {
            va,
            iova: va as u64,
            len,
        }]),
        IovaMode::Scrambled { .. } => {
            let scrambler = scrambler
                .as_mut()
                .expect("scrambled pools have a scrambler");
            Ok((va..va + len)
                .step_by(SCRAMBLE_PAGE)
                .map(|page| Run {
                    va: page,
                    iova: scrambler.next_page(),
                    len: SCRAMBLE_PAGE,
                })
                .collect())
        }
        IovaMode::Mapped => unreachable!("mapped pools allocate their IOVAs in State::runs_for"),
        IovaMode::Physical => {
            let page = os::page_size();
            let frames = procfs::physical_pages(va, len, page)?;
            let mut runs: Vec<Run> = Vec::new();
            for (i, phys) in frames.into_iter().enumerate() {
                match runs.last_mut() {
                    Some(last) if last.iova + last.len as u64 == phys => last.len += page,
                    _ => runs.push(Run {
                        va: va + i * page,
                        iova: phys,
                        len: page,
                    }),
                }
            }
            Ok(runs)
        }
    }
}

/// A block's translation, computed once so that its own lookups need no lock.
fn segments_of(map: &IovaMap, va: usize, len: usize) -> Result<Box<[Segment]>, MemError> {
    let mut segments = Vec::new();
    let mut offset = 0;
    while offset < len {
        let (iova, run) = map
            .translate(va + offset, len - offset)
            .ok_or(MemError::NotMapped { addr: va + offset })?;
        segments.push(Segment { offset, iova });
        offset += run;
    }
    Ok(segments.into_boxed_slice())
}

fn round_up(value: usize, to: usize) -> Option<usize> {
    value.checked_next_multiple_of(to)
}

/// A registration of application memory; dropping it makes the memory unreachable by the
/// device again and unlocks it.
#[must_use = "dropping the guard unregisters the memory at once"]
pub struct Registration {
    inner: Arc<Inner>,
    id: u64,
    va: usize,
    len: usize,
    locked: bool,
}

impl Registration {
    /// The first address of the registered range (rounded down to a page).
    pub fn va(&self) -> usize {
        self.va
    }

    /// The length of the registered range (rounded out to whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a registration covers at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `mlock` succeeded on the range.
    pub fn locked(&self) -> bool {
        self.locked
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("va", &format_args!("{:#x}", self.va))
            .field("len", &self.len)
            .field("locked", &self.locked)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.map_mut(&self.inner.generation).remove(
            Owner::Registration(self.id),
            self.va,
            self.len,
        );
        state.unmap_owner(Owner::Registration(self.id));
        state.registrations -= 1;
        // Under the lock: a registration of the same range racing in must lock after this.
        if self.locked {
            os::unlock_range(self.va, self.len);
        }
    }
}
