//! The DSA half of a started channel (one work queue): the memory the device reads and writes
//! (a ring of 64-byte descriptors, a 32-byte completion record per slot, a record per batch),
//! handing announced slots to the portal as batches, and reading the records back. The
//! generic ring in `queue/ring/` does the indices, routing and removal bookkeeping; `submit.rs`
//! builds the descriptors.
//!
//! **Submission.** A doorbell hands every announced slot to the device: runs of slots become
//! one Batch descriptor each (split at the ring's end, since a batch list is contiguous, and
//! at the WQ's largest batch); a run of one goes as a plain descriptor. Each portal write uses
//! one WQ entry until its record is retired. A dedicated WQ drops what overflows, so the
//! driver counts: with no entry free it stops and leaves the rest announced but not
//! submitted. A shared WQ answers: after a few retries, the same. Whoever retires next hands
//! the rest over once entries are free, if it can take the doorbell; otherwise a later poll
//! does. A fence is DSA's Fence flag inside a batch; an operation that would start a portal
//! write with a fence waits until nothing is outstanding (the flag is reserved outside a batch,
//! and nothing orders separate portal writes).
//!
//! **Completion.** Every descriptor asks for its own record, and the queue retires slots in
//! ring order once each slot's record (and, at a batch's last slot, the batch's record) is
//! written: the device completes out of order across engines, and nothing here assumes it
//! does not. An operation's completion carries its first failure. A batch member with no
//! record in a finished batch was abandoned by a fence after a failure.
//!
//! **Faults.** A page fault with partial completion (status 0x03) is resumed when the pool's
//! IOVAs are virtual addresses (the character-device route with shared virtual memory, and
//! the emulated device): the driver touches the page, rewrites the slot's descriptor for what
//! is left and sends it again. Behind an IOMMU the memory is pinned, so a fault means it was
//! not mapped: the operation fails with its cause.
//!
//! **Removal.** A device that is gone, halted, or whose WQ was disabled writes no more
//! records. After a number of polls without progress the retirer asks the WQ's control where
//! it stands and abandons the outstanding work with "device removed" (gone or disabled) or
//! "channel failed" (halted).

use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use super::control::{WqControl, WqSettings, WqState};
use super::error::{device_error, DsaError, ABANDONED, UNRESOLVED_FAULT};
use super::portal::{Enqueue, PortalWindow};
use super::spec::{flags, opcode, portal, status, CompletionRecord, Descriptor};
use super::submit::DsaScratch;
use crate::capability::{CapMask, Capability};
use crate::mem::{DmaBlock, DmaPool, IovaMode};
use crate::queue::ring::{Op, Producer, Retirer, Ring, RingEngine, RingQueue, Sink};
use crate::queue::{Health, OpError, OpFlags, SubmitError};

/// A started DSA channel.
pub(crate) type DsaQueue = RingQueue<DsaEngine>;

/// Settings of a DSA channel.
#[derive(Clone, Copy, Debug)]
pub struct DsaQueueConfig {
    /// log2 of the descriptor ring's size, 4 to 12.
    pub ring_order: u32,
    /// Most descriptors in one batch (at most the WQ's largest); 0 takes the WQ's.
    pub max_batch: u32,
    /// Polls without progress, with work outstanding, before the driver asks whether the WQ
    /// still runs.
    pub stall_check_polls: u32,
    /// ENQCMD attempts on a shared WQ before the rest is left for a later poll.
    pub enqueue_attempts: u32,
    /// Times one descriptor's page faults are resumed before its operation fails.
    pub fault_resumes: u32,
}

impl Default for DsaQueueConfig {
    fn default() -> Self {
        DsaQueueConfig {
            ring_order: 10,
            max_batch: 0,
            stall_check_polls: 4096,
            enqueue_attempts: 4,
            fault_resumes: 16,
        }
    }
}

/// The retire side's DSA state.
#[derive(Default)]
pub(crate) struct DsaRetire {
    /// Polls without progress while work is outstanding.
    stalled_polls: u32,
    /// The slot whose descriptor was sent again after a page fault, while it is out.
    resumed: Option<u32>,
    /// Resumes of the operation at the tail so far.
    resumes: u32,
}

/// The memory the device reads and writes.
struct QueueMemory {
    descriptors: DmaBlock,
    records: DmaBlock,
    batch_records: DmaBlock,
}

/// The DSA registers, portal and memory of one started channel.
pub(crate) struct DsaEngine {
    control: Arc<dyn WqControl>,
    portals: Arc<dyn PortalWindow>,
    /// Offset of the WQ's portal page in BAR2.
    portal: usize,
    dedicated: bool,
    /// The operations the device performs.
    capabilities: CapMask,
    /// WQ entries this channel may hold at once (dedicated WQs).
    credits: u64,
    pub(crate) max_transfer: u64,
    max_batch: u32,
    /// Fault addresses are virtual addresses this process can touch.
    resolve_faults: bool,
    config: DsaQueueConfig,
    pool: DmaPool,
    memory: ManuallyDrop<QueueMemory>,
    /// The records' IOVA when they are contiguous in IOVA space (always but with scrambled
    /// test IOVAs), so building an operation does not look it up per slot.
    records_iova: Option<u64>,
    mask: u32,
    /// Slots before this one have been handed to the device. Written by whoever holds the
    /// doorbell (or the owner); read by the retirer (acquire).
    submitted: AtomicU32,
    /// Portal writes made (single writer: the doorbell's holder).
    portal_writes: AtomicU64,
    /// Portal writes whose records were retired (single writer: the retirer).
    portal_done: AtomicU64,
    /// Per slot, the portal write that carried it: first slot (high half) and count.
    units: Box<[AtomicU64]>,
    /// The WQ was disabled by `halt`: the device touches none of this memory any more.
    stopped: AtomicBool,
}

impl DsaEngine {
    /// Starts a channel on WQ `wq`: enables it, allocates the ring and records.
    pub(crate) fn start(
        control: Arc<dyn WqControl>,
        portals: Arc<dyn PortalWindow>,
        portal_offset: usize,
        wq: &WqSettings,
        capabilities: CapMask,
        pool: &DmaPool,
        config: DsaQueueConfig,
    ) -> Result<Arc<DsaQueue>, DsaError> {
        if !(4..=12).contains(&config.ring_order) {
            return Err(DsaError::BadConfig(format!(
                "ring order {} is outside 4..=12",
                config.ring_order
            )));
        }
        let max_batch = match config.max_batch {
            0 => wq.max_batch,
            asked => asked.min(wq.max_batch),
        };
        let size = 1u32 << config.ring_order;
        let memory = QueueMemory {
            descriptors: pool.alloc(size as usize * 64, 4096)?,
            records: pool.alloc(size as usize * 32, 4096)?,
            batch_records: pool.alloc(size as usize * 32, 4096)?,
        };
        if portal_offset % portal::SLOT != 0 || portal_offset + portal::SLOT > portals.len() {
            return Err(DsaError::BadConfig(format!(
                "WQ {}'s portal at {portal_offset:#x} is not a slot of the portal window ({} bytes)",
                wq.index,
                portals.len()
            )));
        }
        let records_len = memory.records.len();
        let records_iova = memory
            .records
            .translate(0, records_len)
            .ok()
            .filter(|&(_, run)| run == records_len)
            .map(|(iova, _)| iova);
        control.enable()?;
        let engine = DsaEngine {
            control,
            portals,
            portal: portal_offset,
            dedicated: wq.dedicated,
            capabilities,
            credits: u64::from(wq.size.max(1)),
            max_transfer: wq.max_transfer,
            max_batch: max_batch.max(1),
            resolve_faults: pool.iova_mode() == IovaMode::Va,
            config,
            pool: pool.clone(),
            memory: ManuallyDrop::new(memory),
            records_iova,
            mask: size - 1,
            submitted: AtomicU32::new(0),
            portal_writes: AtomicU64::new(0),
            portal_done: AtomicU64::new(0),
            units: (0..size).map(|_| AtomicU64::new(0)).collect(),
            stopped: AtomicBool::new(false),
        };
        Ok(Arc::new(RingQueue {
            ring: Ring::new(size),
            engine,
        }))
    }

    #[inline]
    fn index(&self, slot: u32) -> usize {
        (slot & self.mask) as usize
    }

    /// The descriptor of `slot`.
    #[inline]
    pub(crate) fn descriptor(&self, slot: u32) -> *mut Descriptor {
        let base = self.memory.descriptors.as_mut_ptr().cast::<Descriptor>();
        // SAFETY: the block holds `mask + 1` descriptors and the index is masked.
        unsafe { base.add(self.index(slot)) }
    }

    #[inline]
    fn record(&self, slot: u32) -> *mut CompletionRecord {
        let base = self.memory.records.as_mut_ptr().cast::<CompletionRecord>();
        // SAFETY: the block holds `mask + 1` records and the index is masked.
        unsafe { base.add(self.index(slot)) }
    }

    #[inline]
    fn batch_record(&self, slot: u32) -> *mut CompletionRecord {
        let base = self
            .memory
            .batch_records
            .as_mut_ptr()
            .cast::<CompletionRecord>();
        // SAFETY: as for `record`.
        unsafe { base.add(self.index(slot)) }
    }

    /// The IOVA of `slot`'s completion record.
    #[inline]
    pub(crate) fn record_iova(&self, slot: u32) -> u64 {
        let offset = self.index(slot) * 32;
        match self.records_iova {
            Some(base) => base + offset as u64,
            None => iova_at(&self.memory.records, offset),
        }
    }

    /// Zeroes `slot`'s record before its descriptor goes out. The caller owns the slot (built
    /// it and has not published it, or is the retirer sending it again).
    #[inline]
    pub(crate) fn clear_record(&self, slot: u32) {
        // SAFETY: the record is ours (contract) and the device is not writing it: its last
        // use was retired, and the status byte was read non-zero or the slot never ran.
        unsafe { ptr::write_volatile(self.record(slot), CompletionRecord::default()) };
    }

    /// The status byte of a record, read before anything else in it.
    #[inline]
    fn status_of(record: *mut CompletionRecord) -> u8 {
        // SAFETY: the record is live DMA memory of this queue; the device writes its status
        // byte last with release ordering, and this acquire load pairs with it.
        unsafe { AtomicU8::from_ptr(record.cast::<u8>()) }.load(Ordering::Acquire)
    }

    /// Portal writes outstanding.
    #[inline]
    fn in_use(&self) -> u64 {
        self.portal_writes.load(Ordering::Relaxed) - self.portal_done.load(Ordering::Acquire)
    }

    /// One descriptor to the portal; whether the WQ took it.
    #[inline]
    fn send(&self, descriptor: &Descriptor) -> bool {
        if self.dedicated {
            self.portals.write_descriptor(self.portal, descriptor);
            return true;
        }
        (0..self.config.enqueue_attempts.max(1))
            .any(|_| self.portals.enqueue_descriptor(self.portal, descriptor) == Enqueue::Accepted)
    }

    /// Hands announced slots up to `target` to the device, as far as WQ entries allow. The
    /// caller holds the doorbell (or is the owner).
    fn push(&self, target: u32) {
        let mut at = self.submitted.load(Ordering::Relaxed);
        let mut writes = self.portal_writes.load(Ordering::Relaxed);
        while at != target {
            let outstanding = writes - self.portal_done.load(Ordering::Acquire);
            if self.dedicated && outstanding >= self.credits {
                break;
            }
            // SAFETY: the slot is published and not handed over; only the doorbell's holder
            // touches it now.
            let fenced = unsafe { (*self.descriptor(at)).flags() } & flags::FENCE != 0;
            if fenced && outstanding > 0 {
                break; // its fence orders it after everything out: wait for that to finish
            }
            let to_end = self.mask + 1 - (at & self.mask);
            let count = target
                .wrapping_sub(at)
                .min(to_end)
                .min(self.max_batch)
                .min(self.list_run(at));
            let unit = (u64::from(at) << 32) | u64::from(count);
            for k in 0..count {
                self.units[self.index(at.wrapping_add(k))].store(unit, Ordering::Relaxed);
            }
            let sent = if count == 1 {
                // SAFETY: as above; a plain descriptor may not carry a fence.
                let descriptor = unsafe {
                    (*self.descriptor(at)).clear_flags(flags::FENCE);
                    *self.descriptor(at)
                };
                // The descriptor's record (zeroed at build) is visible before the device
                // can write it; the portal store is not ordered with earlier stores on x86
                // (SFENCE), which the release fence also gives.
                fence(Ordering::Release);
                self.send(&descriptor)
            } else {
                let record = self.batch_record(at);
                // SAFETY: the batch record of this first slot was read non-zero by the retirer
                // before it let the slot go (or was never used).
                unsafe { ptr::write_volatile(record, CompletionRecord::default()) };
                let mut batch = Descriptor::new(opcode::BATCH, flags::CRAV | flags::RCR);
                batch.completion = iova_at(&self.memory.batch_records, self.index(at) * 32);
                batch.src = iova_at(&self.memory.descriptors, self.index(at) * 64);
                batch.size = count;
                fence(Ordering::Release);
                self.send(&batch)
            };
            if !sent {
                break;
            }
            writes += 1;
            self.portal_writes.store(writes, Ordering::Relaxed);
            at = at.wrapping_add(count);
            // Release: the retirer that sees the new index sees the units above.
            self.submitted.store(at, Ordering::Release);
        }
    }

    /// Descriptors from `slot` on that are contiguous in IOVA space (a batch list must be).
    #[inline]
    fn list_run(&self, slot: u32) -> u32 {
        let offset = self.index(slot) * 64;
        let left = self.memory.descriptors.len() - offset;
        self.memory
            .descriptors
            .translate(offset, left)
            .map_or(1, |(_, run)| (run / 64).max(1) as u32)
    }

    /// Sends the rest of the announced slots if nobody holds the doorbell; afterwards rings
    /// for whatever producers published while it was held.
    fn push_deferred(&self, ring: &Ring<DsaRetire>) {
        let Some(mut doorbell) = ring.doorbell.try_exclusive() else {
            return;
        };
        if ring.health().works() {
            let announced = ring.doorbell.announced();
            self.push(announced);
            doorbell.set_announced(announced);
        }
        drop(doorbell);
        ring.doorbell.ring(&ring.slots, |target| {
            if ring.health().works() {
                self.push(target);
                ring.note_doorbell();
            }
        });
    }

    /// Sends `slot` again for what is left after a page fault; whether it went out.
    fn resume(&self, r: &mut Retirer<'_, DsaRetire>, slot: u32) -> Option<bool> {
        if !self.resolve_faults || r.side.engine.resumes >= self.config.fault_resumes {
            return None;
        }
        // SAFETY: the record was written (status read non-zero) and the device is done with
        // the slot; the descriptor is ours to rewrite until it is sent again.
        let (record, mut descriptor) = unsafe { (*self.record(slot), *self.descriptor(slot)) };
        let done = record.bytes_completed;
        let op = descriptor.opcode();
        if done >= descriptor.size || !matches!(op, opcode::MEMMOVE | opcode::MEMFILL) {
            return None;
        }
        if !touch_fault(&descriptor, record.fault_address, record.status) {
            return None;
        }
        let Some(doorbell) = r.ring.doorbell.try_exclusive() else {
            return Some(false);
        };
        if self.dedicated && self.in_use() >= self.credits {
            return Some(false);
        }
        descriptor.size -= done;
        if record.result == 0 {
            descriptor.dst += u64::from(done);
            if op == opcode::MEMMOVE {
                descriptor.src += u64::from(done);
            } else {
                descriptor.src = descriptor.src.rotate_right(8 * (done % 8));
            }
        }
        descriptor.clear_flags(flags::FENCE);
        // SAFETY: as above.
        unsafe { *self.descriptor(slot) = descriptor };
        self.clear_record(slot);
        fence(Ordering::Release);
        if !self.send(&descriptor) {
            // Not taken: leave a record the next poll will try again with.
            // SAFETY: as above; the device did not take the descriptor.
            unsafe { ptr::write_volatile(self.record(slot), record) };
            return Some(false);
        }
        let writes = self.portal_writes.load(Ordering::Relaxed) + 1;
        self.portal_writes.store(writes, Ordering::Relaxed);
        drop(doorbell);
        r.side.engine.resumed = Some(slot);
        r.side.engine.resumes += 1;
        Some(true)
    }

    /// How the operation at the tail stands: `None` while it is not finished, else its result,
    /// its slot count and how many portal writes end inside it.
    fn examine(
        &self,
        r: &mut Retirer<'_, DsaRetire>,
        submitted: u32,
    ) -> Option<(Result<(), OpError>, u64, u32, u64)> {
        let tail = r.side.tail;
        let mut result = Ok(());
        let mut value = 0u64;
        let mut offset = 0u64;
        let mut ends = 0u64;
        let mut k = 0u32;
        loop {
            let slot = tail.wrapping_add(k);
            if slot == submitted {
                return None;
            }
            let (first, count) = self.unit(slot);
            // Read only when needed: a member with no record, or a batch's last slot.
            let batch_done =
                || count > 1 && Self::status_of(self.batch_record(first)) != status::NONE;
            let resumed = r.side.engine.resumed == Some(slot);
            let mut own = Self::status_of(self.record(slot));
            let mut abandoned = false;
            if own == status::NONE && !resumed && batch_done() {
                // The device writes the batch's record after every member's: read ours again
                // now that the batch is seen done (acquire). Still none: it was never run.
                own = Self::status_of(self.record(slot));
                abandoned = own == status::NONE;
            }
            match status::code(own) {
                status::NONE if abandoned => result = result.and(Err(ABANDONED)),
                status::NONE => return None,
                status::SUCCESS | status::SUCCESS_FALSE_PREDICATE => {}
                status::PAGE_FAULT => match self.resume(r, slot) {
                    Some(_) => return None,
                    None => result = result.and(Err(UNRESOLVED_FAULT)),
                },
                _ => result = result.and(Err(device_error(own))),
            }
            if own != status::NONE {
                // SAFETY: the status was read non-zero (acquire): the record is complete, and
                // the descriptor is ours while the slot is not retired. Copies and fills read
                // the opcode alone.
                let code = unsafe { (*self.descriptor(slot)).opcode() };
                if matches!(code, opcode::COMPARE | opcode::CRC_GEN | opcode::COPY_CRC) {
                    // SAFETY: as above.
                    let (record, size) =
                        unsafe { (*self.record(slot), (*self.descriptor(slot)).size) };
                    if code != opcode::COMPARE {
                        value = u64::from(!(record.op_specific0 as u32));
                    } else if value == 0 && record.result != 0 {
                        value = 1 + offset + u64::from(record.bytes_completed);
                    }
                    offset += u64::from(size);
                }
            }
            if slot == first.wrapping_add(count - 1) {
                if count > 1 && !batch_done() {
                    return None; // the batch's record is still to come
                }
                ends += 1;
            }
            if resumed {
                ends += 1;
            }
            // SAFETY: the slot is published (it was submitted), and we are the retirer.
            if unsafe { r.ring.meta(slot) }.ends_op {
                return Some((result, value, k + 1, ends));
            }
            k += 1;
        }
    }

    #[inline]
    fn unit(&self, slot: u32) -> (u32, u32) {
        let unit = self.units[self.index(slot)].load(Ordering::Relaxed);
        ((unit >> 32) as u32, unit as u32)
    }

    /// Nothing progressed for a while: ask the WQ's control where it stands.
    fn check_stall(&self, r: &mut Retirer<'_, DsaRetire>, sink: &mut Sink<'_>) {
        let stopped = || self.device_stopped();
        match self.control.state() {
            WqState::Enabled => {}
            WqState::Gone | WqState::Disabled => {
                r.abandon(OpError::DeviceRemoved, Health::Removed, sink, stopped)
            }
            WqState::Halted => r.abandon(OpError::ChannelFailed, Health::Failed, sink, stopped),
        }
    }
}

/// The IOVA of the byte at `offset` in `block`.
#[inline]
fn iova_at(block: &DmaBlock, offset: usize) -> u64 {
    block.translate(offset, 1).map_or(0, |(iova, _)| iova)
}

/// Faults the page at `address` in, if it lies in one of the descriptor's buffers: read it,
/// or for a write fault write back what it holds. Whether it did.
fn touch_fault(descriptor: &Descriptor, address: u64, status_byte: u8) -> bool {
    let size = u64::from(descriptor.size);
    let inside = |base: u64| base <= address && address < base.saturating_add(size);
    let write = status_byte & status::FAULT_ON_WRITE != 0;
    let in_buffer = if write {
        inside(descriptor.dst)
    } else {
        descriptor.opcode() == opcode::MEMMOVE && inside(descriptor.src)
    };
    if !in_buffer {
        return false;
    }
    let byte = address as usize as *mut u8;
    // SAFETY: the address lies in a buffer of an operation in flight (checked above), which
    // its submitter keeps allocated and untouched until completion, and the device stopped at
    // it: nothing else accesses the byte now. Writing back its own value changes nothing the
    // operation will not overwrite.
    unsafe {
        let value = ptr::read_volatile(byte);
        if write {
            ptr::write_volatile(byte, value);
        }
    }
    true
}

impl RingEngine for DsaEngine {
    type RetireState = DsaRetire;
    type Scratch = DsaScratch;

    fn scratch(&self) -> DsaScratch {
        DsaScratch::new(self.pool.translator())
    }

    #[inline]
    fn supports(&self, cap: Capability) -> bool {
        self.capabilities.has(cap)
    }

    #[inline]
    fn build(
        &self,
        ring: &Ring<DsaRetire>,
        producer: &mut Producer,
        scratch: &mut DsaScratch,
        op: Op,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.build_op(ring, producer, scratch, op, user_data, flags)
    }

    #[inline]
    fn seal_batch(&self, _scratch: &mut DsaScratch, _last: u32) {}

    #[inline]
    fn write_doorbell(&self, announce: u32) {
        self.push(announce);
    }

    fn retire(&self, r: &mut Retirer<'_, DsaRetire>, sink: &mut Sink<'_>) {
        let submitted = self.submitted.load(Ordering::Acquire);
        let mut progressed = false;
        while r.side.tail != submitted {
            let Some((result, value, span, ends)) = self.examine(r, submitted) else {
                break;
            };
            let tail = r.side.tail;
            let retired = r.retire_valued(span, sink, result, value);
            if retired < span {
                // A sink is full: the operation's last slot stays. Count the portal writes
                // that ended in the slots that did go.
                let ended = (0..retired)
                    .filter(|&k| {
                        let slot = tail.wrapping_add(k);
                        let (first, count) = self.unit(slot);
                        slot == first.wrapping_add(count - 1) || r.side.engine.resumed == Some(slot)
                    })
                    .count() as u64;
                self.note_done(ended);
                progressed |= retired > 0;
                break;
            }
            self.note_done(ends);
            r.side.engine.resumed = None;
            r.side.engine.resumes = 0;
            progressed = true;
        }
        if progressed {
            r.side.engine.stalled_polls = 0;
        } else if r.side.tail != r.ring.slots.published() {
            r.side.engine.stalled_polls += 1;
            if r.side.engine.stalled_polls >= self.config.stall_check_polls {
                r.side.engine.stalled_polls = 0;
                self.check_stall(r, sink);
            }
        }
        if self.submitted.load(Ordering::Relaxed) != r.ring.doorbell.announced()
            && r.ring.health().works()
        {
            self.push_deferred(r.ring);
        }
    }

    fn device_stopped(&self) -> bool {
        self.quiet()
    }

    fn halt(&self) {
        let quiet = self.control.disable().is_ok() || !self.control.state().may_run();
        if quiet {
            self.stopped.store(true, Ordering::Release);
        }
    }
}

impl DsaEngine {
    /// Whether the device is known not to touch the channel's memory: the WQ was stopped, no
    /// longer runs, or holds nothing of this channel's (every portal write's record retired).
    fn quiet(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
            || self.in_use() == 0
            || !self.control.state().may_run()
    }

    /// Counts portal writes whose records were retired. The retirer is the only writer.
    #[inline]
    fn note_done(&self, count: u64) {
        if count > 0 {
            let done = self.portal_done.load(Ordering::Relaxed) + count;
            // Release: the sender that reads it (acquire) may reuse the entries.
            self.portal_done.store(done, Ordering::Release);
        }
    }
}

impl Drop for DsaEngine {
    fn drop(&mut self) {
        // The device must be done with the ring and records before they go back to the pool;
        // if it cannot be stopped they are leaked rather than handed to someone else.
        if self.quiet() || self.control.disable().is_ok() {
            // SAFETY: dropped exactly once, here, and the device no longer accesses it.
            unsafe { ManuallyDrop::drop(&mut self.memory) };
        }
    }
}
