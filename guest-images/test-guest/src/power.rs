//! Leaving the VM: ACPI power-off (PM1a control at 0x604) and i8042 reset.

use crate::port::{outb, outw};

/// PM1a control register emulated by the launcher.
pub const PM1A_CNT: u16 = 0x604;
/// SLP_EN | SLP_TYP=5 (S5, soft off).
pub const PM1A_SLEEP_S5: u16 = 0x3400;
/// i8042 command port; command 0xfe pulses the CPU reset line.
pub const I8042_CMD: u16 = 0x64;
pub const I8042_RESET: u8 = 0xfe;

/// Powers the VM off (the launcher exits 0).
pub fn poweroff() -> ! {
    outw(PM1A_CNT, PM1A_SLEEP_S5);
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
