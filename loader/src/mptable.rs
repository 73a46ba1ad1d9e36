//! The Intel MultiProcessor Specification 1.4 table, so that a kernel
//! without ACPI finds its CPUs, the IOAPIC and how ISA (and later PCI)
//! interrupts reach it.
//!
//! Input is the vCPU count; output is a floating pointer and a
//! configuration table written into the e820-reserved area starting at
//! [`EBDA_START`] (the last KiB of base memory, which Linux scans for
//! "_MP_"). It describes what KVM's in-kernel irqchip provides: one local
//! APIC per vCPU (APIC id = vCPU index), one IOAPIC (id = vCPU count) at
//! 0xfec00000, ISA IRQs on IOAPIC pins, and LINT0/LINT1 as ExtINT/NMI.

use crate::layout::{EBDA_START, HIMEM_START};
use crate::{write_guest, Error, GuestMemory, Result};

/// APIC ids are 8 bits, 0xff is broadcast and the IOAPIC takes one.
pub const MAX_CPUS: u8 = 254;
/// Where the local APICs are (the architectural default).
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Where KVM's in-kernel IOAPIC is.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// ISA IRQs 0..16 go to IOAPIC pins.
pub const ISA_IRQS: u8 = 16;
/// ISA IRQ 0 (the PIT) arrives on IOAPIC pin 2, as on PCs, where pin 0 is
/// the 8259 cascade.
pub const TIMER_IOAPIC_PIN: u8 = 2;
/// Bus ids in the table.
/// Linux matches an MP interrupt entry's bus id against the PCI bus
/// *number*, so the PCI bus must be MP bus 0 (as SeaBIOS has it).
pub const PCI_BUS_ID: u8 = 0;
pub const ISA_BUS_ID: u8 = 1;

/// Room for the floating pointer and table: the reserved area up to 1 MiB.
const AREA_LEN: usize = (HIMEM_START - EBDA_START) as usize;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const SPEC_REV: u8 = 4;
const OEM_ID: &[u8; 8] = b"LAUNCHER";
const PRODUCT_ID: &[u8; 12] = b"KVM         ";

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Processor entries are 20 bytes, all others 8.
pub const PROCESSOR_ENTRY_LEN: usize = 20;
pub const SMALL_ENTRY_LEN: usize = 8;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// Family 6, as a Pentium Pro or later; Linux only logs it.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 9) | 1;
const IOAPIC_ENABLED: u8 = 1;

const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus": edge/high on ISA,
/// level/low on PCI.
const FLAGS_CONFORMING: u16 = 0;
/// Destination "all local APICs" for local interrupt entries.
const ALL_LAPICS: u8 = 0xff;

/// One PCI INTx line to describe: device `slot`, `pin` 0..=3 for
/// INTA#..INTD#, wired to IOAPIC input `ioapic_pin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIntx {
    pub slot: u8,
    pub pin: u8,
    pub ioapic_pin: u8,
}

/// Checks the vCPU count before anything is loaded.
pub fn check_cpus(cpus: u8) -> Result<()> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Cpus { cpus });
    }
    Ok(())
}

/// Writes the MP table for `cpus` vCPUs and no PCI interrupts.
pub fn setup_mptable(mem: &GuestMemory, cpus: u8) -> Result<()> {
    setup_mptable_with_pci(mem, cpus, &[])
}

/// Writes the MP table for `cpus` vCPUs with an IO interrupt entry for
/// each of `pci` (PCI bus, source IRQ = slot << 2 | pin).
pub fn setup_mptable_with_pci(mem: &GuestMemory, cpus: u8, pci: &[PciIntx]) -> Result<()> {
    let bytes = build(cpus, pci)?;
    write_guest(mem, "MP table", EBDA_START, &bytes)
}

/// The two's complement that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

fn io_interrupt(kind: u8, bus: u8, bus_irq: u8, ioapic: u8, pin: u8) -> [u8; 8] {
    let [f0, f1] = FLAGS_CONFORMING.to_le_bytes();
    [ENTRY_IO_INTERRUPT, kind, f0, f1, bus, bus_irq, ioapic, pin]
}

fn local_interrupt(kind: u8, lint: u8) -> [u8; 8] {
    let [f0, f1] = FLAGS_CONFORMING.to_le_bytes();
    [
        ENTRY_LOCAL_INTERRUPT,
        kind,
        f0,
        f1,
        ISA_BUS_ID,
        0,
        ALL_LAPICS,
        lint,
    ]
}

/// Builds the floating pointer followed by the configuration table, as
/// they must appear at [`EBDA_START`] (the pointer holds the table's
/// physical address).
pub fn build(cpus: u8, pci: &[PciIntx]) -> Result<Vec<u8>> {
    check_cpus(cpus)?;
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: usize = 0;

    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    for (id, name) in [(PCI_BUS_ID, b"PCI   "), (ISA_BUS_ID, b"ISA   ")] {
        entries.extend_from_slice(&[ENTRY_BUS, id]);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        let pin = if irq == 0 { TIMER_IOAPIC_PIN } else { irq };
        entries.extend_from_slice(&io_interrupt(INT_VECTORED, ISA_BUS_ID, irq, ioapic_id, pin));
        count += 1;
    }
    for p in pci {
        let source = (p.slot << 2) | (p.pin & 3);
        entries.extend_from_slice(&io_interrupt(
            INT_VECTORED,
            PCI_BUS_ID,
            source,
            ioapic_id,
            p.ioapic_pin,
        ));
        count += 1;
    }
    entries.extend_from_slice(&local_interrupt(INT_EXTINT, 0));
    entries.extend_from_slice(&local_interrupt(INT_NMI, 1));
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let size = FLOATING_POINTER_LEN + table_len;
    let (Ok(length), Ok(count), true) = (
        u16::try_from(table_len),
        u16::try_from(count),
        size <= AREA_LEN,
    ) else {
        return Err(Error::MpTableTooBig {
            cpus,
            size,
            room: AREA_LEN,
        });
    };

    let table_addr = (EBDA_START as usize + FLOATING_POINTER_LEN) as u32;
    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    // Length in 16-byte units, revision, checksum, then feature bytes:
    // all zero means "a configuration table follows, no IMCR".
    fp.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]); // checksum filled below
    table.extend_from_slice(OEM_ID);
    table.extend_from_slice(PRODUCT_ID);
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // no extended table, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    fp.extend_from_slice(&table);
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::guest;
    use vm_memory::{Bytes, GuestAddress};

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// The configuration table's entries, each as (type, bytes).
    fn entries(table: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = &table[HEADER_LEN..];
        while let Some(&kind) = rest.first() {
            let len = if kind == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_LEN
            } else {
                SMALL_ENTRY_LEN
            };
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    fn check(cpus: u8, pci: &[PciIntx]) -> Vec<u8> {
        let bytes = build(cpus, pci).unwrap();
        let (fp, table) = bytes.split_at(FLOATING_POINTER_LEN);
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(u32::from_le_bytes(fp[4..8].try_into().unwrap()), 0x9_fc10);
        assert_eq!((fp[8], fp[9]), (1, 4));
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        assert_eq!(&table[..4], b"PCMP");
        let length = usize::from(u16::from_le_bytes([table[4], table[5]]));
        assert_eq!(length, table.len());
        assert_eq!(sum(table), 0, "table checksum");
        let count = usize::from(u16::from_le_bytes([table[34], table[35]]));
        assert_eq!(count, entries(table).len());
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            LAPIC_ADDR
        );
        table.to_vec()
    }

    #[test]
    fn one_cpu() {
        let table = check(1, &[]);
        let e = entries(&table);
        // 1 CPU + 2 buses + IOAPIC + 16 ISA IRQs + 2 local interrupts.
        assert_eq!(e.len(), 22);
        assert_eq!(&e[0][..4], &[0, 0, 0x14, CPU_ENABLED | CPU_BOOT_PROCESSOR]);
        assert_eq!(e[1], &[1, 0, b'P', b'C', b'I', b' ', b' ', b' ']);
        assert_eq!(e[2], &[1, 1, b'I', b'S', b'A', b' ', b' ', b' ']);
        assert_eq!(e[3], &[2, 1, 0x11, 1, 0x00, 0x00, 0xc0, 0xfe]);
        assert_eq!(e[4], &[3, 0, 0, 0, 1, 0, 1, 2], "IRQ 0 -> pin 2");
        for irq in 1..16u8 {
            assert_eq!(e[4 + usize::from(irq)], &[3, 0, 0, 0, 1, irq, 1, irq]);
        }
        assert_eq!(e[20], &[4, 3, 0, 0, 1, 0, 0xff, 0], "LINT0 ExtINT");
        assert_eq!(e[21], &[4, 1, 0, 0, 1, 0, 0xff, 1], "LINT1 NMI");
    }

    #[test]
    fn four_cpus() {
        let table = check(4, &[]);
        let e = entries(&table);
        assert_eq!(e.len(), 25);
        for id in 0..4u8 {
            let flags = if id == 0 { 3 } else { 1 };
            assert_eq!(&e[usize::from(id)][..4], &[0, id, 0x14, flags]);
        }
        assert_eq!(&e[6][..2], &[2, 4], "IOAPIC id follows the CPUs");
        assert!(e[7..23].iter().all(|io| io[6] == 4));
    }

    #[test]
    fn pci_intx_entries() {
        let pci = [PciIntx {
            slot: 3,
            pin: 1,
            ioapic_pin: 17,
        }];
        let table = check(2, &pci);
        let e = entries(&table);
        assert_eq!(e[5 + 16], &[3, 0, 0, 0, 0, (3 << 2) | 1, 2, 17]);
    }

    #[test]
    fn cpu_limits() {
        assert!(matches!(build(0, &[]), Err(Error::Cpus { cpus: 0 })));
        assert!(matches!(build(255, &[]), Err(Error::Cpus { cpus: 255 })));
        let table = check(254, &[]);
        assert_eq!(entries(&table).len(), 254 + 21);
    }

    #[test]
    fn written_at_the_ebda() {
        let (_, mem) = guest(16);
        setup_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
        mem.read_slice(&mut sig, GuestAddress(EBDA_START + 16))
            .unwrap();
        assert_eq!(&sig, b"PCMP");
    }
}
