//! The virtio 1.0 PCI transport ("modern", spec §4.1).
//!
//! Turns any [`VirtioDevice`] into a PCI function: vendor 0x1af4, device
//! 0x1040 + type, with vendor capabilities that point into one memory BAR:
//!
//! | BAR0 offset | structure |
//! |---|---|
//! | 0x0000 | common configuration (features, status, queue setup) |
//! | 0x1000 | ISR status |
//! | 0x2000 | device-specific configuration |
//! | 0x3000 | notifications, 4 bytes per queue |
//! | 0x4000 | MSI-X table; PBA at 0x6000 |
//!
//! Every driver access arrives here from a vCPU (through the MMIO bus or
//! config mechanism #1) and is checked against [`Rule`]s. On DRIVER_OK the
//! enabled queues get ioeventfds on their notify addresses and one
//! [`Worker`] thread each; a reset stops and joins them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::shared::{
    start_worker, status_in_order, status_kept, BarRegisters, QueueWork, Reporter,
};
use super::VmHooks;
use crate::bus::lock;
use crate::pci::config::{BarKind, ConfigSpace, Identity};
use crate::pci::msix::{self, Msix, MsixChange};
use crate::pci::root::PciFunction;
use crate::virtio::device::{feature, status, VirtioDevice};
use crate::virtio::interrupt::{Interrupt, NO_VECTOR};
use crate::virtio::queue::CheckedQueue;
use crate::virtio::rules::{Rule, Violation};
use crate::virtio::worker::Worker;

pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_MAX: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x6000;

const VENDOR_CAP: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// Common configuration fields: (offset, width, writable).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;

    /// The field's name, for `--verbose` traces.
    pub fn name(offset: u64) -> &'static str {
        match offset {
            0x00 => "device_feature_select",
            0x04 => "device_feature",
            0x08 => "driver_feature_select",
            0x0c => "driver_feature",
            0x10 => "msix_config",
            0x12 => "num_queues",
            0x14 => "device_status",
            0x15 => "config_generation",
            0x16 => "queue_select",
            0x18 => "queue_size",
            0x1a => "queue_msix_vector",
            0x1c => "queue_enable",
            0x1e => "queue_notify_off",
            0x20 => "queue_desc_lo",
            0x24 => "queue_desc_hi",
            0x28 => "queue_driver_lo",
            0x2c => "queue_driver_hi",
            0x30 => "queue_device_lo",
            0x34 => "queue_device_hi",
            _ => "?",
        }
    }

    /// The field containing `offset`: (start, width in bytes, writable).
    pub fn field(offset: u64) -> Option<(u64, usize, bool)> {
        Some(match offset {
            0x00..=0x03 => (0x00, 4, true),
            0x04..=0x07 => (0x04, 4, false),
            0x08..=0x0b => (0x08, 4, true),
            0x0c..=0x0f => (0x0c, 4, true),
            0x10..=0x11 => (0x10, 2, true),
            0x12..=0x13 => (0x12, 2, false),
            0x14 => (0x14, 1, true),
            0x15 => (0x15, 1, false),
            0x16..=0x17 => (0x16, 2, true),
            0x18..=0x19 => (0x18, 2, true),
            0x1a..=0x1b => (0x1a, 2, true),
            0x1c..=0x1d => (0x1c, 2, true),
            0x1e..=0x1f => (0x1e, 2, false),
            // 64-bit addresses may be accessed as two 32-bit halves.
            0x20..=0x37 => (offset & !3, 4, true),
            _ => return None,
        })
    }
}

/// What the driver programmed for one queue.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    max: u16,
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
    /// Which of desc/avail/used the driver wrote (bits 0, 1, 2): enabling
    /// a queue whose rings were never placed is a driver bug even when
    /// the reset values happen to be valid addresses.
    written: u8,
}

impl QueueRegs {
    fn new(max: u16) -> Self {
        Self {
            max,
            size: max,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
            written: 0,
        }
    }
}

/// A virtio device behind the modern PCI transport.
pub struct ModernTransport {
    device: Box<dyn VirtioDevice>,
    /// "virtio-rng 00:03.0", for reports.
    label: String,
    slot: u8,
    hooks: Arc<dyn VmHooks>,
    config: ConfigSpace,
    pci_cfg_cap: usize,
    /// Where the MSI-X capability sits in config space.
    msix_cap: usize,
    msix: Arc<Mutex<Msix>>,
    isr: Arc<AtomicU8>,
    /// Where violations go; also keeps DEVICE_NEEDS_RESET for `--lenient`.
    reporter: Reporter,
    interrupt: Option<Arc<Interrupt>>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    /// The device refused FEATURES_OK since the last reset (§3.1.1): the
    /// driver must not set up queues or set DRIVER_OK.
    features_refused: bool,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    workers: Vec<(Worker, EventFd, u64)>,
}

/// PCI class for each device type (virtio 1.0 §4.1.2 leaves it free).
fn class_of(device_type: u16) -> (u8, u8) {
    match device_type {
        1 => (0x02, 0x00), // network controller
        2 => (0x01, 0x80), // mass storage
        3 => (0x07, 0x80), // communication
        _ => (0xff, 0x00),
    }
}

impl ModernTransport {
    /// Wraps `device` as the function in `slot`.
    pub fn new(device: Box<dyn VirtioDevice>, slot: u8, hooks: Arc<dyn VmHooks>) -> Self {
        let ty = device.device_type();
        let (class, subclass) = class_of(ty);
        let mut config = ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1040 + ty,
            class,
            subclass,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
            ..Default::default()
        });
        config.add_bar(0, BarKind::Mem32, BAR_SIZE);
        let nq = device.queue_max_sizes().len();
        let vectors = nq as u16 + 1;
        let cap = |cfg_type: u8, offset: u64, length: u64, extra: &[u8]| {
            let mut body = vec![(16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&(length as u32).to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        let none = |n: usize| vec![0u8; n];
        let b = cap(CFG_COMMON, COMMON, COMMON_LEN, &[]);
        config.add_capability(VENDOR_CAP, &b, &none(b.len()));
        let b = cap(
            CFG_NOTIFY,
            NOTIFY,
            4 * nq.max(1) as u64,
            &NOTIFY_MULTIPLIER.to_le_bytes(),
        );
        config.add_capability(VENDOR_CAP, &b, &none(b.len()));
        let b = cap(CFG_ISR, ISR, 1, &[]);
        config.add_capability(VENDOR_CAP, &b, &none(b.len()));
        let b = cap(CFG_DEVICE, DEVICE_CFG, DEVICE_CFG_MAX, &[]);
        config.add_capability(VENDOR_CAP, &b, &none(b.len()));
        // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and data are the driver's.
        let b = cap(CFG_PCI, 0, 0, &[0; 4]);
        let mut w = none(b.len());
        w[2] = 0xff; // bar
        w[6..18].fill(0xff); // offset, length, pci_cfg_data
        let pci_cfg_cap = config.add_capability(VENDOR_CAP, &b, &w);
        let mut mx = vec![0u8; 10];
        mx[0..2].copy_from_slice(&(vectors - 1).to_le_bytes());
        mx[2..6].copy_from_slice(&(MSIX_TABLE as u32).to_le_bytes());
        mx[6..10].copy_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        let mut mw = vec![0u8; 10];
        mw[1] = 0xc0; // enable, function mask
        let msix_cap = config.add_capability(msix::CAP_ID, &mx, &mw);
        config.set_interrupt(1, 0);
        let label = format!("{} 00:{slot:02x}.0", device.name());
        let reporter = Reporter::new(hooks.clone(), label.clone());
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&m| QueueRegs::new(m))
            .collect();
        Self {
            device,
            label,
            slot,
            hooks,
            config,
            pci_cfg_cap,
            msix_cap,
            msix: Arc::new(Mutex::new(Msix::new(vectors))),
            isr: Arc::new(AtomicU8::new(0)),
            reporter,
            interrupt: None,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            features_refused: false,
            queue_select: 0,
            queues,
            workers: Vec::new(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Mutable config space, for the launcher to place BARs and INTx.
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// Creates the irqfds; called once the launcher has wired the function.
    pub fn connect_interrupts(&mut self) -> std::io::Result<()> {
        let n = lock(&self.msix).vectors();
        let vectors = (0..n)
            .map(|v| self.hooks.msi_irqfd(self.slot, v))
            .collect::<Result<_, _>>()?;
        self.interrupt = Some(Arc::new(Interrupt {
            msix: self.msix.clone(),
            vectors,
            intx: self.hooks.intx_irqfd(self.slot)?,
            isr: self.isr.clone(),
        }));
        Ok(())
    }

    fn offered(&self) -> u64 {
        self.device.features() | feature::VERSION_1
    }

    fn violate(&mut self, rule: Rule, detail: String) {
        self.raise(Violation::new(rule, detail));
    }

    fn raise(&mut self, v: Violation) {
        let config = self.interrupt.as_deref().map(|i| (i, self.msix_config));
        self.reporter.raise(v, config);
    }

    fn bar0(&self) -> u64 {
        self.config.bar_address(0)
    }

    fn selected(&mut self, write: bool) -> Option<usize> {
        let q = usize::from(self.queue_select);
        if q < self.queues.len() {
            return Some(q);
        }
        if write {
            let n = self.queues.len();
            self.violate(
                Rule::QueueSelectOutOfRange,
                format!("queue_select {q}, device has {n} queues"),
            );
        }
        None
    }

    fn read_common(&mut self, field: u64, data: &mut [u8]) {
        let q = self.selected(false);
        let v: u64 = match field {
            common::DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            common::DEVICE_FEATURE => match self.device_feature_select {
                0 => self.offered() & 0xffff_ffff,
                1 => self.offered() >> 32,
                _ => 0,
            },
            common::DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            common::DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            common::MSIX_CONFIG => u64::from(self.msix_config),
            common::NUM_QUEUES => self.queues.len() as u64,
            common::DEVICE_STATUS => u64::from(self.status()),
            common::CONFIG_GENERATION => 0,
            common::QUEUE_SELECT => u64::from(self.queue_select),
            common::QUEUE_NOTIFY_OFF => q.map_or(0, |q| q as u64),
            f => match q.map(|q| self.queues[q]) {
                None => 0,
                Some(r) => match f {
                    common::QUEUE_SIZE => u64::from(if r.max == 0 { 0 } else { r.size }),
                    common::QUEUE_MSIX_VECTOR => u64::from(r.vector),
                    common::QUEUE_ENABLE => u64::from(r.enabled),
                    0x20 => r.desc & 0xffff_ffff,
                    0x24 => r.desc >> 32,
                    0x28 => r.avail & 0xffff_ffff,
                    0x2c => r.avail >> 32,
                    0x30 => r.used & 0xffff_ffff,
                    0x34 => r.used >> 32,
                    _ => 0,
                },
            },
        };
        let bytes = v.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
        log::debug!("{}: read {} = {v:#x}", self.label, common::name(field));
    }

    fn write_common(&mut self, field: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        log::debug!("{}: write {} = {v:#x}", self.label, common::name(field));
        match field {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            common::DRIVER_FEATURE => {
                if self.status & status::FEATURES_OK != 0 {
                    return self.violate(
                        Rule::FeatureAfterFeaturesOk,
                        format!(
                            "driver_feature[{}] = {v:#x} after FEATURES_OK",
                            self.driver_feature_select
                        ),
                    );
                }
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    s if v != 0 => self.violate(
                        Rule::FeatureNotOffered,
                        format!("driver_feature[{s}] = {v:#x}: no features exist there"),
                    ),
                    _ => {}
                }
                log::debug!(
                    "{}: driver features now {:#x}",
                    self.label,
                    self.driver_features
                );
            }
            common::MSIX_CONFIG => self.msix_config = self.checked_vector(v as u16),
            common::DEVICE_STATUS => self.write_status(v as u8),
            common::QUEUE_SELECT => self.queue_select = v as u16,
            common::QUEUE_SIZE | common::QUEUE_MSIX_VECTOR | common::QUEUE_ENABLE | 0x20..=0x37 => {
                self.write_queue(field, v)
            }
            f => self.violate(
                Rule::ReadOnlyWrite,
                format!("write of {v:#x} to read-only common config offset {f:#x}"),
            ),
        }
    }

    fn checked_vector(&mut self, v: u16) -> u16 {
        let n = lock(&self.msix).vectors();
        if v != NO_VECTOR && v >= n {
            self.violate(
                Rule::MsixVectorInvalid,
                format!("vector {v}, function has {n}"),
            );
            return NO_VECTOR;
        }
        v
    }

    fn write_queue(&mut self, field: u64, v: u64) {
        let Some(q) = self.selected(true) else { return };
        if self.status & status::DRIVER_OK != 0 {
            return self.violate(
                Rule::QueueSetupAfterDriverOk,
                format!("queue {q} field {field:#x} = {v:#x}"),
            );
        }
        if self.features_refused {
            return self.violate(
                Rule::FeaturesOkRefused,
                format!("queue {q} field {field:#x} = {v:#x} after FEATURES_OK was refused"),
            );
        }
        if self.status & status::FEATURES_OK == 0 {
            return self.violate(
                Rule::QueueSetupBeforeFeaturesOk,
                format!("queue {q} field {field:#x} = {v:#x}"),
            );
        }
        if self.queues[q].enabled && field != common::QUEUE_MSIX_VECTOR {
            return self.violate(
                Rule::QueueSetupAfterDriverOk,
                format!("queue {q} changed while enabled"),
            );
        }
        let lo = |old: u64| (old & !0xffff_ffff) | (v & 0xffff_ffff);
        let hi = |old: u64| (old & 0xffff_ffff) | (v << 32);
        match field {
            common::QUEUE_SIZE => {
                let max = self.queues[q].max;
                let size = v as u16;
                if size == 0 || !size.is_power_of_two() || size > max {
                    return self.violate(
                        Rule::QueueSizeInvalid,
                        format!("queue {q} size {size}, maximum {max}"),
                    );
                }
                self.queues[q].size = size;
            }
            common::QUEUE_MSIX_VECTOR => self.queues[q].vector = self.checked_vector(v as u16),
            common::QUEUE_ENABLE => self.enable_queue(q, v),
            0x20 => {
                self.queues[q].desc = lo(self.queues[q].desc);
                self.queues[q].written |= 1;
            }
            0x24 => self.queues[q].desc = hi(self.queues[q].desc),
            0x28 => {
                self.queues[q].avail = lo(self.queues[q].avail);
                self.queues[q].written |= 2;
            }
            0x2c => self.queues[q].avail = hi(self.queues[q].avail),
            0x30 => {
                self.queues[q].used = lo(self.queues[q].used);
                self.queues[q].written |= 4;
            }
            0x34 => self.queues[q].used = hi(self.queues[q].used),
            _ => {}
        }
    }

    fn enable_queue(&mut self, q: usize, v: u64) {
        if v != 1 {
            return self.violate(
                Rule::QueueEnableValue,
                format!("queue {q}: queue_enable = {v}"),
            );
        }
        let r = self.queues[q];
        if r.written != 0b111 {
            return self.violate(
                Rule::QueueEnabledIncomplete,
                format!(
                    "queue {q} enabled without its {}",
                    ["descriptor table", "driver area", "device area"]
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| r.written & (1 << i) == 0)
                        .map(|(_, n)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let mem = self.hooks.memory();
        match CheckedQueue::new(
            q as u16,
            r.max,
            r.size,
            r.desc,
            r.avail,
            r.used,
            self.driver_features,
            &mem,
        ) {
            Ok(_) => {
                log::debug!(
                    "{}: queue {q} enabled: size {}, desc {:#x}, avail {:#x}, used {:#x}, vector {}",
                    self.label, r.size, r.desc, r.avail, r.used, r.vector
                );
                self.queues[q].enabled = true;
            }
            Err(v) => self.raise(v.on_queue(q as u16)),
        }
    }

    /// The status the driver reads.
    fn status(&self) -> u8 {
        self.reporter.status(self.status)
    }

    fn write_status(&mut self, new: u8) {
        let old = self.status();
        if new == 0 {
            log::debug!("{}: reset by the driver", self.label);
            return self.reset();
        }
        log::debug!("{}: status {old:#04x} -> {new:#04x}", self.label);
        let added = new & !old;
        if let Err((rule, detail)) = status_kept(old, new) {
            return self.violate(rule, detail);
        }
        if self.features_refused && added & status::DRIVER_OK != 0 {
            return self.violate(
                Rule::FeaturesOkRefused,
                format!("status {old:#04x} -> {new:#04x} after FEATURES_OK was refused"),
            );
        }
        let order = status_in_order(
            old,
            new,
            Some(status::ACKNOWLEDGE | status::DRIVER),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        if let Err((rule, detail)) = order {
            return self.violate(rule, detail);
        }
        self.status = new & !status::DEVICE_NEEDS_RESET;
        if added & status::FEATURES_OK != 0 {
            // A feature set we cannot accept leaves FEATURES_OK clear, so
            // a lenient run's driver sees the refusal (§2.2.2); going on
            // regardless is `FeaturesOkRefused`.
            self.status &= !status::FEATURES_OK;
            self.features_refused = true;
            let extra = self.driver_features & !self.offered();
            if extra != 0 {
                return self.violate(
                    Rule::FeatureNotOffered,
                    format!(
                        "driver accepted {:#x}, device offered {:#x}",
                        self.driver_features,
                        self.offered()
                    ),
                );
            }
            if self.driver_features & feature::VERSION_1 == 0 {
                return self.violate(
                    Rule::FeatureVersion1Missing,
                    format!(
                        "driver features {:#x} lack VIRTIO_F_VERSION_1",
                        self.driver_features
                    ),
                );
            }
            self.status |= status::FEATURES_OK;
            self.features_refused = false;
            log::debug!(
                "{}: features negotiated: {:#x}",
                self.label,
                self.driver_features
            );
        }
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
        let mut handlers = self.device.activate(self.driver_features).into_iter();
        let label = self.label.clone();
        for q in 0..self.queues.len() {
            let Some(handler) = handlers.next() else {
                break;
            };
            let r = self.queues[q];
            if !r.enabled {
                continue;
            }
            let index = q as u16;
            let queue = match CheckedQueue::new(
                index,
                r.max,
                r.size,
                r.desc,
                r.avail,
                r.used,
                self.driver_features,
                &mem,
            ) {
                Ok(queue) => queue,
                Err(v) => return self.raise(v.on_queue(index)),
            };
            let work = QueueWork {
                index,
                queue,
                handler,
                vector: r.vector,
            };
            let started = start_worker(
                self.device.name(),
                work,
                &interrupt,
                self.msix_config,
                &self.reporter,
                &mem,
            );
            let (worker, kick) = match started {
                Ok(w) => w,
                Err(e) => return log::error!("{label}: cannot start queue {q}'s worker: {e}"),
            };
            // The worker runs before its notifications do: a kick that
            // arrives in between lands in the eventfd all the same.
            let addr = self.bar0() + NOTIFY + u64::from(NOTIFY_MULTIPLIER) * q as u64;
            if let Err(e) = self.hooks.register_ioevent(&kick, addr) {
                worker.stop();
                return log::error!(
                    "{label}: cannot register queue {q}'s notify address {addr:#x}: {e}"
                );
            }
            self.workers.push((worker, kick, addr));
        }
        log::debug!(
            "{label}: DRIVER_OK, {} queue workers running",
            self.workers.len()
        );
    }

    /// Stops the workers and returns to the state after power-on.
    fn reset(&mut self) {
        for (worker, kick, addr) in self.workers.drain(..) {
            worker.stop();
            if let Err(e) = self.hooks.unregister_ioevent(&kick, addr) {
                log::warn!(
                    "{}: cannot unregister notify address {addr:#x}: {e}",
                    self.label
                );
            }
        }
        self.device.reset();
        self.status = 0;
        self.features_refused = false;
        self.reporter.clear();
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.msix_config = NO_VECTOR;
        self.queue_select = 0;
        self.isr.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max);
        }
    }

    fn device_cfg_len(&self) -> u64 {
        // Devices declare no length; allow the whole window and let the
        // device return zeros beyond its structure.
        DEVICE_CFG_MAX
    }

    /// A BAR0 read at `offset`.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        match offset {
            o if o < COMMON + COMMON_LEN => match common::field(o) {
                Some((start, width, _)) if start == o && width == data.len() => {
                    self.read_common(o, data)
                }
                _ => self.violate(
                    Rule::AccessWidth,
                    format!("{len}-byte read at common config {o:#x}"),
                ),
            },
            ISR => {
                if len != 1 {
                    return self.violate(Rule::AccessWidth, format!("{len}-byte read of ISR"));
                }
                data[0] = self.isr.swap(0, Ordering::SeqCst);
            }
            o if (DEVICE_CFG..DEVICE_CFG + self.device_cfg_len()).contains(&o) => {
                if o + len > DEVICE_CFG + self.device_cfg_len() {
                    return self.violate(
                        Rule::AccessOffset,
                        format!("{len}-byte read at {o:#x} crosses device config end"),
                    );
                }
                self.device.read_config((o - DEVICE_CFG) as usize, data);
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => {
                lock(&self.msix).read_table((o - MSIX_TABLE) as usize, data)
            }
            o if (MSIX_PBA..BAR_SIZE).contains(&o) => {
                lock(&self.msix).read_pba((o - MSIX_PBA) as usize, data)
            }
            o if (NOTIFY..MSIX_TABLE).contains(&o) => {}
            o => self.violate(
                Rule::AccessOffset,
                format!("{len}-byte read at BAR0 {o:#x}, outside every structure"),
            ),
        }
    }

    /// A BAR0 write at `offset`.
    pub fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        match offset {
            o if o < COMMON + COMMON_LEN => match common::field(o) {
                Some((start, width, _)) if start == o && width == data.len() => {
                    self.write_common(o, data)
                }
                _ => self.violate(
                    Rule::AccessWidth,
                    format!("{len}-byte write at common config {o:#x}"),
                ),
            },
            ISR => self.violate(Rule::IsrWrite, format!("wrote {data:02x?} to ISR")),
            o if (DEVICE_CFG..DEVICE_CFG + self.device_cfg_len()).contains(&o) => {
                self.device.write_config((o - DEVICE_CFG) as usize, data)
            }
            o if (NOTIFY..MSIX_TABLE).contains(&o) => {
                // With a worker running KVM takes these writes itself; one
                // that reaches us came before DRIVER_OK or names no queue.
                let q = (o - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                if self.status & status::DRIVER_OK == 0 {
                    self.violate(
                        Rule::NotifyBeforeDriverOk,
                        format!("notify for queue {q}, status {:#04x}", self.status),
                    );
                } else {
                    self.violate(
                        Rule::NotifyBadQueue,
                        format!("notify for queue {q}, which is not enabled"),
                    );
                }
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => {
                let changes = lock(&self.msix).write_table((o - MSIX_TABLE) as usize, data);
                self.apply(changes);
            }
            o => self.violate(
                Rule::AccessOffset,
                format!("{len}-byte write at BAR0 {o:#x}, outside every writable structure"),
            ),
        }
    }

    fn apply(&mut self, changes: Vec<MsixChange>) {
        for c in changes {
            match c {
                MsixChange::Route(v, msg) => {
                    if let Err(e) = self.hooks.set_msi_route(self.slot, v, msg) {
                        log::error!("{}: cannot route MSI-X vector {v}: {e}", self.label);
                    }
                }
                MsixChange::DeliverPending(v) => {
                    if let Some(i) = &self.interrupt {
                        i.deliver(v);
                    }
                }
            }
        }
    }

    /// The PCI-configuration-access capability's window (§4.1.4.7).
    fn pci_cfg_access(&mut self, data: &mut [u8], write: Option<&[u8]>) {
        let cap = self.pci_cfg_cap;
        let bar = self.config.u8(cap + 4);
        let offset = u64::from(self.config.u32(cap + 8));
        let length = self.config.u32(cap + 12) as usize;
        if bar != 0
            || !matches!(length, 1 | 2 | 4)
            || offset % length as u64 != 0
            || data.len() < length
        {
            return self.violate(
                Rule::PciCfgAccess,
                format!("bar {bar}, offset {offset:#x}, length {length}"),
            );
        }
        match write {
            Some(w) => self.bar_write(offset, &w[..length]),
            None => self.bar_read(offset, &mut data[..length]),
        }
    }
}

impl PciFunction for ModernTransport {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + 16;
        if (window..window + 4).contains(&offset) {
            return self.pci_cfg_access(data, None);
        }
        self.config.read(offset, data);
        log::debug!("{}: config read {offset:#04x} = {data:02x?}", self.label);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let window = self.pci_cfg_cap + 16;
        if (window..window + 4).contains(&offset) {
            let mut scratch = [0u8; 4];
            return self.pci_cfg_access(&mut scratch[..data.len()], Some(data));
        }
        log::debug!("{}: config write {offset:#04x} = {data:02x?}", self.label);
        self.config.write(offset, data);
        // The MSI-X message control word follows the capability header.
        let mx = self.msix_cap;
        if offset <= mx + 3 && offset + data.len() > mx + 2 {
            let ctrl = self.config.u16(mx + 2);
            let changes = lock(&self.msix).set_control(ctrl);
            log::debug!(
                "{}: MSI-X {}",
                self.label,
                if ctrl & msix::CTRL_ENABLE != 0 {
                    "enabled"
                } else {
                    "disabled"
                }
            );
            self.apply(changes);
        }
    }
}

impl BarRegisters for ModernTransport {
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        ModernTransport::bar_read(self, offset, data)
    }
    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        ModernTransport::bar_write(self, offset, data)
    }
}
