//! virtio-blk (`--block FILE[,ro][,serial=ID]`, 1af4:1042) driven by the
//! test guest's polled ring-3 driver (guest-images/test-guest/src/
//! blk_scenarios.rs), checked from both sides: the statuses the guest
//! prints, and the backing file afterwards.
//!
//! - `virtio-blk-io` on a 4 MiB sparse file with marker bytes in some
//!   sectors: the guest's patterns land at sectors 0..8 and the last sector,
//!   the discarded (16..24) and zeroed (32..40) ranges read back as zeros,
//!   and every other byte of the file is what it was.
//! - `virtio-blk-errors` on a writable and on a read-only disk: the
//!   errors a correct driver meets, reported to nobody: IOERR (1) for
//!   writes to a read-only disk, UNSUPP (2) for an unknown type, RO
//!   offered only with `,ro`; the file never changes.
//! - `virtio-blk-legacy` behind `--legacy`: the legacy framing (header,
//!   data, status byte in descriptors of their own) is served and reported
//!   to nobody; its write lands in the file.
//! - `bad-blk-writable-header`: strict mode stops the launcher with exit
//!   code 3 and one report naming virtio-blk and `BlkHeaderNotReadable`
//!   (every `bad-*` scenario stops or warns in tests/virtio_strict.rs).
//! - The request rules of §5.2.6.1 under `--lenient` (reading beyond the
//!   capacity, part of a sector, a flush naming a sector, a short GET_ID,
//!   too many discard segments, a discard with unmap) and §5.2.6.4 (legacy
//!   framing): each request is answered with the status it always got
//!   (IOERR, UNSUPP, or carried out), the rule is reported as a bad driver
//!   and the device needs a reset.
//!
//! Each run takes a fraction of a second; every launcher runs with a 60 s
//! timeout.

mod common;

use common::strict::{guest_status, run_in, Run, NEEDS_RESET};

use common::TempDir;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MEM_MB: &str = "32";

/// Boots the test guest with `flags` and `scenario=NAME` in [`MEM_MB`].
fn run(flags: &[&str], scenario: &str) -> Run {
    run_in(MEM_MB, flags, scenario)
}
const SECTOR: usize = 512;
const DISK_BYTES: usize = 4 << 20;
const SECTORS: usize = DISK_BYTES / SECTOR;

/// What the guest writes at byte `i` of sector `sector`
/// (blk_scenarios::pattern).
fn pattern(sector: usize, i: usize) -> u8 {
    ((sector as u8).wrapping_mul(37) ^ 0x5c).wrapping_add((i as u8).wrapping_mul(3))
}

/// Sectors `first..first + count` of `bytes`.
fn sectors(bytes: &mut [u8], first: usize, count: usize) -> &mut [u8] {
    &mut bytes[first * SECTOR..(first + count) * SECTOR]
}

/// Marker bytes the test puts in the file before the guest runs: around
/// and inside the ranges the guest touches.
const MARKERS: &[(usize, usize, u8)] = &[
    (8, 8, 0xdd),           // just after the written range
    (16, 8, 0xee),          // discarded by the guest
    (32, 8, 0xab),          // zeroed by the guest
    (40, 1, 0x11),          // just after the zeroed range
    (SECTORS - 2, 1, 0xcc), // just before the last sector
    (SECTORS / 2, 3, 0x42), // somewhere in the middle
];

/// A sparse 4 MiB file with the [`MARKERS`] written; returns its contents.
fn make_disk(path: &Path) -> Vec<u8> {
    let f = fs::File::create(path).unwrap();
    f.set_len(DISK_BYTES as u64).unwrap();
    let mut image = vec![0u8; DISK_BYTES];
    for &(first, count, byte) in MARKERS {
        let s = sectors(&mut image, first, count);
        s.fill(byte);
        f.write_all_at(s, (first * SECTOR) as u64).unwrap();
    }
    image
}

/// FNV-1a, enough to say "the file did not change".
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Whether this filesystem punches holes (discard is only a hint: the
/// device ignores it where it cannot).
fn can_punch_holes(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let p = dir.join("punch-probe");
    let f = fs::File::create(&p).unwrap();
    f.write_all_at(&[1u8; 8192], 0).unwrap();
    // SAFETY: a valid descriptor and range.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    let _ = fs::remove_file(&p);
    r == 0
}

/// The first offset where two images differ, for messages.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn assert_clean(r: &Run) {
    common::assert_clean(r.code, &r.output);
}

/// The value of `GUEST-BLK-STATUS <what>=<n>`.
fn status(output: &str, what: &str) -> Option<u8> {
    let prefix = format!("GUEST-BLK-STATUS {what}=");
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{output}"))
}

#[test]
fn io_scenario_lands_on_the_backing_file() {
    let dir = TempDir::new("blk-io");
    let disk = dir.path("disk.img");
    let mut expected = make_disk(&disk);
    let arg = format!("{},serial=launcher-blk-1", disk.display());
    let r = run(&["--block", &arg], "virtio-blk-io");
    assert_clean(&r);
    assert_eq!(
        line(&r.output, "GUEST-BLK-ID "),
        "GUEST-BLK-ID launcher-blk-1"
    );
    assert_eq!(
        line(&r.output, "GUEST-BLK-OK "),
        format!("GUEST-BLK-OK capacity={SECTORS}")
    );
    for done in [
        "GUEST-BLK-FLUSH ok",
        "GUEST-BLK-READBACK ok",
        "GUEST-BLK-DISCARD ok",
        "GUEST-BLK-WRITE-ZEROES ok",
    ] {
        assert!(r.output.contains(done), "no {done:?}:\n{}", r.output);
    }

    let got = fs::read(&disk).unwrap();
    assert_eq!(got.len(), DISK_BYTES, "the file changed size");
    for s in (0..8).chain([SECTORS - 1]) {
        for (i, b) in sectors(&mut expected, s, 1).iter_mut().enumerate() {
            *b = pattern(s, i);
        }
    }
    sectors(&mut expected, 32, 8).fill(0);
    // Discard is a hint: punched to zeros where the file system can, left
    // exactly as it was where it cannot (the device ignores it then).
    if can_punch_holes(&dir.0) {
        sectors(&mut expected, 16, 8).fill(0);
    } else {
        eprintln!("this filesystem cannot punch holes: the discarded range must be unchanged");
    }
    if let Some(at) = first_difference(&got, &expected) {
        panic!(
            "backing file differs at byte {at} (sector {}, offset {}): {:#04x}, expected {:#04x}\n{}",
            at / SECTOR,
            at % SECTOR,
            got[at],
            expected[at],
            r.output
        );
    }
}

#[test]
fn first_of_two_disks_is_used_and_get_id_defaults_to_the_file_name() {
    let dir = TempDir::new("blk-two");
    let first = dir.path("first-disk.img");
    let second = dir.path("second.img");
    make_disk(&first);
    let before = make_disk(&second);
    let (a, b) = (first.display().to_string(), second.display().to_string());
    let r = run(&["--block", &a, "--block", &b], "virtio-blk-io");
    assert_clean(&r);
    assert_eq!(
        line(&r.output, "GUEST-BLK-ID "),
        "GUEST-BLK-ID first-disk.img"
    );
    // PCI order: the console, then each --block in order.
    assert!(
        r.output.contains("GUEST-PCI 00:02.0 1af4:1042"),
        "{}",
        r.output
    );
    assert!(
        r.output.contains("GUEST-PCI 00:03.0 1af4:1042"),
        "{}",
        r.output
    );
    let img = fs::read(&first).unwrap();
    assert_eq!(
        img[..SECTOR],
        (0..SECTOR).map(|i| pattern(0, i)).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        hash(&fs::read(&second).unwrap()),
        hash(&before),
        "second disk changed"
    );
}

#[test]
fn errors_on_a_writable_disk_are_statuses() {
    let dir = TempDir::new("blk-err");
    let disk = dir.path("disk.img");
    let before = make_disk(&disk);
    let r = run(&["--block", disk.to_str().unwrap()], "virtio-blk-errors");
    assert_clean(&r);
    assert!(r.output.contains("GUEST-BLK-RO offered=0"), "{}", r.output);
    for (what, want) in [("read", 0), ("unknown-type", 2)] {
        assert_eq!(status(&r.output, what), Some(want), "{what}:\n{}", r.output);
    }
    assert_eq!(
        hash(&fs::read(&disk).unwrap()),
        hash(&before),
        "the failed requests changed the file"
    );
}

#[test]
fn read_only_disk_refuses_writes_and_stays_unchanged() {
    let dir = TempDir::new("blk-ro");
    let disk = dir.path("disk.img");
    let mut before = make_disk(&disk);
    // Something recognisable in sector 0, which the guest reads and prints.
    let head: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(17)).collect();
    fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&head, 0)
        .unwrap();
    before[..16].copy_from_slice(&head);
    let h = hash(&before);
    assert_eq!(hash(&fs::read(&disk).unwrap()), h);
    let arg = format!("{},ro", disk.display());
    let r = run(&["--block", &arg], "virtio-blk-errors");
    assert_clean(&r);
    assert!(
        r.output.contains("GUEST-BLK-RO offered=1"),
        "VIRTIO_BLK_F_RO not offered:\n{}",
        r.output
    );
    let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        line(&r.output, "GUEST-BLK-SECTOR0 "),
        format!("GUEST-BLK-SECTOR0 {hex}")
    );
    for (what, want) in [
        ("read", 0),
        ("unknown-type", 2),
        ("ro-write", 1),
        ("ro-discard", 1),
        ("ro-write-zeroes", 1),
    ] {
        assert_eq!(status(&r.output, what), Some(want), "{what}:\n{}", r.output);
    }
    assert_eq!(hash(&fs::read(&disk).unwrap()), h, "read-only disk changed");
}

#[test]
fn header_in_a_writable_buffer_is_a_strict_violation() {
    let dir = TempDir::new("blk-bad");
    let disk = dir.path("disk.img");
    let before = make_disk(&disk);
    let r = run(
        &["--block", disk.to_str().unwrap()],
        "bad-blk-writable-header",
    );
    assert_eq!(r.code, Some(3), "exit code; output:\n{}", r.output);
    let reports: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("bad driver"))
        .collect();
    assert_eq!(reports.len(), 1, "bad-driver lines:\n{}", r.output);
    let report = reports[0];
    assert!(
        report.starts_with("launcher: bad driver: virtio-blk 00:02.0")
            && report.contains(&format!(
                ": {}: ",
                common::rule_label("BlkHeaderNotReadable")
            ))
            && report.contains("header must be device-readable"),
        "report: {report:?}"
    );
    assert!(!r.output.contains("GUEST-FAIL"), "{}", r.output);
    assert_eq!(hash(&fs::read(&disk).unwrap()), hash(&before));
}

#[test]
fn lenient_writable_header_sets_device_needs_reset() {
    let dir = TempDir::new("blk-lenient");
    let disk = dir.path("disk.img");
    make_disk(&disk);
    let r = run(
        &["--lenient", "--block", disk.to_str().unwrap()],
        "bad-blk-writable-header",
    );
    assert_eq!(r.code, Some(0), "exit code; output:\n{}", r.output);
    assert!(r.output.contains("GUEST-AFTER-BAD"), "{}", r.output);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("bad driver: virtio-blk") && l.contains("BlkHeaderNotReadable")),
        "no warning:\n{}",
        r.output
    );
    let v = guest_status(&r.output).unwrap_or_else(|| panic!("no GUEST-STATUS:\n{}", r.output));
    assert_ne!(
        v & NEEDS_RESET,
        0,
        "DEVICE_NEEDS_RESET not set: {v:#x}\n{}",
        r.output
    );
}

#[test]
fn legacy_driver_framing_is_served_and_reports_nothing() {
    let dir = TempDir::new("blk-legacy");
    let disk = dir.path("disk.img");
    let mut expected = make_disk(&disk);
    let r = run(
        &["--legacy", "--block", disk.to_str().unwrap()],
        "virtio-blk-legacy",
    );
    assert_clean(&r);
    assert!(
        r.output.contains("GUEST-PCI 00:02.0 1af4:1001"),
        "{}",
        r.output
    );
    assert_eq!(
        line(&r.output, "GUEST-BLK-LEGACY-OK "),
        format!("GUEST-BLK-LEGACY-OK capacity={SECTORS}")
    );
    for (i, b) in sectors(&mut expected, 1, 1).iter_mut().enumerate() {
        *b = pattern(1, i);
    }
    assert_eq!(hash(&fs::read(&disk).unwrap()), hash(&expected));
}

/// (scenario, flags, rule, `GUEST-BLK-STATUS` key, the status the device
/// answers with): one request each that breaks a driver MUST the device
/// can still answer.
const ANSWERED: &[(&str, &[&str], &str, &str, u8)] = &[
    (
        "bad-blk-beyond-capacity",
        &[],
        "BlkBeyondCapacity",
        "read-beyond-capacity",
        1,
    ),
    (
        "bad-blk-data-not-sector-multiple",
        &[],
        "BlkDataNotSectorMultiple",
        "read-100-bytes",
        1,
    ),
    (
        "bad-blk-flush-sector-not-zero",
        &[],
        "BlkFlushSectorNotZero",
        "flush-sector-1",
        0,
    ),
    (
        "bad-blk-get-id-length",
        &[],
        "BlkGetIdLength",
        "get-id-16-bytes",
        0,
    ),
    (
        "bad-blk-discard-segments",
        &[],
        "BlkDiscardSegments",
        "discard-two-segments",
        1,
    ),
    (
        "bad-blk-discard-unmap",
        &[],
        "BlkDiscardUnmap",
        "discard-unmap",
        2,
    ),
    (
        "bad-blk-legacy-header-layout",
        &["--legacy"],
        "BlkLegacyHeaderLayout",
        "legacy-write",
        0,
    ),
];

#[test]
fn lenient_request_rules_are_answered_and_reported() {
    let dir = TempDir::new("blk-answered");
    let disk = dir.path("disk.img");
    let mut failures = Vec::new();
    for &(scenario, flags, rule, what, want) in ANSWERED {
        let mut before = make_disk(&disk);
        let mut args = vec!["--lenient", "--block", disk.to_str().unwrap()];
        args.extend_from_slice(flags);
        let r = run(&args, scenario);
        let label = format!(": {}: ", common::rule_label(rule));
        let reported = r
            .stderr
            .lines()
            .any(|l| l.contains("bad driver: virtio-blk") && l.contains(&label));
        let needs_reset = guest_status(&r.output).is_some_and(|s| s & NEEDS_RESET != 0);
        // Only the legacy write is carried out (sector 1, from the
        // guest's pattern).
        if rule == "BlkLegacyHeaderLayout" {
            for (i, b) in sectors(&mut before, 1, 1).iter_mut().enumerate() {
                *b = pattern(1, i);
            }
        }
        let unchanged = hash(&fs::read(&disk).unwrap()) == hash(&before);
        let wrong = [
            (r.code != Some(0), "exit code not 0"),
            (status(&r.output, what) != Some(want), "wrong status"),
            (!reported, "not reported"),
            (!needs_reset, "no DEVICE_NEEDS_RESET"),
            (!unchanged, "the file is not as expected"),
            (r.output.contains("GUEST-FAIL"), "the guest failed"),
        ];
        for (_, why) in wrong.iter().filter(|(w, _)| *w) {
            failures.push(format!(
                "{scenario} ({rule}, {what}={want}): {why}\n{}",
                r.output
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
