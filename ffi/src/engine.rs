//! The engine handle of the C ABI: an engine with its DMA pool, its devices (emulated, or real
//! IOAT functions found in sysfs) and its hotplug monitor, made from `dmaplane_options`; DMA
//! memory; hot-removal, hot-add and their events; and introspection (the per-CPU table,
//! per-channel counts and statistics, a printable dump).
//!
//! An engine handle is a small slot that is never freed: it holds the engine until
//! `dmaplane_engine_destroy` empties it, and each call takes its own reference to the engine
//! while it runs. So a destroyed engine's handle is refused with `DMAPLANE_EBADF` (its address
//! is never reused for another engine), a made-up pointer is refused because it is not in the
//! registry of handles, and a destroy racing another call on the engine frees the engine only
//! when that call is done. Every function taking an engine may be called from any thread.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use dmaplane::emu::EmuMode;
use dmaplane::log::LogHook;
use dmaplane::mem::DmaBlock;
use dmaplane::{Capability, ChannelId, DeviceId, Engine, Removal, Setup};

use crate::boundary::{guarded, input, out, out_slice, write_text};
use crate::client::ClientHandle;
use crate::error::*;
use crate::types::*;

/// A live client's shell, listed by its engine so that destroying the engine releases it.
pub(crate) struct OwnedClient(pub(crate) *const ClientHandle);

// SAFETY: shells are never freed, and the `Client` inside is `Send` (asserted in `client.rs`):
// whichever thread releases it (the client's user, or the engine's last holder) may drop it.
unsafe impl Send for OwnedClient {}

#[derive(Default)]
struct Holdings {
    blocks: HashMap<usize, DmaBlock>,
    clients: Vec<OwnedClient>,
}

/// `dmaplane_engine` in C: opaque. A slot that is never freed (a few bytes per engine made):
/// it holds the engine until `dmaplane_engine_destroy` empties it.
pub struct EngineHandle {
    core: RwLock<Option<Arc<EngineCore>>>,
}

/// An engine (the library's setup: engine, pool, devices, monitor) with what the C caller
/// made through it.
pub(crate) struct EngineCore {
    setup: Setup,
    holdings: Mutex<Holdings>,
}

// C calls on one engine come from many threads at once (clients, the application's control
// thread): the engine must be shareable.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<EngineCore>();
    shareable::<EngineHandle>();
};

/// Every engine handle ever made: they are never freed, so never reused, and listing them
/// keeps them reachable (a leak checker sees them as held, not lost).
static HANDLES: Mutex<Vec<&'static EngineHandle>> = Mutex::new(Vec::new());

fn is_handle(ptr: *const EngineHandle) -> bool {
    let handles = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
    handles.iter().any(|&h| std::ptr::eq(h, ptr))
}

/// The slot behind `ptr`, if it is one of ours.
pub(crate) fn engine_slot<'a>(ptr: *const EngineHandle) -> Result<&'a EngineHandle, Code> {
    if ptr.is_null() {
        return Err(DMAPLANE_EINVAL);
    }
    if !is_handle(ptr) {
        return Err(DMAPLANE_EBADF);
    }
    // SAFETY: the registry lists only handles made by `dmaplane_engine_create` with
    // `Box::leak`, and they are never freed.
    Ok(unsafe { &*ptr })
}

/// The engine behind `ptr`, held for the caller's call: `DMAPLANE_EBADF` once destroyed.
pub(crate) fn engine_ref(ptr: *const EngineHandle) -> Result<Arc<EngineCore>, Code> {
    engine_slot(ptr)?.current().ok_or(DMAPLANE_EBADF)
}

impl EngineHandle {
    fn current(&self) -> Option<Arc<EngineCore>> {
        self.core.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn quiet() -> LogHook {
    Arc::new(|_, _| {})
}

/// The capability a `DMAPLANE_CAP_*` bit names (exactly one bit).
pub(crate) fn capability(bit: u32) -> Result<Capability, Code> {
    match bit {
        DMAPLANE_CAP_MEMCPY => Ok(Capability::Memcpy),
        DMAPLANE_CAP_FILL => Ok(Capability::Fill),
        DMAPLANE_CAP_COMPARE => Ok(Capability::Compare),
        DMAPLANE_CAP_CRC32C => Ok(Capability::Crc32c),
        DMAPLANE_CAP_COPY_CRC => Ok(Capability::CopyCrc),
        DMAPLANE_CAP_DUALCAST => Ok(Capability::Dualcast),
        _ => Err(DMAPLANE_EINVAL),
    }
}

/// A channel id as C sees it: the device id above the channel's index.
pub(crate) fn encode_channel(id: ChannelId) -> u64 {
    (u64::from(id.device.0) << 16) | u64::from(id.index)
}

fn decode_channel(id: u64) -> Result<ChannelId, Code> {
    let device = u32::try_from(id >> 16).map_err(|_| DMAPLANE_ENOENT)?;
    Ok(ChannelId {
        device: DeviceId(device),
        index: (id & 0xffff) as u16,
    })
}

fn validate(options: &dmaplane_options) -> Result<(), Code> {
    let known_caps = DMAPLANE_CAP_MEMCPY | DMAPLANE_CAP_FILL;
    let ok = matches!(
        options.backend,
        DMAPLANE_BACKEND_EMULATED
            | DMAPLANE_BACKEND_PHYSICAL
            | DMAPLANE_BACKEND_VFIO
            | DMAPLANE_BACKEND_SOFT
            | DMAPLANE_BACKEND_DSA
            | DMAPLANE_BACKEND_MIXED
            | DMAPLANE_BACKEND_DSA_KERNEL
    ) && (1..=4).contains(&options.channels_per_device)
        && options.capabilities & DMAPLANE_CAP_MEMCPY != 0
        && options.capabilities & !known_caps == 0
        && (6..=16).contains(&options.ring_order)
        && options.cpus as usize <= dmaplane::MAX_CPUS;
    if ok {
        Ok(())
    } else {
        Err(DMAPLANE_EINVAL)
    }
}

impl EngineCore {
    fn create(options: dmaplane_options) -> Result<EngineCore, Code> {
        validate(&options)?;
        let mut builder = Setup::builder()
            .log(quiet())
            .channels_per_device(options.channels_per_device as usize)
            .fill(options.capabilities & DMAPLANE_CAP_FILL != 0)
            .emulation(if options.threaded != 0 {
                EmuMode::Threaded
            } else {
                EmuMode::Inline
            })
            .ring_order(options.ring_order)
            .uevents(options.uevents != 0)
            .drain_timeout(Duration::from_millis(options.drain_timeout_ms.into()));
        if options.cpus != 0 {
            builder = builder.cpus(options.cpus as usize);
        }
        builder = match options.backend {
            DMAPLANE_BACKEND_PHYSICAL => builder.physical_ioat(),
            DMAPLANE_BACKEND_VFIO => builder
                .vfio_ioat()
                .allow_noiommu(options.allow_noiommu != 0),
            DMAPLANE_BACKEND_SOFT => builder.soft(options.devices as usize),
            DMAPLANE_BACKEND_DSA => builder.emulated_dsa(options.devices as usize),
            DMAPLANE_BACKEND_MIXED => builder.mixed(options.devices as usize),
            DMAPLANE_BACKEND_DSA_KERNEL => builder.kernel_dsa(),
            _ => builder.emulated_ioat(options.devices as usize),
        };
        Ok(EngineCore {
            setup: builder.build().map_err(|e| of_setup(&e))?,
            holdings: Mutex::new(Holdings::default()),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.setup.engine()
    }

    fn holdings(&self) -> MutexGuard<'_, Holdings> {
        self.holdings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn adopt_client(&self, client: *const ClientHandle) {
        self.holdings().clients.push(OwnedClient(client));
    }

    pub(crate) fn disown_client(&self, client: *const ClientHandle) {
        self.holdings()
            .clients
            .retain(|owned| !std::ptr::eq(owned.0, client));
    }

    pub(crate) fn possible_cpus(&self) -> usize {
        self.engine().possible_cpus()
    }
}

impl Drop for EngineCore {
    fn drop(&mut self) {
        // The clients first (each drains what it has in flight), then the memory their
        // operations used; the setup goes last (its monitor, then its devices).
        let holdings = std::mem::take(&mut *self.holdings());
        for client in holdings.clients {
            // SAFETY: shells are never freed; no call runs on a client of an engine being
            // destroyed (contract), so nothing else touches the client inside.
            unsafe { (*client.0).retire() };
        }
        drop(holdings.blocks);
    }
}

/// Fills `options` with the defaults: the emulated backend, this machine's CPUs, 2 devices of
/// 1 channel with copy and fill, threaded, 1024-descriptor rings.
///
/// Errors: `DMAPLANE_EINVAL` for NULL.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_options_init(options: *mut dmaplane_options) -> i32 {
    guarded(|| {
        // SAFETY: the caller passes a writable options struct or NULL.
        *unsafe { out(options) }? = dmaplane_options::default();
        Ok(0)
    })
}

/// Makes an engine from `options` (NULL for the defaults) and stores its handle in `*engine`.
/// Emulated devices are registered and the per-CPU table built before it returns; the
/// hotplug monitor runs from now until `dmaplane_engine_destroy`.
///
/// Errors: `DMAPLANE_EINVAL` (NULL `engine`, an option out of range), `DMAPLANE_ENOMEM`,
/// `DMAPLANE_ENODEV` (VFIO or physical backend: no IOAT function could be attached;
/// `dmaplane_last_error` says why for each one tried), `DMAPLANE_EIO` (a device failed to
/// probe).
#[no_mangle]
pub unsafe extern "C" fn dmaplane_engine_create(
    options: *const dmaplane_options,
    engine: *mut *mut EngineHandle,
) -> i32 {
    guarded(|| {
        // SAFETY: the caller passes a writable pointer or NULL.
        let slot = unsafe { out(engine) }?;
        let options = if options.is_null() {
            dmaplane_options::default()
        } else {
            // SAFETY: non-NULL options point at a filled struct (contract).
            *unsafe { input(options) }?
        };
        let core = Arc::new(EngineCore::create(options)?);
        let handle: &'static EngineHandle = Box::leak(Box::new(EngineHandle {
            core: RwLock::new(Some(core)),
        }));
        HANDLES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        *slot = std::ptr::from_ref(handle).cast_mut();
        Ok(0)
    })
}

/// Writes the whole text of the last failure of `dmaplane_engine_create`,
/// `dmaplane_device_add` or `dmaplane_device_remove` on this thread into `buf` (NUL-terminated,
/// truncated to `len` bytes as `snprintf` does) and returns the length of the whole text. The
/// text says what a code cannot: for `DMAPLANE_ENODEV` from the VFIO or physical backend, each
/// IOAT function tried and why it was passed over (not bound to vfio-pci, IOMMU group not
/// viable, in use by another process, permission denied), with the fix. Empty before any
/// failure; `buf` may be NULL when `len` is 0, to learn the length.
///
/// Errors: `DMAPLANE_EINVAL` (NULL `buf` with a non-zero `len`).
#[no_mangle]
pub unsafe extern "C" fn dmaplane_last_error(buf: *mut c_char, len: usize) -> i32 {
    guarded(|| {
        // SAFETY: the caller passes `len` writable bytes at `buf`, or NULL with 0 (contract).
        unsafe { write_text(&last_setup_error(), buf.cast(), len) }
    })
}

/// Destroys an engine: stops the monitor, releases its clients (each waits up to 5 s for its
/// operations in flight), frees its DMA memory and devices. Afterwards the engine handle and
/// its client handles are refused with `DMAPLANE_EBADF` (their few bytes are never freed, so
/// they are never reused), and its DMA buffers are invalid. No client of the engine may be
/// in a call while it is destroyed; a call on the engine itself may be, and the engine goes
/// when that call returns.
///
/// Errors: `DMAPLANE_EINVAL` (NULL), `DMAPLANE_EBADF` (not an engine handle, or destroyed
/// already).
#[no_mangle]
pub unsafe extern "C" fn dmaplane_engine_destroy(engine: *mut EngineHandle) -> i32 {
    guarded(|| {
        let slot = engine_slot(engine)?;
        let core = slot
            .core
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(DMAPLANE_EBADF)?;
        drop(core);
        Ok(0)
    })
}

/// The engine's possible CPUs (the width of its per-CPU table), or a negative code.
///
/// Errors: `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_engine_cpus(engine: *const EngineHandle) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        i32::try_from(handle.possible_cpus()).map_err(|_| DMAPLANE_EINVAL)
    })
}

/// Allocates `len` bytes of DMA memory aligned to `align` (a power of two, 0 for 64) and
/// stores the address in `*ptr`. Only DMA memory of this engine may be passed to
/// `dmaplane_copy` and `dmaplane_fill`.
///
/// Errors: `DMAPLANE_EINVAL` (NULL, zero length, bad alignment), `DMAPLANE_EBADF`,
/// `DMAPLANE_ENOMEM`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_dma_alloc(
    engine: *mut EngineHandle,
    len: usize,
    align: usize,
    ptr: *mut *mut c_void,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        // SAFETY: the caller passes a writable pointer or NULL.
        let slot = unsafe { out(ptr) }?;
        let align = if align == 0 { 64 } else { align };
        let block = handle
            .setup
            .pool()
            .alloc(len, align)
            .map_err(|e| of_mem(&e))?;
        let address = block.as_mut_ptr();
        handle.holdings().blocks.insert(address as usize, block);
        *slot = address.cast();
        Ok(0)
    })
}

/// Frees DMA memory from `dmaplane_dma_alloc` of this engine. No operation may still use it.
///
/// Errors: `DMAPLANE_EINVAL` (NULL, or not an address this engine allocated: freed twice,
/// another engine's, an interior pointer), `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_dma_free(engine: *mut EngineHandle, ptr: *mut c_void) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        if ptr.is_null() {
            return Err(DMAPLANE_EINVAL);
        }
        let block = handle.holdings().blocks.remove(&(ptr as usize));
        block.map(|_| 0).ok_or(DMAPLANE_EINVAL)
    })
}

/// Writes up to `len` registered device ids into `ids` and returns how many devices are
/// registered (which may be more than `len`; NULL with `len` 0 asks for the count).
///
/// Errors: `DMAPLANE_EINVAL` (NULL `ids` with non-zero `len`), `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_device_list(
    engine: *const EngineHandle,
    ids: *mut u32,
    len: usize,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        // SAFETY: the caller passes `len` writable ids, or NULL with 0.
        let ids = unsafe { out_slice(ids, len) }?;
        let devices = handle.engine().devices();
        for (slot, (id, _)) in ids.iter_mut().zip(&devices) {
            *slot = id.0;
        }
        i32::try_from(devices.len()).map_err(|_| DMAPLANE_EINVAL)
    })
}

/// The number of channels of a registered device.
///
/// Errors: `DMAPLANE_ENOENT` (unknown or removed device), `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_device_channels(engine: *const EngineHandle, device: u32) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        let dump = handle.engine().dump();
        dump.devices
            .iter()
            .find(|d| d.id == DeviceId(device) && d.registered)
            .map(|d| d.channels.len() as i32)
            .ok_or(DMAPLANE_ENOENT)
    })
}

/// Starts the removal of a registered device while clients keep working; the outcome arrives
/// as a `DMAPLANE_EVENT_REMOVED` event (`dmaplane_event_next`). `how` is
/// `DMAPLANE_REMOVE_ORDERLY` (operations in flight drain, up to the drain deadline, then the
/// rest complete with `DMAPLANE_EREMOVED`) or `DMAPLANE_REMOVE_SURPRISE` (emulated devices
/// only: the device leaves the bus and everything in flight completes with
/// `DMAPLANE_EREMOVED`). Clients must keep polling for the release to complete.
///
/// Errors: `DMAPLANE_ENOENT` (unknown or already removed device, or one whose removal was
/// already requested), `DMAPLANE_ENOTSUP` (surprise removal of real hardware),
/// `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_device_remove(
    engine: *mut EngineHandle,
    device: u32,
    how: u32,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        let id = DeviceId(device);
        let how = match how {
            DMAPLANE_REMOVE_ORDERLY => Removal::Orderly,
            DMAPLANE_REMOVE_SURPRISE => Removal::Surprise,
            // A bad `how` for a device that could be removed; any other device is unknown.
            _ if handle
                .setup
                .devices()
                .iter()
                .any(|d| d.id == id && !d.removal_requested) =>
            {
                return Err(DMAPLANE_EINVAL)
            }
            _ => return Err(DMAPLANE_ENOENT),
        };
        handle
            .setup
            .remove_device(id, how)
            .map_err(|e| of_setup(&e))?;
        Ok(0)
    })
}

/// Adds a device while clients run: a new emulated device like the first ones, or (VFIO and
/// physical backends) the first IOAT function not attached yet. The table is rebalanced onto it before
/// this returns, and a `DMAPLANE_EVENT_ADDED` event follows. Its id goes to `*device` unless
/// that is NULL.
///
/// Errors: `DMAPLANE_ENODEV` (VFIO or physical: no function to add; see
/// `dmaplane_last_error`), `DMAPLANE_EIO` (probe failed),
/// `DMAPLANE_ENOMEM`, `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_device_add(engine: *mut EngineHandle, device: *mut u32) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        let id = handle.setup.add_device().map_err(|e| of_setup(&e))?;
        // SAFETY: the caller passes a writable pointer or NULL.
        if let Some(slot) = unsafe { device.as_mut() } {
            *slot = id.0;
        }
        Ok(0)
    })
}

/// Waits up to `timeout_ms` for the next hotplug event and stores it in `*event`. Returns 1
/// when an event was stored, 0 when none came in time.
///
/// Errors: `DMAPLANE_EINVAL` (NULL), `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_event_next(
    engine: *mut EngineHandle,
    event: *mut dmaplane_event,
    timeout_ms: u32,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        // SAFETY: the caller passes a writable event or NULL.
        let slot = unsafe { out(event) }?;
        match handle
            .setup
            .next_event(Duration::from_millis(timeout_ms.into()))
        {
            Some(next) => {
                *slot = dmaplane_event::from(next);
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// Writes the per-CPU table of one capability (one `DMAPLANE_CAP_*` bit):
/// entry `cpu` of `channels` gets the channel id of that CPU's slot, or `DMAPLANE_NO_CHANNEL`.
/// Writes up to `len` entries and returns the number of possible CPUs.
///
/// Errors: `DMAPLANE_EINVAL` (NULL `channels` with non-zero `len`, not a single known
/// capability), `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_table(
    engine: *const EngineHandle,
    capability_bit: u32,
    channels: *mut u64,
    len: usize,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        let cap = capability(capability_bit)?;
        // SAFETY: the caller passes `len` writable entries, or NULL with 0.
        let channels = unsafe { out_slice(channels, len) }?;
        let cpus = handle.possible_cpus();
        for (cpu, slot) in channels.iter_mut().enumerate().take(cpus) {
            let entry = handle
                .engine()
                .table_entry(cap, cpu)
                .map_err(|e| of_engine(&e))?;
            *slot = entry.map_or(DMAPLANE_NO_CHANNEL, encode_channel);
        }
        i32::try_from(cpus).map_err(|_| DMAPLANE_EINVAL)
    })
}

/// A channel's reference counts.
///
/// Errors: `DMAPLANE_ENOENT` (no such channel), `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_channel_get_counts(
    engine: *const EngineHandle,
    channel: u64,
    counts: *mut dmaplane_channel_counts,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        // SAFETY: the caller passes a writable struct or NULL.
        let slot = unsafe { out(counts) }?;
        let got = handle
            .engine()
            .channel_counts(decode_channel(channel)?)
            .map_err(|e| of_engine(&e))?;
        *slot = dmaplane_channel_counts {
            client_count: got.client_count,
            table_count: got.table_count,
        };
        Ok(0)
    })
}

/// What a channel has completed: operations by outcome and bytes moved.
///
/// Errors: `DMAPLANE_ENOENT` (no such channel, or its device was released),
/// `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_channel_get_stats(
    engine: *const EngineHandle,
    channel: u64,
    stats: *mut dmaplane_channel_stats,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        // SAFETY: the caller passes a writable struct or NULL.
        let slot = unsafe { out(stats) }?;
        let got = handle
            .engine()
            .channel_stats(decode_channel(channel)?)
            .map_err(|e| of_engine(&e))?;
        *slot = dmaplane_channel_stats {
            ops_ok: got.ops_ok,
            ops_failed: got.ops_failed,
            ops_removed: got.ops_removed,
            bytes: got.bytes,
        };
        Ok(0)
    })
}

/// Writes a readable dump of devices, channels, counts and the per-CPU table into `buf`
/// (truncated to `len` and NUL-terminated, like `snprintf`) and returns the length of the
/// whole text; NULL with `len` 0 asks for the length.
///
/// Errors: `DMAPLANE_EINVAL`, `DMAPLANE_EBADF`.
#[no_mangle]
pub unsafe extern "C" fn dmaplane_engine_dump(
    engine: *const EngineHandle,
    buf: *mut c_char,
    len: usize,
) -> i32 {
    guarded(|| {
        let handle = engine_ref(engine)?;
        let text = handle.engine().dump().to_string();
        // SAFETY: the caller passes `len` writable bytes, or NULL with 0.
        unsafe { write_text(&text, buf.cast(), len) }
    })
}
