//! The host event loop (`Vm::run` in src/vm.rs) under load: no subscriber
//! may block it. The launcher runs the test guest's `wait-forever`, which
//! reads no input, with `--control` and `--vmmci`, while
//!
//! - stdin is a pipe a thread keeps filling, far beyond the 64 KiB held
//!   for the guest;
//! - one control client connects and says nothing, another sends half a
//!   line;
//! - a third sends `status` over and over and never reads a reply (the
//!   launcher must drop it);
//!
//! and then a `shutdown` from a fresh client, or SIGTERM, must still stop
//! it at once with exit code 143.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_guest, Guest, TempDir};

use common::TIMEOUT;
/// How much stdin the launcher must have read (and dropped) before the
/// test goes on: sixteen times what it holds for the guest.
const STDIN_FLOOD: usize = 16 * 64 * 1024;

/// A launcher under load, and what keeps the load up.
struct Loaded {
    guest: Guest,
    dir: TempDir,
    _silent: UnixStream,
    _half_line: UnixStream,
}

fn sock(dir: &TempDir) -> PathBuf {
    dir.path("ctl.sock")
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Waits for the first value on `rx`, or panics naming `what`.
fn within<T>(rx: &Receiver<T>, what: &str, g: &Guest) -> T {
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("{what} within {TIMEOUT:?}; output:\n{}", g.output()))
}

fn loaded() -> Loaded {
    let dir = TempDir::new("event-loop");
    let path = sock(&dir);
    let elf = test_guest::path();
    let mut guest = Guest::start_with_stdin(&[
        "16",
        elf.to_str().unwrap(),
        "scenario=wait-forever",
        "--vmmci",
        "--control",
        path.to_str().unwrap(),
    ]);
    guest.wait_for("GUEST-WAITING", TIMEOUT);

    // stdin: written without end; the writer stops when the launcher is
    // gone (broken pipe).
    let mut stdin = guest.take_stdin();
    let written = Arc::new(AtomicUsize::new(0));
    let (flooded, flood_rx) = channel();
    let counter = written.clone();
    std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut told = false;
        while let Ok(n) = stdin.write(&chunk) {
            let total = counter.fetch_add(n, Ordering::Relaxed) + n;
            if total >= STDIN_FLOOD && !told {
                told = true;
                let _ = flooded.send(());
            }
        }
    });
    within(&flood_rx, "the launcher to read 1 MiB of stdin", &guest);

    let silent = connect(&path);
    let mut half_line = connect(&path);
    half_line.write_all(b"stat").unwrap();

    // A client that asks and asks and never reads: its writes fail once
    // the launcher has dropped it.
    let mut greedy = connect(&path);
    let (dropped, dropped_rx) = channel();
    std::thread::spawn(move || {
        let burst = "status\n".repeat(500);
        let err = loop {
            if let Err(e) = greedy.write_all(burst.as_bytes()) {
                break e;
            }
        };
        let _ = dropped.send(err.kind());
    });
    let kind = within(
        &dropped_rx,
        "the launcher to drop a client that never reads",
        &guest,
    );
    assert!(
        matches!(kind, ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
        "the greedy client ended with {kind:?}, not a dropped connection"
    );
    assert!(
        written.load(Ordering::Relaxed) >= STDIN_FLOOD,
        "stdin still being read"
    );
    Loaded {
        guest,
        dir,
        _silent: silent,
        _half_line: half_line,
    }
}

/// Checks the end: exit code 143, promptly, said on stderr.
fn assert_stopped_by_sigterm(g: &mut Guest, since: Instant) {
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(143), "{}", g.output());
    assert!(
        since.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        since.elapsed()
    );
    assert!(
        g.stderr().contains("stopped by signal 15"),
        "{}",
        g.stderr()
    );
}

#[test]
fn shutdown_on_the_control_socket_under_load_exits_143() {
    let mut l = loaded();
    let path = sock(&l.dir);
    // A fresh client is served while the others hang about.
    let mut s = connect(&path);
    writeln!(s, "status").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("running boot=1 vmmci=down"), "{line:?}");

    let t0 = Instant::now();
    writeln!(s, "shutdown").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("ok:"), "reply {line:?}");
    assert_stopped_by_sigterm(&mut l.guest, t0);
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn sigterm_under_load_exits_143() {
    let mut l = loaded();
    let t0 = Instant::now();
    l.guest.signal(libc::SIGTERM);
    assert_stopped_by_sigterm(&mut l.guest, t0);
}
