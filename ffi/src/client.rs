//! The client handle of the C ABI: one per CPU, used by one thread at a time, with copy,
//! fill, compare, CRC-32C, copy with CRC, dualcast, submit, poll and capacity.
//!
//! A client handle is a small shell that is never freed (24 bytes per client made).
//! Releasing the client, or destroying its engine, drops the client inside and marks the
//! shell released, so a later call with the same handle gets `DMAPLANE_EBADF` instead of
//! touching freed memory, and no later client ever has the same handle. A panic caught inside
//! a client call marks the shell poisoned: the client's state may be broken, so later calls
//! get `DMAPLANE_EINTERNAL` (release still works). The data path checks the shell's mark on
//! each call (a load and a compare), never a lock.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use dmaplane::datapath::{Client, ClientConfig};
use dmaplane::{Completion, OpFlags};

use crate::boundary::{guarded, out, out_slice};
use crate::engine::{capability, encode_channel, engine_ref, EngineHandle};
use crate::error::*;
use crate::types::DMAPLANE_NO_CHANNEL;

/// `dmaplane_client_create` flag: pin the calling thread to the client's CPU.
pub const DMAPLANE_CLIENT_PIN: u32 = 1 << 0;
/// `dmaplane_client_create` flag: when the table gives the CPU no channel for an operation
/// (every device gone, or none offers it: compare, CRC-32C, copy with CRC and dualcast on
/// IOAT devices), run it on the CPU instead of failing with `DMAPLANE_ENODEV`.
pub const DMAPLANE_CLIENT_CPU_FALLBACK: u32 = 1 << 1;

/// Operation flag: start only after every operation queued before it on the channel has
/// finished.
pub const DMAPLANE_FLAG_FENCE: u32 = 1 << 0;
/// Operation flag: ring the doorbell now (otherwise at `dmaplane_submit`).
pub const DMAPLANE_FLAG_SUBMIT: u32 = 1 << 1;

/// One finished operation: 24 bytes, `user_data` at offset 0, `status` at 8, `reserved` at
/// 12, `value` at 16. (`value` was added after the first 16 bytes, whose layout is
/// unchanged; a program built against the 16-byte struct must be rebuilt, since
/// `dmaplane_poll` writes arrays of it.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dmaplane_completion {
    /// What the operation was submitted with.
    pub user_data: u64,
    /// 0 on success; `DMAPLANE_EREMOVED` when its device was removed (resubmit it);
    /// `DMAPLANE_EIO` on a device error.
    pub status: i32,
    /// Zero.
    pub reserved: u32,
    /// What a successful operation computed: `dmaplane_compare`, 0 when the buffers are
    /// equal, else 1 + the offset of the first byte that differs; `dmaplane_crc32c` and
    /// `dmaplane_copy_crc`, the CRC-32C (low 32 bits); 0 for every other operation, and for
    /// any that failed.
    pub value: u64,
}

const _: () = {
    assert!(std::mem::size_of::<dmaplane_completion>() == 24);
    assert!(std::mem::offset_of!(dmaplane_completion, status) == 8);
    assert!(std::mem::offset_of!(dmaplane_completion, reserved) == 12);
    assert!(std::mem::offset_of!(dmaplane_completion, value) == 16);
};

const LIVE: u8 = 1;
const RELEASED: u8 = 2;
const POISONED: u8 = 3;

/// `dmaplane_client` in C: opaque.
pub struct ClientHandle {
    mark: AtomicU8,
    /// The engine slot it was made through (engine slots are never freed either).
    engine: *const EngineHandle,
    /// Touched only by the thread using the client (one at a time, by contract), or by the
    /// engine's destruction, which no client call may race.
    client: UnsafeCell<Option<Box<Client>>>,
}

// The shell is released from whichever thread releases the client or destroys the engine.
const _: () = {
    const fn sendable<T: Send>() {}
    sendable::<Client>();
};

/// Every client shell ever made. Shells are never freed, so a handle is never reused; listing
/// them keeps them reachable (a leak checker sees them as held, not lost).
static SHELLS: Mutex<Vec<ShellAddress>> = Mutex::new(Vec::new());

// Held, never read: the address in memory is what keeps the shell reachable.
struct ShellAddress(#[allow(dead_code)] *const ClientHandle);

// SAFETY: the list only holds the addresses; nothing dereferences them through it.
unsafe impl Send for ShellAddress {}

impl ClientHandle {
    /// Drops the client and marks the shell released.
    ///
    /// # Safety
    ///
    /// No other call may be using the client (the ABI's contract).
    pub(crate) unsafe fn retire(&self) {
        self.mark.store(RELEASED, Ordering::Release);
        // SAFETY: forwarded contract: nobody else touches the client now.
        let client = unsafe { (*self.client.get()).take() };
        // A client whose drop panics (broken by an earlier panic) is leaked, not unwound
        // into C.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(client)));
    }
}

/// Runs `body` on the live client behind `ptr`; a panic inside poisons the shell.
///
/// # Safety
///
/// `ptr` must be NULL or a handle from `dmaplane_client_create`, used by one thread at a time
/// and not while its engine is being destroyed (the ABI's contract).
unsafe fn with_client(
    ptr: *mut ClientHandle,
    body: impl FnOnce(&mut Client) -> Result<i32, Code>,
) -> i32 {
    guarded(|| {
        // SAFETY: forwarded contract; shells are never freed.
        let shell = unsafe { ptr.as_ref() }.ok_or(DMAPLANE_EINVAL)?;
        match shell.mark.load(Ordering::Acquire) {
            LIVE => {}
            POISONED => return Err(DMAPLANE_EINTERNAL),
            _ => return Err(DMAPLANE_EBADF),
        }
        // SAFETY: one thread uses the client at a time (contract), so this is the only
        // reference to it for the call.
        let client = unsafe { &mut *shell.client.get() }
            .as_deref_mut()
            .ok_or(DMAPLANE_EBADF)?;
        match catch_unwind(AssertUnwindSafe(|| body(client))) {
            Ok(result) => result,
            Err(_) => {
                shell.mark.store(POISONED, Ordering::Release);
                Err(DMAPLANE_EINTERNAL)
            }
        }
    })
}

/// The flags of a copy or fill to `dst` of `len` bytes, once the arguments every operation
/// needs are checked: a destination, a length, known flags.
fn checked_op(dst: *mut c_void, len: usize, flags: u32) -> Result<OpFlags, Code> {
    if dst.is_null() || len == 0 {
        return Err(DMAPLANE_EINVAL);
    }
    op_flags(flags)
}

fn op_flags(flags: u32) -> Result<OpFlags, Code> {
    if flags & !(DMAPLANE_FLAG_FENCE | DMAPLANE_FLAG_SUBMIT) != 0 {
        return Err(DMAPLANE_EINVAL);
    }
    let mut out = OpFlags::NONE;
    if flags & DMAPLANE_FLAG_FENCE != 0 {
        out = out | OpFlags::FENCE;
    }
    if flags & DMAPLANE_FLAG_SUBMIT != 0 {
        out = out | OpFlags::SUBMIT;
    }
    Ok(out)
}

/// Makes a client for `cpu` (-1: the CPU the calling thread runs on) and stores its handle in
/// `*client`. `flags`: `DMAPLANE_CLIENT_PIN` pins the calling thread to the CPU first;
/// `DMAPLANE_CLIENT_CPU_FALLBACK`, see its description. One client per CPU.
///
/// Errors: `DMAPLANE_EINVAL` (NULL, unknown flags, pinning refused), `DMAPLANE_ERANGE` (CPU
/// outside the engine's possible CPUs), `DMAPLANE_EEXIST` (the CPU has a client),
/// `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_client_create(
    engine: *mut EngineHandle,
    cpu: i32,
    flags: u32,
    client: *mut *mut ClientHandle,
) -> i32 {
    guarded(|| {
        // SAFETY: ABI contract on engine handles.
        let handle = engine_ref(engine)?;
        // SAFETY: the caller passes a writable pointer or NULL.
        let slot = unsafe { out(client) }?;
        if flags & !(DMAPLANE_CLIENT_PIN | DMAPLANE_CLIENT_CPU_FALLBACK) != 0 {
            return Err(DMAPLANE_EINVAL);
        }
        let cpu = match cpu {
            -1 => None,
            cpu => Some(usize::try_from(cpu).map_err(|_| DMAPLANE_ERANGE)?),
        };
        let config = ClientConfig {
            cpu_fallback: flags & DMAPLANE_CLIENT_CPU_FALLBACK != 0,
            ..ClientConfig::default()
        };
        let made = if flags & DMAPLANE_CLIENT_PIN != 0 {
            let cpu = cpu
                .or_else(dmaplane::cpu::current_cpu)
                .ok_or(DMAPLANE_EINVAL)?;
            Client::pinned(handle.engine(), cpu, config)
        } else {
            Client::new(handle.engine(), cpu, config)
        }
        .map_err(|e| of_client(&e))?;
        let shell = Box::into_raw(Box::new(ClientHandle {
            mark: AtomicU8::new(LIVE),
            engine,
            client: UnsafeCell::new(Some(Box::new(made))),
        }));
        SHELLS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ShellAddress(shell));
        handle.adopt_client(shell);
        *slot = shell;
        Ok(0)
    })
}

/// Releases a client of `engine`. Its operations must have been polled to completion first
/// (a client poisoned by an internal error may be released regardless). The handle is
/// refused with `DMAPLANE_EBADF` from then on.
///
/// Errors: `DMAPLANE_EBUSY` (operations still in flight: poll them), `DMAPLANE_EXDEV` (the
/// client belongs to another engine), `DMAPLANE_EBADF` (already released, or a destroyed
/// engine), `DMAPLANE_EINVAL`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_client_release(
    engine: *mut EngineHandle,
    client: *mut ClientHandle,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        // SAFETY: ABI contract on client handles; shells are never freed.
        let shell = unsafe { client.as_ref() }.ok_or(DMAPLANE_EINVAL)?;
        let mark = shell.mark.load(Ordering::Acquire);
        if mark != LIVE && mark != POISONED {
            return Err(DMAPLANE_EBADF);
        }
        if !std::ptr::eq(shell.engine, engine) {
            return Err(DMAPLANE_EXDEV);
        }
        // SAFETY: one thread uses the client at a time (contract).
        let in_flight = unsafe { &*shell.client.get() }
            .as_ref()
            .map_or(0, |c| c.in_flight());
        if in_flight > 0 && mark == LIVE {
            return Err(DMAPLANE_EBUSY);
        }
        handle.disown_client(shell);
        // SAFETY: as above: this call is the client's only user.
        unsafe { shell.retire() };
        Ok(0)
    })
}

/// The CPU a client serves.
///
/// Errors: `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_client_cpu(client: *mut ClientHandle) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        i32::try_from(client.cpu()).map_err(|_| DMAPLANE_EINVAL)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Operations submitted through the client and not yet returned by `dmaplane_poll`.
///
/// Errors: `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_client_in_flight(client: *mut ClientHandle) -> i64 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        i32::try_from(client.in_flight()).map_err(|_| DMAPLANE_EINVAL)
    };
    // SAFETY: ABI contract on client handles.
    i64::from(unsafe { with_client(client, body) })
}

/// The channel the per-CPU table gives the client for a capability now
/// (`DMAPLANE_NO_CHANNEL` if none), in `*channel`.
///
/// Errors: `DMAPLANE_EINVAL` (NULL, unknown capability), `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_client_channel(
    client: *mut ClientHandle,
    capability_bit: u32,
    channel: *mut u64,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        // SAFETY: the caller passes a writable pointer or NULL.
        let slot = unsafe { out(channel) }?;
        let cap = capability(capability_bit)?;
        *slot = client
            .channel(cap)
            .map_or(DMAPLANE_NO_CHANNEL, |(id, _)| encode_channel(id));
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Queues a copy of `len` bytes from `src` to `dst`, both DMA memory of the client's engine.
/// Both buffers must stay allocated, and nobody may read `dst` or write either, until
/// `dmaplane_poll` has returned the completion carrying `user_data`. `flags`:
/// `DMAPLANE_FLAG_FENCE`, `DMAPLANE_FLAG_SUBMIT`. A copy longer than one descriptor is split
/// but completes once.
///
/// Errors (nothing was queued): `DMAPLANE_EINVAL` (NULL buffer, zero length, unknown flags),
/// `DMAPLANE_EFAULT` (a buffer is not this engine's DMA memory; not checked when the CPU
/// fallback runs the operation), `DMAPLANE_EBUSY` (256 clients already share the channel),
/// `DMAPLANE_EAGAIN` (ring
/// full), `DMAPLANE_ENOBUFS` (completion ring full), `DMAPLANE_EINPROGRESS` (moving to a new
/// channel), `DMAPLANE_ENODEV` (no channel), `DMAPLANE_EREMOVED` (the channel's device is
/// being removed), `DMAPLANE_EIO` (the channel failed). `DMAPLANE_EAGAIN`, `DMAPLANE_ENOBUFS`
/// and `DMAPLANE_EINPROGRESS` clear after polling; `DMAPLANE_EREMOVED` once the client has
/// moved to another channel (poll, then retry); `DMAPLANE_ENODEV` once a device is added.
/// `DMAPLANE_EBADF` for a released client or one of a destroyed engine, `DMAPLANE_EINTERNAL`
/// for a client poisoned by an internal error.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_copy(
    client: *mut ClientHandle,
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
    user_data: u64,
    flags: u32,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        let flags = checked_op(dst, len, flags)?;
        if src.is_null() {
            return Err(DMAPLANE_EINVAL);
        }
        // SAFETY: the caller keeps both buffers alive and untouched until the completion (the
        // contract above); the driver refuses memory that is not the engine's DMA memory.
        unsafe { client.copy(dst.cast(), src.cast(), len, user_data, flags) }
            .map_err(|e| of_client(&e))?;
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Queues a fill of `len` bytes at `dst` (DMA memory of the client's engine) with the 64-bit
/// `pattern` repeated: byte `i` gets byte `i % 8` of the pattern in little-endian order.
/// Contract and flags as for `dmaplane_copy`.
///
/// Errors: as for `dmaplane_copy`, and `DMAPLANE_ENOTSUP` (the device does not fill).
#[no_mangle]
pub unsafe extern "C" fn dmaplane_fill(
    client: *mut ClientHandle,
    dst: *mut c_void,
    pattern: u64,
    len: usize,
    user_data: u64,
    flags: u32,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        let flags = checked_op(dst, len, flags)?;
        // SAFETY: as for `dmaplane_copy`.
        unsafe { client.fill(dst.cast(), pattern, len, user_data, flags) }
            .map_err(|e| of_client(&e))?;
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Queues a compare of the `len` bytes at `a` and `b`, both DMA memory of the client's
/// engine, on the channel the per-CPU table gives the client for `DMAPLANE_CAP_COMPARE`.
/// The completion's `value` is 0 when they are equal, else 1 + the offset of the first byte
/// that differs. Neither buffer may be written until `dmaplane_poll` has returned the
/// completion. Flags as for `dmaplane_copy`; a compare longer than one descriptor is split
/// (the first difference wins) but completes once.
///
/// Errors: as for `dmaplane_copy`; `DMAPLANE_ENODEV` when no device offers compare (create
/// the client with `DMAPLANE_CLIENT_CPU_FALLBACK` to have the CPU do it then);
/// `DMAPLANE_ENOTSUP` when the channel's device does not compare.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_compare(
    client: *mut ClientHandle,
    a: *const c_void,
    b: *const c_void,
    len: usize,
    user_data: u64,
    flags: u32,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        let flags = checked_op(a.cast_mut(), len, flags)?;
        if b.is_null() {
            return Err(DMAPLANE_EINVAL);
        }
        // SAFETY: the caller keeps both buffers alive and unwritten until the completion (the
        // contract above); the driver refuses memory that is not the engine's DMA memory.
        unsafe { client.compare(a.cast(), b.cast(), len, user_data, flags) }
            .map_err(|e| of_client(&e))?;
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Queues a CRC-32C of the `len` bytes at `src` (DMA memory of the client's engine),
/// continuing from `initial`, the CRC-32C of the data before them (0 to start), on the
/// channel the per-CPU table gives the client for `DMAPLANE_CAP_CRC32C`. The completion's
/// `value` is the standard CRC-32C (Castagnoli; 0xE3069283 for the 9 bytes "123456789" from
/// 0), the value the usual crc32c libraries return. `src` may not be written until
/// `dmaplane_poll` has returned the completion. Flags as for `dmaplane_copy`.
///
/// Errors: as for `dmaplane_compare`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_crc32c(
    client: *mut ClientHandle,
    src: *const c_void,
    len: usize,
    initial: u32,
    user_data: u64,
    flags: u32,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        let flags = checked_op(src.cast_mut(), len, flags)?;
        // SAFETY: as for `dmaplane_compare`, for `src`.
        unsafe { client.crc32c(src.cast(), len, initial, user_data, flags) }
            .map_err(|e| of_client(&e))?;
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Queues a copy of `len` bytes from `src` to `dst` that also computes the CRC-32C of the
/// data continuing from `initial`, as `dmaplane_crc32c` does, on the channel the per-CPU
/// table gives the client for `DMAPLANE_CAP_COPY_CRC`. Contract and flags as for
/// `dmaplane_copy`.
///
/// Errors: as for `dmaplane_compare`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_copy_crc(
    client: *mut ClientHandle,
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
    initial: u32,
    user_data: u64,
    flags: u32,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        let flags = checked_op(dst, len, flags)?;
        if src.is_null() {
            return Err(DMAPLANE_EINVAL);
        }
        // SAFETY: as for `dmaplane_copy`.
        unsafe { client.copy_crc(dst.cast(), src.cast(), len, initial, user_data, flags) }
            .map_err(|e| of_client(&e))?;
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Queues a copy of `len` bytes from `src` to both `dst1` and `dst2` on the channel the
/// per-CPU table gives the client for `DMAPLANE_CAP_DUALCAST`. Contract and flags as for
/// `dmaplane_copy`, for both destinations.
///
/// Errors: as for `dmaplane_compare`, and `DMAPLANE_EINVAL` when any two of the three
/// buffers overlap.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_dualcast(
    client: *mut ClientHandle,
    dst1: *mut c_void,
    dst2: *mut c_void,
    src: *const c_void,
    len: usize,
    user_data: u64,
    flags: u32,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        let flags = checked_op(dst1, len, flags)?;
        if dst2.is_null() || src.is_null() {
            return Err(DMAPLANE_EINVAL);
        }
        // SAFETY: as for `dmaplane_copy`, for both destinations.
        unsafe { client.dualcast(dst1.cast(), dst2.cast(), src.cast(), len, user_data, flags) }
            .map_err(|e| of_client(&e))?;
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Rings the doorbell for everything queued: one doorbell per batch.
///
/// Errors: `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_submit(client: *mut ClientHandle) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        client.submit();
        Ok(0)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// Collects up to `max` completions into `completions` and returns how many. Also follows
/// table changes and reports the client's quiescent state: call it regularly even with
/// nothing in flight (NULL with `max` 0 does only that).
///
/// Errors: `DMAPLANE_EINVAL` (NULL `completions` with non-zero `max`), `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_poll(
    client: *mut ClientHandle,
    completions: *mut dmaplane_completion,
    max: usize,
) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        // SAFETY: the caller passes `max` writable completions, or NULL with 0.
        let out = unsafe { out_slice(completions, max) }?;
        let mut batch = [Completion::default(); 64];
        let mut filled = 0;
        // At most i32::MAX, so the count fits the return value.
        let want = out.len().min(i32::MAX as usize);
        loop {
            let room = (want - filled).min(batch.len());
            let got = client.poll(&mut batch[..room]);
            for (slot, done) in out[filled..].iter_mut().zip(&batch[..got]) {
                *slot = dmaplane_completion {
                    user_data: done.user_data,
                    status: of_op(done.result),
                    reserved: 0,
                    value: done.value,
                };
            }
            filled += got;
            if got < room || room == 0 || filled == want {
                break;
            }
        }
        Ok(filled as i32)
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}

/// How many operations of one capability (one `DMAPLANE_CAP_*` bit) can be queued now
/// without a refusal.
///
/// Errors: `DMAPLANE_EINVAL` (unknown capability), `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_capacity(client: *mut ClientHandle, capability_bit: u32) -> i32 {
    let body = |client: &mut Client| -> Result<i32, Code> {
        let cap = capability(capability_bit)?;
        Ok(i32::try_from(client.capacity(cap)).unwrap_or(i32::MAX))
    };
    // SAFETY: ABI contract on client handles.
    unsafe { with_client(client, body) }
}
