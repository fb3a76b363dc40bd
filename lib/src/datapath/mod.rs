//! Building blocks of the data path (per-CPU clients submitting through lock-free rings and
//! polling their completions): the lock-free protocols, each small enough to model-check.
//!
//! - [`spsc`]: a bounded single-producer, single-consumer ring, used to route each completion
//!   to the client that submitted the operation;
//! - [`reserve`]: multi-producer reservation of descriptor slots with in-order publication,
//!   and the doorbell combiner that keeps the 16-bit doorbell monotonic when several CPUs share
//!   a channel;
//! - [`worker`]: pinned polling threads, one per chosen CPU, with a clean stop.
//!
//! The clients that use them arrive with the data path itself.

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
