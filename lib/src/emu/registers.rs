//! BAR0 of the emulated device: decoding register accesses into the device block (0x00-0x7f)
//! and the channel blocks (`0x80 * (n + 1)`), and the all-ones bus of a removed device.
//!
//! Accesses must be naturally aligned and inside the 16 KiB window, as [`MmioRegion`]
//! demands of a real BAR; anything else is a driver bug and panics. Offsets that name no
//! register read as zero and ignore writes.
//!
//! [`MmioRegion`]: crate::mmio::MmioRegion

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use super::device::DeviceShared;
use super::EmulatedDevice;
use crate::ioat::spec::{chan, device, BAR_SIZE};
use crate::mmio::RegisterWindow;

/// The writable device-wide registers; the rest of the block is read-only or reserved.
#[derive(Default)]
pub(super) struct GlobalRegisters {
    genctrl: AtomicU8,
    intrctrl: AtomicU8,
    intrdelay: AtomicU16,
}

/// INTRDELAY bits 13:0 are the delay; bit 15 ("coalescing supported") reads 0 here.
const INTRDELAY_MASK: u16 = 0x3fff;

impl GlobalRegisters {
    fn read_byte(&self, dev: &DeviceShared, offset: usize) -> u8 {
        let intrdelay = self.intrdelay.load(Ordering::Relaxed).to_le_bytes();
        let dmacapability = dev.dmacapability().to_le_bytes();
        match offset {
            device::CHANCNT => dev.config.channels as u8,
            device::XFERCAP => dev.config.xfercap,
            device::GENCTRL => self.genctrl.load(Ordering::Relaxed),
            device::INTRCTRL => self.intrctrl.load(Ordering::Relaxed),
            device::CBVER => dev.config.cbver,
            0x0c..=0x0d => intrdelay[offset - device::INTRDELAY],
            0x10..=0x13 => dmacapability[offset - device::DMACAPABILITY],
            _ => 0,
        }
    }

    fn write_byte(&self, offset: usize, byte: u8) {
        match offset {
            device::GENCTRL => self.genctrl.store(byte, Ordering::Relaxed),
            device::INTRCTRL => self.intrctrl.store(byte, Ordering::Relaxed),
            0x0c..=0x0d => {
                let mut bytes = self.intrdelay.load(Ordering::Relaxed).to_le_bytes();
                bytes[offset - device::INTRDELAY] = byte;
                let value = u16::from_le_bytes(bytes) & INTRDELAY_MASK;
                self.intrdelay.store(value, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The register window handed out by [`EmulatedDevice::registers`].
pub(super) struct Bar0 {
    pub(super) device: Arc<EmulatedDevice>,
}

fn check(offset: usize, width: usize) {
    assert!(
        offset % width == 0 && offset.checked_add(width).is_some_and(|end| end <= BAR_SIZE),
        "register access of {width} bytes at {offset:#x} is misaligned or outside the 16 KiB BAR"
    );
}

impl Bar0 {
    fn read(&self, offset: usize, width: usize) -> u64 {
        check(offset, width);
        let dev = self.device.shared();
        if dev.is_removed() || !dev.pci.memory_enabled() {
            // A read that no device answers (gone, or memory decoding off) completes with
            // all bits set.
            return u64::MAX >> (64 - 8 * width);
        }
        if offset < chan::BLOCK_SIZE {
            return (0..width).fold(0u64, |value, byte| {
                value | u64::from(dev.globals.read_byte(dev, offset + byte)) << (8 * byte)
            });
        }
        match dev.channel_at(offset) {
            Some((channel, rel)) => channel.read(rel, width),
            None => 0,
        }
    }

    fn write(&self, offset: usize, width: usize, value: u64) {
        check(offset, width);
        let dev = self.device.shared();
        if dev.is_removed() || !dev.pci.memory_enabled() {
            return;
        }
        if offset < chan::BLOCK_SIZE {
            for byte in 0..width {
                dev.globals
                    .write_byte(offset + byte, (value >> (8 * byte)) as u8);
            }
            return;
        }
        if let Some((channel, rel)) = dev.channel_at(offset) {
            channel.write(dev, rel, width, value);
        }
    }
}

impl RegisterWindow for Bar0 {
    fn read8(&self, offset: usize) -> u8 {
        self.read(offset, 1) as u8
    }

    fn read16(&self, offset: usize) -> u16 {
        self.read(offset, 2) as u16
    }

    fn read32(&self, offset: usize) -> u32 {
        self.read(offset, 4) as u32
    }

    fn read64(&self, offset: usize) -> u64 {
        self.read(offset, 8)
    }

    fn write8(&self, offset: usize, value: u8) {
        self.write(offset, 1, value.into())
    }

    fn write16(&self, offset: usize, value: u16) {
        self.write(offset, 2, value.into())
    }

    fn write32(&self, offset: usize, value: u32) {
        self.write(offset, 4, value.into())
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write(offset, 8, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{EmuConfig, Fault, HostBuffer, IdentityRanges};
    use crate::ioat::spec::{chancmd, channel_base, chansts};

    fn device(channels: usize) -> (Arc<EmulatedDevice>, HostBuffer) {
        let buffer = HostBuffer::new(4096);
        // SAFETY: the buffer is returned with the device and outlives it in each test (the
        // tuple drops the device first); no descriptor ever runs.
        let memory = unsafe { IdentityRanges::new(&[(buffer.addr(), buffer.len())]) };
        let config = EmuConfig {
            channels,
            ..EmuConfig::default()
        };
        (
            EmulatedDevice::new(config, Arc::new(memory)).unwrap(),
            buffer,
        )
    }

    #[test]
    fn accesses_compose_and_split_registers_by_byte_lane() {
        let (device, _buffer) = device(2);
        let regs = device.registers();
        let ch = channel_base(1);
        // One 32-bit write at CHANCMD covers CHANCMD (0 = no command) and DMACOUNT.
        regs.write32(ch + chan::CHANCMD, 0x0005_0000);
        assert_eq!(regs.read16(ch + chan::DMACOUNT), 5);
        assert_eq!(regs.read32(ch + chan::CHANCMD), 0x0005_0000);
        // CHANCMP by halves and whole, read back by halves and whole.
        regs.write32(ch + chan::CHANCMP, 0x89ab_cdef);
        regs.write32(ch + chan::CHANCMP + 4, 0x0123_4567);
        assert_eq!(regs.read64(ch + chan::CHANCMP), 0x0123_4567_89ab_cdef);
        regs.write64(ch + chan::CHANCMP, 0x1122_3344_5566_7788);
        assert_eq!(regs.read32(ch + chan::CHANCMP + 4), 0x1122_3344);
        assert_eq!(regs.read8(ch + chan::CHANCMP + 1), 0x77);
        // CHANSTS and CDAR are read-only; CHANCTRL reads back.
        regs.write64(ch + chan::CHANSTS, 0);
        assert_eq!(regs.read64(ch + chan::CHANSTS), chansts::HALTED);
        regs.write16(ch + chan::CHANCTRL, 0x000c);
        assert_eq!(regs.read16(ch + chan::CHANCTRL), 0x000c);
        // Nothing lives past the last channel or in the reserved tail of a block.
        regs.write32(channel_base(2) + chan::CHANERR, 1);
        assert_eq!(regs.read64(channel_base(2) + chan::CHANSTS), 0);
        assert_eq!(regs.read32(ch + 0x7c), 0);
        // Device-wide INTRDELAY keeps only its 14 delay bits.
        regs.write16(device::INTRDELAY, 0xffff);
        assert_eq!(regs.read16(device::INTRDELAY), 0x3fff);
    }

    #[test]
    fn reset_reads_back_set_exactly_once_in_inline_mode() {
        let (device, _buffer) = device(1);
        let regs = device.registers();
        let at = channel_base(0) + chan::CHANCMD;
        assert_eq!(regs.read8(at), 0);
        regs.write8(at, chancmd::RESET);
        assert_eq!(regs.read8(at), chancmd::RESET);
        assert_eq!(regs.read8(at), 0);
        // Legacy and unmodelled commands are ignored.
        regs.write8(at, chancmd::START | chancmd::APPEND | chancmd::ABORT);
        assert_eq!(regs.read8(at), 0);
        assert_eq!(
            regs.read64(channel_base(0) + chan::CHANSTS),
            chansts::HALTED
        );
    }

    #[test]
    #[should_panic(expected = "misaligned or outside")]
    fn misaligned_access_is_a_driver_bug() {
        let (device, _buffer) = device(1);
        device.registers().read32(channel_base(0) + 2);
    }

    #[test]
    fn removal_turns_every_width_to_all_ones() {
        let (device, _buffer) = device(1);
        let regs = device.registers();
        device.inject(Fault::SurpriseRemoval).unwrap();
        assert_eq!(regs.read8(0x3ff), u8::MAX);
        assert_eq!(regs.read16(0x800), u16::MAX);
        assert_eq!(regs.read32(device::DMACAPABILITY), u32::MAX);
        assert_eq!(regs.read64(channel_base(0) + chan::CHAINADDR), u64::MAX);
    }
}
