//! Building operations into a channel's ring: planning a transfer into descriptors (split at
//! XFERCAP and wherever either buffer stops being IOVA-contiguous), writing them, and telling
//! the device, either as the channel's owner or as one of several producers sharing it.
//!
//! - **owned**: the submitter builds at its own head with plain stores and, on `submit`, marks
//!   the batch's last descriptor to write the completion word, stores the new indices and rings
//!   the doorbell once. A fence rides on the previous descriptor when it is not yet announced.
//! - **shared**: each operation reserves its slots with one compare-and-swap, is written, gets
//!   the completion-write bit on its last descriptor (another producer's batch may be announced
//!   after it), and is published in ring order; `submit` rings through the doorbell combiner. A
//!   fence is always a null descriptor of its own, since the previous slot may be another
//!   producer's and already announced.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::channel::OpFlags;
use super::core::{works, ChannelCore, SlotMeta, DRAINING, REMOVED, RUNNING};
use super::error::SubmitError;
use super::spec::{ctl, op, Descriptor, NULL_DESCRIPTOR_SIZE};
use crate::mem::Translator;

/// One descriptor's worth of a transfer: destination, source (none for a fill), length.
type Piece = (u64, Option<u64>, u32);

/// An owner asks for a completion write at least this often (in operations) within a batch.
const OWNED_COMPLETION_WRITE_EVERY: u32 = 16;

/// How a submitter uses its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The only user: plain loads and stores.
    Owned,
    /// One of several: reservation, in-order publication, doorbell combiner.
    Shared,
}

/// One producer's handle on a channel.
pub(crate) struct Submitter {
    pub(crate) core: Arc<ChannelCore>,
    translator: Translator,
    pieces: Vec<Piece>,
    /// Completions of this submitter's operations go to this route.
    pub(crate) route: u16,
    mode: Mode,
    /// Owned mode: next slot to build into (free-running).
    head: u32,
    /// Owned mode: slots before this have been published and announced.
    submitted: u32,
    /// Shared mode: something was published since the last ring.
    unrung: bool,
    /// Owned mode: operations built since the last one that asks for a completion write.
    since_completion_write: u32,
    /// Descriptors this submitter handed to the device (data and null).
    pub(crate) descriptors: u64,
    /// Doorbell rings this submitter asked for.
    pub(crate) doorbells: u64,
}

impl Submitter {
    /// A submitter whose completions go to `route`.
    ///
    /// # Safety
    ///
    /// In [`Mode::Owned`], nobody else builds into or retires from the channel until this
    /// submitter leaves owned mode; in [`Mode::Shared`], nobody uses the channel in owned mode
    /// whenever this submitter builds or submits (a client may create it earlier, while it
    /// waits for the table to settle, as long as it does neither meanwhile).
    pub(crate) unsafe fn new(core: Arc<ChannelCore>, route: u16, mode: Mode) -> Submitter {
        let head = core.slots.reserved();
        Submitter {
            translator: core.pool.translator(),
            core,
            pieces: Vec::with_capacity(16),
            route,
            mode,
            head,
            submitted: head,
            unrung: false,
            since_completion_write: 0,
            descriptors: 0,
            doorbells: 0,
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Leaves owned mode: everything built is submitted first, so the shared indices are
    /// whole.
    pub(crate) fn make_shared(&mut self) {
        self.submit();
        self.mode = Mode::Shared;
    }

    /// Enters owned mode.
    ///
    /// # Safety
    ///
    /// As for [`Submitter::new`] in owned mode; in particular no other producer has an
    /// unpublished reservation.
    pub(crate) unsafe fn make_owned(&mut self) {
        self.submit();
        self.head = self.core.slots.reserved();
        self.submitted = self.head;
        self.mode = Mode::Owned;
    }

    /// Free-running index of the next slot to be built.
    pub(crate) fn head(&self) -> u32 {
        match self.mode {
            Mode::Owned => self.head,
            Mode::Shared => self.core.slots.reserved(),
        }
    }

    /// Descriptor slots free for building now.
    #[inline]
    pub(crate) fn capacity(&self) -> u32 {
        match self.mode {
            Mode::Owned => self.core.free_slots(self.head),
            Mode::Shared => self.core.free_slots(self.core.slots.reserved()),
        }
    }

    #[inline]
    fn accepting(&self) -> Result<(), SubmitError> {
        match self.core.health() {
            RUNNING => Ok(()),
            REMOVED | DRAINING => Err(SubmitError::DeviceRemoved),
            _ => Err(SubmitError::ChannelFailed),
        }
    }

    /// Plans the descriptors of a transfer: `(dest iova, src iova or None, len)` pieces, each
    /// within XFERCAP and IOVA-contiguous on both sides.
    fn plan(
        &mut self,
        dst: usize,
        src: Option<usize>,
        len: usize,
        pieces: &mut Vec<Piece>,
    ) -> Result<(), SubmitError> {
        pieces.clear();
        let cap = self.core.max_transfer.min(u64::from(u32::MAX)) as usize;
        // Pieces beyond what the ring could take are counted, not stored: the operation will
        // be refused, and the plan must not grow without bound on the way.
        let free = self.capacity();
        let keep = free as usize + 1;
        let mut count = 0u32;
        let mut done = 0usize;
        while done < len {
            let want = (len - done).min(cap);
            let (dst_iova, dst_run) = self
                .translator
                .translate(dst + done, want)
                .map_err(SubmitError::Unmapped)?;
            let mut piece = dst_run.min(want);
            let src_iova = match src {
                Some(src) => {
                    let (iova, run) = self
                        .translator
                        .translate(src + done, piece)
                        .map_err(SubmitError::Unmapped)?;
                    piece = piece.min(run);
                    Some(iova)
                }
                None => None,
            };
            if pieces.len() < keep {
                pieces.push((dst_iova, src_iova, piece as u32));
            }
            count = count.saturating_add(1);
            done += piece;
        }
        if count as usize > pieces.len() {
            return Err(SubmitError::RingFull {
                needed: count,
                free,
            });
        }
        Ok(())
    }

    /// Queues a copy; see [`super::IoatChannel::copy`].
    ///
    /// # Safety
    ///
    /// Both buffers stay allocated, and nothing reads `dst` or writes either buffer, until the
    /// operation's completion has been returned.
    pub(crate) unsafe fn copy(
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
        let mut pieces = std::mem::take(&mut self.pieces);
        let built = self
            .plan(dst as usize, Some(src as usize), len, &mut pieces)
            .and_then(|()| self.build(&pieces, 0, user_data, flags));
        self.pieces = pieces;
        built
    }

    /// Queues a fill; see [`super::IoatChannel::fill`].
    ///
    /// # Safety
    ///
    /// As for [`Submitter::copy`], for `dst`.
    pub(crate) unsafe fn fill(
        &mut self,
        dst: *mut u8,
        pattern: u64,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        self.accepting()?;
        if !self.core.fill_supported {
            return Err(SubmitError::FillUnsupported);
        }
        if len == 0 {
            return Err(SubmitError::ZeroLength);
        }
        let mut pieces = std::mem::take(&mut self.pieces);
        let built = self
            .plan(dst as usize, None, len, &mut pieces)
            .and_then(|()| self.build(&pieces, pattern, user_data, flags));
        self.pieces = pieces;
        built
    }

    /// Queues a null descriptor that completes with `user_data`.
    pub(crate) fn null(&mut self, user_data: u64, flags: OpFlags) -> Result<(), SubmitError> {
        self.accepting()?;
        self.build(&[], 0, user_data, flags)
    }

    /// Writes the descriptors of one operation, all or nothing.
    fn build(
        &mut self,
        pieces: &[Piece],
        pattern: u64,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), SubmitError> {
        let wants_fence = flags.contains(OpFlags::FENCE);
        let data = pieces.len().max(1) as u32;
        let start;
        let fence_on_null;
        match self.mode {
            Mode::Owned => {
                // A fence orders this operation after everything before it. IOAT's fence bit
                // orders the descriptors *after* the one carrying it, so it goes on the
                // previous descriptor if the device has not been told about it yet, else on a
                // null descriptor of its own. With nothing outstanding it is moot.
                let outstanding = self.head != self.core.retired.load(Ordering::Relaxed);
                let fence = wants_fence && outstanding;
                fence_on_null = fence && self.submitted == self.head;
                let needed = data + u32::from(fence_on_null);
                let free = self.core.free_slots(self.head);
                if needed > free {
                    return Err(SubmitError::RingFull { needed, free });
                }
                if fence && !fence_on_null {
                    self.core
                        .ring
                        .set_control_bits(self.head.wrapping_sub(1), ctl::FENCE);
                }
                start = self.head;
                self.head = self.head.wrapping_add(needed);
            }
            Mode::Shared => {
                fence_on_null = wants_fence;
                let needed = data + u32::from(fence_on_null);
                start = self
                    .core
                    .slots
                    .reserve(needed, &self.core.retired)
                    .map_err(|s| SubmitError::RingFull {
                        needed: s.needed,
                        free: s.free,
                    })?;
            }
        }
        let mut at = start;
        if fence_on_null {
            let null = Descriptor {
                size: NULL_DESCRIPTOR_SIZE,
                control: ctl::with_op(op::COPY, ctl::NULL | ctl::FENCE),
                ..Descriptor::default()
            };
            self.write(&mut at, &null, None);
        }
        // In shared mode each operation asks for a completion write: the doorbell may announce
        // any producer's slot last. An owner asks at the end of each batch (in `submit`) and
        // also every few operations within one, so a window of a single batch still shows
        // progress to the poller before the whole batch is done.
        let last_bits = match self.mode {
            Mode::Owned => {
                self.since_completion_write += 1;
                if self.since_completion_write >= OWNED_COMPLETION_WRITE_EVERY {
                    self.since_completion_write = 0;
                    ctl::COMPLETION_UPDATE
                } else {
                    0
                }
            }
            Mode::Shared => ctl::COMPLETION_UPDATE,
        };
        if pieces.is_empty() {
            let null = Descriptor {
                size: NULL_DESCRIPTOR_SIZE,
                control: ctl::with_op(op::COPY, ctl::NULL | last_bits),
                ..Descriptor::default()
            };
            self.write(&mut at, &null, Some(user_data));
        }
        let mut offset = 0u64;
        for (i, &(dest, src, size)) in pieces.iter().enumerate() {
            let phase = (offset % 8) as u32;
            offset += u64::from(size);
            let last = i + 1 == pieces.len();
            let bits = if last { last_bits } else { 0 };
            let descriptor = match src {
                Some(src) => Descriptor {
                    size,
                    control: ctl::with_op(op::COPY, bits),
                    src_or_pattern: src,
                    dest,
                    ..Descriptor::default()
                },
                None => Descriptor {
                    size,
                    control: ctl::with_op(op::FILL, bits),
                    src_or_pattern: pattern.rotate_right(8 * phase),
                    dest,
                    ..Descriptor::default()
                },
            };
            self.write(&mut at, &descriptor, last.then_some(user_data));
        }
        let written = at.wrapping_sub(start);
        self.descriptors += u64::from(written);
        if self.mode == Mode::Shared {
            self.core.slots.publish(start, written);
            self.unrung = true;
        }
        if flags.contains(OpFlags::SUBMIT) {
            self.submit();
        }
        Ok(())
    }

    #[inline]
    fn write(&mut self, at: &mut u32, descriptor: &Descriptor, ends_op: Option<u64>) {
        self.core.ring.fill(*at, descriptor);
        let meta = SlotMeta {
            ends_op: ends_op.is_some(),
            route: self.route,
            bytes: descriptor.size,
            user_data: ends_op.unwrap_or(0),
        };
        // SAFETY: slot `at` is ours: reserved in shared mode, past our head in owned mode,
        // and not yet published.
        unsafe { self.core.set_meta(*at, meta) };
        *at = at.wrapping_add(1);
    }

    /// Tells the device about everything built (owned) or published (shared) since the last
    /// call. On a channel that no longer runs the work is published but not rung, so the
    /// retirer completes it with the channel's error.
    pub(crate) fn submit(&mut self) {
        let core = &*self.core;
        match self.mode {
            Mode::Owned => {
                if self.submitted == self.head {
                    return;
                }
                core.ring
                    .set_control_bits(self.head.wrapping_sub(1), ctl::COMPLETION_UPDATE);
                self.since_completion_write = 0;
                core.slots.advance_owned(self.head);
                self.submitted = self.head;
                if works(core.health()) {
                    core.doorbell.announce_owned(self.head);
                    core.write_dmacount(self.head);
                    self.doorbells += 1;
                }
            }
            Mode::Shared => {
                if !self.unrung {
                    return;
                }
                self.unrung = false;
                self.doorbells += 1;
                core.doorbell.ring(&core.slots, |target| {
                    if works(core.health()) {
                        core.write_dmacount(target);
                    }
                });
            }
        }
    }
}
