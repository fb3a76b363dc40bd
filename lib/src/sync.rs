//! The synchronisation primitives the lock-free protocols are written against.
//!
//! Under `--cfg loom` these are loom's instrumented versions, so the model tests in
//! `tests/loom_*.rs` explore every interleaving of the very code the library ships; otherwise
//! they are the standard library's.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_utils::Backoff;

/// Locks `mutex`, ignoring poisoning: a panic on one thread (in a backend hook, say) must not
/// turn every later control call on the other threads into a panic as well.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(loom)]
    {
        mutex.lock().unwrap()
    }
    #[cfg(not(loom))]
    {
        lock_std(mutex)
    }
}

/// [`lock`] for the standard library's mutexes, which loom does not model (the emulated
/// device, the DMA pool, the IOAT backend).
pub(crate) fn lock_std<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One step of a wait for another thread: spins a little, then yields the CPU (under loom,
/// always yields, so the model checker knows this thread waits on another).
pub(crate) fn pause(backoff: &Backoff) {
    #[cfg(loom)]
    {
        let _ = backoff;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        if backoff.is_completed() {
            std::thread::yield_now();
        } else {
            backoff.snooze();
        }
    }
}
