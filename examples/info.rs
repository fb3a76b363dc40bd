//! Prints the engine's devices, channels, reference counts and per-CPU table, before and
//! after a device is unregistered while a client holds channels.
//!
//! Until the IOAT driver and its emulator land, the devices here are bookkeeping-only
//! ([`NullChannel`]): the table and counts are real, no data moves.
//!
//! `cargo run --example info -- [--cpus N] [--devices N] [--channels N]`

use std::process::ExitCode;

use dmaplane::{CapMask, Capability, DeviceSpec, Engine, EngineConfig, NullChannel};

struct Options {
    cpus: Option<usize>,
    devices: usize,
    channels: usize,
}

const USAGE: &str = "usage: info [--cpus N] [--devices N] [--channels N]

Shows the per-CPU channel table of an engine with N devices of N channels each
(capabilities memcpy and fill), then unregisters the first device while a client
holds its channels and shows the table again.

  --cpus N       possible CPUs, all online (default: this machine's)
  --devices N    devices to register (default 2)
  --channels N   channels per device (default 2)
  --help         this text";

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        cpus: None,
        devices: 2,
        channels: 2,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            let value = args.next().ok_or(format!("{name} needs a value"))?;
            value
                .parse()
                .map_err(|_| format!("{name}: {value:?} is not a number"))
        };
        match arg.as_str() {
            "--cpus" => options.cpus = Some(number("--cpus")?),
            "--devices" => options.devices = number("--devices")?,
            "--channels" => options.channels = number("--channels")?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn run(options: Options) -> Result<(), String> {
    let config = match options.cpus {
        Some(cpus) => EngineConfig::with_cpus(cpus),
        None => EngineConfig::from_system(),
    };
    let engine = Engine::new(config).map_err(|e| e.to_string())?;
    let caps = CapMask::of(&[Capability::Memcpy, Capability::Fill]);
    let mut devices = Vec::new();
    for i in 0..options.devices {
        let spec = DeviceSpec::new(
            format!("null{i}"),
            caps,
            NullChannel::many(options.channels),
        );
        devices.push(engine.register_device(spec).map_err(|e| e.to_string())?);
    }
    engine.get_client();
    println!("{}", engine.dump());
    if let Some(&first) = devices.first() {
        let report = engine.unregister_device(first).map_err(|e| e.to_string())?;
        println!(
            "unregistered device {first} while a client was active; channels still held \
             privately: {:?}, waiting for readers: {:?}\n",
            report.held_privately, report.awaiting_grace_period
        );
        println!("{}", engine.dump());
    }
    engine.put_client().map_err(|e| e.to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("info: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Ok(options) => match run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("info: {message}");
                ExitCode::FAILURE
            }
        },
    }
}
