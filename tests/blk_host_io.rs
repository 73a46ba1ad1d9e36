//! virtio-blk when the host's storage misbehaves, driven by the test
//! guest (guest-images/test-guest/src/blk_scenarios.rs):
//!
//! - Host I/O that hangs (`virtio-blk-stuck`, with the launcher's test
//!   hook `LAUNCHER_TEST_BLK_STALL` stalling the read of one sector, as a
//!   disk on a hung network file system would): the guest resets the
//!   device while its read is stuck; the reset returns within a bounded
//!   time, the re-initialised device serves I/O while the old worker is
//!   still blocked, and the stuck read's buffer, status byte and used
//!   ring are never written, neither while it is stuck nor after the test
//!   lets it finish. The launcher then powers off promptly, whether the
//!   stuck I/O was let go or is still blocked.
//! - A full file system (`virtio-blk-nospace` on a sparse image larger
//!   than the small tmpfs it lives on): the write that meets ENOSPC gets
//!   IOERR, the launcher says so once, and the guest's next requests are
//!   served.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{assert_clean, test_guest, Guest, TempDir, TIMEOUT};

const MEM_MB: &str = "32";
const SECTOR: usize = 512;
/// The sector whose read the hook stalls.
const STUCK_SECTOR: usize = 100;
/// What the test puts in the stuck sector: a late copy into the guest's
/// buffer (filled with 0xa5) would show.
const STUCK_CONTENT: u8 = 0x3c;
/// How long the launcher may take to exit once the guest powered off.
const PROMPT_EXIT: Duration = Duration::from_secs(5);
/// What a reset with a stuck worker may cost the vCPU: the launcher gives
/// workers 100 ms to end; the rest is slack for a loaded machine.
const RESET_BOUND_US: u64 = 1_000_000;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Lets the stalled I/O go: one byte into the pipe the hook reads (the
/// open waits until the hook has the pipe open for reading).
fn release(fifo: &Path) {
    let mut f = fs::OpenOptions::new().write(true).open(fifo).unwrap();
    std::io::Write::write_all(&mut f, b"x").unwrap();
}

/// The number in `<prefix><n>` on a line of `output`.
fn number_after(output: &str, prefix: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, n)| n))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?}<n> line:\n{output}"))
}

/// The stuck-I/O scenario; `let_go` lets the stuck read finish before the
/// guest's last check, otherwise it is still blocked when the guest powers
/// off.
fn stuck_io(let_go: bool) {
    let dir = TempDir::new(if let_go { "blk-stuck-go" } else { "blk-stuck" });
    let disk = dir.path("disk.img");
    let f = fs::File::create(&disk).unwrap();
    f.set_len(1 << 20).unwrap();
    f.write_all_at(&[STUCK_CONTENT; SECTOR], (STUCK_SECTOR * SECTOR) as u64)
        .unwrap();
    let fifo = dir.path("stall");
    mkfifo(&fifo);
    let elf = test_guest::path();
    let mut cmd = common::launcher();
    cmd.stdin(Stdio::piped())
        .env(
            "LAUNCHER_TEST_BLK_STALL",
            format!("{STUCK_SECTOR}:{}", fifo.display()),
        )
        .arg("--block")
        .arg(&disk)
        .arg(MEM_MB)
        .arg(&elf)
        .arg("scenario=virtio-blk-stuck")
        .arg(format!("stuck_sector={STUCK_SECTOR}"));
    let mut g = Guest::spawn(cmd);

    // The worker is in the stalled read: now the guest resets.
    g.wait_for(
        &format!("test hook: blk I/O at sector {STUCK_SECTOR} stalls"),
        TIMEOUT,
    );
    g.write_stdin(b"r");
    g.wait_for("GUEST-BLK-STUCK-UNTOUCHED after the reset", TIMEOUT);
    if let_go {
        release(&fifo);
        g.wait_for("host I/O finished after the device was reset", TIMEOUT);
    }
    g.write_stdin(b"c");
    g.wait_for("GUEST-TEST-END", TIMEOUT);
    let end = Instant::now();
    let status = g.wait_exit(TIMEOUT);
    let exit_took = end.elapsed();
    let output = g.output();
    assert_clean(status.code(), &output);
    assert!(
        output.contains("GUEST-BLK-STUCK-UNTOUCHED at the end"),
        "{output}"
    );
    assert!(
        output.contains("queue 0's worker is still busy in host I/O"),
        "the reset did not go on without the stuck worker:\n{output}"
    );
    let reset_us = number_after(&output, "GUEST-BLK-RESET us=");
    assert!(
        reset_us < RESET_BOUND_US,
        "the reset took {reset_us} µs:\n{output}"
    );
    assert!(
        exit_took < PROMPT_EXIT,
        "the launcher took {exit_took:?} to exit after the power-off:\n{output}"
    );
    let image = fs::read(&disk).unwrap();
    let stuck = &image[STUCK_SECTOR * SECTOR..(STUCK_SECTOR + 1) * SECTOR];
    assert!(
        stuck.iter().all(|&b| b == STUCK_CONTENT),
        "a read wrote the disk"
    );
    eprintln!(
        "stuck I/O ({}): the reset took {reset_us} µs in the guest, the exit {exit_took:?}",
        if let_go { "let go" } else { "still blocked" }
    );
}

#[test]
fn a_reset_does_not_wait_for_stuck_io_whose_late_result_is_discarded() {
    stuck_io(true);
}

#[test]
fn the_launcher_exits_while_a_worker_is_stuck_in_host_io() {
    stuck_io(false);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax, "1m") at `dir`, or says
    /// why it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let c = |s: &[u8]| CString::new(s).unwrap();
        let (target, fstype) = (c(dir.as_os_str().as_bytes()), c(b"tmpfs"));
        let data = c(format!("size={size},mode=0700").as_bytes());
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!(
                "cannot mount a tmpfs at {} ({}); mounting needs root",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; MNT_DETACH so that a file still
        // open (a launcher killed by a failing test) cannot keep it.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn enospc_is_ioerr_for_that_write_and_the_guest_goes_on() {
    let dir = TempDir::new("blk-nospace");
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let tmpfs = match Tmpfs::mount(&mnt, "1m") {
        Ok(t) => t,
        Err(why) => return common::skip(why),
    };
    // 8 MiB of sparse image on a 1 MiB file system.
    let disk = mnt.join("disk.img");
    fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let arg = disk.display().to_string();
    let r = common::strict::run_in(MEM_MB, &["--block", &arg], "virtio-blk-nospace");
    drop(tmpfs);
    assert_clean(r.code, &r.output);
    let line = r
        .output
        .lines()
        .find(|l| l.starts_with("GUEST-BLK-NOSPACE "))
        .unwrap_or_else(|| panic!("no GUEST-BLK-NOSPACE line:\n{}", r.output));
    let full_at = number_after(line, "sector=");
    // 1 MiB is 2048 sectors; the file system may keep some for itself.
    assert!(
        (1024..=2048).contains(&full_at),
        "the writes failed at sector {full_at}:\n{}",
        r.output
    );
    assert_eq!(number_after(line, "status="), 1, "IOERR:\n{}", r.output);
    assert_eq!(
        number_after(&r.output, "GUEST-BLK-STATUS second-write="),
        1,
        "{}",
        r.output
    );
    assert!(
        r.output.contains("GUEST-BLK-AFTER-NOSPACE read ok"),
        "{}",
        r.output
    );
    let said: Vec<_> = r
        .stderr
        .lines()
        .filter(|l| l.contains("write failed") && l.contains("gets IOERR"))
        .collect();
    assert_eq!(said.len(), 1, "said once, then counted:\n{}", r.stderr);
    assert!(said[0].contains("No space left on device"), "{}", said[0]);
}
