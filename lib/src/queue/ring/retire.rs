//! The retire side at work: delivering each finished operation's completion to its sink (the
//! poller's own buffer, or the submitter's completion route), counting it, and abandoning work
//! a stopped device will never finish.

use std::sync::atomic::Ordering;

use super::{bump, RetireSide, Ring, SlotMeta};
use crate::queue::{Completion, Health, OpError};

/// Completions delivered straight into a poller's output buffer (owned mode).
pub(crate) struct Direct<'a> {
    /// The poller's route: its completions land in `out`, everybody else's in their rings.
    pub(crate) route: u16,
    pub(crate) out: &'a mut [Completion],
    pub(crate) filled: usize,
}

/// Where retired completions go.
pub(crate) struct Sink<'a> {
    /// The caller's route and output buffer, filled directly (owned mode); every other route,
    /// and every completion in shared mode, goes through [`Routes`](crate::queue::route::Routes).
    pub(crate) direct: Option<Direct<'a>>,
}

impl<'a> Sink<'a> {
    /// Routes only.
    pub(crate) fn routed() -> Sink<'static> {
        Sink { direct: None }
    }

    /// `route`'s completions into `out`.
    pub(crate) fn direct(route: u16, out: &'a mut [Completion]) -> Sink<'a> {
        Sink {
            direct: Some(Direct {
                route,
                out,
                filled: 0,
            }),
        }
    }

    /// How many completions went into the output buffer.
    pub(crate) fn filled(&self) -> usize {
        self.direct.as_ref().map_or(0, |d| d.filled)
    }
}

/// The retire side at work: the ring and exclusive access to its retire state.
pub(crate) struct Retirer<'a, X> {
    pub(crate) ring: &'a Ring<X>,
    pub(crate) side: &'a mut RetireSide<X>,
}

impl<X> Retirer<'_, X> {
    /// Hands one completion to its sink; false when it has no room (nothing was taken).
    #[inline]
    fn deliver(
        &mut self,
        sink: &mut Sink<'_>,
        meta: SlotMeta,
        result: Result<(), OpError>,
        value: u64,
    ) -> bool {
        let completion = Completion {
            user_data: meta.user_data,
            result,
            value,
        };
        match &mut sink.direct {
            Some(direct) if direct.route == meta.route => {
                if direct.filled == direct.out.len() {
                    return false;
                }
                direct.out[direct.filled] = completion;
                direct.filled += 1;
            }
            _ => {
                // SAFETY: we are the retirer (token or owner), and read `meta` from a slot
                // published after the route was attached.
                if unsafe { self.ring.routes.deliver(meta.route, completion) }.is_err() {
                    return false;
                }
            }
        }
        let stats = &self.ring.stats;
        match result {
            Ok(()) => bump(&stats.ops_ok, 1),
            Err(cause) => {
                bump(&stats.ops_failed, 1);
                if cause == OpError::DeviceRemoved {
                    bump(&stats.ops_removed, 1);
                }
            }
        }
        true
    }

    /// Retires up to `count` slots from the tail, reporting each operation that ends among
    /// them with `result` and value 0, and stops early when a sink is full. Returns how many
    /// it retired.
    #[inline]
    pub(crate) fn retire(
        &mut self,
        count: u32,
        sink: &mut Sink<'_>,
        result: Result<(), OpError>,
    ) -> u32 {
        self.retire_valued(count, sink, result, 0)
    }

    /// As [`Retirer::retire`], with every operation that ends among the slots completing with
    /// `value` (see [`Completion::value`]): a backend retires an operation that computed
    /// something on its own, or with others that computed the same. A failed operation
    /// completes with 0 whatever `value` says.
    pub(crate) fn retire_valued(
        &mut self,
        count: u32,
        sink: &mut Sink<'_>,
        result: Result<(), OpError>,
        value: u64,
    ) -> u32 {
        let value = if result.is_ok() { value } else { 0 };
        let mut retired = 0;
        let mut moved = 0u64;
        while retired < count {
            // SAFETY: the slot is published (the caller retires only those), and we are the
            // retirer.
            let meta = unsafe { self.ring.meta(self.side.tail) };
            if meta.ends_op && !self.deliver(sink, meta, result, value) {
                break;
            }
            if result.is_ok() {
                moved += u64::from(meta.bytes);
            }
            self.side.tail = self.side.tail.wrapping_add(1);
            retired += 1;
        }
        if retired > 0 {
            bump(&self.ring.stats.descriptors, u64::from(retired));
            bump(&self.ring.stats.bytes, moved);
        }
        // Release pairs with the reservers' acquire: our reads of these slots happen before
        // they are overwritten.
        self.ring.retired.store(self.side.tail, Ordering::Release);
        retired
    }

    /// Counts one recovery of the device.
    pub(crate) fn note_recovery(&mut self) {
        bump(&self.ring.stats.recoveries, 1);
    }

    /// Fails every outstanding operation with `cause` and stops accepting work (moving a
    /// working channel to `health`). Operations are completed only once `device_stopped`
    /// says the device no longer touches their buffers (a later poll retries until it does),
    /// and those that do not fit are reported by later polls. Producers that publish after
    /// this are caught by the next poll.
    pub(crate) fn abandon(
        &mut self,
        cause: OpError,
        health: Health,
        sink: &mut Sink<'_>,
        device_stopped: impl FnOnce() -> bool,
    ) {
        let ring = self.ring;
        if ring.health().works() {
            // Under the doorbell: a producer that saw the channel working finishes its
            // doorbell write before this, and none writes one after.
            let _doorbell = ring.doorbell.exclusive();
            ring.set_health(health);
        }
        let published = ring.slots.published();
        if self.side.tail == published || !device_stopped() {
            return;
        }
        let count = published.wrapping_sub(self.side.tail);
        self.retire(count, sink, Err(cause));
    }

    /// Abandons a channel that stopped working, with the cause its health names.
    pub(crate) fn abandon_stopped(
        &mut self,
        sink: &mut Sink<'_>,
        device_stopped: impl FnOnce() -> bool,
    ) {
        match self.ring.health() {
            Health::Removed => self.abandon(
                OpError::DeviceRemoved,
                Health::Removed,
                sink,
                device_stopped,
            ),
            _ => self.abandon(OpError::ChannelFailed, Health::Failed, sink, device_stopped),
        }
    }
}
