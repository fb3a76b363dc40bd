//! Model-based property test of the engine's reference counting and per-CPU channel table.
//!
//! Random sequences of operations (register and unregister public or always-private devices,
//! get and put clients, request and release private channels, take CPUs on and offline, make
//! channel allocations fail) are applied both to a real [`dmaplane::Engine`] and to a small
//! reference model of the *patched* Linux dmaengine algorithm that lives in this file. After
//! every operation the test checks that the per-CPU tables are equal, that every channel's
//! `client_count`, `table_count` and private-holder flag are equal, that no count goes negative,
//! that backend resources are allocated exactly for the channels with `client_count > 0` (and
//! that the allocation and free totals match the model, so there is no leak and no double
//! allocation), and that errors are the ones the model predicts. At the end every client is put,
//! every private channel released and every device unregistered, after which every count must
//! be zero and every [`NullChannel`] must have freed as often as it allocated.
//!
//! The model was written from the text of the seed patch
//! (`dmaengine-refcount-hotplug.patch.txt`, "dmaengine: enhance DMA channel reference count
//! management") and the restatement of the v3.4 baseline and of the patch's changes in the
//! reference notes, not from the engine's source: `nth_chan` takes a reference on every
//! eligible channel it visits, skips a channel whose first reference fails to allocate, tests
//! `n-- == 0` before updating the running minimum (strict `<`, earliest wins ties), keeps only
//! the hit (or the minimum on a miss) and bumps its `table_count`; a rebalance first clears
//! the table (dropping table counts), then refills it with one counter across capabilities and
//! online CPUs while any client exists, and only then puts the old entries. The plain tests at
//! the bottom pin the model against the worked examples of the reference notes.

use std::collections::HashMap;
use std::sync::Arc;

use dmaplane::log::LogHook;
use dmaplane::{
    CapMask, Capability, Channel, ChannelBackend, ChannelId, DeviceId, DeviceSpec, Engine,
    EngineConfig, EngineError, NullChannel, PrivateChannel,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

/// One channel of the model.
#[derive(Clone, Debug)]
struct MChan {
    /// Holders: table slots plus the private holder.
    client_count: i64,
    /// Table slots naming the channel.
    table_count: i64,
    /// Whether a private request holds it.
    held_privately: bool,
    /// Whether the backend refuses the next allocation.
    refuse: bool,
    /// Successful allocations so far.
    allocations: u64,
    /// Frees so far.
    frees: u64,
}

impl MChan {
    fn new() -> Self {
        MChan {
            client_count: 0,
            table_count: 0,
            held_privately: false,
            refuse: false,
            allocations: 0,
            frees: 0,
        }
    }
}

/// One device of the model.
#[derive(Clone, Debug)]
struct MDev {
    id: DeviceId,
    caps: CapMask,
    /// Private while > 0; an always-private device starts at 1.
    private_count: i64,
    /// Still in the device list (eligible for the table and for private requests).
    registered: bool,
    chans: Vec<MChan>,
}

/// Channel handle inside the model: (device position in registration order, channel index).
type MRef = (usize, usize);

/// What a private request is expected to give.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RequestOutcome {
    Granted(ChannelId),
    NoChannel,
    AllocFailed(ChannelId),
}

/// The patched dmaengine algorithm, written from the patch text.
#[derive(Clone, Debug)]
struct Model {
    possible: usize,
    online: Vec<bool>,
    /// Tabled capabilities, in walk order.
    table_caps: Vec<Capability>,
    /// `table[k][cpu]` for the k-th tabled capability.
    table: Vec<Vec<Option<MRef>>>,
    clients: i64,
    /// Every device ever registered, in registration order (unregistered ones stay here so that
    /// their privately held channels can still be released and checked).
    devs: Vec<MDev>,
}

impl Model {
    fn new(possible: usize, table_mask: CapMask) -> Self {
        let table_caps: Vec<Capability> = table_mask.iter().collect();
        Model {
            possible,
            online: vec![true; possible],
            table: vec![vec![None; possible]; table_caps.len()],
            table_caps,
            clients: 0,
            devs: Vec::new(),
        }
    }

    fn chan(&self, r: MRef) -> &MChan {
        &self.devs[r.0].chans[r.1]
    }

    fn chan_mut(&mut self, r: MRef) -> &mut MChan {
        &mut self.devs[r.0].chans[r.1]
    }

    fn chan_id(&self, r: MRef) -> ChannelId {
        ChannelId {
            device: self.devs[r.0].id,
            index: r.1 as u16,
        }
    }

    fn is_private(&self, dev: usize) -> bool {
        self.devs[dev].private_count > 0
    }

    /// Take a reference; the first one allocates the backend. False when the allocation fails.
    fn get(&mut self, r: MRef) -> bool {
        let c = self.chan_mut(r);
        c.client_count += 1;
        if c.client_count == 1 {
            if c.refuse {
                c.client_count = 0;
                return false;
            }
            c.allocations += 1;
        }
        true
    }

    /// Drop a reference; the last one frees the backend.
    fn put(&mut self, r: MRef) {
        let c = self.chan_mut(r);
        assert!(c.client_count > 0, "model put on a channel with no holder");
        c.client_count -= 1;
        if c.client_count == 0 {
            c.frees += 1;
        }
    }

    /// The n-th eligible channel for `cap` (n < 0: never hit), falling back to the least-tabled
    /// one; keeps one reference on the result and bumps its table count.
    fn nth_chan(&mut self, cap: Capability, mut n: i64) -> Option<MRef> {
        let mut hit: Option<MRef> = None;
        let mut min: Option<MRef> = None;
        'devices: for d in 0..self.devs.len() {
            let dev = &self.devs[d];
            if !dev.registered || !dev.caps.has(cap) || dev.private_count > 0 {
                continue;
            }
            for ch in 0..self.devs[d].chans.len() {
                let r = (d, ch);
                if !self.get(r) {
                    continue;
                }
                let this_n = n;
                n -= 1;
                if this_n == 0 {
                    hit = Some(r);
                    break 'devices;
                }
                match min {
                    None => min = Some(r),
                    Some(m) if self.chan(r).table_count < self.chan(m).table_count => {
                        self.put(m);
                        min = Some(r);
                    }
                    Some(_) => self.put(r),
                }
            }
        }
        let result = match hit {
            Some(h) => {
                if let Some(m) = min {
                    self.put(m);
                }
                Some(h)
            }
            None => min,
        };
        if let Some(r) = result {
            self.chan_mut(r).table_count += 1;
        }
        result
    }

    fn rebalance(&mut self) {
        // 1. Remember and clear every entry, dropping its table count.
        let prev = std::mem::replace(
            &mut self.table,
            vec![vec![None; self.possible]; self.table_caps.len()],
        );
        for r in prev.iter().flatten().flatten() {
            self.chan_mut(*r).table_count -= 1;
        }
        // 2. Refill while any client exists: one counter over capabilities and online CPUs.
        if self.clients > 0 {
            let mut n: i64 = 0;
            for k in 0..self.table_caps.len() {
                let cap = self.table_caps[k];
                for cpu in 0..self.possible {
                    if !self.online[cpu] {
                        continue;
                    }
                    let chan = if self.possible > 1 {
                        let this_n = n;
                        n += 1;
                        self.nth_chan(cap, this_n)
                    } else {
                        self.nth_chan(cap, -1)
                    };
                    self.table[k][cpu] = chan;
                }
            }
        }
        // 3. Only now drop the old entries' references.
        for r in prev.iter().flatten().flatten() {
            self.put(*r);
        }
    }

    fn register(&mut self, id: DeviceId, caps: CapMask, channels: usize, private: bool) {
        self.devs.push(MDev {
            id,
            caps,
            private_count: i64::from(private),
            registered: true,
            chans: vec![MChan::new(); channels],
        });
        if !private {
            self.rebalance();
        }
    }

    /// False when the device was already unregistered.
    fn unregister(&mut self, dev: usize) -> bool {
        if !self.devs[dev].registered {
            return false;
        }
        self.devs[dev].registered = false;
        self.rebalance();
        true
    }

    fn get_client(&mut self) -> i64 {
        self.clients += 1;
        if self.clients == 1 {
            self.rebalance();
        }
        self.clients
    }

    /// None when there is no client.
    fn put_client(&mut self) -> Option<i64> {
        if self.clients == 0 {
            return None;
        }
        self.clients -= 1;
        if self.clients == 0 {
            self.rebalance();
        }
        Some(self.clients)
    }

    fn request(&mut self, mask: CapMask, filter: Filter) -> RequestOutcome {
        let mut last_alloc_failure = None;
        for d in 0..self.devs.len() {
            let dev = &self.devs[d];
            if !dev.registered || !dev.caps.contains(mask) {
                continue;
            }
            if dev.chans.len() > 1
                && dev.private_count == 0
                && dev.chans.iter().any(|c| c.client_count > 0)
            {
                continue;
            }
            let Some(ch) = (0..dev.chans.len())
                .find(|&i| dev.chans[i].client_count == 0 && filter.accepts(i as u16))
            else {
                continue;
            };
            let r = (d, ch);
            self.devs[d].private_count += 1;
            if self.get(r) {
                self.chan_mut(r).held_privately = true;
                return RequestOutcome::Granted(self.chan_id(r));
            }
            self.devs[d].private_count -= 1;
            last_alloc_failure = Some(self.chan_id(r));
        }
        match last_alloc_failure {
            Some(id) => RequestOutcome::AllocFailed(id),
            None => RequestOutcome::NoChannel,
        }
    }

    /// False when the channel is not privately held.
    fn release(&mut self, r: MRef) -> bool {
        if !self.chan(r).held_privately {
            return false;
        }
        self.chan_mut(r).held_privately = false;
        self.put(r);
        self.devs[r.0].private_count -= 1;
        assert!(self.devs[r.0].private_count >= 0);
        true
    }

    /// False when the state did not change (no rebalance).
    fn set_cpu_online(&mut self, cpu: usize, online: bool) -> bool {
        if self.online[cpu] == online {
            return false;
        }
        self.online[cpu] = online;
        self.rebalance();
        true
    }

    /// The table as the engine's dump reports it.
    fn table_ids(&self) -> Vec<(Capability, Vec<Option<ChannelId>>)> {
        self.table_caps
            .iter()
            .zip(&self.table)
            .map(|(&cap, row)| {
                (
                    cap,
                    row.iter().map(|e| e.map(|r| self.chan_id(r))).collect(),
                )
            })
            .collect()
    }

    fn all_refs(&self) -> Vec<MRef> {
        self.devs
            .iter()
            .enumerate()
            .flat_map(|(d, dev)| (0..dev.chans.len()).map(move |c| (d, c)))
            .collect()
    }

    /// Internal consistency: counts never negative; table counts equal table slots; client
    /// counts equal table slots plus the private holder.
    fn check_self(&self) {
        for r in self.all_refs() {
            let c = self.chan(r);
            assert!(c.client_count >= 0, "negative client_count on {r:?}");
            assert!(c.table_count >= 0, "negative table_count on {r:?}");
            let slots = self
                .table
                .iter()
                .flatten()
                .filter(|e| **e == Some(r))
                .count() as i64;
            assert_eq!(c.table_count, slots, "model table_count of {r:?}");
            assert_eq!(
                c.client_count,
                slots + i64::from(c.held_privately),
                "model client_count of {r:?}"
            );
        }
        for (d, dev) in self.devs.iter().enumerate() {
            assert!(
                dev.private_count >= 0,
                "negative private count on device {d}"
            );
        }
        assert!(self.clients >= 0);
    }
}

/// Filters a private request may use, deciding by channel index.
#[derive(Clone, Copy, Debug)]
enum Filter {
    All,
    EvenIndex,
    IndexAtLeastOne,
}

impl Filter {
    fn accepts(self, index: u16) -> bool {
        match self {
            Filter::All => true,
            Filter::EvenIndex => index % 2 == 0,
            Filter::IndexAtLeastOne => index >= 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Engine and model side by side
// ---------------------------------------------------------------------------------------------

struct Harness {
    engine: Engine,
    model: Model,
    /// Backends per model device, parallel to `model.devs`.
    backends: Vec<Vec<Arc<NullChannel>>>,
    /// The guards of privately held channels: only their holder can release them.
    held: HashMap<ChannelId, PrivateChannel>,
}

fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

impl Harness {
    fn new(possible: usize, table_mask: CapMask) -> Self {
        let config = EngineConfig::with_cpus(possible)
            .table_capabilities(table_mask)
            .log_hook(quiet());
        let engine = Engine::new(config).expect("engine config");
        Harness {
            engine,
            model: Model::new(possible, table_mask),
            backends: Vec::new(),
            held: HashMap::new(),
        }
    }

    fn register(&mut self, caps: CapMask, channels: usize, private: bool) -> usize {
        let backends: Vec<Arc<NullChannel>> = (0..channels).map(|_| NullChannel::new()).collect();
        let dyns: Vec<Arc<dyn ChannelBackend>> = backends
            .iter()
            .map(|b| b.clone() as Arc<dyn ChannelBackend>)
            .collect();
        let name = format!("dev{}", self.model.devs.len());
        let mut spec = DeviceSpec::new(name, caps, dyns);
        if private {
            spec = spec.private();
        }
        let id = self.engine.register_device(spec).expect("register_device");
        self.backends.push(backends);
        self.model.register(id, caps, channels, private);
        self.model.devs.len() - 1
    }

    fn unregister(&mut self, dev: usize) {
        let id = self.model.devs[dev].id;
        let expected_ok = self.model.unregister(dev);
        let got = self.engine.unregister_device(id);
        if expected_ok {
            got.expect("unregister_device of a registered device");
        } else {
            assert_eq!(
                got.err(),
                Some(EngineError::DeviceUnregistered(id)),
                "second unregister"
            );
        }
    }

    fn get_client(&mut self) {
        let expected = self.model.get_client();
        assert_eq!(self.engine.get_client() as i64, expected, "get_client");
    }

    fn put_client(&mut self) {
        let expected = self.model.put_client();
        match (self.engine.put_client(), expected) {
            (Ok(n), Some(m)) => assert_eq!(n as i64, m, "put_client"),
            (Err(e), None) => assert_eq!(e, EngineError::NoClients),
            (got, want) => panic!("put_client: engine {got:?}, model {want:?}"),
        }
    }

    fn request(&mut self, mask: CapMask, filter: Filter) {
        let expected = self.model.request(mask, filter);
        let got = self
            .engine
            .request_channel(mask, |c: &Channel| filter.accepts(c.id().index));
        match (&got, &expected) {
            (Ok(chan), RequestOutcome::Granted(id)) => assert_eq!(chan.id(), *id, "granted"),
            (Err(EngineError::NoChannelAvailable(m)), RequestOutcome::NoChannel) => {
                assert_eq!(*m, mask)
            }
            (
                Err(EngineError::ChannelAllocation { channel, .. }),
                RequestOutcome::AllocFailed(id),
            ) => assert_eq!(channel, id, "failed allocation"),
            _ => panic!("request_channel({mask}, {filter:?}): engine {got:?}, model {expected:?}"),
        }
        if let Ok(guard) = got {
            self.held.insert(guard.id(), guard);
        }
    }

    fn release(&mut self, r: MRef) {
        let id = self.model.chan_id(r);
        let expected_ok = self.model.release(r);
        // Only the holder of the guard can release; a channel with no guard here cannot even
        // be named for release, which the model must agree is "not held".
        match self.held.remove(&id) {
            Some(guard) => {
                assert!(expected_ok, "engine held {id} but the model says not held");
                guard.release().expect("release of a held channel");
            }
            None => assert!(
                !expected_ok,
                "model held {id} but the engine handed out no guard"
            ),
        }
    }

    fn set_cpu(&mut self, cpu: usize, online: bool) {
        let got = self.engine.set_cpu_online(cpu, online);
        if cpu >= self.model.possible {
            assert_eq!(
                got,
                Err(EngineError::UnknownCpu {
                    cpu,
                    possible: self.model.possible
                })
            );
            return;
        }
        got.expect("set_cpu_online");
        self.model.set_cpu_online(cpu, online);
    }

    fn toggle_refusal(&mut self, r: MRef) {
        let c = self.model.chan_mut(r);
        c.refuse = !c.refuse;
        self.backends[r.0][r.1].refuse_allocations(c.refuse);
    }

    /// Compare everything observable.
    fn check(&self) {
        self.model.check_self();
        let dump = self.engine.dump();
        assert_eq!(dump.table, self.model.table_ids(), "per-CPU table\n{dump}");
        assert_eq!(dump.clients as i64, self.model.clients, "clients");
        let online: Vec<usize> = (0..self.model.possible)
            .filter(|&c| self.model.online[c])
            .collect();
        assert_eq!(dump.online_cpus, online, "online cpus");
        for cap in Capability::TABLE_ORDER {
            for cpu in 0..self.model.possible {
                let want = self
                    .model
                    .table_caps
                    .iter()
                    .position(|&c| c == cap)
                    .and_then(|k| self.model.table[k][cpu])
                    .map(|r| self.model.chan_id(r));
                if let Ok(got) = self.engine.table_entry(cap, cpu) {
                    assert_eq!(got, want, "table_entry({cap}, {cpu})");
                } else {
                    assert!(want.is_none(), "table_entry({cap}, {cpu}) refused");
                }
            }
        }
        for r in self.model.all_refs() {
            let mc = self.model.chan(r);
            let id = self.model.chan_id(r);
            let dev = &self.model.devs[r.0];
            match self.engine.channel_counts(id) {
                Ok(counts) => {
                    assert_eq!(
                        i64::from(counts.client_count),
                        mc.client_count,
                        "client_count of {id}\n{dump}"
                    );
                    assert_eq!(
                        i64::from(counts.table_count),
                        mc.table_count,
                        "table_count of {id}\n{dump}"
                    );
                    assert_eq!(
                        counts.held_privately, mc.held_privately,
                        "held_privately of {id}"
                    );
                }
                Err(EngineError::DeviceUnregistered(d)) => {
                    // Only an unregistered device whose channels all went idle may be forgotten.
                    assert_eq!(d, id.device);
                    assert!(!dev.registered, "registered device {d} forgotten");
                    assert!(
                        dev.chans.iter().all(|c| c.client_count == 0),
                        "device {d} forgotten while model holds references"
                    );
                }
                Err(e) => panic!("channel_counts({id}): {e:?}"),
            }
            let b = &self.backends[r.0][r.1];
            assert_eq!(
                b.is_allocated(),
                mc.client_count > 0,
                "backend of {id} allocated={} with client_count {}",
                b.is_allocated(),
                mc.client_count
            );
            assert_eq!(b.allocations(), mc.allocations, "allocations of {id}");
            assert_eq!(b.frees(), mc.frees, "frees of {id}");
        }
        for d in &dump.devices {
            let Some(mi) = self.model.devs.iter().position(|m| m.id == d.id) else {
                panic!("engine reports unknown device {}", d.id);
            };
            let md = &self.model.devs[mi];
            assert_eq!(d.registered, md.registered, "registered flag of {}", d.id);
            if md.registered {
                assert_eq!(
                    d.private,
                    self.model.is_private(mi),
                    "private flag of {}",
                    d.id
                );
            }
            assert_eq!(d.capabilities, md.caps);
            assert_eq!(d.channels.len(), md.chans.len());
        }
        for (i, md) in self.model.devs.iter().enumerate() {
            let listed = dump.devices.iter().any(|d| d.id == md.id);
            if md.registered || md.chans.iter().any(|c| c.client_count > 0) {
                assert!(listed, "device {i} ({}) missing from the dump", md.id);
            }
        }
    }

    /// Put every client, release every private channel, unregister every device, then check
    /// that nothing is left.
    fn teardown(&mut self) {
        while self.model.clients > 0 {
            self.put_client();
            self.check();
        }
        for r in self.model.all_refs() {
            if self.model.chan(r).held_privately {
                self.release(r);
                self.check();
            }
        }
        for d in 0..self.model.devs.len() {
            if self.model.devs[d].registered {
                self.unregister(d);
                self.check();
            }
        }
        for r in self.model.all_refs() {
            let mc = self.model.chan(r);
            assert_eq!((mc.client_count, mc.table_count), (0, 0), "model leftover");
            let id = self.model.chan_id(r);
            if let Ok(counts) = self.engine.channel_counts(id) {
                assert_eq!(counts.client_count, 0, "leftover client_count of {id}");
                assert_eq!(counts.table_count, 0, "leftover table_count of {id}");
                assert!(!counts.held_privately);
            }
            let b = &self.backends[r.0][r.1];
            assert!(!b.is_allocated(), "{id} still allocated");
            assert_eq!(b.allocations(), b.frees(), "{id} allocations != frees");
        }
        assert!(self
            .engine
            .dump()
            .table
            .iter()
            .all(|(_, row)| row.iter().all(Option::is_none)));
    }

    fn apply(&mut self, op: &Op) {
        let ndev = self.model.devs.len();
        let refs = self.model.all_refs();
        match *op {
            Op::Register {
                private,
                caps,
                channels,
            } => {
                self.register(caps, channels, private);
            }
            Op::Unregister(sel) => {
                if ndev > 0 {
                    self.unregister(sel % ndev);
                }
            }
            Op::GetClient => self.get_client(),
            Op::PutClient => self.put_client(),
            Op::Request(mask, filter) => self.request(mask, filter),
            Op::Release { held, sel } => {
                let held_refs: Vec<MRef> = refs
                    .iter()
                    .copied()
                    .filter(|&r| self.model.chan(r).held_privately)
                    .collect();
                let pool = if held && !held_refs.is_empty() {
                    &held_refs
                } else {
                    &refs
                };
                if !pool.is_empty() {
                    self.release(pool[sel % pool.len()]);
                }
            }
            Op::SetCpu { cpu, online } => self.set_cpu(cpu % (self.model.possible + 1), online),
            Op::ToggleRefusal(sel) => {
                if !refs.is_empty() {
                    self.toggle_refusal(refs[sel % refs.len()]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operation generation
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Register {
        private: bool,
        caps: CapMask,
        channels: usize,
    },
    Unregister(usize),
    GetClient,
    PutClient,
    Request(CapMask, Filter),
    Release {
        held: bool,
        sel: usize,
    },
    SetCpu {
        cpu: usize,
        online: bool,
    },
    ToggleRefusal(usize),
}

fn any_caps() -> impl Strategy<Value = CapMask> {
    (1u32..(1 << Capability::COUNT)).prop_map(CapMask::from_bits_truncate)
}

/// Device capabilities: non-empty, usually including Memcpy.
fn device_caps() -> impl Strategy<Value = CapMask> {
    prop_oneof![
        3 => any_caps().prop_map(|m| m.with(Capability::Memcpy)),
        1 => Just(CapMask::MEMCPY),
        1 => any_caps(),
    ]
}

fn request_mask() -> impl Strategy<Value = CapMask> {
    prop_oneof![
        3 => Just(CapMask::MEMCPY),
        1 => Just(CapMask::FILL),
        1 => Just(CapMask::of(&[Capability::Memcpy, Capability::Xor])),
        1 => any_caps(),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    prop_oneof![
        2 => Just(Filter::All),
        1 => Just(Filter::EvenIndex),
        1 => Just(Filter::IndexAtLeastOne),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::bool::weighted(0.25), device_caps(), 1usize..=4).prop_map(
            |(private, caps, channels)| Op::Register { private, caps, channels }
        ),
        2 => any::<usize>().prop_map(Op::Unregister),
        3 => Just(Op::GetClient),
        2 => Just(Op::PutClient),
        3 => (request_mask(), filter()).prop_map(|(m, f)| Op::Request(m, f)),
        2 => (prop::bool::weighted(0.8), any::<usize>())
            .prop_map(|(held, sel)| Op::Release { held, sel }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(cpu, online)| Op::SetCpu { cpu, online }),
        2 => any::<usize>().prop_map(Op::ToggleRefusal),
    ]
}

fn table_mask() -> impl Strategy<Value = CapMask> {
    prop_oneof![
        3 => Just(CapMask::ALL),
        1 => Just(CapMask::of(&[Capability::Memcpy, Capability::Fill])),
        1 => Just(CapMask::MEMCPY),
        1 => Just(CapMask::of(&[Capability::Xor, Capability::Pq, Capability::Fill])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_patched_dmaengine_model(
        cpus in 1usize..=5,
        mask in table_mask(),
        ops in prop::collection::vec(op(), 0..40),
    ) {
        let mut h = Harness::new(cpus, mask);
        h.check();
        for op in &ops {
            h.apply(op);
            h.check();
        }
        h.teardown();
    }
}

// ---------------------------------------------------------------------------------------------
// The model against the worked examples of the reference notes (§1.1), and the engine against
// the model on the same examples.
// ---------------------------------------------------------------------------------------------

fn memcpy_xor() -> CapMask {
    CapMask::of(&[Capability::Memcpy, Capability::Xor])
}

/// Channel index of the model's entry for (cap, cpu).
fn entry(m: &Model, cap: Capability, cpu: usize) -> Option<usize> {
    let k = m.table_caps.iter().position(|&c| c == cap)?;
    m.table[k][cpu].map(|r| r.1)
}

/// One device with `channels` channels and caps {MEMCPY, XOR}, `cpus` CPUs, one client.
fn worked_example(cpus: usize, channels: usize) -> Harness {
    let mut h = Harness::new(cpus, CapMask::ALL);
    h.register(memcpy_xor(), channels, false);
    h.check();
    h.get_client();
    h.check();
    h
}

#[test]
fn model_four_channels_two_cpus_isolates_operations() {
    let h = worked_example(2, 4);
    let m = &h.model;
    // MEMCPY: cpu0 -> nth(0) = c0, cpu1 -> nth(1) = c1; XOR: cpu0 -> nth(2) = c2, cpu1 -> c3.
    assert_eq!(entry(m, Capability::Memcpy, 0), Some(0));
    assert_eq!(entry(m, Capability::Memcpy, 1), Some(1));
    assert_eq!(entry(m, Capability::Xor, 0), Some(2));
    assert_eq!(entry(m, Capability::Xor, 1), Some(3));
    for cap in [
        Capability::Pq,
        Capability::XorVal,
        Capability::PqVal,
        Capability::Fill,
    ] {
        assert_eq!(entry(m, cap, 0), None);
        assert_eq!(entry(m, cap, 1), None);
    }
    for c in &m.devs[0].chans {
        assert_eq!((c.client_count, c.table_count), (1, 1));
    }
}

#[test]
fn model_two_channels_two_cpus_falls_back_for_xor() {
    let h = worked_example(2, 2);
    let m = &h.model;
    assert_eq!(entry(m, Capability::Memcpy, 0), Some(0));
    assert_eq!(entry(m, Capability::Memcpy, 1), Some(1));
    // XOR cpu0: nth(2) fails -> min(c0 = 1, c1 = 1) = c0 (earliest wins the tie);
    // XOR cpu1: min(c0 = 2, c1 = 1) = c1.
    assert_eq!(entry(m, Capability::Xor, 0), Some(0));
    assert_eq!(entry(m, Capability::Xor, 1), Some(1));
    for c in &m.devs[0].chans {
        assert_eq!((c.client_count, c.table_count), (2, 2));
        // Each channel stayed allocated through the pass: allocated exactly once.
        assert_eq!((c.allocations, c.frees), (1, 0));
    }
}

#[test]
fn model_two_channels_three_cpus_memcpy_cpu2_falls_back_to_c0() {
    let h = worked_example(3, 2);
    let m = &h.model;
    assert_eq!(entry(m, Capability::Memcpy, 0), Some(0));
    assert_eq!(entry(m, Capability::Memcpy, 1), Some(1));
    assert_eq!(entry(m, Capability::Memcpy, 2), Some(0));
    // XOR only falls back: min(c0 = 2, c1 = 1) = c1, min(2, 2) = c0, min(3, 2) = c1.
    assert_eq!(entry(m, Capability::Xor, 0), Some(1));
    assert_eq!(entry(m, Capability::Xor, 1), Some(0));
    assert_eq!(entry(m, Capability::Xor, 2), Some(1));
    for c in &m.devs[0].chans {
        assert_eq!((c.client_count, c.table_count), (3, 3));
    }
}

#[test]
fn model_uniprocessor_always_falls_back() {
    let h = worked_example(1, 4);
    let m = &h.model;
    // nth_chan(cap, -1): the least-tabled, earliest channel: c0 for MEMCPY, then c1 for XOR.
    assert_eq!(entry(m, Capability::Memcpy, 0), Some(0));
    assert_eq!(entry(m, Capability::Xor, 0), Some(1));
    // c2 and c3 were visited (allocated, then freed at once) but are not in the table.
    for (i, c) in m.devs[0].chans.iter().enumerate() {
        let want = i64::from(i < 2);
        assert_eq!((c.client_count, c.table_count), (want, want));
    }
}

#[test]
fn model_last_client_and_unregister_drop_everything() {
    let mut h = worked_example(2, 2);
    // A private device, a held private channel, an unregister while held, then the release.
    let p = h.register(CapMask::MEMCPY, 1, true);
    h.check();
    h.request(CapMask::MEMCPY, Filter::All);
    h.check();
    assert!(h.model.devs[p].chans[0].held_privately);
    h.unregister(p);
    h.check();
    h.unregister(p);
    h.check();
    h.put_client();
    h.check();
    h.put_client();
    h.check();
    h.teardown();
}
