//! What the pool learns from `/proc`: whether hugepages can be had (`/proc/meminfo`), and
//! the physical frame behind each virtual page (`/proc/self/pagemap`).
//!
//! pagemap holds one little-endian 64-bit entry per virtual page of the process: bit 63
//! says the page is present in RAM, bits 0–54 hold its frame number. Since Linux 4.2 the
//! frame number reads as 0 for readers without `CAP_SYS_ADMIN`; a present page with frame
//! 0 is therefore reported as hidden rather than trusted.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::MemError;

/// The hugepage counters of `/proc/meminfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HugepageInfo {
    /// The default hugepage size in bytes.
    pub(crate) size: usize,
    /// `HugePages_Free` less `HugePages_Rsvd`: pages no other mapping has claimed.
    pub(crate) available: u64,
}

/// Reads the hugepage counters, or `None` when the kernel reports no hugepage size (no
/// hugetlbfs support), which is when hugepage-rs would panic.
pub(crate) fn hugepages() -> Option<HugepageInfo> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Option<HugepageInfo> {
    let field = |name: &str| -> Option<(u64, Option<&str>)> {
        let line = text.lines().find_map(|l| l.strip_prefix(name))?;
        let mut words = line.split_whitespace();
        let value = words.next()?.parse().ok()?;
        Some((value, words.next()))
    };
    let size = match field("Hugepagesize:")? {
        (kib, Some("kB")) => usize::try_from(kib).ok()?.checked_mul(1024)?,
        (bytes, None) => usize::try_from(bytes).ok()?,
        _ => return None,
    };
    let count = |name| field(name).map_or(0, |(n, _)| n);
    let available = count("HugePages_Free:").saturating_sub(count("HugePages_Rsvd:"));
    (size > 0).then_some(HugepageInfo { size, available })
}

const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

/// The physical address of each `page_size` page of `[va, va + len)` (`va` page-aligned).
/// The pages must be resident: touched and locked by the caller.
pub(crate) fn physical_pages(
    va: usize,
    len: usize,
    page_size: usize,
) -> Result<Vec<u64>, MemError> {
    debug_assert!(va % page_size == 0 && len % page_size == 0);
    let unavailable = |e: std::io::Error| MemError::PagemapUnavailable {
        reason: e.to_string(),
    };
    let file = File::open("/proc/self/pagemap").map_err(unavailable)?;
    let pages = len / page_size;
    let mut raw = vec![0u8; pages * 8];
    file.read_exact_at(&mut raw, (va / page_size) as u64 * 8)
        .map_err(unavailable)?;
    raw.chunks_exact(8)
        .enumerate()
        .map(|(i, bytes)| {
            let entry = u64::from_le_bytes(bytes.try_into().expect("chunks of 8"));
            decode(entry, va + i * page_size, page_size)
        })
        .collect()
}

/// Checks that frame numbers can be read at all, on a page of our own, before the pool
/// maps and locks anything: an unprivileged process learns it lacks the privilege, rather
/// than that its locking limit is low.
pub(crate) fn probe(page_size: usize) -> Result<(), MemError> {
    let buf = std::hint::black_box(vec![1u8; 2 * page_size]);
    let va = (buf.as_ptr() as usize).next_multiple_of(page_size);
    physical_pages(va, page_size, page_size).map(drop)
}

/// The physical address in one pagemap entry of the page at `addr`.
fn decode(entry: u64, addr: usize, page_size: usize) -> Result<u64, MemError> {
    if entry & PRESENT == 0 {
        return Err(MemError::PageNotPresent { addr });
    }
    match entry & PFN_MASK {
        0 => Err(MemError::FrameNumbersHidden { addr }),
        pfn => Ok(pfn * page_size as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_with_and_without_hugepages() {
        let text = "MemTotal: 100 kB\nHugePages_Total:       8\nHugePages_Free:        6\n\
                    HugePages_Rsvd:        2\nHugePages_Surp:        0\nHugepagesize:       2048 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(HugepageInfo {
                size: 2 << 20,
                available: 4
            })
        );
        let none =
            "HugePages_Total: 0\nHugePages_Free: 0\nHugePages_Rsvd: 0\nHugepagesize: 1048576 kB\n";
        assert_eq!(
            parse_meminfo(none),
            Some(HugepageInfo {
                size: 1 << 30,
                available: 0
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 100 kB\n"), None);
        assert_eq!(parse_meminfo("Hugepagesize: 2048 MB\n"), None);
    }

    #[test]
    fn decode_distinguishes_hidden_absent_and_real_frames() {
        assert_eq!(decode(PRESENT | 0x1234, 0x5000, 4096), Ok(0x1234 * 4096));
        // Soft-dirty and exclusive flags (bits 55, 56) are not part of the frame.
        assert_eq!(decode(PRESENT | 3 << 55 | 0x10, 0, 4096), Ok(0x10 * 4096));
        assert_eq!(
            decode(PRESENT, 0x5000, 4096),
            Err(MemError::FrameNumbersHidden { addr: 0x5000 })
        );
        assert_eq!(
            decode(0x1234, 0x6000, 4096),
            Err(MemError::PageNotPresent { addr: 0x6000 })
        );
    }

    #[test]
    fn pagemap_of_a_resident_page() {
        let size = super::super::os::page_size();
        let page = std::hint::black_box(vec![1u8; 2 * size]);
        let va = (page.as_ptr() as usize).next_multiple_of(size);
        match physical_pages(va, size, size) {
            Ok(frames) => {
                // Only a privileged reader sees frames; they are page-aligned and non-zero.
                assert_eq!(frames.len(), 1);
                assert!(frames[0] != 0 && frames[0] % size as u64 == 0);
            }
            Err(e) => assert!(
                matches!(e, MemError::FrameNumbersHidden { addr } if addr == va),
                "{e}"
            ),
        }
        assert_eq!(probe(size).is_ok(), physical_pages(va, size, size).is_ok());
    }
}
