//! The firmware's part of PCI: give every virtio device a slot on bus 0,
//! place its BAR before the guest starts, wire its INTx pin, and put the
//! BAR on the bus the vCPU loop dispatches to.
//!
//! Modern functions get a 32 KiB memory BAR in the MMIO hole (from 3 GiB
//! up); legacy functions an I/O BAR from port 0xc000 up, as a PC BIOS
//! would. Each slot's INTA# goes to its own IOAPIC pin, listed for the
//! MP table and ACPI ([`PciIntx`]).

use std::sync::{Arc, Mutex};

use devices::pci::{HostBridge, Identity, PciRoot};
use devices::virtio::transport::legacy::LegacyTransport;
use devices::virtio::transport::modern::{self, ModernTransport};
use devices::virtio::transport::VmHooks;
use devices::virtio::transport::{Bar, Function};
use devices::virtio::VirtioDevice;
use devices::{Bus, VmControl};
use loader::layout::MMIO_HOLE_START;
use loader::mptable::PciIntx;

use crate::error::{Error, Result};
use crate::virtio::intx_pin;

/// First port of the PCI I/O window: clear of every legacy ISA device.
const FIRST_IO_PORT: u64 = 0xc000;
const LAST_IO_PORT: u64 = 0xffff;

/// Which virtio PCI transport a device is reached through.
pub enum Transport {
    /// virtio 1.0 ("modern"), memory BAR, MSI-X.
    Modern,
    /// virtio 0.9.5 ("legacy"), I/O BAR, INTx; optionally with vmd's ids
    /// and a BAR size of its own.
    Legacy(Option<(Identity, u64)>),
}

/// Bus 0 being populated.
pub struct PciBuilder {
    root: PciRoot,
    hooks: Arc<dyn VmHooks>,
    next_mem: u64,
    next_io: u64,
    intx: Vec<PciIntx>,
}

impl PciBuilder {
    pub fn new(bridge: HostBridge, control: VmControl, hooks: Arc<dyn VmHooks>) -> Self {
        Self {
            root: PciRoot::new(Arc::new(Mutex::new(bridge)), control),
            hooks,
            next_mem: MMIO_HOLE_START,
            next_io: FIRST_IO_PORT,
            intx: Vec::new(),
        }
    }

    /// Puts `device` in the next free slot behind `transport`; its BAR goes
    /// on `mmio` or `pio`.
    pub fn add(
        &mut self,
        device: Box<dyn VirtioDevice>,
        transport: Transport,
        mmio: &mut Bus,
        pio: &mut Bus,
    ) -> Result<()> {
        let slot = self.root.free_slot().ok_or(Error::PciFull)?;
        let pin = intx_pin(slot);
        match transport {
            Transport::Modern => {
                let mut t = ModernTransport::new(device, slot, self.hooks.clone());
                let addr = self.next_mem.next_multiple_of(modern::BAR_SIZE);
                self.next_mem = addr + modern::BAR_SIZE;
                t.config_mut().set_bar_address(0, addr);
                t.config_mut().set_interrupt(1, pin);
                t.connect_interrupts()
                    .map_err(Error::io("wire a virtio device's interrupts"))?;
                log::debug!(
                    "pci: {} (modern) BAR0 memory {addr:#x}, INTA -> IOAPIC pin {pin}",
                    t.label()
                );
                let t = Arc::new(Mutex::new(t));
                mmio.insert(Arc::new(Mutex::new(Bar(t.clone()))), addr, modern::BAR_SIZE)?;
                self.root.add(Arc::new(Mutex::new(Function(t))));
            }
            Transport::Legacy(identity) => {
                let mut t = match identity {
                    Some((id, size)) => {
                        LegacyTransport::with_identity(device, slot, self.hooks.clone(), id, size)
                    }
                    None => LegacyTransport::new(device, slot, self.hooks.clone()),
                };
                let size = t.bar_size();
                let port = self.next_io.next_multiple_of(size);
                if port + size - 1 > LAST_IO_PORT {
                    return Err(Error::PciFull);
                }
                self.next_io = port + size;
                t.config_mut().set_bar_address(0, port);
                t.config_mut().set_interrupt(1, pin);
                t.connect_interrupts()
                    .map_err(Error::io("wire a virtio device's interrupts"))?;
                log::debug!(
                    "pci: {} (legacy) BAR0 ports {port:#x}+{size:#x}, INTA -> IOAPIC pin {pin}",
                    t.label()
                );
                let t = Arc::new(Mutex::new(t));
                pio.insert(Arc::new(Mutex::new(Bar(t.clone()))), port, size)?;
                self.root.add(Arc::new(Mutex::new(Function(t))));
            }
        }
        self.intx.push(PciIntx {
            slot,
            pin: 0,
            ioapic_pin: pin,
        });
        Ok(())
    }

    /// The finished bus and the INTx wiring the boot tables must describe.
    pub fn finish(self) -> (PciRoot, Vec<PciIntx>) {
        (self.root, self.intx)
    }
}
