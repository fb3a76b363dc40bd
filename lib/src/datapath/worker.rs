//! Pinned polling threads: one thread per chosen CPU, each building its own state on that CPU
//! (a client, a table reader) and running the caller's poll-loop body until told to stop.
//!
//! The body reports whether it did work: after [`Step::Busy`] the loop runs it again at once;
//! after [`Step::Idle`] it backs off (spinning briefly, then yielding) so an idle poller on a
//! small machine leaves the CPU to others; [`Step::Done`] ends that worker. Stopping is a flag
//! the loop checks between iterations, so a body that returns promptly stops promptly.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crossbeam_utils::Backoff;

use super::client::{Client, ClientConfig};
use crate::capability::Capability;
use crate::engine::Engine;
use crate::sync::pause;

/// Size of the kernel CPU set `core_affinity` fills (glibc's `CPU_SETSIZE`).
pub(crate) const MAX_PINNABLE_CPU: usize = 1024;

/// What one iteration of a poll loop achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Work was done; run again at once.
    Busy,
    /// Nothing to do; back off a little before the next iteration.
    Idle,
    /// This worker is finished.
    Done,
}

/// Why workers could not be started or did not finish cleanly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerError {
    /// The thread could not be pinned to this CPU (not present, or not in the allowed set).
    Pin {
        /// The CPU asked for.
        cpu: usize,
    },
    /// The same CPU was asked for twice.
    DuplicateCpu(usize),
    /// The engine has no such CPU.
    UnknownCpu(usize),
    /// The thread could not be created.
    Spawn(String),
    /// The worker on this CPU panicked.
    Panicked {
        /// Its CPU.
        cpu: usize,
    },
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerError::Pin { cpu } => write!(f, "cannot pin a thread to cpu {cpu}"),
            WorkerError::DuplicateCpu(cpu) => write!(f, "cpu {cpu} was given twice"),
            WorkerError::UnknownCpu(cpu) => write!(f, "the engine has no cpu {cpu}"),
            WorkerError::Spawn(why) => write!(f, "cannot start a worker thread: {why}"),
            WorkerError::Panicked { cpu } => write!(f, "the worker on cpu {cpu} panicked"),
        }
    }
}

impl std::error::Error for WorkerError {}

/// Running pinned workers, each holding a state `S`.
pub struct Workers<S> {
    stop: Arc<AtomicBool>,
    threads: Vec<(usize, JoinHandle<S>)>,
}

impl<S: Send + 'static> Workers<S> {
    /// Starts one thread per CPU in `cpus`: it pins itself, builds its state with
    /// `init(cpu)`, then calls `body(&mut state)` until stopped or `Step::Done`. Returns once
    /// every thread is pinned and initialised, or the first error (stopping the others).
    pub fn spawn<I, B>(cpus: &[usize], init: I, body: B) -> Result<Workers<S>, WorkerError>
    where
        I: Fn(usize) -> S + Send + Sync + 'static,
        B: Fn(&mut S) -> Step + Send + Sync + 'static,
    {
        // core_affinity indexes a fixed-size CPU set and aborts the process past its end, so
        // CPUs the machine cannot have are refused here.
        let (possible, _) = crate::cpu::system_cpus();
        if let Some(&cpu) = cpus.iter().find(|&&c| c >= possible.min(MAX_PINNABLE_CPU)) {
            return Err(WorkerError::Pin { cpu });
        }
        let mut seen = cpus.to_vec();
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(WorkerError::DuplicateCpu(w[0]));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (init, body) = (Arc::new(init), Arc::new(body));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut workers = Workers {
            stop: Arc::clone(&stop),
            threads: Vec::with_capacity(cpus.len()),
        };
        for &cpu in cpus {
            let (stop, init, body, ready) = (
                Arc::clone(&stop),
                Arc::clone(&init),
                Arc::clone(&body),
                ready_tx.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("dmaplane-cpu{cpu}"))
                .spawn(move || {
                    let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    let _ = ready.send(if pinned { Ok(()) } else { Err(cpu) });
                    let mut state = init(cpu);
                    if pinned {
                        run(&stop, &mut state, &*body);
                    }
                    state
                });
            match spawned {
                Ok(handle) => workers.threads.push((cpu, handle)),
                Err(err) => {
                    let _ = workers.stop();
                    return Err(WorkerError::Spawn(err.to_string()));
                }
            }
        }
        drop(ready_tx);
        for _ in cpus {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(cpu)) => {
                    let _ = workers.stop();
                    return Err(WorkerError::Pin { cpu });
                }
                Err(_) => break, // a thread died before reporting; `stop` will say which
            }
        }
        Ok(workers)
    }

    /// Asks every worker to stop, waits for them, and hands back each CPU's final state.
    pub fn stop(self) -> Result<Vec<(usize, S)>, WorkerError> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for every worker to finish on its own (`Step::Done`), without asking them to
    /// stop, and hands back each CPU's final state.
    pub fn join(mut self) -> Result<Vec<(usize, S)>, WorkerError> {
        let mut states = Vec::with_capacity(self.threads.len());
        let mut failure = None;
        for (cpu, handle) in self.threads.drain(..) {
            match handle.join() {
                Ok(state) => states.push((cpu, state)),
                Err(_) => failure = failure.or(Some(WorkerError::Panicked { cpu })),
            }
        }
        failure.map_or(Ok(states), Err)
    }

    /// The CPUs the workers run on.
    pub fn cpus(&self) -> Vec<usize> {
        self.threads.iter().map(|(cpu, _)| *cpu).collect()
    }
}

/// A pinned worker's client and the caller's own state beside it.
pub struct ClientWorker<T> {
    /// The worker's client, for its CPU.
    pub client: Client,
    /// What `init` built.
    pub state: T,
}

impl<T: Send + 'static> Workers<ClientWorker<T>> {
    /// Starts one pinned thread per CPU in `cpus`, each with its own [`Client`] of `engine`
    /// and a state from `init(cpu)`, calling `body(&mut worker)` in a poll loop until stopped
    /// or `Step::Done`. The clients are dropped (draining what they have in flight) with the
    /// states handed back by [`Workers::stop`] or [`Workers::join`].
    pub fn spawn_clients<I, B>(
        engine: &Engine,
        cpus: &[usize],
        config: ClientConfig,
        init: I,
        body: B,
    ) -> Result<Workers<ClientWorker<T>>, WorkerError>
    where
        I: Fn(usize) -> T + Send + Sync + 'static,
        B: Fn(&mut ClientWorker<T>) -> Step + Send + Sync + 'static,
    {
        if let Some(&cpu) = cpus
            .iter()
            .find(|&&cpu| engine.table_entry(Capability::Memcpy, cpu).is_err())
        {
            return Err(WorkerError::UnknownCpu(cpu));
        }
        let engine = engine.clone();
        Workers::spawn(
            cpus,
            move |cpu| ClientWorker {
                client: Client::new(&engine, Some(cpu), config)
                    .expect("the CPU was checked against the engine"),
                state: init(cpu),
            },
            body,
        )
    }
}

impl<S> Drop for Workers<S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, handle) in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn run<S>(stop: &AtomicBool, state: &mut S, body: &dyn Fn(&mut S) -> Step) {
    let backoff = Backoff::new();
    // Relaxed: the flag carries no data; `join` orders everything after it.
    while !stop.load(Ordering::Relaxed) {
        match body(state) {
            Step::Busy => backoff.reset(),
            Step::Idle => pause(&backoff),
            Step::Done => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{current_cpu, system_cpus};
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Seen {
        iterations: u64,
        off_cpu: u64,
        cpu: usize,
    }

    #[test]
    fn workers_run_pinned_until_stopped() {
        let (_, online) = system_cpus();
        // Iterations per CPU: each worker must get going, whoever else runs faster.
        let runs: Arc<Vec<AtomicU64>> = Arc::new(
            (0..=online.iter().max().copied().unwrap_or(0))
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
        let counter = Arc::clone(&runs);
        let workers = Workers::spawn(
            &online,
            |cpu| Seen {
                cpu,
                ..Seen::default()
            },
            move |seen: &mut Seen| {
                seen.iterations += 1;
                if current_cpu() != Some(seen.cpu) {
                    seen.off_cpu += 1;
                }
                counter[seen.cpu].fetch_add(1, Ordering::Relaxed);
                if seen.iterations % 2 == 0 {
                    Step::Busy
                } else {
                    Step::Idle
                }
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while online
            .iter()
            .any(|&cpu| runs[cpu].load(Ordering::Relaxed) < 2_000)
        {
            assert!(Instant::now() < deadline, "workers made no progress");
            std::thread::yield_now();
        }
        assert_eq!(workers.cpus(), online);
        let states = workers.stop().unwrap();
        assert_eq!(states.len(), online.len());
        for (cpu, seen) in states {
            assert_eq!(seen.cpu, cpu);
            assert!(seen.iterations > 0, "cpu {cpu} never ran");
            assert_eq!(seen.off_cpu, 0, "cpu {cpu}'s worker ran elsewhere");
        }
    }

    #[test]
    fn a_worker_can_finish_on_its_own() {
        let workers = Workers::spawn(
            &[0],
            |_| 0u32,
            |n: &mut u32| {
                *n += 1;
                if *n == 100 {
                    Step::Done
                } else {
                    Step::Busy
                }
            },
        )
        .unwrap();
        assert_eq!(workers.join().unwrap(), [(0, 100)]);
    }

    #[test]
    fn bad_cpus_and_panics_are_reported() {
        let missing = Workers::spawn(&[100_000], |_| (), |_: &mut ()| Step::Done);
        assert_eq!(missing.err(), Some(WorkerError::Pin { cpu: 100_000 }));
        let (possible, _) = system_cpus();
        let beyond = Workers::spawn(&[possible], |_| (), |_: &mut ()| Step::Done);
        assert_eq!(beyond.err(), Some(WorkerError::Pin { cpu: possible }));
        let twice = Workers::spawn(&[0, 0], |_| (), |_: &mut ()| Step::Done);
        assert_eq!(twice.err(), Some(WorkerError::DuplicateCpu(0)));
        let panicking = Workers::spawn(&[0], |_| (), |_: &mut ()| panic!("body failed")).unwrap();
        assert_eq!(
            panicking.join().err(),
            Some(WorkerError::Panicked { cpu: 0 })
        );
    }
}
