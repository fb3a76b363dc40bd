//! Registers devices with an engine (emulated IOAT by default; the software engine, or real IOAT
//! functions through VFIO or sysfs, with `--backend`), prints devices, channels, reference
//! counts and the per-CPU table, copies through the channel each CPU finds in the table, then
//! prints each channel's statistics, then unregisters a device while the client holds its
//! channels and prints the table again.
//!
//! `cargo run --example info -- [--cpus N] [--devices N] [--channels N] [--backend B]`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dmaplane::datapath::{Client, ClientConfig};
use dmaplane::emu::EmuMode;
use dmaplane::mem::DmaPool;
use dmaplane::{Capability, Engine, Setup};
use dmaplane::{Completion, OpFlags};

mod common;
use common::*;

struct Options {
    cpus: Option<usize>,
    devices: usize,
    channels: usize,
    backend: BackendChoice,
    allow_noiommu: bool,
}

const USAGE: &str = "usage: info [--cpus N] [--devices N] [--channels N] [--backend B]

Registers N emulated IOAT devices of N channels each (memcpy and fill), or the
devices --backend names, with an engine, shows the per-CPU channel table, copies 64 KiB through each CPU's memcpy
channel and checks it, prints each channel's statistics (operations and bytes),
then unregisters the first device while a client holds its channels and shows
the table again.

  --cpus N            possible CPUs, all online (default: this machine's)
  --devices N         devices to register (default 2)
  --channels N        channels per device, 1 to 4 (default 2)";

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        cpus: None,
        devices: 2,
        channels: 2,
        backend: BackendChoice::Emulated,
        allow_noiommu: false,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cpus" => options.cpus = Some(option_number(&mut args, "--cpus")?),
            "--devices" => options.devices = option_number(&mut args, "--devices")?,
            "--channels" => options.channels = option_number(&mut args, "--channels")?,
            "--backend" => options.backend = option_backend(&mut args, "--backend")?,
            "--allow-noiommu" => options.allow_noiommu = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

/// Copies 64 KiB through the memcpy channel `cpu`'s client finds in the table and checks it.
fn copy_on(engine: &Engine, pool: &DmaPool, cpu: usize) -> Result<String, String> {
    let mut client =
        Client::new(engine, Some(cpu), ClientConfig::default()).map_err(|e| e.to_string())?;
    let Some((channel, owned)) = client.channel(Capability::Memcpy) else {
        return Ok(format!("cpu{cpu}: no memcpy channel"));
    };
    let len = 64 * 1024;
    let mut src = pool.alloc(len, 64).map_err(|e| e.to_string())?;
    let dst = pool.alloc(len, 64).map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + cpu) as u8).collect();
    src.write_at(0, &bytes).map_err(|e| e.to_string())?;
    let started = Instant::now();
    // SAFETY: both blocks live until the copy has completed (polled below).
    unsafe {
        client.copy(
            dst.as_mut_ptr(),
            src.as_ptr(),
            len,
            cpu as u64,
            OpFlags::SUBMIT,
        )
    }
    .map_err(|e| e.to_string())?;
    let mut done = [Completion::default()];
    while client.poll(&mut done) == 0 {
        if started.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "cpu{cpu}: copy did not complete on channel {channel}"
            ));
        }
        std::thread::yield_now();
    }
    done[0].result.map_err(|e| e.to_string())?;
    let ok = dst.to_vec() == bytes;
    Ok(format!(
        "cpu{cpu}: 64 KiB copy on channel {channel} ({}) in {:?}: {}",
        if owned { "owned" } else { "shared" },
        started.elapsed(),
        if ok { "verified" } else { "MISMATCH" }
    ))
}

/// Each channel's completed operations and bytes, as the engine keeps them.
fn print_channel_stats(engine: &Engine) {
    println!(
        "{:<12} {:<18} {:>8} {:>8} {:>8} {:>12}",
        "channel", "name", "ops ok", "failed", "removed", "bytes"
    );
    for device in engine.dump().devices {
        for channel in device.channels {
            match engine.channel_stats(channel.id) {
                Ok(stats) => println!(
                    "{:<12} {:<18} {:>8} {:>8} {:>8} {:>12}",
                    channel.id.to_string(),
                    channel.name,
                    stats.ops_ok,
                    stats.ops_failed,
                    stats.ops_removed,
                    stats.bytes
                ),
                Err(err) => println!("{:<12} {err}", channel.id.to_string()),
            }
        }
    }
    println!();
}

fn run(options: Options) -> Result<(), String> {
    let mut builder = Setup::builder()
        .channels_per_device(options.channels)
        .emulation(EmuMode::Inline)
        .ring_order(12);
    if let Some(cpus) = options.cpus {
        builder = builder.cpus(cpus);
    }
    builder = options
        .backend
        .apply(builder, options.devices, options.allow_noiommu);
    let setup = builder.build().map_err(|e| e.to_string())?;
    let (engine, pool) = (setup.engine(), setup.pool());
    let cpus = engine.possible_cpus();
    println!(
        "DMA memory backing: {:?}, IOVA mode: {:?}\n",
        pool.backing(),
        pool.iova_mode()
    );
    engine.get_client(); // populates the table before the first dump
    println!("{}", engine.dump());
    let mut failed = false;
    for cpu in 0..cpus {
        let line = copy_on(engine, pool, cpu)?;
        failed |= line.contains("MISMATCH");
        println!("{line}");
    }
    println!();
    print_channel_stats(engine);
    if let Some(first) = setup.devices().first().map(|d| d.id) {
        let report = engine.unregister_device(first).map_err(|e| e.to_string())?;
        println!(
            "unregistered device {first} while a client was active; channels still held \
             privately: {:?}, waiting for readers: {:?}\n",
            report.held_privately, report.awaiting_grace_period
        );
        println!("{}", engine.dump());
    }
    engine.put_client().map_err(|e| e.to_string())?;
    if failed {
        return Err("a copy did not verify".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let usage = format!("{USAGE}\n{BACKEND_USAGE}\n  --help              this text");
    common::main_of("info", &usage, parse, run)
}
