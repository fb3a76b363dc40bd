//! A started ring channel behind the seam: the generic ring with the backend's engine
//! ([`RingQueue`], a `ChannelQueue`), one submitter's handle on it ([`RingHandle`], a
//! `QueueHandle`), and the cell a channel backend keeps its started queue in ([`QueueCell`]).

use std::fmt;
use std::sync::{Arc, Mutex};

use super::{Op, Producer, Retirer, Ring, RingEngine, Sink};
use crate::capability::Capability;
use crate::queue::spsc::Consumer;
use crate::queue::{
    ChannelQueue, ChannelStats, Completion, Health, OpFlags, QueueHandle, SubmitError,
};
use crate::sync::lock_std;

/// The started queue of one channel backend, while the engine holds a reference to the
/// channel, and what its earlier starts did: the part of a
/// [`ChannelBackend`](crate::queue::ChannelBackend) that is the same for every ring backend.
pub(crate) struct QueueCell<E: RingEngine> {
    current: Mutex<Option<Arc<RingQueue<E>>>>,
    /// What the channel's earlier starts did, so statistics outlive each start.
    earlier: Mutex<ChannelStats>,
}

impl<E: RingEngine> Default for QueueCell<E> {
    fn default() -> Self {
        QueueCell {
            current: Mutex::new(None),
            earlier: Mutex::new(ChannelStats::default()),
        }
    }
}

impl<E: RingEngine> QueueCell<E> {
    /// Holds a newly started queue.
    pub(crate) fn set(&self, queue: Arc<RingQueue<E>>) {
        *lock_std(&self.current) = Some(queue);
    }

    /// Closes the current queue, if any: the device stops reading its ring and later submits
    /// are refused. Its memory goes back with the last handle (normally the cell's: a client
    /// lets go of a channel once it neither follows a table naming it nor has operations
    /// there, and then holds no reference).
    pub(crate) fn close(&self) {
        if let Some(queue) = lock_std(&self.current).take() {
            queue.stop(Health::Closed);
            let mut earlier = lock_std(&self.earlier);
            *earlier = *earlier + queue.ring.stats();
        }
    }

    /// The current queue.
    pub(crate) fn get(&self) -> Option<Arc<RingQueue<E>>> {
        lock_std(&self.current).clone()
    }

    /// The current queue behind the seam.
    pub(crate) fn queue(&self) -> Option<Arc<dyn ChannelQueue>> {
        self.get().map(|queue| queue as Arc<dyn ChannelQueue>)
    }

    /// Whether a queue is started.
    pub(crate) fn is_started(&self) -> bool {
        lock_std(&self.current).is_some()
    }

    /// What every start of the channel did.
    pub(crate) fn stats(&self) -> ChannelStats {
        let current = lock_std(&self.current)
            .as_ref()
            .map(|queue| queue.ring.stats())
            .unwrap_or_default();
        *lock_std(&self.earlier) + current
    }
}

/// A started ring channel: the generic ring and the backend's engine.
pub(crate) struct RingQueue<E: RingEngine> {
    pub(crate) ring: Ring<E::RetireState>,
    pub(crate) engine: E,
}

impl<E: RingEngine> RingQueue<E> {
    /// Retires what the device finished, with `retirer`'s exclusive use of the retire side.
    #[inline]
    pub(crate) fn retire_with(
        &self,
        retirer: &mut Retirer<'_, E::RetireState>,
        sink: &mut Sink<'_>,
    ) {
        if self.ring.health().works() {
            self.engine.retire(retirer, sink);
        } else {
            retirer.abandon_stopped(sink, || self.engine.device_stopped());
        }
    }

    /// Retires as the queue's only user.
    ///
    /// # Safety
    ///
    /// As for [`Ring::retirer_exclusive`].
    #[inline]
    pub(crate) unsafe fn poll_exclusive(&self, sink: &mut Sink<'_>) {
        // SAFETY: forwarded contract.
        let mut retirer = unsafe { self.ring.retirer_exclusive() };
        self.retire_with(&mut retirer, sink);
    }

    /// Retires if no other poller is at it, delivering every completion through the routes.
    /// Returns whether it got to retire.
    pub(crate) fn poll_shared(&self) -> bool {
        self.ring
            .with_retire_token(|retirer| self.retire_with(retirer, &mut Sink::routed()))
    }

    /// Moves a working channel to `health` under the doorbell and stops the device. Returns
    /// whether this call stopped it.
    pub(crate) fn stop(&self, health: Health) -> bool {
        let _doorbell = self.ring.doorbell.exclusive();
        let stopped = self.ring.set_health(health);
        if stopped {
            self.engine.halt();
        }
        stopped
    }

    /// A new sharer's handle with completions in `completions`.
    pub(crate) fn handle(
        self: Arc<Self>,
        route: u16,
        completions: Consumer<Completion>,
    ) -> RingHandle<E> {
        RingHandle {
            producer: Producer::new(&self.ring, route),
            scratch: self.engine.scratch(),
            queue: self,
            completions,
        }
    }
}

impl<E: RingEngine> fmt::Debug for RingQueue<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.ring, f)
    }
}

impl<E: RingEngine> ChannelQueue for RingQueue<E> {
    fn attach(self: Arc<Self>, completion_ring: usize) -> Option<Box<dyn QueueHandle>> {
        let (route, completions) = self.ring.routes.attach(completion_ring)?;
        Some(Box::new(self.handle(route, completions)))
    }

    fn attached(&self) -> u32 {
        self.ring.routes.attached()
    }

    fn health(&self) -> Health {
        self.ring.health()
    }

    fn in_flight(&self) -> u64 {
        u64::from(self.ring.in_flight())
    }

    fn drain(&self) {
        self.ring.begin_draining();
    }

    fn remove(&self) {
        self.stop(Health::Removed);
    }

    fn stats(&self) -> ChannelStats {
        self.ring.stats()
    }
}

/// One submitter's handle on a ring channel.
pub(crate) struct RingHandle<E: RingEngine> {
    pub(crate) queue: Arc<RingQueue<E>>,
    pub(crate) producer: Producer,
    pub(crate) scratch: E::Scratch,
    completions: Consumer<Completion>,
}

impl<E: RingEngine> RingHandle<E> {
    /// Refuses work on a channel that no longer accepts it.
    #[inline]
    fn accepting(&self) -> Result<(), SubmitError> {
        match self.queue.ring.health().refusal() {
            None => Ok(()),
            Some(refused) => Err(refused),
        }
    }

    /// Builds an accepted, non-empty operation.
    #[inline]
    fn queue_op(&mut self, op: Op, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        let queue = &*self.queue;
        queue.engine.build(
            &queue.ring,
            &mut self.producer,
            &mut self.scratch,
            op,
            user_data,
            flags,
        )?;
        if flags.contains(OpFlags::SUBMIT) {
            self.submit();
        }
        Ok(())
    }

    /// Checks and builds one of the operations beyond copy and fill: a working channel, a
    /// device that performs it, a non-zero length; then the backend builds it.
    fn queue_other(&mut self, op: Op, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        self.accepting()?;
        if let Some(cap) = op.capability() {
            if !self.queue.engine.supports(cap) {
                return Err(SubmitError::Unsupported(cap));
            }
        }
        if op.len() == 0 {
            return Err(SubmitError::ZeroLength);
        }
        if let Op::Dualcast {
            dst1,
            dst2,
            src,
            len,
        } = op
        {
            // A device would write one destination while still reading the source for the
            // other (or write the same bytes twice): refused for every backend alike.
            let overlap =
                |x: usize, y: usize| x < y.saturating_add(len) && y < x.saturating_add(len);
            if overlap(dst1, dst2) || overlap(dst1, src) || overlap(dst2, src) {
                return Err(SubmitError::InvalidArgument("dualcast buffers overlap"));
            }
        }
        self.queue_op(op, user_data, flags)
    }

    /// Queues a null operation that completes with `user_data` (a marker, or a flush).
    pub(crate) fn null(&mut self, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        self.accepting()?;
        self.queue_op(Op::Null, user_data, flags)
    }

    /// Free-running index of the next slot to be built.
    pub(crate) fn head(&self) -> u32 {
        self.producer.head(&self.queue.ring)
    }
}

impl<E: RingEngine> QueueHandle for RingHandle<E> {
    #[inline]
    unsafe fn copy(
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
        let op = Op::Copy {
            dst: dst as usize,
            src: src as usize,
            len,
        };
        self.queue_op(op, user_data, flags)
    }

    #[inline]
    unsafe fn fill(
        &mut self,
        dst: *mut u8,
        pattern: u64,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.accepting()?;
        if !self.queue.engine.supports(Capability::Fill) {
            return Err(SubmitError::Unsupported(Capability::Fill));
        }
        if len == 0 {
            return Err(SubmitError::ZeroLength);
        }
        let op = Op::Fill {
            dst: dst as usize,
            pattern,
            len,
        };
        self.queue_op(op, user_data, flags)
    }

    unsafe fn compare(
        &mut self,
        a: *const u8,
        b: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let op = Op::Compare {
            a: a as usize,
            b: b as usize,
            len,
        };
        self.queue_other(op, user_data, flags)
    }

    unsafe fn crc32c(
        &mut self,
        src: *const u8,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let op = Op::Crc32c {
            src: src as usize,
            len,
            initial,
        };
        self.queue_other(op, user_data, flags)
    }

    unsafe fn copy_crc(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let op = Op::CopyCrc {
            dst: dst as usize,
            src: src as usize,
            len,
            initial,
        };
        self.queue_other(op, user_data, flags)
    }

    unsafe fn dualcast(
        &mut self,
        dst1: *mut u8,
        dst2: *mut u8,
        src: *const u8,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let op = Op::Dualcast {
            dst1: dst1 as usize,
            dst2: dst2 as usize,
            src: src as usize,
            len,
        };
        self.queue_other(op, user_data, flags)
    }

    #[inline]
    fn submit(&mut self) {
        let queue = &*self.queue;
        self.producer
            .submit(&queue.ring, &queue.engine, &mut self.scratch);
    }

    #[inline]
    fn capacity(&self) -> u32 {
        self.producer.capacity(&self.queue.ring)
    }

    #[inline]
    fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut got = self.completions.pop_into(out);
        if self.producer.is_owner() {
            let mut sink = Sink::direct(self.producer.route, &mut out[got..]);
            // SAFETY: an owner is the queue's only user (the contract of `own`).
            unsafe { self.queue.poll_exclusive(&mut sink) };
            got += sink.filled();
        } else if self.queue.poll_shared() {
            got += self.completions.pop_into(&mut out[got..]);
        }
        got
    }

    fn collect(&mut self, out: &mut [Completion]) -> usize {
        self.completions.pop_into(out)
    }

    fn completion_capacity(&self) -> usize {
        self.completions.capacity()
    }

    fn queue(&self) -> &dyn ChannelQueue {
        &*self.queue
    }

    fn is_owner(&self) -> bool {
        self.producer.is_owner()
    }

    fn share(&mut self) {
        self.submit();
        self.producer.share();
    }

    unsafe fn own(&mut self) {
        self.submit();
        // SAFETY: forwarded contract.
        unsafe { self.producer.own(&self.queue.ring) };
    }

    unsafe fn detach(self: Box<Self>) {
        // SAFETY: forwarded contract: nothing of ours is in flight.
        unsafe { self.queue.ring.detach_route(self.producer.route) };
    }
}
