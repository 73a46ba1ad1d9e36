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
//! [`Worker`] thread each; a reset stops and joins them. When the guest
//! moves BAR0 or switches memory decoding, the bus mapping (and with it
//! the MSI-X table) and those ioeventfds move together
//! ([`PciTransport::bar_moved`]).

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::core::{Core, Doorbell, Names, QueueConfig, QueueField, Version};
use super::{BarRegisters, PciTransport, VmHooks};
use crate::bus::lock;
use crate::pci::config::{BarKind, ConfigSpace, Identity};
use crate::pci::msix::{self, Msix, MsixChange};
use crate::pci::root::PciFunction;
use crate::trace::{Detail, Value};
use crate::virtio::device::VirtioDevice;
use crate::virtio::interrupt::Interrupt;
use crate::virtio::rules::Rule;

pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_MAX: u64 = 0x1000;
pub(crate) const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
pub(crate) const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x6000;

const VENDOR_CAP: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// Common configuration fields: (offset, width, writable).
pub(crate) mod common {
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

/// A virtio device behind the modern PCI transport: the [`Core`] plus
/// what is PCI about it (capabilities, MSI-X, the configuration-access
/// window).
pub struct ModernTransport {
    core: Core,
    slot: u8,
    config: ConfigSpace,
    pci_cfg_cap: usize,
    /// The virtio capabilities' byte ranges in config space.
    vendor_caps: Vec<(usize, usize)>,
    /// Where the MSI-X capability sits in config space.
    msix_cap: usize,
    msix: Arc<Mutex<Msix>>,
}

/// One ioeventfd per queue at `NOTIFY + 4·queue` in BAR0.
#[derive(Default)]
struct NotifyDoorbell {
    registered: Vec<(EventFd, u64)>,
}

impl Doorbell for NotifyDoorbell {
    fn connect(&mut self, hooks: &dyn VmHooks, names: Names, base: u64, kicks: &[(u16, &EventFd)]) {
        let label = names.label;
        for &(q, kick) in kicks {
            let addr = base + u64::from(NOTIFY_MULTIPLIER) * u64::from(q);
            let registered = kick
                .try_clone()
                .and_then(|fd| hooks.register_ioevent(&fd, addr).map(|()| fd));
            match registered {
                Ok(fd) => self.registered.push((fd, addr)),
                Err(e) => log::warn!(
                    "{label}: no ioeventfd for queue {q} at {addr:#x}: {e}; its notifications will exit"
                ),
            }
        }
    }

    fn disconnect(&mut self, hooks: &dyn VmHooks, label: &str) {
        for (fd, addr) in self.registered.drain(..) {
            if let Err(e) = hooks.unregister_ioevent(&fd, addr) {
                log::warn!("{label}: cannot unregister notify address {addr:#x}: {e}");
            }
        }
    }
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
        let mut vendor_caps = Vec::new();
        let mut add = |config: &mut ConfigSpace, body: &[u8], writable: &[u8]| {
            let at = config.add_capability(VENDOR_CAP, body, writable);
            vendor_caps.push((at, at + 2 + body.len()));
            at
        };
        let b = cap(CFG_COMMON, COMMON, COMMON_LEN, &[]);
        add(&mut config, &b, &none(b.len()));
        let b = cap(
            CFG_NOTIFY,
            NOTIFY,
            4 * nq.max(1) as u64,
            &NOTIFY_MULTIPLIER.to_le_bytes(),
        );
        add(&mut config, &b, &none(b.len()));
        let b = cap(CFG_ISR, ISR, 1, &[]);
        add(&mut config, &b, &none(b.len()));
        let b = cap(CFG_DEVICE, DEVICE_CFG, DEVICE_CFG_MAX, &[]);
        add(&mut config, &b, &none(b.len()));
        // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and data are the driver's.
        let b = cap(CFG_PCI, 0, 0, &[0; 4]);
        let mut w = none(b.len());
        w[2] = 0xff; // bar
        w[6..18].fill(0xff); // offset, length, pci_cfg_data
        let pci_cfg_cap = add(&mut config, &b, &w);
        let mut mx = vec![0u8; 10];
        mx[0..2].copy_from_slice(&(vectors - 1).to_le_bytes());
        mx[2..6].copy_from_slice(&(MSIX_TABLE as u32).to_le_bytes());
        mx[6..10].copy_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        let mut mw = vec![0u8; 10];
        mw[1] = 0xc0; // enable, function mask
        let msix_cap = config.add_capability(msix::CAP_ID, &mx, &mw);
        config.set_interrupt(1, 0);
        let core = Core::new(
            device,
            Version::Modern,
            slot,
            hooks,
            vectors,
            Box::<NotifyDoorbell>::default(),
        );
        Self {
            core,
            slot,
            config,
            pci_cfg_cap,
            vendor_caps,
            msix_cap,
            msix: Arc::new(Mutex::new(Msix::new(vectors))),
        }
    }

    pub fn label(&self) -> &str {
        self.core.label()
    }

    /// Mutable config space, for the launcher to place BARs and INTx.
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// Creates the irqfds; called once the launcher has wired the function.
    pub fn connect_interrupts(&mut self) -> std::io::Result<()> {
        let hooks = self.core.hooks().clone();
        let n = lock(&self.msix).vectors();
        let vectors = (0..n)
            .map(|v| hooks.msi_irqfd(self.slot, v))
            .collect::<Result<_, _>>()?;
        self.core.connect_interrupts(Arc::new(Interrupt {
            msix: self.msix.clone(),
            vectors,
            intx: hooks.intx_irqfd(self.slot)?,
            isr: self.core.isr().clone(),
        }));
        Ok(())
    }

    fn violate(&mut self, rule: Rule, detail: String) {
        self.core.violate(rule, detail);
    }

    fn read_common(&mut self, field: u64, data: &mut [u8]) {
        // The reads the driver owes the device (§3.1.1, §4.1.5.1.2.2).
        match field {
            common::DEVICE_STATUS => {
                self.core.read_status();
            }
            common::MSIX_CONFIG => {
                self.core.read_config_vector();
            }
            common::QUEUE_MSIX_VECTOR => {
                self.core.read_queue_vector();
            }
            _ => {}
        }
        let core = &self.core;
        let queue = core.queue().copied();
        let q = |get: fn(&QueueConfig) -> u64| queue.as_ref().map_or(0, get);
        let v: u64 = match field {
            common::DEVICE_FEATURE_SELECT => u64::from(core.device_feature_select),
            common::DEVICE_FEATURE => u64::from(core.device_features(core.device_feature_select)),
            common::DRIVER_FEATURE_SELECT => u64::from(core.driver_feature_select),
            common::DRIVER_FEATURE => u64::from(core.driver_features(core.driver_feature_select)),
            common::MSIX_CONFIG => u64::from(core.config_vector()),
            common::NUM_QUEUES => u64::from(core.num_queues()),
            common::DEVICE_STATUS => u64::from(core.status()),
            common::CONFIG_GENERATION => 0,
            common::QUEUE_SELECT => u64::from(core.queue_select()),
            common::QUEUE_NOTIFY_OFF => queue.map_or(0, |_| u64::from(core.queue_select())),
            common::QUEUE_SIZE => q(|r| u64::from(if r.max == 0 { 0 } else { r.size })),
            common::QUEUE_MSIX_VECTOR => q(|r| u64::from(r.vector)),
            common::QUEUE_ENABLE => q(|r| u64::from(r.enabled)),
            0x20 => q(|r| r.desc & 0xffff_ffff),
            0x24 => q(|r| r.desc >> 32),
            0x28 => q(|r| r.avail & 0xffff_ffff),
            0x2c => q(|r| r.avail >> 32),
            0x30 => q(|r| r.used & 0xffff_ffff),
            0x34 => q(|r| r.used >> 32),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
        self.core.trace_register(false, common::name(field), v);
    }

    fn write_common(&mut self, field: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        b[..data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(b);
        self.core
            .trace_register(true, common::name(field), v.into());
        let queue_field = match field {
            common::QUEUE_SIZE => Some(QueueField::Size),
            common::QUEUE_MSIX_VECTOR => Some(QueueField::Vector),
            common::QUEUE_ENABLE => Some(QueueField::Enable),
            0x20..=0x37 => Some(QueueField::Address {
                ring: ((field - 0x20) / 8) as u8,
                high: field % 8 == 4,
            }),
            _ => None,
        };
        if let Some(f) = queue_field {
            return self.core.write_queue(f, v);
        }
        match field {
            common::DEVICE_FEATURE_SELECT => self.core.device_feature_select = v,
            common::DRIVER_FEATURE_SELECT => self.core.driver_feature_select = v,
            common::DRIVER_FEATURE => {
                let select = self.core.driver_feature_select;
                self.core.write_driver_features(select, v)
            }
            common::MSIX_CONFIG => self.core.set_config_vector(v as u16),
            common::DEVICE_STATUS => {
                let notify = self.config.bar_address(0) + NOTIFY;
                self.core.write_status(v as u8, notify)
            }
            common::QUEUE_SELECT => self.core.select_queue(v as u16),
            f => self.violate(
                Rule::ReadOnlyWrite,
                format!("write of {v:#x} to read-only common config offset {f:#x}"),
            ),
        }
    }

    /// Where an access of `len` bytes at BAR0 `offset` goes; an access
    /// that breaks a rule is reported and reaches nothing.
    fn decode(&mut self, offset: u64, len: usize, write: bool) -> Target {
        let dir = if write { "write" } else { "read" };
        let width = len as u64;
        let (rule, detail) = match offset {
            o if o < COMMON + COMMON_LEN => match common::field(o) {
                Some((start, w, _)) if start == o && w == len => return Target::Common(o),
                _ => (
                    Rule::AccessWidth,
                    format!("{width}-byte {dir} at common config {o:#x}"),
                ),
            },
            ISR if write => (Rule::IsrWrite, format!("{width}-byte write to ISR")),
            ISR if len == 1 => return Target::Isr,
            ISR => (Rule::AccessWidth, format!("{width}-byte read of ISR")),
            // Devices declare no length: the whole window is theirs,
            // zeros beyond their structure.
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_MAX).contains(&o) => {
                if o + width <= DEVICE_CFG + DEVICE_CFG_MAX {
                    return Target::DeviceConfig(o - DEVICE_CFG);
                }
                (
                    Rule::AccessOffset,
                    format!("{width}-byte {dir} at {o:#x} crosses device config end"),
                )
            }
            o if (NOTIFY..MSIX_TABLE).contains(&o) => {
                return Target::Notify((o - NOTIFY) / u64::from(NOTIFY_MULTIPLIER))
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => {
                return Target::MsixTable((o - MSIX_TABLE) as usize)
            }
            o if !write && (MSIX_PBA..BAR_SIZE).contains(&o) => {
                return Target::MsixPba((o - MSIX_PBA) as usize)
            }
            o => (
                Rule::AccessOffset,
                format!("{width}-byte {dir} at BAR0 {o:#x}, outside every structure"),
            ),
        };
        self.violate(rule, detail);
        Target::Refused
    }

    fn apply(&mut self, changes: Vec<MsixChange>) {
        for c in changes {
            match c {
                MsixChange::Route(v, msg) => {
                    if let Err(e) = self.core.hooks().set_msi_route(self.slot, v, msg) {
                        log::error!("{}: cannot route MSI-X vector {v}: {e}", self.label());
                    }
                }
                MsixChange::DeliverPending(v) => self.core.deliver(v),
            }
        }
    }

    /// The VIRTIO_PCI_CAP_PCI_CFG window (1.2 §4.1.4.9): a driver access
    /// to `pci_cfg_data` (at `at`, `len` bytes into it) becomes a BAR
    /// access of `cap.length` bytes at `cap.offset`. The window's bytes
    /// live in config space, so a narrower access reads or writes part of
    /// them, as on hardware.
    fn pci_cfg_access(&mut self, at: usize, data: &mut [u8], write: bool) {
        let cap = self.pci_cfg_cap;
        let window = cap + 16;
        if write {
            self.config.write(at, data);
        }
        let bar = self.config.u8(cap + 4);
        let offset = u64::from(self.config.u32(cap + 8));
        let length = self.config.u32(cap + 12);
        let what = format!("pci_cfg_data with bar {bar}, offset {offset:#x}, length {length}");
        if !matches!(length, 1 | 2 | 4) {
            return self.violate(Rule::PciCfgLength, what);
        }
        let len = u64::from(length);
        let notify_end = NOTIFY + u64::from(NOTIFY_MULTIPLIER) * u64::from(self.core.num_queues());
        let inside = [
            (COMMON, COMMON + COMMON_LEN),
            (NOTIFY, notify_end),
            (ISR, ISR + 1),
            (DEVICE_CFG, DEVICE_CFG + DEVICE_CFG_MAX),
        ]
        .iter()
        .any(|&(start, end)| offset >= start && offset + len <= end);
        if bar != 0 || !offset.is_multiple_of(len) || !inside {
            return self.violate(
                Rule::PciCfgAccess,
                format!("{what}: not an aligned range inside a virtio structure"),
            );
        }
        let mut bytes = [0u8; 4];
        let bytes = &mut bytes[..length as usize];
        if write {
            self.config.read(window, bytes);
            self.bar_write(offset, bytes);
        } else {
            self.bar_read(offset, bytes);
            let mut all = [0u8; 4];
            all[..bytes.len()].copy_from_slice(bytes);
            // The device stores what it read in pci_cfg_data (§4.1.4.9.1).
            self.config.set_u32(window, u32::from_le_bytes(all));
            self.config.read(at, data);
        }
    }

    /// Whether `offset..offset + len` of config space touches a virtio
    /// capability outside the PCI_CFG window's driver fields (bar, offset,
    /// length, data), which the driver must not write (§4.1.4.1).
    fn touches_capability(&self, offset: usize, len: usize) -> bool {
        let cfg = self.pci_cfg_cap;
        let driver_fields = [(cfg + 4, cfg + 5), (cfg + 8, cfg + 20)];
        (offset..offset + len).any(|o| {
            self.vendor_caps
                .iter()
                .any(|&(start, end)| (start..end).contains(&o))
                && !driver_fields.iter().any(|&(s, e)| (s..e).contains(&o))
        })
    }
}

impl PciFunction for ModernTransport {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + 16;
        if (window..window + 4).contains(&offset) {
            return self.pci_cfg_access(offset, data, false);
        }
        self.config.read(offset, data);
        self.core.trace_pci_config(false, offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let window = self.pci_cfg_cap + 16;
        if (window..window + 4).contains(&offset) {
            let mut bytes = [0u8; 4];
            let n = data.len().min(window + 4 - offset);
            bytes[..n].copy_from_slice(&data[..n]);
            return self.pci_cfg_access(offset, &mut bytes[..n], true);
        }
        self.core.trace_pci_config(true, offset, data);
        if self.touches_capability(offset, data.len()) {
            return self.violate(
                Rule::CapabilityWrite,
                format!(
                    "{}-byte write of {data:02x?} at config offset {offset:#x}",
                    data.len()
                ),
            );
        }
        self.config.write(offset, data);
        // The MSI-X message control word follows the capability header.
        let mx = self.msix_cap;
        if offset <= mx + 3 && offset + data.len() > mx + 2 {
            let ctrl = self.config.u16(mx + 2);
            let changes = lock(&self.msix).set_control(ctrl);
            let on = if ctrl & msix::CTRL_ENABLE != 0 {
                "enabled"
            } else {
                "disabled"
            };
            self.core.tracer().event(
                Detail::Life,
                "msix",
                &[("state", Value::S(on))],
                format_args!("MSI-X {on}"),
            );
            self.apply(changes);
        }
    }
}

impl PciTransport for ModernTransport {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn bar_moved(&mut self, index: usize, base: Option<u64>) {
        if index == 0 {
            self.core.move_notify(base.map(|b| b + NOTIFY));
        }
    }

    fn label(&self) -> &str {
        self.core.label()
    }
}

impl BarRegisters for ModernTransport {
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match self.decode(offset, data.len(), false) {
            Target::Common(field) => self.read_common(field, data),
            Target::Isr => data[0] = self.core.read_isr(),
            Target::DeviceConfig(at) => self.core.read_config(at, data),
            Target::MsixTable(at) => lock(&self.msix).read_table(at, data),
            Target::MsixPba(at) => lock(&self.msix).read_pba(at, data),
            Target::Notify(_) | Target::Refused => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match self.decode(offset, data.len(), true) {
            Target::Common(field) => self.write_common(field, data),
            Target::DeviceConfig(at) => self.core.write_config(at, data),
            // With a worker running KVM takes these writes itself; one
            // that reaches us came before DRIVER_OK, names no queue, or
            // found no ioeventfd.
            Target::Notify(q) => {
                let base = self.config.bar_address(0) + NOTIFY;
                self.core.notify(u16::try_from(q).unwrap_or(u16::MAX), base)
            }
            Target::MsixTable(at) => {
                let changes = lock(&self.msix).write_table(at, data);
                self.apply(changes);
            }
            Target::Isr | Target::MsixPba(_) | Target::Refused => {}
        }
    }
}

/// What a BAR0 access reaches.
enum Target {
    /// A common configuration field at this offset, at its own width.
    Common(u64),
    Isr,
    /// The device configuration, at this offset into it.
    DeviceConfig(u64),
    /// The notify address of this queue.
    Notify(u64),
    /// The MSI-X table or PBA, at this offset into it.
    MsixTable(usize),
    MsixPba(usize),
    /// Nothing: the access broke a rule.
    Refused,
}

#[cfg(test)]
mod tests;
