//! The Intel DSA (Data Streaming Accelerator) driver: a channel per work queue, behind the same
//! seam, table and hot-removal as IOAT.
//!
//! - [`spec`]: the programming interface (registers, tables, commands, descriptor, completion
//!   record), the only thing the driver shares with the emulated device;
//! - [`portal`]: where descriptors go (BAR2 portals: MOVDIR64B, ENQCMD, or the emulator's
//!   plain call);
//! - `control`: the device through its registers (identity, commands, the bring-up a VFIO
//!   driver does itself) and the per-WQ [`WqControl`];
//! - `queue` and `submit`: a started channel: descriptors in a ring, handed over as batches,
//!   completion records read back (`queue.rs` explains submission, completion, faults and
//!   removal);
//! - `device`: [`DsaDevice`], the engine's view: a channel per WQ;
//! - `kernel` and `hw`: the kernel route ([`KernelRoute`]: WQs configured by accel-config,
//!   found in sysfs, opened through `/dev/dsa`) and real portals ([`MappedPortals`]:
//!   MOVDIR64B and ENQCMD, after a CPUID check).

mod control;
mod device;
mod error;
mod hw;
mod kernel;
pub mod portal;
mod queue;
pub mod spec;
mod submit;

pub use control::{
    DsaIdentity, DsaLayout, DsaRegisters, DsaTimeouts, RegisterWq, WqControl, WqSettings, WqState,
};
pub use device::{DsaChannelBackend, DsaConfig, DsaDevice, WorkQueue};
pub use error::{device_error, DsaError, ABANDONED, UNRESOLVED_FAULT};
pub use hw::{MappedPortals, SubmitInstructions};
pub use kernel::{KernelRoute, KernelWq};
pub use queue::DsaQueueConfig;
