//! How a run ends, seen from outside: signals with and without a vmmci
//! driver in the guest. The test guest never starts a vmmci driver, so the
//! launcher must act at once instead of waiting for vmd's timeouts.

mod common;

use common::{test_guest, Guest};
use std::time::{Duration, Instant};

use common::TIMEOUT;

fn waiting_guest(extra: &[&str]) -> Guest {
    let elf = test_guest::path();
    let mut args = vec!["16", elf.to_str().unwrap(), "scenario=wait-forever"];
    args.extend_from_slice(extra);
    let mut g = Guest::start(&args);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    g
}

#[test]
fn sigterm_without_a_vmmci_driver_stops_at_once_with_143() {
    let mut g = waiting_guest(&["--vmmci"]);
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(143), "{}", g.output());
    // No vmmci driver is up, so the launcher must not have asked the
    // guest (and waited for vmd's timeouts) but stopped at once.
    assert!(
        !g.stderr().contains("through vmmci"),
        "asked a guest without a vmmci driver: {}",
        g.stderr()
    );
    assert!(
        g.stderr().contains("stopped by signal 15"),
        "{}",
        g.stderr()
    );
}

#[test]
fn sigint_stops_with_130() {
    let mut g = waiting_guest(&[]);
    g.signal(libc::SIGINT);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(130), "{}", g.output());
}

#[test]
fn sighup_without_a_vmmci_driver_reboots_at_once() {
    let mut g = waiting_guest(&["--vmmci"]);
    g.signal(libc::SIGHUP);
    g.wait_for("guest reboot (SIGHUP); starting boot #2", TIMEOUT);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    g.signal(libc::SIGTERM);
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(143), "{}", g.output());
}

/// Sends one command line to the control socket and returns the reply.
fn command(path: &std::path::Path, cmd: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let deadline = Instant::now() + TIMEOUT;
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to {}: {e}", path.display()),
        }
    };
    writeln!(s, "{cmd}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn control_socket_reports_status_reboots_and_shuts_down() {
    let dir = common::TempDir::new("control");
    let sock = dir.path("ctl.sock");
    let mut g = waiting_guest(&["--vmmci", "--control", sock.to_str().unwrap()]);
    assert_eq!(command(&sock, "status"), "running boot=1 vmmci=down");
    assert!(command(&sock, "frobnicate").starts_with("error: unknown command"));
    assert_eq!(command(&sock, "reboot"), "ok: done at once");
    g.wait_for("guest reboot (control socket); starting boot #2", TIMEOUT);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    assert_eq!(command(&sock, "status"), "running boot=2 vmmci=down");
    assert_eq!(command(&sock, "shutdown"), "ok: done at once");
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(143), "{}", g.output());
    assert!(!sock.exists(), "the socket file is removed on exit");
}
