//! The launcher's terminal handling (src/terminal.rs, src/lifecycle.rs):
//!
//! - the console escape: three Ctrl-C (0x03) within a second on stdin stop
//!   the launcher with exit code 130 and say so on stderr, also after far
//!   more input than the guest reads (the guest reads none: it is dropped
//!   beyond 64 KiB, and stdin is read on);
//! - raw mode: with a terminal (a pseudo-terminal here) as stdin, the
//!   launcher turns ICANON and ECHO off while the guest runs and puts the
//!   settings back when it ends, whether stopped by SIGTERM (exit 143) or
//!   because the guest powered off (exit 0), or from the console escape
//!   typed on the terminal (exit 130).
//!
//! The guest is the test guest: `wait-forever` prints `GUEST-TEST-START`
//! and `GUEST-WAITING` and spins in ring 3; `hello` powers off at once.
//! Each run takes well under a second; every launcher runs with a 60 s
//! timeout.

mod common;

use common::{test_guest, Guest};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Instant;

use common::TIMEOUT;
const MEM_MB: &str = "16";

fn guest_args(scenario: &str) -> Vec<String> {
    let elf = test_guest::path();
    vec![
        MEM_MB.to_string(),
        elf.to_str().expect("test guest path is UTF-8").to_string(),
        format!("scenario={scenario}"),
    ]
}

#[test]
fn three_ctrl_c_on_stdin_stop_the_launcher() {
    let args = guest_args("wait-forever");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let mut g = Guest::start_with_stdin(&args);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    g.write_stdin(&[0x03, 0x03, 0x03]);
    let status = g.wait_exit(TIMEOUT);
    eprintln!("console escape: {:?}", t.elapsed());
    assert_eq!(
        status.code(),
        Some(130),
        "exit code; output:\n{}",
        g.output()
    );
    assert!(
        g.stderr().contains("stopped from the console"),
        "stderr does not mention the console escape:\n{}",
        g.output()
    );
}

/// Input far beyond what the launcher holds for a guest (64 KiB).
const FLOOD: usize = 1 << 20;

#[test]
fn three_ctrl_c_after_a_flood_the_guest_never_reads_stop_the_launcher() {
    let args = guest_args("wait-forever");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut g = Guest::start_with_stdin(&args);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    // Blocking writes: they finish only if the launcher keeps reading.
    let (done, finished) = std::sync::mpsc::channel();
    let mut stdin = g.take_stdin();
    std::thread::spawn(move || {
        use std::io::Write;
        let r = stdin
            .write_all(&vec![b'x'; FLOOD])
            .and_then(|()| stdin.write_all(&[0x03, 0x03, 0x03]))
            .and_then(|()| stdin.flush());
        let _ = done.send(r.is_ok());
    });
    let wrote = finished.recv_timeout(TIMEOUT).unwrap_or(false);
    assert!(wrote, "the launcher stopped reading stdin:\n{}", g.output());
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(130), "output:\n{}", g.output());
    assert!(
        g.stderr().contains("stopped from the console"),
        "{}",
        g.output()
    );
}

/// A pseudo-terminal; the master stays open for as long as the test runs.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn open_pty() -> Pty {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty fills the two descriptors; null name, termios and
    // window size mean "don't care / defaults".
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe {
        Pty {
            master: OwnedFd::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
        }
    }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: termios is plain data that tcgetattr fills in.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(
            libc::tcgetattr(fd.as_raw_fd(), &mut t),
            0,
            "tcgetattr: {}",
            std::io::Error::last_os_error()
        );
        t
    }
}

/// The parts of the settings the launcher may touch, comparable.
fn settings(t: &libc::termios) -> (u32, u32, u32, u32, Vec<u8>) {
    (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_cc.to_vec())
}

fn canonical_with_echo(t: &libc::termios) -> bool {
    t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::ECHO != 0
}

fn raw(t: &libc::termios) -> bool {
    t.c_lflag & (libc::ICANON | libc::ECHO) == 0
}

/// The launcher on `scenario` with the pty's slave as its stdin.
fn start_on_pty(pty: &Pty, scenario: &str) -> Guest {
    let mut cmd = common::launcher();
    cmd.stdin(Stdio::from(
        pty.slave.try_clone().expect("duplicate the pty slave"),
    ))
    .args(guest_args(scenario));
    Guest::spawn(cmd)
}

#[test]
fn raw_mode_while_running_and_restored_after_sigterm() {
    let pty = open_pty();
    let before = termios(&pty.slave);
    assert!(
        canonical_with_echo(&before),
        "a fresh pty should be canonical with echo"
    );
    let t = Instant::now();
    let mut g = start_on_pty(&pty, "wait-forever");
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    let running = termios(&pty.slave);
    assert!(
        raw(&running),
        "ICANON/ECHO still on while the guest runs (c_lflag {:#o}); output:\n{}",
        running.c_lflag,
        g.output()
    );
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(TIMEOUT);
    eprintln!("raw mode + SIGTERM: {:?}", t.elapsed());
    assert_eq!(
        status.code(),
        Some(143),
        "exit code; output:\n{}",
        g.output()
    );
    assert!(
        g.stderr().contains("stopped by signal 15"),
        "stderr:\n{}",
        g.output()
    );
    let after = termios(&pty.slave);
    assert!(
        canonical_with_echo(&after),
        "ICANON/ECHO not restored after SIGTERM (c_lflag {:#o})",
        after.c_lflag
    );
    assert_eq!(
        settings(&after),
        settings(&before),
        "terminal settings differ from before the launcher ran"
    );
}

#[test]
fn terminal_settings_restored_after_the_guest_powers_off() {
    let pty = open_pty();
    let before = termios(&pty.slave);
    let t = Instant::now();
    let mut g = start_on_pty(&pty, "hello");
    let status = g.wait_exit(TIMEOUT);
    eprintln!("raw mode + poweroff: {:?}", t.elapsed());
    assert_eq!(status.code(), Some(0), "exit code; output:\n{}", g.output());
    assert!(g.output().contains("GUEST-TEST-END"), "{}", g.output());
    let after = termios(&pty.slave);
    assert_eq!(
        settings(&after),
        settings(&before),
        "terminal settings differ from before the launcher ran (c_lflag {:#o} -> {:#o})",
        before.c_lflag,
        after.c_lflag
    );
}

/// Writes all of `bytes` to the pty master without ever blocking for
/// good: panics if the launcher stops reading for `TIMEOUT`.
fn type_on(pty: &Pty, bytes: &[u8]) {
    let fd = pty.master.as_raw_fd();
    let deadline = Instant::now() + TIMEOUT;
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the launcher stopped reading its terminal ({} bytes left)",
            rest.len()
        );
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the write reads from a live buffer.
        // Once poll says writable a pty write takes what fits, so it does
        // not block.
        let n = unsafe {
            if libc::poll(&mut p, 1, 100) != 1 {
                continue;
            }
            libc::write(fd, rest.as_ptr().cast(), rest.len().min(4096))
        };
        if n > 0 {
            rest = &rest[n as usize..];
        }
    }
}

#[test]
fn console_escape_on_a_terminal_after_input_the_guest_never_reads() {
    let pty = open_pty();
    let before = termios(&pty.slave);
    let mut g = start_on_pty(&pty, "wait-forever");
    g.wait_for("GUEST-WAITING", TIMEOUT);
    type_on(&pty, &vec![b'x'; FLOOD]);
    type_on(&pty, &[0x03; 3]);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(130), "output:\n{}", g.output());
    assert!(
        g.stderr().contains("stopped from the console"),
        "stderr:\n{}",
        g.output()
    );
    assert_eq!(settings(&termios(&pty.slave)), settings(&before));
}

#[test]
fn console_escape_typed_on_a_terminal_restores_it() {
    let pty = open_pty();
    let before = termios(&pty.slave);
    let t = Instant::now();
    let mut g = start_on_pty(&pty, "wait-forever");
    g.wait_for("GUEST-WAITING", TIMEOUT);
    // In raw mode (ISIG off) Ctrl-C is a byte for the launcher, not SIGINT.
    let keys = [0x03u8; 3];
    // SAFETY: writes from a live buffer to the pty master we own.
    let n = unsafe { libc::write(pty.master.as_raw_fd(), keys.as_ptr().cast(), keys.len()) };
    assert_eq!(
        n,
        3,
        "write to the pty: {}",
        std::io::Error::last_os_error()
    );
    let status = g.wait_exit(TIMEOUT);
    eprintln!("console escape on a pty: {:?}", t.elapsed());
    assert_eq!(
        status.code(),
        Some(130),
        "exit code; output:\n{}",
        g.output()
    );
    assert!(
        g.stderr().contains("stopped from the console"),
        "stderr:\n{}",
        g.output()
    );
    assert_eq!(
        settings(&termios(&pty.slave)),
        settings(&before),
        "terminal settings differ from before the launcher ran"
    );
}
