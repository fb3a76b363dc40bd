//! The registers of QEMU's `edu` device, the only code its driver and its model share.
//!
//! The function (vendor 0x1234, device 0x11e8) has one 1 MiB memory BAR. Below 0x80 its
//! registers take 32-bit accesses only, from 0x80 up 32- or 64-bit ones. Its DMA engine moves
//! up to 4 KiB between bus addresses and a buffer of its own, one transfer at a time. A
//! transfer starts when the command register is written with the run bit. QEMU carries it out
//! about 100 ms later and then clears the bit. A transfer faulted by the IOMMU is not
//! reported to the device: a read brings zeros and a write lands nowhere.

/// PCI vendor id (QEMU's).
pub const VENDOR: u16 = 0x1234;
/// PCI device id.
pub const DEVICE: u16 = 0x11e8;
/// Size of BAR0.
pub const BAR_SIZE: usize = 1 << 20;

/// Identification: 0x010000ed (version 1.0, magic 0xed in the low byte).
pub const IDENT: usize = 0x00;
/// The magic in the low byte of [`IDENT`].
pub const MAGIC: u32 = 0xed;
/// Liveness check: reads back the complement of what was written.
pub const LIVENESS: usize = 0x04;
/// DMA source bus address (64-bit).
pub const DMA_SRC: usize = 0x80;
/// DMA destination bus address (64-bit).
pub const DMA_DST: usize = 0x88;
/// DMA byte count (64-bit).
pub const DMA_COUNT: usize = 0x90;
/// DMA command (64-bit): [`CMD_RUN`], [`CMD_TO_BUS`], [`CMD_IRQ`].
pub const DMA_CMD: usize = 0x98;

/// Command: start; cleared by the device when the transfer is done.
pub const CMD_RUN: u64 = 1 << 0;
/// Command: from the device's buffer to a bus address (clear: from a bus address into the
/// buffer).
pub const CMD_TO_BUS: u64 = 1 << 1;
/// Command: raise an interrupt at the end.
pub const CMD_IRQ: u64 = 1 << 2;

/// Where the device's buffer sits in its own DMA address space.
pub const BUFFER: u64 = 0x40000;
/// Its size: the largest transfer.
pub const BUFFER_SIZE: usize = 4096;
