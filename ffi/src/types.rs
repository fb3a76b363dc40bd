//! What C sees of an engine besides its handle: the options it is made from, the backends,
//! capabilities and removal kinds as constants, hotplug events, and a channel's counts and
//! statistics, all `#[repr(C)]` and written out by cbindgen into `include/dmaplane.h`.

use std::ffi::c_char;
use std::time::Duration;

use dmaplane::hotplug::HotplugEvent;
use dmaplane::RemovalKind;

use crate::error::of_engine;

/// `dmaplane_options.backend`: emulated IOAT devices (the default). Needs nothing.
pub const DMAPLANE_BACKEND_EMULATED: u32 = 0;
/// `dmaplane_options.backend`: real IOAT functions bound to no driver, their registers mapped
/// through sysfs `resource0`, with physical DMA addresses. Needs root (for the BAR and for
/// physical addresses) and the IOMMU off or in passthrough (`iommu=pt`): with the IOMMU
/// translating, the function is refused. A crashed process leaves the device able to write
/// into freed memory; prefer `DMAPLANE_BACKEND_VFIO`.
pub const DMAPLANE_BACKEND_PHYSICAL: u32 = 1;
/// The name `DMAPLANE_BACKEND_PHYSICAL` had before VFIO existed.
pub const DMAPLANE_BACKEND_HARDWARE: u32 = DMAPLANE_BACKEND_PHYSICAL;
/// `dmaplane_options.backend`: real IOAT functions bound to `vfio-pci`, opened through VFIO
/// with the IOMMU translating; the library maps its DMA memory into the IOMMU. Needs the IOMMU
/// on (`intel_iommu=on`), the functions bound to `vfio-pci` (`dmaplane-setup bind`), read and
/// write access to `/dev/vfio/<group>` (or the device's cdev) and a locked-memory limit that
/// covers the DMA memory. The kernel closing the device on exit stops its DMA.
pub const DMAPLANE_BACKEND_VFIO: u32 = 2;
/// `dmaplane_options.backend`: software devices whose channels do the work on the CPU that
/// polls them. Needs nothing. Besides copy (and fill, per `capabilities`) they compare,
/// generate CRC-32C, copy with CRC and dualcast.
pub const DMAPLANE_BACKEND_SOFT: u32 = 3;
/// `dmaplane_options.backend`: emulated Intel DSA devices driven by the DSA driver, each with
/// `channels_per_device` dedicated work queues (a channel per WQ). Besides copy and fill they
/// compare, generate CRC-32C, copy with CRC and dualcast (dualcast destinations must share
/// their offset within a 4 KiB page, as on the hardware).
pub const DMAPLANE_BACKEND_DSA: u32 = 4;
/// `dmaplane_options.backend`: emulated IOAT and DSA devices by turns (IOAT first), one engine
/// balancing each capability across the devices that have it.
pub const DMAPLANE_BACKEND_MIXED: u32 = 5;
/// `dmaplane_options.backend`: the kernel's DSA work queues, opened through `/dev/dsa/wqX.Y`
/// (configured with accel-config as enabled `user` WQs). Needs a CPU with MOVDIR64B (ENQCMD
/// for shared WQs), PASID enabled on the device, and `CAP_SYS_RAWIO` on current kernels.
pub const DMAPLANE_BACKEND_DSA_KERNEL: u32 = 6;

/// Capability bit: memory-to-memory copy.
pub const DMAPLANE_CAP_MEMCPY: u32 = 1 << 0;
/// Capability bit: fill with a 64-bit pattern.
pub const DMAPLANE_CAP_FILL: u32 = 1 << 1;
/// Capability bit: compare two buffers (`dmaplane_compare`).
pub const DMAPLANE_CAP_COMPARE: u32 = 1 << 2;
/// Capability bit: CRC-32C of a buffer (`dmaplane_crc32c`).
pub const DMAPLANE_CAP_CRC32C: u32 = 1 << 3;
/// Capability bit: copy with CRC-32C (`dmaplane_copy_crc`).
pub const DMAPLANE_CAP_COPY_CRC: u32 = 1 << 4;
/// Capability bit: copy to two destinations (`dmaplane_dualcast`).
pub const DMAPLANE_CAP_DUALCAST: u32 = 1 << 5;

/// `dmaplane_device_remove`: an orderly removal; operations in flight drain first.
pub const DMAPLANE_REMOVE_ORDERLY: u32 = 0;
/// `dmaplane_device_remove`: the emulated device leaves the bus at once; operations in flight
/// complete with `DMAPLANE_EREMOVED`.
pub const DMAPLANE_REMOVE_SURPRISE: u32 = 1;

/// `dmaplane_event.kind`: a device was removed.
pub const DMAPLANE_EVENT_REMOVED: u32 = 1;
/// `dmaplane_event.kind`: a device was added and the table rebalanced onto it.
pub const DMAPLANE_EVENT_ADDED: u32 = 2;
/// `dmaplane_event.kind`: a removal could not be carried out (`error` says why).
pub const DMAPLANE_EVENT_FAILED: u32 = 3;
/// `dmaplane_event.kind`: a PCI function appeared (`pci_address`); it may be added.
pub const DMAPLANE_EVENT_PCI_APPEARED: u32 = 4;

/// A table entry or channel id meaning "no channel".
pub const DMAPLANE_NO_CHANNEL: u64 = u64::MAX;

/// How to build an engine. Fill it with `dmaplane_options_init`, then change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dmaplane_options {
    /// `DMAPLANE_BACKEND_EMULATED`, `DMAPLANE_BACKEND_VFIO`, `DMAPLANE_BACKEND_PHYSICAL`,
    /// `DMAPLANE_BACKEND_SOFT`, `DMAPLANE_BACKEND_DSA`, `DMAPLANE_BACKEND_MIXED` or
    /// `DMAPLANE_BACKEND_DSA_KERNEL`.
    pub backend: u32,
    /// Possible CPUs of the per-CPU table; 0 for this machine's.
    pub cpus: u32,
    /// Emulated or software devices to start with (default 2).
    pub devices: u32,
    /// Channels per emulated device, 1 to 4 (default 1, as Xeon functions have).
    pub channels_per_device: u32,
    /// Capabilities of emulated and software devices: `DMAPLANE_CAP_MEMCPY`, optionally with
    /// `DMAPLANE_CAP_FILL` (default both). The other bits are refused here: IOAT devices have
    /// none of those operations, and software devices always have them all.
    pub capabilities: u32,
    /// Non-zero: each emulated device runs on its own thread, like hardware working beside the
    /// CPU (default). Zero: it works inline, at each doorbell.
    pub threaded: u32,
    /// log2 of the descriptors per channel ring, 6 to 16 (default 10).
    pub ring_order: u32,
    /// Non-zero: listen to kernel uevents for the removal of attached PCI functions (of use with
    /// the VFIO and physical backends; `dmaplane_engine_create` fails with `DMAPLANE_EIO` where the
    /// netlink socket cannot be opened).
    pub uevents: u32,
    /// Milliseconds an orderly removal lets operations drain before failing the rest
    /// (default 100).
    pub drain_timeout_ms: u32,
    /// VFIO backend: non-zero lets functions in VFIO no-IOMMU groups be used (the kernel must
    /// have `enable_unsafe_noiommu_mode` set), with physical addresses, as root, and without
    /// any protection from a bad descriptor. Zero (default): such functions are refused.
    pub allow_noiommu: u32,
}

impl Default for dmaplane_options {
    fn default() -> Self {
        dmaplane_options {
            backend: DMAPLANE_BACKEND_EMULATED,
            cpus: 0,
            devices: 2,
            channels_per_device: 1,
            capabilities: DMAPLANE_CAP_MEMCPY | DMAPLANE_CAP_FILL,
            threaded: 1,
            ring_order: 10,
            uevents: 0,
            drain_timeout_ms: 100,
            allow_noiommu: 0,
        }
    }
}

/// An event of the hotplug monitor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dmaplane_event {
    /// `DMAPLANE_EVENT_*`.
    pub kind: u32,
    /// The device removed or added (0 for `DMAPLANE_EVENT_PCI_APPEARED`).
    pub device: u32,
    /// Removed: non-zero for a surprise removal.
    pub surprise: u32,
    /// Removed: non-zero when the drain deadline passed and the rest were failed.
    pub forced: u32,
    /// Removed: descriptors in flight when the removal began.
    pub in_flight_at_start: u64,
    /// Removed: operations that completed successfully after the removal began.
    pub ops_drained: u64,
    /// Removed: operations completed with `DMAPLANE_EREMOVED`.
    pub ops_failed: u64,
    /// Removed: nanoseconds until the table no longer named the device.
    pub table_moved_ns: u64,
    /// Removed: nanoseconds until the channels were released; -1 when a client still held
    /// them at the deadline (they are released at its next poll).
    pub released_ns: i64,
    /// Failed: the error code.
    pub error: i32,
    /// PCI appeared: the function's address, NUL-terminated.
    pub pci_address: [c_char; 16],
}

/// A channel's reference counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dmaplane_channel_counts {
    /// Holders: table slots not yet reclaimed, clients draining on it, a private holder.
    pub client_count: u32,
    /// Slots of the current table naming it.
    pub table_count: u32,
}

/// What a channel has completed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dmaplane_channel_stats {
    /// Operations completed successfully.
    pub ops_ok: u64,
    /// Operations completed with an error.
    pub ops_failed: u64,
    /// Of those, with `DMAPLANE_EREMOVED`.
    pub ops_removed: u64,
    /// Bytes moved.
    pub bytes: u64,
}

impl From<HotplugEvent> for dmaplane_event {
    fn from(event: HotplugEvent) -> dmaplane_event {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mut out = dmaplane_event::default();
        match event {
            HotplugEvent::Removed(report) => {
                out.kind = DMAPLANE_EVENT_REMOVED;
                out.device = report.device.0;
                out.surprise = u32::from(report.kind == RemovalKind::Surprise);
                out.forced = u32::from(report.forced);
                out.in_flight_at_start = report.in_flight_at_start;
                out.ops_drained = report.ops_drained;
                out.ops_failed = report.ops_failed;
                out.table_moved_ns = nanos(report.table_moved_after);
                out.released_ns = report
                    .released_after
                    .map_or(-1, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
            }
            HotplugEvent::Added { device, .. } => {
                out.kind = DMAPLANE_EVENT_ADDED;
                out.device = device.0;
            }
            HotplugEvent::Failed { device, error } => {
                out.kind = DMAPLANE_EVENT_FAILED;
                out.device = device.0;
                out.error = of_engine(&error);
            }
            HotplugEvent::PciAppeared { bdf } => {
                out.kind = DMAPLANE_EVENT_PCI_APPEARED;
                let room = out.pci_address.len() - 1;
                for (slot, byte) in out.pci_address.iter_mut().zip(bdf.bytes().take(room)) {
                    *slot = byte as c_char;
                }
            }
        }
        out
    }
}
