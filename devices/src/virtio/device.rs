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

/// A virtio device, independent of transport.
pub trait VirtioDevice: Send {
    /// Device type (virtio 1.0 §5): 1 net, 2 block, 3 console, 4 rng.
    fn device_type(&self) -> u16;
    /// Short name for reports: "virtio-rng".
    fn name(&self) -> &'static str;
    /// Device-specific feature bits offered; the transport adds its own.
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: usize, data: &mut [u8]);
    /// Writes it; most devices have nothing writable.
    fn write_config(&mut self, _offset: usize, _data: &[u8]) {}
    /// The driver set DRIVER_OK with `features` negotiated: one handler
    /// per queue, in queue order.
    fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>>;
    /// The driver reset the device: forget negotiated state.
    fn reset(&mut self) {}
    /// Keeps the transport's [`ConfigSignal`]; only devices whose
    /// configuration changes on the host's initiative need it.
    fn set_config_signal(&mut self, _signal: Arc<dyn ConfigSignal>) {}
}
