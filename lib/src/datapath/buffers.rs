//! The safe face of the data path: an operation takes ownership of its DMA buffers and hands
//! them back with its completion, so no buffer can be freed, read or reused while the device
//! may still touch it.
//!
//! [`BufferClient`] wraps a [`Client`]. A refused operation returns its buffers at once with
//! the error ([`Refused`], boxed: refusals are rare and the buffers are large to carry); an accepted one keeps them in a slab until [`BufferClient::poll`]
//! returns them in a [`Finished`]. The raw, `unsafe` [`Client::copy`] stays available for
//! callers that manage buffer lifetimes themselves (io_uring style).
//!
//! ```
//! use std::sync::Arc;
//! use dmaplane::datapath::{BufferClient, Buffers};
//! use dmaplane::datapath::{Client, ClientConfig};
//! use dmaplane::emu::{EmuConfig, EmulatedDevice, PoolMemory};
//! use dmaplane::ioat::{IoatConfig, IoatDevice};
//! use dmaplane::OpFlags;
//! use dmaplane::mem::{DmaPool, DmaPoolConfig};
//! use dmaplane::{Engine, EngineConfig};
//!
//! let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
//! // SAFETY: the device only reaches buffers through a client, which keeps them alive.
//! let memory = Arc::new(unsafe { PoolMemory::new(pool.clone()) });
//! let device = EmulatedDevice::new(EmuConfig::default(), memory).unwrap();
//! let ioat = IoatDevice::probe("emu0", device.registers(), Some(device.config_space()),
//!                              pool.clone(), IoatConfig::default()).unwrap();
//! let engine = Engine::new(EngineConfig::with_cpus(1)).unwrap();
//! engine.register_device(ioat.spec()).unwrap();
//!
//! let client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
//! let mut buffers = BufferClient::new(client);
//! let mut src = pool.alloc(256, 64).unwrap();
//! src.write_at(0, &[9u8; 256]).unwrap();
//! let dst = pool.alloc(256, 64).unwrap();
//! buffers.copy(dst, src, 256, 1, OpFlags::SUBMIT).map_err(|r| r.error).unwrap();
//! // `dst` and `src` now belong to the operation: using them here would not compile.
//! let mut done = Vec::new();
//! while buffers.poll(&mut done, 8) == 0 {}
//! let Buffers::Copy { dst, .. } = &done[0].buffers else { unreachable!() };
//! assert_eq!(dst.to_vec(), vec![9u8; 256]);
//! ```

use super::client::{Client, ClientError};
use crate::capability::Capability;
use crate::engine::ChannelId;
use crate::mem::DmaBlock;
use crate::queue::{Completion, OpError, OpFlags};
use std::fmt;

/// The buffers an operation owns while it is in flight.
#[derive(Debug)]
pub enum Buffers {
    /// A copy's source and destination.
    Copy {
        /// Written by the device.
        dst: DmaBlock,
        /// Read by the device.
        src: DmaBlock,
    },
    /// A fill's destination.
    Fill {
        /// Written by the device.
        dst: DmaBlock,
    },
}

/// An operation refused at submission, with its buffers back.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: ClientError,
    /// The operation's buffers, untouched by the device.
    pub buffers: Buffers,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Refused {}

/// A finished operation and its buffers.
#[derive(Debug)]
pub struct Finished {
    /// What the submitter passed in.
    pub user_data: u64,
    /// Success, or why not.
    pub result: Result<(), OpError>,
    /// The buffers, the device done with them.
    pub buffers: Buffers,
}

/// A [`Client`] whose operations own their buffers. See the module documentation.
pub struct BufferClient {
    client: Client,
    /// Operations in flight, indexed by the `user_data` the client sees.
    slab: Vec<Option<(u64, Buffers)>>,
    free: Vec<usize>,
    batch: Vec<Completion>,
}

impl BufferClient {
    /// Wraps `client`.
    pub fn new(client: Client) -> BufferClient {
        BufferClient {
            client,
            slab: Vec::new(),
            free: Vec::new(),
            batch: vec![Completion::default(); 64],
        }
    }

    /// The client underneath, for its statistics. Never `&mut`: swapping the client out
    /// would let this wrapper free buffers the other client's operations still use.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The channel `cap` operations go to, and whether it is owned (see [`Client::channel`]).
    pub fn channel(&mut self, cap: Capability) -> Option<(ChannelId, bool)> {
        self.client.channel(cap)
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> u64 {
        self.client.in_flight()
    }

    fn park(&mut self, user_data: u64, buffers: Buffers) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slab[slot] = Some((user_data, buffers));
                slot
            }
            None => {
                self.slab.push(Some((user_data, buffers)));
                self.slab.len() - 1
            }
        }
    }

    fn unpark(&mut self, slot: usize) -> (u64, Buffers) {
        self.free.push(slot);
        self.slab[slot]
            .take()
            .expect("a completion for a parked operation")
    }

    /// Copies the first `len` bytes of `src` into `dst`. Flags as for [`Client::copy`].
    pub fn copy(
        &mut self,
        dst: DmaBlock,
        src: DmaBlock,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), Box<Refused>> {
        if len > dst.len().min(src.len()) {
            return Err(Box::new(Refused {
                error: ClientError::BufferTooSmall {
                    len,
                    capacity: dst.len().min(src.len()),
                },
                buffers: Buffers::Copy { dst, src },
            }));
        }
        let (dst_ptr, src_ptr) = (dst.as_mut_ptr(), src.as_ptr());
        let slot = self.park(user_data, Buffers::Copy { dst, src });
        // SAFETY: the blocks are parked in the slab, out of the caller's reach, until the
        // completion naming `slot` comes back (or forever, if it never does: see `Drop`).
        let submitted = unsafe { self.client.copy(dst_ptr, src_ptr, len, slot as u64, flags) };
        submitted.map_err(|error| {
            Box::new(Refused {
                error,
                buffers: self.unpark(slot).1,
            })
        })
    }

    /// Fills the first `len` bytes of `dst` with `pattern` (as [`Client::fill`]).
    pub fn fill(
        &mut self,
        dst: DmaBlock,
        pattern: u64,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), Box<Refused>> {
        if len > dst.len() {
            return Err(Box::new(Refused {
                error: ClientError::BufferTooSmall {
                    len,
                    capacity: dst.len(),
                },
                buffers: Buffers::Fill { dst },
            }));
        }
        let dst_ptr = dst.as_mut_ptr();
        let slot = self.park(user_data, Buffers::Fill { dst });
        // SAFETY: as in `copy`.
        let submitted = unsafe { self.client.fill(dst_ptr, pattern, len, slot as u64, flags) };
        submitted.map_err(|error| {
            Box::new(Refused {
                error,
                buffers: self.unpark(slot).1,
            })
        })
    }

    /// Rings the doorbell for what was queued.
    pub fn submit(&mut self) {
        self.client.submit();
    }

    /// Appends up to `max` finished operations to `out`, buffers included; returns how many.
    pub fn poll(&mut self, out: &mut Vec<Finished>, max: usize) -> usize {
        let want = max.min(self.batch.len());
        let mut batch = std::mem::take(&mut self.batch);
        let n = self.client.poll(&mut batch[..want]);
        for c in &batch[..n] {
            let (user_data, buffers) = self.unpark(c.user_data as usize);
            out.push(Finished {
                user_data,
                result: c.result,
                buffers,
            });
        }
        self.batch = batch;
        n
    }
}

impl Drop for BufferClient {
    fn drop(&mut self) {
        let drained = self.client.drain(self.client.config().drain_timeout);
        for c in drained {
            self.unpark(c.user_data as usize);
        }
        if self.client.in_flight() > 0 {
            // The device may still write into these: never give them back to the pool.
            std::mem::forget(std::mem::take(&mut self.slab));
        }
    }
}

impl fmt::Debug for BufferClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferClient")
            .field("client", &self.client)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}
