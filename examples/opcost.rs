//! The instruction-count probe: N copies of S bytes through one owned client on one emulated
//! IOAT device, in batches of B (a doorbell each), each batch polled to completion. It prints
//! nothing but the count, so that `valgrind --tool=callgrind` runs of two sizes give the
//! instructions per operation by difference, free of set-up costs and of the machine's noise:
//!
//! ```sh
//! cargo build --release --example opcost
//! valgrind --tool=callgrind target/release/examples/opcost 32000 64 32
//! valgrind --tool=callgrind target/release/examples/opcost 64000 64 32
//! # (refs of the second - refs of the first) / 32000 = instructions per 64 B copy
//! ```
//!
//! `cargo run --release --example opcost -- OPS [SIZE] [BATCH] [inline|threaded]`
//! (defaults 64 B, batch 32, inline: the emulator works inside the doorbell write, so the run
//! is deterministic).

use std::process::ExitCode;

use dmaplane::emu::EmuMode;
use dmaplane::{Capability, Completion, OpFlags, Setup};

mod common;
use common::*;

const USAGE: &str = "usage: opcost OPS [SIZE] [BATCH] [inline|threaded]

Copies SIZE bytes (default 64) OPS times through one owned client on one emulated
IOAT device, BATCH operations per doorbell (default 32), each batch polled to
completion, and prints OPS. The device works inline at each doorbell (default) or
on its own thread. Meant for instruction counts under callgrind.";

struct Options {
    ops: u64,
    size: usize,
    batch: u64,
    mode: EmuMode,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let number = |text: Option<String>, name: &str, default: u64| -> Result<u64, String> {
        match text {
            None => Ok(default),
            Some(t) if t == "--help" => Err(String::new()),
            Some(t) => t
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{name}: {t:?} is not a positive number")),
        }
    };
    let first = args.next();
    if first.is_none() {
        return Err("OPS is missing".into());
    }
    let ops = number(first, "OPS", 0)?;
    let size = number(args.next(), "SIZE", 64)? as usize;
    let batch = number(args.next(), "BATCH", 32)?.min(512);
    let mode = match args.next().as_deref() {
        None | Some("inline") => EmuMode::Inline,
        Some("threaded") => EmuMode::Threaded,
        Some(other) => return Err(format!("{other:?} is neither inline nor threaded")),
    };
    Ok(Options {
        ops,
        size,
        batch,
        mode,
    })
}

fn run(options: Options) -> Result<(), String> {
    let setup = Setup::builder()
        .cpus(1)
        .log(quiet())
        .emulated_ioat(1)
        .emulation(options.mode)
        .build()
        .map_err(|e| e.to_string())?;
    let mut client = setup.client(0).map_err(|e| e.to_string())?;
    if !client
        .channel(Capability::Memcpy)
        .is_some_and(|(_, owned)| owned)
    {
        return Err("the client does not own its channel".into());
    }
    let span = options.size * options.batch as usize;
    let src = setup.pool().alloc(span, 64).map_err(|e| e.to_string())?;
    let dst = setup.pool().alloc(span, 64).map_err(|e| e.to_string())?;
    let mut done = [Completion::default(); 64];
    let mut issued = 0u64;
    while issued < options.ops {
        let batch = options.batch.min(options.ops - issued);
        for k in 0..batch {
            let flags = if k + 1 == batch {
                OpFlags::SUBMIT
            } else {
                OpFlags::NONE
            };
            let offset = k as usize * options.size;
            // SAFETY: both blocks outlive the batch, polled to completion below, and nothing
            // else touches them meanwhile.
            unsafe {
                client.copy(
                    dst.as_mut_ptr().add(offset),
                    src.as_ptr().add(offset),
                    options.size,
                    issued + k,
                    flags,
                )
            }
            .map_err(|e| e.to_string())?;
        }
        let mut collected = 0;
        while collected < batch {
            let n = client.poll(&mut done);
            if let Some(failed) = done[..n].iter().find(|c| c.result.is_err()) {
                return Err(format!("copy {} failed: {failed:?}", failed.user_data));
            }
            collected += n as u64;
        }
        issued += batch;
    }
    println!("{}", options.ops);
    Ok(())
}

fn main() -> ExitCode {
    main_of("opcost", USAGE, parse, run)
}
