//! The rig's scenarios against the simulated kernel and modelled `edu` functions: the same
//! code the guest runs against a real kernel, so a scenario is known to pass on a kernel that
//! behaves as VFIO documents before it meets the real one (and keeps running on machines
//! without QEMU).

use kvm_rig::scenarios;
use kvm_rig::sim::SimPlatform;
use kvm_rig::Platform;

fn run(name: &str) {
    run_on(name, false);
}

fn run_on(name: &str, iommufd: bool) {
    let platform = SimPlatform::new(&format!("rig-{name}-{iommufd}"), 2, 64, iommufd);
    let scenario = scenarios::named(name).unwrap();
    if let Err(why) = scenario(&platform) {
        panic!("{name} on the {}: {why}", platform.describe());
    }
}

#[test]
fn vfio_layer() {
    run("vfio_layer");
}

#[test]
fn vfio_layer_through_iommufd() {
    run_on("vfio_layer", true);
}

#[test]
fn edu_copy() {
    run("edu_copy");
}

#[test]
fn ledger() {
    run("ledger");
}

#[test]
fn iommu_fault() {
    run("iommu_fault");
}

#[test]
fn hot_removal() {
    run("hot_removal");
}

#[test]
fn every_scenario_is_run_here() {
    let here = [
        "vfio_layer",
        "edu_copy",
        "ledger",
        "iommu_fault",
        "hot_removal",
    ];
    let all: Vec<&str> = scenarios::ALL.iter().map(|(name, _)| *name).collect();
    assert_eq!(all, here);
}
