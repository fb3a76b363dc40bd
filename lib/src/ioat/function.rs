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
use crate::mem::DmaPool;
use crate::mmio::RegisterWindow;
use crate::pci::{enable_dma, ConfigSpace};

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

/// Refuses a pool whose IOVAs the device behind `registers` would not understand.
pub(crate) fn check_addressing(
    registers: &dyn RegisterWindow,
    pool: &DmaPool,
) -> Result<(), IoatError> {
    crate::mmio::check_addressing(registers, pool).map_err(IoatError::Addressing)
}

/// Enables the function and reads its identity. Without configuration space (a test driving
/// registers alone) only the registers are read.
pub(crate) fn bring_up(
    registers: &dyn RegisterWindow,
    config_space: Option<&dyn ConfigSpace>,
) -> Result<Identity, IoatError> {
    let device_id = match config_space {
        Some(config) => Some(enable_dma(config).map_err(|e| IoatError::Config(e.to_string()))?),
        None => None,
    };
    Identity::read(registers, device_id)
}
