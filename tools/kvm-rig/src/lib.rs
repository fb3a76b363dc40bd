//! The KVM rig: dmaplane's real-hardware path (VFIO, the IOMMU, PCI hot-removal) run against
//! a real Linux kernel, in a guest that QEMU boots with a virtual Intel IOMMU and QEMU `edu`
//! devices behind hot-plug-capable PCI Express root ports.
//!
//! - [`scenarios`]: the tests, written once against a [`Platform`]: the VFIO layer, copies
//!   through the `edu` backend, a ledger of random copies, an IOMMU fault, and hot-removal
//!   with re-adding.
//! - [`sim`]: the platform of the simulated kernel, so the scenarios also run on any machine
//!   (`cargo test -p kvm-rig --test sim`).
//! - [`guest`]: the platform of the guest's real kernel, which the `rig-guest` binary uses
//!   inside the guest.
//! - [`host`]: what the `kvm-rig` binary does on the host: fetch the kernel and busybox from
//!   Debian's packages, build the initramfs, boot QEMU, answer the guest's requests to unplug
//!   and replug a device over QMP, and collect the results from the serial console.
//!
//! The guest and the host talk over the serial console: lines that start with [`MARK`].

pub mod guest;
pub mod host;
pub mod platform;
pub mod scenarios;
pub mod sim;

pub use platform::Platform;

/// What starts each line of the rig's own protocol on the guest's console.
pub const MARK: &str = "@@RIG";
