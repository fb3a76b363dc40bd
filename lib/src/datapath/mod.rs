//! The data path: per-CPU clients that submit copies and fills through the queue the per-CPU
//! table gives their CPU, and poll their completions, whatever backend is behind it.
//!
//! - [`Client`]: the per-CPU handle: owned and shared channels, migration when the table
//!   moves, backpressure;
//! - [`BufferClient`]: the safe form, whose operations own their DMA buffers;
//! - [`Workers`]: pinned polling threads, one per chosen CPU, each with its own client.

mod buffers;
mod client;
mod migrate;
mod worker;

pub use buffers::{BufferClient, Buffers, Finished, Refused};
pub use client::{Client, ClientConfig, ClientError, ClientStats};
pub use worker::{ClientWorker, Step, WorkerError, Workers};

/// Atomic read-modify-writes the lock-free protocols (slot reservation, doorbell combiner,
/// retire token, route claims) have performed on the calling thread: counted in debug builds,
/// `None` in release builds. A client that owns its channel performs none per operation; a
/// test checks it.
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
