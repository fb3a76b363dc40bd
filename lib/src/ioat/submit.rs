//! Building operations into an IOAT ring: planning a transfer into descriptors (split at
//! XFERCAP and wherever either buffer stops being IOVA-contiguous, by `queue::plan`), writing them with their
//! bookkeeping, and placing fences and completion writes as owned or shared use needs.
//!
//! An **owner** asks for a completion write at the end of each batch (`seal_batch`) and every
//! few operations within one; a fence rides on the previous descriptor while the device has not
//! been told of it. A **sharer** asks for a completion write on every operation (another
//! producer's batch may be announced after it), and a fence is always a null descriptor of its
//! own, since the previous slot may be another producer's and announced.

use std::sync::atomic::Ordering;

use super::queue::{IoatEngine, IoatRetire};
use super::spec::{ctl, op, Descriptor, NULL_DESCRIPTOR_SIZE};
use crate::capability::Capability;
use crate::mem::Translator;
use crate::queue::plan::{plan, Piece};
use crate::queue::ring::{Op, Producer, Ring, SlotMeta};
use crate::queue::{OpFlags, SubmitError};

/// An owner asks for a completion write at least this often (in operations) within a batch.
pub(super) const OWNED_COMPLETION_WRITE_EVERY: u32 = 16;

/// A submitter's IOAT state.
pub(crate) struct IoatScratch {
    translator: Translator,
    pieces: Vec<Piece>,
    /// Owned mode: operations built since the last one that asks for a completion write.
    since_completion_write: u32,
}

impl IoatScratch {
    pub(super) fn new(translator: Translator) -> IoatScratch {
        IoatScratch {
            translator,
            pieces: Vec::with_capacity(16),
            since_completion_write: 0,
        }
    }

    /// An owner sealed a batch: the count of operations without a completion write restarts.
    pub(super) fn sealed(&mut self) {
        self.since_completion_write = 0;
    }
}

impl IoatEngine {
    /// Writes one descriptor and its bookkeeping at `*at` and moves past it.
    #[inline]
    fn write(
        &self,
        ring: &Ring<IoatRetire>,
        route: u16,
        at: &mut u32,
        descriptor: &Descriptor,
        ends_op: Option<u64>,
    ) {
        self.ring.fill(*at, descriptor);
        let meta = SlotMeta {
            ends_op: ends_op.is_some(),
            route,
            bytes: descriptor.size,
            user_data: ends_op.unwrap_or(0),
        };
        // SAFETY: slot `at` is the caller's: claimed by its producer and not yet published.
        unsafe { ring.set_meta(*at, meta) };
        *at = at.wrapping_add(1);
    }

    /// Builds one operation into the ring; see `RingEngine::build`.
    #[inline]
    pub(super) fn build_op(
        &self,
        ring: &Ring<IoatRetire>,
        producer: &mut Producer,
        scratch: &mut IoatScratch,
        op: Op,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let free = producer.capacity(ring);
        let IoatScratch {
            translator,
            pieces,
            since_completion_write,
        } = scratch;
        let max = self.max_transfer;
        // `None` for a copy; a fill's pattern.
        let pattern = match op {
            Op::Copy { dst, src, len } => {
                plan(translator, pieces, free, max, &[dst, src], len)?;
                None
            }
            Op::Fill { dst, pattern, len } => {
                plan(translator, pieces, free, max, &[dst], len)?;
                Some(pattern)
            }
            Op::Null => {
                pieces.clear();
                None
            }
            // IOAT has no descriptor for these; the ring refuses them before building (see
            // `supports`), and so does this, building nothing.
            Op::Compare { .. } => return Err(SubmitError::Unsupported(Capability::Compare)),
            Op::Crc32c { .. } => return Err(SubmitError::Unsupported(Capability::Crc32c)),
            Op::CopyCrc { .. } => return Err(SubmitError::Unsupported(Capability::CopyCrc)),
            Op::Dualcast { .. } => return Err(SubmitError::Unsupported(Capability::Dualcast)),
        };
        let owned = producer.is_owner();
        // A fence orders this operation after everything before it. IOAT's fence bit orders
        // the descriptors *after* the one carrying it, so an owner puts it on the previous
        // descriptor if the device has not been told about it yet, else on a null descriptor
        // of its own; with nothing outstanding it is moot. A sharer always uses a null one.
        let wants_fence = flags.contains(OpFlags::FENCE);
        let (fence, fence_on_null) = if owned {
            let outstanding = producer.head(ring) != ring.retired.load(Ordering::Relaxed);
            let fence = wants_fence && outstanding;
            (fence, fence && producer.all_announced())
        } else {
            (wants_fence, wants_fence)
        };
        let data = pieces.len().max(1) as u32;
        let start = producer.claim(ring, data + u32::from(fence_on_null))?;
        if fence && !fence_on_null {
            self.ring
                .set_control_bits(start.wrapping_sub(1), ctl::FENCE);
        }
        let route = producer.route;
        let mut at = start;
        if fence_on_null {
            let null = Descriptor {
                size: NULL_DESCRIPTOR_SIZE,
                control: ctl::with_op(op::COPY, ctl::NULL | ctl::FENCE),
                ..Descriptor::default()
            };
            self.write(ring, route, &mut at, &null, None);
        }
        // A sharer asks for a completion write on each operation: the doorbell may announce
        // any producer's slot last. An owner asks at the end of each batch (`seal_batch`) and
        // also every few operations within one, so a window of a single batch still shows
        // progress to the poller before the whole batch is done.
        let last_bits = if owned {
            *since_completion_write += 1;
            if *since_completion_write >= OWNED_COMPLETION_WRITE_EVERY {
                *since_completion_write = 0;
                ctl::COMPLETION_UPDATE
            } else {
                0
            }
        } else {
            ctl::COMPLETION_UPDATE
        };
        if pieces.is_empty() {
            let null = Descriptor {
                size: NULL_DESCRIPTOR_SIZE,
                control: ctl::with_op(op::COPY, ctl::NULL | last_bits),
                ..Descriptor::default()
            };
            self.write(ring, route, &mut at, &null, Some(user_data));
        }
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let bits = if last { last_bits } else { 0 };
            let descriptor = match pattern {
                None => Descriptor {
                    size: piece.len,
                    control: ctl::with_op(op::COPY, bits),
                    src_or_pattern: piece.iovas[1],
                    dest: piece.iovas[0],
                    ..Descriptor::default()
                },
                // A descriptor restarts the fill pattern at its own start: carry the phase over.
                Some(pattern) => Descriptor {
                    size: piece.len,
                    control: ctl::with_op(op::FILL, bits),
                    src_or_pattern: pattern.rotate_right(8 * (piece.offset % 8) as u32),
                    dest: piece.iovas[0],
                    ..Descriptor::default()
                },
            };
            self.write(ring, route, &mut at, &descriptor, last.then_some(user_data));
        }
        producer.written(ring, start, at.wrapping_sub(start));
        Ok(())
    }
}
