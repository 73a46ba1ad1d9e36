//! Transports: how a driver reaches a [`super::VirtioDevice`].
//!
//! One [`core::Core`] holds everything a device is to its driver (status,
//! features, queues, workers, reset, the strict rules); two register maps
//! decode guest accesses into it: [`modern`] (virtio 1.0 PCI: capabilities
//! into a memory BAR, MSI-X) and [`legacy`] (virtio 0.9.5 PCI: one I/O
//! BAR, INTx). They know PCI and register layouts, nothing about blk or
//! net; a third transport (virtio-mmio, say) would be a third register map.

pub mod core;
pub mod legacy;
pub mod modern;
/// The unit tests' fakes (hooks without KVM, a counting device), public
/// with the `fuzzing` feature so the fuzz targets in `fuzz/` drive the
/// transports exactly as the tests do.
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::rules::Violation;
use crate::bus::{lock, BusDevice};
use crate::pci::msix::MsiMessage;
use crate::pci::PciFunction;

/// What a transport needs from the VM it lives in; the launcher implements
/// it over KVM (`src/virtio.rs`), tests implement it with plain eventfds.
pub trait VmHooks: Send + Sync {
    /// Guest RAM, for validating and walking virtqueues.
    fn memory(&self) -> GuestMemoryMmap;
    /// Makes guest writes to `addr` (MMIO) signal `fd` without an exit.
    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
    /// The same for a port-I/O address (the legacy transport's I/O BAR).
    fn register_ioevent_pio(&self, fd: &EventFd, port: u16) -> std::io::Result<()>;
    fn unregister_ioevent_pio(&self, fd: &EventFd, port: u16) -> std::io::Result<()>;
    /// An eventfd that raises MSI-X vector `vector` of function `slot`.
    fn msi_irqfd(&self, slot: u8, vector: u16) -> std::io::Result<EventFd>;
    /// Points that vector's route at `msg`.
    fn set_msi_route(&self, slot: u8, vector: u16, msg: MsiMessage) -> std::io::Result<()>;
    /// An eventfd that pulses the function's INTx line.
    fn intx_irqfd(&self, slot: u8) -> std::io::Result<EventFd>;
    /// A driver broke a rule (strict mode ends the VM here).
    fn report(&self, violation: &Violation);
    /// `--lenient`: log violations and set DEVICE_NEEDS_RESET instead.
    fn lenient(&self) -> bool;
}

/// A register map's BAR, as its bus device sees it.
pub trait BarRegisters: Send {
    fn bar_read(&mut self, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, offset: u64, data: &[u8]);
}

/// One transport reached two ways: its BAR through a bus ([`Bar`]) and its
/// configuration space through the PCI root ([`Function`]).
pub struct Bar<T>(pub Arc<Mutex<T>>);

impl<T: BarRegisters> BusDevice for Bar<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).bar_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).bar_write(offset, data)
    }
}

/// See [`Bar`].
pub struct Function<T>(pub Arc<Mutex<T>>);

impl<T: PciFunction> PciFunction for Function<T> {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        lock(&self.0).config_read(offset, data)
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        lock(&self.0).config_write(offset, data)
    }
}
