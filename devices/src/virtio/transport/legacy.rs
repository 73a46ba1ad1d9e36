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
//! ([`super::shared::Bar`]) or config mechanism #1 ([`super::shared::Function`]) and are
//! checked against [`Rule`]s; what the driver breaks goes to
//! [`VmHooks::report`]. On DRIVER_OK every queue with a PFN gets a
//! [`Worker`] thread; interrupts go out on the INTx line only.
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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::shared::{
    start_worker, status_in_order, status_kept, BarRegisters, QueueWork, Reporter,
};
use super::VmHooks;
use crate::pci::config::{BarKind, ConfigSpace, Identity};
use crate::pci::msix::Msix;
use crate::pci::root::PciFunction;
use crate::virtio::device::{status, ConfigSignal, VirtioDevice};
use crate::virtio::interrupt::{Interrupt, ISR_CONFIG, NO_VECTOR};
use crate::virtio::queue::CheckedQueue;
use crate::virtio::rules::{Rule, Violation};
use crate::virtio::vmmci;
use crate::virtio::worker::Worker;

/// I/O BAR size for ordinary devices: header plus 236 bytes of config.
pub const DEFAULT_BAR_SIZE: u64 = 0x100;
/// VIRTIO_PCI_VRING_ALIGN: the used ring starts on the next such boundary.
pub const VRING_ALIGN: u64 = 4096;
/// QUEUE_PFN is in units of 4 KiB (VIRTIO_PCI_QUEUE_ADDR_SHIFT).
const PFN_SHIFT: u32 = 12;
/// Where the device-specific configuration starts.
pub const DEVICE_CFG: u64 = 20;

/// Header register offsets.
mod reg {
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

/// One queue as the driver programmed it.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    /// The device's size, which legacy drivers cannot change.
    max: u16,
    /// 0: no ring.
    pfn: u32,
}

/// Sets ISR bit 1 and pulses INTx, for devices' own config changes.
struct IntxConfigSignal(Arc<Interrupt>);

impl ConfigSignal for IntxConfigSignal {
    fn raise(&self) {
        self.0.signal(NO_VECTOR, ISR_CONFIG);
    }
    fn clear(&self) {
        self.0.isr.fetch_and(!ISR_CONFIG, Ordering::SeqCst);
    }
}

/// The QUEUE_NOTIFY port's ioeventfd and, with several queues, the
/// thread that passes each kick on to every worker.
struct Notify {
    fd: EventFd,
    port: u16,
    /// Whether KVM took the registration (else notifications reach
    /// [`LegacyTransport::bar_write`], which kicks the worker itself).
    registered: bool,
    relay: Option<(EventFd, JoinHandle<()>)>,
}

/// A virtio device behind the legacy PCI transport.
pub struct LegacyTransport {
    device: Box<dyn VirtioDevice>,
    /// "virtio-rng 00:03.0", for reports.
    label: String,
    slot: u8,
    hooks: Arc<dyn VmHooks>,
    config: ConfigSpace,
    bar_size: u64,
    isr: Arc<AtomicU8>,
    /// Where violations go; also keeps DEVICE_NEEDS_RESET for `--lenient`.
    reporter: Reporter,
    interrupt: Option<Arc<Interrupt>>,
    guest_features: u32,
    /// GUEST_FEATURES was written since the last reset: legacy drivers
    /// negotiate before they place rings.
    features_written: bool,
    status: u8,
    queue_sel: u16,
    queues: Vec<QueueRegs>,
    /// Running workers with their own kick eventfds and queue indices.
    workers: Vec<(Worker, EventFd, u16)>,
    notify: Option<Notify>,
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
        let label = format!("{} 00:{slot:02x}.0", device.name());
        let reporter = Reporter::new(hooks.clone(), label.clone());
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueRegs { max, pfn: 0 })
            .collect();
        Self {
            device,
            label,
            slot,
            hooks,
            config,
            bar_size: bar.size,
            isr: Arc::new(AtomicU8::new(0)),
            reporter,
            interrupt: None,
            guest_features: 0,
            features_written: false,
            status: 0,
            queue_sel: 0,
            queues,
            workers: Vec::new(),
            notify: None,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The I/O BAR's size: how many ports the launcher places the BAR on.
    pub fn bar_size(&self) -> u64 {
        self.bar_size
    }

    /// Mutable config space, for the launcher to place BAR0 and INTx.
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// Creates the INTx irqfd and hands the device its [`ConfigSignal`];
    /// called once the launcher has wired the function.
    pub fn connect_interrupts(&mut self) -> std::io::Result<()> {
        let interrupt = Arc::new(Interrupt {
            // Never enabled: a legacy function has no MSI-X capability.
            msix: Arc::new(Mutex::new(Msix::new(0))),
            vectors: Vec::new(),
            intx: self.hooks.intx_irqfd(self.slot)?,
            isr: self.isr.clone(),
        });
        self.device
            .set_config_signal(Arc::new(IntxConfigSignal(interrupt.clone())));
        self.interrupt = Some(interrupt);
        Ok(())
    }

    /// Feature bits offered: the device's low 32 (the only ones a legacy
    /// driver can see), never VIRTIO_F_VERSION_1.
    fn offered(&self) -> u32 {
        self.device.features() as u32
    }

    fn violate(&mut self, rule: Rule, detail: String) {
        self.raise(Violation::new(rule, detail));
    }

    fn raise(&mut self, v: Violation) {
        // No MSI-X: the configuration interrupt is INTx with ISR bit 1.
        let config = self.interrupt.as_deref().map(|i| (i, NO_VECTOR));
        self.reporter.raise(v, config);
    }

    /// The status the driver reads.
    fn status(&self) -> u8 {
        self.reporter.status(self.status)
    }

    fn notify_port(&self) -> Option<u16> {
        u16::try_from(self.config.bar_address(0) + reg::QUEUE_NOTIFY).ok()
    }

    fn read_header(&mut self, field: u64, name: &str, data: &mut [u8]) {
        let q = self.queues.get(usize::from(self.queue_sel)).copied();
        let v: u32 = match field {
            reg::HOST_FEATURES => self.offered(),
            reg::GUEST_FEATURES => self.guest_features,
            reg::QUEUE_PFN => q.map_or(0, |q| q.pfn),
            reg::QUEUE_NUM => q.map_or(0, |q| u32::from(q.max)),
            reg::QUEUE_SEL => u32::from(self.queue_sel),
            reg::STATUS => u32::from(self.status()),
            reg::ISR => u32::from(self.isr.swap(0, Ordering::SeqCst)),
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        log::debug!("{}: read {name} = {v:#x}", self.label);
    }

    fn write_header(&mut self, field: u64, name: &str, data: &[u8]) {
        let mut b = [0u8; 4];
        b[..data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(b);
        log::debug!("{}: write {name} = {v:#x}", self.label);
        match field {
            reg::HOST_FEATURES | reg::QUEUE_NUM => self.violate(
                Rule::ReadOnlyWrite,
                format!("write of {v:#x} to read-only {name}"),
            ),
            reg::ISR => self.violate(Rule::IsrWrite, format!("wrote {v:#04x} to ISR")),
            reg::GUEST_FEATURES => self.write_features(v),
            reg::QUEUE_PFN => self.write_pfn(v),
            reg::QUEUE_SEL => self.queue_sel = v as u16,
            reg::QUEUE_NOTIFY => self.notify(v as u16),
            reg::STATUS => self.write_status(v as u8),
            _ => {}
        }
    }

    fn write_features(&mut self, v: u32) {
        if self.status & status::DRIVER_OK != 0 {
            return self.violate(
                Rule::FeatureAfterFeaturesOk,
                format!("guest_features = {v:#x} after DRIVER_OK"),
            );
        }
        let extra = v & !self.offered();
        if extra != 0 {
            self.violate(
                Rule::FeatureNotOffered,
                format!(
                    "driver accepted {v:#x}, device offered {:#x}",
                    self.offered()
                ),
            );
        }
        self.guest_features = v & self.offered();
        self.features_written = true;
        log::debug!(
            "{}: features negotiated: {:#x}",
            self.label,
            self.guest_features
        );
    }

    fn write_pfn(&mut self, pfn: u32) {
        let q = usize::from(self.queue_sel);
        let Some(r) = self.queues.get(q).copied() else {
            let n = self.queues.len();
            return self.violate(
                Rule::QueueSelectOutOfRange,
                format!("queue_pfn = {pfn:#x} for queue {q}, device has {n} queues"),
            );
        };
        if self.status & status::DRIVER_OK != 0 {
            return self.violate(
                Rule::QueueSetupAfterDriverOk,
                format!("queue {q}: queue_pfn = {pfn:#x} after DRIVER_OK"),
            );
        }
        if pfn == 0 {
            log::debug!("{}: queue {q} disabled", self.label);
            self.queues[q].pfn = 0;
            return;
        }
        if !self.features_written {
            return self.violate(
                Rule::LegacyQueuePfnBeforeFeatures,
                format!("queue {q}: queue_pfn = {pfn:#x} before guest_features was written"),
            );
        }
        let (desc, avail, used) = ring_addresses(pfn, r.max);
        let mem = self.hooks.memory();
        let features = u64::from(self.guest_features);
        match CheckedQueue::new(q as u16, r.max, r.max, desc, avail, used, features, &mem) {
            Ok(_) => {
                log::debug!(
                    "{}: queue {q}: size {}, desc {desc:#x}, avail {avail:#x}, used {used:#x}",
                    self.label,
                    r.max
                );
                self.queues[q].pfn = pfn;
            }
            Err(v) => self.raise(v.on_queue(q as u16)),
        }
    }

    /// A QUEUE_NOTIFY write that KVM did not take: before DRIVER_OK, or
    /// on a host where the ioeventfd could not be registered.
    fn notify(&mut self, q: u16) {
        if self.status & status::DRIVER_OK == 0 {
            return self.violate(
                Rule::NotifyBeforeDriverOk,
                format!("notify for queue {q}, status {:#04x}", self.status),
            );
        }
        let active = self.queues.get(usize::from(q)).is_some_and(|r| r.pfn != 0);
        let worker = self
            .workers
            .iter()
            .find(|(_, _, wq)| *wq == q)
            .map(|(_, kick, _)| kick);
        match worker {
            Some(kick) if active => {
                let _ = kick.write(1);
            }
            _ => self.violate(
                Rule::NotifyBadQueue,
                format!("notify for queue {q}, which has no ring"),
            ),
        }
    }

    fn write_status(&mut self, new: u8) {
        let old = self.status();
        if new == 0 {
            log::debug!("{}: reset by the driver", self.label);
            return self.reset();
        }
        log::debug!("{}: status {old:#04x} -> {new:#04x}", self.label);
        let added = new & !old;
        // No FEATURES_OK step in 0.9.5: a driver that sets it anyway is
        // harmless, so it is stored but never required.
        let checked = status_kept(old, new)
            .and_then(|()| status_in_order(old, new, None, status::ACKNOWLEDGE | status::DRIVER));
        if let Err((rule, detail)) = checked {
            return self.violate(rule, detail);
        }
        self.status = new & !status::DEVICE_NEEDS_RESET;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = self.hooks.memory();
        let Some(interrupt) = self.interrupt.clone() else {
            log::error!("{}: DRIVER_OK before interrupts were wired", self.label);
            return;
        };
        let features = u64::from(self.guest_features);
        let mut handlers = self.device.activate(features).into_iter();
        let label = self.label.clone();
        for (q, r) in self.queues.clone().into_iter().enumerate() {
            let Some(handler) = handlers.next() else {
                break;
            };
            if r.pfn == 0 {
                continue;
            }
            let index = q as u16;
            let (desc, avail, used) = ring_addresses(r.pfn, r.max);
            let queue =
                match CheckedQueue::new(index, r.max, r.max, desc, avail, used, features, &mem) {
                    Ok(queue) => queue,
                    Err(v) => {
                        self.raise(v.on_queue(index));
                        break;
                    }
                };
            let work = QueueWork {
                index,
                queue,
                handler,
                vector: NO_VECTOR,
            };
            match start_worker(
                self.device.name(),
                work,
                &interrupt,
                NO_VECTOR,
                &self.reporter,
                &mem,
            ) {
                Ok((worker, kick)) => self.workers.push((worker, kick, index)),
                Err(e) => {
                    log::error!("{label}: cannot start queue {q}'s worker: {e}");
                    break;
                }
            }
        }
        // Whatever started gets its notifications, even after an error.
        if !self.workers.is_empty() {
            self.notify = self.connect_notify();
        }
        log::debug!(
            "{label}: DRIVER_OK, {} queue workers running",
            self.workers.len()
        );
    }

    /// Puts one ioeventfd on the QUEUE_NOTIFY port for all workers.
    fn connect_notify(&self) -> Option<Notify> {
        let label = &self.label;
        let Some(port) = self.notify_port() else {
            log::error!("{label}: BAR0 is not a port address; notifications will exit");
            return None;
        };
        let (fd, relay) = match self.workers.as_slice() {
            [(_, kick, _)] => (kick.try_clone().ok()?, None),
            workers => {
                let fd = EventFd::new(libc::EFD_NONBLOCK).ok()?;
                let kicks = workers
                    .iter()
                    .map(|(_, k, _)| k.try_clone())
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                let relay = match spawn_relay(&fd, kicks, format!("{}-notify", self.device.name()))
                {
                    Ok(r) => r,
                    Err(e) => {
                        log::error!("{label}: no notify relay: {e}; notifications will exit");
                        return None;
                    }
                };
                (fd, Some(relay))
            }
        };
        let registered = match self.hooks.register_ioevent_pio(&fd, port) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("{label}: no ioeventfd on port {port:#x}: {e}; notifications will exit");
                false
            }
        };
        Some(Notify {
            fd,
            port,
            registered,
            relay,
        })
    }

    /// Stops the workers and the relay, drops the ioeventfd.
    fn stop_workers(&mut self) {
        if let Some(n) = self.notify.take() {
            if n.registered {
                if let Err(e) = self.hooks.unregister_ioevent_pio(&n.fd, n.port) {
                    log::warn!(
                        "{}: cannot unregister notify port {:#x}: {e}",
                        self.label,
                        n.port
                    );
                }
            }
            if let Some((stop, thread)) = n.relay {
                let _ = stop.write(1);
                let _ = thread.join();
            }
        }
        for (worker, _, _) in self.workers.drain(..) {
            worker.stop();
        }
    }

    /// Stops the workers and returns to the state after power-on.
    fn reset(&mut self) {
        self.stop_workers();
        self.device.reset();
        self.status = 0;
        self.reporter.clear();
        self.guest_features = 0;
        self.features_written = false;
        self.queue_sel = 0;
        self.isr.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            q.pfn = 0;
        }
    }

    /// A BAR0 read at `offset`.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if offset < DEVICE_CFG {
            return match reg::field(offset) {
                Some((start, width, name)) if start == offset && width == data.len() => {
                    self.read_header(start, name, data)
                }
                _ => self.violate(
                    Rule::AccessWidth,
                    format!("{len}-byte read at legacy header offset {offset}"),
                ),
            };
        }
        if offset + len > self.bar_size {
            return self.violate(
                Rule::AccessOffset,
                format!("{len}-byte read at {offset:#x} crosses the BAR's end"),
            );
        }
        self.device
            .read_config((offset - DEVICE_CFG) as usize, data);
        log::debug!(
            "{}: read config {:#x} = {data:02x?}",
            self.label,
            offset - DEVICE_CFG
        );
    }

    /// A BAR0 write at `offset`.
    pub fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if offset < DEVICE_CFG {
            return match reg::field(offset) {
                Some((start, width, name)) if start == offset && width == data.len() => {
                    self.write_header(start, name, data)
                }
                _ => self.violate(
                    Rule::AccessWidth,
                    format!("{len}-byte write at legacy header offset {offset}"),
                ),
            };
        }
        if offset + len > self.bar_size {
            return self.violate(
                Rule::AccessOffset,
                format!("{len}-byte write at {offset:#x} crosses the BAR's end"),
            );
        }
        log::debug!(
            "{}: write config {:#x} = {data:02x?}",
            self.label,
            offset - DEVICE_CFG
        );
        self.device
            .write_config((offset - DEVICE_CFG) as usize, data);
    }
}

impl Drop for LegacyTransport {
    fn drop(&mut self) {
        self.stop_workers();
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
        log::debug!("{}: config read {offset:#04x} = {data:02x?}", self.label);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        log::debug!("{}: config write {offset:#04x} = {data:02x?}", self.label);
        self.config.write(offset, data);
    }
}

/// A [`VmHooks`] without KVM, for this module's tests and vmmci's.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use crate::pci::msix::MsiMessage;
    use crate::virtio::rules::{Rule, Violation};
    use crate::virtio::transport::VmHooks;

    pub const RAM: usize = 1 << 20;

    pub struct FakeHooks {
        pub mem: GuestMemoryMmap,
        pub lenient: bool,
        pub violations: Mutex<Vec<Violation>>,
        /// A clone of the INTx irqfd handed out, to count pulses.
        pub intx: Mutex<Option<EventFd>>,
        /// Registered port ioeventfds (clones), and unregistered ports.
        pub ioevents: Mutex<Vec<(u16, EventFd)>>,
        pub unregistered: Mutex<Vec<u16>>,
    }

    impl FakeHooks {
        pub fn new(lenient: bool) -> Self {
            Self {
                mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap(),
                lenient,
                violations: Mutex::new(Vec::new()),
                intx: Mutex::new(None),
                ioevents: Mutex::new(Vec::new()),
                unregistered: Mutex::new(Vec::new()),
            }
        }

        /// The rules broken so far, emptying the list.
        pub fn take(&self) -> Vec<Rule> {
            let v = std::mem::take(&mut *self.violations.lock().unwrap());
            v.into_iter().map(|v| v.rule).collect()
        }

        /// INTx pulses since the last call.
        pub fn pulses(&self) -> u64 {
            let g = self.intx.lock().unwrap();
            g.as_ref().and_then(|fd| fd.read().ok()).unwrap_or(0)
        }
    }

    impl VmHooks for FakeHooks {
        fn memory(&self) -> GuestMemoryMmap {
            self.mem.clone()
        }
        fn register_ioevent(&self, _: &EventFd, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn unregister_ioevent(&self, _: &EventFd, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn register_ioevent_pio(&self, fd: &EventFd, port: u16) -> std::io::Result<()> {
            self.ioevents.lock().unwrap().push((port, fd.try_clone()?));
            Ok(())
        }
        fn unregister_ioevent_pio(&self, _: &EventFd, port: u16) -> std::io::Result<()> {
            self.unregistered.lock().unwrap().push(port);
            Ok(())
        }
        fn msi_irqfd(&self, _: u8, _: u16) -> std::io::Result<EventFd> {
            EventFd::new(libc::EFD_NONBLOCK)
        }
        fn set_msi_route(&self, _: u8, _: u16, _: MsiMessage) -> std::io::Result<()> {
            Ok(())
        }
        fn intx_irqfd(&self, _: u8) -> std::io::Result<EventFd> {
            let fd = EventFd::new(libc::EFD_NONBLOCK)?;
            *self.intx.lock().unwrap() = Some(fd.try_clone()?);
            Ok(fd)
        }
        fn report(&self, violation: &Violation) {
            self.violations.lock().unwrap().push(violation.clone());
        }
        fn lenient(&self) -> bool {
            self.lenient
        }
    }

    /// Register-level access to a transport, as a driver does it.
    pub trait Regs {
        fn r(&mut self, offset: u64, width: usize) -> u32;
        fn w(&mut self, offset: u64, width: usize, v: u32);
    }

    impl Regs for super::LegacyTransport {
        fn r(&mut self, offset: u64, width: usize) -> u32 {
            let mut b = [0u8; 4];
            self.bar_read(offset, &mut b[..width]);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, offset: u64, width: usize, v: u32) {
            self.bar_write(offset, &v.to_le_bytes()[..width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::testing::{FakeHooks, Regs, RAM};
    use super::*;
    use crate::pci::config::reg as pcireg;
    use crate::virtio::device::{feature, QueueHandler};
    use crate::virtio::rng::Rng;

    const BASE: u64 = 0xc000;
    const S: u8 = status::ACKNOWLEDGE;
    const SD: u8 = S | status::DRIVER;
    const SDO: u8 = SD | status::DRIVER_OK;

    #[derive(Default)]
    struct Log {
        activated: Option<u64>,
        resets: usize,
    }

    /// A device with `n` queues of 64 whose handlers count their calls.
    struct Fake {
        features: u64,
        sizes: Vec<u16>,
        config: Vec<u8>,
        log: Arc<Mutex<Log>>,
        counts: Arc<Vec<AtomicUsize>>,
    }

    struct Counting(Arc<Vec<AtomicUsize>>, usize);

    impl QueueHandler for Counting {
        fn process(
            &mut self,
            _: &mut CheckedQueue,
            _: &GuestMemoryMmap,
        ) -> Result<bool, Violation> {
            self.0[self.1].fetch_add(1, Ordering::SeqCst);
            Ok(false)
        }
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u16 {
            4
        }
        fn name(&self) -> &'static str {
            "fake"
        }
        fn features(&self) -> u64 {
            self.features
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn read_config(&self, offset: usize, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset + i).copied().unwrap_or(0);
            }
        }
        fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>> {
            self.log.lock().unwrap().activated = Some(features);
            (0..self.sizes.len())
                .map(|q| Box::new(Counting(self.counts.clone(), q)) as Box<dyn QueueHandler>)
                .collect()
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
    }

    fn fake(queues: usize) -> (Fake, Arc<Mutex<Log>>, Arc<Vec<AtomicUsize>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let counts = Arc::new((0..queues).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let dev = Fake {
            features: feature::VERSION_1 | 0b101,
            sizes: vec![64; queues],
            config: (0..40).map(|i| 0xa0 + i as u8).collect(),
            log: log.clone(),
            counts: counts.clone(),
        };
        (dev, log, counts)
    }

    fn place(device: Box<dyn VirtioDevice>, hooks: &Arc<FakeHooks>) -> LegacyTransport {
        let mut t = LegacyTransport::new(device, 3, hooks.clone());
        t.config_mut().set_bar_address(0, BASE);
        t.config_mut().set_interrupt(1, 19);
        t.connect_interrupts().unwrap();
        t
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn identity_and_io_bar() {
        for (ty, dev) in [(1, 0x1000), (2, 0x1001), (3, 0x1003), (4, 0x1005)] {
            let id = standard_identity(ty);
            assert_eq!((id.vendor, id.device, id.revision), (0x1af4, dev, 0));
            assert_eq!((id.subsystem_vendor, id.subsystem), (0x1af4, ty));
        }
        let id = vmd_identity(4);
        assert_eq!(
            (id.subsystem_vendor, id.class, id.subclass),
            (0x0b5d, 0x08, 0x80)
        );
        assert_eq!(
            (vmd_identity(2).class, vmd_identity(2).subclass),
            (0x01, 0x00)
        );
        assert_eq!(vmd_identity(1).device, 0x1000);

        let hooks = Arc::new(FakeHooks::new(false));
        let mut t = place(Box::new(Rng), &hooks);
        let mut b = [0u8; 4];
        t.config_read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1005_1af4);
        t.config_read(pcireg::SUBSYSTEM_VENDOR_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0004_1af4);
        t.config_read(pcireg::REVISION, &mut b[..1]);
        assert_eq!(b[0], 0);
        t.config_read(pcireg::CAPABILITIES, &mut b[..1]);
        assert_eq!(b[0], 0, "no capabilities");
        t.config_read(pcireg::BAR0, &mut b);
        assert_eq!(u32::from_le_bytes(b), BASE as u32 | 1, "I/O BAR");
        t.config_write(pcireg::BAR0, &[0xff; 4]);
        t.config_read(pcireg::BAR0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xffff_ff01, "256 ports");
        assert_eq!(t.bar_size(), DEFAULT_BAR_SIZE);
        assert!(hooks.take().is_empty());
    }

    #[test]
    fn header_registers_need_their_own_offset_and_width() {
        let hooks = Arc::new(FakeHooks::new(false));
        let (dev, _, _) = fake(2);
        let mut t = place(Box::new(dev), &hooks);
        for off in 0..DEVICE_CFG {
            for width in [1, 2, 4] {
                let exact = reg::field(off).is_some_and(|(s, w, _)| s == off && w == width);
                let v = t.r(off, width);
                let rules = hooks.take();
                if exact {
                    assert!(rules.is_empty(), "{width}-byte read at {off}: {rules:?}");
                } else {
                    assert_eq!(rules, [Rule::AccessWidth], "{width}-byte read at {off}");
                    assert_eq!(v, 0);
                }
            }
        }
        assert_eq!(t.r(reg::HOST_FEATURES, 4), 0b101, "no VERSION_1");
        assert_eq!(t.r(reg::QUEUE_NUM, 2), 64);
        t.w(reg::QUEUE_SEL, 2, 1);
        assert_eq!(t.r(reg::QUEUE_SEL, 2), 1);
        assert_eq!(t.r(reg::QUEUE_NUM, 2), 64);
        t.w(reg::QUEUE_SEL, 2, 7);
        assert_eq!(t.r(reg::QUEUE_NUM, 2), 0, "no such queue");
        t.w(reg::STATUS, 4, S.into());
        assert_eq!(hooks.take(), [Rule::AccessWidth]);
        assert!(hooks.take().is_empty());
    }

    #[test]
    fn device_config_reads_at_any_width_and_offset() {
        let hooks = Arc::new(FakeHooks::new(false));
        let (dev, _, _) = fake(1);
        let mut t = place(Box::new(dev), &hooks);
        for off in 0..36u64 {
            for width in [1usize, 2, 4] {
                let want: Vec<u8> = (0..width)
                    .map(|i| 0xa0 + (off as usize + i) as u8)
                    .collect();
                let mut got = vec![0u8; width];
                t.bar_read(DEVICE_CFG + off, &mut got);
                assert_eq!(got, want, "{width} bytes at config {off}");
            }
        }
        let mut tail = [0u8; 4];
        t.bar_read(DEFAULT_BAR_SIZE - 2, &mut tail);
        assert_eq!(hooks.take(), [Rule::AccessOffset]);
    }

    #[test]
    fn feature_negotiation() {
        let hooks = Arc::new(FakeHooks::new(false));
        let (dev, log, _) = fake(0);
        let mut t = place(Box::new(dev), &hooks);
        t.w(reg::STATUS, 1, SD.into());
        t.w(reg::GUEST_FEATURES, 4, 0b110);
        assert_eq!(hooks.take(), [Rule::FeatureNotOffered]);
        assert_eq!(t.r(reg::GUEST_FEATURES, 4), 0b100, "only offered bits kept");
        t.w(reg::GUEST_FEATURES, 4, 0b001);
        assert_eq!(t.r(reg::GUEST_FEATURES, 4), 0b001);
        t.w(reg::STATUS, 1, SDO.into());
        assert!(hooks.take().is_empty());
        assert_eq!(log.lock().unwrap().activated, Some(0b001));
        t.w(reg::GUEST_FEATURES, 4, 0b101);
        assert_eq!(hooks.take(), [Rule::FeatureAfterFeaturesOk]);
        t.w(reg::HOST_FEATURES, 4, 0);
        t.w(reg::QUEUE_NUM, 2, 16);
        t.w(reg::ISR, 1, 0);
        assert_eq!(
            hooks.take(),
            [Rule::ReadOnlyWrite, Rule::ReadOnlyWrite, Rule::IsrWrite]
        );
    }

    #[test]
    fn ring_layout_from_pfn() {
        assert_eq!(ring_addresses(0x10, 256), (0x10000, 0x11000, 0x12000));
        assert_eq!(ring_addresses(0x10, 64), (0x10000, 0x10400, 0x11000));
        // 16 entries: avail ends at 0x100 + 6 + 32, used on the next page.
        assert_eq!(ring_addresses(1, 16), (0x1000, 0x1100, 0x2000));
    }

    /// A whole request through the rings at the PFN's layout: the rng
    /// worker fills the buffer, the used ring is where Linux expects it,
    /// INTx fires with ISR bit 0.
    #[test]
    fn rng_request_through_legacy_rings() {
        let hooks = Arc::new(FakeHooks::new(false));
        let mut t = place(Box::new(Rng), &hooks);
        let mem = hooks.mem.clone();
        let (desc, avail, used) = ring_addresses(0x10, 256);
        mem.write_obj(0x20000u64, GuestAddress(desc)).unwrap();
        mem.write_obj(16u32, GuestAddress(desc + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap(); // WRITE
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap(); // ring[0]
        mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap(); // idx
        t.w(reg::STATUS, 1, SD.into());
        t.w(reg::GUEST_FEATURES, 4, 0);
        t.w(reg::QUEUE_SEL, 2, 0);
        assert_eq!(t.r(reg::QUEUE_NUM, 2), 256);
        t.w(reg::QUEUE_PFN, 4, 0x10);
        assert_eq!(t.r(reg::QUEUE_PFN, 4), 0x10);
        t.w(reg::STATUS, 1, SDO.into());
        assert!(hooks.take().is_empty());
        let ioevents = hooks.ioevents.lock().unwrap().len();
        assert_eq!(ioevents, 1);
        assert_eq!(hooks.ioevents.lock().unwrap()[0].0, BASE as u16 + 16);
        // Without KVM the notify write reaches the transport, which kicks.
        t.w(reg::QUEUE_NOTIFY, 2, 0);
        wait_for("used ring", || {
            mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap() == 1
        });
        assert_eq!(mem.read_obj::<u32>(GuestAddress(used + 4)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(used + 8)).unwrap(), 16);
        wait_for("interrupt", || hooks.pulses() > 0);
        assert_eq!(t.r(reg::ISR, 1), 1);
        assert_eq!(t.r(reg::ISR, 1), 0, "read clears");
        assert!(hooks.take().is_empty());
    }

    #[test]
    fn one_ioeventfd_wakes_every_queue() {
        let hooks = Arc::new(FakeHooks::new(false));
        let (dev, _, counts) = fake(3);
        let mut t = place(Box::new(dev), &hooks);
        t.w(reg::STATUS, 1, SD.into());
        t.w(reg::GUEST_FEATURES, 4, 0);
        for (q, pfn) in [(0, 0x10), (2, 0x20)] {
            t.w(reg::QUEUE_SEL, 2, q);
            t.w(reg::QUEUE_PFN, 4, pfn);
        }
        t.w(reg::STATUS, 1, SDO.into());
        assert!(hooks.take().is_empty());
        let fd = {
            let ev = hooks.ioevents.lock().unwrap();
            assert_eq!(ev.len(), 1, "one port, one ioeventfd");
            ev[0].1.try_clone().unwrap()
        };
        fd.write(1).unwrap();
        wait_for("both workers", || {
            counts[0].load(Ordering::SeqCst) > 0 && counts[2].load(Ordering::SeqCst) > 0
        });
        assert_eq!(counts[1].load(Ordering::SeqCst), 0, "queue 1 has no ring");
        t.w(reg::QUEUE_NOTIFY, 2, 1);
        assert_eq!(hooks.take(), [Rule::NotifyBadQueue]);
        t.w(reg::STATUS, 1, 0);
        assert_eq!(*hooks.unregistered.lock().unwrap(), [BASE as u16 + 16]);
    }

    #[test]
    fn queue_pfn_rules() {
        let hooks = Arc::new(FakeHooks::new(false));
        let (dev, _, _) = fake(1);
        let mut t = place(Box::new(dev), &hooks);
        t.w(reg::STATUS, 1, SD.into());
        t.w(reg::QUEUE_PFN, 4, 0x10);
        assert_eq!(hooks.take(), [Rule::LegacyQueuePfnBeforeFeatures]);
        assert_eq!(t.r(reg::QUEUE_PFN, 4), 0);
        t.w(reg::GUEST_FEATURES, 4, 0);
        t.w(reg::QUEUE_PFN, 4, (RAM as u32) >> 12);
        assert_eq!(hooks.take(), [Rule::QueueAddressOutsideMemory]);
        t.w(reg::QUEUE_SEL, 2, 1);
        t.w(reg::QUEUE_PFN, 4, 0x10);
        assert_eq!(hooks.take(), [Rule::QueueSelectOutOfRange]);
        t.w(reg::QUEUE_SEL, 2, 0);
        t.w(reg::QUEUE_NOTIFY, 2, 0);
        assert_eq!(hooks.take(), [Rule::NotifyBeforeDriverOk]);
        t.w(reg::QUEUE_PFN, 4, 0x10);
        t.w(reg::STATUS, 1, SDO.into());
        t.w(reg::QUEUE_PFN, 4, 0);
        assert_eq!(hooks.take(), [Rule::QueueSetupAfterDriverOk]);
        assert_eq!(t.r(reg::QUEUE_PFN, 4), 0x10);
    }

    #[test]
    fn status_rules_and_reset() {
        let hooks = Arc::new(FakeHooks::new(false));
        let (dev, log, _) = fake(1);
        let mut t = place(Box::new(dev), &hooks);
        t.w(reg::STATUS, 1, (S | status::DRIVER_OK).into());
        assert_eq!(hooks.take(), [Rule::StatusOrder]);
        t.w(reg::STATUS, 1, SD.into());
        t.w(reg::STATUS, 1, S.into());
        assert_eq!(hooks.take(), [Rule::StatusClearedBit]);
        t.w(reg::GUEST_FEATURES, 4, 1);
        t.w(reg::QUEUE_PFN, 4, 0x10);
        t.w(reg::STATUS, 1, SDO.into());
        assert_eq!(t.r(reg::STATUS, 1), u32::from(SDO));
        t.w(reg::STATUS, 1, 0);
        assert!(hooks.take().is_empty());
        assert_eq!(log.lock().unwrap().resets, 1);
        assert_eq!(t.r(reg::STATUS, 1), 0);
        assert_eq!(t.r(reg::GUEST_FEATURES, 4), 0);
        assert_eq!(t.r(reg::QUEUE_PFN, 4), 0);
        // After a reset the driver has to negotiate again first.
        t.w(reg::STATUS, 1, SD.into());
        t.w(reg::QUEUE_PFN, 4, 0x10);
        assert_eq!(hooks.take(), [Rule::LegacyQueuePfnBeforeFeatures]);
    }

    #[test]
    fn lenient_sets_needs_reset_and_config_interrupt() {
        let hooks = Arc::new(FakeHooks::new(true));
        let (dev, _, _) = fake(1);
        let mut t = place(Box::new(dev), &hooks);
        t.w(reg::ISR, 1, 1);
        assert_eq!(hooks.take(), [Rule::IsrWrite]);
        assert_ne!(t.r(reg::STATUS, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(hooks.pulses(), 1);
        assert_eq!(t.r(reg::ISR, 1), u32::from(ISR_CONFIG));
        t.w(reg::STATUS, 1, 0);
        assert_eq!(t.r(reg::STATUS, 1), 0);
    }
}

impl BarRegisters for LegacyTransport {
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        LegacyTransport::bar_read(self, offset, data)
    }
    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        LegacyTransport::bar_write(self, offset, data)
    }
}
