//! The transport core: what a virtio device is to its driver, whatever the
//! register layout it is reached through.
//!
//! Both PCI register maps (`modern.rs`, virtio 1.0; `legacy.rs`, 0.9.5)
//! decode a guest access into one of the core's driver operations (set the
//! status, accept features, select and program a queue, notify, read the
//! ISR or the device configuration) and nothing more. The core keeps the
//! device's state machine (§2.1, §3.1), feature negotiation (§2.2), the
//! queues the driver programmed (§2.4, §4.1.4.3), checks every operation
//! against the [`Rule`]s, starts one [`Worker`] per queue at DRIVER_OK and
//! stops them on reset, without waiting for ever on one stuck in host I/O
//! (`stop_workers`, [`crate::virtio::gate`]). Where the two interfaces'
//! rules differ (a legacy driver has no FEATURES_OK step and cannot size
//! its queues), [`Version`] says which applies, here and nowhere else.
//!
//! What a register map supplies: the [`Interrupt`] it wired (MSI-X and
//! INTx, or INTx alone) and a [`Doorbell`], which makes the guest's queue
//! notifications signal the workers' kick eventfds (one ioeventfd per
//! queue for modern, one shared port for legacy).
//!
//! ```text
//! vCPU access ─► register map (decode) ─► Core (check, act) ─► Worker per queue
//!                                            │ violations
//!                                            ▼
//!                                  VmHooks::report / NEEDS_RESET
//! ```

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::VmHooks;
use crate::trace::{bit_names, Detail, Tracer, Value, STATUS_BITS};
use crate::virtio::device::{feature, status, ConfigSignal, QueueHandler, VirtioDevice};
use crate::virtio::gate::{Gate, Generation};
use crate::virtio::interrupt::{Interrupt, ISR_CONFIG, NO_VECTOR};
use crate::virtio::queue::CheckedQueue;
use crate::virtio::rules::{Rule, Violation};
use crate::virtio::worker::{FailureSink, ViolationSink, Worker, WorkerSetup};

/// Which interface's rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// virtio 1.0: VERSION_1, 64 feature bits, FEATURES_OK, driver-sized
    /// queues enabled one by one.
    Modern,
    /// virtio 0.9.5 (the spec's "legacy interface"): 32 feature bits
    /// accepted by writing them, no FEATURES_OK, queues of the device's
    /// size placed by page number.
    Legacy,
}

/// How a device is named: in reports ("virtio-rng 00:03.0") and as the
/// prefix of its threads' names ("rng-03", so that "rng-03-q0" fits the
/// 15 bytes /proc shows).
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub label: &'a str,
    pub threads: &'a str,
}

/// How the guest's notifications reach the running queues' workers.
pub trait Doorbell: Send {
    /// After DRIVER_OK: make a notification of each `(queue, kick)` signal
    /// `kick`. `base` is where the register map's notify area starts now
    /// (an MMIO address or a port). What cannot be wired is logged: such
    /// notifications then trap and reach [`Core::notify`], which kicks.
    fn connect(&mut self, hooks: &dyn VmHooks, names: Names, base: u64, kicks: &[(u16, &EventFd)]);
    /// Undoes [`Doorbell::connect`]; the workers are about to stop.
    fn disconnect(&mut self, hooks: &dyn VmHooks, label: &str);
}

/// Reports a function's violations; cheap to clone into its workers.
#[derive(Clone)]
struct Reporter {
    hooks: Arc<dyn VmHooks>,
    /// "virtio-rng 00:03.0".
    label: String,
    /// DEVICE_NEEDS_RESET, set by the core or by any of its workers.
    needs_reset: Arc<AtomicBool>,
    /// Signals the configuration vector once interrupts are wired.
    config: Arc<ConfigInterrupt>,
    trace: Tracer,
}

impl Reporter {
    /// The device cannot go on for a host reason (a worker that could not
    /// start or whose epoll failed): said on stderr, and the driver is told
    /// through DEVICE_NEEDS_RESET and a configuration interrupt (§2.1.2)
    /// instead of finding a queue that silently went dead.
    fn device_failed(&self, what: &str) {
        log::error!("{}: {what}; the device needs a reset", self.label);
        self.trace.event(
            Detail::Life,
            "failed",
            &[("what", Value::S(what))],
            format_args!("failed: {what}"),
        );
        self.needs_reset.store(true, Ordering::SeqCst);
        self.config.raise();
    }

    /// Reports `v`. A broken MUST ends a strict run there; under
    /// `--lenient` it marks the device as needing a reset and tells the
    /// driver with a configuration interrupt (§2.1.2). A warning changes
    /// nothing for the device.
    fn raise(&self, v: Violation) {
        let fatal = v.is_fatal();
        let recent = self.trace.recent();
        let v = v.on_device(self.label.clone());
        let rule = format!("{:?}", v.rule);
        self.trace.event(
            Detail::Life,
            "violation",
            &[
                ("rule", Value::S(&rule)),
                ("level", Value::S(v.rule.level().name())),
            ],
            format_args!("{v}"),
        );
        self.hooks.report(&v.with_recent(recent));
        if fatal && self.hooks.lenient() {
            self.needs_reset.store(true, Ordering::SeqCst);
            self.config.raise();
        }
    }
}

/// The configuration-change interrupt: ISR bit 1 with INTx, or the vector
/// the driver chose (`msix_config`) with MSI-X. Shared with the device
/// (as its [`ConfigSignal`]) and with the workers' violation reports.
struct ConfigInterrupt {
    interrupt: std::sync::OnceLock<Arc<Interrupt>>,
    vector: AtomicU16,
}

impl ConfigSignal for ConfigInterrupt {
    fn raise(&self) {
        if let Some(i) = self.interrupt.get() {
            i.signal(self.vector.load(Ordering::SeqCst), ISR_CONFIG);
        }
    }
    fn clear(&self) {
        if let Some(i) = self.interrupt.get() {
            i.isr.fetch_and(!ISR_CONFIG, Ordering::SeqCst);
        }
    }
}

/// One queue as the driver programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// The device's maximum size.
    pub max: u16,
    pub size: u16,
    /// MSI-X vector for used-buffer interrupts.
    pub vector: u16,
    pub enabled: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Which of desc/avail/used the driver wrote (bits 0, 1, 2): enabling
    /// a queue whose rings were never placed is a driver bug even when
    /// the reset values happen to be valid addresses.
    written: u8,
}

impl QueueConfig {
    fn new(max: u16) -> Self {
        Self {
            max,
            size: max,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
            written: 0,
        }
    }
}

/// A queue field a modern driver programs (§4.1.4.3); 64-bit addresses
/// come as two 32-bit halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueField {
    Size,
    Vector,
    Enable,
    /// Descriptor table (0), driver area (1), device area (2); high half?
    Address {
        ring: u8,
        high: bool,
    },
}

/// The ring names of [`QueueField::Address`], for reports.
const RINGS: [&str; 3] = ["descriptor table", "driver area", "device area"];

/// How long a reset waits for the workers inside guest memory to leave
/// it. Work inside is memory copies, ring updates and reads the page
/// cache holds (`RWF_NOWAIT`), which the kernel may still make wait for
/// the disk now and then (readahead it starts on the way, an atime
/// update). A modern driver then waits on: device_status reads non-zero
/// until the worker left (§4.1.4.3.2), so the vCPU need not. A legacy
/// driver has no such handshake; there only a handler that breaks the
/// rule blocks inside (virtio-blk reads through a bounce buffer there),
/// and the reset goes on after [`GATE_WAIT_LEGACY`].
const GATE_WAIT: Duration = Duration::from_millis(100);
const GATE_WAIT_LEGACY: Duration = Duration::from_secs(1);

/// How long a reset (or a stop) gives the workers to end before going on
/// without those still busy in host I/O. The vCPU that resets waits this
/// long at most; a worker left behind can no longer touch guest memory,
/// so waiting longer would buy nothing but the thread back sooner.
const STOP_WAIT: Duration = Duration::from_millis(100);

/// Workers left behind by resets (still stuck in host I/O) a device may
/// have before it refuses to start more: a guest that resets a device on
/// a hung disk again and again must not pile up threads without bound.
const MAX_STUCK: usize = 8;

/// A running queue.
struct Running {
    index: u16,
    worker: Worker,
    kick: EventFd,
}

/// A virtio device's transport-independent state; see the module docs.
pub struct Core {
    device: Box<dyn VirtioDevice>,
    version: Version,
    /// "virtio-rng 00:03.0", for reports and traces.
    label: String,
    trace: Tracer,
    /// The features offered were traced since the last reset.
    offered_traced: AtomicBool,
    /// Prefix of the worker threads' names: "rng-03".
    thread_prefix: String,
    hooks: Arc<dyn VmHooks>,
    reporter: Reporter,
    isr: Arc<AtomicU8>,
    interrupt: Option<Arc<Interrupt>>,
    /// How many MSI-X vectors the function has (0: INTx only).
    msix_vectors: u16,
    doorbell: Box<dyn Doorbell>,
    /// Whether the register map's notify area is decoded at all (its BAR
    /// enabled and placed); the doorbell is connected only while it is.
    notify_decoded: bool,
    status: u8,
    /// The device refused FEATURES_OK since the last reset (§3.1.1): the
    /// driver must not set up queues or set DRIVER_OK.
    features_refused: bool,
    driver_features: u64,
    /// A legacy driver accepted its features since the last reset: it
    /// negotiates before it places rings.
    features_written: bool,
    /// Reads the driver still owes (modern, §3.1.1 and §4.1.4.3.2): the
    /// status after a reset (must read 0 before re-initialising) and after
    /// FEATURES_OK (must see that it stuck).
    reset_unconfirmed: bool,
    features_ok_unread: bool,
    /// Vectors mapped but not read back yet (§4.1.5.1.2.2): the config
    /// vector, and one flag per queue.
    config_vector_unverified: bool,
    queue_vectors_unverified: Vec<bool>,
    /// Which 32 feature bits DEVICE_FEATURE / DRIVER_FEATURE show
    /// (modern); a legacy driver sees bits 0..32 only.
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    running: Vec<Running>,
    /// The device was activated since the last reset, and the handlers
    /// it gave for queues that are not running yet.
    activated: bool,
    idle: Vec<Option<Box<dyn QueueHandler>>>,
    /// This activation, which its workers' gates lead into; a reset closes
    /// it before stopping them.
    generation: Option<Arc<Generation>>,
    /// Workers that earlier resets went on without, still stuck in host
    /// I/O; kept to count them ([`MAX_STUCK`]) and dropped once they end.
    stuck: Vec<Worker>,
    /// Activations a modern reset closed while a worker was still inside
    /// them (a zero-copy block read the kernel made wait): the reset
    /// completes for the driver, device_status reading 0, only once they
    /// are empty (§4.1.4.3.2's handshake).
    draining: Vec<Arc<Generation>>,
}

impl Core {
    /// The core of `device` in PCI `slot`, reached through `version`'s
    /// interface; `msix_vectors` is what the function's MSI-X table holds.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        version: Version,
        slot: u8,
        hooks: Arc<dyn VmHooks>,
        msix_vectors: u16,
        doorbell: Box<dyn Doorbell>,
    ) -> Self {
        let name = device.name();
        let label = format!("{name} 00:{slot:02x}.0");
        let trace = Tracer::new(name, slot);
        let mut device = device;
        device.set_tracer(trace.clone());
        let thread_prefix = format!("{}-{slot:02x}", name.trim_start_matches("virtio-"));
        let reporter = Reporter {
            hooks: hooks.clone(),
            label: label.clone(),
            needs_reset: Arc::new(AtomicBool::new(false)),
            config: Arc::new(ConfigInterrupt {
                interrupt: std::sync::OnceLock::new(),
                vector: AtomicU16::new(NO_VECTOR),
            }),
            trace: trace.clone(),
        };
        let queues: Vec<QueueConfig> = device
            .queue_max_sizes()
            .iter()
            .map(|&m| QueueConfig::new(m))
            .collect();
        let nq = queues.len();
        Self {
            device,
            version,
            label,
            trace,
            offered_traced: AtomicBool::new(false),
            thread_prefix,
            hooks,
            reporter,
            isr: Arc::new(AtomicU8::new(0)),
            interrupt: None,
            msix_vectors,
            doorbell,
            notify_decoded: true,
            status: 0,
            features_refused: false,
            driver_features: 0,
            features_written: false,
            reset_unconfirmed: false,
            features_ok_unread: false,
            config_vector_unverified: false,
            queue_vectors_unverified: vec![false; nq],
            device_feature_select: 0,
            driver_feature_select: 0,
            queue_select: 0,
            queues,
            running: Vec::new(),
            activated: false,
            idle: Vec::new(),
            generation: None,
            stuck: Vec::new(),
            draining: Vec::new(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// This function's tracer: the register maps trace accesses with it.
    pub fn tracer(&self) -> &Tracer {
        &self.trace
    }

    /// A register map's access to register `name` (`-vvv`).
    pub fn trace_register(&self, write: bool, name: &str, v: u64) {
        let kind = if write { "write" } else { "read" };
        self.trace.event(
            Detail::Access,
            kind,
            &[("register", Value::S(name)), ("value", Value::U(v))],
            format_args!("{kind} {name} = {v:#x}"),
        );
    }

    /// A PCI configuration-space access to this function (`-vvv`).
    pub fn trace_pci_config(&self, write: bool, offset: usize, data: &[u8]) {
        if self.trace.wants(Detail::Access) {
            let kind = if write {
                "pci-config-write"
            } else {
                "pci-config-read"
            };
            let bytes: String = data.iter().map(|b| format!("{b:02x}")).collect();
            self.trace.event(
                Detail::Access,
                kind,
                &[
                    ("offset", Value::U(offset as u64)),
                    ("bytes", Value::S(&bytes)),
                ],
                format_args!("{kind} {offset:#04x} = {data:02x?}"),
            );
        }
    }

    /// `features` by name, with this device's own bits.
    fn feature_names(&self, features: u64) -> String {
        crate::trace::feature_names(features, self.device.feature_names())
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn hooks(&self) -> &Arc<dyn VmHooks> {
        &self.hooks
    }

    /// The ISR status byte the interrupts set.
    pub fn isr(&self) -> &Arc<AtomicU8> {
        &self.isr
    }

    /// Takes the register map's wired interrupts and hands the device its
    /// [`ConfigSignal`].
    pub fn connect_interrupts(&mut self, interrupt: Arc<Interrupt>) {
        let _ = self.reporter.config.interrupt.set(interrupt.clone());
        self.device.set_config_signal(self.reporter.config.clone());
        self.interrupt = Some(interrupt);
    }

    /// Reports a rule the driver broke at the register level.
    pub fn violate(&mut self, rule: Rule, detail: String) {
        self.reporter.raise(Violation::new(rule, detail));
    }

    // ---- device status (§2.1, §3.1.1) ----

    /// The status the driver reads, with DEVICE_NEEDS_RESET if flagged,
    /// and not 0 while a reset still waits for a worker to leave guest
    /// memory ([`Core::draining`]).
    pub fn status(&self) -> u8 {
        if self.draining.iter().any(|g| !g.drained()) {
            return status::DEVICE_NEEDS_RESET;
        }
        if self.reporter.needs_reset.load(Ordering::SeqCst) {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// A driver read of the status: what it reads, and the reads it owed
    /// (after a reset, after FEATURES_OK) are paid.
    pub fn read_status(&mut self) -> u8 {
        let s = self.status();
        if s == 0 {
            self.reset_unconfirmed = false;
            self.draining.clear();
        }
        self.features_ok_unread = false;
        s
    }

    fn driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0
    }

    /// The driver wrote `new` to the status; 0 resets. `notify_base` is
    /// where the register map's notifications land now, for DRIVER_OK.
    pub fn write_status(&mut self, new: u8, notify_base: u64) {
        let old = self.status();
        if new == 0 {
            self.trace.event(
                Detail::Life,
                "reset",
                &[],
                format_args!("reset by the driver"),
            );
            return self.reset();
        }
        if self.trace.wants(Detail::Life) {
            let (from, to) = (
                bit_names(old.into(), STATUS_BITS),
                bit_names(new.into(), STATUS_BITS),
            );
            self.trace.event(
                Detail::Life,
                "status",
                &[("from", Value::S(&from)), ("to", Value::S(&to))],
                format_args!("status {from} -> {to}"),
            );
        }
        if let Err((rule, detail)) = self.status_allowed(old, new) {
            return self.violate(rule, detail);
        }
        let added = new & !old;
        if added & status::DRIVER_OK != 0
            && (!self.owed_reads_paid("DRIVER_OK") || !self.vectors_verified())
        {
            return;
        }
        self.status = new & !status::DEVICE_NEEDS_RESET;
        if added & status::FEATURES_OK != 0
            && self.version == Version::Modern
            && !self.features_ok()
        {
            return;
        }
        if added & status::DRIVER_OK != 0 {
            self.activate(notify_base);
        }
    }

    /// Whether the driver read the status where it had to before going on
    /// to `step` (modern): reports the first read it skipped.
    fn owed_reads_paid(&mut self, step: &str) -> bool {
        if self.features_ok_unread {
            self.features_ok_unread = false;
            self.violate(
                Rule::FeaturesOkNotReread,
                format!("{step} without reading the status back after setting FEATURES_OK"),
            );
            return false;
        }
        true
    }

    /// The status rules (§2.1.1, §3.1.1, §4.1.4.3.2) for a write of `new`
    /// over `old`.
    fn status_allowed(&self, old: u8, new: u8) -> Result<(), (Rule, String)> {
        let what = || format!("status {old:#04x} -> {new:#04x}");
        let added = new & !old;
        if self.reset_unconfirmed && self.version == Version::Modern {
            return Err((
                Rule::ResetNotConfirmed,
                format!(
                    "{} before device_status read back 0 after the reset",
                    what()
                ),
            ));
        }
        if old & !new & !status::DEVICE_NEEDS_RESET != 0 {
            return Err((Rule::StatusClearedBit, what()));
        }
        // Writing the same status again re-initialises nothing.
        if old & status::FAILED != 0 && added != 0 {
            return Err((Rule::StatusFailedThenMore, what()));
        }
        // After a refusal the driver may only give up: FAILED, or a reset.
        if self.features_refused && added & !status::FAILED != 0 {
            return Err((
                Rule::FeaturesOkRefused,
                format!("{} after FEATURES_OK was refused", what()),
            ));
        }
        // Bits are added in order; a legacy driver has no FEATURES_OK
        // step, so one that sets it anyway is harmless and not required.
        let (ad, features_ok) = (status::ACKNOWLEDGE | status::DRIVER, status::FEATURES_OK);
        let driver_ok_needs = match self.version {
            Version::Modern => ad | features_ok,
            Version::Legacy => ad,
        };
        let needs = |bit: u8, before: u8| added & bit != 0 && new & before != before;
        if needs(status::DRIVER, status::ACKNOWLEDGE)
            || (self.version == Version::Modern && needs(features_ok, ad))
            || needs(status::DRIVER_OK, driver_ok_needs)
            || added & status::DEVICE_NEEDS_RESET != 0
        {
            return Err((Rule::StatusOrder, what()));
        }
        Ok(())
    }

    /// FEATURES_OK was just set (modern): accept the features or leave the
    /// bit clear, so a lenient run's driver sees the refusal (§2.2.2);
    /// going on regardless is `FeaturesOkRefused`. Whether it accepted.
    fn features_ok(&mut self) -> bool {
        self.status &= !status::FEATURES_OK;
        self.features_refused = true;
        let (accepted, offered) = (self.driver_features, self.offered());
        let refusal = if accepted & !offered != 0 {
            Some((
                Rule::FeatureNotOffered,
                format!("driver accepted {accepted:#x}, device offered {offered:#x}"),
            ))
        } else if accepted & feature::VERSION_1 == 0 {
            Some((
                Rule::FeatureVersion1Missing,
                format!("driver features {accepted:#x} lack VIRTIO_F_VERSION_1"),
            ))
        } else {
            self.missing_prerequisite(accepted)
                .map(|d| (Rule::FeatureMissingPrerequisite, d))
        };
        if let Some((rule, detail)) = refusal {
            self.violate(rule, detail);
            return false;
        }
        self.status |= status::FEATURES_OK;
        self.features_refused = false;
        self.features_ok_unread = true;
        let names = self.feature_names(accepted);
        self.trace.event(
            Detail::Life,
            "features-negotiated",
            &[("features", Value::S(&names))],
            format_args!("features negotiated: {names}"),
        );
        true
    }

    // ---- features (§2.2) ----

    /// The first feature in `accepted` whose prerequisites are not all
    /// accepted too (§2.2.1), described.
    fn missing_prerequisite(&self, accepted: u64) -> Option<String> {
        let prerequisites = self.device.feature_prerequisites();
        let (f, needs) = prerequisites
            .iter()
            .find(|&&(f, needs)| accepted & f != 0 && accepted & needs != needs)?;
        Some(format!(
            "driver accepted {accepted:#x}: feature {f:#x} needs {needs:#x}"
        ))
    }

    /// Feature bits offered: the device's plus VERSION_1 for a modern
    /// driver; the low 32 (all a legacy driver can see) for a legacy one.
    pub fn offered(&self) -> u64 {
        match self.version {
            Version::Modern => self.device.features() | feature::VERSION_1,
            Version::Legacy => self.device.features() & 0xffff_ffff,
        }
    }

    /// 32 bits of the offered features; `select` 0 is bits 0..32.
    pub fn device_features(&self, select: u32) -> u32 {
        if !self.offered_traced.swap(true, Ordering::Relaxed) {
            let names = self.feature_names(self.offered());
            self.trace.event(
                Detail::Life,
                "features-offered",
                &[("features", Value::S(&names))],
                format_args!("features offered: {names}"),
            );
        }
        feature_word(self.offered(), select)
    }

    /// 32 bits of what the driver accepted.
    pub fn driver_features(&self, select: u32) -> u32 {
        feature_word(self.driver_features, select)
    }

    /// The driver accepts feature bits `select`·32 .. +32. Modern drivers
    /// are checked when they set FEATURES_OK; legacy ones, having no such
    /// step, here, and only offered bits are kept.
    pub fn write_driver_features(&mut self, select: u32, v: u32) {
        let what = format!("driver features[{select}] = {v:#x}");
        if self.features_refused {
            return self.violate(
                Rule::FeaturesOkRefused,
                format!("{what} after FEATURES_OK was refused"),
            );
        }
        if self.status & status::DRIVER == 0 {
            let status = self.status;
            return self.violate(
                Rule::FeatureBeforeDriver,
                format!("{what} with status {status:#04x}"),
            );
        }
        let (locked, rule, step) = match self.version {
            Version::Modern => (
                self.status & status::FEATURES_OK != 0,
                Rule::FeatureAfterFeaturesOk,
                "FEATURES_OK",
            ),
            Version::Legacy => (
                self.driver_ok(),
                Rule::LegacyFeatureAfterDriverOk,
                "DRIVER_OK",
            ),
        };
        // Only new bits are forbidden; the same value again accepts nothing.
        if locked && v != self.driver_features(select) {
            return self.violate(rule, format!("{what} after {step}"));
        }
        if locked {
            return;
        }
        let Some(shift) = select.checked_mul(32).filter(|&s| s < 64) else {
            if v != 0 {
                self.violate(
                    Rule::FeatureNotOffered,
                    format!("driver features[{select}] = {v:#x}: no features exist there"),
                );
            }
            return;
        };
        let mut word = u64::from(v) << shift;
        if self.version == Version::Legacy {
            let offered = self.offered();
            if word & !offered != 0 {
                self.violate(
                    Rule::FeatureNotOffered,
                    format!("driver accepted {word:#x}, device offered {offered:#x}"),
                );
            }
            word &= offered;
            self.features_written = true;
            let accepted = (self.driver_features & !(0xffff_ffff << shift)) | word;
            if let Some(detail) = self.missing_prerequisite(accepted) {
                self.violate(Rule::FeatureMissingPrerequisite, detail);
            }
        }
        self.driver_features = (self.driver_features & !(0xffff_ffff << shift)) | word;
        if self.trace.wants(Detail::Life) {
            let names = self.feature_names(self.driver_features);
            self.trace.event(
                Detail::Life,
                "features-accepted",
                &[
                    ("select", Value::U(select.into())),
                    ("features", Value::S(&names)),
                ],
                format_args!("driver accepts {names}"),
            );
        }
    }

    // ---- queues (§2.4, §4.1.4.3) ----

    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    pub fn queue_select(&self) -> u16 {
        self.queue_select
    }

    pub fn select_queue(&mut self, q: u16) {
        self.queue_select = q;
    }

    /// The selected queue's configuration, if it exists.
    pub fn queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The selected queue for a write, or a violation naming `what`.
    fn selected_for(&mut self, what: &str) -> Option<usize> {
        let q = usize::from(self.queue_select);
        if q < self.queues.len() {
            return Some(q);
        }
        let n = self.queues.len();
        self.violate(
            Rule::QueueSelectOutOfRange,
            format!("{what} for queue {q}, device has {n} queues"),
        );
        None
    }

    /// Whether queue `q` may be (re)configured now; reports why not (and
    /// lets a mere warning through).
    fn may_set_up(&mut self, q: usize, what: &str) -> bool {
        if self.version == Version::Modern && !self.owed_reads_paid(&format!("queue {q}: {what}")) {
            return false;
        }
        let failed = if self.driver_ok() {
            Some((Rule::QueueSetupAfterDriverOk, "after DRIVER_OK"))
        } else {
            match self.version {
                Version::Modern if self.features_refused => {
                    Some((Rule::FeaturesOkRefused, "after FEATURES_OK was refused"))
                }
                Version::Modern if self.status & status::FEATURES_OK == 0 => {
                    Some((Rule::QueueSetupBeforeFeaturesOk, "before FEATURES_OK"))
                }
                Version::Legacy if !self.features_written => Some((
                    Rule::LegacyQueuePfnBeforeFeatures,
                    "before the features were written",
                )),
                _ => None,
            }
        };
        match failed {
            Some((rule, when)) => {
                self.violate(rule, format!("queue {q}: {what} {when}"));
                !rule.level().is_fatal()
            }
            None => true,
        }
    }

    /// A modern driver writes one field of the selected queue. The MSI-X
    /// vector may be (un)mapped at any time (§4.1.5.1.2.1: the device
    /// supports it), so Linux's teardown after a reset, which writes
    /// NO_VECTOR with the status at 0, is fine; rewriting queue_enable = 1
    /// on an enabled queue changes nothing.
    pub fn write_queue(&mut self, field: QueueField, v: u32) {
        let what = format!("{field:?} = {v:#x}");
        let Some(q) = self.selected_for(&what) else {
            return;
        };
        if field == QueueField::Vector {
            let vector = self.checked_vector(v as u16);
            self.trace.event(
                Detail::Life,
                "vector",
                &[
                    ("queue", Value::U(q as u64)),
                    ("vector", Value::U(vector.into())),
                ],
                format_args!(
                    "queue {q} interrupts on MSI-X vector {}",
                    vector_name(vector)
                ),
            );
            self.queues[q].vector = vector;
            self.queue_vectors_unverified[q] = vector != NO_VECTOR;
            return;
        }
        if field == QueueField::Enable && v == 1 && self.queues[q].enabled {
            return;
        }
        if !self.may_set_up(q, &what) {
            return;
        }
        if self.queues[q].enabled {
            return self.violate(
                Rule::QueueSetupAfterDriverOk,
                format!("queue {q} changed while enabled: {what}"),
            );
        }
        let r = &mut self.queues[q];
        match field {
            QueueField::Size => {
                let (size, max) = (v as u16, r.max);
                if size == 0 || !size.is_power_of_two() || size > max {
                    return self.violate(
                        Rule::QueueSizeInvalid,
                        format!("queue {q} size {size}, maximum {max}"),
                    );
                }
                r.size = size;
            }
            QueueField::Vector => {}
            QueueField::Enable => self.enable_queue(q, v),
            QueueField::Address { ring, high } => {
                let addr = match ring {
                    0 => &mut r.desc,
                    1 => &mut r.avail,
                    _ => &mut r.used,
                };
                *addr = if high {
                    (*addr & 0xffff_ffff) | (u64::from(v) << 32)
                } else {
                    r.written |= 1 << ring;
                    (*addr & !0xffff_ffff) | u64::from(v)
                };
            }
        }
    }

    fn enable_queue(&mut self, q: usize, v: u32) {
        if v != 1 {
            return self.violate(
                Rule::QueueEnableValue,
                format!("queue {q}: queue_enable = {v}"),
            );
        }
        let r = self.queues[q];
        if r.written != 0b111 {
            let missing: Vec<&str> = (0..3)
                .filter(|i| r.written & (1 << i) == 0)
                .map(|i| RINGS[i])
                .collect();
            return self.violate(
                Rule::QueueEnabledIncomplete,
                format!("queue {q} enabled without its {}", missing.join(", ")),
            );
        }
        self.enable(q, r);
    }

    /// A legacy driver places the selected queue's rings at `desc`,
    /// `avail`, `used` (derived from its page number), or with `None`
    /// takes them away.
    pub fn place_legacy_queue(&mut self, rings: Option<(u64, u64, u64)>, what: &str) {
        let Some(q) = self.selected_for(what) else {
            return;
        };
        let Some((desc, avail, used)) = rings else {
            // Taking a queue away is allowed whenever it is not in use.
            if self.driver_ok() {
                self.may_set_up(q, what);
            } else {
                self.trace.event(
                    Detail::Life,
                    "queue-disabled",
                    &[("queue", Value::U(q as u64))],
                    format_args!("queue {q} disabled"),
                );
                self.queues[q] = QueueConfig::new(self.queues[q].max);
            }
            return;
        };
        if !self.may_set_up(q, what) {
            return;
        }
        let placed = QueueConfig {
            desc,
            avail,
            used,
            written: 0b111,
            ..QueueConfig::new(self.queues[q].max)
        };
        self.enable(q, placed);
    }

    /// Enables queue `q` as `r` says if its rings lie in guest memory;
    /// otherwise reports why and leaves the queue as it was.
    fn enable(&mut self, q: usize, r: QueueConfig) {
        match self.checked_queue(q, &r) {
            Ok(_) => {
                self.trace.event(
                    Detail::Life,
                    "queue",
                    &[
                        ("queue", Value::U(q as u64)),
                        ("size", Value::U(r.size.into())),
                        ("desc", Value::Addr(r.desc)),
                        ("avail", Value::Addr(r.avail)),
                        ("used", Value::Addr(r.used)),
                        ("vector", Value::U(r.vector.into())),
                    ],
                    format_args!(
                        "queue {q} enabled: size {}, desc {:#x}, avail {:#x}, used {:#x}, vector {}",
                        r.size,
                        r.desc,
                        r.avail,
                        r.used,
                        vector_name(r.vector)
                    ),
                );
                self.queues[q] = QueueConfig { enabled: true, ..r };
            }
            Err(v) => self.reporter.raise(v),
        }
    }

    /// A [`CheckedQueue`] over queue `q` as `r` describes it.
    fn checked_queue(&self, q: usize, r: &QueueConfig) -> Result<CheckedQueue, Violation> {
        let mem = self.hooks.memory();
        let index = q as u16;
        CheckedQueue::new(
            index,
            r.max,
            r.size,
            r.desc,
            r.avail,
            r.used,
            self.driver_features,
            &mem,
        )
        .map_err(|v| v.on_queue(index))
    }

    // ---- interrupts (§4.1.5) ----

    /// The configuration-change vector (`msix_config`).
    pub fn config_vector(&self) -> u16 {
        self.reporter.config.vector.load(Ordering::SeqCst)
    }

    pub fn set_config_vector(&mut self, v: u16) {
        let v = self.checked_vector(v);
        self.trace.event(
            Detail::Life,
            "config-vector",
            &[("vector", Value::U(v.into()))],
            format_args!("configuration changes on MSI-X vector {}", vector_name(v)),
        );
        self.config_vector_unverified = v != NO_VECTOR;
        self.reporter.config.vector.store(v, Ordering::SeqCst);
    }

    /// A driver read of `msix_config`: the mapping is verified.
    pub fn read_config_vector(&mut self) -> u16 {
        self.config_vector_unverified = false;
        self.config_vector()
    }

    /// A driver read of the selected queue's `queue_msix_vector`.
    pub fn read_queue_vector(&mut self) -> Option<u16> {
        let q = usize::from(self.queue_select);
        let v = self.queues.get(q)?.vector;
        self.queue_vectors_unverified[q] = false;
        Some(v)
    }

    /// At DRIVER_OK: every vector mapped since the reset was read back
    /// (§4.1.5.1.2.2). Reports the first that was not.
    fn vectors_verified(&mut self) -> bool {
        let unverified = if self.config_vector_unverified {
            Some(format!("msix_config = {}", self.config_vector()))
        } else {
            let q = self.queue_vectors_unverified.iter().position(|&u| u);
            q.map(|q| format!("queue {q}'s queue_msix_vector = {}", self.queues[q].vector))
        };
        match unverified {
            Some(what) => {
                self.violate(
                    Rule::MsixVectorNotReadBack,
                    format!("DRIVER_OK with {what} never read back"),
                );
                false
            }
            None => true,
        }
    }

    fn checked_vector(&mut self, v: u16) -> u16 {
        let n = self.msix_vectors;
        if v != NO_VECTOR && v >= n {
            self.violate(
                Rule::MsixVectorInvalid,
                format!("vector {v}, function has {n}"),
            );
            return NO_VECTOR;
        }
        v
    }

    /// Sends `vector`'s message now: the driver unmasked it with an
    /// interrupt pending.
    pub fn deliver(&self, vector: u16) {
        if let Some(i) = &self.interrupt {
            i.deliver(vector);
        }
    }

    /// A read of the ISR status: returns it and clears it (§4.1.4.5).
    pub fn read_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    // ---- device configuration (§2.5, §4.1.3.1) ----

    /// A driver read of the device configuration at `offset`.
    pub fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if self.config_access_allowed(offset, data.len(), false) {
            self.device.read_config(offset as usize, data);
        }
        self.trace_config("config-read", offset, data);
    }

    /// A driver write of the device configuration at `offset`.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.trace_config("config-write", offset, data);
        if self.config_access_allowed(offset, data.len(), true) {
            self.device.write_config(offset as usize, data);
        }
    }

    fn trace_config(&self, kind: &str, offset: u64, data: &[u8]) {
        if self.trace.wants(Detail::Access) {
            let bytes: String = data.iter().map(|b| format!("{b:02x}")).collect();
            let value = if self.device.config_is_random(offset as usize, data.len()) {
                Value::Random(&bytes)
            } else {
                Value::S(&bytes)
            };
            self.trace.event(
                Detail::Access,
                kind,
                &[("offset", Value::U(offset)), ("bytes", value)],
                format_args!("{kind} {offset:#x} = {data:02x?}"),
            );
        }
    }

    /// Checks a configuration access against the device's layout: the
    /// field must exist (its feature offered), be accessed at its natural
    /// width (modern), and not be written, or for some fields touched at
    /// all, before FEATURES_OK (modern). Whether to carry it out.
    fn config_access_allowed(&mut self, offset: u64, len: usize, write: bool) -> bool {
        let fields = self.device.config_fields();
        if fields.is_empty() {
            return true;
        }
        let dir = if write { "write" } else { "read" };
        let at = format!("{len}-byte {dir} at config offset {offset:#x}");
        let end = offset + len as u64;
        // Every field the access touches: one for a modern driver (the
        // width rule keeps it inside one), possibly more for a legacy one,
        // which may use any width (§4.1.4.10 of 1.2).
        let touched: Vec<_> = fields
            .iter()
            .filter(|f| {
                let start = u64::from(f.offset);
                start < end && offset < start + u64::from(f.len)
            })
            .collect();
        let Some(f) = touched.first().copied() else {
            self.violate(Rule::AccessOffset, format!("{at}: no field there"));
            return true;
        };
        let modern = self.version == Version::Modern;
        let before_features_ok = modern && self.status & status::FEATURES_OK == 0;
        let rel = offset.saturating_sub(u64::from(f.offset));
        let offered = self.offered();
        let broken = if let Some(g) = touched
            .iter()
            .find(|g| g.feature != 0 && offered & g.feature == 0)
        {
            Some((
                Rule::ConfigFieldNotOffered,
                format!(
                    "{at} ({}): its feature {:#x} is not offered",
                    g.name, g.feature
                ),
            ))
        } else if modern
            && (u64::from(f.offset) > offset
                || !natural_width(u64::from(f.elem), rel, len as u64, u64::from(f.len)))
        {
            Some((
                Rule::ConfigAccessWidth,
                format!("{at}: {} has {}-byte elements", f.name, f.elem),
            ))
        } else if before_features_ok && write {
            Some((
                Rule::ConfigWriteBeforeFeaturesOk,
                format!("{at} ({}) before FEATURES_OK", f.name),
            ))
        } else if before_features_ok && f.after_features_ok {
            Some((
                Rule::BlkWritebackBeforeFeaturesOk,
                format!("{at} ({}) before FEATURES_OK", f.name),
            ))
        } else {
            None
        };
        match broken {
            Some((rule, detail)) => {
                self.violate(rule, detail);
                false
            }
            None => true,
        }
    }

    // ---- notifications and workers ----

    /// A notification for queue `q` that KVM did not take (before
    /// DRIVER_OK, or where the [`Doorbell`] could not be wired); `base` is
    /// where the register map's notifications land.
    pub fn notify(&mut self, q: u16, base: u64) {
        if !self.driver_ok() {
            let status = self.status;
            let what = format!("notify for queue {q}, status {status:#04x}");
            if self.version == Version::Modern {
                return self.violate(Rule::NotifyBeforeDriverOk, what);
            }
            // A transitional device must let a legacy driver use its
            // queues before DRIVER_OK (§3.1.2): run them now.
            self.violate(Rule::LegacyNotifyBeforeDriverOk, what);
            self.start_queues(base);
        }
        let enabled = self.queues.get(usize::from(q)).is_some_and(|r| r.enabled);
        match self.running.iter().find(|r| r.index == q) {
            Some(r) => {
                let _ = r.kick.write(1);
            }
            // Its worker could not start (a host failure the driver was
            // told of with DEVICE_NEEDS_RESET): not the driver's fault.
            None if enabled && self.reporter.needs_reset.load(Ordering::SeqCst) => {
                log::debug!("{}: notify for queue {q}, which has no worker", self.label);
            }
            None => self.violate(
                Rule::NotifyBadQueue,
                format!("notify for queue {q}, which is not enabled"),
            ),
        }
    }

    /// The register map's notify area moved (the guest moved its BAR or
    /// switched its decoding): `base` is where it decodes now, `None`
    /// while it decodes nowhere. Running queues' notifications follow: the
    /// doorbell is disconnected from the old place and connected at the
    /// new one, so a kick at the old address no longer reaches a worker.
    pub fn move_notify(&mut self, base: Option<u64>) {
        self.notify_decoded = base.is_some();
        if self.running.is_empty() {
            return;
        }
        self.doorbell.disconnect(self.hooks.as_ref(), &self.label);
        if let Some(base) = base {
            self.connect_doorbell(base);
        }
    }

    /// Connects the doorbell at `base` for every running queue.
    fn connect_doorbell(&mut self, base: u64) {
        let kicks: Vec<(u16, &EventFd)> = self.running.iter().map(|r| (r.index, &r.kick)).collect();
        let names = Names {
            label: &self.label,
            threads: &self.thread_prefix,
        };
        self.doorbell
            .connect(self.hooks.as_ref(), names, base, &kicks);
    }

    /// DRIVER_OK: the device starts work.
    fn activate(&mut self, notify_base: u64) {
        if self.version == Version::Legacy && self.trace.wants(Detail::Life) {
            // A legacy driver has no FEATURES_OK: what it accepted stands.
            let names = self.feature_names(self.driver_features);
            self.trace.event(
                Detail::Life,
                "features-negotiated",
                &[("features", Value::S(&names))],
                format_args!("features negotiated: {names}"),
            );
        }
        self.start_queues(notify_base);
        let running = self.running.len();
        self.trace.event(
            Detail::Life,
            "driver-ok",
            &[("workers", Value::U(running as u64))],
            format_args!("DRIVER_OK, {running} queue workers running"),
        );
    }

    /// One worker per enabled queue that has none yet, then notifications
    /// for all of them. The device is activated once per reset, at
    /// DRIVER_OK or at a legacy driver's first early notification; queues
    /// enabled after that get their handler from `idle`.
    fn start_queues(&mut self, notify_base: u64) {
        let Some(interrupt) = self.interrupt.clone() else {
            log::error!("{}: DRIVER_OK before interrupts were wired", self.label);
            return;
        };
        if !self.activated {
            if !self.room_for_workers() {
                return;
            }
            self.activated = true;
            self.generation = Some(Generation::new(self.label.clone()));
            self.idle = self
                .device
                .activate(self.driver_features)
                .into_iter()
                .map(Some)
                .collect();
        }
        let before = self.running.len();
        for q in 0..self.idle.len() {
            if !self.queues.get(q).is_some_and(|r| r.enabled) {
                continue;
            }
            let Some(handler) = self.idle[q].take() else {
                continue;
            };
            let checked = self
                .checked_queue(q, &self.queues[q])
                .and_then(|queue| queue.check_fresh(&self.hooks.memory()).map(|()| queue));
            let queue = match checked {
                Ok(queue) => queue,
                Err(v) => {
                    self.reporter.raise(v);
                    break;
                }
            };
            match self.start_worker(queue, handler, &interrupt) {
                Ok(r) => self.running.push(r),
                Err(e) => {
                    let what = format!("cannot start queue {q}'s worker: {e}");
                    self.reporter.device_failed(&what);
                    break;
                }
            }
        }
        if self.running.len() == before {
            return;
        }
        // Whatever started gets its notifications, even after an error.
        if before > 0 {
            self.doorbell.disconnect(self.hooks.as_ref(), &self.label);
        }
        if self.notify_decoded {
            self.connect_doorbell(notify_base);
        }
    }

    /// Whether the workers earlier resets left behind (stuck in host I/O)
    /// leave room for a new activation's; if not, the device needs a
    /// reset (said once per device: the guest may try again and again).
    fn room_for_workers(&mut self) -> bool {
        self.stuck.retain(|w| !w.has_ended());
        if self.stuck.len() < MAX_STUCK {
            return true;
        }
        let label = &self.label;
        crate::guestlog::warn(
            &format!("{label} too many stuck workers"),
            format_args!(
                "{label}: {} queue workers are still stuck in host I/O from earlier resets; no new ones start until they finish, and the device needs a reset",
                self.stuck.len()
            ),
        );
        self.reporter.needs_reset.store(true, Ordering::SeqCst);
        self.reporter.config.raise();
        false
    }

    fn start_worker(
        &self,
        mut queue: CheckedQueue,
        handler: Box<dyn QueueHandler>,
        interrupt: &Arc<Interrupt>,
    ) -> std::io::Result<Running> {
        let index = queue.index();
        if let Some(g) = &self.generation {
            queue.set_gate(Gate::new(g.clone(), index));
        }
        queue.set_tracer(self.trace.clone());
        let kick = EventFd::new(libc::EFD_NONBLOCK)?;
        let reporter = self.reporter.clone();
        let violations: ViolationSink = Arc::new(move |v: Violation| reporter.raise(v));
        let reporter = self.reporter.clone();
        let failed: FailureSink = Arc::new(move |what: String| reporter.device_failed(&what));
        let worker = Worker::spawn(WorkerSetup {
            name: format!("{}-q{index}", self.thread_prefix),
            device_type: self.device.device_type().into(),
            queue,
            handler,
            kick: kick.try_clone()?,
            vector: self.queues[usize::from(index)].vector,
            interrupt: interrupt.clone(),
            violations,
            failed,
            mem: self.hooks.memory(),
        })?;
        Ok(Running {
            index,
            worker,
            kick,
        })
    }

    /// Stops the workers, their notifications first, within a bounded
    /// time: the activation's gates close (waiting, up to [`GATE_WAIT`],
    /// for workers inside guest memory to leave it), then each worker gets
    /// until [`STOP_WAIT`] to end. One still busy in host I/O then is left
    /// behind in `stuck`: whatever it completes is discarded, and
    /// it never writes guest memory, the used ring or an interrupt again.
    fn stop_workers(&mut self) {
        if !self.running.is_empty() {
            self.doorbell.disconnect(self.hooks.as_ref(), &self.label);
        }
        if let Some(g) = self.generation.take() {
            if self.version == Version::Modern {
                if !g.close(GATE_WAIT) {
                    crate::guestlog::warn(
                        &format!("{} reset draining", self.label),
                        format_args!(
                            "{}: a queue worker is still in guest memory {GATE_WAIT:?} into the reset (host I/O the kernel made wait); device_status reads non-zero until it leaves",
                            self.label
                        ),
                    );
                    self.draining.push(g);
                }
            } else if !g.close(GATE_WAIT_LEGACY) {
                log::error!(
                    "{}: a queue worker is still at work in guest memory {GATE_WAIT_LEGACY:?} into the reset (a handler blocked without leaving its gate); going on without it",
                    self.label
                );
            }
        }
        let deadline = Instant::now() + STOP_WAIT;
        for r in self.running.drain(..) {
            if let Err(worker) = r.worker.stop(deadline) {
                let label = &self.label;
                crate::guestlog::warn(
                    &format!("{label} stuck worker"),
                    format_args!(
                        "{label}: queue {}'s worker is still busy in host I/O {STOP_WAIT:?} after being told to stop; going on without it (what it completes is discarded)",
                        r.index
                    ),
                );
                self.stuck.push(worker);
            }
        }
    }

    /// Stops the workers and returns to the state after power-on.
    fn reset(&mut self) {
        self.stop_workers();
        self.offered_traced.store(false, Ordering::Relaxed);
        self.activated = false;
        self.idle.clear();
        self.device.reset();
        self.status = 0;
        self.features_refused = false;
        self.reporter.needs_reset.store(false, Ordering::SeqCst);
        self.driver_features = 0;
        self.features_written = false;
        self.reset_unconfirmed = true;
        self.features_ok_unread = false;
        self.config_vector_unverified = false;
        self.queue_vectors_unverified.fill(false);
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.reporter
            .config
            .vector
            .store(NO_VECTOR, Ordering::SeqCst);
        self.queue_select = 0;
        self.isr.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max);
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// An MSI-X vector as a driver developer reads it.
fn vector_name(v: u16) -> String {
    if v == NO_VECTOR {
        "none".into()
    } else {
        v.to_string()
    }
}

/// §4.1.3.1: 8-bit fields take 8-bit accesses, 16-bit fields aligned
/// 16-bit ones, 32- and 64-bit fields aligned 32-bit ones. `rel` is the
/// access's offset into the field, `field_len` the field's size.
fn natural_width(elem: u64, rel: u64, len: u64, field_len: u64) -> bool {
    let width = elem.clamp(1, 4);
    len == width && rel.is_multiple_of(width) && rel + len <= field_len
}

/// Bits `select`·32 .. +32 of `features`; 0 beyond bit 63.
fn feature_word(features: u64, select: u32) -> u32 {
    match select {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
