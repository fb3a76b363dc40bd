//! The one device thread that serves every threaded emulated device in the process, IOAT
//! channels and DSA work queues alike.
//!
//! One thread, not one per device or channel: on the two-core machines this library is
//! developed and tested on, a spinning thread per device would starve the very CPUs that
//! submit work. The thread starts with the first threaded device and is stopped and joined
//! when the last one is dropped. Each device kind implements [`Serve`]; the thread calls it
//! once per device per pass (one indirect call, whatever the device does inside).
//!
//! While any channel makes progress it loops without pausing. When a channel is waiting out
//! an injected latency it yields between passes. When nothing is pending it backs off
//! (`Backoff::snooze`), yields for a while, and then parks with a bounded timeout. A register
//! write that leaves work unparks it only if it announced that it is going to sleep; the
//! announcement and the write's own store are each followed by a SeqCst fence, so at least
//! one side sees the other (the writer sees `sleeping`, or the engine's last look for work
//! sees the write) and no wake-up is lost.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use super::channel::Service;
use super::EmuError;
use crate::sync::lock_std as lock;

/// How long the thread keeps yielding with nothing to do before it parks.
const IDLE_BEFORE_PARK: Duration = Duration::from_micros(200);
/// Longest park: a safety net; wake-ups normally come from `Wake::notify`.
const PARK_TIMEOUT: Duration = Duration::from_millis(10);

/// The running device thread, if any.
static RUNTIME: Mutex<Option<DeviceThread>> = Mutex::new(None);

struct DeviceThread {
    shared: Arc<DeviceThreadShared>,
    handle: JoinHandle<()>,
}

/// What the device thread serves: one emulated device, of either kind.
pub(super) trait Serve: Send + Sync {
    /// One pass over the device's work: [`Service::Progress`] if anything was done,
    /// [`Service::Waiting`] if work waits out an injected latency.
    fn service(&self) -> Service;

    /// Whether the device has work for the thread (read after the thread announced that it
    /// is going to sleep; see the module documentation).
    fn wants_service(&self) -> bool;
}

struct DeviceThreadShared {
    devices: Mutex<Vec<Arc<dyn Serve>>>,
    /// Bumped on every change of `devices`, so the thread re-reads the list only then.
    generation: AtomicU64,
    stop: AtomicBool,
    wake: Arc<Wake>,
}

/// How register writes wake the device thread.
pub(super) struct Wake {
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Wake {
    /// Wakes the device thread if it is about to sleep or asleep. Call after the store that
    /// makes the work visible.
    pub(super) fn notify(&self) {
        // Pairs with the fence between the engine's `sleeping` store and its last look.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }
}

/// Whether the shared device thread is running (it runs while a threaded device exists).
pub fn device_thread_running() -> bool {
    lock(&RUNTIME).is_some()
}

/// Builds a device with `make` (which receives the engine's wake handle) and adds it to the
/// device thread's list, starting the thread if need be.
pub(super) fn register<T: Serve + 'static>(
    make: impl FnOnce(Arc<Wake>) -> Arc<T>,
) -> Result<Arc<T>, EmuError> {
    let mut runtime = lock(&RUNTIME);
    if runtime.is_none() {
        *runtime = Some(spawn()?);
    }
    let worker = runtime.as_ref().expect("started above");
    let device = make(Arc::clone(&worker.shared.wake));
    lock(&worker.shared.devices).push(Arc::clone(&device) as Arc<dyn Serve>);
    worker.shared.generation.fetch_add(1, Ordering::Release);
    worker.shared.wake.notify();
    Ok(device)
}

/// Removes a (quiesced) device from the device thread's list; stops and joins the thread when
/// it was the last.
pub(super) fn deregister<T: Serve + 'static>(device: &Arc<T>) {
    let this = Arc::as_ptr(device).cast::<()>();
    let stopping = {
        let mut runtime = lock(&RUNTIME);
        let Some(worker) = runtime.as_ref() else {
            return;
        };
        let empty = {
            let mut devices = lock(&worker.shared.devices);
            devices.retain(|other| Arc::as_ptr(other).cast::<()>() != this);
            devices.is_empty()
        };
        worker.shared.generation.fetch_add(1, Ordering::Release);
        if empty {
            runtime.take()
        } else {
            None
        }
    };
    // Joined outside the lock: a device registering meanwhile starts a thread of its own.
    if let Some(worker) = stopping {
        worker.shared.stop.store(true, Ordering::Release);
        worker.handle.thread().unpark();
        // A panic on the device thread has been reported by the panic hook already, and a
        // destructor has nobody to return it to.
        let _ = worker.handle.join();
    }
}

fn spawn() -> Result<DeviceThread, EmuError> {
    let shared = Arc::new(DeviceThreadShared {
        devices: Mutex::new(Vec::new()),
        generation: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        wake: Arc::new(Wake {
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
        }),
    });
    let for_thread = Arc::clone(&shared);
    let handle = thread::Builder::new()
        .name("dmaplane-emu".into())
        .spawn(move || serve(&for_thread))
        .map_err(|error| EmuError::Spawn(error.to_string()))?;
    // Before this is set the thread cannot be asleep for long: it parks with a timeout.
    let _ = shared.wake.thread.set(handle.thread().clone());
    Ok(DeviceThread { shared, handle })
}

fn serve(shared: &DeviceThreadShared) {
    let mut devices: Vec<Arc<dyn Serve>> = Vec::new();
    let mut seen = u64::MAX;
    let backoff = Backoff::new();
    let mut idle_since: Option<Instant> = None;
    while !shared.stop.load(Ordering::Acquire) {
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != seen {
            devices = lock(&shared.devices).clone();
            seen = generation;
        }
        let (mut progress, mut waiting) = (false, false);
        for device in &devices {
            match device.service() {
                Service::Progress => progress = true,
                Service::Waiting => waiting = true,
                Service::Idle => {}
            }
        }
        if progress {
            backoff.reset();
            idle_since = None;
            continue;
        }
        if waiting {
            // Injected latency: let the submitting threads run meanwhile.
            idle_since = None;
            thread::yield_now();
            continue;
        }
        if !backoff.is_completed() {
            backoff.snooze();
            continue;
        }
        if idle_since.get_or_insert_with(Instant::now).elapsed() < IDLE_BEFORE_PARK {
            thread::yield_now();
            continue;
        }
        shared.wake.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Wake::notify`.
        fence(Ordering::SeqCst);
        let busy = shared.stop.load(Ordering::Acquire)
            || shared.generation.load(Ordering::Acquire) != seen
            || devices.iter().any(|device| device.wants_service());
        if !busy {
            thread::park_timeout(PARK_TIMEOUT);
        }
        shared.wake.sleeping.store(false, Ordering::Relaxed);
    }
}
