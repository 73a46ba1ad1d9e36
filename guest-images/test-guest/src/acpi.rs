//! Just enough ACPI to power off on any PC-like VMM: the FADT's PM1a
//! control register and the DSDT's `\_S5` sleep type. The launcher has
//! PM1a control at 0x604 and `\_S5` = 5; QEMU's i440fx (PIIX4 PM, placed
//! by SeaBIOS) has 0x604 too but `\_S5` = 0, so a fixed value would leave
//! QEMU running. Ring 3, plain memory reads (the tables are in RAM or the
//! BIOS area, identity-mapped).

use crate::bootinfo::peek;

/// Where firmware puts the RSDP when nobody says (ACPI 6.5 §5.2.5.1).
const BIOS_AREA: core::ops::Range<u64> = 0xe_0000..0x10_0000;
/// No table we read is larger (a sanity bound against garbage).
const MAX_TABLE: u32 = 1 << 20;

/// AML opcodes (ACPI 6.5 §20.2) that `\_S5` is built from.
const AML_NAME: u8 = 0x08;
const AML_PACKAGE: u8 = 0x12;
const AML_ZERO: u8 = 0x00;
const AML_ONE: u8 = 0x01;
const AML_BYTE_PREFIX: u8 = 0x0a;

/// PM1 control: SLP_EN, and where SLP_TYP goes.
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;

/// How to enter S5 on this machine.
#[derive(Clone, Copy)]
pub struct SoftOff {
    /// The PM1a control register (an I/O port).
    pub port: u16,
    /// `\_S5`'s SLP_TYPa.
    pub slp_typ: u8,
}

impl SoftOff {
    /// The 16-bit value to write to [`SoftOff::port`].
    pub fn value(&self) -> u16 {
        SLP_EN | (u16::from(self.slp_typ & 7) << SLP_TYP_SHIFT)
    }
}

fn signature(addr: u64, sig: &[u8]) -> bool {
    sig.iter()
        .enumerate()
        .all(|(i, &b)| peek::<u8>(addr + i as u64) == b)
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |s, i| s.wrapping_add(peek::<u8>(addr + i))) == 0
}

/// The RSDP: at `hint` if the boot protocol named one, else the first
/// valid one on a 16-byte boundary of the BIOS area.
pub fn rsdp(hint: u64) -> Option<u64> {
    let valid = |a: u64| signature(a, b"RSD PTR ") && checksum_ok(a, 20);
    if hint != 0 && valid(hint) {
        return Some(hint);
    }
    BIOS_AREA.step_by(16).find(|&a| valid(a))
}

/// A system description table's address if it has `sig` and a sane length.
fn table(addr: u64, sig: &[u8; 4]) -> Option<u64> {
    let len = peek::<u32>(addr + 4);
    (addr != 0 && signature(addr, sig) && (36..=MAX_TABLE).contains(&len)).then_some(addr)
}

/// The FADT ("FACP") through the XSDT (RSDP revision 2+) or the RSDT.
fn fadt(rsdp: u64) -> Option<u64> {
    let xsdt = if peek::<u8>(rsdp + 15) >= 2 {
        table(peek(rsdp + 24), b"XSDT")
    } else {
        None
    };
    let (sdt, width) = match xsdt {
        Some(x) => (x, 8),
        None => (table(u64::from(peek::<u32>(rsdp + 16)), b"RSDT")?, 4),
    };
    let n = (u64::from(peek::<u32>(sdt + 4)) - 36) / width;
    (0..n)
        .map(|i| {
            let at = sdt + 36 + i * width;
            if width == 8 {
                peek::<u64>(at)
            } else {
                u64::from(peek::<u32>(at))
            }
        })
        .find_map(|t| table(t, b"FACP"))
}

/// SLP_TYPa of `Name (_S5, Package () { a, b, ... })` in the DSDT.
fn s5_slp_typ(dsdt: u64) -> Option<u8> {
    let end = dsdt + u64::from(peek::<u32>(dsdt + 4));
    let mut p = dsdt + 36;
    while p + 8 < end {
        if signature(p, b"_S5_")
            && (peek::<u8>(p - 1) == AML_NAME || peek::<u8>(p - 2) == AML_NAME)
            && peek::<u8>(p + 4) == AML_PACKAGE
        {
            // PkgLength: bits 7:6 of its first byte count the bytes after it.
            let pkg_len_bytes = 1 + u64::from(peek::<u8>(p + 5) >> 6);
            let first = p + 5 + pkg_len_bytes + 1; // after NumElements
            return match peek::<u8>(first) {
                AML_ZERO => Some(0),
                AML_ONE => Some(1),
                AML_BYTE_PREFIX => Some(peek(first + 1)),
                _ => None,
            };
        }
        p += 1;
    }
    None
}

/// The S5 register and value from the ACPI tables, or `None` if there
/// are none (or they do not say).
pub fn soft_off(rsdp_hint: u64) -> Option<SoftOff> {
    let fadt = fadt(rsdp(rsdp_hint)?)?;
    let fadt_len = peek::<u32>(fadt + 4);
    // PM1a_CNT_BLK (offset 64); the DSDT at 40, or X_DSDT at 140 if set.
    let port = peek::<u32>(fadt + 64);
    let x_dsdt = if fadt_len >= 148 {
        peek::<u64>(fadt + 140)
    } else {
        0
    };
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(peek::<u32>(fadt + 40))
    };
    let slp_typ = s5_slp_typ(table(dsdt, b"DSDT")?)?;
    (port != 0 && port <= 0xffff).then_some(SoftOff {
        port: port as u16,
        slp_typ,
    })
}
