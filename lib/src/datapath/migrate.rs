//! How a client follows the per-CPU table when a rebalance moves it (a device comes or goes, a
//! client arrives or leaves, a CPU goes on- or offline). The client notices at its next call
//! and follows:
//!
//! - new operations go to the new channel, but only once every other client has seen the new
//!   table (its grace period has elapsed), so nobody still treats the channel as theirs alone;
//!   until then submits are refused with [`ClientError::Migrating`](super::ClientError::Migrating);
//! - operations already in flight on the old channel are still polled there until they have all
//!   completed; the client holds an engine reference on the old channel meanwhile, so its
//!   resources outlive the old table without the client having to stop reporting quiescent
//!   states;
//! - an owned channel turns shared the moment another CPU's slot names it; a shared channel
//!   turns owned once its grace period has elapsed and no other client is attached to it (one
//!   still draining there, say).
//!
//! [`Client::poll`] reports the quiescent state, after ringing the doorbell for anything queued
//! without [`OpFlags::SUBMIT`](crate::OpFlags::SUBMIT). A CPU has at most one client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Client;
use crate::capability::Capability;
use crate::engine::{ChannelHold, ChannelId};
use crate::queue::{ChannelQueue, QueueHandle};

/// A channel the client submits to or still drains.
pub(super) struct Attachment {
    pub(super) id: ChannelId,
    pub(super) handle: Box<dyn QueueHandle>,
    /// Operations that may be in flight through the handle (its completion ring's size).
    pub(super) completion_capacity: usize,
    /// The handle owns its queue.
    pub(super) owned: bool,
    pub(super) in_flight: u32,
    /// Some capability's table slot names the channel now.
    pub(super) current: bool,
    /// Entered in the current generation: no submit before its grace period has elapsed.
    pub(super) pending: bool,
    /// No other CPU's slot names it: may be owned once the grace period has elapsed.
    pub(super) exclusive: bool,
    /// The engine reference that keeps the channel while operations drain from it after the
    /// table moved off it.
    pub(super) hold: Option<ChannelHold>,
}

impl Attachment {
    /// Shared now, but the table names it for this CPU alone and nobody else is attached.
    fn may_own(&self) -> bool {
        self.exclusive && !self.owned && self.handle.queue().attached() == 1
    }

    /// Leaves owned mode (announcing what was built first).
    fn share(&mut self) {
        self.handle.share();
        self.owned = false;
    }
}

/// What the table says of one capability, as a migration reads it.
struct Wanted {
    cap: Capability,
    id: ChannelId,
    /// No other CPU's slot names the channel.
    exclusive: bool,
    /// The started channel, for one the client is not attached to yet.
    queue: Option<Arc<dyn ChannelQueue>>,
}

impl Client {
    /// Polls until every pending channel may be used or `timeout` passes.
    pub(super) fn wait_settled(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh();
            self.activate_settled();
            let waiting = self.attachments.iter().any(|a| a.current && a.pending);
            if !waiting || Instant::now() >= deadline {
                return;
            }
            self.poll(&mut []);
            std::thread::yield_now();
        }
    }

    /// Follows the table if it moved since the last call.
    #[inline]
    pub(super) fn refresh(&mut self) {
        let generation = self.reader.generation();
        if generation != self.generation {
            self.migrate(generation);
        }
    }

    #[cold]
    pub(super) fn migrate(&mut self, generation: Option<u64>) {
        self.generation = generation;
        self.stats.migrations += 1;
        // What the table says now, per capability.
        let mut wanted: Vec<Wanted> = Vec::new();
        for cap in Capability::TABLE_ORDER {
            let Some((channel, exclusive)) = self.reader.lookup_entry(cap) else {
                continue;
            };
            let id = channel.id();
            let known = self.attachments.iter().any(|a| a.id == id)
                || wanted.iter().any(|w| w.id == id && w.queue.is_some());
            let queue = if known {
                None
            } else {
                channel.backend().queue()
            };
            wanted.push(Wanted {
                cap,
                id,
                exclusive,
                queue,
            });
        }
        for att in &mut self.attachments {
            att.handle.submit();
            let entry = wanted.iter().find(|w| w.id == att.id);
            att.current = entry.is_some();
            att.exclusive = entry.is_some_and(|w| w.exclusive);
            // Another CPU may start on the channel once this generation settles; by then
            // this client must be out of owned mode.
            if att.owned && !(att.current && att.exclusive) {
                att.share();
            }
            if att.current {
                att.hold = None;
            } else if att.in_flight > 0 && att.hold.is_none() {
                // The old table still references the channel: this client reports quiescent
                // states only for the table it follows, and it follows the new one only now.
                att.hold = self.engine.hold_channel(att.id).ok();
            }
        }
        self.release_drained();
        let mut crowded_ids = Vec::new();
        for want in &mut wanted {
            let Some(queue) = want.queue.take() else {
                continue;
            };
            if self.attachments.iter().any(|a| a.id == want.id) {
                continue;
            }
            // A new handle is shared: nobody owns the channel once this generation settles,
            // and this client submits nothing to it before then (`pending`).
            let Some(handle) = queue.attach(self.config.completion_ring) else {
                crowded_ids.push(want.id); // no route left: this capability gets no lane
                continue;
            };
            self.attachments.push(Attachment {
                id: want.id,
                completion_capacity: handle.completion_capacity(),
                handle,
                owned: false,
                in_flight: 0,
                current: true,
                pending: true,
                exclusive: want.exclusive,
                hold: None,
            });
        }
        self.lane_ids = [None; Capability::COUNT];
        self.crowded = [None; Capability::COUNT];
        for want in &wanted {
            if self.attachments.iter().any(|a| a.id == want.id) {
                self.lane_ids[want.cap.index()] = Some(want.id);
            } else if crowded_ids.contains(&want.id) {
                self.crowded[want.cap.index()] = Some(want.id);
            }
        }
        self.remap_lanes();
    }

    /// Lets go of channels that are no longer current and have nothing in flight.
    pub(super) fn release_drained(&mut self) {
        if self
            .attachments
            .iter()
            .all(|att| att.current || att.in_flight > 0)
        {
            return;
        }
        let (keep, drained): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|att| att.current || att.in_flight > 0);
        self.attachments = keep;
        for att in drained {
            // SAFETY: nothing of ours is in flight there: every completion was popped.
            unsafe { att.handle.detach() };
        }
        self.remap_lanes();
    }
    /// Points each capability's lane at its channel's position after attachments moved.
    pub(super) fn remap_lanes(&mut self) {
        let Client {
            lanes,
            lane_ids,
            attachments,
            ..
        } = self;
        for (lane, id) in lanes.iter_mut().zip(lane_ids.iter()) {
            *lane = id
                .and_then(|id| attachments.iter().position(|a| a.id == id))
                .map(|i| i as u8);
        }
    }

    /// Activates pending channels, and turns exclusive shared ones owned, once the current
    /// table has settled.
    pub(super) fn activate_settled(&mut self) {
        let waiting = self
            .attachments
            .iter()
            .any(|a| a.current && (a.pending || a.may_own()));
        if !waiting || !self.reader.settled_at(self.generation) {
            return;
        }
        for att in &mut self.attachments {
            if !att.current {
                continue;
            }
            att.pending = false;
            if att.may_own() {
                // SAFETY: the current table is settled: every client has acted on it (clients
                // report quiescent states only for the table they follow, `quiescent_at`). In
                // it no other CPU's slot names this channel (and a CPU has one client), and
                // this is the only client attached to it: those that used it before have
                // drained and let go. Nobody enters it before a later table settles, and this
                // client leaves owned mode as soon as it sees that table, before its next
                // quiescent state.
                unsafe { att.handle.own() };
                att.owned = true;
            }
        }
    }
}
