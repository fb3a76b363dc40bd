//! The DSA's state and its control plane: the register file and tables behind BAR0, the
//! command engine, the WQs' queues, and the life cycle (registration with the device thread,
//! removal, teardown).
//!
//! Everything the engines work on lives in `Core`, behind one mutex. A portal write, a
//! register write, a command and the device thread's pass each take it, so nothing changes
//! under a descriptor and a removal or a drop that takes it once knows that no descriptor is
//! under way afterwards. CMDSTATUS and the device thread's "anything to do?" flag are atomics
//! outside it, read without the lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::super::channel::Service;
use super::super::runtime::{Serve, Wake};
use super::super::DeviceMemory;
use super::config::PciState;
use super::{DsaEmuConfig, DsaEmuStats, DsaTraceEvent};
use crate::dsa::portal::Enqueue;
use crate::dsa::spec::{
    cmd, cmdsts, gencap, gensts, grpcfg, intcause, offsets, opcode, reg, swerr, version, wqcap,
    wqcfg, Descriptor,
};
use crate::sync::lock_std;

/// Where the tables are, as on Sapphire Rapids.
pub(super) const GRPCFG_OFFSET: usize = 0x300;
pub(super) const WQCFG_OFFSET: usize = 0x400;
pub(super) const MSIX_PERM_OFFSET: usize = 0x200;
/// Bytes of a WQCFG entry (WQCAP bits 27:24 = 0).
const WQCFG_ENTRY: usize = 32;
/// Read buffers GRPCAP reports (an SPR part's).
const READ_BUFFERS: u64 = 96;
/// Descriptors a threaded pass runs per WQ before giving the others a turn.
const PASS_BUDGET: usize = 64;
/// WQCFG dword 2 bits a driver may set (mode through privileged).
const MODE_WRITABLE: u32 = 0x3FFF_FFFF;

/// The opcodes OPCAP advertises (all below 64, so OPCAP's first qword).
pub(super) const SUPPORTED_OPCODES: [u8; 10] = [
    opcode::NOOP,
    opcode::BATCH,
    opcode::DRAIN,
    opcode::MEMMOVE,
    opcode::MEMFILL,
    opcode::COMPARE,
    opcode::COMPARE_PATTERN,
    opcode::DUALCAST,
    opcode::CRC_GEN,
    opcode::COPY_CRC,
];

/// OPCAP's first qword.
pub(super) const fn opcap0() -> u64 {
    let mut bits = 0;
    let mut i = 0;
    while i < SUPPORTED_OPCODES.len() {
        bits |= 1 << SUPPORTED_OPCODES[i];
        i += 1;
    }
    bits
}

/// A descriptor a WQ holds, copied at the portal write.
#[derive(Clone, Copy, Debug)]
pub(super) struct Queued {
    pub(super) descriptor: Descriptor,
    /// Device-wide submission sequence number.
    pub(super) seq: u64,
}

/// One WQ: its WQCFG entry, its queue and the faults injected into it.
#[derive(Default)]
pub(super) struct Wq {
    /// The eight dwords of the WQCFG entry (dword 6 is computed on read).
    pub(super) cfg: [u32; 8],
    pub(super) enabled: bool,
    pub(super) queue: VecDeque<Queued>,
    pub(super) stalled: bool,
    pub(super) latency: Duration,
    /// When the descriptor at the head began waiting out its latency.
    pub(super) head_since: Option<Instant>,
    /// Fail the nth descriptor started from now on with this status.
    pub(super) fail: Option<(u32, u8)>,
    /// Fault the nth descriptor started from now on at this byte (on a write?).
    pub(super) page_fault: Option<(u32, (u32, bool))>,
    pub(super) stats: DsaEmuStats,
}

impl Wq {
    fn size(&self) -> usize {
        (self.cfg[wqcfg::SIZE / 4] & 0xFFFF) as usize
    }

    fn threshold(&self) -> usize {
        (self.cfg[wqcfg::THRESHOLD / 4] & 0xFFFF) as usize
    }

    fn dedicated(&self) -> bool {
        self.cfg[wqcfg::MODE / 4] & wqcfg::MODE_DEDICATED != 0
    }

    /// The largest transfer a descriptor may ask for.
    pub(super) fn max_transfer(&self) -> u64 {
        1 << wqcfg::transfer_shift(self.cfg[wqcfg::LIMITS / 4])
    }

    /// The largest batch.
    pub(super) fn max_batch(&self) -> u64 {
        1 << wqcfg::batch_shift(self.cfg[wqcfg::LIMITS / 4])
    }

    fn runnable(&self) -> bool {
        self.enabled && !self.stalled && !self.queue.is_empty()
    }
}

/// The device's working state, guarded by one mutex.
pub(super) struct Core {
    /// GENSTS state.
    state: u32,
    gencfg: u32,
    genctrl: u32,
    intcause: u32,
    /// The last command accepted (CMD reads it back).
    last_cmd: u32,
    /// A command accepted and not carried out yet.
    pending: Option<u32>,
    /// Eight qwords per group.
    grpcfg: Vec<[u64; 8]>,
    pub(super) wqs: Vec<Wq>,
    swerror: [u64; 4],
    submitted: u64,
    completed: u64,
    trace: Vec<DsaTraceEvent>,
}

impl Core {
    /// The next completion sequence number.
    pub(super) fn next_completion(&mut self) -> u64 {
        self.completed += 1;
        self.completed
    }

    pub(super) fn push_trace(&mut self, event: DsaTraceEvent) {
        self.trace.push(event);
    }

    /// Records a software error, or marks an overflow if one is recorded already.
    pub(super) fn log_swerror(&mut self, code: u32, wq: Option<usize>, detail: SwerrorDetail) {
        self.intcause |= intcause::SOFTWARE_ERROR;
        if self.swerror[0] & swerr::VALID != 0 {
            self.swerror[0] |= swerr::OVERFLOW;
            return;
        }
        let mut q0 = swerr::VALID | (u64::from(code & 0xFF) << 8);
        if let Some(wq) = wq {
            q0 |= swerr::WQ_VALID | ((wq as u64 & 0xFF) << 16);
        }
        let mut q1 = 0;
        if let Some(op) = detail.opcode {
            q0 |= swerr::DESCRIPTOR_VALID | (u64::from(op) << 32);
        }
        if let Some(index) = detail.batch_index {
            q0 |= swerr::BATCH;
            q1 = u64::from(index);
        }
        if detail.write {
            q0 |= swerr::WRITE;
        }
        self.swerror = [q0, q1, detail.address, 0];
    }

    /// Engines in the group holding `wq` (0 if none holds it).
    pub(super) fn engines_of(&self, wq: usize) -> usize {
        self.grpcfg
            .iter()
            .find(|group| group[wq / 64] & (1 << (wq % 64)) != 0)
            .map_or(0, |group| group[grpcfg::ENGINES / 8].count_ones() as usize)
    }

    fn occupancy(&self, wq: usize) -> usize {
        self.wqs[wq].queue.len()
    }
}

/// What SWERROR says about the descriptor behind an error.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SwerrorDetail {
    pub(super) opcode: Option<u8>,
    pub(super) batch_index: Option<u32>,
    pub(super) write: bool,
    pub(super) address: u64,
}

/// State shared by the windows, the configuration space and the device thread.
pub(super) struct DsaShared {
    pub(super) config: DsaEmuConfig,
    pub(super) memory: Arc<dyn DeviceMemory>,
    pub(super) pci: PciState,
    core: Mutex<Core>,
    /// A command was written and is not done.
    cmd_busy: AtomicBool,
    /// A command was written and CMDSTATUS not read since: ACTIVE reads set once more.
    cmd_unread: AtomicBool,
    /// The last command's result (CMDSTATUS without ACTIVE).
    cmd_status: AtomicU32,
    /// The device thread has something to do (set under the lock, read without it).
    ready: AtomicBool,
    /// Surprise removal has begun: nothing more starts.
    leaving: AtomicBool,
    /// Surprise removal is complete: the bus reads all-ones (Release after the engines are
    /// quiet, paired with the Acquire in `is_removed`).
    removed: AtomicBool,
    /// The owner dropped the device.
    detached: AtomicBool,
    pub(super) tracing: AtomicBool,
    wake: Option<Arc<Wake>>,
}

impl DsaShared {
    pub(super) fn new(
        config: DsaEmuConfig,
        memory: Arc<dyn DeviceMemory>,
        wake: Option<Arc<Wake>>,
    ) -> DsaShared {
        DsaShared {
            config,
            memory,
            pci: PciState::new(config.device_id),
            core: Mutex::new(Core {
                state: gensts::DISABLED,
                gencfg: 0,
                genctrl: 0,
                intcause: 0,
                last_cmd: 0,
                pending: None,
                grpcfg: vec![[0; 8]; config.groups],
                wqs: (0..config.wqs).map(|_| Wq::default()).collect(),
                swerror: [0; 4],
                submitted: 0,
                completed: 0,
                trace: Vec::new(),
            }),
            cmd_busy: AtomicBool::new(false),
            cmd_unread: AtomicBool::new(false),
            cmd_status: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            tracing: AtomicBool::new(false),
            wake,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic on another thread (a failing test) must not wedge the device.
        lock_std(&self.core)
    }

    fn inline(&self) -> bool {
        self.wake.is_none()
    }

    pub(super) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Whether the device must start nothing more (being removed, or dropped).
    pub(super) fn is_dead(&self) -> bool {
        self.leaving.load(Ordering::Acquire) || self.detached.load(Ordering::Acquire)
    }

    /// Whether the bus reaches the device at all (present, memory decoding on).
    pub(super) fn answers(&self) -> bool {
        !self.is_removed() && self.pci.memory_enabled()
    }

    /// Republishes whether the device thread has work, then wakes it if so. Call with the
    /// lock held; the wake-up happens after the caller's stores are visible (SeqCst fence in
    /// `Wake::notify`).
    fn publish(&self, core: &Core) {
        let runnable = core.state == gensts::ENABLED && core.wqs.iter().any(Wq::runnable);
        let command = core
            .pending
            .is_some_and(|value| !self.command_blocked(core, value));
        let ready = !self.is_dead() && (runnable || command);
        self.ready.store(ready, Ordering::Release);
        if ready {
            if let Some(wake) = &self.wake {
                wake.notify();
            }
        }
    }

    pub(super) fn with_wq(&self, wq: usize, change: impl FnOnce(&mut Wq)) {
        let mut core = self.lock();
        change(&mut core.wqs[wq]);
        self.publish(&core);
    }

    pub(super) fn set_stalled(&self, wq: usize, stalled: bool) {
        let mut core = self.lock();
        core.wqs[wq].stalled = stalled;
        if !stalled && self.inline() {
            self.progress(&mut core);
        }
        self.publish(&core);
    }

    pub(super) fn remove(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        // Every descriptor runs under the lock and looks at `leaving` first: once we had the
        // lock, none is under way and none starts again.
        drop(self.lock());
        self.ready.store(false, Ordering::Release);
        self.removed.store(true, Ordering::Release);
    }

    pub(super) fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
        drop(self.lock());
    }

    pub(super) fn take_trace(&self) -> Vec<DsaTraceEvent> {
        std::mem::take(&mut self.lock().trace)
    }

    pub(super) fn stats(&self, wq: usize) -> DsaEmuStats {
        self.lock().wqs.get(wq).map(|w| w.stats).unwrap_or_default()
    }

    pub(super) fn reset_function(&self) {
        let mut core = self.lock();
        core.pending = None;
        self.reset_device(&mut core);
        core.intcause = 0;
        core.genctrl = 0;
        self.cmd_busy.store(false, Ordering::Release);
        self.cmd_unread.store(false, Ordering::Release);
        self.cmd_status.store(0, Ordering::Release);
        self.publish(&core);
    }

    /// PCI COMMAND lost bus mastering: an enabled device halts (SWERROR 0x51).
    pub(super) fn bus_master_cleared(&self) {
        let mut core = self.lock();
        if core.state == gensts::ENABLED {
            core.state = gensts::HALTED;
            core.intcause |= intcause::HALT;
            core.log_swerror(swerr::HALT_CONFIG_CHANGE, None, SwerrorDetail::default());
        }
        self.publish(&core);
    }

    // ---- the engines ----

    /// Carries out what can be done now: queued descriptors of every runnable WQ (all of
    /// them inline; a budget each on the device thread), then the pending command.
    fn progress(&self, core: &mut Core) -> Service {
        if self.is_dead() {
            return Service::Idle;
        }
        let (mut progress, mut waiting) = (false, false);
        if core.state == gensts::ENABLED {
            for wq in 0..core.wqs.len() {
                match self.run_wq(core, wq) {
                    Service::Progress => progress = true,
                    Service::Waiting => waiting = true,
                    Service::Idle => {}
                }
            }
        }
        if let Some(value) = core.pending {
            if let Some(result) = self.command(core, value) {
                core.pending = None;
                if value & cmd::REQUEST_INTERRUPT != 0 {
                    core.intcause |= intcause::COMMAND;
                }
                self.cmd_status.store(result, Ordering::Release);
                // Pairs with the Acquire in `read_cmdstatus`: a reader that sees the command
                // done sees its result.
                self.cmd_busy.store(false, Ordering::Release);
                progress = true;
            }
        }
        if progress {
            Service::Progress
        } else if waiting {
            Service::Waiting
        } else {
            Service::Idle
        }
    }

    /// Runs queued descriptors of `wq`: everything inline, a budget on the device thread.
    /// With several engines in the group, up to that many are taken at once (a Drain or a
    /// Batch alone) and completed in reverse order.
    fn run_wq(&self, core: &mut Core, wq: usize) -> Service {
        if !core.wqs[wq].runnable() {
            return Service::Idle;
        }
        let inline = self.inline();
        let latency = core.wqs[wq].latency;
        let delayed = !inline && !latency.is_zero();
        if delayed {
            let since = *core.wqs[wq].head_since.get_or_insert_with(Instant::now);
            if since.elapsed() < latency {
                return Service::Waiting;
            }
            core.wqs[wq].head_since = None;
        }
        let engines = core.engines_of(wq).max(1);
        let mut budget = if inline {
            usize::MAX
        } else if delayed {
            1
        } else {
            PASS_BUDGET
        };
        while budget > 0 && core.wqs[wq].runnable() {
            let mut chunk = Vec::with_capacity(engines);
            while chunk.len() < engines.min(budget) {
                let Some(next) = core.wqs[wq].queue.front() else {
                    break;
                };
                let alone = matches!(next.descriptor.opcode(), opcode::DRAIN | opcode::BATCH);
                if alone && !chunk.is_empty() {
                    break;
                }
                chunk.extend(core.wqs[wq].queue.pop_front());
                if alone {
                    break;
                }
            }
            budget -= chunk.len();
            if engines > 1 {
                chunk.reverse();
            }
            for queued in chunk {
                if self.is_dead() {
                    return Service::Idle;
                }
                self.execute(core, wq, engines, queued);
            }
        }
        Service::Progress
    }

    // ---- the portals ----

    /// A 64-byte write to `wq`'s portal: MOVDIR64B (`enqcmd` false; the answer is ignored)
    /// or ENQCMD. `limited`: through a limited portal.
    pub(super) fn submit(
        &self,
        wq: usize,
        limited: bool,
        descriptor: &Descriptor,
        enqcmd: bool,
    ) -> Enqueue {
        if self.is_dead() || !self.answers() {
            return Enqueue::Retry;
        }
        let mut core = self.lock();
        if core.state != gensts::ENABLED || !core.wqs[wq].enabled {
            return Enqueue::Retry;
        }
        let occupancy = core.occupancy(wq);
        let w = &mut core.wqs[wq];
        if enqcmd {
            let full = occupancy >= w.size() || (limited && occupancy >= w.threshold());
            if w.dedicated() || full {
                w.stats.retries_answered += 1;
                return Enqueue::Retry;
            }
        } else if !w.dedicated() {
            return Enqueue::Retry;
        } else if occupancy >= w.size() {
            w.stats.dropped_on_overflow += 1;
            core.log_swerror(swerr::DWQ_OVERFLOW, Some(wq), SwerrorDetail::default());
            return Enqueue::Retry;
        }
        core.submitted += 1;
        let seq = core.submitted;
        core.wqs[wq].queue.push_back(Queued {
            descriptor: *descriptor,
            seq,
        });
        if self.inline() {
            self.progress(&mut core);
        }
        self.publish(&core);
        Enqueue::Accepted
    }

    // ---- BAR0 ----

    /// CMDSTATUS: ACTIVE while the command is not done, and once more after the CMD write.
    pub(super) fn read_cmdstatus(&self) -> u32 {
        let unread = self.cmd_unread.swap(false, Ordering::AcqRel);
        if self.cmd_busy.load(Ordering::Acquire) || unread {
            return cmdsts::ACTIVE;
        }
        self.cmd_status.load(Ordering::Acquire)
    }

    /// A CMD write (the whole dword).
    pub(super) fn write_cmd(&self, value: u32) {
        let mut core = self.lock();
        if self.cmd_busy.load(Ordering::Acquire) || self.cmd_unread.load(Ordering::Acquire) {
            core.log_swerror(swerr::COMMAND_WHILE_ACTIVE, None, SwerrorDetail::default());
            return;
        }
        core.last_cmd = value;
        core.pending = Some(value);
        self.cmd_busy.store(true, Ordering::Release);
        self.cmd_unread.store(true, Ordering::Release);
        if self.inline() {
            self.progress(&mut core);
        }
        self.publish(&core);
    }

    pub(super) fn read_qword(&self, offset: usize) -> u64 {
        let core = self.lock();
        let config = &self.config;
        match offset {
            reg::VERSION => version::V1_0.into(),
            reg::GENCAP => {
                gencap::with_shifts(config.max_transfer_shift, config.max_batch_shift)
                    | gencap::CONFIGURABLE
                    | gencap::CMDCAP
                    | gencap::FILL_16B
            }
            reg::WQCAP => {
                let shared = if config.shared_wq { wqcap::SHARED } else { 0 };
                wqcap::encode(
                    config.total_wq_size,
                    config.wqs as u32,
                    wqcap::DEDICATED | shared | wqcap::PRIORITY | wqcap::OCCUPANCY,
                )
            }
            reg::GRPCAP => config.groups as u64 | (READ_BUFFERS << 8),
            reg::ENGCAP => config.engines as u64,
            reg::OPCAP => opcap0(),
            reg::OFFSETS => offsets::encode(GRPCFG_OFFSET, WQCFG_OFFSET, MSIX_PERM_OFFSET),
            reg::GENCFG => core.gencfg.into(),
            reg::GENCTRL => core.genctrl.into(),
            reg::GENSTS => core.state.into(),
            reg::INTCAUSE => core.intcause.into(),
            reg::CMD => core.last_cmd.into(),
            // Bit n: command n exists (Enable Device through Reset WQ).
            reg::CMDCAP => 0x7FE,
            _ if (reg::SWERROR..reg::SWERROR + 32).contains(&offset) => {
                core.swerror[(offset - reg::SWERROR) / 8]
            }
            _ => {
                if let Some((group, qword)) = self.grpcfg_at(offset) {
                    core.grpcfg[group][qword]
                } else if let Some((wq, first)) = self.wqcfg_at(offset) {
                    let dword = |d: usize| -> u64 {
                        if d == wqcfg::STATUS / 4 {
                            let state = u32::from(core.wqs[wq].enabled);
                            (core.occupancy(wq) as u64 & 0xFFFF) | (u64::from(state) << 30)
                        } else {
                            core.wqs[wq].cfg[d].into()
                        }
                    };
                    dword(first) | (dword(first + 1) << 32)
                } else {
                    0
                }
            }
        }
    }

    /// A write of the bytes of `value` that `mask` selects into the qword at `offset` (CMD
    /// and CMDSTATUS are handled before).
    pub(super) fn write_qword(&self, offset: usize, value: u64, mask: u64) {
        let mut core = self.lock();
        let merge = |old: u64| (old & !mask) | (value & mask);
        let disabled = core.state == gensts::DISABLED;
        match offset {
            reg::GENCFG if disabled => core.gencfg = merge(core.gencfg.into()) as u32,
            reg::GENCTRL => core.genctrl = merge(core.genctrl.into()) as u32 & 0x3,
            reg::INTCAUSE => core.intcause &= !((value & mask) as u32),
            reg::SWERROR => {
                let clear = value & mask & (swerr::VALID | swerr::OVERFLOW);
                core.swerror[0] &= !clear;
            }
            _ => {
                if let Some((group, qword)) = self.grpcfg_at(offset) {
                    if disabled {
                        core.grpcfg[group][qword] = merge(core.grpcfg[group][qword]);
                    }
                } else if let Some((wq, dword)) = self.wqcfg_at(offset) {
                    let w = &mut core.wqs[wq];
                    if w.enabled {
                        return;
                    }
                    for (d, half) in [(dword, 0), (dword + 1, 32)] {
                        let half_mask = (mask >> half) as u32;
                        let bits = (value >> half) as u32;
                        let writable = match d {
                            0 if disabled => 0xFFFF,
                            1 => 0xFFFF,
                            2 => MODE_WRITABLE,
                            3 => 0x1FF,
                            _ => 0,
                        } & half_mask;
                        w.cfg[d] = (w.cfg[d] & !writable) | (bits & writable);
                    }
                }
            }
        }
    }

    /// The group and qword of a GRPCFG offset.
    fn grpcfg_at(&self, offset: usize) -> Option<(usize, usize)> {
        let rel = offset.checked_sub(GRPCFG_OFFSET)?;
        let group = rel / grpcfg::ENTRY_SIZE;
        (group < self.config.groups).then_some((group, (rel % grpcfg::ENTRY_SIZE) / 8))
    }

    /// The WQ and the first dword of a WQCFG qword.
    fn wqcfg_at(&self, offset: usize) -> Option<(usize, usize)> {
        let rel = offset.checked_sub(WQCFG_OFFSET)?;
        let wq = rel / WQCFG_ENTRY;
        (wq < self.config.wqs).then_some((wq, (rel % WQCFG_ENTRY) / 4))
    }

    // ---- commands ----

    /// The WQs a drain-like command waits for, if it is one.
    fn drain_targets(&self, core: &Core, value: u32) -> Option<u64> {
        let all = (1u64 << core.wqs.len()) - 1;
        match cmd::code(value) {
            cmd::DISABLE_DEVICE | cmd::DRAIN_ALL => Some(all),
            cmd::DISABLE_WQ | cmd::DRAIN_WQ => Some(cmd::wq_mask(cmd::operand(value)) & all),
            _ => None,
        }
    }

    /// Whether a pending command waits for a stalled WQ (so the device thread may sleep).
    fn command_blocked(&self, core: &Core, value: u32) -> bool {
        core.state == gensts::ENABLED
            && self.drain_targets(core, value).is_some_and(|mask| {
                (0..core.wqs.len()).any(|wq| {
                    let w = &core.wqs[wq];
                    mask & (1 << wq) != 0 && w.enabled && w.stalled && !w.queue.is_empty()
                })
            })
    }

    /// Whether the WQs of `mask` hold nothing (after running what they can).
    fn drained(&self, core: &mut Core, mask: u64) -> bool {
        (0..core.wqs.len())
            .filter(|wq| mask & (1 << wq) != 0)
            .all(|wq| {
                if core.state == gensts::ENABLED {
                    self.run_wq(core, wq);
                }
                !core.wqs[wq].enabled || core.wqs[wq].queue.is_empty()
            })
    }

    /// Carries out a command: its result, or `None` while it waits for a drain.
    fn command(&self, core: &mut Core, value: u32) -> Option<u32> {
        let code = cmd::code(value);
        let operand = cmd::operand(value);
        let all = (1u64 << core.wqs.len()) - 1;
        if core.state == gensts::HALTED && code != cmd::RESET_DEVICE {
            return Some(cmdsts::HALTED);
        }
        let wq_mask = cmd::wq_mask(operand);
        let bad_mask = wq_mask == 0 || wq_mask & !all != 0;
        match code {
            cmd::ENABLE_DEVICE => Some(self.enable_device(core)),
            cmd::DISABLE_DEVICE => {
                if core.state == gensts::ENABLED {
                    if !self.drained(core, all) {
                        return None;
                    }
                    core.wqs.iter_mut().for_each(|w| w.enabled = false);
                    core.state = gensts::DISABLED;
                }
                Some(0)
            }
            cmd::DRAIN_ALL => self.drained(core, all).then_some(0),
            cmd::ABORT_ALL => {
                core.wqs.iter_mut().for_each(|w| w.queue.clear());
                Some(0)
            }
            cmd::RESET_DEVICE => {
                self.reset_device(core);
                Some(0)
            }
            cmd::ENABLE_WQ => Some(self.enable_wq(core, operand as usize)),
            cmd::DISABLE_WQ | cmd::DRAIN_WQ | cmd::ABORT_WQ | cmd::RESET_WQ if bad_mask => {
                Some(cmdsts::INVALID_WQ)
            }
            cmd::DISABLE_WQ => {
                if !self.drained(core, wq_mask) {
                    return None;
                }
                self.each_wq(core, wq_mask, |w| w.enabled = false);
                Some(0)
            }
            cmd::DRAIN_WQ => self.drained(core, wq_mask).then_some(0),
            cmd::ABORT_WQ => {
                self.each_wq(core, wq_mask, |w| w.queue.clear());
                Some(0)
            }
            cmd::RESET_WQ => {
                self.each_wq(core, wq_mask, |w| {
                    w.queue.clear();
                    w.enabled = false;
                    w.cfg = [0; 8];
                });
                Some(0)
            }
            _ => Some(cmdsts::INVALID_COMMAND),
        }
    }

    fn each_wq(&self, core: &mut Core, mask: u64, mut change: impl FnMut(&mut Wq)) {
        for (wq, w) in core.wqs.iter_mut().enumerate() {
            if mask & (1 << wq) != 0 {
                change(w);
            }
        }
    }

    fn reset_device(&self, core: &mut Core) {
        core.state = gensts::DISABLED;
        core.gencfg = 0;
        core.swerror = [0; 4];
        core.grpcfg.iter_mut().for_each(|group| *group = [0; 8]);
        for w in &mut core.wqs {
            w.queue.clear();
            w.enabled = false;
            w.cfg = [0; 8];
            w.head_since = None;
        }
    }

    fn enable_device(&self, core: &mut Core) -> u32 {
        if core.state != gensts::DISABLED {
            return cmdsts::DEVICE_NOT_DISABLED;
        }
        if !self.pci.bus_master() {
            return cmdsts::BUS_MASTER_DISABLED;
        }
        let total: u64 = core.wqs.iter().map(|w| w.size() as u64).sum();
        if total > u64::from(self.config.total_wq_size) {
            return cmdsts::WQ_SIZES_EXCEED_TOTAL;
        }
        let wq_bits = (1u64 << core.wqs.len()) - 1;
        let engine_bits = (1u64 << self.config.engines) - 1;
        let (mut wqs_seen, mut engines_seen) = (0u64, 0u64);
        for group in &core.grpcfg {
            let (wqs, engines) = (group[0], group[grpcfg::ENGINES / 8]);
            if wqs & !wq_bits != 0 || group[1..4].iter().any(|&q| q != 0) {
                return cmdsts::CONFIG_ERROR;
            }
            if engines & !engine_bits != 0 {
                return cmdsts::CONFIG_ERROR;
            }
            let twice = wqs & wqs_seen != 0 || engines & engines_seen != 0;
            if (wqs == 0) != (engines == 0) || twice {
                return cmdsts::GROUP_CONFIG;
            }
            wqs_seen |= wqs;
            engines_seen |= engines;
        }
        core.state = gensts::ENABLED;
        0
    }

    fn enable_wq(&self, core: &mut Core, wq: usize) -> u32 {
        if wq >= core.wqs.len() {
            return cmdsts::INVALID_WQ;
        }
        if core.state != gensts::ENABLED {
            return cmdsts::DEVICE_NOT_ENABLED;
        }
        let in_group = core.engines_of(wq) > 0;
        let w = &mut core.wqs[wq];
        let mode = w.cfg[wqcfg::MODE / 4];
        let limits = w.cfg[wqcfg::LIMITS / 4];
        let checks = [
            (w.enabled, cmdsts::WQ_NOT_DISABLED),
            (w.size() == 0, cmdsts::WQ_SIZE_ZERO),
            (wqcfg::priority(mode) == 0, cmdsts::WQ_PRIORITY_ZERO),
            (
                !w.dedicated() && !self.config.shared_wq,
                cmdsts::WQ_MODE_UNSUPPORTED,
            ),
            (
                mode & wqcfg::MODE_BLOCK_ON_FAULT != 0,
                cmdsts::WQ_BLOCK_ON_FAULT,
            ),
            (
                !w.dedicated() && mode & wqcfg::MODE_PASID_ENABLE == 0,
                cmdsts::SHARED_WITHOUT_PASID,
            ),
            (
                wqcfg::batch_shift(limits) > self.config.max_batch_shift,
                cmdsts::WQ_BAD_MAX_BATCH,
            ),
            (
                wqcfg::transfer_shift(limits) > self.config.max_transfer_shift,
                cmdsts::WQ_BAD_MAX_TRANSFER,
            ),
            (!in_group, cmdsts::CONFIG_ERROR),
        ];
        if let Some(&(_, error)) = checks.iter().find(|(failed, _)| *failed) {
            return error;
        }
        w.enabled = true;
        w.head_since = None;
        0
    }
}

impl Serve for DsaShared {
    fn service(&self) -> Service {
        if !self.wants_service() {
            return Service::Idle;
        }
        let mut core = self.lock();
        let outcome = self.progress(&mut core);
        self.publish(&core);
        outcome
    }

    fn wants_service(&self) -> bool {
        !self.is_dead() && self.ready.load(Ordering::Acquire)
    }
}
