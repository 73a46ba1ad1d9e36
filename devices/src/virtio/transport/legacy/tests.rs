//! The legacy register map: PCI identity, header decoding, ring layout
//! from a page number, and the shared notify port. What the registers do
//! is the core's and tested there (`../core/tests.rs`).
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::testing::{fake, reads_need_exact_offset_and_width, wait_for, FakeHooks, Regs, RAM};
use super::*;
use crate::pci::config::reg as pcireg;
use crate::virtio::device::status;
use crate::virtio::rng::Rng;

const BASE: u64 = 0xc000;
const S: u8 = status::ACKNOWLEDGE;
const SD: u8 = S | status::DRIVER;
const SDO: u8 = SD | status::DRIVER_OK;

fn place(device: Box<dyn VirtioDevice>, hooks: &Arc<FakeHooks>) -> LegacyTransport {
    let mut t = LegacyTransport::new(device, 3, hooks.clone());
    t.config_mut().set_bar_address(0, BASE);
    t.config_mut().set_interrupt(1, 19);
    t.connect_interrupts().unwrap();
    t
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
    reads_need_exact_offset_and_width(
        &mut t,
        &hooks,
        0..DEVICE_CFG,
        Rule::LegacyHeaderAccess,
        |off| reg::field(off).map(|(s, w, _)| (s, w)),
    );
    assert_eq!(t.r(reg::HOST_FEATURES, 4), 0b101, "no VERSION_1");
    assert_eq!(t.r(reg::QUEUE_NUM, 2), 64);
    t.w(reg::QUEUE_SEL, 2, 1);
    assert_eq!(t.r(reg::QUEUE_SEL, 2), 1);
    assert_eq!(t.r(reg::QUEUE_NUM, 2), 64);
    t.w(reg::QUEUE_SEL, 2, 7);
    assert_eq!(t.r(reg::QUEUE_NUM, 2), 0, "no such queue");
    t.w(reg::STATUS, 4, S.into());
    assert_eq!(hooks.take(), [Rule::LegacyHeaderAccess]);
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
    assert_eq!(hooks.take(), [Rule::LegacyFeatureAfterDriverOk]);
    t.w(reg::HOST_FEATURES, 4, 0);
    t.w(reg::QUEUE_NUM, 2, 16);
    t.w(reg::ISR, 1, 0);
    assert_eq!(hooks.take(), [Rule::LegacyHeaderAccess; 3]);
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
    assert_eq!(hooks.ioevent_addresses(), [BASE + 16]);
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
    assert_eq!(*hooks.unregistered.lock().unwrap(), [BASE + 16]);
    assert!(hooks.ioevent_addresses().is_empty());
}

#[test]
fn queue_pfn_rules() {
    let hooks = Arc::new(FakeHooks::new(false));
    let (dev, _, _) = fake(1);
    let mut t = place(Box::new(dev), &hooks);
    t.w(reg::STATUS, 1, SD.into());
    t.w(reg::QUEUE_PFN, 4, 0x10);
    assert_eq!(hooks.take(), [Rule::LegacyQueuePfnBeforeFeatures]);
    assert_eq!(
        t.r(reg::QUEUE_PFN, 4),
        0x10,
        "a warning: placed all the same"
    );
    t.w(reg::QUEUE_PFN, 4, 0);
    t.w(reg::GUEST_FEATURES, 4, 0);
    t.w(reg::QUEUE_PFN, 4, (RAM as u32) >> 12);
    assert_eq!(hooks.take(), [Rule::QueueAddressOutsideMemory]);
    t.w(reg::QUEUE_SEL, 2, 1);
    t.w(reg::QUEUE_PFN, 4, 0x10);
    assert_eq!(hooks.take(), [Rule::QueueSelectOutOfRange]);
    t.w(reg::QUEUE_SEL, 2, 0);
    t.w(reg::QUEUE_PFN, 4, 0x10);
    t.w(reg::STATUS, 1, SDO.into());
    t.w(reg::QUEUE_PFN, 4, 0);
    assert_eq!(hooks.take(), [Rule::QueueSetupAfterDriverOk]);
    assert_eq!(t.r(reg::QUEUE_PFN, 4), 0x10);
}
