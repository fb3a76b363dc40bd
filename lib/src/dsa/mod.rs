//! Intel DSA (Data Streaming Accelerator): the programming interface ([`spec`]) and the portals
//! descriptors are written to ([`portal`]).

pub mod portal;
pub mod spec;
