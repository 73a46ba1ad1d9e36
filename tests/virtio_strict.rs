//! The strict virtio checks, seen from a guest driver: the test guest's
//! polled ring-3 virtio-rng driver (guest-images/test-guest/src/virtio.rs)
//! against `launcher --rng`.
//!
//! - `virtio-rng`: a well-behaved modern driver (capabilities, VERSION_1
//!   only, one split queue) reads 32 random bytes twice; nothing is reported.
//! - `bad-<rule>`: one scenario per rule an rng driver can break. In strict
//!   mode (the default) each must stop the launcher with exit code 3 and one
//!   stderr line naming the device, the rule and its virtio 1.0 section;
//!   with `--lenient` the guest runs on and sees DEVICE_NEEDS_RESET.
//!
//! Rules of `devices::virtio::rules::Rule::ALL` (36) NOT covered here, and
//! why an rng driver cannot trigger them:
//! - `FeaturesOkRefused` (§3.1.1): needs a device that refuses FEATURES_OK;
//!   the modern transport never refuses it (a non-offered feature is reported
//!   as `FeatureNotOffered` instead), and nothing in the launcher raises it.
//! - `IndirectWithNext`, `IndirectNested`, `IndirectTableSize` (§2.4.5.3.1):
//!   checked only once VIRTIO_F_INDIRECT_DESC is negotiated, and virtio-rng
//!   does not offer it; any indirect descriptor is `IndirectNotNegotiated`
//!   first (covered).
//! - `BufferTooShort` (§5): virtio-rng has no header and accepts any
//!   non-empty writable buffer (an empty one is `DescriptorZeroLength`).
//! - `LegacyQueuePfnBeforeFeatures` (§4.1.4.8): legacy transport only; the
//!   rng sits behind the modern transport.
//!
//! So 30 of 36 rules are covered, each by its own scenario.
//!
//! A boot of the test guest takes about 0.1 s; every launcher runs with a
//! 60 s timeout.

mod common;

use common::{test_guest, Guest};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);
const MEM_MB: &str = "16";
/// The function's ids: virtio vendor, 0x1040 + type 4 (entropy source).
const RNG_IDS: &str = "1af4:1044";
/// DEVICE_NEEDS_RESET in device_status.
const NEEDS_RESET: u8 = 0x40;

/// Scenario, the rule it breaks and that rule's section (from the rule
/// table in devices/src/virtio/rules.rs).
const BAD: &[(&str, &str, &str)] = &[
    ("bad-status-order", "StatusOrder", "3.1.1"),
    ("bad-status-cleared-bit", "StatusClearedBit", "2.1.2"),
    (
        "bad-status-failed-then-more",
        "StatusFailedThenMore",
        "3.1.1",
    ),
    ("bad-feature-not-offered", "FeatureNotOffered", "2.2.1"),
    (
        "bad-feature-after-features-ok",
        "FeatureAfterFeaturesOk",
        "3.1.1",
    ),
    (
        "bad-feature-version1-missing",
        "FeatureVersion1Missing",
        "6.1",
    ),
    (
        "bad-queue-setup-after-driver-ok",
        "QueueSetupAfterDriverOk",
        "4.1.4.3.2",
    ),
    (
        "bad-queue-setup-before-features-ok",
        "QueueSetupBeforeFeaturesOk",
        "3.1.1",
    ),
    (
        "bad-queue-select-out-of-range",
        "QueueSelectOutOfRange",
        "4.1.4.3",
    ),
    ("bad-queue-size-invalid", "QueueSizeInvalid", "2.4"),
    (
        "bad-queue-address-alignment",
        "QueueAddressAlignment",
        "2.4",
    ),
    (
        "bad-queue-address-outside-memory",
        "QueueAddressOutsideMemory",
        "2.4",
    ),
    ("bad-queue-enable-value", "QueueEnableValue", "4.1.4.3.2"),
    ("bad-access-width", "AccessWidth", "4.1.3.1"),
    ("bad-access-offset", "AccessOffset", "4.1.4"),
    ("bad-read-only-write", "ReadOnlyWrite", "4.1.4.3"),
    ("bad-isr-write", "IsrWrite", "4.1.4.5"),
    (
        "bad-notify-before-driver-ok",
        "NotifyBeforeDriverOk",
        "3.1.1",
    ),
    ("bad-notify-bad-queue", "NotifyBadQueue", "4.1.4.4"),
    ("bad-pci-cfg-access", "PciCfgAccess", "4.1.4.7.1"),
    ("bad-msix-vector-invalid", "MsixVectorInvalid", "4.1.5.1.2"),
    ("bad-avail-index-jump", "AvailIndexJump", "2.4.6"),
    (
        "bad-descriptor-index-out-of-range",
        "DescriptorIndexOutOfRange",
        "2.4.5",
    ),
    ("bad-descriptor-loop", "DescriptorLoop", "2.4.5"),
    (
        "bad-descriptor-outside-memory",
        "DescriptorOutsideMemory",
        "2.4.5",
    ),
    (
        "bad-descriptor-zero-length",
        "DescriptorZeroLength",
        "2.4.5",
    ),
    ("bad-write-before-read", "WriteBeforeRead", "2.4.4.2"),
    (
        "bad-indirect-not-negotiated",
        "IndirectNotNegotiated",
        "2.4.5.3.1",
    ),
    ("bad-wrong-direction", "WrongDirection", "5"),
];

/// Violations the transport finds while the guest's register access is in
/// flight; `--lenient` must set DEVICE_NEEDS_RESET for them.
const LENIENT_TRANSPORT: &[(&str, &str)] = &[
    ("bad-isr-write", "IsrWrite"),
    ("bad-status-order", "StatusOrder"),
    ("bad-queue-size-invalid", "QueueSizeInvalid"),
    ("bad-access-width", "AccessWidth"),
    ("bad-queue-address-alignment", "QueueAddressAlignment"),
    ("bad-notify-before-driver-ok", "NotifyBeforeDriverOk"),
];

/// Violations a queue's worker thread finds after the notification.
const LENIENT_QUEUE: &[(&str, &str)] = &[
    ("bad-wrong-direction", "WrongDirection"),
    ("bad-descriptor-loop", "DescriptorLoop"),
];

/// What one launcher run left behind.
struct Run {
    code: Option<i32>,
    output: String,
    stderr: String,
    elapsed: Duration,
}

/// Boots the test guest with `--rng`, `flags` and `scenario=NAME`, and waits
/// for the launcher to exit.
fn run(flags: &[&str], scenario: &str) -> Run {
    let elf = test_guest::path();
    let elf = elf.to_str().expect("test guest path is UTF-8");
    let arg = format!("scenario={scenario}");
    let mut args = vec!["--rng"];
    args.extend_from_slice(flags);
    args.extend([MEM_MB, elf, arg.as_str()]);
    let t = Instant::now();
    let mut g = Guest::start(&args);
    let status = g.wait_exit(TIMEOUT);
    Run {
        code: status.code(),
        output: g.output(),
        stderr: g.stderr(),
        elapsed: t.elapsed(),
    }
}

/// "00:SS.0" of the rng function, from the guest's `GUEST-PCI` listing.
fn rng_address(output: &str) -> Option<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("GUEST-PCI "))
        .find(|l| l.split_whitespace().nth(1) == Some(RNG_IDS))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// The device_status the guest printed last (`GUEST-STATUS 0x..`).
fn guest_status(output: &str) -> Option<u8> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with("GUEST-STATUS "))?;
    let hex = line["GUEST-STATUS ".len()..]
        .trim()
        .trim_start_matches("0x");
    u8::from_str_radix(hex, 16).ok()
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

/// Checks one strict-mode run; returns what was wrong, if anything.
fn check_strict(scenario: &str, rule: &str, section: &str, r: &Run) -> Result<(), String> {
    let addr = rng_address(&r.output).ok_or("GUEST-PCI does not list the rng")?;
    if r.code != Some(3) {
        return Err(format!("exit code {:?}, wanted 3", r.code));
    }
    let reports: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("bad driver"))
        .collect();
    let [report] = reports[..] else {
        return Err(format!("{} bad-driver lines, wanted 1", reports.len()));
    };
    let device = format!("launcher: bad driver: virtio-rng {addr}");
    let named = format!(": {rule} (virtio 1.0 §{section}): ");
    if !report.starts_with(&device) || !report.contains(&named) {
        return Err(format!(
            "report {report:?} does not start with {device:?} or lacks {named:?}"
        ));
    }
    if r.output.contains("GUEST-FAIL") || r.output.contains("GUEST-PANIC") {
        return Err(format!("the guest failed before misbehaving ({scenario})"));
    }
    Ok(())
}

#[test]
fn every_bad_driver_scenario_stops_the_launcher_naming_its_rule() {
    let t = Instant::now();
    let mut failures = Vec::new();
    for &(scenario, rule, section) in BAD {
        let r = run(&[], scenario);
        if let Err(e) = check_strict(scenario, rule, section, &r) {
            failures.push(format!("{scenario} ({rule}): {e}\n{}", r.output));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        BAD.len(),
        failures.join("\n")
    );
    eprintln!("{} bad-driver scenarios: {:?}", BAD.len(), t.elapsed());
}

#[test]
fn enabling_an_unconfigured_queue_is_reported() {
    let r = run(&[], "bad-queue-enabled-incomplete");
    check_strict(
        "bad-queue-enabled-incomplete",
        "QueueEnabledIncomplete",
        "4.1.4.3.2",
        &r,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", r.output));
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
    if !r
        .stderr
        .lines()
        .any(|l| l.contains("bad driver: virtio-rng") && l.contains(rule))
    {
        return Err(format!("no warning naming {rule} on stderr"));
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
