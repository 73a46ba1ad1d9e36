//! Scenarios for the launcher's virtio-rng (`--rng`, modern PCI transport):
//! `virtio-rng`, a well-behaved driver reading random bytes, and one
//! `bad-<rule>` scenario per strict-mode rule an rng driver can break,
//! named after the launcher's `Rule` in kebab case.
//!
//! Every scenario prints `GUEST-TEST-START` and the PCI functions it finds.
//! A `bad-*` scenario then breaks its rule once and prints
//! `GUEST-AFTER-BAD`; if the guest is still running (strict mode stops the
//! launcher, `--lenient` does not) it waits a little for the device to
//! notice (queue violations are found by the device's worker thread after
//! the notification), prints `GUEST-STATUS <device_status>` and powers off.

use crate::cmdline::Cmdline;
use crate::pci;
use crate::power;
use crate::scenarios::{finish, rdtsc, Scenario};
use crate::virtio::{
    self, buffer, common, status, Device, Pages, Vq, DESC_INDIRECT, DESC_NEXT, DESC_WRITE,
    F_VERSION_1, RING_BYTES, RNG_DEVICE,
};
use crate::{print, println};

/// Queue size the driver asks for (the device allows up to 256).
const QSIZE: u16 = 8;
/// Bytes of randomness per request.
const RANDOM_BYTES: usize = 32;
/// Far outside guest RAM (64 GiB), for the "outside memory" rules.
const NOT_RAM: u64 = 0x10_0000_0000;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("virtio-rng", rng),
    ("virtio-rng-reset", rng_reset),
    ("devices-up", devices_up),
];

/// The second set of rings `virtio-rng-reset` uses after its reset.
static RING2: Pages<RING_BYTES> = Pages::new();
/// The console's transmitq rings for `devices-up`.
static RING3: Pages<RING_BYTES> = Pages::new();

/// A misbehaviour: sets the device up as far as needed, breaks one rule,
/// and returns the device so the status can be reported.
type Bad = fn() -> Device;

pub const BAD: &[(&str, Bad)] = &[
    ("bad-status-order", bad_status_order),
    ("bad-status-cleared-bit", bad_status_cleared_bit),
    ("bad-status-failed-then-more", bad_status_failed_then_more),
    ("bad-feature-not-offered", bad_feature_not_offered),
    ("bad-features-ok-refused", bad_features_ok_refused),
    (
        "bad-feature-after-features-ok",
        bad_feature_after_features_ok,
    ),
    ("bad-feature-version1-missing", bad_feature_version1_missing),
    (
        "bad-queue-setup-after-driver-ok",
        bad_queue_setup_after_driver_ok,
    ),
    (
        "bad-queue-setup-before-features-ok",
        bad_queue_setup_before_features_ok,
    ),
    (
        "bad-queue-select-out-of-range",
        bad_queue_select_out_of_range,
    ),
    ("bad-queue-size-invalid", bad_queue_size_invalid),
    ("bad-queue-address-alignment", bad_queue_address_alignment),
    (
        "bad-queue-address-outside-memory",
        bad_queue_address_outside_memory,
    ),
    ("bad-queue-enable-value", bad_queue_enable_value),
    ("bad-queue-enabled-incomplete", bad_queue_enabled_incomplete),
    ("bad-access-width", bad_access_width),
    ("bad-access-offset", bad_access_offset),
    ("bad-read-only-write", bad_read_only_write),
    ("bad-isr-write", bad_isr_write),
    ("bad-notify-before-driver-ok", bad_notify_before_driver_ok),
    ("bad-notify-bad-queue", bad_notify_bad_queue),
    ("bad-pci-cfg-access", bad_pci_cfg_access),
    ("bad-msix-vector-invalid", bad_msix_vector_invalid),
    ("bad-avail-index-jump", bad_avail_index_jump),
    (
        "bad-descriptor-index-out-of-range",
        bad_descriptor_index_out_of_range,
    ),
    ("bad-descriptor-loop", bad_descriptor_loop),
    (
        "bad-descriptor-outside-memory",
        bad_descriptor_outside_memory,
    ),
    ("bad-descriptor-zero-length", bad_descriptor_zero_length),
    ("bad-write-before-read", bad_write_before_read),
    ("bad-indirect-not-negotiated", bad_indirect_not_negotiated),
    ("bad-wrong-direction", bad_wrong_direction),
    ("bad-pci-cfg-length", bad_pci_cfg_length),
    ("bad-reset-not-confirmed", bad_reset_not_confirmed),
    ("bad-features-ok-not-reread", bad_features_ok_not_reread),
    ("bad-feature-before-driver", bad_feature_before_driver),
    (
        "bad-msix-vector-not-read-back",
        bad_msix_vector_not_read_back,
    ),
    ("bad-used-flags-not-zero", bad_used_flags_not_zero),
    ("bad-capability-write", bad_capability_write),
    ("bad-avail-index-decrement", bad_avail_index_decrement),
    ("bad-avail-flags-invalid", bad_avail_flags_invalid),
    ("bad-buffer-reused-in-flight", bad_buffer_reused_in_flight),
];

/// Runs `name` if it is one of ours; returns if it is not.
pub fn run(name: &str, cmdline: &Cmdline) {
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
        f(cmdline)
    }
    if let Some((_, f)) = BAD.iter().find(|(n, _)| *n == name) {
        let d = f();
        crate::scenarios::after_bad(|| d.status())
    }
}

/// Ends a scenario that could not do its job.
pub fn fail(msg: &str) -> ! {
    println!("GUEST-FAIL {msg}");
    power::poweroff()
}

/// Start line, PCI listing, the rng function probed.
fn start() -> Device {
    println!("GUEST-TEST-START");
    pci::enumerate();
    Device::probe(RNG_DEVICE).unwrap_or_else(|| fail("no virtio-rng (1af4:1044) on bus 0"))
}

/// A fully initialised device (VERSION_1 only) with queue 0 live.
pub(crate) fn ready() -> (Device, Vq) {
    let d = start();
    d.init();
    let mut vq = Vq::new(0, QSIZE);
    d.setup_queue(&mut vq);
    d.driver_ok();
    (d, vq)
}

/// One request for `RANDOM_BYTES` device-writable bytes in buffer `n`.
pub(crate) fn read_random(d: &Device, vq: &mut Vq, n: u64) -> [u8; RANDOM_BYTES] {
    let head = (n % u64::from(vq.size)) as u16;
    let addr = buffer(n);
    vq.set_desc(head, addr, RANDOM_BYTES as u32, DESC_WRITE, 0);
    vq.offer(head);
    d.notify(vq);
    let Some((id, len)) = vq.wait_used() else {
        fail("no used buffer from virtio-rng")
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

pub(crate) fn print_hex(bytes: &[u8]) {
    for b in bytes {
        print!("{b:02x}");
    }
}

/// The well-behaved driver: two requests of 32 bytes.
fn rng(_: &Cmdline) -> ! {
    let (d, mut vq) = ready();
    // The PCI-configuration-access window, used properly: num_queues.
    let common_off = (d.common.addr - d.bar0) as u32;
    let nq = d.pci_cfg_read(common_off + common::NUM_QUEUES as u32, 2);
    println!("GUEST-PCI-CFG num_queues={nq}");
    let t = rdtsc();
    for _ in 0..100 {
        core::hint::black_box(d.status());
    }
    println!("GUEST-MMIO-BENCH tsc_per_read={}", (rdtsc() - t) / 100);
    let t = rdtsc();
    let a = read_random(&d, &mut vq, 0);
    let b = read_random(&d, &mut vq, 1);
    let cycles = rdtsc() - t;
    print!("GUEST-RNG a=");
    print_hex(&a);
    print!(" b=");
    print_hex(&b);
    println!();
    println!("GUEST-RNG-TSC {cycles}");
    println!("GUEST-STATUS {:#04x}", d.status());
    if a == b {
        fail("the two random reads are equal");
    }
    finish()
}

/// A driver that resets the device between two reads (§4.1.4.3.2): 32
/// bytes, status 0 (which must read back 0 with queue 0 disabled), a
/// second initialisation from scratch with new rings, 32 bytes again.
fn rng_reset(_: &Cmdline) -> ! {
    let (d, mut vq) = ready();
    let a = read_random(&d, &mut vq, 0);
    d.set_status(0);
    let s = d.status();
    d.w16(common::QUEUE_SELECT, 0);
    let enabled = d.r16(common::QUEUE_ENABLE);
    println!("GUEST-RNG-AFTER-RESET status={s:#04x} queue_enable={enabled}");
    if s != 0 {
        fail("device_status is not 0 after the reset");
    }
    if enabled != 0 {
        fail("queue 0 still enabled after the reset");
    }
    d.init();
    let mut vq2 = Vq::at(0, QSIZE, RING2.addr());
    d.setup_queue(&mut vq2);
    d.driver_ok();
    let b = read_random(&d, &mut vq2, 2);
    print!("GUEST-RNG-RESET a=");
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

/// Brings up virtio-rng and both queues of virtio-console, prints
/// `GUEST-WAITING` and spins: for tests that look at a running launcher
/// with its queue workers started.
fn devices_up(_: &Cmdline) -> ! {
    let (_rng, _vq) = ready();
    let c = Device::probe(virtio::CONSOLE_DEVICE)
        .unwrap_or_else(|| fail("no virtio-console (1af4:1043) on bus 0"));
    c.init();
    let mut rx = Vq::at(0, QSIZE, RING2.addr());
    c.setup_queue(&mut rx);
    let mut tx = Vq::at(1, QSIZE, RING3.addr());
    c.setup_queue(&mut tx);
    c.driver_ok();
    println!("GUEST-WAITING");
    loop {
        core::hint::spin_loop();
    }
}

// --- device status (§2.1, §3.1.1) ---

fn bad_status_order() -> Device {
    let d = start();
    d.reset();
    d.set_status(status::ACKNOWLEDGE);
    d.set_status(status::ACKNOWLEDGE | status::DRIVER);
    // DRIVER_OK before FEATURES_OK.
    d.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    d
}

fn bad_status_cleared_bit() -> Device {
    let d = start();
    d.begin();
    // Drops DRIVER without a reset.
    d.set_status(status::ACKNOWLEDGE);
    d
}

fn bad_status_failed_then_more() -> Device {
    let d = start();
    d.reset();
    d.set_status(status::ACKNOWLEDGE);
    d.set_status(status::ACKNOWLEDGE | status::FAILED);
    // Carries on after FAILED instead of resetting.
    d.set_status(status::ACKNOWLEDGE | status::FAILED | status::DRIVER);
    d
}

// --- features (§2.2, §6) ---

fn bad_feature_not_offered() -> Device {
    let d = start();
    d.begin();
    // Bit 5 is not offered by virtio-rng.
    d.negotiate(F_VERSION_1 | 1 << 5);
    d
}

/// Goes on after the device refused FEATURES_OK (a lenient-mode scenario:
/// strict mode already stops at the `FeatureNotOffered` that causes the
/// refusal): sets queue 0 up and sets DRIVER_OK anyway.
fn bad_features_ok_refused() -> Device {
    let d = start();
    d.begin();
    let s = d.negotiate(F_VERSION_1 | 1 << 5);
    println!("GUEST-FEATURES-OK-REFUSED status={s:#04x}");
    let mut vq = Vq::new(0, QSIZE);
    d.setup_queue(&mut vq);
    d.driver_ok();
    d
}

fn bad_feature_after_features_ok() -> Device {
    let d = start();
    d.init();
    // Drops VERSION_1 after FEATURES_OK.
    d.w32(common::DRIVER_FEATURE_SELECT, 1);
    d.w32(common::DRIVER_FEATURE, 0);
    d
}

fn bad_feature_version1_missing() -> Device {
    let d = start();
    d.begin();
    d.negotiate(0);
    d
}

// --- queue setup (§4.1.4.3, §2.4) ---

fn bad_queue_setup_after_driver_ok() -> Device {
    let (d, _vq) = ready();
    d.w16(common::QUEUE_SELECT, 0);
    d.w16(common::QUEUE_SIZE, QSIZE / 2);
    d
}

fn bad_queue_setup_before_features_ok() -> Device {
    let d = start();
    d.begin();
    d.w16(common::QUEUE_SELECT, 0);
    d.w16(common::QUEUE_SIZE, QSIZE);
    d
}

fn bad_queue_select_out_of_range() -> Device {
    let d = start();
    d.init();
    let n = d.r16(common::NUM_QUEUES);
    d.w16(common::QUEUE_SELECT, n);
    d.w16(common::QUEUE_SIZE, QSIZE);
    d
}

fn bad_queue_size_invalid() -> Device {
    let d = start();
    d.init();
    d.w16(common::QUEUE_SELECT, 0);
    d.w16(common::QUEUE_SIZE, 3);
    d
}

fn bad_queue_address_alignment() -> Device {
    let d = start();
    d.init();
    let mut vq = Vq::new(0, QSIZE);
    vq.desc += 8; // the descriptor table needs 16-byte alignment
    d.setup_queue(&mut vq);
    d
}

fn bad_queue_address_outside_memory() -> Device {
    let d = start();
    d.init();
    let mut vq = Vq::new(0, QSIZE);
    vq.desc = NOT_RAM;
    d.setup_queue(&mut vq);
    d
}

fn bad_queue_enable_value() -> Device {
    let d = start();
    d.init();
    let mut vq = Vq::new(0, QSIZE);
    d.program_queue(&mut vq);
    d.w16(common::QUEUE_ENABLE, 0);
    d
}

fn bad_queue_enabled_incomplete() -> Device {
    let d = start();
    d.init();
    // Enables queue 0 without ever writing its size or ring addresses.
    d.w16(common::QUEUE_SELECT, 0);
    d.w16(common::QUEUE_ENABLE, 1);
    d
}

// --- register access (§4.1.3, §4.1.4) ---

fn bad_access_width() -> Device {
    let d = start();
    d.init();
    // queue_select is 16 bits wide.
    d.w8(common::QUEUE_SELECT, 0);
    d
}

fn bad_access_offset() -> Device {
    let d = start();
    d.init();
    // Just past the common configuration structure the capability describes.
    core::hint::black_box(virtio::read32(d.common.addr + u64::from(d.common.len)));
    d
}

fn bad_read_only_write() -> Device {
    let d = start();
    d.init();
    d.w16(common::NUM_QUEUES, 2);
    d
}

fn bad_isr_write() -> Device {
    let d = start();
    d.init();
    virtio::write8(d.isr.addr, 0);
    d
}

fn bad_notify_before_driver_ok() -> Device {
    let d = start();
    d.init();
    let mut vq = Vq::new(0, QSIZE);
    d.setup_queue(&mut vq);
    d.notify(&vq);
    d
}

fn bad_notify_bad_queue() -> Device {
    let d = start();
    d.init();
    // DRIVER_OK with queue 0 never enabled, then a notification for it.
    d.w16(common::QUEUE_SELECT, 0);
    let mut vq = Vq::new(0, QSIZE);
    vq.notify_off = d.r16(common::QUEUE_NOTIFY_OFF);
    d.driver_ok();
    d.notify(&vq);
    d
}

fn bad_pci_cfg_access() -> Device {
    let d = start();
    d.init();
    // A 4-byte access through the VIRTIO_PCI_CAP_PCI_CFG window at an
    // offset that is not a multiple of 4 (num_queues is at 0x12).
    let common_off = (d.common.addr - d.bar0) as u32;
    d.pci_cfg_read(common_off + common::NUM_QUEUES as u32, 4);
    d
}

fn bad_pci_cfg_length() -> Device {
    let d = start();
    d.init();
    // A 3-byte access through the window.
    let common_off = (d.common.addr - d.bar0) as u32;
    d.pci_cfg_read(common_off + common::DEVICE_STATUS as u32, 3);
    d
}

// --- the reads a driver owes, vectors, capabilities (§3.1.1, §4.1) ---

fn bad_reset_not_confirmed() -> Device {
    let (d, _vq) = ready();
    d.set_status(0);
    // Re-initialises without reading device_status back as 0.
    d.set_status(status::ACKNOWLEDGE);
    d
}

fn bad_features_ok_not_reread() -> Device {
    let d = start();
    d.begin();
    d.device_features();
    d.set_driver_features(F_VERSION_1);
    d.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    // Goes on to queue setup without checking that FEATURES_OK stuck.
    d.w16(common::QUEUE_SELECT, 0);
    d.w16(common::QUEUE_SIZE, QSIZE);
    d
}

fn bad_feature_before_driver() -> Device {
    let d = start();
    d.reset();
    d.set_status(status::ACKNOWLEDGE);
    // Accepts features before saying it has a driver (DRIVER).
    d.set_driver_features(F_VERSION_1);
    d
}

fn bad_msix_vector_not_read_back() -> Device {
    let d = start();
    d.init();
    let mut vq = Vq::new(0, QSIZE);
    d.setup_queue(&mut vq);
    // Maps queue 0 to vector 0 and never reads it back to verify.
    d.w16(common::QUEUE_SELECT, 0);
    d.w16(common::QUEUE_MSIX_VECTOR, 0);
    d.driver_ok();
    d
}

fn bad_used_flags_not_zero() -> Device {
    let d = start();
    d.init();
    let mut vq = Vq::new(0, QSIZE);
    d.setup_queue(&mut vq);
    // A used ring whose flags were never initialised to 0.
    virtio::write16(vq.used, 1);
    d.driver_ok();
    d
}

fn bad_capability_write() -> Device {
    let d = start();
    d.init();
    // The common-configuration capability's `offset` field (cap + 8).
    let Some((cap, _)) = d
        .slot
        .capabilities()
        .find(|&(off, id)| id == 0x09 && d.slot.read8(off + 3) == 1)
    else {
        fail("no common-configuration capability")
    };
    d.slot.write32(cap + 8, 0x100);
    d
}

fn bad_avail_index_decrement() -> Device {
    let (d, mut vq) = ready();
    read_random(&d, &mut vq, 0);
    read_random(&d, &mut vq, 1);
    // Takes back an entry the device has already consumed.
    vq.publish(1);
    d.notify(&vq);
    d
}

fn bad_avail_flags_invalid() -> Device {
    let (d, mut vq) = ready();
    // Bit 1 of avail.flags is not defined.
    virtio::write16(vq.avail, 2);
    vq.set_desc(0, buffer(0), RANDOM_BYTES as u32, DESC_WRITE, 0);
    vq.offer(0);
    d.notify(&vq);
    d
}

fn bad_buffer_reused_in_flight() -> Device {
    let (d, mut vq) = ready();
    vq.set_desc(0, buffer(0), RANDOM_BYTES as u32, DESC_WRITE, 0);
    // Head 0 made available twice before the device used it once.
    vq.push(0);
    vq.push(0);
    vq.publish_pushed();
    d.notify(&vq);
    d
}

fn bad_msix_vector_invalid() -> Device {
    let d = start();
    d.init();
    let vectors = d
        .slot
        .capabilities()
        .find(|&(_, id)| id == 0x11)
        .map_or(0, |(off, _)| (d.slot.read16(off + 2) & 0x7ff) + 1);
    println!("GUEST-MSIX vectors={vectors}");
    // One past the last vector the function has (and not NO_VECTOR).
    d.w16(common::MSIX_CONFIG, vectors);
    d
}

// --- virtqueues (§2.4, §5.4) ---

fn bad_avail_index_jump() -> Device {
    let (d, vq) = ready();
    vq.set_desc(0, buffer(0), RANDOM_BYTES as u32, DESC_WRITE, 0);
    virtio::write16(vq.avail + 4, 0);
    // More new entries than the queue holds.
    vq.publish(vq.size + 1);
    d.notify(&vq);
    d
}

fn bad_descriptor_index_out_of_range() -> Device {
    let (d, mut vq) = ready();
    vq.set_desc(0, buffer(0), 16, DESC_WRITE | DESC_NEXT, 200);
    vq.offer(0);
    d.notify(&vq);
    d
}

fn bad_descriptor_loop() -> Device {
    let (d, mut vq) = ready();
    vq.set_desc(0, buffer(0), 16, DESC_WRITE | DESC_NEXT, 1);
    vq.set_desc(1, buffer(1), 16, DESC_WRITE | DESC_NEXT, 0);
    vq.offer(0);
    d.notify(&vq);
    d
}

fn bad_descriptor_outside_memory() -> Device {
    let (d, mut vq) = ready();
    vq.set_desc(0, NOT_RAM, RANDOM_BYTES as u32, DESC_WRITE, 0);
    vq.offer(0);
    d.notify(&vq);
    d
}

fn bad_descriptor_zero_length() -> Device {
    let (d, mut vq) = ready();
    vq.set_desc(0, buffer(0), 0, DESC_WRITE, 0);
    vq.offer(0);
    d.notify(&vq);
    d
}

fn bad_write_before_read() -> Device {
    let (d, mut vq) = ready();
    vq.set_desc(0, buffer(0), 16, DESC_WRITE | DESC_NEXT, 1);
    vq.set_desc(1, buffer(1), 16, 0, 0);
    vq.offer(0);
    d.notify(&vq);
    d
}

fn bad_indirect_not_negotiated() -> Device {
    let (d, mut vq) = ready();
    // A one-entry indirect table in buffer 8; INDIRECT_DESC was not offered.
    let table = buffer(8);
    virtio::set_desc_at(table, 0, buffer(0), RANDOM_BYTES as u32, DESC_WRITE, 0);
    vq.set_desc(0, table, 16, DESC_INDIRECT, 0);
    vq.offer(0);
    d.notify(&vq);
    d
}

fn bad_wrong_direction() -> Device {
    let (d, mut vq) = ready();
    // virtio-rng only fills device-writable buffers.
    vq.set_desc(0, buffer(0), RANDOM_BYTES as u32, 0, 0);
    vq.offer(0);
    d.notify(&vq);
    d
}
