//! The dmaengine core: devices, channel reference counts, clients, private channels, and the
//! per-CPU table with its rebalance, following the patched Linux dmaengine of the seed.
//!
//! # The table and its rebalance
//!
//! For every capability in the walk order ([`Capability::TABLE_ORDER`] restricted to
//! [`EngineConfig::table_capabilities`]) and every possible CPU, the table names the channel
//! that CPU uses. A rebalance rebuilds it whenever the inputs change (a device registers or
//! unregisters, the first client arrives or the last leaves, a CPU goes on- or offline):
//!
//! 1. every slot of the current table is cleared and its channel's `table_count` lowered, but
//!    the references the old table held are kept for now;
//! 2. if any client exists, one counter `n` runs across capabilities (outer) and online CPUs
//!    (inner, ascending): each slot gets `nth_chan(cap, n++)`, the `n`-th public channel
//!    offering `cap` in device-registration then channel order, taking a reference on each
//!    channel it visits and keeping only the one it returns; when there is no `n`-th channel
//!    the least-used visited channel (lowest `table_count`, earliest on ties) is taken. With a
//!    single possible CPU every slot takes that fallback;
//! 3. the old table's references are dropped, so a channel that stays in the table is never
//!    freed. dmaplane drops them only after a grace period (below).
//!
//! Because `n` is not reset between capabilities, later capabilities in the walk order see
//! large `n` and mostly fall back to the least-used channel; leaving capabilities nobody uses
//! out of [`EngineConfig::table_capabilities`] changes the distribution.
//!
//! # Reference counts
//!
//! A channel's `client_count` counts its holders: table slots and a private holder. Its
//! backend allocates resources when the count leaves zero and frees them when it returns
//! there. An allocation failure leaves the count at zero and the channel out of the table.
//!
//! # The lock-free read path
//!
//! Control operations serialise on one lock. Readers ([`TableReader`]) never take it: the
//! table is an immutable snapshot behind an atomic pointer, protected by quiescent-state-based
//! reclamation (see the `grace` module). The references held by a replaced snapshot are
//! dropped, and channel resources possibly freed, only once every online reader has reported a
//! quiescent state since the replacement; until then they wait in a retired list that every
//! later control call (and [`Engine::synchronize`]) tries to reclaim. A reader that stops
//! polling therefore delays the freeing of channels, never the move of the table.
//!
//! ```
//! use dmaplane::{Capability, CapMask, DeviceSpec, Engine, EngineConfig, NullChannel};
//!
//! let engine = Engine::new(EngineConfig::with_cpus(2)).unwrap();
//! let caps = CapMask::of(&[Capability::Memcpy, Capability::Xor]);
//! let dev = engine.register_device(DeviceSpec::new("dev", caps, NullChannel::many(4))).unwrap();
//! engine.get_client();
//! // Operation isolation: memcpy gets channels 0 and 1, xor gets 2 and 3.
//! let index = |cap, cpu| engine.table_entry(cap, cpu).unwrap().unwrap().index;
//! assert_eq!([index(Capability::Memcpy, 0), index(Capability::Memcpy, 1)], [0, 1]);
//! assert_eq!([index(Capability::Xor, 0), index(Capability::Xor, 1)], [2, 3]);
//! engine.unregister_device(dev).unwrap();
//! assert_eq!(engine.table_entry(Capability::Memcpy, 0).unwrap(), None);
//! ```

mod device;
mod dump;
mod error;
pub(crate) mod grace;
mod removal;
mod state;
mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::{Backoff, CachePadded};

pub use device::{Channel, ChannelId, DeviceId};
pub use dump::{ChannelDump, DeviceDump, EngineDump};
pub use error::EngineError;
pub use removal::{RemovalKind, RemovalOptions, RemovalReport};
pub use state::UnregisterReport;
pub use table::TableReader;

use grace::{GraceDomain, Published};
use state::EngineState;
use table::TableSnapshot;

use crate::capability::{CapMask, Capability};
use crate::cpu::system_cpus;
use crate::log::{stderr_warnings, LogHook};
use crate::queue::{ChannelStats, DeviceSpec};
use crate::sync::{lock, pause, Mutex};

/// Largest possible-CPU count an engine accepts.
pub const MAX_CPUS: usize = 4096;

/// How an engine is set up.
#[derive(Clone)]
pub struct EngineConfig {
    /// Number of possible CPUs: the table has a slot per possible CPU.
    pub possible_cpus: usize,
    /// CPUs whose slots are filled, each below `possible_cpus`.
    pub online_cpus: Vec<usize>,
    /// Capabilities that get a table; they are walked in [`Capability::TABLE_ORDER`].
    pub table_capabilities: CapMask,
    /// Where warnings go.
    pub log: LogHook,
}

impl EngineConfig {
    /// The machine's possible and online CPUs (from sysfs), every capability tabled.
    pub fn from_system() -> Self {
        let (possible_cpus, online_cpus) = system_cpus();
        EngineConfig {
            possible_cpus,
            online_cpus,
            table_capabilities: CapMask::ALL,
            log: stderr_warnings(),
        }
    }

    /// `cpus` possible CPUs, all online, every capability tabled.
    pub fn with_cpus(cpus: usize) -> Self {
        EngineConfig {
            possible_cpus: cpus,
            online_cpus: (0..cpus).collect(),
            ..Self::from_system()
        }
    }

    /// The same configuration with only `caps` tabled.
    #[must_use]
    pub fn table_capabilities(mut self, caps: CapMask) -> Self {
        self.table_capabilities = caps;
        self
    }

    /// The same configuration logging through `hook`.
    #[must_use]
    pub fn log_hook(mut self, hook: LogHook) -> Self {
        self.log = hook;
        self
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self::from_system()
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("possible_cpus", &self.possible_cpus)
            .field("online_cpus", &self.online_cpus)
            .field("table_capabilities", &self.table_capabilities)
            .finish_non_exhaustive()
    }
}

/// A channel's reference counts, as the kernel's debugfs would show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Holders: table slots not yet reclaimed plus a private holder.
    pub client_count: u32,
    /// Slots of the current table naming the channel.
    pub table_count: u32,
    /// Whether a private request holds the channel.
    pub held_privately: bool,
}

pub(crate) struct EngineShared {
    state: Mutex<EngineState>,
    pub(crate) grace: GraceDomain,
    /// On its own cache line: every lookup loads it, and the control path writes the state
    /// beside it far more often than it publishes a table.
    pub(crate) table: CachePadded<Published<TableSnapshot>>,
}

impl Drop for EngineShared {
    fn drop(&mut self) {
        // No reader exists (each holds an `Arc` to this), so nothing can see the table.
        lock(&self.state).release_everything();
    }
}

/// A handle on the engine; cheap to clone, every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<EngineShared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A channel held for exclusive use, from [`Engine::request_channel`]. Dereferences to the
/// [`Channel`]; releasing it (or dropping it) hands the channel back.
pub struct PrivateChannel {
    shared: Arc<EngineShared>,
    channel: Arc<Channel>,
    released: bool,
}

impl PrivateChannel {
    /// Hands the channel back; its resources are freed if nothing else holds it, and its
    /// device turns public again once no channel of it is held privately.
    pub fn release(mut self) -> Result<(), EngineError> {
        self.released = true;
        self.release_now()
    }

    fn release_now(&self) -> Result<(), EngineError> {
        let mut state = lock(&self.shared.state);
        state.release_private(self.channel.id())?;
        state.reclaim(&self.shared.grace);
        Ok(())
    }
}

impl std::ops::Deref for PrivateChannel {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        &self.channel
    }
}

impl Drop for PrivateChannel {
    fn drop(&mut self) {
        if !self.released {
            if let Err(err) = self.release_now() {
                let state = lock(&self.shared.state);
                state.warn(&format!(
                    "releasing private channel {}: {err}",
                    self.channel.id()
                ));
            }
        }
    }
}

impl std::fmt::Debug for PrivateChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PrivateChannel")
            .field(&*self.channel)
            .finish()
    }
}

/// A reference on a channel held by a data-path client that still has operations in flight
/// there after the table moved off it: the channel's resources stay until this is dropped.
pub(crate) struct ChannelHold {
    shared: Arc<EngineShared>,
    id: ChannelId,
}

impl Drop for ChannelHold {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.unhold(self.id);
        state.reclaim(&self.shared.grace);
    }
}

/// One data-path client per CPU, for as long as this lives.
pub(crate) struct CpuClaim {
    shared: Arc<EngineShared>,
    cpu: usize,
}

impl Drop for CpuClaim {
    fn drop(&mut self) {
        lock(&self.shared.state).release_client_cpu(self.cpu);
    }
}

impl Engine {
    /// Takes a reference on channel `id`, which must be referenced already. For the data
    /// path's migration, never per operation.
    pub(crate) fn hold_channel(&self, id: ChannelId) -> Result<ChannelHold, EngineError> {
        self.state().hold(id)?;
        Ok(ChannelHold {
            shared: Arc::clone(&self.shared),
            id,
        })
    }

    /// Reserves `cpu` for one data-path client.
    pub(crate) fn claim_client_cpu(&self, cpu: usize) -> Result<CpuClaim, EngineError> {
        self.state().claim_client_cpu(cpu)?;
        Ok(CpuClaim {
            shared: Arc::clone(&self.shared),
            cpu,
        })
    }

    /// An engine with no device and no client.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        if config.possible_cpus == 0 || config.possible_cpus > MAX_CPUS {
            return Err(EngineError::InvalidConfig(format!(
                "possible_cpus is {}, must be 1..={MAX_CPUS}",
                config.possible_cpus
            )));
        }
        if let Some(&cpu) = config
            .online_cpus
            .iter()
            .find(|&&c| c >= config.possible_cpus)
        {
            return Err(EngineError::UnknownCpu {
                cpu,
                possible: config.possible_cpus,
            });
        }
        if config.table_capabilities.is_empty() {
            return Err(EngineError::InvalidConfig(
                "table_capabilities is empty".to_string(),
            ));
        }
        let mut online = vec![false; config.possible_cpus];
        for &cpu in &config.online_cpus {
            online[cpu] = true;
        }
        let table_caps: Vec<Capability> = config.table_capabilities.iter().collect();
        let empty = TableSnapshot::empty(&table_caps, config.possible_cpus);
        let state = EngineState::new(config.possible_cpus, online, table_caps, config.log);
        Ok(Engine {
            shared: Arc::new(EngineShared {
                state: Mutex::new(state),
                grace: GraceDomain::new(),
                table: CachePadded::new(Published::new(Box::new(empty))),
            }),
        })
    }

    fn state(&self) -> crate::sync::MutexGuard<'_, EngineState> {
        lock(&self.shared.state)
    }

    /// Rebuilds the table, publishes it, and retires the previous one.
    fn rebalance(&self, state: &mut EngineState) {
        state.rebalance();
        // SAFETY: the state lock serialises writers, and the previous snapshot is retired
        // under a grace period begun after the replacement; only `reclaim` drops it.
        let previous = unsafe { self.shared.table.replace(Box::new(state.build_snapshot())) };
        let grace_period = self.shared.grace.begin();
        // SAFETY: the state lock is held, so the snapshot just published is still current and
        // cannot be retired under us.
        unsafe { self.shared.table.read() }.set_settle(grace_period);
        state.retire(grace_period, previous);
        state.reclaim(&self.shared.grace);
    }

    /// Registers a device. A public device is rebalanced into the table; an always-private
    /// one only becomes available to [`Engine::request_channel`].
    pub fn register_device(&self, spec: DeviceSpec) -> Result<DeviceId, EngineError> {
        let private = spec.private;
        let mut state = self.state();
        let id = state.register(spec)?;
        if !private {
            self.rebalance(&mut state);
        }
        Ok(id)
    }

    /// Unregisters a device, legal while clients exist: it leaves the device list, the table
    /// is rebalanced off it, and its channels are released once their last holder (a private
    /// holder, or a reader still inside its grace period) lets go. Channels still privately
    /// held are reported through the log hook as a warning and in the report.
    pub fn unregister_device(&self, id: DeviceId) -> Result<UnregisterReport, EngineError> {
        let mut state = self.state();
        state.delist(id)?;
        self.rebalance(&mut state);
        let report = state.unregister_report(id);
        if !report.held_privately.is_empty() {
            let held: Vec<String> = report
                .held_privately
                .iter()
                .map(|c| c.to_string())
                .collect();
            state.warn(&format!(
                "device {id} unregistered while {} channel(s) are still held privately: {}",
                held.len(),
                held.join(", ")
            ));
        }
        Ok(report)
    }

    /// Registers a client (`dmaengine_get`); the first client populates the table. Returns
    /// the number of clients now registered.
    pub fn get_client(&self) -> usize {
        let mut state = self.state();
        state.clients += 1;
        if state.clients == 1 {
            self.rebalance(&mut state);
        }
        state.clients
    }

    /// Unregisters a client (`dmaengine_put`); the last client empties the table. Returns
    /// the number of clients left.
    pub fn put_client(&self) -> Result<usize, EngineError> {
        let mut state = self.state();
        if state.clients == 0 {
            return Err(EngineError::NoClients);
        }
        state.clients -= 1;
        if state.clients == 0 {
            self.rebalance(&mut state);
        }
        Ok(state.clients)
    }

    /// Takes a channel for exclusive use: the first channel, in registration then channel
    /// order, of a device offering every capability in `mask`, that nobody holds and that
    /// `filter` accepts. Its device turns private and leaves the table at the next rebalance;
    /// a public device with several channels is only taken when none of them is in use.
    ///
    /// The channel is held until the returned [`PrivateChannel`] is released or dropped; only
    /// its holder can release it, and the engine outlives it. `filter` runs under the engine's
    /// control lock and must not call back into the engine.
    pub fn request_channel(
        &self,
        mask: CapMask,
        mut filter: impl FnMut(&Channel) -> bool,
    ) -> Result<PrivateChannel, EngineError> {
        let mut state = self.state();
        state.reclaim(&self.shared.grace);
        let channel = state.request_private(mask, &mut filter)?;
        Ok(PrivateChannel {
            shared: Arc::clone(&self.shared),
            channel,
            released: false,
        })
    }

    /// Marks a CPU online or offline and rebalances if that changed anything.
    pub fn set_cpu_online(&self, cpu: usize, online: bool) -> Result<(), EngineError> {
        let mut state = self.state();
        let possible = state.possible_cpus;
        let slot = state
            .online
            .get_mut(cpu)
            .ok_or(EngineError::UnknownCpu { cpu, possible })?;
        if *slot != online {
            *slot = online;
            self.rebalance(&mut state);
        }
        Ok(())
    }

    /// A lock-free reader of `cpu`'s table slots. `label` names it in grace-period reports.
    pub fn table_reader(&self, cpu: usize) -> Result<TableReader, EngineError> {
        self.labelled_table_reader(cpu, format!("reader@cpu{cpu}"))
    }

    /// As [`Engine::table_reader`], with the label given.
    pub fn labelled_table_reader(
        &self,
        cpu: usize,
        label: String,
    ) -> Result<TableReader, EngineError> {
        let possible = self.state().possible_cpus;
        if cpu >= possible {
            return Err(EngineError::UnknownCpu { cpu, possible });
        }
        Ok(TableReader::new(Arc::clone(&self.shared), cpu, label))
    }

    /// The channel the table gives `cpu` for `cap` (through the control lock; the data path
    /// uses a [`TableReader`]). `None` when no channel offers `cap` or no client exists.
    pub fn table_entry(
        &self,
        cap: Capability,
        cpu: usize,
    ) -> Result<Option<ChannelId>, EngineError> {
        let state = self.state();
        if cpu >= state.possible_cpus {
            return Err(EngineError::UnknownCpu {
                cpu,
                possible: state.possible_cpus,
            });
        }
        let row = state.table_caps.iter().position(|&c| c == cap);
        Ok(row.and_then(|row| state.table[row * state.possible_cpus + cpu]))
    }

    /// A channel's reference counts.
    pub fn channel_counts(&self, id: ChannelId) -> Result<ChannelCounts, EngineError> {
        let state = self.state();
        let entry = state.channel(id)?;
        Ok(ChannelCounts {
            client_count: entry.client_count,
            table_count: entry.table_count,
            held_privately: entry.held_privately,
        })
    }

    /// What a channel has completed so far: operations by outcome and bytes moved, summed
    /// over each time its backend was started.
    pub fn channel_stats(&self, id: ChannelId) -> Result<ChannelStats, EngineError> {
        let backend = Arc::clone(&self.state().channel(id)?.backend);
        Ok(backend.stats())
    }

    /// The possible CPUs: the width of the per-CPU table.
    pub fn possible_cpus(&self) -> usize {
        self.state().possible_cpus
    }

    /// The capabilities that have a table, in walk order.
    pub fn table_order(&self) -> Vec<Capability> {
        self.state().table_caps.clone()
    }

    /// A consistent picture of devices, channels, counts and the table; its `Display` is a
    /// human-readable dump.
    pub fn dump(&self) -> EngineDump {
        let state = self.state();
        EngineDump::capture(&state, self.shared.grace.reader_count())
    }

    /// Frees what retired tables held where their grace period has elapsed; returns how many
    /// retired tables still wait for readers.
    pub fn reclaim(&self) -> usize {
        self.state().reclaim(&self.shared.grace)
    }

    /// Waits, up to `timeout`, until every retired table has been reclaimed. On timeout the
    /// error names the readers that have not reported a quiescent state.
    pub fn synchronize(&self, timeout: Duration) -> Result<(), EngineError> {
        let deadline = Instant::now().checked_add(timeout);
        let backoff = Backoff::new();
        loop {
            let mut state = self.state();
            if state.reclaim(&self.shared.grace) == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let oldest = state.oldest_pending().expect("a retired table is pending");
                return Err(EngineError::GracePeriodTimeout {
                    laggards: self.shared.grace.laggards(oldest),
                });
            }
            drop(state);
            pause(&backoff);
        }
    }
}
