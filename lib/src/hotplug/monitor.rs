//! The hotplug monitor: a thread that learns of device removals and runs the removal sequence
//! ([`Engine::remove_device`]) for each, and registers devices that arrive, while clients keep
//! working.
//!
//! It learns of a removal from:
//!
//! - kernel uevents (`remove` or `unbind` of a PCI function it was told to watch), read from a
//!   `NETLINK_KOBJECT_UEVENT` socket when [`MonitorConfig::uevents`] is set, or fed in as
//!   recorded datagrams with [`Monitor::feed_uevent`];
//! - a device whose registers read all-ones (surprise removal), checked every
//!   [`MonitorConfig::presence_interval`];
//! - the VFIO device-request eventfd of a function opened through VFIO (the kernel wants it
//!   back: an unbind, a hot-unplug begun), given with [`Monitor::watch_request`] and checked
//!   as often;
//! - an explicit [`Monitor::remove`].
//!
//! Every removal and addition is reported as a [`HotplugEvent`], through a queue
//! ([`Monitor::next_event`]) and an optional callback. Dropping the monitor (or
//! [`Monitor::stop`]) stops the thread after the removal in progress, if any.
//!
//! ```
//! use std::time::Duration;
//! use dmaplane::hotplug::{HotplugEvent, Monitor, MonitorConfig};
//! use dmaplane::{CapMask, DeviceSpec, Engine, EngineConfig, NullChannel};
//!
//! let engine = Engine::new(EngineConfig::with_cpus(2)).unwrap();
//! let monitor = Monitor::start(&engine, MonitorConfig::default()).unwrap();
//! let id = monitor.add(DeviceSpec::new("dev0", CapMask::MEMCPY, NullChannel::many(2))).unwrap();
//! monitor.remove(id);
//! let mut removed = None;
//! while removed.is_none() {
//!     if let Some(HotplugEvent::Removed(report)) = monitor.next_event(Duration::from_secs(5)) {
//!         removed = Some(report);
//!     }
//! }
//! assert_eq!(removed.unwrap().device, id);
//! monitor.stop();
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::uevent::{self, PciEvent, UeventSocket};
use crate::engine::{DeviceId, Engine, EngineError, RemovalOptions, RemovalReport};
use crate::queue::DeviceSpec;
use crate::sync::lock_std;
use crate::vfio::RequestNotifier;

/// What the monitor reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotplugEvent {
    /// A device was removed.
    Removed(RemovalReport),
    /// A device was registered and the table rebalanced onto it.
    Added {
        /// Its id.
        device: DeviceId,
        /// Its name.
        name: String,
    },
    /// A PCI function appeared or was bound to a driver; the application may probe it and
    /// [`Monitor::add`] it.
    PciAppeared {
        /// Its address.
        bdf: String,
    },
    /// A removal could not be carried out (the device was already gone, say).
    Failed {
        /// The device.
        device: DeviceId,
        /// Why.
        error: EngineError,
    },
}

impl fmt::Display for HotplugEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HotplugEvent::Removed(report) => report.fmt(f),
            HotplugEvent::Added { device, name } => write!(f, "device {device} ({name}) added"),
            HotplugEvent::PciAppeared { bdf } => write!(f, "PCI function {bdf} appeared"),
            HotplugEvent::Failed { device, error } => {
                write!(f, "removing device {device} failed: {error}")
            }
        }
    }
}

/// A function called with every event, on the monitor's thread.
pub type EventHook = Arc<dyn Fn(&HotplugEvent) + Send + Sync>;

/// How the monitor runs.
#[derive(Clone)]
pub struct MonitorConfig {
    /// Listen to kernel uevents (needs a netlink socket; refused in some sandboxes).
    pub uevents: bool,
    /// How often devices are checked for registers reading all-ones.
    pub presence_interval: Duration,
    /// Deadlines of each removal.
    pub removal: RemovalOptions,
    /// Called with every event, besides the queue.
    pub on_event: Option<EventHook>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            uevents: false,
            presence_interval: Duration::from_millis(10),
            removal: RemovalOptions::default(),
            on_event: None,
        }
    }
}

impl fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("uevents", &self.uevents)
            .field("presence_interval", &self.presence_interval)
            .field("removal", &self.removal)
            .field("on_event", &self.on_event.is_some())
            .finish()
    }
}

/// The VFIO device-request notifiers the monitor reads, with the device each one removes.
type WatchedRequests = Vec<(DeviceId, Arc<RequestNotifier>)>;

enum Request {
    Remove(DeviceId),
    Uevent(Vec<u8>),
}

/// The running monitor. See the module documentation.
pub struct Monitor {
    engine: Engine,
    requests: mpsc::Sender<Request>,
    events: Mutex<mpsc::Receiver<HotplugEvent>>,
    emit: Emitter,
    /// PCI address of each watched device.
    watched: Arc<Mutex<HashMap<String, DeviceId>>>,
    /// VFIO device-request notifiers of watched devices.
    device_requests: Arc<Mutex<WatchedRequests>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The sending side of the event queue, and the callback.
#[derive(Clone)]
struct Emitter {
    queue: mpsc::Sender<HotplugEvent>,
    hook: Option<EventHook>,
}

impl Emitter {
    fn emit(&self, event: HotplugEvent) {
        if let Some(hook) = &self.hook {
            hook(&event);
        }
        // A monitor whose owner stopped reading still works; the event is dropped with the
        // queue.
        let _ = self.queue.send(event);
    }
}

impl Monitor {
    /// Starts the monitor thread for `engine`.
    pub fn start(engine: &Engine, config: MonitorConfig) -> io::Result<Monitor> {
        let socket = if config.uevents {
            Some(UeventSocket::open()?)
        } else {
            None
        };
        let (requests, inbox) = mpsc::channel();
        let (queue, events) = mpsc::channel();
        let emit = Emitter {
            queue,
            hook: config.on_event.clone(),
        };
        let watched = Arc::new(Mutex::new(HashMap::new()));
        let watched_requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut thread_state = MonitorThread {
            engine: engine.clone(),
            config,
            socket,
            inbox,
            emit: emit.clone(),
            watched: Arc::clone(&watched),
            device_requests: Arc::clone(&watched_requests),
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("dmaplane-hotplug".into())
            .spawn(move || thread_state.run())?;
        Ok(Monitor {
            engine: engine.clone(),
            requests,
            events: Mutex::new(events),
            emit,
            watched,
            device_requests: watched_requests,
            stop,
            thread: Some(thread),
        })
    }

    /// Registers a device (a new one, or one that came back) and rebalances the table onto it
    /// while clients run; reports [`HotplugEvent::Added`].
    pub fn add(&self, spec: DeviceSpec) -> Result<DeviceId, EngineError> {
        let name = spec.name.clone();
        let device = self.engine.register_device(spec)?;
        self.emit.emit(HotplugEvent::Added { device, name });
        Ok(device)
    }

    /// Removes `device` when kernel uevents say the PCI function `bdf` left or was unbound.
    pub fn watch_pci(&self, device: DeviceId, bdf: impl Into<String>) {
        lock_std(&self.watched).insert(bdf.into(), device);
    }

    /// Removes `device` when the kernel signals `notifier`, its VFIO device-request eventfd.
    pub fn watch_request(&self, device: DeviceId, notifier: Arc<RequestNotifier>) {
        lock_std(&self.device_requests).push((device, notifier));
    }

    /// Asks for `device` to be removed; the outcome arrives as an event.
    pub fn remove(&self, device: DeviceId) {
        let _ = self.requests.send(Request::Remove(device));
    }

    /// Hands the monitor a uevent datagram, as the kernel socket would (for recorded events).
    pub fn feed_uevent(&self, datagram: Vec<u8>) {
        let _ = self.requests.send(Request::Uevent(datagram));
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<HotplugEvent> {
        lock_std(&self.events).recv_timeout(timeout).ok()
    }

    /// Stops the thread (after the removal in progress) and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("watched", &*lock_std(&self.watched))
            .field("running", &self.thread.is_some())
            .finish()
    }
}

/// The monitor thread's state.
struct MonitorThread {
    engine: Engine,
    config: MonitorConfig,
    socket: Option<UeventSocket>,
    inbox: mpsc::Receiver<Request>,
    emit: Emitter,
    watched: Arc<Mutex<HashMap<String, DeviceId>>>,
    device_requests: Arc<Mutex<WatchedRequests>>,
    stop: Arc<AtomicBool>,
}

impl MonitorThread {
    fn run(&mut self) {
        while !self.stop.load(Ordering::Acquire) {
            match self.inbox.recv_timeout(self.config.presence_interval) {
                Ok(Request::Remove(device)) => self.remove(device),
                Ok(Request::Uevent(datagram)) => {
                    if let Ok(event) = uevent::parse(&datagram) {
                        self.on_pci(event.pci_event());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.read_socket();
            self.check_requests();
            self.check_presence();
        }
    }

    fn read_socket(&mut self) {
        let mut events = Vec::new();
        if let Some(socket) = &mut self.socket {
            // Malformed datagrams and socket errors are skipped: the presence check still
            // catches a device that left.
            while let Ok(Some(received)) = socket.receive() {
                if let Ok(event) = received {
                    events.push(event.pci_event());
                }
            }
        }
        for event in events {
            self.on_pci(event);
        }
    }

    fn on_pci(&mut self, event: Option<PciEvent>) {
        match event {
            Some(PciEvent::Removed { bdf } | PciEvent::Unbound { bdf, .. }) => {
                let device = lock_std(&self.watched).remove(&bdf);
                if let Some(device) = device {
                    self.remove(device);
                }
            }
            Some(PciEvent::Added { bdf } | PciEvent::Bound { bdf, .. }) => {
                self.emit.emit(HotplugEvent::PciAppeared { bdf });
            }
            None => {}
        }
    }

    /// Functions the kernel asked back through their VFIO device-request eventfd.
    fn check_requests(&mut self) {
        let asked: Vec<DeviceId> = lock_std(&self.device_requests)
            .iter()
            .filter(|(_, notifier)| notifier.requested())
            .map(|(device, _)| *device)
            .collect();
        for device in asked {
            self.remove(device);
        }
    }

    /// Surprise removals: devices whose registers read all-ones.
    fn check_presence(&mut self) {
        for (device, _) in self.engine.devices() {
            if self.engine.device_present(device) == Some(false) {
                self.remove(device);
            }
        }
    }

    fn remove(&mut self, device: DeviceId) {
        lock_std(&self.watched).retain(|_, d| *d != device);
        lock_std(&self.device_requests).retain(|(d, _)| *d != device);
        let event = match self.engine.remove_device(device, self.config.removal) {
            Ok(report) => HotplugEvent::Removed(report),
            Err(error) => HotplugEvent::Failed { device, error },
        };
        self.emit.emit(event);
    }
}
