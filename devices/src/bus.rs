//! Address-range dispatch for port I/O and MMIO exits.
//!
//! The vCPU loop hands every `KVM_EXIT_IO` / `KVM_EXIT_MMIO` to a [`Bus`],
//! which finds the device whose range covers the address and calls it with
//! the offset into that range. Addresses nobody claims behave like an empty
//! ISA/PCI bus: reads return all ones, writes vanish. That matters on hosts
//! where each exit is slow: Linux's probes of absent hardware then fail at
//! once instead of timing out.
//!
//! The map can change while vCPUs run (a guest moving a PCI BAR, see
//! `pci::bars`), so it sits behind a read-write lock. A dispatch holds that
//! lock only to find the device and clone its handle, never while the
//! device works: a device may then remap itself on the very bus that
//! brought the access (a config-space write through port 0xCFC moving an
//! I/O BAR) without deadlock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a [`Bus`]. `offset` is relative to the start
/// of the range the device was inserted at; `data.len()` is the access width.
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes what the guest writes at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between vCPU threads (and, for some, a host-side thread).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error("device range {base:#x}+{len:#x} overlaps one at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

/// Keyed by range start; the value holds the range length and the device.
type Ranges = BTreeMap<u64, (u64, SharedDevice)>;

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<Ranges>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&other, &(other_len, _))) = ranges.range(..end).next_back() {
            if other + other_len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        ranges.insert(base, (len, device));
        Ok(())
    }

    /// Takes away the device whose range starts at `base`, if any.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).map(|(_, dev)| dev)
    }

    /// The device covering `addr`, with the offset of `addr` into its range.
    fn find(&self, addr: u64) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, (len, dev)) = ranges.range(..=addr).next_back()?;
        (addr - base < *len).then(|| (dev.clone(), addr - base))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) when no
    /// device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((dev, offset)) => {
                lock(&dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((dev, offset)) => {
                lock(&dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if another thread panicked while holding it: device
/// state stays usable for the report that follows, and a poisoned lock must
/// not turn one bug into a cascade of panics on every vCPU.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![9])]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x70, 2).unwrap();
        assert!(matches!(
            bus.insert(dev.clone(), 0x71, 4),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev.clone(), 0x6f, 2),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(dev.clone(), 0x72, 1).is_ok());
        assert!(matches!(
            bus.insert(dev, 0x80, 0),
            Err(BusError::BadRange { .. })
        ));
    }

    #[test]
    fn a_removed_range_is_empty_and_free_again() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0xc000, 0x100).unwrap();
        assert!(
            bus.remove(0xc001).is_none(),
            "only a range's start names it"
        );
        assert!(bus.remove(0xc000).is_some());
        let mut b = [0u8; 1];
        assert!(!bus.read(0xc010, &mut b));
        assert_eq!(b, [0xff]);
        assert!(!bus.write(0xc010, &[1]));
        bus.insert(dev, 0xc080, 0x100).unwrap();
        assert!(bus.read(0xc090, &mut b));
        assert_eq!(b, [0x10]);
    }

    /// A device that moves itself on the bus that dispatched to it (as a
    /// config write through port 0xCFC moving an I/O BAR does) must not
    /// deadlock.
    #[test]
    fn a_device_can_remap_itself_during_its_own_access() {
        struct Mover(Arc<Bus>);
        impl BusDevice for Mover {
            fn read(&mut self, _: u64, data: &mut [u8]) {
                data.fill(1);
            }
            fn write(&mut self, _: u64, _: &[u8]) {
                let me = self.0.remove(0x10).expect("mapped at 0x10");
                self.0.insert(me, 0x20, 4).unwrap();
            }
        }
        let bus = Arc::new(Bus::new());
        let dev = Arc::new(Mutex::new(Mover(bus.clone())));
        bus.insert(dev, 0x10, 4).unwrap();
        assert!(bus.write(0x10, &[0]));
        let mut b = [0u8; 1];
        assert!(!bus.read(0x10, &mut b));
        assert!(bus.read(0x22, &mut b));
        assert_eq!(b, [1]);
    }
}
