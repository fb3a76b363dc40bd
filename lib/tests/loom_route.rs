//! loom models of completion routing on a shared channel (`queue::route`), driven the way
//! the data path drives it (`queue::ring`, `datapath::client`).
//!
//! Each client attaches a route of its own, then submits operations: it reserves a slot of
//! the shared ring with [`SlotReservation`], writes `(route, user_data)` into it and publishes
//! it. Any client may poll: if it wins the [`RetireToken`] it reads the publication index
//! (acquire), delivers each published, unretired slot's value to that slot's route with
//! [`Routes::deliver`] (stopping, never dropping, at the first refusal), moves its private
//! retire index, stores the shared `retired` index (release) and lets the token go. Then it
//! pops its own ring. The device is left out: a published slot counts as finished.
//!
//! The models check that every client gets exactly its own values, each once and in
//! submission order; that a ring never sees another client's value; that nothing is left
//! behind (every slot retired, every ring drained); that `has_room` never promises room a
//! delivery then does not find; and, through loom's `UnsafeCell` and `Arc` tracking, that the
//! token orders one retirer's use of the producers and of the retire index before the next
//! one's, that a slot's contents reach the retirer through the publication, and that the
//! retirer is done with a slot before a submitter reuses it. One model hands a route over: a
//! client detaches it after popping everything while another keeps polling, and a third
//! attaches, must get the same route number, and must receive its own value in its new ring.
//! Two negative controls show the models can fail: retiring without the token, and detaching
//! a route whose last delivery was seen but not popped.
//!
//! Bounds, so the file runs in seconds. Every model explores the interleavings with at most
//! [`PREEMPTIONS`] preemptions (loom's `preemption_bound`): unbounded, a two-client model was
//! still running after three minutes, and with a bound of four the hand-over model alone takes
//! about a minute. The hand-over model has three threads, and loom would chase executions
//! where two of them take turns spinning forever while the third, which they wait for, never
//! runs (it stops at its branch limit); so there each client polls, and the newcomer tries to
//! attach, a bounded number of times ([`TRIES`]), and the main thread finishes whatever is
//! left once everyone is joined. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p dmaplane --test loom_route --release --target-dir target/loom`.
#![cfg(loom)]

use dmaplane::loom_exports::{Consumer, Full, RetireToken, Routes, SlotReservation};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Slots in the shared ring; one always stays empty, so three operations fit at once.
const SLOTS: u32 = 4;

/// The preemption bound of every model.
const PREEMPTIONS: usize = 3;

/// The state a shared channel's clients and its retirer share.
struct Channel {
    slots: SlotReservation,
    /// Slots before this index are retired: stored by the retirer, read by reservers.
    retired: AtomicU32,
    /// Each slot's `(route, user_data)`: written by its submitter before publication, read by
    /// the retirer after.
    ops: [UnsafeCell<(u16, u64)>; SLOTS as usize],
    token: RetireToken,
    /// The retirer's own index, the oldest unretired slot, as `RetireState::tail` in the data
    /// path; touched only under the token.
    tail: UnsafeCell<u32>,
    routes: Routes<u64>,
}

impl Channel {
    fn new(routes: usize) -> Arc<Channel> {
        Arc::new(Channel {
            slots: SlotReservation::new(SLOTS, 0),
            retired: AtomicU32::new(0),
            ops: std::array::from_fn(|_| UnsafeCell::new((0, 0))),
            token: RetireToken::new(),
            tail: UnsafeCell::new(0),
            routes: Routes::new(routes),
        })
    }

    fn op(&self, index: u32) -> &UnsafeCell<(u16, u64)> {
        &self.ops[(index % SLOTS) as usize]
    }

    /// Retires what is published if nobody else is retiring, as `RingQueue::poll_shared`.
    fn retire(&self) {
        let Some(_token) = self.token.try_acquire() else {
            return;
        };
        // SAFETY: we hold the token until `_token` drops, after the call.
        unsafe { self.retire_holding_token() }
    }

    /// The retirer's work proper.
    ///
    /// # Safety
    ///
    /// The caller holds the token (only the negative control breaks this, on purpose).
    unsafe fn retire_holding_token(&self) {
        let published = self.slots.published();
        // SAFETY: the token holder alone touches the index, and handing the token over
        // orders the previous holder's write before this read.
        let mut tail = self.tail.with(|tail| unsafe { *tail });
        let start = tail;
        while tail != published {
            // SAFETY: the slot lies below the publication index we acquired, so its submitter
            // is done writing it, and it is not reserved again before we store `retired`.
            let (route, user_data) = self.op(tail).with(|op| unsafe { *op });
            // SAFETY: we hold the token, and read `route` from a slot whose publication (a
            // release store made after the route was attached) we acquired.
            let room = unsafe { self.routes.has_room(route) };
            // SAFETY: as for `has_room`.
            match unsafe { self.routes.deliver(route, user_data) } {
                Ok(()) => tail = tail.wrapping_add(1),
                Err(Full(refused)) => {
                    assert!(!room, "has_room promised room the delivery did not find");
                    assert_eq!(refused, user_data, "a refused delivery changed the value");
                    // The ring is full: leave the slot to a later poll rather than drop it.
                    break;
                }
            }
        }
        if tail != start {
            // SAFETY: as for the read above.
            self.tail.with_mut(|slot| unsafe { *slot = tail });
            self.retired.store(tail, Ordering::Release);
        }
    }

    /// After every client is done: every slot published was retired, and no ring holds a
    /// value (nothing delivered twice, nothing delivered to the wrong route).
    fn check_drained(&self, published: u32, rings: &mut [&mut Consumer<u64>]) {
        assert_eq!(self.slots.published(), published);
        assert_eq!(self.retired.load(Ordering::Acquire), published);
        // SAFETY: every thread that could retire has been joined.
        assert_eq!(self.tail.with(|tail| unsafe { *tail }), published);
        for rx in rings {
            assert_eq!(rx.pop(), None, "a completion was delivered twice or astray");
        }
    }
}

/// One client of the channel: its route, its ring, what it submits and what it got back.
struct Client {
    channel: Arc<Channel>,
    route: u16,
    rx: Consumer<u64>,
    ops: &'static [u64],
    got: Vec<u64>,
}

impl Client {
    /// Attaches a route with a ring of `capacity`, or gives up if none is free.
    fn attach(channel: &Arc<Channel>, capacity: usize, ops: &'static [u64]) -> Option<Client> {
        let (route, rx) = channel.routes.attach(capacity)?;
        Some(Client {
            channel: channel.clone(),
            route,
            rx,
            ops,
            got: Vec::new(),
        })
    }

    /// Submits every operation, polling while the shared ring is full.
    fn submit_all(&mut self) {
        for &user_data in self.ops {
            let start = loop {
                match self.channel.slots.reserve(1, &self.channel.retired) {
                    Ok(start) => break start,
                    Err(_) => {
                        self.poll();
                        thread::yield_now();
                    }
                }
            };
            // SAFETY: the reservation makes the slot ours until we publish it; the retirer's
            // last read of its previous contents happened before its store of `retired`,
            // which the reservation acquired.
            self.channel
                .op(start)
                .with_mut(|op| unsafe { *op = (self.route, user_data) });
            self.channel.slots.publish(start, 1);
        }
    }

    /// One poll: retire if nobody else is, then drain our own ring.
    fn poll(&mut self) {
        self.channel.retire();
        while let Some(value) = self.rx.pop() {
            self.got.push(value);
        }
    }

    fn done(&self) -> bool {
        self.got.len() == self.ops.len()
    }

    /// Polls until every completion came back, or `polls` times if that is given; returns
    /// whether every completion came back.
    fn poll_until_done(&mut self, polls: Option<usize>) -> bool {
        let mut left = polls;
        while !self.done() && left != Some(0) {
            self.poll();
            left = left.map(|n| n - 1);
            if !self.done() {
                thread::yield_now();
            }
        }
        self.check_received();
        self.done()
    }

    /// What came back so far is our own values, each once, in submission order.
    fn check_received(&self) {
        assert_eq!(
            self.got,
            self.ops[..self.got.len()],
            "route {} got the wrong completions",
            self.route
        );
    }

    /// Gives the route back once everything came back.
    fn detach(self) {
        assert!(self.done());
        // SAFETY: every operation submitted under the route was delivered and popped.
        unsafe { self.channel.routes.detach(self.route) };
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTIONS);
    builder.check(f);
}

/// Two clients, each attaching its own route (rings of `capacity_a` and 2) and submitting its
/// operations, then polling until they all came back.
fn two_clients(capacity_a: usize, ops_a: &'static [u64], ops_b: &'static [u64]) {
    model(move || {
        let channel = Channel::new(2);
        let a = {
            let channel = channel.clone();
            thread::spawn(move || {
                let mut a = Client::attach(&channel, capacity_a, ops_a).unwrap();
                a.submit_all();
                a.poll_until_done(None);
                a
            })
        };
        let mut b = Client::attach(&channel, 2, ops_b).unwrap();
        b.submit_all();
        b.poll_until_done(None);
        let mut a = a.join().unwrap();
        assert_ne!(a.route, b.route, "two clients share a route");
        channel.check_drained(
            (ops_a.len() + ops_b.len()) as u32,
            &mut [&mut a.rx, &mut b.rx],
        );
    });
}

/// Four operations through a ring of three free slots: the last submitter waits for a
/// retirement, then reuses a slot.
#[test]
fn each_client_gets_its_own_completions_once_and_in_order() {
    two_clients(2, &[10, 11], &[20, 21]);
}

/// Client A has two operations in flight on a ring of one (more than the data path lets it):
/// the retirer finds the ring full, stops at that slot, and a later poll carries on from it,
/// holding back B's completion meanwhile if it comes after. Nothing is dropped.
#[test]
fn a_full_ring_holds_retiring_back_without_losing_anything() {
    two_clients(1, &[10, 11], &[20]);
}

/// How many times a client of the hand-over model polls, and the newcomer tries to attach.
const TRIES: usize = 3;

/// A detaches its route once it has popped everything; C, trying to attach meanwhile, gets
/// the same route number and its completion reaches its new ring, not A's old one. B polls
/// meanwhile, so the retirer that delivers to the reused route may be B or C, and the one
/// that delivered A's completion any of the three.
#[test]
fn a_detached_route_passes_to_the_next_client() {
    model(|| {
        let channel = Channel::new(2);
        let mut a = Client::attach(&channel, 1, &[10]).unwrap();
        let mut b = Client::attach(&channel, 1, &[20]).unwrap();
        assert!(channel.routes.attach(1).is_none(), "only two routes exist");
        let route_a = a.route;
        let a = thread::spawn(move || {
            a.submit_all();
            if a.poll_until_done(Some(TRIES)) {
                a.detach();
                None
            } else {
                Some(a)
            }
        });
        let c = {
            let channel = channel.clone();
            thread::spawn(move || {
                let mut c = None;
                for _ in 0..TRIES {
                    c = Client::attach(&channel, 1, &[30]);
                    if c.is_some() {
                        break;
                    }
                    thread::yield_now();
                }
                let mut c = c?;
                assert_eq!(c.route, route_a, "the freed route is the only one");
                c.submit_all();
                c.poll_until_done(Some(TRIES));
                Some(c)
            })
        };
        b.submit_all();
        b.poll_until_done(Some(TRIES));
        let (a, c) = (a.join().unwrap(), c.join().unwrap());
        assert!(a.is_none() || c.is_none(), "C attached before A detached");
        let published = 2 + u32::from(c.is_some());
        // Everyone else is done or gave up: finish their polling here.
        let mut clients: Vec<Client> = a.into_iter().chain(c).chain([b]).collect();
        for client in &mut clients {
            assert!(client.poll_until_done(Some(2)), "a completion was lost");
        }
        let mut rings: Vec<_> = clients.iter_mut().map(|c| &mut c.rx).collect();
        channel.check_drained(published, &mut rings);
    });
}

/// The model must be able to fail: two pollers retiring at once without the token use the
/// retire index (and would use the rings) with nothing ordering one after the other, which
/// loom reports.
#[test]
#[should_panic(expected = "Causality violation")]
fn retiring_without_the_token_is_caught() {
    model(|| {
        let channel = Channel::new(1);
        let mut a = Client::attach(&channel, 2, &[10, 11]).unwrap();
        a.submit_all();
        let other = {
            let channel = channel.clone();
            // SAFETY: deliberately not: this is the contract violation under test.
            thread::spawn(move || unsafe { channel.retire_holding_token() })
        };
        // SAFETY: as above.
        unsafe { channel.retire_holding_token() };
        other.join().unwrap();
    });
}

/// The model must be able to fail: a client that detaches as soon as its ring shows the
/// completion (a relaxed look, no pop) is not ordered after the retirer's delivery into the
/// producer it drops, which loom reports.
#[test]
#[should_panic(expected = "Causality violation")]
fn detaching_before_popping_is_caught() {
    model(|| {
        let channel = Channel::new(2);
        let mut a = Client::attach(&channel, 1, &[10]).unwrap();
        let mut b = Client::attach(&channel, 1, &[20]).unwrap();
        let a = thread::spawn(move || {
            a.submit_all();
            while a.rx.is_empty() {
                a.channel.retire();
                thread::yield_now();
            }
            // SAFETY: deliberately not: the completion was not popped.
            unsafe { a.channel.routes.detach(a.route) };
        });
        b.submit_all();
        b.poll_until_done(None);
        a.join().unwrap();
    });
}
