//! The `edu` backend: a driver for QEMU's educational PCI device, whose DMA engine is the one
//! DMA engine a KVM guest can get without DMA hardware on the host. Reached through VFIO, every
//! byte it moves crosses the guest's real (virtual) IOMMU, so the VFIO layer, the DMA pool's
//! mappings and hot-removal run against a real kernel (see `tools/kvm-rig`).
//!
//! The device moves at most 4 KiB at a time, through its own buffer, and takes about 100 ms per
//! transfer; it is a vehicle for tests, not for speed. Each channel is a software-engine ring
//! ([`crate::soft`]) whose pieces the device carries out: a piece is read into the buffer,
//! written back to a bounce block and checked against the source, then written to the
//! destination and checked there. The device reports no IOMMU fault (a faulted read brings
//! zeros, a faulted write lands nowhere), so the checks are how a fault becomes the
//! operation's error, and the bounce is why a faulted read never reaches the destination.
//!
//! [`model`] is a model of the device for tests without a guest.

pub mod model;
pub mod spec;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mem::{DmaBlock, DmaPool, MemError, Translator};
use crate::mmio::{check_addressing, RegisterWindow};
use crate::pci::{enable_dma, ConfigSpace};
use crate::queue::DeviceSpec;
use crate::soft::{PieceError, PieceExecutor, SoftConfig, SoftDevice, SoftError};
use crate::sync::lock_std;

/// How an `edu` device is driven.
#[derive(Clone, Debug)]
pub struct EduConfig {
    /// log2 of the channel's ring size, 4 to 16.
    pub ring_order: u32,
    /// How long one transfer may take before the piece fails (QEMU takes about 100 ms; a
    /// guest under TCG on a loaded machine much longer).
    pub transfer_timeout: Duration,
    /// How long to sleep between reads of the command register while a transfer runs: each
    /// read is a trap into QEMU, so a tight loop would take a virtual CPU from the guest.
    pub poll_interval: Duration,
}

impl Default for EduConfig {
    fn default() -> Self {
        EduConfig {
            ring_order: 8,
            transfer_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(1),
        }
    }
}

/// Why an `edu` function could not be driven.
#[derive(Debug)]
pub enum EduError {
    /// Its identification register is not the device's.
    NotEdu {
        /// What it read.
        ident: u32,
    },
    /// Its registers read all-ones: it is gone.
    Removed,
    /// Configuration space could not be read or written.
    Config(String),
    /// The pool's IOVAs would mean nothing to the device (the text names the fix).
    Addressing(String),
    /// The bounce block could not be allocated.
    Memory(MemError),
    /// The channel could not be made.
    Soft(SoftError),
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EduError::NotEdu { ident } => {
                write!(f, "identification {ident:#010x} is not an edu device's")
            }
            EduError::Removed => {
                f.write_str("the edu device is gone (its registers read all-ones)")
            }
            EduError::Config(why) => write!(f, "configuration space: {why}"),
            EduError::Addressing(why) => write!(f, "DMA addressing: {why}"),
            EduError::Memory(err) => write!(f, "bounce block: {err}"),
            EduError::Soft(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for EduError {}

/// The largest transfer the driver makes: one byte short of the buffer, because QEMU up to
/// 7.2 checks a transfer's end against the buffer's with `<` instead of `<=`, and stops the
/// whole machine on a transfer that ends exactly at the buffer's end.
pub const MAX_TRANSFER: usize = spec::BUFFER_SIZE - 1;

/// A piece's source did not arrive intact in the device's buffer: its read faulted (an IOVA
/// the IOMMU does not map), and the destination was left alone.
pub const SOURCE_FAULT: PieceError = PieceError {
    code: 1,
    cause: "source read faulted (IOVA not mapped in the IOMMU?)",
};
/// A piece's write did not land in the destination: the IOMMU refused it.
pub const DESTINATION_FAULT: PieceError = PieceError {
    code: 2,
    cause: "destination write faulted (IOVA not mapped in the IOMMU?)",
};
/// A transfer did not finish in time.
pub const TRANSFER_TIMEOUT: PieceError = PieceError {
    code: 3,
    cause: "transfer did not finish in time",
};
/// The device went away during the piece.
pub const DEVICE_GONE: PieceError = PieceError {
    code: 4,
    cause: "device gone (registers read all-ones)",
};
/// A buffer is not DMA memory of the pool.
pub const NOT_MAPPED: PieceError = PieceError {
    code: 5,
    cause: "buffer is not DMA memory of the device's pool",
};

/// A probed `edu` function, ready to register: one channel.
pub struct EduDevice {
    soft: SoftDevice,
    engine: Arc<EduEngine>,
}

impl EduDevice {
    /// Enables the function (memory space, bus mastering), checks that it is an `edu` device
    /// that answers, and makes its channel over `pool`, whose IOVAs the device must understand
    /// (for a function opened through VFIO: a mapped pool attached to its context).
    pub fn probe(
        name: impl Into<String>,
        registers: Arc<dyn RegisterWindow>,
        config_space: Option<Arc<dyn ConfigSpace>>,
        pool: DmaPool,
        config: EduConfig,
    ) -> Result<EduDevice, EduError> {
        check_addressing(&*registers, &pool).map_err(EduError::Addressing)?;
        if let Some(config_space) = &config_space {
            enable_dma(&**config_space).map_err(|e| EduError::Config(e.to_string()))?;
        }
        let ident = registers.read32(spec::IDENT);
        if ident == u32::MAX {
            return Err(EduError::Removed);
        }
        if ident & 0xff != spec::MAGIC {
            return Err(EduError::NotEdu { ident });
        }
        let probe = 0x5a5a_0f0f;
        registers.write32(spec::LIVENESS, probe);
        if registers.read32(spec::LIVENESS) != !probe {
            return Err(EduError::NotEdu { ident });
        }
        let bounce = pool
            .alloc(spec::BUFFER_SIZE, spec::BUFFER_SIZE)
            .map_err(EduError::Memory)?;
        let engine = Arc::new(EduEngine {
            registers,
            piece: Mutex::new(PieceState {
                bounce,
                translator: pool.translator(),
            }),
            config: config.clone(),
        });
        let soft = SoftDevice::new(
            name,
            SoftConfig {
                channels: 1,
                ring_order: config.ring_order,
                fill: false,
                extended_ops: false,
                max_transfer: MAX_TRANSFER,
                pool: Some(pool),
                executor: Some(Arc::clone(&engine) as Arc<dyn PieceExecutor>),
            },
        )
        .map_err(EduError::Soft)?;
        Ok(EduDevice { soft, engine })
    }

    /// The description to register with an engine.
    pub fn spec(&self) -> DeviceSpec {
        self.soft.spec()
    }

    /// Whether the device still answers.
    pub fn is_present(&self) -> bool {
        self.engine.is_present()
    }
}

impl fmt::Debug for EduDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EduDevice")
            .field("soft", &self.soft)
            .finish_non_exhaustive()
    }
}

/// The device's DMA engine, as the executor of its channel's pieces.
struct EduEngine {
    registers: Arc<dyn RegisterWindow>,
    /// Held for the whole piece, which also keeps one piece at a time on the device's one
    /// buffer.
    piece: Mutex<PieceState>,
    config: EduConfig,
}

/// What a piece is carried out with.
struct PieceState {
    /// Where a piece's read is checked before it may reach the destination.
    bounce: DmaBlock,
    /// The pool's translations, without its lock.
    translator: Translator,
}

impl fmt::Debug for EduEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EduEngine").finish_non_exhaustive()
    }
}

impl EduEngine {
    /// Runs one transfer and waits for the device to finish it.
    fn transfer(&self, command: u64, src: u64, dst: u64, len: usize) -> Result<(), PieceError> {
        let regs = &*self.registers;
        if regs.read32(spec::IDENT) == u32::MAX {
            return Err(DEVICE_GONE);
        }
        regs.write64(spec::DMA_SRC, src);
        regs.write64(spec::DMA_DST, dst);
        regs.write64(spec::DMA_COUNT, len as u64);
        regs.write64(spec::DMA_CMD, command | spec::CMD_RUN);
        let deadline = Instant::now() + self.config.transfer_timeout;
        loop {
            let status = regs.read64(spec::DMA_CMD);
            if status == u64::MAX {
                return Err(DEVICE_GONE);
            }
            if status & spec::CMD_RUN == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TRANSFER_TIMEOUT);
            }
            std::thread::sleep(self.config.poll_interval);
        }
    }
}

/// Whether `len` bytes at `a` and `b` are equal.
///
/// # Safety
///
/// Both ranges must be valid for reads, and nothing may write them meanwhile.
unsafe fn same_bytes(a: usize, b: usize, len: usize) -> bool {
    // SAFETY: the caller's promise; slices are formed only for the comparison, while the
    // device is idle and nobody else writes either range.
    unsafe {
        std::slice::from_raw_parts(a as *const u8, len)
            == std::slice::from_raw_parts(b as *const u8, len)
    }
}

impl PieceExecutor for EduEngine {
    unsafe fn copy(
        &self,
        _channel: usize,
        dst: usize,
        src: usize,
        len: usize,
    ) -> Result<(), PieceError> {
        let mut piece = lock_std(&self.piece);
        let PieceState { bounce, translator } = &mut *piece;
        let (bounce_iova, _) = bounce
            .translate(0, spec::BUFFER_SIZE)
            .map_err(|_| NOT_MAPPED)?;
        let mut iova = |va, len| translator.translate(va, len).map_err(|_| NOT_MAPPED);
        let mut done = 0;
        while done < len {
            // A chunk contiguous in IOVA space on both sides, and no larger than a transfer.
            let (src_iova, src_run) = iova(src + done, len - done)?;
            let (dst_iova, dst_run) = iova(dst + done, len - done)?;
            let n = src_run.min(dst_run).min(MAX_TRANSFER);
            self.transfer(0, src_iova, spec::BUFFER, n)?;
            self.transfer(spec::CMD_TO_BUS, spec::BUFFER, bounce_iova, n)?;
            // SAFETY: the bounce block is this engine's, idle between transfers; the source is
            // the caller's promise (readable, unwritten until the piece completes).
            if !unsafe { same_bytes(bounce.as_ptr() as usize, src + done, n) } {
                return Err(SOURCE_FAULT);
            }
            self.transfer(spec::CMD_TO_BUS, spec::BUFFER, dst_iova, n)?;
            // SAFETY: as above; the destination is the caller's until the piece completes, and
            // the device is done with it.
            if !unsafe { same_bytes(dst + done, src + done, n) } {
                return Err(DESTINATION_FAULT);
            }
            done += n;
        }
        Ok(())
    }

    fn is_present(&self) -> bool {
        self.registers.read32(spec::IDENT) != u32::MAX
    }
}
