//! Lookups racing rebalances on real threads: a reader never sees a channel whose resources
//! were freed, while a writer registers and unregisters devices, moves clients and CPUs.
//! Bounded in iterations and time; every spin yields, so it is safe on a 2-core machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::log::LogHook;
use dmaplane::{CapMask, Capability, DeviceSpec, Engine, EngineConfig, NullChannel};

const WRITER_ROUNDS: usize = 5_000;
const TIME_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn readers_never_see_freed_channels_while_the_table_moves() {
    let quiet: LogHook = Arc::new(|_, _| {});
    let cpus = 4;
    let engine = Engine::new(EngineConfig::with_cpus(cpus).log_hook(quiet)).unwrap();
    let caps = CapMask::of(&[Capability::Memcpy, Capability::Fill]);
    engine.get_client();

    let done = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|cpu| {
            let (engine, done, lookups) = (engine.clone(), done.clone(), lookups.clone());
            std::thread::spawn(move || {
                let mut reader = engine.table_reader(cpu).unwrap();
                let mut local = 0u64;
                while !done.load(Ordering::Relaxed) {
                    for cap in [Capability::Memcpy, Capability::Fill] {
                        if let Some(chan) = reader.lookup(cap) {
                            let null = chan.backend().as_any().downcast_ref::<NullChannel>();
                            // Hold the channel across a yield, as a poller holds it across a
                            // submit: the writer gets a window to (wrongly) free it.
                            for _ in 0..2 {
                                assert!(
                                    null.unwrap().is_allocated(),
                                    "cpu {cpu} saw {} after its resources were freed",
                                    chan.name()
                                );
                                std::thread::yield_now();
                            }
                            local += 1;
                        }
                    }
                    // Go offline now and then, to exercise the online fence too.
                    if local % 64 == 0 {
                        reader.offline();
                        std::thread::yield_now();
                        reader.online();
                    } else {
                        reader.quiescent();
                    }
                    std::thread::yield_now();
                }
                lookups.fetch_add(local, Ordering::Relaxed);
            })
        })
        .collect();

    // Every round replaces the device the readers are looking at, so each unregister frees
    // channels a reader may hold; every few rounds the clients and CPUs move too.
    let started = Instant::now();
    let mut current = None;
    let mut rounds = 0;
    while rounds < WRITER_ROUNDS && started.elapsed() < TIME_LIMIT {
        let spec = DeviceSpec::new(format!("dev{rounds}"), caps, NullChannel::many(2));
        let next = engine.register_device(spec).unwrap();
        if let Some(previous) = current.replace(next) {
            engine.unregister_device(previous).unwrap();
        }
        match rounds % 8 {
            3 => engine
                .set_cpu_online(rounds % cpus, rounds % 16 == 3)
                .unwrap(),
            7 => {
                engine.put_client().unwrap();
                engine.get_client();
            }
            _ => {}
        }
        rounds += 1;
        std::thread::yield_now();
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    engine.synchronize(Duration::from_secs(5)).unwrap();
    assert!(
        rounds >= 100,
        "writer made too little progress: {rounds} rounds"
    );
    assert!(
        lookups.load(Ordering::Relaxed) > 0,
        "readers never found a channel"
    );

    // Everything goes back to zero once the devices and the client leave.
    if let Some(last) = current {
        engine.unregister_device(last).unwrap();
    }
    engine.put_client().unwrap();
    let dump = engine.dump();
    assert!(dump.devices.is_empty(), "every device released: {dump}");
}
