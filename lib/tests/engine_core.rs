//! The engine core against the worked examples of the seed patch's table algorithm, its
//! reference counting, private channels, unregister while clients hold channels, typed errors,
//! and the grace period that keeps a reader's channel alive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dmaplane::log::{LogHook, LogLevel};
use dmaplane::{
    CapMask, Capability, ChannelBackend, ChannelId, DeviceId, DeviceSpec, Engine, EngineConfig,
    EngineError, NullChannel,
};

fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

fn engine(cpus: usize) -> Engine {
    Engine::new(EngineConfig::with_cpus(cpus).log_hook(quiet())).unwrap()
}

/// Registers a device of `count` null channels, returning it and the channels for inspection.
fn device(
    engine: &Engine,
    name: &str,
    caps: CapMask,
    count: usize,
) -> (DeviceId, Vec<Arc<NullChannel>>) {
    let channels: Vec<Arc<NullChannel>> = (0..count).map(|_| NullChannel::new()).collect();
    let backends = channels
        .iter()
        .map(|c| c.clone() as Arc<dyn ChannelBackend>)
        .collect();
    let id = engine
        .register_device(DeviceSpec::new(name, caps, backends))
        .unwrap();
    (id, channels)
}

fn memcpy_xor() -> CapMask {
    CapMask::of(&[Capability::Memcpy, Capability::Xor])
}

/// Channel index per CPU for `cap`; `None` for an empty slot.
fn row(engine: &Engine, cap: Capability, cpus: usize) -> Vec<Option<u16>> {
    (0..cpus)
        .map(|cpu| engine.table_entry(cap, cpu).unwrap().map(|c| c.index))
        .collect()
}

fn counts(engine: &Engine, dev: DeviceId, index: u16) -> (u32, u32) {
    let c = engine
        .channel_counts(ChannelId { device: dev, index })
        .unwrap();
    (c.client_count, c.table_count)
}

#[test]
fn four_channels_two_cpus_isolate_operations() {
    let engine = engine(2);
    let (dev, chans) = device(&engine, "dev", memcpy_xor(), 4);
    assert_eq!(
        row(&engine, Capability::Memcpy, 2),
        [None, None],
        "no client, no table"
    );
    engine.get_client();
    assert_eq!(row(&engine, Capability::Memcpy, 2), [Some(0), Some(1)]);
    assert_eq!(row(&engine, Capability::Xor, 2), [Some(2), Some(3)]);
    for index in 0..4 {
        assert_eq!(counts(&engine, dev, index), (1, 1));
        assert!(chans[usize::from(index)].is_allocated());
    }
}

#[test]
fn two_channels_two_cpus_fall_back_for_xor() {
    let engine = engine(2);
    let (dev, _) = device(&engine, "dev", memcpy_xor(), 2);
    engine.get_client();
    assert_eq!(row(&engine, Capability::Memcpy, 2), [Some(0), Some(1)]);
    assert_eq!(row(&engine, Capability::Xor, 2), [Some(0), Some(1)]);
    assert_eq!(counts(&engine, dev, 0), (2, 2));
    assert_eq!(counts(&engine, dev, 1), (2, 2));
}

#[test]
fn three_cpus_two_channels_third_cpu_takes_least_used() {
    let engine = engine(3);
    let (dev, _) = device(&engine, "dev", memcpy_xor(), 2);
    engine.get_client();
    assert_eq!(
        row(&engine, Capability::Memcpy, 3),
        [Some(0), Some(1), Some(0)]
    );
    // xor: n = 3, 4, 5 all miss; least table_count: c1 (1) < c0 (2), then c0 = c1 = 2 -> c0,
    // then c1 (2) < c0 (3).
    assert_eq!(
        row(&engine, Capability::Xor, 3),
        [Some(1), Some(0), Some(1)]
    );
    assert_eq!(counts(&engine, dev, 0), (3, 3));
    assert_eq!(counts(&engine, dev, 1), (3, 3));
}

#[test]
fn uniprocessor_always_takes_the_least_used_channel() {
    let engine = engine(1);
    let (dev, _) = device(&engine, "dev", memcpy_xor(), 4);
    engine.get_client();
    assert_eq!(row(&engine, Capability::Memcpy, 1), [Some(0)]);
    assert_eq!(row(&engine, Capability::Xor, 1), [Some(1)]);
    assert_eq!(
        counts(&engine, dev, 2),
        (0, 0),
        "channels never chosen hold nothing"
    );
}

#[test]
fn table_order_decides_the_distribution_and_is_exposed() {
    // With every capability tabled, fill is walked sixth: n = 10, 11 miss and fall back.
    let all = engine(2);
    let caps = CapMask::of(&[Capability::Memcpy, Capability::Fill]);
    device(&all, "dev", caps, 4);
    all.get_client();
    assert_eq!(all.table_order(), Capability::TABLE_ORDER);
    assert_eq!(row(&all, Capability::Fill, 2), [Some(2), Some(3)]);

    // With only memcpy and fill tabled, fill is walked second: n = 2, 3 hit directly.
    let narrow = Engine::new(
        EngineConfig::with_cpus(3)
            .table_capabilities(caps)
            .log_hook(quiet()),
    )
    .unwrap();
    device(&narrow, "dev", caps, 6);
    narrow.get_client();
    assert_eq!(narrow.table_order(), [Capability::Memcpy, Capability::Fill]);
    assert_eq!(
        row(&narrow, Capability::Memcpy, 3),
        [Some(0), Some(1), Some(2)]
    );
    assert_eq!(
        row(&narrow, Capability::Fill, 3),
        [Some(3), Some(4), Some(5)]
    );
    assert_eq!(narrow.table_entry(Capability::Xor, 0).unwrap(), None);
}

#[test]
fn last_client_empties_the_table_and_frees_every_channel() {
    let engine = engine(2);
    let (dev, chans) = device(&engine, "dev", memcpy_xor(), 3);
    assert_eq!(engine.get_client(), 1);
    assert_eq!(engine.get_client(), 2);
    assert_eq!(engine.put_client(), Ok(1));
    assert!(
        chans.iter().all(|c| c.is_allocated()),
        "one client still holds the table"
    );
    assert_eq!(engine.put_client(), Ok(0));
    for index in 0..3 {
        assert_eq!(counts(&engine, dev, index), (0, 0));
    }
    assert!(chans
        .iter()
        .all(|c| !c.is_allocated() && c.allocations() == c.frees()));
    assert_eq!(row(&engine, Capability::Memcpy, 2), [None, None]);
    assert_eq!(engine.put_client(), Err(EngineError::NoClients));
}

#[test]
fn a_channel_staying_in_the_table_is_never_freed_by_a_rebalance() {
    let engine = engine(2);
    let (_, first) = device(&engine, "first", memcpy_xor(), 2);
    engine.get_client();
    // Each rebalance below keeps first's channels in the table.
    let (second, _) = device(&engine, "second", memcpy_xor(), 2);
    engine.set_cpu_online(1, false).unwrap();
    engine.set_cpu_online(1, true).unwrap();
    engine.unregister_device(second).unwrap();
    for chan in &first {
        assert!(chan.is_allocated());
        assert_eq!((chan.allocations(), chan.frees()), (1, 0));
    }
}

#[test]
fn unregister_while_clients_hold_channels_moves_the_table_and_frees_the_device() {
    let engine = engine(2);
    let (first, first_chans) = device(&engine, "first", memcpy_xor(), 2);
    let (second, _) = device(&engine, "second", memcpy_xor(), 2);
    engine.get_client();
    assert_eq!(
        engine
            .table_entry(Capability::Memcpy, 0)
            .unwrap()
            .unwrap()
            .device,
        first
    );

    let report = engine.unregister_device(first).unwrap();
    assert!(report.held_privately.is_empty() && report.awaiting_grace_period.is_empty());
    for cpu in 0..2 {
        for cap in [Capability::Memcpy, Capability::Xor] {
            assert_eq!(
                engine.table_entry(cap, cpu).unwrap().unwrap().device,
                second
            );
        }
    }
    assert!(first_chans
        .iter()
        .all(|c| !c.is_allocated() && c.frees() == 1));
    assert!(
        engine.dump().devices.iter().all(|d| d.id != first),
        "released device forgotten"
    );
    assert_eq!(
        engine.unregister_device(first),
        Err(EngineError::DeviceUnregistered(first))
    );
}

#[test]
fn private_devices_never_enter_the_table() {
    let engine = engine(2);
    let (private, _) = {
        let chans: Vec<Arc<NullChannel>> = (0..2).map(|_| NullChannel::new()).collect();
        let backends = chans
            .iter()
            .map(|c| c.clone() as Arc<dyn ChannelBackend>)
            .collect();
        let spec = DeviceSpec::new("private", CapMask::MEMCPY, backends).private();
        (engine.register_device(spec).unwrap(), chans)
    };
    let (public, _) = device(&engine, "public", CapMask::MEMCPY, 1);
    engine.get_client();
    assert_eq!(row(&engine, Capability::Memcpy, 2), [Some(0), Some(0)]);
    assert_eq!(
        engine
            .table_entry(Capability::Memcpy, 1)
            .unwrap()
            .unwrap()
            .device,
        public
    );

    // A private request takes the first free channel of the private device, then the next.
    let a = engine.request_channel(CapMask::MEMCPY, |_| true).unwrap();
    let b = engine.request_channel(CapMask::MEMCPY, |_| true).unwrap();
    assert_eq!((a.id().device, a.id().index), (private, 0));
    assert_eq!((b.id().device, b.id().index), (private, 1));
    // The public device's only channel is in the table, so nothing is left.
    assert_eq!(
        engine
            .request_channel(CapMask::MEMCPY, |_| true)
            .unwrap_err(),
        EngineError::NoChannelAvailable(CapMask::MEMCPY)
    );
    let held = engine.channel_counts(a.id()).unwrap();
    assert!(held.held_privately && held.client_count == 1 && held.table_count == 0);
    let a_id = a.id();
    a.release().unwrap();
    let released = engine.channel_counts(a_id).unwrap();
    assert!(!released.held_privately && released.client_count == 0);
    drop(b); // dropping the guard releases too
    assert_eq!(
        engine
            .channel_counts(ChannelId {
                device: private,
                index: 1
            })
            .unwrap()
            .client_count,
        0
    );
    // Still always-private after the releases.
    engine.set_cpu_online(0, false).unwrap();
    engine.set_cpu_online(0, true).unwrap();
    assert!(engine
        .dump()
        .devices
        .iter()
        .any(|d| d.id == private && d.private));
    assert_eq!(row(&engine, Capability::Memcpy, 2), [Some(0), Some(0)]);
}

#[test]
fn a_private_request_on_a_public_device_takes_it_out_of_later_tables() {
    let engine = engine(2);
    let (dev, _) = device(&engine, "dev", CapMask::MEMCPY, 2);
    // Filter: only channel 1.
    let chan = engine
        .request_channel(CapMask::MEMCPY, |c| c.id().index == 1)
        .unwrap();
    assert_eq!(
        chan.id(),
        ChannelId {
            device: dev,
            index: 1
        }
    );
    engine.get_client();
    assert_eq!(
        row(&engine, Capability::Memcpy, 2),
        [None, None],
        "device is private now"
    );
    chan.release().unwrap();
    // Public again, but the table only moves at the next rebalance.
    assert_eq!(row(&engine, Capability::Memcpy, 2), [None, None]);
    engine.set_cpu_online(1, false).unwrap();
    assert_eq!(row(&engine, Capability::Memcpy, 2), [Some(0), None]);
    // A multi-channel public device in use is never split between table and private use.
    assert_eq!(
        engine
            .request_channel(CapMask::MEMCPY, |_| true)
            .unwrap_err(),
        EngineError::NoChannelAvailable(CapMask::MEMCPY)
    );
}

#[test]
fn unregister_of_a_privately_held_channel_warns_and_defers_the_release() {
    let messages = Arc::new(Mutex::new(Vec::<(LogLevel, String)>::new()));
    let sink = messages.clone();
    let hook: LogHook =
        Arc::new(move |level, text| sink.lock().unwrap().push((level, text.into())));
    let engine = Engine::new(EngineConfig::with_cpus(2).log_hook(hook)).unwrap();
    let (dev, chans) = device(&engine, "dev", CapMask::MEMCPY, 1);
    let chan = engine.request_channel(CapMask::MEMCPY, |_| true).unwrap();

    let report = engine.unregister_device(dev).unwrap();
    assert_eq!(report.held_privately, [chan.id()]);
    assert!(!report.released);
    let warned = messages.lock().unwrap().iter().any(|(level, text)| {
        *level == LogLevel::Warn && text.contains("still held privately") && text.contains("0.0")
    });
    assert!(
        warned,
        "expected a warning, got {:?}",
        messages.lock().unwrap()
    );
    assert!(chans[0].is_allocated());

    let id = chan.id();
    chan.release().unwrap();
    assert!(!chans[0].is_allocated());
    assert!(engine.dump().devices.is_empty());
    assert_eq!(
        engine.channel_counts(id),
        Err(EngineError::DeviceUnregistered(dev))
    );
}

#[test]
fn failed_allocation_leaves_the_channel_out_and_reports_it() {
    let engine = engine(2);
    let chans: Vec<Arc<NullChannel>> = (0..2).map(|_| NullChannel::new()).collect();
    chans[0].refuse_allocations(true);
    let backends = chans
        .iter()
        .map(|c| c.clone() as Arc<dyn ChannelBackend>)
        .collect();
    let dev = engine
        .register_device(DeviceSpec::new("dev", CapMask::MEMCPY, backends))
        .unwrap();
    let err = engine
        .request_channel(CapMask::MEMCPY, |c| c.id().index == 0)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::ChannelAllocation { channel, .. } if channel.index == 0),
        "{err:?}"
    );
    assert!(
        !engine.dump().devices[0].private,
        "a failed request leaves the device public"
    );
    engine.get_client();
    assert_eq!(row(&engine, Capability::Memcpy, 2), [Some(1), Some(1)]);
    assert_eq!(counts(&engine, dev, 0), (0, 0));
    chans[0].refuse_allocations(false);
    engine.set_cpu_online(1, false).unwrap();
    assert_eq!(
        row(&engine, Capability::Memcpy, 2),
        [Some(0), None],
        "usable again"
    );
}

#[test]
fn bad_input_gets_typed_errors() {
    let engine = engine(2);
    let ghost = DeviceId(7);
    assert_eq!(
        engine.unregister_device(ghost),
        Err(EngineError::UnknownDevice(ghost))
    );
    let (dev, _) = device(&engine, "dev", CapMask::MEMCPY, 1);
    let missing = ChannelId {
        device: dev,
        index: 5,
    };
    assert_eq!(
        engine.channel_counts(missing),
        Err(EngineError::UnknownChannel(missing))
    );
    let unknown_cpu = EngineError::UnknownCpu {
        cpu: 2,
        possible: 2,
    };
    assert_eq!(
        engine.table_entry(Capability::Memcpy, 2),
        Err(unknown_cpu.clone())
    );
    assert_eq!(engine.set_cpu_online(2, true), Err(unknown_cpu.clone()));
    assert_eq!(engine.table_reader(2).unwrap_err(), unknown_cpu);
    engine.get_client();
    assert_eq!(
        engine.table_entry(Capability::Pq, 0),
        Ok(None),
        "no device offers pq"
    );
    let empty = DeviceSpec::new("empty", CapMask::MEMCPY, Vec::new());
    assert!(matches!(
        engine.register_device(empty),
        Err(EngineError::InvalidConfig(_))
    ));
    let no_caps = DeviceSpec::new("nocaps", CapMask::EMPTY, NullChannel::many(1));
    assert!(matches!(
        engine.register_device(no_caps),
        Err(EngineError::InvalidConfig(_))
    ));
    assert!(Engine::new(EngineConfig::with_cpus(0)).is_err());
    let mut bad_online = EngineConfig::with_cpus(2);
    bad_online.online_cpus.push(9);
    assert_eq!(
        Engine::new(bad_online).unwrap_err(),
        EngineError::UnknownCpu {
            cpu: 9,
            possible: 2
        }
    );
}

#[test]
fn a_reader_inside_its_grace_period_keeps_the_old_channel_alive() {
    let engine = engine(2);
    let (first, first_chans) = device(&engine, "first", CapMask::MEMCPY, 1);
    let (second, _) = device(&engine, "second", CapMask::MEMCPY, 1);
    engine.get_client();
    let mut reader = engine
        .labelled_table_reader(0, "stalled poller".into())
        .unwrap();
    let seen = reader.lookup(Capability::Memcpy).unwrap().id();
    assert_eq!(seen.device, first);
    let generation = reader.generation().unwrap();

    // The table moves at once, even though the reader has not reported a quiescent state.
    let report = engine.unregister_device(first).unwrap();
    assert_eq!(report.awaiting_grace_period, [seen]);
    assert_eq!(
        engine
            .table_entry(Capability::Memcpy, 0)
            .unwrap()
            .unwrap()
            .device,
        second
    );
    // ...but the channel the reader may still hold is not freed.
    assert!(first_chans[0].is_allocated());
    assert_eq!(engine.channel_counts(seen).unwrap().client_count, 1);
    match engine.synchronize(Duration::from_millis(20)) {
        Err(EngineError::GracePeriodTimeout { laggards }) => {
            assert_eq!(laggards, ["stalled poller"])
        }
        other => panic!("expected a timeout naming the reader, got {other:?}"),
    }
    assert!(first_chans[0].is_allocated());

    reader.quiescent();
    assert_ne!(reader.generation().unwrap(), generation);
    assert_eq!(
        reader.lookup(Capability::Memcpy).unwrap().id().device,
        second
    );
    engine.synchronize(Duration::from_secs(5)).unwrap();
    assert!(!first_chans[0].is_allocated());
    assert!(engine.dump().devices.iter().all(|d| d.id != first));
}

#[test]
fn an_offline_reader_holds_nothing_back() {
    let engine = engine(1);
    let (dev, chans) = device(&engine, "dev", CapMask::MEMCPY, 1);
    engine.get_client();
    let mut reader = engine.table_reader(0).unwrap();
    assert!(reader.lookup(Capability::Memcpy).is_some());
    reader.offline();
    assert!(reader.lookup(Capability::Memcpy).is_none());
    engine.unregister_device(dev).unwrap();
    assert!(
        !chans[0].is_allocated(),
        "nothing waits for an offline reader"
    );
    reader.online();
    assert!(reader.lookup(Capability::Memcpy).is_none());
}

#[test]
fn the_dump_shows_devices_counts_and_the_table() {
    let engine = engine(3);
    device(&engine, "emu0", memcpy_xor(), 2);
    engine.get_client();
    engine.set_cpu_online(2, false).unwrap();
    let dump = engine.dump();
    assert_eq!(dump.online_cpus, [0, 1]);
    assert_eq!(dump.entry(Capability::Memcpy, 1).map(|c| c.index), Some(1));
    assert_eq!(dump.entry(Capability::Memcpy, 2), None);
    let text = dump.to_string();
    assert!(
        text.contains("engine: 1 client(s), cpus possible 3 online 0-1"),
        "{text}"
    );
    assert!(
        text.contains("device 0 \"emu0\": caps memcpy|xor, 2 channel(s), public"),
        "{text}"
    );
    assert!(text.contains("emu0/chan1"), "{text}");
    let memcpy_line = text.lines().find(|l| l.starts_with("memcpy")).unwrap();
    assert_eq!(
        memcpy_line.split_whitespace().collect::<Vec<_>>(),
        ["memcpy", "0.0", "0.1", "off"]
    );
}

#[test]
fn a_private_holder_keeps_its_channel_past_the_engine_handle() {
    let engine = engine(1);
    let (_, chans) = device(&engine, "dev", CapMask::MEMCPY, 1);
    let held = engine.request_channel(CapMask::MEMCPY, |_| true).unwrap();
    drop(engine);
    assert!(
        chans[0].is_allocated(),
        "the guard keeps the engine and the channel alive"
    );
    assert_eq!(held.name(), "dev/chan0");
    drop(held);
    assert!(!chans[0].is_allocated());
    assert_eq!(chans[0].allocations(), chans[0].frees());
}
