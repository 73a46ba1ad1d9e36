//! Both transports on a VM's buses, as a guest that moves their BARs sees
//! them: config writes through ports 0xCF8/0xCFC, register accesses through
//! the MMIO and port-I/O buses, ioeventfds as [`FakeHooks`] records them.
//! A moved BAR answers at its new address only; its queues' ioeventfds and
//! (modern) its MSI-X table move with it; clearing the command register's
//! decode bit takes both away, setting it brings them back where the BAR
//! is now; a sizing probe maps nothing.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::legacy::{self, LegacyTransport};
use super::modern::{self, common, ModernTransport, MSIX_TABLE, NOTIFY};
use super::testing::{wait_for, FakeHooks, RAM};
use super::{plug, PciTransport};
use crate::bus::{lock, Bus};
use crate::control::{Requests, VmControl};
use crate::pci::config::{reg as pcireg, BarKind, COMMAND_IO, COMMAND_MEMORY};
use crate::pci::msix;
use crate::pci::root::{CONFIG_PORT, CONFIG_PORT_LEN};
use crate::pci::{AddressSpaces, HostBridge, PciRoot};
use crate::virtio::device::{feature, status};
use crate::virtio::rng::Rng;

const OLD_MEM: u64 = 0xc000_0000;
const NEW_MEM: u64 = 0xd000_0000;
const OLD_IO: u64 = 0xc000;
const NEW_IO: u64 = 0x1000;
/// Rings and the buffer of the one rng request each test makes.
const DESC: u64 = 0x1_0000;
const BUFFER: u64 = 0x2_0000;

/// Buses, a PCI root on port 0xCF8 and the hooks, as `src/vm.rs` has them.
struct Machine {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    root: Arc<Mutex<PciRoot>>,
    spaces: AddressSpaces,
    hooks: Arc<FakeHooks>,
    _requests: Requests,
}

impl Machine {
    fn new() -> Self {
        let (control, requests) = VmControl::new().unwrap();
        let (pio, mmio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let root = Arc::new(Mutex::new(PciRoot::new(
            Arc::new(Mutex::new(HostBridge::new())),
            control,
        )));
        pio.insert(root.clone(), CONFIG_PORT, CONFIG_PORT_LEN)
            .unwrap();
        let spaces = AddressSpaces::new(&mmio, &pio).reserve(BarKind::Mem32, 0, RAM as u64, "RAM");
        Self {
            pio,
            mmio,
            root,
            spaces,
            hooks: Arc::new(FakeHooks::new(false)),
            _requests: requests,
        }
    }

    /// Puts `t`, whose BAR0 is at `base` and decoded, on bus 0.
    fn add<T: PciTransport + 'static>(&self, t: T, base: u64) {
        let f = plug(t, &self.spaces);
        assert_eq!(f.bar0(), Some(base));
        lock(&self.root).add(Arc::new(Mutex::new(f)));
    }

    /// A modern rng in slot `slot` with BAR0 at `base`.
    fn modern(&self, slot: u8, base: u64) {
        let mut t = ModernTransport::new(Box::new(Rng), slot, self.hooks.clone());
        t.config_mut().set_bar_address(0, base);
        t.config_mut().set_u16(pcireg::COMMAND, COMMAND_MEMORY);
        t.connect_interrupts().unwrap();
        self.add(t, base);
    }

    /// A legacy rng in slot `slot` with its I/O BAR at `base`.
    fn legacy(&self, slot: u8, base: u64) {
        let mut t = LegacyTransport::new(Box::new(Rng), slot, self.hooks.clone());
        t.config_mut().set_bar_address(0, base);
        t.config_mut().set_u16(pcireg::COMMAND, COMMAND_IO);
        t.connect_interrupts().unwrap();
        self.add(t, base);
    }

    fn select(&self, slot: u8, reg: usize) -> u64 {
        let addr = 0x8000_0000u32 | u32::from(slot) << 11 | (reg as u32 & 0xfc);
        self.pio.write(CONFIG_PORT, &addr.to_le_bytes());
        CONFIG_PORT + 4 + (reg as u64 & 3)
    }

    fn cfg_write(&self, slot: u8, reg: usize, data: &[u8]) {
        let port = self.select(slot, reg);
        self.pio.write(port, data);
    }

    fn cfg_read(&self, slot: u8, reg: usize, width: usize) -> u32 {
        let port = self.select(slot, reg);
        let mut b = [0u8; 4];
        self.pio.read(port, &mut b[..width]);
        u32::from_le_bytes(b)
    }

    fn command(&self, slot: u8, v: u16) {
        self.cfg_write(slot, pcireg::COMMAND, &v.to_le_bytes());
    }

    fn bar0(&self, slot: u8, v: u32) {
        self.cfg_write(slot, pcireg::BAR0, &v.to_le_bytes());
    }

    /// What a `width`-byte read at `addr` of `bus` gives, if anyone answers.
    fn read(bus: &Bus, addr: u64, width: usize) -> Option<u32> {
        let mut b = [0u8; 4];
        bus.read(addr, &mut b[..width])
            .then(|| u32::from_le_bytes(b))
    }

    fn write(bus: &Bus, addr: u64, width: usize, v: u32) {
        assert!(bus.write(addr, &v.to_le_bytes()[..width]), "{addr:#x}");
    }

    /// One device-writable 16-byte buffer on a queue whose descriptor
    /// table is at [`DESC`]; returns the used ring's index address.
    fn post_request(&self, avail: u64, used: u64) -> u64 {
        let mem = &self.hooks.mem;
        mem.write_obj(BUFFER, GuestAddress(DESC)).unwrap();
        mem.write_obj(16u32, GuestAddress(DESC + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap(); // WRITE
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap(); // ring[0]
        mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap(); // idx
        used + 2
    }

    fn used(&self, used_idx: u64) -> u16 {
        self.hooks.mem.read_obj(GuestAddress(used_idx)).unwrap()
    }

    fn ioevents(&self) -> Vec<u64> {
        self.hooks.ioevent_addresses()
    }

    fn unregistered(&self) -> Vec<u64> {
        std::mem::take(&mut *self.hooks.unregistered.lock().unwrap())
    }

    /// The config-space offset of capability `id`.
    fn capability(&self, slot: u8, id: u32) -> usize {
        let mut at = self.cfg_read(slot, pcireg::CAPABILITIES, 1) as usize;
        while at != 0 {
            if self.cfg_read(slot, at, 1) == id {
                return at;
            }
            at = self.cfg_read(slot, at + 1, 1) as usize;
        }
        panic!("no capability {id:#x}");
    }
}

/// Drives the modern function with BAR0 at `bar` to DRIVER_OK with queue
/// 0 live; returns the used ring's index address.
fn modern_driver_ok(m: &Machine, bar: u64) -> u64 {
    let (avail, used) = (DESC + 0x1000, DESC + 0x2000);
    let used_idx = m.post_request(avail, used);
    let w = |field: u64, v: u32| {
        let (_, width, _) = common::field(field).unwrap();
        Machine::write(&m.mmio, bar + field, width, v);
    };
    let sdf = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(common::DEVICE_STATUS, 3);
    w(common::DRIVER_FEATURE_SELECT, 1);
    w(common::DRIVER_FEATURE, (feature::VERSION_1 >> 32) as u32);
    w(common::DEVICE_STATUS, sdf.into());
    assert_eq!(
        Machine::read(&m.mmio, bar + common::DEVICE_STATUS, 1),
        Some(sdf.into())
    );
    w(common::QUEUE_SIZE, 16);
    for (i, a) in [DESC, avail, used].into_iter().enumerate() {
        w(0x20 + 8 * i as u64, a as u32);
    }
    w(common::QUEUE_ENABLE, 1);
    w(common::DEVICE_STATUS, (sdf | status::DRIVER_OK).into());
    used_idx
}

#[test]
fn a_moved_modern_bar_takes_its_registers_ioeventfds_and_msix_table_along() {
    let m = Machine::new();
    m.modern(1, OLD_MEM);
    let used_idx = modern_driver_ok(&m, OLD_MEM);
    assert_eq!(m.ioevents(), [OLD_MEM + NOTIFY]);
    let status = |base| Machine::read(&m.mmio, base + common::DEVICE_STATUS, 1);
    assert_eq!(status(OLD_MEM), Some(0x0f));

    m.bar0(1, NEW_MEM as u32);
    assert_eq!(m.cfg_read(1, pcireg::BAR0, 4), NEW_MEM as u32);
    assert_eq!(status(OLD_MEM), None, "nobody answers at the old address");
    assert_eq!(
        status(NEW_MEM),
        Some(0x0f),
        "the same device, still running"
    );
    assert_eq!(m.unregistered(), [OLD_MEM + NOTIFY]);
    assert_eq!(m.ioevents(), [NEW_MEM + NOTIFY]);

    // The MSI-X table is at the same offset in the moved BAR.
    let ctrl = m.capability(1, msix::CAP_ID.into()) + 2;
    m.cfg_write(1, ctrl, &msix::CTRL_ENABLE.to_le_bytes());
    let entry = MSIX_TABLE + msix::ENTRY_SIZE as u64;
    assert_eq!(Machine::read(&m.mmio, OLD_MEM + entry, 4), None);
    for (i, v) in [0xfee0_0000, 0, 0x41, 0].into_iter().enumerate() {
        Machine::write(&m.mmio, NEW_MEM + entry + 4 * i as u64, 4, v);
    }
    assert_eq!(Machine::read(&m.mmio, NEW_MEM + entry + 8, 4), Some(0x41));
    let routed = m
        .hooks
        .routes
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(v, _)| *v == 1)
        .copied();
    assert_eq!(
        routed.map(|(_, msg)| (msg.address, msg.data)),
        Some((0xfee0_0000, 0x41))
    );

    // Without KVM a notification reaches the transport through the bus,
    // at the new address.
    Machine::write(&m.mmio, NEW_MEM + NOTIFY, 2, 0);
    wait_for("used ring", || m.used(used_idx) == 1);
    assert!(m.hooks.take().is_empty());
}

#[test]
fn modern_decoding_follows_the_memory_space_bit_and_ignores_sizing() {
    let m = Machine::new();
    m.modern(1, OLD_MEM);
    modern_driver_ok(&m, OLD_MEM);
    let status = |base| Machine::read(&m.mmio, base + common::DEVICE_STATUS, 1);
    m.command(1, 0);
    assert_eq!(status(OLD_MEM), None);
    assert_eq!(m.unregistered(), [OLD_MEM + NOTIFY]);
    assert!(m.ioevents().is_empty(), "no ioeventfd while not decoded");
    // Moved while memory space is off, then switched on.
    m.bar0(1, NEW_MEM as u32);
    assert!(m.ioevents().is_empty());
    m.command(1, COMMAND_MEMORY);
    assert_eq!(status(NEW_MEM), Some(0x0f));
    assert_eq!(m.ioevents(), [NEW_MEM + NOTIFY]);
    // A sizing probe with decoding on maps nothing, not even at the probe
    // value, and undoing it maps the BAR back.
    m.bar0(1, u32::MAX);
    assert_eq!(
        m.cfg_read(1, pcireg::BAR0, 4),
        !(modern::BAR_SIZE as u32 - 1)
    );
    assert_eq!(status(NEW_MEM), None);
    assert_eq!(status(0xffff_8000), None);
    assert!(m.ioevents().is_empty());
    m.bar0(1, NEW_MEM as u32);
    assert_eq!(m.ioevents(), [NEW_MEM + NOTIFY]);
    assert_eq!(status(NEW_MEM), Some(0x0f));
    assert!(m.hooks.take().is_empty());
}

/// Drives the legacy function at `port` to DRIVER_OK with queue 0 live;
/// returns the used ring's index address.
fn legacy_driver_ok(m: &Machine, port: u64) -> u64 {
    use legacy::reg;
    let (_, avail, used) = legacy::ring_addresses((DESC >> 12) as u32, 256);
    let used_idx = m.post_request(avail, used);
    let w = |r: u64, width: usize, v: u32| Machine::write(&m.pio, port + r, width, v);
    w(reg::STATUS, 1, 3);
    w(reg::GUEST_FEATURES, 4, 0);
    w(reg::QUEUE_SEL, 2, 0);
    w(reg::QUEUE_PFN, 4, (DESC >> 12) as u32);
    w(reg::STATUS, 1, 7);
    used_idx
}

#[test]
fn a_moved_legacy_bar_takes_its_ports_and_notify_ioeventfd_along() {
    use legacy::reg;
    let m = Machine::new();
    m.legacy(1, OLD_IO);
    let used_idx = legacy_driver_ok(&m, OLD_IO);
    assert_eq!(m.ioevents(), [OLD_IO + reg::QUEUE_NOTIFY]);
    let status = |port| Machine::read(&m.pio, port + reg::STATUS, 1);
    assert_eq!(status(OLD_IO), Some(7));

    // As Linux does on a rescan: decoding off, sizing, the new address,
    // decoding on.
    m.command(1, 0);
    assert!(m.ioevents().is_empty());
    m.bar0(1, u32::MAX);
    assert_eq!(m.cfg_read(1, pcireg::BAR0, 4), 0xffff_ff01);
    m.bar0(1, NEW_IO as u32);
    assert!(m.ioevents().is_empty());
    m.command(1, COMMAND_IO);
    assert_eq!(status(OLD_IO), None, "nobody answers at the old ports");
    assert_eq!(status(NEW_IO), Some(7));
    assert_eq!(m.ioevents(), [NEW_IO + reg::QUEUE_NOTIFY]);
    assert_eq!(m.unregistered(), [OLD_IO + reg::QUEUE_NOTIFY]);

    // A move with decoding on, as Linux's reassignment writes it.
    m.bar0(1, 0x2001);
    assert_eq!(status(NEW_IO), None);
    assert_eq!(m.ioevents(), [0x2000 + reg::QUEUE_NOTIFY]);
    assert_eq!(m.unregistered(), [NEW_IO + reg::QUEUE_NOTIFY]);
    Machine::write(&m.pio, 0x2000 + reg::QUEUE_NOTIFY, 2, 0);
    wait_for("used ring", || m.used(used_idx) == 1);
    assert!(m.hooks.take().is_empty());
}

/// Two functions swapping places one BAR at a time: the first move lands
/// on the second function's ports and is refused (no panic), and once the
/// second moves away the first is mapped where the guest put it.
#[test]
fn a_bar_moved_onto_another_is_refused_then_mapped_once_the_other_moves() {
    use legacy::reg;
    let m = Machine::new();
    m.legacy(1, OLD_IO);
    m.legacy(2, OLD_IO + 0x100);
    let status = |port| Machine::read(&m.pio, port + reg::STATUS, 1);
    m.bar0(1, (OLD_IO + 0x101) as u32);
    assert_eq!(status(OLD_IO), None);
    assert_eq!(status(OLD_IO + 0x100), Some(0), "slot 2 keeps its ports");
    m.bar0(2, NEW_IO as u32 | 1);
    assert_eq!(status(NEW_IO), Some(0), "slot 2 moved");
    legacy_driver_ok(&m, OLD_IO + 0x100);
    assert_eq!(
        m.ioevents(),
        [OLD_IO + 0x100 + reg::QUEUE_NOTIFY],
        "slot 1, now at slot 2's old ports, runs"
    );
    assert!(m.hooks.take().is_empty());
}
