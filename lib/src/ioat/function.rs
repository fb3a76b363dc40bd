//! An IOAT function as a whole, before any channel starts: enabling it in configuration space
//! (memory space and bus mastering on, Relaxed Ordering off) and reading what its registers say
//! (version, channels, capabilities), with the Skylake-SP version quirk applied.
//!
//! Relaxed Ordering lets a function's writes pass each other on the way to memory, so the
//! completion word could arrive before the data it reports; Linux clears it at probe, and so
//! does this. Bus mastering must be on for any descriptor fetch, memory space for any register
//! access; a VFIO open leaves bus mastering off and a reset of the function may clear both.

use super::error::IoatError;
use super::spec::{self, cbver, device};
use crate::mem::{DmaPool, IovaMode};
use crate::mmio::{DmaAddressing, RegisterWindow};
use crate::pci::{find_capability, regs, ConfigSpace};

/// What a function's device registers say about it, read once at probe and at channel start.
pub(crate) struct Identity {
    /// The version to act on: CBVER, except that Skylake-SP counts as v3.2.
    pub(crate) version: u8,
    /// Usable channels: CHANCNT, capped at what v3 functions can expose.
    pub(crate) channels: usize,
    /// DMACAPABILITY offers block fill.
    pub(crate) fill_supported: bool,
    /// Largest transfer of one descriptor.
    pub(crate) max_transfer: u64,
}

impl Identity {
    /// Reads the registers; refuses a removed device and parts older than v3.
    pub(crate) fn read(
        regs: &dyn RegisterWindow,
        device_id: Option<u16>,
    ) -> Result<Identity, IoatError> {
        let version = regs.read8(device::CBVER);
        if version == u8::MAX {
            return Err(IoatError::DeviceRemoved);
        }
        if version < cbver::V3_0 {
            return Err(IoatError::UnsupportedVersion(version));
        }
        Ok(Identity {
            version: device_id.map_or(version, |id| spec::effective_version(version, id)),
            channels: usize::from(regs.read8(device::CHANCNT) & device::CHANCNT_MASK)
                .min(spec::MAX_CHANNELS),
            fill_supported: regs.read32(device::DMACAPABILITY) & spec::dmacap::FILL != 0,
            max_transfer: spec::max_transfer(regs.read8(device::XFERCAP)),
        })
    }
}

/// Refuses a pool whose IOVAs the device behind `registers` would not understand: each way of
/// reaching a function fixes what its DMA addresses mean.
pub(crate) fn check_addressing(
    registers: &dyn RegisterWindow,
    pool: &DmaPool,
) -> Result<(), IoatError> {
    let mode = pool.iova_mode();
    let refuse = |why: &str| {
        Err(IoatError::Addressing(format!(
            "{why} (the pool is {mode:?})"
        )))
    };
    match registers.addressing() {
        DmaAddressing::Emulated => Ok(()),
        DmaAddressing::Physical {
            iommu_translating: true,
        } => refuse(
            "an IOMMU translates this function's DMA, so physical addresses would fault: \
             open it through VFIO (bind it to vfio-pci), or boot with iommu=pt",
        ),
        DmaAddressing::Physical { .. } if mode != IovaMode::Physical => refuse(
            "registers mapped through sysfs: the device sees bus addresses, so the pool \
             must use IovaMode::Physical",
        ),
        DmaAddressing::Vfio { noiommu: true, .. } if mode != IovaMode::Physical => {
            refuse("VFIO's no-IOMMU mode translates nothing: the pool must use IovaMode::Physical")
        }
        DmaAddressing::Vfio {
            iommu,
            noiommu: false,
        } if mode != IovaMode::Mapped || !pool.iommus().contains(&iommu) => refuse(
            "opened through VFIO: the pool must be IovaMode::Mapped and attached to the \
             function's IOMMU context (DmaPool::attach_iommu)",
        ),
        DmaAddressing::Physical { .. } | DmaAddressing::Vfio { .. } => Ok(()),
    }
}

/// Enables the function and reads its identity. Without configuration space (a test driving
/// registers alone) only the registers are read.
pub(crate) fn bring_up(
    registers: &dyn RegisterWindow,
    config_space: Option<&dyn ConfigSpace>,
) -> Result<Identity, IoatError> {
    let device_id = match config_space {
        Some(config) => Some(enable(config).map_err(|e| IoatError::Config(e.to_string()))?),
        None => None,
    };
    Identity::read(registers, device_id)
}

/// Memory space and bus mastering on, Relaxed Ordering off; returns the device id.
fn enable(config: &dyn ConfigSpace) -> std::io::Result<u16> {
    let wanted = regs::COMMAND_MEMORY | regs::COMMAND_MASTER;
    let command = config.read16(regs::COMMAND)?;
    if command & wanted != wanted {
        config.write16(regs::COMMAND, command | wanted)?;
    }
    if let Some(exp) = find_capability(config, regs::CAP_ID_EXP)? {
        let devctl = config.read16(exp + regs::EXP_DEVCTL)?;
        if devctl & regs::EXP_DEVCTL_RELAX_EN != 0 {
            config.write16(exp + regs::EXP_DEVCTL, devctl & !regs::EXP_DEVCTL_RELAX_EN)?;
        }
    }
    config.read16(regs::DEVICE_ID)
}
