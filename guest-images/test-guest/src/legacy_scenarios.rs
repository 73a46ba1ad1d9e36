//! Scenarios for virtio-rng behind the legacy (0.9.5) PCI transport
//! (`--legacy --rng`, 1af4:1005): no capabilities, one I/O BAR holding the
//! whole register file, reached with port I/O from ring 3.
//!
//! - `virtio-rng-legacy`: a well-behaved legacy driver (reset, ACKNOWLEDGE,
//!   DRIVER, guest features, queue 0 by PFN, DRIVER_OK) reads 32 random
//!   bytes twice: `GUEST-RNG-LEGACY a=<hex> b=<hex>`.
//! - `bad-legacy-queue-pfn-before-features`: writes queue 0's PFN before
//!   ever writing GUEST_FEATURES (`LegacyQueuePfnBeforeFeatures`).

use crate::cmdline::Cmdline;
use crate::pci;
use crate::port::{inb, inl, inw, outb, outl, outw};
use crate::power;
use crate::scenarios::{finish, Scenario};
use crate::virtio::legacy as reg;
use crate::virtio::{self, buffer, status, Pages, Vq, DESC_WRITE, RING_BYTES, VENDOR};
use crate::virtio_scenarios::fail;
use crate::{print, println};

/// The transitional PCI device id of virtio-rng.
pub const RNG_LEGACY_DEVICE: u16 = 0x1005;

const RANDOM_BYTES: usize = 32;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("virtio-rng-legacy", rng_legacy),
    (
        "bad-legacy-queue-pfn-before-features",
        bad_legacy_queue_pfn_before_features,
    ),
    (
        "bad-legacy-notify-before-driver-ok",
        bad_legacy_notify_before_driver_ok,
    ),
    (
        "bad-legacy-feature-after-driver-ok",
        bad_legacy_feature_after_driver_ok,
    ),
    ("bad-legacy-header-access", bad_legacy_header_access),
];

/// The legacy rings (page-aligned, room for 256 entries).
static RING: Pages<RING_BYTES> = Pages::new();

/// Runs `name` if it is one of ours; returns if it is not.
pub fn run(name: &str, cmdline: &Cmdline) {
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
        f(cmdline)
    }
}

/// A legacy virtio function: its I/O BAR.
pub(crate) struct Legacy {
    pub io: u16,
}

impl Legacy {
    /// Start line, PCI listing, the legacy rng found, I/O space and bus
    /// mastering enabled, the device reset and ACKNOWLEDGE | DRIVER set.
    pub(crate) fn start() -> Legacy {
        println!("GUEST-TEST-START");
        pci::enumerate();
        let io = virtio::legacy_function(VENDOR, RNG_LEGACY_DEVICE, "virtio-rng");
        let d = Legacy { io };
        println!("GUEST-VIRTIO-LEGACY io={:#x}", d.io);
        d.set_status(0);
        d.set_status(status::ACKNOWLEDGE);
        d.set_status(status::ACKNOWLEDGE | status::DRIVER);
        d
    }

    pub(crate) fn status(&self) -> u8 {
        inb(self.io + reg::STATUS)
    }

    pub(crate) fn set_status(&self, s: u8) {
        outb(self.io + reg::STATUS, s)
    }

    /// Queue 0 selected; its (fixed) size, which must fit [`RING`].
    pub(crate) fn queue0(&self) -> Vq {
        outw(self.io + reg::QUEUE_SEL, 0);
        let size = inw(self.io + reg::QUEUE_NUM);
        if size == 0 || size > 256 || !size.is_power_of_two() {
            println!("GUEST-FAIL legacy queue size {size}");
            power::poweroff()
        }
        Vq::legacy_at(0, size, RING.addr())
    }

    pub(crate) fn set_pfn(&self, vq: &Vq) {
        outl(self.io + reg::QUEUE_PFN, (vq.desc >> 12) as u32);
    }

    pub(crate) fn notify(&self, vq: &Vq) {
        outw(self.io + reg::QUEUE_NOTIFY, vq.index);
    }
}

/// One request for 32 device-writable bytes in buffer `n`.
pub(crate) fn read_random(d: &Legacy, vq: &mut Vq, n: u64) -> [u8; RANDOM_BYTES] {
    let head = (n % u64::from(vq.size)) as u16;
    let addr = buffer(n);
    vq.set_desc(head, addr, RANDOM_BYTES as u32, DESC_WRITE, 0);
    vq.offer(head);
    d.notify(vq);
    let Some((id, len)) = vq.wait_used() else {
        fail("no used buffer from the legacy virtio-rng")
    };
    if id != u32::from(head) || len as usize != RANDOM_BYTES {
        println!("GUEST-FAIL used id={id} len={len}, wanted id={head} len={RANDOM_BYTES}");
        power::poweroff()
    }
    let mut out = [0u8; RANDOM_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = virtio::read8(addr + i as u64);
    }
    out
}

fn print_hex(bytes: &[u8]) {
    for b in bytes {
        print!("{b:02x}");
    }
}

/// The well-behaved legacy driver's set-up: no features, queue 0 placed
/// by PFN, DRIVER_OK.
pub(crate) fn ready() -> (Legacy, Vq) {
    let d = Legacy::start();
    let host = inl(d.io + reg::HOST_FEATURES);
    // virtio-rng has no device features a driver needs.
    outl(d.io + reg::GUEST_FEATURES, 0);
    println!("GUEST-VIRTIO-FEATURES offered={host:#x} accepted=0x0");
    let vq = d.queue0();
    d.set_pfn(&vq);
    d.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    (d, vq)
}

/// The well-behaved legacy driver: two requests of 32 bytes.
fn rng_legacy(_: &Cmdline) -> ! {
    let (d, mut vq) = ready();
    let a = read_random(&d, &mut vq, 0);
    let b = read_random(&d, &mut vq, 1);
    print!("GUEST-RNG-LEGACY a=");
    print_hex(&a);
    print!(" b=");
    print_hex(&b);
    println!();
    println!("GUEST-STATUS {:#04x}", d.status());
    if a == b {
        fail("the two random reads are equal");
    }
    finish()
}

/// QUEUE_PFN before GUEST_FEATURES was ever written.
fn bad_legacy_queue_pfn_before_features(_: &Cmdline) -> ! {
    let d = Legacy::start();
    let vq = d.queue0();
    d.set_pfn(&vq);
    crate::scenarios::after_bad(|| d.status())
}

/// Uses queue 0 before DRIVER_OK, as old legacy drivers did (§3.1.2): the
/// device must serve it, and warns.
fn bad_legacy_notify_before_driver_ok(_: &Cmdline) -> ! {
    let d = Legacy::start();
    outl(d.io + reg::GUEST_FEATURES, 0);
    let mut vq = d.queue0();
    d.set_pfn(&vq);
    let a = read_random(&d, &mut vq, 0);
    print!("GUEST-RNG-EARLY a=");
    print_hex(&a);
    println!();
    crate::scenarios::after_bad(|| d.status())
}

/// Changes its features once the device runs.
fn bad_legacy_feature_after_driver_ok(_: &Cmdline) -> ! {
    let d = Legacy::start();
    outl(d.io + reg::GUEST_FEATURES, 0);
    let vq = d.queue0();
    d.set_pfn(&vq);
    d.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    // Any other value than the one accepted before DRIVER_OK.
    let late = inl(d.io + reg::HOST_FEATURES).max(1);
    outl(d.io + reg::GUEST_FEATURES, late);
    crate::scenarios::after_bad(|| d.status())
}

/// Reads QUEUE_NUM (16 bits) with a 32-bit access.
fn bad_legacy_header_access(_: &Cmdline) -> ! {
    let d = Legacy::start();
    core::hint::black_box(inl(d.io + reg::QUEUE_NUM));
    crate::scenarios::after_bad(|| d.status())
}
