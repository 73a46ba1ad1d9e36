//! The boot CPU's state for the 64-bit entry: a flat GDT, identity page
//! tables for the first 4 GiB, and the register values (long mode on,
//! RIP at the kernel's entry, RSI at the zero page).
//!
//! Pure functions over guest memory and `kvm_bindings` structs; the
//! launcher's vCPU code passes the results to KVM_SET_SREGS/KVM_SET_REGS.
//! The tables go to the fixed addresses in [`crate::layout`].

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::layout::{BOOT_STACK_TOP, GDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::{write_guest, BootInfo, GuestMemory, Result};

/// The GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18), as the boot
/// protocol's "__BOOT_CS/__BOOT_DS" expect.
pub const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];
/// Code segment selector.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector (DS, ES, FS, GS, SS).
pub const DATA_SELECTOR: u16 = 0x10;
/// Task register selector.
pub const TSS_SELECTOR: u16 = 0x18;

/// PE | MP | ET | NE | WP | AM | PG, what Linux itself runs with.
pub const CR0_BOOT: u64 = 0x8005_0033;
/// CR4.PAE, required for long mode.
pub const CR4_PAE: u64 = 0x20;
/// EFER.LME: long mode enabled.
pub const EFER_LME: u64 = 0x100;
/// EFER.LMA: long mode active (set because we start with paging on).
pub const EFER_LMA: u64 = 0x400;
/// RFLAGS with only the always-one bit: interrupts off.
pub const RFLAGS_BOOT: u64 = 0x2;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
/// Set on every level: a test guest drops to ring 3 on these tables.
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
/// Four page directories of 512 × 2 MiB cover 4 GiB.
pub const PD_COUNT: u64 = 4;

fn table_bytes(entries: impl IntoIterator<Item = u64>) -> Vec<u8> {
    entries.into_iter().flat_map(u64::to_le_bytes).collect()
}

/// Writes the GDT at [`GDT_ADDR`].
pub fn write_gdt(mem: &GuestMemory) -> Result<()> {
    write_guest(mem, "GDT", GDT_ADDR, &table_bytes(GDT))
}

/// Writes identity page tables for [0, 4 GiB) with 2 MiB pages: one PML4
/// entry, one PDPT with four entries, four full page directories.
pub fn write_page_tables(mem: &GuestMemory) -> Result<()> {
    let pml4 = table_bytes((0..512).map(|i| if i == 0 { PDPT_ADDR | TABLE_FLAGS } else { 0 }));
    write_guest(mem, "PML4", PML4_ADDR, &pml4)?;
    let pdpt = table_bytes((0..512).map(|i| {
        if i < PD_COUNT {
            (PD_ADDR + i * 0x1000) | TABLE_FLAGS
        } else {
            0
        }
    }));
    write_guest(mem, "PDPT", PDPT_ADDR, &pdpt)?;
    let pds = table_bytes((0..PD_COUNT * 512).map(|i| (i << 21) | TABLE_FLAGS | PTE_HUGE));
    write_guest(mem, "page directories", PD_ADDR, &pds)
}

/// The KVM view of GDT entry `entry` loaded through `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let g = bit(55);
    kvm_segment {
        base,
        // With G set the limit counts 4 KiB pages; KVM wants bytes.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 3) as u8,
        present: bit(47),
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and page tables and fills `sregs` for the 64-bit entry:
/// flat segments from the GDT, paging with CR3 at the PML4, long mode.
pub fn setup_sregs(mem: &GuestMemory, sregs: &mut kvm_sregs) -> Result<()> {
    write_gdt(mem)?;
    write_page_tables(mem)?;

    let code = segment_from_gdt(GDT[1], CODE_SELECTOR);
    let data = segment_from_gdt(GDT[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(GDT[3], TSS_SELECTOR);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    // No IDT: interrupts are off until the kernel installs its own.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;

    sregs.cr0 = CR0_BOOT;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// General registers for the 64-bit entry: RIP at the entry point, RSI at
/// the zero page, a small stack below the page tables, interrupts off.
pub fn boot_regs(info: &BootInfo) -> kvm_regs {
    kvm_regs {
        rip: info.entry.0,
        rsi: info.zero_page.0,
        rflags: RFLAGS_BOOT,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelKind;
    use crate::testutil::{guest, read_u64};
    use vm_memory::GuestAddress;

    #[test]
    fn page_tables_identity_map_4_gib_with_user_bit() {
        let (_, mem) = guest(16);
        write_page_tables(&mem).unwrap();
        assert_eq!(read_u64(&mem, PML4_ADDR), PDPT_ADDR | 0x7);
        for i in 1..512 {
            assert_eq!(read_u64(&mem, PML4_ADDR + i * 8), 0);
        }
        for i in 0..4 {
            assert_eq!(
                read_u64(&mem, PDPT_ADDR + i * 8),
                (PD_ADDR + i * 0x1000) | 0x7
            );
        }
        assert_eq!(read_u64(&mem, PDPT_ADDR + 4 * 8), 0);
        for i in 0..2048u64 {
            let pde = read_u64(&mem, PD_ADDR + i * 8);
            assert_eq!(pde, (i << 21) | 0x87, "PDE {i}");
        }
        // The last PDE maps the 2 MiB page just below 4 GiB.
        assert_eq!(read_u64(&mem, PD_ADDR + 2047 * 8) & !0xfff, 0xffe0_0000);
    }

    #[test]
    fn gdt_is_written_as_specified() {
        let (_, mem) = guest(16);
        write_gdt(&mem).unwrap();
        let got: Vec<u64> = (0..4).map(|i| read_u64(&mem, GDT_ADDR + i * 8)).collect();
        assert_eq!(
            got,
            [
                0,
                0x00af_9b00_0000_ffff,
                0x00cf_9300_0000_ffff,
                0x008f_8b00_0000_ffff
            ]
        );
    }

    #[test]
    fn segments_decode_from_the_gdt() {
        let cs = segment_from_gdt(GDT[1], CODE_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.selector, cs.type_),
            (0, 0xffff_ffff, 0x8, 0xb)
        );
        assert_eq!(
            (cs.present, cs.dpl, cs.s, cs.l, cs.db, cs.g),
            (1, 0, 1, 1, 0, 1)
        );
        let ds = segment_from_gdt(GDT[2], DATA_SELECTOR);
        assert_eq!(
            (ds.limit, ds.type_, ds.s, ds.l, ds.db, ds.g),
            (0xffff_ffff, 0x3, 1, 0, 1, 1)
        );
        let tr = segment_from_gdt(GDT[3], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.present, tr.selector), (0xb, 0, 1, 0x18));
    }

    #[test]
    fn sregs_enter_long_mode() {
        let (_, mem) = guest(16);
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cs.selector, 0x8);
        assert_eq!(sregs.cs.l, 1);
        for s in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(s.selector, 0x10);
        }
        assert_eq!(sregs.tr.selector, 0x18);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (GDT_ADDR, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0, 0));
        assert_eq!(sregs.cr0, 0x8005_0033);
        assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001, "PE and PG");
        assert_eq!(sregs.cr3, PML4_ADDR);
        assert_eq!(sregs.cr4, 0x20);
        assert_eq!(sregs.efer & 0x500, 0x500);
        assert_eq!(read_u64(&mem, PML4_ADDR), PDPT_ADDR | 0x7, "tables written");
    }

    #[test]
    fn boot_registers() {
        let info = BootInfo {
            entry: GuestAddress(0x100_0200),
            zero_page: GuestAddress(0x7000),
            kind: KernelKind::BzImage { protocol: 0x020f },
            initrd: None,
        };
        let r = boot_regs(&info);
        assert_eq!(
            (r.rip, r.rsi, r.rflags, r.rsp, r.rbp),
            (0x100_0200, 0x7000, 2, 0x8ff0, 0x8ff0)
        );
        assert_eq!((r.rax, r.rbx, r.rdi), (0, 0, 0));
    }
}
