//! Hot-removal and hot-add. So far: learning of PCI removals and unbinds from kernel uevents
//! ([`uevent`]). The monitor that drains, unregisters and rebalances arrives with the data
//! path's clients.

pub mod uevent;
