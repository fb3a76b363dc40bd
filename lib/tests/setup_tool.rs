//! `dmaplane-setup` against a fake sysfs tree: what `status` reports, the writes `bind`,
//! `unbind` and `reset` make (and that `--dry-run` makes none), refusals that leave the tree
//! untouched, hugepage reservation and the non-root instructions.

use std::process::{Command, Output};

mod common;
use dmaplane::pci::fake::FakeSysfs;

const IOAT: &str = "0000:00:04.0";
const IOAT_2: &str = "0000:00:04.1";
const DSA: &str = "0000:6a:01.0";

/// Runs the tool on `tree` with `args`.
fn tool(tree: &FakeSysfs, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmaplane-setup"))
        .arg("--sysfs")
        .arg(&tree.root)
        .args(args)
        .output()
        .expect("the tool runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every regular file under `tree` with its contents, to tell whether anything was written.
fn snapshot(tree: &FakeSysfs) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(&entry.path(), out);
            } else if kind.is_file() {
                out.push((
                    entry.path().display().to_string(),
                    std::fs::read(entry.path()).unwrap(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(&tree.root, &mut out);
    out
}

/// Two IOAT functions on ioatdma in their own groups, a DSA function on vfio-pci with a cdev,
/// and a SATA controller that is neither.
fn machine(name: &str) -> FakeSysfs {
    let tree = FakeSysfs::new(name);
    tree.add_function(IOAT, 0x0b00, Some("ioatdma"), Some(12), None);
    tree.add_function(IOAT_2, 0x0b00, Some("ioatdma"), Some(13), None);
    tree.add_function(DSA, 0x0b25, Some("vfio-pci"), Some(40), Some("vfio3"));
    tree.add_function("0000:00:17.0", 0x2826, Some("ahci"), Some(14), None);
    tree
}

#[test]
fn status_lists_each_dma_function_with_its_driver_node_group_and_next_step() {
    let tree = machine("tool-status");
    let output = tool(&tree, &["status"]);
    assert!(output.status.success());
    let (out, _) = text(&output);
    assert!(out.contains("IOMMU: on"), "{out}");
    assert!(out.contains("vfio-pci loaded"), "{out}");
    let row = |bdf: &str| {
        out.lines()
            .find(|l| l.starts_with(bdf))
            .unwrap_or_else(|| panic!("{bdf} not listed:\n{out}"))
            .to_string()
    };
    let ioat = row(IOAT);
    for field in [
        "IOAT",
        "0x0b00",
        "ioatdma",
        "12 (DMA)",
        "dmaplane-setup bind",
    ] {
        assert!(ioat.contains(field), "{field:?} missing from {ioat:?}");
    }
    let dsa = row(DSA);
    for field in [
        "DSA",
        "0x0b25",
        "vfio-pci",
        "40 (DMA)",
        "vfio3",
        "ready for the VFIO",
    ] {
        assert!(dsa.contains(field), "{field:?} missing from {dsa:?}");
    }
    assert!(!out.contains("0000:00:17.0"), "not a DMA engine:\n{out}");
    assert!(out.contains("Hugepages 2048kB: 0 reserved"), "{out}");
    assert!(out.contains("Locked-memory limit"), "{out}");

    // Negative control: the same tree without its IOMMU groups says the IOMMU is off.
    std::fs::remove_dir_all(tree.root.join("kernel/iommu_groups")).unwrap();
    let (out, _) = text(&tool(&tree, &[]));
    assert!(out.contains("IOMMU: off"), "{out}");
}

#[test]
fn bind_dry_run_prints_the_writes_and_makes_none() {
    let tree = machine("tool-dry");
    let before = snapshot(&tree);
    let output = tool(&tree, &["--dry-run", "bind"]);
    assert!(output.status.success(), "{:?}", text(&output));
    let (out, _) = text(&output);
    let root = tree.root.display();
    for bdf in [IOAT, IOAT_2] {
        let expected = [
            format!("{bdf}: would echo 'vfio-pci' > {root}/bus/pci/devices/{bdf}/driver_override"),
            format!("{bdf}: would echo '{bdf}' > {root}/bus/pci/drivers/ioatdma/unbind"),
            format!("{bdf}: would echo '{bdf}' > {root}/bus/pci/drivers_probe"),
        ];
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(bdf)).collect();
        assert_eq!(lines, expected, "{out}");
    }
    assert!(
        !out.contains(DSA),
        "the DSA function is not IOAT and is on vfio-pci already"
    );
    assert_eq!(snapshot(&tree), before, "a dry run writes nothing");
}

#[test]
fn bind_writes_the_override_then_unbinds_then_probes_and_reports_what_the_kernel_did() {
    let tree = machine("tool-bind");
    let output = tool(&tree, &["bind", IOAT]);
    let (out, err) = text(&output);
    assert!(out.contains(&format!("{IOAT}: echo 'vfio-pci' >")), "{out}");
    assert_eq!(
        tree.read(&format!("bus/pci/devices/{IOAT}/driver_override")),
        "vfio-pci\n"
    );
    assert_eq!(
        tree.read("bus/pci/drivers/ioatdma/unbind"),
        format!("{IOAT}\n")
    );
    assert_eq!(tree.read("bus/pci/drivers_probe"), format!("{IOAT}\n"));
    // Only the one named.
    assert_eq!(
        tree.read(&format!("bus/pci/devices/{IOAT_2}/driver_override")),
        "\n"
    );
    // A fake tree has no kernel to move the driver link: the tool notices and fails.
    assert!(!output.status.success());
    assert!(
        err.contains("the kernel left it on ioatdma instead of vfio-pci"),
        "{err}"
    );

    // Where the kernel did bind it, the tool says so and succeeds.
    tree.bind(IOAT, "vfio-pci");
    let output = tool(&tree, &["bind", IOAT]);
    let (out, _) = text(&output);
    assert!(output.status.success());
    assert!(
        out.contains(&format!("{IOAT}: already on vfio-pci")),
        "{out}"
    );
}

#[test]
fn bind_notes_what_will_still_keep_vfio_from_opening_the_function() {
    let tree = FakeSysfs::new("tool-notes");
    tree.add_function(IOAT, 0x0b00, Some("ioatdma"), None, None);
    // A second function in IOAT_2's group, on a kernel driver.
    tree.add_function(IOAT_2, 0x0b00, Some("ioatdma"), Some(20), None);
    tree.add_function("0000:00:04.7", 0x2826, Some("ahci"), None, None);
    std::os::unix::fs::symlink(
        tree.root.join("bus/pci/devices/0000:00:04.7"),
        tree.root
            .join("kernel/iommu_groups/20/devices/0000:00:04.7"),
    )
    .unwrap();
    let (out, _) = text(&tool(&tree, &["--dry-run", "bind"]));
    let note = |bdf: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{bdf}: note:")))
            .unwrap_or_else(|| panic!("no note for {bdf}:\n{out}"))
            .to_string()
    };
    assert!(note(IOAT).contains("intel_iommu=on"), "{out}");
    let group = note(IOAT_2);
    assert!(
        group.contains("0000:00:04.7") && group.contains("ahci"),
        "{group}"
    );
}

#[test]
fn refusals_name_the_fix_and_leave_the_tree_untouched() {
    let tree = machine("tool-refuse");
    let before = snapshot(&tree);

    let output = tool(&tree, &["bind", "0000:00:17.0"]);
    assert!(!output.status.success());
    assert!(text(&output).1.contains("is not an IOAT or DSA function"));

    tree.unload("vfio-pci");
    let before_unloaded = snapshot(&tree);
    let output = tool(&tree, &["bind", IOAT]);
    assert!(!output.status.success());
    assert!(
        text(&output).1.contains("modprobe vfio-pci"),
        "{:?}",
        text(&output)
    );
    assert_eq!(snapshot(&tree), before_unloaded);

    let output = tool(&tree, &["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).1.contains("usage:"));
    assert_eq!(
        snapshot(&tree).len(),
        before.len() - 3,
        "only the unloaded driver's files went"
    );
}

#[test]
fn unbind_and_reset_move_functions_off_and_back_to_their_kernel_drivers() {
    let tree = machine("tool-reset");
    // Unbind every IOAT function bound to a driver, for the physical mode.
    let (out, _) = text(&tool(&tree, &["unbind"]));
    assert_eq!(
        tree.read(&format!("bus/pci/devices/{IOAT_2}/driver_override")),
        "\n"
    );
    assert_eq!(
        tree.read("bus/pci/drivers/ioatdma/unbind"),
        format!("{IOAT_2}\n")
    );
    assert!(!out.contains("drivers_probe"), "nothing to bind:\n{out}");

    // Back to the kernel: the DSA function goes to idxd, which is not loaded here.
    let output = tool(&tree, &["reset", DSA]);
    assert!(!output.status.success());
    assert!(text(&output).1.contains("modprobe idxd"));
    std::fs::create_dir_all(tree.root.join("bus/pci/drivers/idxd")).unwrap();
    let (out, _) = text(&tool(&tree, &["reset", DSA]));
    assert!(
        out.contains(&format!("{DSA}: echo '' > ")) && out.contains("vfio-pci/unbind"),
        "{out}"
    );
    assert_eq!(
        tree.read(&format!("bus/pci/devices/{DSA}/driver_override")),
        "\n",
        "override cleared"
    );
    assert_eq!(
        tree.read("bus/pci/drivers/vfio-pci/unbind"),
        format!("{DSA}\n")
    );
    assert_eq!(tree.read("bus/pci/drivers_probe"), format!("{DSA}\n"));
}

#[test]
fn hugepages_are_reserved_per_machine_or_per_node_and_a_short_reservation_fails() {
    let tree = machine("tool-huge");
    let (out, _) = text(&tool(&tree, &["--dry-run", "hugepages", "64"]));
    assert!(out.contains("would echo '64' >"), "{out}");
    assert_eq!(
        tree.read("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "0\n"
    );

    let output = tool(&tree, &["hugepages", "64"]);
    assert!(output.status.success(), "{:?}", text(&output));
    assert_eq!(
        tree.read("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "64\n"
    );

    let output = tool(&tree, &["hugepages", "8", "--node", "0"]);
    assert!(output.status.success());
    assert_eq!(
        tree.read("devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"),
        "8\n"
    );

    // No 1 GiB pages on this kernel, and no node 3.
    for args in [
        &["hugepages", "2", "--size", "1G"][..],
        &["hugepages", "2", "--node", "3"][..],
    ] {
        let output = tool(&tree, args);
        assert!(!output.status.success(), "{args:?}");
        assert!(text(&output).1.contains("does not exist"), "{args:?}");
    }
}

#[test]
fn permissions_name_the_group_nodes_cdevs_and_memlock_for_the_user() {
    let tree = machine("tool-perm");
    let (out, _) = text(&tool(&tree, &["permissions", "alice"]));
    assert!(out.contains("chown alice /dev/vfio/40"), "{out}");
    assert!(out.contains("chown alice /dev/vfio/devices/vfio3"), "{out}");
    assert!(out.contains("alice - memlock unlimited"), "{out}");
    assert!(!out.contains("/dev/vfio/12"), "not on vfio-pci:\n{out}");
}
