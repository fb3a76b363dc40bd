//! Planning a transfer into descriptor-sized pieces, the same for every ring backend: each
//! piece stays within the device's largest transfer and is IOVA-contiguous for every buffer it
//! touches (a destination, and a source or second destination or second source), so no
//! descriptor ever names memory the IOMMU maps elsewhere.

use crate::mem::Translator;
use crate::queue::SubmitError;

/// The most buffers one operation touches (dualcast: a source and two destinations).
pub(crate) const MAX_BUFFERS: usize = 3;

/// One descriptor's worth of a transfer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Piece {
    /// The IOVAs of the piece in each buffer, in the order the buffers were given.
    pub(crate) iovas: [u64; MAX_BUFFERS],
    /// Offset of the piece from the start of the operation.
    pub(crate) offset: usize,
    /// Bytes.
    pub(crate) len: u32,
}

/// Plans `len` bytes over `buffers` (virtual addresses; 1 to [`MAX_BUFFERS`]) into `pieces`,
/// each at most `max_transfer` bytes. `free` is the room in the ring: pieces beyond it are
/// counted, not stored, so a plan the ring cannot take is refused without growing.
#[inline]
pub(crate) fn plan(
    translator: &mut Translator,
    pieces: &mut Vec<Piece>,
    free: u32,
    max_transfer: u64,
    buffers: &[usize],
    len: usize,
) -> Result<(), SubmitError> {
    debug_assert!((1..=MAX_BUFFERS).contains(&buffers.len()));
    pieces.clear();
    let cap = max_transfer.min(u64::from(u32::MAX)) as usize;
    let keep = free as usize + 1;
    let mut count = 0u32;
    let mut done = 0usize;
    while done < len {
        let mut piece = (len - done).min(cap);
        let mut iovas = [0u64; MAX_BUFFERS];
        for (iova, &va) in iovas.iter_mut().zip(buffers) {
            let (at, run) = translator
                .translate(va + done, piece)
                .map_err(SubmitError::Unmapped)?;
            *iova = at;
            piece = piece.min(run);
        }
        if pieces.len() < keep {
            pieces.push(Piece {
                iovas,
                offset: done,
                len: piece as u32,
            });
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
