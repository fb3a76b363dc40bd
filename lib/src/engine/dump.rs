//! A consistent, printable picture of the engine, like the kernel's dmaengine debugfs file.
//!
//! Examples and the C ABI print it; tests read its fields.

use std::fmt;

use super::state::EngineState;
use super::{ChannelId, DeviceId};
use crate::capability::{CapMask, Capability};
use crate::cpu::format_cpu_list;

/// One channel in an [`EngineDump`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelDump {
    /// The channel.
    pub id: ChannelId,
    /// Its name.
    pub name: String,
    /// Holders (table slots not yet reclaimed, private holder).
    pub client_count: u32,
    /// Slots of the current table naming it.
    pub table_count: u32,
    /// Whether a private request holds it.
    pub held_privately: bool,
}

/// One device in an [`EngineDump`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDump {
    /// The device.
    pub id: DeviceId,
    /// Its name.
    pub name: String,
    /// Its capabilities.
    pub capabilities: CapMask,
    /// Whether it is private (always, or because a channel is privately held).
    pub private: bool,
    /// False for an unregistered device still waiting for holders to let go.
    pub registered: bool,
    /// Its channels in order.
    pub channels: Vec<ChannelDump>,
}

/// Devices, channels, counts and the per-CPU table at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineDump {
    /// Possible CPUs.
    pub possible_cpus: usize,
    /// Online CPUs, ascending.
    pub online_cpus: Vec<usize>,
    /// Registered clients.
    pub clients: usize,
    /// Rebalances so far.
    pub generation: u64,
    /// Registered table readers.
    pub readers: usize,
    /// Retired tables waiting for a grace period.
    pub retired_tables: usize,
    /// Devices in registration order, including unregistered ones not yet released.
    pub devices: Vec<DeviceDump>,
    /// Per tabled capability in walk order, the channel of each possible CPU.
    pub table: Vec<(Capability, Vec<Option<ChannelId>>)>,
}

impl EngineDump {
    pub(crate) fn capture(state: &EngineState, readers: usize) -> Self {
        let devices = state
            .devices
            .iter()
            .map(|d| DeviceDump {
                id: d.id,
                name: d.name.clone(),
                capabilities: d.capabilities,
                private: d.is_private(),
                registered: d.registered,
                channels: d
                    .channels
                    .iter()
                    .map(|c| ChannelDump {
                        id: c.channel.id(),
                        name: c.channel.name().to_string(),
                        client_count: c.client_count,
                        table_count: c.table_count,
                        held_privately: c.held_privately,
                    })
                    .collect(),
            })
            .collect();
        let table = state
            .table_caps
            .iter()
            .zip(state.table.chunks(state.possible_cpus))
            .map(|(&cap, row)| (cap, row.to_vec()))
            .collect();
        EngineDump {
            possible_cpus: state.possible_cpus,
            online_cpus: (0..state.possible_cpus)
                .filter(|&c| state.online[c])
                .collect(),
            clients: state.clients,
            generation: state.generation,
            readers,
            retired_tables: state.retired_count(),
            devices,
            table,
        }
    }

    /// The channel of (`cap`, `cpu`) in this dump.
    pub fn entry(&self, cap: Capability, cpu: usize) -> Option<ChannelId> {
        self.table
            .iter()
            .find(|(c, _)| *c == cap)
            .and_then(|(_, row)| row.get(cpu).copied().flatten())
    }
}

impl fmt::Display for EngineDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "engine: {} client(s), cpus possible {} online {}, table generation {}",
            self.clients,
            self.possible_cpus,
            format_cpu_list(&self.online_cpus),
            self.generation
        )?;
        let order: Vec<&str> = self.table.iter().map(|(c, _)| c.name()).collect();
        writeln!(f, "table walk order: {}", order.join(" "))?;
        for d in &self.devices {
            let kind = match (d.registered, d.private) {
                (false, _) => "unregistered, awaiting release",
                (true, true) => "private",
                (true, false) => "public",
            };
            writeln!(
                f,
                "device {} {:?}: caps {}, {} channel(s), {kind}",
                d.id,
                d.name,
                d.capabilities,
                d.channels.len()
            )?;
            for c in &d.channels {
                writeln!(
                    f,
                    "  channel {:<7} {:<20} client_count {:<3} table_count {}{}",
                    c.id.to_string(),
                    c.name,
                    c.client_count,
                    c.table_count,
                    if c.held_privately { " private" } else { "" }
                )?;
            }
        }
        if self.devices.is_empty() {
            writeln!(f, "no devices")?;
        }
        write!(f, "{:<8}", "table")?;
        for cpu in 0..self.possible_cpus {
            write!(f, " {:>7}", format!("cpu{cpu}"))?;
        }
        writeln!(f)?;
        for (cap, row) in &self.table {
            write!(f, "{:<8}", cap.name())?;
            for (cpu, slot) in row.iter().enumerate() {
                let text = match slot {
                    Some(id) => id.to_string(),
                    None if !self.online_cpus.contains(&cpu) => "off".to_string(),
                    None => "-".to_string(),
                };
                write!(f, " {text:>7}")?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "readers: {} registered, {} retired table(s) awaiting a grace period",
            self.readers, self.retired_tables
        )
    }
}
