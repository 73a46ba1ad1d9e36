//! ACPI tables, so that a Linux guest can power itself off (S5 through the
//! launcher's PM1a control register) and routes PCI INTx through `_PRT`.
//!
//! Inputs are the vCPU count and the PCI INTx wiring (the same
//! [`PciIntx`] list the MP table gets); output is an RSDP, FACS, XSDT,
//! RSDT, FADT, MADT and DSDT written into the e820-reserved BIOS area
//! [`ACPI_START`]..[`ACPI_END`], where Linux finds the RSDP either from
//! `boot_params.acpi_rsdp_addr` or by scanning 0xE0000..0x100000. The
//! tables describe only what the launcher emulates: the PM1a event block
//! at [`PM1A_EVT_BLK`], the PM1a control block at [`PM1A_CNT_BLK`], the
//! SCI on ISA IRQ 9, KVM's in-kernel local APICs and IOAPIC (as in
//! [`crate::mptable`]), and one PCI host bridge on bus 0.
//!
//! The byte layout of the fixed tables and the AML come from the rust-vmm
//! `acpi_tables` crate; the RSDP, MADT and RSDT are assembled here because
//! the crate cannot set the RSDP's RSDT address, the MADT flags or the MADT
//! override/NMI entries.

use acpi_tables::aml::{
    self, AddressSpaceCacheable, Device, EISAName, Name, Package, PackageBuilder, Path,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{GuestAddress, GuestMemoryError};

use crate::layout::{HIMEM_START, MMIO_HOLE_START, PCI_WINDOW_END};
use crate::mptable::{check_cpus, PciIntx, IOAPIC_ADDR, LAPIC_ADDR, TIMER_IOAPIC_PIN};
use crate::{write_guest, Error, GuestMemory, Result};

/// Start of the BIOS area Linux scans for "RSD PTR "; the RSDP goes here.
pub const ACPI_START: u64 = 0xE_0000;
/// The tables must end below 1 MiB, inside the e820-reserved area.
pub const ACPI_END: u64 = HIMEM_START;
/// PM1a event block: status (2 bytes) then enable (2 bytes).
pub const PM1A_EVT_BLK: u16 = 0x600;
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block, where SLP_TYP | SLP_EN powers off.
pub const PM1A_CNT_BLK: u16 = 0x604;
pub const PM1_CNT_LEN: u8 = 2;
/// ISA IRQ (and, identity-mapped, GSI) of the SCI.
pub const SCI_IRQ: u8 = 9;
/// SLP_TYP the launcher's PM1a control block treats as "power off"; goes
/// into `\_S5` as both SLP_TYPa and SLP_TYPb.
pub const S5_SLP_TYP: u8 = 5;
/// CMOS index of the RTC century register.
pub const RTC_CENTURY: u8 = 0x32;

const OEM_ID: [u8; 6] = *b"LAUNCH";
const OEM_TABLE_ID: [u8; 8] = *b"LAUNCHER";
const OEM_REVISION: u32 = 1;

/// Every table starts 64-byte aligned: the FACS must, the rest may as well.
const TABLE_ALIGN: u64 = 64;
const HEADER_LEN: usize = 36;
/// ACPI 2.0+ RSDP: signature .. RSDT address is the first 20 bytes (the
/// ACPI 1.0 checksum), the whole 36 bytes carry the extended checksum.
const RSDP_LEN: usize = 36;
const RSDP_V1_LEN: usize = 20;
/// The DSDT's revision 2 makes AML integers 64-bit.
const DSDT_REVISION: u8 = 2;
/// MADT revision of ACPI 6.3/6.4.
const MADT_REVISION: u8 = 5;
const MADT_HEADER_LEN: usize = 44;
/// MADT flag: dual 8259s are present (Linux then masks them, as on PCs).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_ISO: u8 = 2;
const MADT_ISO_LEN: u8 = 10;
const MADT_LAPIC_NMI: u8 = 4;
const MADT_LAPIC_NMI_LEN: u8 = 6;
/// MPS INTI flags: polarity bits 0-1 (01 active high), trigger bits 2-3
/// (01 edge, 11 level).
const INTI_EDGE_HIGH: u16 = 0b0101;
const INTI_LEVEL_HIGH: u16 = 0b1101;
const INTI_CONFORMING: u16 = 0;
/// "All processors" in a Local APIC NMI entry.
const ALL_PROCESSORS: u8 = 0xff;
/// LINT1 carries NMI, as in the MP table.
const NMI_LINT: u8 = 1;
/// IAPC_BOOT_ARCH: an 8042 is present (bit 1), no VGA (bit 2).
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// Latencies above 100 / 1000 us declare C2 / C3 unsupported.
const P_LVL2_LAT_NONE: u16 = 101;
const P_LVL3_LAT_NONE: u16 = 1001;
/// `_PRT` address for "all functions of device `slot`".
const PRT_ALL_FUNCTIONS: u32 = 0xffff;
/// An AML package counts its elements in one byte.
const MAX_PRT_ENTRIES: usize = 255;
/// The host bridge's decode windows: all I/O except the config ports,
/// and the 32-bit PCI hole up to just below the IOAPIC.
const PCI_CONFIG_PORT: u16 = 0xcf8;
const PCI_CONFIG_PORT_END: u16 = 0xcff;
const PCI_MMIO_START: u32 = MMIO_HOLE_START as u32;
const PCI_MMIO_END: u32 = (PCI_WINDOW_END - 1) as u32;

/// Builds the tables and writes them to guest memory; returns the RSDP's
/// address, for `boot_params.acpi_rsdp_addr`.
pub fn setup_acpi(mem: &GuestMemory, cpus: u8, pci: &[PciIntx]) -> Result<GuestAddress> {
    for (addr, bytes) in build(cpus, pci)? {
        write_guest(mem, "ACPI tables", addr, &bytes)?;
    }
    Ok(GuestAddress(ACPI_START))
}

/// The tables as (guest physical address, bytes), RSDP first at
/// [`ACPI_START`], each table pointing at the others by those addresses.
pub fn build(cpus: u8, pci: &[PciIntx]) -> Result<Vec<(u64, Vec<u8>)>> {
    check_cpus(cpus)?;
    let dsdt = dsdt(pci)?;
    let madt = madt(cpus);

    // Fixed-size tables first, so only the DSDT's length varies the end.
    let mut next = ACPI_START;
    let mut place = |len: usize| {
        let addr = next;
        next = (addr + len as u64).next_multiple_of(TABLE_ALIGN);
        (addr, addr + len as u64)
    };
    let (rsdp_addr, _) = place(RSDP_LEN);
    let (facs_addr, _) = place(FACS::len());
    let (xsdt_addr, _) = place(HEADER_LEN + 2 * 8);
    let (rsdt_addr, _) = place(HEADER_LEN + 2 * 4);
    let (fadt_addr, _) = place(FADT::len());
    let (madt_addr, _) = place(madt.len());
    let (dsdt_addr, end) = place(dsdt.len());
    if end > ACPI_END {
        return Err(too_big("ACPI tables", ACPI_START, end));
    }

    let mut facs = Vec::new();
    FACS::new().to_aml_bytes(&mut facs);
    let fadt = fadt(facs_addr, dsdt_addr);
    let mut xsdt_table = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut rsdt_table = Sdt::new(
        *b"RSDT",
        HEADER_LEN as u32,
        1,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    for addr in [fadt_addr, madt_addr] {
        xsdt_table.add_entry(addr);
        rsdt_table.append_slice(&low32(addr).to_le_bytes());
    }
    let mut xsdt = Vec::new();
    xsdt_table.to_aml_bytes(&mut xsdt);
    let rsdt = rsdt_table.as_slice().to_vec();

    Ok(vec![
        (rsdp_addr, rsdp(rsdt_addr, xsdt_addr)),
        (facs_addr, facs),
        (xsdt_addr, xsdt),
        (rsdt_addr, rsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (dsdt_addr, dsdt),
    ])
}

/// The error for tables that overrun their room: there is no dedicated
/// variant, so it is reported as a write to the first address past it.
fn too_big(what: &'static str, addr: u64, end: u64) -> Error {
    Error::GuestWrite {
        what,
        addr,
        source: GuestMemoryError::InvalidGuestAddress(GuestAddress(end)),
    }
}

/// Every table lies below 1 MiB, so its 32-bit pointer is exact.
fn low32(addr: u64) -> u32 {
    (addr & 0xffff_ffff) as u32
}

/// The two's complement that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// RSDP revision 2 with both the RSDT (for ACPI 1.0 parsers) and the XSDT.
fn rsdp(rsdt_addr: u64, xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes, below
    r.extend_from_slice(&OEM_ID);
    r.push(2);
    r.extend_from_slice(&low32(rsdt_addr).to_le_bytes());
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.extend_from_slice(&[0; 4]); // extended checksum, reserved
    r[8] = checksum(&r[..RSDP_V1_LEN]);
    r[32] = checksum(&r);
    r
}

/// A system I/O register of `bits` accessed as 16-bit words (PM1 status,
/// enable and control are all word registers).
fn io_gas(port: u16, bits: u8) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        bits,
        0,
        AccessSize::WordAccess,
        port.into(),
    )
}

/// FADT revision 6.5 for a full (not hardware-reduced) PC: fixed PM1a
/// registers, SCI on IRQ 9, no SMI command port (always in ACPI mode, so
/// Linux never tries to switch), no PM timer, GPEs or reset register.
fn fadt(facs_addr: u64, dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.firmware_ctrl = low32(facs_addr).into();
    f.x_firmware_ctrl = facs_addr.into();
    f.dsdt = low32(dsdt_addr).into();
    f.x_dsdt = dsdt_addr.into();
    f.sci_int = u16::from(SCI_IRQ).into();
    f.smi_cmd = 0.into();
    f.acpi_enable = 0;
    f.acpi_disable = 0;
    f.pm1a_evt_blk = u32::from(PM1A_EVT_BLK).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.x_pm1a_evt_blk = io_gas(PM1A_EVT_BLK, PM1_EVT_LEN * 8);
    f.x_pm1a_cnt_blk = io_gas(PM1A_CNT_BLK, PM1_CNT_LEN * 8);
    f.p_lvl2_lat = P_LVL2_LAT_NONE.into();
    f.p_lvl3_lat = P_LVL3_LAT_NONE.into();
    f.century = RTC_CENTURY;
    f.iapc_boot_arch = (BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA).into();
    let mut bytes = Vec::with_capacity(FADT::len());
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn interrupt_source_override(irq: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut e = vec![MADT_ISO, MADT_ISO_LEN, 0 /* ISA */, irq];
    e.extend_from_slice(&gsi.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

/// MADT: a local APIC per vCPU (processor id = APIC id = index), the
/// IOAPIC with GSIs from 0, the PC's two ISA overrides (timer on pin 2,
/// SCI level-triggered) and NMI on every LINT1.
fn madt(cpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN as u32,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(HEADER_LEN, LAPIC_ADDR);
    t.write_u32(HEADER_LEN + 4, MADT_PCAT_COMPAT);
    let mut entries = Vec::new();
    for id in 0..cpus {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(cpus, IOAPIC_ADDR, 0).to_aml_bytes(&mut entries);
    entries.extend(interrupt_source_override(
        0,
        TIMER_IOAPIC_PIN.into(),
        INTI_EDGE_HIGH,
    ));
    entries.extend(interrupt_source_override(
        SCI_IRQ,
        SCI_IRQ.into(),
        INTI_LEVEL_HIGH,
    ));
    entries.extend_from_slice(&[MADT_LAPIC_NMI, MADT_LAPIC_NMI_LEN, ALL_PROCESSORS]);
    entries.extend_from_slice(&INTI_CONFORMING.to_le_bytes());
    entries.push(NMI_LINT);
    t.append_slice(&entries);
    t.as_slice().to_vec()
}

/// DSDT: `\_S5` for poweroff and `\_SB.PCI0`, the host bridge with its
/// decode windows and one `_PRT` entry per INTx line.
fn dsdt(pci: &[PciIntx]) -> Result<Vec<u8>> {
    if pci.len() > MAX_PRT_ENTRIES {
        return Err(too_big(
            "ACPI _PRT (an AML package holds at most 255 PCI INTx entries)",
            ACPI_START,
            ACPI_END,
        ));
    }
    let slp_typ = S5_SLP_TYP;
    let s5 = Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&slp_typ, &slp_typ, &aml::ZERO, &aml::ZERO]),
    );

    let mut prt = PackageBuilder::new();
    for p in pci {
        let address = (u32::from(p.slot) << 16) | PRT_ALL_FUNCTIONS;
        // INTA..INTD as 0..3, matching the MP table's source IRQ.
        let pin = p.pin & 3;
        let gsi = u32::from(p.ioapic_pin);
        // Source Zero: the last element is a GSI, not a link device index.
        prt.add_element(&Package::new(vec![&address, &pin, &aml::ZERO, &gsi]));
    }

    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    // An IO descriptor's "max" is the highest *base*: fixed at 0xcf8, 8 long.
    let config_ports = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, PCI_CONFIG_PORT - 1, None);
    let io_high = aml::AddressSpace::new_io(PCI_CONFIG_PORT_END + 1, 0xffffu16, None);
    let mmio = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START,
        PCI_MMIO_END,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &config_ports, &io_low, &io_high, &mmio]);

    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A03"));
    let adr = Name::new(Path::new("_ADR"), &aml::ZERO);
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    let bbn = Name::new(Path::new("_BBN"), &aml::ZERO);
    let crs = Name::new(Path::new("_CRS"), &crs);
    let prt = Name::new(Path::new("_PRT"), &prt);
    let pci0 = Device::new(Path::new("PCI0"), vec![&hid, &adr, &uid, &bbn, &crs, &prt]);
    let sb = Scope::new(Path::new("\\_SB_"), vec![&pci0]);

    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    sb.to_aml_bytes(&mut body);
    let mut t = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(&body);
    Ok(t.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::guest;
    use vm_memory::Bytes;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    const PCI: [PciIntx; 3] = [
        PciIntx {
            slot: 1,
            pin: 0,
            ioapic_pin: 16,
        },
        PciIntx {
            slot: 2,
            pin: 1,
            ioapic_pin: 17,
        },
        PciIntx {
            slot: 31,
            pin: 3,
            ioapic_pin: 23,
        },
    ];

    /// The built tables, with the table at each address looked up and its
    /// header (signature, length, checksum, OEM ids) checked.
    struct Tables(Vec<(u64, Vec<u8>)>);

    impl Tables {
        fn new(cpus: u8, pci: &[PciIntx]) -> Self {
            Self(build(cpus, pci).unwrap())
        }

        fn at(&self, addr: u64) -> &[u8] {
            &self.0.iter().find(|(a, _)| *a == addr).unwrap().1
        }

        fn table(&self, addr: u64, sig: &[u8; 4]) -> &[u8] {
            let t = self.at(addr);
            assert_eq!(&t[..4], sig);
            assert_eq!(u32_at(t, 4) as usize, t.len(), "{sig:?} length");
            assert_eq!(sum(t), 0, "{sig:?} checksum");
            assert_eq!(&t[10..16], b"LAUNCH");
            assert_eq!(&t[16..24], b"LAUNCHER");
            t
        }

        fn rsdp(&self) -> &[u8] {
            self.at(ACPI_START)
        }

        fn xsdt_entries(&self) -> Vec<u64> {
            let x = self.table(u64_at(self.rsdp(), 24), b"XSDT");
            x[HEADER_LEN..]
                .chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }

        fn fadt(&self) -> &[u8] {
            self.table(self.xsdt_entries()[0], b"FACP")
        }

        fn madt(&self) -> &[u8] {
            self.table(self.xsdt_entries()[1], b"APIC")
        }

        fn dsdt(&self) -> &[u8] {
            self.table(u64_at(self.fadt(), 140), b"DSDT")
        }
    }

    #[test]
    fn rsdp_checksums_and_pointers() {
        let t = Tables::new(1, &[]);
        let r = t.rsdp();
        assert_eq!(r.len(), 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(&r[9..15], b"LAUNCH");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(u32_at(r, 20), 36);
        let rsdt = t.table(u64::from(u32_at(r, 16)), b"RSDT");
        let entries: Vec<u64> = rsdt[HEADER_LEN..]
            .chunks(4)
            .map(|c| u64::from(u32::from_le_bytes(c.try_into().unwrap())))
            .collect();
        assert_eq!(entries, t.xsdt_entries(), "RSDT and XSDT agree");
    }

    #[test]
    fn xsdt_lists_fadt_and_madt() {
        let t = Tables::new(2, &PCI);
        assert_eq!(t.xsdt_entries().len(), 2);
        t.fadt();
        t.madt();
    }

    #[test]
    fn fadt_fields() {
        let t = Tables::new(1, &[]);
        let f = t.fadt();
        assert_eq!(f.len(), 276);
        assert_eq!((f[8], f[131]), (6, 5), "FADT revision 6.5");
        let dsdt = u32_at(f, 40);
        assert_eq!(u64::from(dsdt), u64_at(f, 140), "DSDT == X_DSDT");
        t.dsdt();
        let facs = t.at(u64::from(u32_at(f, 36)));
        assert_eq!(u64::from(u32_at(f, 36)), u64_at(f, 132));
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(facs, 4), 64);
        assert_eq!(u32_at(f, 36) % 64, 0, "FACS is 64-byte aligned");
        assert_eq!(u16_at(f, 46), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "SMI_CMD");
        assert_eq!((f[52], f[53]), (0, 0), "ACPI_ENABLE/DISABLE");
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0, "PM_TMR_BLK");
        assert_eq!((u32_at(f, 80), u32_at(f, 84)), (0, 0), "GPE blocks");
        assert_eq!((f[88], f[89], f[91]), (4, 2, 0), "PM1 evt/cnt, timer len");
        assert_eq!((f[92], f[93]), (0, 0), "GPE lengths");
        assert_eq!(f[108], 0x32, "CENTURY");
        assert_eq!(u16_at(f, 109), 0b110, "8042, no VGA");
        assert_eq!(u32_at(f, 112), 0b11_0101, "WBINVD|PROC_C1|PWR|SLP");
        assert_eq!(&f[116..129], &[0; 13], "no RESET_REG");
        // X_PM1a_EVT_BLK and X_PM1a_CNT_BLK: system I/O, 32/16 bits.
        assert_eq!(&f[148..152], &[1, 32, 0, 2]);
        assert_eq!(u64_at(f, 152), 0x600);
        assert_eq!(&f[172..176], &[1, 16, 0, 2]);
        assert_eq!(u64_at(f, 176), 0x604);
        assert_eq!(&f[208..220], &[0; 12], "no X_PM_TMR_BLK");
    }

    /// The MADT's interrupt controller structures as (type, bytes).
    fn madt_entries(m: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut rest = &m[MADT_HEADER_LEN..];
        while !rest.is_empty() {
            let len = usize::from(rest[1]);
            out.push((rest[0], &rest[..len]));
            rest = &rest[len..];
        }
        out
    }

    fn check_madt(cpus: u8) {
        let t = Tables::new(cpus, &[]);
        let m = t.madt();
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
        let e = madt_entries(m);
        assert_eq!(e.len(), usize::from(cpus) + 4);
        for id in 0..cpus {
            assert_eq!(e[usize::from(id)], (0, &[0, 8, id, id, 1, 0, 0, 0][..]));
        }
        let rest = &e[usize::from(cpus)..];
        assert_eq!(
            rest[0],
            (1, &[1, 12, cpus, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0][..])
        );
        assert_eq!(rest[1], (2, &[2, 10, 0, 0, 2, 0, 0, 0, 0x05, 0][..]));
        assert_eq!(rest[2], (2, &[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0][..]));
        assert_eq!(rest[3], (4, &[4, 6, 0xff, 0, 0, 1][..]));
    }

    #[test]
    fn madt_one_cpu() {
        check_madt(1);
    }

    #[test]
    fn madt_four_cpus() {
        check_madt(4);
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// A PkgLength at `b[0]`: (value, bytes it took).
    fn pkg_length(b: &[u8]) -> (usize, usize) {
        let extra = usize::from(b[0] >> 6);
        if extra == 0 {
            return (usize::from(b[0] & 0x3f), 1);
        }
        let mut len = usize::from(b[0] & 0x0f);
        for i in 0..extra {
            len |= usize::from(b[1 + i]) << (4 + 8 * i);
        }
        (len, 1 + extra)
    }

    /// An AML integer at `b[0]`: (value, bytes it took).
    fn integer(b: &[u8]) -> (u64, usize) {
        match b[0] {
            0x00 => (0, 1),
            0x01 => (1, 1),
            0x0a => (u64::from(b[1]), 2),
            0x0b => (u64::from(u16_at(b, 1)), 3),
            0x0c => (u64::from(u32_at(b, 1)), 5),
            0x0e => (u64_at(b, 1), 9),
            op => panic!("not an integer opcode: {op:#x}"),
        }
    }

    /// Decodes the package named `name` whose elements are all integers or
    /// packages of integers.
    fn package(b: &[u8]) -> (Vec<Vec<u64>>, usize) {
        assert_eq!(b[0], 0x12, "PackageOp");
        let (len, n) = pkg_length(&b[1..]);
        let count = usize::from(b[1 + n]);
        let mut pos = 2 + n;
        let mut out = Vec::new();
        for _ in 0..count {
            if b[pos] == 0x12 {
                let (inner, used) = package(&b[pos..]);
                out.push(inner.into_iter().flatten().collect());
                pos += used;
            } else {
                let (v, used) = integer(&b[pos..]);
                out.push(vec![v]);
                pos += used;
            }
        }
        assert_eq!(pos, 1 + len, "package length");
        (out, pos)
    }

    fn named_package(dsdt: &[u8], name: &[u8; 4]) -> Vec<Vec<u64>> {
        let at = find(dsdt, name).unwrap_or_else(|| panic!("no {name:?}"));
        assert_eq!(dsdt[at - 1], 0x08, "NameOp before {name:?}");
        package(&dsdt[at + 4..]).0
    }

    #[test]
    fn dsdt_s5() {
        let t = Tables::new(1, &[]);
        let d = t.dsdt();
        assert_eq!(d[8], 2, "DSDT revision 2");
        assert_eq!(
            named_package(d, b"_S5_"),
            vec![vec![5], vec![5], vec![0], vec![0]]
        );
        // 0x3400 = SLP_EN | SLP_TYP 5 << 10 is what the launcher expects.
        assert_eq!((1u16 << 13) | (u16::from(S5_SLP_TYP) << 10), 0x3400);
    }

    #[test]
    fn dsdt_pci_host_bridge() {
        let t = Tables::new(1, &PCI);
        let d = t.dsdt();
        for name in [&b"\\_SB_"[..], b"PCI0", b"_HID", b"_CRS", b"_BBN", b"_UID"] {
            assert!(find(d, name).is_some(), "{name:?}");
        }
        // EISAID("PNP0A03") as a DWord.
        assert!(find(d, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]).is_some());
        // Config ports consumed; the 32-bit window 0xc0000000..0xfebfffff.
        assert!(find(d, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]).is_some());
        let mut mmio = vec![0x87, 0x17, 0, 0, 0x0c, 0x01, 0, 0, 0, 0];
        for v in [0xc000_0000u32, 0xfebf_ffff, 0, 0x3ec0_0000] {
            mmio.extend_from_slice(&v.to_le_bytes());
        }
        assert!(find(d, &mmio).is_some());
    }

    #[test]
    fn dsdt_prt_entries() {
        for pci in [&PCI[..], &PCI[..1], &[]] {
            let t = Tables::new(1, pci);
            let prt = named_package(t.dsdt(), b"_PRT");
            let want: Vec<Vec<u64>> = pci
                .iter()
                .map(|p| {
                    let addr = (u64::from(p.slot) << 16) | 0xffff;
                    vec![addr, p.pin.into(), 0, p.ioapic_pin.into()]
                })
                .collect();
            assert_eq!(prt, want);
        }
    }

    #[test]
    fn too_many_prt_entries() {
        let many = vec![PCI[0]; 256];
        let e = build(1, &many).unwrap_err();
        assert!(e.to_string().contains("255"), "{e}");
        assert!(build(1, &many[..255]).is_ok());
    }

    #[test]
    fn cpu_limits() {
        assert!(matches!(build(0, &[]), Err(Error::Cpus { cpus: 0 })));
        assert!(matches!(build(255, &[]), Err(Error::Cpus { cpus: 255 })));
    }

    #[test]
    fn largest_tables_fit_aligned_and_disjoint() {
        let many: Vec<PciIntx> = (0..255)
            .map(|i| PciIntx {
                slot: (i / 4) as u8,
                pin: (i % 4) as u8,
                ioapic_pin: 16 + (i % 8) as u8,
            })
            .collect();
        let t = Tables::new(254, &many);
        assert_eq!(madt_entries(t.madt()).len(), 254 + 4);
        let mut prev_end = ACPI_START;
        for (addr, bytes) in &t.0 {
            assert!(*addr >= prev_end, "{addr:#x} overlaps");
            assert_eq!(addr % 16, 0);
            prev_end = addr + bytes.len() as u64;
        }
        assert!(prev_end <= ACPI_END, "ends at {prev_end:#x}");
    }

    #[test]
    fn written_to_guest_memory() {
        let (_, mem) = guest(16);
        let rsdp = setup_acpi(&mem, 2, &PCI).unwrap();
        assert_eq!(rsdp, GuestAddress(0xe0000));
        for (addr, bytes) in build(2, &PCI).unwrap() {
            let mut got = vec![0; bytes.len()];
            mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
            assert_eq!(got, bytes, "{addr:#x}");
        }
    }

    /// Manual check, not run by default: `cargo test -p loader acpi --
    /// --ignored --nocapture` writes each table to a temp directory, has
    /// `iasl -d` (Debian acpica-tools) disassemble it, and recompiles the
    /// DSDT's disassembly to show the AML round-trips.
    #[test]
    fn iasl_disassembles() {
        use std::process::Command;
        if Command::new("iasl").arg("-v").output().is_err() {
            return crate::testutil::skip("iasl (Debian acpica-tools) is missing");
        }
        let dir = std::env::temp_dir().join(format!("acpi-iasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("iasl").args(args).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{text}{out:?}");
            text
        };
        // iasl cannot read a bare RSDP; the unit tests check it.
        for (_, bytes) in build(2, &PCI).unwrap().into_iter().skip(1) {
            let sig: String = bytes[..4]
                .iter()
                .filter(|b| b.is_ascii_alphabetic())
                .map(|&b| char::from(b).to_ascii_lowercase())
                .collect();
            let path = dir.join(format!("{sig}.dat"));
            std::fs::write(&path, &bytes).unwrap();
            run(&["-d".as_ref(), path.as_os_str()]);
            let dsl = path.with_extension("dsl");
            println!("{}", std::fs::read_to_string(&dsl).unwrap());
            if sig == "dsdt" {
                println!(
                    "{}",
                    run(&["-p".as_ref(), dir.join("re").as_os_str(), dsl.as_os_str()])
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
