//! The panic boundary every entry point runs behind, and the checks that turn C pointers into
//! Rust references: a NULL pointer is an `EINVAL`, never a dereference, and a panic becomes
//! `DMAPLANE_EINTERNAL` instead of unwinding into C.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Code, DMAPLANE_EINTERNAL, DMAPLANE_EINVAL};

/// Runs `body`, turning its error or a panic into a negative code.
pub(crate) fn guarded(body: impl FnOnce() -> Result<i32, Code>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(code)) => code,
        Err(_) => DMAPLANE_EINTERNAL,
    }
}

/// The place an out-parameter points at, or `EINVAL` for NULL.
///
/// # Safety
///
/// A non-NULL `ptr` must be valid for writes of a `T` and not aliased for the call.
pub(crate) unsafe fn out<'a, T>(ptr: *mut T) -> Result<&'a mut T, Code> {
    // SAFETY: forwarded contract; NULL is refused by `as_mut`.
    unsafe { ptr.as_mut() }.ok_or(DMAPLANE_EINVAL)
}

/// The value an in-parameter points at, or `EINVAL` for NULL.
///
/// # Safety
///
/// A non-NULL `ptr` must be valid for reads of a `T`.
pub(crate) unsafe fn input<'a, T>(ptr: *const T) -> Result<&'a T, Code> {
    // SAFETY: forwarded contract; NULL is refused by `as_ref`.
    unsafe { ptr.as_ref() }.ok_or(DMAPLANE_EINVAL)
}

/// `len` slots of `T` at `ptr`, writable: an empty slice for a zero length (whatever the
/// pointer), `EINVAL` for NULL with a non-zero length.
///
/// # Safety
///
/// A non-NULL `ptr` must be valid for writes of `len` `T`s and not aliased for the call.
pub(crate) unsafe fn out_slice<'a, T>(ptr: *mut T, len: usize) -> Result<&'a mut [T], Code> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(DMAPLANE_EINVAL);
    }
    // SAFETY: forwarded contract; non-NULL, and `len` elements are valid.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Writes `text` NUL-terminated into `buf` (truncated to fit, as `snprintf` does) and returns
/// the length the whole text needs, without the NUL.
///
/// # Safety
///
/// A non-NULL `buf` must be valid for writes of `len` bytes.
pub(crate) unsafe fn write_text(text: &str, buf: *mut u8, len: usize) -> Result<i32, Code> {
    // SAFETY: forwarded contract.
    let out = unsafe { out_slice(buf, len) }?;
    if let Some((last, body)) = out.split_last_mut() {
        let n = body.len().min(text.len());
        body[..n].copy_from_slice(&text.as_bytes()[..n]);
        if n < body.len() {
            body[n] = 0;
        } else {
            *last = 0;
        }
    }
    i32::try_from(text.len()).map_err(|_| DMAPLANE_EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_code() {
        let code = guarded(|| panic!("a bug"));
        assert_eq!(code, DMAPLANE_EINTERNAL);
        assert_eq!(guarded(|| Ok(7)), 7);
        assert_eq!(guarded(|| Err(DMAPLANE_EINVAL)), DMAPLANE_EINVAL);
    }

    #[test]
    fn text_is_truncated_and_terminated_like_snprintf() {
        let mut buf = [0xffu8; 4];
        // SAFETY: the buffer holds 4 bytes.
        assert_eq!(unsafe { write_text("hello", buf.as_mut_ptr(), 4) }, Ok(5));
        assert_eq!(&buf, b"hel\0");
        // SAFETY: NULL with a zero length asks only for the size.
        let needed = unsafe { write_text("hello", std::ptr::null_mut(), 0) };
        assert_eq!(needed, Ok(5));
        let mut roomy = [0xffu8; 8];
        // SAFETY: the buffer holds 8 bytes.
        assert_eq!(unsafe { write_text("hi", roomy.as_mut_ptr(), 8) }, Ok(2));
        assert_eq!(&roomy[..3], b"hi\0");
    }
}
