//! The launcher's test guest: a freestanding x86-64 "vmlinux" that the
//! launcher boots like Linux (64-bit boot protocol, ELF at 1 MiB).
//!
//! [`boot`] does the ring-0 bring-up in a few hundred instructions of
//! assembly, then drops to ring 3 (IOPL=3, IF=0) where everything else runs
//! natively: [`user_main`] reads what the boot protocol passed
//! ([`bootinfo`]: the Linux zero page or the PVH start info), finds how to
//! power off ([`acpi`]) and runs a [`scenarios`] entry, which talks to
//! devices by port I/O ([`port`]) and MMIO, prints on COM1 ([`serial`])
//! and ends by powering off ([`power`]).
//!
//! Build: `cargo build --release` here (flags in .cargo/config.toml and
//! build.rs, layout in link.ld); tests use tests/common/test_guest.rs.

#![no_std]
#![no_main]

pub mod acpi;
pub mod bar_scenarios;
pub mod blk_scenarios;
pub mod boot;
pub mod bootinfo;
pub mod clock;
pub mod cmdline;
pub mod console_scenarios;
pub mod legacy_scenarios;
pub mod mem;
pub mod net_scenarios;
pub mod pci;
pub mod port;
pub mod power;
pub mod scenarios;
pub mod serial;
pub mod virtio;
pub mod virtio_scenarios;
pub mod vmmci_scenarios;

use core::panic::PanicInfo;

/// Ring-3 entry, called by `_start` (via `iretq`) with what the VMM
/// passed: the zero page (RSI, 64-bit entry) or the PVH start info (EBX,
/// PVH entry), and which of the two ([`boot::PROTOCOL_LINUX64`] or
/// [`boot::PROTOCOL_PVH`]).
pub extern "C" fn user_main(info: u64, protocol: u64) -> ! {
    // SAFETY: both come from the boot entry; nothing writes the command
    // line or the memory map after boot.
    let boot = unsafe { bootinfo::BootInfo::new(info, protocol) };
    power::init(&boot);
    bootinfo::set(boot);
    scenarios::run(&boot.cmdline)
}

/// Ring-3 exception report, entered from the exception stubs in [`boot`]
/// on a stack of its own. `error` is 0 for vectors without an error code.
pub extern "C" fn exception_report(vector: u64, error: u64, rip: u64, cs: u64, cr2: u64) -> ! {
    print!(
        "GUEST-PANIC exception {vector} ({}) rip={rip:#x} cs={cs:#x} ring={}",
        exception_name(vector),
        cs & 3
    );
    if has_error_code(vector) {
        print!(" error={error:#x}");
    }
    if vector == 14 {
        print!(" cr2={cr2:#x}");
    }
    println!();
    power::poweroff()
}

/// Vectors for which the CPU pushes an error code.
pub fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE",
        "#DB",
        "NMI",
        "#BP",
        "#OF",
        "#BR",
        "#UD",
        "#NM",
        "#DF",
        "coprocessor overrun",
        "#TS",
        "#NP",
        "#SS",
        "#GP",
        "#PF",
        "reserved",
        "#MF",
        "#AC",
        "#MC",
        "#XM",
        "#VE",
        "#CP",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("reserved")
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    print!("GUEST-PANIC {}", info.message());
    if let Some(loc) = info.location() {
        print!(" at {}:{}", loc.file(), loc.line());
    }
    println!();
    power::poweroff()
}

/// Never called (panic = "abort"), but the prebuilt `core` of this hosted
/// target still refers to it from unoptimised builds.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
