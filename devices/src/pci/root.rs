//! PCI configuration mechanism #1 (ports 0xCF8–0xCFF) and bus 0.
//!
//! The guest writes a 32-bit address (enable bit, bus, device, function,
//! register) to 0xCF8 and then reads or writes 0xCFC–0xCFF with any width
//! at any byte offset. Bus 0 has up to 32 slots, one function each; slot 0
//! is the host bridge. Everything else (other buses, functions, empty
//! slots) reads all ones, which is how software sees "no device".
//!
//! A byte write to 0xCF9 is the PC's reset control register: bit 2 with
//! bit 1 asks for a reset, which Linux uses for `reboot=pci`.
//!
//! After a write that can move a BAR or switch its decoding, every function
//! gets [`PciFunction::retry_bars`]: a placement refused because another
//! function's BAR was in the way may be possible now.

use std::sync::{Arc, Mutex};

use super::bars::touches_decoding;
use super::config::{ConfigSpace, Identity};
use crate::bus::{lock, BusDevice};
use crate::control::{VmControl, VmRequest};

/// The ports: address register at 0xCF8, data window at 0xCFC.
pub const CONFIG_PORT: u64 = 0xcf8;
pub const CONFIG_PORT_LEN: u64 = 8;
pub const SLOTS: usize = 32;

/// A PCI function as the root complex sees it: a configuration space.
pub trait PciFunction: Send {
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// Some function's BARs moved or stopped decoding: map any BAR of this
    /// one whose placement was refused because something was in the way.
    fn retry_bars(&mut self) {}
}

pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// Decoded config address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Address {
    bus: u8,
    slot: u8,
    function: u8,
    register: usize,
}

fn decode(addr: u32) -> Option<Address> {
    (addr & 0x8000_0000 != 0).then_some(Address {
        bus: (addr >> 16) as u8,
        slot: ((addr >> 11) & 0x1f) as u8,
        function: ((addr >> 8) & 0x7) as u8,
        register: (addr & 0xfc) as usize,
    })
}

pub struct PciRoot {
    address: u32,
    slots: Vec<Option<SharedFunction>>,
    control: VmControl,
}

impl PciRoot {
    /// A bus with `bridge` in slot 0.
    pub fn new(bridge: SharedFunction, control: VmControl) -> Self {
        let mut slots = vec![None; SLOTS];
        slots[0] = Some(bridge);
        Self {
            address: 0,
            slots,
            control,
        }
    }

    /// Puts `function` in the first free slot; returns the slot number, or
    /// `None` when the bus is full.
    pub fn add(&mut self, function: SharedFunction) -> Option<u8> {
        let slot = self.slots.iter().position(Option::is_none)?;
        self.slots[slot] = Some(function);
        Some(slot as u8)
    }

    /// The slot [`PciRoot::add`] would use next.
    pub fn free_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|s| s as u8)
    }

    fn target(&self) -> Option<(SharedFunction, usize)> {
        let a = decode(self.address)?;
        if a.bus != 0 || a.function != 0 {
            return None;
        }
        let f = self.slots.get(a.slot as usize)?.clone()?;
        Some((f, a.register))
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target() {
                Some((f, reg)) => lock(&f).config_read(reg + (offset as usize - 4), data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b);
            }
            1 if data.len() == 1 && data[0] & 0x06 == 0x06 => {
                self.control.request(VmRequest::Reboot {
                    reason: "reset control register 0xcf9".into(),
                });
            }
            4..=7 => {
                if let Some((f, reg)) = self.target() {
                    let at = reg + (offset as usize - 4);
                    lock(&f).config_write(at, data);
                    if touches_decoding(at, data.len()) {
                        for g in self.slots.iter().flatten() {
                            lock(g).retry_bars();
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The host bridge in slot 0: identity only, no BARs.
pub struct HostBridge(pub ConfigSpace);

impl HostBridge {
    /// Intel 440FX's ids, which every guest OS knows as a plain host bridge.
    pub fn new() -> Self {
        Self::with_identity(Identity {
            vendor: 0x8086,
            device: 0x1237,
            class: 0x06,
            subclass: 0x00,
            revision: 0x02,
            ..Default::default()
        })
    }

    pub fn with_identity(id: Identity) -> Self {
        Self(ConfigSpace::new(id))
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (PciRoot, crate::control::Requests) {
        let (control, rx) = VmControl::new().unwrap();
        (
            PciRoot::new(Arc::new(Mutex::new(HostBridge::new())), control),
            rx,
        )
    }

    fn addr(slot: u32, reg: u32) -> [u8; 4] {
        (0x8000_0000 | (slot << 11) | reg).to_le_bytes()
    }

    #[test]
    fn reads_host_bridge_at_every_width_and_offset() {
        let (mut r, _rx) = root();
        r.write(0, &addr(0, 0));
        let mut d = [0u8; 4];
        r.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1237_8086);
        let mut w = [0u8; 2];
        r.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1237);
        let mut b = [0u8; 1];
        r.read(7, &mut b);
        assert_eq!(b[0], 0x12);
        r.write(0, &addr(0, 8));
        r.read(7, &mut b);
        assert_eq!(b[0], 0x06, "class code");
        let mut back = [0u8; 4];
        r.read(0, &mut back);
        assert_eq!(back, addr(0, 8));
    }

    #[test]
    fn empty_slots_functions_and_disabled_reads_are_all_ones() {
        let (mut r, _rx) = root();
        let mut d = [0u8; 4];
        r.write(0, &addr(5, 0));
        r.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        r.write(0, &(0x8000_0100u32).to_le_bytes()); // slot 0, function 1
        r.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        r.write(0, &0u32.to_le_bytes()); // enable bit clear
        r.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn cf9_reset() {
        let (mut r, rx) = root();
        r.write(1, &[0x02]);
        assert!(rx.try_recv().is_err());
        r.write(1, &[0x06]);
        assert!(matches!(rx.try_recv(), Ok(VmRequest::Reboot { .. })));
    }

    #[test]
    fn slots_fill_in_order() {
        let (mut r, _rx) = root();
        let f: SharedFunction = Arc::new(Mutex::new(HostBridge::new()));
        assert_eq!(r.add(f.clone()), Some(1));
        assert_eq!(r.add(f), Some(2));
    }
}
