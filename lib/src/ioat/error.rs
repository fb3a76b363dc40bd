//! Why the driver could not start a channel, and how an operation the device halted on is
//! reported (the backend-neutral operation errors live in `crate::queue::op`).

use std::fmt;

use super::spec::chanerr;
use crate::mem::MemError;
use crate::queue::OpError;

/// The completion status of an operation the device halted on: CHANERR's bits, described.
pub fn device_error(chanerr: u32) -> OpError {
    OpError::Device {
        code: chanerr,
        cause: chanerr::describe(chanerr),
    }
}

/// Why a channel could not be started or reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoatError {
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
    /// The DMA pool's addresses are not what this device would use, given how its registers
    /// were reached; the text says what to change.
    Addressing(String),
}

impl fmt::Display for IoatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoatError::UnsupportedVersion(v) => write!(f, "CBVER {v:#x} is not IOAT v3"),
            IoatError::NoSuchChannel { index, count } => {
                write!(f, "channel {index} does not exist (the device has {count})")
            }
            IoatError::Timeout {
                waiting_for,
                chansts,
                chanerr,
            } => write!(
                f,
                "timed out waiting for {waiting_for} (CHANSTS {chansts:#x}, CHANERR {chanerr:#x}: {})",
                chanerr::describe(*chanerr)
            ),
            IoatError::Memory(err) => write!(f, "DMA memory: {err}"),
            IoatError::Config(err) => write!(f, "configuration space: {err}"),
            IoatError::DeviceRemoved => f.write_str("device removed (registers read all-ones)"),
            IoatError::BadRingOrder(order) => {
                write!(f, "ring order {order} is outside 4..=16")
            }
            IoatError::Addressing(why) => write!(f, "DMA addressing: {why}"),
        }
    }
}

impl std::error::Error for IoatError {}

impl From<MemError> for IoatError {
    fn from(err: MemError) -> Self {
        IoatError::Memory(err)
    }
}
