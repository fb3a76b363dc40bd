//! Building operations into a DSA channel's ring: planning each into descriptor-sized pieces
//! (split at the WQ's largest transfer and wherever a buffer stops being IOVA-contiguous),
//! writing one 64-byte descriptor per piece with its own completion record, and marking a
//! fence. A CRC split in pieces is chained by the device: each piece after the first is
//! fenced and reads its seed from the record of the one before. Nothing here touches the device: `queue.rs` hands slots over at the doorbell.

use super::queue::{DsaEngine, DsaRetire};
use super::spec::{flags, opcode, CompletionRecord, Descriptor};
use crate::mem::Translator;
use crate::queue::plan::{plan, Piece};
use crate::queue::ring::{Op, Producer, Ring, SlotMeta};
use crate::queue::{OpFlags, SubmitError};

/// A submitter's DSA state.
pub(crate) struct DsaScratch {
    translator: Translator,
    pieces: Vec<Piece>,
}

impl DsaScratch {
    pub(super) fn new(translator: Translator) -> DsaScratch {
        DsaScratch {
            translator,
            pieces: Vec::with_capacity(16),
        }
    }
}

/// Every descriptor asks for its record: the queue retires by reading them.
const RECORD: u32 = flags::CRAV | flags::RCR;

/// Where a completion record holds the CRC.
const RECORD_CRC_OFFSET: u64 = std::mem::offset_of!(CompletionRecord, op_specific0) as u64;

impl DsaEngine {
    /// Builds one operation into the ring; see `RingEngine::build`.
    #[inline]
    pub(super) fn build_op(
        &self,
        ring: &Ring<DsaRetire>,
        producer: &mut Producer,
        scratch: &mut DsaScratch,
        op: Op,
        user_data: u64,
        op_flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let free = producer.capacity(ring);
        let DsaScratch { translator, pieces } = scratch;
        let max = self.max_transfer;
        let (code, pattern, seed) = match op {
            Op::Copy { dst, src, len } => {
                plan(translator, pieces, free, max, &[dst, src], len)?;
                (opcode::MEMMOVE, 0, 0)
            }
            Op::Fill { dst, pattern, len } => {
                plan(translator, pieces, free, max, &[dst], len)?;
                (opcode::MEMFILL, pattern, 0)
            }
            Op::Compare { a, b, len } => {
                plan(translator, pieces, free, max, &[a, b], len)?;
                (opcode::COMPARE, 0, 0)
            }
            Op::Crc32c { src, len, initial } => {
                plan(translator, pieces, free, max, &[src], len)?;
                (opcode::CRC_GEN, 0, !initial)
            }
            Op::CopyCrc {
                dst,
                src,
                len,
                initial,
            } => {
                plan(translator, pieces, free, max, &[dst, src], len)?;
                (opcode::COPY_CRC, 0, !initial)
            }
            Op::Dualcast {
                dst1,
                dst2,
                src,
                len,
            } => {
                plan(translator, pieces, free, max, &[dst1, dst2, src], len)?;
                // Both destinations advance together, so the first piece decides.
                if pieces
                    .first()
                    .is_some_and(|p| p.iovas[0] & 0xFFF != p.iovas[1] & 0xFFF)
                {
                    return Err(SubmitError::InvalidArgument(
                        "DSA dualcast needs both destinations at the same offset in a 4 KiB page",
                    ));
                }
                (opcode::DUALCAST, 0, 0)
            }
            Op::Null => {
                pieces.clear();
                (opcode::NOOP, 0, 0)
            }
        };
        let count = pieces.len().max(1) as u32;
        let start = producer.claim(ring, count)?;
        let route = producer.route;
        let write = |slot: u32, mut descriptor: Descriptor, bytes: u32, last: bool| {
            descriptor.completion = self.record_iova(slot);
            self.clear_record(slot);
            // SAFETY: the slot is this producer's: claimed and not yet published.
            unsafe { self.descriptor(slot).write(descriptor) };
            let meta = SlotMeta {
                ends_op: last,
                route,
                bytes,
                user_data: if last { user_data } else { 0 },
            };
            // SAFETY: as above.
            unsafe { ring.set_meta(slot, meta) };
        };
        // A fence orders the operation after everything before it: the first descriptor
        // carries DSA's Fence, which the doorbell honours (see `queue.rs`).
        let fence = if op_flags.contains(OpFlags::FENCE) {
            flags::FENCE
        } else {
            0
        };
        if pieces.is_empty() {
            write(start, Descriptor::new(code, RECORD | fence), 0, true);
        }
        let chained_crc = matches!(code, opcode::CRC_GEN | opcode::COPY_CRC);
        for (i, piece) in pieces.iter().enumerate() {
            let slot = start.wrapping_add(i as u32);
            let mut bits = RECORD | if i == 0 { fence } else { 0 };
            let mut descriptor = Descriptor::new(code, 0);
            descriptor.size = piece.len;
            match code {
                opcode::MEMMOVE | opcode::COPY_CRC => {
                    descriptor.dst = piece.iovas[0];
                    descriptor.src = piece.iovas[1];
                }
                opcode::MEMFILL => {
                    descriptor.dst = piece.iovas[0];
                    // A descriptor restarts the pattern at its own start: carry the phase.
                    descriptor.src = pattern.rotate_right(8 * (piece.offset % 8) as u32);
                }
                opcode::COMPARE => {
                    descriptor.src = piece.iovas[0];
                    descriptor.dst = piece.iovas[1];
                }
                opcode::CRC_GEN => descriptor.src = piece.iovas[0],
                _ => {
                    descriptor.dst = piece.iovas[0];
                    descriptor.op_specific0 = piece.iovas[1];
                    descriptor.src = piece.iovas[2];
                }
            }
            if chained_crc {
                if i == 0 {
                    descriptor.op_specific0 = u64::from(seed);
                } else {
                    // Each piece continues from the CRC the one before it wrote into its
                    // record, once that one is done: the device reads the seed from memory.
                    bits |= flags::FENCE | flags::CRC_READ_SEED;
                    descriptor.op_specific1 =
                        self.record_iova(slot.wrapping_sub(1)) + RECORD_CRC_OFFSET;
                }
            }
            descriptor.set_flags(bits);
            write(slot, descriptor, piece.len, i + 1 == pieces.len());
        }
        producer.written(ring, start, count);
        Ok(())
    }
}
