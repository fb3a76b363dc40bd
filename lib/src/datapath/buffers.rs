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
    /// A compare's two buffers.
    Compare {
        /// Read by the device.
        a: DmaBlock,
        /// Read by the device.
        b: DmaBlock,
    },
    /// A CRC-32C's source.
    Crc32c {
        /// Read by the device.
        src: DmaBlock,
    },
    /// A copy with CRC's source and destination.
    CopyCrc {
        /// Written by the device.
        dst: DmaBlock,
        /// Read by the device.
        src: DmaBlock,
    },
    /// A dualcast's destinations and source.
    Dualcast {
        /// Written by the device.
        dst1: DmaBlock,
        /// Written by the device.
        dst2: DmaBlock,
        /// Read by the device.
        src: DmaBlock,
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
    /// What the operation computed: see [`Completion::value`].
    pub value: u64,
    /// The buffers, the device done with them.
    pub buffers: Buffers,
}

impl Finished {
    /// For a compare that succeeded: the offset of the first byte that differs, or `None`
    /// when the buffers are equal (see [`Completion::mismatch_at`]).
    pub fn mismatch_at(&self) -> Option<u64> {
        self.value.checked_sub(1)
    }

    /// For a CRC operation that succeeded: the CRC-32C.
    pub fn crc(&self) -> u32 {
        self.value as u32
    }
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

    /// Compares the first `len` bytes of `a` and `b` (as [`Client::compare`]): the
    /// [`Finished`] says where they first differ ([`Finished::mismatch_at`]).
    ///
    /// ```
    /// use dmaplane::datapath::{BufferClient, Client, ClientConfig};
    /// use dmaplane::{OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut buffers = BufferClient::new(client);
    /// let a = setup.pool().alloc(256, 64).unwrap();
    /// let mut b = setup.pool().alloc(256, 64).unwrap();
    /// b.write_at(200, &[1]).unwrap();
    /// buffers.compare(a, b, 256, 1, OpFlags::SUBMIT).map_err(|r| r.error).unwrap();
    /// let mut done = Vec::new();
    /// while buffers.poll(&mut done, 8) == 0 {}
    /// assert_eq!(done[0].mismatch_at(), Some(200));
    /// ```
    pub fn compare(
        &mut self,
        a: DmaBlock,
        b: DmaBlock,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), Box<Refused>> {
        let capacity = a.len().min(b.len());
        let (a_ptr, b_ptr) = (a.as_ptr(), b.as_ptr());
        self.run(
            len,
            capacity,
            user_data,
            Buffers::Compare { a, b },
            |client, slot| {
                // SAFETY: as in `copy`.
                unsafe { client.compare(a_ptr, b_ptr, len, slot, flags) }
            },
        )
    }

    /// Computes the CRC-32C of the first `len` bytes of `src` continuing from `initial` (as
    /// [`Client::crc32c`]): the [`Finished`] carries it ([`Finished::crc`]).
    ///
    /// ```
    /// use dmaplane::datapath::{BufferClient, Client, ClientConfig};
    /// use dmaplane::{OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut buffers = BufferClient::new(client);
    /// let mut src = setup.pool().alloc(64, 64).unwrap();
    /// src.write_at(0, b"123456789").unwrap();
    /// buffers.crc32c(src, 9, 0, 1, OpFlags::SUBMIT).map_err(|r| r.error).unwrap();
    /// let mut done = Vec::new();
    /// while buffers.poll(&mut done, 8) == 0 {}
    /// assert_eq!(done[0].crc(), 0xE306_9283);
    /// ```
    pub fn crc32c(
        &mut self,
        src: DmaBlock,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), Box<Refused>> {
        let capacity = src.len();
        let src_ptr = src.as_ptr();
        self.run(
            len,
            capacity,
            user_data,
            Buffers::Crc32c { src },
            |client, slot| {
                // SAFETY: as in `copy`.
                unsafe { client.crc32c(src_ptr, len, initial, slot, flags) }
            },
        )
    }

    /// Copies the first `len` bytes of `src` into `dst` and computes their CRC-32C
    /// continuing from `initial` (as [`Client::copy_crc`]).
    ///
    /// ```
    /// use dmaplane::datapath::{BufferClient, Buffers, Client, ClientConfig};
    /// use dmaplane::{OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut buffers = BufferClient::new(client);
    /// let mut src = setup.pool().alloc(64, 64).unwrap();
    /// src.write_at(0, b"123456789").unwrap();
    /// let dst = setup.pool().alloc(64, 64).unwrap();
    /// buffers.copy_crc(dst, src, 9, 0, 1, OpFlags::SUBMIT).map_err(|r| r.error).unwrap();
    /// let mut done = Vec::new();
    /// while buffers.poll(&mut done, 8) == 0 {}
    /// assert_eq!(done[0].crc(), 0xE306_9283);
    /// let Buffers::CopyCrc { dst, .. } = &done[0].buffers else { unreachable!() };
    /// assert_eq!(&dst.to_vec()[..9], b"123456789");
    /// ```
    pub fn copy_crc(
        &mut self,
        dst: DmaBlock,
        src: DmaBlock,
        len: usize,
        initial: u32,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), Box<Refused>> {
        let capacity = dst.len().min(src.len());
        let (dst_ptr, src_ptr) = (dst.as_mut_ptr(), src.as_ptr());
        let buffers = Buffers::CopyCrc { dst, src };
        self.run(len, capacity, user_data, buffers, |client, slot| {
            // SAFETY: as in `copy`.
            unsafe { client.copy_crc(dst_ptr, src_ptr, len, initial, slot, flags) }
        })
    }

    /// Copies the first `len` bytes of `src` into both `dst1` and `dst2` (as
    /// [`Client::dualcast`]).
    ///
    /// ```
    /// use dmaplane::datapath::{BufferClient, Buffers, Client, ClientConfig};
    /// use dmaplane::{OpFlags, Setup};
    ///
    /// let setup = Setup::builder().cpus(1).soft(1).build().unwrap();
    /// let client = Client::new(setup.engine(), Some(0), ClientConfig::default()).unwrap();
    /// let mut buffers = BufferClient::new(client);
    /// let mut src = setup.pool().alloc(128, 64).unwrap();
    /// src.write_at(0, &[4u8; 128]).unwrap();
    /// let (one, two) = (setup.pool().alloc(128, 64).unwrap(), setup.pool().alloc(128, 64).unwrap());
    /// buffers.dualcast(one, two, src, 128, 1, OpFlags::SUBMIT).map_err(|r| r.error).unwrap();
    /// let mut done = Vec::new();
    /// while buffers.poll(&mut done, 8) == 0 {}
    /// let Buffers::Dualcast { dst1, dst2, .. } = &done[0].buffers else { unreachable!() };
    /// assert_eq!((dst1.to_vec(), dst2.to_vec()), (vec![4u8; 128], vec![4u8; 128]));
    /// ```
    pub fn dualcast(
        &mut self,
        dst1: DmaBlock,
        dst2: DmaBlock,
        src: DmaBlock,
        len: usize,
        user_data: u64,
        flags: OpFlags,
    ) -> Result<(), Box<Refused>> {
        let capacity = dst1.len().min(dst2.len()).min(src.len());
        let (one, two, src_ptr) = (dst1.as_mut_ptr(), dst2.as_mut_ptr(), src.as_ptr());
        let buffers = Buffers::Dualcast { dst1, dst2, src };
        self.run(len, capacity, user_data, buffers, |client, slot| {
            // SAFETY: as in `copy`.
            unsafe { client.dualcast(one, two, src_ptr, len, slot, flags) }
        })
    }

    /// Checks `len` against the buffers' `capacity`, parks `buffers`, and submits through
    /// `submit` with the slot as the client's user data; a refusal hands the buffers back.
    fn run(
        &mut self,
        len: usize,
        capacity: usize,
        user_data: u64,
        buffers: Buffers,
        submit: impl FnOnce(&mut Client, u64) -> Result<(), ClientError>,
    ) -> Result<(), Box<Refused>> {
        if len > capacity {
            return Err(Box::new(Refused {
                error: ClientError::BufferTooSmall { len, capacity },
                buffers,
            }));
        }
        let slot = self.park(user_data, buffers);
        submit(&mut self.client, slot as u64).map_err(|error| {
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
                value: c.value,
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
