//! The Intel I/OAT v3 backend: its programming interface ([`spec`]), the channel driver that
//! runs unchanged on hardware and on the emulated device ([`IoatChannel`] for one thread, the
//! queue behind the seam for the client), and the engine backend that starts a channel on its
//! first reference ([`IoatDevice`]). Driver and emulated device share nothing but [`spec`].

mod channel;
mod completion;
mod device;
mod error;
mod function;
mod queue;
mod ring;
pub mod spec;
mod submit;

pub use channel::{IoatChannel, IoatConfig, Timeouts};
pub use device::{IoatChannelBackend, IoatDevice};
pub use error::{device_error, IoatError};
