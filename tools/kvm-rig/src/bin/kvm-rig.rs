//! Builds the rig's guest from Debian's packages, boots it under QEMU (KVM where it works, TCG
//! otherwise) with a virtual Intel IOMMU and `edu` devices, runs dmaplane's scenarios inside,
//! unplugs and replugs devices over QMP when the guest asks, and reports `N passed, N failed`.
//!
//! `cargo run -p kvm-rig --bin kvm-rig -- [--tests LIST] [--accel kvm|tcg] [--scale N]
//! [--edu N] [--timeout S] [--work DIR]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kvm_rig::host::{self, Accel, RigConfig, RigError};

const USAGE: &str = "usage: kvm-rig [--tests LIST] [--accel kvm|tcg] [--scale N] [--edu N]
               [--timeout SECONDS] [--work DIR] [--guest PATH]

Boots a guest kernel from Debian's linux-image-amd64 under QEMU with a virtual
Intel IOMMU and QEMU edu devices behind hot-plug PCI Express root ports, and runs
dmaplane's scenarios inside it against the real VFIO, IOMMU and PCI hot-removal.

  --tests LIST     scenarios, comma-separated (default: all of them:
                   vfio_layer,edu_copy,ledger,iommu_fault,hot_removal)
  --accel A        kvm or tcg (default: KVM where a guest makes progress under
                   it, TCG otherwise)
  --scale N        multiplies the work: ledger copies, hot-removal rounds
                   (default 1; the long run uses 10)
  --edu N          edu devices, at least 2 for hot_removal (default 2)
  --timeout S      the longest the guest may run (default 900)
  --work DIR       packages, initramfs and the QMP socket (default:
                   target/kvm-rig next to this binary)
  --guest PATH     the rig-guest binary (default: next to this binary)
  --help           this text

Exit status: 0 all passed, 1 a scenario failed, 2 bad usage or a rig error,
77 skipped (QEMU or Debian's tools missing).";

fn parse(args: impl Iterator<Item = String>) -> Result<RigConfig, String> {
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = here.parent().map(PathBuf::from).unwrap_or_default();
    let work = dir
        .parent()
        .map_or_else(|| PathBuf::from("kvm-rig"), |target| target.join("kvm-rig"));
    let mut config = RigConfig::new(work, dir.join("rig-guest"));
    let mut args = args;
    let value = |name: &str, args: &mut dyn Iterator<Item = String>| {
        args.next().ok_or(format!("{name} needs a value"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tests" => {
                config.tests = value("--tests", &mut args)?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--accel" => {
                config.accel = Some(match value("--accel", &mut args)?.as_str() {
                    "kvm" => Accel::Kvm,
                    "tcg" => Accel::Tcg,
                    other => return Err(format!("--accel: {other:?} is not kvm or tcg")),
                })
            }
            "--scale" => {
                config.scale = value("--scale", &mut args)?
                    .parse()
                    .map_err(|_| "--scale needs a number".to_string())?
            }
            "--edu" => {
                config.edu_devices = value("--edu", &mut args)?
                    .parse()
                    .map_err(|_| "--edu needs a number".to_string())?
            }
            "--timeout" => {
                config.timeout = Duration::from_secs(
                    value("--timeout", &mut args)?
                        .parse()
                        .map_err(|_| "--timeout needs seconds".to_string())?,
                )
            }
            "--work" => config.work = PathBuf::from(value("--work", &mut args)?),
            "--guest" => config.guest_binary = PathBuf::from(value("--guest", &mut args)?),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("kvm-rig: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !config.guest_binary.exists() {
        eprintln!(
            "kvm-rig: no guest runner at {} (cargo build -p kvm-rig builds it)",
            config.guest_binary.display()
        );
        return ExitCode::from(2);
    }
    match host::run(&config, |line| println!("guest| {line}")) {
        Ok(report) => {
            println!(
                "kvm-rig: {} passed, {} failed (guest exit status {:?})",
                report.passed,
                report.failed.len(),
                report.exit
            );
            for failure in &report.failed {
                println!("kvm-rig: FAILED {failure}");
            }
            if report.failed.is_empty() && report.passed == config.tests.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(RigError::Skipped(why)) => {
            println!("kvm-rig: skipped: {why}");
            ExitCode::from(77)
        }
        Err(e) => {
            eprintln!("kvm-rig: {e}");
            ExitCode::from(2)
        }
    }
}
