//! vmmci (`--vmmci`) end to end with polled drivers in the test guest
//! (guest-images/test-guest/src/vmmci_scenarios.rs): OpenBSD-style 32-bit
//! and Linux-style byte-wise register access, SIGTERM as an orderly
//! shutdown, SIGHUP as an orderly reboot, vmd's short timeout when the
//! guest never acks, and no descriptor or thread leak over many reboots.

mod common;

use common::{test_guest, Guest};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TIMEOUT;

fn start(extra: &[&str]) -> Guest {
    let elf = test_guest::path();
    let mut args = vec!["16", elf.to_str().unwrap()];
    args.extend_from_slice(extra);
    Guest::start(&args)
}

/// The value of `key=` in `line`.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("{key}=");
    let i = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    line[i + pat.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
}

/// Waits for the driver to come up; checks the features and the clock.
fn wait_ready(g: &mut Guest) {
    let features = g.wait_for("GUEST-VMMCI features=", TIMEOUT);
    assert_eq!(field(&features, "features"), "7", "{}", g.output());
    let time = g.wait_for("GUEST-VMMCI time", TIMEOUT);
    let sec: u64 = field(&time, "sec").parse().unwrap();
    let usec: u64 = field(&time, "usec").parse().unwrap();
    assert!(usec < 1_000_000, "{time}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let guest = Duration::from_secs(sec) + Duration::from_micros(usec);
    let diff = now.abs_diff(guest);
    assert!(
        diff < Duration::from_secs(5),
        "guest saw host time {guest:?}, host now {now:?}: {time}"
    );
    g.wait_for("GUEST-VMMCI-READY", TIMEOUT);
}

#[test]
fn openbsd_style_driver_shuts_down_on_sigterm() {
    // -vv: vmmci's commands and acks are traced too.
    let mut g = start(&[
        "-vv",
        "--trace",
        "vmmci",
        "--vmmci",
        "scenario=vmmci-openbsd",
    ]);
    wait_ready(&mut g);
    g.signal(libc::SIGTERM);
    g.wait_for("GUEST-VMMCI command=1", TIMEOUT);
    g.wait_for("GUEST-VMMCI acked", TIMEOUT);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", g.output());
    let stderr = g.stderr();
    assert!(
        stderr.contains(": command 1 (Shutdown) to the guest"),
        "{stderr}"
    );
    assert!(stderr.contains(": the guest acks command 1"), "{stderr}");
    assert!(
        stderr.contains("features negotiated: VMMCI_F_TIMESYNC|VMMCI_F_ACK|VMMCI_F_SYNCRTC"),
        "{stderr}"
    );
    assert!(!g.output().contains("GUEST-PANIC"), "{}", g.output());
}

#[test]
fn linux_style_driver_reboots_on_sighup_without_a_storm() {
    let mut g = start(&["--vmmci", "scenario=vmmci-linux"]);
    wait_ready(&mut g);
    g.signal(libc::SIGHUP);
    g.wait_for("GUEST-VMMCI command=2", TIMEOUT);
    let repeats = g.wait_for("GUEST-VMMCI repeats=", TIMEOUT);
    assert_eq!(field(&repeats, "repeats"), "0", "{}", g.output());
    // The ack (stdout) and the launcher's reboot line (stderr) come back to
    // back, and the two pipes are read on separate threads: they may be
    // captured in either order. Boot #2's READY (stdout) follows the ack.
    g.wait_for("starting boot #2", TIMEOUT);
    g.wait_for("GUEST-VMMCI-READY", TIMEOUT);
    assert!(g.stdout().contains("GUEST-VMMCI acked"), "{}", g.output());
    assert!(!g.output().contains("GUEST-PANIC"), "{}", g.output());
    // Dropping the guest kills the launcher.
}

#[test]
fn guest_that_never_acks_is_stopped_after_the_short_timeout() {
    let mut g = start(&["--vmmci", "scenario=vmmci-openbsd", "noack=1"]);
    wait_ready(&mut g);
    let t0 = Instant::now();
    g.signal(libc::SIGTERM);
    g.wait_for("GUEST-VMMCI command=1", TIMEOUT);
    g.wait_for("GUEST-VMMCI not acking", TIMEOUT);
    let status = g.wait_exit(TIMEOUT);
    let elapsed = t0.elapsed();
    // vmd's short timer ends in ShutdownNow, which src/vm.rs maps to a
    // power-off: exit 0.
    assert_eq!(status.code(), Some(0), "{}", g.output());
    assert!(
        elapsed >= Duration::from_millis(2500),
        "stopped after {elapsed:?}, before the 3 s timeout\n{}",
        g.output()
    );
    assert!(
        elapsed <= Duration::from_secs(10),
        "stopped only after {elapsed:?}\n{}",
        g.output()
    );
    assert!(!g.output().contains("GUEST-VMMCI acked"), "{}", g.output());
}

/// Entries in /proc/<pid>/<dir>.
fn count(pid: u32, dir: &str) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/{dir}"))
        .ok()
        .map(|d| d.count())
}

/// (fds, threads) of the launcher now.
fn sample(g: &Guest) -> (usize, usize) {
    let pid = g.pid();
    match (count(pid, "fd"), count(pid, "task")) {
        (Some(f), Some(t)) => (f, t),
        _ => panic!("cannot read /proc/{pid}"),
    }
}

#[test]
fn repeated_reboots_leak_no_descriptors_or_threads() {
    // reboot-on-input: GUEST-TEST-START, then it waits for a byte on COM1
    // and reboots; the launcher is sampled while the guest waits, so no
    // sample can fall on an exec however slow the host.
    let mut g = Guest::start_with_stdin(&[
        "16",
        test_guest::path().to_str().unwrap(),
        "--vmmci",
        "scenario=reboot-on-input",
    ]);
    let mut samples = Vec::new();
    for n in 1..=21 {
        if n > 1 {
            g.wait_for(&format!("starting boot #{n}"), TIMEOUT);
        }
        g.wait_for("GUEST-TEST-START", TIMEOUT);
        if n == 3 || n == 21 {
            let s = sample(&g);
            eprintln!("boot #{n}: fds={} threads={}", s.0, s.1);
            samples.push(s);
        }
        g.write_stdin(b"x");
    }
    assert_eq!(samples[0], samples[1], "(fds, threads) at boot #3 and #21");
}

/// SIGTERM goes to the guest through vmmci; the guest reboots instead of
/// shutting down. The request stands: the launcher stops with SIGTERM's
/// status and does not start the guest again.
#[test]
fn a_guest_that_reboots_instead_of_shutting_down_is_stopped() {
    let mut g = start(&["--vmmci", "scenario=vmmci-linux", "onshutdown=reboot"]);
    g.wait_for("GUEST-VMMCI-READY", TIMEOUT);
    g.signal(libc::SIGTERM);
    g.wait_for("GUEST-VMMCI rebooting instead", TIMEOUT);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(143), "{}", g.output());
    assert!(
        g.stderr()
            .contains("while asked to shut down; not starting it again"),
        "{}",
        g.stderr()
    );
    assert!(!g.output().contains("starting boot #2"), "{}", g.output());
}
