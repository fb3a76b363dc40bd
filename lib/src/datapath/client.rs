//! The per-CPU client: what a pinned polling thread calls to copy and fill through the channel
//! the per-CPU table gives its CPU, and to collect completions.
//!
//! # The fast path and the shared path
//!
//! Each operation starts by checking the table's generation (two loads). When nothing moved, the
//! operation goes to the channel the client already holds for that capability:
//!
//! - a channel no other CPU's slot names is **owned**: descriptors are built and retired with
//!   plain loads and stores, completions are written straight into the caller's buffer, and no
//!   atomic read-modify-write happens at all;
//! - a channel several CPUs share is used **shared**: slots are reserved with one
//!   compare-and-swap, published in ring order, and rung through the doorbell combiner; whichever
//!   client polls retires for everybody and routes each completion to the ring of the client that
//!   submitted it.
//!
//! # Migration
//!
//! When a rebalance moves the table (a device comes or goes, a client arrives or leaves, a CPU
//! goes on- or offline), the client notices at its next call and follows:
//!
//! - new operations go to the new channel, but only once every other client has seen the new
//!   table (its grace period has elapsed), so nobody still treats the channel as theirs alone;
//!   until then submits are refused with [`ClientError::Migrating`];
//! - operations already in flight on the old channel are still polled there until they have all
//!   completed; the client holds an engine reference on the old channel meanwhile, so its
//!   resources outlive the old table without the client having to stop reporting quiescent
//!   states;
//! - an owned channel turns shared the moment another CPU's slot names it; a shared channel
//!   turns owned once its grace period has elapsed and no other client is attached to it (one
//!   still draining there, say).
//!
//! [`Client::poll`] reports the quiescent state, after ringing the doorbell for anything queued
//! without [`OpFlags::SUBMIT`]. A CPU has at most one client.
//!
//! # Backpressure
//!
//! A full descriptor ring refuses the submit with [`SubmitError::RingFull`]; a client with as
//! many operations in flight on a channel as its completion ring holds is refused with
//! [`ClientError::CompletionRingFull`]. Neither loses anything: poll, then retry.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capability::Capability;
use crate::engine::{ChannelHold, ChannelId, CpuClaim, Engine, EngineError, TableReader};
use crate::queue::{ChannelQueue, Completion, OpFlags, QueueHandle, SubmitError};

/// Settings of a client.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    /// Operations one client may have in flight on one channel (rounded up to a power of two):
    /// the size of its completion ring there.
    pub completion_ring: usize,
    /// How long dropping a client waits for its operations in flight to complete.
    pub drain_timeout: Duration,
    /// How long [`Client::new`] waits for the other clients to see the table (after that,
    /// submits are refused with [`ClientError::Migrating`] until they have).
    pub settle_timeout: Duration,
    /// When the table gives this CPU no channel (the last device went away), do copies and
    /// fills on the calling CPU instead of refusing them with [`ClientError::NoChannel`];
    /// they complete at the next poll like any other operation.
    pub cpu_fallback: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            completion_ring: 4096,
            drain_timeout: Duration::from_secs(5),
            settle_timeout: Duration::from_millis(200),
            cpu_fallback: false,
        }
    }
}

/// Why a client refused an operation, or could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The table gives this CPU no channel for the capability (no device offers it, or the
    /// CPU is offline).
    NoChannel(Capability),
    /// The client is moving to a new channel and waits for the other clients to see the new
    /// table; poll, then retry.
    Migrating,
    /// As many operations are in flight on the channel as the completion ring holds; poll,
    /// then retry.
    CompletionRingFull {
        /// Operations in flight on the channel.
        in_flight: u32,
    },
    /// The channel refused the operation (ring full, bad buffer, zero length, failed or
    /// removed channel).
    Submit(SubmitError),
    /// The operation is longer than its buffer.
    BufferTooSmall {
        /// Bytes asked for.
        len: usize,
        /// Bytes the buffer holds.
        capacity: usize,
    },
    /// Every route of the channel is taken by other clients.
    TooManyClients(ChannelId),
    /// The engine refused (unknown CPU).
    Engine(EngineError),
    /// The thread could not be pinned to the CPU, or the current CPU is unknown.
    Pin(usize),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoChannel(cap) => {
                write!(f, "the table gives this CPU no {} channel", cap.name())
            }
            ClientError::Migrating => f.write_str(
                "moving to a new channel; waiting for the other CPUs to see the new table",
            ),
            ClientError::CompletionRingFull { in_flight } => write!(
                f,
                "completion ring full: {in_flight} operation(s) in flight on this channel"
            ),
            ClientError::Submit(err) => err.fmt(f),
            ClientError::BufferTooSmall { len, capacity } => {
                write!(f, "{len} bytes asked of a {capacity}-byte buffer")
            }
            ClientError::TooManyClients(id) => {
                write!(f, "channel {id} has no free completion route")
            }
            ClientError::Engine(err) => err.fmt(f),
            ClientError::Pin(cpu) => write!(f, "cannot pin this thread to cpu {cpu}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<SubmitError> for ClientError {
    fn from(err: SubmitError) -> Self {
        ClientError::Submit(err)
    }
}

impl From<EngineError> for ClientError {
    fn from(err: EngineError) -> Self {
        ClientError::Engine(err)
    }
}

/// What a client has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Operations accepted.
    pub submitted: u64,
    /// Completions returned by [`Client::poll`].
    pub completed: u64,
    /// Table generations followed.
    pub migrations: u64,
    /// Operations accepted on an owned channel.
    pub owned_ops: u64,
    /// Operations accepted on a shared channel.
    pub shared_ops: u64,
    /// Operations done on the calling CPU for want of a channel ([`ClientConfig::cpu_fallback`]).
    pub cpu_ops: u64,
}

/// A channel the client submits to or still drains.
struct Attachment {
    id: ChannelId,
    handle: Box<dyn QueueHandle>,
    /// Operations that may be in flight through the handle (its completion ring's size).
    completion_capacity: usize,
    /// The handle owns its queue.
    owned: bool,
    in_flight: u32,
    /// Some capability's table slot names the channel now.
    current: bool,
    /// Entered in the current generation: no submit before its grace period has elapsed.
    pending: bool,
    /// No other CPU's slot names it: may be owned once the grace period has elapsed.
    exclusive: bool,
    /// The engine reference that keeps the channel while operations drain from it after the
    /// table moved off it.
    hold: Option<ChannelHold>,
}

impl Attachment {
    /// Shared now, but the table names it for this CPU alone and nobody else is attached.
    fn may_own(&self) -> bool {
        self.exclusive && !self.owned && self.handle.queue().attached() == 1
    }

    /// Leaves owned mode (announcing what was built first).
    fn share(&mut self) {
        self.handle.share();
        self.owned = false;
    }
}

/// The client's own software queue: where operations go when the table gives the CPU no
/// channel and the client falls back on the CPU.
struct CpuQueue {
    handle: Box<dyn QueueHandle>,
    capacity: usize,
    in_flight: u32,
}

impl CpuQueue {
    /// A queue whose ring holds as many operations as a completion ring of `completion_ring`.
    fn new(completion_ring: usize) -> CpuQueue {
        let slots = (completion_ring + 1).next_power_of_two().clamp(16, 1 << 16);
        let queue = crate::soft::private_queue(slots.trailing_zeros());
        let mut handle = queue
            .attach(completion_ring)
            .expect("a new queue has free routes");
        // SAFETY: the queue was just made and only this handle reaches it.
        unsafe { handle.own() };
        CpuQueue {
            capacity: handle.completion_capacity(),
            handle,
            in_flight: 0,
        }
    }
}

/// What the table says of one capability, as a migration reads it.
struct Wanted {
    cap: Capability,
    id: ChannelId,
    /// No other CPU's slot names the channel.
    exclusive: bool,
    /// The started channel, for one the client is not attached to yet.
    queue: Option<Arc<dyn ChannelQueue>>,
}

/// A CPU's handle on the data path. See the module documentation.
///
/// ```
/// use std::sync::Arc;
/// use dmaplane::datapath::{Client, ClientConfig};
/// use dmaplane::emu::{EmuConfig, EmulatedDevice, PoolMemory};
/// use dmaplane::ioat::{IoatConfig, IoatDevice};
/// use dmaplane::{Completion, OpFlags};
/// use dmaplane::mem::{DmaPool, DmaPoolConfig};
/// use dmaplane::{Engine, EngineConfig};
///
/// let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
/// // SAFETY: every buffer handed to the device below outlives its operation.
/// let memory = Arc::new(unsafe { PoolMemory::new(pool.clone()) });
/// let device = EmulatedDevice::new(EmuConfig::default(), memory).unwrap();
/// let ioat = IoatDevice::probe("emu0", device.registers(), Some(device.config_space()),
///                              pool.clone(), IoatConfig::default()).unwrap();
/// let engine = Engine::new(EngineConfig::with_cpus(1)).unwrap();
/// engine.register_device(ioat.spec()).unwrap();
///
/// let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
/// let mut src = pool.alloc(4096, 64).unwrap();
/// let dst = pool.alloc(4096, 64).unwrap();
/// src.write_at(0, &[7u8; 4096]).unwrap();
/// // SAFETY: both blocks live, untouched, until the completion is polled.
/// unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 42, OpFlags::SUBMIT) }.unwrap();
/// let mut done = [Completion::default(); 4];
/// let mut got = 0;
/// while got == 0 {
///     got = client.poll(&mut done);
/// }
/// assert_eq!(done[0].user_data, 42);
/// assert_eq!(dst.to_vec(), vec![7u8; 4096]);
/// ```
pub struct Client {
    engine: Engine,
    reader: TableReader,
    generation: Option<u64>,
    /// Per capability: index in `attachments` of the channel the table gives this CPU.
    lanes: [Option<u8>; Capability::COUNT],
    /// Per capability: the channel the table gives this CPU and the client could attach.
    lane_ids: [Option<ChannelId>; Capability::COUNT],
    /// Per capability, the channel the table names whose completion routes were all taken
    /// when this client tried to attach (reported as `TooManyClients`, not `NoChannel`).
    crowded: [Option<ChannelId>; Capability::COUNT],
    attachments: Vec<Attachment>,
    config: ClientConfig,
    stats: ClientStats,
    /// The client's own software queue, made on first use ([`ClientConfig::cpu_fallback`]).
    on_cpu: Option<CpuQueue>,
    _cpu: CpuClaim,
}

impl Client {
    /// A client for `cpu` (the calling thread's current CPU when `None`), registered with the
    /// engine as a channel client. It does not pin the thread; see [`Client::pinned`].
    pub fn new(
        engine: &Engine,
        cpu: Option<usize>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let cpu = match cpu {
            Some(cpu) => cpu,
            None => crate::cpu::current_cpu().ok_or(ClientError::Pin(usize::MAX))?,
        };
        let claim = engine.claim_client_cpu(cpu)?;
        let reader = engine.labelled_table_reader(cpu, format!("client@cpu{cpu}"))?;
        engine.get_client();
        let mut client = Client {
            engine: engine.clone(),
            reader,
            generation: None,
            lanes: [None; Capability::COUNT],
            lane_ids: [None; Capability::COUNT],
            crowded: [None; Capability::COUNT],
            attachments: Vec::new(),
            config,
            stats: ClientStats::default(),
            on_cpu: None,
            _cpu: claim,
        };
        client.wait_settled(config.settle_timeout);
        Ok(client)
    }

    /// Makes a client for `cpu`, then pins the calling thread to it. A refused client leaves
    /// the thread's affinity as it was.
    pub fn pinned(
        engine: &Engine,
        cpu: usize,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let table_width = engine.possible_cpus();
        if cpu >= table_width {
            return Err(ClientError::Engine(EngineError::UnknownCpu {
                cpu,
                possible: table_width,
            }));
        }
        // core_affinity aborts the process for a CPU past its fixed-size set; refuse CPUs the
        // machine cannot have before asking it.
        let (possible, _) = crate::cpu::system_cpus();
        if cpu >= possible.min(crate::datapath::worker::MAX_PINNABLE_CPU) {
            return Err(ClientError::Pin(cpu));
        }
        let client = Client::new(engine, Some(cpu), config)?;
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(ClientError::Pin(cpu));
        }
        Ok(client)
    }

    /// The CPU whose table slots this client follows.
    pub fn cpu(&self) -> usize {
        self.reader.cpu()
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// What the client has done.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Operations accepted and not yet returned by [`Client::poll`].
    pub fn in_flight(&self) -> u64 {
        self.attachments
            .iter()
            .map(|a| u64::from(a.in_flight))
            .sum::<u64>()
            + self
                .on_cpu
                .as_ref()
                .map_or(0, |cpu| u64::from(cpu.in_flight))
    }

    /// The channel the client submits `cap` operations to, and whether it owns it.
    pub fn channel(&mut self, cap: Capability) -> Option<(ChannelId, bool)> {
        self.refresh();
        let att = &self.attachments[usize::from(self.lanes[cap.index()]?)];
        Some((att.id, att.owned))
    }

    /// Polls until every pending channel may be used or `timeout` passes.
    fn wait_settled(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh();
            self.activate_settled();
            let waiting = self.attachments.iter().any(|a| a.current && a.pending);
            if !waiting || Instant::now() >= deadline {
                return;
            }
            self.poll(&mut []);
            std::thread::yield_now();
        }
    }

    /// Follows the table if it moved since the last call.
    #[inline]
    fn refresh(&mut self) {
        let generation = self.reader.generation();
        if generation != self.generation {
            self.migrate(generation);
        }
    }

    #[cold]
    fn migrate(&mut self, generation: Option<u64>) {
        self.generation = generation;
        self.stats.migrations += 1;
        // What the table says now, per capability.
        let mut wanted: Vec<Wanted> = Vec::new();
        for cap in Capability::TABLE_ORDER {
            let Some((channel, exclusive)) = self.reader.lookup_entry(cap) else {
                continue;
            };
            let id = channel.id();
            let known = self.attachments.iter().any(|a| a.id == id)
                || wanted.iter().any(|w| w.id == id && w.queue.is_some());
            let queue = if known {
                None
            } else {
                channel.backend().queue()
            };
            wanted.push(Wanted {
                cap,
                id,
                exclusive,
                queue,
            });
        }
        for att in &mut self.attachments {
            att.handle.submit();
            let entry = wanted.iter().find(|w| w.id == att.id);
            att.current = entry.is_some();
            att.exclusive = entry.is_some_and(|w| w.exclusive);
            // Another CPU may start on the channel once this generation settles; by then
            // this client must be out of owned mode.
            if att.owned && !(att.current && att.exclusive) {
                att.share();
            }
            if att.current {
                att.hold = None;
            } else if att.in_flight > 0 && att.hold.is_none() {
                // The old table still references the channel: this client reports quiescent
                // states only for the table it follows, and it follows the new one only now.
                att.hold = self.engine.hold_channel(att.id).ok();
            }
        }
        self.release_drained();
        let mut crowded_ids = Vec::new();
        for want in &mut wanted {
            let Some(queue) = want.queue.take() else {
                continue;
            };
            if self.attachments.iter().any(|a| a.id == want.id) {
                continue;
            }
            // A new handle is shared: nobody owns the channel once this generation settles,
            // and this client submits nothing to it before then (`pending`).
            let Some(handle) = queue.attach(self.config.completion_ring) else {
                crowded_ids.push(want.id); // no route left: this capability gets no lane
                continue;
            };
            self.attachments.push(Attachment {
                id: want.id,
                completion_capacity: handle.completion_capacity(),
                handle,
                owned: false,
                in_flight: 0,
                current: true,
                pending: true,
                exclusive: want.exclusive,
                hold: None,
            });
        }
        self.lane_ids = [None; Capability::COUNT];
        self.crowded = [None; Capability::COUNT];
        for want in &wanted {
            if self.attachments.iter().any(|a| a.id == want.id) {
                self.lane_ids[want.cap.index()] = Some(want.id);
            } else if crowded_ids.contains(&want.id) {
                self.crowded[want.cap.index()] = Some(want.id);
            }
        }
        self.remap_lanes();
    }

    /// Lets go of channels that are no longer current and have nothing in flight.
    fn release_drained(&mut self) {
        if self
            .attachments
            .iter()
            .all(|att| att.current || att.in_flight > 0)
        {
            return;
        }
        let (keep, drained): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|att| att.current || att.in_flight > 0);
        self.attachments = keep;
        for att in drained {
            // SAFETY: nothing of ours is in flight there: every completion was popped.
            unsafe { att.handle.detach() };
        }
        self.remap_lanes();
    }
    /// Points each capability's lane at its channel's position after attachments moved.
    fn remap_lanes(&mut self) {
        let Client {
            lanes,
            lane_ids,
            attachments,
            ..
        } = self;
        for (lane, id) in lanes.iter_mut().zip(lane_ids.iter()) {
            *lane = id
                .and_then(|id| attachments.iter().position(|a| a.id == id))
                .map(|i| i as u8);
        }
    }

    /// Activates pending channels, and turns exclusive shared ones owned, once the current
    /// table has settled.
    fn activate_settled(&mut self) {
        let waiting = self
            .attachments
            .iter()
            .any(|a| a.current && (a.pending || a.may_own()));
        if !waiting || !self.reader.settled_at(self.generation) {
            return;
        }
        for att in &mut self.attachments {
            if !att.current {
                continue;
            }
            att.pending = false;
            if att.may_own() {
                // SAFETY: the current table is settled: every client has acted on it (clients
                // report quiescent states only for the table they follow, `quiescent_at`). In
                // it no other CPU's slot names this channel (and a CPU has one client), and
                // this is the only client attached to it: those that used it before have
                // drained and let go. Nobody enters it before a later table settles, and this
                // client leaves owned mode as soon as it sees that table, before its next
                // quiescent state.
                unsafe { att.handle.own() };
                att.owned = true;
            }
        }
    }

    /// The attachment `cap` operations go to, ready for one more operation.
    #[inline]
    fn lane(&mut self, cap: Capability) -> Result<&mut Attachment, ClientError> {
        self.refresh();
        let Some(index) = self.lanes[cap.index()] else {
            return Err(match self.crowded[cap.index()] {
                Some(id) => ClientError::TooManyClients(id),
                None => ClientError::NoChannel(cap),
            });
        };
        let index = usize::from(index);
        if self.attachments[index].pending {
            self.activate_settled();
            if self.attachments[index].pending {
                return Err(ClientError::Migrating);
            }
        }
        let att = &mut self.attachments[index];
        if att.in_flight as usize >= att.completion_capacity {
            return Err(ClientError::CompletionRingFull {
                in_flight: att.in_flight,
            });
        }
        Ok(att)
    }

    fn accepted(&mut self, cap: Capability) {
        let index = usize::from(self.lanes[cap.index()].expect("lane just used"));
        let att = &mut self.attachments[index];
        att.in_flight += 1;
        self.stats.submitted += 1;
        if att.owned {
            self.stats.owned_ops += 1;
        } else {
            self.stats.shared_ops += 1;
        }
    }

    /// Queues a copy of `len` bytes from `src` to `dst` (DMA memory: the pool's, or memory
    /// registered with it). An operation longer than one descriptor is split but completes
    /// once. With [`OpFlags::FENCE`] it starts only after every operation queued before it on
    /// the channel has finished; with [`OpFlags::SUBMIT`] the doorbell rings at once.
    ///
    /// # Safety
    ///
    /// Both buffers must stay allocated, and nothing may read `dst` or write either buffer,
    /// until [`Client::poll`] has returned the operation's completion: the device accesses
    /// them asynchronously. (The safe [`super::buffers::BufferClient`] enforces this by owning
    /// the buffers.)
    pub unsafe fn copy(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), ClientError> {
        let fallback = self.config.cpu_fallback;
        let att = match self.lane(Capability::Memcpy) {
            Ok(att) => att,
            Err(ClientError::NoChannel(_)) if fallback => {
                // SAFETY: forwarded contract.
                return self.on_cpu(|cpu| unsafe { cpu.copy(dst, src, len, user_data, flags) });
            }
            Err(err) => return Err(err),
        };
        // SAFETY: forwarded contract.
        unsafe { att.handle.copy(dst, src, len, user_data, flags) }?;
        self.accepted(Capability::Memcpy);
        Ok(())
    }

    /// Queues a fill of `len` bytes at `dst` with the 64-bit `pattern` repeated (byte `i`
    /// gets byte `i % 8` of the pattern, little-endian). Flags as for [`Client::copy`].
    ///
    /// # Safety
    ///
    /// As for [`Client::copy`], for `dst`.
    pub unsafe fn fill(
        &mut self,
        dst: *mut u8,
        pattern: u64,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), ClientError> {
        let fallback = self.config.cpu_fallback;
        let att = match self.lane(Capability::Fill) {
            Ok(att) => att,
            Err(ClientError::NoChannel(_)) if fallback => {
                // SAFETY: forwarded contract.
                return self.on_cpu(|cpu| unsafe { cpu.fill(dst, pattern, len, user_data, flags) });
            }
            Err(err) => return Err(err),
        };
        // SAFETY: forwarded contract.
        unsafe { att.handle.fill(dst, pattern, len, user_data, flags) }?;
        self.accepted(Capability::Fill);
        Ok(())
    }

    /// Queues an operation on the client's own software queue, carried out on this CPU at a
    /// later poll like any device's work.
    fn on_cpu(
        &mut self,
        queue: impl FnOnce(&mut dyn QueueHandle) -> Result<(), SubmitError>,
    ) -> Result<(), ClientError> {
        let ring = self.config.completion_ring;
        let cpu = self.on_cpu.get_or_insert_with(|| CpuQueue::new(ring));
        if cpu.in_flight as usize >= cpu.capacity {
            return Err(ClientError::CompletionRingFull {
                in_flight: cpu.in_flight,
            });
        }
        queue(&mut *cpu.handle)?;
        cpu.in_flight += 1;
        self.stats.submitted += 1;
        self.stats.cpu_ops += 1;
        Ok(())
    }

    /// Rings the doorbell of every channel for what was queued since the last ring: one
    /// doorbell per batch.
    pub fn submit(&mut self) {
        for att in &mut self.attachments {
            att.handle.submit();
        }
        if let Some(cpu) = &mut self.on_cpu {
            cpu.handle.submit();
        }
    }

    /// How many one-descriptor operations of `cap` could be queued now without a refusal.
    pub fn capacity(&mut self, cap: Capability) -> usize {
        match self.lane(cap) {
            Ok(att) => {
                let room = att.completion_capacity - att.in_flight as usize;
                // A fenced operation may need a second slot; count the plain kind.
                room.min(att.handle.capacity() as usize)
            }
            Err(_) => 0,
        }
    }

    /// Collects finished operations into `out` and returns how many it wrote; operations that
    /// do not fit come with the next call. Also follows the table, retires for the other
    /// clients of shared channels, rings the doorbell for anything queued without SUBMIT,
    /// and reports the client's quiescent state when it holds nothing from an older table.
    pub fn poll(&mut self, out: &mut [Completion]) -> usize {
        self.refresh();
        let mut filled = 0;
        if let Some(cpu) = &mut self.on_cpu {
            filled = cpu.handle.poll(out);
            cpu.in_flight -= filled as u32;
        }
        let mut draining = false;
        for att in &mut self.attachments {
            // A pending channel may still have an owner that has not seen the new table: its
            // retire side is not ours to touch yet.
            let got = if att.pending {
                att.handle.collect(&mut out[filled..])
            } else {
                att.handle.poll(&mut out[filled..])
            };
            att.in_flight -= got as u32;
            filled += got;
            // Without a hold (the engine refused one) the old table's reference is all that
            // keeps the channel: keep it by not reporting a quiescent state.
            draining |= !att.current && att.in_flight > 0 && att.hold.is_none();
        }
        self.stats.completed += filled as u64;
        if self.attachments.iter().any(|a| !a.current) {
            self.release_drained();
        }
        self.activate_settled();
        if !draining {
            // Nothing built may stay unannounced past the quiescent state: once the table
            // settles, another CPU may start reserving where this client's owned head was.
            self.submit();
            // Only for the table this client follows: if another was published meanwhile,
            // the next call follows it first.
            self.reader.quiescent_at(self.generation);
        }
        filled
    }

    /// Submits what is queued and polls until nothing is in flight or `timeout` passes;
    /// returns the completions collected.
    pub fn drain(&mut self, timeout: Duration) -> Vec<Completion> {
        self.submit();
        let deadline = Instant::now() + timeout;
        let mut collected = Vec::new();
        let mut batch = [Completion::default(); 64];
        while self.in_flight() > 0 && Instant::now() < deadline {
            let n = self.poll(&mut batch);
            collected.extend_from_slice(&batch[..n]);
            if n == 0 {
                std::thread::yield_now();
            }
        }
        collected
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let timeout = self.config.drain_timeout;
        self.drain(timeout);
        for att in std::mem::take(&mut self.attachments) {
            if att.in_flight > 0 {
                // The device may still write where these operations point: keep the channel
                // referenced and its route claimed for good rather than let its memory be
                // reused or another client inherit the completions.
                std::mem::forget(att);
            } else {
                // SAFETY: nothing of ours is in flight there: every completion was popped.
                unsafe { att.handle.detach() };
            }
        }
        let _ = self.engine.put_client();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("cpu", &self.cpu())
            .field("generation", &self.generation)
            .field(
                "channels",
                &self.attachments.iter().map(|a| a.id).collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .finish()
    }
}
