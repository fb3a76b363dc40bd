//! Fake IOVAs for `IovaMode::Scrambled`: each 4 KiB page gets an IOVA that no other page
//! is adjacent to, so a driver that forgets to split a transfer at a page boundary hands
//! the device an IOVA range that runs into unmapped space and is caught.
//!
//! The n-th page handed out gets frame `2·p(n) + 1`, where `p` is a seeded bijection on
//! 35-bit numbers: frames are odd, hence never 0, pairwise distinct and never neighbours,
//! and `frame << 12` stays below 2^48, like a real IOVA.

/// Size of the pages that are scrambled independently.
pub(crate) const SCRAMBLE_PAGE: usize = 4096;

const INDEX_BITS: u32 = 35;
const MASK: u64 = (1 << INDEX_BITS) - 1;

/// Hands out scrambled page IOVAs in sequence.
#[derive(Debug)]
pub(crate) struct Scrambler {
    seed: u64,
    next: u64,
}

impl Scrambler {
    pub(crate) fn new(seed: u64) -> Self {
        Scrambler { seed, next: 0 }
    }

    /// The IOVA of the next page. After 2^35 pages (128 TiB) the sequence repeats, and the
    /// map's overlap check refuses any IOVA still in use.
    pub(crate) fn next_page(&mut self) -> u64 {
        let n = self.next;
        self.next = (self.next + 1) & MASK;
        let frame = 2 * permute(n, self.seed) + 1;
        frame << 12
    }
}

/// A bijection on `[0, 2^35)`: additions, odd multiplications (invertible modulo a power of
/// two) and right xorshifts (invertible), each kept inside the 35 bits.
fn permute(n: u64, seed: u64) -> u64 {
    let mut x = (n ^ seed) & MASK;
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) & MASK;
    x ^= x >> 17;
    x = x.wrapping_add(seed >> INDEX_BITS) & MASK;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9) & MASK;
    x ^= x >> 13;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn pages_are_distinct_aligned_nonzero_and_never_adjacent() {
        let mut s = Scrambler::new(42);
        let iovas: Vec<u64> = (0..20_000).map(|_| s.next_page()).collect();
        let set: HashSet<u64> = iovas.iter().copied().collect();
        assert_eq!(set.len(), iovas.len());
        for &iova in &iovas {
            assert_ne!(iova, 0);
            assert_eq!(iova % SCRAMBLE_PAGE as u64, 0);
            assert!(iova < 1 << 48);
            assert!(!set.contains(&(iova + SCRAMBLE_PAGE as u64)));
        }
    }

    #[test]
    fn the_seed_decides_the_sequence() {
        let seq = |seed| {
            let mut s = Scrambler::new(seed);
            (0..16).map(|_| s.next_page()).collect::<Vec<_>>()
        };
        assert_eq!(seq(1), seq(1));
        assert_ne!(seq(1), seq(2));
        assert_ne!(seq(1), seq(1 << 40));
    }

    #[test]
    fn permute_is_a_bijection_on_a_small_window() {
        // Injective on a sample; a collision would show as a shorter set.
        let set: HashSet<u64> = (0..1 << 16).map(|n| permute(n, 7)).collect();
        assert_eq!(set.len(), 1 << 16);
        assert!(set.iter().all(|&x| x <= MASK));
    }
}
