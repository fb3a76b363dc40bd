//! What the engine knows of a device and its channels: their ids, and a channel as table
//! readers and private holders see it.

use std::fmt;
use std::sync::Arc;

use crate::queue::ChannelBackend;

/// Engine-wide identifier of a registered device. Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A channel: its device and its position in the device's channel list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    /// The device the channel belongs to.
    pub device: DeviceId,
    /// The channel's position in its device's list, from 0.
    pub index: u16,
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.device, self.index)
    }
}

/// A channel as table readers and private holders see it.
pub struct Channel {
    id: ChannelId,
    name: String,
    backend: Arc<dyn ChannelBackend>,
}

impl Channel {
    pub(crate) fn new(id: ChannelId, name: String, backend: Arc<dyn ChannelBackend>) -> Self {
        Channel { id, name, backend }
    }

    /// The channel's id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// `<device name>/chan<index>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend behind the channel.
    pub fn backend(&self) -> &dyn ChannelBackend {
        &*self.backend
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}
