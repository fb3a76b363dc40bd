//! A software Intel IOAT v3 (QuickData / CBDMA) device behind the same registers as the
//! silicon: the embedded default engine, and the bench the channel driver is tested on.
//!
//! [`EmulatedDevice`] exposes its 16 KiB BAR0 as a
//! [`RegisterWindow`](crate::mmio::RegisterWindow) and its PCI configuration space as a
//! [`ConfigSpace`](crate::pci::ConfigSpace). It shares nothing with the driver but
//! [`crate::ioat::spec`], as silicon shares nothing with a driver but the datasheet: a driver
//! that works here has programmed registers and descriptors, not called a mock. It reaches
//! host memory only through a [`DeviceMemory`], as silicon reaches it only through an IOMMU.
//!
//! What it models (see `reference/ioat-v3.md` §1–§3, and §3.9's checklist in particular):
//! CHANCNT, XFERCAP, CBVER and DMACAPABILITY; per channel the HALTED / ARMED / ACTIVE / IDLE
//! / SUSPENDED state machine, the self-clearing RESET command, the CHAINADDR and CHANCMP
//! address pairs (low half first), the DMACOUNT doorbell against an internal 16-bit count,
//! write-1-to-clear CHANERR mirrored into configuration space at 0x180, COPY, NULL and FILL
//! descriptors validated against XFERCAP and the memory map, and completion words of the
//! form `descriptor address | state`. Interrupts, DCA, page breaks and the RAID opcodes are
//! not modelled (descriptors asking for page breaks or RAID ops fail with a control error).
//!
//! Two modes: [`EmuMode::Inline`] does all work synchronously inside the register write that
//! causes it (deterministic, for tests and one-core hosts); [`EmuMode::Threaded`] hands it to
//! one device thread shared by every threaded device in the process, which is real
//! asynchronous offload: DMACOUNT and CHANCMD writes only record the value and wake it, and
//! CHAINADDR (written only to a stopped channel) waits at most for the batch under way.
//! Faults can be injected with [`EmulatedDevice::inject`].
//!
//! Decisions a driver author should know:
//!
//! - **Completion word on error.** With `ERR_COMPLETION_EN`, a halted channel writes
//!   `last completed descriptor | HALTED`; the failing descriptor is the one after it. The
//!   address field is the last descriptor the channel completed since its last RESET, or 0
//!   if it has completed none (then the failing descriptor is the one at CHAINADDR). CHANSTS
//!   holds the same value.
//! - **RESET.** The RESET bit reads back set until the reset is done and then once more, so
//!   a driver polling for it to clear always sees it set first: in threaded mode it stays set
//!   while the device thread has not carried the reset out, and after that until the next
//!   read of CHANCMD; in inline mode the reset is done inside the write and the bit reads set
//!   once. A reset clears the count, the cursor, DMACOUNT and the completed address, and
//!   leaves the channel HALTED; CHANCTRL, CHANCMP, CHANERR_MASK, configuration space and
//!   **CHANERR** keep their values. Every driver writes CHANERR back before RESET (Linux,
//!   SPDK, FreeBSD); whether RESET alone clears it is not established, so the model takes the
//!   strict reading and a driver that forgets is caught: the channel will not arm.
//! - **Re-arming after SUSPEND.** A CHAINADDR write restarts the internal descriptor count at
//!   zero, after a SUSPEND as after a RESET; DMACOUNT keeps what the driver last wrote.
//! - **ABORT** drops the work in progress where it stands: no completion write, no error bit,
//!   state HALTED, and no new chain before a RESET.
//! - **Leaving HALTED.** A channel halted by an error accepts CHAINADDR only after CHANERR
//!   was written back and a RESET done, and, on CBVER < 3.3, after CHANERR_INT (config 0x180)
//!   was written back too; until then CHAINADDR is ignored and the channel stays HALTED.
//! - **64-bit registers.** The arming write of CHAINADDR is the one that covers its high
//!   dword (the second of two halves written low first, or a single 64-bit write). On CBVER
//!   < 3.3 a single 64-bit write lands only its low dword, the failure Linux works around by
//!   splitting ("1 64b write doesn't work"), so a driver that forgets to split never arms.
//! - **Errors always halt.** No source shows a v3 channel skipping a failed descriptor and
//!   every driver sets `ANY_ERR_ABORT_EN`, so the device halts on every error whatever
//!   CHANCTRL says; the bit is stored and reads back.
//! - **Bus mastering.** PCI COMMAND bit 2 starts clear, as after the kernel driver let go:
//!   with it clear a descriptor fetch fails with `READ_DATA` and no completion is written.
//!   COMMAND bit 1 (memory space) starts set; cleared, BAR reads return all-ones and writes
//!   are dropped.
//! - **Relaxed ordering.** The PCI Express capability's Device Control starts with Relaxed
//!   Ordering enabled, as after reset. The model always writes data before the completion
//!   word, but counts completion writes made while the bit was set
//!   ([`EmuStats::relaxed_completion_writes`]): a driver that leaves it set is seen.
//! - **Skylake-SP.** With device id 0x2021 the part reports CBVER 0x33 but keeps a halted
//!   channel HALTED until CHANERR_INT is cleared, like the v3.2 parts.
//! - **Addresses.** IOVA 0 is invalid. A copy or fill range must be mapped and contiguous in
//!   host memory for its whole length, else `SRC_ADDR` / `DEST_ADDR`: the device insists that
//!   drivers split at IOVA discontinuities. An unmapped or misaligned chain start is
//!   `CHAIN_ADDR_VALUE`; later, unmapped `next` is `NEXT_ADDR` and misaligned `next` is
//!   `NEXT_DESC_ALIGN`; an unusable completion address is `COMPLETION_ADDR`. A non-null COPY
//!   of size 0 is a `LENGTH` error.

mod channel;
mod config;
mod device;
mod dma;
mod dsa;
mod memory;
mod pool;
mod registers;
mod runtime;
mod vfio;

use std::fmt;
use std::time::Duration;

pub use device::EmulatedDevice;
pub use dsa::{DsaEmuConfig, DsaEmuStats, DsaFault, DsaTraceEvent, EmulatedDsa};
pub use memory::{DeviceMemory, HostBuffer, IdentityRanges, ScrambledPages, PAGE_SIZE};
pub use pool::PoolMemory;
pub use runtime::device_thread_running;
pub use vfio::{bind_emulated_function, VfioMemory};

use crate::ioat::spec::{cbver, MAX_CHANNELS};

/// Where the emulated device does its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EmuMode {
    /// Synchronously inside the register write that causes it (the doorbell, a command, an
    /// unstall): deterministic, and right for one-core hosts.
    #[default]
    Inline,
    /// On the device thread the process's threaded devices share; register writes only
    /// record values and wake it.
    Threaded,
}

/// What the emulated device reports about itself and how it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuConfig {
    /// Number of channels, 1 to 4 (Xeon functions expose one).
    pub channels: usize,
    /// CBVER: 0x32, 0x33 or 0x34.
    pub cbver: u8,
    /// XFERCAP: log2 of the largest transfer of one descriptor, 12 to 31, or 0 for 2^32.
    pub xfercap: u8,
    /// Whether DMACAPABILITY advertises block fill (bit 6) and FILL descriptors work.
    pub fill: bool,
    /// Inline or threaded.
    pub mode: EmuMode,
    /// The PCI device id; `None` picks one of a platform with [`EmuConfig::cbver`]. A
    /// Skylake-SP id (0x2021) reports CBVER 0x33 yet, as that part does, keeps a halted channel
    /// HALTED until CHANERR_INT is cleared too, like the v3.2 parts.
    pub device_id: Option<u16>,
}

impl Default for EmuConfig {
    /// One channel of a v3.3 part with 1 MiB transfers and fill, inline.
    fn default() -> Self {
        EmuConfig {
            channels: 1,
            cbver: cbver::V3_3,
            xfercap: 20,
            fill: true,
            mode: EmuMode::Inline,
            device_id: None,
        }
    }
}

impl EmuConfig {
    fn validate(&self) -> Result<(), EmuError> {
        if !(1..=MAX_CHANNELS).contains(&self.channels) {
            return Err(EmuError::ChannelCount(self.channels));
        }
        if ![cbver::V3_2, cbver::V3_3, cbver::V3_4].contains(&self.cbver) {
            return Err(EmuError::Version(self.cbver));
        }
        if self.xfercap != 0 && !(12..=31).contains(&self.xfercap) {
            return Err(EmuError::TransferCap(self.xfercap));
        }
        Ok(())
    }
}

/// Why the emulated device refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmuError {
    /// The channel count is not between 1 and 4.
    ChannelCount(usize),
    /// The version is not one of 0x32, 0x33, 0x34.
    Version(u8),
    /// XFERCAP is neither 0 nor between 12 and 31.
    TransferCap(u8),
    /// The device has no channel with this index.
    NoSuchChannel {
        /// The channel asked for.
        channel: usize,
        /// How many channels the device has.
        channels: usize,
    },
    /// A fault description is unusable; the text says why.
    InvalidFault(&'static str),
    /// The device thread could not be started.
    Spawn(String),
    /// A DSA configuration value is out of range; the text says what is allowed.
    InvalidConfig(&'static str),
    /// The DSA has no WQ with this index.
    NoSuchWq {
        /// The WQ asked for.
        wq: usize,
        /// How many WQs the device has.
        wqs: usize,
    },
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmuError::ChannelCount(n) => write!(f, "{n} channels requested; 1 to 4 exist"),
            EmuError::Version(v) => write!(f, "CBVER {v:#x} is not emulated (0x32 to 0x34 are)"),
            EmuError::TransferCap(x) => {
                write!(f, "XFERCAP {x} is unusable (0 or 12 to 31 are valid)")
            }
            EmuError::NoSuchChannel { channel, channels } => {
                write!(
                    f,
                    "channel {channel} does not exist (the device has {channels})"
                )
            }
            EmuError::InvalidFault(why) => write!(f, "invalid fault: {why}"),
            EmuError::Spawn(why) => write!(f, "starting the emulator's device thread: {why}"),
            EmuError::InvalidConfig(allowed) => {
                write!(
                    f,
                    "invalid emulated DSA configuration: {allowed} are allowed"
                )
            }
            EmuError::NoSuchWq { wq, wqs } => {
                write!(f, "WQ {wq} does not exist (the device has {wqs})")
            }
        }
    }
}

impl std::error::Error for EmuError {}

/// A fault to inject into an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The `nth` descriptor the channel fetches from now on (1 = the next one) fails with the
    /// CHANERR bits `error` before moving any data, as any other error would.
    FailDescriptor {
        /// The channel.
        channel: usize,
        /// Which descriptor, counting from 1.
        nth: u32,
        /// The CHANERR bits to report (at least one).
        error: u32,
    },
    /// In threaded mode each descriptor of the channel takes at least this long (zero turns
    /// the delay off); the device thread waits it out by yielding, serving other channels.
    /// Inline mode ignores it.
    Latency {
        /// The channel.
        channel: usize,
        /// The time each descriptor takes.
        per_descriptor: Duration,
    },
    /// The channel stops taking descriptors (counted work stays pending, the state ACTIVE);
    /// commands are still carried out.
    Stall {
        /// The channel.
        channel: usize,
    },
    /// Undoes [`Fault::Stall`]; in inline mode the pending work is done inside this call.
    Unstall {
        /// The channel.
        channel: usize,
    },
    /// The device leaves the bus: from the return of `inject` on, register and configuration
    /// reads return all-ones, writes are ignored, and the device touches memory no more
    /// (a descriptor under way may finish moving data but writes no completion).
    SurpriseRemoval,
}

/// One descriptor's passage through a channel, recorded while tracing is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// The channel.
    pub channel: usize,
    /// Bus address of the descriptor.
    pub descriptor: u64,
    /// Device-wide sequence number taken when the descriptor was fetched.
    pub start: u64,
    /// Device-wide sequence number taken when its data was in place (before its completion
    /// write).
    pub finish: u64,
    /// Whether the descriptor carried `ctl::FENCE`.
    pub fence: bool,
    /// Bytes it copied or filled (0 for a null descriptor).
    pub bytes: u64,
}

/// What a channel has done since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuStats {
    /// Descriptors completed (null ones included).
    pub descriptors: u64,
    /// Bytes copied or filled.
    pub bytes: u64,
    /// Completion words written (on success and on error).
    pub completion_writes: u64,
    /// Of those, written while PCIe Device Control allowed Relaxed Ordering, so that the
    /// completion could have reached memory before the data it reports (a driver clears the
    /// bit at bring-up; this stays 0 then).
    pub relaxed_completion_writes: u64,
    /// Times the channel halted on an error.
    pub errors: u64,
}
