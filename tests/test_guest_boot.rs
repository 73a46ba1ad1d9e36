//! Boots the freestanding test guest (guest-images/test-guest) and checks
//! the basics every device test builds on: the Linux 64-bit boot protocol
//! (ELF vmlinux at 1 MiB, zero page in RSI, command line), the guest's drop
//! to ring 3, COM1 output, ACPI power-off (exit 0), i8042 reboot, and that
//! guest faults and panics are reported instead of becoming triple faults.
//!
//! Each boot takes well under a second; the timeouts are generous for slow,
//! loaded CI machines.

mod common;

use common::{test_guest, Guest};
use std::time::Instant;

use common::TIMEOUT;
const MEM_MB: &str = "16";

/// Starts the launcher on the test guest with `args` as its command line.
fn boot(args: &[&str]) -> Guest {
    let elf = test_guest::path();
    let elf = elf.to_str().expect("test guest path is UTF-8");
    let mut all = vec![MEM_MB, elf];
    all.extend_from_slice(args);
    Guest::start(&all)
}

/// Waits for the launcher to exit and checks it exited with 0 (powered off).
fn assert_powered_off(g: &mut Guest) {
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; output:\n{}",
        g.output()
    );
}

#[test]
fn hello_runs_in_ring_3_sees_its_command_line_and_powers_off() {
    let t = Instant::now();
    let mut g = boot(&["scenario=hello", "marker=xyz"]);
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    let ring = g.wait_for("GUEST-RING", TIMEOUT);
    assert!(
        ring.ends_with("GUEST-RING 3"),
        "not in ring 3: {ring:?}\n{}",
        g.output()
    );
    let cmdline = g.wait_for("GUEST-CMDLINE", TIMEOUT);
    assert!(
        cmdline.contains("scenario=hello") && cmdline.contains("marker=xyz"),
        "command line not passed through: {cmdline:?}"
    );
    g.wait_for("GUEST-TEST-END", TIMEOUT);
    assert_powered_off(&mut g);
    assert!(!g.output().contains("GUEST-PANIC"), "{}", g.output());
    eprintln!("hello: {:?}", t.elapsed());
}

#[test]
fn default_scenario_is_hello() {
    let mut g = boot(&["marker=default"]);
    g.wait_for("GUEST-RING 3", TIMEOUT);
    g.wait_for("GUEST-TEST-END", TIMEOUT);
    assert_powered_off(&mut g);
}

#[test]
fn i8042_reset_reboots_with_the_same_arguments() {
    let t = Instant::now();
    let mut g = boot(&["scenario=reboot", "marker=same-args"]);
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    let first = g.wait_for("GUEST-CMDLINE", TIMEOUT);
    assert!(first.contains("marker=same-args"), "{first}");
    g.wait_for("starting boot #2", TIMEOUT);
    // The re-executed launcher boots the same guest and command line.
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    let second = g.wait_for("GUEST-CMDLINE", TIMEOUT);
    assert_eq!(second, first, "boot #2's command line");
    g.wait_for("starting boot #3", TIMEOUT);
    eprintln!("reboot (two boots): {:?}", t.elapsed());
    // Dropping the guest kills the launcher, which keeps rebooting.
}

#[test]
fn a_ring_3_exception_is_reported_and_powers_off() {
    let t = Instant::now();
    let mut g = boot(&["scenario=fault"]);
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    let line = g.wait_for("GUEST-PANIC exception", TIMEOUT);
    assert!(
        line.contains("GUEST-PANIC exception 6 "),
        "expected #UD (6): {line:?}"
    );
    assert!(
        line.contains("ring=3"),
        "the fault was not in ring 3: {line:?}"
    );
    assert_powered_off(&mut g);
    assert!(!g.output().contains("guest reboot"), "{}", g.output());
    eprintln!("fault: {:?}", t.elapsed());
}

#[test]
fn a_guest_panic_is_reported_and_powers_off() {
    let mut g = boot(&["scenario=panic"]);
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    g.wait_for("GUEST-PANIC requested", TIMEOUT);
    assert_powered_off(&mut g);
    assert!(!g.output().contains("GUEST-TEST-END"), "{}", g.output());
}

#[test]
fn an_unknown_scenario_is_a_guest_panic() {
    let mut g = boot(&["scenario=no-such-thing"]);
    g.wait_for("GUEST-PANIC unknown scenario", TIMEOUT);
    assert_powered_off(&mut g);
}

#[test]
fn port_io_from_ring_3_works_and_is_timed() {
    let t = Instant::now();
    let mut g = boot(&["scenario=pio-bench", "count=2000"]);
    let line = g.wait_for("GUEST-PIO-BENCH", TIMEOUT);
    assert!(line.contains("count=2000"), "{line:?}");
    g.wait_for("GUEST-TEST-END", TIMEOUT);
    assert_powered_off(&mut g);
    eprintln!("pio-bench: {line} (whole run {:?})", t.elapsed());
}

/// Memory beyond the 3 GiB MMIO hole goes above 4 GiB: a 5000 MB guest is
/// built (two RAM slots around the hole), and the guest itself writes and
/// reads back RAM above 4 GiB (scenario `highmem`).
#[test]
fn a_5000_mb_guest_boots_with_ram_above_4_gib() {
    let elf = test_guest::path();
    let mut g = Guest::start(&["5000", elf.to_str().unwrap(), "scenario=highmem", "-v"]);
    g.wait_for("guest RAM 0x0..0xc0000000", TIMEOUT);
    g.wait_for("guest RAM 0x100000000..0x178800000", TIMEOUT);
    g.wait_for("GUEST-HIGHMEM ok", TIMEOUT);
    g.wait_for("GUEST-TEST-END", TIMEOUT);
    assert_powered_off(&mut g);
    assert!(!g.output().contains("GUEST-FAIL"), "{}", g.output());
}

/// `rep outsb` / `rep insb`: KVM hands the launcher all elements of a
/// string instruction at once; each must reach the device as an access of
/// the instruction's width (the UART takes one byte per access).
#[test]
fn string_port_io_reaches_the_device_element_by_element() {
    let mut g = boot(&["scenario=rep-io"]);
    g.wait_for("GUEST-REP-OUTS one string instruction", TIMEOUT);
    let ins = g.wait_for("GUEST-REP-INS lsr=", TIMEOUT);
    let bytes: Vec<u8> = ins
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or("")
        .split(',')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or(0))
        .collect();
    assert_eq!(bytes.len(), 4, "{ins}");
    assert!(
        bytes.iter().all(|&b| b == bytes[0] && b & 0x60 == 0x60),
        "every element is the UART's line status (THRE|TEMT): {ins}"
    );
    assert_powered_off(&mut g);
}
