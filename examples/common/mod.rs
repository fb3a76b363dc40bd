//! Pieces the Rust examples share: a quiet log, a small deterministic generator, a
//! cache-line-padded counter, a stop flag raised on unwinding, option values (the `--backend`
//! choice among them), and the `main` every example runs (usage on `--help`, exit status 2 on a
//! bad argument). Devices come from the library's `Setup`.

#![allow(dead_code)] // each example uses its own subset

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dmaplane::log::LogHook;
use dmaplane::SetupBuilder;

/// A log hook that drops the library's warnings, which would clutter the examples' output.
pub fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

/// A small deterministic generator (SplitMix64), so a seed reproduces a run.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A counter on its own cache lines, so client threads publishing progress do not slow each
/// other down.
#[repr(align(128))]
#[derive(Default)]
pub struct PaddedCounter(pub AtomicU64);

/// Sets a stop flag when dropped, so that the client threads of a scope also stop when the
/// main thread unwinds (a closed standard output makes `println!` panic, for one) instead of
/// leaving the scope waiting for them forever.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Parses the arguments with `parse` (an empty error means `--help`) and runs `run`: usage on
/// standard output for `--help`, the message and usage on standard error with status 2 for a
/// bad argument, status 1 when the run fails.
pub fn main_of<O>(
    name: &str,
    usage: &str,
    parse: impl FnOnce(std::iter::Skip<std::env::Args>) -> Result<O, String>,
    run: impl FnOnce(O) -> Result<(), String>,
) -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Err(message) if message.is_empty() => {
            println!("{usage}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{name}: {message}\n\n{usage}");
            ExitCode::from(2)
        }
        Ok(options) => match run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("{name}: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The value after option `name`, or why there is none.
pub fn option_value(args: &mut impl Iterator<Item = String>, name: &str) -> Result<String, String> {
    args.next().ok_or(format!("{name} needs a value"))
}

/// The number after option `name`, or why it is not one.
pub fn option_number<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    name: &str,
) -> Result<T, String> {
    let value = option_value(args, name)?;
    value
        .parse()
        .map_err(|_| format!("{name}: {value:?} is not a number"))
}

/// The positive, finite number of seconds after option `name`.
pub fn option_seconds(args: &mut impl Iterator<Item = String>, name: &str) -> Result<f64, String> {
    let text = option_value(args, name)?;
    text.parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or(format!("{name}: {text:?} is not a positive number"))
}

/// Which devices an example drives (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Emulated IOAT devices (the default).
    Emulated,
    /// The software engine.
    Soft,
    /// Real IOAT functions bound to vfio-pci, through VFIO.
    Vfio,
    /// Real IOAT functions bound to no driver, with physical addresses.
    Physical,
    /// Emulated DSA devices, a channel per work queue.
    Dsa,
    /// Emulated IOAT and DSA devices by turns.
    Mixed,
    /// The kernel's DSA work queues, through /dev/dsa.
    DsaKernel,
}

/// The `--backend` lines of an example's usage.
pub const BACKEND_USAGE: &str =
    "  --backend B         ioat or emulated (emulated IOAT, the default), dsa
                      (emulated DSA, a channel per work queue), mixed (both
                      by turns), soft (the CPU copies), vfio (IOAT functions
                      bound to vfio-pci: see the README's \"Real hardware\"),
                      physical (IOAT functions bound to no driver; root, IOMMU
                      off or iommu=pt), dsa-kernel (DSA work queues from
                      accel-config, through /dev/dsa); --devices and
                      --channels apply to the emulated ones and soft only
  --allow-noiommu     vfio: accept functions in VFIO no-IOMMU groups";

impl BackendChoice {
    /// Whether the devices are real functions the machine has (so their number is its own).
    pub fn is_hardware(self) -> bool {
        matches!(
            self,
            BackendChoice::Vfio | BackendChoice::Physical | BackendChoice::DsaKernel
        )
    }

    /// `builder`, set up for these devices: `devices` of them where the example makes them.
    pub fn apply(self, builder: SetupBuilder, devices: usize, allow_noiommu: bool) -> SetupBuilder {
        match self {
            BackendChoice::Emulated => builder.emulated_ioat(devices),
            BackendChoice::Soft => builder.soft(devices),
            BackendChoice::Vfio => builder.vfio_ioat().allow_noiommu(allow_noiommu),
            BackendChoice::Physical => builder.physical_ioat(),
            BackendChoice::Dsa => builder.emulated_dsa(devices),
            BackendChoice::Mixed => builder.mixed(devices),
            BackendChoice::DsaKernel => builder.kernel_dsa(),
        }
    }
}

/// The backend named after option `name`.
pub fn option_backend(
    args: &mut impl Iterator<Item = String>,
    name: &str,
) -> Result<BackendChoice, String> {
    match option_value(args, name)?.as_str() {
        "emulated" | "ioat" => Ok(BackendChoice::Emulated),
        "dsa" => Ok(BackendChoice::Dsa),
        "mixed" => Ok(BackendChoice::Mixed),
        "dsa-kernel" => Ok(BackendChoice::DsaKernel),
        "soft" => Ok(BackendChoice::Soft),
        "vfio" => Ok(BackendChoice::Vfio),
        "physical" => Ok(BackendChoice::Physical),
        other => Err(format!(
            "{name}: {other:?} is not one of ioat, emulated, dsa, mixed, soft, vfio, physical, dsa-kernel"
        )),
    }
}
