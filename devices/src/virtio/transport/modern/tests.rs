//! The modern register map: PCI identity and capabilities, the common
//! configuration's offsets and widths, ISR, device configuration, notify
//! addresses, MSI-X and the configuration-access window. What the
//! registers do is the core's and tested there (`../core/tests.rs`).

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::pci::config::reg as pcireg;
use crate::virtio::device::{feature, status};
use crate::virtio::rng::Rng;
use crate::virtio::transport::testing::{
    fake, reads_need_exact_offset_and_width, wait_for, FakeHooks, Regs,
};

const BASE: u64 = 0xc000_0000;
const SDF: u8 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

fn place(device: Box<dyn VirtioDevice>, hooks: &Arc<FakeHooks>) -> ModernTransport {
    let mut t = ModernTransport::new(device, 3, hooks.clone());
    t.config_mut().set_bar_address(0, BASE);
    t.config_mut().set_interrupt(1, 19);
    t.connect_interrupts().unwrap();
    t
}

fn cfg(t: &mut ModernTransport, offset: usize, width: usize) -> u32 {
    let mut b = [0u8; 4];
    t.config_read(offset, &mut b[..width]);
    u32::from_le_bytes(b)
}

/// Capabilities as (offset, id, body) by walking the list from 0x34.
fn capabilities(t: &mut ModernTransport) -> Vec<(usize, u8, [u8; 16])> {
    let mut caps = Vec::new();
    let mut at = cfg(t, pcireg::CAPABILITIES, 1) as usize;
    while at != 0 {
        let mut body = [0u8; 16];
        t.config_read(at, &mut body);
        caps.push((at, body[0], body));
        at = body[1] as usize;
    }
    caps
}

/// Writes a common-configuration field the way a driver does.
fn common_w(t: &mut ModernTransport, field: u64, v: u32) {
    let (_, width, _) = common::field(field).unwrap();
    t.w(field, width, v);
}

fn common_r(t: &mut ModernTransport, field: u64) -> u32 {
    let (_, width, _) = common::field(field).unwrap();
    t.r(field, width)
}

#[test]
fn identity_and_virtio_capabilities() {
    let hooks = Arc::new(FakeHooks::new(false));
    let mut t = place(Box::new(Rng), &hooks);
    assert_eq!(cfg(&mut t, 0, 4), 0x1044_1af4, "1af4:1040 + type 4");
    assert_eq!(cfg(&mut t, pcireg::REVISION, 1), 1);
    assert_eq!(
        cfg(&mut t, pcireg::BAR0, 4),
        BASE as u32,
        "32-bit memory BAR"
    );
    t.config_write(pcireg::BAR0, &[0xff; 4]);
    assert_eq!(cfg(&mut t, pcireg::BAR0, 4), !(BAR_SIZE as u32 - 1));
    t.config_write(pcireg::BAR0, &(BASE as u32).to_le_bytes());
    let caps = capabilities(&mut t);
    let virtio: Vec<(u8, u8, u32, u32)> = caps
        .iter()
        .filter(|c| c.1 == VENDOR_CAP)
        .map(|(_, _, b)| {
            let le = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            (b[3], b[4], le(8), le(12))
        })
        .collect();
    assert_eq!(
        virtio,
        [
            (CFG_COMMON, 0, COMMON as u32, COMMON_LEN as u32),
            (CFG_NOTIFY, 0, NOTIFY as u32, 4),
            (CFG_ISR, 0, ISR as u32, 1),
            (CFG_DEVICE, 0, DEVICE_CFG as u32, DEVICE_CFG_MAX as u32),
            (CFG_PCI, 0, 0, 0),
        ],
        "(cfg_type, bar, offset, length)"
    );
    let notify = caps
        .iter()
        .find(|c| c.1 == VENDOR_CAP && c.2[3] == CFG_NOTIFY);
    let multiplier = notify.map(|(at, _, _)| cfg(&mut t, at + 16, 4));
    assert_eq!(multiplier, Some(NOTIFY_MULTIPLIER));
    let (at, _, mx) = *caps.iter().find(|c| c.1 == msix::CAP_ID).unwrap();
    assert_eq!(at, t.msix_cap);
    assert_eq!(
        u16::from_le_bytes([mx[2], mx[3]]),
        1,
        "2 vectors: table size - 1"
    );
    assert_eq!(
        u32::from_le_bytes([mx[4], mx[5], mx[6], mx[7]]),
        MSIX_TABLE as u32
    );
    assert_eq!(
        u32::from_le_bytes([mx[8], mx[9], mx[10], mx[11]]),
        MSIX_PBA as u32
    );
    assert!(hooks.take().is_empty());
}

#[test]
fn common_fields_need_their_own_offset_and_width() {
    let hooks = Arc::new(FakeHooks::new(false));
    let (dev, _, _) = fake(2);
    let mut t = place(Box::new(dev), &hooks);
    reads_need_exact_offset_and_width(&mut t, &hooks, 0..COMMON_LEN, Rule::AccessWidth, |off| {
        common::field(off).map(|(s, w, _)| (s, w))
    });
    for ro in [
        common::DEVICE_FEATURE,
        common::NUM_QUEUES,
        common::CONFIG_GENERATION,
        common::QUEUE_NOTIFY_OFF,
    ] {
        common_w(&mut t, ro, 0);
        assert_eq!(hooks.take(), [Rule::ReadOnlyWrite], "{}", common::name(ro));
    }
    t.w(common::DEVICE_STATUS, 2, 1);
    assert_eq!(hooks.take(), [Rule::AccessWidth]);
    t.w(ISR, 1, 0);
    assert_eq!(hooks.take(), [Rule::IsrWrite]);
    t.r(ISR, 2);
    assert_eq!(hooks.take(), [Rule::AccessWidth]);
    t.r(0x1800, 4);
    t.w(MSIX_PBA, 4, 0);
    assert_eq!(hooks.take(), [Rule::AccessOffset, Rule::AccessOffset]);
    t.r(DEVICE_CFG + DEVICE_CFG_MAX - 2, 4);
    assert_eq!(
        hooks.take(),
        [Rule::AccessOffset],
        "crosses the device config's end"
    );
}

/// Each field reaches the core and reads back: feature windows by their
/// selects, queue fields of the selected queue, queue_notify_off.
#[test]
fn common_fields_reach_the_core() {
    let hooks = Arc::new(FakeHooks::new(false));
    let (dev, _, _) = fake(2);
    let mut t = place(Box::new(dev), &hooks);
    assert_eq!(common_r(&mut t, common::NUM_QUEUES), 2);
    assert_eq!(common_r(&mut t, common::DEVICE_FEATURE), 0b101);
    common_w(&mut t, common::DEVICE_FEATURE_SELECT, 1);
    assert_eq!(common_r(&mut t, common::DEVICE_FEATURE), 1, "VERSION_1");
    common_w(&mut t, common::DEVICE_STATUS, 3);
    common_w(&mut t, common::DRIVER_FEATURE_SELECT, 1);
    common_w(&mut t, common::DRIVER_FEATURE, 1);
    common_w(&mut t, common::DRIVER_FEATURE_SELECT, 0);
    common_w(&mut t, common::DRIVER_FEATURE, 0b100);
    assert_eq!(common_r(&mut t, common::DRIVER_FEATURE), 0b100);
    common_w(&mut t, common::DEVICE_STATUS, SDF.into());
    assert_eq!(common_r(&mut t, common::DEVICE_STATUS), u32::from(SDF));
    common_w(&mut t, common::MSIX_CONFIG, 0);
    assert_eq!(common_r(&mut t, common::MSIX_CONFIG), 0);
    common_w(&mut t, common::QUEUE_SELECT, 1);
    assert_eq!(common_r(&mut t, common::QUEUE_NOTIFY_OFF), 1);
    assert_eq!(common_r(&mut t, common::QUEUE_SIZE), 64);
    common_w(&mut t, common::QUEUE_SIZE, 32);
    common_w(&mut t, common::QUEUE_MSIX_VECTOR, 2);
    for (i, v) in [
        (0, 0x2_0000),
        (1, 0),
        (2, 0x2_0400),
        (3, 1),
        (4, 0x2_1000),
        (5, 0),
    ] {
        common_w(&mut t, 0x20 + 4 * i, v);
    }
    assert_eq!(common_r(&mut t, common::QUEUE_SIZE), 32);
    assert_eq!(common_r(&mut t, common::QUEUE_MSIX_VECTOR), 2);
    let addrs: Vec<u32> = (0..6).map(|i| common_r(&mut t, 0x20 + 4 * i)).collect();
    assert_eq!(addrs, [0x2_0000, 0, 0x2_0400, 1, 0x2_1000, 0]);
    assert!(hooks.take().is_empty());
    common_w(&mut t, common::QUEUE_SELECT, 0);
    assert_eq!(
        common_r(&mut t, common::QUEUE_SIZE),
        64,
        "queue 0 untouched"
    );
    common_w(&mut t, common::QUEUE_SELECT, 9);
    assert_eq!(common_r(&mut t, common::QUEUE_SIZE), 0, "no such queue");
    assert_eq!(common_r(&mut t, common::QUEUE_NOTIFY_OFF), 0);
}

/// A whole rng request through rings the driver placed: DRIVER_OK puts an
/// ioeventfd on the queue's notify address, the worker fills the buffer,
/// INTx fires (MSI-X is off) with ISR bit 0, reset unregisters it.
#[test]
fn rng_request_through_modern_rings() {
    let hooks = Arc::new(FakeHooks::new(false));
    let mut t = place(Box::new(Rng), &hooks);
    let mem = hooks.mem.clone();
    let (desc, avail, used) = (0x1_0000u64, 0x1_1000u64, 0x1_2000u64);
    mem.write_obj(0x2_0000u64, GuestAddress(desc)).unwrap();
    mem.write_obj(16u32, GuestAddress(desc + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap(); // WRITE
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap(); // ring[0]
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap(); // idx
    common_w(&mut t, common::DEVICE_STATUS, 3);
    common_w(&mut t, common::DRIVER_FEATURE_SELECT, 1);
    common_w(
        &mut t,
        common::DRIVER_FEATURE,
        (feature::VERSION_1 >> 32) as u32,
    );
    common_w(&mut t, common::DEVICE_STATUS, SDF.into());
    assert_eq!(common_r(&mut t, common::DEVICE_STATUS), u32::from(SDF));
    common_w(&mut t, common::QUEUE_SIZE, 16);
    for (i, a) in [desc, avail, used].into_iter().enumerate() {
        common_w(&mut t, 0x20 + 8 * i as u64, a as u32);
    }
    t.w(NOTIFY, 2, 0);
    assert_eq!(hooks.take(), [Rule::NotifyBeforeDriverOk]);
    common_w(&mut t, common::QUEUE_ENABLE, 1);
    common_w(
        &mut t,
        common::DEVICE_STATUS,
        u32::from(SDF | status::DRIVER_OK),
    );
    assert!(hooks.take().is_empty());
    assert_eq!(hooks.ioevent_addresses(), [BASE + NOTIFY]);
    // Without KVM the notify write reaches the map, which kicks.
    t.w(NOTIFY, 2, 0);
    wait_for("used ring", || {
        mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap() == 1
    });
    assert_eq!(mem.read_obj::<u32>(GuestAddress(used + 8)).unwrap(), 16);
    wait_for("interrupt", || hooks.pulses() > 0);
    assert_eq!(t.r(ISR, 1), 1);
    assert_eq!(t.r(ISR, 1), 0, "read clears");
    t.w(NOTIFY + 4, 2, 1);
    assert_eq!(hooks.take(), [Rule::NotifyBadQueue]);
    common_w(&mut t, common::DEVICE_STATUS, 0);
    assert_eq!(*hooks.unregistered.lock().unwrap(), [BASE + NOTIFY]);
    assert!(hooks.ioevent_addresses().is_empty());
}

/// MSI-X: enabling it in the capability and writing a table entry routes
/// the vector; the table and PBA read back.
#[test]
fn msix_table_routes_vectors() {
    let hooks = Arc::new(FakeHooks::new(false));
    let mut t = place(Box::new(Rng), &hooks);
    let ctrl = t.msix_cap + 2;
    t.config_write(ctrl, &msix::CTRL_ENABLE.to_le_bytes());
    assert_ne!(cfg(&mut t, ctrl, 2) as u16 & msix::CTRL_ENABLE, 0);
    let entry = MSIX_TABLE + msix::ENTRY_SIZE as u64;
    t.w(entry, 4, 0xfee0_0000);
    t.w(entry + 4, 4, 0);
    t.w(entry + 8, 4, 0x41);
    t.w(entry + 12, 4, 0); // unmask
    assert_eq!(t.r(entry + 8, 4), 0x41);
    let routes = hooks.routes.lock().unwrap().clone();
    let last = routes
        .iter()
        .rev()
        .find(|(v, _)| *v == 1)
        .map(|(_, m)| m.data);
    assert_eq!(last, Some(0x41));
    assert_eq!(t.r(MSIX_PBA, 4), 0, "nothing pending");
    assert!(hooks.take().is_empty());
}

/// VIRTIO_PCI_CAP_PCI_CFG: a window into BAR0 through config space
/// (§4.1.4.7), with its own access rules.
#[test]
fn pci_cfg_window_reaches_bar0() {
    let hooks = Arc::new(FakeHooks::new(false));
    let mut t = place(Box::new(Rng), &hooks);
    let cap = t.pci_cfg_cap;
    let set = |t: &mut ModernTransport, offset: u32, length: u32| {
        t.config_write(cap + 4, &[0]);
        t.config_write(cap + 8, &offset.to_le_bytes());
        t.config_write(cap + 12, &length.to_le_bytes());
    };
    set(&mut t, common::DEVICE_STATUS as u32, 1);
    t.config_write(cap + 16, &[1]);
    assert_eq!(common_r(&mut t, common::DEVICE_STATUS), 1);
    set(&mut t, common::NUM_QUEUES as u32, 2);
    assert_eq!(cfg(&mut t, cap + 16, 4) & 0xffff, 1);
    assert!(hooks.take().is_empty());
    // A narrower read of pci_cfg_data reads part of it (§4.1.4.9.1).
    set(&mut t, common::NUM_QUEUES as u32, 2);
    assert_eq!(cfg(&mut t, cap + 16, 1), 1);
    assert!(hooks.take().is_empty());
    set(&mut t, common::NUM_QUEUES as u32, 3);
    cfg(&mut t, cap + 16, 4);
    set(&mut t, 1, 2);
    cfg(&mut t, cap + 16, 4);
    set(&mut t, MSIX_TABLE as u32, 4);
    cfg(&mut t, cap + 16, 4);
    assert_eq!(
        hooks.take(),
        [Rule::PciCfgLength, Rule::PciCfgAccess, Rule::PciCfgAccess],
        "length 3; misaligned; the MSI-X table is no virtio structure"
    );
    // The capabilities themselves are read-only to the driver (§4.1.4.1).
    let common_cap = capabilities(&mut t)[0].0;
    t.config_write(common_cap + 8, &[0x40]);
    assert_eq!(hooks.take(), [Rule::CapabilityWrite]);
    t.config_write(cap + 4, &[0]);
    assert!(
        hooks.take().is_empty(),
        "the window's bar field is the driver's"
    );
}
