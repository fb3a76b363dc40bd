//! One started IOAT channel as every submitter of it sees it: the registers, the descriptor
//! ring and its per-slot bookkeeping, the indices producers and the retirer share, and the
//! retire side (completion decode, error recovery, abandonment).
//!
//! A channel is used in one of two ways, chosen by the data path:
//!
//! - **owned**: one thread builds, rings and retires. Its indices are advanced with plain
//!   loads and stores, and it retires without the token: no atomic read-modify-write at all.
//! - **shared**: producers reserve slots with [`SlotReservation`], publish in ring order and
//!   ring through the [`Doorbell`] combiner; any of them may retire while holding the
//!   [`RetireToken`], delivering each completion through [`Routes`] to the client that
//!   submitted it.
//!
//! The two never overlap on one channel; the data path's migration protocol (grace periods of
//! the per-CPU table) guarantees it, which is why the owned entry points are `unsafe`.
//!
//! Errors: the channel is programmed to halt on any error and to write the completion word
//! when it does, so a halted status names the last good descriptor; the next one failed. The
//! retirer completes the operations before it, fails the operation holding it with the cause
//! named from CHANERR, clears the error, resets the channel, restarts the chain after the failed
//! operation and carries on. A channel that does not come back is failed as a whole: every
//! outstanding operation completes with an error and later submits are refused. Registers that
//! read all-ones mean the device is gone: the same, with "device removed". Every wait has a
//! timeout.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_utils::CachePadded;

use super::channel::{ChannelConfig, Completion};
use super::completion::CompletionWord;
use super::error::{ChannelError, OpError};
use super::ring::DescriptorRing;
use super::spec::{
    self, cbver, chan, chancmd, chanctrl, chansts, ctl, device, op, Descriptor,
    NULL_DESCRIPTOR_SIZE,
};
use crate::datapath::reserve::{Doorbell, SlotReservation};
use crate::datapath::route::{RetireGuard, RetireToken, Routes};
use crate::mem::DmaPool;
use crate::mmio::{read64_split, write64_split, RegisterWindow};
use crate::pci::ConfigSpace;

/// Clients that may be attached to one channel at once.
pub const MAX_CLIENTS_PER_CHANNEL: usize = 256;

/// Per-slot bookkeeping kept beside the hardware ring, written by the slot's producer before
/// it publishes the slot and read by the retirer after.
#[derive(Clone, Copy, Default)]
pub(crate) struct SlotMeta {
    /// The slot holds the last descriptor of an operation.
    pub(crate) ends_op: bool,
    /// The route (client) the operation's completion goes to.
    pub(crate) route: u16,
    /// Bytes the slot's descriptor moves.
    pub(crate) bytes: u32,
    /// What the submitter passed in.
    pub(crate) user_data: u64,
}

pub(crate) struct MetaCell(std::cell::UnsafeCell<SlotMeta>);

/// Channel health, readable by producers without the retire token.
pub(crate) const RUNNING: u8 = 0;
pub(crate) const FAILED: u8 = 1;
pub(crate) const REMOVED: u8 = 2;
/// Shut down by its backend (the engine freed it); nothing more may be submitted.
pub(crate) const CLOSED: u8 = 3;
/// Being removed: new work is refused ("device removed"), work already accepted runs on.
pub(crate) const DRAINING: u8 = 4;

/// Whether a channel in `health` still works through what it has accepted (and rings for it).
#[inline]
pub(crate) fn works(health: u8) -> bool {
    health == RUNNING || health == DRAINING
}

/// The retire side's own state: touched by the token holder, or by the owner.
#[derive(Default)]
pub(crate) struct RetireState {
    /// Oldest slot not retired.
    tail: u32,
    /// The completion address last acted on.
    last_completed: u64,
    stalled_polls: u32,
    pub(crate) recoveries: u64,
}

/// Where retired completions go.
pub(crate) struct Sink<'a> {
    /// The caller's route and its output buffer, filled directly (owned mode); every other
    /// route, and every completion in shared mode, goes through [`Routes`].
    pub(crate) direct: Option<(u16, &'a mut [Completion], usize)>,
}

impl Sink<'_> {
    /// Routes only.
    pub(crate) fn routed() -> Sink<'static> {
        Sink { direct: None }
    }
}

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

/// A started channel. Shared by its submitters through an `Arc`.
pub struct ChannelCore {
    regs: Arc<dyn RegisterWindow>,
    config_space: Option<Arc<dyn ConfigSpace>>,
    base: usize,
    version: u8,
    split64: bool,
    pub(crate) max_transfer: u64,
    pub(crate) fill_supported: bool,
    config: ChannelConfig,
    pub(crate) pool: DmaPool,
    /// Ring and completion word: memory the device reads and writes. Freed on drop only once
    /// the device is known to have stopped; leaked otherwise (see `Drop`).
    pub(crate) ring: ManuallyDrop<DescriptorRing>,
    completion: ManuallyDrop<CompletionWord>,
    meta: Box<[MetaCell]>,
    /// Reserved and published indices (free-running).
    pub(crate) slots: SlotReservation,
    /// The 16-bit doorbell's writer and the index last announced.
    pub(crate) doorbell: Doorbell,
    /// Slot index the device's 16-bit count started from at the last (re)start. Read and
    /// written only by whoever holds the doorbell (or the owner).
    count_base: AtomicU32,
    /// Slots before this index are retired; published for reservers.
    pub(crate) retired: CachePadded<crate::sync::AtomicU32>,
    token: RetireToken,
    retire: std::cell::UnsafeCell<RetireState>,
    health: AtomicU8,
    /// Operations completed successfully and with an error. Written by the retirer alone
    /// (load and store, no read-modify-write), read by anyone (the hotplug monitor).
    ops_ok: std::sync::atomic::AtomicU64,
    ops_failed: std::sync::atomic::AtomicU64,
    ops_removed: std::sync::atomic::AtomicU64,
    bytes_moved: std::sync::atomic::AtomicU64,
    /// `shut_down` reset the hardware channel; `Drop` must not touch it again.
    reset_done: std::sync::atomic::AtomicBool,
    pub(crate) routes: Routes<Completion>,
}

// SAFETY: the `UnsafeCell`s are accessed under the protocols documented on them: a slot's meta
// by its producer before publication and by the retirer after; the retire state by the token
// holder or the owner. Everything else is immutable or atomic.
unsafe impl Sync for ChannelCore {}
// SAFETY: as above; nothing in the core is tied to a thread.
unsafe impl Send for ChannelCore {}

impl ChannelCore {
    /// Starts channel `index` of the device behind `regs`: reset, program, prove with a null
    /// descriptor. `config_space` is needed on parts before v3.3 to clear CHANERR_INT.
    pub(crate) fn start(
        regs: Arc<dyn RegisterWindow>,
        config_space: Option<Arc<dyn ConfigSpace>>,
        index: usize,
        pool: &DmaPool,
        config: ChannelConfig,
    ) -> Result<Arc<ChannelCore>, ChannelError> {
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
        let slots = ring.size();
        let core = ChannelCore {
            regs,
            config_space,
            base: spec::channel_base(index),
            version,
            split64: cbver::needs_split_64(version),
            max_transfer,
            fill_supported,
            config,
            pool: pool.clone(),
            ring: ManuallyDrop::new(ring),
            completion: ManuallyDrop::new(completion),
            meta: (0..slots)
                .map(|_| MetaCell(std::cell::UnsafeCell::new(SlotMeta::default())))
                .collect(),
            slots: SlotReservation::new(slots, 0),
            doorbell: Doorbell::new(0),
            count_base: AtomicU32::new(0),
            retired: CachePadded::new(crate::sync::AtomicU32::new(0)),
            token: RetireToken::new(),
            retire: std::cell::UnsafeCell::new(RetireState::default()),
            health: AtomicU8::new(RUNNING),
            ops_ok: std::sync::atomic::AtomicU64::new(0),
            ops_failed: std::sync::atomic::AtomicU64::new(0),
            ops_removed: std::sync::atomic::AtomicU64::new(0),
            bytes_moved: std::sync::atomic::AtomicU64::new(0),
            reset_done: std::sync::atomic::AtomicBool::new(false),
            routes: Routes::new(MAX_CLIENTS_PER_CHANNEL),
        };
        core.reset()?;
        core.program_and_arm(0)?;
        core.prove_with_null()?;
        Ok(Arc::new(core))
    }

    /// The channel's health: [`RUNNING`], [`FAILED`], [`REMOVED`] or [`CLOSED`].
    #[inline]
    pub(crate) fn health(&self) -> u8 {
        self.health.load(Ordering::Acquire)
    }

    /// Moves a working channel (running or draining) to `health`; a channel that stopped
    /// keeps its first cause. Returns whether this call stopped it. The caller holds the
    /// doorbell.
    fn set_health(&self, health: u8) -> bool {
        let mut current = self.health();
        while works(current) {
            crate::sync::rmw::note();
            match self
                .health
                .compare_exchange(current, health, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
        false
    }

    /// Ring slots.
    #[inline]
    pub(crate) fn size(&self) -> u32 {
        self.ring.size()
    }

    #[inline]
    fn slot(&self, index: u32) -> usize {
        (index & (self.ring.size() - 1)) as usize
    }

    /// Records the bookkeeping of slot `index`.
    ///
    /// # Safety
    ///
    /// The caller owns slot `index` (reserved it, or is the owner building at its head) and has
    /// not yet published it.
    #[inline]
    pub(crate) unsafe fn set_meta(&self, index: u32, meta: SlotMeta) {
        // SAFETY: nobody else touches an unpublished slot's meta (contract).
        unsafe { *self.meta[self.slot(index)].0.get() = meta }
    }

    /// # Safety
    ///
    /// The caller is the retirer and `index` is published.
    #[inline]
    unsafe fn meta(&self, index: u32) -> SlotMeta {
        // SAFETY: the producer's write happened before the publication the caller observed,
        // and no producer writes the slot again before the retirer releases it (contract).
        unsafe { *self.meta[self.slot(index)].0.get() }
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

    /// Writes the 16-bit doorbell with the running count that announces every slot before
    /// `announce`. The caller holds the doorbell (or is the owner).
    #[inline]
    pub(crate) fn write_dmacount(&self, announce: u32) {
        // Descriptor stores must be visible to the device before it hears of them. On x86-64
        // stores are not reordered with the uncached doorbell store, so a compiler fence would
        // do; a release fence is that and also orders the emulator thread's acquire load.
        std::sync::atomic::fence(Ordering::Release);
        let count = announce.wrapping_sub(self.count_base.load(Ordering::Relaxed)) as u16;
        self.regs.write16(self.base + chan::DMACOUNT, count);
    }

    /// Waits until `done(self)` or the timeout, yielding in between.
    fn wait_for(
        &self,
        waiting_for: &'static str,
        timeout: std::time::Duration,
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
    fn reset(&self) -> Result<(), ChannelError> {
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
    /// reset, and waits for ARMED. The caller holds the doorbell (or is the owner).
    fn program_and_arm(&self, tail: u32) -> Result<(), ChannelError> {
        self.regs.write16(
            self.base + chan::CHANCTRL,
            chanctrl::ANY_ERR_ABORT_EN | chanctrl::ERR_COMPLETION_EN,
        );
        write64_split(
            &*self.regs,
            self.base + chan::CHANCMP,
            self.completion.iova(),
            self.split64,
        );
        write64_split(
            &*self.regs,
            self.base + chan::CHAINADDR,
            self.ring.bus_address(tail),
            self.split64,
        );
        self.count_base.store(tail, Ordering::Relaxed);
        self.wait_for(
            "ARMED after programming the chain",
            self.config.timeouts.start,
            |c| chansts::state(c.chansts()) == chansts::ARMED,
        )
    }

    /// Pushes a null descriptor through slot 0 and waits for its completion, proving the
    /// channel. Runs before anyone else can see the core.
    fn prove_with_null(&self) -> Result<(), ChannelError> {
        let null = Descriptor {
            size: NULL_DESCRIPTOR_SIZE,
            control: ctl::with_op(op::COPY, ctl::NULL | ctl::COMPLETION_UPDATE),
            ..Descriptor::default()
        };
        self.ring.fill(0, &null);
        // SAFETY: the core is not shared yet; slot 0 is ours.
        unsafe { self.set_meta(0, SlotMeta::default()) };
        self.slots.advance_owned(1);
        self.doorbell.announce_owned(1);
        self.write_dmacount(1);
        let target = self.ring.bus_address(0);
        self.wait_for(
            "the start-up null descriptor",
            self.config.timeouts.start,
            |c| chansts::completed_address(c.completion.load()) == target,
        )?;
        // SAFETY: the core is not shared yet.
        unsafe { self.poll_exclusive(&mut Sink::routed()) };
        Ok(())
    }

    /// Slots free for reservation now (one slot always stays empty).
    #[inline]
    pub(crate) fn free_slots(&self, head: u32) -> u32 {
        // Acquire pairs with the retirer's release: its reads of the slots happen before we
        // overwrite them.
        let retired = self.retired.load(Ordering::Acquire);
        (self.size() - 1).saturating_sub(head.wrapping_sub(retired))
    }

    /// Retires what the device has finished, as the channel's only user.
    ///
    /// # Safety
    ///
    /// No other thread uses the channel's retire side, now or concurrently (the owner, or a
    /// core nobody else can see yet).
    pub(crate) unsafe fn poll_exclusive(&self, sink: &mut Sink<'_>) {
        // SAFETY: exclusive use of the retire side (contract).
        let state = unsafe { &mut *self.retire.get() };
        Retirer { core: self, state }.poll(sink);
    }

    /// Retires what the device has finished if no other poller is at it, delivering every
    /// completion through the routes. Returns whether it got to retire.
    pub(crate) fn poll_shared(&self) -> bool {
        let Some(guard) = self.token.try_acquire() else {
            return false;
        };
        // SAFETY: the token makes us the only user of the retire side until `guard` drops.
        let state = unsafe { &mut *self.retire.get() };
        Retirer { core: self, state }.poll(&mut Sink::routed());
        drop::<RetireGuard<'_>>(guard);
        true
    }

    /// Counters of the retire side, for the owner.
    ///
    /// # Safety
    ///
    /// As for [`ChannelCore::poll_exclusive`].
    pub(crate) unsafe fn retire_counters_exclusive(&self) -> (u64, u64, u64) {
        // SAFETY: exclusive use (contract).
        let state = unsafe { &*self.retire.get() };
        let counts = self.completed();
        (counts.ok, counts.failed, state.recoveries)
    }

    /// Operations completed so far.
    pub(crate) fn completed(&self) -> crate::OpCounts {
        crate::OpCounts {
            ok: self.ops_ok.load(Ordering::Relaxed),
            failed: self.ops_failed.load(Ordering::Relaxed),
            removed: self.ops_removed.load(Ordering::Relaxed),
            bytes: self.bytes_moved.load(Ordering::Relaxed),
        }
    }

    /// Descriptors published and not yet retired.
    pub(crate) fn in_flight_descriptors(&self) -> u32 {
        self.slots
            .published()
            .wrapping_sub(self.retired.load(Ordering::Acquire))
    }

    /// Starts an orderly removal: new submits are refused with "device removed", work
    /// already accepted is still rung, run and completed.
    pub(crate) fn begin_draining(&self) {
        let _ =
            self.health
                .compare_exchange(RUNNING, DRAINING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The device is gone, or its work did not drain in time: stop it, so whatever it had not
    /// finished completes with "device removed" at its submitters' next polls.
    pub(crate) fn remove(&self) {
        let _doorbell = self.doorbell.exclusive();
        if self.set_health(REMOVED) && self.reset().is_ok() {
            // See `shut_down`.
            self.reset_done.store(true, Ordering::Release);
        }
    }

    /// Stops the channel for good (its engine reference is gone): later submits are refused,
    /// and the device is reset so it stops reading the ring.
    pub(crate) fn shut_down(&self) {
        let _doorbell = self.doorbell.exclusive();
        // A channel that already stopped keeps its cause (a removal's "device removed").
        if self.set_health(CLOSED) && self.reset().is_ok() {
            // Dropping the core must not reset the hardware channel again: by then the
            // engine may have started a new core on it.
            self.reset_done.store(true, Ordering::Release);
        }
    }

    /// Gives a client's route back, once no retirer can be inside a delivery to it.
    ///
    /// # Safety
    ///
    /// As for [`Routes::detach`].
    pub(crate) unsafe fn detach_route(&self, route: u16) {
        // The token keeps a retirer from still being inside `deliver` (holding the route's
        // producer) when the producer is dropped; detaching is rare, so waiting is fine.
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            if let Some(_guard) = self.token.try_acquire() {
                // SAFETY: forwarded contract.
                unsafe { self.routes.detach(route) };
                return;
            }
            crate::sync::pause(&backoff);
        }
    }

    /// Whether the device is known not to be working through descriptors: gone (all-ones),
    /// or in any state but ACTIVE. Only then may operations be completed without their
    /// descriptors having run, since only then will the device not touch their buffers.
    fn device_stopped(&self) -> bool {
        let status = self.chansts();
        all_ones_u64(status) || chansts::state(status) != chansts::ACTIVE
    }
}

impl Drop for ChannelCore {
    fn drop(&mut self) {
        // The device must stop using the ring and the completion word before they go back to
        // the pool. If it cannot be stopped (a reset that times out), the memory is leaked:
        // better a lost ring than a device writing into someone else's allocation.
        let stopped = self.reset_done.load(Ordering::Acquire)
            || self.reset().is_ok()
            || self.device_stopped();
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

impl std::fmt::Debug for ChannelCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelCore")
            .field("base", &format_args!("{:#x}", self.base))
            .field("version", &format_args!("{:#x}", self.version))
            .field("ring_size", &self.ring.size())
            .field("reserved", &self.slots.reserved())
            .field("published", &self.slots.published())
            .field("announced", &self.doorbell.announced())
            .field("retired", &self.retired.load(Ordering::Relaxed))
            .field("health", &self.health())
            .finish()
    }
}

/// The retire side at work: the core and exclusive access to its retire state.
struct Retirer<'a> {
    core: &'a ChannelCore,
    state: &'a mut RetireState,
}

impl Retirer<'_> {
    fn poll(&mut self, sink: &mut Sink<'_>) {
        match self.core.health() {
            RUNNING | DRAINING => {}
            FAILED | CLOSED => return self.abandon(OpError::ChannelFailed, FAILED, sink),
            _ => return self.abandon(OpError::DeviceRemoved, REMOVED, sink),
        }
        let announced = self.core.doorbell.announced();
        if self.state.tail == announced {
            return;
        }
        let word = self.core.completion.load();
        if chansts::completed_address(word) == self.state.last_completed
            && chansts::state(word) != chansts::HALTED
        {
            self.state.stalled_polls += 1;
            if self.state.stalled_polls >= self.core.config.stall_check_polls {
                self.state.stalled_polls = 0;
                self.check_stall(sink);
            }
            return;
        }
        self.state.stalled_polls = 0;
        self.advance(word, announced, sink);
    }

    /// Position, counted from `tail`, of the announced slot whose bus address is `address`.
    fn find_announced(&self, address: u64, announced: u32) -> Option<u32> {
        let tail = self.state.tail;
        (0..announced.wrapping_sub(tail))
            .find(|&k| self.core.ring.bus_address(tail.wrapping_add(k)) == address)
    }

    /// Hands one completion to its sink; false when it has no room (nothing was taken).
    fn deliver(
        &mut self,
        sink: &mut Sink<'_>,
        meta: SlotMeta,
        result: Result<(), OpError>,
    ) -> bool {
        let completion = Completion {
            user_data: meta.user_data,
            result,
        };
        match &mut sink.direct {
            Some((route, out, filled)) if *route == meta.route => {
                if *filled == out.len() {
                    return false;
                }
                out[*filled] = completion;
                *filled += 1;
            }
            _ => {
                // SAFETY: we are the retirer (token or owner), and read `meta` from a slot
                // published after the route was attached.
                if unsafe { self.core.routes.deliver(meta.route, completion) }.is_err() {
                    return false;
                }
            }
        }
        // Load and store: the retirer is the only writer.
        let bump = |counter: &std::sync::atomic::AtomicU64| {
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed)
        };
        match result {
            Ok(()) => bump(&self.core.ops_ok),
            Err(cause) => {
                bump(&self.core.ops_failed);
                if cause == OpError::DeviceRemoved {
                    bump(&self.core.ops_removed);
                }
            }
        }
        true
    }

    /// Retires up to `count` slots from `tail`, reporting each operation that ends among them,
    /// and stops early when a sink is full. Returns how many slots it retired.
    fn retire(&mut self, count: u32, sink: &mut Sink<'_>, result: Result<(), OpError>) -> u32 {
        let mut retired = 0;
        let mut moved = 0u64;
        while retired < count {
            // SAFETY: the slot is announced, hence published, and we are the retirer.
            let meta = unsafe { self.core.meta(self.state.tail) };
            if meta.ends_op && !self.deliver(sink, meta, result) {
                break;
            }
            if result.is_ok() {
                moved += u64::from(meta.bytes);
            }
            self.state.tail = self.state.tail.wrapping_add(1);
            retired += 1;
        }
        if moved > 0 {
            // Load and store, as in `deliver`: the retirer is the only writer.
            let total = self.core.bytes_moved.load(Ordering::Relaxed);
            self.core
                .bytes_moved
                .store(total + moved, Ordering::Relaxed);
        }
        // Release pairs with the reservers' acquire: our reads of these slots happen before
        // they are overwritten.
        self.core.retired.store(self.state.tail, Ordering::Release);
        retired
    }

    /// Acts on a status value (from the completion word or CHANSTS): retires everything up to
    /// the descriptor it names, and recovers if it says HALTED.
    fn advance(&mut self, status: u64, announced: u32, sink: &mut Sink<'_>) {
        let address = chansts::completed_address(status);
        if let Some(k) = self.find_announced(address, announced) {
            if self.retire(k + 1, sink, Ok(())) < k + 1 {
                // A sink is full; the rest of the batch comes next time. Remember the last slot
                // actually retired, not `address`: the batch's end may land on the slot of an
                // older `last_completed` once the ring laps, and must not look like no progress.
                self.state.last_completed =
                    self.core.ring.bus_address(self.state.tail.wrapping_sub(1));
                return;
            }
            self.state.last_completed = address;
        }
        if chansts::state(status) == chansts::HALTED {
            self.recover(sink);
        }
    }

    /// No completion progress for a while: read the status register, which catches a halt
    /// whose completion write was lost, and a device that is gone.
    fn check_stall(&mut self, sink: &mut Sink<'_>) {
        let status = self.core.chansts();
        if all_ones_u64(status) {
            self.abandon(OpError::DeviceRemoved, REMOVED, sink);
        } else if chansts::state(status) == chansts::HALTED {
            // CHANSTS names the last good descriptor as the completion word would have.
            let announced = self.core.doorbell.announced();
            self.advance(status, announced, sink);
        }
    }

    /// The channel halted: the operation at `tail` failed. Complete it with the cause, skip
    /// the rest of its descriptors, reset, and restart the chain after it. The doorbell is
    /// held throughout, so no producer rings a channel in mid-reset.
    fn recover(&mut self, sink: &mut Sink<'_>) {
        let core = self.core;
        let errors = core.chanerr();
        if errors == u32::MAX {
            self.abandon(OpError::DeviceRemoved, REMOVED, sink);
            return;
        }
        let mut doorbell = core.doorbell.exclusive();
        if !works(core.health()) {
            // Shut down (or failed) meanwhile: nothing may re-arm it.
            drop(doorbell);
            return self.poll(sink);
        }
        let announced = core.doorbell.announced();
        let tail = self.state.tail;
        // The failing operation runs from `tail` to the first descriptor that ends an
        // operation; the device halted inside it, so it was announced whole.
        let span = (0..announced.wrapping_sub(tail))
            // SAFETY: announced slots, read by the retirer.
            .find(|&k| unsafe { core.meta(tail.wrapping_add(k)) }.ends_op)
            .map_or(0, |k| k + 1);
        // The device is halted: it no longer touches the failed operation's buffers.
        if self.retire(span, sink, Err(OpError::Device { chanerr: errors })) < span {
            return; // no room to report it; the halted status stays and the next poll retries
        }
        self.state.recoveries += 1;
        let restarted = core.reset().and_then(|()| {
            let tail = self.state.tail;
            // A status the device wrote before the reset must not be acted on twice.
            let before = core.ring.bus_address(tail.wrapping_sub(1));
            core.completion.prime(before | chansts::ARMED);
            self.state.last_completed = before;
            core.program_and_arm(tail)
        });
        match restarted {
            Ok(()) => {
                if announced != self.state.tail {
                    core.write_dmacount(announced);
                }
                doorbell.set_announced(announced);
                drop(doorbell);
                // Publications made while we held the doorbell were left to us.
                core.doorbell.ring(&core.slots, |target| {
                    if works(core.health()) {
                        core.write_dmacount(target);
                    }
                });
            }
            // The health changes while the doorbell is still held, so no producer that saw the
            // channel running can ring it after its operations are failed.
            Err(ChannelError::DeviceRemoved) => {
                core.set_health(REMOVED);
                drop(doorbell);
                self.abandon(OpError::DeviceRemoved, REMOVED, sink)
            }
            Err(_) => {
                core.set_health(FAILED);
                drop(doorbell);
                self.abandon(OpError::ChannelFailed, FAILED, sink)
            }
        }
    }

    /// Fails every outstanding operation with `cause` and stops accepting work. Operations are
    /// completed only once the device has stopped (a later poll retries until it has), and
    /// those that do not fit are reported by later polls. Producers that publish after this
    /// are caught by the next poll.
    fn abandon(&mut self, cause: OpError, health: u8, sink: &mut Sink<'_>) {
        let core = self.core;
        if works(core.health()) {
            // Under the doorbell: a producer that saw the channel running finishes its
            // doorbell write before this, and none writes one after.
            let _doorbell = core.doorbell.exclusive();
            core.set_health(health);
        }
        let published = core.slots.published();
        if self.state.tail == published || !core.device_stopped() {
            return;
        }
        let count = published.wrapping_sub(self.state.tail);
        self.retire(count, sink, Err(cause));
    }
}
