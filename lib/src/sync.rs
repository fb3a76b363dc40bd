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

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicBool;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicBool;

/// `std::cell::UnsafeCell` behind loom's closure API, so the accesses are written once and
/// checked by loom under `--cfg loom`. The closures inline to plain pointer accesses.
#[cfg(not(loom))]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

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

/// Counts, per thread and in debug builds only, the atomic read-modify-writes the data path's
/// lock-free protocols perform, so a test can show that a path does none.
#[cfg(debug_assertions)]
pub(crate) mod rmw {
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    /// Notes one read-modify-write on this thread.
    #[inline(always)]
    pub(crate) fn note() {
        COUNT.with(|c| c.set(c.get() + 1));
    }

    /// Read-modify-writes noted on this thread so far.
    pub(crate) fn count() -> u64 {
        COUNT.with(Cell::get)
    }
}

/// Release builds count nothing.
#[cfg(not(debug_assertions))]
pub(crate) mod rmw {
    #[inline(always)]
    pub(crate) fn note() {}
}
