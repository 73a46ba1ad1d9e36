//! What guest drivers do, told for the people who write them.
//!
//! Events come from the transport core (status, features, queue setup,
//! vectors, resets, violations), the register maps (every access), the
//! queue workers (notifications, interrupts) and the device handlers
//! (decoded requests). Each virtio function has one [`Tracer`], made by its
//! core and carried to its workers in their `CheckedQueue`s; it decides per
//! event where it goes:
//!
//! - stderr, when the event's [`Detail`] is within the device's: `-v` the
//!   life of each device, `-vv` also every request, notification and
//!   interrupt, `-vvv` also every register access. `--trace DEVICE,…`
//!   gives that detail only to the devices named; the others stay at `-v`.
//! - the trace file (`--trace-file`), as JSON lines (docs/tracing.md): by
//!   default deterministic (no host times, no guest addresses, no random
//!   MACs, no events whose number depends on timing, each device's events
//!   together and in its own order, written at the end of each boot), so
//!   two runs of one deterministic guest give the same file; with
//!   `--trace-everything` every event as it happens, through a bounded
//!   buffer and a writer thread (`trace-out`) that never blocks the guest.
//! - the device's last few events, which a bad-driver report shows.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::output::Output;

/// The trace file's schema version (the `schema` member of every line).
pub const SCHEMA: u32 = 1;
/// Events a bad-driver report shows.
const RECENT: usize = 8;
/// Events a device keeps for a deterministic trace file; more are counted.
const KEPT_PER_DEVICE: usize = 1 << 20;
/// Bytes waiting for the `trace-out` thread at most (`--trace-everything`).
const STREAM_BUFFER: usize = 4 << 20;
/// Kinds whose number depends on timing: left out of deterministic files.
const TIMING_KINDS: &[&str] = &["notify", "interrupt"];

/// How much of a device's activity an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Detail {
    /// `-v`: status, features, queue setup, vectors, resets, violations.
    Life = 1,
    /// `-vv`: every request, notification and interrupt.
    Request = 2,
    /// `-vvv`: every register and port access.
    Access = 3,
}

/// One field of an event in the trace file.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    U(u64),
    S(&'a str),
    /// A guest physical address: only in `--trace-everything` files.
    Addr(u64),
    /// Host-chosen at random (a MAC): only in `--trace-everything` files.
    Random(&'a str),
}

/// What `main` decided from the command line.
pub struct Settings {
    /// 0 (quiet) to 3 (`-vvv`).
    pub verbose: u8,
    /// `--trace`: device names (`virtio-blk`), aliases (`vda`) or PCI
    /// addresses (`00:03.0`); empty: every device.
    pub only: Vec<String>,
    pub file: Option<FileSettings>,
}

pub struct FileSettings {
    pub file: std::fs::File,
    /// `--trace-everything`: times, addresses, every event, as they happen.
    pub everything: bool,
    /// This boot's number (a reboot re-execs the launcher and appends).
    pub boot: u32,
}

struct Global {
    verbose: u8,
    only: Vec<String>,
    sink: Option<Sink>,
    boot: u32,
    start: Instant,
    devices: Mutex<Vec<Tracer>>,
}

enum Sink {
    /// Deterministic: each device buffers, [`finish`] writes.
    Sorted(Mutex<std::fs::File>),
    /// Everything, as it happens.
    Stream {
        out: Output,
        seq: AtomicU64,
        dropped: AtomicU64,
    },
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

/// Sets the launcher's tracing up, once, before any device exists.
pub fn init(s: Settings) -> std::io::Result<()> {
    let (sink, boot) = match s.file {
        None => (None, 1),
        Some(f) if f.everything => (
            Some(Sink::Stream {
                out: Output::spawn_named("trace-out", Box::new(f.file), STREAM_BUFFER)?,
                seq: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
            f.boot,
        ),
        Some(f) => (Some(Sink::Sorted(Mutex::new(f.file))), f.boot),
    };
    let g = Global {
        verbose: s.verbose,
        only: s.only,
        sink,
        boot,
        start: Instant::now(),
        devices: Mutex::new(Vec::new()),
    };
    GLOBAL
        .set(g)
        .map_err(|_| std::io::Error::other("tracing set up twice"))
}

/// Ends this boot's trace: a deterministic file gets every device's
/// events, a streamed one what the writer still holds. Returns a
/// sentence for stderr if events were lost.
pub fn finish() -> Option<String> {
    let g = GLOBAL.get()?;
    match g.sink.as_ref()? {
        Sink::Sorted(file) => {
            let devices = g.devices.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            let mut lost = 0;
            for d in devices {
                let mut kept = d.0.kept.lock().unwrap_or_else(|e| e.into_inner());
                for line in kept.lines.drain(..) {
                    if file.write_all(line.as_bytes()).is_err() {
                        return Some("cannot write the trace file".into());
                    }
                }
                lost += kept.dropped;
                kept.dropped = 0;
            }
            let _ = file.flush();
            (lost > 0).then(|| format!("{lost} trace events beyond {KEPT_PER_DEVICE} per device were left out of the trace file"))
        }
        Sink::Stream { out, dropped, .. } => {
            let left = out.drain(std::time::Duration::from_secs(2)).unwritten;
            let lost = dropped.load(Ordering::Relaxed);
            (lost > 0 || left > 0).then(|| {
                format!("{lost} trace events dropped (the trace file could not keep up), {left} bytes unwritten")
            })
        }
    }
}

/// One device's tracing; cheap to clone into its workers.
#[derive(Clone)]
pub struct Tracer(Arc<Device>);

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tracer({})", self.0.label)
    }
}

struct Device {
    /// "virtio-blk 00:03.0".
    label: String,
    /// Detail shown on stderr (0: none).
    detail: u8,
    /// The trace file wants this device's events.
    to_file: bool,
    everything: bool,
    recent: Mutex<VecDeque<String>>,
    kept: Mutex<Kept>,
    seq: AtomicU64,
}

#[derive(Default)]
struct Kept {
    lines: Vec<String>,
    dropped: u64,
}

impl Tracer {
    /// The tracer of `name` (`virtio-blk`) in PCI slot `slot`. Block
    /// devices are also known by the names Linux gives them in PCI order
    /// (`vda`, `vdb`, …), which is the order they are made in.
    pub fn new(name: &str, slot: u8) -> Tracer {
        let pci = format!("00:{slot:02x}.0");
        let label = format!("{name} {pci}");
        let Some(g) = GLOBAL.get() else {
            return Tracer::quiet(label);
        };
        let alias = (name == "virtio-blk").then(|| {
            let disks = g
                .devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|t| t.0.label.starts_with("virtio-blk "))
                .count();
            format!("vd{}", char::from(b'a' + (disks % 26) as u8))
        });
        let named = g.only.is_empty()
            || g.only
                .iter()
                .any(|o| *o == name || *o == pci || Some(o) == alias.as_ref());
        let detail = if named {
            g.verbose
        } else {
            g.verbose.min(Detail::Life as u8)
        };
        let t = Tracer(Arc::new(Device {
            label,
            detail,
            to_file: named && g.sink.is_some(),
            everything: matches!(g.sink, Some(Sink::Stream { .. })),
            recent: Mutex::new(VecDeque::new()),
            kept: Mutex::new(Kept::default()),
            seq: AtomicU64::new(0),
        }));
        g.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t.clone());
        t
    }

    /// A tracer that only keeps recent events (unit tests, tools).
    pub fn quiet(label: String) -> Tracer {
        Tracer(Arc::new(Device {
            label,
            detail: 0,
            to_file: false,
            everything: false,
            recent: Mutex::new(VecDeque::new()),
            kept: Mutex::new(Kept::default()),
            seq: AtomicU64::new(0),
        }))
    }

    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// Whether an event of `detail` goes anywhere: callers skip decoding
    /// what nobody will see.
    pub fn wants(&self, detail: Detail) -> bool {
        detail == Detail::Life || detail as u8 <= self.0.detail || self.0.to_file
    }

    /// Records an event: `text` for people (stderr, the recent list),
    /// `kind` and `fields` for the trace file.
    pub fn event(
        &self,
        detail: Detail,
        kind: &str,
        fields: &[(&str, Value)],
        text: fmt::Arguments,
    ) {
        if !self.wants(detail) {
            return;
        }
        let d = &self.0;
        let shown = detail as u8 <= d.detail;
        // Register accesses are not kept for reports: no text is made for
        // them when only the trace file wants them.
        let kept = detail <= Detail::Request;
        if shown || kept {
            let text = text.to_string();
            if shown {
                log::info!("{}: {text}", d.label);
            }
            if kept {
                let mut r = d.recent.lock().unwrap_or_else(|e| e.into_inner());
                if r.len() == RECENT {
                    r.pop_front();
                }
                r.push_back(text);
            }
        }
        if d.to_file && (d.everything || !TIMING_KINDS.contains(&kind)) {
            self.to_file(kind, fields);
        }
    }

    /// The last events (oldest first), for a bad-driver report.
    pub fn recent(&self) -> Vec<String> {
        self.0
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn to_file(&self, kind: &str, fields: &[(&str, Value)]) {
        let Some(g) = GLOBAL.get() else { return };
        let Some(sink) = &g.sink else { return };
        let d = &self.0;
        let seq = match sink {
            Sink::Sorted(_) => d.seq.fetch_add(1, Ordering::Relaxed),
            Sink::Stream { seq, .. } => seq.fetch_add(1, Ordering::Relaxed),
        };
        let mut line = String::with_capacity(128);
        let _ = write!(
            line,
            "{{\"schema\":{SCHEMA},\"boot\":{},\"seq\":{seq}",
            g.boot
        );
        if d.everything {
            let _ = write!(line, ",\"time_ns\":{}", g.start.elapsed().as_nanos());
        }
        line.push_str(",\"device\":");
        json_str(&mut line, &d.label);
        line.push_str(",\"kind\":");
        json_str(&mut line, kind);
        line.push_str(",\"fields\":{");
        let mut first = true;
        for (name, v) in fields {
            let shown = match v {
                Value::Addr(_) | Value::Random(_) => d.everything,
                _ => true,
            };
            if !shown {
                continue;
            }
            if !first {
                line.push(',');
            }
            first = false;
            json_str(&mut line, name);
            line.push(':');
            match v {
                Value::U(n) | Value::Addr(n) => {
                    let _ = write!(line, "{n}");
                }
                Value::S(s) | Value::Random(s) => json_str(&mut line, s),
            }
        }
        line.push_str("}}\n");
        match sink {
            Sink::Sorted(_) => {
                let mut kept = d.kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.lines.len() < KEPT_PER_DEVICE {
                    kept.lines.push(line);
                } else {
                    kept.dropped += 1;
                }
            }
            Sink::Stream { out, dropped, .. } => {
                if !out.push_whole(line.as_bytes()) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `bits` by name (`ACKNOWLEDGE|DRIVER`), unnamed ones as `bit N`; `-` for
/// none.
pub fn bit_names(bits: u64, names: &[(u32, &str)]) -> String {
    let mut s = String::new();
    for bit in 0..64u32 {
        if bits & (1 << bit) == 0 {
            continue;
        }
        if !s.is_empty() {
            s.push('|');
        }
        match names.iter().find(|(b, _)| *b == bit) {
            Some((_, n)) => s.push_str(n),
            None => {
                let _ = write!(s, "bit {bit}");
            }
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

/// Device status bits (§2.1).
pub const STATUS_BITS: &[(u32, &str)] = &[
    (0, "ACKNOWLEDGE"),
    (1, "DRIVER"),
    (2, "DRIVER_OK"),
    (3, "FEATURES_OK"),
    (6, "DEVICE_NEEDS_RESET"),
    (7, "FAILED"),
];

/// Feature bits every device type shares (§6).
pub const TRANSPORT_FEATURES: &[(u32, &str)] = &[
    (24, "NOTIFY_ON_EMPTY"),
    (27, "ANY_LAYOUT"),
    (28, "INDIRECT_DESC"),
    (29, "EVENT_IDX"),
    (32, "VERSION_1"),
    (33, "ACCESS_PLATFORM"),
    (34, "RING_PACKED"),
    (35, "IN_ORDER"),
    (36, "ORDER_PLATFORM"),
    (37, "SR_IOV"),
    (38, "NOTIFICATION_DATA"),
];

/// `features` by name: the transport's bits, then the device's own.
pub fn feature_names(features: u64, device: &[(u32, &str)]) -> String {
    let all: Vec<(u32, &str)> = device.iter().chain(TRANSPORT_FEATURES).copied().collect();
    bit_names(features, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_named() {
        assert_eq!(
            bit_names(0b1011, STATUS_BITS),
            "ACKNOWLEDGE|DRIVER|FEATURES_OK"
        );
        assert_eq!(bit_names(0, STATUS_BITS), "-");
        assert_eq!(bit_names(1 << 5, STATUS_BITS), "bit 5");
        let blk = &[(9, "BLK_F_FLUSH")];
        assert_eq!(
            feature_names((1 << 32) | (1 << 28) | (1 << 29) | (1 << 9), blk),
            "BLK_F_FLUSH|INDIRECT_DESC|EVENT_IDX|VERSION_1"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, r#""a\"b\\c\nd\u0001""#);
    }

    #[test]
    fn a_quiet_tracer_keeps_the_last_events_for_a_report() {
        let t = Tracer::quiet("virtio-rng 00:02.0".into());
        for i in 0..20 {
            t.event(Detail::Life, "status", &[], format_args!("event {i}"));
        }
        t.event(Detail::Access, "read", &[], format_args!("not kept"));
        let r = t.recent();
        assert_eq!(r.len(), RECENT);
        assert_eq!(r.first().map(String::as_str), Some("event 12"));
        assert_eq!(r.last().map(String::as_str), Some("event 19"));
        assert!(!t.wants(Detail::Request));
    }
}
