//! Leaving the VM: ACPI power-off (S5 through the PM1a control register
//! the ACPI tables name, [`init`]) and i8042 reset.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::bootinfo::BootInfo;
use crate::port::{outb, outw};

/// The launcher's PM1a control register and S5 value (SLP_EN |
/// SLP_TYP=5), used until [`init`] has read the ACPI tables, and if there
/// are none.
pub const PM1A_CNT: u16 = 0x604;
pub const PM1A_SLEEP_S5: u16 = 0x3400;
/// i8042 command port; command 0xfe pulses the CPU reset line.
pub const I8042_CMD: u16 = 0x64;
pub const I8042_RESET: u8 = 0xfe;

/// Port << 16 | value of the power-off write.
static SOFT_OFF: AtomicU32 = AtomicU32::new((PM1A_CNT as u32) << 16 | PM1A_SLEEP_S5 as u32);
/// Whether [`SOFT_OFF`] came from the ACPI tables.
static FROM_ACPI: AtomicU32 = AtomicU32::new(0);

/// Reads the power-off register and value from the ACPI tables (the RSDP
/// the boot protocol named, or the BIOS area), for [`poweroff`] and the
/// ring-0 fallback; keeps the launcher's if there are no tables.
pub fn init(info: &BootInfo) {
    if let Some(s) = crate::acpi::soft_off(info.rsdp) {
        SOFT_OFF.store(
            u32::from(s.port) << 16 | u32::from(s.value()),
            Ordering::Relaxed,
        );
        FROM_ACPI.store(1, Ordering::Relaxed);
        crate::boot::set_ring0_poweroff(s.port, s.value());
    }
}

/// (port, value, "acpi" or "default"): how [`poweroff`] will do it.
pub fn soft_off() -> (u16, u16, &'static str) {
    let v = SOFT_OFF.load(Ordering::Relaxed);
    let source = if FROM_ACPI.load(Ordering::Relaxed) != 0 {
        "acpi"
    } else {
        "default"
    };
    ((v >> 16) as u16, v as u16, source)
}

/// Powers the VM off (the launcher, and QEMU, exit 0).
pub fn poweroff() -> ! {
    let (port, value, _) = soft_off();
    outw(port, value);
    halt_forever()
}

/// Reboots the VM through the keyboard controller (the launcher starts
/// boot #N+1).
pub fn reboot() -> ! {
    outb(I8042_CMD, I8042_RESET);
    halt_forever()
}

/// Nothing left to do; the launcher should have stopped the vCPU already.
/// (`hlt` is privileged, so ring 3 can only spin.)
pub fn halt_forever() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
