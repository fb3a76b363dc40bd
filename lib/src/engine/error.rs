//! The typed errors of the engine's control path.
//!
//! Every refusal names its cause and carries the offending value back, so that a caller (or the
//! C ABI, which maps each variant to a negative errno) can tell bad input from a device that
//! went away.

use std::fmt;

use super::device::{ChannelId, DeviceId};
use crate::capability::CapMask;

/// Why an engine operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// No device with this id was ever registered with this engine.
    UnknownDevice(DeviceId),
    /// The device was registered once but has been unregistered since.
    DeviceUnregistered(DeviceId),
    /// The device has no channel with this index.
    UnknownChannel(ChannelId),
    /// The channel is not held as a private channel, so it cannot be released.
    ChannelNotHeld(ChannelId),
    /// The CPU number is not below the engine's count of possible CPUs.
    UnknownCpu {
        /// The CPU asked for.
        cpu: usize,
        /// The engine's count of possible CPUs.
        possible: usize,
    },
    /// The channel has no reference to add to (its resources are not allocated).
    ChannelNotReferenced(ChannelId),
    /// A data-path client for this CPU exists already.
    CpuHasClient(usize),
    /// `put_client` was called with no client registered.
    NoClients,
    /// No registered device offers a free channel with these capabilities (and passing the
    /// filter, where one was given).
    NoChannelAvailable(CapMask),
    /// A device description or engine configuration is unusable.
    InvalidConfig(String),
    /// The backend could not allocate a channel's resources on its first reference.
    ChannelAllocation {
        /// The channel whose allocation failed.
        channel: ChannelId,
        /// The backend's explanation.
        reason: String,
    },
    /// A grace period did not end in time because these readers did not report a quiescent
    /// state.
    GracePeriodTimeout {
        /// Labels of the readers that held it up.
        laggards: Vec<String>,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::UnknownDevice(id) => write!(f, "no device {id} was ever registered"),
            EngineError::DeviceUnregistered(id) => {
                write!(f, "device {id} has already been unregistered")
            }
            EngineError::UnknownChannel(id) => write!(f, "channel {id} does not exist"),
            EngineError::ChannelNotHeld(id) => {
                write!(f, "channel {id} is not held as a private channel")
            }
            EngineError::UnknownCpu { cpu, possible } => {
                write!(
                    f,
                    "cpu {cpu} is out of range (the engine has {possible} possible cpus)"
                )
            }
            EngineError::ChannelNotReferenced(id) => {
                write!(f, "channel {id} is not referenced, so it cannot be held")
            }
            EngineError::CpuHasClient(cpu) => write!(f, "cpu {cpu} already has a client"),
            EngineError::NoClients => f.write_str("no client is registered"),
            EngineError::NoChannelAvailable(mask) => {
                write!(f, "no free channel offers capabilities {mask}")
            }
            EngineError::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            EngineError::ChannelAllocation { channel, reason } => {
                write!(
                    f,
                    "allocating resources of channel {channel} failed: {reason}"
                )
            }
            EngineError::GracePeriodTimeout { laggards } => write!(
                f,
                "grace period timed out waiting for readers: {}",
                laggards.join(", ")
            ),
        }
    }
}

impl std::error::Error for EngineError {}
