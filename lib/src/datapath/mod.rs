//! The data path: per-CPU clients that submit copies and fills through lock-free rings and
//! poll their completions, and the lock-free protocols underneath, each small enough to
//! model-check.
//!
//! - [`client`]: the per-CPU [`client::Client`]: owned and shared channels, migration when the
//!   table moves, backpressure;
//! - [`buffers`]: the safe [`buffers::BufferClient`], whose operations own their DMA buffers;
//! - [`worker`]: pinned polling threads, one per chosen CPU, each with its own client;
//! - [`spsc`]: a bounded single-producer, single-consumer ring, used to route each completion
//!   to the client that submitted the operation;
//! - [`route`]: the retire token and the per-client completion routes of a shared channel;
//! - [`reserve`]: multi-producer reservation of descriptor slots with in-order publication,
//!   and the doorbell combiner that keeps the 16-bit doorbell monotonic when several CPUs share
//!   a channel.

pub mod buffers;
pub mod client;
pub mod reserve;
pub mod route;
pub mod spsc;
pub mod worker;

/// Atomic read-modify-writes the data path's lock-free protocols (slot reservation, doorbell
/// combiner, retire token, route claims) have performed on the calling thread: counted in
/// debug builds, `None` in release builds. A client that owns its channel performs none per
/// operation; a test checks it.
pub fn debug_rmw_count() -> Option<u64> {
    #[cfg(debug_assertions)]
    {
        Some(crate::sync::rmw::count())
    }
    #[cfg(not(debug_assertions))]
    {
        None
    }
}
