//! The IOAT v3 channel driver's public face: settings, and [`IoatChannel`], one hardware
//! channel driven by one thread, the same code on silicon and on the emulated device. (The
//! client shares channels through the same queue; see `queue.rs`.)
//!
//! Life of a channel: [`IoatChannel::start`] resets it (suspend, clear errors, reset, wait for
//! the self-clearing bit), programs CHANCTRL, the completion address and the chain address, and
//! pushes a null descriptor through to prove it works. Operations are then *built* into ring
//! slots without touching registers, split wherever a descriptor would exceed XFERCAP or the
//! memory stops being IOVA-contiguous; [`IoatChannel::submit`] marks the batch's last descriptor
//! to write the completion word and rings the 16-bit DMACOUNT doorbell once. [`IoatChannel::poll`]
//! reads the completion word from memory (no register access) and retires every operation up to
//! the descriptor it names, one completion per operation. How errors and removal are handled is
//! described in `queue.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::error::IoatError;
use super::queue::IoatEngine;
use crate::mem::DmaPool;
use crate::mmio::RegisterWindow;
use crate::pci::ConfigSpace;
use crate::queue::ring::RingHandle;
use crate::queue::{ChannelStats, Completion, Health, OpFlags, QueueHandle, SubmitError};

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
pub struct IoatConfig {
    /// log2 of the ring size, 4..=16.
    pub ring_order: u32,
    /// Waits.
    pub timeouts: Timeouts,
    /// Polls without progress, with work outstanding, before the driver reads CHANSTS to
    /// catch a halt or removal whose completion write never arrived.
    pub stall_check_polls: u32,
}

impl Default for IoatConfig {
    fn default() -> Self {
        IoatConfig {
            ring_order: 12,
            timeouts: Timeouts::default(),
            stall_check_polls: 4096,
        }
    }
}

/// One IOAT channel, driven by one thread: no other submitter, so it builds and retires
/// without any atomic read-modify-write.
pub struct IoatChannel {
    handle: RingHandle<IoatEngine>,
}

impl IoatChannel {
    /// Starts channel `index` of the device behind `regs`: reset, program, prove with a null
    /// descriptor. `config_space` is needed on parts before v3.3 to clear CHANERR_INT.
    pub fn start(
        regs: Arc<dyn RegisterWindow>,
        config_space: Option<Arc<dyn ConfigSpace>>,
        index: usize,
        pool: &DmaPool,
        config: IoatConfig,
    ) -> Result<IoatChannel, IoatError> {
        let queue = IoatEngine::start(regs, config_space, index, pool, config)?;
        // Every completion is handed over directly; the route's ring stays empty.
        let (route, completions) = queue
            .ring
            .routes
            .attach(1)
            .expect("a new channel has free routes");
        let mut handle = queue.handle(route, completions);
        // SAFETY: the queue was just started and is reachable through this handle alone.
        unsafe { handle.own() };
        Ok(IoatChannel { handle })
    }

    fn engine(&self) -> &IoatEngine {
        &self.handle.queue.engine
    }

    /// Slots free for building now (one slot always stays empty).
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.handle.capacity()
    }

    /// Descriptors built or submitted and not yet retired.
    #[inline]
    pub fn outstanding_descriptors(&self) -> u32 {
        self.handle.queue.ring.size() - 1 - self.capacity()
    }

    /// The channel's counters.
    pub fn stats(&self) -> ChannelStats {
        self.handle.queue.ring.stats()
    }

    /// Largest transfer one descriptor may carry.
    pub fn max_transfer(&self) -> u64 {
        self.engine().max_transfer
    }

    /// Whether the device offers block fill.
    pub fn fill_supported(&self) -> bool {
        self.engine().fill_supported
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
        unsafe { self.handle.copy(dst, src, len, user_data, flags) }
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
        unsafe { self.handle.fill(dst, pattern, len, user_data, flags) }
    }

    /// Queues a null descriptor that completes with `user_data` (a marker or a flush).
    pub fn null(&mut self, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        self.handle.null(user_data, flags)
    }

    /// Rings the doorbell for everything built since the last one: the batch's last descriptor
    /// asks for a completion write, then DMACOUNT gets the new running count.
    pub fn submit(&mut self) {
        self.handle.submit();
    }

    /// Collects finished operations into `out`, oldest first, and returns how many it wrote.
    /// Operations that do not fit are returned by the next call. A halted channel is recovered
    /// here; a failed or removed one completes everything outstanding with an error, once the
    /// device is known to have stopped touching their buffers.
    pub fn poll(&mut self, out: &mut [Completion]) -> usize {
        self.handle.poll(out)
    }

    /// Whether the channel still accepts work.
    pub fn is_running(&self) -> bool {
        self.handle.queue.ring.health() == Health::Running
    }

    /// Whether the descriptor at free-running `index` carries a fence (for tests).
    pub fn descriptor_has_fence(&self, index: u32) -> bool {
        self.engine().ring.has_fence(index)
    }

    /// Free-running index of the next descriptor to be built (for tests).
    pub fn head(&self) -> u32 {
        self.handle.head()
    }
}

impl fmt::Debug for IoatChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IoatChannel")
            .field(&self.handle.queue.ring)
            .finish()
    }
}
