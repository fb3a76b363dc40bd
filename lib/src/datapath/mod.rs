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

pub mod reserve;
pub mod spsc;
pub mod worker;
