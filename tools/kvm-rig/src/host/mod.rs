//! The host side of the rig: build the guest ([`image`], [`cpio`]), boot it and answer it
//! ([`qemu`]), and say how it went.

pub mod cpio;
pub mod image;
pub mod qemu;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use qemu::{Accel, Report};

/// Why the rig did not produce a verdict.
#[derive(Debug)]
pub enum RigError {
    /// Something the rig needs is missing here (QEMU, packages): the run is skipped.
    Skipped(String),
    /// The host could not do its part (a command, a file, QMP).
    Environment(String),
    /// The guest misbehaved (did not finish, asked for something unknown).
    Failed(String),
}

impl RigError {
    /// A closure that turns an I/O error on `path` into a [`RigError::Environment`].
    pub fn io(path: &Path) -> impl Fn(std::io::Error) -> RigError + '_ {
        move |e| RigError::Environment(format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for RigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RigError::Skipped(why) => write!(f, "skipped: {why}"),
            RigError::Environment(why) => write!(f, "rig error: {why}"),
            RigError::Failed(why) => write!(f, "guest failed: {why}"),
        }
    }
}

impl std::error::Error for RigError {}

/// A rig run.
#[derive(Clone, Debug)]
pub struct RigConfig {
    /// Where packages, the initramfs and the QMP socket go (kept between runs).
    pub work: PathBuf,
    /// The `rig-guest` binary.
    pub guest_binary: PathBuf,
    /// The scenarios, by name.
    pub tests: Vec<String>,
    /// KVM, TCG, or `None` to choose.
    pub accel: Option<Accel>,
    /// `edu` devices in the guest.
    pub edu_devices: usize,
    /// Multiplies the scenarios' work (the long run).
    pub scale: u32,
    /// How long the guest may run.
    pub timeout: Duration,
    /// type1's `dma_entry_limit` in the guest.
    pub entry_limit: usize,
}

impl RigConfig {
    /// Every scenario, two `edu` devices, the accelerator chosen, 15 minutes at most.
    pub fn new(work: PathBuf, guest_binary: PathBuf) -> RigConfig {
        RigConfig {
            work,
            guest_binary,
            tests: crate::scenarios::ALL
                .iter()
                .map(|(name, _)| name.to_string())
                .collect(),
            accel: None,
            edu_devices: 2,
            scale: 1,
            timeout: Duration::from_secs(900),
            entry_limit: 64,
        }
    }
}

/// Builds the guest, boots it and runs the scenarios; `show` gets each console line.
pub fn run(config: &RigConfig, show: impl FnMut(&str)) -> Result<Report, RigError> {
    if !qemu::available() {
        return Err(RigError::Skipped(format!(
            "{} is not installed (apt-get install qemu-system-x86)",
            qemu::QEMU
        )));
    }
    for tool in ["apt-get", "apt-cache", "dpkg", "ldd"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).exists()));
        if !found {
            return Err(RigError::Skipped(format!(
                "{tool} is missing: the guest is built from Debian's packages"
            )));
        }
    }
    for name in &config.tests {
        if crate::scenarios::named(name).is_none() {
            return Err(RigError::Failed(format!("no scenario called {name}")));
        }
    }
    std::fs::create_dir_all(&config.work).map_err(RigError::io(&config.work))?;
    let image = image::build(&config.work, &config.guest_binary, config.entry_limit)?;
    let accel = qemu::choose_accel(config.accel, &image, &config.work);
    println!(
        "kvm-rig: booting kernel {} under {accel:?} with {} edu device(s): {}",
        image.release,
        config.edu_devices,
        config.tests.join(", ")
    );
    let boot = qemu::Boot {
        image,
        accel,
        edu_devices: config.edu_devices,
        cpus: 2,
        memory_mib: 1024,
        tests: config.tests.clone(),
        scale: config.scale,
        qmp_socket: config.work.join("qmp.sock"),
        timeout: config.timeout,
    };
    qemu::run(&boot, show)
}
