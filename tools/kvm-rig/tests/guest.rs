//! The rig itself, as `cargo test` runs it: builds the guest (fetching Debian's kernel and
//! busybox packages once into the target directory), boots it under QEMU with a virtual
//! Intel IOMMU and two `edu` devices, runs every scenario inside against the real VFIO,
//! IOMMU and PCI hot-removal, and checks that the guest reports them all passed. Skipped,
//! with the reason, where QEMU or Debian's tools are missing.

use std::path::PathBuf;

use kvm_rig::host::{self, RigConfig, RigError};

#[test]
fn every_scenario_passes_in_a_guest_with_a_real_kernel_iommu_and_hot_removal() {
    let config = RigConfig::new(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvm-rig"),
        PathBuf::from(env!("CARGO_BIN_EXE_rig-guest")),
    );
    match host::run(&config, |line| println!("guest| {line}")) {
        Err(RigError::Skipped(why)) => println!("kvm-rig: skipped: {why}"),
        Err(e) => panic!("{e}"),
        Ok(report) => {
            let tail = report.console[report.console.len().saturating_sub(40)..].join("\n");
            assert!(
                report.failed.is_empty() && report.passed == config.tests.len(),
                "{} passed, failed: {:?}\n{tail}",
                report.passed,
                report.failed
            );
            assert_eq!(report.exit, Some(0), "{tail}");
        }
    }
}
