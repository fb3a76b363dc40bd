//! CPU sets: parsing the kernel's list format and reading the possible and online CPUs.
//!
//! The table has a slot for every *possible* CPU and fills those of the *online* ones, as the
//! kernel's does. Both sets come from sysfs (`/sys/devices/system/cpu/{possible,online}`),
//! which, unlike `core_affinity::get_core_ids`, does not depend on the calling thread's mask.

use std::path::Path;

/// Parses a CPU list such as `0-3,8,10-11` into ascending CPU numbers.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let cpu: usize = part.trim().parse().ok()?;
                (cpu, cpu)
            }
        };
        if first > last || last >= 1 << 20 {
            return None;
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Formats ascending CPU numbers in the kernel's list format.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

fn read_list(path: &Path) -> Option<Vec<usize>> {
    parse_cpu_list(&std::fs::read_to_string(path).ok()?)
}

/// The system's possible CPU count and online CPUs; falls back to
/// `available_parallelism` CPUs, all online, where sysfs cannot be read.
pub fn system_cpus() -> (usize, Vec<usize>) {
    let base = Path::new("/sys/devices/system/cpu");
    let online = read_list(&base.join("online")).filter(|l| !l.is_empty());
    let possible = read_list(&base.join("possible")).and_then(|l| l.last().map(|&m| m + 1));
    match (possible, online) {
        (Some(possible), Some(online)) => {
            let online = online.into_iter().filter(|&c| c < possible).collect();
            (possible, online)
        }
        _ => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (n, (0..n).collect())
        }
    }
}

/// The CPU the calling thread is running on now, from `sched_getcpu`.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: `sched_getcpu` takes no arguments and only reads the calling thread's state.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_kernel_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn the_current_cpu_is_an_online_one() {
        let (_, online) = system_cpus();
        assert!(online.contains(&current_cpu().unwrap()));
    }

    #[test]
    fn system_cpus_are_consistent() {
        let (possible, online) = system_cpus();
        assert!(possible >= 1);
        assert!(!online.is_empty());
        assert!(online.iter().all(|&c| c < possible));
    }
}
