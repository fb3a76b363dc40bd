//! PCI configuration space of the emulated DSA: the identity discovery expects (vendor 0x8086,
//! the configured device id, class 0x088000, no interrupt pin), and COMMAND, whose
//! memory-space bit gates both BARs and whose bus-master bit gates DMA: clearing it while the
//! device is enabled halts the device (`reference/dsa.md` §12). COMMAND starts with memory
//! space on and bus mastering off, as after the kernel driver let go. The rest of the space
//! past the header is plain storage; no capability list is modelled.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use super::super::config::{check_access, CONFIG_SIZE};
use super::EmulatedDsa;
use crate::dsa::spec::{CLASS_CODE, VENDOR_INTEL};
use crate::pci::{regs, ConfigSpace};
use crate::sync::lock_std;

/// Size of PCI Express extended configuration space.
/// End of the standard header, below which only COMMAND is writable.
const HEADER_END: usize = 0x40;

/// The configuration-space state of the function.
pub(super) struct PciState {
    device_id: u16,
    command: AtomicU16,
    /// Plain storage for the writable space past the header.
    other: Mutex<Box<[u8]>>,
}

impl PciState {
    pub(super) fn new(device_id: u16) -> PciState {
        PciState {
            device_id,
            command: AtomicU16::new(regs::COMMAND_MEMORY),
            other: Mutex::new(vec![0u8; CONFIG_SIZE].into_boxed_slice()),
        }
    }

    /// Whether the function may access memory (COMMAND bit 2).
    pub(super) fn bus_master(&self) -> bool {
        self.command.load(Ordering::Acquire) & regs::COMMAND_MASTER != 0
    }

    /// Whether the function answers accesses to its BARs (COMMAND bit 1).
    pub(super) fn memory_enabled(&self) -> bool {
        self.command.load(Ordering::Acquire) & regs::COMMAND_MEMORY != 0
    }

    fn read_byte(&self, offset: usize) -> u8 {
        let lane = |value: u32, base: usize| (value >> (8 * (offset - base))) as u8;
        match offset {
            0x00..=0x01 => lane(VENDOR_INTEL.into(), 0x00),
            0x02..=0x03 => lane(self.device_id.into(), 0x02),
            0x04..=0x05 => lane(self.command.load(Ordering::Acquire).into(), 0x04),
            // Class code in bytes 0x09-0x0b (programming interface, subclass, class).
            0x09..=0x0b => lane(CLASS_CODE, 0x09),
            _ if offset < HEADER_END => 0,
            _ => lock_std(&self.other)[offset],
        }
    }
}

/// The configuration space handed out by [`EmulatedDsa::config_space`].
pub(super) struct ConfigModel {
    pub(super) device: Arc<EmulatedDsa>,
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
            let (at, bits) = (offset + byte, (value >> (8 * byte)) as u8);
            match at {
                0x04..=0x05 => {
                    let shift = 8 * (at - 0x04);
                    let old = dev.pci.command.load(Ordering::Acquire);
                    let new = (old & !(0xff << shift)) | (u16::from(bits) << shift);
                    dev.pci.command.store(new, Ordering::Release);
                    if old & regs::COMMAND_MASTER != 0 && new & regs::COMMAND_MASTER == 0 {
                        dev.bus_master_cleared();
                    }
                }
                _ if at < HEADER_END => {}
                _ => lock_std(&dev.pci.other)[at] = bits,
            }
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
