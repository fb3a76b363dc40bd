//! The IOAT half of a started channel: its registers and the memory the device reads and
//! writes (descriptor ring, completion word), the register sequences (reset, program, arm,
//! prove), and what the completion word says; `submit.rs` builds the descriptors. The generic
//! ring in `queue/ring/` does the indices, the retire bookkeeping and the routing.
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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::channel::IoatConfig;
use super::completion::CompletionWord;
use super::error::{device_error, IoatError};
use super::function::{bring_up, check_addressing, Identity};
use super::ring::DescriptorRing;
use super::spec::{
    self, cbver, chan, chancmd, chanctrl, chansts, ctl, op, Descriptor, NULL_DESCRIPTOR_SIZE,
};
use super::submit::IoatScratch;
use crate::capability::Capability;
use crate::mem::DmaPool;
use crate::mmio::{read64_split, write64_split, RegisterWindow};
use crate::pci::ConfigSpace;
use crate::queue::ring::{Op, Producer, Retirer, Ring, RingEngine, RingQueue, Sink, SlotMeta};
use crate::queue::{Health, OpError, OpFlags, SubmitError};

/// A started IOAT channel.
pub(crate) type IoatQueue = RingQueue<IoatEngine>;

/// Reads all-ones: what a removed PCI device returns.
fn all_ones_u64(value: u64) -> bool {
    value == u64::MAX
}

/// The retire side's IOAT state.
#[derive(Default)]
pub(crate) struct IoatRetire {
    /// The completion address last acted on.
    last_completed: u64,
    /// Polls without progress while work is outstanding.
    stalled_polls: u32,
}

/// The IOAT registers and device memory of one started channel.
pub(crate) struct IoatEngine {
    regs: Arc<dyn RegisterWindow>,
    config_space: Option<Arc<dyn ConfigSpace>>,
    base: usize,
    /// The version acted on: CBVER, or v3.2 for Skylake-SP.
    version: u8,
    split64: bool,
    pub(crate) max_transfer: u64,
    pub(crate) fill_supported: bool,
    config: IoatConfig,
    pool: DmaPool,
    /// Ring and completion word: memory the device reads and writes. Freed on drop only once
    /// the device is known to have stopped; leaked otherwise (see `Drop`).
    pub(crate) ring: ManuallyDrop<DescriptorRing>,
    completion: ManuallyDrop<CompletionWord>,
    /// Slot index the device's 16-bit count started from at the last (re)start. Read and
    /// written only by whoever holds the doorbell (or the owner).
    count_base: AtomicU32,
    /// `halt` reset the hardware channel; `Drop` must not touch it again.
    reset_done: AtomicBool,
}

impl IoatEngine {
    /// Starts channel `index` of the device behind `regs`: reset, program, prove with a null
    /// descriptor. `config_space` is needed on parts before v3.3 to clear CHANERR_INT.
    pub(crate) fn start(
        regs: Arc<dyn RegisterWindow>,
        config_space: Option<Arc<dyn ConfigSpace>>,
        index: usize,
        pool: &DmaPool,
        config: IoatConfig,
    ) -> Result<Arc<IoatQueue>, IoatError> {
        if !(4..=16).contains(&config.ring_order) {
            return Err(IoatError::BadRingOrder(config.ring_order));
        }
        check_addressing(&*regs, pool)?;
        // Again at each start: a reset of the function (VFIO's, say) may have undone it.
        let Identity {
            version,
            channels,
            fill_supported,
            max_transfer,
            ..
        } = bring_up(&*regs, config_space.as_deref())?;
        if index >= channels {
            return Err(IoatError::NoSuchChannel {
                index,
                count: channels,
            });
        }
        let ring = DescriptorRing::new(pool, config.ring_order)?;
        let completion = CompletionWord::new(pool)?;
        let size = ring.size();
        let engine = IoatEngine {
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
            count_base: AtomicU32::new(0),
            reset_done: AtomicBool::new(false),
        };
        engine.reset()?;
        engine.program_and_arm(0)?;
        let queue = RingQueue {
            ring: Ring::new(size),
            engine,
        };
        queue.prove_with_null()?;
        Ok(Arc::new(queue))
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
    fn write_dmacount(&self, announce: u32) {
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
    ) -> Result<(), IoatError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if done(self) {
                return Ok(());
            }
            let status = self.chansts();
            if all_ones_u64(status) {
                return Err(IoatError::DeviceRemoved);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(IoatError::Timeout {
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
    fn reset(&self) -> Result<(), IoatError> {
        let status = self.chansts();
        if all_ones_u64(status) {
            return Err(IoatError::DeviceRemoved);
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
    fn clear_errors(&self) -> Result<(), IoatError> {
        let errors = self.chanerr();
        self.regs.write32(self.base + chan::CHANERR, errors);
        if self.version < cbver::V3_3 {
            if let Some(cs) = &self.config_space {
                let mirrored = cs
                    .read32(spec::config::CHANERR_INT)
                    .map_err(|e| IoatError::Config(e.to_string()))?;
                cs.write32(spec::config::CHANERR_INT, mirrored)
                    .map_err(|e| IoatError::Config(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Programs control, completion address and chain start (the slot at `tail`), after a
    /// reset, and waits for ARMED. The caller holds the doorbell (or is the owner).
    fn program_and_arm(&self, tail: u32) -> Result<(), IoatError> {
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

    /// Position, counted from `tail`, of the announced slot whose bus address is `address`.
    fn find_announced(&self, tail: u32, address: u64, announced: u32) -> Option<u32> {
        (0..announced.wrapping_sub(tail))
            .find(|&k| self.ring.bus_address(tail.wrapping_add(k)) == address)
    }

    /// Acts on a status value (from the completion word or CHANSTS): retires everything up to
    /// the descriptor it names, and recovers if it says HALTED.
    fn advance(
        &self,
        r: &mut Retirer<'_, IoatRetire>,
        status: u64,
        announced: u32,
        sink: &mut Sink<'_>,
    ) {
        let address = chansts::completed_address(status);
        if let Some(k) = self.find_announced(r.side.tail, address, announced) {
            if r.retire(k + 1, sink, Ok(())) < k + 1 {
                // A sink is full; the rest of the batch comes next time. Remember the last slot
                // actually retired, not `address`: the batch's end may land on the slot of an
                // older `last_completed` once the ring laps, and must not look like no progress.
                r.side.engine.last_completed = self.ring.bus_address(r.side.tail.wrapping_sub(1));
                return;
            }
            r.side.engine.last_completed = address;
        }
        if chansts::state(status) == chansts::HALTED {
            self.recover(r, sink);
        }
    }

    /// No completion progress for a while: read the status register, which catches a halt
    /// whose completion write was lost, and a device that is gone.
    fn check_stall(&self, r: &mut Retirer<'_, IoatRetire>, sink: &mut Sink<'_>) {
        let status = self.chansts();
        if all_ones_u64(status) {
            r.abandon(OpError::DeviceRemoved, Health::Removed, sink, || {
                self.device_stopped()
            });
        } else if chansts::state(status) == chansts::HALTED {
            // CHANSTS names the last good descriptor as the completion word would have.
            let announced = r.ring.doorbell.announced();
            self.advance(r, status, announced, sink);
        }
    }

    /// The channel halted: the operation at the tail failed. Complete it with the cause, skip
    /// the rest of its descriptors, reset, and restart the chain after it. The doorbell is
    /// held throughout, so no producer rings a channel in mid-reset.
    fn recover(&self, r: &mut Retirer<'_, IoatRetire>, sink: &mut Sink<'_>) {
        let ring = r.ring;
        let stopped = || self.device_stopped();
        let errors = self.chanerr();
        if errors == u32::MAX {
            return r.abandon(OpError::DeviceRemoved, Health::Removed, sink, stopped);
        }
        let mut doorbell = ring.doorbell.exclusive();
        if !ring.health().works() {
            // Shut down (or failed) meanwhile: nothing may re-arm it.
            drop(doorbell);
            return r.abandon_stopped(sink, stopped);
        }
        let announced = ring.doorbell.announced();
        let tail = r.side.tail;
        // The failing operation runs from `tail` to the first descriptor that ends an
        // operation; the device halted inside it, so it was announced whole.
        let span = (0..announced.wrapping_sub(tail))
            // SAFETY: announced slots, read by the retirer.
            .find(|&k| unsafe { ring.meta(tail.wrapping_add(k)) }.ends_op)
            .map_or(0, |k| k + 1);
        // The device is halted: it no longer touches the failed operation's buffers.
        if r.retire(span, sink, Err(device_error(errors))) < span {
            return; // no room to report it; the halted status stays and the next poll retries
        }
        r.note_recovery();
        let restarted = self.reset().and_then(|()| {
            let tail = r.side.tail;
            // A status the device wrote before the reset must not be acted on twice.
            let before = self.ring.bus_address(tail.wrapping_sub(1));
            self.completion.prime(before | chansts::ARMED);
            r.side.engine.last_completed = before;
            self.program_and_arm(tail)
        });
        match restarted {
            Ok(()) => {
                if announced != r.side.tail {
                    self.write_dmacount(announced);
                    ring.note_doorbell();
                }
                doorbell.set_announced(announced);
                drop(doorbell);
                // Publications made while we held the doorbell were left to us.
                ring.doorbell.ring(&ring.slots, |target| {
                    if ring.health().works() {
                        self.write_dmacount(target);
                        ring.note_doorbell();
                    }
                });
            }
            // The health changes while the doorbell is still held, so no producer that saw the
            // channel running can ring it after its operations are failed.
            Err(IoatError::DeviceRemoved) => {
                ring.set_health(Health::Removed);
                drop(doorbell);
                r.abandon(OpError::DeviceRemoved, Health::Removed, sink, stopped)
            }
            Err(_) => {
                ring.set_health(Health::Failed);
                drop(doorbell);
                r.abandon(OpError::ChannelFailed, Health::Failed, sink, stopped)
            }
        }
    }
}

impl RingEngine for IoatEngine {
    type RetireState = IoatRetire;
    type Scratch = IoatScratch;

    fn scratch(&self) -> IoatScratch {
        IoatScratch::new(self.pool.translator())
    }

    /// Copy, and fill where DMACAPABILITY says so. IOAT has no compare, CRC or dualcast
    /// descriptor: those are refused before anything is built.
    #[inline]
    fn supports(&self, cap: Capability) -> bool {
        match cap {
            Capability::Memcpy => true,
            Capability::Fill => self.fill_supported,
            _ => false,
        }
    }

    #[inline]
    fn build(
        &self,
        ring: &Ring<IoatRetire>,
        producer: &mut Producer,
        scratch: &mut IoatScratch,
        op: Op,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.build_op(ring, producer, scratch, op, user_data, flags)
    }

    #[inline]
    fn seal_batch(&self, scratch: &mut IoatScratch, last: u32) {
        self.ring.set_control_bits(last, ctl::COMPLETION_UPDATE);
        scratch.sealed();
    }

    #[inline]
    fn write_doorbell(&self, announce: u32) {
        self.write_dmacount(announce);
    }

    fn retire(&self, r: &mut Retirer<'_, IoatRetire>, sink: &mut Sink<'_>) {
        let announced = r.ring.doorbell.announced();
        if r.side.tail == announced {
            return;
        }
        let word = self.completion.load();
        if chansts::completed_address(word) == r.side.engine.last_completed
            && chansts::state(word) != chansts::HALTED
        {
            r.side.engine.stalled_polls += 1;
            if r.side.engine.stalled_polls >= self.config.stall_check_polls {
                r.side.engine.stalled_polls = 0;
                self.check_stall(r, sink);
            }
            return;
        }
        r.side.engine.stalled_polls = 0;
        self.advance(r, word, announced, sink);
    }

    /// Whether the device is known not to be working through descriptors: gone (all-ones),
    /// or in any state but ACTIVE. Only then may operations be completed without their
    /// descriptors having run, since only then will the device not touch their buffers.
    fn device_stopped(&self) -> bool {
        let status = self.chansts();
        all_ones_u64(status) || chansts::state(status) != chansts::ACTIVE
    }

    fn halt(&self) {
        if self.reset().is_ok() {
            // Dropping the engine must not reset the hardware channel again: by then the
            // backend may have started a new one on it.
            self.reset_done.store(true, Ordering::Release);
        }
    }
}

impl RingQueue<IoatEngine> {
    /// Pushes a null descriptor through slot 0 and waits for its completion, proving the
    /// channel. Runs before anyone else can see the queue.
    fn prove_with_null(&self) -> Result<(), IoatError> {
        let engine = &self.engine;
        let null = Descriptor {
            size: NULL_DESCRIPTOR_SIZE,
            control: ctl::with_op(op::COPY, ctl::NULL | ctl::COMPLETION_UPDATE),
            ..Descriptor::default()
        };
        engine.ring.fill(0, &null);
        // SAFETY: the queue is not shared yet; slot 0 is ours.
        unsafe { self.ring.set_meta(0, SlotMeta::default()) };
        self.ring.slots.advance_owned(1);
        self.ring.doorbell.announce_owned(1);
        engine.write_dmacount(1);
        self.ring.note_doorbell();
        let target = engine.ring.bus_address(0);
        engine.wait_for(
            "the start-up null descriptor",
            engine.config.timeouts.start,
            |c| chansts::completed_address(c.completion.load()) == target,
        )?;
        // SAFETY: the queue is not shared yet.
        unsafe { self.poll_exclusive(&mut Sink::routed()) };
        Ok(())
    }
}

impl Drop for IoatEngine {
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
