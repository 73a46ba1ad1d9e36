//! x86 port I/O. The guest runs in ring 3 with IOPL=3 and an open TSS I/O
//! bitmap, so these work there (each access is a VM exit handled by the
//! launcher; on nested `kvm_pvm` hosts also an emulated #GP, see `boot`).

use core::arch::asm;

/// Reads a byte from `port`.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port reads have no memory effects in this guest.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes a byte to `port`.
pub fn outb(port: u16, v: u8) {
    // SAFETY: as for `inb`; the devices behind the ports are emulated.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// Reads 16 bits from `port`.
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: see `inb`.
    unsafe {
        asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes 16 bits to `port`.
pub fn outw(port: u16, v: u16) {
    // SAFETY: see `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

/// Reads 32 bits from `port` (e.g. PCI configuration data at 0xcfc).
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: see `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes 32 bits to `port` (e.g. PCI configuration address at 0xcf8).
pub fn outl(port: u16, v: u32) {
    // SAFETY: see `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}
