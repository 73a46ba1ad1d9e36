//! PCI configuration space through mechanism #1: the address register at
//! 0xCF8 (enable bit, bus, device, function, dword-aligned register) and
//! the data window at 0xCFC–0xCFF, which takes 8-, 16- and 32-bit accesses
//! at the byte offset within the dword. Bus 0, function 0 only: that is
//! all the launcher has, and where QEMU's `-device` puts functions too.
//! BARs are read, never placed: the launcher or the firmware (SeaBIOS
//! under QEMU) has done that.

use crate::port::{inb, inl, inw, outb, outl, outw};
use crate::println;

pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const CONFIG_DATA: u16 = 0xcfc;

/// Standard header offsets.
pub const VENDOR_ID: u8 = 0x00;
pub const DEVICE_ID: u8 = 0x02;
pub const COMMAND: u8 = 0x04;
pub const STATUS: u8 = 0x06;
pub const CLASS_REV: u8 = 0x08;
pub const BAR0: u8 = 0x10;
pub const SUBSYSTEM_ID: u8 = 0x2e;
pub const CAPABILITIES: u8 = 0x34;
/// BAR low bits: I/O space; memory type 64-bit (bits 2:1 = 2).
const BAR_IO: u32 = 1;
const BAR_MEM_TYPE_MASK: u32 = 0x6;
const BAR_MEM_64: u32 = 0x4;

/// Command register: I/O space decoding.
pub const COMMAND_IO: u16 = 1;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Function 0 of a slot on bus 0.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub u8);

impl Slot {
    fn select(self, reg: u8) -> u16 {
        let addr = 0x8000_0000u32 | (u32::from(self.0 & 0x1f) << 11) | u32::from(reg & 0xfc);
        outl(CONFIG_ADDRESS, addr);
        CONFIG_DATA + u16::from(reg & 3)
    }

    pub fn read8(self, reg: u8) -> u8 {
        inb(self.select(reg))
    }

    pub fn read16(self, reg: u8) -> u16 {
        inw(self.select(reg))
    }

    pub fn read32(self, reg: u8) -> u32 {
        inl(self.select(reg))
    }

    pub fn write8(self, reg: u8, v: u8) {
        outb(self.select(reg), v)
    }

    pub fn write16(self, reg: u8, v: u16) {
        outw(self.select(reg), v)
    }

    pub fn write32(self, reg: u8, v: u32) {
        outl(self.select(reg), v)
    }

    pub fn vendor(self) -> u16 {
        self.read16(VENDOR_ID)
    }

    pub fn device(self) -> u16 {
        self.read16(DEVICE_ID)
    }

    /// Class, subclass, programming interface (the top 24 bits at 0x08).
    pub fn class(self) -> u32 {
        self.read32(CLASS_REV) >> 8
    }

    /// The address of memory BAR `index` (both halves of a 64-bit BAR),
    /// or `None` for an I/O BAR, an unassigned one, or `index` > 5.
    pub fn memory_bar(self, index: u8) -> Option<u64> {
        if index > 5 {
            return None;
        }
        let reg = BAR0 + 4 * index;
        let lo = self.read32(reg);
        if lo & BAR_IO != 0 {
            return None;
        }
        let hi = if lo & BAR_MEM_TYPE_MASK == BAR_MEM_64 && index < 5 {
            self.read32(reg + 4)
        } else {
            0
        };
        let addr = u64::from(hi) << 32 | u64::from(lo & !0xf);
        (addr != 0).then_some(addr)
    }

    /// The capability list: (offset, id) of each entry.
    pub fn capabilities(self) -> Capabilities {
        let first = if self.read16(STATUS) & STATUS_CAP_LIST != 0 {
            self.read8(CAPABILITIES) & 0xfc
        } else {
            0
        };
        Capabilities {
            slot: self,
            next: first,
            left: 48,
        }
    }
}

/// Walks a function's capability list (bounded, so a broken list ends).
pub struct Capabilities {
    slot: Slot,
    next: u8,
    left: u8,
}

impl Iterator for Capabilities {
    type Item = (u8, u8);

    fn next(&mut self) -> Option<(u8, u8)> {
        if self.next < 0x40 || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let off = self.next;
        let header = self.slot.read16(off);
        self.next = (header >> 8) as u8 & 0xfc;
        Some((off, header as u8))
    }
}

/// Prints `GUEST-PCI 00:SS.0 vvvv:dddd cccccc` for every function on bus 0
/// and `GUEST-PCI-CAP 00:SS.0 at=OO id=II` for each of its capabilities.
pub fn enumerate() {
    for s in 0..32 {
        let slot = Slot(s);
        let id = slot.read32(VENDOR_ID);
        if id as u16 == 0xffff {
            continue;
        }
        println!(
            "GUEST-PCI 00:{s:02x}.0 {:04x}:{:04x} {:06x}",
            id as u16,
            id >> 16,
            slot.class()
        );
        for (off, cap) in slot.capabilities() {
            println!("GUEST-PCI-CAP 00:{s:02x}.0 at={off:02x} id={cap:02x}");
        }
    }
}

/// The first function with this vendor and device id.
pub fn find(vendor: u16, device: u16) -> Option<Slot> {
    (0..32)
        .map(Slot)
        .find(|s| s.read32(VENDOR_ID) == (u32::from(device) << 16 | u32::from(vendor)))
}
