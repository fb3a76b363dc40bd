//! `dmaplane-setup`: gets a machine ready for dmaplane's real-hardware modes, as SPDK's
//! `setup.sh` and DPDK's `dpdk-devbind.py` do for theirs. It lists the IOAT and DSA functions
//! with their driver, NUMA node and IOMMU group; binds them to `vfio-pci`, unbinds them, or gives
//! them back to their kernel driver; reserves hugepages; and prints what a user other than root
//! needs. `--dry-run` prints every write instead of making it; `--sysfs` points it at another
//! tree (a fake one, in the tests).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dmaplane::pci::binding::{self, SysfsWrite, Target};
use dmaplane::pci::{EngineKind, PciFunction, Sysfs};

const USAGE: &str = "usage: dmaplane-setup [--sysfs DIR] [--dry-run] [COMMAND [ARGS]]

Gets IOAT (and DSA) functions ready for dmaplane's VFIO and physical modes.

Commands:
  status                the IOMMU, VFIO, each IOAT and DSA function (driver, NUMA
                        node, IOMMU group, VFIO cdev) and what it still needs,
                        hugepages, the locked-memory limit (the default command)
  bind [BDF...]         bind to vfio-pci for the VFIO mode (default: every IOAT
                        function not bound to it)
  unbind [BDF...]       unbind from every driver, for the physical mode (default:
                        every IOAT function bound to one)
  reset [BDF...]        give back to the kernel's driver, ioatdma or idxd
                        (default: every IOAT and DSA function not on it)
  hugepages COUNT [--size 2M|1G] [--node N]
                        reserve COUNT hugepages (on NUMA node N only, if given)
  permissions [USER]    what USER (default: $SUDO_USER, else $USER) needs to use
                        the functions bound to vfio-pci without root

Options:
  --sysfs DIR           where sysfs is (default /sys)
  --dry-run             print the writes instead of making them
  --help                this text

Binding, unbinding and reserving hugepages need root.";

struct Options {
    sysfs: Sysfs,
    dry_run: bool,
    command: Command,
}

enum Command {
    Status,
    Move {
        target: Target,
        bdfs: Vec<String>,
    },
    Hugepages {
        count: u64,
        size_kb: u64,
        node: Option<u32>,
    },
    Permissions {
        user: String,
    },
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut sysfs = Sysfs::system();
    let mut dry_run = false;
    let mut words = Vec::new();
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sysfs" => sysfs = Sysfs::at(args.next().ok_or("--sysfs needs a directory")?),
            "--dry-run" => dry_run = true,
            "--help" | "-h" => return Err(String::new()),
            _ => words.push(arg),
        }
    }
    let mut words = words.into_iter();
    let command = match words.next().as_deref() {
        None | Some("status") => Command::Status,
        Some("bind") => moving(Target::Vfio, words)?,
        Some("unbind") => moving(Target::Unbound, words)?,
        Some("reset") => moving(Target::Kernel, words)?,
        Some("hugepages") => hugepages_command(words)?,
        Some("permissions") => Command::Permissions {
            user: words
                .next()
                .or_else(|| std::env::var("SUDO_USER").ok())
                .or_else(|| std::env::var("USER").ok())
                .ok_or("permissions: name the user")?,
        },
        Some(other) => return Err(format!("unknown command {other:?}")),
    };
    Ok(Options {
        sysfs,
        dry_run,
        command,
    })
}

fn moving(target: Target, bdfs: impl Iterator<Item = String>) -> Result<Command, String> {
    let bdfs: Vec<String> = bdfs.collect();
    if let Some(bad) = bdfs.iter().find(|b| b.starts_with('-')) {
        return Err(format!("unknown option {bad:?}"));
    }
    Ok(Command::Move { target, bdfs })
}

fn hugepages_command(mut words: impl Iterator<Item = String>) -> Result<Command, String> {
    let count = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or("hugepages: give the number of pages")?;
    let (mut size_kb, mut node) = (2048, None);
    while let Some(word) = words.next() {
        let value = words.next().ok_or(format!("{word} needs a value"))?;
        match word.as_str() {
            "--size" => {
                size_kb = match value.to_ascii_lowercase().as_str() {
                    "2m" | "2048k" => 2048,
                    "1g" | "1048576k" => 1 << 20,
                    _ => return Err(format!("--size: {value:?} is not 2M or 1G")),
                }
            }
            "--node" => {
                node = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--node: {value:?} is not a number"))?,
                )
            }
            other => return Err(format!("hugepages: unknown option {other:?}")),
        }
    }
    Ok(Command::Hugepages {
        count,
        size_kb,
        node,
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    Some(std::fs::read_to_string(path).ok()?.trim().to_string())
}

fn status(sysfs: &Sysfs) {
    let groups = sysfs.iommu_groups_exist();
    let noiommu = sysfs.noiommu_enabled();
    println!(
        "IOMMU: {}",
        if groups {
            "on (IOMMU groups exist): the VFIO mode maps DMA memory through it"
        } else {
            "off (no IOMMU groups): the VFIO mode needs intel_iommu=on and VT-d in the BIOS; \
             the physical mode works, as root"
        }
    );
    let vfio_loaded = sysfs.driver_dir("vfio-pci").is_dir();
    println!(
        "VFIO: vfio-pci {}; no-IOMMU mode {}",
        if vfio_loaded {
            "loaded"
        } else {
            "not loaded (modprobe vfio-pci)"
        },
        if noiommu { "ENABLED (unsafe)" } else { "off" }
    );
    let functions = sysfs.discover_dma();
    println!();
    if functions.is_empty() {
        println!("No IOAT or DSA function found (is this an Intel Xeon with CBDMA or DSA?)");
    } else {
        println!(
            "{:<14} {:<5} {:<7} {:<10} {:<5} {:<14} {:<8} next step",
            "address", "kind", "device", "driver", "numa", "iommu group", "cdev"
        );
        for function in &functions {
            let group = function.iommu_group.map_or("-".to_string(), |g| {
                format!("{g} ({})", sysfs.group_type(g).unwrap_or("?".into()))
            });
            println!(
                "{:<14} {:<5} {:<7} {:<10} {:<5} {:<14} {:<8} {}",
                function.bdf,
                format!("{:?}", function.kind).to_uppercase(),
                format!("{:#06x}", function.device_id),
                function.driver.as_deref().unwrap_or("-"),
                function
                    .numa_node
                    .map_or("-".to_string(), |n| n.to_string()),
                group,
                sysfs.vfio_cdev(&function.bdf).unwrap_or_else(|| "-".into()),
                next_step(sysfs, function)
            );
        }
    }
    println!();
    hugepage_status(sysfs);
    println!(
        "Locked-memory limit of this process: {} (the VFIO mode locks all DMA memory; \
         root is exempt)",
        memlock_limit().unwrap_or_else(|| "unknown".into())
    );
}

/// What stands between `function` and each mode.
fn next_step(sysfs: &Sysfs, function: &PciFunction) -> String {
    let bdf = &function.bdf;
    match function.driver.as_deref() {
        Some("vfio-pci") => {
            let plan = binding::plan(sysfs, function, Target::Vfio);
            match plan.map(|p| p.warnings) {
                Ok(warnings) if warnings.is_empty() => "ready for the VFIO mode".into(),
                Ok(warnings) => warnings.join("; "),
                Err(err) => err.to_string(),
            }
        }
        None => "ready for the physical mode (root, IOMMU off or iommu=pt)".into(),
        Some(driver) if Some(driver) == function.kind.kernel_driver() => {
            format!("on the kernel's {driver}: `dmaplane-setup bind {bdf}` for the VFIO mode")
        }
        Some(driver) => format!("on {driver}: `dmaplane-setup bind {bdf}` for the VFIO mode"),
    }
}

fn hugepage_status(sysfs: &Sysfs) {
    let dir = sysfs.root().join("kernel/mm/hugepages");
    let mut sizes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    sizes.sort();
    if sizes.is_empty() {
        println!("Hugepages: none configured (dmaplane falls back to locked 4 KiB pages)");
    }
    for size in sizes {
        let name = size.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "Hugepages {}: {} reserved, {} free",
            name.trim_start_matches("hugepages-"),
            read_trimmed(&size.join("nr_hugepages")).unwrap_or("?".into()),
            read_trimmed(&size.join("free_hugepages")).unwrap_or("?".into()),
        );
    }
}

/// The soft and hard locked-memory limits of this process, from `/proc/self/limits`.
fn memlock_limit() -> Option<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let mut words = line["Max locked memory".len()..].split_whitespace();
    let (soft, hard) = (words.next()?, words.next()?);
    let show = |v: &str| match v.parse::<u64>() {
        Ok(bytes) => format!("{} KiB", bytes >> 10),
        Err(_) => v.to_string(),
    };
    Some(format!("{} soft, {} hard", show(soft), show(hard)))
}

/// Moves the named functions (or the default set for `target`); returns whether all went.
fn move_functions(sysfs: &Sysfs, target: Target, bdfs: &[String], dry_run: bool) -> bool {
    let known = sysfs.discover_dma();
    let chosen: Vec<&PciFunction> = if bdfs.is_empty() {
        known
            .iter()
            .filter(|f| target == Target::Kernel || f.kind == EngineKind::Ioat)
            .filter(|f| f.driver.as_deref() != target.driver(f))
            .collect()
    } else {
        let mut chosen = Vec::new();
        for bdf in bdfs {
            match known.iter().find(|f| &f.bdf == bdf) {
                Some(function) => chosen.push(function),
                None => {
                    eprintln!(
                        "dmaplane-setup: {bdf} is not an IOAT or DSA function \
                         (`dmaplane-setup status` lists them)"
                    );
                    return false;
                }
            }
        }
        chosen
    };
    if chosen.is_empty() {
        println!("nothing to do");
        return true;
    }
    let mut all_went = true;
    for function in chosen {
        let wanted = target.driver(function).unwrap_or("no driver");
        let plan = match binding::plan(sysfs, function, target) {
            Ok(plan) => plan,
            Err(err) => {
                eprintln!("{}: {err}", function.bdf);
                all_went = false;
                continue;
            }
        };
        if plan.writes.is_empty() {
            println!("{}: already on {wanted}", function.bdf);
        }
        for write in &plan.writes {
            println!(
                "{}: {}{write}",
                function.bdf,
                if dry_run { "would " } else { "" }
            );
        }
        if !dry_run && !plan.writes.is_empty() {
            if let Err(err) = binding::apply(&plan) {
                eprintln!("{}: {err}", function.bdf);
                all_went = false;
                continue;
            }
            let now = sysfs.driver(&function.bdf);
            if now.as_deref() == plan.driver {
                println!("{}: now on {wanted}", function.bdf);
            } else {
                eprintln!(
                    "{}: the kernel left it on {} instead of {wanted} (see `dmesg`)",
                    function.bdf,
                    now.as_deref().unwrap_or("no driver")
                );
                all_went = false;
            }
        }
        for warning in &plan.warnings {
            println!("{}: note: {warning}", function.bdf);
        }
    }
    all_went
}

fn reserve_hugepages(
    sysfs: &Sysfs,
    count: u64,
    size_kb: u64,
    node: Option<u32>,
    dry_run: bool,
) -> bool {
    let size_dir = format!("hugepages/hugepages-{size_kb}kB");
    let path = match node {
        Some(node) => sysfs
            .root()
            .join(format!("devices/system/node/node{node}"))
            .join(&size_dir),
        None => sysfs.root().join("kernel/mm").join(&size_dir),
    }
    .join("nr_hugepages");
    if !path.exists() {
        eprintln!(
            "dmaplane-setup: {} does not exist: this kernel has no {size_kb} kB hugepages{}",
            path.display(),
            node.map_or(String::new(), |n| format!(" on node {n}"))
        );
        return false;
    }
    let write = SysfsWrite {
        path: path.clone(),
        value: count.to_string(),
    };
    println!("{}{write}", if dry_run { "would " } else { "" });
    if dry_run {
        return true;
    }
    if let Err(err) = write.apply() {
        eprintln!("dmaplane-setup: {err}");
        return false;
    }
    // The kernel reserves what it can find; fragmented memory gives fewer.
    let got: u64 = read_trimmed(&path)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if got < count {
        eprintln!(
            "dmaplane-setup: only {got} of {count} hugepages reserved (memory is fragmented: \
             reserve them at boot with hugepages={count} on the kernel command line)"
        );
        return false;
    }
    println!("{got} hugepages of {size_kb} kB reserved");
    true
}

fn permissions(sysfs: &Sysfs, user: &str) {
    let functions: Vec<PciFunction> = sysfs
        .discover_dma()
        .into_iter()
        .filter(|f| f.driver.as_deref() == Some("vfio-pci"))
        .collect();
    if functions.is_empty() {
        println!("No function is bound to vfio-pci yet: run `dmaplane-setup bind` first.");
        return;
    }
    println!("For {user} to use the VFIO mode without root, as root:");
    let mut groups: Vec<u32> = functions.iter().filter_map(|f| f.iommu_group).collect();
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        println!("  chown {user} /dev/vfio/{group}");
    }
    for function in &functions {
        if let Some(cdev) = sysfs.vfio_cdev(&function.bdf) {
            println!("  chown {user} /dev/vfio/devices/{cdev}   # the iommufd path");
        }
    }
    if functions.iter().any(|f| sysfs.vfio_cdev(&f.bdf).is_some()) {
        println!("  chmod o+rw /dev/iommu   # or a group {user} is in");
    }
    println!(
        "and let {user} lock the DMA memory (VFIO pins all of it): add\n  \
         {user} - memlock unlimited\nto /etc/security/limits.conf (or a size above the pool's), \
         then log in again.\nThese last until reboot or until the functions are rebound; a udev \
         rule makes them stick."
    );
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("dmaplane-setup: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
        Ok(options) => options,
    };
    let sysfs = &options.sysfs;
    let ok = match options.command {
        Command::Status => {
            status(sysfs);
            true
        }
        Command::Move { target, bdfs } => move_functions(sysfs, target, &bdfs, options.dry_run),
        Command::Hugepages {
            count,
            size_kb,
            node,
        } => reserve_hugepages(sysfs, count, size_kb, node, options.dry_run),
        Command::Permissions { user } => {
            permissions(sysfs, &user);
            true
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
