//! The C ABI of dmaplane (`include/dmaplane.h`).
//!
//! For now it exposes only the library version; the full ABI (engines, clients, copies,
//! hot-removal) arrives with the data path. Every entry point is `extern "C"` and never
//! unwinds.

use std::ffi::c_char;

/// The library version as a NUL-terminated string, e.g. `"0.1.0"`. The pointer is static.
#[no_mangle]
pub extern "C" fn dmaplane_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_the_crate() {
        // SAFETY: the pointer is a static NUL-terminated string.
        let version = unsafe { std::ffi::CStr::from_ptr(dmaplane_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
