//! The software backend: a DMA "device" whose channels move data with the CPU that polls
//! them. It sits behind the same seam as IOAT ([`ChannelQueue`]) and takes part in the
//! per-CPU table, the client's owned and shared modes, and hot-removal like any device, so an
//! application runs unchanged where no DMA engine is present, and the seam is proven by two
//! implementations. It is also what a client falls back on when the table gives its CPU no
//! channel ([`crate::datapath::ClientConfig::cpu_fallback`]).
//!
//! Besides copies and fills it compares, generates CRC-32C, copies with CRC and dualcasts
//! ([`SoftConfig::extended_ops`]), which is also what the CPU fallback offers.
//!
//! Operations run at poll time, oldest first, once a doorbell announced them, and complete at
//! that poll: the same completion semantics as a device. Faults can be injected
//! ([`SoftFault`]) so that an application's error paths can be tested.
//!
//! ```
//! use dmaplane::datapath::{Client, ClientConfig};
//! use dmaplane::soft::{SoftConfig, SoftDevice};
//! use dmaplane::{Completion, Engine, EngineConfig, OpFlags};
//!
//! let engine = Engine::new(EngineConfig::with_cpus(1)).unwrap();
//! let device = SoftDevice::new("soft0", SoftConfig::default()).unwrap();
//! engine.register_device(device.spec()).unwrap();
//! let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
//! let src = vec![7u8; 100];
//! let mut dst = vec![0u8; 100];
//! // SAFETY: both buffers outlive the operation, polled to completion below.
//! unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 100, 1, OpFlags::SUBMIT) }.unwrap();
//! let mut done = [Completion::default(); 1];
//! while client.poll(&mut done) == 0 {}
//! assert_eq!((done[0].user_data, done[0].result), (1, Ok(())));
//! assert_eq!(dst, src);
//! ```

mod engine;

use std::any::Any;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use engine::{ChannelFaults, DeviceFaults, SoftEngine};

use crate::capability::{CapMask, Capability};
use crate::mem::DmaPool;
use crate::queue::ring::{QueueCell, Ring, RingQueue};
use crate::queue::{BackendError, ChannelBackend, ChannelQueue, ChannelStats, DeviceSpec};

/// The operations [`SoftConfig::extended_ops`] turns on.
const EXTENDED: [Capability; 4] = [
    Capability::Compare,
    Capability::Crc32c,
    Capability::CopyCrc,
    Capability::Dualcast,
];

/// The default and largest transfer of one slot: its byte count fits the ring's bookkeeping.
pub const MAX_TRANSFER: usize = 1 << 30;

/// How a software device is made.
#[derive(Clone, Debug)]
pub struct SoftConfig {
    /// Channels, 1 to 64.
    pub channels: usize,
    /// log2 of each channel's ring size, 4 to 16.
    pub ring_order: u32,
    /// Whether the device fills as well as copies.
    pub fill: bool,
    /// Whether the device also compares, generates CRC-32C, copies with CRC and dualcasts
    /// (the operations DSA adds), all on the polling CPU. On by default. Ignored with an
    /// `executor`, whose device only copies: such a device refuses them with
    /// [`SubmitError::Unsupported`](crate::SubmitError::Unsupported).
    pub extended_ops: bool,
    /// The most bytes one slot carries: longer operations are split, as a device splits at
    /// its largest transfer, and complete once. 1 to 1 GiB.
    pub max_transfer: usize,
    /// When set, buffers must be DMA memory of this pool (or registered with it), as for a
    /// device behind an IOMMU: others are refused with
    /// [`SubmitError::Unmapped`](crate::SubmitError::Unmapped). When unset, any memory goes.
    pub pool: Option<DmaPool>,
    /// Who copies: the polling CPU when unset, or a device the backend drives one piece at a
    /// time (at most `max_transfer` bytes each). Such a device copies only, so `fill` must be
    /// off.
    pub executor: Option<Arc<dyn PieceExecutor>>,
}

/// A device that carries out a software channel's copies itself, one piece at a time, in the
/// retiring CPU's poll: the `edu` backend's DMA engine, reached through VFIO. The channel's
/// ring, routing, removal and statistics stay the software engine's.
pub trait PieceExecutor: Send + Sync + fmt::Debug {
    /// Copies `len` bytes from `src` to `dst` on channel `channel`, or says why it could not.
    /// A failed piece must leave `dst` as it was wherever the device could tell.
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads and `dst` for writes of `len` bytes, both DMA memory of
    /// the device's pool, and nobody else may touch them until this returns.
    unsafe fn copy(
        &self,
        channel: usize,
        dst: usize,
        src: usize,
        len: usize,
    ) -> Result<(), PieceError>;

    /// Whether the device still answers (its registers do not read all-ones).
    fn is_present(&self) -> bool;
}

/// Why a piece failed, as the operation's [`OpError::Device`](crate::OpError::Device) reports
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceError {
    /// The device's code (non-zero).
    pub code: u32,
    /// What it means.
    pub cause: &'static str,
}

impl Default for SoftConfig {
    fn default() -> Self {
        SoftConfig {
            channels: 1,
            ring_order: 10,
            fill: true,
            extended_ops: true,
            max_transfer: MAX_TRANSFER,
            pool: None,
            executor: None,
        }
    }
}

/// Why a software device could not be made or a fault injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SoftError {
    /// A setting outside its range.
    InvalidConfig(String),
    /// No such channel.
    NoSuchChannel(usize),
}

impl fmt::Display for SoftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SoftError::InvalidConfig(why) => write!(f, "invalid software device: {why}"),
            SoftError::NoSuchChannel(index) => write!(f, "no channel {index}"),
        }
    }
}

impl std::error::Error for SoftError {}

/// A fault to inject into a software device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SoftFault {
    /// The `nth` operation piece the channel carries out from now on (1 = the next one)
    /// fails with [`OpError::Device`](crate::OpError::Device) carrying `code`, before moving
    /// any data.
    FailOp {
        /// The channel.
        channel: usize,
        /// Which piece, counting from 1.
        nth: u32,
        /// The code to report (0 reads as 1).
        code: u32,
    },
    /// The channel carries nothing out (work stays in flight) until unstalled.
    Stall {
        /// The channel.
        channel: usize,
    },
    /// Undoes [`SoftFault::Stall`].
    Unstall {
        /// The channel.
        channel: usize,
    },
    /// The device is gone: nothing runs any more, work in flight completes with "device
    /// removed", and [`ChannelBackend::is_present`] turns false so a hotplug monitor notices.
    SurpriseRemoval,
}

/// One piece of work a software device carried out, recorded while tracing is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// The channel.
    pub channel: usize,
    /// Device-wide sequence number taken before the piece ran.
    pub start: u64,
    /// Device-wide sequence number taken once its data was in place.
    pub finish: u64,
    /// Bytes it copied or filled (0 for a null operation).
    pub bytes: u64,
}

/// A software device: a name, its capabilities and its channels, ready to register.
pub struct SoftDevice {
    name: String,
    capabilities: CapMask,
    channels: Vec<Arc<SoftChannelBackend>>,
    faults: Arc<DeviceFaults>,
}

impl SoftDevice {
    /// A device of `config.channels` channels.
    pub fn new(name: impl Into<String>, config: SoftConfig) -> Result<SoftDevice, SoftError> {
        if !(1..=64).contains(&config.channels) {
            return Err(SoftError::InvalidConfig(format!(
                "{} channels is outside 1..=64",
                config.channels
            )));
        }
        if !(4..=16).contains(&config.ring_order) {
            return Err(SoftError::InvalidConfig(format!(
                "ring order {} is outside 4..=16",
                config.ring_order
            )));
        }
        if !(1..=MAX_TRANSFER).contains(&config.max_transfer) {
            return Err(SoftError::InvalidConfig(format!(
                "largest transfer {} is outside 1..=2^30",
                config.max_transfer
            )));
        }
        if config.executor.is_some() && config.fill {
            return Err(SoftError::InvalidConfig(
                "a device that carries out the pieces copies only: turn fill off".into(),
            ));
        }
        let faults = Arc::new(DeviceFaults::default());
        let channels = (0..config.channels)
            .map(|index| {
                Arc::new(SoftChannelBackend {
                    index,
                    config: config.clone(),
                    faults: Arc::new(ChannelFaults::default()),
                    device: Arc::clone(&faults),
                    queue: QueueCell::default(),
                })
            })
            .collect();
        let mut capabilities = CapMask::MEMCPY;
        if config.fill {
            capabilities = capabilities.with(Capability::Fill);
        }
        if config.extended_ops && config.executor.is_none() {
            for cap in EXTENDED {
                capabilities = capabilities.with(cap);
            }
        }
        Ok(SoftDevice {
            name: name.into(),
            capabilities,
            channels,
            faults,
        })
    }

    /// The capabilities: copy, and fill and the extended operations if configured.
    pub fn capabilities(&self) -> CapMask {
        self.capabilities
    }

    /// The channel backends, in channel order.
    pub fn channels(&self) -> &[Arc<SoftChannelBackend>] {
        &self.channels
    }

    /// The description to register with an engine.
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec::new(
            self.name.clone(),
            self.capabilities,
            self.channels
                .iter()
                .map(|c| Arc::clone(c) as Arc<dyn ChannelBackend>)
                .collect(),
        )
    }

    /// Injects `fault`.
    pub fn inject(&self, fault: SoftFault) -> Result<(), SoftError> {
        let channel = |index: usize| {
            self.channels
                .get(index)
                .map(|c| &c.faults)
                .ok_or(SoftError::NoSuchChannel(index))
        };
        match fault {
            SoftFault::FailOp {
                channel: c,
                nth,
                code,
            } => {
                let faults = channel(c)?;
                faults.fail_code.store(code, Ordering::Release);
                faults.fail_in.store(nth, Ordering::Release);
            }
            SoftFault::Stall { channel: c } => channel(c)?.stalled.store(true, Ordering::Release),
            SoftFault::Unstall { channel: c } => {
                channel(c)?.stalled.store(false, Ordering::Release)
            }
            SoftFault::SurpriseRemoval => self.faults.removed.store(true, Ordering::Release),
        }
        Ok(())
    }

    /// Starts (or stops) recording the work the device carries out.
    pub fn enable_trace(&self, on: bool) {
        self.faults.tracing.store(on, Ordering::Relaxed);
    }

    /// The record so far, emptied.
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        std::mem::take(&mut *crate::sync::lock_std(&self.faults.trace))
    }

    /// Whether a surprise removal was injected.
    pub fn is_removed(&self) -> bool {
        self.faults.removed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for SoftDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftDevice")
            .field("name", &self.name)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

/// One software channel behind the engine's reference counting: its ring exists exactly while
/// the engine holds a reference to the channel.
pub struct SoftChannelBackend {
    index: usize,
    config: SoftConfig,
    faults: Arc<ChannelFaults>,
    device: Arc<DeviceFaults>,
    queue: QueueCell<SoftEngine>,
}

impl SoftChannelBackend {
    /// The channel's index in its device.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the channel is started (the engine holds a reference to it).
    pub fn is_started(&self) -> bool {
        self.queue.is_started()
    }
}

/// A started software queue of `size` slots.
fn start(
    channel: usize,
    size: u32,
    config: &SoftConfig,
    faults: Arc<ChannelFaults>,
    device: Arc<DeviceFaults>,
) -> Arc<RingQueue<SoftEngine>> {
    Arc::new(RingQueue {
        ring: Ring::new(size),
        engine: SoftEngine::new(channel, size, config, faults, device),
    })
}

/// A queue of its own for a client with no channel (the CPU fallback): owned by nobody else,
/// accepting any memory.
pub(crate) fn private_queue(ring_order: u32) -> Arc<dyn ChannelQueue> {
    let config = SoftConfig {
        ring_order,
        ..SoftConfig::default()
    };
    start(0, 1 << ring_order, &config, Arc::default(), Arc::default())
}

impl ChannelBackend for SoftChannelBackend {
    fn allocate_resources(&self) -> Result<(), BackendError> {
        self.queue.set(start(
            self.index,
            1 << self.config.ring_order,
            &self.config,
            Arc::clone(&self.faults),
            Arc::clone(&self.device),
        ));
        Ok(())
    }

    fn free_resources(&self) {
        self.queue.close();
    }

    fn queue(&self) -> Option<Arc<dyn ChannelQueue>> {
        self.queue.queue()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn stats(&self) -> ChannelStats {
        self.queue.stats()
    }

    fn is_present(&self) -> bool {
        !self.device.removed.load(Ordering::Acquire)
            && self
                .config
                .executor
                .as_ref()
                .map_or(true, |e| e.is_present())
    }
}
