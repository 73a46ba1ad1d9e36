//! The firmware's part of PCI: give every virtio device a slot on bus 0,
//! place its BAR before the guest starts, enable its decoding, wire its
//! INTx pin, and put the BAR on the bus the vCPU loop dispatches to.
//!
//! Modern functions get a 32 KiB memory BAR in the PCI window, from its
//! top (just below the IOAPIC) down, as SeaBIOS places them; legacy
//! functions an I/O BAR from port 0xc000 up, as a PC BIOS would. (An OS
//! that reassigns BARs, Linux on a rescan, allocates from the bottom of
//! both, so it really moves them.) Each slot's INTA# goes to its own
//! IOAPIC pin, listed for the MP table and ACPI ([`PciIntx`]). After that
//! the BARs are the guest's: `devices::pci::bars` follows it when it moves
//! one, kept off what [`address_spaces`] reserves.

use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::pci::config::{reg, COMMAND_IO, COMMAND_MEMORY};
use devices::pci::{AddressSpaces, BarKind, HostBridge, Identity, PciRoot};
use devices::virtio::transport::legacy::LegacyTransport;
use devices::virtio::transport::modern::{self, ModernTransport};
use devices::virtio::transport::VmHooks;
use devices::virtio::transport::{plug, PciTransport};
use devices::virtio::VirtioDevice;
use devices::{Bus, VmControl};
use loader::layout::{MemoryLayout, MMIO_HOLE_START, PCI_WINDOW_END};
use loader::mptable::{PciIntx, IOAPIC_ADDR, LAPIC_ADDR};

use crate::error::{Error, Result};
use crate::virtio::intx_pin;

/// First port of the PCI I/O window: clear of every legacy ISA device.
const FIRST_IO_PORT: u64 = 0xc000;
const LAST_IO_PORT: u64 = 0xffff;

/// The buses BARs go on, with what no BAR may cover because KVM answers
/// there before any bus does: guest RAM, the in-kernel IOAPIC, LAPIC and
/// the TSS area it keeps below 4 GiB (`tss`), and the in-kernel PIC, PIT
/// and ELCR ports.
pub fn address_spaces(
    mmio: &Arc<Bus>,
    pio: &Arc<Bus>,
    layout: &MemoryLayout,
    tss: (u64, u64),
) -> AddressSpaces {
    let mut spaces = AddressSpaces::new(mmio, pio)
        .reserve(BarKind::Mem32, IOAPIC_ADDR.into(), 0x1000, "the IOAPIC")
        .reserve(BarKind::Mem32, LAPIC_ADDR.into(), 0x1000, "the local APIC")
        .reserve(BarKind::Mem32, tss.0, tss.1, "KVM's TSS area");
    for &(start, len) in layout.ram_ranges() {
        spaces = spaces.reserve(BarKind::Mem32, start.0, len as u64, "guest RAM");
    }
    for (port, len, what) in [
        (0x20, 2, "the PIC"),
        (0xa0, 2, "the PIC"),
        (0x4d0, 2, "the PIC's ELCR"),
        (0x40, 4, "the PIT"),
        (0x61, 1, "the PIT's speaker port"),
    ] {
        spaces = spaces.reserve(BarKind::Io, port, len, what);
    }
    spaces
}

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
    spaces: AddressSpaces,
    /// The lowest memory BAR placed so far: the next goes below it.
    next_mem: u64,
    next_io: u64,
    intx: Vec<PciIntx>,
}

impl PciBuilder {
    pub fn new(
        bridge: HostBridge,
        control: VmControl,
        hooks: Arc<dyn VmHooks>,
        spaces: AddressSpaces,
    ) -> Self {
        Self {
            root: PciRoot::new(Arc::new(Mutex::new(bridge)), control),
            hooks,
            spaces,
            next_mem: PCI_WINDOW_END,
            next_io: FIRST_IO_PORT,
            intx: Vec::new(),
        }
    }

    /// Puts `device` in the next free slot behind `transport`; its BAR goes
    /// on the MMIO or the port-I/O bus.
    pub fn add(&mut self, device: Box<dyn VirtioDevice>, transport: Transport) -> Result<()> {
        let slot = self.root.free_slot().ok_or(Error::PciFull)?;
        let pin = intx_pin(slot);
        match transport {
            Transport::Modern => {
                let mut t = ModernTransport::new(device, slot, self.hooks.clone());
                let addr = self
                    .next_mem
                    .checked_sub(modern::BAR_SIZE)
                    .map(|a| a & !(modern::BAR_SIZE - 1))
                    .filter(|&a| a >= MMIO_HOLE_START)
                    .ok_or(Error::PciFull)?;
                self.next_mem = addr;
                t.config_mut().set_bar_address(0, addr);
                t.config_mut().set_u16(reg::COMMAND, COMMAND_MEMORY);
                t.config_mut().set_interrupt(1, pin);
                t.connect_interrupts()
                    .map_err(Error::io("wire a virtio device's interrupts"))?;
                log::debug!(
                    "pci: {} (modern) BAR0 memory {addr:#x}, INTA -> IOAPIC pin {pin}",
                    t.label()
                );
                self.plug(t, addr)?;
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
                t.config_mut().set_u16(reg::COMMAND, COMMAND_IO);
                t.config_mut().set_interrupt(1, pin);
                t.connect_interrupts()
                    .map_err(Error::io("wire a virtio device's interrupts"))?;
                log::debug!(
                    "pci: {} (legacy) BAR0 ports {port:#x}+{size:#x}, INTA -> IOAPIC pin {pin}",
                    t.label()
                );
                self.plug(t, port)?;
            }
        }
        self.intx.push(PciIntx {
            slot,
            pin: 0,
            ioapic_pin: pin,
        });
        Ok(())
    }

    /// Attaches `t`, whose BAR0 was placed at `base`, to the buses and
    /// puts it on bus 0.
    fn plug<T: PciTransport + 'static>(&mut self, t: T, base: u64) -> Result<()> {
        let f = plug(t, &self.spaces);
        if f.bar0() != Some(base) {
            let device = lock(f.transport()).label().to_string();
            return Err(Error::BarPlacement { device, base });
        }
        self.root.add(Arc::new(Mutex::new(f)));
        Ok(())
    }

    /// The finished bus and the INTx wiring the boot tables must describe.
    pub fn finish(self) -> (PciRoot, Vec<PciIntx>) {
        (self.root, self.intx)
    }
}
