//! Booting the guest: QEMU's command line (a q35 machine with a virtual Intel IOMMU and each
//! `edu` device behind a PCI Express root port of its own, where it can be unplugged), the
//! choice between KVM and TCG, the serial console read line by line, and QMP for unplugging
//! and replugging devices when the guest asks.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::image::GuestImage;
use super::RigError;
use crate::MARK;

/// QEMU's x86 system emulator.
pub const QEMU: &str = "qemu-system-x86_64";

/// How the guest's CPUs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's own translator: slower, but works everywhere.
    Tcg,
}

/// The DMA mask the `edu` devices get: wide enough for every IOVA the pool picks (below
/// 2^39), where QEMU's default of 28 bits would cut addresses short.
const EDU_DMA_MASK: u64 = (1 << 48) - 1;

/// The QEMU id of the `index`-th `edu` device (from 1) and of its root port.
pub fn edu_id(index: usize) -> (String, String) {
    (format!("edu{index}"), format!("rp{index}"))
}

/// The guest's address of the `index`-th `edu` device: the root ports sit at consecutive slots
/// of bus 0, so the guest numbers their buses 1, 2, … in that order.
pub fn edu_bdf(index: usize) -> String {
    format!("0000:{index:02x}:00.0")
}

/// Which `edu` device the guest means by `bdf`.
pub fn edu_index(bdf: &str) -> Option<usize> {
    let bus = bdf.strip_prefix("0000:")?.strip_suffix(":00.0")?;
    usize::from_str_radix(bus, 16).ok().filter(|&i| i > 0)
}

/// What `device_add` needs to put the `index`-th `edu` device back.
fn edu_device_args(index: usize) -> String {
    let (id, port) = edu_id(index);
    format!("edu,id={id},bus={port},dma_mask={EDU_DMA_MASK}")
}

/// How to boot.
#[derive(Clone, Debug)]
pub struct Boot {
    /// The guest.
    pub image: GuestImage,
    /// KVM or TCG.
    pub accel: Accel,
    /// `edu` devices.
    pub edu_devices: usize,
    /// Virtual CPUs.
    pub cpus: usize,
    /// Guest memory, MiB.
    pub memory_mib: usize,
    /// The scenarios to run, by name.
    pub tests: Vec<String>,
    /// Multiplies the scenarios' work.
    pub scale: u32,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// How long the whole run may take.
    pub timeout: Duration,
}

/// The arguments every guest gets: the accelerator and machine, memory, no default devices,
/// the serial console on standard output, and no reboot (a panic or power-off ends QEMU).
fn base_arguments(accel: Accel, memory_mib: usize) -> Vec<String> {
    let machine: &[&str] = match accel {
        // Interrupt remapping needs the split irqchip under KVM; the host CPU model without
        // the capabilities MSR, which nested hosts often refuse to set.
        Accel::Kvm => &[
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-machine",
            "q35,kernel-irqchip=split",
        ],
        Accel::Tcg => &["-accel", "tcg", "-machine", "q35"],
    };
    let memory = memory_mib.to_string();
    machine
        .iter()
        .copied()
        .chain([
            "-m",
            &memory,
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .map(String::from)
        .collect()
}

/// QEMU's arguments for `boot`.
pub fn arguments(boot: &Boot) -> Vec<String> {
    let mut args = base_arguments(boot.accel, boot.memory_mib);
    let mut push = |words: &[&str]| args.extend(words.iter().map(|w| w.to_string()));
    let cpus = boot.cpus.to_string();
    push(&["-smp", &cpus, "-device", "intel-iommu,intremap=on"]);
    for index in 1..=boot.edu_devices {
        let (_, port) = edu_id(index);
        let root_port = format!(
            "pcie-root-port,id={port},bus=pcie.0,chassis={index},slot={index},addr={:#x}",
            0x10 + index
        );
        push(&["-device", &root_port, "-device", &edu_device_args(index)]);
    }
    let append = format!(
        "console=ttyS0 intel_iommu=on panic=-1 loglevel=4 dmaplane.tests={} dmaplane.scale={}",
        boot.tests.join(","),
        boot.scale
    );
    let qmp = format!("unix:{},server=on,wait=off", boot.qmp_socket.display());
    push(&[
        "-kernel",
        &boot.image.kernel.to_string_lossy(),
        "-initrd",
        &boot.image.initramfs.to_string_lossy(),
        "-append",
        &append,
        "-qmp",
        &qmp,
    ]);
    args
}

/// Whether QEMU can be run here.
pub fn available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `/dev/kvm` can be opened.
fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Starts QEMU with `args`, its console on a pipe read by a thread into a channel of lines.
fn spawn(args: &[String]) -> Result<(Child, mpsc::Receiver<String>), RigError> {
    let mut child = Command::new(QEMU)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RigError::Environment(format!("starting {QEMU}: {e}")))?;
    let (lines, received) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                if lines.send(text).is_err() {
                    break;
                }
            }
        });
    }
    Ok((child, received))
}

/// Chooses KVM or TCG. KVM where `/dev/kvm` opens and a guest kernel makes progress under it
/// (nested virtualization sometimes hangs it); the verdict is kept in `work` for the next run.
pub fn choose_accel(wanted: Option<Accel>, image: &GuestImage, work: &Path) -> Accel {
    if let Some(accel) = wanted {
        return accel;
    }
    if !kvm_device_usable() {
        println!("kvm-rig: /dev/kvm cannot be opened: falling back to TCG (slower)");
        return Accel::Tcg;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let verdict_file = work.join("kvm-verdict");
    if let Ok(verdict) = std::fs::read_to_string(&verdict_file) {
        if let Some(answer) = verdict.strip_prefix(host.trim()) {
            if answer.trim() == "kvm" {
                return Accel::Kvm;
            }
            println!(
                "kvm-rig: KVM made no progress on this host before ({}); using TCG",
                verdict_file.display()
            );
            return Accel::Tcg;
        }
    }
    // A kernel without an initramfs: under working KVM it prints its banner within a second
    // or two, then panics and exits.
    let mut probe = base_arguments(Accel::Kvm, 256);
    probe.extend(
        [
            "-kernel",
            &image.kernel.to_string_lossy(),
            "-append",
            "console=ttyS0 panic=-1",
        ]
        .map(String::from),
    );
    let works = match spawn(&probe) {
        Ok((mut child, lines)) => {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut seen = false;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match lines.recv_timeout(left) {
                    Ok(line) if line.contains("Linux version") => {
                        seen = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            seen
        }
        Err(_) => false,
    };
    let answer = if works { "kvm" } else { "tcg" };
    let _ = std::fs::write(&verdict_file, format!("{} {answer}\n", host.trim()));
    if works {
        Accel::Kvm
    } else {
        println!(
            "kvm-rig: /dev/kvm opens, but a guest kernel printed nothing in 20 s under KVM \
             (nested virtualization?): falling back to TCG (slower)"
        );
        Accel::Tcg
    }
}

/// A QMP connection.
struct Qmp {
    stream: UnixStream,
    replies: BufReader<UnixStream>,
    /// Events read while waiting for replies.
    events: Vec<String>,
}

impl Qmp {
    /// Connects to `socket` (retrying while QEMU creates it) and leaves the greeting mode.
    fn connect(socket: &Path, deadline: Instant) -> Result<Qmp, RigError> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(RigError::Environment(format!(
                        "connecting to QMP at {}: {e}",
                        socket.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let replies = BufReader::new(stream.try_clone().map_err(RigError::io(socket))?);
        let mut qmp = Qmp {
            stream,
            replies,
            events: Vec::new(),
        };
        qmp.read_line()?; // the greeting
        qmp.execute("{\"execute\":\"qmp_capabilities\"}")?;
        Ok(qmp)
    }

    fn read_line(&mut self) -> Result<String, RigError> {
        let mut line = String::new();
        self.replies
            .read_line(&mut line)
            .map_err(|e| RigError::Environment(format!("reading QMP: {e}")))?;
        if line.is_empty() {
            return Err(RigError::Environment("QMP closed".into()));
        }
        Ok(line)
    }

    /// Sends `command` and returns its reply, keeping the events that come before it.
    fn execute(&mut self, command: &str) -> Result<String, RigError> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| RigError::Environment(format!("writing QMP: {e}")))?;
        loop {
            let line = self.read_line()?;
            if line.contains("\"event\"") {
                self.events.push(line);
            } else if line.contains("\"error\"") {
                return Err(RigError::Environment(format!(
                    "QMP {command}: {}",
                    line.trim()
                )));
            } else if line.contains("\"return\"") {
                return Ok(line);
            }
        }
    }

    /// Waits for QEMU to report device `id` deleted (the guest let it go).
    fn wait_deleted(&mut self, id: &str, deadline: Instant) -> Result<(), RigError> {
        let deleted = |line: &String| {
            line.contains("DEVICE_DELETED") && line.contains(&format!("\"device\": \"{id}\""))
        };
        loop {
            if let Some(at) = self.events.iter().position(deleted) {
                self.events.remove(at);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RigError::Environment(format!(
                    "the guest never let {id} go (no DEVICE_DELETED)"
                )));
            }
            // Events arrive on their own; a harmless command reads what came meanwhile.
            match self.read_line() {
                Ok(line) if line.contains("\"event\"") => self.events.push(line),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scenarios that passed.
    pub passed: usize,
    /// Scenarios that failed, with why.
    pub failed: Vec<String>,
    /// The guest runner's exit status, when it got that far.
    pub exit: Option<i32>,
    /// Everything the console printed.
    pub console: Vec<String>,
}

/// Boots the guest and runs the scenarios, answering its requests; `show` gets each console
/// line as it comes.
pub fn run(boot: &Boot, mut show: impl FnMut(&str)) -> Result<Report, RigError> {
    let _ = std::fs::remove_file(&boot.qmp_socket);
    let (mut child, lines) = spawn(&arguments(boot))?;
    let deadline = Instant::now() + boot.timeout;
    let mut qmp = Qmp::connect(&boot.qmp_socket, Instant::now() + Duration::from_secs(30));
    let mut report = Report::default();
    let outcome = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break Err(RigError::Failed(format!(
                "the guest did not finish within {:?}",
                boot.timeout
            )));
        };
        let line = match lines.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
        };
        show(&line);
        report.console.push(line.clone());
        let Some(words) = line.trim().strip_prefix(MARK) else {
            continue;
        };
        let words: Vec<&str> = words.split_whitespace().collect();
        let qmp = match &mut qmp {
            Ok(qmp) => qmp,
            Err(e) => break Err(RigError::Environment(e.to_string())),
        };
        let answered = match words.as_slice() {
            ["test", _name, "ok"] => {
                report.passed += 1;
                Ok(())
            }
            ["test", name, "FAILED", ..] => {
                report
                    .failed
                    .push(format!("{name}: {}", words[3..].join(" ")));
                Ok(())
            }
            ["exit", status] => {
                report.exit = status.parse().ok();
                Ok(())
            }
            ["device_del", bdf] => match edu_index(bdf) {
                Some(index) => qmp
                    .execute(&format!(
                        "{{\"execute\":\"device_del\",\"arguments\":{{\"id\":\"{}\"}}}}",
                        edu_id(index).0
                    ))
                    .map(drop),
                None => Err(RigError::Failed(format!("the guest asked to unplug {bdf}"))),
            },
            ["device_add", bdf] => match edu_index(bdf) {
                Some(index) => qmp
                    .wait_deleted(&edu_id(index).0, deadline)
                    .and_then(|()| {
                        let (id, port) = edu_id(index);
                        qmp.execute(&format!(
                            "{{\"execute\":\"device_add\",\"arguments\":{{\"driver\":\"edu\",\
                             \"id\":\"{id}\",\"bus\":\"{port}\",\"dma_mask\":{EDU_DMA_MASK}}}}}"
                        ))
                    })
                    .map(drop),
                None => Err(RigError::Failed(format!("the guest asked to replug {bdf}"))),
            },
            _ => Ok(()),
        };
        if let Err(e) = answered {
            break Err(e);
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome.map(|()| report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_addresses_and_qemu_ids_correspond() {
        for index in 1..=3 {
            assert_eq!(edu_index(&edu_bdf(index)), Some(index));
        }
        assert_eq!(edu_index("0000:00:04.0"), None);
        assert_eq!(edu_index("0000:01:00.1"), None);
        assert_eq!(edu_id(2), ("edu2".to_string(), "rp2".to_string()));
    }

    #[test]
    fn the_command_line_puts_each_edu_behind_its_own_root_port_and_names_the_tests() {
        let boot = Boot {
            image: GuestImage {
                kernel: "/k".into(),
                release: "r".into(),
                initramfs: "/i".into(),
            },
            accel: Accel::Tcg,
            edu_devices: 2,
            cpus: 2,
            memory_mib: 1024,
            tests: vec!["vfio_layer".into(), "hot_removal".into()],
            scale: 1,
            qmp_socket: "/tmp/q".into(),
            timeout: Duration::from_secs(1),
        };
        let args = arguments(&boot).join(" ");
        assert!(args.contains("intel-iommu,intremap=on"), "{args}");
        assert!(args.contains("pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x11"));
        assert!(args.contains("edu,id=edu2,bus=rp2,dma_mask=281474976710655"));
        assert!(args.contains("dmaplane.tests=vfio_layer,hot_removal"));
        assert!(args.contains("-accel tcg"));
    }
}
