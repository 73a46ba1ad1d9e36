//! What a virtio device is, apart from how it is reached.
//!
//! A device (console, rng, blk, net, vmmci) says who it is, what features
//! and queues it offers and what its configuration space holds. The
//! transports (`transport::modern`, `transport::legacy`) turn any
//! [`VirtioDevice`] into a PCI function: they run feature negotiation and
//! queue setup, check the driver against the rules, and on DRIVER_OK ask
//! the device to [`VirtioDevice::activate`], which hands back one
//! [`QueueHandler`] per queue for the per-queue worker threads.

use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::rules::Violation;

/// Feature bits the transports themselves understand.
pub mod feature {
    /// VIRTIO_F_VERSION_1: the driver speaks virtio 1.0 (modern).
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_RING_INDIRECT_DESC.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_F_RING_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << 29;
}

/// Device status bits (virtio 1.0 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    pub const FAILED: u8 = 128;
}

/// One queue's work, called from that queue's worker thread whenever the
/// guest notifies or the backend (if any) becomes ready.
pub trait QueueHandler: Send {
    /// Takes available chains from `queue`, does the device's work, puts
    /// them on the used ring. Returns whether anything was used, so the
    /// worker knows to consider an interrupt.
    fn process(
        &mut self,
        queue: &mut super::queue::CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation>;

    /// A descriptor the worker should also wait on (a tap, stdin), or none
    /// for devices that only answer requests.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
}

/// How a device tells its driver about a configuration change from a
/// thread of its own (vmmci's host requests arrive outside any guest
/// access). The transport hands one over once its interrupts are wired.
pub trait ConfigSignal: Send + Sync {
    /// Sets the configuration-change ISR bit and interrupts the guest.
    fn raise(&self);
    /// Clears that ISR bit again: for drivers that learn of the change by
    /// reading the config space and never read ISR.
    fn clear(&self);
}

/// One field of a device's configuration space, as the strict checks see
/// it: where it is, the width of its elements (a `u8 mac[6]` has elements
/// of 1, a `le64 capacity` one element of 8), and the feature that makes
/// it exist (0: always there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigField {
    pub name: &'static str,
    pub offset: u16,
    pub len: u16,
    pub elem: u8,
    pub feature: u64,
    /// Must not be accessed before FEATURES_OK (blk `writeback`, §5.2.5.1).
    pub after_features_ok: bool,
}

impl ConfigField {
    /// A field present whatever the features.
    pub const fn always(name: &'static str, offset: u16, len: u16, elem: u8) -> Self {
        Self {
            name,
            offset,
            len,
            elem,
            feature: 0,
            after_features_ok: false,
        }
    }

    /// A field that exists only when the device offers `feature` (a mask).
    pub const fn with(name: &'static str, offset: u16, len: u16, elem: u8, feature: u64) -> Self {
        Self {
            feature,
            ..Self::always(name, offset, len, elem)
        }
    }
}

/// A virtio device, independent of transport.
pub trait VirtioDevice: Send {
    /// Device type (virtio 1.0 §5): 1 net, 2 block, 3 console, 4 rng.
    fn device_type(&self) -> u16;
    /// Short name for reports: "virtio-rng".
    fn name(&self) -> &'static str;
    /// Device-specific feature bits offered; the transport adds its own.
    fn features(&self) -> u64;
    /// Names of the device's own feature bits, for traces
    /// (`BLK_F_FLUSH`); the transport's are known to `crate::trace`.
    fn feature_names(&self) -> &'static [(u32, &'static str)] {
        &[]
    }
    /// The transport's tracer for this function, for events that come
    /// from the device itself rather than its queues (vmmci's commands).
    fn set_tracer(&mut self, _trace: crate::trace::Tracer) {}
    /// Whether configuration bytes `offset..offset + len` include
    /// something the host chose at random (a MAC), which traces meant to
    /// compare two runs leave out.
    fn config_is_random(&self, _offset: usize, _len: usize) -> bool {
        false
    }
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: usize, data: &mut [u8]);
    /// Writes it; most devices have nothing writable.
    fn write_config(&mut self, _offset: usize, _data: &[u8]) {}
    /// The configuration space's layout (virtio 1.2 §5.x), for the strict
    /// checks of access width, optional fields and timing; empty for a
    /// device whose accesses are not checked (vmmci).
    fn config_fields(&self) -> &'static [ConfigField] {
        &[]
    }
    /// Pairs (feature, features it requires) as masks: accepting the first
    /// without all of the second is `FeatureMissingPrerequisite` (§2.2.1).
    fn feature_prerequisites(&self) -> &'static [(u64, u64)] {
        &[]
    }
    /// The driver set DRIVER_OK with `features` negotiated: one handler
    /// per queue, in queue order.
    fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>>;
    /// The driver reset the device: forget negotiated state.
    fn reset(&mut self) {}
    /// Keeps the transport's [`ConfigSignal`]; only devices whose
    /// configuration changes on the host's initiative need it.
    fn set_config_signal(&mut self, _signal: Arc<dyn ConfigSignal>) {}
}
