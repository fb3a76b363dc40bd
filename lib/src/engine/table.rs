//! The published per-CPU table and the lock-free reader that looks channels up in it.
//!
//! A [`TableSnapshot`] is immutable: a rebalance builds a new one and publishes it through
//! [`Published`](super::grace::Published), and the old one is retired until a grace period has passed (see
//! [`super::grace`]). The snapshot owns one `Arc<Channel>` per non-empty slot, so a channel
//! object outlives every snapshot that names it; the *resources* behind the channel are
//! governed separately by the engine's reference counts, in which every slot of a retired
//! snapshot still counts until the snapshot is reclaimed.

use std::cell::Cell;
use std::marker::PhantomData;

use std::collections::HashMap;

use super::grace::{GracePeriod, ReaderSlot};
use super::{Channel, EngineShared};
use std::sync::Arc;

use super::ChannelId;
use crate::capability::Capability;
use crate::sync::Arc as SlotArc;

/// One immutable distribution of channels to (capability, CPU) slots.
pub(crate) struct TableSnapshot {
    generation: u64,
    possible_cpus: usize,
    /// Row of each capability in `slots`, `None` for capabilities without a table.
    rows: [Option<u8>; Capability::COUNT],
    slots: Box<[Option<Arc<Channel>>]>,
    /// Per slot: every slot naming this slot's channel belongs to the same CPU, so that CPU's
    /// client may own the channel outright.
    exclusive: Box<[bool]>,
    /// Epoch of the grace period begun once this snapshot was published (0 until then); when
    /// it has elapsed, every reader has seen this snapshot or a later one.
    settle_epoch: std::sync::atomic::AtomicU64,
}

impl TableSnapshot {
    /// A table with every slot empty.
    pub(crate) fn empty(table_caps: &[Capability], possible_cpus: usize) -> Self {
        Self::build(0, table_caps, possible_cpus, |_, _| None)
    }

    /// A table whose slot (`cap`, `cpu`) is `slot(row, cpu)`, rows numbered in walk order.
    pub(crate) fn build(
        generation: u64,
        table_caps: &[Capability],
        possible_cpus: usize,
        mut slot: impl FnMut(usize, usize) -> Option<Arc<Channel>>,
    ) -> Self {
        let mut rows = [None; Capability::COUNT];
        for (row, cap) in table_caps.iter().enumerate() {
            rows[cap.index()] = Some(row as u8);
        }
        let slots: Box<[Option<Arc<Channel>>]> = (0..table_caps.len())
            .flat_map(|row| (0..possible_cpus).map(move |cpu| (row, cpu)))
            .map(|(row, cpu)| slot(row, cpu))
            .collect();
        // For each channel: the one CPU whose slots name it, or `None` once a second appears.
        let mut users: HashMap<ChannelId, Option<usize>> = HashMap::new();
        for (i, channel) in slots.iter().enumerate() {
            if let Some(channel) = channel {
                let cpu = i % possible_cpus;
                users
                    .entry(channel.id())
                    .and_modify(|only| {
                        if *only != Some(cpu) {
                            *only = None;
                        }
                    })
                    .or_insert(Some(cpu));
            }
        }
        let exclusive = slots
            .iter()
            .map(|c| c.as_ref().is_some_and(|c| users[&c.id()].is_some()))
            .collect();
        TableSnapshot {
            generation,
            possible_cpus,
            rows,
            slots,
            exclusive,
            settle_epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records the grace period begun after this snapshot was published.
    pub(crate) fn set_settle(&self, gp: GracePeriod) {
        self.settle_epoch
            .store(gp.epoch(), std::sync::atomic::Ordering::Release);
    }

    /// The channel of (`cap`, `cpu`) and whether it is exclusive to `cpu`.
    #[inline]
    pub(crate) fn entry(&self, cap: Capability, cpu: usize) -> Option<(&Arc<Channel>, bool)> {
        debug_assert!(cpu < self.possible_cpus);
        let row = usize::from(self.rows[cap.index()]?);
        let index = row * self.possible_cpus + cpu;
        self.slots[index]
            .as_ref()
            .map(|c| (c, self.exclusive[index]))
    }

    /// The channel of (`cap`, `cpu`); `cpu` must be below the possible count.
    #[inline]
    pub(crate) fn get(&self, cap: Capability, cpu: usize) -> Option<&Arc<Channel>> {
        debug_assert!(cpu < self.possible_cpus);
        let row = usize::from(self.rows[cap.index()]?);
        self.slots[row * self.possible_cpus + cpu].as_ref()
    }

    /// The channels the snapshot holds a table reference on, one per non-empty slot.
    pub(crate) fn referenced_channels(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.slots.iter().flatten().map(|c| c.id())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

/// A CPU's lock-free view of the per-CPU table.
///
/// Lookups take no lock and do no atomic read-modify-write: one acquire load and an index. A
/// borrowed [`Channel`] stays valid until the reader next calls [`TableReader::quiescent`] or
/// [`TableReader::offline`], which take `&mut self` so the borrow checker enforces it. A
/// polling loop reports a quiescent state once per iteration; a reader that stops doing so
/// never blocks a rebalance, it only delays the freeing of the channels it might still see
/// (and is named as the laggard in [`crate::EngineError::GracePeriodTimeout`]).
///
/// The reader is `Send` but not `Sync`: it belongs to one thread at a time.
///
/// ```compile_fail
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<dmaplane::TableReader>();
/// ```
///
/// ```
/// use dmaplane::{Capability, CapMask, DeviceSpec, Engine, EngineConfig, NullChannel};
///
/// let engine = Engine::new(EngineConfig::with_cpus(2)).unwrap();
/// engine.register_device(DeviceSpec::new("dev", CapMask::MEMCPY, NullChannel::many(2))).unwrap();
/// engine.get_client();
/// let mut reader = engine.table_reader(1).unwrap();
/// let chan = reader.lookup(Capability::Memcpy).expect("cpu 1 has a memcpy channel");
/// assert_eq!(chan.id().index, 1);
/// reader.quiescent(); // `chan` may not be used past this point
/// ```
pub struct TableReader {
    shared: Arc<EngineShared>,
    slot: SlotArc<ReaderSlot>,
    cpu: usize,
    online: bool,
    _not_sync: PhantomData<Cell<()>>,
}

impl TableReader {
    pub(crate) fn new(shared: Arc<EngineShared>, cpu: usize, label: String) -> Self {
        let slot = shared.grace.register(label);
        TableReader {
            shared,
            slot,
            cpu,
            online: true,
            _not_sync: PhantomData,
        }
    }

    /// The CPU whose slots this reader looks up.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The channel the table gives this CPU for `cap`; `None` when no channel offers it, no
    /// client is registered, or the reader is offline.
    #[inline]
    pub fn lookup(&self, cap: Capability) -> Option<&Channel> {
        self.snapshot()
            .and_then(|t| t.get(cap, self.cpu))
            .map(|c| &**c)
    }

    /// The channel the table gives this CPU for `cap`, and whether no other CPU's slot names
    /// it (so this CPU's client may own it outright).
    #[inline]
    pub fn lookup_entry(&self, cap: Capability) -> Option<(&Channel, bool)> {
        self.snapshot()
            .and_then(|t| t.entry(cap, self.cpu))
            .map(|(c, exclusive)| (&**c, exclusive))
    }

    /// Whether the table of `generation` is still the current one and every reader of the
    /// engine has reported a quiescent state since it was published, i.e. no reader still acts
    /// on an older table. `false` also when that cannot be told without waiting (the reader
    /// list is being changed) or the reader is offline. Takes no lock that could block: meant
    /// for the rare moments a client migrates.
    pub fn settled_at(&self, generation: Option<u64>) -> bool {
        let Some(snapshot) = self.snapshot() else {
            return false;
        };
        if Some(snapshot.generation()) != generation {
            return false;
        }
        let epoch = snapshot
            .settle_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        if epoch == 0
            || self
                .shared
                .grace
                .try_elapsed(GracePeriod::from_epoch(epoch))
                != Some(true)
        {
            return false;
        }
        // A reader counted above may already act on a table published after `generation`
        // (its grace period not begun yet): the scan's acquire loads make that table visible
        // here, and then `generation` is not settled but superseded.
        self.generation() == generation
    }

    /// Reports a quiescent state if the table is still the one of `generation`, the one the
    /// caller acts on; otherwise reports nothing (the caller follows the table first). Returns
    /// whether it reported. See [`TableReader::quiescent`].
    #[inline]
    pub fn quiescent_at(&mut self, generation: Option<u64>) -> bool {
        if !self.online {
            return false;
        }
        self.slot
            .quiescent_if(&self.shared.grace, || self.generation() == generation)
    }

    /// Generation of the table this reader currently sees; it changes with every rebalance,
    /// which is how a client notices that it must migrate.
    #[inline]
    pub fn generation(&self) -> Option<u64> {
        self.snapshot().map(TableSnapshot::generation)
    }

    #[inline]
    fn snapshot(&self) -> Option<&TableSnapshot> {
        if !self.online {
            return None;
        }
        // SAFETY: the reader is online (checked above), and the borrow returned lives no
        // longer than `&self`, while reporting a quiescent state or going offline needs
        // `&mut self`.
        Some(unsafe { self.shared.table.read() })
    }

    /// Reports that no channel borrowed from this reader is in use any more.
    #[inline]
    pub fn quiescent(&mut self) {
        if self.online {
            self.slot.quiescent(&self.shared.grace);
        }
    }

    /// Stops reading for a while (a thread about to sleep); grace periods stop waiting for it.
    pub fn offline(&mut self) {
        self.slot.offline();
        self.online = false;
    }

    /// Resumes reading after [`TableReader::offline`].
    pub fn online(&mut self) {
        if !self.online {
            self.slot.online(&self.shared.grace);
            self.online = true;
        }
    }
}

impl Drop for TableReader {
    fn drop(&mut self) {
        self.shared.grace.unregister(&self.slot);
    }
}

impl std::fmt::Debug for TableReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableReader")
            .field("cpu", &self.cpu)
            .field("label", &self.slot.label())
            .field("online", &self.online)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reader_can_move_to_its_pinned_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<super::TableReader>();
    }
}
