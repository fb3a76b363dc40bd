//! What an engine does with a descriptor: the checks of `reference/dsa.md` §4, the
//! operations, batches with Fence, partial completion at the first unmapped byte, and the
//! report: a completion record whose status byte is stored last with Release ordering, or
//! SWERROR.
//!
//! Every memory access goes through `emu/dma.rs` on ranges the device's `DeviceMemory`
//! resolved; an operation walks its operands together in pieces that are contiguous in host
//! memory for all of them, in address order, so that a fault leaves exactly the bytes before
//! it done.

use super::super::dma::{self, HostRange};
use super::device::{Core, DsaShared, Queued, SwerrorDetail, SUPPORTED_OPCODES};
use super::DsaTraceEvent;
use crate::dsa::spec::{crc32c, flags, opcode, status, Descriptor};

/// Bytes an operation that reads into a buffer handles per step.
const STEP: usize = 4096;
/// Bytes of a completion record.
const RECORD: usize = 32;

/// Where an operation stopped early.
#[derive(Clone, Copy, Debug)]
struct PageFault {
    /// Bytes done before it.
    offset: usize,
    /// The IOVA that could not be reached.
    address: u64,
    write: bool,
}

/// What a descriptor completed with.
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    status: u8,
    result: u8,
    bytes_completed: u32,
    fault_address: u64,
    /// Record bytes 16–23: the CRC, or the invalid-flags bitmap.
    op_specific: u64,
    /// Bytes processed, for the statistics.
    bytes: u64,
    /// The fault was on a write.
    write: bool,
}

impl Outcome {
    fn success(bytes: u64) -> Outcome {
        Outcome {
            status: status::SUCCESS,
            bytes,
            ..Outcome::default()
        }
    }

    fn error(code: u8) -> Outcome {
        Outcome {
            status: code,
            ..Outcome::default()
        }
    }

    fn invalid_flags(bits: u32) -> Outcome {
        Outcome {
            op_specific: bits.into(),
            ..Outcome::error(status::INVALID_FLAGS)
        }
    }

    fn fault(fault: PageFault) -> Outcome {
        let write = if fault.write {
            status::FAULT_ON_WRITE
        } else {
            0
        };
        Outcome {
            status: status::PAGE_FAULT | write,
            bytes_completed: fault.offset as u32,
            fault_address: fault.address,
            bytes: fault.offset as u64,
            write: fault.write,
            ..Outcome::default()
        }
    }

    fn succeeded(&self) -> bool {
        self.status == status::SUCCESS
    }
}

/// An address an operation reads or writes.
#[derive(Clone, Copy, Debug)]
struct Operand {
    iova: u64,
    write: bool,
}

fn read(iova: u64) -> Operand {
    Operand { iova, write: false }
}

fn write(iova: u64) -> Operand {
    Operand { iova, write: true }
}

/// How one descriptor runs: its WQ's limits and an injected page fault (at byte, on write).
#[derive(Clone, Copy, Debug)]
struct Context {
    wq: usize,
    max_transfer: u64,
    max_batch: u64,
    engines: usize,
    inject: Option<(u32, bool)>,
}

/// Counts an injected fault down; true when this descriptor is the one.
fn hits<T: Copy>(plan: &mut Option<(u32, T)>) -> Option<T> {
    let (nth, what) = (*plan)?;
    if nth <= 1 {
        *plan = None;
        Some(what)
    } else {
        *plan = Some((nth - 1, what));
        None
    }
}

fn overlaps(a: u64, b: u64, len: u64) -> bool {
    let (a, b, len) = (u128::from(a), u128::from(b), u128::from(len));
    a < b + len && b < a + len
}

impl DsaShared {
    /// Runs a descriptor `wq` took from its queue and reports it.
    pub(super) fn execute(&self, core: &mut Core, wq: usize, engines: usize, queued: Queued) {
        let w = &mut core.wqs[wq];
        let fail = hits(&mut w.fail);
        let inject = hits(&mut w.page_fault);
        let context = Context {
            wq,
            max_transfer: w.max_transfer(),
            max_batch: w.max_batch(),
            engines,
            inject,
        };
        let descriptor = queued.descriptor;
        if let Some(code) = fail {
            self.complete(
                core,
                wq,
                &descriptor,
                Outcome::error(code),
                None,
                queued.seq,
            );
        } else if descriptor.opcode() == opcode::BATCH {
            self.run_batch(core, &context, &descriptor, queued.seq);
        } else {
            let outcome = self.run(&context, &descriptor, false);
            self.complete(core, wq, &descriptor, outcome, None, queued.seq);
        }
    }

    /// The checks every descriptor goes through; an outcome if it fails one.
    fn check(&self, context: &Context, d: &Descriptor, in_batch: bool) -> Option<Outcome> {
        let (op, bits) = (d.opcode(), d.flags());
        if bits & flags::CRAV != 0 && d.completion % RECORD as u64 != 0 {
            return Some(Outcome::error(status::MISALIGNED_RECORD));
        }
        if !SUPPORTED_OPCODES.contains(&op)
            || (in_batch && matches!(op, opcode::BATCH | opcode::DRAIN))
        {
            return Some(Outcome::error(status::INVALID_OPCODE));
        }
        let reserved = if in_batch { 0 } else { flags::FENCE } | flags::BLOCK_ON_FAULT;
        if bits & reserved != 0 {
            return Some(Outcome::invalid_flags(bits & reserved));
        }
        let record = flags::CRAV | flags::RCR;
        let needs_record = matches!(
            op,
            opcode::COMPARE | opcode::COMPARE_PATTERN | opcode::CRC_GEN | opcode::COPY_CRC
        );
        if needs_record && bits & record != record {
            return Some(Outcome::invalid_flags(!bits & record));
        }
        let sized = !matches!(op, opcode::NOOP | opcode::DRAIN | opcode::BATCH);
        if sized && (d.size == 0 || u64::from(d.size) > context.max_transfer) {
            return Some(Outcome::error(status::INVALID_SIZE));
        }
        None
    }

    /// Runs one non-batch descriptor.
    fn run(&self, context: &Context, d: &Descriptor, in_batch: bool) -> Outcome {
        if let Some(outcome) = self.check(context, d, in_batch) {
            return outcome;
        }
        let size = d.size as usize;
        let len = u64::from(d.size);
        match d.opcode() {
            opcode::MEMMOVE => {
                if overlaps(d.src, d.dst, len) {
                    return Outcome::error(status::OVERLAP);
                }
                let walked = self.walk(context, [read(d.src), write(d.dst)], size, usize::MAX, {
                    |r: [HostRange; 2], _| {
                        dma::copy(r[0], r[1]);
                        true
                    }
                });
                finish(walked, Outcome::success(len))
            }
            opcode::MEMFILL => {
                let mut pattern = [0u8; 16];
                pattern[..8].copy_from_slice(&d.src.to_le_bytes());
                pattern[8..].copy_from_slice(&d.op_specific0.to_le_bytes());
                let period = if d.flags() & flags::FILL_16B != 0 {
                    16
                } else {
                    8
                };
                let mut block = [0u8; STEP];
                for (i, byte) in block.iter_mut().enumerate() {
                    *byte = pattern[i % period];
                }
                let walked = self.walk(context, [write(d.dst)], size, STEP - 16, {
                    |r: [HostRange; 1], offset| {
                        let phase = offset % period;
                        dma::write_bytes(r[0], &block[phase..phase + r[0].len()]);
                        true
                    }
                });
                finish(walked, Outcome::success(len))
            }
            opcode::COMPARE | opcode::COMPARE_PATTERN => {
                let pattern = d.dst.to_le_bytes();
                let (mut a, mut b) = ([0u8; STEP], [0u8; STEP]);
                let mut first_difference = None;
                let against_pattern = d.opcode() == opcode::COMPARE_PATTERN;
                let mut visit = |r: &[HostRange], offset: usize| {
                    let n = r[0].len();
                    dma::read_bytes(r[0], &mut a[..n]);
                    if against_pattern {
                        for (i, byte) in b[..n].iter_mut().enumerate() {
                            *byte = pattern[(offset + i) % 8];
                        }
                    } else {
                        dma::read_bytes(r[1], &mut b[..n]);
                    }
                    match a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
                        Some(at) => {
                            first_difference = Some(offset + at);
                            false
                        }
                        None => true,
                    }
                };
                let walked = if against_pattern {
                    self.walk(context, [read(d.src)], size, STEP, |r, o| visit(&r, o))
                } else {
                    self.walk(context, [read(d.src), read(d.dst)], size, STEP, |r, o| {
                        visit(&r, o)
                    })
                };
                if let Err(fault) = walked {
                    return Outcome::fault(fault);
                }
                let result = u8::from(first_difference.is_some());
                let expected = d.op_specific0 as u8;
                let check = d.flags() & flags::CHECK_RESULT != 0;
                Outcome {
                    status: if check && result != expected {
                        status::SUCCESS_FALSE_PREDICATE
                    } else {
                        status::SUCCESS
                    },
                    result,
                    bytes_completed: first_difference.unwrap_or(0) as u32,
                    bytes: first_difference.map_or(len, |at| at as u64),
                    ..Outcome::default()
                }
            }
            opcode::DUALCAST => {
                let dst2 = d.dst2();
                if d.dst & 0xFFF != dst2 & 0xFFF {
                    return Outcome::error(status::DUALCAST_ALIGN);
                }
                if overlaps(d.src, d.dst, len)
                    || overlaps(d.src, dst2, len)
                    || overlaps(d.dst, dst2, len)
                {
                    return Outcome::error(status::OVERLAP);
                }
                let mut buffer = [0u8; STEP];
                let operands = [read(d.src), write(d.dst), write(dst2)];
                let walked = self.walk(context, operands, size, STEP, |r, _| {
                    let n = r[0].len();
                    dma::read_bytes(r[0], &mut buffer[..n]);
                    dma::write_bytes(r[1], &buffer[..n]);
                    dma::write_bytes(r[2], &buffer[..n]);
                    true
                });
                finish(walked, Outcome::success(len))
            }
            opcode::CRC_GEN | opcode::COPY_CRC => {
                let copy = d.opcode() == opcode::COPY_CRC;
                if copy && overlaps(d.src, d.dst, len) {
                    return Outcome::error(status::OVERLAP);
                }
                let mut crc = d.crc_seed();
                if d.flags() & flags::CRC_READ_SEED != 0 {
                    let mut seed = [0u8; 4];
                    let walked = self.walk(
                        &Context {
                            inject: None,
                            ..*context
                        },
                        [read(d.op_specific1)],
                        4,
                        4,
                        |r, offset| {
                            let n = r[0].len();
                            dma::read_bytes(r[0], &mut seed[offset..offset + n]);
                            true
                        },
                    );
                    if let Err(fault) = walked {
                        return Outcome::fault(PageFault { offset: 0, ..fault });
                    }
                    crc = u32::from_le_bytes(seed);
                }
                let mut buffer = [0u8; STEP];
                let mut step = |r: &[HostRange]| {
                    let n = r[0].len();
                    dma::read_bytes(r[0], &mut buffer[..n]);
                    if copy {
                        dma::write_bytes(r[1], &buffer[..n]);
                    }
                    crc = crc32c(crc, &buffer[..n]);
                    true
                };
                let walked = if copy {
                    self.walk(context, [read(d.src), write(d.dst)], size, STEP, |r, _| {
                        step(&r)
                    })
                } else {
                    self.walk(context, [read(d.src)], size, STEP, |r, _| step(&r))
                };
                finish(
                    walked,
                    Outcome {
                        op_specific: crc.into(),
                        ..Outcome::success(len)
                    },
                )
            }
            // No-op and Drain: the WQ ran everything before a Drain already (it runs alone,
            // after the descriptors taken before it).
            _ => Outcome::success(0),
        }
    }

    /// Walks `len` bytes of every operand together, in pieces contiguous in host memory for
    /// all of them and at most `step` long, calling `visit(pieces, offset)`; `visit` returns
    /// false to stop. A page fault (an unmapped byte, or the context's injected one) ends the
    /// walk with the bytes before it done.
    fn walk<const N: usize>(
        &self,
        context: &Context,
        operands: [Operand; N],
        len: usize,
        step: usize,
        mut visit: impl FnMut([HostRange; N], usize) -> bool,
    ) -> Result<(), PageFault> {
        let (limit, injected) = match context.inject {
            Some((at, write)) if (at as usize) < len => (at as usize, Some(write)),
            _ => (len, None),
        };
        let mut done = 0;
        while done < limit {
            let want = (limit - done).min(step);
            let mut piece = want;
            let mut ranges: [Option<HostRange>; N] = [None; N];
            for (slot, operand) in ranges.iter_mut().zip(&operands) {
                let fault = PageFault {
                    offset: done,
                    address: operand.iova.wrapping_add(done as u64),
                    write: operand.write,
                };
                let at = operand.iova.checked_add(done as u64).ok_or(fault)?;
                let range = dma::resolve_run(&*self.memory, at, want).ok_or(fault)?;
                piece = piece.min(range.len());
                *slot = Some(range);
            }
            let pieces = ranges.map(|range| range.expect("resolved above").prefix(piece));
            if !visit(pieces, done) {
                return Ok(());
            }
            done += piece;
        }
        match injected {
            Some(write) => {
                let operand = operands
                    .iter()
                    .find(|operand| operand.write == write)
                    .unwrap_or(&operands[0]);
                Err(PageFault {
                    offset: limit,
                    address: operand.iova.wrapping_add(limit as u64),
                    write,
                })
            }
            None => Ok(()),
        }
    }

    /// Runs a batch: the list read whole, members between fences in parallel (reversed with
    /// several engines), a fenced member after a failure abandoning the rest, and the batch's
    /// record after every member's.
    fn run_batch(&self, core: &mut Core, context: &Context, batch: &Descriptor, seq: u64) {
        let wq = context.wq;
        let count = u64::from(batch.size);
        let outcome = if let Some(outcome) = self.check(context, batch, false) {
            Some(outcome)
        } else if count < 2 || count > context.max_batch {
            Some(Outcome::error(status::INVALID_COUNT))
        } else if batch.src % 64 != 0 {
            Some(Outcome::error(status::MISALIGNED_LIST))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            self.complete(core, wq, batch, outcome, None, seq);
            return;
        }
        let mut list = vec![0u8; batch.size as usize * 64];
        let no_inject = Context {
            inject: None,
            ..*context
        };
        let fetched = self.walk(&no_inject, [read(batch.src)], list.len(), STEP, |r, o| {
            dma::read_bytes(r[0], &mut list[o..o + r[0].len()]);
            true
        });
        if let Err(fault) = fetched {
            let outcome = Outcome {
                status: status::BATCH_PAGE_FAULT,
                fault_address: fault.address,
                ..Outcome::default()
            };
            self.complete(core, wq, batch, outcome, None, seq);
            return;
        }
        let members: Vec<Descriptor> = list
            .chunks_exact(64)
            .map(|bytes| Descriptor::from_bytes(bytes.try_into().expect("64-byte chunks")))
            .collect();
        // Segments start at each fenced member.
        let mut starts: Vec<usize> = (1..members.len())
            .filter(|&i| members[i].flags() & flags::FENCE != 0)
            .collect();
        starts.insert(0, 0);
        starts.push(members.len());
        let (mut processed, mut failed) = (0u32, false);
        for window in starts.windows(2) {
            let (from, to) = (window[0], window[1]);
            if from > 0 && failed {
                break;
            }
            let mut order: Vec<usize> = (from..to).collect();
            if context.engines > 1 {
                order.reverse();
            }
            for index in order {
                if self.is_dead() {
                    return;
                }
                let member = &members[index];
                let outcome = self.run(&no_inject, member, true);
                failed |= !outcome.succeeded();
                processed += 1;
                self.complete(core, wq, member, outcome, Some(index as u32), seq);
            }
        }
        let outcome = Outcome {
            status: if failed {
                status::BATCH_FAILED
            } else {
                status::SUCCESS
            },
            bytes_completed: processed,
            ..Outcome::default()
        };
        self.complete(core, wq, batch, outcome, None, seq);
    }

    /// Reports a completed descriptor: statistics, the record or SWERROR, the trace.
    fn complete(
        &self,
        core: &mut Core,
        wq: usize,
        d: &Descriptor,
        outcome: Outcome,
        member: Option<u32>,
        seq: u64,
    ) {
        let bits = d.flags();
        let failed = !outcome.succeeded();
        let stats = &mut core.wqs[wq].stats;
        stats.descriptors += 1;
        stats.bytes += outcome.bytes;
        if d.opcode() == opcode::BATCH && member.is_none() {
            stats.batches += 1;
        }
        let detail = SwerrorDetail {
            opcode: Some(d.opcode()),
            batch_index: member,
            write: outcome.write,
            address: outcome.fault_address,
        };
        if outcome.status == status::MISALIGNED_RECORD {
            let detail = SwerrorDetail {
                address: d.completion,
                ..detail
            };
            core.log_swerror(status::MISALIGNED_RECORD.into(), Some(wq), detail);
        } else if bits & flags::CRAV != 0 {
            if failed || bits & flags::RCR != 0 {
                if self.write_record(d.completion, &outcome) {
                    core.wqs[wq].stats.records_written += 1;
                } else {
                    let detail = SwerrorDetail {
                        address: d.completion,
                        ..detail
                    };
                    core.log_swerror(status::RECORD_FAULT.into(), Some(wq), detail);
                }
            }
        } else if failed {
            core.log_swerror(outcome.status.into(), Some(wq), detail);
        }
        if self.tracing.load(std::sync::atomic::Ordering::Relaxed) {
            let completed = core.next_completion();
            core.push_trace(DsaTraceEvent {
                wq,
                opcode: d.opcode(),
                member,
                submitted: seq,
                completed,
                status: outcome.status,
                bytes: if d.opcode() == opcode::BATCH {
                    0
                } else {
                    u64::from(d.size)
                },
            });
        }
    }

    /// Writes a 32-byte record at `address`: every field but the status, then the status
    /// with Release. False if the record is not mapped in one piece.
    fn write_record(&self, address: u64, outcome: &Outcome) -> bool {
        let Some(range) = dma::resolve_run(&*self.memory, address, RECORD) else {
            return false;
        };
        if range.len() < RECORD {
            return false;
        }
        let mut record = [0u8; RECORD];
        record[1] = outcome.result;
        record[4..8].copy_from_slice(&outcome.bytes_completed.to_le_bytes());
        record[8..16].copy_from_slice(&outcome.fault_address.to_le_bytes());
        record[16..24].copy_from_slice(&outcome.op_specific.to_le_bytes());
        dma::write_bytes(range.skip(1), &record[1..]);
        dma::store_status(range, outcome.status);
        true
    }
}

/// The outcome of a walk that did the whole job (`done`) or stopped at a page fault.
fn finish(walked: Result<(), PageFault>, done: Outcome) -> Outcome {
    match walked {
        Ok(()) => done,
        Err(fault) => Outcome::fault(fault),
    }
}
