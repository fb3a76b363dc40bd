//! The scenarios' platform inside the rig's guest: the real VFIO ioctls, the real sysfs, the
//! IOMMU faults the kernel logged (read from `/dev/kmsg`), and unplugging or replugging a
//! function by asking the host over the serial console, which does it over QMP.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::pci::Sysfs;
use dmaplane::vfio::{LinuxVfio, VfioKernel};

use crate::{Platform, MARK};

/// How long a replugged function may take to come back bound to `vfio-pci`.
const REPLUG_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest machine.
#[derive(Debug)]
pub struct GuestPlatform {
    /// How much work the scenarios do.
    pub scale: u32,
}

/// The lines of the kernel log so far.
fn kernel_log() -> Vec<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    // Each read returns one record; EAGAIN ends the log.
    let mut lines = Vec::new();
    let mut record = vec![0u8; 8192];
    while let Ok(n) = kmsg.read(&mut record) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&record[..n]);
        // "priority,sequence,time,flags;message"
        if let Some((_, message)) = text.split_once(';') {
            lines.push(message.trim_end().to_string());
        }
    }
    lines
}

/// Whether a kernel log line reports a DMA fault of the function at `bdf`, as the Intel
/// IOMMU driver words it ("DMAR: [DMA Read ...] Request device [01:00.0] fault addr ...").
pub fn is_dma_fault_of(line: &str, bdf: &str) -> bool {
    let short = bdf.split_once(':').map_or(bdf, |(_, rest)| rest);
    line.contains("DMAR")
        && line.contains("fault")
        && (line.contains(&format!("[{short}]")) || line.contains(bdf))
}

/// Writes one line of the rig's protocol to the console, at once.
pub fn say(words: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK} {words}");
    let _ = out.flush();
}

impl Platform for GuestPlatform {
    fn describe(&self) -> String {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        format!("guest kernel {} with a virtual Intel IOMMU", release.trim())
    }

    fn kernel(&self) -> Arc<dyn VfioKernel> {
        LinuxVfio::new()
    }

    fn sysfs(&self) -> Sysfs {
        Sysfs::system()
    }

    fn lock_dir(&self) -> PathBuf {
        PathBuf::from("/tmp")
    }

    fn scale(&self) -> u32 {
        self.scale
    }

    fn uevents(&self) -> bool {
        true
    }

    fn iommu_faults(&self, bdf: &str) -> u64 {
        kernel_log()
            .iter()
            .filter(|line| is_dma_fault_of(line, bdf))
            .count() as u64
    }

    fn entry_limit(&self) -> Option<usize> {
        std::fs::read_to_string("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit")
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn unplug(&self, bdf: &str) -> Result<(), String> {
        say(&format!("device_del {bdf}"));
        Ok(())
    }

    fn replug(&self, bdf: &str) -> Result<(), String> {
        say(&format!("device_add {bdf}"));
        let deadline = Instant::now() + REPLUG_TIMEOUT;
        while Instant::now() < deadline {
            if self.edu_functions().iter().any(|f| f == bdf) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let present: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let read = |f: &str| {
                            std::fs::read_to_string(e.path().join(f))
                                .unwrap_or_default()
                                .trim()
                                .to_string()
                        };
                        let driver = std::fs::read_link(e.path().join("driver"))
                            .ok()
                            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
                            .unwrap_or_else(|| "-".into());
                        format!(
                            "{} {}:{} {driver}",
                            e.file_name().to_string_lossy(),
                            read("vendor"),
                            read("device")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        // What the kernel said last (continuation lines of records left out).
        let log: Vec<String> = kernel_log()
            .into_iter()
            .filter(|l| !l.starts_with(' '))
            .collect();
        let recent = &log[log.len().saturating_sub(25)..];
        Err(format!(
            "{bdf} did not come back bound to vfio-pci within {REPLUG_TIMEOUT:?}; functions: {}; \
             kernel log: {}",
            present.join(", "),
            recent.join(" | ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_faults_are_recognised_by_the_function_they_name() {
        let line = "DMAR: [DMA Read NO_PASID] Request device [01:00.0] fault addr 0x100000000 \
                    [fault reason 0x06] PTE Read access is not set";
        assert!(is_dma_fault_of(line, "0000:01:00.0"));
        assert!(!is_dma_fault_of(line, "0000:02:00.0"));
        assert!(!is_dma_fault_of("DMAR: IOMMU enabled", "0000:01:00.0"));
    }
}
