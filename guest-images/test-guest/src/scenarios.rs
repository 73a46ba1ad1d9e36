//! What the guest does, chosen by `scenario=NAME` on the command line
//! (default `hello`). Everything here runs in ring 3 at native speed.
//!
//! Output protocol (one line each, on COM1): `GUEST-TEST-START` first,
//! `GUEST-TEST-END` when a scenario finished normally, `GUEST-PANIC ...`
//! when it did not. To add a scenario, write a `fn(&Cmdline) -> !` and list
//! it in [`SCENARIOS`]; the virtio ones live in [`crate::virtio_scenarios`]
//! (virtio-rng) and [`crate::console_scenarios`] (virtio-console).

use crate::cmdline::Cmdline;
use crate::power;
use crate::println;

/// A scenario never returns: it powers off, reboots or panics.
pub type Scenario = fn(&Cmdline) -> !;

pub const DEFAULT: &str = "hello";

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("hello", hello),
    ("reboot", reboot),
    ("fault", fault),
    ("panic", panic),
    ("pio-bench", pio_bench),
    ("wait-forever", wait_forever),
    ("highmem", highmem),
    ("rep-io", rep_io),
];

/// Runs the scenario the command line names.
pub fn run(cmdline: &Cmdline) -> ! {
    let name = cmdline.get("scenario").unwrap_or(DEFAULT);
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
        f(cmdline)
    }
    // virtio-rng and the bad-* driver scenarios, then the virtio console's.
    crate::virtio_scenarios::run(name, cmdline);
    crate::console_scenarios::run(name, cmdline);
    crate::blk_scenarios::run(name, cmdline);
    crate::net_scenarios::run(name, cmdline);
    crate::legacy_scenarios::run(name, cmdline);
    crate::vmmci_scenarios::run(name, cmdline);
    crate::bar_scenarios::run(name, cmdline);
    panic!("unknown scenario {name:?}")
}

/// Ends a scenario that succeeded.
/// The end of every misbehaving driver. Prints `GUEST-AFTER-BAD`, then
/// waits 2 to 3 s (the CMOS clock), longer than any device needs to
/// notice what the driver did and far shorter than the tests' timeouts,
/// ending early once the device sets DEVICE_NEEDS_RESET (`--lenient`).
/// Then `GUEST-STATUS`, `GUEST-BAD-DEADLINE` if the wait ran out, and a
/// power-off. A strict launcher stops the guest before the deadline, so
/// the marker's absence shows the stop came from the check, not from the
/// power-off.
pub fn after_bad(status: impl Fn() -> u8) -> ! {
    println!("GUEST-AFTER-BAD");
    let mut deadline = crate::clock::Deadline::after(2);
    let mut needs_reset = false;
    while !deadline.expired() {
        if status() & crate::virtio::status::DEVICE_NEEDS_RESET != 0 {
            needs_reset = true;
            break;
        }
        core::hint::spin_loop();
    }
    println!("GUEST-STATUS {:#04x}", status());
    if !needs_reset {
        println!("GUEST-BAD-DEADLINE");
    }
    power::poweroff()
}

pub fn finish() -> ! {
    println!("GUEST-TEST-END");
    power::poweroff()
}

/// The current privilege level (CS bits 1:0).
pub fn current_ring() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    cs & 3
}

/// Prints the ring, the command line, how it was booted (`GUEST-BOOT
/// protocol=<linux64|pvh> regions=<memory-map entries> ram_kib=<usable
/// RAM>`) and how it will power off (`GUEST-POWEROFF port=<PM1a control>
/// value=<written> source=<acpi|default>`), then powers off.
fn hello(cmdline: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    println!("GUEST-RING {}", current_ring());
    println!("GUEST-CMDLINE {}", cmdline.as_str());
    if let Some(b) = crate::bootinfo::get() {
        println!(
            "GUEST-BOOT protocol={} regions={} ram_kib={}",
            b.protocol.name(),
            b.region_count(),
            b.ram_bytes() >> 10
        );
    }
    let (port, value, source) = power::soft_off();
    println!("GUEST-POWEROFF port={port:#x} value={value:#x} source={source}");
    finish()
}

/// A page directory for the first GiB above 4 GiB.
static HIGH_PD: crate::virtio::Pages<4096> = crate::virtio::Pages::new();

/// Touches guest RAM above 4 GiB (run with more than 4 GiB): the loader's
/// identity map stops at 4 GiB, so this maps [4 GiB, 5 GiB) with 2 MiB
/// pages from ring 3 (the page tables are user-writable), writes two
/// patterns 256 MiB apart and reads them back: `GUEST-HIGHMEM ok`.
fn highmem(_: &Cmdline) -> ! {
    use crate::virtio::{read64, write64};
    println!("GUEST-TEST-START");
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let pml4 = crate::boot::boot_cr3() & ADDR_MASK;
    let pdpt = read64(pml4) & ADDR_MASK;
    if read64(pdpt + 4 * 8) & 1 != 0 {
        println!("GUEST-FAIL 4 GiB is mapped already");
        power::poweroff()
    }
    let pd = HIGH_PD.addr();
    for i in 0..512u64 {
        // present, writable, user, 2 MiB page
        write64(pd + 8 * i, ((4 << 30) + (i << 21)) | 0x87);
    }
    write64(pdpt + 4 * 8, pd | 0x7);
    let (a, b) = ((4u64 << 30) + 0x10_0000, (4u64 << 30) + 0x1010_0000);
    write64(a, 0x0123_4567_89ab_cdef);
    write64(b, 0xfedc_ba98_7654_3210);
    let (ra, rb) = (read64(a), read64(b));
    if ra != 0x0123_4567_89ab_cdef || rb != 0xfedc_ba98_7654_3210 {
        println!("GUEST-FAIL high memory read back {ra:#x} {rb:#x}");
        power::poweroff()
    }
    println!("GUEST-HIGHMEM ok at {a:#x} and {b:#x}");
    finish()
}

/// String port I/O: one `rep outsb` of a whole line to the UART's data
/// port, then one `rep insb` of four reads of its line-status register.
/// Each element must reach the device as its own 1-byte access: the line
/// arrives whole, and the four status bytes are all the UART's.
fn rep_io(_: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    let line = b"GUEST-REP-OUTS one string instruction\r\n";
    // SAFETY: reads `line.len()` bytes from a live buffer; DF is clear.
    unsafe {
        core::arch::asm!(
            "rep outsb",
            in("dx") crate::serial::COM1,
            inout("rsi") line.as_ptr() => _,
            inout("rcx") line.len() => _,
            options(nostack, readonly)
        );
    }
    let mut lsr = [0u8; 4];
    // SAFETY: writes 4 bytes into a live buffer; DF is clear.
    unsafe {
        core::arch::asm!(
            "rep insb",
            in("dx") crate::serial::COM1 + 5,
            inout("rdi") lsr.as_mut_ptr() => _,
            inout("rcx") lsr.len() => _,
            options(nostack)
        );
    }
    println!(
        "GUEST-REP-INS lsr={:02x},{:02x},{:02x},{:02x}",
        lsr[0], lsr[1], lsr[2], lsr[3]
    );
    finish()
}

/// Reboots through the i8042.
fn reboot(cmdline: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    println!("GUEST-CMDLINE {}", cmdline.as_str());
    power::reboot()
}

/// `ud2` in ring 3: the exception path must report vector 6.
fn fault(_: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    // SAFETY: deliberately raises #UD; the handler never returns here.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// A Rust panic: the panic handler must report it.
fn panic(_: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    panic!("requested")
}

/// Prints `GUEST-TEST-START` and `GUEST-WAITING`, then spins in ring 3
/// (a `pause` loop) until the launcher is stopped from outside.
fn wait_forever(_: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    println!("GUEST-WAITING");
    loop {
        core::hint::spin_loop();
    }
}

/// `count=N` (default 10000) reads of the COM1 line-status register, timed
/// with the TSC: the cost of one port-I/O exit from ring 3.
fn pio_bench(cmdline: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    let count = cmdline.get_u64("count").unwrap_or(10_000);
    let start = rdtsc();
    for _ in 0..count {
        core::hint::black_box(crate::port::inb(crate::serial::COM1 + 5));
    }
    let cycles = rdtsc() - start;
    println!(
        "GUEST-PIO-BENCH count={count} tsc={cycles} tsc_per_access={}",
        cycles / count.max(1)
    );
    finish()
}

/// The time-stamp counter (allowed in ring 3: CR4.TSD is clear).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}
