//! The VA ⇄ IOVA bookkeeping: which virtual ranges a device may reach, and at which IOVAs.
//!
//! Memory is recorded as *runs*: ranges that are contiguous both virtually and in IOVA
//! space. Two ordered maps index the same runs, by virtual start (the driver's view, for
//! `translate`) and by IOVA start (the device's view, for `iova_to_va`, which refuses what
//! is not recorded as an IOMMU would). A lookup walks on through the following runs as long
//! as they continue the previous one in both spaces, so the length it returns is the whole
//! contiguous stretch, which is what a driver splits its descriptors at.

use std::collections::BTreeMap;

use super::MemError;

/// Who put a run in the map, so that exactly its runs can be taken out again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Owner {
    /// A backing region of the pool, by region id.
    Region(u64),
    /// A registration of application memory, by registration id.
    Registration(u64),
}

/// One run to record: `len` bytes at virtual `va` are reachable at `iova`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) va: usize,
    pub(crate) iova: u64,
    pub(crate) len: usize,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    iova: u64,
    len: usize,
    owner: Owner,
}

/// Every recorded run, indexed both ways. Cloned as a whole into translator snapshots.
#[derive(Clone, Debug, Default)]
pub(crate) struct IovaMap {
    by_va: BTreeMap<usize, Entry>,
    /// IOVA start → virtual start of the same run.
    by_iova: BTreeMap<u64, usize>,
}

impl IovaMap {
    /// Records `runs` for `owner`, all or none: refused if any of them overlaps a recorded
    /// run in virtual or IOVA space (runs of one call must not overlap each other either).
    pub(crate) fn insert(&mut self, owner: Owner, runs: &[Run]) -> Result<(), MemError> {
        for run in runs {
            debug_assert!(run.len > 0 && run.iova != 0);
            if let Some((start, len)) = self.va_overlap(run.va, run.len) {
                return Err(MemError::Overlap {
                    addr: run.va,
                    len: run.len,
                    existing_addr: start,
                    existing_len: len,
                });
            }
            if self.iova_overlaps(run.iova, run.len) {
                return Err(MemError::IovaOverlap {
                    iova: run.iova,
                    addr: run.va,
                });
            }
        }
        for run in runs {
            let entry = Entry {
                iova: run.iova,
                len: run.len,
                owner,
            };
            let clash = self.by_va.insert(run.va, entry);
            debug_assert!(clash.is_none(), "runs of one insert overlap");
            self.by_iova.insert(run.iova, run.va);
        }
        Ok(())
    }

    /// The recorded run that overlaps `[va, va + len)`, if any, as `(start, len)`.
    pub(crate) fn va_overlap(&self, va: usize, len: usize) -> Option<(usize, usize)> {
        let end = va.saturating_add(len);
        // Runs never overlap one another, so the last run starting before `end` is the only
        // one that can reach into the range.
        let (&start, entry) = self.by_va.range(..end).next_back()?;
        (start.saturating_add(entry.len) > va).then_some((start, entry.len))
    }

    fn iova_overlaps(&self, iova: u64, len: usize) -> bool {
        let end = iova.saturating_add(len as u64);
        self.by_iova
            .range(..end)
            .next_back()
            .is_some_and(|(&start, va)| start.saturating_add(self.by_va[va].len as u64) > iova)
    }

    /// Removes the runs of `owner` that start inside `[va, va + len)`.
    pub(crate) fn remove(&mut self, owner: Owner, va: usize, len: usize) {
        let starts: Vec<usize> = self
            .by_va
            .range(va..va.saturating_add(len))
            .filter(|(_, e)| e.owner == owner)
            .map(|(&start, _)| start)
            .collect();
        for start in starts {
            if let Some(entry) = self.by_va.remove(&start) {
                self.by_iova.remove(&entry.iova);
            }
        }
    }

    /// The IOVA of `va` and the length, at most `len`, over which both spaces stay
    /// contiguous from there; `None` if `va` is not recorded.
    pub(crate) fn translate(&self, va: usize, len: usize) -> Option<(u64, usize)> {
        let (&start, entry) = self.by_va.range(..=va).next_back()?;
        let skip = va - start;
        if skip >= entry.len {
            return None;
        }
        let iova = entry.iova + skip as u64;
        let mut run_len = entry.len - skip;
        let (mut next_va, mut next_iova) = (start + entry.len, entry.iova + entry.len as u64);
        while run_len < len {
            match self.by_va.get(&next_va) {
                Some(e) if e.iova == next_iova => {
                    run_len += e.len;
                    next_va += e.len;
                    next_iova += e.len as u64;
                }
                _ => break,
            }
        }
        Some((iova, run_len.min(len)))
    }

    /// The recorded run holding virtual address `va`.
    pub(crate) fn run_at_va(&self, va: usize) -> Option<Run> {
        let (&start, entry) = self.by_va.range(..=va).next_back()?;
        (va - start < entry.len).then_some(Run {
            va: start,
            iova: entry.iova,
            len: entry.len,
        })
    }

    /// The recorded run holding `iova`.
    pub(crate) fn run_at_iova(&self, iova: u64) -> Option<Run> {
        let (&start, &va) = self.by_iova.range(..=iova).next_back()?;
        let entry = &self.by_va[&va];
        (iova - start < entry.len as u64).then_some(Run {
            va,
            iova: start,
            len: entry.len,
        })
    }

    /// The device's view: the virtual address of `iova` and the length, at most `len`, over
    /// which both spaces stay contiguous; `None` if `iova` is not recorded.
    pub(crate) fn iova_to_va(&self, iova: u64, len: usize) -> Option<(usize, usize)> {
        let (&start, &start_va) = self.by_iova.range(..=iova).next_back()?;
        let entry = self.by_va[&start_va];
        let skip = iova - start;
        if skip >= entry.len as u64 {
            return None;
        }
        let va = start_va + skip as usize;
        let mut run_len = entry.len - skip as usize;
        let (mut next_va, mut next_iova) = (start_va + entry.len, start + entry.len as u64);
        while run_len < len {
            match self.by_iova.get(&next_iova) {
                Some(&v) if v == next_va => {
                    let l = self.by_va[&v].len;
                    run_len += l;
                    next_va += l;
                    next_iova += l as u64;
                }
                _ => break,
            }
        }
        Some((va, run_len.min(len)))
    }

    /// The number of recorded runs.
    #[cfg(test)]
    pub(crate) fn run_count(&self) -> usize {
        debug_assert_eq!(self.by_va.len(), self.by_iova.len());
        self.by_va.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(va: usize, iova: u64, len: usize) -> Run {
        Run { va, iova, len }
    }

    #[test]
    fn translate_follows_runs_that_continue_each_other() {
        let mut map = IovaMap::default();
        map.insert(
            Owner::Region(1),
            &[
                run(0x10000, 0x900000, 0x1000),
                run(0x11000, 0x901000, 0x1000), // continues in both spaces
                run(0x12000, 0x500000, 0x1000), // continues virtually only
            ],
        )
        .unwrap();
        assert_eq!(map.translate(0x10800, 0x10000), Some((0x900800, 0x1800)));
        assert_eq!(map.translate(0x10800, 0x10), Some((0x900800, 0x10)));
        assert_eq!(map.translate(0x12fff, 2), Some((0x500fff, 1)));
        assert_eq!(map.translate(0x13000, 1), None);
        assert_eq!(map.translate(0xffff, 1), None);
        assert_eq!(map.iova_to_va(0x900800, 0x10000), Some((0x10800, 0x1800)));
        assert_eq!(map.iova_to_va(0x500000, 0x10000), Some((0x12000, 0x1000)));
        assert_eq!(map.iova_to_va(0x902000, 1), None);
        assert_eq!(map.iova_to_va(0x8fffff, 1), None);
    }

    #[test]
    fn iova_contiguity_needs_virtual_contiguity_too() {
        let mut map = IovaMap::default();
        // Adjacent in IOVA space, far apart virtually.
        map.insert(
            Owner::Region(1),
            &[run(0x10000, 0x1000, 0x1000), run(0x80000, 0x2000, 0x1000)],
        )
        .unwrap();
        assert_eq!(map.iova_to_va(0x1000, 0x2000), Some((0x10000, 0x1000)));
        assert_eq!(map.translate(0x10000, 0x2000), Some((0x1000, 0x1000)));
    }

    #[test]
    fn overlaps_are_refused_whole() {
        let mut map = IovaMap::default();
        map.insert(Owner::Region(1), &[run(0x10000, 0x10000, 0x2000)])
            .unwrap();
        let err = map
            .insert(
                Owner::Registration(1),
                &[run(0x8000, 0x8000, 0x1000), run(0x11000, 0x11000, 0x1000)],
            )
            .unwrap_err();
        assert_eq!(
            err,
            MemError::Overlap {
                addr: 0x11000,
                len: 0x1000,
                existing_addr: 0x10000,
                existing_len: 0x2000
            }
        );
        // Nothing of the refused insert was recorded.
        assert_eq!(map.run_count(), 1);
        assert_eq!(map.translate(0x8000, 1), None);
        // A range ending right where a run starts does not overlap it.
        map.insert(Owner::Registration(1), &[run(0xe000, 0xe000, 0x2000)])
            .unwrap();
        let err = map
            .insert(Owner::Registration(2), &[run(0x40000, 0x10800, 0x1000)])
            .unwrap_err();
        assert_eq!(
            err,
            MemError::IovaOverlap {
                iova: 0x10800,
                addr: 0x40000
            }
        );
    }

    #[test]
    fn remove_takes_only_the_owners_runs() {
        let mut map = IovaMap::default();
        map.insert(Owner::Region(1), &[run(0x10000, 0x10000, 0x1000)])
            .unwrap();
        map.insert(Owner::Registration(7), &[run(0x11000, 0x11000, 0x1000)])
            .unwrap();
        assert_eq!(map.translate(0x10000, 0x2000), Some((0x10000, 0x2000)));
        map.remove(Owner::Region(1), 0x10000, 0x2000);
        assert_eq!(map.translate(0x10000, 1), None);
        assert_eq!(map.translate(0x11000, 1), Some((0x11000, 1)));
        assert_eq!(map.iova_to_va(0x10000, 1), None);
        assert_eq!(map.run_count(), 1);
    }
}
