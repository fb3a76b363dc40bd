//! Kernel uevents: how the hotplug monitor learns that a PCI function was removed or unbound.
//!
//! The kernel broadcasts device events on a `NETLINK_KOBJECT_UEVENT` socket (multicast group
//! 1). Each datagram is `ACTION@DEVPATH` followed by `KEY=VALUE` pairs, every part ending in a
//! NUL byte. udev re-broadcasts its own, differently framed messages (starting `libudev\0`) on
//! another group; they are recognised and ignored here.
//!
//! [`parse`] is total: any byte string gives either an event or a [`UeventError`] saying what
//! is wrong with it, never a panic, since the bytes come from outside the process.
//! [`UeventSocket`] opens the socket non-blocking and hands out parsed events.

use std::fmt;
use std::io;

/// What happened to a PCI function, as far as the engine cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PciEvent {
    /// The function left the bus (hot-removal, or `remove` in sysfs).
    Removed {
        /// Its address, such as `0000:00:04.0`.
        bdf: String,
    },
    /// A driver let go of the function (`unbind`).
    Unbound {
        /// Its address.
        bdf: String,
        /// The driver, when the event names it.
        driver: Option<String>,
    },
    /// The function appeared on the bus.
    Added {
        /// Its address.
        bdf: String,
    },
    /// A driver took the function (`bind`).
    Bound {
        /// Its address.
        bdf: String,
        /// The driver, when the event names it.
        driver: Option<String>,
    },
}

impl PciEvent {
    /// The function the event is about.
    pub fn bdf(&self) -> &str {
        match self {
            PciEvent::Removed { bdf }
            | PciEvent::Unbound { bdf, .. }
            | PciEvent::Added { bdf }
            | PciEvent::Bound { bdf, .. } => bdf,
        }
    }
}

/// One kernel uevent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `bind`, `unbind`, `change`, ...
    pub action: String,
    /// The device's path under `/sys`, such as `/devices/pci0000:00/0000:00:04.0`.
    pub devpath: String,
    /// The `KEY=VALUE` pairs, in the order sent.
    pub vars: Vec<(String, String)>,
}

impl Uevent {
    /// The value of `key`, if the event carries it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The event as a PCI function event, or `None` for other subsystems and actions.
    pub fn pci_event(&self) -> Option<PciEvent> {
        if self.get("SUBSYSTEM") != Some("pci") {
            return None;
        }
        let bdf = self
            .get("PCI_SLOT_NAME")
            .map(str::to_string)
            .or_else(|| bdf_from_devpath(&self.devpath))?;
        let driver = self.get("DRIVER").map(str::to_string);
        match self.action.as_str() {
            "remove" => Some(PciEvent::Removed { bdf }),
            "unbind" => Some(PciEvent::Unbound { bdf, driver }),
            "add" => Some(PciEvent::Added { bdf }),
            "bind" => Some(PciEvent::Bound { bdf, driver }),
            _ => None,
        }
    }
}

/// The last path component if it looks like a PCI address (`dddd:bb:dd.f`).
fn bdf_from_devpath(devpath: &str) -> Option<String> {
    let last = devpath.rsplit('/').next()?;
    let bytes = last.as_bytes();
    let shape = bytes.len() == 12
        && bytes[4] == b':'
        && bytes[7] == b':'
        && bytes[10] == b'.'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| matches!(i, 4 | 7 | 10) || b.is_ascii_hexdigit());
    shape.then(|| last.to_string())
}

/// Why a datagram is not a kernel uevent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UeventError {
    /// An empty datagram.
    Empty,
    /// A message udev re-broadcast (`libudev` framing), not one from the kernel.
    FromUdev,
    /// The header is not `ACTION@DEVPATH`.
    BadHeader,
    /// Part of the message is not UTF-8.
    NotText,
    /// A field is not `KEY=VALUE`.
    BadField(String),
    /// `ACTION` or `DEVPATH` is missing, or disagrees with the header.
    Inconsistent(&'static str),
}

impl fmt::Display for UeventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UeventError::Empty => f.write_str("empty uevent"),
            UeventError::FromUdev => f.write_str("a udev message, not a kernel uevent"),
            UeventError::BadHeader => f.write_str("uevent header is not ACTION@DEVPATH"),
            UeventError::NotText => f.write_str("uevent is not UTF-8 text"),
            UeventError::BadField(field) => write!(f, "uevent field {field:?} is not KEY=VALUE"),
            UeventError::Inconsistent(what) => write!(f, "uevent {what}"),
        }
    }
}

impl std::error::Error for UeventError {}

/// Parses one datagram from the uevent socket.
pub fn parse(datagram: &[u8]) -> Result<Uevent, UeventError> {
    if datagram.is_empty() {
        return Err(UeventError::Empty);
    }
    if datagram.starts_with(b"libudev\0") {
        return Err(UeventError::FromUdev);
    }
    let mut parts = datagram
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| std::str::from_utf8(part).map_err(|_| UeventError::NotText));
    let header = parts.next().ok_or(UeventError::Empty)??;
    let (action, devpath) = header.split_once('@').ok_or(UeventError::BadHeader)?;
    if action.is_empty() || !devpath.starts_with('/') {
        return Err(UeventError::BadHeader);
    }
    let mut vars = Vec::new();
    for part in parts {
        let part = part?;
        let (key, value) = part
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| UeventError::BadField(part.chars().take(64).collect()))?;
        vars.push((key.to_string(), value.to_string()));
    }
    let event = Uevent {
        action: action.to_string(),
        devpath: devpath.to_string(),
        vars,
    };
    match (event.get("ACTION"), event.get("DEVPATH")) {
        (Some(a), Some(d)) if a == action && d == devpath => Ok(event),
        (None, _) | (_, None) => Err(UeventError::Inconsistent("lacks ACTION or DEVPATH")),
        _ => Err(UeventError::Inconsistent("fields disagree with its header")),
    }
}

/// A non-blocking socket on the kernel's uevent broadcasts.
#[derive(Debug)]
pub struct UeventSocket {
    fd: std::os::fd::OwnedFd,
    buffer: Vec<u8>,
}

/// Kernel uevents are broadcast to netlink multicast group 1.
const KERNEL_GROUP: u32 = 1;

impl UeventSocket {
    /// Opens and binds the socket.
    pub fn open() -> io::Result<UeventSocket> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero `sockaddr_nl` is valid; the fields that matter are set below.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        address.nl_groups = KERNEL_GROUP;
        // SAFETY: `address` is a valid `sockaddr_nl` and the length given is its size.
        let bound = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UeventSocket {
            fd,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// The next datagram, parsed; `Ok(None)` when none is waiting. Datagrams that are not
    /// kernel uevents come back as `Ok(Some(Err(..)))` so the caller can count or log them.
    pub fn receive(&mut self) -> io::Result<Option<Result<Uevent, UeventError>>> {
        // SAFETY: the buffer is valid for writes of its length for the duration of the call.
        let received = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                self.buffer.as_mut_ptr().cast(),
                self.buffer.len(),
                0,
            )
        };
        if received < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Some(parse(&self.buffer[..received as usize])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(parts: &[&str]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
    }

    const DEVPATH: &str = "/devices/pci0000:00/0000:00:04.0";

    #[test]
    fn a_recorded_pci_removal() {
        let raw = message(&[
            "remove@/devices/pci0000:00/0000:00:04.0",
            "ACTION=remove",
            "DEVPATH=/devices/pci0000:00/0000:00:04.0",
            "SUBSYSTEM=pci",
            "PCI_CLASS=88000",
            "PCI_ID=8086:2021",
            "PCI_SUBSYS_ID=8086:0000",
            "PCI_SLOT_NAME=0000:00:04.0",
            "MODALIAS=pci:v00008086d00002021sv00008086sd00000000bc08sc80i00",
            "SEQNUM=4711",
        ]);
        let event = parse(&raw).unwrap();
        assert_eq!(event.action, "remove");
        assert_eq!(event.devpath, DEVPATH);
        assert_eq!(event.get("SEQNUM"), Some("4711"));
        assert_eq!(
            event.pci_event(),
            Some(PciEvent::Removed {
                bdf: "0000:00:04.0".into()
            })
        );
    }

    #[test]
    fn recorded_unbind_and_bind_name_the_driver() {
        let unbind = message(&[
            "unbind@/devices/pci0000:80/0000:80:04.1",
            "ACTION=unbind",
            "DEVPATH=/devices/pci0000:80/0000:80:04.1",
            "SUBSYSTEM=pci",
            "DRIVER=ioatdma",
            "SEQNUM=88",
        ]);
        assert_eq!(
            parse(&unbind).unwrap().pci_event(),
            Some(PciEvent::Unbound {
                bdf: "0000:80:04.1".into(),
                driver: Some("ioatdma".into())
            })
        );
        let bind = message(&[
            "bind@/devices/pci0000:80/0000:80:04.1",
            "ACTION=bind",
            "DEVPATH=/devices/pci0000:80/0000:80:04.1",
            "SUBSYSTEM=pci",
            "DRIVER=vfio-pci",
            "PCI_SLOT_NAME=0000:80:04.1",
        ]);
        let event = parse(&bind).unwrap().pci_event().unwrap();
        assert_eq!(event.bdf(), "0000:80:04.1");
        assert!(matches!(event, PciEvent::Bound { driver: Some(d), .. } if d == "vfio-pci"));
    }

    #[test]
    fn unrelated_devices_parse_but_are_not_pci_events() {
        let net = message(&[
            "add@/devices/virtual/net/veth0",
            "ACTION=add",
            "DEVPATH=/devices/virtual/net/veth0",
            "SUBSYSTEM=net",
            "INTERFACE=veth0",
            "IFINDEX=7",
        ]);
        assert_eq!(parse(&net).unwrap().pci_event(), None);
        let pci_change = message(&[
            &format!("change@{DEVPATH}"),
            "ACTION=change",
            &format!("DEVPATH={DEVPATH}"),
            "SUBSYSTEM=pci",
        ]);
        assert_eq!(parse(&pci_change).unwrap().pci_event(), None);
        let bridge = message(&[
            "remove@/devices/pci0000:00",
            "ACTION=remove",
            "DEVPATH=/devices/pci0000:00",
            "SUBSYSTEM=pci",
        ]);
        assert_eq!(
            parse(&bridge).unwrap().pci_event(),
            None,
            "no function address"
        );
    }

    #[test]
    fn malformed_input_gets_a_typed_error() {
        assert_eq!(parse(b""), Err(UeventError::Empty));
        assert_eq!(parse(b"\0\0\0"), Err(UeventError::Empty));
        assert_eq!(
            parse(b"libudev\0\xfe\xed\xca\xfe"),
            Err(UeventError::FromUdev)
        );
        assert_eq!(parse(b"no header here\0"), Err(UeventError::BadHeader));
        assert_eq!(parse(b"@/devices/x\0"), Err(UeventError::BadHeader));
        assert_eq!(parse(b"add@relative\0"), Err(UeventError::BadHeader));
        assert_eq!(parse(b"add@/d\xff\0"), Err(UeventError::NotText));
        assert_eq!(
            parse(&message(&["add@/d", "ACTION=add", "DEVPATH=/d", "junk"])),
            Err(UeventError::BadField("junk".into()))
        );
        assert_eq!(
            parse(&message(&["add@/d", "ACTION=add", "=x", "DEVPATH=/d"])),
            Err(UeventError::BadField("=x".into()))
        );
        assert!(matches!(
            parse(&message(&["add@/d", "DEVPATH=/d"])),
            Err(UeventError::Inconsistent(_))
        ));
        assert!(matches!(
            parse(&message(&["add@/d", "ACTION=remove", "DEVPATH=/d"])),
            Err(UeventError::Inconsistent(_))
        ));
        // Truncated mid-field: the last field has no '='.
        let whole = message(&["remove@/d", "ACTION=remove", "DEVPATH=/d", "SUBSYSTEM=pci"]);
        assert!(parse(&whole[..whole.len() - 6]).is_err());
    }

    #[test]
    fn the_socket_opens_and_reports_nothing_waiting_without_blocking() {
        let mut socket = UeventSocket::open().expect("netlink uevent socket");
        // Events may arrive from other activity on the machine; none may block or panic.
        for _ in 0..4 {
            if socket.receive().unwrap().is_none() {
                return;
            }
        }
    }

    #[test]
    fn a_synthesised_kernel_uevent_arrives_and_parses() {
        let mut socket = UeventSocket::open().expect("netlink uevent socket");
        // Writing an action to a device's `uevent` file makes the kernel broadcast it.
        let trigger = "/sys/devices/virtual/mem/null/uevent";
        if let Err(err) = std::fs::write(trigger, "change") {
            println!("cannot synthesise a uevent here ({err}); the socket opened");
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match socket.receive().unwrap() {
                Some(Ok(event)) if event.devpath == "/devices/virtual/mem/null" => {
                    assert_eq!(event.action, "change");
                    assert_eq!(event.get("SUBSYSTEM"), Some("mem"));
                    assert_eq!(event.pci_event(), None);
                    return;
                }
                Some(_) => {}
                None => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the uevent never arrived"
                    );
                    std::thread::yield_now();
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes).map(|e| e.pci_event());
        }

        #[test]
        fn well_formed_messages_round_trip(
            action in "[a-z]{1,8}",
            path in "(/[a-z0-9:.]{1,12}){1,4}",
            extra in proptest::collection::vec(("[A-Z_]{1,10}", "[ -~]{0,20}"), 0..6),
        ) {
            let mut parts = vec![format!("{action}@{path}"), format!("ACTION={action}"), format!("DEVPATH={path}")];
            parts.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
            let raw: Vec<u8> = parts.iter().flat_map(|p| p.bytes().chain([0])).collect();
            let event = parse(&raw).unwrap();
            proptest::prop_assert_eq!(event.action, action);
            proptest::prop_assert_eq!(event.devpath, path);
            proptest::prop_assert_eq!(event.vars.len(), 2 + extra.len());
        }
    }
}
