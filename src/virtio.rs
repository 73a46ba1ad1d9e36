//! The KVM side of virtio PCI functions: where their interrupts and
//! notifications go.
//!
//! [`KvmHooks`] implements `devices::virtio::transport::VmHooks`: it
//! registers a queue's notify address as an ioeventfd (so the guest's kick
//! wakes the queue's worker without a vCPU exit), gives each MSI-X vector
//! its own GSI with an irqfd, and keeps KVM's GSI routing table, which
//! `KVM_SET_GSI_ROUTING` replaces whole: the legacy IOAPIC/PIC routes for
//! GSIs 0–23 plus one MSI route per programmed vector. A broken MUST of the
//! strict checks becomes [`VmRequest::BadDriver`], which ends the run; a
//! warning is printed once per rule and device (`devices::guestlog`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::guestlog;
use devices::pci::msix::MsiMessage;
use devices::virtio::transport::VmHooks;
use devices::virtio::{Verdict, Violation};
use devices::{VmControl, VmRequest};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use loader::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

/// GSIs 0–23 are the IOAPIC's pins; MSI vectors get GSIs from here up.
const FIRST_MSI_GSI: u32 = 24;
/// IOAPIC pins for PCI INTx, one per slot in turn (ISA uses 0–15).
pub const FIRST_PCI_PIN: u8 = 16;
pub const PCI_PINS: u8 = 8;

/// The IOAPIC pin a slot's INTA# is wired to.
pub fn intx_pin(slot: u8) -> u8 {
    FIRST_PCI_PIN + slot % PCI_PINS
}

struct Routes {
    next_gsi: u32,
    /// (slot, vector) -> GSI.
    gsis: BTreeMap<(u8, u16), u32>,
    msi: BTreeMap<u32, MsiMessage>,
}

pub struct KvmHooks {
    vm: Arc<VmFd>,
    mem: GuestMemory,
    control: VmControl,
    lenient: bool,
    /// `--warnings-as-errors`: a warning stops the run like a broken MUST.
    warnings_as_errors: bool,
    routes: Mutex<Routes>,
}

impl KvmHooks {
    pub fn new(
        vm: Arc<VmFd>,
        mem: GuestMemory,
        control: VmControl,
        lenient: bool,
        warnings_as_errors: bool,
    ) -> Self {
        Self {
            vm,
            mem,
            control,
            lenient,
            warnings_as_errors,
            routes: Mutex::new(Routes {
                next_gsi: FIRST_MSI_GSI,
                gsis: BTreeMap::new(),
                msi: BTreeMap::new(),
            }),
        }
    }

    fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    }

    /// Pushes the whole routing table to KVM.
    fn commit(&self, routes: &Routes) -> std::io::Result<()> {
        let mut entries = Vec::new();
        // As on a PC (and as the MP table says): ISA IRQ 0, the PIT, is
        // wired to IOAPIC pin 2; pin 0 and GSI 2 on the IOAPIC are unused.
        for gsi in 0..24u32 {
            if gsi < 16 && gsi != 2 {
                let (chip, pin) = if gsi < 8 {
                    (KVM_IRQCHIP_PIC_MASTER, gsi)
                } else {
                    (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
                };
                entries.push(Self::irqchip(gsi, chip, pin));
            }
            match gsi {
                0 => entries.push(Self::irqchip(0, KVM_IRQCHIP_IOAPIC, 2)),
                2 => {}
                _ => entries.push(Self::irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
            }
        }
        for (&gsi, m) in &routes.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| std::io::Error::other("too many interrupt routes"))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(std::io::Error::from)
    }

    /// Installs the table before boot, so the legacy routes match the MP
    /// table from the first instruction.
    pub fn install_routes(&self) -> std::io::Result<()> {
        self.commit(&lock(&self.routes))
    }

    fn gsi(&self, slot: u8, vector: u16) -> u32 {
        let mut r = lock(&self.routes);
        if let Some(&g) = r.gsis.get(&(slot, vector)) {
            return g;
        }
        let g = r.next_gsi;
        r.next_gsi += 1;
        r.gsis.insert((slot, vector), g);
        g
    }
}

impl VmHooks for KvmHooks {
    fn memory(&self) -> GuestMemory {
        self.mem.clone()
    }

    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.vm
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(std::io::Error::from)
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.vm
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(std::io::Error::from)
    }

    fn register_ioevent_pio(&self, fd: &EventFd, port: u16) -> std::io::Result<()> {
        self.vm
            .register_ioevent(fd, &IoEventAddress::Pio(port.into()), NoDatamatch)
            .map_err(std::io::Error::from)
    }

    fn unregister_ioevent_pio(&self, fd: &EventFd, port: u16) -> std::io::Result<()> {
        self.vm
            .unregister_ioevent(fd, &IoEventAddress::Pio(port.into()), NoDatamatch)
            .map_err(std::io::Error::from)
    }

    fn msi_irqfd(&self, slot: u8, vector: u16) -> std::io::Result<EventFd> {
        let gsi = self.gsi(slot, vector);
        let fd = EventFd::new(libc::EFD_NONBLOCK)?;
        self.vm
            .register_irqfd(&fd, gsi)
            .map_err(std::io::Error::from)?;
        Ok(fd)
    }

    fn set_msi_route(&self, slot: u8, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
        let gsi = self.gsi(slot, vector);
        let mut r = lock(&self.routes);
        r.msi.insert(gsi, msg);
        self.commit(&r)
    }

    fn intx_irqfd(&self, slot: u8) -> std::io::Result<EventFd> {
        let fd = EventFd::new(libc::EFD_NONBLOCK)?;
        self.vm
            .register_irqfd(&fd, intx_pin(slot).into())
            .map_err(std::io::Error::from)?;
        Ok(fd)
    }

    fn report(&self, v: &Violation) {
        let cause = format!("{:?} {}", v.rule, v.device);
        match v.verdict(self.lenient, self.warnings_as_errors) {
            Verdict::Stop => {
                let mut report = format!("bad driver: {}", v.body());
                if !v.recent.is_empty() {
                    report.push_str(
                        "\n  the device's last events before it (oldest first; -v and --trace-file show them all):",
                    );
                    for e in &v.recent {
                        report.push_str("\n    ");
                        report.push_str(e);
                    }
                }
                self.control.request(VmRequest::BadDriver { report })
            }
            Verdict::NeedsReset => {
                guestlog::warn(&cause, format_args!("{v} (--lenient: device needs reset)"))
            }
            Verdict::Warn => guestlog::warn(&cause, v),
        }
    }

    fn lenient(&self) -> bool {
        self.lenient
    }
}
