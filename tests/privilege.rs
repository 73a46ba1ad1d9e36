//! Least privilege: `--username` and `--chroot`, seccomp on every thread,
//! and reboots by re-exec that keep working after both.
//!
//! The chroot tests run a statically linked launcher (built here with
//! `cargo rustc … -C target-feature=+crt-static`, as the README says), since
//! the reboot re-executes the binary inside an empty directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{test_guest, Guest, TempDir, TIMEOUT};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The launcher linked statically, in a target directory of its own.
fn static_launcher() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target").join("static-launcher");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(root)
            .args(["rustc", "--quiet", "--bin", "launcher", "--target-dir"])
            .arg(&target)
            .args(["--", "-C", "target-feature=+crt-static"])
            .env_remove("RUSTFLAGS")
            .stdin(Stdio::null())
            .output()
            .expect("run cargo rustc");
        assert!(
            out.status.success(),
            "static build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug").join("launcher")
    })
    .clone()
}

/// The static launcher as nobody in the empty directory `dir/empty`,
/// with a disk `dir/disk.img` (mode 0600: root's only), then `args`.
fn jailed(dir: &TempDir, args: &[&str], stdin: bool) -> Guest {
    let jail = dir.path("empty");
    std::fs::create_dir(&jail).unwrap();
    let disk = dir.sparse("disk.img", 1 << 20);
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut cmd = Command::new(static_launcher());
    cmd.args(["--username", "nobody", "--chroot"])
        .arg(&jail)
        .arg("--block")
        .arg(&disk)
        .args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Guest::spawn(cmd)
}

/// `field`'s value in a `/proc/…/status` text.
fn field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
}

/// (thread name, status text) of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            (comm.trim().to_string(), status)
        })
        .collect()
}

/// Every thread runs as `uid` with no_new_privs, no effective capability
/// and a seccomp filter; returns the thread names.
fn assert_confined(pid: u32, uid: u32) -> Vec<String> {
    let all = threads(pid);
    for (name, status) in &all {
        let uids: Vec<&str> = field(status, "Uid").split_whitespace().collect();
        assert!(
            uids.iter().all(|u| *u == uid.to_string()),
            "thread {name}: Uid {uids:?}"
        );
        assert_eq!(field(status, "NoNewPrivs"), "1", "thread {name}");
        assert_eq!(field(status, "CapEff"), "0000000000000000", "thread {name}");
        assert_eq!(field(status, "Seccomp"), "2", "thread {name}");
    }
    all.into_iter().map(|(n, _)| n).collect()
}

/// `--username nobody --chroot EMPTY`: the guest runs, reboots by re-exec
/// with a disk image only root may open (it comes with the re-exec), and
/// at every sampled boot every thread is nobody's, confined and filtered,
/// with its root in the empty directory. The control socket is nobody's,
/// mode 0600, and still answers after the reboots.
#[test]
fn a_dropped_chrooted_launcher_runs_and_reboots() {
    if !is_root() {
        return common::skip("needs root (setuid, chroot)");
    }
    let dir = TempDir::new("chroot");
    let jail = dir.path("empty");
    let sock = dir.path("control.sock");
    let elf = test_guest::path();
    let mut g = jailed(
        &dir,
        &[
            "--rng",
            "--control",
            sock.to_str().unwrap(),
            "-v",
            "16",
            elf.to_str().unwrap(),
            "scenario=devices-up",
        ],
        false,
    );
    for boot in 1..=3 {
        if boot > 1 {
            g.wait_for(&format!("starting boot #{boot}"), TIMEOUT);
        }
        g.wait_for("GUEST-WAITING", TIMEOUT);
        let names = assert_confined(g.pid(), NOBODY);
        assert!(names.iter().any(|n| n == "vcpu0"), "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("rng-") && n.contains("-q")),
            "a queue worker runs: {names:?}"
        );
        let root = std::fs::read_link(format!("/proc/{}/root", g.pid())).unwrap();
        assert_eq!(root, jail, "boot {boot}");
        g.signal(libc::SIGHUP);
    }
    g.wait_for("starting boot #4", TIMEOUT);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        meta.uid(),
        NOBODY,
        "the control socket belongs to --username"
    );
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{BufRead, Write};
    c.write_all(b"status\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&c).read_line(&mut line).unwrap();
    assert!(line.starts_with("running boot=4"), "{line:?}");
    g.signal(libc::SIGTERM);
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(143), "{}", g.output());
    assert!(
        g.stderr()
            .contains("seccomp: the main filter came with the reboot"),
        "the next boot keeps the main filter rather than stacking one:\n{}",
        g.stderr()
    );
}

/// Fifty reboots by re-exec under seccomp, dropped and chrooted: each
/// boot's filters are installed once (the stack does not grow to the
/// kernel's limit), and the carried descriptors and the threads are the
/// same at the 3rd boot as at the 50th.
#[test]
fn fifty_reboots_under_seccomp_and_chroot() {
    if !is_root() {
        return common::skip("needs root (setuid, chroot)");
    }
    let dir = TempDir::new("fifty");
    let elf = test_guest::path();
    let mut g = jailed(
        &dir,
        &[
            "--vmmci",
            "16",
            elf.to_str().unwrap(),
            "scenario=reboot-on-input",
        ],
        true,
    );
    let pid = g.pid();
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut samples = Vec::new();
    for n in 1..=50 {
        if n > 1 {
            g.wait_for(&format!("starting boot #{n}"), TIMEOUT);
        }
        g.wait_for("GUEST-TEST-START", TIMEOUT);
        if n == 3 || n == 50 {
            assert_confined(g.pid(), NOBODY);
            samples.push((count("fd"), count("task")));
        }
        g.write_stdin(b"x");
    }
    assert_eq!(samples[0], samples[1], "(fds, threads) at boot #3 and #50");
    g.wait_for("starting boot #51", TIMEOUT);
    g.wait_for("GUEST-TEST-START", TIMEOUT);
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(TIMEOUT).code().is_some());
}

/// A thread that makes a call its filter forbids ends the launcher with
/// its name, the call's number and exit code 5 (the test hook makes a
/// vCPU and then a blk worker call acct(2), number 163 on x86-64, and a
/// vCPU an ioctl its list leaves out, number 16);
/// `--no-seccomp` lets the same run finish.
#[test]
fn a_forbidden_system_call_ends_the_run_with_code_5() {
    let elf = test_guest::path();
    let dir = TempDir::new("forbidden");
    let disk = dir.sparse("disk.img", 1 << 20);
    for (kind, thread) in [("vcpu", "vcpu0"), ("blk-worker", "blk-")] {
        let mut cmd = common::launcher();
        cmd.env("LAUNCHER_TEST_SECCOMP_VIOLATION", kind).args([
            "--block",
            disk.to_str().unwrap(),
            "16",
            elf.to_str().unwrap(),
            "scenario=virtio-blk-io",
        ]);
        let mut g = Guest::spawn(cmd);
        let status = g.wait_exit(TIMEOUT);
        assert_eq!(status.code(), Some(5), "{kind}: {}", g.output());
        let err = g.stderr();
        assert!(
            err.contains(&format!("seccomp: thread {thread}"))
                && err.contains(&format!("({kind} filter) made system call 163")),
            "{kind}: {err}"
        );
    }
    // A request outside the vCPU's ioctl list (the terminal's TCGETS).
    let mut cmd = common::launcher();
    cmd.env("LAUNCHER_TEST_SECCOMP_VIOLATION", "vcpu:ioctl")
        .args(["16", elf.to_str().unwrap(), "scenario=hello"]);
    let mut g = Guest::spawn(cmd);
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(5), "{}", g.output());
    assert!(
        g.stderr().contains("(vcpu filter) made system call 16,"),
        "{}",
        g.stderr()
    );
    let mut cmd = common::launcher();
    cmd.env("LAUNCHER_TEST_SECCOMP_VIOLATION", "vcpu").args([
        "--no-seccomp",
        "16",
        elf.to_str().unwrap(),
        "scenario=hello",
    ]);
    let mut g = Guest::spawn(cmd);
    g.wait_for("GUEST-TEST-END", TIMEOUT);
    assert_eq!(g.wait_exit(TIMEOUT).code(), Some(0), "{}", g.output());
}

/// Bad `--username` / `--chroot` values cost one sentence and exit code 1
/// before the guest runs; a dynamically linked launcher refuses a chroot
/// its loader is missing from (the reboot could not run it there).
#[test]
fn bad_privilege_options_are_refused_up_front() {
    let elf = test_guest::path();
    let dir = TempDir::new("badpriv");
    let file = dir.sparse("plain", 1);
    let empty = dir.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--username", "no-such-user-xyz"],
            "--username no-such-user-xyz: no such user",
        ),
        (
            &["--chroot", "/nonexistent/jail"],
            "--chroot /nonexistent/jail",
        ),
        (&["--chroot", file.to_str().unwrap()], "not a directory"),
        (&["--chroot", empty.to_str().unwrap()], "dynamically linked"),
    ];
    for (opts, says) in cases {
        let mut cmd = common::launcher();
        cmd.args(opts)
            .args(["16", elf.to_str().unwrap(), "scenario=hello"]);
        let mut g = Guest::spawn(cmd);
        let status = g.wait_exit(TIMEOUT);
        assert_eq!(status.code(), Some(1), "{opts:?}: {}", g.output());
        assert!(g.stderr().contains(says), "{opts:?}: {}", g.stderr());
        assert!(!g.stdout().contains("GUEST-TEST-START"), "{opts:?}");
    }
}
