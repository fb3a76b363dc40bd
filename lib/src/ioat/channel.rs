//! The IOAT v3 channel driver: one hardware channel, driven through its registers and its
//! descriptor ring, the same code on silicon and on the emulated device.
//!
//! Life of a channel: [`IoatChannel::start`] resets it (suspend, clear errors, reset, wait for
//! the self-clearing bit), programs CHANCTRL, the completion address and the chain address, and
//! pushes a null descriptor through to prove it works. Operations are then *built* into ring
//! slots without touching registers, split wherever a descriptor would exceed XFERCAP or the
//! memory stops being IOVA-contiguous; [`IoatChannel::submit`] marks the batch's last descriptor
//! to write the completion word and rings the 16-bit DMACOUNT doorbell once. [`IoatChannel::poll`]
//! reads the completion word from memory (no register access) and retires every operation up to
//! the descriptor it names, one completion per operation.
//!
//! Errors: the channel is programmed to halt on any error and to write the completion word
//! when it does, so a halted status names the last good descriptor; the next one failed. Poll
//! then completes the operations before it, fails the operation holding it with the cause
//! named from CHANERR, clears the error, resets the channel, restarts the chain after the failed
//! operation and carries on. A channel that does not come back is failed as a whole: every
//! outstanding operation completes with an error and later submits are refused. Registers that
//! read all-ones mean the device is gone: the same, with "device removed". Every wait has a
//! timeout.

use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::completion::CompletionWord;
pub use super::error::{ChannelError, OpError, SubmitError};
use super::ring::DescriptorRing;
use super::spec::{
    self, cbver, chan, chancmd, chanctrl, chansts, ctl, device, op, Descriptor,
    NULL_DESCRIPTOR_SIZE,
};
use crate::mem::{DmaPool, Translator};
use crate::mmio::{read64_split, write64_split, RegisterWindow};
use crate::pci::ConfigSpace;

/// How an operation is submitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpFlags(u32);

impl OpFlags {
    /// No flag: queue the operation, ring the doorbell later with `submit`.
    pub const NONE: OpFlags = OpFlags(0);
    /// The operation starts only after every operation queued before it has finished.
    pub const FENCE: OpFlags = OpFlags(1);
    /// Ring the doorbell right after queueing the operation.
    pub const SUBMIT: OpFlags = OpFlags(2);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: OpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for OpFlags {
    type Output = OpFlags;
    fn bitor(self, rhs: OpFlags) -> OpFlags {
        OpFlags(self.0 | rhs.0)
    }
}

/// The end of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// What the submitter passed in.
    pub user_data: u64,
    /// Success, or why not.
    pub result: Result<(), OpError>,
}

/// How long the driver waits for the device.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For a SUSPEND to take effect.
    pub suspend: Duration,
    /// For the RESET bit to clear.
    pub reset: Duration,
    /// For the start-up null descriptor, and for ARMED after a restart.
    pub start: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            suspend: Duration::from_millis(20),
            reset: Duration::from_millis(200),
            start: Duration::from_millis(100),
        }
    }
}

/// Settings of one channel.
#[derive(Clone, Copy, Debug)]
pub struct ChannelConfig {
    /// log2 of the ring size, 4..=16.
    pub ring_order: u32,
    /// Waits.
    pub timeouts: Timeouts,
    /// Polls without progress, with work outstanding, before the driver reads CHANSTS to
    /// catch a halt or removal whose completion write never arrived.
    pub stall_check_polls: u32,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            ring_order: 12,
            timeouts: Timeouts::default(),
            stall_check_polls: 4096,
        }
    }
}

/// Per-slot bookkeeping kept beside the hardware ring.
#[derive(Clone, Copy, Default)]
struct SlotMeta {
    /// The slot holds the last descriptor of an operation, whose `user_data` this is.
    ends_op: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Running,
    Failed,
    Removed,
}

/// Counters of one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Operations completed successfully.
    pub ops_ok: u64,
    /// Operations completed with an error.
    pub ops_failed: u64,
    /// Descriptors handed to the device (data and null).
    pub descriptors: u64,
    /// Doorbell writes.
    pub doorbells: u64,
    /// Error recoveries (halt, reset, restart).
    pub recoveries: u64,
}

/// One IOAT channel, owned by one thread.
pub struct IoatChannel {
    regs: Arc<dyn RegisterWindow>,
    config_space: Option<Arc<dyn ConfigSpace>>,
    base: usize,
    version: u8,
    split64: bool,
    max_transfer: u64,
    fill_supported: bool,
    /// Lock-free view of the pool's translations, for the per-operation path.
    translator: Translator,
    /// Ring and completion word: memory the device reads and writes. Freed on drop only once
    /// the device is known to have stopped; leaked otherwise (see `Drop`).
    ring: ManuallyDrop<DescriptorRing>,
    meta: Box<[SlotMeta]>,
    completion: ManuallyDrop<CompletionWord>,
    /// Next slot to build into (free-running).
    head: u32,
    /// Slots up to here have been announced with the doorbell.
    submitted: u32,
    /// Oldest slot not retired.
    tail: u32,
    /// Slot index the device's 16-bit count started from at the last (re)start.
    count_base: u32,
    /// The completion address last acted on.
    last_completed: u64,
    stalled_polls: u32,
    health: Health,
    config: ChannelConfig,
    stats: ChannelStats,
    /// Reused plan of the operation being built, so building allocates nothing.
    pieces: Vec<Piece>,
}

/// One descriptor's worth of a transfer: destination, source (none for a fill), length.
type Piece = (u64, Option<u64>, u32);

/// What a function's device registers say about it, read once at probe and at channel start.
pub(crate) struct Identity {
    /// CBVER.
    pub(crate) version: u8,
    /// Usable channels: CHANCNT, capped at what v3 functions can expose.
    pub(crate) channels: usize,
    /// DMACAPABILITY offers block fill.
    pub(crate) fill_supported: bool,
    /// Largest transfer of one descriptor.
    pub(crate) max_transfer: u64,
}

impl Identity {
    /// Reads the registers; refuses a removed device and parts older than v3.
    pub(crate) fn read(regs: &dyn RegisterWindow) -> Result<Identity, ChannelError> {
        let version = regs.read8(device::CBVER);
        if version == u8::MAX {
            return Err(ChannelError::DeviceRemoved);
        }
        if version < cbver::V3_0 {
            return Err(ChannelError::UnsupportedVersion(version));
        }
        Ok(Identity {
            version,
            channels: usize::from(regs.read8(device::CHANCNT) & device::CHANCNT_MASK)
                .min(spec::MAX_CHANNELS),
            fill_supported: regs.read32(device::DMACAPABILITY) & spec::dmacap::FILL != 0,
            max_transfer: spec::max_transfer(regs.read8(device::XFERCAP)),
        })
    }
}

/// Reads all-ones: what a removed PCI device returns.
fn all_ones_u64(value: u64) -> bool {
    value == u64::MAX
}

impl IoatChannel {
    /// Starts channel `index` of the device behind `regs`: reset, program, prove with a null
    /// descriptor. `config_space` is needed on parts before v3.3 to clear CHANERR_INT.
    pub fn start(
        regs: Arc<dyn RegisterWindow>,
        config_space: Option<Arc<dyn ConfigSpace>>,
        index: usize,
        pool: &DmaPool,
        config: ChannelConfig,
    ) -> Result<IoatChannel, ChannelError> {
        if !(4..=16).contains(&config.ring_order) {
            return Err(ChannelError::BadRingOrder(config.ring_order));
        }
        let Identity {
            version,
            channels,
            fill_supported,
            max_transfer,
        } = Identity::read(&*regs)?;
        if index >= channels {
            return Err(ChannelError::NoSuchChannel {
                index,
                count: channels,
            });
        }
        if let Some(cs) = &config_space {
            let command = cs
                .read16(spec::config::COMMAND)
                .map_err(|e| ChannelError::Config(e.to_string()))?;
            cs.write16(
                spec::config::COMMAND,
                command | spec::config::COMMAND_BUS_MASTER,
            )
            .map_err(|e| ChannelError::Config(e.to_string()))?;
        }
        let ring = DescriptorRing::new(pool, config.ring_order)?;
        let completion = CompletionWord::new(pool)?;
        let slots = ring.size() as usize;
        let mut channel = IoatChannel {
            regs,
            config_space,
            base: spec::channel_base(index),
            version,
            split64: cbver::needs_split_64(version),
            max_transfer,
            fill_supported,
            translator: pool.translator(),
            ring: ManuallyDrop::new(ring),
            meta: vec![SlotMeta::default(); slots].into_boxed_slice(),
            completion: ManuallyDrop::new(completion),
            head: 0,
            submitted: 0,
            tail: 0,
            count_base: 0,
            last_completed: 0,
            stalled_polls: 0,
            health: Health::Running,
            config,
            stats: ChannelStats::default(),
            pieces: Vec::with_capacity(16),
        };
        channel.reset()?;
        channel.program_and_arm()?;
        channel.prove_with_null()?;
        Ok(channel)
    }

    fn reg8(&self, offset: usize) -> u8 {
        self.regs.read8(self.base + offset)
    }

    fn chansts(&self) -> u64 {
        read64_split(&*self.regs, self.base + chan::CHANSTS, self.split64)
    }

    fn chanerr(&self) -> u32 {
        self.regs.read32(self.base + chan::CHANERR)
    }

    /// Waits until `done(chansts)` or the timeout, yielding in between.
    fn wait_for(
        &self,
        waiting_for: &'static str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), ChannelError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if done(self) {
                return Ok(());
            }
            let status = self.chansts();
            if all_ones_u64(status) {
                return Err(ChannelError::DeviceRemoved);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ChannelError::Timeout {
                    waiting_for,
                    chansts: status,
                    chanerr: self.chanerr(),
                });
            }
            std::thread::yield_now();
        }
    }

    /// The reset sequence: suspend a running channel, clear its errors, reset it, and wait for
    /// the reset to finish. Leaves the channel HALTED with its count at zero.
    fn reset(&mut self) -> Result<(), ChannelError> {
        let status = self.chansts();
        if all_ones_u64(status) {
            return Err(ChannelError::DeviceRemoved);
        }
        let state = chansts::state(status);
        if state == chansts::ACTIVE || state == chansts::IDLE {
            self.regs
                .write8(self.base + chan::CHANCMD, chancmd::SUSPEND);
            self.wait_for("suspend", self.config.timeouts.suspend, |c| {
                let s = chansts::state(c.chansts());
                s != chansts::ACTIVE && s != chansts::IDLE
            })?;
        }
        self.clear_errors()?;
        self.regs.write8(self.base + chan::CHANCMD, chancmd::RESET);
        self.wait_for("reset", self.config.timeouts.reset, |c| {
            c.reg8(chan::CHANCMD) & chancmd::RESET == 0
        })?;
        Ok(())
    }

    /// Writes CHANERR back (write-1-to-clear) and, before v3.3, CHANERR_INT too: those parts
    /// stay HALTED until both are clear.
    fn clear_errors(&self) -> Result<(), ChannelError> {
        let errors = self.chanerr();
        self.regs.write32(self.base + chan::CHANERR, errors);
        if self.version < cbver::V3_3 {
            if let Some(cs) = &self.config_space {
                let mirrored = cs
                    .read32(spec::config::CHANERR_INT)
                    .map_err(|e| ChannelError::Config(e.to_string()))?;
                cs.write32(spec::config::CHANERR_INT, mirrored)
                    .map_err(|e| ChannelError::Config(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Programs control, completion address and chain start (the slot at `tail`), after a
    /// reset, and waits for ARMED.
    fn program_and_arm(&mut self) -> Result<(), ChannelError> {
        self.regs.write16(
            self.base + chan::CHANCTRL,
            chanctrl::ANY_ERR_ABORT_EN | chanctrl::ERR_COMPLETION_EN,
        );
        let completion_iova = self.completion.iova();
        write64_split(
            &*self.regs,
            self.base + chan::CHANCMP,
            completion_iova,
            self.split64,
        );
        let chain = self.ring.bus_address(self.tail);
        write64_split(
            &*self.regs,
            self.base + chan::CHAINADDR,
            chain,
            self.split64,
        );
        self.count_base = self.tail;
        self.wait_for(
            "ARMED after programming the chain",
            self.config.timeouts.start,
            |c| chansts::state(c.chansts()) == chansts::ARMED,
        )
    }

    /// Pushes a null descriptor through and waits for its completion, proving the channel.
    fn prove_with_null(&mut self) -> Result<(), ChannelError> {
        let null = Descriptor {
            size: NULL_DESCRIPTOR_SIZE,
            control: ctl::with_op(op::COPY, ctl::NULL),
            ..Descriptor::default()
        };
        self.ring.fill(self.head, &null);
        self.meta[self.slot(self.head)] = SlotMeta { ends_op: None };
        self.head = self.head.wrapping_add(1);
        self.submit();
        let target = self.ring.bus_address(self.head.wrapping_sub(1));
        self.wait_for(
            "the start-up null descriptor",
            self.config.timeouts.start,
            |c| chansts::completed_address(c.completion_word()) == target,
        )?;
        let mut none = [];
        self.poll(&mut none);
        Ok(())
    }

    #[inline]
    fn slot(&self, index: u32) -> usize {
        (index & (self.ring.size() - 1)) as usize
    }

    /// Slots free for building now (one slot always stays empty).
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.ring.size() - 1 - self.head.wrapping_sub(self.tail)
    }

    /// Operations built or submitted and not yet completed... in descriptors.
    #[inline]
    pub fn outstanding_descriptors(&self) -> u32 {
        self.head.wrapping_sub(self.tail)
    }

    /// The channel's counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Largest transfer one descriptor may carry.
    pub fn max_transfer(&self) -> u64 {
        self.max_transfer
    }

    /// Whether the device offers block fill.
    pub fn fill_supported(&self) -> bool {
        self.fill_supported
    }

    fn accepting(&self) -> Result<(), SubmitError> {
        match self.health {
            Health::Running => Ok(()),
            Health::Failed => Err(SubmitError::ChannelFailed),
            Health::Removed => Err(SubmitError::DeviceRemoved),
        }
    }

    /// Plans the descriptors of a transfer: `(dest iova, src iova or None, len)` pieces, each
    /// within XFERCAP and IOVA-contiguous on both sides.
    fn plan(
        &mut self,
        dst: usize,
        src: Option<usize>,
        len: usize,
        pieces: &mut Vec<Piece>,
    ) -> Result<(), SubmitError> {
        pieces.clear();
        let cap = self.max_transfer.min(u64::from(u32::MAX)) as usize;
        // Pieces beyond what the ring could take are counted, not stored: the operation will
        // be refused, and the plan must not grow without bound on the way.
        let keep = self.capacity() as usize + 1;
        let mut count = 0u32;
        let mut done = 0usize;
        while done < len {
            let want = (len - done).min(cap);
            let (dst_iova, dst_run) = self
                .translator
                .translate(dst + done, want)
                .map_err(SubmitError::Unmapped)?;
            let mut piece = dst_run.min(want);
            let src_iova = match src {
                Some(src) => {
                    let (iova, run) = self
                        .translator
                        .translate(src + done, piece)
                        .map_err(SubmitError::Unmapped)?;
                    piece = piece.min(run);
                    Some(iova)
                }
                None => None,
            };
            if pieces.len() < keep {
                pieces.push((dst_iova, src_iova, piece as u32));
            }
            count = count.saturating_add(1);
            done += piece;
        }
        if count as usize > pieces.len() {
            let free = self.capacity();
            return Err(SubmitError::RingFull {
                needed: count,
                free,
            });
        }
        Ok(())
    }

    /// Queues a copy of `len` bytes from `src` to `dst` (virtual addresses of DMA memory).
    ///
    /// # Safety
    ///
    /// Both buffers must stay allocated, and nothing may read `dst` or write either buffer,
    /// until the operation's completion has been returned by [`IoatChannel::poll`]: the device
    /// accesses them asynchronously.
    pub unsafe fn copy(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.accepting()?;
        if len == 0 {
            return Err(SubmitError::ZeroLength);
        }
        let mut pieces = std::mem::take(&mut self.pieces);
        let built = self
            .plan(dst as usize, Some(src as usize), len, &mut pieces)
            .and_then(|()| self.build(&pieces, 0, user_data, flags));
        self.pieces = pieces;
        built
    }

    /// Queues a fill of `len` bytes at `dst` with the 64-bit `pattern` repeated: byte `i` of
    /// the buffer gets byte `i % 8` of the pattern in little-endian order. Any length and
    /// alignment works: a descriptor restarts the pattern at its own start, so each piece after
    /// a split carries the pattern rotated to the phase it starts at.
    ///
    /// # Safety
    ///
    /// As for [`IoatChannel::copy`], for `dst`.
    pub unsafe fn fill(
        &mut self,
        dst: *mut u8,
        pattern: u64,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.accepting()?;
        if !self.fill_supported {
            return Err(SubmitError::FillUnsupported);
        }
        if len == 0 {
            return Err(SubmitError::ZeroLength);
        }
        let mut pieces = std::mem::take(&mut self.pieces);
        let built = self
            .plan(dst as usize, None, len, &mut pieces)
            .and_then(|()| self.build(&pieces, pattern, user_data, flags));
        self.pieces = pieces;
        built
    }

    /// Queues a null descriptor that completes with `user_data` (a marker or a flush).
    pub fn null(&mut self, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        self.accepting()?;
        self.build(&[], 0, user_data, flags)
    }

    /// Writes the descriptors of one operation, all or nothing.
    fn build(
        &mut self,
        pieces: &[Piece],
        pattern: u64,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let fence = flags.contains(OpFlags::FENCE) && self.head != self.tail;
        // A fence orders this operation after everything before it. IOAT's fence bit orders
        // the descriptors *after* the one carrying it, so it goes on the previous descriptor if
        // the device has not been told about it yet, else on a null descriptor of its own.
        let fence_on_null = fence && self.submitted == self.head;
        let needed = pieces.len().max(1) as u32 + u32::from(fence_on_null);
        let free = self.capacity();
        if needed > free {
            return Err(SubmitError::RingFull { needed, free });
        }
        if fence_on_null {
            let null = Descriptor {
                size: NULL_DESCRIPTOR_SIZE,
                control: ctl::with_op(op::COPY, ctl::NULL | ctl::FENCE),
                ..Descriptor::default()
            };
            self.push(&null, None);
        } else if fence {
            self.ring
                .set_control_bits(self.head.wrapping_sub(1), ctl::FENCE);
        }
        if pieces.is_empty() {
            let null = Descriptor {
                size: NULL_DESCRIPTOR_SIZE,
                control: ctl::with_op(op::COPY, ctl::NULL),
                ..Descriptor::default()
            };
            self.push(&null, Some(user_data));
        }
        let mut offset = 0u64;
        for (i, &(dest, src, size)) in pieces.iter().enumerate() {
            let phase = (offset % 8) as u32;
            offset += u64::from(size);
            let descriptor = match src {
                Some(src) => Descriptor {
                    size,
                    control: ctl::with_op(op::COPY, 0),
                    src_or_pattern: src,
                    dest,
                    ..Descriptor::default()
                },
                None => Descriptor {
                    size,
                    control: ctl::with_op(op::FILL, 0),
                    src_or_pattern: pattern.rotate_right(8 * phase),
                    dest,
                    ..Descriptor::default()
                },
            };
            let last = i + 1 == pieces.len();
            self.push(&descriptor, last.then_some(user_data));
        }
        if flags.contains(OpFlags::SUBMIT) {
            self.submit();
        }
        Ok(())
    }

    #[inline]
    fn push(&mut self, descriptor: &Descriptor, ends_op: Option<u64>) {
        self.ring.fill(self.head, descriptor);
        let slot = self.slot(self.head);
        self.meta[slot] = SlotMeta { ends_op };
        self.head = self.head.wrapping_add(1);
    }

    /// Rings the doorbell for everything built since the last one: the batch's last descriptor
    /// asks for a completion write, then DMACOUNT gets the new running count.
    pub fn submit(&mut self) {
        if self.submitted == self.head || self.health != Health::Running {
            return;
        }
        self.ring
            .set_control_bits(self.head.wrapping_sub(1), ctl::COMPLETION_UPDATE);
        self.stats.descriptors += u64::from(self.head.wrapping_sub(self.submitted));
        self.submitted = self.head;
        self.ring_doorbell();
    }

    fn ring_doorbell(&mut self) {
        // Descriptor stores must be visible to the device before it hears of them. On x86-64
        // stores are not reordered with the uncached doorbell store, so a compiler fence would
        // do; a release fence is that and also orders the emulator thread's acquire load.
        fence(Ordering::Release);
        let count = self.submitted.wrapping_sub(self.count_base) as u16;
        self.regs.write16(self.base + chan::DMACOUNT, count);
        self.stats.doorbells += 1;
    }

    fn completion_word(&self) -> u64 {
        self.completion.load()
    }

    /// Position, counted from `tail`, of the submitted slot whose bus address is `address`.
    fn find_submitted(&self, address: u64) -> Option<u32> {
        let submitted = self.submitted.wrapping_sub(self.tail);
        (0..submitted).find(|&k| self.ring.bus_address(self.tail.wrapping_add(k)) == address)
    }

    /// Retires up to `count` slots from `tail`, reporting each operation that ends among them,
    /// and stops early when `out` is full. Returns how many slots it retired.
    fn retire(
        &mut self,
        count: u32,
        out: &mut [Completion],
        filled: &mut usize,
        result: Result<(), OpError>,
    ) -> u32 {
        for retired in 0..count {
            let slot = self.slot(self.tail);
            if let Some(user_data) = self.meta[slot].ends_op {
                if *filled == out.len() {
                    return retired;
                }
                self.meta[slot].ends_op = None;
                self.report(out, filled, user_data, result);
            }
            self.tail = self.tail.wrapping_add(1);
        }
        count
    }

    fn report(
        &mut self,
        out: &mut [Completion],
        filled: &mut usize,
        user_data: u64,
        result: Result<(), OpError>,
    ) {
        match result {
            Ok(()) => self.stats.ops_ok += 1,
            Err(_) => self.stats.ops_failed += 1,
        }
        out[*filled] = Completion { user_data, result };
        *filled += 1;
    }

    /// Collects finished operations into `out`, oldest first, and returns how many it wrote.
    /// Operations that do not fit are returned by the next call. A halted channel is recovered
    /// here; a failed or removed one completes everything outstanding with an error, once the
    /// device is known to have stopped touching their buffers.
    pub fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut filled = 0;
        match self.health {
            Health::Running => {}
            Health::Failed => {
                self.abandon(OpError::ChannelFailed, Health::Failed, out, &mut filled);
                return filled;
            }
            Health::Removed => {
                self.abandon(OpError::DeviceRemoved, Health::Removed, out, &mut filled);
                return filled;
            }
        }
        if self.tail == self.submitted {
            return 0;
        }
        let word = self.completion_word();
        if chansts::completed_address(word) == self.last_completed
            && chansts::state(word) != chansts::HALTED
        {
            self.stalled_polls += 1;
            if self.stalled_polls >= self.config.stall_check_polls {
                self.stalled_polls = 0;
                self.check_stall(out, &mut filled);
            }
            return filled;
        }
        self.stalled_polls = 0;
        self.advance(word, out, &mut filled);
        filled
    }

    /// Acts on a status value (from the completion word or CHANSTS): retires everything up to
    /// the descriptor it names, and recovers if it says HALTED.
    fn advance(&mut self, status: u64, out: &mut [Completion], filled: &mut usize) {
        let address = chansts::completed_address(status);
        if let Some(k) = self.find_submitted(address) {
            if self.retire(k + 1, out, filled, Ok(())) < k + 1 {
                // `out` is full; the rest of the batch comes next time. Remember the last slot
                // actually retired, not `address`: the batch's end may land on the slot of an
                // older `last_completed` once the ring laps, and must not look like no progress.
                self.last_completed = self.ring.bus_address(self.tail.wrapping_sub(1));
                return;
            }
            self.last_completed = address;
        }
        if chansts::state(status) == chansts::HALTED {
            self.recover(out, filled);
        }
    }

    /// Overwrites the completion word with a non-halted status naming `address`, so a status
    /// the device wrote before a reset is not acted on twice.
    fn prime_completion(&mut self, address: u64) {
        self.completion.prime(address | chansts::ARMED);
        self.last_completed = address;
    }

    /// No completion progress for a while: read the status register, which catches a halt
    /// whose completion write was lost, and a device that is gone.
    fn check_stall(&mut self, out: &mut [Completion], filled: &mut usize) {
        let status = self.chansts();
        if all_ones_u64(status) {
            self.abandon(OpError::DeviceRemoved, Health::Removed, out, filled);
        } else if chansts::state(status) == chansts::HALTED {
            // CHANSTS names the last good descriptor as the completion word would have.
            self.advance(status, out, filled);
        }
    }

    /// The channel halted: the operation at `tail` failed. Complete it with the cause, skip
    /// the rest of its descriptors, reset, and restart the chain after it.
    fn recover(&mut self, out: &mut [Completion], filled: &mut usize) {
        let errors = self.chanerr();
        if errors == u32::MAX {
            self.abandon(OpError::DeviceRemoved, Health::Removed, out, filled);
            return;
        }
        // The failing operation runs from `tail` to the first descriptor that ends an
        // operation; the device halted inside it, so it was submitted whole.
        let span = (0..self.submitted.wrapping_sub(self.tail))
            .find(|&k| {
                self.meta[self.slot(self.tail.wrapping_add(k))]
                    .ends_op
                    .is_some()
            })
            .map_or(0, |k| k + 1);
        if span > 0 && *filled == out.len() {
            return; // no room to report it; the halted status stays and the next poll retries
        }
        // The device is halted: it no longer touches the failed operation's buffers.
        self.retire(span, out, filled, Err(OpError::Device { chanerr: errors }));
        self.stats.recoveries += 1;
        let restarted = self.reset().and_then(|()| {
            self.prime_completion(self.ring.bus_address(self.tail.wrapping_sub(1)));
            self.program_and_arm()
        });
        match restarted {
            Ok(()) if self.submitted != self.tail => self.ring_doorbell(),
            Ok(()) => {}
            Err(ChannelError::DeviceRemoved) => {
                self.abandon(OpError::DeviceRemoved, Health::Removed, out, filled)
            }
            Err(_) => self.abandon(OpError::ChannelFailed, Health::Failed, out, filled),
        }
    }

    /// Whether the device is known not to be working through descriptors: gone (all-ones),
    /// or in any state but ACTIVE. Only then may operations be completed without their
    /// descriptors having run, since only then will the device not touch their buffers.
    fn device_stopped(&self) -> bool {
        let status = self.chansts();
        all_ones_u64(status) || chansts::state(status) != chansts::ACTIVE
    }

    /// Fails every outstanding operation with `cause` and stops accepting work. Operations are
    /// completed only once the device has stopped (a later poll retries until it has), and
    /// those that do not fit in `out` are reported by later polls.
    fn abandon(
        &mut self,
        cause: OpError,
        health: Health,
        out: &mut [Completion],
        filled: &mut usize,
    ) {
        self.health = health;
        self.submitted = self.head;
        if self.tail == self.head || !self.device_stopped() {
            return;
        }
        while self.tail != self.head && *filled < out.len() {
            let slot = self.slot(self.tail);
            if let Some(user_data) = self.meta[slot].ends_op.take() {
                self.report(out, filled, user_data, Err(cause));
            }
            self.tail = self.tail.wrapping_add(1);
        }
    }

    /// Whether the channel still accepts work.
    pub fn is_running(&self) -> bool {
        self.health == Health::Running
    }

    /// Whether the descriptor at free-running `index` carries a fence (for tests).
    pub fn descriptor_has_fence(&self, index: u32) -> bool {
        self.ring.has_fence(index)
    }

    /// Free-running index of the next descriptor to be built (for tests).
    pub fn head(&self) -> u32 {
        self.head
    }
}

impl Drop for IoatChannel {
    fn drop(&mut self) {
        // The device must stop using the ring and the completion word before they go back to
        // the pool. If it cannot be stopped (a reset that times out), the memory is leaked:
        // better a lost ring than a device writing into someone else's allocation.
        let stopped = self.reset().is_ok() || self.device_stopped();
        if stopped {
            // SAFETY: the fields are dropped exactly once, here, and the device no longer
            // accesses them (reset done, or CHANSTS shows it gone or not running).
            unsafe {
                ManuallyDrop::drop(&mut self.ring);
                ManuallyDrop::drop(&mut self.completion);
            }
        }
    }
}

impl fmt::Debug for IoatChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoatChannel")
            .field("base", &format_args!("{:#x}", self.base))
            .field("version", &format_args!("{:#x}", self.version))
            .field("ring_size", &self.ring.size())
            .field("head", &self.head)
            .field("submitted", &self.submitted)
            .field("tail", &self.tail)
            .field("health", &self.health)
            .finish()
    }
}
