//! The transport core's rules and life cycle, once for both interfaces,
//! driven through its driver operations (no register map): status order,
//! feature negotiation, queue setup, workers and their doorbell, reset,
//! `--lenient`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::pci::msix::Msix;
use crate::virtio::transport::testing::{fake, wait_for, FakeHooks, Log, Stall, RAM};

const S: u8 = status::ACKNOWLEDGE;
const SD: u8 = S | status::DRIVER;
const SDF: u8 = SD | status::FEATURES_OK;
const SDFO: u8 = SDF | status::DRIVER_OK;
const SDO: u8 = SD | status::DRIVER_OK;
/// Where the fake doorbell's notify area is.
const BASE: u64 = 0x3000;
/// Ring addresses of a 64-entry queue in the fake's RAM.
const RINGS: (u64, u64, u64) = (0x10000, 0x10400, 0x11000);

/// What a [`FakeDoorbell`] was asked: the queues and base of each
/// connect, and how many disconnects.
#[derive(Default)]
struct Bells {
    connected: Vec<(u64, Vec<u16>)>,
    disconnects: usize,
    /// Clones of the kick eventfds of the last connect.
    kicks: Vec<EventFd>,
}

struct FakeDoorbell(Arc<Mutex<Bells>>);

impl Doorbell for FakeDoorbell {
    fn connect(&mut self, _: &dyn VmHooks, names: Names, base: u64, kicks: &[(u16, &EventFd)]) {
        let slot = &names.label[names.label.len() - 4..names.label.len() - 2];
        assert_eq!(names.threads, format!("fake-{slot}"));
        let mut b = self.0.lock().unwrap();
        b.connected
            .push((base, kicks.iter().map(|(q, _)| *q).collect()));
        b.kicks = kicks.iter().map(|(_, k)| k.try_clone().unwrap()).collect();
    }
    fn disconnect(&mut self, _: &dyn VmHooks, _: &str) {
        self.0.lock().unwrap().disconnects += 1;
    }
}

struct Rig {
    core: Core,
    hooks: Arc<FakeHooks>,
    log: Arc<Mutex<Log>>,
    counts: Arc<Vec<std::sync::atomic::AtomicUsize>>,
    bells: Arc<Mutex<Bells>>,
}

/// A core over a fake device with `queues` queues, its interrupts wired
/// (INTx and, for modern, `queues + 1` MSI-X vectors, MSI-X off).
fn rig(version: Version, queues: usize, lenient: bool) -> Rig {
    rig_in_slot(version, queues, lenient, 3)
}

/// [`rig`] in a slot of its own, for tests that look at thread names
/// while other tests run.
fn rig_in_slot(version: Version, queues: usize, lenient: bool, slot: u8) -> Rig {
    rig_stalling(version, queues, lenient, slot, None)
}

/// [`rig_in_slot`] whose handlers block on `stall`.
fn rig_stalling(
    version: Version,
    queues: usize,
    lenient: bool,
    slot: u8,
    stall: Option<Arc<Stall>>,
) -> Rig {
    let hooks = Arc::new(FakeHooks::new(lenient));
    let (mut dev, log, counts) = fake(queues);
    dev.stall = stall;
    let bells = Arc::new(Mutex::new(Bells::default()));
    let vectors = match version {
        Version::Modern => queues as u16 + 1,
        Version::Legacy => 0,
    };
    let mut core = Core::new(
        Box::new(dev),
        version,
        slot,
        hooks.clone(),
        vectors,
        Box::new(FakeDoorbell(bells.clone())),
    );
    core.connect_interrupts(Arc::new(Interrupt {
        msix: Arc::new(std::sync::Mutex::new(Msix::new(vectors))),
        vectors: Vec::new(),
        intx: hooks.intx_irqfd(3).unwrap(),
        isr: core.isr().clone(),
    }));
    Rig {
        core,
        hooks,
        log,
        counts,
        bells,
    }
}

impl Rig {
    fn status(&mut self, s: u8) {
        self.core.write_status(s, BASE);
    }

    /// Negotiates `features` the way each interface does.
    fn negotiate(&mut self, features: u64) {
        self.status(SD);
        self.core.write_driver_features(0, features as u32);
        if self.core.version == Version::Modern {
            self.core.write_driver_features(1, (features >> 32) as u32);
            self.status(SDF);
            self.core.read_status();
        }
    }

    /// Places queue `q`'s rings at [`RINGS`] (shifted by `q` pages) and
    /// enables it.
    fn place(&mut self, q: u16) {
        self.core.select_queue(q);
        let shift = u64::from(q) * 0x4000;
        let (d, a, u) = (RINGS.0 + shift, RINGS.1 + shift, RINGS.2 + shift);
        match self.core.version {
            Version::Modern => {
                for (ring, addr) in [d, a, u].into_iter().enumerate() {
                    let ring = ring as u8;
                    let lo = QueueField::Address { ring, high: false };
                    self.core.write_queue(lo, addr as u32);
                    let hi = QueueField::Address { ring, high: true };
                    self.core.write_queue(hi, 0);
                }
                self.core.write_queue(QueueField::Enable, 1);
            }
            Version::Legacy => self.core.place_legacy_queue(Some((d, a, u)), "test"),
        }
    }

    fn driver_ok(&mut self) {
        let s = match self.core.version {
            Version::Modern => SDFO,
            Version::Legacy => SDO,
        };
        self.status(s);
    }

    fn take(&self) -> Vec<Rule> {
        self.hooks.take()
    }

    fn running_queues(&self) -> Vec<u16> {
        self.core.running.iter().map(|q| q.index).collect()
    }
}

const BOTH: [Version; 2] = [Version::Modern, Version::Legacy];

#[test]
fn status_bits_are_added_in_order_and_never_cleared() {
    for v in BOTH {
        let mut r = rig(v, 1, false);
        r.status(S | status::DRIVER_OK);
        assert_eq!(r.take(), [Rule::StatusOrder], "{v:?}");
        r.status(status::DRIVER);
        assert_eq!(
            r.take(),
            [Rule::StatusOrder],
            "{v:?}: DRIVER before ACKNOWLEDGE"
        );
        r.status(SD);
        r.status(S);
        assert_eq!(r.take(), [Rule::StatusClearedBit], "{v:?}");
        r.status(SD | status::DEVICE_NEEDS_RESET);
        assert_eq!(
            r.take(),
            [Rule::StatusOrder],
            "{v:?}: driver sets NEEDS_RESET"
        );
        r.status(SD | status::FAILED);
        r.status(SD | status::FAILED | status::DRIVER_OK);
        assert_eq!(r.take(), [Rule::StatusFailedThenMore], "{v:?}");
        assert_eq!(r.core.status(), SD | status::FAILED);
    }
    // Only a modern driver needs FEATURES_OK before DRIVER_OK.
    let mut r = rig(Version::Modern, 1, false);
    r.status(SD);
    r.status(SDO);
    assert_eq!(r.take(), [Rule::StatusOrder]);
    r.status(S | status::FEATURES_OK);
    let mut r = rig(Version::Legacy, 1, false);
    r.status(SD);
    r.status(SDO);
    assert!(r.take().is_empty());
}

#[test]
fn modern_features_are_checked_at_features_ok() {
    let mut r = rig(Version::Modern, 1, false);
    assert_eq!(r.core.device_features(0), 0b101);
    assert_eq!(r.core.device_features(1), 1, "VERSION_1");
    assert_eq!(r.core.device_features(2), 0);
    r.status(SD);
    r.core.write_driver_features(0, 0b110);
    assert!(r.take().is_empty(), "checked at FEATURES_OK, not before");
    r.core.write_driver_features(1, 1);
    r.status(SDF);
    assert_eq!(r.take(), [Rule::FeatureNotOffered]);
    assert_eq!(r.core.status(), SD, "FEATURES_OK refused: left clear");
    r.status(SD | status::DRIVER_OK);
    assert_eq!(r.take(), [Rule::FeaturesOkRefused]);
    r.core.write_queue(QueueField::Size, 16);
    assert_eq!(r.take(), [Rule::FeaturesOkRefused]);

    let mut r = rig(Version::Modern, 1, false);
    r.status(SD);
    r.core.write_driver_features(0, 0b100);
    r.status(SDF);
    assert_eq!(r.take(), [Rule::FeatureVersion1Missing]);
    r.core.write_driver_features(0, 0b100);
    assert_eq!(
        r.take(),
        [Rule::FeaturesOkRefused],
        "no renegotiation without a reset"
    );
    r.status(SD | status::FAILED);
    assert!(r.take().is_empty(), "giving up is allowed");

    let mut r = rig(Version::Modern, 1, false);
    r.core.write_driver_features(0, 0b100);
    assert_eq!(r.take(), [Rule::FeatureBeforeDriver]);
    r.status(SD);
    r.core.write_driver_features(5, 1);
    assert_eq!(
        r.take(),
        [Rule::FeatureNotOffered],
        "no features at select 5"
    );
    r.core.write_driver_features(5, 0);
    assert!(r.take().is_empty());

    let mut r = rig(Version::Modern, 1, false);
    r.negotiate(feature::VERSION_1 | 0b100);
    assert_eq!(r.core.status(), SDF);
    assert_eq!(r.core.driver_features(0), 0b100);
    r.core.write_driver_features(0, 0b101);
    assert_eq!(r.take(), [Rule::FeatureAfterFeaturesOk]);
    assert_eq!(r.core.driver_features(0), 0b100, "unchanged");
    r.driver_ok();
    assert_eq!(
        r.log.lock().unwrap().activated,
        Some(feature::VERSION_1 | 0b100)
    );
}

#[test]
fn legacy_features_are_checked_when_written() {
    let mut r = rig(Version::Legacy, 1, false);
    assert_eq!(r.core.device_features(0), 0b101, "no VERSION_1");
    assert_eq!(r.core.device_features(1), 0);
    r.status(SD);
    r.core.write_driver_features(0, 0b110);
    assert_eq!(r.take(), [Rule::FeatureNotOffered]);
    assert_eq!(r.core.driver_features(0), 0b100, "only offered bits kept");
    r.core.write_driver_features(0, 0b001);
    r.driver_ok();
    assert!(r.take().is_empty());
    assert_eq!(r.log.lock().unwrap().activated, Some(0b001));
    r.core.write_driver_features(0, 0b101);
    assert_eq!(r.take(), [Rule::LegacyFeatureAfterDriverOk]);
}

#[test]
fn modern_queue_setup_rules() {
    let mut r = rig(Version::Modern, 2, false);
    r.status(SD);
    r.core.write_queue(QueueField::Size, 16);
    assert_eq!(r.take(), [Rule::QueueSetupBeforeFeaturesOk]);
    r.negotiate(feature::VERSION_1);
    for bad in [0, 3, 128] {
        r.core.write_queue(QueueField::Size, bad);
        assert_eq!(r.take(), [Rule::QueueSizeInvalid], "size {bad}");
    }
    r.core.write_queue(QueueField::Size, 16);
    assert_eq!(r.core.queue().map(|q| q.size), Some(16));
    r.core.write_queue(QueueField::Vector, 3);
    assert_eq!(r.take(), [Rule::MsixVectorInvalid], "3 vectors: 0..=2");
    assert_eq!(r.core.queue().map(|q| q.vector), Some(NO_VECTOR));
    r.core.write_queue(QueueField::Vector, 2);
    r.core.write_queue(QueueField::Enable, 0);
    assert_eq!(r.take(), [Rule::QueueEnableValue]);
    let lo = |ring| QueueField::Address { ring, high: false };
    r.core.write_queue(lo(0), 0x10000);
    r.core.write_queue(QueueField::Enable, 1);
    assert_eq!(r.take(), [Rule::QueueEnabledIncomplete]);
    r.core.write_queue(lo(1), 0x10400);
    r.core.write_queue(lo(2), RAM as u32);
    r.core.write_queue(QueueField::Enable, 1);
    assert_eq!(r.take(), [Rule::QueueAddressOutsideMemory]);
    assert_eq!(r.core.queue().map(|q| q.enabled), Some(false));
    r.core.write_queue(lo(2), 0x11000);
    r.core.write_queue(QueueField::Enable, 1);
    assert!(r.take().is_empty());
    assert_eq!(r.core.queue().map(|q| q.enabled), Some(true));
    r.core.write_queue(QueueField::Size, 32);
    assert_eq!(
        r.take(),
        [Rule::QueueSetupAfterDriverOk],
        "changed while enabled"
    );
    r.core.select_queue(2);
    r.core.write_queue(QueueField::Size, 16);
    assert_eq!(r.take(), [Rule::QueueSelectOutOfRange]);
    assert!(r.core.queue().is_none());
    r.core.select_queue(0);
    r.driver_ok();
    assert_eq!(
        r.take(),
        [Rule::MsixVectorNotReadBack],
        "vector 2 never read"
    );
    assert_eq!(r.core.read_queue_vector(), Some(2));
    r.driver_ok();
    assert!(r.take().is_empty());
    // Remapping a vector and rewriting queue_enable = 1 stay allowed.
    r.core.write_queue(QueueField::Vector, 1);
    r.core.write_queue(QueueField::Enable, 1);
    assert!(r.take().is_empty());
    r.core.write_queue(QueueField::Size, 16);
    assert_eq!(r.take(), [Rule::QueueSetupAfterDriverOk]);
}

/// The reads a modern driver owes (§3.1.1 step 6, §4.1.4.3.2) and the
/// teardown Linux does after a reset.
#[test]
fn modern_reads_after_reset_and_features_ok() {
    let mut r = rig(Version::Modern, 1, false);
    r.status(SD);
    r.core.write_driver_features(1, 1);
    r.status(SDF);
    r.core.select_queue(0);
    r.core.write_queue(QueueField::Size, 16);
    assert_eq!(r.take(), [Rule::FeaturesOkNotReread]);
    r.core.read_status();
    r.core.write_queue(QueueField::Size, 16);
    assert!(r.take().is_empty());

    let mut r = rig(Version::Modern, 1, false);
    r.negotiate(feature::VERSION_1);
    r.place(0);
    r.driver_ok();
    assert!(r.take().is_empty());
    r.status(0);
    // Linux's del_vqs after the reset: select, unmap the vector, read it.
    r.core.select_queue(0);
    r.core.write_queue(QueueField::Vector, u32::from(NO_VECTOR));
    assert_eq!(r.core.read_queue_vector(), Some(NO_VECTOR));
    assert!(r.take().is_empty(), "teardown after a reset is allowed");
    r.status(S);
    assert_eq!(r.take(), [Rule::ResetNotConfirmed]);
    assert_eq!(r.core.read_status(), 0);
    r.status(S);
    assert!(r.take().is_empty());

    // Identical rewrites are not changes.
    let mut r = rig(Version::Modern, 1, false);
    r.negotiate(feature::VERSION_1 | 0b100);
    r.core.write_driver_features(0, 0b100);
    assert!(r.take().is_empty());
    r.status(SDF | status::FAILED);
    r.status(SDF | status::FAILED);
    assert!(r.take().is_empty());
}

/// A legacy driver may use a queue before DRIVER_OK (§3.1.2): the device
/// warns and runs it; queues placed later start at DRIVER_OK.
#[test]
fn legacy_queues_may_run_before_driver_ok() {
    let mut r = rig_in_slot(Version::Legacy, 2, false, 0x1e);
    r.negotiate(0);
    r.place(0);
    r.core.notify(0, BASE);
    assert_eq!(r.take(), [Rule::LegacyNotifyBeforeDriverOk]);
    wait_for("queue 0's worker", || {
        r.counts[0].load(Ordering::SeqCst) > 0
    });
    assert_eq!(r.log.lock().unwrap().activated, Some(0));
    r.place(1);
    r.driver_ok();
    assert!(r.take().is_empty());
    let bells = r.bells.lock().unwrap();
    assert_eq!(bells.connected, [(BASE, vec![0]), (BASE, vec![0, 1])]);
    assert_eq!(bells.disconnects, 1);
}

/// DRIVER_OK with a used ring whose flags the driver did not zero.
#[test]
fn used_flags_must_be_zero_at_driver_ok() {
    let mut r = rig(Version::Modern, 1, false);
    r.negotiate(feature::VERSION_1);
    r.place(0);
    use vm_memory::Bytes;
    r.hooks
        .mem
        .write_obj(1u16, vm_memory::GuestAddress(RINGS.2))
        .unwrap();
    r.driver_ok();
    assert_eq!(r.take(), [Rule::UsedFlagsNotZero]);
    assert!(r.running_queues().is_empty());
}

#[test]
fn legacy_queue_placement_rules() {
    let mut r = rig(Version::Legacy, 1, false);
    r.status(SD);
    r.place(0);
    assert_eq!(r.take(), [Rule::LegacyQueuePfnBeforeFeatures]);
    r.core.place_legacy_queue(None, "queue_pfn = 0");
    assert!(r.take().is_empty(), "taking a queue away needs no features");
    r.negotiate(0);
    r.core.place_legacy_queue(
        Some((RAM as u64, RAM as u64 + 0x400, RAM as u64 + 0x1000)),
        "t",
    );
    assert_eq!(r.take(), [Rule::QueueAddressOutsideMemory]);
    r.place(0);
    assert!(r.take().is_empty());
    let placed = *r.core.queue().unwrap();
    assert!(placed.enabled);
    assert_eq!((placed.desc, placed.size), (RINGS.0, 64));
    r.core.place_legacy_queue(Some((RAM as u64, 0, 0)), "t");
    assert_eq!(r.take(), [Rule::QueueAddressOutsideMemory]);
    assert_eq!(
        *r.core.queue().unwrap(),
        placed,
        "a refused placement changes nothing"
    );
    r.core.select_queue(1);
    r.place(1);
    assert_eq!(r.take(), [Rule::QueueSelectOutOfRange]);
    r.core.select_queue(0);
    r.driver_ok();
    r.core.place_legacy_queue(None, "queue_pfn = 0");
    assert_eq!(r.take(), [Rule::QueueSetupAfterDriverOk]);
    assert!(r.core.queue().unwrap().enabled);
}

/// DRIVER_OK starts a worker for each enabled queue only, named after the
/// device, and hands exactly those to the doorbell; a trapped
/// notification kicks the worker; reset stops it all.
#[test]
fn workers_run_the_enabled_queues_until_reset() {
    for v in BOTH {
        let mut r = rig_in_slot(v, 3, false, 0x1f);
        r.negotiate(feature::VERSION_1 & r.core.offered());
        r.core.notify(0, BASE);
        let early = match v {
            // A legacy driver may kick early: warned, and the device runs.
            Version::Legacy => vec![Rule::LegacyNotifyBeforeDriverOk, Rule::NotifyBadQueue],
            Version::Modern => vec![Rule::NotifyBeforeDriverOk],
        };
        assert_eq!(r.take(), early, "{v:?}");
        r.place(0);
        r.place(2);
        r.driver_ok();
        assert!(r.take().is_empty(), "{v:?}");
        assert_eq!(r.bells.lock().unwrap().connected, [(BASE, vec![0, 2])]);
        wait_for("a worker named after its device", || {
            thread_names().contains(&"fake-1f-q2".to_string())
        });
        let kick = r.bells.lock().unwrap().kicks[1].try_clone().unwrap();
        kick.write(1).unwrap();
        wait_for("queue 2's worker", || {
            r.counts[2].load(Ordering::SeqCst) > 0
        });
        r.core.notify(0, BASE);
        wait_for("queue 0's worker", || {
            r.counts[0].load(Ordering::SeqCst) > 0
        });
        assert_eq!(
            r.counts[1].load(Ordering::SeqCst),
            0,
            "{v:?}: queue 1 has no rings"
        );
        r.core.notify(1, BASE);
        assert_eq!(r.take(), [Rule::NotifyBadQueue], "{v:?}");

        r.status(0);
        assert!(r.take().is_empty());
        assert_eq!(r.bells.lock().unwrap().disconnects, 1);
        assert_eq!(r.log.lock().unwrap().resets, 1);
        assert!(!thread_names().iter().any(|n| n.starts_with("fake-1f-q")));
        assert_eq!(r.core.status(), 0);
        assert_eq!(r.core.driver_features(0), 0);
        assert_eq!(r.core.queue_select(), 0);
        assert!(!r.core.queue().unwrap().enabled);
        assert_eq!(r.core.config_vector(), NO_VECTOR);
        // After a reset the driver has to negotiate again first.
        r.core.read_status();
        r.status(SD);
        r.place(0);
        let again = match v {
            Version::Modern => Rule::QueueSetupBeforeFeaturesOk,
            Version::Legacy => Rule::LegacyQueuePfnBeforeFeatures,
        };
        let got = r.take();
        assert!(
            !got.is_empty() && got.iter().all(|&g| g == again),
            "{v:?}: {got:?}"
        );
    }
}

/// The names of this process's threads, as /proc shows them.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect()
}

#[test]
fn lenient_sets_needs_reset_and_interrupts_until_reset() {
    for v in BOTH {
        let mut r = rig(v, 1, true);
        r.core.violate(Rule::ReadOnlyWrite, "test".into());
        assert_eq!(r.take(), [Rule::ReadOnlyWrite]);
        assert_ne!(r.core.status() & status::DEVICE_NEEDS_RESET, 0, "{v:?}");
        assert_eq!(r.hooks.pulses(), 1, "{v:?}: configuration interrupt");
        assert_eq!(r.core.read_isr(), ISR_CONFIG);
        assert_eq!(r.core.read_isr(), 0, "read clears");
        r.status(0);
        assert_eq!(r.core.status(), 0);
    }
    // Strict: reported, nothing else.
    let mut r = rig(Version::Modern, 1, false);
    r.core.violate(Rule::ReadOnlyWrite, "test".into());
    assert_eq!(r.take(), [Rule::ReadOnlyWrite]);
    assert_eq!(r.core.status(), 0);
    assert_eq!(r.hooks.pulses(), 0);
    // A warning, even lenient, leaves the device alone.
    let mut r = rig(Version::Modern, 1, true);
    r.core.violate(Rule::IsrWrite, "test".into());
    assert_eq!(r.take(), [Rule::IsrWrite]);
    assert_eq!(r.core.status(), 0);
    assert_eq!(r.hooks.pulses(), 0);
}

#[test]
fn reports_name_the_device_and_queue() {
    let mut r = rig(Version::Modern, 1, false);
    r.negotiate(feature::VERSION_1);
    r.core.select_queue(0);
    r.core.write_queue(
        QueueField::Address {
            ring: 0,
            high: false,
        },
        0x10001,
    );
    r.core.write_queue(
        QueueField::Address {
            ring: 1,
            high: false,
        },
        0x10400,
    );
    r.core.write_queue(
        QueueField::Address {
            ring: 2,
            high: false,
        },
        0x11000,
    );
    r.core.write_queue(QueueField::Enable, 1);
    let v = r.hooks.take_violations();
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].rule, v[0].device.as_str(), v[0].queue),
        (Rule::QueueAddressAlignment, "fake 00:03.0", Some(0))
    );
}

#[test]
fn the_device_gets_a_config_signal_on_the_config_vector() {
    let mut r = rig(Version::Modern, 1, false);
    r.core.set_config_vector(1);
    assert_eq!(r.core.config_vector(), 1);
    r.core.set_config_vector(9);
    assert_eq!(r.take(), [Rule::MsixVectorInvalid]);
    assert_eq!(r.core.config_vector(), NO_VECTOR);
    // MSI-X is off: the signal goes out as INTx with ISR bit 1.
    r.core.reporter.config.raise();
    assert_eq!(r.hooks.pulses(), 1);
    r.core.reporter.config.clear();
    assert_eq!(r.core.read_isr(), 0);
}

/// A worker that cannot start is no silent dead queue: the driver sees
/// DEVICE_NEEDS_RESET and a configuration interrupt.
#[test]
fn a_worker_that_cannot_start_tells_the_driver() {
    let mut r = rig_in_slot(Version::Modern, 1, false, 0x1d);
    r.negotiate(feature::VERSION_1);
    r.place(0);
    *crate::virtio::worker::FAIL_SPAWN_OF.lock().unwrap() = Some("fake-1d-".into());
    r.driver_ok();
    assert!(r.running_queues().is_empty());
    assert_ne!(r.core.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.hooks.pulses(), 1, "configuration interrupt");
    r.core.notify(0, BASE);
    assert!(r.take().is_empty(), "a host failure is no driver's fault");
    r.status(0);
    assert_eq!(r.core.status(), 0, "a reset clears it");
}

impl Rig {
    /// Negotiates VERSION_1, places queue 0, DRIVER_OK, and kicks it.
    fn start_and_kick(&mut self) {
        if self.core.version == Version::Modern {
            self.core.read_status();
        }
        self.negotiate(feature::VERSION_1);
        self.place(0);
        self.driver_ok();
        let bells = self.bells.lock().unwrap();
        bells.kicks[0].write(1).unwrap();
    }
}

/// A rig in `slot` whose queue 0 runs and blocks on `stall`; then the
/// driver resets it: how long the reset took the vCPU.
fn reset_with_a_blocked_worker(v: Version, slot: u8, stall: &Arc<Stall>) -> (Rig, Duration) {
    let mut r = rig_stalling(v, 1, false, slot, Some(stall.clone()));
    r.start_and_kick();
    wait_for("the worker blocks", || {
        stall.stuck.load(Ordering::SeqCst) == 1
    });
    let t = std::time::Instant::now();
    r.status(0);
    (r, t.elapsed())
}

/// A worker stuck in host I/O holds up neither the reset nor the next
/// activation, and what it does when the I/O returns reaches nobody: no
/// interrupt, no report.
#[test]
fn a_reset_goes_on_without_a_worker_stuck_in_host_io() {
    for v in BOTH {
        let stall = Stall::new(1);
        let slot = if v == Version::Modern { 0x1e } else { 0x1f };
        let (mut r, took) = reset_with_a_blocked_worker(v, slot, &stall);
        assert!(
            took < STOP_WAIT + Duration::from_millis(500),
            "{v:?}: the reset took {took:?}"
        );
        assert_eq!(r.core.stuck.len(), 1, "{v:?}");

        // The next activation has a worker of its own.
        r.start_and_kick();
        wait_for("the new worker runs", || {
            r.counts[0].load(Ordering::SeqCst) == 2
        });
        assert_eq!(r.running_queues(), [0]);

        stall.release();
        wait_for("the stuck call returns", || {
            stall.revoked.load(Ordering::SeqCst) == 1
        });
        wait_for("the stuck worker ends", || {
            r.core.stuck.iter().all(|w| w.has_ended())
        });
        assert!(r.take().is_empty(), "{v:?}: a stale worker reported");
        assert_eq!(r.hooks.pulses(), 0, "{v:?}: a stale worker interrupted");
        assert_eq!(r.core.read_isr(), 0, "{v:?}");
        assert_eq!(r.core.status() & status::DEVICE_NEEDS_RESET, 0, "{v:?}");
    }
}

/// A worker blocked *inside* its gate (a cached block read the kernel
/// made wait): a modern reset leaves the vCPU after [`GATE_WAIT`] but
/// completes for the driver only when the worker has left, device_status
/// reading non-zero until then; what the worker finishes reaches nobody.
/// A legacy reset, without that handshake, goes on after
/// [`GATE_WAIT_LEGACY`].
#[test]
fn a_modern_reset_completes_when_a_worker_inside_leaves() {
    for v in BOTH {
        let stall = Stall::inside(1);
        let slot = if v == Version::Modern { 0x1a } else { 0x1b };
        let (mut r, took) = reset_with_a_blocked_worker(v, slot, &stall);
        let wait = match v {
            Version::Modern => GATE_WAIT,
            Version::Legacy => GATE_WAIT_LEGACY,
        };
        assert!(
            took >= wait && took < wait + STOP_WAIT + Duration::from_millis(500),
            "{v:?}: the reset took {took:?}"
        );
        if v == Version::Modern {
            assert_ne!(r.core.read_status(), 0, "the reset is still under way");
            assert_ne!(r.core.read_status(), 0, "still");
            stall.release();
            wait_for("the reset completes", || r.core.read_status() == 0);
        } else {
            assert_eq!(r.core.read_status(), 0, "no handshake to wait in");
            stall.release();
        }
        wait_for("the stale call returns", || {
            stall.revoked.load(Ordering::SeqCst) == 1
        });
        wait_for("the stuck worker ends", || {
            r.core.stuck.iter().all(|w| w.has_ended())
        });
        assert!(r.take().is_empty(), "{v:?}: a stale worker reported");
        assert_eq!(r.hooks.pulses(), 0, "{v:?}: a stale worker interrupted");

        // The next activation runs as usual.
        r.start_and_kick();
        wait_for("the new worker runs", || {
            r.counts[0].load(Ordering::SeqCst) == 2
        });
        assert_eq!(r.running_queues(), [0]);
    }
}

/// A guest that resets a device on a hung disk again and again gets
/// DEVICE_NEEDS_RESET, not a new thread each time, once [`MAX_STUCK`]
/// workers are stuck; they are forgotten once their I/O returns.
#[test]
fn stuck_workers_are_bounded() {
    let stall = Stall::new(usize::MAX);
    let mut r = rig_stalling(Version::Modern, 1, false, 0x1c, Some(stall.clone()));
    for n in 1..=MAX_STUCK {
        r.start_and_kick();
        wait_for("the worker blocks", || {
            stall.stuck.load(Ordering::SeqCst) == n
        });
        r.status(0);
        assert_eq!(r.core.stuck.len(), n);
    }
    r.core.read_status();
    r.negotiate(feature::VERSION_1);
    r.place(0);
    r.driver_ok();
    assert!(r.running_queues().is_empty(), "no worker beyond the bound");
    assert_ne!(r.core.status() & status::DEVICE_NEEDS_RESET, 0);
    r.core.notify(0, BASE);
    assert!(r.take().is_empty(), "a host failure is no driver's fault");

    stall.release();
    wait_for("the stuck workers end", || {
        r.core.stuck.iter().all(|w| w.has_ended())
    });
    r.status(0);
    r.start_and_kick();
    assert_eq!(r.running_queues(), [0]);
    assert!(r.core.stuck.is_empty());
}
