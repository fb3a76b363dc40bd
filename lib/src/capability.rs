//! Operation capabilities of DMA devices and the order in which the per-CPU table walks them.
//!
//! The table is rebuilt by one pass that keeps a single channel counter running across every
//! capability and every online CPU (see [`crate::engine`]). Which capabilities get a table, and
//! in which order they are walked, therefore decides which channel each CPU gets. dmaplane walks
//! capabilities in ascending [`Capability`] discriminant order, the order of the kernel's
//! `enum dma_transaction_type` for the operations both share (`MEMCPY, XOR, PQ, XOR_VAL,
//! PQ_VAL, MEMSET`). [`Capability::TABLE_ORDER`] is that order; an engine may leave some
//! capabilities out of the walk through [`crate::EngineConfig::table_capabilities`].
//!
//! # Adding capabilities
//!
//! New capabilities go at the end of the walk, after [`Capability::Fill`]: compare, CRC-32C
//! generation, copy with CRC and dualcast (the operations Intel DSA adds). The counter of the
//! walk has finished every older capability's row by the time it reaches them, and a row for a
//! capability no device offers takes no channel and no reference, so on an engine whose
//! devices lack the new capabilities the table is what it was, slot for slot, with the default
//! [`crate::EngineConfig::table_capabilities`] (every capability). On an engine with a device
//! that offers them, the older rows still name the same channels; the new rows come on top
//! and may name a channel another CPU's older row names, which can turn that channel from
//! owned to shared (see `crate::engine`). An application that wants the old distribution
//! exactly leaves the new capabilities out of `table_capabilities`.

use std::fmt;

/// One kind of operation a DMA device can perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Capability {
    /// Memory to memory copy.
    Memcpy = 0,
    /// XOR of several sources (RAID-5 parity).
    Xor = 1,
    /// P+Q syndrome generation (RAID-6).
    Pq = 2,
    /// XOR validation.
    XorVal = 3,
    /// P+Q validation.
    PqVal = 4,
    /// Block fill with a 64-bit pattern (the kernel's `DMA_MEMSET`).
    Fill = 5,
    /// Compare two buffers; the completion says where they first differ.
    Compare = 6,
    /// CRC-32C (Castagnoli) of a buffer, continuing from a caller's value.
    Crc32c = 7,
    /// Copy, and CRC-32C of the data copied.
    CopyCrc = 8,
    /// Copy one source to two destinations.
    Dualcast = 9,
}

impl Capability {
    /// Every capability, in the order the table rebalance walks them.
    pub const TABLE_ORDER: [Capability; 10] = [
        Capability::Memcpy,
        Capability::Xor,
        Capability::Pq,
        Capability::XorVal,
        Capability::PqVal,
        Capability::Fill,
        Capability::Compare,
        Capability::Crc32c,
        Capability::CopyCrc,
        Capability::Dualcast,
    ];

    /// Number of capabilities known to this version.
    pub const COUNT: usize = Self::TABLE_ORDER.len();

    /// Stable short name, as printed in dumps and accepted by [`Capability::from_name`].
    pub const fn name(self) -> &'static str {
        match self {
            Capability::Memcpy => "memcpy",
            Capability::Xor => "xor",
            Capability::Pq => "pq",
            Capability::XorVal => "xor_val",
            Capability::PqVal => "pq_val",
            Capability::Fill => "fill",
            Capability::Compare => "compare",
            Capability::Crc32c => "crc32c",
            Capability::CopyCrc => "copy_crc",
            Capability::Dualcast => "dualcast",
        }
    }

    /// Parses a name written by [`Capability::name`].
    pub fn from_name(name: &str) -> Option<Capability> {
        Self::TABLE_ORDER.into_iter().find(|c| c.name() == name)
    }

    /// Position of this capability in [`Capability::TABLE_ORDER`].
    pub const fn index(self) -> usize {
        self as usize
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Capability`] values.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CapMask(u32);

impl CapMask {
    /// No capability.
    pub const EMPTY: CapMask = CapMask(0);
    /// Only [`Capability::Memcpy`].
    pub const MEMCPY: CapMask = CapMask(Capability::Memcpy.bit());
    /// Only [`Capability::Fill`].
    pub const FILL: CapMask = CapMask(Capability::Fill.bit());
    /// Every capability this version knows.
    pub const ALL: CapMask = CapMask((1 << Capability::COUNT) - 1);

    /// The set holding exactly `caps`.
    pub fn of(caps: &[Capability]) -> CapMask {
        caps.iter().fold(CapMask::EMPTY, |m, &c| m.with(c))
    }

    /// This set plus `cap`.
    #[must_use]
    pub const fn with(self, cap: Capability) -> CapMask {
        CapMask(self.0 | cap.bit())
    }

    /// Whether `cap` is in the set.
    pub const fn has(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// Whether every capability of `other` is in this set.
    pub const fn contains(self, other: CapMask) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The capabilities in the set, in table order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::TABLE_ORDER
            .into_iter()
            .filter(move |&c| self.has(c))
    }

    /// Raw bits: bit `i` is the capability with discriminant `i`.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The set from raw bits; bits no capability uses are dropped.
    pub const fn from_bits_truncate(bits: u32) -> CapMask {
        CapMask(bits & CapMask::ALL.0)
    }
}

impl FromIterator<Capability> for CapMask {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter().fold(CapMask::EMPTY, CapMask::with)
    }
}

impl fmt::Debug for CapMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapMask({self})")
    }
}

impl fmt::Display for CapMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, cap) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            f.write_str(cap.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order_is_ascending_discriminant_order() {
        for (i, cap) in Capability::TABLE_ORDER.iter().enumerate() {
            assert_eq!(cap.index(), i);
            assert_eq!(Capability::from_name(cap.name()), Some(*cap));
        }
    }

    #[test]
    fn mask_set_operations() {
        let m = CapMask::of(&[Capability::Fill, Capability::Memcpy]);
        assert!(m.has(Capability::Memcpy) && m.has(Capability::Fill));
        assert!(!m.has(Capability::Xor));
        assert!(m.contains(CapMask::FILL));
        assert!(!CapMask::FILL.contains(m));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [Capability::Memcpy, Capability::Fill]
        );
        assert_eq!(m.to_string(), "memcpy|fill");
        assert_eq!(CapMask::from_bits_truncate(u32::MAX), CapMask::ALL);
    }

    #[test]
    fn the_operations_added_later_walk_after_fill_under_their_names() {
        let names: Vec<&str> = Capability::TABLE_ORDER[5..]
            .iter()
            .map(|c| c.name())
            .collect();
        assert_eq!(names, ["fill", "compare", "crc32c", "copy_crc", "dualcast"]);
        assert_eq!(Capability::from_name("copy_crc"), Some(Capability::CopyCrc));
    }
}
