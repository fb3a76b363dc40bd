//! The C ABI of dmaplane (`include/dmaplane.h`, generated from this crate by cbindgen).
//!
//! C programs make an engine from `dmaplane_options` (emulated IOAT devices, or the real ones
//! in sysfs), allocate DMA memory from it, make one client per CPU, and copy, fill, submit
//! and poll through the client, much as they would with SPDK's ioat library. Devices can be
//! removed and added while clients work; the hotplug monitor's events arrive through
//! `dmaplane_event_next`. The per-CPU table, channel counts and statistics, and a printable
//! dump are there for introspection.
//!
//! Every entry point runs behind a panic boundary and returns a negative errno-style code on
//! failure (`dmaplane_strerror` describes it). Handles are opaque and never reused: an engine
//! handle is a slot and a client handle a shell, both a few bytes that are never freed, so a
//! destroyed engine or a released client (or one of a destroyed engine) is refused with
//! `DMAPLANE_EBADF` rather than dereferenced, and a made-up engine pointer is refused because
//! it is not in the registry of handles.
//!
//! The contract of every entry point: a non-NULL pointer argument points at what its
//! documentation says (writable where it is an output, `len` elements where a length goes
//! with it); buffers given to copy and fill stay allocated and untouched until their
//! completion is polled; a client is used by one thread at a time; and no call runs on a
//! client while its engine is being destroyed.

// The C-facing structs keep their C names, so the header reads as C.
#![allow(non_camel_case_types)]
// The entry points are `unsafe` because they take raw pointers from C. Their one contract is
// stated once above and in the header: non-NULL pointers point at what the documentation
// says, handles come from this library, and a client is used by one thread at a time.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_char;

mod boundary;
pub mod client;
pub mod engine;
pub mod error;
pub mod types;

/// The library version as a NUL-terminated string, e.g. `"0.1.0"`. The pointer is static. The
/// header's `DMAPLANE_VERSION_*` macros give the version the program was compiled against.
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
