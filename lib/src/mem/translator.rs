//! The data path's view of a pool's translations: a per-thread [`Translator`] that answers
//! from a snapshot of the map and a few recently used runs, taking the pool's lock only when
//! the pool changed since.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::map::{IovaMap, Run};
use super::pool::Inner;
use super::MemError;

/// A per-thread translator for the data path: no lock and no atomic read-modify-write.
///
/// It keeps a snapshot of the pool's translation map and, on each call, compares the
/// pool's generation counter with the snapshot's (one load of a line written only when
/// regions or registrations change), taking the pool's lock only to refresh a stale
/// snapshot. Anything allocated or registered before the call (in happens-before order) is
/// seen.
pub struct Translator {
    inner: Arc<Inner>,
    generation: u64,
    map: Arc<IovaMap>,
    /// Runs of the snapshot used lately (a zero length marks an empty entry): a lookup that
    /// falls inside one of them is answered without walking the map's trees. A data path
    /// touches few runs (its ring, its buffers), so a handful covers most lookups.
    recent: [Run; RECENT_RUNS],
    next_recent: usize,
}

/// How many runs a [`Translator`] remembers.
const RECENT_RUNS: usize = 4;

const NO_RUN: Run = Run {
    va: 0,
    iova: 0,
    len: 0,
};

impl Translator {
    /// A translator of `inner`'s map, as it is now.
    pub(super) fn new(inner: Arc<Inner>) -> Translator {
        let (generation, map) = inner.snapshot();
        Translator {
            inner,
            generation,
            map,
            recent: [NO_RUN; RECENT_RUNS],
            next_recent: 0,
        }
    }

    fn check(&mut self) {
        // Acquire pairs with the Release increment in `State::map_mut`.
        if self.inner.generation.load(Ordering::Acquire) != self.generation {
            (self.generation, self.map) = self.inner.snapshot();
            self.recent = [NO_RUN; RECENT_RUNS];
        }
    }

    fn remember(&mut self, run: Run) {
        self.recent[self.next_recent] = run;
        self.next_recent = (self.next_recent + 1) % RECENT_RUNS;
    }

    /// `va`'s IOVA from a remembered run, when the run covers all `len` bytes (a longer
    /// request may continue into the next run, which only the map knows).
    fn recent_translate(&self, va: usize, len: usize) -> Option<(u64, usize)> {
        let run = self.recent.iter().find(|r| va.wrapping_sub(r.va) < r.len)?;
        let skip = va - run.va;
        (run.len - skip >= len).then(|| (run.iova + skip as u64, len))
    }

    /// As `recent_translate`, from the device's side.
    fn recent_iova_to_va(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        let run = self
            .recent
            .iter()
            .find(|r| iova.wrapping_sub(r.iova) < r.len as u64)?;
        let skip = (iova - run.iova) as usize;
        (run.len - skip >= len).then(|| (run.va + skip, len))
    }

    /// As [`DmaPool::translate`](super::DmaPool::translate).
    pub fn translate(&mut self, va: usize, len: usize) -> Result<(u64, usize), MemError> {
        if len == 0 {
            return Err(MemError::ZeroLength);
        }
        self.check();
        if let Some(hit) = self.recent_translate(va, len) {
            return Ok(hit);
        }
        // One tree walk finds the run; only a request running past its end needs the map's
        // walk across the runs that continue it.
        let run = self
            .map
            .run_at_va(va)
            .ok_or(MemError::NotMapped { addr: va })?;
        self.remember(run);
        match self.recent_translate(va, len) {
            Some(hit) => Ok(hit),
            None => self
                .map
                .translate(va, len)
                .ok_or(MemError::NotMapped { addr: va }),
        }
    }

    /// As [`DmaPool::iova_to_va`](super::DmaPool::iova_to_va).
    pub fn iova_to_va(&mut self, iova: u64, len: usize) -> Result<(usize, usize), MemError> {
        if len == 0 {
            return Err(MemError::ZeroLength);
        }
        self.check();
        if let Some(hit) = self.recent_iova_to_va(iova, len) {
            return Ok(hit);
        }
        let run = self
            .map
            .run_at_iova(iova)
            .ok_or(MemError::IovaNotMapped { iova })?;
        self.remember(run);
        match self.recent_iova_to_va(iova, len) {
            Some(hit) => Ok(hit),
            None => self
                .map
                .iova_to_va(iova, len)
                .ok_or(MemError::IovaNotMapped { iova }),
        }
    }
}

impl fmt::Debug for Translator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Translator")
            .field("generation", &self.generation)
            .finish()
    }
}
