//! `--verbose`, `--trace` and `--trace-file` on test-guest scenarios
//! (devices::trace, docs/tracing.md):
//!
//! - `-v` tells each device's life with named status and feature bits and
//!   no requests; `-vv` adds decoded blk requests and notifications;
//!   `-vvv` adds register accesses.
//! - `--trace virtio-blk` keeps the other devices at `-v`.
//! - two runs of one scenario with `--trace-file` give identical files,
//!   which leave out guest addresses.
//! - a reboot appends the next boot's events under its number.
//! - a bad-driver report shows the device's last events.
//!
//! Decoded net frames and vmmci commands are asserted in tests/virtio_net.rs
//! and tests/vmmci.rs, where those devices run.

mod common;

use common::{test_guest, trace_events, Guest, TempDir, TIMEOUT};

/// A scratch disk for virtio-blk scenarios.
fn disk(dir: &TempDir) -> String {
    let p = dir.sparse("disk.img", 1 << 20);
    p.to_str().expect("UTF-8 path").to_string()
}

/// Runs `scenario` with `flags`, a disk and an rng; returns stderr.
fn run(flags: &[&str], scenario: &str, dir: &TempDir) -> String {
    let elf = test_guest::path();
    let disk = disk(dir);
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([
        "--block",
        &disk,
        "--rng",
        "16",
        elf.to_str().unwrap(),
        scenario,
    ]);
    let mut g = Guest::start(&args);
    let status = g.wait_exit(TIMEOUT);
    common::assert_clean(status.code(), &g.output());
    g.stderr()
}

fn has(stderr: &str, needle: &str) -> bool {
    stderr.lines().any(|l| l.contains(needle))
}

#[test]
fn each_level_adds_its_detail() {
    let dir = TempDir::new("trace-levels");
    let life = [
        "virtio-blk 00:02.0: status ACKNOWLEDGE|DRIVER -> ACKNOWLEDGE|DRIVER|FEATURES_OK",
        "virtio-blk 00:02.0: features offered: BLK_F_SIZE_MAX|BLK_F_SEG_MAX|BLK_F_BLK_SIZE|BLK_F_FLUSH|BLK_F_CONFIG_WCE|BLK_F_DISCARD|BLK_F_WRITE_ZEROES|INDIRECT_DESC|EVENT_IDX|VERSION_1",
        "virtio-blk 00:02.0: features negotiated: BLK_F_FLUSH|BLK_F_DISCARD|BLK_F_WRITE_ZEROES|VERSION_1",
        "virtio-blk 00:02.0: queue 0 enabled: size 128",
        "virtio-blk 00:02.0: DRIVER_OK, 1 queue workers running",
    ];
    let request = [
        "virtio-blk 00:02.0: OUT sector 0, 4096 bytes → OK",
        "virtio-blk 00:02.0: FLUSH sector 0, 0 bytes → OK",
        "virtio-blk 00:02.0: IN sector 2047, 512 bytes → OK",
        "virtio-blk 00:02.0: queue 0 notified",
    ];
    let access = [
        "virtio-blk 00:02.0: write device_status = 0x1",
        "virtio-blk 00:02.0: read device_feature = 0x",
    ];
    for (flag, shown) in [("-v", 1), ("-vv", 2), ("-vvv", 3)] {
        let stderr = run(&[flag], "scenario=virtio-blk-io", &dir);
        for (level, lines) in [(1, &life[..]), (2, &request[..]), (3, &access[..])] {
            for l in lines {
                assert_eq!(
                    has(&stderr, l),
                    level <= shown,
                    "{flag}: {l:?} {} expected; stderr:\n{stderr}",
                    if level <= shown { "was" } else { "was not" }
                );
            }
        }
    }
}

#[test]
fn trace_limits_the_detail_to_the_devices_named() {
    let dir = TempDir::new("trace-filter");
    // Every device's PCI configuration is read while the guest enumerates
    // the bus: at -vvv the console shows it, unless only others are named.
    let console_access = "virtio-console 00:01.0: pci-config-read";
    let stderr = run(&["-vvv"], "scenario=virtio-blk-io", &dir);
    assert!(has(&stderr, console_access), "{stderr}");
    for only in ["virtio-blk", "vda", "00:02.0"] {
        let stderr = run(&["-vvv", "--trace", only], "scenario=virtio-blk-io", &dir);
        assert!(
            has(&stderr, "virtio-blk 00:02.0: write device_status = 0x1"),
            "--trace {only}: blk accesses shown; stderr:\n{stderr}"
        );
        assert!(
            !has(&stderr, console_access),
            "--trace {only}: the console stays at -v"
        );
    }
    // A device not named keeps its life (-v) but not its requests.
    let stderr = run(
        &["-vv", "--trace", "virtio-blk"],
        "scenario=virtio-rng",
        &dir,
    );
    assert!(has(&stderr, "virtio-rng 00:03.0: DRIVER_OK"), "{stderr}");
    assert!(!has(&stderr, " bytes of entropy"), "{stderr}");
    let stderr = run(
        &["-vv", "--trace", "virtio-rng"],
        "scenario=virtio-rng",
        &dir,
    );
    assert!(has(&stderr, "virtio-rng 00:03.0: "), "{stderr}");
    assert!(has(&stderr, " bytes of entropy"), "{stderr}");
}

#[test]
fn two_runs_of_one_scenario_give_the_same_trace_file() {
    let dir = TempDir::new("trace-file");
    let (a, b) = (dir.path("a.jsonl"), dir.path("b.jsonl"));
    for f in [&a, &b] {
        run(
            &["--trace-file", f.to_str().unwrap()],
            "scenario=virtio-blk-io",
            &dir,
        );
    }
    let (ta, tb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(!ta.is_empty());
    assert_eq!(ta, tb, "the two trace files differ");
    let events = trace_events(&a);
    let blk: Vec<_> = events
        .iter()
        .filter(|e| e.device == "virtio-blk 00:02.0")
        .collect();
    let find = |kind: &str| blk.iter().find(|e| e.kind == kind).copied();
    let negotiated = find("features-negotiated").expect("a features-negotiated event");
    assert_eq!(
        negotiated.fields["features"],
        "BLK_F_FLUSH|BLK_F_DISCARD|BLK_F_WRITE_ZEROES|VERSION_1"
    );
    let queue = find("queue").expect("a queue event");
    assert_eq!(queue.fields["size"], 128);
    assert!(
        queue.fields.get("desc").is_none(),
        "guest addresses are left out: {:?}",
        queue.fields
    );
    let req = find("request").expect("a request event");
    assert_eq!(req.fields["op"], "OUT");
    assert!(
        !events
            .iter()
            .any(|e| e.kind == "notify" || e.kind == "interrupt"),
        "timing-dependent events are left out"
    );
    // Each device's events together: once a device's run ends, it does not
    // come back.
    let mut seen: Vec<&str> = Vec::new();
    for e in &events {
        if seen.last() != Some(&e.device.as_str()) {
            assert!(!seen.contains(&e.device.as_str()), "{} split", e.device);
            seen.push(&e.device);
        }
    }

    // --trace-everything keeps addresses and times.
    let c = dir.path("c.jsonl");
    run(
        &["--trace-file", c.to_str().unwrap(), "--trace-everything"],
        "scenario=virtio-blk-io",
        &dir,
    );
    let text = std::fs::read_to_string(&c).unwrap();
    assert!(text.contains("\"time_ns\":"), "no times");
    assert!(text.contains("\"desc\":"), "no ring addresses");
}

#[test]
fn a_reboot_appends_the_next_boot_to_the_trace_file() {
    let dir = TempDir::new("trace-reboot");
    let f = dir.path("t.jsonl");
    let elf = test_guest::path();
    let mut g = Guest::start(&[
        "--rng",
        "--trace-file",
        f.to_str().unwrap(),
        "16",
        elf.to_str().unwrap(),
        "scenario=devices-up",
    ]);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    // No vmmci driver: SIGHUP reboots at once.
    g.signal(libc::SIGHUP);
    g.wait_for("starting boot #2", TIMEOUT);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(143), "{}", g.output());
    let events = trace_events(&f);
    let setup = |boot: u64| -> Vec<(String, String, String)> {
        events
            .iter()
            .filter(|e| e.boot == boot && common::SETUP_KINDS.contains(&e.kind.as_str()))
            .map(|e| (e.device.clone(), e.kind.clone(), e.fields.to_string()))
            .collect()
    };
    assert!(!setup(1).is_empty(), "boot 1 traced");
    assert_eq!(setup(1), setup(2), "both boots set the devices up alike");
}

#[test]
fn a_bad_driver_report_shows_the_devices_last_events() {
    let elf = test_guest::path();
    let dir = TempDir::new("trace-report");
    let disk = disk(&dir);
    let mut g = Guest::start(&[
        "--block",
        &disk,
        "16",
        elf.to_str().unwrap(),
        "scenario=bad-blk-no-status-byte",
    ]);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(3), "{}", g.output());
    let stderr = g.stderr();
    let at = stderr
        .find("the device's last events before it")
        .unwrap_or_else(|| panic!("no recent events in the report:\n{stderr}"));
    let after = &stderr[at..];
    assert!(
        after.contains("features negotiated: BLK_F_FLUSH"),
        "{after}"
    );
    assert!(
        after.contains("DRIVER_OK, 1 queue workers running"),
        "{after}"
    );
}
