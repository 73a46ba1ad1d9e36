//! The virtio 0.9.5 PCI transport ("legacy", virtio 1.0 §4.1.4.8).
//!
//! Turns any [`VirtioDevice`] into the kind of PCI function OpenBSD's vmd
//! presents: revision 0, no capabilities at all, one I/O BAR holding the
//! whole register file:
//!
//! | BAR0 offset | width | register |
//! |---|---|---|
//! | 0 | 32 | HOST_FEATURES (read-only) |
//! | 4 | 32 | GUEST_FEATURES |
//! | 8 | 32 | QUEUE_PFN: ring address / 4096, 0 disables the queue |
//! | 12 | 16 | QUEUE_NUM (read-only: the size is fixed at the device's maximum) |
//! | 14 | 16 | QUEUE_SEL |
//! | 16 | 16 | QUEUE_NOTIFY: the value written is the queue index |
//! | 18 | 8 | STATUS: writing 0 resets |
//! | 19 | 8 | ISR: a read returns and clears it |
//! | 20.. | any | device configuration (no MSI-X, so never at 24) |
//!
//! Guest accesses arrive from a vCPU through the port-I/O bus
//! ([`super::Bar`]) or config mechanism #1 ([`super::Function`]); this map
//! decodes them into operations of the transport [`Core`], which checks
//! them and runs the queues. Interrupts go out on the INTx line only. When
//! the guest moves the I/O BAR or switches I/O decoding, the ports and the
//! notify port's ioeventfd move together ([`PciTransport::bar_moved`]).
//!
//! Notifications: all queues share the one QUEUE_NOTIFY port. Rather than
//! one datamatch ioeventfd per queue (which [`VmHooks`] cannot express),
//! the port gets a single wildcard ioeventfd. With one active queue that is
//! the worker's own kick eventfd; with more, a small relay thread wakes
//! every worker. A spurious wake costs a worker one look at an empty ring,
//! while the common legacy devices (rng, blk) have a single queue anyway.
//! The price: once workers run, KVM takes every write to that port, so a
//! notify naming a queue without a ring (`NotifyBadQueue`) is only seen
//! before DRIVER_OK or if the ioeventfd could not be registered.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::core::{Core, Doorbell, Names, Version};
use super::{BarRegisters, PciTransport, VmHooks};
use crate::pci::config::{BarKind, ConfigSpace, Identity};
use crate::pci::msix::Msix;
use crate::pci::root::PciFunction;
use crate::virtio::device::VirtioDevice;
use crate::virtio::interrupt::Interrupt;
use crate::virtio::rules::Rule;
use crate::virtio::vmmci;

/// I/O BAR size for ordinary devices: header plus 236 bytes of config.
pub const DEFAULT_BAR_SIZE: u64 = 0x100;
/// VIRTIO_PCI_VRING_ALIGN: the used ring starts on the next such boundary.
pub const VRING_ALIGN: u64 = 4096;
/// QUEUE_PFN is in units of 4 KiB (VIRTIO_PCI_QUEUE_ADDR_SHIFT).
const PFN_SHIFT: u32 = 12;
/// Where the device-specific configuration starts.
pub const DEVICE_CFG: u64 = 20;

/// Header register offsets.
pub(crate) mod reg {
    pub const HOST_FEATURES: u64 = 0;
    pub const GUEST_FEATURES: u64 = 4;
    pub const QUEUE_PFN: u64 = 8;
    pub const QUEUE_NUM: u64 = 12;
    pub const QUEUE_SEL: u64 = 14;
    pub const QUEUE_NOTIFY: u64 = 16;
    pub const STATUS: u64 = 18;
    pub const ISR: u64 = 19;

    /// The register containing `offset`: (start, width in bytes, name).
    pub fn field(offset: u64) -> Option<(u64, usize, &'static str)> {
        Some(match offset {
            0..=3 => (HOST_FEATURES, 4, "host_features"),
            4..=7 => (GUEST_FEATURES, 4, "guest_features"),
            8..=11 => (QUEUE_PFN, 4, "queue_pfn"),
            12..=13 => (QUEUE_NUM, 2, "queue_num"),
            14..=15 => (QUEUE_SEL, 2, "queue_sel"),
            16..=17 => (QUEUE_NOTIFY, 2, "queue_notify"),
            18 => (STATUS, 1, "status"),
            19 => (ISR, 1, "isr"),
            _ => return None,
        })
    }
}

/// Ring addresses of a legacy queue of `size` entries at page `pfn`, as
/// Linux's `vring_init` lays them out: descriptor table, available ring
/// right after it, used ring on the next [`VRING_ALIGN`] boundary.
/// Returns (desc, avail, used).
pub fn ring_addresses(pfn: u32, size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    let desc = u64::from(pfn) << PFN_SHIFT;
    let avail = desc + 16 * n;
    // flags, idx, ring[n], used_event
    let used = (avail + 6 + 2 * n).next_multiple_of(VRING_ALIGN);
    (desc, avail, used)
}

/// The transitional (0.9.5) PCI device id of a virtio device type.
fn legacy_device_id(device_type: u16) -> u16 {
    match device_type {
        1 => 0x1000, // net
        2 => 0x1001, // block
        5 => 0x1002, // balloon
        3 => 0x1003, // console
        8 => 0x1004, // scsi
        4 => 0x1005, // rng
        9 => 0x1009, // 9p
        t => 0x1000u16.wrapping_add(t.wrapping_sub(1)),
    }
}

/// PCI identity of a legacy function as QEMU-like hosts show it: vendor
/// 0x1af4, transitional device id, subsystem = virtio type. vmmci (type
/// 0xffff) always gets its own ids, which its drivers match on.
pub fn standard_identity(device_type: u16) -> Identity {
    if device_type == vmmci::DEVICE_TYPE {
        return vmmci::IDENTITY;
    }
    let (class, subclass) = match device_type {
        1 => (0x02, 0x00),
        2 => (0x01, 0x00),
        3 => (0x07, 0x80),
        _ => (0xff, 0x00),
    };
    Identity {
        vendor: 0x1af4,
        device: legacy_device_id(device_type),
        class,
        subclass,
        prog_if: 0,
        revision: 0,
        subsystem_vendor: 0x1af4,
        subsystem: device_type,
    }
}

/// The identity vmd gives the same device (`--vmd`): subsystem vendor
/// 0x0b5d and vmd's classes (net and rng as "system, other").
pub fn vmd_identity(device_type: u16) -> Identity {
    let mut id = standard_identity(device_type);
    if device_type == vmmci::DEVICE_TYPE {
        return id;
    }
    (id.class, id.subclass) = match device_type {
        1 | 4 => (0x08, 0x80),
        2 | 8 => (0x01, 0x00),
        // vmd has no virtio console; "communication, other" as elsewhere.
        3 => (0x07, 0x80),
        _ => (id.class, id.subclass),
    };
    id.subsystem_vendor = 0x0b5d;
    id
}

/// A virtio device behind the legacy PCI transport: the [`Core`] plus its
/// I/O BAR and PCI identity.
pub struct LegacyTransport {
    core: Core,
    slot: u8,
    config: ConfigSpace,
    bar_size: u64,
}

impl LegacyTransport {
    /// Wraps `device` as the function in `slot` with the standard virtio
    /// identity and a [`DEFAULT_BAR_SIZE`] I/O BAR.
    pub fn new(device: Box<dyn VirtioDevice>, slot: u8, hooks: Arc<dyn VmHooks>) -> Self {
        let id = standard_identity(device.device_type());
        Self::with_identity(device, slot, hooks, id, DEFAULT_BAR_SIZE)
    }

    /// Wraps `device` with PCI identity `id` (see [`vmd_identity`]) and an
    /// I/O BAR of `bar_size` bytes (vmd uses 4 KiB; rounded up to a power
    /// of two, at least [`DEFAULT_BAR_SIZE`]).
    pub fn with_identity(
        device: Box<dyn VirtioDevice>,
        slot: u8,
        hooks: Arc<dyn VmHooks>,
        id: Identity,
        bar_size: u64,
    ) -> Self {
        let mut config = ConfigSpace::new(id);
        let bar = config.add_bar(0, BarKind::Io, bar_size.max(DEFAULT_BAR_SIZE));
        config.set_interrupt(1, 0);
        let doorbell = Box::<PortDoorbell>::default();
        Self {
            core: Core::new(device, Version::Legacy, slot, hooks, 0, doorbell),
            slot,
            config,
            bar_size: bar.size,
        }
    }

    pub fn label(&self) -> &str {
        self.core.label()
    }

    /// The I/O BAR's size: how many ports the launcher places the BAR on.
    pub fn bar_size(&self) -> u64 {
        self.bar_size
    }

    /// Mutable config space, for the launcher to place BAR0 and INTx.
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// Creates the INTx irqfd; called once the launcher has wired the
    /// function.
    pub fn connect_interrupts(&mut self) -> std::io::Result<()> {
        let interrupt = Arc::new(Interrupt {
            // Never enabled: a legacy function has no MSI-X capability.
            msix: Arc::new(Mutex::new(Msix::new(0))),
            vectors: Vec::new(),
            intx: self.core.hooks().intx_irqfd(self.slot)?,
            isr: self.core.isr().clone(),
        });
        self.core.connect_interrupts(interrupt);
        Ok(())
    }

    fn read_header(&mut self, field: u64, name: &str, data: &mut [u8]) {
        let core = &self.core;
        let q = core.queue();
        let v: u32 = match field {
            reg::HOST_FEATURES => core.device_features(0),
            reg::GUEST_FEATURES => core.driver_features(0),
            reg::QUEUE_PFN => q
                .filter(|q| q.enabled)
                .map_or(0, |q| (q.desc >> PFN_SHIFT) as u32),
            reg::QUEUE_NUM => q.map_or(0, |q| u32::from(q.max)),
            reg::QUEUE_SEL => u32::from(core.queue_select()),
            reg::STATUS => u32::from(self.core.read_status()),
            reg::ISR => u32::from(core.read_isr()),
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        self.core.trace_register(false, name, v.into());
    }

    fn write_header(&mut self, field: u64, name: &str, data: &[u8]) {
        let mut b = [0u8; 4];
        b[..data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(b);
        self.core.trace_register(true, name, v.into());
        match field {
            reg::HOST_FEATURES | reg::QUEUE_NUM | reg::ISR => self.core.violate(
                Rule::LegacyHeaderAccess,
                format!("write of {v:#x} to read-only {name}"),
            ),
            reg::GUEST_FEATURES => self.core.write_driver_features(0, v),
            reg::QUEUE_PFN => {
                let max = self.core.queue().map_or(0, |q| q.max);
                let rings = (v != 0).then(|| ring_addresses(v, max));
                self.core
                    .place_legacy_queue(rings, &format!("queue_pfn = {v:#x}"))
            }
            reg::QUEUE_SEL => self.core.select_queue(v as u16),
            reg::QUEUE_NOTIFY => {
                let port = self.config.bar_address(0) + reg::QUEUE_NOTIFY;
                self.core.notify(v as u16, port)
            }
            reg::STATUS => {
                let port = self.config.bar_address(0) + reg::QUEUE_NOTIFY;
                self.core.write_status(v as u8, port)
            }
            _ => {}
        }
    }

    /// Where an access of `len` bytes at BAR0 `offset` goes: a header
    /// register at its own offset and width, or the device configuration
    /// at any width inside the BAR; anything else is reported.
    fn decode(&mut self, offset: u64, len: usize, dir: &str) -> Target {
        let width = len as u64;
        if offset < DEVICE_CFG {
            return match reg::field(offset) {
                Some((start, w, name)) if start == offset && w == len => {
                    Target::Header(start, name)
                }
                _ => {
                    self.core.violate(
                        Rule::LegacyHeaderAccess,
                        format!("{width}-byte {dir} at legacy header offset {offset}"),
                    );
                    Target::Refused
                }
            };
        }
        if offset + width > self.bar_size {
            self.core.violate(
                Rule::AccessOffset,
                format!("{width}-byte {dir} at {offset:#x} crosses the BAR's end"),
            );
            return Target::Refused;
        }
        Target::Config(offset - DEVICE_CFG)
    }
}

/// What a BAR0 access reaches.
enum Target {
    /// A header register: its offset and name.
    Header(u64, &'static str),
    /// The device configuration, at this offset into it.
    Config(u64),
    /// Nothing: the access broke a rule.
    Refused,
}

/// All queues share the QUEUE_NOTIFY port: one ioeventfd on it and, with
/// several queues, a thread that passes each kick on to every worker.
#[derive(Default)]
struct PortDoorbell {
    /// The registered eventfd and its port.
    registered: Option<(EventFd, u16)>,
    relay: Option<(EventFd, JoinHandle<()>)>,
}

impl Doorbell for PortDoorbell {
    fn connect(&mut self, hooks: &dyn VmHooks, names: Names, base: u64, kicks: &[(u16, &EventFd)]) {
        let label = names.label;
        let Ok(port) = u16::try_from(base) else {
            return log::error!("{label}: BAR0 is not a port address; notifications will exit");
        };
        let fd = match kicks {
            [(_, kick)] => kick.try_clone(),
            kicks => self.start_relay(names.threads, kicks),
        };
        let registered = fd.and_then(|fd| hooks.register_ioevent_pio(&fd, port).map(|()| fd));
        match registered {
            Ok(fd) => self.registered = Some((fd, port)),
            Err(e) => {
                log::warn!("{label}: no ioeventfd on port {port:#x}: {e}; notifications will exit")
            }
        }
    }

    fn disconnect(&mut self, hooks: &dyn VmHooks, label: &str) {
        if let Some((fd, port)) = self.registered.take() {
            if let Err(e) = hooks.unregister_ioevent_pio(&fd, port) {
                log::warn!("{label}: cannot unregister notify port {port:#x}: {e}");
            }
        }
        if let Some((stop, thread)) = self.relay.take() {
            let _ = stop.write(1);
            let _ = thread.join();
        }
    }
}

impl PortDoorbell {
    /// Starts the relay to every worker of `kicks`; returns the eventfd
    /// the port's notifications must signal.
    fn start_relay(
        &mut self,
        threads: &str,
        kicks: &[(u16, &EventFd)],
    ) -> std::io::Result<EventFd> {
        let notify = EventFd::new(libc::EFD_NONBLOCK)?;
        let kicks = kicks
            .iter()
            .map(|(_, k)| k.try_clone())
            .collect::<Result<Vec<_>, _>>()?;
        self.relay = Some(spawn_relay(&notify, kicks, format!("{threads}-kick"))?);
        Ok(notify)
    }
}

/// Passes each kick on `notify` to every worker's kick eventfd, until
/// the returned stop eventfd is written.
fn spawn_relay(
    notify: &EventFd,
    kicks: Vec<EventFd>,
    name: String,
) -> std::io::Result<(EventFd, JoinHandle<()>)> {
    const KICK: u64 = 0;
    const STOP: u64 = 1;
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let stop_rx = stop.try_clone()?;
    let notify = notify.try_clone()?;
    let epoll = Epoll::new()?;
    for (token, fd) in [(KICK, notify.as_raw_fd()), (STOP, stop_rx.as_raw_fd())] {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        crate::threads::started(crate::threads::ThreadKind::KickRelay);
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return log::error!("notify relay: epoll: {e}"),
            };
            for ev in &events[..n] {
                if ev.data() == STOP {
                    return;
                }
            }
            let _ = notify.read();
            for k in &kicks {
                let _ = k.write(1);
            }
        }
    })?;
    Ok((stop, thread))
}

impl PciFunction for LegacyTransport {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
        self.core.trace_pci_config(false, offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.core.trace_pci_config(true, offset, data);
        self.config.write(offset, data);
    }
}

impl PciTransport for LegacyTransport {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn bar_moved(&mut self, index: usize, base: Option<u64>) {
        if index == 0 {
            self.core.move_notify(base.map(|b| b + reg::QUEUE_NOTIFY));
        }
    }

    fn label(&self) -> &str {
        self.core.label()
    }
}

impl BarRegisters for LegacyTransport {
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match self.decode(offset, data.len(), "read") {
            Target::Header(field, name) => self.read_header(field, name, data),
            Target::Config(at) => self.core.read_config(at, data),
            Target::Refused => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match self.decode(offset, data.len(), "write") {
            Target::Header(field, name) => self.write_header(field, name, data),
            Target::Config(at) => self.core.write_config(at, data),
            Target::Refused => {}
        }
    }
}

/// vmmci's tests reach the shared test harness by its old path.
#[cfg(test)]
pub(crate) use super::testing;

#[cfg(test)]
mod tests;
