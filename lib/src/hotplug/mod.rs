//! Hot-removal and hot-add: learning of PCI removals and unbinds from kernel uevents
//! ([`uevent`]), and the monitor thread that runs the removal sequence for each removal and
//! registers devices that arrive ([`monitor`]).

pub mod monitor;
pub mod uevent;
