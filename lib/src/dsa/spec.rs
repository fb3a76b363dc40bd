//! The Intel DSA (Data Streaming Accelerator) programming interface as typed constants and
//! layouts: BAR0 registers and their fields, the configuration tables (GRPCFG, WQCFG), the
//! commands, the work-queue portals in BAR2, the 64-byte descriptor, the 32-byte completion
//! record, the opcodes, flags and status codes (`reference/dsa.md` §1–§7, §11).
//!
//! As `ioat::spec` is for IOAT, this is the only thing the DSA driver and the emulated DSA
//! device share. Offsets are from BAR0 unless they say otherwise.

/// PCI ids of DSA functions (vendor [`VENDOR_INTEL`]).
pub mod device_id {
    /// Sapphire Rapids (and later Xeons).
    pub const SPR: u16 = 0x0B25;
    /// Granite Rapids-D.
    pub const GNRD: u16 = 0x11FB;
    /// Diamond Rapids.
    pub const DMR: u16 = 0x1212;
    /// Every id this driver takes.
    pub const ALL: [u16; 3] = [SPR, GNRD, DMR];
}

/// Intel's PCI vendor id.
pub const VENDOR_INTEL: u16 = 0x8086;
/// PCI class code of a DSA function (system peripheral, other).
pub const CLASS_CODE: u32 = 0x08_8000;
/// The BAR holding the registers.
pub const MMIO_BAR: u32 = 0;
/// The BAR holding the work-queue portals.
pub const PORTAL_BAR: u32 = 2;
/// Size of the register window the driver maps (registers, tables and perfmon of an SPR part).
pub const BAR0_SIZE: usize = 0x2000;

/// Register offsets from BAR0.
pub mod reg {
    /// u32: version, major in bits 15:8 by the specification (the kernel reads 7:4); see
    /// [`super::version`].
    pub const VERSION: usize = 0x00;
    /// u64: general capabilities, see [`super::gencap`].
    pub const GENCAP: usize = 0x10;
    /// u64: work-queue capabilities, see [`super::wqcap`].
    pub const WQCAP: usize = 0x20;
    /// u64: group capabilities, see [`super::grpcap`].
    pub const GRPCAP: usize = 0x30;
    /// u64: engine capabilities: bits 7:0 the number of engines.
    pub const ENGCAP: usize = 0x38;
    /// 256 bits: bit `n` set = opcode `n` supported.
    pub const OPCAP: usize = 0x40;
    /// 128 bits: where the tables are, see [`super::offsets`].
    pub const OFFSETS: usize = 0x60;
    /// u32: general configuration; writable only while the device is disabled.
    pub const GENCFG: usize = 0x80;
    /// u32: general control (interrupt enables).
    pub const GENCTRL: usize = 0x88;
    /// u32: general status, see [`super::gensts`].
    pub const GENSTS: usize = 0x90;
    /// u32: interrupt causes, write 1 to clear.
    pub const INTCAUSE: usize = 0x98;
    /// u32: the command register, see [`super::cmd`].
    pub const CMD: usize = 0xA0;
    /// u32: the last command's status, see [`super::cmdsts`].
    pub const CMDSTATUS: usize = 0xA8;
    /// u64: which commands exist (when GENCAP says CMDCAP is present).
    pub const CMDCAP: usize = 0xB0;
    /// 4 × u64: the software error register, see [`super::swerr`].
    pub const SWERROR: usize = 0xC0;
}

/// VERSION: the specification puts the major version in bits 15:8 and the minor in 7:0
/// (1.0 = 0x100); the kernel masks 0xF0/0x0F. A reader takes whichever is non-zero.
pub mod version {
    /// DSA 1.0 (Sapphire Rapids).
    pub const V1_0: u32 = 0x100;
    /// DSA 2.0.
    pub const V2_0: u32 = 0x200;

    /// The major version, read both ways.
    pub const fn major(value: u32) -> u32 {
        let spec = (value >> 8) & 0xFF;
        if spec != 0 {
            spec
        } else {
            (value >> 4) & 0xF
        }
    }
}

/// GENCAP fields.
pub mod gencap {
    /// Block on fault supported.
    pub const BLOCK_ON_FAULT: u64 = 1 << 0;
    /// Memory Move may overlap source and destination.
    pub const OVERLAP_COPY: u64 = 1 << 1;
    /// Cache control for destination writes.
    pub const CACHE_CONTROL: u64 = 1 << 2;
    /// CMDCAP register present.
    pub const CMDCAP: u64 = 1 << 4;
    /// 16-byte fill patterns.
    pub const FILL_16B: u64 = 1 << 10;
    /// Configuration is programmable (0: fixed by the platform).
    pub const CONFIGURABLE: u64 = 1 << 31;

    /// log2 of the largest transfer one descriptor may move (bits 20:16).
    pub const fn max_transfer_shift(value: u64) -> u32 {
        ((value >> 16) & 0x1F) as u32
    }

    /// log2 of the largest batch (bits 24:21).
    pub const fn max_batch_shift(value: u64) -> u32 {
        ((value >> 21) & 0xF) as u32
    }

    /// The value with both shifts in place.
    pub const fn with_shifts(transfer_shift: u32, batch_shift: u32) -> u64 {
        ((transfer_shift as u64 & 0x1F) << 16) | ((batch_shift as u64 & 0xF) << 21)
    }
}

/// WQCAP fields.
pub mod wqcap {
    /// Shared work queues supported.
    pub const SHARED: u64 = 1 << 48;
    /// Dedicated work queues supported.
    pub const DEDICATED: u64 = 1 << 49;
    /// WQ priorities supported.
    pub const PRIORITY: u64 = 1 << 51;
    /// WQ occupancy reported.
    pub const OCCUPANCY: u64 = 1 << 52;

    /// Entries the device's work queues share (bits 15:0).
    pub const fn total_size(value: u64) -> u32 {
        (value & 0xFFFF) as u32
    }

    /// Work queues (bits 23:16).
    pub const fn count(value: u64) -> u32 {
        ((value >> 16) & 0xFF) as u32
    }

    /// Bytes of one WQCFG entry: 2^(bits 27:24 + 5).
    pub const fn entry_size(value: u64) -> usize {
        1 << (((value >> 24) & 0xF) + 5)
    }

    /// The value of a device with `count` queues sharing `total` entries, 32-byte WQCFG
    /// entries, and the listed flags.
    pub const fn encode(total: u32, count: u32, flags: u64) -> u64 {
        (total as u64 & 0xFFFF) | ((count as u64 & 0xFF) << 16) | flags
    }
}

/// GRPCAP fields.
pub mod grpcap {
    /// Groups (bits 7:0).
    pub const fn groups(value: u64) -> u32 {
        (value & 0xFF) as u32
    }

    /// Read buffers (bits 15:8).
    pub const fn read_buffers(value: u64) -> u32 {
        ((value >> 8) & 0xFF) as u32
    }
}

/// OFFSETS: each table's offset from BAR0, in units of 0x100.
pub mod offsets {
    /// Unit of every OFFSETS field.
    pub const UNIT: usize = 0x100;

    /// GRPCFG table (bits 15:0 of the low qword).
    pub const fn grpcfg(low: u64) -> usize {
        (low & 0xFFFF) as usize * UNIT
    }

    /// WQCFG table (bits 31:16).
    pub const fn wqcfg(low: u64) -> usize {
        ((low >> 16) & 0xFFFF) as usize * UNIT
    }

    /// MSI-X permission table (bits 47:32).
    pub const fn msix_perm(low: u64) -> usize {
        ((low >> 32) & 0xFFFF) as usize * UNIT
    }

    /// The low qword for tables at these offsets (each a multiple of [`UNIT`]).
    pub const fn encode(grpcfg: usize, wqcfg: usize, msix_perm: usize) -> u64 {
        (grpcfg / UNIT) as u64
            | (((wqcfg / UNIT) as u64) << 16)
            | (((msix_perm / UNIT) as u64) << 32)
    }
}

/// GENSTS fields.
pub mod gensts {
    /// Device state (bits 1:0).
    pub const STATE_MASK: u32 = 0x3;
    /// Disabled: configurable.
    pub const DISABLED: u32 = 0;
    /// Enabled: running.
    pub const ENABLED: u32 = 1;
    /// Being disabled.
    pub const DISABLING: u32 = 2;
    /// Halted by an error: nothing completes until a reset.
    pub const HALTED: u32 = 3;

    /// The state field.
    pub const fn state(value: u32) -> u32 {
        value & STATE_MASK
    }

    /// The reset a halted device needs (bits 3:2): 0 Reset Device, 1 FLR, 2 warm, 3 cold.
    pub const fn reset_type(value: u32) -> u32 {
        (value >> 2) & 0x3
    }
}

/// INTCAUSE bits (write 1 to clear).
pub mod intcause {
    /// A software error was recorded in SWERROR.
    pub const SOFTWARE_ERROR: u32 = 1 << 0;
    /// A command that asked for an interrupt completed.
    pub const COMMAND: u32 = 1 << 1;
    /// The device halted.
    pub const HALT: u32 = 1 << 4;
}

/// The command register: code in bits 24:20, operand in 19:0.
pub mod cmd {
    /// Bit 31: raise the command-completion interrupt cause when done.
    pub const REQUEST_INTERRUPT: u32 = 1 << 31;

    /// Enable the device (checks the configuration).
    pub const ENABLE_DEVICE: u32 = 1;
    /// Disable the device (drains every WQ).
    pub const DISABLE_DEVICE: u32 = 2;
    /// Wait for every descriptor submitted so far.
    pub const DRAIN_ALL: u32 = 3;
    /// Drop every descriptor not started.
    pub const ABORT_ALL: u32 = 4;
    /// Reset the device: disabled, every configuration register cleared.
    pub const RESET_DEVICE: u32 = 5;
    /// Enable one WQ (operand: its index).
    pub const ENABLE_WQ: u32 = 6;
    /// Disable WQs (operand: [`wq_operand`]): drains them first.
    pub const DISABLE_WQ: u32 = 7;
    /// Wait for what the WQs hold (operand: [`wq_operand`]).
    pub const DRAIN_WQ: u32 = 8;
    /// Drop what the WQs hold (operand: [`wq_operand`]).
    pub const ABORT_WQ: u32 = 9;
    /// Reset WQs to disabled (operand: [`wq_operand`]).
    pub const RESET_WQ: u32 = 10;

    /// The register value for `code` with `operand`.
    pub const fn encode(code: u32, operand: u32) -> u32 {
        ((code & 0x1F) << 20) | (operand & 0xF_FFFF)
    }

    /// The command code of a register value.
    pub const fn code(value: u32) -> u32 {
        (value >> 20) & 0x1F
    }

    /// The operand of a register value.
    pub const fn operand(value: u32) -> u32 {
        value & 0xF_FFFF
    }

    /// The operand naming WQ `wq` to the commands that take a bitmap: bit `wq % 16` of the
    /// block `wq / 16`.
    pub const fn wq_operand(wq: u32) -> u32 {
        (1 << (wq % 16)) | ((wq / 16) << 16)
    }

    /// The WQs a bitmap operand names, as a mask over WQ indices.
    pub const fn wq_mask(operand: u32) -> u64 {
        ((operand & 0xFFFF) as u64) << (16 * ((operand >> 16) & 0xF))
    }
}

/// CMDSTATUS fields and command error codes.
pub mod cmdsts {
    /// A command is being carried out.
    pub const ACTIVE: u32 = 1 << 31;

    /// The error code (bits 7:0); 0 = success.
    pub const fn error(value: u32) -> u32 {
        value & 0xFF
    }

    /// Invalid command code.
    pub const INVALID_COMMAND: u32 = 0x01;
    /// Invalid WQ index.
    pub const INVALID_WQ: u32 = 0x02;
    /// The device is halted.
    pub const HALTED: u32 = 0x05;
    /// Enable Device: the device is not disabled.
    pub const DEVICE_NOT_DISABLED: u32 = 0x10;
    /// Enable Device: configuration error.
    pub const CONFIG_ERROR: u32 = 0x11;
    /// Enable Device: bus mastering is off.
    pub const BUS_MASTER_DISABLED: u32 = 0x12;
    /// Enable Device: WQ sizes exceed the total.
    pub const WQ_SIZES_EXCEED_TOTAL: u32 = 0x14;
    /// Enable Device: a group has WQs but no engine, or engines but no WQ.
    pub const GROUP_CONFIG: u32 = 0x15;
    /// Enable WQ: the device is not enabled.
    pub const DEVICE_NOT_ENABLED: u32 = 0x20;
    /// Enable WQ: the WQ is not disabled.
    pub const WQ_NOT_DISABLED: u32 = 0x21;
    /// Enable WQ: size 0.
    pub const WQ_SIZE_ZERO: u32 = 0x22;
    /// Enable WQ: priority 0.
    pub const WQ_PRIORITY_ZERO: u32 = 0x23;
    /// Enable WQ: the mode is not supported.
    pub const WQ_MODE_UNSUPPORTED: u32 = 0x24;
    /// Enable WQ: block on fault asked for where page requests are not supported.
    pub const WQ_BLOCK_ON_FAULT: u32 = 0x25;
    /// Enable WQ: a shared WQ without PASID enable.
    pub const SHARED_WITHOUT_PASID: u32 = 0x26;
    /// Enable WQ: invalid max batch size.
    pub const WQ_BAD_MAX_BATCH: u32 = 0x27;
    /// Enable WQ: invalid max transfer size.
    pub const WQ_BAD_MAX_TRANSFER: u32 = 0x28;

    /// What a command error code means.
    pub fn describe(code: u32) -> &'static str {
        match code {
            0 => "success",
            INVALID_COMMAND => "invalid command",
            INVALID_WQ => "invalid WQ index",
            0x03 => "hardware error",
            HALTED => "device halted",
            DEVICE_NOT_DISABLED => "device not disabled",
            CONFIG_ERROR => "configuration error",
            BUS_MASTER_DISABLED => "bus mastering disabled",
            WQ_SIZES_EXCEED_TOTAL => "WQ sizes exceed the device's total",
            GROUP_CONFIG | 0x16 | 0x17 => "group configuration error",
            0x18 => "read-buffer configuration error",
            DEVICE_NOT_ENABLED => "device not enabled",
            WQ_NOT_DISABLED => "WQ not disabled",
            WQ_SIZE_ZERO => "WQ size 0",
            WQ_PRIORITY_ZERO => "WQ priority 0",
            WQ_MODE_UNSUPPORTED => "WQ mode not supported",
            0x25 => "block on fault without page requests",
            SHARED_WITHOUT_PASID => "shared WQ without PASID",
            WQ_BAD_MAX_BATCH => "invalid WQ max batch size",
            WQ_BAD_MAX_TRANSFER => "invalid WQ max transfer size",
            0x2d => "WQ operation configuration not a subset of OPCAP",
            _ => "unknown command error",
        }
    }
}

/// The software error register (four qwords at [`reg::SWERROR`]).
pub mod swerr {
    /// qword 0 bit 0: an error is recorded (write 1 to clear).
    pub const VALID: u64 = 1 << 0;
    /// qword 0 bit 1: another error came while one was recorded.
    pub const OVERFLOW: u64 = 1 << 1;
    /// qword 0 bit 2: the opcode field (a descriptor's error) is valid.
    pub const DESCRIPTOR_VALID: u64 = 1 << 2;
    /// qword 0 bit 3: the WQ index field is valid.
    pub const WQ_VALID: u64 = 1 << 3;
    /// qword 0 bit 4: the descriptor was a batch member (qword 1 holds its index).
    pub const BATCH: u64 = 1 << 4;
    /// qword 0 bit 5: the fault was on a write.
    pub const WRITE: u64 = 1 << 5;

    /// The opcode (qword 0 bits 39:32).
    pub const fn opcode(qword0: u64) -> u8 {
        (qword0 >> 32) as u8
    }

    /// The error code (qword 0 bits 15:8).
    pub const fn code(qword0: u64) -> u32 {
        ((qword0 >> 8) & 0xFF) as u32
    }

    /// The WQ index (qword 0 bits 23:16).
    pub const fn wq(qword0: u64) -> u32 {
        ((qword0 >> 16) & 0xFF) as u32
    }

    /// Halted: an unsupported configuration change (bus mastering cleared while enabled).
    pub const HALT_CONFIG_CHANGE: u32 = 0x51;
    /// A command was written while another was active (the new one is dropped).
    pub const COMMAND_WHILE_ACTIVE: u32 = 0x52;
    /// A dedicated WQ overflowed: the descriptor was dropped.
    pub const DWQ_OVERFLOW: u32 = 0x53;
}

/// One group's configuration (GRPCFG entry): 64 bytes.
pub mod grpcfg {
    /// Bytes per group.
    pub const ENTRY_SIZE: usize = 64;
    /// Bytes 0–31: bitmap of the group's WQs (four qwords).
    pub const WQS: usize = 0;
    /// Bytes 32–39: bitmap of the group's engines.
    pub const ENGINES: usize = 32;
    /// Bytes 40–47: flags (traffic classes, read buffers).
    pub const FLAGS: usize = 40;
    /// Traffic class A = B = 1, as drivers set on version 1 and 2 parts.
    pub const FLAGS_TC_DEFAULT: u64 = 0x9;
}

/// One WQ's configuration (WQCFG entry); offsets of its dwords, and their fields.
pub mod wqcfg {
    /// Dword 0 bits 15:0: size (entries).
    pub const SIZE: usize = 0x00;
    /// Dword 1: threshold (shared WQs).
    pub const THRESHOLD: usize = 0x04;
    /// Dword 2: mode, priority, PASID.
    pub const MODE: usize = 0x08;
    /// Dword 3: max transfer shift (4:0) and max batch shift (8:5).
    pub const LIMITS: usize = 0x0C;
    /// Dword 6: occupancy (15:0) and state (31:30).
    pub const STATUS: usize = 0x18;

    /// Dword 2 bit 0: dedicated (1) or shared (0).
    pub const MODE_DEDICATED: u32 = 1 << 0;
    /// Dword 2 bit 1: block on fault.
    pub const MODE_BLOCK_ON_FAULT: u32 = 1 << 1;
    /// Dword 2 bit 28: PASID enable.
    pub const MODE_PASID_ENABLE: u32 = 1 << 28;

    /// Dword 2 with a priority (bits 7:4).
    pub const fn mode(dedicated: bool, priority: u32) -> u32 {
        (if dedicated { MODE_DEDICATED } else { 0 }) | ((priority & 0xF) << 4)
    }

    /// The priority field of dword 2.
    pub const fn priority(mode: u32) -> u32 {
        (mode >> 4) & 0xF
    }

    /// Dword 3 for these shifts.
    pub const fn limits(transfer_shift: u32, batch_shift: u32) -> u32 {
        (transfer_shift & 0x1F) | ((batch_shift & 0xF) << 5)
    }

    /// The max transfer shift of dword 3.
    pub const fn transfer_shift(limits: u32) -> u32 {
        limits & 0x1F
    }

    /// The max batch shift of dword 3.
    pub const fn batch_shift(limits: u32) -> u32 {
        (limits >> 5) & 0xF
    }

    /// The state field of dword 6: 0 disabled, 1 enabled.
    pub const fn state(status: u32) -> u32 {
        status >> 30
    }

    /// WQ state: disabled.
    pub const STATE_DISABLED: u32 = 0;
    /// WQ state: enabled.
    pub const STATE_ENABLED: u32 = 1;
}

/// Work-queue portals in BAR2: four 4 KiB pages per WQ; the 64 slots of a page are one portal.
pub mod portal {
    /// Bytes of one portal page.
    pub const PAGE: usize = 0x1000;
    /// Bytes of one WQ's portals.
    pub const PER_WQ: usize = 4 * PAGE;
    /// The slot size: one 64-byte descriptor.
    pub const SLOT: usize = 64;

    /// Which of a WQ's portals.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(usize)]
    pub enum Kind {
        /// Unlimited, MSI-X: what a VFIO driver uses.
        Unlimited = 0,
        /// Limited (subject to a shared WQ's threshold), MSI-X: what the kernel's character
        /// device maps.
        Limited = 1,
        /// Unlimited, IMS.
        UnlimitedIms = 2,
        /// Limited, IMS.
        LimitedIms = 3,
    }

    /// Offset in BAR2 of `kind` portal of WQ `wq`.
    pub const fn offset(wq: usize, kind: Kind) -> usize {
        wq * PER_WQ + kind as usize * PAGE
    }

    /// The WQ and portal kind a BAR2 offset falls in.
    pub const fn decode(offset: usize) -> (usize, usize) {
        (offset / PER_WQ, (offset % PER_WQ) / PAGE)
    }
}

/// Opcodes (descriptor byte 7).
pub mod opcode {
    /// No operation.
    pub const NOOP: u8 = 0x00;
    /// A batch: source = the descriptor list, size = the count.
    pub const BATCH: u8 = 0x01;
    /// Completes once earlier descriptors of the WQ have.
    pub const DRAIN: u8 = 0x02;
    /// Copy.
    pub const MEMMOVE: u8 = 0x03;
    /// Fill with an 8-byte pattern (16 with the flag).
    pub const MEMFILL: u8 = 0x04;
    /// Compare two buffers.
    pub const COMPARE: u8 = 0x05;
    /// Compare a buffer with an 8-byte pattern.
    pub const COMPARE_PATTERN: u8 = 0x06;
    /// Create a delta record.
    pub const CREATE_DELTA: u8 = 0x07;
    /// Apply a delta record.
    pub const APPLY_DELTA: u8 = 0x08;
    /// Copy to two destinations.
    pub const DUALCAST: u8 = 0x09;
    /// CRC-32C of a buffer.
    pub const CRC_GEN: u8 = 0x10;
    /// Copy and CRC-32C of the source.
    pub const COPY_CRC: u8 = 0x11;
    /// Cache flush.
    pub const CACHE_FLUSH: u8 = 0x20;

    /// The OPCAP bit of `op` within its qword, and which qword.
    pub const fn opcap_position(op: u8) -> (usize, u64) {
        ((op / 64) as usize, 1 << (op % 64))
    }
}

/// Descriptor flags (bytes 4–6).
pub mod flags {
    /// Inside a batch: wait for every earlier member; reserved outside a batch.
    pub const FENCE: u32 = 1 << 0;
    /// Block on fault (only if the WQ allows it).
    pub const BLOCK_ON_FAULT: u32 = 1 << 1;
    /// The completion record address is valid.
    pub const CRAV: u32 = 1 << 2;
    /// Write the completion record on success too (with CRAV; else only on error).
    pub const RCR: u32 = 1 << 3;
    /// Request a completion interrupt.
    pub const RCI: u32 = 1 << 4;
    /// Compare and compare-pattern: a mismatch completes with status 0x02.
    pub const CHECK_RESULT: u32 = 1 << 7;
    /// Cache control 1: write the destination into the cache.
    pub const CACHE_CONTROL: u32 = 1 << 8;
    /// Copy with CRC and CRC generation: read the seed from memory (bit 16).
    pub const CRC_READ_SEED: u32 = 1 << 16;
    /// Memory fill: a 16-byte pattern (bit 18).
    pub const FILL_16B: u32 = 1 << 18;
    /// Every bit a descriptor may carry on this model.
    pub const DEFINED: u32 = 0x00FF_FFFF;
}

/// Completion status codes (record byte 0, bits 5:0; bit 7 = the fault was a write).
pub mod status {
    /// Not written yet: software zeroes it before submitting.
    pub const NONE: u8 = 0x00;
    /// Success.
    pub const SUCCESS: u8 = 0x01;
    /// Success with a false predicate (compare with Check Result: the buffers differ).
    pub const SUCCESS_FALSE_PREDICATE: u8 = 0x02;
    /// Page fault without block on fault: partial completion.
    pub const PAGE_FAULT: u8 = 0x03;
    /// Page fault that could not be resolved.
    pub const PAGE_FAULT_UNRESOLVED: u8 = 0x04;
    /// Batch: a member failed.
    pub const BATCH_FAILED: u8 = 0x05;
    /// Batch: page fault reading the descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// Invalid or unsupported opcode.
    pub const INVALID_OPCODE: u8 = 0x10;
    /// Invalid flags (bitmap at byte 16).
    pub const INVALID_FLAGS: u8 = 0x11;
    /// A reserved field is not zero.
    pub const RESERVED_NONZERO: u8 = 0x12;
    /// Transfer size 0 or above the WQ's max.
    pub const INVALID_SIZE: u8 = 0x13;
    /// Batch descriptor count out of range.
    pub const INVALID_COUNT: u8 = 0x14;
    /// Source and destination overlap.
    pub const OVERLAP: u8 = 0x16;
    /// Dualcast destinations disagree in their low address bits.
    pub const DUALCAST_ALIGN: u8 = 0x17;
    /// Batch list not 64-byte aligned.
    pub const MISALIGNED_LIST: u8 = 0x18;
    /// Completion record translation fault.
    pub const RECORD_FAULT: u8 = 0x1A;
    /// Completion record not 32-byte aligned.
    pub const MISALIGNED_RECORD: u8 = 0x1B;
    /// Address translation failed.
    pub const TRANSLATION_FAIL: u8 = 0x22;
    /// Bits 5:0 of byte 0 hold the code.
    pub const CODE_MASK: u8 = 0x3F;
    /// Bit 7 of byte 0: the fault was on a write.
    pub const FAULT_ON_WRITE: u8 = 0x80;
    /// Software only: a descriptor the driver gave up on (the kernel's and DPDK's 0xFF).
    pub const SOFTWARE_ABORT: u8 = 0xFF;

    /// The code of a status byte.
    pub const fn code(byte: u8) -> u8 {
        byte & CODE_MASK
    }

    /// What a status code means.
    pub fn describe(code: u8) -> &'static str {
        match code {
            NONE => "not completed",
            SUCCESS => "success",
            SUCCESS_FALSE_PREDICATE => "success, false predicate",
            PAGE_FAULT => "page fault (partial completion)",
            PAGE_FAULT_UNRESOLVED => "page fault that could not be resolved",
            BATCH_FAILED => "a batch member failed",
            BATCH_PAGE_FAULT => "page fault reading the batch list",
            INVALID_OPCODE => "invalid or unsupported opcode",
            INVALID_FLAGS => "invalid flags",
            RESERVED_NONZERO => "non-zero reserved field",
            INVALID_SIZE => "invalid transfer size",
            INVALID_COUNT => "batch count out of range",
            OVERLAP => "overlapping buffers",
            DUALCAST_ALIGN => "dualcast destinations misaligned",
            MISALIGNED_LIST => "misaligned batch list",
            RECORD_FAULT => "completion record translation fault",
            MISALIGNED_RECORD => "misaligned completion record",
            TRANSLATION_FAIL => "address translation failed",
            _ => "device error",
        }
    }
}

/// A work descriptor: 64 bytes, written to a portal whole (or listed in a batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Descriptor {
    /// Bits 19:0 PASID, 31 privileged (ignored on dedicated WQs and inside batches).
    pub pasid: u32,
    /// Flags (bits 23:0) and the opcode (bits 31:24): bytes 4–6 and byte 7.
    pub flags_opcode: u32,
    /// Completion record address (32-byte aligned).
    pub completion: u64,
    /// Source; a fill's pattern (low 8 bytes); a batch's descriptor list.
    pub src: u64,
    /// Destination.
    pub dst: u64,
    /// Bytes; a batch's descriptor count.
    pub size: u32,
    /// Completion interrupt handle.
    pub int_handle: u16,
    /// Reserved.
    pub reserved0: u16,
    /// Operation-specific: dualcast's second destination; the CRC seed (low 32 bits, CRC
    /// generation and copy with CRC); compare's expected result (low byte); the high 8 bytes
    /// of a 16-byte fill pattern.
    pub op_specific0: u64,
    /// Operation-specific: the CRC seed's address (with the read-seed flag).
    pub op_specific1: u64,
    /// Operation-specific or reserved.
    pub op_specific2: u64,
}

impl Descriptor {
    /// Byte offset of the CRC seed (CRC generation, copy with CRC).
    pub const CRC_SEED_OFFSET: usize = 40;

    /// A descriptor of `opcode` with `flags`.
    pub const fn new(opcode: u8, flags: u32) -> Descriptor {
        Descriptor {
            pasid: 0,
            flags_opcode: (flags & flags::DEFINED) | ((opcode as u32) << 24),
            completion: 0,
            src: 0,
            dst: 0,
            size: 0,
            int_handle: 0,
            reserved0: 0,
            op_specific0: 0,
            op_specific1: 0,
            op_specific2: 0,
        }
    }

    /// The opcode.
    pub const fn opcode(&self) -> u8 {
        (self.flags_opcode >> 24) as u8
    }

    /// The flags.
    pub const fn flags(&self) -> u32 {
        self.flags_opcode & flags::DEFINED
    }

    /// Sets flag bits.
    pub fn set_flags(&mut self, bits: u32) {
        self.flags_opcode |= bits & flags::DEFINED;
    }

    /// Clears flag bits.
    pub fn clear_flags(&mut self, bits: u32) {
        self.flags_opcode &= !(bits & flags::DEFINED);
    }

    /// The CRC seed (bytes 40–43).
    pub const fn crc_seed(&self) -> u32 {
        self.op_specific0 as u32
    }

    /// Dualcast's second destination (bytes 40–47).
    pub const fn dst2(&self) -> u64 {
        self.op_specific0
    }

    /// The 64 bytes as written to a portal (little-endian).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.pasid.to_le_bytes());
        put(4, &self.flags_opcode.to_le_bytes());
        put(8, &self.completion.to_le_bytes());
        put(16, &self.src.to_le_bytes());
        put(24, &self.dst.to_le_bytes());
        put(32, &self.size.to_le_bytes());
        put(36, &self.int_handle.to_le_bytes());
        put(38, &self.reserved0.to_le_bytes());
        put(40, &self.op_specific0.to_le_bytes());
        put(48, &self.op_specific1.to_le_bytes());
        put(56, &self.op_specific2.to_le_bytes());
        out
    }

    /// A descriptor from its 64 bytes.
    pub fn from_bytes(bytes: &[u8; 64]) -> Descriptor {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        Descriptor {
            pasid: u32_at(0),
            flags_opcode: u32_at(4),
            completion: u64_at(8),
            src: u64_at(16),
            dst: u64_at(24),
            size: u32_at(32),
            int_handle: u16_at(36),
            reserved0: u16_at(38),
            op_specific0: u64_at(40),
            op_specific1: u64_at(48),
            op_specific2: u64_at(56),
        }
    }
}

/// A completion record: 32 bytes, 32-byte aligned; the device writes `status` last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct CompletionRecord {
    /// Status code (bits 5:0) and fault direction (bit 7); 0 until written.
    pub status: u8,
    /// Operation-specific result: compare 0 = equal, 1 = different; memory move 1 = copied
    /// backwards.
    pub result: u8,
    /// Fault information.
    pub fault_info: u8,
    /// Reserved.
    pub reserved: u8,
    /// Bytes completed when the operation stopped early (a batch: descriptors completed); 0
    /// when it completed fully. A compare that found a difference: its offset.
    pub bytes_completed: u32,
    /// The address that faulted.
    pub fault_address: u64,
    /// Operation-specific: the CRC (low 32 bits), or the invalid-flags bitmap.
    pub op_specific0: u64,
    /// Operation-specific.
    pub op_specific1: u64,
}

/// Offset of the status byte, for atomic polling.
pub const RECORD_STATUS_OFFSET: usize = 0;

/// CPUID leaf 7 sub-leaf 0, ECX bits for the submission instructions.
pub mod cpuid {
    /// MOVDIR64B: 64-byte direct store (dedicated WQs).
    pub const MOVDIR64B: u32 = 1 << 28;
    /// ENQCMD: enqueue with a retry answer (shared WQs).
    pub const ENQCMD: u32 = 1 << 29;
}

pub use crate::queue::op::crc32c_raw as crc32c;

const _: () = {
    assert!(std::mem::size_of::<Descriptor>() == 64);
    assert!(std::mem::align_of::<Descriptor>() == 64);
    assert!(std::mem::size_of::<CompletionRecord>() == 32);
    assert!(std::mem::align_of::<CompletionRecord>() == 32);
    assert!(std::mem::offset_of!(Descriptor, flags_opcode) == 4);
    assert!(std::mem::offset_of!(Descriptor, completion) == 8);
    assert!(std::mem::offset_of!(Descriptor, src) == 16);
    assert!(std::mem::offset_of!(Descriptor, dst) == 24);
    assert!(std::mem::offset_of!(Descriptor, size) == 32);
    assert!(std::mem::offset_of!(Descriptor, int_handle) == 36);
    assert!(std::mem::offset_of!(Descriptor, op_specific0) == 40);
    assert!(std::mem::offset_of!(Descriptor, op_specific0) == Descriptor::CRC_SEED_OFFSET);
    assert!(std::mem::offset_of!(Descriptor, op_specific1) == 48);
    assert!(std::mem::offset_of!(CompletionRecord, result) == 1);
    assert!(std::mem::offset_of!(CompletionRecord, fault_info) == 2);
    assert!(std::mem::offset_of!(CompletionRecord, bytes_completed) == 4);
    assert!(std::mem::offset_of!(CompletionRecord, fault_address) == 8);
    assert!(std::mem::offset_of!(CompletionRecord, op_specific0) == 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_bytes_round_trip_with_fields_at_their_offsets() {
        let mut d = Descriptor::new(opcode::MEMMOVE, flags::CRAV | flags::RCR);
        d.completion = 0x1122_3344_5566_7780;
        d.src = 0xAA;
        d.dst = 0xBB;
        d.size = 0x0102_0304;
        d.op_specific0 = 0xDEAD_BEEF;
        let bytes = d.to_bytes();
        assert_eq!(bytes[7], opcode::MEMMOVE);
        assert_eq!(bytes[4], (flags::CRAV | flags::RCR) as u8);
        assert_eq!(bytes[8], 0x80);
        assert_eq!(bytes[16], 0xAA);
        assert_eq!(bytes[24], 0xBB);
        assert_eq!(&bytes[32..36], &[4, 3, 2, 1]);
        assert_eq!(&bytes[40..44], &0xDEAD_BEEFu32.to_le_bytes());
        assert_eq!(d.crc_seed(), 0xDEAD_BEEF);
        assert_eq!(Descriptor::from_bytes(&bytes), d);
        // The in-memory layout is the wire layout (x86 is little-endian).
        // SAFETY: a Descriptor is 64 plain bytes with no padding (checked above).
        let raw: [u8; 64] = unsafe { std::mem::transmute(d) };
        assert_eq!(raw, bytes);
    }

    #[test]
    fn command_and_wq_operands_encode_as_the_kernel_builds_them() {
        let value = cmd::encode(cmd::ENABLE_WQ, 5);
        assert_eq!((cmd::code(value), cmd::operand(value)), (6, 5));
        assert_eq!(cmd::wq_operand(3), 1 << 3);
        assert_eq!(cmd::wq_operand(17), (1 << 1) | (1 << 16));
        assert_eq!(cmd::wq_mask(cmd::wq_operand(17)), 1 << 17);
        assert_eq!(cmd::wq_mask(cmd::wq_operand(3)), 1 << 3);
    }

    #[test]
    fn capability_fields_decode() {
        let gencap = gencap::with_shifts(31, 10) | gencap::CONFIGURABLE;
        assert_eq!(gencap::max_transfer_shift(gencap), 31);
        assert_eq!(gencap::max_batch_shift(gencap), 10);
        let wqcap = wqcap::encode(128, 8, wqcap::DEDICATED | wqcap::SHARED);
        assert_eq!(wqcap::total_size(wqcap), 128);
        assert_eq!(wqcap::count(wqcap), 8);
        assert_eq!(wqcap::entry_size(wqcap), 32);
        let off = offsets::encode(0x300, 0x400, 0x200);
        assert_eq!(offsets::grpcfg(off), 0x300);
        assert_eq!(offsets::wqcfg(off), 0x400);
        assert_eq!(offsets::msix_perm(off), 0x200);
        assert_eq!(version::major(version::V1_0), 1);
        assert_eq!(version::major(0x20), 2);
        assert_eq!(
            portal::offset(2, portal::Kind::Limited),
            2 * 0x4000 + 0x1000
        );
        assert_eq!(
            portal::decode(portal::offset(3, portal::Kind::Limited) + 0x40),
            (3, 1)
        );
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The check value of CRC-32C is over "123456789" with the seed and the result
        // inverted; the device neither inverts nor seeds, so the driver does that part.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        let split = crc32c(crc32c(!0, b"1234"), b"56789");
        assert_eq!(split, crc32c(!0, b"123456789"));
    }

    /// Every opcode, flag and status value, as `reference/dsa.md` §4 and §5.1 list them
    /// (copied from the tables there, not from this file).
    #[test]
    fn opcodes_flags_and_status_codes_match_the_reference_tables() {
        let opcodes = [
            (opcode::NOOP, 0x00),
            (opcode::BATCH, 0x01),
            (opcode::DRAIN, 0x02),
            (opcode::MEMMOVE, 0x03),
            (opcode::MEMFILL, 0x04),
            (opcode::COMPARE, 0x05),
            (opcode::COMPARE_PATTERN, 0x06),
            (opcode::CREATE_DELTA, 0x07),
            (opcode::APPLY_DELTA, 0x08),
            (opcode::DUALCAST, 0x09),
            (opcode::CRC_GEN, 0x10),
            (opcode::COPY_CRC, 0x11),
            (opcode::CACHE_FLUSH, 0x20),
        ];
        for (ours, reference) in opcodes {
            assert_eq!(ours, reference);
        }
        let flag_bits = [
            (flags::FENCE, 0),
            (flags::BLOCK_ON_FAULT, 1),
            (flags::CRAV, 2),
            (flags::RCR, 3),
            (flags::RCI, 4),
            (flags::CHECK_RESULT, 7),
            (flags::CACHE_CONTROL, 8),
        ];
        for (ours, bit) in flag_bits {
            assert_eq!(ours, 1 << bit);
        }
        let statuses = [
            (status::NONE, 0x00),
            (status::SUCCESS, 0x01),
            (status::SUCCESS_FALSE_PREDICATE, 0x02),
            (status::PAGE_FAULT, 0x03),
            (status::PAGE_FAULT_UNRESOLVED, 0x04),
            (status::BATCH_FAILED, 0x05),
            (status::BATCH_PAGE_FAULT, 0x06),
            (status::INVALID_OPCODE, 0x10),
            (status::INVALID_FLAGS, 0x11),
            (status::RESERVED_NONZERO, 0x12),
            (status::INVALID_SIZE, 0x13),
            (status::INVALID_COUNT, 0x14),
            (status::OVERLAP, 0x16),
            (status::DUALCAST_ALIGN, 0x17),
            (status::MISALIGNED_LIST, 0x18),
            (status::RECORD_FAULT, 0x1A),
            (status::MISALIGNED_RECORD, 0x1B),
            (status::TRANSLATION_FAIL, 0x22),
        ];
        for (ours, reference) in statuses {
            assert_eq!(ours, reference);
            assert_ne!(
                status::describe(ours),
                "device error",
                "{ours:#x} is described"
            );
        }
        assert_eq!(status::code(0x83), status::PAGE_FAULT);
        // Registers (§3.1) and commands (§3.2).
        let registers = [
            (reg::VERSION, 0x00),
            (reg::GENCAP, 0x10),
            (reg::WQCAP, 0x20),
            (reg::GRPCAP, 0x30),
            (reg::ENGCAP, 0x38),
            (reg::OPCAP, 0x40),
            (reg::OFFSETS, 0x60),
            (reg::GENCFG, 0x80),
            (reg::GENCTRL, 0x88),
            (reg::GENSTS, 0x90),
            (reg::INTCAUSE, 0x98),
            (reg::CMD, 0xA0),
            (reg::CMDSTATUS, 0xA8),
            (reg::CMDCAP, 0xB0),
            (reg::SWERROR, 0xC0),
        ];
        for (ours, reference) in registers {
            assert_eq!(ours, reference);
        }
        let commands = [
            cmd::ENABLE_DEVICE,
            cmd::DISABLE_DEVICE,
            cmd::DRAIN_ALL,
            cmd::ABORT_ALL,
            cmd::RESET_DEVICE,
            cmd::ENABLE_WQ,
            cmd::DISABLE_WQ,
            cmd::DRAIN_WQ,
            cmd::ABORT_WQ,
            cmd::RESET_WQ,
        ];
        assert_eq!(commands, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(
            (
                swerr::HALT_CONFIG_CHANGE,
                swerr::COMMAND_WHILE_ACTIVE,
                swerr::DWQ_OVERFLOW
            ),
            (0x51, 0x52, 0x53)
        );
        assert_eq!(
            (
                wqcfg::SIZE,
                wqcfg::THRESHOLD,
                wqcfg::MODE,
                wqcfg::LIMITS,
                wqcfg::STATUS
            ),
            (0, 4, 8, 12, 24)
        );
        assert_eq!((grpcfg::WQS, grpcfg::ENGINES, grpcfg::FLAGS), (0, 32, 40));
    }
}
