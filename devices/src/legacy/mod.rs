//! Legacy PC devices: what a Linux kernel probes on an x86 PC before it
//! looks at PCI. Each is a [`crate::BusDevice`] placed on the port-I/O bus
//! by the launcher (`src/vm.rs`); the PIC, PIT and IOAPIC are KVM's own.

pub mod cmos;
pub mod i8042;
pub mod pm;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use pm::PowerManagement;
pub use serial::{InputSink, SerialPort};

/// Port ranges of the devices above, as a PC has them.
pub mod ports {
    pub const COM1: u64 = 0x3f8;
    pub const COM1_LEN: u64 = 8;
    pub const COM1_IRQ: u32 = 4;
    pub const I8042: u64 = 0x60;
    /// 0x60 and 0x64, with 0x61 (the PIT's speaker port, KVM's) between them.
    pub const I8042_LEN: u64 = 5;
    pub const CMOS: u64 = 0x70;
    pub const CMOS_LEN: u64 = 2;
    /// ACPI PM1a event block (0x600) and control register (0x604).
    pub const PM: u64 = 0x600;
    pub const PM_LEN: u64 = 6;
}
