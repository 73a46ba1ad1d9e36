//! The strict virtio checks, seen from a guest driver: the test guest's
//! polled ring-3 drivers (guest-images/test-guest/src/virtio.rs,
//! blk_scenarios.rs, legacy_scenarios.rs) against `launcher --rng`,
//! `--block FILE` and `--legacy --rng`.
//!
//! - `virtio-rng`: a well-behaved modern driver (capabilities, VERSION_1
//!   only, one split queue) reads 32 random bytes twice; nothing is reported.
//!   `virtio-rng-legacy` does the same through the legacy transport.
//! - `bad-<rule>`: one scenario per rule, in the tables of
//!   `tests/common/strict.rs`. A broken MUST must stop the launcher with
//!   exit code 3 and one stderr line naming the device, its PCI address,
//!   the rule and its section; with `--lenient` the guest runs on and sees
//!   DEVICE_NEEDS_RESET. Anything less is one warning line and the guest
//!   runs on, unless `--warnings-as-errors`.
//! - `virtio-rng-bar-move`, `virtio-rng-legacy-bar-move`: a well-behaved
//!   driver moves the live function's BAR as an OS re-enumerating the bus
//!   does; the device must follow (old address silent, notifications at
//!   the old address served by nobody, decoding by the command register,
//!   the MSI-X table along) and go on serving random bytes.
//! - `FeaturesOkRefused` (§3.1.1) follows a refused FEATURES_OK, whose
//!   cause (`FeatureNotOffered`) already stops a strict launcher, so it is
//!   checked with `--lenient` only (`bad-features-ok-refused`).
//!
//! A boot of the test guest takes about 0.1 s; every launcher runs with a
//! 60 s timeout.

mod common;

use common::strict::{self, *};
use common::TempDir;
use std::time::Instant;

/// Violations the transport finds while the guest's register access is in
/// flight; `--lenient` must set DEVICE_NEEDS_RESET for them.
const LENIENT_TRANSPORT: &[(&str, &str)] = &[
    ("bad-read-only-write", "ReadOnlyWrite"),
    ("bad-status-order", "StatusOrder"),
    ("bad-queue-size-invalid", "QueueSizeInvalid"),
    ("bad-access-width", "AccessWidth"),
    ("bad-queue-address-alignment", "QueueAddressAlignment"),
    ("bad-notify-before-driver-ok", "NotifyBeforeDriverOk"),
];

/// Violations a queue's worker thread finds after the notification.
const LENIENT_QUEUE: &[(&str, &str)] = &[
    ("bad-wrong-direction", "RngBufferReadable"),
    ("bad-descriptor-loop", "DescriptorLoop"),
];

/// Boots the test guest with `--rng`, `flags` and `scenario=NAME`.
fn run(flags: &[&str], scenario: &str) -> Run {
    let mut all = vec!["--rng"];
    all.extend_from_slice(flags);
    strict::run(&all, scenario)
}

/// "00:SS.0" of the rng function, from the guest's `GUEST-PCI` listing.
fn rng_address(output: &str) -> Option<String> {
    address_of(output, RNG_IDS)
}

/// The 64 hex digits of `GUEST-RNG ... key=<hex>`.
fn random_value<'a>(line: &'a str, key: &str) -> &'a str {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    assert!(
        v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key} is not 32 bytes of hex: {line:?}"
    );
    v
}

#[test]
fn well_behaved_driver_reads_random_bytes() {
    let r = run(&[], "virtio-rng");
    assert_eq!(r.code, Some(0), "exit code; output:\n{}", r.output);
    assert!(
        !r.stderr.contains("bad driver"),
        "a well-behaved driver was reported:\n{}",
        r.output
    );
    for bad in ["GUEST-FAIL", "GUEST-PANIC"] {
        assert!(!r.output.contains(bad), "{bad}; output:\n{}", r.output);
    }
    assert!(
        rng_address(&r.output).is_some(),
        "GUEST-PCI does not list {RNG_IDS}:\n{}",
        r.output
    );
    assert!(
        r.output.contains("GUEST-PCI 00:00.0 8086:1237"),
        "host bridge missing:\n{}",
        r.output
    );
    let line = r
        .output
        .lines()
        .find(|l| l.starts_with("GUEST-RNG "))
        .unwrap_or_else(|| panic!("no GUEST-RNG line:\n{}", r.output));
    let (a, b) = (random_value(line, "a="), random_value(line, "b="));
    assert_ne!(a, b, "two reads returned the same bytes");
    assert!(
        r.output.contains("GUEST-PCI-CFG num_queues=1"),
        "PCI-cfg window read:\n{}",
        r.output
    );
    assert_eq!(
        guest_status(&r.output),
        Some(0x0f),
        "status after a clean run:\n{}",
        r.output
    );
    assert!(r.output.contains("GUEST-TEST-END"), "{}", r.output);
    eprintln!("virtio-rng: {:?}", r.elapsed);
}

#[test]
fn every_stop_scenario_stops_the_launcher_naming_its_rule() {
    run_stop_table(&["--rng"], "virtio-rng", RNG_IDS, STOP_RNG);
    run_stop_table(
        &["--rng", "--legacy"],
        "virtio-rng",
        RNG_LEGACY_IDS,
        STOP_RNG_LEGACY,
    );
}

#[test]
fn every_warning_scenario_warns_once_and_stops_with_warnings_as_errors() {
    run_warning_table(&["--rng"], "virtio-rng", RNG_IDS, WARN_RNG);
    run_warning_table(
        &["--rng", "--legacy"],
        "virtio-rng",
        RNG_LEGACY_IDS,
        WARN_RNG_LEGACY,
    );
}

/// A 1 MiB sparse disk image for the virtio-blk scenarios.
fn small_disk(dir: &TempDir) -> String {
    let path = dir.sparse("disk.img", 1 << 20);
    path.to_str().unwrap().to_string()
}

/// The warning scenarios run on a `,ro` disk: `BlkRoNotAccepted` needs
/// one, and none of them writes.
#[test]
fn every_blk_scenario_stops_or_warns_naming_its_rule() {
    let dir = TempDir::new("strict-blk");
    let disk = small_disk(&dir);
    let modern = ["--block", disk.as_str()];
    run_stop_table(&modern, "virtio-blk", BLK_IDS, STOP_BLK);
    let ro = format!("{disk},ro");
    let read_only = ["--block", ro.as_str()];
    run_warning_table(&read_only, "virtio-blk", BLK_IDS, WARN_BLK);
    let legacy = ["--legacy", "--block", disk.as_str()];
    run_stop_table(&legacy, "virtio-blk", BLK_LEGACY_IDS, STOP_BLK_LEGACY);
}

#[test]
fn every_console_scenario_stops_naming_its_rule() {
    run_stop_table(&[], "virtio-console", CONSOLE_IDS, STOP_CONSOLE);
}

/// Every rule of the table has a scenario in one of the tables, is
/// checked by a named test, or is listed as not covered with a reason;
/// exactly one of the three.
#[test]
fn every_rule_has_a_scenario() {
    let mut covered: Vec<&str> = ALL_TABLES
        .iter()
        .flat_map(|t| t.iter().map(|&(_, rule)| rule))
        .collect();
    covered.sort_unstable();
    covered.dedup();
    let elsewhere: Vec<&str> = ELSEWHERE.iter().map(|&(r, _)| r).collect();
    // A rule checked "elsewhere" names its test, which must exist: deleting
    // the test cannot leave the rule counted as covered.
    for &(rule, test) in ELSEWHERE {
        let (file, name) = test.split_once("::").expect("ELSEWHERE names file::test");
        let path = format!("{}/tests/{file}.rs", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            source.contains(&format!("#[test]\nfn {name}(")),
            "{rule} is said to be checked by {test}, which {path} does not have"
        );
    }
    let missing: Vec<&str> = NOT_COVERED
        .iter()
        .flat_map(|l| l.iter().map(|&(r, _)| r))
        .collect();
    let all = devices::virtio::rules::Rule::ALL;
    let mut wrong = Vec::new();
    for r in all {
        let name = format!("{r:?}");
        let n = [&covered, &elsewhere, &missing]
            .iter()
            .filter(|l| l.contains(&name.as_str()))
            .count();
        if n != 1 {
            wrong.push(format!(
                "{name}: in {n} of (tables, ELSEWHERE, NOT_COVERED)"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    eprintln!(
        "{} of {} rules covered by a guest scenario, {} elsewhere, {} not",
        covered.len(),
        all.len(),
        elsewhere.len(),
        missing.len()
    );
}

#[test]
fn well_behaved_legacy_driver_reads_random_bytes() {
    let r = run(&["--legacy"], "virtio-rng-legacy");
    assert_eq!(r.code, Some(0), "exit code; output:\n{}", r.output);
    assert!(
        !r.stderr.contains("bad driver"),
        "a well-behaved driver was reported:\n{}",
        r.output
    );
    for bad in ["GUEST-FAIL", "GUEST-PANIC"] {
        assert!(!r.output.contains(bad), "{bad}; output:\n{}", r.output);
    }
    assert!(
        address_of(&r.output, RNG_LEGACY_IDS).is_some(),
        "GUEST-PCI does not list {RNG_LEGACY_IDS}:\n{}",
        r.output
    );
    let line = r
        .output
        .lines()
        .find(|l| l.starts_with("GUEST-RNG-LEGACY "))
        .unwrap_or_else(|| panic!("no GUEST-RNG-LEGACY line:\n{}", r.output));
    let (a, b) = (random_value(line, "a="), random_value(line, "b="));
    assert_ne!(a, b, "two reads returned the same bytes");
    assert_eq!(
        guest_status(&r.output),
        Some(0x07),
        "status after a clean run:\n{}",
        r.output
    );
    assert!(r.output.contains("GUEST-TEST-END"), "{}", r.output);
}

#[test]
fn lenient_driver_going_on_after_a_refused_features_ok_is_reported() {
    let r = run(&["--lenient"], "bad-features-ok-refused");
    check_lenient("FeatureNotOffered", &r).unwrap_or_else(|e| panic!("{e}\n{}", r.output));
    assert!(
        r.output.contains("GUEST-FEATURES-OK-REFUSED status=0x43"),
        "the device did not refuse FEATURES_OK (0x43: DEVICE_NEEDS_RESET, no FEATURES_OK):\n{}",
        r.output
    );
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("bad driver: virtio-rng"))
        .collect();
    assert!(
        warnings[0].contains(&format!(": {}: ", common::rule_label("FeatureNotOffered")))
            && warnings[1..]
                .iter()
                .any(|l| l.contains(&format!(": {}: ", common::rule_label("FeaturesOkRefused")))),
        "warnings: {warnings:#?}"
    );
}

/// Checks one `--lenient` run: the guest ran on, saw DEVICE_NEEDS_RESET,
/// powered off (exit 0), and the violation was logged.
fn check_lenient(rule: &str, r: &Run) -> Result<(), String> {
    if r.code != Some(0) {
        return Err(format!("exit code {:?}, wanted 0", r.code));
    }
    if !r.output.contains("GUEST-AFTER-BAD") {
        return Err("the guest did not run on after misbehaving".into());
    }
    // The first report is this rule's, in full: device, address, rule
    // with its citation, and what --lenient did about it.
    let addr = address_of(&r.output, RNG_IDS).ok_or("GUEST-PCI does not list the rng")?;
    let first = r.stderr.lines().find(|l| l.contains("bad driver:"));
    let head = format!("launcher: bad driver: virtio-rng {addr}");
    let named = format!(": {}: ", common::rule_label(rule));
    match first {
        Some(l)
            if l.starts_with(&head)
                && l.contains(&named)
                && l.ends_with("(--lenient: device needs reset)") => {}
        other => {
            return Err(format!(
                "first report {other:?}, wanted one starting {head:?} with {named:?}"
            ))
        }
    }
    match guest_status(&r.output) {
        Some(s) if s & NEEDS_RESET != 0 => Ok(()),
        s => Err(format!(
            "GUEST-STATUS {s:x?} lacks DEVICE_NEEDS_RESET ({NEEDS_RESET:#x})"
        )),
    }
}

fn run_lenient(table: &[(&str, &str)]) {
    let t = Instant::now();
    let mut failures = Vec::new();
    for &(scenario, rule) in table {
        let r = run(&["--lenient"], scenario);
        if let Err(e) = check_lenient(rule, &r) {
            failures.push(format!("{scenario} ({rule}): {e}\n{}", r.output));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} lenient runs failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    eprintln!("{} lenient runs: {:?}", table.len(), t.elapsed());
}

#[test]
fn lenient_guest_runs_on_with_device_needs_reset() {
    run_lenient(LENIENT_TRANSPORT);
}

#[test]
fn lenient_queue_violation_sets_device_needs_reset() {
    run_lenient(LENIENT_QUEUE);
}

#[test]
fn lenient_device_refuses_features_ok_for_features_it_does_not_offer() {
    let r = run(&["--lenient"], "bad-feature-not-offered");
    check_lenient("FeatureNotOffered", &r).unwrap_or_else(|e| panic!("{e}\n{}", r.output));
    let s = guest_status(&r.output).unwrap();
    assert_eq!(
        s & 0x08,
        0,
        "§2.2.2: the device must fail to set FEATURES_OK for an unsupported feature set; status {s:#04x}\n{}",
        r.output
    );
}

/// The `GUEST-<key> ...` line of a run, or a panic with the output.
fn guest_line<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(&format!("GUEST-{key} ")))
        .unwrap_or_else(|| panic!("no GUEST-{key} line:\n{output}"))
}

/// A guest moving the live rng's BAR as an OS re-enumerating the bus does
/// (test guest: bar_scenarios.rs): `moves` are the `old=… new=…` it made.
/// The old address must read all ones and a notification written there
/// must reach nobody, decoding must follow the command register, the
/// device must serve random bytes where it is now, and nothing is reported.
fn check_bar_move(flags: &[&str], scenario: &str, moves: &[&str], status: u8) -> Run {
    let r = run(flags, scenario);
    common::assert_clean(r.code, &r.output);
    assert!(
        !r.stderr.contains("launcher:"),
        "a BAR move was reported:\n{}",
        r.output
    );
    let moved: Vec<&str> = r
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("GUEST-BAR-MOVED "))
        .collect();
    assert_eq!(moved, moves, "{}", r.output);
    assert_eq!(
        guest_line(&r.output, "BAR-OLD"),
        "GUEST-BAR-OLD status=0xff kicked=no",
        "the old address still answers"
    );
    let decode = guest_line(&r.output, "BAR-DECODE");
    assert!(
        decode.starts_with("GUEST-BAR-DECODE off=0xff kicked=no on=")
            && !decode.ends_with("on=0xff"),
        "decoding does not follow the command register: {decode}"
    );
    let line = guest_line(&r.output, "RNG-MOVED");
    let (a, b) = (random_value(line, "a="), random_value(line, "b="));
    assert_ne!(a, b, "two reads returned the same bytes");
    assert_eq!(guest_status(&r.output), Some(status), "{}", r.output);
    r
}

#[test]
fn a_modern_bar_moved_by_the_guest_is_followed() {
    let r = check_bar_move(
        &[],
        "virtio-rng-bar-move",
        &["old=0xfebf0000 new=0xd0000000"],
        0x0f,
    );
    assert_eq!(
        guest_line(&r.output, "BAR-MSIX"),
        "GUEST-BAR-MSIX new=0x31 old=0xffffffff",
        "the MSI-X table did not move with BAR0"
    );
}

#[test]
fn a_legacy_bar_moved_by_the_guest_is_followed() {
    check_bar_move(
        &["--legacy"],
        "virtio-rng-legacy-bar-move",
        &["old=0xc100 new=0x1000", "old=0x1000 new=0x1400"],
        0x07,
    );
}
