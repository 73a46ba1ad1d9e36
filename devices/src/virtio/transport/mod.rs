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
//! [`crate::pci::BarDecoder`] held by its [`Function`]; after each config
//! write that can move a BAR or switch its decoding, the function moves the
//! bus mapping (and with it every register and the MSI-X table inside the
//! BAR) and the transport its queues' ioeventfds
//! ([`PciTransport::bar_moved`]).

pub mod core;
pub mod legacy;
pub mod modern;
#[cfg(test)]
mod moved_bars;
/// The unit tests' fakes (hooks without KVM, a counting device), public
/// with the `fuzzing` feature so the fuzz targets in `fuzz/` drive the
/// transports exactly as the tests do.
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::rules::Violation;
use crate::bus::{lock, BusDevice, SharedDevice};
use crate::pci::bars::touches_decoding;
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

/// A register map on PCI, as its [`Function`] needs it to follow the BARs.
pub trait PciTransport: BarRegisters + PciFunction {
    /// The configuration space: where the BARs are and what decodes.
    fn config(&self) -> &ConfigSpace;
    /// BAR `index` decodes at `base` now (`None`: nowhere): move what KVM
    /// does at the old place without us, the queues' ioeventfds.
    fn bar_moved(&mut self, index: usize, base: Option<u64>);
    /// "virtio-rng 00:03.0".
    fn label(&self) -> &str;
}

/// Shares `transport` and maps its BARs on `spaces`' buses where its
/// config space says (the launcher placed them); returns its function for
/// the PCI root, which keeps them where the guest puts them.
pub fn plug<T: PciTransport + 'static>(transport: T, spaces: &AddressSpaces) -> Function<T> {
    let transport = Arc::new(Mutex::new(transport));
    let bar: SharedDevice = Arc::new(Mutex::new(Bar(transport.clone())));
    let label = lock(&transport).label().to_string();
    let mut f = Function {
        transport,
        bars: BarDecoder::new(spaces.clone(), bar, label),
    };
    f.follow_bars();
    f
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

/// See [`Bar`]. A config write to a BAR or the command register moves
/// the BARs' bus mappings (and with them everything inside a BAR, the
/// MSI-X table too) and tells the transport, which moves its ioeventfds.
/// The decoder holds the buses weakly: the buses hold the PCI root, which
/// holds this.
pub struct Function<T> {
    transport: Arc<Mutex<T>>,
    bars: BarDecoder,
}

impl<T: PciTransport> Function<T> {
    /// Where BAR0 is decoded now.
    pub fn bar0(&self) -> Option<u64> {
        self.bars.base(0)
    }

    pub fn transport(&self) -> &Arc<Mutex<T>> {
        &self.transport
    }

    fn follow_bars(&mut self) {
        let mut t = lock(&self.transport);
        for (index, base) in self.bars.sync(t.config()) {
            t.bar_moved(index, base);
        }
    }
}

impl<T: PciTransport> PciFunction for Function<T> {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        lock(&self.transport).config_read(offset, data)
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        lock(&self.transport).config_write(offset, data);
        if touches_decoding(offset, data.len()) {
            self.follow_bars();
        }
    }
    fn retry_bars(&mut self) {
        if self.bars.has_refused() {
            self.follow_bars();
        }
    }
}
