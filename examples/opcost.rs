//! Instruction-count probe: N copies through one owned client on an inline emulated IOAT device.
use dmaplane::datapath::{Client, ClientConfig};
use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, PoolMemory};
use dmaplane::ioat::{IoatConfig, IoatDevice};
use dmaplane::mem::{DmaPool, DmaPoolConfig};
use dmaplane::{Capability, Completion, Engine, EngineConfig, OpFlags};
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let ops: u64 = args.next().unwrap().parse().unwrap();
    let size: usize = args.next().map_or(64, |a| a.parse().unwrap());
    let batch: u64 = args.next().map_or(32, |a| a.parse().unwrap());
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    // SAFETY: buffers outlive their operations.
    let memory = Arc::new(unsafe { PoolMemory::new(pool.clone()) });
    let emu = EmulatedDevice::new(
        EmuConfig {
            channels: 1,
            mode: EmuMode::Inline,
            ..EmuConfig::default()
        },
        memory,
    )
    .unwrap();
    let ioat = IoatDevice::probe(
        "emu0",
        emu.registers(),
        Some(emu.config_space()),
        pool.clone(),
        IoatConfig {
            ring_order: 10,
            ..IoatConfig::default()
        },
    )
    .unwrap();
    let engine = Engine::new(EngineConfig::with_cpus(1).log_hook(Arc::new(|_, _| {}))).unwrap();
    engine.register_device(ioat.spec()).unwrap();
    let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
    assert!(client.channel(Capability::Memcpy).unwrap().1);
    let src = pool.alloc(size * batch as usize, 64).unwrap();
    let dst = pool.alloc(size * batch as usize, 64).unwrap();
    let mut done = [Completion::default(); 64];
    let mut i = 0u64;
    while i < ops {
        for k in 0..batch {
            let flags = if k + 1 == batch {
                OpFlags::SUBMIT
            } else {
                OpFlags::NONE
            };
            let off = k as usize * size;
            // SAFETY: blocks live until drained below.
            unsafe {
                client.copy(
                    dst.as_mut_ptr().add(off),
                    src.as_ptr().add(off),
                    size,
                    i + k,
                    flags,
                )
            }
            .unwrap();
        }
        let mut got = 0;
        while got < batch as usize {
            got += client.poll(&mut done);
        }
        i += batch;
    }
    println!("{ops}");
}
