//! The Intel I/OAT v3 device: its programming interface ([`spec`]), the channel driver
//! ([`IoatChannel`]) that runs unchanged on hardware and on the emulated device, and the
//! engine backend that starts a channel on its first reference ([`IoatDevice`]). Driver and
//! emulated device share nothing but [`spec`].

mod channel;
mod completion;
pub(crate) mod core;
mod device;
mod error;
mod ring;
pub mod spec;
pub(crate) mod submit;

pub use channel::{
    ChannelConfig, ChannelError, ChannelStats, Completion, IoatChannel, OpError, OpFlags,
    SubmitError, Timeouts,
};
pub use core::{ChannelCore, MAX_CLIENTS_PER_CHANNEL};
pub use device::{IoatChannelBackend, IoatDevice};
