//! Why the driver refused, failed or abandoned something: errors at start-up, at submission,
//! and the status of an operation that was accepted but did not succeed.

use std::fmt;

use super::spec::chanerr;
use crate::mem::MemError;

/// Why an operation that was accepted did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The device halted on this operation; `chanerr` holds the CHANERR bits.
    Device {
        /// The CHANERR register at the halt.
        chanerr: u32,
    },
    /// The channel could not be recovered; the operation was abandoned.
    ChannelFailed,
    /// The device disappeared (its registers read all-ones).
    DeviceRemoved,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Device { chanerr } => write!(
                f,
                "device error: {} (CHANERR {chanerr:#x})",
                chanerr::describe(*chanerr)
            ),
            OpError::ChannelFailed => f.write_str("channel failed and was abandoned"),
            OpError::DeviceRemoved => f.write_str("device removed"),
        }
    }
}

impl std::error::Error for OpError {}

/// Why an operation was refused at submission. A refused operation built nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The ring has `free` slots; the operation needs `needed`.
    RingFull {
        /// Slots the operation needs.
        needed: u32,
        /// Slots free now.
        free: u32,
    },
    /// A zero-length operation.
    ZeroLength,
    /// The device does not offer block fill.
    FillUnsupported,
    /// Part of a buffer is not DMA memory (neither pool nor registered memory).
    Unmapped(MemError),
    /// The channel failed earlier and accepts nothing.
    ChannelFailed,
    /// The device is gone.
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
            SubmitError::FillUnsupported => f.write_str("the device does not support fill"),
            SubmitError::Unmapped(err) => write!(f, "buffer is not DMA memory: {err}"),
            SubmitError::ChannelFailed => f.write_str("channel failed and accepts no work"),
            SubmitError::DeviceRemoved => f.write_str("device removed"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// Why a channel could not be started or reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The version register names a part older than v3.
    UnsupportedVersion(u8),
    /// The channel index is not below CHANCNT.
    NoSuchChannel {
        /// The index asked for.
        index: usize,
        /// CHANCNT.
        count: usize,
    },
    /// A wait ran out of time.
    Timeout {
        /// What was being waited for.
        waiting_for: &'static str,
        /// CHANSTS when it gave up.
        chansts: u64,
        /// CHANERR when it gave up.
        chanerr: u32,
    },
    /// The ring or completion word could not be allocated.
    Memory(MemError),
    /// Configuration space could not be accessed.
    Config(String),
    /// Every register reads all-ones: the device is gone.
    DeviceRemoved,
    /// A ring order outside 4..=16.
    BadRingOrder(u32),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::UnsupportedVersion(v) => write!(f, "CBVER {v:#x} is not IOAT v3"),
            ChannelError::NoSuchChannel { index, count } => {
                write!(f, "channel {index} does not exist (the device has {count})")
            }
            ChannelError::Timeout {
                waiting_for,
                chansts,
                chanerr,
            } => write!(
                f,
                "timed out waiting for {waiting_for} (CHANSTS {chansts:#x}, CHANERR {chanerr:#x}: {})",
                chanerr::describe(*chanerr)
            ),
            ChannelError::Memory(err) => write!(f, "DMA memory: {err}"),
            ChannelError::Config(err) => write!(f, "configuration space: {err}"),
            ChannelError::DeviceRemoved => f.write_str("device removed (registers read all-ones)"),
            ChannelError::BadRingOrder(order) => {
                write!(f, "ring order {order} is outside 4..=16")
            }
        }
    }
}

impl std::error::Error for ChannelError {}

impl From<MemError> for ChannelError {
    fn from(err: MemError) -> Self {
        ChannelError::Memory(err)
    }
}
