//! What an operation is to every backend and to the client: the flags it is submitted with,
//! the completion it ends with, why it may be refused at submission, and why it may fail once
//! accepted. Nothing here knows a descriptor format; a backend translates its device's own
//! error word into [`OpError::Device`] with a description of its own.

use std::fmt;

use crate::capability::Capability;
use crate::mem::MemError;

/// How an operation is submitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpFlags(u32);

impl OpFlags {
    /// No flag: queue the operation, ring the doorbell later with `submit`.
    pub const NONE: OpFlags = OpFlags(0);
    /// The operation starts only after every operation queued before it has finished.
    pub const FENCE: OpFlags = OpFlags(1);
    /// Ring the doorbell right after queueing the operation.
    pub const SUBMIT: OpFlags = OpFlags(2);

    /// Whether every flag of `other` is set.
    #[inline]
    pub const fn contains(self, other: OpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for OpFlags {
    type Output = OpFlags;
    fn bitor(self, rhs: OpFlags) -> OpFlags {
        OpFlags(self.0 | rhs.0)
    }
}

/// The end of one operation: exactly one per operation accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// What the submitter passed in.
    pub user_data: u64,
    /// Success, or why not.
    pub result: Result<(), OpError>,
    /// What the operation computed, meaningful when it succeeded:
    ///
    /// - copy, fill and dualcast: 0;
    /// - compare: 0 when the buffers are equal, else 1 + the offset of the first byte that
    ///   differs ([`Completion::mismatch_at`] reads it);
    /// - CRC-32C and copy with CRC: the standard CRC-32C of the data continuing from the
    ///   `initial` value submitted (0 to start), in the low 32 bits: what
    ///   [`crc32c`] returns, and what the common `crc32c` crates return.
    ///
    /// A failed operation carries 0.
    pub value: u64,
}

impl Completion {
    /// For a compare that succeeded: the offset of the first byte that differs, or `None`
    /// when the buffers are equal.
    #[inline]
    pub fn mismatch_at(&self) -> Option<u64> {
        self.value.checked_sub(1)
    }

    /// For a CRC operation that succeeded: the CRC-32C.
    #[inline]
    pub fn crc(&self) -> u32 {
        self.value as u32
    }
}

impl Default for Completion {
    /// A placeholder to size output buffers with: user data 0, success, value 0.
    fn default() -> Self {
        Completion {
            user_data: 0,
            result: Ok(()),
            value: 0,
        }
    }
}

/// Why an operation that was accepted did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The device reported an error on this operation and moved on (or was recovered).
    Device {
        /// The device's own error word (IOAT: the CHANERR bits; the software engine: the
        /// injected code).
        code: u32,
        /// What the backend makes of `code`.
        cause: &'static str,
    },
    /// The channel could not be recovered; the operation was abandoned.
    ChannelFailed,
    /// The device disappeared, or was removed before the operation could run.
    DeviceRemoved,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Device { code, cause } => write!(f, "device error: {cause} ({code:#x})"),
            OpError::ChannelFailed => f.write_str("channel failed and was abandoned"),
            OpError::DeviceRemoved => f.write_str("device removed"),
        }
    }
}

impl std::error::Error for OpError {}

/// Why an operation was refused at submission. A refused operation built nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue has `free` slots; the operation needs `needed`.
    RingFull {
        /// Slots the operation needs.
        needed: u32,
        /// Slots free now.
        free: u32,
    },
    /// A zero-length operation.
    ZeroLength,
    /// The device does not offer this kind of operation (fill, compare, CRC-32C, copy with
    /// CRC, dualcast). Nothing was built; the queue stays usable.
    Unsupported(Capability),
    /// The operation's arguments cannot work together (dualcast buffers that overlap).
    InvalidArgument(&'static str),
    /// Part of a buffer is not DMA memory (neither pool nor registered memory).
    Unmapped(MemError),
    /// The channel failed earlier and accepts nothing.
    ChannelFailed,
    /// The device is gone, or being removed.
    DeviceRemoved,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::RingFull { needed, free } => {
                write!(
                    f,
                    "descriptor ring full: {needed} slot(s) needed, {free} free"
                )
            }
            SubmitError::ZeroLength => f.write_str("zero-length operation"),
            SubmitError::Unsupported(cap) => write!(f, "not supported by this device: {cap}"),
            SubmitError::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            SubmitError::Unmapped(err) => write!(f, "buffer is not DMA memory: {err}"),
            SubmitError::ChannelFailed => f.write_str("channel failed and accepts no work"),
            SubmitError::DeviceRemoved => f.write_str("device removed"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `bytes` continuing from `seed`,
/// with no inversion at either end: the form a device computes (DSA's CRC generation), from
/// which the usual CRC-32C is `!crc32c_raw(!previous, bytes)` (`previous` 0 to start).
pub fn crc32c_raw(seed: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = crc32c_table();
    bytes.iter().fold(seed, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8)
    })
}

/// The standard CRC-32C (as iSCSI, ext4 and the `crc32c` crates compute it) of `bytes`,
/// continuing from `initial`, the CRC-32C of the data before them (0 to start): what a CRC
/// operation's [`Completion::value`] holds.
///
/// ```
/// use dmaplane::queue::op::crc32c;
/// assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
/// assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
/// ```
pub fn crc32c(initial: u32, bytes: &[u8]) -> u32 {
    !crc32c_raw(!initial, bytes)
}

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}
