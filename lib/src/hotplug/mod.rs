//! Hot-removal and hot-add: learning of PCI removals and unbinds from kernel uevents
//! ([`uevent`]), and the monitor thread that runs the removal sequence for each removal and
//! registers devices that arrive ([`Monitor`]).

mod monitor;
pub mod uevent;

pub use monitor::{EventHook, HotplugEvent, Monitor, MonitorConfig};
