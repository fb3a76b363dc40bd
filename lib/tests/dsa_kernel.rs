//! The DSA kernel route against a fake sysfs and /dev tree: which work queues qualify, why the
//! others do not (each with the accel-config line that fixes it), and how opening one fails
//! where the machine cannot submit. Nothing here reaches a real `idxd` driver (there is no DSA
//! on the machines this is developed on): see the README's list of what was tested only in
//! simulation.

use std::fs;

use dmaplane::dsa::{DsaError, KernelRoute, SubmitInstructions};
use dmaplane::mem::{DmaPool, DmaPoolConfig, IovaMode};

struct Tree {
    dir: std::path::PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let dir = std::env::temp_dir().join(format!("dmaplane-dsa-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sys/bus/dsa/devices")).unwrap();
        fs::create_dir_all(dir.join("dev/dsa")).unwrap();
        Tree { dir }
    }

    fn attrs(&self, entry: &str, attrs: &[(&str, &str)]) {
        let path = self.dir.join("sys/bus/dsa/devices").join(entry);
        fs::create_dir_all(&path).unwrap();
        for (name, value) in attrs {
            fs::write(path.join(name), format!("{value}\n")).unwrap();
        }
    }

    fn device(&self, name: &str, pasid: bool) {
        self.attrs(
            name,
            &[
                ("numa_node", "1"),
                ("state", "enabled"),
                ("pasid_enabled", if pasid { "1" } else { "0" }),
            ],
        );
    }

    fn wq(&self, id: &str, state: &str, kind: &str, mode: &str) {
        self.attrs(
            id,
            &[
                ("state", state),
                ("type", kind),
                ("mode", mode),
                ("name", "dmaplane0"),
                ("size", "16"),
                ("max_batch_size", "32"),
                ("max_transfer_size", "2097152"),
            ],
        );
        fs::write(self.dir.join("dev/dsa").join(id), vec![0u8; 4096]).unwrap();
    }

    fn route(&self) -> KernelRoute {
        KernelRoute::new(self.dir.join("sys"), self.dir.join("dev"))
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn pool(mode: IovaMode) -> DmaPool {
    DmaPool::new(DmaPoolConfig {
        iova_mode: mode,
        ..DmaPoolConfig::default()
    })
    .unwrap()
}

#[test]
fn scan_reads_every_work_queue_with_its_attributes() {
    let tree = Tree::new("scan");
    tree.device("dsa0", true);
    tree.wq("wq0.1", "enabled", "user", "shared");
    tree.wq("wq0.0", "enabled", "user", "dedicated");
    tree.attrs("engine0.0", &[("group_id", "0")]);
    let wqs = tree.route().scan().unwrap();
    assert_eq!(wqs.len(), 2, "engines and groups are not WQs");
    let first = &wqs[0];
    assert_eq!(
        (first.id.as_str(), first.index, first.device.as_str()),
        ("wq0.0", 0, "dsa0")
    );
    assert!(first.dedicated && first.user && first.enabled && first.pasid);
    assert_eq!(
        (first.size, first.max_batch, first.max_transfer),
        (16, 32, 2 << 20)
    );
    assert_eq!(first.numa_node, Some(1));
    assert_eq!(first.label, "dmaplane0");
    assert!(first.node.ends_with("dsa/wq0.0"));
    assert!(!wqs[1].dedicated);
    assert!(wqs.iter().all(|wq| wq.unusable().is_none()));
}

#[test]
fn no_dsa_bus_means_no_work_queues() {
    let route = KernelRoute::new("/nonexistent-sysfs", "/nonexistent-dev");
    assert_eq!(route.scan().unwrap(), Vec::new());
}

#[test]
fn unusable_work_queues_are_refused_with_the_fix() {
    let tree = Tree::new("refuse");
    tree.device("dsa0", true);
    tree.device("dsa1", false);
    tree.wq("wq0.0", "disabled", "user", "dedicated");
    tree.wq("wq0.1", "enabled", "kernel", "dedicated");
    tree.wq("wq1.0", "enabled", "user", "dedicated");
    let route = tree.route();
    let wqs = route.scan().unwrap();
    let pool = pool(IovaMode::Va);
    let why = |i: usize| match route.open(&wqs[i], &pool) {
        Err(DsaError::Kernel(why)) => why,
        other => panic!("{} should be refused, got {other:?}", wqs[i].id),
    };
    assert!(
        why(0).contains("accel-config enable-wq dsa0/wq0.0"),
        "{}",
        why(0)
    );
    assert!(why(1).contains("--type=user"), "{}", why(1));
    assert!(why(2).contains("PASID"), "{}", why(2));
}

#[test]
fn a_work_queue_needs_virtual_addresses_and_the_submit_instruction() {
    let tree = Tree::new("open");
    tree.device("dsa0", true);
    tree.wq("wq0.0", "enabled", "user", "dedicated");
    let route = tree.route();
    let wq = &route.scan().unwrap()[0];
    // A pool with IOVAs of its own cannot serve shared virtual memory.
    match route.open(wq, &pool(IovaMode::Scrambled { seed: 3 })) {
        Err(DsaError::Addressing(why)) => assert!(why.contains("IovaMode::Va"), "{why}"),
        other => panic!("a scrambled pool should be refused, got {other:?}"),
    }
    // The instruction check comes before the character device is touched.
    let result = route.open(wq, &pool(IovaMode::Va));
    if SubmitInstructions::detect().movdir64b {
        // A regular file stands in for the node: mapping it works, nothing is written.
        assert!(result.is_ok(), "{:?}", result.err());
    } else {
        match result {
            Err(DsaError::Unsupported(why)) => assert!(why.contains("MOVDIR64B"), "{why}"),
            other => panic!("expected the MOVDIR64B refusal, got {:?}", other.err()),
        }
    }
}
