//! Exclusive ownership of a PCI function among processes, as SPDK keeps it: a lock file per
//! function, whose holder's pid makes a refusal say who has it.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Where per-function lock files go by default (as SPDK puts its `spdk_pci_lock_*`).
pub const DEFAULT_LOCK_DIR: &str = "/var/tmp";

/// Exclusive ownership of one PCI function among the processes of a machine: an advisory
/// `flock` on `<dir>/dmaplane_pci_<bdf>`, holding the owner's pid so a refusal can name it.
/// Released when dropped, or when the process dies (the kernel drops the lock with the file).
#[derive(Debug)]
pub struct FunctionLock {
    file: File,
    bdf: String,
}

/// Why a function could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process (or another setup in this one) holds it.
    InUse {
        /// The function.
        bdf: String,
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the kernel said.
        error: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::InUse {
                bdf,
                pid: Some(pid),
            } => {
                write!(f, "{bdf} is in use by pid {pid}")
            }
            LockError::InUse { bdf, pid: None } => write!(f, "{bdf} is in use by another process"),
            LockError::Io { path, error } => {
                write!(f, "cannot lock {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

impl FunctionLock {
    /// Takes the lock of `bdf` in `dir`, or says who holds it.
    pub fn acquire(dir: &Path, bdf: &str) -> Result<FunctionLock, LockError> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!("dmaplane_pci_{bdf}"));
        let io_error = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io_error)?;
        // SAFETY: `flock` on a descriptor this file owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(io_error(error));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::InUse {
                bdf: bdf.to_string(),
                pid: text.trim().parse().ok(),
            });
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()));
        written.map_err(io_error)?;
        Ok(FunctionLock {
            file,
            bdf: bdf.to_string(),
        })
    }

    /// The function.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }
}

impl Drop for FunctionLock {
    fn drop(&mut self) {
        // The file stays (removing it could let two processes lock two different files);
        // emptied, it names no owner. Closing it releases the lock.
        let _ = self.file.set_len(0);
    }
}
