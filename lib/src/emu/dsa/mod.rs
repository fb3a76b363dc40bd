//! A software Intel DSA (Data Streaming Accelerator) behind the same registers and portals as
//! the silicon: the bench a DSA driver is tested on where no Sapphire Rapids part is at hand.
//!
//! [`EmulatedDsa`] exposes BAR0 as a [`RegisterWindow`], BAR2 as a [`PortalWindow`] and its
//! PCI configuration space as a [`ConfigSpace`]. It shares nothing with a driver but
//! [`crate::dsa::spec`], and with the IOAT model only what is truly common: the view of host
//! memory ([`DeviceMemory`], reached only through `emu/dma.rs`), the mode switch
//! ([`EmuMode`]) and the one device thread of `emu/runtime.rs`. Descriptor addresses are
//! IOVAs, resolved through the `DeviceMemory` as an IOMMU would; PASIDs are not translated.
//!
//! What it models (`reference/dsa.md` §13 is the checklist): capability registers of an SPR
//! part (VERSION 1.0, GENCAP with the transfer and batch shifts, CONFIGURABLE, 16-byte fill and
//! CMDCAP; WQCAP with 32-byte WQCFG entries, dedicated and optionally shared WQs, priority
//! and occupancy; GRPCAP, ENGCAP, OPCAP, OFFSETS with GRPCFG at 0x300, WQCFG at 0x400 and the
//! MSI-X permissions at 0x200); GENCFG, GENCTRL, GENSTS, INTCAUSE, CMD, CMDSTATUS, CMDCAP and
//! SWERROR; the GRPCFG and WQCFG tables; the ten device and WQ commands with the error codes
//! of §3.2; the portals of §1.2; the descriptor checks of §4; the operations No-op, Batch,
//! Drain, Memory Move, Fill (8 and 16 bytes), Compare, Compare Pattern, Dualcast, CRC
//! Generation and Copy with CRC; completion records and SWERROR; batches with Fence; partial
//! completion; out-of-order completion across engines; halt and reset. Not modelled:
//! interrupts (MSI-X, IMS, the interrupt-handle commands; RCI is accepted and ignored),
//! PASIDs and privilege, block on fault, ATS/PRS, traffic classes, read buffers, cache
//! control, the event log, perfmon, and the delta, DIF and cache-flush operations (their
//! opcodes are not in OPCAP and fail with 0x10).
//!
//! Decisions a driver author should know:
//!
//! - **CMDSTATUS.** A command is carried out inside the CMD write in inline mode and by the
//!   device thread in threaded mode (a drain waits for the WQs it names, so a stalled WQ keeps
//!   it active). In both modes CMDSTATUS reads ACTIVE while the command is not done **and**
//!   at least once after the CMD write, so a driver polling for the bit to clear always sees
//!   it set first. A CMD written while a command is active (not done, or its ACTIVE not read
//!   yet) is dropped and logged as SWERROR 0x52. CMD takes effect only from a write covering
//!   its whole dword. Every command but Reset Device fails with 0x05 on a halted device.
//! - **Commands.** Disable WQ, Drain WQ, Abort WQ and Reset WQ take the bitmap operand;
//!   disabling a WQ that is not enabled succeeds. Abort drops queued descriptors without
//!   records. Reset WQ aborts, disables and zeroes the WQ's WQCFG entry. Reset Device drops
//!   every queued descriptor and zeroes GENCFG, GRPCFG, WQCFG and SWERROR. Enable WQ on a
//!   WQ in no group fails with 0x11 (the specification's code for it is not established).
//!   Enable Device also fails with 0x11 when a group names a WQ or engine the device lacks,
//!   and with 0x15 for every other group inconsistency (WQs but no engine, engines but no
//!   WQ, a WQ or an engine in two groups): which of 0x15–0x17 the silicon picks for each is
//!   not established.
//! - **Configuration writes.** GENCFG and GRPCFG are writable only while the device is
//!   disabled; a WQCFG entry only while its WQ is disabled, and its size only while the
//!   device is disabled too. WQCFG dword 6 (occupancy, state) is read-only. Other offsets
//!   read 0 and ignore writes; accesses outside BAR0 or not naturally aligned read all-ones
//!   and are ignored (no panic on what a guest writes).
//! - **Portals.** Only the unlimited and limited MSI-X portal pages exist (IMS is not
//!   supported: the IMS pages drop writes and answer Retry). Occupancy counts descriptors
//!   queued and not yet started. On the limited portal ENQCMD is refused at or over the WQ's
//!   threshold. A descriptor is copied whole at the write.
//! - **Fence outside a batch** fails with 0x11 (the specification reserves it there); the
//!   invalid-flags bitmap is at record byte 16. DPDK sets it on single descriptors; whether
//!   hardware objects is not established, so the model takes the strict reading.
//! - **Unmapped addresses** are page faults without block on fault: status 0x03 (bit 7 set
//!   if the fault was on a write), bytes completed = the bytes done before the first unmapped
//!   byte of any operand, fault address = that byte's IOVA. Operations are carried out in
//!   address order, so the first `bytes completed` bytes are done. A batch list that cannot be
//!   read is status 0x06. An unmapped completion record is SWERROR 0x1a.
//! - **Overlap.** GENCAP does not advertise overlapping copies: a Memory Move, Copy with CRC
//!   or Dualcast whose source and destination overlap in IOVA space fails with 0x16.
//! - **Records.** With CRAV a record is written on error and, with RCR, on success; status
//!   0x02 (a false predicate) counts as an error for this rule and for batches. Compare,
//!   Compare Pattern, CRC Generation and Copy with CRC without CRAV and RCR fail with 0x11.
//!   The status byte is stored last, with Release ordering; poll it with an Acquire load.
//!   Errors without CRAV (or with a misaligned record, 0x1b) go to SWERROR.
//! - **Batches** count as one WQ entry; their members are read whole before any runs; members
//!   between fences run in reverse order when the WQ's group has more than one engine. The
//!   batch record comes after every member's: status 0x01 if all succeeded, else 0x05, and
//!   bytes completed = members processed (not abandoned). Batch and Drain inside a batch fail
//!   with 0x10.
//! - **Order.** With one engine in the group a WQ completes in submission order. With more,
//!   the device takes up to that many queued descriptors at a time (stopping at a Drain or
//!   Batch) and completes them in reverse order.
//! - **Compare** (sources at bytes 16 and 24) and **Compare Pattern** (source at 16, the
//!   8-byte pattern at 24) report the first difference's byte offset in bytes completed and
//!   result 1; with Check Result, a result other than the expected one (descriptor byte 40)
//!   is 0x02. CRC Generation and Copy with CRC take the seed at byte 40 (or, with the
//!   read-seed flag, from the address at byte 48) and put the CRC-32C in record byte 16.
//! - **Halt.** Clearing bus mastering while the device is enabled halts it: GENSTS 3 with
//!   reset type 0 (Reset Device), SWERROR 0x51; it completes nothing until Reset Device.
//! - **Injected faults** count top-level descriptors as the WQ starts them (a batch is one).

mod config;
mod device;
mod exec;
mod windows;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::runtime;
use super::{DeviceMemory, EmuError, EmuMode};
use crate::dsa::portal::PortalWindow;
use crate::dsa::spec::{self, device_id};
use crate::mmio::RegisterWindow;
use crate::pci::ConfigSpace;

use device::DsaShared;

/// The largest number of WQs, engines and groups the model offers.
const MAX_WQS: usize = 8;
const MAX_ENGINES: usize = 4;
const MAX_GROUPS: usize = 4;

/// What the emulated DSA reports about itself and how it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsaEmuConfig {
    /// Work queues, 1 to 8.
    pub wqs: usize,
    /// Entries the WQs share (WQCAP bits 15:0), 1 to 65535.
    pub total_wq_size: u32,
    /// Engines, 1 to 4.
    pub engines: usize,
    /// Groups, 1 to 4.
    pub groups: usize,
    /// GENCAP's max transfer shift (2^n bytes per descriptor), 0 to 31.
    pub max_transfer_shift: u32,
    /// GENCAP's max batch shift (2^n descriptors per batch), 1 to 15.
    pub max_batch_shift: u32,
    /// Whether WQCAP advertises shared WQs (dedicated ones always are).
    pub shared_wq: bool,
    /// Inline or threaded.
    pub mode: EmuMode,
    /// The PCI device id.
    pub device_id: u16,
}

impl Default for DsaEmuConfig {
    /// A Sapphire Rapids DSA: 8 WQs sharing 128 entries, 4 engines, 4 groups, 2 GiB
    /// transfers, batches of 1024, shared WQs supported; inline.
    fn default() -> Self {
        DsaEmuConfig {
            wqs: 8,
            total_wq_size: 128,
            engines: 4,
            groups: 4,
            max_transfer_shift: 31,
            max_batch_shift: 10,
            shared_wq: true,
            mode: EmuMode::Inline,
            device_id: device_id::SPR,
        }
    }
}

impl DsaEmuConfig {
    fn validate(&self) -> Result<(), EmuError> {
        let check = |ok: bool, why: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(EmuError::InvalidConfig(why))
            }
        };
        check((1..=MAX_WQS).contains(&self.wqs), "1 to 8 WQs")?;
        check(
            (1..=0xFFFF).contains(&self.total_wq_size),
            "1 to 65535 WQ entries",
        )?;
        check((1..=MAX_ENGINES).contains(&self.engines), "1 to 4 engines")?;
        check((1..=MAX_GROUPS).contains(&self.groups), "1 to 4 groups")?;
        check(
            self.max_transfer_shift <= 31,
            "a max transfer shift of 0 to 31",
        )?;
        check(
            (1..=15).contains(&self.max_batch_shift),
            "a max batch shift of 1 to 15",
        )
    }
}

/// A fault to inject into an emulated DSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DsaFault {
    /// The `nth` descriptor the WQ starts from now on (1 = the next) fails with `status`
    /// before moving any data, reported as any error is (record or SWERROR).
    FailDescriptor {
        /// The WQ.
        wq: usize,
        /// Which descriptor, counting from 1.
        nth: u32,
        /// The status to report: neither 0 nor success.
        status: u8,
    },
    /// The `nth` descriptor the WQ starts from now on meets a page fault at byte `at_byte`:
    /// the bytes before it are done, status 0x03 (| 0x80 if `write`), bytes completed =
    /// `at_byte`, fault address = the destination's (`write`) or source's address of that
    /// byte. A descriptor that moves no data, or fewer bytes, completes normally.
    PageFault {
        /// The WQ.
        wq: usize,
        /// Which descriptor, counting from 1.
        nth: u32,
        /// Where the fault is.
        at_byte: u32,
        /// Whether it is a fault on a write.
        write: bool,
    },
    /// In threaded mode each descriptor of the WQ takes at least this long (zero turns it
    /// off); the device thread yields meanwhile. Inline mode ignores it.
    Latency {
        /// The WQ.
        wq: usize,
        /// The time each descriptor takes.
        per_descriptor: Duration,
    },
    /// The WQ stops starting descriptors: they stay queued (occupancy counts them) and a
    /// drain of it waits.
    Stall {
        /// The WQ.
        wq: usize,
    },
    /// Undoes [`DsaFault::Stall`]; in inline mode the queued work is done inside this call.
    Unstall {
        /// The WQ.
        wq: usize,
    },
    /// The device leaves the bus: from the return of `inject` on, BAR0 and configuration
    /// reads return all-ones, register and portal writes are dropped, and the device touches
    /// memory no more (no record is written for work not done).
    SurpriseRemoval,
}

/// One descriptor's completion, recorded while tracing is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsaTraceEvent {
    /// The WQ.
    pub wq: usize,
    /// The descriptor's opcode.
    pub opcode: u8,
    /// For a batch member, its index in the list.
    pub member: Option<u32>,
    /// Device-wide sequence number of the portal write that submitted it (a member carries
    /// its batch's).
    pub submitted: u64,
    /// Device-wide sequence number of its completion.
    pub completed: u64,
    /// The status it completed with (also when no record was written).
    pub status: u8,
    /// Bytes it was asked to move (a batch: 0).
    pub bytes: u64,
}

/// What a WQ has done since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsaEmuStats {
    /// Descriptors completed, batch members and failures included, abandoned ones not.
    pub descriptors: u64,
    /// Bytes moved, filled, compared or checksummed.
    pub bytes: u64,
    /// Completion records written.
    pub records_written: u64,
    /// Batch descriptors completed.
    pub batches: u64,
    /// Descriptors dropped because a dedicated WQ was full (SWERROR 0x53).
    pub dropped_on_overflow: u64,
    /// ENQCMDs answered Retry.
    pub retries_answered: u64,
}

/// An emulated DSA PCI function: BAR0 registers, BAR2 portals, a configuration space, and the
/// engines behind them.
///
/// ```
/// use std::sync::Arc;
/// use dmaplane::dsa::spec::{self, cmd, flags, opcode, portal, reg, wqcfg, Descriptor};
/// use dmaplane::emu::{DsaEmuConfig, EmulatedDsa, HostBuffer, IdentityRanges};
/// use dmaplane::pci::regs;
///
/// let mut buffer = HostBuffer::new(8192);
/// let base = buffer.addr();
/// // SAFETY: `buffer` outlives the device (declared first, dropped last) and the host touches
/// // it only while no descriptor is in flight (inline mode: never concurrently).
/// let memory = unsafe { IdentityRanges::new(&[(base, buffer.len())]) };
/// let dsa = EmulatedDsa::new(DsaEmuConfig::default(), Arc::new(memory)).unwrap();
/// let (regs, portals, pci) = (dsa.registers(), dsa.portals(), dsa.config_space());
/// let command = pci.read16(regs::COMMAND).unwrap();
/// pci.write16(regs::COMMAND, command | regs::COMMAND_MASTER).unwrap();
///
/// // Group 0: WQ 0 and engine 0. WQ 0: 16 entries, dedicated, priority 1.
/// regs.write64(0x300 + spec::grpcfg::WQS, 1);
/// regs.write64(0x300 + spec::grpcfg::ENGINES, 1);
/// regs.write32(0x400 + wqcfg::SIZE, 16);
/// regs.write32(0x400 + wqcfg::MODE, wqcfg::mode(true, 1));
/// regs.write32(0x400 + wqcfg::LIMITS, wqcfg::limits(21, 5));
/// for command in [cmd::encode(cmd::ENABLE_DEVICE, 0), cmd::encode(cmd::ENABLE_WQ, 0)] {
///     regs.write32(reg::CMD, command);
///     while regs.read32(reg::CMDSTATUS) & spec::cmdsts::ACTIVE != 0 {}
///     assert_eq!(regs.read32(reg::CMDSTATUS), 0);
/// }
///
/// // Copy 64 bytes; the record at offset 4096.
/// buffer.write(1024, &[7; 64]);
/// let mut copy = Descriptor::new(opcode::MEMMOVE, flags::CRAV | flags::RCR);
/// (copy.src, copy.dst, copy.size, copy.completion) = (base + 1024, base + 2048, 64, base + 4096);
/// portals.write_descriptor(portal::offset(0, portal::Kind::Unlimited), &copy);
/// assert_eq!(buffer.read(4096, 1), [spec::status::SUCCESS]);
/// assert_eq!(buffer.read(2048, 64), [7; 64]);
/// ```
pub struct EmulatedDsa {
    shared: Arc<DsaShared>,
}

impl EmulatedDsa {
    /// Powers on a DSA with `config` that reaches host memory through `memory`.
    ///
    /// The device starts disabled with every table zeroed; PCI memory space is on, bus
    /// mastering off.
    pub fn new(
        config: DsaEmuConfig,
        memory: Arc<dyn DeviceMemory>,
    ) -> Result<Arc<EmulatedDsa>, EmuError> {
        config.validate()?;
        let shared = match config.mode {
            EmuMode::Inline => Arc::new(DsaShared::new(config, memory, None)),
            EmuMode::Threaded => {
                runtime::register(|wake| Arc::new(DsaShared::new(config, memory, Some(wake))))?
            }
        };
        Ok(Arc::new(EmulatedDsa { shared }))
    }

    fn shared(&self) -> &DsaShared {
        &self.shared
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> &DsaEmuConfig {
        &self.shared.config
    }

    /// BAR0, the register window; it keeps the device alive.
    pub fn registers(self: &Arc<Self>) -> Arc<dyn RegisterWindow> {
        Arc::new(windows::Bar0 {
            device: Arc::clone(self),
        })
    }

    /// BAR2, the portals of every WQ (four pages each); it keeps the device alive.
    pub fn portals(self: &Arc<Self>) -> Arc<dyn PortalWindow> {
        Arc::new(windows::Portals::new(Arc::clone(self)))
    }

    /// The PCI configuration space; it keeps the device alive.
    pub fn config_space(self: &Arc<Self>) -> Arc<dyn ConfigSpace> {
        Arc::new(config::ConfigModel {
            device: Arc::clone(self),
        })
    }

    /// Injects `fault`.
    pub fn inject(&self, fault: DsaFault) -> Result<(), EmuError> {
        let shared = &*self.shared;
        let wq_of = |wq: usize| {
            if wq < shared.config.wqs {
                Ok(wq)
            } else {
                Err(EmuError::NoSuchWq {
                    wq,
                    wqs: shared.config.wqs,
                })
            }
        };
        match fault {
            DsaFault::FailDescriptor { wq, nth, status } => {
                wq_of(wq)?;
                if nth == 0 {
                    return Err(EmuError::InvalidFault("descriptors are counted from 1"));
                }
                if status == spec::status::NONE || status == spec::status::SUCCESS {
                    return Err(EmuError::InvalidFault("a failure needs an error status"));
                }
                shared.with_wq(wq, |w| w.fail = Some((nth, status)));
            }
            DsaFault::PageFault {
                wq,
                nth,
                at_byte,
                write,
            } => {
                wq_of(wq)?;
                if nth == 0 {
                    return Err(EmuError::InvalidFault("descriptors are counted from 1"));
                }
                shared.with_wq(wq, |w| w.page_fault = Some((nth, (at_byte, write))));
            }
            DsaFault::Latency { wq, per_descriptor } => {
                wq_of(wq)?;
                shared.with_wq(wq, |w| {
                    w.latency = per_descriptor;
                    w.head_since = None;
                });
            }
            DsaFault::Stall { wq } => shared.set_stalled(wq_of(wq)?, true),
            DsaFault::Unstall { wq } => shared.set_stalled(wq_of(wq)?, false),
            DsaFault::SurpriseRemoval => shared.remove(),
        }
        Ok(())
    }

    /// A function-level reset (`VFIO_DEVICE_RESET`): as Reset Device, and any command under
    /// way is dropped. Configuration space is the kernel's to save and restore around it.
    pub fn reset_function(&self) {
        self.shared.reset_function();
    }

    /// Whether the device was surprise-removed.
    pub fn is_removed(&self) -> bool {
        self.shared.is_removed()
    }

    /// Starts or stops recording a [`DsaTraceEvent`] per completed descriptor.
    pub fn set_tracing(&self, on: bool) {
        self.shared.tracing.store(on, Ordering::Relaxed);
    }

    /// The events recorded so far, in completion order, leaving the record empty.
    pub fn take_trace(&self) -> Vec<DsaTraceEvent> {
        self.shared.take_trace()
    }

    /// What WQ `wq` has done; a WQ the device does not have reads as all zeros.
    pub fn stats(&self, wq: usize) -> DsaEmuStats {
        self.shared.stats(wq)
    }
}

impl Drop for EmulatedDsa {
    fn drop(&mut self) {
        // The owner may free the memory it mapped as soon as this returns: stop the engines
        // first, then let the device thread forget the device.
        self.shared.detach();
        if self.shared.config.mode == EmuMode::Threaded {
            runtime::deregister(&self.shared);
        }
    }
}

impl std::fmt::Debug for EmulatedDsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedDsa")
            .field("config", &self.shared.config)
            .field("removed", &self.shared.is_removed())
            .finish()
    }
}
