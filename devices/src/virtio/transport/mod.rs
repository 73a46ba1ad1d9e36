//! Transports: how a driver reaches a [`super::VirtioDevice`]. They know
//! PCI and the virtio register layouts, nothing about blk or net.

pub mod legacy;
pub mod modern;
pub mod shared;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::rules::Violation;
use crate::pci::msix::MsiMessage;

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
