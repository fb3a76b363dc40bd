//! Error codes of the C ABI: negative errno values, one per distinct failure a C caller must
//! tell apart, the mapping from the library's typed errors, and `dmaplane_strerror`.
//!
//! The values are Linux's errno numbers written out, so the header needs no `<errno.h>`; a
//! unit test checks them against libc.

use std::ffi::c_char;

use dmaplane::datapath::ClientError;
use dmaplane::mem::MemError;
use dmaplane::{EngineError, SetupError};
use dmaplane::{OpError, SubmitError};

/// Success.
pub const DMAPLANE_OK: i32 = 0;
/// No such device (an unknown or already removed device id) or channel.
pub const DMAPLANE_ENOENT: i32 = -2;
/// The device reported an error for the operation, or its channel failed for good.
pub const DMAPLANE_EIO: i32 = -5;
/// The device was removed: the operation did not run (or did not finish); resubmit it.
pub const DMAPLANE_EREMOVED: i32 = -6;
/// The handle is not a live one: a client used after its release, or an engine after its
/// destruction.
pub const DMAPLANE_EBADF: i32 = -9;
/// The descriptor ring is full: poll, then retry.
pub const DMAPLANE_EAGAIN: i32 = -11;
/// Out of memory (DMA memory or the process's).
pub const DMAPLANE_ENOMEM: i32 = -12;
/// A buffer is not DMA memory of this engine. (The range is checked against the engine's DMA
/// memory as a whole, not against one allocation: an overrun into a neighbouring buffer is
/// not caught.)
pub const DMAPLANE_EFAULT: i32 = -14;
/// Release: the client still has operations in flight (poll them first). Copy and fill:
/// every completion route of the channel is taken (at most 256 clients share a channel).
pub const DMAPLANE_EBUSY: i32 = -16;
/// The CPU already has a client.
pub const DMAPLANE_EEXIST: i32 = -17;
/// The handle belongs to another engine.
pub const DMAPLANE_EXDEV: i32 = -18;
/// The per-CPU table gives this CPU no channel for the operation (no device offers it).
pub const DMAPLANE_ENODEV: i32 = -19;
/// An argument is invalid: a NULL pointer, a zero length, an unknown flag or option.
pub const DMAPLANE_EINVAL: i32 = -22;
/// A CPU number outside the engine's possible CPUs.
pub const DMAPLANE_ERANGE: i32 = -34;
/// The operation is not supported (fill on a device without it, surprise removal of real
/// hardware).
pub const DMAPLANE_ENOTSUP: i32 = -95;
/// The client's completion ring on its channel is full: poll, then retry.
pub const DMAPLANE_ENOBUFS: i32 = -105;
/// A wait timed out.
pub const DMAPLANE_ETIMEDOUT: i32 = -110;
/// The client is moving to a new channel after a table change: poll, then retry.
pub const DMAPLANE_EINPROGRESS: i32 = -115;
/// A bug inside the library was caught at the ABI boundary; the handle may be unusable.
pub const DMAPLANE_EINTERNAL: i32 = -131;

/// A failure as the ABI reports it: a negative code.
pub(crate) type Code = i32;

pub(crate) fn of_engine(err: &EngineError) -> Code {
    match err {
        EngineError::UnknownDevice(_)
        | EngineError::DeviceUnregistered(_)
        | EngineError::UnknownChannel(_) => DMAPLANE_ENOENT,
        EngineError::UnknownCpu { .. } => DMAPLANE_ERANGE,
        EngineError::CpuHasClient(_) => DMAPLANE_EEXIST,
        EngineError::NoChannelAvailable(_) => DMAPLANE_ENODEV,
        EngineError::InvalidConfig(_) => DMAPLANE_EINVAL,
        EngineError::ChannelAllocation { .. } => DMAPLANE_EIO,
        EngineError::GracePeriodTimeout { .. } => DMAPLANE_ETIMEDOUT,
        _ => DMAPLANE_EINVAL,
    }
}

thread_local! {
    /// What the last failed setup call on this thread said, whole.
    static LAST_SETUP_ERROR: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The text of the last setup failure on this thread (empty before any).
pub(crate) fn last_setup_error() -> String {
    LAST_SETUP_ERROR.with(|last| last.borrow().clone())
}

/// The code for a setup failure; its whole text (which a code cannot carry: why each IOAT
/// function was passed over, what to do about it) is kept for `dmaplane_last_error`.
pub(crate) fn of_setup(err: &SetupError) -> Code {
    LAST_SETUP_ERROR.with(|last| *last.borrow_mut() = err.to_string());
    match err {
        SetupError::Engine(err) => of_engine(err),
        SetupError::Memory(err) => of_mem(err),
        SetupError::Monitor(_) | SetupError::Probe(_) => DMAPLANE_EIO,
        SetupError::NoDevice { .. } => DMAPLANE_ENODEV,
        SetupError::UnknownDevice(_) => DMAPLANE_ENOENT,
        SetupError::SurpriseUnsupported(_) => DMAPLANE_ENOTSUP,
        _ => DMAPLANE_EINVAL,
    }
}

pub(crate) fn of_mem(err: &MemError) -> Code {
    match err {
        MemError::OutOfMemory { .. } | MemError::MapFailed { .. } => DMAPLANE_ENOMEM,
        MemError::NotMapped { .. } | MemError::IovaNotMapped { .. } => DMAPLANE_EFAULT,
        _ => DMAPLANE_EINVAL,
    }
}

pub(crate) fn of_submit(err: &SubmitError) -> Code {
    match err {
        SubmitError::RingFull { .. } => DMAPLANE_EAGAIN,
        SubmitError::ZeroLength => DMAPLANE_EINVAL,
        SubmitError::Unsupported(_) => DMAPLANE_ENOTSUP,
        SubmitError::InvalidArgument(_) => DMAPLANE_EINVAL,
        SubmitError::Unmapped(_) => DMAPLANE_EFAULT,
        SubmitError::ChannelFailed => DMAPLANE_EIO,
        SubmitError::DeviceRemoved => DMAPLANE_EREMOVED,
    }
}

pub(crate) fn of_client(err: &ClientError) -> Code {
    match err {
        ClientError::NoChannel(_) => DMAPLANE_ENODEV,
        ClientError::Migrating => DMAPLANE_EINPROGRESS,
        ClientError::CompletionRingFull { .. } => DMAPLANE_ENOBUFS,
        ClientError::Submit(err) => of_submit(err),
        ClientError::BufferTooSmall { .. } => DMAPLANE_EINVAL,
        ClientError::TooManyClients(_) => DMAPLANE_EBUSY,
        ClientError::Engine(err) => of_engine(err),
        ClientError::Pin(_) => DMAPLANE_EINVAL,
    }
}

/// The status a completion carries.
pub(crate) fn of_op(result: Result<(), OpError>) -> Code {
    match result {
        Ok(()) => DMAPLANE_OK,
        Err(OpError::DeviceRemoved) => DMAPLANE_EREMOVED,
        Err(OpError::Device { .. } | OpError::ChannelFailed) => DMAPLANE_EIO,
    }
}

/// Every code with its description, NUL-terminated for C.
const DESCRIPTIONS: [(i32, &str); 20] = [
    (DMAPLANE_OK, "success\0"),
    (DMAPLANE_ENOENT, "no such device or channel\0"),
    (DMAPLANE_EIO, "device error, or the channel failed\0"),
    (DMAPLANE_EREMOVED, "device removed\0"),
    (
        DMAPLANE_EBADF,
        "not a live handle (released client or destroyed engine)\0",
    ),
    (DMAPLANE_EAGAIN, "descriptor ring full; poll, then retry\0"),
    (DMAPLANE_ENOMEM, "out of memory\0"),
    (DMAPLANE_EFAULT, "buffer is not DMA memory of this engine\0"),
    (
        DMAPLANE_EBUSY,
        "operations still in flight, or every route of the channel taken\0",
    ),
    (DMAPLANE_EEXIST, "this CPU already has a client\0"),
    (DMAPLANE_EXDEV, "handle belongs to another engine\0"),
    (DMAPLANE_ENODEV, "no channel for this CPU and operation\0"),
    (DMAPLANE_EINVAL, "invalid argument\0"),
    (DMAPLANE_ERANGE, "CPU out of range\0"),
    (DMAPLANE_ENOTSUP, "operation not supported\0"),
    (DMAPLANE_ENOBUFS, "completion ring full; poll, then retry\0"),
    (DMAPLANE_ETIMEDOUT, "timed out\0"),
    (
        DMAPLANE_EINPROGRESS,
        "moving to a new channel; poll, then retry\0",
    ),
    (DMAPLANE_EINTERNAL, "internal error in dmaplane\0"),
    (i32::MIN, "unknown dmaplane error code\0"),
];

/// A static, NUL-terminated description of `code` (any value; unknown codes get a generic
/// text). Never NULL.
#[no_mangle]
pub extern "C" fn dmaplane_strerror(code: i32) -> *const c_char {
    let text = DESCRIPTIONS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(DESCRIPTIONS[DESCRIPTIONS.len() - 1].1, |(_, text)| text);
    text.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_negative_errno_values() {
        let pairs = [
            (DMAPLANE_ENOENT, libc::ENOENT),
            (DMAPLANE_EIO, libc::EIO),
            (DMAPLANE_EREMOVED, libc::ENXIO),
            (DMAPLANE_EBADF, libc::EBADF),
            (DMAPLANE_EAGAIN, libc::EAGAIN),
            (DMAPLANE_ENOMEM, libc::ENOMEM),
            (DMAPLANE_EFAULT, libc::EFAULT),
            (DMAPLANE_EBUSY, libc::EBUSY),
            (DMAPLANE_EEXIST, libc::EEXIST),
            (DMAPLANE_EXDEV, libc::EXDEV),
            (DMAPLANE_ENODEV, libc::ENODEV),
            (DMAPLANE_EINVAL, libc::EINVAL),
            (DMAPLANE_ERANGE, libc::ERANGE),
            (DMAPLANE_ENOTSUP, libc::EOPNOTSUPP),
            (DMAPLANE_ENOBUFS, libc::ENOBUFS),
            (DMAPLANE_ETIMEDOUT, libc::ETIMEDOUT),
            (DMAPLANE_EINPROGRESS, libc::EINPROGRESS),
            (DMAPLANE_EINTERNAL, libc::ENOTRECOVERABLE),
        ];
        for (code, errno) in pairs {
            assert_eq!(code, -errno);
        }
    }

    #[test]
    fn every_code_has_its_own_description_and_unknown_codes_get_one() {
        let text = |code| {
            // SAFETY: dmaplane_strerror returns a static NUL-terminated string.
            unsafe { std::ffi::CStr::from_ptr(dmaplane_strerror(code)) }
                .to_str()
                .unwrap()
                .to_string()
        };
        let mut seen: Vec<String> = DESCRIPTIONS.iter().map(|(code, _)| text(*code)).collect();
        assert!(seen.iter().all(|t| !t.is_empty() && !t.contains('\0')));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), DESCRIPTIONS.len());
        assert_eq!(text(-4242), "unknown dmaplane error code");
        assert_eq!(text(DMAPLANE_EREMOVED), "device removed");
    }
}
