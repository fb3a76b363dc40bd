//! The C ABI called the wrong way, straight through the Rust functions behind it: NULL
//! pointers, released clients, handles of another engine, memory the engine did not allocate,
//! out-of-range CPUs and options, double frees and destroys. Each must come back as the code
//! the header documents, never as a crash. One happy-path test goes through the whole ABI.

use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use dmaplane_ffi::{client::*, engine::*, error::*, types::*};

/// Options for a small, deterministic engine: `cpus` table slots, two devices of one channel
/// working inline at each doorbell.
fn options(cpus: u32) -> dmaplane_options {
    let mut options = dmaplane_options::default();
    // SAFETY: a valid, writable struct.
    assert_eq!(unsafe { dmaplane_options_init(&mut options) }, DMAPLANE_OK);
    options.cpus = cpus;
    options.threaded = 0;
    options
}

fn engine_with(options: &dmaplane_options) -> *mut EngineHandle {
    let mut engine = null_mut();
    // SAFETY: valid options and a writable out-pointer.
    let rc = unsafe { dmaplane_engine_create(options, &mut engine) };
    assert_eq!(rc, DMAPLANE_OK, "{}", strerror(rc));
    assert!(!engine.is_null());
    engine
}

fn engine() -> *mut EngineHandle {
    engine_with(&options(2))
}

fn destroy(engine: *mut EngineHandle) {
    // SAFETY: a live engine of this test, with nothing else running on it.
    assert_eq!(unsafe { dmaplane_engine_destroy(engine) }, DMAPLANE_OK);
}

fn client(engine: *mut EngineHandle, cpu: i32) -> *mut ClientHandle {
    let mut client = null_mut();
    // SAFETY: a live engine and a writable out-pointer.
    let rc = unsafe { dmaplane_client_create(engine, cpu, 0, &mut client) };
    assert_eq!(rc, DMAPLANE_OK, "{}", strerror(rc));
    client
}

fn alloc(engine: *mut EngineHandle, len: usize) -> *mut u8 {
    let mut ptr = null_mut();
    // SAFETY: a live engine and a writable out-pointer.
    let rc = unsafe { dmaplane_dma_alloc(engine, len, 0, &mut ptr) };
    assert_eq!(rc, DMAPLANE_OK, "{}", strerror(rc));
    ptr.cast()
}

fn strerror(code: i32) -> String {
    // SAFETY: dmaplane_strerror returns a static NUL-terminated string for any code.
    unsafe { CStr::from_ptr(dmaplane_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// Polls `client` until `want` completions have come, for at most 5 s.
fn poll_for(client: *mut ClientHandle, want: usize) -> Vec<dmaplane_completion> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = Vec::new();
    let mut batch = [dmaplane_completion::default(); 16];
    while done.len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} completions",
            done.len()
        );
        // SAFETY: a live client used by this thread only, and 16 writable completions.
        let got = unsafe { dmaplane_poll(client, batch.as_mut_ptr(), batch.len()) };
        assert!(got >= 0, "{}", strerror(got));
        done.extend_from_slice(&batch[..got as usize]);
    }
    done
}

/// Waits up to 5 s for the next event of `kind` about `device`, polling `client` meanwhile (a
/// removal completes only once every client has polled); other events are skipped, except a
/// `DMAPLANE_EVENT_FAILED`, which none of these tests should cause.
fn event_for(
    engine: *mut EngineHandle,
    client: *mut ClientHandle,
    kind: u32,
    device: u32,
) -> dmaplane_event {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "no event {kind} for device {device}"
        );
        let mut event = dmaplane_event::default();
        // SAFETY: live handles of this test; the poll asks for nothing back (NULL, 0).
        let got = unsafe {
            assert_eq!(dmaplane_poll(client, null_mut(), 0), 0);
            dmaplane_event_next(engine, &mut event, 10)
        };
        assert!(got >= 0, "{}", strerror(got));
        assert!(
            got == 0 || event.kind != DMAPLANE_EVENT_FAILED,
            "a failed removal: {event:?}"
        );
        if got == 1 && event.kind == kind && event.device == device {
            return event;
        }
    }
}

fn table(engine: *mut EngineHandle, capability: u32) -> Vec<u64> {
    let mut entries = vec![0u64; 2];
    // SAFETY: a live engine and two writable entries.
    let cpus = unsafe { dmaplane_table(engine, capability, entries.as_mut_ptr(), 2) };
    assert_eq!(cpus, 2, "{}", strerror(cpus));
    entries
}

fn device_of(channel: u64) -> u32 {
    (channel >> 16) as u32
}

#[test]
fn null_handles_and_null_out_pointers_are_einval() {
    let e = engine();
    let c = client(e, 0);
    let mut out_client = null_mut();
    let mut out_ptr = null_mut();
    let mut channel = 0u64;
    let mut event = dmaplane_event::default();
    let mut counts = dmaplane_channel_counts::default();
    let mut stats = dmaplane_channel_stats::default();
    let mut ids = [0u32; 4];
    let buf = alloc(e, 64);
    // SAFETY: every pointer is NULL, a live handle of this test, or valid for what the call
    // writes; NULL is what is under test.
    unsafe {
        assert_eq!(dmaplane_options_init(null_mut()), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_engine_create(null(), null_mut()), DMAPLANE_EINVAL);
        assert_eq!(
            dmaplane_engine_create(&options(2), null_mut()),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_engine_destroy(null_mut()), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_engine_cpus(null()), DMAPLANE_EINVAL);

        assert_eq!(
            dmaplane_client_create(null_mut(), 1, 0, &mut out_client),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_client_create(e, 1, 0, null_mut()), DMAPLANE_EINVAL);
        assert!(out_client.is_null());
        assert_eq!(dmaplane_client_release(null_mut(), c), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_client_release(e, null_mut()), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_client_cpu(null_mut()), DMAPLANE_EINVAL);
        assert_eq!(
            dmaplane_client_in_flight(null_mut()),
            i64::from(DMAPLANE_EINVAL)
        );
        assert_eq!(
            dmaplane_client_channel(null_mut(), DMAPLANE_CAP_MEMCPY, &mut channel),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_client_channel(c, DMAPLANE_CAP_MEMCPY, null_mut()),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_copy(null_mut(), buf.cast(), buf.cast(), 8, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_fill(null_mut(), buf.cast(), 0, 8, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_submit(null_mut()), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_poll(null_mut(), null_mut(), 0), DMAPLANE_EINVAL);
        assert_eq!(
            dmaplane_capacity(null_mut(), DMAPLANE_CAP_MEMCPY),
            DMAPLANE_EINVAL
        );

        assert_eq!(
            dmaplane_dma_alloc(null_mut(), 64, 0, &mut out_ptr),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_dma_alloc(e, 64, 0, null_mut()), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_dma_free(null_mut(), buf.cast()), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_dma_free(e, null_mut()), DMAPLANE_EINVAL);
        assert!(out_ptr.is_null());

        assert_eq!(
            dmaplane_device_list(null(), ids.as_mut_ptr(), 4),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_device_list(e, null_mut(), 4), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_device_list(e, null_mut(), 0), 2);
        assert_eq!(dmaplane_device_channels(null(), 0), DMAPLANE_EINVAL);
        assert_eq!(
            dmaplane_device_remove(null_mut(), 0, DMAPLANE_REMOVE_ORDERLY),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_device_add(null_mut(), null_mut()), DMAPLANE_EINVAL);
        assert_eq!(
            dmaplane_event_next(null_mut(), &mut event, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_event_next(e, null_mut(), 0), DMAPLANE_EINVAL);
        assert_eq!(
            dmaplane_table(null(), DMAPLANE_CAP_MEMCPY, null_mut(), 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_channel_get_counts(null(), 0, &mut counts),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_channel_get_counts(e, 0, null_mut()),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_channel_get_stats(null(), 0, &mut stats),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_channel_get_stats(e, 0, null_mut()),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_engine_dump(null(), null_mut(), 0), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_engine_dump(e, null_mut(), 16), DMAPLANE_EINVAL);

        // Nothing was disturbed: the client still works.
        assert_eq!(dmaplane_client_cpu(c), 0);
        assert_eq!(dmaplane_dma_free(e, buf.cast()), DMAPLANE_OK);
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_OK);
    }
    destroy(e);
}

#[test]
fn a_made_up_or_destroyed_engine_is_ebadf_and_destroying_twice_too() {
    let e = engine();
    destroy(e);
    let mut fake = [0u64; 64];
    let fake: *mut EngineHandle = fake.as_mut_ptr().cast();
    let mut out_client = null_mut();
    let mut out_ptr = null_mut();
    // SAFETY: the library checks engine handles against its registry before touching them, so
    // a destroyed or made-up one is never dereferenced.
    unsafe {
        assert_eq!(dmaplane_engine_destroy(e), DMAPLANE_EBADF);
        for bad in [e, fake] {
            assert_eq!(dmaplane_engine_cpus(bad), DMAPLANE_EBADF);
            assert_eq!(
                dmaplane_client_create(bad, 0, 0, &mut out_client),
                DMAPLANE_EBADF
            );
            assert_eq!(dmaplane_dma_alloc(bad, 64, 0, &mut out_ptr), DMAPLANE_EBADF);
            assert_eq!(dmaplane_device_list(bad, null_mut(), 0), DMAPLANE_EBADF);
            assert_eq!(dmaplane_device_add(bad, null_mut()), DMAPLANE_EBADF);
            assert_eq!(dmaplane_engine_destroy(bad), DMAPLANE_EBADF);
        }
    }
    assert!(out_client.is_null() && out_ptr.is_null());
}

#[test]
fn a_released_client_is_ebadf_everywhere() {
    let e = engine();
    let c = client(e, 0);
    let buf = alloc(e, 128);
    let mut channel = 0u64;
    let mut done = [dmaplane_completion::default(); 4];
    // SAFETY: the client shell stays valid until the engine is destroyed; a released one is
    // refused by its mark, never dereferenced beyond it.
    unsafe {
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_OK);
        assert_eq!(
            dmaplane_copy(c, buf.cast(), buf.add(64).cast(), 64, 1, 0),
            DMAPLANE_EBADF
        );
        assert_eq!(dmaplane_fill(c, buf.cast(), 7, 64, 1, 0), DMAPLANE_EBADF);
        assert_eq!(
            dmaplane_poll(c, done.as_mut_ptr(), done.len()),
            DMAPLANE_EBADF
        );
        assert_eq!(dmaplane_poll(c, null_mut(), 0), DMAPLANE_EBADF);
        assert_eq!(dmaplane_submit(c), DMAPLANE_EBADF);
        assert_eq!(dmaplane_client_cpu(c), DMAPLANE_EBADF);
        assert_eq!(dmaplane_client_in_flight(c), i64::from(DMAPLANE_EBADF));
        assert_eq!(
            dmaplane_client_channel(c, DMAPLANE_CAP_MEMCPY, &mut channel),
            DMAPLANE_EBADF
        );
        assert_eq!(dmaplane_capacity(c, DMAPLANE_CAP_MEMCPY), DMAPLANE_EBADF);
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_EBADF);
    }
    // The CPU is free again.
    let again = client(e, 0);
    // SAFETY: live handles of this test.
    unsafe {
        assert_eq!(dmaplane_client_cpu(again), 0);
        assert_eq!(dmaplane_client_release(e, again), DMAPLANE_OK);
    }
    destroy(e);
}

#[test]
fn a_client_released_through_another_engine_is_exdev() {
    let a = engine();
    let b = engine();
    let c = client(a, 0);
    // SAFETY: live handles of this test.
    unsafe {
        assert_eq!(dmaplane_client_release(b, c), DMAPLANE_EXDEV);
        assert_eq!(
            dmaplane_client_cpu(c),
            0,
            "a refused release leaves it alive"
        );
        assert_eq!(dmaplane_client_release(a, c), DMAPLANE_OK);
    }
    destroy(b);
    destroy(a);
}

#[test]
fn releasing_a_client_with_operations_in_flight_is_ebusy_until_they_are_polled() {
    let e = engine();
    let c = client(e, 0);
    let src = alloc(e, 4096);
    let dst = alloc(e, 4096);
    // SAFETY: DMA memory of this engine, untouched until the completion is polled.
    unsafe {
        assert_eq!(
            dmaplane_copy(c, dst.cast(), src.cast(), 4096, 9, DMAPLANE_FLAG_SUBMIT),
            DMAPLANE_OK
        );
        assert_eq!(dmaplane_client_in_flight(c), 1);
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_EBUSY);
    }
    let done = poll_for(c, 1);
    assert_eq!((done[0].user_data, done[0].status), (9, DMAPLANE_OK));
    // SAFETY: live handles; nothing in flight any more.
    unsafe {
        assert_eq!(dmaplane_client_in_flight(c), 0);
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_OK);
        assert_eq!(dmaplane_dma_free(e, src.cast()), DMAPLANE_OK);
        assert_eq!(dmaplane_dma_free(e, dst.cast()), DMAPLANE_OK);
    }
    destroy(e);
}

#[test]
fn bad_operations_are_refused_with_their_codes_and_queue_nothing() {
    let e = engine();
    let other = engine();
    let c = client(e, 0);
    let dma = alloc(e, 256);
    let foreign = alloc(other, 256);
    let mut stack = [0u8; 256];
    let mut heap = vec![0u8; 256];
    let stack = stack.as_mut_ptr();
    let heap = heap.as_mut_ptr();
    let mut done = [dmaplane_completion::default(); 4];
    // SAFETY: live handles; every refused call queues nothing, so no device ever touches the
    // stack, heap or foreign buffers.
    unsafe {
        let copy = |dst: *mut u8, src: *const u8, len: usize, flags: u32| {
            dmaplane_copy(c, dst.cast(), src.cast(), len, 1, flags)
        };
        let fill = |dst: *mut u8, len: usize, flags: u32| {
            dmaplane_fill(c, dst.cast(), 0x55, len, 1, flags)
        };
        assert_eq!(copy(null_mut(), dma, 8, 0), DMAPLANE_EINVAL);
        assert_eq!(copy(dma, null(), 8, 0), DMAPLANE_EINVAL);
        assert_eq!(fill(null_mut(), 8, 0), DMAPLANE_EINVAL);
        assert_eq!(copy(dma, dma.add(128), 0, 0), DMAPLANE_EINVAL);
        assert_eq!(fill(dma, 0, 0), DMAPLANE_EINVAL);
        assert_eq!(copy(dma, dma.add(128), 8, 1 << 5), DMAPLANE_EINVAL);
        assert_eq!(fill(dma, 8, 1 << 31), DMAPLANE_EINVAL);
        assert_eq!(copy(stack, dma, 8, 0), DMAPLANE_EFAULT);
        assert_eq!(copy(dma, stack, 8, 0), DMAPLANE_EFAULT);
        assert_eq!(copy(heap, dma, 8, 0), DMAPLANE_EFAULT);
        assert_eq!(copy(dma, heap, 8, 0), DMAPLANE_EFAULT);
        assert_eq!(fill(heap, 8, 0), DMAPLANE_EFAULT);
        assert_eq!(copy(dma, foreign, 8, 0), DMAPLANE_EFAULT);
        assert_eq!(fill(foreign, 8, 0), DMAPLANE_EFAULT);
        assert_eq!(dmaplane_capacity(c, 0), DMAPLANE_EINVAL, "not a capability");
        assert_eq!(
            dmaplane_capacity(c, DMAPLANE_CAP_MEMCPY | DMAPLANE_CAP_FILL),
            DMAPLANE_EINVAL
        );
        let mut channel = 0;
        assert_eq!(
            dmaplane_client_channel(c, 1 << 6, &mut channel),
            DMAPLANE_EINVAL
        );

        // poll: NULL with a length is refused, NULL with 0 only follows the table.
        assert_eq!(dmaplane_poll(c, null_mut(), 4), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_poll(c, null_mut(), 0), 0);
        assert_eq!(dmaplane_client_in_flight(c), 0, "nothing was queued");
        assert_eq!(dmaplane_submit(c), DMAPLANE_OK);
        assert_eq!(dmaplane_poll(c, done.as_mut_ptr(), done.len()), 0);

        // The client still works after all that.
        assert_eq!(copy(dma, dma.add(128), 64, DMAPLANE_FLAG_SUBMIT), 0);
    }
    assert_eq!(poll_for(c, 1)[0].status, DMAPLANE_OK);
    // SAFETY: live handles; nothing in flight.
    unsafe {
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_OK);
    }
    destroy(other);
    destroy(e);
}

#[test]
fn cpus_out_of_range_are_erange_and_a_second_client_for_a_cpu_eexist() {
    let e = engine();
    let mut c = null_mut();
    // SAFETY: a live engine and a writable out-pointer.
    unsafe {
        assert_eq!(dmaplane_engine_cpus(e), 2);
        for cpu in [2, 3, -5, i32::MIN, i32::MAX] {
            assert_eq!(dmaplane_client_create(e, cpu, 0, &mut c), DMAPLANE_ERANGE);
            // Pinning or not, the engine's range decides first.
            assert_eq!(
                dmaplane_client_create(e, cpu, DMAPLANE_CLIENT_PIN, &mut c),
                DMAPLANE_ERANGE
            );
        }
        assert!(c.is_null());
        assert_eq!(
            dmaplane_client_create(e, 0, 1 << 7, &mut c),
            DMAPLANE_EINVAL,
            "unknown flags"
        );
        assert!(c.is_null());
    }
    let first = client(e, 1);
    // SAFETY: as above.
    unsafe {
        assert_eq!(dmaplane_client_create(e, 1, 0, &mut c), DMAPLANE_EEXIST);
        assert!(c.is_null());
        assert_eq!(dmaplane_client_release(e, first), DMAPLANE_OK);
    }
    let second = client(e, 1);
    // SAFETY: live handles.
    unsafe {
        assert_eq!(dmaplane_client_release(e, second), DMAPLANE_OK);
    }
    destroy(e);
}

#[test]
fn removing_an_unknown_or_removed_device_is_enoent() {
    let e = engine();
    let c = client(e, 0);
    let mut ids = [0u32; 4];
    // SAFETY: live handles and writable ids.
    let victim = unsafe {
        assert_eq!(dmaplane_device_list(e, ids.as_mut_ptr(), 4), 2);
        assert_eq!(
            dmaplane_device_remove(e, 999, DMAPLANE_REMOVE_ORDERLY),
            DMAPLANE_ENOENT
        );
        assert_eq!(
            dmaplane_device_remove(e, 999, DMAPLANE_REMOVE_SURPRISE),
            DMAPLANE_ENOENT
        );
        assert_eq!(dmaplane_device_channels(e, 999), DMAPLANE_ENOENT);
        assert_eq!(
            dmaplane_device_remove(e, ids[0], 7),
            DMAPLANE_EINVAL,
            "unknown removal kind"
        );
        assert_eq!(
            dmaplane_device_remove(e, ids[0], DMAPLANE_REMOVE_ORDERLY),
            DMAPLANE_OK
        );
        // Requested already: refused at once, although the monitor may not have started on it.
        for how in [DMAPLANE_REMOVE_ORDERLY, DMAPLANE_REMOVE_SURPRISE] {
            assert_eq!(dmaplane_device_remove(e, ids[0], how), DMAPLANE_ENOENT);
        }
        ids[0]
    };
    let removed = event_for(e, c, DMAPLANE_EVENT_REMOVED, victim);
    assert_eq!(removed.surprise, 0);
    // SAFETY: live handles.
    unsafe {
        for how in [DMAPLANE_REMOVE_ORDERLY, DMAPLANE_REMOVE_SURPRISE] {
            assert_eq!(dmaplane_device_remove(e, victim, how), DMAPLANE_ENOENT);
        }
        assert_eq!(dmaplane_device_channels(e, victim), DMAPLANE_ENOENT);
        assert_eq!(dmaplane_device_list(e, null_mut(), 0), 1);
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_OK);
    }
    destroy(e);
}

#[test]
fn dma_memory_is_freed_once_and_only_by_its_engine() {
    let a = engine();
    let b = engine();
    let block = alloc(a, 4096);
    let mut ptr = null_mut::<c_void>();
    // SAFETY: live engines; the pointers are only compared against the engines' records.
    unsafe {
        assert_eq!(dmaplane_dma_alloc(a, 0, 0, &mut ptr), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_dma_alloc(a, 64, 3, &mut ptr), DMAPLANE_EINVAL);
        assert!(ptr.is_null());
        assert_eq!(dmaplane_dma_free(b, block.cast()), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_dma_free(a, block.add(64).cast()), DMAPLANE_EINVAL);
        let mut local = 0u64;
        assert_eq!(
            dmaplane_dma_free(a, (&mut local as *mut u64).cast()),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_dma_free(a, block.cast()), DMAPLANE_OK);
        assert_eq!(dmaplane_dma_free(a, block.cast()), DMAPLANE_EINVAL);
    }
    destroy(b);
    destroy(a);
}

#[test]
fn options_out_of_range_are_einval_and_leave_the_out_pointer_alone() {
    type Change = fn(&mut dmaplane_options);
    let cases: [(&str, Change); 10] = [
        ("channels_per_device 0", |o| o.channels_per_device = 0),
        ("channels_per_device 9", |o| o.channels_per_device = 9),
        ("ring_order 3", |o| o.ring_order = 3),
        ("ring_order 17", |o| o.ring_order = 17),
        ("capabilities 0", |o| o.capabilities = 0),
        ("fill without memcpy", |o| {
            o.capabilities = DMAPLANE_CAP_FILL
        }),
        ("an unknown capability", |o| {
            o.capabilities = (1 << 7) | DMAPLANE_CAP_MEMCPY
        }),
        ("an unknown backend", |o| o.backend = 7),
        ("cpus past the maximum", |o| o.cpus = u32::MAX),
        ("channels_per_device 5", |o| o.channels_per_device = 5),
    ];
    for (what, change) in cases {
        let mut options = options(2);
        change(&mut options);
        let mut engine = null_mut();
        // SAFETY: valid options and a writable out-pointer.
        let rc = unsafe { dmaplane_engine_create(&options, &mut engine) };
        assert_eq!(rc, DMAPLANE_EINVAL, "{what}: {}", strerror(rc));
        assert!(engine.is_null(), "{what}");
    }
}

#[test]
fn the_table_refuses_null_with_a_length_and_unknown_capabilities() {
    let e = engine();
    let mut entries = [0u64; 2];
    // SAFETY: a live engine; the entries are writable.
    unsafe {
        assert_eq!(
            dmaplane_table(e, DMAPLANE_CAP_MEMCPY, null_mut(), 2),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_table(e, DMAPLANE_CAP_MEMCPY, null_mut(), 0), 2);
        for cap in [0, 1 << 6, DMAPLANE_CAP_MEMCPY | DMAPLANE_CAP_FILL] {
            assert_eq!(
                dmaplane_table(e, cap, entries.as_mut_ptr(), 2),
                DMAPLANE_EINVAL,
                "capability {cap}"
            );
        }
        // A longer array gets the possible CPUs and nothing past them.
        let mut long = [7u64; 4];
        assert_eq!(
            dmaplane_table(e, DMAPLANE_CAP_FILL, long.as_mut_ptr(), 4),
            2
        );
        assert_eq!(&long[2..], &[7, 7]);
    }
    destroy(e);
}

#[test]
fn every_code_has_a_description() {
    let codes = [
        DMAPLANE_OK,
        DMAPLANE_ENOENT,
        DMAPLANE_EIO,
        DMAPLANE_EREMOVED,
        DMAPLANE_EBADF,
        DMAPLANE_EAGAIN,
        DMAPLANE_ENOMEM,
        DMAPLANE_EFAULT,
        DMAPLANE_EBUSY,
        DMAPLANE_EEXIST,
        DMAPLANE_EXDEV,
        DMAPLANE_ENODEV,
        DMAPLANE_EINVAL,
        DMAPLANE_ERANGE,
        DMAPLANE_ENOTSUP,
        DMAPLANE_ENOBUFS,
        DMAPLANE_ETIMEDOUT,
        DMAPLANE_EINPROGRESS,
        DMAPLANE_EINTERNAL,
    ];
    let unknown = strerror(-4242);
    for code in codes {
        let text = strerror(code);
        assert!(!text.is_empty(), "{code}");
        assert_ne!(text, unknown, "{code} has only the generic text");
    }
    for code in [1, -1, i32::MIN, i32::MAX] {
        assert_eq!(strerror(code), unknown);
    }
}

#[test]
fn copy_fill_stats_table_removal_and_addition_through_the_abi() {
    let e = engine();
    let c = client(e, 0);
    let src = alloc(e, 8192);
    let dst = alloc(e, 8192);
    let pattern = 0x0807_0605_0403_0201u64;
    let (mut copy_channel, mut fill_channel) = (0u64, 0u64);
    // SAFETY: DMA memory of this engine; the destination is read only after both completions
    // are polled.
    unsafe {
        for i in 0..8192 {
            *src.add(i) = (i * 31 + 7) as u8;
        }
        assert_eq!(
            dmaplane_client_channel(c, DMAPLANE_CAP_MEMCPY, &mut copy_channel),
            0
        );
        assert_eq!(
            dmaplane_client_channel(c, DMAPLANE_CAP_FILL, &mut fill_channel),
            0
        );
        assert_ne!(copy_channel, DMAPLANE_NO_CHANNEL);
        assert_ne!(fill_channel, DMAPLANE_NO_CHANNEL);
        assert!(dmaplane_capacity(c, DMAPLANE_CAP_MEMCPY) > 0);
        assert_eq!(
            dmaplane_copy(c, dst.cast(), src.cast(), 4096, 1, 0),
            DMAPLANE_OK
        );
        assert_eq!(
            dmaplane_fill(
                c,
                dst.add(4096).cast(),
                pattern,
                1000,
                2,
                DMAPLANE_FLAG_FENCE
            ),
            DMAPLANE_OK
        );
        assert_eq!(dmaplane_client_in_flight(c), 2);
        assert_eq!(dmaplane_submit(c), DMAPLANE_OK);
    }
    let mut done = poll_for(c, 2);
    done.sort_by_key(|d| d.user_data);
    assert_eq!(
        done.iter()
            .map(|d| (d.user_data, d.status))
            .collect::<Vec<_>>(),
        [(1, 0), (2, 0)]
    );
    // SAFETY: both operations completed; the buffers are the CPU's again.
    let (copied, filled, untouched) = unsafe {
        (
            std::slice::from_raw_parts(dst, 4096),
            std::slice::from_raw_parts(dst.add(4096), 1000),
            std::slice::from_raw_parts(dst.add(5096), 8192 - 5096),
        )
    };
    // SAFETY: as above.
    assert_eq!(copied, unsafe { std::slice::from_raw_parts(src, 4096) });
    assert!(filled
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 8 + 1) as u8));
    assert!(
        untouched.iter().all(|&b| b == 0),
        "DMA memory starts zeroed"
    );

    // Statistics: the two operations and their bytes, on the channels the client used.
    let stats = |channel: u64| {
        let mut stats = dmaplane_channel_stats::default();
        // SAFETY: a live engine and a writable struct.
        let rc = unsafe { dmaplane_channel_get_stats(e, channel, &mut stats) };
        (rc, stats)
    };
    let (ok, bytes) = if copy_channel == fill_channel {
        let (rc, s) = stats(copy_channel);
        assert_eq!(rc, 0);
        (s.ops_ok, s.bytes)
    } else {
        let (rc1, s1) = stats(copy_channel);
        let (rc2, s2) = stats(fill_channel);
        assert_eq!((rc1, rc2), (0, 0));
        (s1.ops_ok + s2.ops_ok, s1.bytes + s2.bytes)
    };
    assert_eq!((ok, bytes), (2, 5096));
    assert_eq!(stats(copy_channel).1.ops_failed, 0);
    assert_eq!(stats(0xdead_0000).0, DMAPLANE_ENOENT);

    // The table names the client's channel in its CPU's slot.
    assert_eq!(table(e, DMAPLANE_CAP_MEMCPY)[0], copy_channel);
    assert_eq!(table(e, DMAPLANE_CAP_FILL)[0], fill_channel);
    let mut counts = dmaplane_channel_counts::default();
    // SAFETY: a live engine, writable structs and text.
    unsafe {
        assert_eq!(dmaplane_channel_get_counts(e, copy_channel, &mut counts), 0);
        assert!(counts.table_count >= 1);
        assert_eq!(
            dmaplane_channel_get_counts(e, 0xdead_0000, &mut counts),
            DMAPLANE_ENOENT
        );
        let needed = dmaplane_engine_dump(e, null_mut(), 0);
        assert!(needed > 0);
        let mut text = vec![0u8; needed as usize + 1];
        assert_eq!(
            dmaplane_engine_dump(e, text.as_mut_ptr().cast(), text.len()),
            needed
        );
        assert_eq!(text[needed as usize], 0);
    }

    // Remove the device under the client's copy channel (nothing in flight): the REMOVED event
    // comes, and the table no longer names the device.
    let victim = device_of(copy_channel);
    // SAFETY: a live engine.
    unsafe {
        assert_eq!(dmaplane_device_channels(e, victim), 1);
        assert_eq!(
            dmaplane_device_remove(e, victim, DMAPLANE_REMOVE_ORDERLY),
            0
        );
    }
    let removed = event_for(e, c, DMAPLANE_EVENT_REMOVED, victim);
    assert_eq!(
        (removed.surprise, removed.forced, removed.ops_failed),
        (0, 0, 0)
    );
    assert!(removed.released_ns >= 0, "{removed:?}");
    for cap in [DMAPLANE_CAP_MEMCPY, DMAPLANE_CAP_FILL] {
        let entries = table(e, cap);
        assert!(
            entries
                .iter()
                .all(|&ch| ch != DMAPLANE_NO_CHANNEL && device_of(ch) != victim),
            "{entries:x?}"
        );
    }
    assert_eq!(stats(copy_channel).0, DMAPLANE_ENOENT, "released");

    // The client moved on: a copy goes to the remaining device.
    let mut moved = 0u64;
    // SAFETY: DMA memory of this engine, read after the completion.
    unsafe {
        assert_eq!(
            dmaplane_client_channel(c, DMAPLANE_CAP_MEMCPY, &mut moved),
            0
        );
        assert_ne!(device_of(moved), victim);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match dmaplane_copy(
                c,
                dst.cast(),
                src.add(4096).cast(),
                4096,
                3,
                DMAPLANE_FLAG_SUBMIT,
            ) {
                DMAPLANE_OK => break,
                DMAPLANE_EINPROGRESS | DMAPLANE_EAGAIN if Instant::now() < deadline => {
                    assert_eq!(dmaplane_poll(c, null_mut(), 0), 0);
                }
                rc => panic!("copy after the removal: {}", strerror(rc)),
            }
        }
    }
    assert_eq!(poll_for(c, 1)[0].status, DMAPLANE_OK);
    // SAFETY: completed.
    assert_eq!(unsafe { std::slice::from_raw_parts(dst, 4096) }, unsafe {
        std::slice::from_raw_parts(src.add(4096), 4096)
    });
    assert_eq!(stats(moved).1.ops_ok, 1 + u64::from(moved == fill_channel));

    // Add a device: its id comes back and an ADDED event follows.
    let mut added = u32::MAX;
    let mut ids = [0u32; 4];
    // SAFETY: a live engine, writable id and ids.
    unsafe {
        assert_eq!(dmaplane_device_add(e, &mut added), 0);
        assert_ne!(added, victim);
        assert_eq!(dmaplane_device_list(e, ids.as_mut_ptr(), 4), 2);
        assert!(ids[..2].contains(&added) && !ids[..2].contains(&victim));
        assert_eq!(dmaplane_device_channels(e, added), 1);
    }
    event_for(e, c, DMAPLANE_EVENT_ADDED, added);

    // A surprise removal of the new device, with nothing in flight, says so in its event.
    // SAFETY: a live engine.
    unsafe {
        assert_eq!(
            dmaplane_device_remove(e, added, DMAPLANE_REMOVE_SURPRISE),
            0
        );
        for how in [DMAPLANE_REMOVE_SURPRISE, DMAPLANE_REMOVE_ORDERLY] {
            assert_eq!(dmaplane_device_remove(e, added, how), DMAPLANE_ENOENT);
        }
    }
    let removed = event_for(e, c, DMAPLANE_EVENT_REMOVED, added);
    assert_eq!((removed.surprise, removed.ops_failed), (1, 0));

    // SAFETY: live handles; nothing in flight.
    unsafe {
        assert_eq!(dmaplane_client_release(e, c), 0);
        assert_eq!(dmaplane_dma_free(e, src.cast()), 0);
        assert_eq!(dmaplane_dma_free(e, dst.cast()), 0);
    }
    destroy(e);
}

fn last_error() -> String {
    // SAFETY: a NULL buffer with length 0 asks for the length only.
    let needed = unsafe { dmaplane_last_error(null_mut(), 0) };
    assert!(needed >= 0, "{}", strerror(needed));
    let mut buf = vec![0 as std::ffi::c_char; needed as usize + 1];
    // SAFETY: `buf` has `buf.len()` writable bytes.
    let written = unsafe { dmaplane_last_error(buf.as_mut_ptr(), buf.len()) };
    assert_eq!(written, needed);
    // SAFETY: written NUL-terminated just above.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_real_hardware_backends_without_usable_ioat_functions_are_enodev_and_say_why() {
    let present = dmaplane::pci::discover().len();
    for backend in [DMAPLANE_BACKEND_PHYSICAL, DMAPLANE_BACKEND_VFIO] {
        let mut options = options(2);
        options.backend = backend;
        let mut engine = null_mut();
        // SAFETY: valid options and a writable out-pointer.
        let rc = unsafe { dmaplane_engine_create(&options, &mut engine) };
        if rc == DMAPLANE_OK {
            // A machine with real IOAT functions set up for this backend.
            // SAFETY: a live engine.
            assert!(unsafe { dmaplane_device_list(engine, null_mut(), 0) } > 0);
            destroy(engine);
            continue;
        }
        assert_eq!(rc, DMAPLANE_ENODEV, "{}", strerror(rc));
        assert!(engine.is_null());
        let why = last_error();
        if present == 0 {
            assert!(why.contains("no IOAT function found"), "{why}");
        } else {
            // Each function present was tried and is named with its cause.
            for function in dmaplane::pci::discover() {
                assert!(why.contains(&function.bdf), "{why}");
            }
        }
    }
    // The alias of the physical backend's old name still selects it.
    assert_eq!(DMAPLANE_BACKEND_HARDWARE, DMAPLANE_BACKEND_PHYSICAL);
}

#[test]
fn last_error_truncates_like_snprintf_and_refuses_a_null_buffer() {
    let mut options = options(2);
    options.backend = DMAPLANE_BACKEND_VFIO;
    let mut engine = null_mut();
    // SAFETY: valid options and a writable out-pointer.
    let rc = unsafe { dmaplane_engine_create(&options, &mut engine) };
    if rc == DMAPLANE_OK {
        destroy(engine);
        return;
    }
    let whole = last_error();
    assert!(whole.len() > 4);
    let mut small = [0x55 as std::ffi::c_char; 4];
    // SAFETY: 4 writable bytes.
    let needed = unsafe { dmaplane_last_error(small.as_mut_ptr(), small.len()) };
    assert_eq!(needed as usize, whole.len());
    // SAFETY: NUL-terminated within the 4 bytes.
    let head = unsafe { CStr::from_ptr(small.as_ptr()) }.to_string_lossy();
    assert_eq!(head, whole[..3]);
    // SAFETY: NULL with a non-zero length is refused, not written.
    let refused = unsafe { dmaplane_last_error(null_mut(), 8) };
    assert_eq!(refused, DMAPLANE_EINVAL);
}

#[test]
fn handles_of_a_destroyed_engine_stay_refused_after_new_engines_are_made() {
    let old = engine();
    let old_client = client(old, 0);
    destroy(old);
    // New engines never get the old handle, however many are made and destroyed.
    let engines: Vec<_> = (0..4).map(|_| engine()).collect();
    assert!(engines.iter().all(|&e| e != old));
    let fresh = engines[0];
    let fresh_client = client(fresh, 0);
    // SAFETY: handles are never freed, so stale ones are refused, not dereferenced.
    unsafe {
        assert_eq!(dmaplane_engine_destroy(old), DMAPLANE_EBADF);
        assert_eq!(dmaplane_client_release(old, old_client), DMAPLANE_EBADF);
        assert_eq!(dmaplane_client_release(fresh, old_client), DMAPLANE_EBADF);
        assert_eq!(dmaplane_submit(old_client), DMAPLANE_EBADF);
        assert_eq!(dmaplane_poll(old_client, null_mut(), 0), DMAPLANE_EBADF);
        // The new engine and its client are untouched by all that.
        assert_eq!(dmaplane_engine_cpus(fresh), 2);
        assert_eq!(dmaplane_client_cpu(fresh_client), 0);
    }
    for e in engines {
        destroy(e);
    }
    // Destroying the engine released its client too.
    // SAFETY: as above.
    assert_eq!(unsafe { dmaplane_submit(fresh_client) }, DMAPLANE_EBADF);
}

/// How many CPUs the calling thread may run on.
fn allowed_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        libc::CPU_COUNT(&set) as usize
    }
}

#[test]
fn a_refused_pinned_client_leaves_the_thread_affinity_alone() {
    let e = engine();
    let first = client(e, 0);
    let before = allowed_cpus();
    let mut second = null_mut();
    // SAFETY: a live engine and a writable out-pointer.
    let rc = unsafe { dmaplane_client_create(e, 0, DMAPLANE_CLIENT_PIN, &mut second) };
    assert_eq!(rc, DMAPLANE_EEXIST);
    assert_eq!(allowed_cpus(), before, "the refused call pinned the thread");
    // SAFETY: live handles of this test.
    assert_eq!(unsafe { dmaplane_client_release(e, first) }, DMAPLANE_OK);
    destroy(e);
}

#[test]
fn the_extended_operations_refuse_bad_arguments_and_missing_channels_with_their_codes() {
    let mut soft_options = options(1);
    soft_options.backend = DMAPLANE_BACKEND_SOFT;
    soft_options.devices = 1;
    // Software devices: every operation has a channel, and buffers must be DMA memory.
    let soft = engine_with(&soft_options);
    let c = client(soft, 0);
    let dma = alloc(soft, 512);
    let mut heap = vec![0u8; 64];
    let heap = heap.as_mut_ptr();
    // SAFETY: live handles; every refused call queues nothing.
    unsafe {
        let d = dma.cast::<c_void>();
        let at = |k: usize| dma.add(k).cast::<c_void>();
        assert_eq!(
            dmaplane_compare(null_mut(), d, at(64), 8, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_compare(c, null(), at(64), 8, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(dmaplane_compare(c, d, null(), 8, 1, 0), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_compare(c, d, at(64), 0, 1, 0), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_crc32c(c, null(), 8, 0, 1, 0), DMAPLANE_EINVAL);
        assert_eq!(dmaplane_crc32c(c, d, 8, 0, 1, 1 << 9), DMAPLANE_EINVAL);
        assert_eq!(
            dmaplane_copy_crc(c, null_mut(), d, 8, 0, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_copy_crc(c, at(64), null(), 8, 0, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_dualcast(c, null_mut(), at(64), d, 8, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_dualcast(c, at(64), null_mut(), d, 8, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_dualcast(c, at(64), at(128), null(), 8, 1, 0),
            DMAPLANE_EINVAL
        );
        assert_eq!(
            dmaplane_dualcast(c, at(64), at(100), d, 64, 1, 0),
            DMAPLANE_EINVAL,
            "overlapping destinations"
        );
        assert_eq!(dmaplane_crc32c(c, heap.cast(), 8, 0, 1, 0), DMAPLANE_EFAULT);
        assert_eq!(
            dmaplane_compare(c, d, heap.cast(), 8, 1, 0),
            DMAPLANE_EFAULT
        );
        assert_eq!(dmaplane_client_in_flight(c), 0, "nothing was queued");
        // The client still works: the CRC-32C check value.
        std::ptr::copy_nonoverlapping(b"123456789".as_ptr(), dma, 9);
        assert_eq!(dmaplane_crc32c(c, d, 9, 0, 7, DMAPLANE_FLAG_SUBMIT), 0);
    }
    let done = poll_for(c, 1)[0];
    assert_eq!(
        (done.user_data, done.status, done.value),
        (7, DMAPLANE_OK, 0xE306_9283)
    );
    // SAFETY: live handles; nothing in flight.
    unsafe { assert_eq!(dmaplane_client_release(soft, c), DMAPLANE_OK) };
    destroy(soft);

    // Emulated IOAT devices: no channel for any of the four.
    let e = engine();
    let c = client(e, 0);
    let dma = alloc(e, 512);
    // SAFETY: live handles; every refused call queues nothing.
    unsafe {
        let d = dma.cast::<c_void>();
        let at = |k: usize| dma.add(k).cast::<c_void>();
        let mut channel = 0;
        for cap in [
            DMAPLANE_CAP_COMPARE,
            DMAPLANE_CAP_CRC32C,
            DMAPLANE_CAP_COPY_CRC,
            DMAPLANE_CAP_DUALCAST,
        ] {
            assert_eq!(dmaplane_client_channel(c, cap, &mut channel), DMAPLANE_OK);
            assert_eq!(channel, DMAPLANE_NO_CHANNEL, "capability {cap}");
            assert_eq!(dmaplane_capacity(c, cap), 0);
        }
        assert_eq!(dmaplane_compare(c, d, at(64), 8, 1, 0), DMAPLANE_ENODEV);
        assert_eq!(dmaplane_crc32c(c, d, 8, 0, 1, 0), DMAPLANE_ENODEV);
        assert_eq!(dmaplane_copy_crc(c, at(64), d, 8, 0, 1, 0), DMAPLANE_ENODEV);
        assert_eq!(
            dmaplane_dualcast(c, at(64), at(128), d, 8, 1, 0),
            DMAPLANE_ENODEV
        );
        assert_eq!(dmaplane_client_in_flight(c), 0);
        assert_eq!(dmaplane_client_release(e, c), DMAPLANE_OK);
    }
    destroy(e);
}
