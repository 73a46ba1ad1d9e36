//! Every writable disk is flushed (`fdatasync`) on the way out, whatever
//! ends the run: power-off, a stop request (as SIGTERM), a bad driver, and
//! before a reboot's re-exec. Seen from outside with `strace -f -y`, which
//! names the file each `fdatasync` is for (a SIGKILL test could not tell:
//! the data sits in the host's page cache either way).

mod common;

use common::{test_guest, Guest, TempDir, TIMEOUT};
use std::path::Path;
use std::process::{Command, Stdio};

/// The launcher under `strace`, tracing fdatasync and execve(at) into `trace`.
fn traced(trace: &Path, args: &[&str]) -> Guest {
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-y",
        "-e",
        "trace=fdatasync,execve,execveat",
        "-o",
    ])
    .arg(trace)
    .arg(env!("CARGO_BIN_EXE_launcher"))
    .args(args)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    Guest::spawn(cmd)
}

/// The trace's lines, once strace wrote them.
fn lines(trace: &Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether `line` is an fdatasync of `disk`.
fn flushes(line: &str, disk: &str) -> bool {
    line.contains("fdatasync(") && line.contains(&format!("<{disk}>")) && line.ends_with("= 0")
}

/// Sends one line to the control socket at `path` (retrying until the
/// launcher created it) and returns the reply.
fn control(path: &Path, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to {}: {e}", path.display()),
        }
    };
    writeln!(s, "{command}").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn every_way_out_flushes_every_writable_disk() {
    if Command::new("strace").arg("-V").output().is_err() {
        return common::skip("strace is missing");
    }
    let dir = TempDir::new("flush");
    let disk = dir.sparse("disk.img", 1 << 20);
    let ro = dir.sparse("ro.img", 1 << 20);
    // Canonical, as strace -y prints it.
    let disk = disk.canonicalize().unwrap();
    let disk_s = disk.to_str().unwrap().to_string();
    let ro_arg = format!("{},ro", ro.canonicalize().unwrap().display());
    let elf = test_guest::path();
    let elf = elf.to_str().unwrap();
    let sock = dir.path("ctl.sock");
    let sock_s = sock.to_str().unwrap();
    let base = |scenario: &'static str| {
        vec![
            "--rng",
            "--block",
            &disk_s,
            "--block",
            &ro_arg,
            "--control",
            sock_s,
            "16",
            elf,
            scenario,
        ]
    };

    // Power-off, a stop request and a bad driver: a flush before the exit.
    for (what, scenario, code) in [
        ("poweroff", "scenario=hello", 0),
        ("stop request", "scenario=wait-forever", 143),
        ("bad driver", "scenario=bad-status-order", 3),
    ] {
        let trace = dir.path(&format!("{}.trace", what.replace(' ', "-")));
        let mut g = traced(&trace, &base(scenario));
        if code == 143 {
            g.wait_for("GUEST-WAITING", TIMEOUT);
            assert!(control(&sock, "shutdown").starts_with("ok:"));
        }
        let status = g.wait_exit(TIMEOUT);
        assert_eq!(status.code(), Some(code), "{what}: {}", g.output());
        let t = lines(&trace);
        assert!(
            t.iter().any(|l| flushes(l, &disk_s)),
            "{what}: no fdatasync of {disk_s}:\n{}",
            t.join("\n")
        );
        assert!(
            !t.iter()
                .any(|l| l.contains("fdatasync(") && l.contains("ro.img")),
            "{what}: a read-only disk was flushed:\n{}",
            t.join("\n")
        );
    }

    // A reboot: the flush comes before the re-exec.
    let trace = dir.path("reboot.trace");
    let mut g = traced(&trace, &base("scenario=reboot-on-input"));
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    g.write_stdin(b"x");
    g.wait_for("starting boot #2", TIMEOUT);
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    assert!(control(&sock, "shutdown").starts_with("ok:"));
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(143), "{}", g.output());
    let t = lines(&trace);
    let execs: Vec<usize> = (0..t.len())
        .filter(|&i| t[i].contains("execve(") || t[i].contains("execveat("))
        .collect();
    assert!(execs.len() >= 2, "no re-exec traced:\n{}", t.join("\n"));
    let reexec = execs[1];
    assert!(
        t[..reexec].iter().any(|l| flushes(l, &disk_s)),
        "no fdatasync of {disk_s} before the re-exec:\n{}",
        t.join("\n")
    );
}
