//! A model of QEMU's `edu` device for tests without a guest: its registers, its 4 KiB buffer
//! and its DMA engine, reaching memory only through [`DeviceMemory`] (with the simulated VFIO
//! kernel, through the IOMMU mappings of its context), and failing as QEMU's does: a read of
//! an IOVA nobody mapped brings zeros, a write to one lands nowhere, and neither is reported
//! to the driver; the model counts them as the guest's kernel log would show them.
//!
//! A transfer runs at the second read of the command register after the start (so a driver
//! that does not wait for the run bit to clear is caught), not on a timer. A transfer that
//! does not end strictly inside the buffer stops the device for good, as it stops the whole
//! machine in QEMU 7.2 (whose range check is off by one).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::spec;
use crate::emu::{DeviceMemory, VfioMemory};
use crate::mmio::RegisterWindow;
use crate::pci::{regs, ConfigSpace};
use crate::sync::lock_std;
use crate::vfio::sim::{SimFunction, SimKernel};

/// The DMA registers and the buffer.
struct Engine {
    src: u64,
    dst: u64,
    count: u64,
    command: u64,
    /// Reads of the command register since the running transfer started.
    reads_since_start: u32,
    liveness: u32,
    buffer: Box<[u8; spec::BUFFER_SIZE]>,
}

/// The modelled device.
pub struct EduModel {
    memory: Arc<dyn DeviceMemory>,
    engine: Mutex<Engine>,
    /// COMMAND in configuration space: memory space gates the BAR, bus mastering the DMA.
    command: Mutex<u16>,
    removed: AtomicBool,
    faults: AtomicU64,
    transfers: AtomicU64,
}

impl EduModel {
    /// A device that reaches memory through `memory`.
    pub fn new(memory: Arc<dyn DeviceMemory>) -> Arc<EduModel> {
        Arc::new(EduModel {
            memory,
            engine: Mutex::new(Engine {
                src: 0,
                dst: 0,
                count: 0,
                command: 0,
                reads_since_start: 0,
                liveness: 0,
                buffer: Box::new([0; spec::BUFFER_SIZE]),
            }),
            command: Mutex::new(0),
            removed: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            transfers: AtomicU64::new(0),
        })
    }

    /// Its registers (BAR0).
    pub fn registers(self: &Arc<Self>) -> Arc<dyn RegisterWindow> {
        Arc::new(Bar(Arc::clone(self)))
    }

    /// Its configuration space.
    pub fn config_space(self: &Arc<Self>) -> Arc<dyn ConfigSpace> {
        Arc::new(Config(Arc::clone(self)))
    }

    /// The device leaves the bus: everything reads all-ones from now on.
    pub fn surprise_remove(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Accesses the IOMMU refused (what the guest's kernel would log as DMAR faults).
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Acquire)
    }

    /// Transfers carried out.
    pub fn transfers(&self) -> u64 {
        self.transfers.load(Ordering::Acquire)
    }

    /// Power-on state: registers, buffer and COMMAND cleared.
    pub fn reset(&self) {
        let mut engine = lock_std(&self.engine);
        engine.src = 0;
        engine.dst = 0;
        engine.count = 0;
        engine.command = 0;
        engine.buffer.fill(0);
        *lock_std(&self.command) = 0;
    }

    fn answers(&self) -> bool {
        !self.removed.load(Ordering::Acquire)
            && *lock_std(&self.command) & regs::COMMAND_MEMORY != 0
    }

    /// Carries out the transfer the registers describe.
    fn run(&self, engine: &mut Engine) {
        self.transfers.fetch_add(1, Ordering::AcqRel);
        let mastering = *lock_std(&self.command) & regs::COMMAND_MASTER != 0;
        let to_bus = engine.command & spec::CMD_TO_BUS != 0;
        let (bus, local) = if to_bus {
            (engine.dst, engine.src)
        } else {
            (engine.src, engine.dst)
        };
        let Some(offset) = local
            .checked_sub(spec::BUFFER)
            .map(|o| o as usize)
            .filter(|o| o + (engine.count as usize) < spec::BUFFER_SIZE)
        else {
            self.removed.store(true, Ordering::Release);
            return;
        };
        let len = engine.count as usize;
        let buffer = &mut engine.buffer[offset..offset + len];
        let mut done = 0;
        while done < len {
            let resolved = mastering
                .then(|| self.memory.resolve(bus + done as u64, len - done))
                .flatten();
            let Some((host, run)) = resolved else {
                // Refused: a read brings zeros, a write lands nowhere.
                self.faults.fetch_add(1, Ordering::AcqRel);
                if !to_bus {
                    buffer[done..].fill(0);
                }
                return;
            };
            let run = run.min(len - done);
            // SAFETY: `DeviceMemory` promises `run` bytes at `host` are valid for raw reads and
            // writes that nobody else makes while the transfer runs (the driver's contract).
            unsafe {
                if to_bus {
                    std::ptr::copy_nonoverlapping(buffer[done..].as_ptr(), host as *mut u8, run);
                } else {
                    std::ptr::copy_nonoverlapping(
                        host as *const u8,
                        buffer[done..].as_mut_ptr(),
                        run,
                    );
                }
            }
            done += run;
        }
    }

    fn read(&self, offset: usize) -> u64 {
        if !self.answers() {
            return u64::MAX;
        }
        let mut engine = lock_std(&self.engine);
        match offset {
            spec::IDENT => 0x0100_00ed,
            spec::LIVENESS => u64::from(!engine.liveness),
            spec::DMA_SRC => engine.src,
            spec::DMA_DST => engine.dst,
            spec::DMA_COUNT => engine.count,
            spec::DMA_CMD => {
                if engine.command & spec::CMD_RUN != 0 {
                    engine.reads_since_start += 1;
                    if engine.reads_since_start >= 2 {
                        self.run(&mut engine);
                        engine.command &= !spec::CMD_RUN;
                    }
                }
                engine.command
            }
            _ => 0,
        }
    }

    fn write(&self, offset: usize, value: u64) {
        if !self.answers() {
            return;
        }
        let mut engine = lock_std(&self.engine);
        // The DMA registers are frozen while a transfer runs.
        let running = engine.command & spec::CMD_RUN != 0;
        match offset {
            spec::LIVENESS => engine.liveness = value as u32,
            spec::DMA_SRC if !running => engine.src = value,
            spec::DMA_DST if !running => engine.dst = value,
            spec::DMA_COUNT if !running => engine.count = value,
            spec::DMA_CMD if !running && value & spec::CMD_RUN != 0 => {
                engine.command = value;
                engine.reads_since_start = 0;
            }
            _ => {}
        }
    }
}

/// BAR0 of the model. Accesses narrower than the device takes read all-ones and are dropped,
/// as QEMU's are.
struct Bar(Arc<EduModel>);

impl RegisterWindow for Bar {
    fn read8(&self, _offset: usize) -> u8 {
        u8::MAX
    }
    fn read16(&self, _offset: usize) -> u16 {
        u16::MAX
    }
    fn read32(&self, offset: usize) -> u32 {
        self.0.read(offset) as u32
    }
    fn read64(&self, offset: usize) -> u64 {
        if offset < spec::DMA_SRC {
            return u64::MAX;
        }
        self.0.read(offset)
    }
    fn write8(&self, _offset: usize, _value: u8) {}
    fn write16(&self, _offset: usize, _value: u16) {}
    fn write32(&self, offset: usize, value: u32) {
        self.0.write(offset, u64::from(value));
    }
    fn write64(&self, offset: usize, value: u64) {
        if offset >= spec::DMA_SRC {
            self.0.write(offset, value);
        }
    }
}

/// Configuration space of the model: the identity, and COMMAND.
struct Config(Arc<EduModel>);

impl Config {
    fn read(&self, offset: usize) -> u32 {
        if self.0.removed.load(Ordering::Acquire) {
            return u32::MAX;
        }
        match offset & !3 {
            0x00 => u32::from(spec::DEVICE) << 16 | u32::from(spec::VENDOR),
            0x04 => u32::from(*lock_std(&self.0.command)),
            0x08 => 0x00ff_0010, // class "other", revision 0x10
            _ => 0,
        }
    }
}

impl ConfigSpace for Config {
    fn read16(&self, offset: usize) -> io::Result<u16> {
        Ok((self.read(offset) >> (8 * (offset & 2))) as u16)
    }
    fn write16(&self, offset: usize, value: u16) -> io::Result<()> {
        if offset == regs::COMMAND {
            *lock_std(&self.0.command) = value & (regs::COMMAND_MEMORY | regs::COMMAND_MASTER);
        }
        Ok(())
    }
    fn read32(&self, offset: usize) -> io::Result<u32> {
        Ok(self.read(offset))
    }
    fn write32(&self, offset: usize, value: u32) -> io::Result<()> {
        self.write16(offset, value as u16)
    }
}

/// Makes a modelled `edu` function and binds it to `kernel` as `bdf` in IOMMU group `group`
/// (with VFIO cdev `cdev`, on a kernel with iommufd): the kernel's IOMMU is its memory, and
/// VFIO's reset is its reset.
pub fn bind_modelled_edu(
    kernel: &Arc<SimKernel>,
    bdf: &str,
    group: u32,
    cdev: Option<String>,
) -> Arc<EduModel> {
    // SAFETY: the device reaches memory only through transfers the driver starts for pieces
    // whose buffers its caller keeps live and untouched, and through mappings the pool makes
    // for live memory.
    let memory = Arc::new(unsafe { VfioMemory::new(Arc::clone(kernel), bdf) });
    let model = EduModel::new(memory);
    let for_reset = Arc::clone(&model);
    kernel.add_function(SimFunction {
        bdf: bdf.to_string(),
        group,
        registers: model.registers(),
        bar0_len: spec::BAR_SIZE as u64,
        config: model.config_space(),
        sparse_areas: None,
        reset: Some(Arc::new(move || for_reset.reset())),
        cdev,
    });
    model
}
