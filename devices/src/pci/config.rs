//! A PCI function's 256-byte configuration space, with the rules of what
//! the guest may change.
//!
//! Every byte has a write mask: read-only identity fields ignore writes,
//! BARs keep their size alignment (that is what makes the sizing probe,
//! writing all ones and reading back, return the size), and the status
//! register's error bits are write-one-to-clear. Capabilities are appended
//! to a linked list starting at 0x34. Reads and writes of any width at any
//! offset work, because config mechanism #1 allows them.

/// Standard header offsets.
pub mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const PROG_IF: usize = 0x09;
    pub const SUBCLASS: usize = 0x0a;
    pub const CLASS: usize = 0x0b;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    pub const SUBSYSTEM_ID: usize = 0x2e;
    pub const CAPABILITIES: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
    pub const INTERRUPT_PIN: usize = 0x3d;
}

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
pub const STATUS_CAP_LIST: u16 = 1 << 4;

pub const CONFIG_SIZE: usize = 256;
const FIRST_CAP: usize = 0x40;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
}

/// A BAR the function declared: its index, kind and size (a power of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub index: usize,
    pub kind: BarKind,
    pub size: u64,
}

/// Identity of a function, fixed when it is created.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    /// Bits the guest may write.
    writable: [u8; CONFIG_SIZE],
    /// Bits that a written 1 clears (status error bits).
    w1c: [u8; CONFIG_SIZE],
    bars: Vec<Bar>,
    next_cap: usize,
    last_cap: Option<usize>,
}

impl ConfigSpace {
    /// A type-0 header with `id`; command register writable for I/O,
    /// memory, bus master and INTx disable.
    pub fn new(id: Identity) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            w1c: [0; CONFIG_SIZE],
            bars: Vec::new(),
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.set_u16(reg::VENDOR_ID, id.vendor);
        c.set_u16(reg::DEVICE_ID, id.device);
        c.bytes[reg::REVISION] = id.revision;
        c.bytes[reg::PROG_IF] = id.prog_if;
        c.bytes[reg::SUBCLASS] = id.subclass;
        c.bytes[reg::CLASS] = id.class;
        c.set_u16(reg::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set_u16(reg::SUBSYSTEM_ID, id.subsystem);
        let cmd = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());
        // Status: the error bits 8 and 11..15 are write-one-to-clear.
        c.w1c[reg::STATUS + 1] = 0xf9;
        c.writable[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declares BAR `index` of `size` bytes (rounded up to a power of two,
    /// at least 16 for memory and 4 for I/O).
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) -> Bar {
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let size = size.max(min).next_power_of_two();
        let off = reg::BAR0 + index * 4;
        let mask = !(size as u32 - 1);
        let flags: u32 = if kind == BarKind::Io { 1 } else { 0 };
        self.set_u32(off, flags);
        self.writable[off..off + 4].copy_from_slice(&mask.to_le_bytes());
        let bar = Bar { index, kind, size };
        self.bars.push(bar);
        bar
    }

    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }

    /// The address BAR `index` decodes, as the guest (or we) programmed it.
    pub fn bar_address(&self, index: usize) -> u64 {
        let v = self.u32(reg::BAR0 + index * 4);
        match self.bars.iter().find(|b| b.index == index) {
            Some(b) if b.kind == BarKind::Io => u64::from(v & !0x3),
            _ => u64::from(v & !0xf),
        }
    }

    /// Programs BAR `index`, as firmware does before the OS starts.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        let off = reg::BAR0 + index * 4;
        let low = self.u32(off) & 0xf;
        self.set_u32(off, (addr as u32 & !0xf) | low);
    }

    /// Routes INTx pin `pin` (1 = INTA) to interrupt line `line`.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.bytes[reg::INTERRUPT_PIN] = pin;
        self.bytes[reg::INTERRUPT_LINE] = line;
    }

    /// Appends a capability with id `id` and `body` (the bytes after the
    /// id/next pair); `writable` marks which body bits the guest may set.
    /// Returns the capability's offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let off = self.next_cap;
        let len = 2 + body.len();
        assert!(
            off + len <= CONFIG_SIZE,
            "capabilities overflow config space"
        );
        self.bytes[off] = id;
        self.bytes[off + 2..off + len].copy_from_slice(body);
        for (i, w) in writable.iter().enumerate().take(body.len()) {
            self.writable[off + 2 + i] = *w;
        }
        match self.last_cap {
            None => {
                self.bytes[reg::CAPABILITIES] = off as u8;
                let st = self.u16(reg::STATUS) | STATUS_CAP_LIST;
                self.set_u16(reg::STATUS, st);
            }
            Some(prev) => self.bytes[prev + 1] = off as u8,
        }
        self.last_cap = Some(off);
        self.next_cap = (off + len + 3) & !3;
        off
    }

    /// Reads `data.len()` bytes at `offset`; past the end reads zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Writes what the guest may change of `data` at `offset`.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let o = offset + i;
            if o >= CONFIG_SIZE {
                break;
            }
            let w = self.writable[o];
            let clear = self.w1c[o] & v;
            self.bytes[o] = ((self.bytes[o] & !w) | (v & w)) & !clear;
        }
    }

    pub fn u8(&self, off: usize) -> u8 {
        self.bytes[off]
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }
    pub fn u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[off..off + 4]);
        u32::from_le_bytes(b)
    }
    /// Device-side update, not subject to the guest's write masks.
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn command(&self) -> u16 {
        self.u16(reg::COMMAND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x01,
            revision: 1,
            ..Default::default()
        })
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = space();
        c.write(0, &[0, 0, 0, 0]);
        let mut b = [0u8; 4];
        c.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1042_1af4);
        let mut b = [0u8; 1];
        c.read(reg::DEVICE_ID + 1, &mut b);
        assert_eq!(b[0], 0x10);
    }

    #[test]
    fn bar_sizing_probe_returns_the_size() {
        let mut c = space();
        c.add_bar(0, BarKind::Mem32, 0x3000);
        c.add_bar(1, BarKind::Io, 0x20);
        c.write(reg::BAR0, &[0xff; 4]);
        assert_eq!(c.u32(reg::BAR0), 0xffff_c000, "rounded up to 16 KiB");
        c.write(reg::BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.u32(reg::BAR0 + 4), 0xffff_ffe1);
        c.set_bar_address(0, 0xc000_4000);
        assert_eq!(c.bar_address(0), 0xc000_4000);
        assert_eq!(c.u32(reg::BAR0 + 8), 0, "undeclared BAR reads 0");
    }

    #[test]
    fn command_writable_status_w1c() {
        let mut c = space();
        c.write(reg::COMMAND, &[0xff, 0xff]);
        assert_eq!(c.command(), 0x0407);
        c.set_u16(reg::STATUS, 0x8010);
        c.write(reg::STATUS, &[0x00, 0x80]);
        assert_eq!(c.u16(reg::STATUS), 0x0010);
    }

    #[test]
    fn capabilities_are_linked() {
        let mut c = space();
        let a = c.add_capability(0x09, &[1, 2, 3], &[0, 0, 0]);
        let b = c.add_capability(0x11, &[0; 10], &[0xff; 10]);
        assert_eq!(c.u8(reg::CAPABILITIES) as usize, a);
        assert_eq!(c.u8(a + 1) as usize, b);
        assert_eq!(c.u8(b + 1), 0);
        assert_ne!(c.u16(reg::STATUS) & STATUS_CAP_LIST, 0);
        assert_eq!(b % 4, 0);
        c.write(b + 2, &[0xab]);
        assert_eq!(c.u8(b + 2), 0xab);
        c.write(a + 2, &[0xab]);
        assert_eq!(c.u8(a + 2), 1);
    }
}
