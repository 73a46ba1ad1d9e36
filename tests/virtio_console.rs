//! The virtio console (always at 00:01.0, 1af4:1043) and a virtio device
//! reset, driven by the test guest's polled ring-3 driver
//! (guest-images/test-guest/src/console_scenarios.rs and
//! virtio_scenarios.rs):
//!
//! - `virtio-console-out`: one transmitq buffer reaches the launcher's
//!   stdout as a line of its own.
//! - `virtio-console-echo`: once the guest has written to the console, the
//!   launcher's stdin goes to the receiveq; the guest echoes a line back.
//! - `virtio-rng-reset`: writing 0 to device_status stops the queue and
//!   returns the device to its initial state; a second initialisation with
//!   new rings works.
//!
//! Each run takes well under a second here; every launcher runs with a 60 s
//! timeout.

mod common;

use common::{test_guest, Guest};
use std::time::{Duration, Instant};

use common::TIMEOUT;
const MEM_MB: &str = "16";

fn args<'a>(flags: &[&'a str], elf: &'a str, scenario: &'a str) -> Vec<&'a str> {
    let mut v = flags.to_vec();
    v.extend([MEM_MB, elf, scenario]);
    v
}

/// Checks what every well-behaved run must show: exit code 0, the guest's
/// end marker, no guest failure and no strict-mode report.
fn assert_clean_exit(g: &mut Guest, status: std::process::ExitStatus) {
    common::assert_clean(status.code(), &g.output());
}

#[test]
fn guest_output_through_the_transmitq_reaches_stdout() {
    let elf = test_guest::path();
    let elf = elf.to_str().expect("test guest path is UTF-8");
    let t = Instant::now();
    let mut g = Guest::start(&args(&[], elf, "scenario=virtio-console-out"));
    let status = g.wait_exit(TIMEOUT);
    eprintln!("virtio-console-out: {:?}", t.elapsed());
    assert_clean_exit(&mut g, status);
    let stdout = g.stdout();
    assert!(
        stdout.lines().any(|l| l == "HVC-OUT hello from the guest"),
        "no `HVC-OUT hello from the guest` line on stdout; output:\n{}",
        g.output()
    );
    assert!(
        g.output().contains("GUEST-HVC-TX len=29 used id=0"),
        "transmit buffer not returned as expected:\n{}",
        g.output()
    );
}

#[test]
fn stdin_reaches_the_receiveq_once_the_guest_uses_the_console() {
    let elf = test_guest::path();
    let elf = elf.to_str().expect("test guest path is UTF-8");
    let t = Instant::now();
    let mut g = Guest::start_with_stdin(&args(&[], elf, "scenario=virtio-console-echo"));
    let ready = g.wait_for("HVC-READY", TIMEOUT);
    assert_eq!(ready, "HVC-READY", "HVC-READY shares its line");
    // The guest reports the used transmit buffer only after the launcher
    // has marked the console in use (which routes stdin to it): writing
    // after this line cannot race the switch from the 8250.
    g.wait_for("GUEST-HVC-TX len=10", TIMEOUT);
    g.write_stdin(b"ping 123\n");
    let echo = g.wait_for("HVC-ECHO", TIMEOUT);
    let status = g.wait_exit(TIMEOUT);
    eprintln!("virtio-console-echo: {:?}", t.elapsed());
    assert_clean_exit(&mut g, status);
    assert_eq!(echo, "HVC-ECHO ping 123", "output:\n{}", g.output());
    assert!(
        g.stdout().lines().any(|l| l == "HVC-ECHO ping 123"),
        "echo not on stdout:\n{}",
        g.output()
    );
}

/// Input written as soon as the guest's first console output shows must go
/// to the virtio console, not to the 8250. 50 runs, each writing right after
/// the `HVC-READY` line; the first lost line fails the test.
#[test]
fn stdin_written_right_after_the_first_output_reaches_the_receiveq() {
    let elf = test_guest::path();
    let elf = elf.to_str().expect("test guest path is UTF-8");
    for run in 0..50 {
        let mut g = Guest::start_with_stdin(&args(&[], elf, "scenario=virtio-console-echo"));
        g.wait_for("HVC-READY", TIMEOUT);
        g.write_stdin(b"ping 123\n");
        let t = Instant::now();
        let echoed = loop {
            if g.output().contains("HVC-ECHO ping 123") {
                break true;
            }
            if t.elapsed() > Duration::from_secs(5) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            echoed,
            "run {run}: the line written after HVC-READY never reached the virtio \
             console (the guest reports any 8250 input as GUEST-COM1-INPUT after 20 s)"
        );
        let status = g.wait_exit(TIMEOUT);
        assert_eq!(status.code(), Some(0), "run {run}; output:\n{}", g.output());
    }
}

/// The 64 hex digits after `key` in `line`.
fn random_value<'a>(line: &'a str, key: &str) -> &'a str {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    assert!(
        v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key} is not 32 bytes of hex: {line:?}"
    );
    v
}

#[test]
fn rng_works_again_after_a_device_reset() {
    let elf = test_guest::path();
    let elf = elf.to_str().expect("test guest path is UTF-8");
    let t = Instant::now();
    let mut g = Guest::start(&args(&["--rng"], elf, "scenario=virtio-rng-reset"));
    let status = g.wait_exit(TIMEOUT);
    eprintln!("virtio-rng-reset: {:?}", t.elapsed());
    assert_clean_exit(&mut g, status);
    let output = g.output();
    assert!(
        output.contains("GUEST-RNG-AFTER-RESET status=0x00 queue_enable=0"),
        "device not back in its initial state after the reset:\n{output}"
    );
    let line = output
        .lines()
        .find(|l| l.starts_with("GUEST-RNG-RESET "))
        .unwrap_or_else(|| panic!("no GUEST-RNG-RESET line:\n{output}"));
    let (a, b) = (random_value(line, "a="), random_value(line, "b="));
    assert_ne!(a, b, "the reads before and after the reset are equal");
    assert!(
        output.contains("GUEST-STATUS 0x0f"),
        "status after the second initialisation:\n{output}"
    );
}
