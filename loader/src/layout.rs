//! Guest physical memory layout: where RAM is, where the MMIO hole is, and
//! the fixed low addresses of the boot structures.
//!
//! The launcher turns the user's memory size into a [`MemoryLayout`], hands
//! [`MemoryLayout::ram_ranges`] to `GuestMemoryMmap::from_ranges` and to
//! KVM, and the rest of this crate places the kernel, initrd and tables
//! inside that RAM. RAM starts at 0; [`MMIO_HOLE_START`]..[`MMIO_HOLE_END`]
//! is never RAM (PCI BARs, IOAPIC, LAPIC live there); whatever does not fit
//! below the hole continues at 4 GiB. The hole's PCI window, up to
//! [`PCI_WINDOW_END`], is left out of the e820 map.
//!
//! Low memory map (all below 1 MiB, all inside RAM for any valid layout):
//!
//! | address            | what                                   |
//! |--------------------|----------------------------------------|
//! | `0x0500..0x0520`   | GDT (null, code64, data, TSS)           |
//! | `0x6000..0x6030`   | `setup_data` RNG seed (header + 32 B)   |
//! | `0x7000..0x8000`   | zero page (`boot_params`)               |
//! | `0x8000..0x8ff0`   | boot stack (RSP starts at `0x8ff0`)     |
//! | `0x9000..0xf000`   | PML4, PDPT, four PDs (identity, 4 GiB)  |
//! | `0x20000..`        | kernel command line                     |
//! | `0x9fc00..0x100000`| e820-reserved: MP table                 |
//! | `0x100000..`       | kernel, then initrd as high as allowed  |

use vm_memory::GuestAddress;

use crate::{Error, Result};

/// 3 GiB: 32-bit PCI BARs, IOAPIC, LAPIC live above.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// 4 GiB: RAM resumes here when the guest has more than 3 GiB.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The end of the 32-bit PCI window `[MMIO_HOLE_START, PCI_WINDOW_END)`,
/// where the IOAPIC starts. The window is in no e820 entry, as on a PC, so
/// that the OS may assign BARs there (Linux allocates nothing inside an
/// e820 entry); from here to 4 GiB (IOAPIC, LAPIC, KVM's TSS) is reserved.
pub const PCI_WINDOW_END: u64 = 0xfec0_0000;
/// Below this a kernel, its decompression space and an initrd cannot fit.
pub const MIN_MEM_BYTES: u64 = 16 << 20;

/// The GDT the vCPU starts with (see [`crate::cpu`]).
pub const GDT_ADDR: u64 = 0x500;
/// The SETUP_RNG_SEED `setup_data` node, linked from `hdr.setup_data`.
pub const RNG_SEED_ADDR: u64 = 0x6000;
/// The zero page (`struct boot_params`); its address goes in RSI.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial RSP/RBP: the top of the page below the page tables, 16-aligned.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Top-level page table; CR3 points here.
pub const PML4_ADDR: u64 = 0x9000;
/// The one page-directory-pointer table (covers 512 GiB, four entries used).
pub const PDPT_ADDR: u64 = 0xa000;
/// Four page directories of 2 MiB pages, one per GiB of the first 4 GiB.
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Start of the e820-reserved area (where a BIOS keeps its EBDA); the MP
/// floating pointer sits here, in the last KiB of base memory Linux scans.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the kernel may start; everything above 1 MiB is the kernel's.
pub const HIMEM_START: u64 = 0x10_0000;
/// End of the command line's room: it may run up to the reserved area.
pub const CMDLINE_AREA_END: u64 = EBDA_START;

/// The guest's RAM, as ranges around the MMIO hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    mem_bytes: u64,
    ranges: Vec<(GuestAddress, usize)>,
}

impl MemoryLayout {
    /// Lays out `mem_bytes` of RAM: up to 3 GiB from 0, the rest from 4 GiB.
    pub fn new(mem_bytes: u64) -> Result<Self> {
        if mem_bytes == 0 {
            return Err(Error::NoMemory);
        }
        if mem_bytes < MIN_MEM_BYTES {
            return Err(Error::MemoryTooSmall { bytes: mem_bytes });
        }
        let too_large = || Error::MemoryTooLarge { bytes: mem_bytes };
        let low = mem_bytes.min(MMIO_HOLE_START);
        let mut ranges = vec![(
            GuestAddress(0),
            usize::try_from(low).map_err(|_| too_large())?,
        )];
        let high = mem_bytes - low;
        if high > 0 {
            MMIO_HOLE_END.checked_add(high).ok_or_else(too_large)?;
            ranges.push((
                GuestAddress(MMIO_HOLE_END),
                usize::try_from(high).map_err(|_| too_large())?,
            ));
        }
        Ok(Self { mem_bytes, ranges })
    }

    /// The RAM ranges, as `GuestMemoryMmap::from_ranges` wants them.
    pub fn ram_ranges(&self) -> &[(GuestAddress, usize)] {
        &self.ranges
    }

    /// Total RAM, as asked for.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    /// Highest RAM address + 1.
    pub fn top_of_ram(&self) -> u64 {
        self.ranges
            .last()
            .map_or(0, |&(start, len)| start.0 + len as u64)
    }

    /// End of the RAM below the MMIO hole: the kernel and initrd must end
    /// below it (the boot protocol wants them in 32-bit reach).
    pub fn low_ram_end(&self) -> u64 {
        self.mem_bytes.min(MMIO_HOLE_START)
    }

    /// RAM above 4 GiB, if any, as (start, length).
    pub fn high_ram(&self) -> Option<(u64, u64)> {
        self.ranges
            .get(1)
            .map(|&(start, len)| (start.0, len as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_is_one_range() {
        let l = MemoryLayout::new(64 * MIB).unwrap();
        assert_eq!(l.ram_ranges(), &[(GuestAddress(0), (64 * MIB) as usize)]);
        assert_eq!(l.top_of_ram(), 64 * MIB);
        assert_eq!(l.low_ram_end(), 64 * MIB);
        assert_eq!(l.mem_bytes(), 64 * MIB);
        assert_eq!(l.high_ram(), None);
    }

    #[test]
    fn exactly_three_gib_has_no_high_range() {
        let l = MemoryLayout::new(3072 * MIB).unwrap();
        assert_eq!(l.ram_ranges().len(), 1);
        assert_eq!(l.top_of_ram(), MMIO_HOLE_START);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let l = MemoryLayout::new(5000 * MIB).unwrap();
        assert_eq!(
            l.ram_ranges(),
            &[
                (GuestAddress(0), MMIO_HOLE_START as usize),
                (GuestAddress(MMIO_HOLE_END), ((5000 - 3072) * MIB) as usize)
            ]
        );
        assert_eq!(l.top_of_ram(), MMIO_HOLE_END + (5000 - 3072) * MIB);
        assert_eq!(l.low_ram_end(), MMIO_HOLE_START);
        for &(start, len) in l.ram_ranges() {
            let end = start.0 + len as u64;
            assert!(end <= MMIO_HOLE_START || start.0 >= MMIO_HOLE_END);
        }
    }

    #[test]
    fn zero_and_tiny_sizes_are_refused() {
        let e = MemoryLayout::new(0).unwrap_err();
        assert!(matches!(e, Error::NoMemory));
        assert!(e.to_string().contains("16 MiB"), "{e}");
        let e = MemoryLayout::new(16 * MIB - 1).unwrap_err();
        assert!(matches!(e, Error::MemoryTooSmall { .. }));
        assert!(e.to_string().contains("16777215 bytes"), "{e}");
        assert!(MemoryLayout::new(16 * MIB).is_ok());
    }

    #[test]
    fn absurd_size_is_refused() {
        let e = MemoryLayout::new(u64::MAX).unwrap_err();
        assert!(matches!(e, Error::MemoryTooLarge { .. }), "{e}");
    }

    #[test]
    fn fixed_addresses_do_not_overlap() {
        // (start, end) of every fixed structure, in address order.
        let areas = [
            (GDT_ADDR, GDT_ADDR + 32),
            (RNG_SEED_ADDR, RNG_SEED_ADDR + 48),
            (ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + 0x1000),
            (BOOT_STACK_TOP - 0x1000 + 0x10, BOOT_STACK_TOP),
            (PML4_ADDR, PML4_ADDR + 0x1000),
            (PDPT_ADDR, PDPT_ADDR + 0x1000),
            (PD_ADDR, PD_ADDR + 0x4000),
            (CMDLINE_ADDR, CMDLINE_AREA_END),
            (EBDA_START, HIMEM_START),
        ];
        for w in areas.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:#x?} overlaps {:#x?}", w[0], w[1]);
        }
    }
}
