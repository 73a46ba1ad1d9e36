//! How a virtio function interrupts the guest: an MSI-X vector when the
//! driver enabled MSI-X, else the INTx line with the ISR status register.
//!
//! Each vector has its own eventfd that the launcher registered as an
//! irqfd on a GSI routed to the vector's MSI message, so a worker thread
//! interrupts the guest with one `write(2)` and no vCPU exit. A masked
//! vector is held pending in the MSI-X PBA instead and delivered when the
//! driver unmasks it (the transport calls [`Interrupt::deliver`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::pci::msix::Msix;

/// "No vector": the driver wants no interrupt for this source.
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit for a used-buffer notification.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit for a configuration change.
pub const ISR_CONFIG: u8 = 2;

pub struct Interrupt {
    pub msix: Arc<Mutex<Msix>>,
    /// One irqfd per MSI-X vector.
    pub vectors: Vec<EventFd>,
    /// The INTx line's irqfd.
    pub intx: EventFd,
    pub isr: Arc<AtomicU8>,
}

impl Interrupt {
    /// Signals `vector` (for `isr_bit` when MSI-X is off).
    pub fn signal(&self, vector: u16, isr_bit: u8) {
        let mut msix = lock(&self.msix);
        if msix.enabled() {
            if vector != NO_VECTOR && msix.fire(vector) {
                drop(msix);
                self.deliver(vector);
            }
            return;
        }
        drop(msix);
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        let _ = self.intx.write(1);
    }

    /// Sends `vector`'s message now.
    pub fn deliver(&self, vector: u16) {
        if let Some(fd) = self.vectors.get(usize::from(vector)) {
            let _ = fd.write(1);
        }
    }
}
