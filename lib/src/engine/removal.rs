//! Removing a device while clients work: the sequence the hotplug monitor runs for every
//! removal, orderly or surprise, and the report it produces.
//!
//! 1. The device's channels stop taking new work: submits fail fast with "device removed". A
//!    surprise removal also stops the channels at once, so everything in flight completes
//!    with "device removed" at its submitters' next polls.
//! 2. The device is unregistered and the table rebalanced off it: new operations go to the
//!    remaining channels (clients follow at their next call).
//! 3. Operations in flight drain, up to a deadline; whatever is left then is failed with
//!    "device removed" (the channel is stopped, the submitters collect the failures).
//! 4. The channels' resources are released once their last holder lets go: the old table
//!    after its grace period, a client once its operations there have completed. The wait for
//!    that is bounded too; a reader that holds it up is named in the report, and the release
//!    happens later, at that reader's next quiescent state.
//!
//! No step waits on a client without a deadline: a client that stops polling delays only the
//! release of memory.

use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use super::EngineError;
use super::{DeviceId, Engine};
use crate::queue::{ChannelBackend, ChannelStats};

/// How a removal proceeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalKind {
    /// The device still works: its operations may drain to success.
    Orderly,
    /// The device is gone (its registers read all-ones): nothing more completes on it.
    Surprise,
}

/// Deadlines of a removal.
#[derive(Clone, Copy, Debug)]
pub struct RemovalOptions {
    /// How long operations in flight may take to drain before the rest are failed.
    pub drain_timeout: Duration,
    /// How long to wait for the last holder to let go before reporting without the release.
    pub release_timeout: Duration,
}

impl Default for RemovalOptions {
    fn default() -> Self {
        RemovalOptions {
            drain_timeout: Duration::from_millis(100),
            release_timeout: Duration::from_millis(200),
        }
    }
}

/// What a removal did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovalReport {
    /// The device.
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// Orderly or surprise.
    pub kind: RemovalKind,
    /// Descriptors in flight on its channels when the removal began.
    pub in_flight_at_start: u64,
    /// Operations that completed successfully after the removal began (final once released).
    pub ops_drained: u64,
    /// Operations that completed with "device removed" (final once released). Counted over
    /// the device's life: a client may notice a surprise removal before the monitor does.
    pub ops_failed: u64,
    /// The drain deadline passed and the remaining operations were failed.
    pub forced: bool,
    /// From the start to the table no longer naming the device.
    pub table_moved_after: Duration,
    /// From the start to the channels' release; `None` if it had not happened by the release
    /// deadline (it happens later, when `held_up_by` let go).
    pub released_after: Option<Duration>,
    /// Readers whose quiescent state the release was still waiting for at the deadline.
    pub held_up_by: Vec<String>,
}

impl std::fmt::Display for RemovalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {} ({}) removed ({:?}): {} descriptor(s) in flight, {} op(s) drained, {} failed{}; table moved after {:?}, ",
            self.device,
            self.name,
            self.kind,
            self.in_flight_at_start,
            self.ops_drained,
            self.ops_failed,
            if self.forced { " (drain deadline passed)" } else { "" },
            self.table_moved_after,
        )?;
        match self.released_after {
            Some(after) => write!(f, "released after {after:?}"),
            None => write!(
                f,
                "not yet released, waiting for {}",
                if self.held_up_by.is_empty() {
                    "a holder".to_string()
                } else {
                    self.held_up_by.join(", ")
                }
            ),
        }
    }
}

impl Engine {
    /// Removes a device while clients work (see the module documentation): orderly if its
    /// registers still answer, as a surprise removal otherwise. Blocks for at most the two
    /// deadlines of `options`.
    pub fn remove_device(
        &self,
        id: DeviceId,
        options: RemovalOptions,
    ) -> Result<RemovalReport, EngineError> {
        let started = Instant::now();
        let (name, backends) = self.state().device_backends(id)?;
        let kind = if backends.iter().all(|b| b.is_present()) {
            RemovalKind::Orderly
        } else {
            RemovalKind::Surprise
        };
        let counts = |backends: &[std::sync::Arc<dyn ChannelBackend>]| {
            backends
                .iter()
                .fold(ChannelStats::default(), |sum, b| sum + b.stats())
        };
        let in_flight = |backends: &[std::sync::Arc<dyn ChannelBackend>]| {
            backends.iter().map(|b| b.in_flight()).sum::<u64>()
        };
        let before = counts(&backends);
        let in_flight_at_start = in_flight(&backends);
        for backend in &backends {
            backend.begin_removal(kind == RemovalKind::Surprise);
        }
        self.unregister_device(id)?;
        let table_moved_after = started.elapsed();

        let backoff = Backoff::new();
        let drain_deadline = Instant::now() + options.drain_timeout;
        while in_flight(&backends) > 0 && Instant::now() < drain_deadline {
            backoff.snooze();
        }
        let forced = in_flight(&backends) > 0;
        if forced {
            for backend in &backends {
                backend.fail_in_flight();
            }
        }

        let release_deadline = Instant::now() + options.release_timeout;
        let mut released_after = None;
        loop {
            let mut state = self.state();
            state.reclaim(&self.shared.grace);
            if !state.is_listed(id) {
                released_after = Some(started.elapsed());
                break;
            }
            drop(state);
            if Instant::now() >= release_deadline {
                break;
            }
            backoff.snooze();
        }
        let held_up_by = if released_after.is_some() {
            Vec::new()
        } else {
            let state = self.state();
            state
                .oldest_pending()
                .map(|gp| self.shared.grace.laggards(gp))
                .unwrap_or_default()
        };
        let after = counts(&backends);
        Ok(RemovalReport {
            device: id,
            name,
            kind,
            in_flight_at_start,
            ops_drained: after.ops_ok - before.ops_ok,
            ops_failed: after.ops_removed,
            forced,
            table_moved_after,
            released_after,
            held_up_by,
        })
    }

    /// The registered devices, in registration order, with their names.
    pub fn devices(&self) -> Vec<(DeviceId, String)> {
        self.state().registered_devices()
    }

    /// Whether every channel of a device still answers; `None` for a device the engine does
    /// not list.
    pub fn device_present(&self, id: DeviceId) -> Option<bool> {
        let (_, backends) = self.state().device_backends(id).ok()?;
        Some(backends.iter().all(|b| b.is_present()))
    }
}
