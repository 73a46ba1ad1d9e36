//! The strict checks seen from a guest driver: one table of misbehaving
//! test-guest scenarios per device and level, and the checks every strict
//! test runs on them. The tables live here, not in the test files, so that
//! one test (`tests/virtio_strict.rs`) can check that every rule of
//! `devices::virtio::rules` has a scenario.
//!
//! - A *stop* scenario breaks a MUST: the launcher must exit 3 with one
//!   "launcher: bad driver: DEVICE ADDR [queue N]: Rule (citation): …"
//!   line, the first such line on stderr.
//! - A *warning* scenario breaks something less (a SHOULD, a device limit,
//!   a heuristic): the guest runs to its end (exit 0) with exactly one
//!   "launcher: warning: …" line naming it; with `--warnings-as-errors`
//!   the same run stops as a bad driver.

use std::time::{Duration, Instant};

use super::{test_guest, Guest};

pub use super::TIMEOUT;
pub const MEM_MB: &str = "16";
/// The functions' vendor:device ids as the guest lists them.
pub const RNG_IDS: &str = "1af4:1044";
pub const RNG_LEGACY_IDS: &str = "1af4:1005";
pub const BLK_IDS: &str = "1af4:1042";
pub const BLK_LEGACY_IDS: &str = "1af4:1001";
pub const NET_IDS: &str = "1af4:1041";
pub const NET_LEGACY_IDS: &str = "1af4:1000";
pub const CONSOLE_IDS: &str = "1af4:1043";
/// DEVICE_NEEDS_RESET in device_status.
pub const NEEDS_RESET: u8 = 0x40;

/// (scenario, the rule it breaks).
pub type Table = &'static [(&'static str, &'static str)];

/// MUSTs broken on virtio-rng (`--rng`, modern).
pub const STOP_RNG: Table = &[
    ("bad-status-order", "StatusOrder"),
    ("bad-status-cleared-bit", "StatusClearedBit"),
    ("bad-status-failed-then-more", "StatusFailedThenMore"),
    ("bad-feature-not-offered", "FeatureNotOffered"),
    ("bad-feature-after-features-ok", "FeatureAfterFeaturesOk"),
    ("bad-feature-version1-missing", "FeatureVersion1Missing"),
    ("bad-queue-setup-after-driver-ok", "QueueSetupAfterDriverOk"),
    (
        "bad-queue-setup-before-features-ok",
        "QueueSetupBeforeFeaturesOk",
    ),
    ("bad-queue-size-invalid", "QueueSizeInvalid"),
    ("bad-queue-address-alignment", "QueueAddressAlignment"),
    (
        "bad-queue-address-outside-memory",
        "QueueAddressOutsideMemory",
    ),
    ("bad-queue-enable-value", "QueueEnableValue"),
    ("bad-queue-enabled-incomplete", "QueueEnabledIncomplete"),
    ("bad-access-width", "AccessWidth"),
    ("bad-read-only-write", "ReadOnlyWrite"),
    ("bad-notify-before-driver-ok", "NotifyBeforeDriverOk"),
    ("bad-pci-cfg-access", "PciCfgAccess"),
    ("bad-msix-vector-invalid", "MsixVectorInvalid"),
    ("bad-avail-index-jump", "AvailIndexJump"),
    (
        "bad-descriptor-index-out-of-range",
        "DescriptorIndexOutOfRange",
    ),
    ("bad-descriptor-loop", "DescriptorLoop"),
    ("bad-descriptor-outside-memory", "DescriptorOutsideMemory"),
    ("bad-write-before-read", "WriteBeforeRead"),
    ("bad-indirect-not-negotiated", "IndirectNotNegotiated"),
    ("bad-wrong-direction", "RngBufferReadable"),
    ("bad-pci-cfg-length", "PciCfgLength"),
    ("bad-reset-not-confirmed", "ResetNotConfirmed"),
    ("bad-features-ok-not-reread", "FeaturesOkNotReread"),
    ("bad-feature-before-driver", "FeatureBeforeDriver"),
    ("bad-msix-vector-not-read-back", "MsixVectorNotReadBack"),
    ("bad-used-flags-not-zero", "UsedFlagsNotZero"),
    ("bad-capability-write", "CapabilityWrite"),
    ("bad-avail-index-decrement", "AvailIndexDecrement"),
    ("bad-avail-flags-invalid", "AvailFlagsInvalid"),
];

/// Warnings on virtio-rng (`--rng`, modern).
pub const WARN_RNG: Table = &[
    ("bad-queue-select-out-of-range", "QueueSelectOutOfRange"),
    ("bad-access-offset", "AccessOffset"),
    ("bad-isr-write", "IsrWrite"),
    ("bad-notify-bad-queue", "NotifyBadQueue"),
    ("bad-descriptor-zero-length", "DescriptorZeroLength"),
    ("bad-buffer-reused-in-flight", "BufferReusedInFlight"),
];

/// MUSTs broken on virtio-rng behind `--legacy`.
pub const STOP_RNG_LEGACY: Table = &[];

/// Warnings on virtio-rng behind `--legacy`.
pub const WARN_RNG_LEGACY: Table = &[
    (
        "bad-legacy-queue-pfn-before-features",
        "LegacyQueuePfnBeforeFeatures",
    ),
    (
        "bad-legacy-notify-before-driver-ok",
        "LegacyNotifyBeforeDriverOk",
    ),
    (
        "bad-legacy-feature-after-driver-ok",
        "LegacyFeatureAfterDriverOk",
    ),
    ("bad-legacy-header-access", "LegacyHeaderAccess"),
];

// ---- virtio-blk (`--block DISK`): tests/virtio_strict.rs runs these ----

/// MUSTs broken on virtio-blk (modern).
pub const STOP_BLK: Table = &[
    ("bad-blk-writable-header", "BlkHeaderNotReadable"),
    ("bad-blk-header-too-short", "BlkHeaderTooShort"),
    ("bad-blk-no-status-byte", "BlkNoStatusByte"),
    ("bad-blk-data-wrong-direction", "BlkDataWrongDirection"),
    ("bad-indirect-with-next", "IndirectWithNext"),
    ("bad-indirect-nested", "IndirectNested"),
    ("bad-indirect-table-size", "IndirectTableSize"),
    ("bad-blk-beyond-capacity", "BlkBeyondCapacity"),
    (
        "bad-blk-data-not-sector-multiple",
        "BlkDataNotSectorMultiple",
    ),
    ("bad-blk-flush-sector-not-zero", "BlkFlushSectorNotZero"),
    ("bad-blk-get-id-length", "BlkGetIdLength"),
    ("bad-blk-discard-segments", "BlkDiscardSegments"),
    ("bad-blk-discard-unmap", "BlkDiscardUnmap"),
    ("bad-config-field-not-offered", "ConfigFieldNotOffered"),
    ("bad-config-access-width", "ConfigAccessWidth"),
    (
        "bad-config-write-before-features-ok",
        "ConfigWriteBeforeFeaturesOk",
    ),
    (
        "bad-blk-writeback-before-features-ok",
        "BlkWritebackBeforeFeaturesOk",
    ),
];

/// Warnings on virtio-blk (modern); `bad-blk-ro-not-accepted` needs a
/// `,ro` disk.
pub const WARN_BLK: Table = &[
    ("bad-blk-flush-with-data", "BlkFlushWithData"),
    ("bad-blk-ro-not-accepted", "BlkRoNotAccepted"),
];

/// MUSTs broken on virtio-blk behind `--legacy`.
pub const STOP_BLK_LEGACY: Table = &[("bad-blk-legacy-header-layout", "BlkLegacyHeaderLayout")];

// ---- virtio-net (`--tunnet` in a namespace): tests/strict_net.rs ----

/// MUSTs broken on virtio-net (modern).
pub const STOP_NET: Table = &[
    (
        "bad-net-feature-missing-prerequisite",
        "FeatureMissingPrerequisite",
    ),
    ("bad-net-tx-too-short", "NetTxTooShort"),
    ("bad-net-tx-num-buffers", "NetTxNumBuffers"),
    ("bad-net-tx-flags", "NetTxFlags"),
    ("bad-net-tx-data-valid", "NetTxFlags"),
    ("bad-net-tx-gso-not-negotiated", "NetTxGsoNotNegotiated"),
    ("bad-net-tx-gso-without-csum", "NetTxGsoWithoutCsum"),
    ("bad-net-tx-gso-size-zero", "NetTxGsoSizeZero"),
    ("bad-net-tx-csum-outside-packet", "NetTxCsumOutsidePacket"),
    ("bad-net-rx-buffer-too-short", "NetRxBufferTooShort"),
];

/// Warnings on virtio-net (modern).
pub const WARN_NET: Table = &[
    ("bad-net-tx-ecn-without-host-ecn", "NetTxEcnWithoutHostEcn"),
    ("bad-net-tx-buffer-writable", "NetTxBufferWritable"),
    ("bad-net-rx-buffer-small", "NetRxBufferSmall"),
    ("bad-net-rx-buffer-readable", "NetRxBufferReadable"),
    ("bad-net-mac-not-accepted", "NetMacNotAccepted"),
];

/// MUSTs broken on virtio-net behind `--legacy`.
pub const STOP_NET_LEGACY: Table = &[
    ("bad-net-legacy-header-not-alone", "NetLegacyHeaderNotAlone"),
    (
        "bad-net-legacy-rx-header-not-alone",
        "NetLegacyHeaderNotAlone",
    ),
    ("bad-net-legacy-tx-flags", "NetTxFlags"),
    ("bad-net-legacy-tx-num-buffers", "NetTxNumBuffers"),
];

// ---- virtio-console: tests/virtio_strict.rs ----

/// MUSTs broken on virtio-console (modern).
pub const STOP_CONSOLE: Table = &[("bad-console-buffer-direction", "ConsoleBufferDirection")];

/// Rules checked by a scenario outside these tables, with the test that
/// does it: only reachable with `--lenient`, say, because the rule follows
/// another one that already stops a strict run.
pub const ELSEWHERE: &[(&str, &str)] = &[(
    "FeaturesOkRefused",
    "virtio_strict::lenient_driver_going_on_after_a_refused_features_ok_is_reported",
)];

/// Rules with no scenario yet, each with the reason; one list per area so
/// that work on one device does not touch another's.
pub const NOT_COVERED: &[&[(&str, &str)]] = &[NOT_COVERED_CORE, NOT_COVERED_NET, NOT_COVERED_BLK];

pub const NOT_COVERED_CORE: &[(&str, &str)] = &[];

pub const NOT_COVERED_NET: &[(&str, &str)] = &[];

pub const NOT_COVERED_BLK: &[(&str, &str)] = &[];

/// Every table, for the coverage check.
pub const ALL_TABLES: &[Table] = &[
    STOP_RNG,
    WARN_RNG,
    STOP_RNG_LEGACY,
    WARN_RNG_LEGACY,
    STOP_BLK,
    WARN_BLK,
    STOP_BLK_LEGACY,
    STOP_NET,
    WARN_NET,
    STOP_NET_LEGACY,
    STOP_CONSOLE,
];

/// What one launcher run left behind.
pub struct Run {
    pub code: Option<i32>,
    pub output: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Boots the test guest with `flags` and `scenario=NAME` and waits for the
/// launcher to exit.
pub fn run(flags: &[&str], scenario: &str) -> Run {
    run_in(MEM_MB, flags, scenario)
}

/// [`run`] with `mem_mb` of guest memory.
pub fn run_in(mem_mb: &str, flags: &[&str], scenario: &str) -> Run {
    run_args(mem_mb, flags, &[&format!("scenario={scenario}")])
}

/// Boots the test guest in `mem_mb` with launcher `flags` and the guest's
/// own arguments `args` (`scenario=...` and its options), and waits for
/// the launcher to exit.
pub fn run_args(mem_mb: &str, flags: &[&str], args: &[&str]) -> Run {
    let elf = test_guest::path();
    let elf = elf.to_str().expect("test guest path is UTF-8");
    let mut all = flags.to_vec();
    all.extend([mem_mb, elf]);
    all.extend_from_slice(args);
    let t = Instant::now();
    let mut g = Guest::start(&all);
    let status = g.wait_exit(TIMEOUT);
    Run {
        code: status.code(),
        output: g.output(),
        stderr: g.stderr(),
        elapsed: t.elapsed(),
    }
}

/// "00:SS.0" of the function with vendor:device `ids`, from the guest's
/// `GUEST-PCI` listing.
pub fn address_of(output: &str, ids: &str) -> Option<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("GUEST-PCI "))
        .find(|l| l.split_whitespace().nth(1) == Some(ids))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// The device_status the guest printed last (`GUEST-STATUS 0x..`).
pub fn guest_status(output: &str) -> Option<u8> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with("GUEST-STATUS "))?;
    let hex = line["GUEST-STATUS ".len()..]
        .trim()
        .trim_start_matches("0x");
    u8::from_str_radix(hex, 16).ok()
}

/// Checks a run that must have stopped as a bad driver on `device` (the
/// function `ids`) for `rule`; returns what was wrong, if anything.
pub fn check_stop(
    device: &str,
    ids: &str,
    scenario: &str,
    rule: &str,
    r: &Run,
) -> Result<(), String> {
    let addr = address_of(&r.output, ids).ok_or(format!("GUEST-PCI does not list {ids}"))?;
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
    let head = format!("launcher: bad driver: {device} {addr}");
    let named = format!(": {}: ", super::rule_label(rule));
    if !report.starts_with(&head) || !report.contains(&named) {
        return Err(format!(
            "report {report:?} does not start with {head:?} or lacks {named:?}"
        ));
    }
    if let Some(q) = expected_queue(device, rule, scenario) {
        let on_queue = format!("{head} queue {q}: ");
        if !report.starts_with(&on_queue) {
            return Err(format!("report {report:?} does not name queue {q}"));
        }
    }
    if r.output.contains("GUEST-FAIL") || r.output.contains("GUEST-PANIC") {
        return Err("the guest failed before misbehaving".into());
    }
    // Where the guest was stopped: never after its after-bad deadline
    // (a launcher that reported only at the power-off would let it get
    // there); and for a rule caught at the register access, before the
    // guest's next instruction, so before it could say GUEST-AFTER-BAD.
    if r.output.contains("GUEST-BAD-DEADLINE") {
        return Err("the guest ran to its deadline: it was not stopped".into());
    }
    if !found_by_a_worker(rule) && r.output.contains("GUEST-AFTER-BAD") {
        return Err(format!(
            "{rule} is caught at the register access, but the guest ran on to GUEST-AFTER-BAD"
        ));
    }
    Ok(())
}

/// The queue a worker-found rule's report must name: the transmitq (1) for
/// virtio-net's transmit rules and virtio-console's scenario, the
/// receiveq (0) for net receive rules, queue 0 elsewhere. `None` for
/// rules caught at a register access, which may name no queue.
pub fn expected_queue(device: &str, rule: &str, scenario: &str) -> Option<u16> {
    if !found_by_a_worker(rule) {
        return None;
    }
    Some(match device {
        "virtio-console" => 1,
        "virtio-net" if rule.starts_with("NetRx") || scenario.contains("-rx") => 0,
        "virtio-net" => 1,
        _ => 0,
    })
}

/// Whether `rule` is found by a queue's worker thread after the guest's
/// notification (which KVM takes without stopping the vCPU), rather than
/// at a register access on the vCPU thread.
pub fn found_by_a_worker(rule: &str) -> bool {
    let queue_or_request = [
        "Avail",
        "Descriptor",
        "WriteBeforeRead",
        "Indirect",
        "Buffer",
        "NetTx",
        "NetRx",
        "NetLegacy",
        "Blk",
        "Console",
        "Rng",
    ];
    rule != "BlkWritebackBeforeFeaturesOk" && queue_or_request.iter().any(|p| rule.starts_with(p))
}

/// Runs a warning scenario without and with `--warnings-as-errors`: first
/// the guest must run to its end (exit 0) with one warning line naming
/// device, address, rule and level; then the same finding must stop the
/// launcher as a bad driver (exit 3).
pub fn check_warning(
    flags: &[&str],
    device: &str,
    ids: &str,
    scenario: &str,
    rule: &str,
) -> Result<(), String> {
    let r = run(flags, scenario);
    let addr = address_of(&r.output, ids).ok_or(format!("GUEST-PCI does not list {ids}"))?;
    if r.code != Some(0) {
        return Err(format!("exit code {:?}, wanted 0", r.code));
    }
    if !r.output.contains("GUEST-AFTER-BAD") {
        return Err("the guest did not run on after the warning".into());
    }
    let head = format!("launcher: warning: {device} {addr}");
    let named = format!(": {}: ", super::rule_label(rule));
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("warning:"))
        .collect();
    match lines[..] {
        [l] if l.starts_with(&head) && l.contains(&named) => {}
        _ => {
            return Err(format!(
                "warnings {lines:#?}, wanted one starting {head:?} with {named:?}"
            ))
        }
    }
    if r.stderr.contains("bad driver") {
        return Err(format!("reported as a bad driver:\n{}", r.stderr));
    }
    let mut strict = flags.to_vec();
    strict.push("--warnings-as-errors");
    let r = run(&strict, scenario);
    check_stop(device, ids, scenario, rule, &r)
        .map_err(|e| format!("with --warnings-as-errors: {e}"))
}

/// Runs every stop scenario of `table` with `flags`; fails listing each
/// scenario that did not stop as it should.
pub fn run_stop_table(flags: &[&str], device: &str, ids: &str, table: Table) {
    let t = Instant::now();
    let failures: Vec<String> = table
        .iter()
        .filter_map(|&(scenario, rule)| {
            let r = run(flags, scenario);
            check_stop(device, ids, scenario, rule, &r)
                .err()
                .map(|e| format!("{scenario} ({rule}): {e}\n{}", r.output))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    eprintln!("{} {device} stop scenarios: {:?}", table.len(), t.elapsed());
}

/// [`run_stop_table`] for warning scenarios ([`check_warning`]).
pub fn run_warning_table(flags: &[&str], device: &str, ids: &str, table: Table) {
    let failures: Vec<String> = table
        .iter()
        .filter_map(|&(scenario, rule)| {
            check_warning(flags, device, ids, scenario, rule)
                .err()
                .map(|e| format!("{scenario} ({rule}): {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} warning scenarios failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}
