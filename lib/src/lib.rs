//! dmaplane offloads memory copies and fills to DMA engines from polled-mode, CPU-pinned
//! applications, in the style of SPDK's ioat library and DPDK's dmadev, and lets DMA devices
//! be hot-removed and hot-added while clients keep working, losing no operation.
//!
//! A pinned thread makes a [`Client`] for its CPU; the client finds its channel in the per-CPU
//! table, queues copies and fills, rings the doorbell once per batch, and polls for one
//! [`Completion`] per operation. [`Setup`] makes everything around it: the engine, the DMA
//! memory the devices reach, the devices, and the hotplug [`Monitor`].
//!
//! ```
//! use dmaplane::{Completion, OpFlags, Setup};
//!
//! // One CPU, one emulated IOAT device, its DMA memory and the hotplug monitor.
//! let setup = Setup::builder().cpus(1).emulated_ioat(1).build()?;
//! let mut client = setup.client(0)?;
//! let mut src = setup.pool().alloc(4096, 64)?;
//! let dst = setup.pool().alloc(4096, 64)?;
//! src.write_at(0, &[7u8; 4096])?;
//! // SAFETY: both blocks stay allocated and untouched until the completion is polled.
//! unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 4096, 42, OpFlags::SUBMIT)? };
//! let mut done = [Completion::default(); 8];
//! while client.poll(&mut done) == 0 {}
//! assert_eq!((done[0].user_data, done[0].result), (42, Ok(())));
//! assert_eq!(dst.to_vec(), vec![7u8; 4096]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`BufferClient`] is the same without `unsafe`: its operations own their buffers and hand
//! them back with the completion.
//!
//! # Layers, bottom up
//!
//! No module imports a layer above it (a test checks this):
//!
//! 1. `sync`, [`log`], [`cpu`], `capability`: what everything uses;
//! 2. [`mem`]: DMA memory (hugepages or locked pages) and IOVA translation;
//! 3. [`mmio`]: volatile register windows over mapped BARs;
//! 4. [`pci`]: PCI configuration space, discovery and the rest of sysfs;
//! 5. [`vfio`]: VFIO and the IOMMU: containers, groups, device regions, DMA mapping, behind
//!    a kernel interface a simulation can stand in for;
//! 6. [`queue`]: the device seam: operations, the [`ChannelBackend`] hooks, the
//!    [`ChannelQueue`](queue::ChannelQueue) trait every backend implements, and (private)
//!    the generic ring and the lock-free pieces under it;
//! 7. [`ioat`], [`dsa`], [`soft`]: the backends, siblings: the IOAT driver, the DSA driver and
//!    the software engine;
//! 8. [`emu`]: the emulated IOAT device (the embedded default) and the emulated DSA;
//! 9. [`edu`]: QEMU's `edu` device as a backend (a software-engine ring whose copies its DMA
//!    engine carries out through VFIO), and a model of it: what the KVM rig drives;
//! 10. `engine`: devices, channel reference counts, the per-CPU table and its rebalance
//!     ([`Engine`]), removal;
//! 11. [`datapath`]: [`Client`], [`BufferClient`], pinned [`Workers`](datapath::Workers);
//! 12. [`hotplug`]: the [`Monitor`] and kernel uevents;
//! 13. `setup`: [`Setup`] and its builder.

mod capability;
pub mod cpu;
pub mod datapath;
pub mod dsa;
pub mod edu;
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
pub mod vfio;

pub use capability::{CapMask, Capability};
pub use datapath::{BufferClient, Client, ClientConfig, ClientError};
pub use engine::{
    Channel, ChannelCounts, ChannelDump, ChannelId, DeviceDump, DeviceId, Engine, EngineConfig,
    EngineDump, EngineError, PrivateChannel, RemovalKind, RemovalOptions, RemovalReport,
    TableReader, UnregisterReport, MAX_CPUS,
};
pub use hotplug::{HotplugEvent, Monitor, MonitorConfig};
pub use queue::{
    BackendError, ChannelBackend, ChannelStats, Completion, DeviceSpec, NullChannel, OpError,
    OpFlags, SubmitError,
};
pub use setup::{AttachFailure, DeviceInfo, DeviceKind, Removal, Setup, SetupBuilder, SetupError};

/// The lock-free protocols, exposed for the loom model tests only.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_exports {
    pub use crate::engine::grace::{GraceDomain, Published, ReaderSlot};
    pub use crate::queue::reserve::{Doorbell, SlotReservation};
    pub use crate::queue::route::{RetireToken, Routes};
    pub use crate::queue::spsc::{channel, Consumer, Full, Producer};
}
