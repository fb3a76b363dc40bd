//! The Intel I/OAT (QuickData, CBDMA) v3 programming interface as typed constants and
//! descriptor layouts.
//!
//! This module is the only thing the channel driver and the emulated device share: both are
//! written against it, as a driver and a piece of silicon are both written against a datasheet.
//! Offsets are from BAR0 for device registers and from the channel's base (`0x80 * (n + 1)`)
//! for channel registers. Descriptors are 64 bytes, 64-byte aligned, linked through `next`.

/// Size of the register window (BAR0) on the parts seen in the field.
pub const BAR_SIZE: usize = 16 * 1024;

/// Device-wide registers, offsets from BAR0.
pub mod device {
    /// u8: number of channels (bits 4:0).
    pub const CHANCNT: usize = 0x00;
    /// Mask of the valid CHANCNT bits.
    pub const CHANCNT_MASK: u8 = 0x1f;
    /// u8: log2 of the largest transfer one descriptor may move (bits 4:0); 0 means 2^32.
    pub const XFERCAP: usize = 0x01;
    /// Mask of the valid XFERCAP bits.
    pub const XFERCAP_MASK: u8 = 0x1f;
    /// u8: general control (debug enable; unused).
    pub const GENCTRL: usize = 0x02;
    /// u8: interrupt control; a polled driver leaves it 0.
    pub const INTRCTRL: usize = 0x03;
    /// u32: one bit per channel needing attention (interrupt path only).
    pub const ATTNSTATUS: usize = 0x04;
    /// u8: version, major in bits 7:4, minor in 3:0.
    pub const CBVER: usize = 0x08;
    /// u16: interrupt coalescing delay.
    pub const INTRDELAY: usize = 0x0c;
    /// u16: device status (degraded mode, MMIO restricted, ...).
    pub const CS_STATUS: usize = 0x0e;
    /// u32: capability bits, see [`super::dmacap`].
    pub const DMACAPABILITY: usize = 0x10;
}

/// Versions this driver knows.
pub mod cbver {
    /// v3.0, the oldest v3 part.
    pub const V3_0: u8 = 0x30;
    /// v3.2 (Sandy Bridge to Skylake Xeons): 64-bit registers need two 32-bit accesses.
    pub const V3_2: u8 = 0x32;
    /// v3.3 (Atom C2000, Xeon D): the first with reliable 64-bit register accesses.
    pub const V3_3: u8 = 0x33;
    /// v3.4 (Ice Lake).
    pub const V3_4: u8 = 0x34;

    /// Whether 64-bit registers must be accessed as two 32-bit halves, low first.
    pub const fn needs_split_64(version: u8) -> bool {
        version < V3_3
    }
}

/// DMACAPABILITY bits.
pub mod dmacap {
    /// Page-break fields in copy descriptors.
    pub const PAGE_BREAK: u32 = 1 << 0;
    /// CRC generation.
    pub const CRC: u32 = 1 << 1;
    /// Block fill descriptors.
    pub const FILL: u32 = 1 << 6;
    /// XOR.
    pub const XOR: u32 = 1 << 8;
    /// P+Q.
    pub const PQ: u32 = 1 << 9;
    /// Descriptor write-back error status.
    pub const DWBES: u32 = 1 << 13;
}

/// Offset of channel `n`'s register block from BAR0.
pub const fn channel_base(n: usize) -> usize {
    0x80 * (n + 1)
}

/// The Skylake-SP function's device id: it reports CBVER 0x33 but, like the v3.2 parts, keeps a
/// halted channel HALTED until CHANERR_INT is cleared, so drivers treat it as v3.2 (Linux
/// does).
pub const SKYLAKE_SP_DEVICE_ID: u16 = 0x2021;

/// The version a driver should act on: CBVER, except for Skylake-SP, which is treated as v3.2.
pub const fn effective_version(cbver: u8, device_id: u16) -> u8 {
    if device_id == SKYLAKE_SP_DEVICE_ID && cbver > cbver::V3_2 {
        cbver::V3_2
    } else {
        cbver
    }
}

/// Most channels one function can expose (the Linux driver's limit).
pub const MAX_CHANNELS: usize = 4;

/// Channel registers, offsets from the channel's base.
pub mod chan {
    /// u16: channel control, see [`super::chanctrl`].
    pub const CHANCTRL: usize = 0x00;
    /// u16: compatibility flags (informational).
    pub const DMA_COMP: usize = 0x02;
    /// u8: channel command, see [`super::chancmd`].
    pub const CHANCMD: usize = 0x04;
    /// u16: doorbell, the running count of descriptors made available.
    pub const DMACOUNT: usize = 0x06;
    /// u64: status, see [`super::chansts`].
    pub const CHANSTS: usize = 0x08;
    /// u64: bus address of the first descriptor of the chain.
    pub const CHAINADDR: usize = 0x10;
    /// u64: bus address the completion status is written to (8-byte aligned).
    pub const CHANCMP: usize = 0x18;
    /// u64: current descriptor address.
    pub const CDAR: usize = 0x20;
    /// u32: error bits, write 1 to clear; see [`super::chanerr`].
    pub const CHANERR: usize = 0x28;
    /// u32: error mask.
    pub const CHANERR_MASK: usize = 0x2c;
    /// u32: DCA control.
    pub const DCACTRL: usize = 0x30;
    /// Size of one channel block.
    pub const BLOCK_SIZE: usize = 0x80;
}

/// CHANCTRL bits.
pub mod chanctrl {
    /// Re-arm the channel interrupt.
    pub const INT_REARM: u16 = 0x0001;
    /// Write the completion status also when the channel halts on an error.
    pub const ERR_COMPLETION_EN: u16 = 0x0004;
    /// Halt on any error.
    pub const ANY_ERR_ABORT_EN: u16 = 0x0008;
    /// Interrupt on error.
    pub const ERR_INT_EN: u16 = 0x0010;
    /// Snoop control for descriptor fetches.
    pub const DESCRIPTOR_ADDR_SNOOP: u16 = 0x0020;
    /// "Channel in use" lock bit.
    pub const CHANNEL_IN_USE: u16 = 0x0100;
}

/// CHANCMD commands.
pub mod chancmd {
    /// Legacy start (v1/v2).
    pub const START: u8 = 0x01;
    /// Legacy append (v1/v2).
    pub const APPEND: u8 = 0x02;
    /// Stop after the current descriptor; the status becomes SUSPENDED.
    pub const SUSPEND: u8 = 0x04;
    /// Abort the current transfer.
    pub const ABORT: u8 = 0x08;
    /// Resume a suspended channel.
    pub const RESUME: u8 = 0x10;
    /// Reset; the bit reads back set until the reset is done.
    pub const RESET: u8 = 0x20;
}

/// CHANSTS fields; the same value is written to the completion address.
pub mod chansts {
    /// Mask of the state field.
    pub const STATE_MASK: u64 = 0x7;
    /// Working through descriptors.
    pub const ACTIVE: u64 = 0;
    /// Every counted descriptor done.
    pub const IDLE: u64 = 1;
    /// Stopped by SUSPEND.
    pub const SUSPENDED: u64 = 2;
    /// Stopped by an error or a reset.
    pub const HALTED: u64 = 3;
    /// Chain address written, nothing started yet.
    pub const ARMED: u64 = 4;
    /// Unaffiliated error.
    pub const UNAFFILIATED_ERROR: u64 = 1 << 3;
    /// Soft error.
    pub const SOFT_ERROR: u64 = 1 << 4;
    /// Mask of the address of the last completed descriptor (bits 63:6).
    pub const COMPLETED_ADDRESS_MASK: u64 = !0x3f;

    /// The state field of a status value.
    pub const fn state(status: u64) -> u64 {
        status & STATE_MASK
    }

    /// The address of the last completed descriptor in a status value.
    pub const fn completed_address(status: u64) -> u64 {
        status & COMPLETED_ADDRESS_MASK
    }
}

/// CHANERR bits (write 1 to clear).
pub mod chanerr {
    /// Source address error.
    pub const SRC_ADDR: u32 = 1 << 0;
    /// Destination address error.
    pub const DEST_ADDR: u32 = 1 << 1;
    /// Next-descriptor address error.
    pub const NEXT_ADDR: u32 = 1 << 2;
    /// Next-descriptor alignment error.
    pub const NEXT_DESC_ALIGN: u32 = 1 << 3;
    /// Chain address value error.
    pub const CHAIN_ADDR_VALUE: u32 = 1 << 4;
    /// CHANCMD error.
    pub const CHANCMD: u32 = 1 << 5;
    /// Chipset uncorrectable data integrity error.
    pub const CHIPSET_DATA_PARITY: u32 = 1 << 6;
    /// DMA uncorrectable data integrity error.
    pub const DMA_DATA_PARITY: u32 = 1 << 7;
    /// Read data error.
    pub const READ_DATA: u32 = 1 << 8;
    /// Write data error.
    pub const WRITE_DATA: u32 = 1 << 9;
    /// Descriptor control error.
    pub const CONTROL: u32 = 1 << 10;
    /// Descriptor length (transfer size) error.
    pub const LENGTH: u32 = 1 << 11;
    /// Completion address error.
    pub const COMPLETION_ADDR: u32 = 1 << 12;
    /// Interrupt configuration error.
    pub const INT_CONFIGURATION: u32 = 1 << 13;
    /// Soft error.
    pub const SOFT: u32 = 1 << 14;
    /// Unaffiliated error.
    pub const UNAFFILIATED: u32 = 1 << 15;
    /// XOR P or CRC error.
    pub const XOR_P_OR_CRC: u32 = 1 << 16;
    /// XOR Q error.
    pub const XOR_Q: u32 = 1 << 17;
    /// Descriptor count error.
    pub const DESCRIPTOR_COUNT: u32 = 1 << 18;

    /// A short description of the lowest set error bit, for error messages.
    pub fn describe(bits: u32) -> &'static str {
        const NAMES: [&str; 19] = [
            "source address error",
            "destination address error",
            "next descriptor address error",
            "next descriptor alignment error",
            "chain address value error",
            "channel command error",
            "chipset uncorrectable data integrity error",
            "DMA uncorrectable data integrity error",
            "read data error",
            "write data error",
            "descriptor control error",
            "descriptor length error",
            "completion address error",
            "interrupt configuration error",
            "soft error",
            "unaffiliated error",
            "XOR P or CRC error",
            "XOR Q error",
            "descriptor count error",
        ];
        match bits.trailing_zeros() as usize {
            32 => "no error",
            bit if bit < NAMES.len() => NAMES[bit],
            _ => "DIF or bundle error",
        }
    }
}

/// PCI configuration-space registers the driver touches.
pub mod config {
    /// u16: PCI command register.
    pub const COMMAND: usize = 0x04;
    /// Bus master enable bit of COMMAND.
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// u32: channel error bits mirrored for interrupts (RW1C); must be cleared on v3.0-v3.2
    /// before a halted channel can leave HALTED.
    pub const CHANERR_INT: usize = 0x180;
    /// u32: mask of CHANERR_INT.
    pub const CHANERRMASK_INT: usize = 0x184;
}

/// Descriptor opcodes (control bits 31:24).
pub mod op {
    /// Memory copy (and, with the null bit, a null descriptor).
    pub const COPY: u8 = 0x00;
    /// Block fill with a 64-bit pattern.
    pub const FILL: u8 = 0x01;
}

/// Control-word bits shared by copy, fill and null descriptors.
pub mod ctl {
    /// Interrupt when this descriptor completes.
    pub const INT_EN: u32 = 1 << 0;
    /// Non-snooped source reads.
    pub const SRC_SNOOP_DISABLE: u32 = 1 << 1;
    /// Non-snooped destination writes.
    pub const DEST_SNOOP_DISABLE: u32 = 1 << 2;
    /// Write the channel status to the completion address after this descriptor.
    pub const COMPLETION_UPDATE: u32 = 1 << 3;
    /// This descriptor and all before it finish before any later one starts.
    pub const FENCE: u32 = 1 << 4;
    /// Move no data.
    pub const NULL: u32 = 1 << 5;
    /// The source continues at `next_src_addr` after its first page.
    pub const SRC_PAGE_BREAK: u32 = 1 << 6;
    /// The destination continues at `next_dest_addr` after its first page.
    pub const DEST_PAGE_BREAK: u32 = 1 << 7;
    /// Bit position of the opcode.
    pub const OP_SHIFT: u32 = 24;

    /// The opcode of a control word.
    pub const fn op(control: u32) -> u8 {
        (control >> OP_SHIFT) as u8
    }

    /// A control word with opcode `op` and the given flag bits.
    pub const fn with_op(op: u8, flags: u32) -> u32 {
        ((op as u32) << OP_SHIFT) | flags
    }
}

/// Size a null descriptor carries: v3.0 parts reject size 0.
pub const NULL_DESCRIPTOR_SIZE: u32 = 8;

/// Size and alignment of every descriptor.
pub const DESCRIPTOR_SIZE: usize = 64;

/// A hardware descriptor: copy, fill (`src_or_pattern` holds the pattern) or null.
///
/// The layout is the device's; the driver writes these into ring memory the device reads, and
/// the device never writes them back (v3 copy and fill have no write-back).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Bytes to move or fill.
    pub size: u32,
    /// Control word: flags and opcode, see [`ctl`].
    pub control: u32,
    /// Source bus address (copy) or 64-bit fill pattern (fill).
    pub src_or_pattern: u64,
    /// Destination bus address.
    pub dest: u64,
    /// Bus address of the next descriptor in the chain.
    pub next: u64,
    /// Second source page with `SRC_PAGE_BREAK`.
    pub next_src: u64,
    /// Second destination page with `DEST_PAGE_BREAK`.
    pub next_dest: u64,
    /// Ignored by the device.
    pub user1: u64,
    /// Ignored by the device.
    pub user2: u64,
}

/// Offsets of the descriptor fields, for code that reads descriptors as raw memory.
pub mod desc {
    /// `size`, u32.
    pub const SIZE: usize = 0x00;
    /// `control`, u32.
    pub const CONTROL: usize = 0x04;
    /// `src_or_pattern`, u64.
    pub const SRC: usize = 0x08;
    /// `dest`, u64.
    pub const DEST: usize = 0x10;
    /// `next`, u64.
    pub const NEXT: usize = 0x18;
    /// `next_src`, u64.
    pub const NEXT_SRC: usize = 0x20;
    /// `next_dest`, u64.
    pub const NEXT_DEST: usize = 0x28;
}

const _: () = {
    assert!(std::mem::size_of::<Descriptor>() == DESCRIPTOR_SIZE);
    assert!(std::mem::align_of::<Descriptor>() == DESCRIPTOR_SIZE);
    assert!(std::mem::offset_of!(Descriptor, size) == desc::SIZE);
    assert!(std::mem::offset_of!(Descriptor, control) == desc::CONTROL);
    assert!(std::mem::offset_of!(Descriptor, src_or_pattern) == desc::SRC);
    assert!(std::mem::offset_of!(Descriptor, dest) == desc::DEST);
    assert!(std::mem::offset_of!(Descriptor, next) == desc::NEXT);
    assert!(std::mem::offset_of!(Descriptor, next_src) == desc::NEXT_SRC);
    assert!(std::mem::offset_of!(Descriptor, next_dest) == desc::NEXT_DEST);
    assert!(std::mem::offset_of!(Descriptor, user1) == 0x30);
    assert!(std::mem::offset_of!(Descriptor, user2) == 0x38);
    assert!(channel_base(0) == 0x80 && channel_base(3) == 0x200);
    assert!(channel_base(MAX_CHANNELS - 1) + chan::BLOCK_SIZE <= BAR_SIZE);
};

/// Largest transfer of one descriptor for an XFERCAP register value (0 means 2^32).
pub const fn max_transfer(xfercap: u8) -> u64 {
    match xfercap & device::XFERCAP_MASK {
        0 => 1 << 32,
        log2 => 1 << log2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_decode() {
        // A status seen in the field: descriptor 0x80701d940, state IDLE.
        let status = 0x8_0701_d941;
        assert_eq!(chansts::state(status), chansts::IDLE);
        assert_eq!(chansts::completed_address(status), 0x8_0701_d940);
    }

    #[test]
    fn control_word_round_trips_the_opcode() {
        let control = ctl::with_op(op::FILL, ctl::FENCE | ctl::COMPLETION_UPDATE);
        assert_eq!(ctl::op(control), op::FILL);
        assert_eq!(control & ctl::FENCE, ctl::FENCE);
        assert_eq!(control, 0x0100_0018);
    }

    #[test]
    fn error_names_and_transfer_caps() {
        assert_eq!(chanerr::describe(chanerr::SRC_ADDR), "source address error");
        assert_eq!(
            chanerr::describe(chanerr::LENGTH | chanerr::READ_DATA),
            "read data error"
        );
        assert_eq!(chanerr::describe(0), "no error");
        assert_eq!(max_transfer(20), 1 << 20);
        assert_eq!(max_transfer(0), 1 << 32);
        assert!(cbver::needs_split_64(cbver::V3_2));
        assert!(!cbver::needs_split_64(cbver::V3_3));
    }
}
