//! Building operations into a DSA channel's ring: planning each into descriptor-sized pieces
//! (split at the WQ's largest transfer and wherever a buffer stops being IOVA-contiguous),
//! writing one 64-byte descriptor per piece with its own completion record, and marking a
//! fence. Nothing here touches the device: `queue.rs` hands slots over at the doorbell.

use super::queue::{DsaEngine, DsaRetire};
use super::spec::{flags, opcode, Descriptor};
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
        let (code, pattern) = match op {
            Op::Copy { dst, src, len } => {
                plan(
                    translator,
                    pieces,
                    free,
                    self.max_transfer,
                    &[dst, src],
                    len,
                )?;
                (opcode::MEMMOVE, 0)
            }
            Op::Fill { dst, pattern, len } => {
                plan(translator, pieces, free, self.max_transfer, &[dst], len)?;
                (opcode::MEMFILL, pattern)
            }
            Op::Null => {
                pieces.clear();
                (opcode::NOOP, 0)
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
        for (i, piece) in pieces.iter().enumerate() {
            let first = if i == 0 { fence } else { 0 };
            let mut descriptor = Descriptor::new(code, RECORD | first);
            descriptor.dst = piece.iovas[0];
            descriptor.src = if code == opcode::MEMMOVE {
                piece.iovas[1]
            } else {
                // A descriptor restarts the pattern at its own start: carry the phase over.
                pattern.rotate_right(8 * (piece.offset % 8) as u32)
            };
            descriptor.size = piece.len;
            let slot = start.wrapping_add(i as u32);
            write(slot, descriptor, piece.len, i + 1 == pieces.len());
        }
        producer.written(ring, start, count);
        Ok(())
    }
}
