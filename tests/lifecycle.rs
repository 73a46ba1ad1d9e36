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

/// `cmd` on the control socket as user `uid` (a forked child that drops
/// to it), returning the reply.
fn command_as(uid: libc::uid_t, path: &std::path::Path, cmd: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let line = format!("{cmd}\n");
    let mut pipe = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child makes only async-signal-safe calls (setuid,
    // socket, connect, read, write, _exit) on memory prepared before.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let mut buf = [0u8; 128];
            let mut n = 0;
            if libc::setgid(uid) == 0 && libc::setuid(uid) == 0 {
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if libc::connect(s, (&addr as *const libc::sockaddr_un).cast(), len) == 0 {
                    libc::write(s, line.as_ptr().cast(), line.len());
                    let r = libc::read(s, buf.as_mut_ptr().cast(), buf.len());
                    n = r.max(0) as usize;
                } else {
                    let msg = b"connect refused\n";
                    buf[..msg.len()].copy_from_slice(msg);
                    n = msg.len();
                }
            }
            libc::write(pipe[1], buf.as_ptr().cast(), n);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent closes its copy of the write end, waits for the
    // child and reads what it wrote.
    unsafe {
        libc::close(pipe[1]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        let mut buf = [0u8; 128];
        let n = libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len());
        libc::close(pipe[0]);
        String::from_utf8_lossy(&buf[..n.max(0) as usize])
            .trim()
            .to_string()
    }
}

#[test]
fn the_control_socket_is_private_and_not_stolen() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new("control-private");
    let sock = dir.path("ctl.sock");
    let path = sock.to_str().unwrap();
    let mut g = waiting_guest(&["--control", path]);
    assert_eq!(command(&sock, "status"), "running boot=1 vmmci=absent");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // A second launcher does not take a socket someone answers on.
    let elf = test_guest::path();
    let mut h = Guest::start(&["16", elf.to_str().unwrap(), "--control", path]);
    assert_eq!(h.wait_exit(TIMEOUT).code(), Some(1), "{}", h.output());
    assert!(
        h.stderr()
            .contains("another running launcher answers on it"),
        "{}",
        h.stderr()
    );
    assert_eq!(command(&sock, "status"), "running boot=1 vmmci=absent");

    // An over-long line is refused.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    // (The launcher answers and closes before any newline.)
    s.write_all(&[b'x'; 300]).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    assert_eq!(reply.trim(), "error: line longer than 256 bytes");

    // Another user: not even the file lets them in; with the mode opened
    // up, the launcher itself refuses them.
    assert_eq!(command_as(65534, &sock, "status"), "connect refused");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // (The test directory is made by root with its umask; let others in.)
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        command_as(65534, &sock, "status"),
        "error: permission denied"
    );
    assert_eq!(command(&sock, "status"), "running boot=1 vmmci=absent");
    g.signal(libc::SIGTERM);
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(143), "{}", g.output());

    // A stale socket file (nobody answers) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut g = waiting_guest(&["--control", path]);
    assert_eq!(command(&sock, "status"), "running boot=1 vmmci=absent");
    g.signal(libc::SIGTERM);
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(143), "{}", g.output());
}
