//! A DSA device as a whole, through its registers: what it is (capabilities), the command
//! protocol, the bring-up a VFIO driver does itself (reset, groups, WQs, enable), and the
//! per-WQ control a started channel needs ([`WqControl`]: enable, disable, where it stands).
//!
//! The kernel route has no registers: accel-config configured the WQs and the kernel enables
//! and disables them, so its [`WqControl`] reads sysfs instead (`kernel.rs`).
//!
//! Bring-up follows the shape every driver agrees on (`reference/dsa.md` §3.3): memory space
//! and bus mastering on first (Enable Device fails with 0x12 otherwise), Reset Device, the
//! tables zeroed and programmed while the device is disabled, Enable Device. All WQs go into
//! one group with every engine, so descriptors of one WQ run on several engines and complete
//! out of order; the queue checks every completion record and never assumes FIFO.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::DsaError;
use super::spec::{self, cmd, cmdsts, gencap, gensts, grpcap, grpcfg, offsets, reg, wqcap, wqcfg};
use crate::mmio::RegisterWindow;
use crate::pci::{enable_dma, ConfigSpace};
use crate::sync::lock_std;

/// Where a WQ stands, as its channel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WqState {
    /// Enabled and taking descriptors.
    Enabled,
    /// Disabled (by this driver, the kernel, or an administrator): descriptors written to its
    /// portal are dropped.
    Disabled,
    /// The device halted: nothing completes until a reset.
    Halted,
    /// The device is gone: registers read all-ones, or its sysfs entry vanished.
    Gone,
}

impl WqState {
    /// Whether the device may still be working through the WQ's descriptors.
    pub fn may_run(self) -> bool {
        self == WqState::Enabled
    }
}

/// What a started channel needs from whoever controls its WQ.
pub trait WqControl: Send + Sync {
    /// Enables the WQ (a no-op where the kernel enabled it).
    fn enable(&self) -> Result<(), DsaError>;
    /// Disables the WQ once the device has finished what it holds, so it touches none of the
    /// channel's memory afterwards (a no-op where the kernel owns it).
    fn disable(&self) -> Result<(), DsaError>;
    /// Where the WQ stands.
    fn state(&self) -> WqState;
}

/// How long the driver waits for the device.
#[derive(Clone, Copy, Debug)]
pub struct DsaTimeouts {
    /// For one command (CMDSTATUS active to clear).
    pub command: Duration,
}

impl Default for DsaTimeouts {
    fn default() -> Self {
        DsaTimeouts {
            command: Duration::from_secs(1),
        }
    }
}

/// What a device's capability registers say.
#[derive(Clone, Copy, Debug)]
pub struct DsaIdentity {
    /// VERSION.
    pub version: u32,
    /// GENCAP.
    pub gencap: u64,
    /// WQCAP.
    pub wqcap: u64,
    /// Groups.
    pub groups: u32,
    /// Engines.
    pub engines: u32,
    /// OPCAP, four qwords.
    pub opcap: [u64; 4],
    /// GRPCFG table offset.
    pub grpcfg: usize,
    /// WQCFG table offset.
    pub wqcfg: usize,
}

impl DsaIdentity {
    /// Reads the capability registers; refuses a removed device.
    pub fn read(regs: &dyn RegisterWindow) -> Result<DsaIdentity, DsaError> {
        let version = regs.read32(reg::VERSION);
        if version == u32::MAX {
            return Err(DsaError::DeviceRemoved);
        }
        let offsets = regs.read64(reg::OFFSETS);
        let mut opcap = [0u64; 4];
        for (i, qword) in opcap.iter_mut().enumerate() {
            *qword = regs.read64(reg::OPCAP + 8 * i);
        }
        Ok(DsaIdentity {
            version,
            gencap: regs.read64(reg::GENCAP),
            wqcap: regs.read64(reg::WQCAP),
            groups: grpcap::groups(regs.read64(reg::GRPCAP)),
            engines: (regs.read64(reg::ENGCAP) & 0xFF) as u32,
            opcap,
            grpcfg: offsets::grpcfg(offsets),
            wqcfg: offsets::wqcfg(offsets),
        })
    }

    /// Whether OPCAP offers `op`.
    pub fn supports(&self, op: u8) -> bool {
        let (qword, bit) = spec::opcode::opcap_position(op);
        self.opcap[qword] & bit != 0
    }

    /// WQs the device has.
    pub fn wq_count(&self) -> u32 {
        wqcap::count(self.wqcap)
    }

    /// Offset of WQ `wq`'s WQCFG entry.
    pub fn wqcfg_entry(&self, wq: u32) -> usize {
        self.wqcfg + wq as usize * wqcap::entry_size(self.wqcap)
    }
}

/// How the driver lays a device out. The default: every WQ the device has, dedicated,
/// sharing its entries evenly, with the device's largest transfer and batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct DsaLayout {
    /// WQs to configure, 1 to what the device has; 0 means all of them.
    pub wqs: usize,
    /// Entries of each WQ; 0 shares the device's total evenly.
    pub wq_size: u32,
    /// Shared WQs (ENQCMD) rather than dedicated ones (MOVDIR64B). A shared WQ needs PASIDs,
    /// which VFIO does not give a user-space driver: for the emulated device only.
    pub shared: bool,
    /// log2 of each WQ's largest transfer; 0 takes the device's.
    pub max_transfer_shift: u32,
    /// log2 of each WQ's largest batch; 0 takes the device's.
    pub max_batch_shift: u32,
}

/// One WQ as the bring-up configured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WqSettings {
    /// Its index on the device.
    pub index: u32,
    /// Entries.
    pub size: u32,
    /// Dedicated (MOVDIR64B) or shared (ENQCMD).
    pub dedicated: bool,
    /// Largest transfer of one descriptor.
    pub max_transfer: u64,
    /// Largest batch.
    pub max_batch: u32,
}

/// A device reached through its registers, with the one-command-at-a-time rule kept.
pub struct DsaRegisters {
    regs: Arc<dyn RegisterWindow>,
    identity: DsaIdentity,
    command: Mutex<()>,
    timeouts: DsaTimeouts,
}

impl DsaRegisters {
    /// Enables memory space and bus mastering (when configuration space is given) and reads
    /// the identity.
    pub fn open(
        regs: Arc<dyn RegisterWindow>,
        config_space: Option<&dyn ConfigSpace>,
        timeouts: DsaTimeouts,
    ) -> Result<DsaRegisters, DsaError> {
        if let Some(config) = config_space {
            enable_dma(config).map_err(|e| DsaError::Config(e.to_string()))?;
        }
        let identity = DsaIdentity::read(&*regs)?;
        Ok(DsaRegisters {
            regs,
            identity,
            command: Mutex::new(()),
            timeouts,
        })
    }

    /// What the device is.
    pub fn identity(&self) -> &DsaIdentity {
        &self.identity
    }

    /// The register window.
    pub fn window(&self) -> &Arc<dyn RegisterWindow> {
        &self.regs
    }

    /// Whether the registers read all-ones.
    pub fn is_removed(&self) -> bool {
        self.regs.read32(reg::GENSTS) == u32::MAX
    }

    /// GENSTS's state field, or `None` for a removed device.
    pub fn device_state(&self) -> Option<u32> {
        let value = self.regs.read32(reg::GENSTS);
        (value != u32::MAX).then_some(gensts::state(value))
    }

    /// Runs one command and waits for it: `Ok` when CMDSTATUS reports no error.
    pub fn command(&self, name: &'static str, code: u32, operand: u32) -> Result<(), DsaError> {
        let _one_at_a_time = lock_std(&self.command);
        let deadline = Instant::now().checked_add(self.timeouts.command);
        // A command still running (from before us, or a lost one) would make ours be dropped.
        self.wait_idle(deadline)?;
        self.regs.write32(reg::CMD, cmd::encode(code, operand));
        let status = self.wait_idle(deadline)?;
        match cmdsts::error(status) {
            0 => Ok(()),
            error => Err(DsaError::Command {
                command: name,
                code: error,
            }),
        }
    }

    fn wait_idle(&self, deadline: Option<Instant>) -> Result<u32, DsaError> {
        loop {
            let status = self.regs.read32(reg::CMDSTATUS);
            if status == u32::MAX {
                return Err(DsaError::DeviceRemoved);
            }
            if status & cmdsts::ACTIVE == 0 {
                return Ok(status);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(DsaError::Timeout {
                    waiting_for: "a DSA command to finish",
                });
            }
            std::thread::yield_now();
        }
    }

    /// Resets the device and programs `layout`: one group holding every configured WQ and
    /// every engine; then enables the device. WQs stay disabled until their channels start.
    pub fn configure(&self, layout: &DsaLayout) -> Result<Vec<WqSettings>, DsaError> {
        let id = self.identity;
        if id.gencap & gencap::CONFIGURABLE == 0 {
            return Err(DsaError::NotConfigurable);
        }
        let available = id.wq_count() as usize;
        let wqs = if layout.wqs == 0 {
            available
        } else {
            layout.wqs
        };
        if wqs == 0 || wqs > available || wqs > 64 {
            return Err(DsaError::BadConfig(format!(
                "{wqs} WQs asked for; the device has {available}"
            )));
        }
        if id.groups == 0 || id.engines == 0 {
            return Err(DsaError::BadConfig(
                "the device reports no group or no engine".into(),
            ));
        }
        let total = wqcap::total_size(id.wqcap);
        let size = if layout.wq_size == 0 {
            total / wqs as u32
        } else {
            layout.wq_size
        };
        if size == 0 || size as u64 * wqs as u64 > u64::from(total) {
            return Err(DsaError::BadConfig(format!(
                "{wqs} WQs of {size} entries do not fit the device's {total}"
            )));
        }
        let mode_flag = if layout.shared {
            wqcap::SHARED
        } else {
            wqcap::DEDICATED
        };
        if id.wqcap & mode_flag == 0 {
            return Err(DsaError::BadConfig(format!(
                "the device has no {} WQs",
                if layout.shared { "shared" } else { "dedicated" }
            )));
        }
        let transfer_shift = pick_shift(
            layout.max_transfer_shift,
            gencap::max_transfer_shift(id.gencap),
            "max transfer",
        )?;
        let batch_shift = pick_shift(
            layout.max_batch_shift,
            gencap::max_batch_shift(id.gencap),
            "max batch",
        )?;

        self.command("Reset Device", cmd::RESET_DEVICE, 0)?;
        match self.device_state() {
            None => return Err(DsaError::DeviceRemoved),
            Some(gensts::DISABLED) => {}
            Some(_) => {
                return Err(DsaError::Halted {
                    reset_type: gensts::reset_type(self.regs.read32(reg::GENSTS)),
                })
            }
        }
        // Zero every table entry: a reset clears them on silicon, but a driver that relies on
        // it inherits whatever a firmware or an earlier owner left where the reset does not.
        for group in 0..id.groups as usize {
            for qword in 0..grpcfg::ENTRY_SIZE / 8 {
                self.regs
                    .write64(id.grpcfg + group * grpcfg::ENTRY_SIZE + 8 * qword, 0);
            }
        }
        let entry = wqcap::entry_size(id.wqcap);
        for wq in 0..available {
            for dword in 0..entry / 4 {
                // The status dword is the device's; leave it.
                if dword * 4 != wqcfg::STATUS {
                    self.regs.write32(id.wqcfg + wq * entry + 4 * dword, 0);
                }
            }
        }
        let wq_bits: u64 = if wqs == 64 { u64::MAX } else { (1 << wqs) - 1 };
        let engine_bits: u64 = if id.engines >= 64 {
            u64::MAX
        } else {
            (1 << id.engines) - 1
        };
        self.regs.write64(id.grpcfg + grpcfg::WQS, wq_bits);
        self.regs.write64(id.grpcfg + grpcfg::ENGINES, engine_bits);
        if spec::version::major(id.version) <= 2 {
            self.regs
                .write64(id.grpcfg + grpcfg::FLAGS, grpcfg::FLAGS_TC_DEFAULT);
        }
        let mut settings = Vec::with_capacity(wqs);
        for wq in 0..wqs as u32 {
            let base = id.wqcfg_entry(wq);
            self.regs.write32(base + wqcfg::SIZE, size);
            let mut mode = wqcfg::mode(!layout.shared, 1);
            if layout.shared {
                // A shared WQ takes PASIDs; the emulated device accepts PASID 0.
                mode |= wqcfg::MODE_PASID_ENABLE;
                self.regs.write32(base + wqcfg::THRESHOLD, size);
            }
            self.regs.write32(base + wqcfg::MODE, mode);
            self.regs.write32(
                base + wqcfg::LIMITS,
                wqcfg::limits(transfer_shift, batch_shift),
            );
            // Fields the hardware fixes read back differently; what reads back is what holds.
            let limits = self.regs.read32(base + wqcfg::LIMITS);
            settings.push(WqSettings {
                index: wq,
                size: self.regs.read32(base + wqcfg::SIZE) & 0xFFFF,
                dedicated: self.regs.read32(base + wqcfg::MODE) & wqcfg::MODE_DEDICATED != 0,
                max_transfer: 1u64 << wqcfg::transfer_shift(limits),
                max_batch: 1u32 << wqcfg::batch_shift(limits),
            });
        }
        self.command("Enable Device", cmd::ENABLE_DEVICE, 0)?;
        if self.device_state() != Some(gensts::ENABLED) {
            return Err(DsaError::Timeout {
                waiting_for: "the device to report enabled",
            });
        }
        Ok(settings)
    }

    /// The state of WQ `wq`.
    pub fn wq_state(&self, wq: u32) -> WqState {
        let general = self.regs.read32(reg::GENSTS);
        if general == u32::MAX {
            return WqState::Gone;
        }
        if gensts::state(general) == gensts::HALTED {
            return WqState::Halted;
        }
        let status = self
            .regs
            .read32(self.identity.wqcfg_entry(wq) + wqcfg::STATUS);
        if wqcfg::state(status) == wqcfg::STATE_ENABLED {
            WqState::Enabled
        } else {
            WqState::Disabled
        }
    }

    /// Leaves the device reset (every WQ disabled, nothing running), as a driver does before
    /// handing the device back. Errors are ignored: the device may be gone.
    pub fn shut_down(&self) {
        let _ = self.command("Reset Device", cmd::RESET_DEVICE, 0);
    }
}

fn pick_shift(asked: u32, device: u32, what: &str) -> Result<u32, DsaError> {
    if asked == 0 {
        return Ok(device);
    }
    if asked > device {
        return Err(DsaError::BadConfig(format!(
            "{what} 2^{asked} is above the device's 2^{device}"
        )));
    }
    Ok(asked)
}

/// One WQ of a device reached through its registers.
pub struct RegisterWq {
    pub(crate) device: Arc<DsaRegisters>,
    pub(crate) index: u32,
}

impl WqControl for RegisterWq {
    fn enable(&self) -> Result<(), DsaError> {
        self.device.command("Enable WQ", cmd::ENABLE_WQ, self.index)
    }

    fn disable(&self) -> Result<(), DsaError> {
        if self.device.wq_state(self.index) != WqState::Enabled {
            return Ok(());
        }
        self.device
            .command("Disable WQ", cmd::DISABLE_WQ, cmd::wq_operand(self.index))
    }

    fn state(&self) -> WqState {
        self.device.wq_state(self.index)
    }
}
