//! The consoles' output when stdout is slow or never read: the guest is
//! never stalled by the 8250, held (not robbed) by virtio-console, and the
//! launcher still stops at once when asked.
//!
//! - `serial-flood` (120 000 bytes on COM1) with a stdout pipe nobody reads: the
//!   guest still reaches its power-off (exit 0) and the launcher says how
//!   many bytes it dropped.
//! - `virtio-console-flood` with a stdout pipe nobody reads: the guest's
//!   transmit buffers are held (the pipe holds an unbroken run of its first
//!   lines and the guest never finishes), and SIGTERM, or the Ctrl-C
//!   escape on stdin, ends the launcher within a second.
//! - The same flood read by `(sleep 5; cat)`: every line arrives, in order.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{launcher, test_guest, Guest, TIMEOUT};

/// Lines `virtio-console-flood` sends (17 bytes each: about 510 KB, eight
/// times what a pipe holds).
const FLOOD_LINES: usize = 30_000;

/// Starts the test guest on `scenario` with stdout into a pipe whose read
/// end the caller keeps (and does not read); stderr is captured.
fn start_unread(
    scenario: &str,
    stdin: Stdio,
    pipe_size: Option<usize>,
) -> (Guest, std::io::PipeReader) {
    let elf = test_guest::path();
    let (reader, writer) = std::io::pipe().expect("pipe");
    if let Some(size) = pipe_size {
        // SAFETY: F_SETPIPE_SZ on a pipe we own, with an int argument.
        let r = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        assert!(r >= 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    }
    let mut cmd = launcher();
    cmd.stdout(Stdio::from(writer))
        .stdin(stdin)
        .arg("16")
        .arg(&elf)
        .arg(scenario);
    (Guest::spawn(cmd), reader)
}

/// Bytes waiting in the pipe.
fn queued(reader: &std::io::PipeReader) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    let r = unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(r, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n as usize
}

/// The pipe's capacity.
fn capacity(reader: &std::io::PipeReader) -> usize {
    // SAFETY: F_GETPIPE_SZ takes no argument and only reads.
    let r = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_GETPIPE_SZ) };
    assert!(r > 0, "F_GETPIPE_SZ: {}", std::io::Error::last_os_error());
    r as usize
}

/// Waits (bounded) until the pipe is full but for two pages (it
/// stores whole writes in pages): the launcher's writer is then blocked in
/// `write(2)`.
fn wait_full(g: &Guest, reader: &std::io::PipeReader) {
    let deadline = Instant::now() + TIMEOUT;
    while queued(reader) + 8192 < capacity(reader) {
        assert!(
            Instant::now() < deadline,
            "the pipe never filled ({} bytes); output:\n{}",
            queued(reader),
            g.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything left in the pipe, once every writer has gone.
fn read_rest(mut reader: std::io::PipeReader) -> String {
    let mut s = Vec::new();
    reader.read_to_end(&mut s).expect("read the pipe");
    String::from_utf8_lossy(&s).into_owned()
}

/// The numbers of the `HVC-FLOOD nnnnnn` lines in `text`, in order.
fn flood_numbers(text: &str) -> Vec<usize> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("HVC-FLOOD "))
        .map(|n| n.parse().expect("a line number"))
        .collect()
}

#[test]
fn an_unread_stdout_does_not_stop_a_guest_on_the_8250() {
    // Every byte on the 8250 is a port write (an exit to the launcher), so
    // the flood is kept short: 120 000 bytes against one page of pipe and
    // the launcher's 64 KiB buffer.
    let (mut g, reader) = start_unread(
        "scenario=serial-flood bytes=120000",
        Stdio::null(),
        Some(4096),
    );
    let status = g.wait_exit(TIMEOUT);
    let stderr = g.stderr();
    assert_eq!(
        status.code(),
        Some(0),
        "the guest must reach its power-off; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("bytes of guest output dropped"),
        "the launcher must say what it dropped; stderr:\n{stderr}"
    );
    let out = read_rest(reader);
    assert!(
        out.starts_with("GUEST-TEST-START\r\nSER-FLOOD 000000\n"),
        "the first bytes are kept: {:?}",
        &out[..out.len().min(80)]
    );
    assert!(
        !out.contains("GUEST-TEST-END"),
        "the flood beyond the bound is dropped"
    );
}

/// Fills the pipe through hvc0 and checks the guest is held there.
fn held_flood(stdin: Stdio) -> (Guest, std::io::PipeReader) {
    let scenario = format!("scenario=virtio-console-flood lines={FLOOD_LINES}");
    let (g, reader) = start_unread(&scenario, stdin, None);
    wait_full(&g, &reader);
    (g, reader)
}

/// What the pipe holds after a held flood: an unbroken run of the first
/// lines, and the guest did not get to the end.
fn assert_held(out: &str) {
    let numbers = flood_numbers(out);
    assert!(
        !numbers.is_empty(),
        "no flood line in {:?}",
        &out[..out.len().min(200)]
    );
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| i == n),
        "lines lost or reordered (backpressure must not drop)"
    );
    assert!(numbers.len() < FLOOD_LINES, "the guest was not held");
    assert!(!out.contains("GUEST-FLOOD-SENT"), "the guest was not held");
}

#[test]
fn hvc0_holds_an_unread_guest_and_sigterm_still_ends_the_launcher_at_once() {
    let (mut g, reader) = held_flood(Stdio::null());
    let t = Instant::now();
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(TIMEOUT);
    let took = t.elapsed();
    assert_eq!(status.code(), Some(143), "output:\n{}", g.output());
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    assert_held(&read_rest(reader));
}

#[test]
fn hvc0_holds_an_unread_guest_and_the_escape_still_ends_the_launcher_at_once() {
    let (mut g, reader) = held_flood(Stdio::piped());
    let t = Instant::now();
    let mut stdin = g.take_stdin();
    stdin.write_all(b"\x03\x03\x03").expect("write Ctrl-C");
    let status = g.wait_exit(TIMEOUT);
    let took = t.elapsed();
    assert_eq!(status.code(), Some(130), "output:\n{}", g.output());
    assert!(took < Duration::from_secs(2), "the escape took {took:?}");
    assert_held(&read_rest(reader));
}

#[test]
fn a_slow_reader_of_hvc0_gets_every_byte() {
    let dir = common::TempDir::new("slow-reader");
    let out = dir.path("out");
    let elf = test_guest::path();
    let script = format!(
        r#""$0" 16 "$1" "scenario=virtio-console-flood lines={FLOOD_LINES}" 2>"$2.err" | (sleep 5; cat) >"$2"; exit "${{PIPESTATUS[0]}}""#
    );
    let mut sh = std::process::Command::new("bash");
    sh.arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_launcher"))
        .arg(&elf)
        .arg(&out)
        .stdin(Stdio::null());
    let g = Guest::spawn(sh);
    let mut g = g;
    let status = g.wait_exit(TIMEOUT);
    let text = std::fs::read_to_string(&out).expect("the reader's output");
    let err = std::fs::read_to_string(dir.path("out.err")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "launcher stderr:\n{err}");
    let numbers = flood_numbers(&text);
    assert_eq!(numbers.len(), FLOOD_LINES, "lines lost; stderr:\n{err}");
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| i == n),
        "lines out of order"
    );
    assert!(text.contains(&format!("GUEST-FLOOD-SENT lines={FLOOD_LINES}")));
    assert!(text.contains("GUEST-TEST-END"));
}
