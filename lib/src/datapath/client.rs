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
//! When the table moves, the client follows it (see `migrate.rs`): new operations go to the
//! new channel once the other clients have seen the table, and what was in flight on the old
//! one is polled there to the end.
//!
//! # Backpressure
//!
//! A full descriptor ring refuses the submit with [`SubmitError::RingFull`]; a client with as
//! many operations in flight on a channel as its completion ring holds is refused with
//! [`ClientError::CompletionRingFull`]. Neither loses anything: poll, then retry.

use std::fmt;
use std::time::{Duration, Instant};

use super::migrate::Attachment;
use crate::capability::Capability;
use crate::engine::{ChannelId, CpuClaim, Engine, EngineError, TableReader};
use crate::queue::{Completion, OpFlags, QueueHandle, SubmitError};

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
    /// When the table gives this CPU no channel for an operation (the last device went away,
    /// or no device offers the operation: compare, CRC-32C, copy with CRC, dualcast), do it
    /// on the calling CPU instead of refusing it with [`ClientError::NoChannel`]; it
    /// completes at a later poll like any other operation. (The CPU's software queue performs
    /// every operation.)
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

/// A CPU's handle on the data path. See the module documentation.
///
/// ```
/// use dmaplane::{Client, ClientConfig, Completion, OpFlags, Setup};
///
/// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
/// let mut client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
/// let mut src = setup.pool().alloc(4096, 64).unwrap();
/// let dst = setup.pool().alloc(4096, 64).unwrap();
/// src.write_at(0, &[7u8; 4096]).unwrap();
/// // SAFETY: both blocks live, untouched, until the completion is polled.
/// unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 42, OpFlags::SUBMIT) }.unwrap();
/// let mut done = [Completion::default(); 4];
/// while client.poll(&mut done) == 0 {}
/// assert_eq!(done[0].user_data, 42);
/// assert_eq!(dst.to_vec(), vec![7u8; 4096]);
/// ```
pub struct Client {
    pub(super) engine: Engine,
    pub(super) reader: TableReader,
    pub(super) generation: Option<u64>,
    /// Per capability: index in `attachments` of the channel the table gives this CPU.
    pub(super) lanes: [Option<u8>; Capability::COUNT],
    /// Per capability: the channel the table gives this CPU and the client could attach.
    pub(super) lane_ids: [Option<ChannelId>; Capability::COUNT],
    /// Per capability, the channel the table names whose completion routes were all taken
    /// when this client tried to attach (reported as `TooManyClients`, not `NoChannel`).
    pub(super) crowded: [Option<ChannelId>; Capability::COUNT],
    pub(super) attachments: Vec<Attachment>,
    pub(super) config: ClientConfig,
    pub(super) stats: ClientStats,
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

    /// Queues a compare of the `len` bytes at `a` and `b` on the channel the table gives
    /// this CPU for [`Capability::Compare`]. The completion's
    /// [`value`](Completion::value) is 0 when they are equal, else 1 + the offset of the
    /// first byte that differs ([`Completion::mismatch_at`]). Flags as for [`Client::copy`].
    ///
    /// Like every operation, it goes where the table says. When the table gives this CPU no
    /// channel for it (no device offers compare, though one may offer copy), it is refused
    /// with [`ClientError::NoChannel`]`(Capability::Compare)`, or, with
    /// [`ClientConfig::cpu_fallback`], carried out on this CPU by the client's own software
    /// queue at a later poll. A channel whose device does not compare refuses it with
    /// [`SubmitError::Unsupported`].
    ///
    /// ```
    /// use dmaplane::{Client, ClientConfig, Completion, OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let mut client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut a = setup.pool().alloc(4096, 64).unwrap();
    /// let mut b = setup.pool().alloc(4096, 64).unwrap();
    /// a.write_at(0, &[1u8; 4096]).unwrap();
    /// b.write_at(0, &[1u8; 4096]).unwrap();
    /// b.write_at(1000, &[2u8]).unwrap();
    /// // SAFETY: both blocks live, unwritten, until the completion is polled.
    /// unsafe { client.compare(a.as_ptr(), b.as_ptr(), 4096, 7, OpFlags::SUBMIT) }.unwrap();
    /// let mut done = [Completion::default(); 4];
    /// while client.poll(&mut done) == 0 {}
    /// assert_eq!((done[0].user_data, done[0].result), (7, Ok(())));
    /// assert_eq!(done[0].mismatch_at(), Some(1000));
    /// ```
    ///
    /// # Safety
    ///
    /// Both buffers must stay allocated, and nothing may write either, until [`Client::poll`]
    /// has returned the operation's completion.
    pub unsafe fn compare(
        &mut self,
        a: *const u8,
        b: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), ClientError> {
        self.queue_on(Capability::Compare, |queue| {
            // SAFETY: forwarded contract.
            unsafe { queue.compare(a, b, len, user_data, flags) }
        })
    }

    /// Queues a CRC-32C of the `len` bytes at `src`, continuing from `initial` (the CRC-32C
    /// of the data before them; 0 to start), on the channel the table gives this CPU for
    /// [`Capability::Crc32c`]. The completion's value is the standard CRC-32C
    /// ([`crc32c`](crate::queue::op::crc32c), the `crc32c` crates' value), in its low 32
    /// bits ([`Completion::crc`]). Flags, channel and fallback as for [`Client::compare`].
    ///
    /// ```
    /// use dmaplane::{Client, ClientConfig, Completion, OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let mut client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut src = setup.pool().alloc(64, 64).unwrap();
    /// src.write_at(0, b"123456789").unwrap();
    /// // SAFETY: the block lives, unwritten, until the completion is polled.
    /// unsafe { client.crc32c(src.as_ptr(), 9, 0, 1, OpFlags::SUBMIT) }.unwrap();
    /// let mut done = [Completion::default(); 4];
    /// while client.poll(&mut done) == 0 {}
    /// assert_eq!(done[0].result, Ok(()));
    /// assert_eq!(done[0].crc(), 0xE306_9283);
    /// ```
    ///
    /// # Safety
    ///
    /// `src` must stay allocated, and nothing may write it, until [`Client::poll`] has
    /// returned the operation's completion.
    pub unsafe fn crc32c(
        &mut self,
        src: *const u8,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), ClientError> {
        self.queue_on(Capability::Crc32c, |queue| {
            // SAFETY: forwarded contract.
            unsafe { queue.crc32c(src, len, initial, user_data, flags) }
        })
    }

    /// Queues a copy of `len` bytes from `src` to `dst` that also computes their CRC-32C
    /// continuing from `initial`, as [`Client::crc32c`] does, on the channel the table gives
    /// this CPU for [`Capability::CopyCrc`]. Flags, channel and fallback as for
    /// [`Client::compare`].
    ///
    /// ```
    /// use dmaplane::{Client, ClientConfig, Completion, OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let mut client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut src = setup.pool().alloc(64, 64).unwrap();
    /// let dst = setup.pool().alloc(64, 64).unwrap();
    /// src.write_at(0, b"123456789").unwrap();
    /// // SAFETY: both blocks live, untouched, until the completion is polled.
    /// unsafe { client.copy_crc(dst.as_mut_ptr(), src.as_ptr(), 9, 0, 1, OpFlags::SUBMIT) }
    ///     .unwrap();
    /// let mut done = [Completion::default(); 4];
    /// while client.poll(&mut done) == 0 {}
    /// assert_eq!(done[0].crc(), 0xE306_9283);
    /// assert_eq!(&dst.to_vec()[..9], b"123456789");
    /// ```
    ///
    /// # Safety
    ///
    /// As for [`Client::copy`].
    pub unsafe fn copy_crc(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), ClientError> {
        self.queue_on(Capability::CopyCrc, |queue| {
            // SAFETY: forwarded contract.
            unsafe { queue.copy_crc(dst, src, len, initial, user_data, flags) }
        })
    }

    /// Queues a copy of `len` bytes from `src` to both `dst1` and `dst2` on the channel the
    /// table gives this CPU for [`Capability::Dualcast`]. Buffers that overlap are refused
    /// with [`SubmitError::InvalidArgument`]. Flags, channel and fallback as for
    /// [`Client::compare`].
    ///
    /// ```
    /// use dmaplane::{Client, ClientConfig, Completion, OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let mut client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut src = setup.pool().alloc(512, 64).unwrap();
    /// let (one, two) = (setup.pool().alloc(512, 64).unwrap(), setup.pool().alloc(512, 64).unwrap());
    /// src.write_at(0, &[5u8; 512]).unwrap();
    /// // SAFETY: the blocks live, untouched, until the completion is polled.
    /// unsafe {
    ///     client.dualcast(one.as_mut_ptr(), two.as_mut_ptr(), src.as_ptr(), 512, 3, OpFlags::SUBMIT)
    /// }
    /// .unwrap();
    /// let mut done = [Completion::default(); 4];
    /// while client.poll(&mut done) == 0 {}
    /// assert_eq!((done[0].user_data, done[0].result), (3, Ok(())));
    /// assert_eq!((one.to_vec(), two.to_vec()), (vec![5u8; 512], vec![5u8; 512]));
    /// ```
    ///
    /// # Safety
    ///
    /// As for [`Client::copy`], for both destinations.
    pub unsafe fn dualcast(
        &mut self,
        dst1: *mut u8,
        dst2: *mut u8,
        src: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), ClientError> {
        self.queue_on(Capability::Dualcast, |queue| {
            // SAFETY: forwarded contract.
            unsafe { queue.dualcast(dst1, dst2, src, len, user_data, flags) }
        })
    }

    /// Queues an operation of `cap` through `queue` on the channel the table gives this CPU
    /// for `cap`, or on the client's own software queue when it has none and falls back on
    /// the CPU. (Copy and fill spell this out for themselves: they are the hot path.)
    fn queue_on(
        &mut self,
        cap: Capability,
        queue: impl FnOnce(&mut dyn QueueHandle) -> Result<(), SubmitError>,
    ) -> Result<(), ClientError> {
        let fallback = self.config.cpu_fallback;
        let att = match self.lane(cap) {
            Ok(att) => att,
            Err(ClientError::NoChannel(_)) if fallback => return self.on_cpu(queue),
            Err(err) => return Err(err),
        };
        queue(&mut *att.handle)?;
        self.accepted(cap);
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
