//! The software engine's half of a ring channel: operations are written into the ring as
//! they are (addresses, length, pattern), and whoever retires the ring carries them out on
//! its own CPU, oldest first, before reporting them done. So work runs at poll time, in
//! submission order, only once announced by a doorbell, and completes exactly like a
//! device's: one completion per operation at a later poll.
//!
//! In-order execution makes every operation fenced already, so [`OpFlags::FENCE`] needs no
//! slot of its own.
//!
//! An operation split into pieces that computes a value (compare, CRC-32C, copy with CRC)
//! carries its running state in the retire side from piece to piece, since pieces run in
//! order: the raw CRC so far (seeded with `!initial` at the first piece), or the first
//! difference found. The last piece's slot keeps the operation's value for the report.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{PieceExecutor, SoftConfig, TraceEvent};

use crate::capability::Capability;
use crate::mem::Translator;
use crate::queue::op::crc32c_raw;
use crate::queue::ring::{Op, Producer, Retirer, Ring, RingEngine, Sink, SlotMeta};
use crate::queue::{Health, OpError, OpFlags, SubmitError};

/// What an injected failure reports.
const INJECTED: &str = "injected fault";

/// What a piece does, with the addresses beside `Work::addr` at the piece's own offset.
#[derive(Clone, Copy, Default)]
enum Task {
    /// Copy from `src` to `addr`.
    Copy { src: usize },
    /// Fill `addr` with the pattern, rotated to the phase the piece starts at.
    Fill { pattern: u64 },
    /// Compare `addr` with `b`.
    Compare { b: usize },
    /// CRC-32C of `addr`, the operation starting from the standard CRC `initial`.
    Crc { initial: u32 },
    /// Copy from `src` to `addr`, and CRC-32C of the data.
    CopyCrc { src: usize, initial: u32 },
    /// Copy from `src` to `addr` and to `dst2`.
    Dualcast { dst2: usize, src: usize },
    /// Nothing: a marker.
    #[default]
    Null,
}

impl Task {
    /// The same task for the piece `offset` bytes into the operation.
    fn at(self, offset: usize) -> Task {
        match self {
            Task::Copy { src } => Task::Copy { src: src + offset },
            Task::Fill { pattern } => Task::Fill {
                pattern: pattern.rotate_right(8 * (offset % 8) as u32),
            },
            Task::Compare { b } => Task::Compare { b: b + offset },
            Task::Crc { initial } => Task::Crc { initial },
            Task::CopyCrc { src, initial } => Task::CopyCrc {
                src: src + offset,
                initial,
            },
            Task::Dualcast { dst2, src } => Task::Dualcast {
                dst2: dst2 + offset,
                src: src + offset,
            },
            Task::Null => Task::Null,
        }
    }
}

/// One slot: a piece of an operation as the CPU will carry it out.
#[derive(Clone, Copy, Default)]
struct Work {
    /// The destination; a compare's first buffer; a CRC's source.
    addr: usize,
    task: Task,
    len: usize,
    /// Where the piece starts in its operation (0: the first piece).
    offset: usize,
    /// Set by the executor: how the piece failed (code 0: it did not).
    failure: Failure,
    /// The last piece of an operation that computes a value: the value, once carried out.
    value: u64,
}

/// The faults a test or application can inject into one channel.
#[derive(Debug, Default)]
pub(crate) struct ChannelFaults {
    /// The channel takes no work while set.
    pub(crate) stalled: AtomicBool,
    /// Pieces to carry out before the injected failure; 0: none armed.
    pub(crate) fail_in: AtomicU32,
    /// The code the injected failure reports.
    pub(crate) fail_code: AtomicU32,
}

/// The faults of a whole device, and its record of the work it carried out.
#[derive(Debug, Default)]
pub(crate) struct DeviceFaults {
    /// The device left: nothing runs any more, and the channels fail their work with
    /// "device removed".
    pub(crate) removed: AtomicBool,
    /// Work carried out is recorded while set.
    pub(crate) tracing: AtomicBool,
    /// Device-wide sequence numbers for the record.
    sequence: AtomicU64,
    pub(crate) trace: Mutex<Vec<TraceEvent>>,
}

impl DeviceFaults {
    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }
}

/// The retire side's own state.
#[derive(Default)]
pub(crate) struct SoftRetire {
    /// Slots before this index have been carried out.
    executed: u32,
    /// How an earlier piece of the operation being carried out failed (code 0: it did not):
    /// its later pieces are skipped and fail alike, so the operation completes with it.
    failing: Failure,
    /// The running state of the operation being carried out: the raw CRC so far, or for a
    /// compare 1 + the offset of the first difference found (0: none yet).
    running: u64,
}

/// A piece's failure: the device's code (0: none) and what it means.
#[derive(Clone, Copy, Default)]
struct Failure {
    code: u32,
    cause: &'static str,
}

/// A submitter's own state.
pub(crate) struct SoftScratch {
    /// Checks that buffers are DMA memory, when the device was given a pool.
    translator: Option<Translator>,
}

/// The software engine of one channel.
pub(crate) struct SoftEngine {
    channel: usize,
    work: Box<[UnsafeCell<Work>]>,
    mask: u32,
    fill_supported: bool,
    /// Compare, CRC-32C, copy with CRC and dualcast.
    extended: bool,
    max_transfer: usize,
    pool: Option<crate::mem::DmaPool>,
    executor: Option<Arc<dyn PieceExecutor>>,
    faults: Arc<ChannelFaults>,
    device: Arc<DeviceFaults>,
}

// SAFETY: a slot's work is written by the producer that claimed it before publication and read
// and updated by the retirer after, the same protocol as the ring's own per-slot bookkeeping.
unsafe impl Sync for SoftEngine {}

impl SoftEngine {
    pub(crate) fn new(
        channel: usize,
        size: u32,
        config: &SoftConfig,
        faults: Arc<ChannelFaults>,
        device: Arc<DeviceFaults>,
    ) -> SoftEngine {
        SoftEngine {
            channel,
            work: (0..size)
                .map(|_| UnsafeCell::new(Work::default()))
                .collect(),
            mask: size - 1,
            fill_supported: config.fill,
            extended: config.extended_ops && config.executor.is_none(),
            max_transfer: config.max_transfer,
            pool: config.pool.clone(),
            executor: config.executor.clone(),
            faults,
            device,
        }
    }

    fn slot(&self, index: u32) -> *mut Work {
        self.work[(index & self.mask) as usize].get()
    }

    /// Refuses ranges that are not DMA memory, as a device behind an IOMMU would.
    fn check(translator: &mut Translator, start: usize, len: usize) -> Result<(), SubmitError> {
        let mut done = 0;
        while done < len {
            let (_, run) = translator
                .translate(start + done, len - done)
                .map_err(SubmitError::Unmapped)?;
            done += run;
        }
        Ok(())
    }

    /// Carries out slot `index` on this CPU (or has the executor's device do it), or fails it
    /// if a failure is due or an earlier piece of its operation failed, and returns how it
    /// failed (code 0: it did not). `running` is the operation's running state (see
    /// [`SoftRetire`]); `ends_op`: the slot is its operation's last, which then keeps the
    /// value.
    fn execute(&self, index: u32, failing: Failure, running: &mut u64, ends_op: bool) -> Failure {
        // SAFETY: the slot is published and announced, and the caller is the retirer, the only
        // one touching it until it is retired.
        let work = unsafe { &mut *self.slot(index) };
        work.failure = failing;
        let due = self.faults.fail_in.load(Ordering::Acquire);
        if failing.code == 0 && due > 0 {
            self.faults.fail_in.store(due - 1, Ordering::Release);
            if due == 1 {
                work.failure = Failure {
                    code: self.faults.fail_code.load(Ordering::Acquire).max(1),
                    cause: INJECTED,
                };
            }
        }
        if work.failure.code != 0 {
            return work.failure;
        }
        let tracing = self.device.tracing.load(Ordering::Relaxed);
        let start = if tracing {
            self.device.next_sequence()
        } else {
            0
        };
        match (work.task, &self.executor) {
            (Task::Copy { src }, Some(executor)) => {
                // SAFETY: the submitter promised both buffers stay valid and untouched by
                // anyone else until the completion is returned, which happens after this; with
                // a pool (which an executor's device has) they were checked to be its memory.
                let outcome = unsafe { executor.copy(self.channel, work.addr, src, work.len) };
                if let Err(failure) = outcome {
                    work.failure = Failure {
                        code: failure.code.max(1),
                        cause: failure.cause,
                    };
                    return work.failure;
                }
            }
            // SAFETY: as `run_on_cpu` requires: the submitter keeps the piece's buffers valid and
            // to itself until the completion, which comes after this.
            (task, _) => unsafe { run_on_cpu(work.addr, work.len, work.offset, task, running) },
        }
        if ends_op {
            work.value = match work.task {
                Task::Compare { .. } => *running,
                Task::Crc { .. } | Task::CopyCrc { .. } => u64::from(!(*running as u32)),
                _ => 0,
            };
        }
        if tracing {
            let event = TraceEvent {
                channel: self.channel,
                start,
                finish: self.device.next_sequence(),
                bytes: work.len as u64,
            };
            crate::sync::lock_std(&self.device.trace).push(event);
        }
        Failure::default()
    }

    /// The outcome of carried-out slot `index`, and the value it completes with.
    fn outcome(&self, index: u32) -> (Result<(), OpError>, u64) {
        // SAFETY: as in `execute`.
        let work = unsafe { &*self.slot(index) };
        match work.failure {
            Failure { code: 0, .. } => (Ok(()), work.value),
            Failure { code, cause } => (Err(OpError::Device { code, cause }), 0),
        }
    }
}

impl RingEngine for SoftEngine {
    type RetireState = SoftRetire;
    type Scratch = SoftScratch;

    fn scratch(&self) -> SoftScratch {
        SoftScratch {
            translator: self.pool.as_ref().map(|pool| pool.translator()),
        }
    }

    #[inline]
    fn supports(&self, cap: Capability) -> bool {
        match cap {
            Capability::Memcpy => true,
            Capability::Fill => self.fill_supported,
            Capability::Compare
            | Capability::Crc32c
            | Capability::CopyCrc
            | Capability::Dualcast => self.extended,
            Capability::Xor | Capability::Pq | Capability::XorVal | Capability::PqVal => false,
        }
    }

    fn build(
        &self,
        ring: &Ring<SoftRetire>,
        producer: &mut Producer,
        scratch: &mut SoftScratch,
        op: Op,
        user_data: u64,
        _flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let (addr, task) = match op {
            Op::Copy { dst, src, .. } => (dst, Task::Copy { src }),
            Op::Fill { dst, pattern, .. } => (dst, Task::Fill { pattern }),
            Op::Compare { a, b, .. } => (a, Task::Compare { b }),
            Op::Crc32c { src, initial, .. } => (src, Task::Crc { initial }),
            Op::CopyCrc {
                dst, src, initial, ..
            } => (dst, Task::CopyCrc { src, initial }),
            Op::Dualcast {
                dst1, dst2, src, ..
            } => (dst1, Task::Dualcast { dst2, src }),
            Op::Null => (0, Task::Null),
        };
        // The ring refused what this device does not support before asking (`supports`).
        let len = op.len();
        if let Some(translator) = &mut scratch.translator {
            if len > 0 {
                Self::check(translator, addr, len)?;
                let other = match task {
                    Task::Copy { src } | Task::CopyCrc { src, .. } => [Some(src), None],
                    Task::Compare { b } => [Some(b), None],
                    Task::Dualcast { dst2, src } => [Some(dst2), Some(src)],
                    Task::Fill { .. } | Task::Crc { .. } | Task::Null => [None, None],
                };
                for start in other.into_iter().flatten() {
                    Self::check(translator, start, len)?;
                }
            }
        }
        // More pieces than a ring holds are refused by the claim below.
        let pieces = u32::try_from(len.div_ceil(self.max_transfer).max(1)).unwrap_or(u32::MAX);
        let start = producer.claim(ring, pieces)?;
        for k in 0..pieces {
            let offset = k as usize * self.max_transfer;
            let piece = (len - offset.min(len)).min(self.max_transfer);
            let index = start.wrapping_add(k);
            let work = Work {
                addr: addr + offset,
                task: task.at(offset),
                len: piece,
                offset,
                failure: Failure::default(),
                value: 0,
            };
            let last = k + 1 == pieces;
            // SAFETY: the slot was claimed by this producer and is not published yet.
            unsafe {
                self.slot(index).write(work);
                ring.set_meta(
                    index,
                    SlotMeta {
                        ends_op: last,
                        route: producer.route,
                        bytes: piece as u32,
                        user_data: if last { user_data } else { 0 },
                    },
                );
            }
        }
        producer.written(ring, start, pieces);
        Ok(())
    }

    fn seal_batch(&self, _scratch: &mut SoftScratch, _last: u32) {}

    fn write_doorbell(&self, _announce: u32) {
        // The announcement itself (the doorbell's index) is what the executor reads.
    }

    fn retire(&self, r: &mut Retirer<'_, SoftRetire>, sink: &mut Sink<'_>) {
        let gone = self.device.removed.load(Ordering::Acquire);
        if !gone && !self.faults.stalled.load(Ordering::Acquire) {
            let announced = r.ring.doorbell.announced();
            let state = &mut r.side.engine;
            while state.executed != announced {
                // A removal whose drain time ran out stops the work between pieces: what did
                // not run fails with "device removed" below, as on a device that was stopped.
                if !r.ring.health().works() {
                    break;
                }
                // SAFETY: an announced slot, read by the retirer.
                let ends_op = unsafe { r.ring.meta(state.executed) }.ends_op;
                let failing =
                    self.execute(state.executed, state.failing, &mut state.running, ends_op);
                state.failing = if ends_op { Failure::default() } else { failing };
                state.executed = state.executed.wrapping_add(1);
            }
        }
        // Report what ran, in runs of equal outcome.
        while r.side.tail != r.side.engine.executed {
            let (result, value) = self.outcome(r.side.tail);
            let mut run = 1;
            while r.side.tail.wrapping_add(run) != r.side.engine.executed
                && self.outcome(r.side.tail.wrapping_add(run)) == (result, value)
            {
                run += 1;
            }
            if r.retire_valued(run, sink, result, value) < run {
                return; // a sink is full; the rest comes next time
            }
        }
        if gone {
            // What ran was reported above; nothing else will run.
            r.abandon(OpError::DeviceRemoved, Health::Removed, sink, || true);
        } else if !r.ring.health().works() {
            // Stopped while carrying the work out: the rest fails with the stop's cause.
            r.abandon_stopped(sink, || true);
        }
    }

    fn device_stopped(&self) -> bool {
        // Work runs only inside `retire`, which is not running when this is asked.
        true
    }

    fn halt(&self) {}
}

/// Carries out one piece of `task` on this CPU: `len` bytes at `addr` (the destination, a
/// compare's first buffer, a CRC's source), `offset` bytes into its operation, updating the
/// operation's `running` state (see [`SoftRetire`]).
///
/// # Safety
///
/// Every buffer the task names is valid for `len` bytes (reads of sources and compared
/// buffers, writes of destinations), and nobody else touches them while this runs.
unsafe fn run_on_cpu(addr: usize, len: usize, offset: usize, task: Task, running: &mut u64) {
    // SAFETY: for each arm, the buffers are valid for `len` bytes and ours (the contract).
    let bytes = |at: usize| unsafe { std::slice::from_raw_parts(at as *const u8, len) };
    match task {
        // SAFETY: as above; `ptr::copy` allows the two to overlap, as a copy's may.
        Task::Copy { src } => unsafe { std::ptr::copy(src as *const u8, addr as *mut u8, len) },
        Task::Fill { pattern } => {
            let pattern = pattern.to_le_bytes();
            for i in 0..len {
                // SAFETY: as above, for the destination.
                unsafe { (addr as *mut u8).add(i).write(pattern[i % 8]) };
            }
        }
        Task::Compare { b } => {
            if offset == 0 {
                *running = 0;
            }
            if *running == 0 {
                if let Some(at) = bytes(addr).iter().zip(bytes(b)).position(|(x, y)| x != y) {
                    *running = (offset + at) as u64 + 1;
                }
            }
        }
        Task::Crc { initial } => {
            *running = u64::from(crc_piece(*running, offset, initial, bytes(addr)))
        }
        Task::CopyCrc { src, initial } => {
            // The CRC is of the source as it was: taken before the copy, which may overlap it.
            *running = u64::from(crc_piece(*running, offset, initial, bytes(src)));
            // SAFETY: as for a copy.
            unsafe { std::ptr::copy(src as *const u8, addr as *mut u8, len) };
        }
        Task::Dualcast { dst2, src } => {
            // SAFETY: as for a copy; the submit refused buffers that overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, addr as *mut u8, len);
                std::ptr::copy_nonoverlapping(src as *const u8, dst2 as *mut u8, len);
            }
        }
        Task::Null => {}
    }
}

/// The raw CRC after one piece: seeded with `!initial` at the operation's first piece, with
/// the previous piece's raw CRC (`running`) after that.
fn crc_piece(running: u64, offset: usize, initial: u32, bytes: &[u8]) -> u32 {
    let seed = if offset == 0 {
        !initial
    } else {
        running as u32
    };
    crc32c_raw(seed, bytes)
}
