//! Scenarios that move a live virtio-rng function's BAR as an OS does when
//! it re-enumerates the bus, then use the device at its new address:
//!
//! - `virtio-rng-bar-move` (`--rng`, modern): with queue 0 running, sizes
//!   BAR0 with memory decoding on (all ones), moves it to [`NEW_MEM`], and
//!   checks that the old address reads all ones and that a notification
//!   written there is served by nobody, that the MSI-X table answers at the
//!   new address only, that clearing memory space hides the BAR (and its
//!   notify address) and setting it brings them back; then reads random
//!   bytes at the new address.
//! - `virtio-rng-legacy-bar-move` (`--legacy --rng`): the I/O BAR moved as
//!   Linux does on a rescan (I/O decoding off, sizing, [`NEW_IO`], decoding
//!   on), the same checks of the old ports, then a second move with
//!   decoding on to [`NEW_IO2`] and a read there.
//!
//! Lines: `GUEST-BAR-SIZE`, `GUEST-BAR-MOVED old=… new=…`, `GUEST-BAR-OLD
//! status=… kicked=yes|no`, `GUEST-BAR-MSIX new=… old=…`, `GUEST-BAR-DECODE
//! off=… kicked=… on=…`, `GUEST-RNG-MOVED a=<hex> b=<hex>`, `GUEST-STATUS`.

use crate::clock::Deadline;
use crate::cmdline::Cmdline;
use crate::legacy_scenarios::{self, Legacy, RNG_LEGACY_DEVICE};
use crate::pci::{self, Slot};
use crate::scenarios::{finish, Scenario};
use crate::virtio::{buffer, read32, write32, Device, Vq, Window, DESC_WRITE, VENDOR};
use crate::virtio_scenarios::{fail, print_hex, read_random, ready};
use crate::{print, println};

/// Where the modern BAR goes: in the MMIO hole, clear of the launcher's
/// own placements (from 3 GiB up).
const NEW_MEM: u32 = 0xd000_0000;
/// Where the legacy BAR goes: the first ports Linux hands out on a rescan,
/// then a second place.
const NEW_IO: u16 = 0x1000;
const NEW_IO2: u16 = 0x1400;
/// The MSI-X capability's id.
const CAP_MSIX: u8 = 0x11;
/// What a test entry's message data is.
const MSIX_DATA: u32 = 0x31;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("virtio-rng-bar-move", modern),
    ("virtio-rng-legacy-bar-move", legacy),
];

/// Runs `name` if it is one of ours; returns if it is not.
pub fn run(name: &str, cmdline: &Cmdline) {
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
        f(cmdline)
    }
}

/// Sizes BAR0 as an OS does: all ones, read back. The BAR keeps the
/// sizing pattern until the caller writes an address.
fn size_bar(slot: Slot) -> u32 {
    slot.write32(pci::BAR0, u32::MAX);
    let v = slot.read32(pci::BAR0);
    let flags = if v & 1 != 0 { 0x3 } else { 0xf };
    (!(v & !flags)).wrapping_add(1)
}

/// Puts one 32-byte device-writable buffer (`n`) on the queue without
/// notifying.
fn post(vq: &mut Vq, n: u64) {
    let head = (n % u64::from(vq.size)) as u16;
    vq.set_desc(head, buffer(n), 32, DESC_WRITE, 0);
    vq.offer(head);
}

/// Whether the device serves the posted buffer within a second or two:
/// far longer than a worker woken by a notification takes.
fn served_soon(vq: &mut Vq) -> bool {
    let mut deadline = Deadline::after(1);
    while !deadline.expired() {
        if vq.poll_used().is_some() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Serves the buffer [`post`]ed last through `notify` (a notification at
/// the device's current address), or fails the scenario.
fn served(vq: &mut Vq, notify: impl Fn(&Vq)) {
    notify(vq);
    if vq.wait_used().is_none() {
        fail("a notification at the BAR's new address was not served");
    }
}

/// `d` as found at `bar0` instead: every window moved with the BAR.
fn rebased(d: &Device, bar0: u64) -> Device {
    let shift = |w: Window| Window {
        addr: w.addr - d.bar0 + bar0,
        len: w.len,
    };
    Device {
        slot: d.slot,
        bar0,
        common_bar: d.common_bar,
        common: shift(d.common),
        notify: shift(d.notify),
        notify_multiplier: d.notify_multiplier,
        isr: shift(d.isr),
        device_cfg: shift(d.device_cfg),
        pci_cfg_cap: d.pci_cfg_cap,
    }
}

/// The MSI-X table's offset in BAR0, from the capability.
fn msix_table(slot: Slot) -> u64 {
    let Some((cap, _)) = slot.capabilities().find(|&(_, id)| id == CAP_MSIX) else {
        fail("no MSI-X capability")
    };
    u64::from(slot.read32(cap + 4) & !7)
}

fn modern(_: &Cmdline) -> ! {
    let (d, mut vq) = ready();
    let a = read_random(&d, &mut vq, 0);
    let size = size_bar(d.slot);
    println!("GUEST-BAR-SIZE {size:#x}");
    if d.status() != 0xff {
        fail("BAR0 answers at its old address while it holds the sizing pattern");
    }
    d.slot.write32(pci::BAR0, NEW_MEM);
    let m = rebased(&d, NEW_MEM.into());
    println!("GUEST-BAR-MOVED old={:#x} new={:#x}", d.bar0, m.bar0);
    post(&mut vq, 1);
    d.notify(&vq);
    let kicked = served_soon(&mut vq);
    let old = d.status();
    println!("GUEST-BAR-OLD status={old:#04x} kicked={}", yes_no(kicked));
    if old != 0xff || kicked {
        fail("the old address still answers");
    }
    served(&mut vq, |vq| m.notify(vq));

    // The MSI-X table moved with the BAR: entry 0's message data.
    let table = msix_table(m.slot);
    write32(m.bar0 + table, 0xfee0_0000);
    write32(m.bar0 + table + 8, MSIX_DATA);
    let (new, old) = (read32(m.bar0 + table + 8), read32(d.bar0 + table + 8));
    println!("GUEST-BAR-MSIX new={new:#x} old={old:#x}");
    if new != MSIX_DATA || old != u32::MAX {
        fail("the MSI-X table did not move with BAR0");
    }

    // Memory space off: neither the registers nor the notify address
    // answer; on again: both do, where the BAR is now.
    let cmd = m.slot.read16(pci::COMMAND);
    m.slot.write16(pci::COMMAND, cmd & !pci::COMMAND_MEMORY);
    let off = m.status();
    post(&mut vq, 2);
    m.notify(&vq);
    let kicked = served_soon(&mut vq);
    m.slot.write16(pci::COMMAND, cmd);
    let on = m.status();
    println!(
        "GUEST-BAR-DECODE off={off:#04x} kicked={} on={on:#04x}",
        yes_no(kicked)
    );
    if off != 0xff || kicked || on == 0xff {
        fail("decoding does not follow the memory space bit");
    }
    served(&mut vq, |vq| m.notify(vq));

    let b = read_random(&m, &mut vq, 3);
    end(&a, &b, m.status())
}

/// Prints the random bytes read before and after the move and the status,
/// and ends the scenario.
fn end(a: &[u8], b: &[u8], status: u8) -> ! {
    print!("GUEST-RNG-MOVED a=");
    print_hex(a);
    print!(" b=");
    print_hex(b);
    println!();
    println!("GUEST-STATUS {status:#04x}");
    if a == b {
        fail("the two random reads are equal");
    }
    finish()
}

fn legacy(_: &Cmdline) -> ! {
    let (d, mut vq) = legacy_scenarios::ready();
    let a = legacy_scenarios::read_random(&d, &mut vq, 0);
    let Some(slot) = pci::find(VENDOR, RNG_LEGACY_DEVICE) else {
        fail("the legacy virtio-rng went away")
    };
    // As Linux does on a rescan: decoding off, sizing, the new ports,
    // decoding on. While off, the notify port reaches nobody either.
    let cmd = slot.read16(pci::COMMAND);
    slot.write16(pci::COMMAND, cmd & !pci::COMMAND_IO);
    let off = d.status();
    post(&mut vq, 1);
    d.notify(&vq);
    let kicked_off = served_soon(&mut vq);
    let size = size_bar(slot);
    slot.write32(pci::BAR0, NEW_IO.into());
    slot.write16(pci::COMMAND, cmd);
    let m = Legacy { io: NEW_IO };
    println!("GUEST-BAR-SIZE {size:#x}");
    println!(
        "GUEST-BAR-DECODE off={off:#04x} kicked={} on={:#04x}",
        yes_no(kicked_off),
        m.status()
    );
    println!("GUEST-BAR-MOVED old={:#x} new={:#x}", d.io, m.io);
    d.notify(&vq);
    let kicked = served_soon(&mut vq);
    let old = d.status();
    println!("GUEST-BAR-OLD status={old:#04x} kicked={}", yes_no(kicked));
    if off != 0xff || kicked_off || old != 0xff || kicked {
        fail("the old ports still answer");
    }
    served(&mut vq, |vq| m.notify(vq));

    // Once more with decoding on, as Linux's reassignment writes it.
    slot.write32(pci::BAR0, NEW_IO2.into());
    let m2 = Legacy { io: NEW_IO2 };
    println!("GUEST-BAR-MOVED old={:#x} new={:#x}", m.io, m2.io);
    if m.status() != 0xff {
        fail("the ports of the first move still answer");
    }
    let b = legacy_scenarios::read_random(&m2, &mut vq, 2);
    end(&a, &b, m2.status())
}
