//! PCI configuration space of the emulated function: the identity a discovery pass expects,
//! COMMAND (whose memory-space bit gates every BAR access and whose bus-master bit gates all of
//! the device's memory accesses), a PCI Express capability whose Device Control starts with
//! Relaxed Ordering enabled (as after reset; drivers clear it), and the CHANERR_INT /
//! CHANERRMASK_INT pair at 0x180 that drivers must clear on parts before v3.3 (and on
//! Skylake-SP).
//!
//! Everything is byte-addressed underneath, so 16- and 32-bit accesses at any naturally
//! aligned offset compose the same bytes, as on a real function.

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::EmulatedDevice;
use crate::ioat::spec::{cbver, config};
use crate::pci::{regs, ConfigSpace, INTEL_VENDOR};
use crate::sync::lock_std;

/// Size of PCI Express extended configuration space.
pub(super) const CONFIG_SIZE: usize = 4096;
/// End of the standard header, below which only COMMAND is writable.
const HEADER_END: usize = 0x40;
/// Class code 0x08 (system peripheral), subclass 0x80 (other), as IOAT functions report.
const CLASS: [u8; 3] = [0x00, 0x80, 0x08];
/// COMMAND after the kernel driver let go: memory space on, bus mastering off.
const COMMAND_AT_START: u16 = regs::COMMAND_MEMORY;
/// Where the PCI Express capability sits (the only capability in the list).
const EXP_CAP: usize = 0x90;
/// Device Control after reset: max payload 128 B, max read request 512 B, Relaxed Ordering and
/// No Snoop enabled.
const DEVCTL_AT_START: u16 = 0x2810;

/// The configuration-space state of one emulated function.
pub(super) struct PciState {
    device_id: u16,
    command: AtomicU16,
    devctl: AtomicU16,
    chanerr_int: AtomicU32,
    chanerrmask_int: AtomicU32,
    /// Plain storage for the rest of the writable space (capabilities, scratch).
    other: Mutex<Box<[u8]>>,
}

impl PciState {
    pub(super) fn new(version: u8, device_id: Option<u16>) -> PciState {
        // A function of a platform with that version (reference/ioat-v3.md §4.1).
        let device_id = device_id.unwrap_or(match version {
            cbver::V3_2 => 0x6f20,
            cbver::V3_3 => 0x6f50,
            _ => 0x0b00,
        });
        PciState {
            device_id,
            command: AtomicU16::new(COMMAND_AT_START),
            devctl: AtomicU16::new(DEVCTL_AT_START),
            chanerr_int: AtomicU32::new(0),
            chanerrmask_int: AtomicU32::new(0),
            other: Mutex::new(vec![0u8; CONFIG_SIZE].into_boxed_slice()),
        }
    }

    /// Whether the function may access memory (COMMAND bit 2).
    pub(super) fn bus_master(&self) -> bool {
        self.command.load(Ordering::Acquire) & regs::COMMAND_MASTER != 0
    }

    /// Whether the function answers accesses to its BAR (COMMAND bit 1).
    pub(super) fn memory_enabled(&self) -> bool {
        self.command.load(Ordering::Acquire) & regs::COMMAND_MEMORY != 0
    }

    /// Whether Device Control still lets the function use Relaxed Ordering.
    pub(super) fn relaxed_ordering(&self) -> bool {
        self.devctl.load(Ordering::Acquire) & regs::EXP_DEVCTL_RELAX_EN != 0
    }

    pub(super) fn device_id(&self) -> u16 {
        self.device_id
    }

    /// Mirrors channel error bits into CHANERR_INT.
    pub(super) fn raise(&self, error: u32) {
        self.chanerr_int.fetch_or(error, Ordering::AcqRel);
    }

    pub(super) fn clear_chanerr_int(&self) {
        self.chanerr_int.store(0, Ordering::Release);
    }

    pub(super) fn chanerr_int(&self) -> u32 {
        self.chanerr_int.load(Ordering::Acquire)
    }

    fn read_byte(&self, offset: usize) -> u8 {
        let lane = |value: u64, base: usize| (value >> (8 * (offset - base))) as u8;
        match offset {
            0x00..=0x01 => lane(INTEL_VENDOR.into(), 0x00),
            0x02..=0x03 => lane(self.device_id.into(), 0x02),
            0x04..=0x05 => lane(self.command.load(Ordering::Acquire).into(), 0x04),
            0x06..=0x07 => lane(regs::STATUS_CAP_LIST.into(), 0x06),
            0x09..=0x0b => CLASS[offset - 0x09],
            regs::CAPABILITIES => EXP_CAP as u8,
            _ if offset < HEADER_END => 0,
            // The capability header (id, next: none) and PCI Express Capabilities (version 2).
            EXP_CAP => regs::CAP_ID_EXP,
            0x91 => 0,
            0x92..=0x93 => lane(0x0002, 0x92),
            0x98..=0x99 => lane(self.devctl.load(Ordering::Acquire).into(), 0x98),
            0x180..=0x183 => lane(self.chanerr_int().into(), config::CHANERR_INT),
            0x184..=0x187 => lane(
                self.chanerrmask_int.load(Ordering::Acquire).into(),
                config::CHANERRMASK_INT,
            ),
            _ => lock_std(&self.other)[offset],
        }
    }

    fn write_byte(&self, offset: usize, byte: u8) {
        let shift = |base: usize| 8 * (offset - base);
        match offset {
            0x04..=0x05 => {
                let shift = shift(0x04);
                let old = self.command.load(Ordering::Acquire);
                let new = (old & !(0xff << shift)) | (u16::from(byte) << shift);
                self.command.store(new, Ordering::Release);
            }
            _ if offset < HEADER_END => {}
            0x98..=0x99 => {
                let shift = shift(0x98);
                let old = self.devctl.load(Ordering::Acquire);
                let new = (old & !(0xff << shift)) | (u16::from(byte) << shift);
                self.devctl.store(new, Ordering::Release);
            }
            EXP_CAP..=0x97 => {}
            0x180..=0x183 => {
                let clear = u32::from(byte) << shift(config::CHANERR_INT);
                self.chanerr_int.fetch_and(!clear, Ordering::AcqRel);
            }
            0x184..=0x187 => {
                let shift = shift(config::CHANERRMASK_INT);
                let old = self.chanerrmask_int.load(Ordering::Acquire);
                let new = (old & !(0xff << shift)) | (u32::from(byte) << shift);
                self.chanerrmask_int.store(new, Ordering::Release);
            }
            _ => lock_std(&self.other)[offset] = byte,
        }
    }
}

/// Refuses a configuration-space access that is misaligned or runs past 4 KiB, as the
/// sysfs `config` file does (shared by the IOAT and DSA models).
pub(super) fn check_access(offset: usize, width: usize) -> io::Result<()> {
    if offset % width != 0 || offset + width > CONFIG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("config access of {width} bytes at {offset:#x} is misaligned or past 4 KiB"),
        ));
    }
    Ok(())
}

/// The configuration space handed out by [`EmulatedDevice::config_space`].
pub(super) struct ConfigModel {
    pub(super) device: Arc<EmulatedDevice>,
}

impl ConfigModel {
    fn read(&self, offset: usize, width: usize) -> io::Result<u32> {
        check_access(offset, width)?;
        let dev = self.device.shared();
        if dev.is_removed() {
            return Ok(u32::MAX >> (32 - 8 * width));
        }
        Ok((0..width).fold(0u32, |value, byte| {
            value | u32::from(dev.pci.read_byte(offset + byte)) << (8 * byte)
        }))
    }

    fn write(&self, offset: usize, width: usize, value: u32) -> io::Result<()> {
        check_access(offset, width)?;
        let dev = self.device.shared();
        if dev.is_removed() {
            return Ok(());
        }
        for byte in 0..width {
            dev.pci
                .write_byte(offset + byte, (value >> (8 * byte)) as u8);
        }
        Ok(())
    }
}

impl ConfigSpace for ConfigModel {
    fn read16(&self, offset: usize) -> io::Result<u16> {
        self.read(offset, 2).map(|value| value as u16)
    }

    fn write16(&self, offset: usize, value: u16) -> io::Result<()> {
        self.write(offset, 2, value.into())
    }

    fn read32(&self, offset: usize) -> io::Result<u32> {
        self.read(offset, 4)
    }

    fn write32(&self, offset: usize, value: u32) -> io::Result<()> {
        self.write(offset, 4, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{EmuConfig, Fault, HostBuffer, IdentityRanges};

    fn space() -> (Arc<EmulatedDevice>, Arc<dyn ConfigSpace>, HostBuffer) {
        let buffer = HostBuffer::new(4096);
        // SAFETY: the buffer outlives the device (dropped after it in each test); no
        // descriptor ever runs.
        let memory = unsafe { IdentityRanges::new(&[(buffer.addr(), buffer.len())]) };
        let device = EmulatedDevice::new(EmuConfig::default(), Arc::new(memory)).unwrap();
        let pci = device.config_space();
        (device, pci, buffer)
    }

    #[test]
    fn chanerr_int_clears_per_written_bit_and_the_header_is_read_only() {
        let (device, pci, _buffer) = space();
        device.shared().pci.raise(0x0000_0901);
        assert_eq!(pci.read32(config::CHANERR_INT).unwrap(), 0x901);
        pci.write16(config::CHANERR_INT, 0x0100).unwrap();
        assert_eq!(pci.read32(config::CHANERR_INT).unwrap(), 0x801);
        pci.write32(config::CHANERR_INT, 0).unwrap();
        assert_eq!(pci.read32(config::CHANERR_INT).unwrap(), 0x801);
        pci.write32(config::CHANERRMASK_INT, 0x3e07).unwrap();
        assert_eq!(pci.read16(config::CHANERRMASK_INT).unwrap(), 0x3e07);
        assert_eq!(pci.read32(config::CHANERR_INT).unwrap(), 0x801);
        // Identity does not change; COMMAND does; the rest of the space is storage.
        pci.write32(0, 0).unwrap();
        assert_eq!(pci.read16(0).unwrap(), INTEL_VENDOR);
        assert!(!device.shared().bus_master());
        pci.write16(config::COMMAND, 0x0006).unwrap();
        assert!(device.shared().bus_master());
        pci.write32(0x200, 0xdead_beef).unwrap();
        assert_eq!(pci.read16(0x202).unwrap(), 0xdead);
        assert!(pci.read16(CONFIG_SIZE).is_err());
        assert!(pci.read16(0x101).is_err());
    }

    #[test]
    fn a_removed_function_reads_all_ones_and_ignores_writes() {
        let (device, pci, _buffer) = space();
        pci.write16(config::COMMAND, 0x0006).unwrap();
        device.inject(Fault::SurpriseRemoval).unwrap();
        assert_eq!(pci.read16(config::COMMAND).unwrap(), u16::MAX);
        assert_eq!(pci.read32(0).unwrap(), u32::MAX);
        pci.write16(config::COMMAND, 0).unwrap();
        assert!(device.shared().bus_master(), "the write never arrived");
    }
}
