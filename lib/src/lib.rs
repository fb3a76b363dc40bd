//! dmaplane offloads memory copies and fills to DMA engines from polled-mode, CPU-pinned
//! applications, in the style of SPDK's ioat library and DPDK's dmadev, and lets DMA devices
//! be hot-removed and hot-added while clients keep working.
//!
//! This version holds the engine core ([`Engine`]): devices and their channels, channel
//! reference counts, clients, private channels, and the per-CPU channel table with the
//! rebalance of the Linux dmaengine hot-removal patch it descends from, read lock-free by
//! pinned threads through [`TableReader`]. Devices are plugged in through [`ChannelBackend`];
//! [`NullChannel`] is a bookkeeping-only backend for tests and examples.
//!
//! ```
//! use dmaplane::{Capability, CapMask, DeviceSpec, Engine, EngineConfig, NullChannel};
//!
//! let engine = Engine::new(EngineConfig::with_cpus(4)).unwrap();
//! let dev = engine
//!     .register_device(DeviceSpec::new("dev0", CapMask::MEMCPY, NullChannel::many(2)))
//!     .unwrap();
//! engine.get_client(); // the first client populates the table
//! println!("{}", engine.dump());
//! // Four CPUs share two channels: CPUs 2 and 3 fall back to the least-used channels.
//! let chan = |cpu| engine.table_entry(Capability::Memcpy, cpu).unwrap().unwrap().index;
//! assert_eq!([chan(0), chan(1), chan(2), chan(3)], [0, 1, 0, 1]);
//! engine.unregister_device(dev).unwrap(); // legal while the client exists
//! engine.put_client().unwrap();
//! ```

mod capability;
pub mod cpu;
pub mod datapath;
pub mod emu;
mod engine;
pub mod hotplug;
pub mod ioat;
pub mod log;
pub mod mem;
pub mod mmio;
pub mod pci;
pub mod queue;
mod setup;
pub mod soft;
mod sync;

pub use capability::{CapMask, Capability};
pub use engine::{
    Channel, ChannelCounts, ChannelDump, ChannelId, DeviceDump, DeviceId, Engine, EngineConfig,
    EngineDump, EngineError, PrivateChannel, RemovalKind, RemovalOptions, RemovalReport,
    TableReader, UnregisterReport, MAX_CPUS,
};
pub use queue::{
    BackendError, ChannelBackend, ChannelStats, Completion, DeviceSpec, NullChannel, OpError,
    OpFlags, SubmitError,
};
pub use setup::{DeviceInfo, DeviceKind, Removal, Setup, SetupBuilder, SetupError};

/// The lock-free protocols, exposed for the loom model tests only.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_exports {
    pub use crate::engine::grace::{GraceDomain, Published, ReaderSlot};
    pub use crate::queue::reserve::{Doorbell, SlotReservation};
    pub use crate::queue::route::{RetireToken, Routes};
    pub use crate::queue::spsc::{channel, Consumer, Full, Producer};
}
