//! Where a PCI function's BARs are decoded: on the MMIO or port-I/O bus, at
//! the address the guest programmed, while the command register enables
//! that space.
//!
//! The launcher places every BAR before boot, as firmware would, but the
//! guest owns them afterwards: Linux reassigns BARs when it rescans a bus,
//! and every OS sizes them by writing all ones. A [`BarDecoder`] keeps one
//! function's bus mappings in step with its config space; the function
//! calls [`BarDecoder::sync`] after every write that can change them (a BAR
//! or the command register, see [`touches_decoding`]). A BAR is decoded
//! when
//!
//! - its space is enabled in the command register (I/O space for an I/O
//!   BAR, memory space for a memory BAR);
//! - it holds a placement: not 0 (unassigned) and not the sizing pattern
//!   (all address bits set, which is what a write of all ones reads back
//!   as); these are silently not decoded;
//! - the placement is possible: inside the space (an I/O BAR below 64 KiB),
//!   clear of what KVM serves before any bus sees it (guest RAM, the
//!   in-kernel interrupt controllers and timers: [`AddressSpaces::reserve`])
//!   and of every other device on the bus.
//!
//! An impossible placement is refused with one warning per BAR
//! ([`crate::guestlog`]) and retried each time another BAR moves
//! ([`crate::pci::PciFunction::retry_bars`]): a guest that moves two BARs
//! one after the other may put the first where the second still is. What
//! `sync` returns (which BARs now decode elsewhere, or nowhere) is for the
//! function to move what KVM does without us, its ioeventfds; everything
//! else inside a BAR (registers, the MSI-X table) moves with the mapping.
//!
//! Every BAR here is 32 bits wide (I/O or 32-bit memory), so there are no
//! 64-bit BAR halves to pair.

use std::sync::{Arc, Weak};

use super::config::{reg, BarKind, ConfigSpace, COMMAND_IO, COMMAND_MEMORY};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::guestlog;

/// Ports an I/O BAR can reach: x86 has 64 KiB of them.
const IO_SPACE_END: u64 = 0x1_0000;

/// Whether a config-space write of `len` bytes at `offset` touches the
/// command register or a BAR: the registers that decide decoding.
pub fn touches_decoding(offset: usize, len: usize) -> bool {
    let end = offset + len;
    let command = reg::COMMAND..reg::COMMAND + 2;
    let bars = reg::BAR0..reg::BAR0 + 6 * 4;
    [command, bars]
        .iter()
        .any(|r| offset < r.end && end > r.start)
}

/// A range no BAR may cover, and what is there.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    kind: BarKind,
    base: u64,
    len: u64,
    what: &'static str,
}

/// The two buses BARs land on, shared by every function, and the ranges
/// KVM serves itself. The buses are held weakly: the port-I/O bus owns the
/// PCI root, which owns the functions and so their decoders.
#[derive(Clone)]
pub struct AddressSpaces {
    mmio: Weak<Bus>,
    pio: Weak<Bus>,
    reserved: Vec<Reserved>,
}

impl AddressSpaces {
    pub fn new(mmio: &Arc<Bus>, pio: &Arc<Bus>) -> Self {
        Self {
            mmio: Arc::downgrade(mmio),
            pio: Arc::downgrade(pio),
            reserved: Vec::new(),
        }
    }

    /// Keeps BARs of `kind`'s space (memory for [`BarKind::Mem32`]) off
    /// `[base, base + len)`, which is `what`.
    pub fn reserve(mut self, kind: BarKind, base: u64, len: u64, what: &'static str) -> Self {
        self.reserved.push(Reserved {
            kind,
            base,
            len,
            what,
        });
        self
    }

    fn bus(&self, kind: BarKind) -> Option<Arc<Bus>> {
        match kind {
            BarKind::Io => self.pio.upgrade(),
            BarKind::Mem32 => self.mmio.upgrade(),
        }
    }
}

/// One BAR's state on its bus.
#[derive(Debug, Clone, Copy, Default)]
struct Decoded {
    /// Where it is mapped now.
    mapped: Option<u64>,
    /// The placement last refused (warned about once, retried later).
    refused: Option<u64>,
}

/// Keeps one function's BARs on the buses where its config space says.
pub struct BarDecoder {
    spaces: AddressSpaces,
    /// What the buses dispatch the BARs' accesses to.
    device: SharedDevice,
    /// "virtio-rng 00:03.0", for warnings.
    label: String,
    /// By position in [`ConfigSpace::bars`].
    bars: Vec<Decoded>,
}

impl BarDecoder {
    /// A decoder that maps nothing yet; the first [`BarDecoder::sync`]
    /// places what the config space holds.
    pub fn new(spaces: AddressSpaces, device: SharedDevice, label: impl Into<String>) -> Self {
        Self {
            spaces,
            device,
            label: label.into(),
            bars: Vec::new(),
        }
    }

    /// Where BAR `index` is decoded now.
    pub fn base(&self, index: usize) -> Option<u64> {
        self.bars.get(index).and_then(|b| b.mapped)
    }

    /// Brings the buses in line with `config`; returns each BAR whose
    /// decoded address changed, with where it decodes now (`None`: not at
    /// all).
    pub fn sync(&mut self, config: &ConfigSpace) -> Vec<(usize, Option<u64>)> {
        let declared = config.bars();
        self.bars.resize(declared.len(), Decoded::default());
        let mut changed = Vec::new();
        for (i, bar) in declared.iter().enumerate() {
            let want = wanted(config, bar.index, bar.kind, bar.size);
            let was = self.bars[i];
            if want == was.mapped {
                if want.is_none() {
                    self.bars[i].refused = None;
                }
                continue;
            }
            let Some(bus) = self.spaces.bus(bar.kind) else {
                continue;
            };
            if let Some(old) = was.mapped {
                bus.remove(old);
            }
            let mut now = Decoded::default();
            if let Some(addr) = want {
                match self.place(&bus, bar.kind, addr, bar.size) {
                    Ok(()) => now.mapped = Some(addr),
                    Err(why) => {
                        if was.refused != Some(addr) {
                            self.refuse(bar.index, addr, bar.size, &why);
                        }
                        now.refused = Some(addr);
                    }
                }
            }
            self.bars[i] = now;
            if now.mapped != was.mapped {
                changed.push((bar.index, now.mapped));
            }
        }
        changed
    }

    /// Whether a placement was refused and may succeed later.
    pub fn has_refused(&self) -> bool {
        self.bars.iter().any(|b| b.refused.is_some())
    }

    /// Maps the BAR at `addr` if nothing is in the way; says what is.
    fn place(&self, bus: &Bus, kind: BarKind, addr: u64, size: u64) -> Result<(), String> {
        let end = addr.saturating_add(size);
        if kind == BarKind::Io && end > IO_SPACE_END {
            return Err("is beyond the 64 KiB port space".into());
        }
        if let Some(r) = self
            .spaces
            .reserved
            .iter()
            .find(|r| r.kind == kind && addr < r.base.saturating_add(r.len) && end > r.base)
        {
            return Err(format!("overlaps {} at {:#x}+{:#x}", r.what, r.base, r.len));
        }
        bus.insert(self.device.clone(), addr, size)
            .map_err(|e| match e {
                BusError::Overlap { other, .. } => {
                    format!("overlaps the device at {other:#x}")
                }
                e => e.to_string(),
            })
    }

    fn refuse(&self, index: usize, addr: u64, size: u64, why: &str) {
        let label = &self.label;
        guestlog::warn(
            &format!("BAR placement {label} BAR{index}"),
            format_args!(
                "{label}: the guest placed BAR{index} at {addr:#x}+{size:#x}, which {why}; \
                 it is not decoded there"
            ),
        );
    }
}

/// Where BAR `index` asks to be decoded: `None` while its space is
/// disabled, while it is unassigned (0) and while it holds the sizing
/// pattern.
fn wanted(config: &ConfigSpace, index: usize, kind: BarKind, size: u64) -> Option<u64> {
    let enable = match kind {
        BarKind::Io => COMMAND_IO,
        BarKind::Mem32 => COMMAND_MEMORY,
    };
    if config.command() & enable == 0 {
        return None;
    }
    let addr = config.bar_address(index);
    let sizing = addr + (size - 1) == u64::from(u32::MAX);
    (addr != 0 && !sizing).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::pci::config::{Identity, COMMAND_BUS_MASTER};
    use std::sync::Mutex;

    /// Answers every read with the offset's low byte.
    struct Regs;
    impl BusDevice for Regs {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    struct Setup {
        mmio: Arc<Bus>,
        pio: Arc<Bus>,
        config: ConfigSpace,
        decoder: BarDecoder,
    }

    /// A function with a 32 KiB memory BAR0 at 0xc000_0000 and a 256-port
    /// I/O BAR1 at 0xc000, decoding both; RAM below 3 GiB reserved.
    fn setup(label: &str) -> Setup {
        let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let spaces = AddressSpaces::new(&mmio, &pio).reserve(BarKind::Mem32, 0, 3 << 30, "RAM");
        let mut config = ConfigSpace::new(Identity::default());
        config.add_bar(0, BarKind::Mem32, 0x8000);
        config.add_bar(1, BarKind::Io, 0x100);
        config.set_bar_address(0, 0xc000_0000);
        config.set_bar_address(1, 0xc000);
        config.write(reg::COMMAND, &(COMMAND_IO | COMMAND_MEMORY).to_le_bytes());
        let device: SharedDevice = Arc::new(Mutex::new(Regs));
        let mut decoder = BarDecoder::new(spaces, device, label);
        assert_eq!(
            decoder.sync(&config),
            [(0, Some(0xc000_0000)), (1, Some(0xc000))]
        );
        Setup {
            mmio,
            pio,
            config,
            decoder,
        }
    }

    fn answers(bus: &Bus, addr: u64) -> bool {
        bus.read(addr, &mut [0u8; 1])
    }

    impl Setup {
        fn write_bar(&mut self, index: usize, v: u32) -> Vec<(usize, Option<u64>)> {
            self.config.write(reg::BAR0 + 4 * index, &v.to_le_bytes());
            self.decoder.sync(&self.config)
        }
        fn command(&mut self, v: u16) -> Vec<(usize, Option<u64>)> {
            self.config.write(reg::COMMAND, &v.to_le_bytes());
            self.decoder.sync(&self.config)
        }
    }

    #[test]
    fn touches_decoding_covers_command_and_the_six_bars_only() {
        assert!(touches_decoding(reg::COMMAND, 2));
        assert!(touches_decoding(reg::COMMAND + 1, 1));
        assert!(touches_decoding(reg::VENDOR_ID, 8), "a wide write over it");
        assert!(!touches_decoding(reg::STATUS, 2));
        assert!(touches_decoding(reg::BAR0, 4));
        assert!(touches_decoding(0x24 + 3, 1), "BAR5's top byte");
        assert!(!touches_decoding(0x28, 4));
        assert!(!touches_decoding(0x08, 4));
    }

    #[test]
    fn a_moved_bar_is_decoded_at_its_new_address_only() {
        let mut s = setup("moved");
        assert!(answers(&s.mmio, 0xc000_7fff) && answers(&s.pio, 0xc0ff));
        assert_eq!(s.write_bar(0, 0xd000_0000), [(0, Some(0xd000_0000))]);
        assert!(!answers(&s.mmio, 0xc000_0000));
        let mut b = [0u8; 1];
        assert!(s.mmio.read(0xd000_0012, &mut b));
        assert_eq!(b, [0x12], "the offset into the BAR is kept");
        assert_eq!(s.decoder.base(0), Some(0xd000_0000));
        assert_eq!(s.write_bar(1, 0x1001), [(1, Some(0x1000))]);
        assert!(!answers(&s.pio, 0xc000) && answers(&s.pio, 0x10ff));
        assert!(!answers(&s.pio, 0x1100));
        assert!(s.write_bar(1, 0x1001).is_empty(), "no change, no move");
    }

    #[test]
    fn sizing_probe_unmaps_without_mapping_at_the_probe_value() {
        let mut s = setup("sizing");
        assert_eq!(s.write_bar(0, u32::MAX), [(0, None)]);
        assert_eq!(s.config.u32(reg::BAR0), 0xffff_8000, "reads back the size");
        assert!(!answers(&s.mmio, 0xc000_0000) && !answers(&s.mmio, 0xffff_8000));
        assert_eq!(s.write_bar(1, u32::MAX), [(1, None)]);
        assert!(!answers(&s.pio, 0xc000) && !answers(&s.pio, 0xff00));
        // The probe is undone by writing the old value back.
        assert_eq!(s.write_bar(0, 0xc000_0000), [(0, Some(0xc000_0000))]);
        assert_eq!(s.write_bar(1, 0xc000), [(1, Some(0xc000))]);
        assert!(answers(&s.mmio, 0xc000_0000) && answers(&s.pio, 0xc000));
    }

    #[test]
    fn decoding_follows_the_command_register() {
        let mut s = setup("command");
        assert_eq!(s.command(COMMAND_IO), [(0, None)], "memory space off");
        assert!(!answers(&s.mmio, 0xc000_0000) && answers(&s.pio, 0xc000));
        assert_eq!(s.command(COMMAND_BUS_MASTER), [(1, None)]);
        assert!(!answers(&s.pio, 0xc000));
        // Moved while off: mapped at the new address when switched on.
        assert!(s.write_bar(0, 0xd000_0000).is_empty());
        assert!(s.write_bar(1, 0x2000).is_empty());
        assert_eq!(
            s.command(COMMAND_IO | COMMAND_MEMORY),
            [(0, Some(0xd000_0000)), (1, Some(0x2000))]
        );
        assert!(answers(&s.mmio, 0xd000_0000) && answers(&s.pio, 0x2000));
        assert!(!answers(&s.mmio, 0xc000_0000) && !answers(&s.pio, 0xc000));
    }

    #[test]
    fn an_unassigned_bar_is_not_decoded() {
        let mut s = setup("unassigned");
        assert_eq!(s.write_bar(1, 0), [(1, None)]);
        assert!(!answers(&s.pio, 0) && !answers(&s.pio, 0xc000));
    }

    #[test]
    fn impossible_placements_are_refused_not_fatal() {
        let mut s = setup("impossible");
        let other: SharedDevice = Arc::new(Mutex::new(Regs));
        s.pio.insert(other, 0x3f8, 8).unwrap();
        assert_eq!(
            s.write_bar(1, 0x301),
            [(1, None)],
            "over the device at 0x3f8"
        );
        assert!(s.decoder.has_refused());
        assert!(!answers(&s.pio, 0x300) && answers(&s.pio, 0x3f8));
        assert_eq!(s.write_bar(0, 0x1000_0000), [(0, None)], "over RAM");
        assert!(!answers(&s.mmio, 0x1000_0000));
        // Beyond the port space: a BAR of 256 ports at 0xffff_0000 is no
        // sizing probe but cannot be reached either.
        assert!(s.write_bar(1, 0xffff_0001).is_empty());
        assert!(!answers(&s.pio, 0xff00));
        assert_eq!(s.write_bar(1, 0x2001), [(1, Some(0x2000))]);
        assert_eq!(s.write_bar(0, 0xe000_0000), [(0, Some(0xe000_0000))]);
        assert!(!s.decoder.has_refused());
        let warned: Vec<_> = guestlog::suppressed()
            .into_iter()
            .filter(|(c, _)| c.contains("impossible"))
            .collect();
        assert_eq!(
            warned,
            [("BAR placement impossible BAR1".to_string(), 1)],
            "one warning per BAR, the repeat only counted"
        );
    }

    #[test]
    fn a_refused_placement_is_retried_once_the_way_is_clear() {
        let mut a = setup("retry-a");
        // A second function on the same buses, in the way at 0xc100.
        let spaces = AddressSpaces::new(&a.mmio, &a.pio);
        let mut config = ConfigSpace::new(Identity::default());
        config.add_bar(0, BarKind::Io, 0x100);
        config.set_bar_address(0, 0xc100);
        config.write(reg::COMMAND, &COMMAND_IO.to_le_bytes());
        let mut b = BarDecoder::new(spaces, Arc::new(Mutex::new(Regs)), "retry-b");
        assert_eq!(b.sync(&config), [(0, Some(0xc100))]);
        assert_eq!(a.write_bar(1, 0xc100), [(1, None)], "b is there");
        assert!(!answers(&a.pio, 0xc000));
        config.write(reg::BAR0, &0x1000u32.to_le_bytes());
        assert_eq!(b.sync(&config), [(0, Some(0x1000))]);
        assert_eq!(a.decoder.sync(&a.config), [(1, Some(0xc100))], "retried");
        assert!(!a.decoder.has_refused());
        let mut byte = [0u8; 1];
        a.pio.read(0xc105, &mut byte);
        assert_eq!(byte, [5]);
    }

    #[test]
    fn without_its_buses_a_decoder_maps_nothing_and_does_not_panic() {
        let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let spaces = AddressSpaces::new(&mmio, &pio);
        drop((mmio, pio));
        let mut config = ConfigSpace::new(Identity::default());
        config.add_bar(0, BarKind::Io, 0x100);
        config.set_bar_address(0, 0xc000);
        config.write(reg::COMMAND, &COMMAND_IO.to_le_bytes());
        let mut d = BarDecoder::new(spaces, Arc::new(Mutex::new(Regs)), "gone");
        assert!(d.sync(&config).is_empty());
    }
}
