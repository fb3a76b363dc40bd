//! The IOAT v3 channel driver's public face: operation flags, completions, settings, and
//! [`IoatChannel`], one hardware channel driven by one thread, the same code on silicon and on
//! the emulated device. (The data path's clients share channels through the same core; see
//! `core.rs` and `submit.rs`.)
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
use std::sync::Arc;
use std::time::Duration;

pub(crate) use super::core::Identity;
use super::core::{ChannelCore, Sink};
pub use super::error::{ChannelError, OpError, SubmitError};
use super::submit::{Mode, Submitter};
use crate::datapath::spsc::Consumer;
use crate::mem::DmaPool;
use crate::mmio::RegisterWindow;
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

impl Default for Completion {
    /// A placeholder to size output buffers with: user data 0, success.
    fn default() -> Self {
        Completion {
            user_data: 0,
            result: Ok(()),
        }
    }
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

/// One IOAT channel, driven by one thread: no other submitter, so it builds and retires
/// without any atomic read-modify-write.
pub struct IoatChannel {
    submitter: Submitter,
    /// The route's ring; every completion of this channel is handed over directly instead.
    _route_ring: Consumer<Completion>,
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
        let core = ChannelCore::start(regs, config_space, index, pool, config)?;
        let (route, ring) = core
            .routes
            .attach(1)
            .expect("a new channel has free routes");
        // SAFETY: the core was just started and is held by this handle alone.
        let mut submitter = unsafe { Submitter::new(core, route, Mode::Owned) };
        submitter.descriptors = 1; // the start-up null descriptor
        Ok(IoatChannel {
            submitter,
            _route_ring: ring,
        })
    }

    /// Slots free for building now (one slot always stays empty).
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.submitter.capacity()
    }

    /// Descriptors built or submitted and not yet retired.
    #[inline]
    pub fn outstanding_descriptors(&self) -> u32 {
        self.submitter.core.size() - 1 - self.capacity()
    }

    /// The channel's counters.
    pub fn stats(&self) -> ChannelStats {
        // SAFETY: this handle is the channel's only user.
        let (ops_ok, ops_failed, recoveries) =
            unsafe { self.submitter.core.retire_counters_exclusive() };
        ChannelStats {
            ops_ok,
            ops_failed,
            descriptors: self.submitter.descriptors,
            doorbells: self.submitter.doorbells,
            recoveries,
        }
    }

    /// Largest transfer one descriptor may carry.
    pub fn max_transfer(&self) -> u64 {
        self.submitter.core.max_transfer
    }

    /// Whether the device offers block fill.
    pub fn fill_supported(&self) -> bool {
        self.submitter.core.fill_supported
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
        // SAFETY: forwarded contract.
        unsafe { self.submitter.copy(dst, src, len, user_data, flags) }
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
        // SAFETY: forwarded contract.
        unsafe { self.submitter.fill(dst, pattern, len, user_data, flags) }
    }

    /// Queues a null descriptor that completes with `user_data` (a marker or a flush).
    pub fn null(&mut self, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        self.submitter.null(user_data, flags)
    }

    /// Rings the doorbell for everything built since the last one: the batch's last descriptor
    /// asks for a completion write, then DMACOUNT gets the new running count.
    pub fn submit(&mut self) {
        self.submitter.submit();
    }

    /// Collects finished operations into `out`, oldest first, and returns how many it wrote.
    /// Operations that do not fit are returned by the next call. A halted channel is recovered
    /// here; a failed or removed one completes everything outstanding with an error, once the
    /// device is known to have stopped touching their buffers.
    pub fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut sink = Sink {
            direct: Some((self.submitter.route, out, 0)),
        };
        // SAFETY: this handle is the channel's only user.
        unsafe { self.submitter.core.poll_exclusive(&mut sink) };
        sink.direct.map_or(0, |(_, _, filled)| filled)
    }

    /// Whether the channel still accepts work.
    pub fn is_running(&self) -> bool {
        self.submitter.core.health() == super::core::RUNNING
    }

    /// Whether the descriptor at free-running `index` carries a fence (for tests).
    pub fn descriptor_has_fence(&self, index: u32) -> bool {
        self.submitter.core.ring.has_fence(index)
    }

    /// Free-running index of the next descriptor to be built (for tests).
    pub fn head(&self) -> u32 {
        self.submitter.head()
    }
}

impl fmt::Debug for IoatChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IoatChannel")
            .field(&*self.submitter.core)
            .finish()
    }
}
