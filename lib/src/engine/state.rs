//! The engine's bookkeeping, as the seed patch defines it: devices in registration order,
//! per-channel `client_count` and `table_count`, the client count, private channels, and the
//! rebalance that rebuilds the per-CPU distribution with `nth_chan`.
//!
//! Everything here runs under the engine's control lock and touches no hardware except through
//! the backend hooks. Two points differ from the patch, both for invariant 3 (no reader ever
//! sees a freed channel):
//!
//! - The references the previous table held are not dropped at the end of the rebalance but
//!   when the retired snapshot is reclaimed after its grace period. With no reader online the
//!   reclaim happens within the same call, so counts then equal the patch's exactly.
//! - `client_count` therefore also counts slots of retired tables, and a private request sees
//!   such a channel as busy, since a reader may still be using it.

use super::device::{Channel, ChannelId, DeviceId};
use super::grace::{GraceDomain, GracePeriod};
use super::table::TableSnapshot;
use super::EngineError;
use crate::capability::{CapMask, Capability};
use crate::log::{LogHook, LogLevel};
use crate::queue::{ChannelBackend, DeviceSpec};
use std::sync::Arc;

pub(crate) struct ChannelEntry {
    pub(crate) channel: Arc<Channel>,
    pub(crate) backend: Arc<dyn ChannelBackend>,
    /// Holders: table slots (current and not yet reclaimed) plus a private holder.
    pub(crate) client_count: u32,
    /// Slots of the current table that name this channel.
    pub(crate) table_count: u32,
    pub(crate) held_privately: bool,
}

pub(crate) struct DeviceEntry {
    pub(crate) id: DeviceId,
    pub(crate) name: String,
    pub(crate) capabilities: CapMask,
    /// Non-zero while the device is private: one for an always-private device, plus one per
    /// channel handed out by a private request (the kernel's `privatecnt` and `DMA_PRIVATE`).
    pub(crate) private_count: u32,
    /// False once unregistered; the entry lingers until every channel is released.
    pub(crate) registered: bool,
    pub(crate) channels: Vec<ChannelEntry>,
}

impl DeviceEntry {
    pub(crate) fn is_private(&self) -> bool {
        self.private_count > 0
    }

    fn is_public_for(&self, cap: Capability) -> bool {
        self.registered && !self.is_private() && self.capabilities.has(cap)
    }
}

struct Retired {
    grace_period: GracePeriod,
    snapshot: Box<TableSnapshot>,
}

/// What unregistering a device left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnregisterReport {
    /// The device unregistered.
    pub device: DeviceId,
    /// Channels still held by a private holder; released when the holder lets go.
    pub held_privately: Vec<ChannelId>,
    /// Channels whose table references wait for a grace period (a reader may still see them).
    pub awaiting_grace_period: Vec<ChannelId>,
    /// Whether every channel was released by the time the call returned.
    pub released: bool,
}

pub(crate) struct EngineState {
    pub(crate) possible_cpus: usize,
    pub(crate) online: Vec<bool>,
    pub(crate) table_caps: Vec<Capability>,
    /// Registration order, which is also id order; unregistered devices linger until released.
    pub(crate) devices: Vec<DeviceEntry>,
    next_device_id: u32,
    pub(crate) clients: usize,
    /// The current distribution, `[row * possible_cpus + cpu]`, rows in walk order. The
    /// published snapshot mirrors it.
    pub(crate) table: Vec<Option<ChannelId>>,
    pub(crate) generation: u64,
    retired: Vec<Retired>,
    pub(crate) log: LogHook,
    /// CPUs that have a data-path client (at most one each).
    client_cpus: Vec<bool>,
}

impl EngineState {
    pub(crate) fn new(
        possible_cpus: usize,
        online: Vec<bool>,
        table_caps: Vec<Capability>,
        log: LogHook,
    ) -> Self {
        let slots = table_caps.len() * possible_cpus;
        EngineState {
            possible_cpus,
            online,
            table_caps,
            devices: Vec::new(),
            next_device_id: 0,
            clients: 0,
            table: vec![None; slots],
            generation: 0,
            retired: Vec::new(),
            log,
            client_cpus: vec![false; possible_cpus],
        }
    }

    /// Marks `cpu` as having a data-path client; refuses a second one.
    pub(crate) fn claim_client_cpu(&mut self, cpu: usize) -> Result<(), EngineError> {
        let possible = self.possible_cpus;
        let taken = self
            .client_cpus
            .get_mut(cpu)
            .ok_or(EngineError::UnknownCpu { cpu, possible })?;
        if *taken {
            return Err(EngineError::CpuHasClient(cpu));
        }
        *taken = true;
        Ok(())
    }

    /// Ends `claim_client_cpu`.
    pub(crate) fn release_client_cpu(&mut self, cpu: usize) {
        if let Some(taken) = self.client_cpus.get_mut(cpu) {
            *taken = false;
        }
    }

    /// One more reference on a channel that is referenced already (by a table, retired or
    /// current): a client keeps it while operations it submitted there are in flight.
    pub(crate) fn hold(&mut self, id: ChannelId) -> Result<(), EngineError> {
        let (dev, index) = self.channel_position(id)?;
        let entry = &mut self.devices[dev].channels[index];
        if entry.client_count == 0 {
            return Err(EngineError::ChannelNotReferenced(id));
        }
        entry.client_count += 1;
        Ok(())
    }

    /// Ends `hold`: the last reference frees the channel.
    pub(crate) fn unhold(&mut self, id: ChannelId) {
        self.chan_put(id);
        self.forget_released_devices();
    }

    pub(crate) fn warn(&self, message: &str) {
        (self.log)(LogLevel::Warn, message);
    }

    fn info(&self, message: &str) {
        (self.log)(LogLevel::Info, message);
    }

    fn device_position(&self, id: DeviceId) -> Result<usize, EngineError> {
        self.devices
            .binary_search_by_key(&id, |d| d.id)
            .map_err(|_| {
                if id.0 < self.next_device_id {
                    EngineError::DeviceUnregistered(id)
                } else {
                    EngineError::UnknownDevice(id)
                }
            })
    }

    /// A device's name and its channels' backends, registered or departing.
    pub(crate) fn device_backends(
        &self,
        id: DeviceId,
    ) -> Result<(String, Vec<Arc<dyn ChannelBackend>>), EngineError> {
        let device = &self.devices[self.device_position(id)?];
        Ok((
            device.name.clone(),
            device
                .channels
                .iter()
                .map(|c| Arc::clone(&c.backend))
                .collect(),
        ))
    }

    /// Whether a device id is still known (registered, or departing with channels held).
    pub(crate) fn is_listed(&self, id: DeviceId) -> bool {
        self.device_position(id).is_ok()
    }

    /// The registered devices, in registration order.
    pub(crate) fn registered_devices(&self) -> Vec<(DeviceId, String)> {
        self.devices
            .iter()
            .filter(|d| d.registered)
            .map(|d| (d.id, d.name.clone()))
            .collect()
    }

    /// Position of a channel, on a registered or a departing device.
    fn channel_position(&self, id: ChannelId) -> Result<(usize, usize), EngineError> {
        let dev = self.device_position(id.device)?;
        let index = usize::from(id.index);
        if index >= self.devices[dev].channels.len() {
            return Err(EngineError::UnknownChannel(id));
        }
        Ok((dev, index))
    }

    pub(crate) fn channel(&self, id: ChannelId) -> Result<&ChannelEntry, EngineError> {
        let (dev, index) = self.channel_position(id)?;
        Ok(&self.devices[dev].channels[index])
    }

    fn channel_mut(&mut self, id: ChannelId) -> &mut ChannelEntry {
        let (dev, index) = self
            .channel_position(id)
            .expect("a counted channel's device stays listed until released");
        &mut self.devices[dev].channels[index]
    }

    pub(crate) fn register(&mut self, spec: DeviceSpec) -> Result<DeviceId, EngineError> {
        if spec.channels.is_empty() {
            return Err(EngineError::InvalidConfig(format!(
                "device {:?} has no channels",
                spec.name
            )));
        }
        if spec.channels.len() > usize::from(u16::MAX) {
            return Err(EngineError::InvalidConfig(format!(
                "device {:?} has {} channels, more than {}",
                spec.name,
                spec.channels.len(),
                u16::MAX
            )));
        }
        if spec.capabilities.is_empty() {
            return Err(EngineError::InvalidConfig(format!(
                "device {:?} has no capability",
                spec.name
            )));
        }
        let id = DeviceId(self.next_device_id);
        self.next_device_id = self.next_device_id.checked_add(1).ok_or_else(|| {
            EngineError::InvalidConfig("device ids are exhausted (2^32 registrations)".into())
        })?;
        let channels = spec
            .channels
            .into_iter()
            .enumerate()
            .map(|(index, backend)| {
                let chan_id = ChannelId {
                    device: id,
                    index: index as u16,
                };
                let name = format!("{}/chan{index}", spec.name);
                ChannelEntry {
                    channel: Arc::new(Channel::new(chan_id, name, backend.clone())),
                    backend,
                    client_count: 0,
                    table_count: 0,
                    held_privately: false,
                }
            })
            .collect();
        self.devices.push(DeviceEntry {
            id,
            name: spec.name,
            capabilities: spec.capabilities,
            private_count: u32::from(spec.private),
            registered: true,
            channels,
        });
        Ok(id)
    }

    /// Takes a device out of the list. The caller rebalances next.
    pub(crate) fn delist(&mut self, id: DeviceId) -> Result<(), EngineError> {
        let dev = self.device_position(id)?;
        if !self.devices[dev].registered {
            return Err(EngineError::DeviceUnregistered(id));
        }
        self.devices[dev].registered = false;
        Ok(())
    }

    /// What an unregister left behind, read after the rebalance and a reclaim attempt.
    pub(crate) fn unregister_report(&self, id: DeviceId) -> UnregisterReport {
        let Ok(dev) = self.device_position(id) else {
            return UnregisterReport {
                device: id,
                held_privately: Vec::new(),
                awaiting_grace_period: Vec::new(),
                released: true,
            };
        };
        let channels = &self.devices[dev].channels;
        let held_privately: Vec<_> = channels
            .iter()
            .filter(|c| c.held_privately)
            .map(|c| c.channel.id())
            .collect();
        let awaiting_grace_period = channels
            .iter()
            .filter(|c| c.client_count > u32::from(c.held_privately))
            .map(|c| c.channel.id())
            .collect();
        UnregisterReport {
            device: id,
            held_privately,
            awaiting_grace_period,
            released: false,
        }
    }

    /// `dma_chan_get` on the channel at `pos` (device position, channel index): the first
    /// reference allocates the channel's resources.
    fn get_at(&mut self, (dev, index): (usize, usize)) -> Result<(), EngineError> {
        let entry = &mut self.devices[dev].channels[index];
        if entry.client_count == 0 {
            if let Err(err) = entry.backend.allocate_resources() {
                return Err(EngineError::ChannelAllocation {
                    channel: entry.channel.id(),
                    reason: err.to_string(),
                });
            }
        }
        entry.client_count += 1;
        Ok(())
    }

    /// `dma_chan_put` on the channel at `pos`: the last reference frees its resources.
    fn put_at(&mut self, (dev, index): (usize, usize)) {
        let entry = &mut self.devices[dev].channels[index];
        debug_assert!(entry.client_count > 0, "put of unreferenced channel");
        if entry.client_count == 0 {
            let message = format!(
                "reference count of channel {} would go negative",
                entry.channel.id()
            );
            self.warn(&message);
            return;
        }
        entry.client_count -= 1;
        if entry.client_count == 0 {
            entry.backend.free_resources();
        }
    }

    fn chan_put(&mut self, id: ChannelId) {
        match self.channel_position(id) {
            Ok(pos) => self.put_at(pos),
            Err(err) => self.warn(&format!("put of channel {id}: {err}")),
        }
    }

    fn table_count_at(&self, (dev, index): (usize, usize)) -> u32 {
        self.devices[dev].channels[index].table_count
    }

    /// `nth_chan(cap, n)`: the `n`-th channel offering `cap` that accepts a reference, or,
    /// when there is none (or `n` is `None`), the least-used one visited, earliest on ties.
    /// Returns it with a reference taken and its `table_count` raised.
    fn nth_chan(&mut self, cap: Capability, n: Option<usize>) -> Option<ChannelId> {
        let mut remaining = n;
        let mut least: Option<(usize, usize)> = None;
        let mut hit = None;
        'devices: for dev in 0..self.devices.len() {
            if !self.devices[dev].is_public_for(cap) {
                continue;
            }
            for index in 0..self.devices[dev].channels.len() {
                let pos = (dev, index);
                if let Err(err) = self.get_at(pos) {
                    self.warn(&format!("table rebalance skips a channel: {err}"));
                    continue;
                }
                match remaining {
                    Some(0) => {
                        hit = Some(pos);
                        break 'devices;
                    }
                    Some(ref mut left) => *left -= 1,
                    None => {}
                }
                match least {
                    Some(min) if self.table_count_at(pos) < self.table_count_at(min) => {
                        self.put_at(min);
                        least = Some(pos);
                    }
                    Some(_) => self.put_at(pos),
                    None => least = Some(pos),
                }
            }
        }
        let chosen = match (hit, least) {
            (Some(hit), Some(min)) => {
                self.put_at(min);
                Some(hit)
            }
            (Some(hit), None) => Some(hit),
            (None, min) => min,
        };
        chosen.map(|(dev, index)| {
            let entry = &mut self.devices[dev].channels[index];
            entry.table_count += 1;
            entry.channel.id()
        })
    }

    /// `dma_channel_rebalance`, up to building the new distribution. The previous
    /// distribution's references stay taken: the caller retires its snapshot and they are
    /// dropped when the snapshot is reclaimed.
    pub(crate) fn rebalance(&mut self) {
        let slots = self.table.len();
        let previous = std::mem::replace(&mut self.table, vec![None; slots]);
        for id in previous.into_iter().flatten() {
            self.channel_mut(id).table_count -= 1;
        }
        if self.clients > 0 {
            let mut n = 0;
            for row in 0..self.table_caps.len() {
                let cap = self.table_caps[row];
                for cpu in 0..self.possible_cpus {
                    if !self.online[cpu] {
                        continue;
                    }
                    let chan = if self.possible_cpus > 1 {
                        n += 1;
                        self.nth_chan(cap, Some(n - 1))
                    } else {
                        self.nth_chan(cap, None)
                    };
                    self.table[row * self.possible_cpus + cpu] = chan;
                }
            }
        }
        self.generation += 1;
    }

    /// The snapshot readers will see for the current distribution.
    pub(crate) fn build_snapshot(&self) -> TableSnapshot {
        TableSnapshot::build(
            self.generation,
            &self.table_caps,
            self.possible_cpus,
            |row, cpu| {
                self.table[row * self.possible_cpus + cpu]
                    .map(|id| Arc::clone(&self.channel(id).expect("tabled").channel))
            },
        )
    }

    pub(crate) fn retire(&mut self, grace_period: GracePeriod, snapshot: Box<TableSnapshot>) {
        self.retired.push(Retired {
            grace_period,
            snapshot,
        });
    }

    /// Drops the references of retired snapshots whose grace period has elapsed, then forgets
    /// unregistered devices with nothing left held. Returns the snapshots still waiting.
    pub(crate) fn reclaim(&mut self, grace: &GraceDomain) -> usize {
        let ready = self
            .retired
            .iter()
            .take_while(|r| grace.elapsed(r.grace_period))
            .count();
        for retired in self.retired.drain(..ready).collect::<Vec<_>>() {
            for id in retired.snapshot.referenced_channels() {
                self.chan_put(id);
            }
        }
        self.forget_released_devices();
        self.retired.len()
    }

    /// The oldest grace period still holding a snapshot back.
    pub(crate) fn oldest_pending(&self) -> Option<GracePeriod> {
        self.retired.first().map(|r| r.grace_period)
    }

    pub(crate) fn retired_count(&self) -> usize {
        self.retired.len()
    }

    fn forget_released_devices(&mut self) {
        let mut released = Vec::new();
        self.devices.retain(|d| {
            let gone = !d.registered && d.channels.iter().all(|c| c.client_count == 0);
            if gone {
                released.push((d.id, d.name.clone()));
            }
            !gone
        });
        for (id, name) in released {
            self.info(&format!("device {id} ({name}) released: no holder is left"));
        }
    }

    /// `__dma_request_channel` with `private_candidate`.
    pub(crate) fn request_private(
        &mut self,
        mask: CapMask,
        filter: &mut dyn FnMut(&Channel) -> bool,
    ) -> Result<Arc<Channel>, EngineError> {
        let mut failure = None;
        for dev in 0..self.devices.len() {
            let device = &self.devices[dev];
            if !device.registered || !device.capabilities.contains(mask) {
                continue;
            }
            // A public multi-channel device goes private as a whole or not at all.
            if device.channels.len() > 1
                && !device.is_private()
                && device.channels.iter().any(|c| c.client_count > 0)
            {
                continue;
            }
            let Some(index) = device
                .channels
                .iter()
                .position(|c| c.client_count == 0 && filter(&c.channel))
            else {
                continue;
            };
            let id = device.channels[index].channel.id();
            self.devices[dev].private_count += 1;
            match self.get_at((dev, index)) {
                Ok(()) => {
                    let entry = &mut self.devices[dev].channels[index];
                    entry.held_privately = true;
                    return Ok(Arc::clone(&entry.channel));
                }
                Err(err) => {
                    self.warn(&format!("private request skips channel {id}: {err}"));
                    self.devices[dev].private_count -= 1;
                    failure = Some(err);
                }
            }
        }
        Err(failure.unwrap_or(EngineError::NoChannelAvailable(mask)))
    }

    /// `dma_release_channel`.
    pub(crate) fn release_private(&mut self, id: ChannelId) -> Result<(), EngineError> {
        let (dev, index) = self.channel_position(id)?;
        let entry = &mut self.devices[dev].channels[index];
        if !entry.held_privately {
            return Err(EngineError::ChannelNotHeld(id));
        }
        entry.held_privately = false;
        self.devices[dev].private_count -= 1;
        self.put_at((dev, index));
        self.forget_released_devices();
        Ok(())
    }

    /// Drops every reference the engine still holds; used when the engine itself goes away,
    /// when no reader can exist any more.
    pub(crate) fn release_everything(&mut self) {
        for retired in std::mem::take(&mut self.retired) {
            for id in retired.snapshot.referenced_channels() {
                self.chan_put(id);
            }
        }
        for id in std::mem::take(&mut self.table).into_iter().flatten() {
            self.chan_put(id);
        }
        for device in &mut self.devices {
            for entry in &mut device.channels {
                if entry.client_count > 0 {
                    entry.client_count = 0;
                    entry.held_privately = false;
                    entry.backend.free_resources();
                }
            }
        }
    }
}
