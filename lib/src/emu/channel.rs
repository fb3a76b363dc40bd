//! One emulated channel: its register block, its state machine and its descriptor engine.
//!
//! Register values a reader may look at any time live in atomics (CHANSTS is republished
//! with Release after every state change or completed descriptor). Everything the engine
//! works on, the cursor, the internal count, the injected faults, lives in `Core` behind the
//! channel's mutex: the engine holds it while it works through a batch of descriptors, and a
//! register write that changes what the engine does takes it too, so that a command can never
//! land in the middle of a descriptor.
//!
//! In threaded mode the doorbell and the commands are only recorded (DMACOUNT and the CHANCMD
//! read-back bits, with Release) and the device thread is woken; the device thread carries out
//! posted commands between descriptors, so a RESET issued mid-chain stops the chain after the
//! descriptor under way. In inline mode the same code runs inside the register write.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::sync::lock_std;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::device::DeviceShared;
use super::memory::Resolver;
use super::{dma, EmuMode, EmuStats, TraceEvent};
use crate::ioat::spec::{chan, chancmd, chanctrl, chanerr, chansts, ctl, op, DESCRIPTOR_SIZE};

/// A threaded engine gives the other channels a turn after this many descriptors...
const BATCH_DESCRIPTORS: usize = 64;
/// ...or this many bytes, whichever comes first.
const BATCH_BYTES: u64 = 4 << 20;

/// What one pass of the engine over a channel achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Service {
    /// Descriptors were processed or a command was carried out.
    Progress,
    /// A descriptor is waiting out its injected latency.
    Waiting,
    /// Nothing to do.
    Idle,
}

/// The registers of a channel block, with their offsets and widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    ChanCtrl,
    DmaComp,
    ChanCmd,
    DmaCount,
    ChanSts,
    ChainAddr,
    ChanCmp,
    Cdar,
    ChanErr,
    ChanErrMask,
    DcaCtrl,
}

const REGISTERS: [(usize, usize, Reg); 11] = [
    (chan::CHANCTRL, 2, Reg::ChanCtrl),
    (chan::DMA_COMP, 2, Reg::DmaComp),
    (chan::CHANCMD, 1, Reg::ChanCmd),
    (chan::DMACOUNT, 2, Reg::DmaCount),
    (chan::CHANSTS, 8, Reg::ChanSts),
    (chan::CHAINADDR, 8, Reg::ChainAddr),
    (chan::CHANCMP, 8, Reg::ChanCmp),
    (chan::CDAR, 8, Reg::Cdar),
    (chan::CHANERR, 4, Reg::ChanErr),
    (chan::CHANERR_MASK, 4, Reg::ChanErrMask),
    (chan::DCACTRL, 4, Reg::DcaCtrl),
];

/// Commands the device acts on; START and APPEND (v1/v2) are ignored.
const COMMANDS: u8 = chancmd::RESET | chancmd::SUSPEND | chancmd::RESUME | chancmd::ABORT;

/// An injected failure of the `remaining`-th next descriptor.
#[derive(Clone, Copy, Debug)]
struct FailPlan {
    remaining: u32,
    error: u32,
}

/// The engine's working state, guarded by the channel mutex.
struct Core {
    /// Bus address of the next descriptor to fetch.
    cursor: u64,
    /// The internal 16-bit count of descriptors done since the last reset.
    count: u16,
    /// No descriptor fetched since CHAINADDR: a bad cursor is a chain-address error.
    fresh_chain: bool,
    /// Bus address of the last completed descriptor (0 after reset).
    last_completed: u64,
    /// Halted by an error: only a RESET makes the channel accept a chain again.
    needs_reset: bool,
    fail: Option<FailPlan>,
    /// The channel's own view of memory, when the memory offers one.
    resolver: Option<Box<dyn Resolver>>,
    latency: Duration,
    /// When the descriptor at the cursor began waiting out its latency.
    started_at: Option<Instant>,
}

impl Core {
    /// Where this channel's memory lookups go.
    fn lookup<'a>(&'a mut self, dev: &'a DeviceShared) -> dma::Lookup<'a> {
        match self.resolver.as_deref_mut() {
            Some(resolver) => dma::Lookup::Own(resolver),
            None => dma::Lookup::Shared(&*dev.memory),
        }
    }
}

/// Per-descriptor outcome of a successful `perform`.
struct Done {
    next: u64,
    control: u32,
    bytes: u64,
}

/// One channel of an emulated device.
pub(super) struct Channel {
    index: usize,
    /// The doorbell, written by the driver's CPU: kept off the engine's cache lines.
    dmacount: CachePadded<AtomicU16>,
    /// CHANSTS: `last completed | state`.
    chansts: AtomicU64,
    /// Mirror of `Core::count` for the engine's lock-free "anything to do?" check.
    count: AtomicU16,
    /// Commands posted and not yet carried out (threaded mode); they read back set.
    chancmd: AtomicU8,
    /// A RESET was carried out and CHANCMD not read since: RESET still reads back set once,
    /// so a driver polling for the bit to clear sees it set first, however fast the reset.
    reset_unread: AtomicBool,
    chanctrl: AtomicU16,
    chainaddr: AtomicU64,
    chancmp: AtomicU64,
    cdar: AtomicU64,
    chanerr: AtomicU32,
    chanerr_mask: AtomicU32,
    dcactrl: AtomicU32,
    stalled: AtomicBool,
    descriptors: AtomicU64,
    bytes: AtomicU64,
    completion_writes: AtomicU64,
    /// Completion writes made while Device Control allowed Relaxed Ordering: each could have
    /// overtaken the data it reports.
    relaxed_completion_writes: AtomicU64,
    errors: AtomicU64,
    core: Mutex<Core>,
}

impl Channel {
    /// A channel as after power-on: HALTED, count 0, no error.
    pub(super) fn new(index: usize, resolver: Option<Box<dyn Resolver>>) -> Channel {
        Channel {
            index,
            dmacount: CachePadded::new(AtomicU16::new(0)),
            chansts: AtomicU64::new(chansts::HALTED),
            count: AtomicU16::new(0),
            chancmd: AtomicU8::new(0),
            reset_unread: AtomicBool::new(false),
            chanctrl: AtomicU16::new(0),
            chainaddr: AtomicU64::new(0),
            chancmp: AtomicU64::new(0),
            cdar: AtomicU64::new(0),
            chanerr: AtomicU32::new(0),
            chanerr_mask: AtomicU32::new(0),
            dcactrl: AtomicU32::new(0),
            stalled: AtomicBool::new(false),
            descriptors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            completion_writes: AtomicU64::new(0),
            relaxed_completion_writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            core: Mutex::new(Core {
                cursor: 0,
                count: 0,
                fresh_chain: true,
                last_completed: 0,
                needs_reset: false,
                fail: None,
                resolver,
                latency: Duration::ZERO,
                started_at: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic on another thread (a failing test) must not wedge the device.
        lock_std(&self.core)
    }

    fn state(&self) -> u64 {
        chansts::state(self.chansts.load(Ordering::Acquire))
    }

    /// Makes `state` visible in CHANSTS (Release: whatever the engine did before, CHANERR
    /// bits and completion words included, is visible to a reader that sees the state).
    fn publish(&self, core: &Core, state: u64) {
        self.chansts
            .store(core.last_completed | state, Ordering::Release);
    }

    // ---- register access -------------------------------------------------------------

    /// Reads `width` bytes at `rel` in the channel block (little-endian across registers).
    pub(super) fn read(&self, rel: usize, width: usize) -> u64 {
        let mut out = 0u64;
        for (offset, size, reg) in REGISTERS {
            let (low, high) = (rel.max(offset), (rel + width).min(offset + size));
            if low >= high {
                continue;
            }
            let value = self.register_value(reg);
            for byte in low..high {
                let lane = (value >> (8 * (byte - offset))) & 0xff;
                out |= lane << (8 * (byte - rel));
            }
        }
        out
    }

    fn register_value(&self, reg: Reg) -> u64 {
        match reg {
            Reg::ChanCtrl => self.chanctrl.load(Ordering::Relaxed).into(),
            Reg::DmaComp => 0,
            Reg::ChanCmd => {
                // Acquire pairs with the engine's Release clear: a driver that sees RESET
                // clear sees the reset's effects.
                let mut value = self.chancmd.load(Ordering::Acquire);
                if value & chancmd::RESET == 0 && self.reset_unread.swap(false, Ordering::AcqRel) {
                    value |= chancmd::RESET;
                }
                value.into()
            }
            Reg::DmaCount => self.dmacount.load(Ordering::Relaxed).into(),
            Reg::ChanSts => self.chansts.load(Ordering::Acquire),
            Reg::ChainAddr => self.chainaddr.load(Ordering::Relaxed),
            Reg::ChanCmp => self.chancmp.load(Ordering::Relaxed),
            Reg::Cdar => self.cdar.load(Ordering::Relaxed),
            Reg::ChanErr => self.chanerr.load(Ordering::Acquire).into(),
            Reg::ChanErrMask => self.chanerr_mask.load(Ordering::Relaxed).into(),
            Reg::DcaCtrl => self.dcactrl.load(Ordering::Relaxed).into(),
        }
    }

    /// Writes `width` bytes of `value` at `rel` in the channel block; each register the write
    /// covers (in part or whole) takes the covered bytes.
    pub(super) fn write(&self, dev: &DeviceShared, rel: usize, width: usize, value: u64) {
        if width == 8 && dev.split_64() {
            // Parts before v3.3 drop the high half of a single 64-bit access.
            return self.write(dev, rel, 4, value & 0xffff_ffff);
        }
        for (offset, size, reg) in REGISTERS {
            let (low, high) = (rel.max(offset), (rel + width).min(offset + size));
            if low >= high {
                continue;
            }
            let (mut bits, mut mask) = (0u64, 0u64);
            for byte in low..high {
                let lane = (value >> (8 * (byte - rel))) & 0xff;
                bits |= lane << (8 * (byte - offset));
                mask |= 0xff << (8 * (byte - offset));
            }
            self.write_register(dev, reg, bits, mask);
        }
    }

    fn write_register(&self, dev: &DeviceShared, reg: Reg, bits: u64, mask: u64) {
        let merge = |old: u64| (old & !mask) | bits;
        match reg {
            Reg::DmaComp | Reg::ChanSts | Reg::Cdar => {}
            Reg::ChanCtrl => {
                let old = self.chanctrl.load(Ordering::Relaxed).into();
                self.chanctrl.store(merge(old) as u16, Ordering::Release);
            }
            Reg::ChanCmd => self.command(dev, bits as u8),
            Reg::DmaCount => {
                let old = self.dmacount.load(Ordering::Relaxed).into();
                self.doorbell(dev, merge(old) as u16);
            }
            Reg::ChainAddr => {
                let address = merge(self.chainaddr.load(Ordering::Relaxed));
                self.chainaddr.store(address, Ordering::Relaxed);
                if mask >> 32 != 0 {
                    self.arm(dev, address);
                }
            }
            Reg::ChanCmp => {
                let address = merge(self.chancmp.load(Ordering::Relaxed));
                self.chancmp.store(address, Ordering::Release);
            }
            Reg::ChanErr => {
                self.chanerr.fetch_and(!(bits as u32), Ordering::AcqRel);
            }
            Reg::ChanErrMask => {
                let old = self.chanerr_mask.load(Ordering::Relaxed).into();
                self.chanerr_mask
                    .store(merge(old) as u32, Ordering::Relaxed);
            }
            Reg::DcaCtrl => {
                let old = self.dcactrl.load(Ordering::Relaxed).into();
                self.dcactrl.store(merge(old) as u32, Ordering::Relaxed);
            }
        }
    }

    /// DMACOUNT: the driver made descriptors up to this running count available.
    fn doorbell(&self, dev: &DeviceShared, value: u16) {
        // Release: the descriptors the driver wrote before ringing are visible to the engine
        // once it reads this value (Acquire, in `run`).
        self.dmacount.store(value, Ordering::Release);
        match dev.config.mode {
            EmuMode::Inline => {
                let mut core = self.lock();
                self.run(dev, &mut core, usize::MAX);
            }
            EmuMode::Threaded => dev.notify(),
        }
    }

    /// CHANCMD.
    fn command(&self, dev: &DeviceShared, value: u8) {
        let commands = value & COMMANDS;
        if commands == 0 {
            return;
        }
        match dev.config.mode {
            EmuMode::Inline => {
                let mut core = self.lock();
                self.apply(&mut core, commands);
                self.run(dev, &mut core, usize::MAX);
            }
            EmuMode::Threaded => {
                self.chancmd.fetch_or(commands, Ordering::Release);
                dev.notify();
            }
        }
    }

    /// CHAINADDR's arming write.
    fn arm(&self, dev: &DeviceShared, address: u64) {
        let mut core = self.lock();
        // A reset posted before this write happens before it, as the driver wrote them.
        self.drain_commands(dev, &mut core);
        let refused = core.needs_reset
            || self.chanerr.load(Ordering::Acquire) != 0
            || (dev.chanerr_int_holds_halt() && dev.pci.chanerr_int() != 0);
        if refused {
            return;
        }
        // A chain started anew counts anew: after a SUSPEND (no RESET) the internal count
        // restarts at zero too, while DMACOUNT keeps what the driver last wrote, so a driver
        // that re-arms without recounting runs the first DMACOUNT descriptors of the new chain.
        core.count = 0;
        self.count.store(0, Ordering::Release);
        core.cursor = address;
        core.fresh_chain = true;
        core.started_at = None;
        self.publish(&core, chansts::ARMED);
        match dev.config.mode {
            // Level-triggered: counted work (after a re-arm without reset) starts at once.
            EmuMode::Inline => {
                self.run(dev, &mut core, usize::MAX);
            }
            EmuMode::Threaded => dev.notify(),
        }
    }

    /// Carries out `commands`: RESET wins over the others in the same write.
    fn apply(&self, core: &mut Core, commands: u8) {
        if commands & chancmd::RESET != 0 {
            self.reset(core);
            return;
        }
        let state = self.state();
        if commands & chancmd::ABORT != 0 && state != chansts::HALTED {
            // The work in progress is dropped where it stands: no completion write, and no
            // new chain before a RESET.
            core.needs_reset = true;
            core.started_at = None;
            self.publish(core, chansts::HALTED);
            return;
        }
        if commands & chancmd::SUSPEND != 0 && (state == chansts::ACTIVE || state == chansts::IDLE)
        {
            core.started_at = None;
            self.publish(core, chansts::SUSPENDED);
        } else if commands & chancmd::RESUME != 0 && state == chansts::SUSPENDED {
            let caught_up = core.count == self.dmacount.load(Ordering::Acquire);
            let state = if caught_up {
                chansts::IDLE
            } else {
                chansts::ACTIVE
            };
            self.publish(core, state);
        }
    }

    fn reset(&self, core: &mut Core) {
        core.cursor = 0;
        core.count = 0;
        core.fresh_chain = true;
        core.last_completed = 0;
        core.needs_reset = false;
        core.started_at = None;
        self.count.store(0, Ordering::Release);
        self.dmacount.store(0, Ordering::Release);
        self.cdar.store(0, Ordering::Relaxed);
        self.publish(core, chansts::HALTED);
        // Before the posted bit clears (Release), so no read finds neither set.
        self.reset_unread.store(true, Ordering::Release);
    }

    /// A function-level reset: every register back at its power-on value, CHANERR included,
    /// and the work in progress dropped. Counters of what the channel did are kept.
    pub(super) fn power_on(&self) {
        let mut core = self.lock();
        self.reset(&mut core);
        self.reset_unread.store(false, Ordering::Release);
        self.chancmd.store(0, Ordering::Release);
        self.chanctrl.store(0, Ordering::Relaxed);
        self.chainaddr.store(0, Ordering::Relaxed);
        self.chancmp.store(0, Ordering::Relaxed);
        self.chanerr.store(0, Ordering::Release);
        self.chanerr_mask.store(0, Ordering::Relaxed);
        self.dcactrl.store(0, Ordering::Relaxed);
    }

    /// Carries out the commands posted in threaded mode; true if there were any.
    fn drain_commands(&self, dev: &DeviceShared, core: &mut Core) -> bool {
        if dev.config.mode != EmuMode::Threaded {
            return false;
        }
        let posted = self.chancmd.load(Ordering::Acquire);
        if posted == 0 {
            return false;
        }
        self.apply(core, posted);
        // Release: pairs with the driver's Acquire read of CHANCMD.
        self.chancmd.fetch_and(!posted, Ordering::Release);
        true
    }

    // ---- the engine ------------------------------------------------------------------

    /// Whether the device thread has anything to do here (no lock taken).
    pub(super) fn wants_service(&self) -> bool {
        if self.chancmd.load(Ordering::Acquire) != 0 {
            return true;
        }
        let state = self.state();
        let runnable = matches!(state, chansts::ARMED | chansts::ACTIVE | chansts::IDLE);
        // A stalled channel still takes note of a doorbell (it goes ACTIVE), then rests.
        runnable
            && (state != chansts::ACTIVE || !self.stalled.load(Ordering::Acquire))
            && self.dmacount.load(Ordering::Acquire) != self.count.load(Ordering::Acquire)
    }

    /// One pass of the device thread: posted commands, then a batch of descriptors.
    pub(super) fn service(&self, dev: &DeviceShared) -> Service {
        if dev.is_dead() || !self.wants_service() {
            return Service::Idle;
        }
        let mut core = self.lock();
        self.run(dev, &mut core, BATCH_DESCRIPTORS)
    }

    /// Processes descriptors while counted work remains and the channel may run, at most
    /// `budget` of them.
    fn run(&self, dev: &DeviceShared, core: &mut Core, budget: usize) -> Service {
        let mut outcome = Service::Idle;
        let (mut done, mut bytes) = (0usize, 0u64);
        loop {
            // Checked under the lock: once removal or drop has taken this lock, no descriptor
            // starts.
            if dev.is_dead() {
                break;
            }
            if self.drain_commands(dev, core) {
                outcome = Service::Progress;
            }
            let state = self.state();
            if !matches!(state, chansts::ARMED | chansts::ACTIVE | chansts::IDLE) {
                break;
            }
            // Acquire: pairs with the doorbell's Release; the counted descriptors are visible.
            if core.count == self.dmacount.load(Ordering::Acquire) {
                break;
            }
            if state != chansts::ACTIVE {
                self.publish(core, chansts::ACTIVE);
            }
            if self.stalled.load(Ordering::Acquire) {
                break;
            }
            if dev.config.mode == EmuMode::Threaded && !core.latency.is_zero() {
                let started = *core.started_at.get_or_insert_with(Instant::now);
                if started.elapsed() < core.latency {
                    if outcome == Service::Idle {
                        outcome = Service::Waiting;
                    }
                    break;
                }
                core.started_at = None;
            }
            bytes += self.execute(dev, core);
            outcome = Service::Progress;
            done += 1;
            if done >= budget || (budget != usize::MAX && bytes >= BATCH_BYTES) {
                break;
            }
        }
        outcome
    }

    /// Fetches, checks and carries out the descriptor at the cursor; returns bytes moved.
    fn execute(&self, dev: &DeviceShared, core: &mut Core) -> u64 {
        let address = core.cursor;
        self.cdar.store(address, Ordering::Relaxed);
        let start = dev.trace_sequence();
        let done = match self.perform(dev, core, address) {
            Ok(done) => done,
            Err(error) => {
                self.halt(dev, core, error);
                return 0;
            }
        };
        core.last_completed = address;
        core.cursor = done.next;
        core.fresh_chain = false;
        core.count = core.count.wrapping_add(1);
        self.count.store(core.count, Ordering::Release);
        // Only this thread, under the lock, writes the statistics: no read-modify-write.
        bump(&self.descriptors, 1);
        bump(&self.bytes, done.bytes);
        if let Some(start) = start {
            dev.record(TraceEvent {
                channel: self.index,
                descriptor: address,
                start,
                finish: dev.trace_sequence().unwrap_or(start),
                fence: done.control & ctl::FENCE != 0,
                bytes: done.bytes,
            });
        }
        let state = if core.count == self.dmacount.load(Ordering::Acquire) {
            chansts::IDLE
        } else {
            chansts::ACTIVE
        };
        if done.control & ctl::COMPLETION_UPDATE != 0 {
            // A device that left the bus mid-descriptor writes nothing more.
            if dev.is_dead() {
                return done.bytes;
            }
            if let Err(error) = self.write_completion(dev, core, address | state) {
                self.halt(dev, core, error);
                return done.bytes;
            }
        }
        self.publish(core, state);
        done.bytes
    }

    /// The descriptor work proper: fetch, validation, data movement.
    fn perform(&self, dev: &DeviceShared, core: &mut Core, address: u64) -> Result<Done, u32> {
        if !dev.bus_master() {
            return Err(chanerr::READ_DATA);
        }
        let (misaligned, unmapped) = if core.fresh_chain {
            (chanerr::CHAIN_ADDR_VALUE, chanerr::CHAIN_ADDR_VALUE)
        } else {
            (chanerr::NEXT_DESC_ALIGN, chanerr::NEXT_ADDR)
        };
        if address % DESCRIPTOR_SIZE as u64 != 0 {
            return Err(misaligned);
        }
        let slot = dma::resolve(&mut core.lookup(dev), address, DESCRIPTOR_SIZE).ok_or(unmapped)?;
        let descriptor = dma::read_descriptor(slot);
        if let Some(plan) = core.fail.as_mut() {
            plan.remaining -= 1;
            if plan.remaining == 0 {
                let error = plan.error;
                core.fail = None;
                return Err(error);
            }
        }
        let control = descriptor.control;
        let size = u64::from(descriptor.size);
        if control & (ctl::SRC_PAGE_BREAK | ctl::DEST_PAGE_BREAK) != 0 {
            return Err(chanerr::CONTROL);
        }
        if size > dev.max_transfer() {
            return Err(chanerr::LENGTH);
        }
        let bytes = match ctl::op(control) {
            op::COPY if control & ctl::NULL != 0 => 0,
            op::COPY => {
                if size == 0 {
                    return Err(chanerr::LENGTH);
                }
                let len = size as usize;
                let mut memory = core.lookup(dev);
                let src = dma::resolve(&mut memory, descriptor.src_or_pattern, len)
                    .ok_or(chanerr::SRC_ADDR)?;
                let dst =
                    dma::resolve(&mut memory, descriptor.dest, len).ok_or(chanerr::DEST_ADDR)?;
                dma::copy(src, dst);
                size
            }
            op::FILL => {
                if !dev.config.fill || control & ctl::NULL != 0 {
                    return Err(chanerr::CONTROL);
                }
                if size == 0 {
                    return Err(chanerr::LENGTH);
                }
                let dst = dma::resolve(&mut core.lookup(dev), descriptor.dest, size as usize)
                    .ok_or(chanerr::DEST_ADDR)?;
                dma::fill(dst, descriptor.src_or_pattern);
                size
            }
            _ => return Err(chanerr::CONTROL),
        };
        Ok(Done {
            next: descriptor.next,
            control,
            bytes,
        })
    }

    /// Writes a completion word to the CHANCMP address.
    fn write_completion(&self, dev: &DeviceShared, core: &mut Core, value: u64) -> Result<(), u32> {
        if !dev.bus_master() {
            return Err(chanerr::WRITE_DATA);
        }
        let address = self.chancmp.load(Ordering::Acquire);
        if address % 8 != 0 {
            return Err(chanerr::COMPLETION_ADDR);
        }
        let word =
            dma::resolve(&mut core.lookup(dev), address, 8).ok_or(chanerr::COMPLETION_ADDR)?;
        if !dma::store_completion(word, value) {
            return Err(chanerr::COMPLETION_ADDR);
        }
        bump(&self.completion_writes, 1);
        if dev.pci.relaxed_ordering() {
            bump(&self.relaxed_completion_writes, 1);
        }
        Ok(())
    }

    /// Stops the channel on `error`.
    fn halt(&self, dev: &DeviceShared, core: &mut Core, error: u32) {
        // CHANERR (and its mirror) before the state: a driver that sees HALTED finds the cause.
        self.chanerr.fetch_or(error, Ordering::AcqRel);
        dev.pci.raise(error);
        core.needs_reset = true;
        core.started_at = None;
        bump(&self.errors, 1);
        let status = core.last_completed | chansts::HALTED;
        let report = self.chanctrl.load(Ordering::Acquire) & chanctrl::ERR_COMPLETION_EN != 0;
        // Without bus mastering the write is never issued, so it cannot fail either.
        if report && dev.bus_master() && !dev.is_dead() {
            if let Err(also) = self.write_completion(dev, core, status) {
                self.chanerr.fetch_or(also, Ordering::AcqRel);
                dev.pci.raise(also);
            }
        }
        self.publish(core, chansts::HALTED);
    }

    // ---- faults, statistics, teardown -------------------------------------------------

    pub(super) fn fail_nth(&self, nth: u32, error: u32) {
        self.lock().fail = Some(FailPlan {
            remaining: nth,
            error,
        });
    }

    pub(super) fn set_latency(&self, latency: Duration) {
        let mut core = self.lock();
        core.latency = latency;
        core.started_at = None;
    }

    pub(super) fn set_stalled(&self, dev: &DeviceShared, stalled: bool) {
        self.stalled.store(stalled, Ordering::Release);
        if stalled {
            return;
        }
        match dev.config.mode {
            EmuMode::Inline => {
                let mut core = self.lock();
                self.run(dev, &mut core, usize::MAX);
            }
            EmuMode::Threaded => dev.notify(),
        }
    }

    /// Waits until no descriptor is under way on this channel. Callers set the device's
    /// removed or detached flag first, which `run` checks under the same lock.
    pub(super) fn quiesce(&self) {
        drop(self.lock());
    }

    pub(super) fn stats(&self) -> EmuStats {
        EmuStats {
            descriptors: self.descriptors.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            completion_writes: self.completion_writes.load(Ordering::Relaxed),
            relaxed_completion_writes: self.relaxed_completion_writes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Adds to a counter that only the lock holder writes.
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}
