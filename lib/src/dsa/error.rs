//! Why the DSA driver could not bring a device or a work queue up, and how a descriptor's
//! status becomes an operation's error.

use std::fmt;

use super::spec::{cmdsts, status};
use crate::mem::MemError;
use crate::queue::OpError;

/// The completion of an operation the device reported `status_byte` for.
pub fn device_error(status_byte: u8) -> OpError {
    let code = status::code(status_byte);
    OpError::Device {
        code: u32::from(status_byte),
        cause: status::describe(code),
    }
}

/// An operation of a batch that the device abandoned: a fenced member after a failed one.
pub const ABANDONED: OpError = OpError::Device {
    code: 0x100,
    cause: "not run: an earlier operation of its batch failed and a fence stopped the rest",
};

/// A page fault the driver cannot resolve: the address is an IOVA behind an IOMMU (memory is
/// pinned there, so a fault means it was not mapped), or the operation kept faulting.
pub const UNRESOLVED_FAULT: OpError = OpError::Device {
    code: status::PAGE_FAULT as u32,
    cause: "page fault (partial completion) that the driver could not resolve",
};

/// Why a DSA device or one of its work queues could not be brought up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DsaError {
    /// Every register reads all-ones: the device is gone.
    DeviceRemoved,
    /// A command failed; `code` is CMDSTATUS's error byte.
    Command {
        /// The command's name.
        command: &'static str,
        /// The error code.
        code: u32,
    },
    /// A wait ran out of time.
    Timeout {
        /// What was being waited for.
        waiting_for: &'static str,
    },
    /// The device is halted and needs this reset (GENSTS bits 3:2).
    Halted {
        /// 0 Reset Device, 1 FLR, 2 warm reset, 3 cold reset.
        reset_type: u32,
    },
    /// The platform fixed the configuration (GENCAP bit 31 clear): use the kernel's
    /// character device instead.
    NotConfigurable,
    /// A setting the device cannot take; the text says which.
    BadConfig(String),
    /// No WQ with this index was configured.
    NoSuchQueue {
        /// The index asked for.
        index: usize,
        /// WQs configured.
        count: usize,
    },
    /// Ring, completion records or batch lists could not be allocated.
    Memory(MemError),
    /// Configuration space could not be accessed.
    Config(String),
    /// The DMA pool's addresses are not what this device would use; the text says what to
    /// change.
    Addressing(String),
    /// The CPU or the system lacks what submission needs; the text says what.
    Unsupported(String),
    /// The kernel's DSA driver or its files refused; the text says which and why.
    Kernel(String),
}

impl fmt::Display for DsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsaError::DeviceRemoved => f.write_str("device removed (registers read all-ones)"),
            DsaError::Command { command, code } => write!(
                f,
                "DSA command {command} failed: {} ({code:#x})",
                cmdsts::describe(*code)
            ),
            DsaError::Timeout { waiting_for } => write!(f, "timed out waiting for {waiting_for}"),
            DsaError::Halted { reset_type } => {
                let needs = ["Reset Device", "FLR", "a warm reset", "a cold reset"];
                write!(
                    f,
                    "the device is halted and needs {}",
                    needs[(*reset_type as usize).min(3)]
                )
            }
            DsaError::NotConfigurable => f.write_str(
                "the device's configuration is fixed by the platform: configure WQs with \
                 accel-config and use the kernel route (/dev/dsa)",
            ),
            DsaError::BadConfig(why) => write!(f, "invalid DSA configuration: {why}"),
            DsaError::NoSuchQueue { index, count } => {
                write!(f, "WQ {index} does not exist ({count} configured)")
            }
            DsaError::Memory(err) => write!(f, "DMA memory: {err}"),
            DsaError::Config(err) => write!(f, "configuration space: {err}"),
            DsaError::Addressing(why) => write!(f, "DMA addressing: {why}"),
            DsaError::Unsupported(why) => write!(f, "cannot submit to DSA here: {why}"),
            DsaError::Kernel(why) => write!(f, "kernel DSA driver: {why}"),
        }
    }
}

impl std::error::Error for DsaError {}

impl From<MemError> for DsaError {
    fn from(err: MemError) -> Self {
        DsaError::Memory(err)
    }
}
