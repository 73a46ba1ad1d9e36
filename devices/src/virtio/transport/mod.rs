//! Transports: how a driver reaches a [`super::VirtioDevice`].
//!
//! One [`core::Core`] holds everything a device is to its driver (status,
//! features, queues, workers, reset, the strict rules); two register maps
//! decode guest accesses into it: [`modern`] (virtio 1.0 PCI: capabilities
//! into a memory BAR, MSI-X) and [`legacy`] (virtio 0.9.5 PCI: one I/O
//! BAR, INTx). They know PCI and register layouts, nothing about blk or
//! net; a third transport (virtio-mmio, say) would be a third register map.
//!
//! Both PCI maps keep their BARs where the guest puts them: [`plug`]
//! attaches a transport to the VM's buses through a
//! [`crate::pci::BarDecoder`], and after each config write that can move a
//! BAR or switch its decoding, [`follow_bars`] moves the bus mapping (and
//! with it every register and the MSI-X table inside the BAR) and the
//! queues' ioeventfds together.

pub mod core;
pub mod legacy;
pub mod modern;
#[cfg(test)]
mod moved_bars;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::{Arc, Mutex, Weak};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::core::Core;
use super::rules::Violation;
use crate::bus::{lock, BusDevice, SharedDevice};
use crate::pci::msix::MsiMessage;
use crate::pci::{AddressSpaces, BarDecoder, ConfigSpace, PciFunction};

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

/// A register map on PCI: it can be given the buses its BARs decode on.
pub trait PciTransport: BarRegisters + PciFunction {
    /// Maps the BARs where the config space says (the launcher placed
    /// them) through `device`, and keeps them where the guest puts them.
    fn attach_bars(&mut self, spaces: AddressSpaces, device: SharedDevice);
    /// Where BAR0 is decoded now (`None`: nowhere, or not attached).
    fn bar0(&self) -> Option<u64>;
    /// "virtio-rng 00:03.0".
    fn label(&self) -> &str;
}

/// Shares `transport` and attaches its BARs to `spaces`' buses; put it on
/// the PCI root as a [`Function`].
pub fn plug<T: PciTransport + 'static>(transport: T, spaces: &AddressSpaces) -> Arc<Mutex<T>> {
    let t = Arc::new(Mutex::new(transport));
    let bar: SharedDevice = Arc::new(Mutex::new(Bar(Arc::downgrade(&t))));
    lock(&t).attach_bars(spaces.clone(), bar);
    t
}

/// After a config write that may have moved a BAR or switched decoding:
/// the bus mappings follow `config`, and the notifications follow BAR0,
/// whose notify area starts `notify` bytes in.
fn follow_bars(bars: Option<&mut BarDecoder>, config: &ConfigSpace, core: &mut Core, notify: u64) {
    let Some(bars) = bars else { return };
    for (index, base) in bars.sync(config) {
        if index == 0 {
            core.move_notify(base.map(|b| b + notify));
        }
    }
}

/// One transport reached two ways: its BAR through a bus ([`Bar`]) and its
/// configuration space through the PCI root ([`Function`]). The bus holds
/// the BAR, the BAR's decoder (inside the transport) holds the bus device:
/// a weak reference here breaks that cycle. A BAR whose transport is gone
/// reads as all ones.
pub struct Bar<T>(pub Weak<Mutex<T>>);

impl<T: BarRegisters> BusDevice for Bar<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.0.upgrade() {
            Some(t) => lock(&t).bar_read(offset, data),
            None => data.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(t) = self.0.upgrade() {
            lock(&t).bar_write(offset, data)
        }
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
    fn retry_bars(&mut self) {
        lock(&self.0).retry_bars()
    }
}
