//! Scenarios for the launcher's virtio-blk (`--block FILE[,ro][,serial=ID]`,
//! 1af4:1042 on the modern PCI transport, 1af4:1001 behind `--legacy`; one
//! request queue), driven by a polled ring-3 driver. Each request is a
//! chain of three descriptors at `3 * slot`: the 16-byte header
//! (device-readable), the data (readable for writes, discard and
//! write-zeroes segments, writable for reads and GET_ID; left out when
//! there is none) and the status byte (writable). That is also the
//! framing a legacy driver without VIRTIO_F_ANY_LAYOUT must use.
//!
//! - `virtio-blk-io`: negotiates VERSION_1 plus FLUSH, DISCARD,
//!   WRITE_ZEROES (and RO) when offered; reads the capacity; writes
//!   [`pattern`] to sectors 0..8 and to the last sector, flushes, reads
//!   them back and compares; GET_ID (`GUEST-BLK-ID <id>`); discards
//!   sectors 16..24; write-zeroes sectors 32..40 and reads them back as
//!   zeros; `GUEST-BLK-OK capacity=<n>`.
//! - `virtio-blk-errors`: `GUEST-BLK-STATUS <what>=<status>` for requests
//!   a correct driver may send and the device refuses: a read of sector 0
//!   (`read`, OK), a request of type 99 (`unknown-type`), and on a
//!   read-only disk (RO offered) a write, a discard and a write-zeroes.
//! - `virtio-blk-legacy` (`--legacy`): the legacy interface's driver
//!   (port I/O, queue by PFN, only FLUSH accepted) writes [`pattern`] to
//!   sector 1, flushes, reads it back, GET_ID:
//!   `GUEST-BLK-LEGACY-OK capacity=<n>`.
//! - `bad-<rule>`: one scenario per strict rule, named after it in kebab
//!   case, breaking it once, then `GUEST-AFTER-BAD` and, if the launcher
//!   let the guest run on, `GUEST-STATUS <device_status>` (see
//!   [`crate::scenarios::after_bad`]). Requests the device still answers print
//!   `GUEST-BLK-STATUS <what>=<status>` first. The layouts it cannot
//!   parse: `bad-blk-writable-header`, `bad-blk-header-too-short` (an
//!   8-byte header), `bad-blk-no-status-byte`, `bad-blk-data-wrong-direction`
//!   (a read with device-readable data); the indirect-table rules with
//!   VIRTIO_F_RING_INDIRECT_DESC negotiated: `bad-indirect-with-next`,
//!   `bad-indirect-nested`, `bad-indirect-table-size` (40 bytes); the
//!   request rules of §5.2.6.1: `bad-blk-beyond-capacity` (a read at
//!   sector `capacity`), `bad-blk-data-not-sector-multiple` (a 100-byte
//!   read), `bad-blk-flush-sector-not-zero`, `bad-blk-flush-with-data`
//!   (a warning), `bad-blk-get-id-length` (16 bytes), `bad-blk-discard-segments`
//!   (two segments, one allowed), `bad-blk-discard-unmap`,
//!   `bad-blk-ro-not-accepted` (needs `,ro`; a warning);
//!   `bad-blk-legacy-header-layout` (needs `--legacy`: header and data
//!   in one descriptor); and the configuration rules:
//!   `bad-config-field-not-offered` (num_queues without MQ),
//!   `bad-config-access-width` (capacity in one 64-bit read),
//!   `bad-config-write-before-features-ok`,
//!   `bad-blk-writeback-before-features-ok`.
//! - `bench-blk`: 4 KiB random reads (depth 32 and 1), 1 MiB sequential
//!   reads and 4 KiB random writes with a FLUSH every 32, timed with the
//!   TSC (`GUEST-BENCH ...`; see bench/README.md).
//! - `bench-notify` (needs virtio-rng too): one request at a time, the
//!   round trip from notify to used entry, virtio-rng's (the floor) and
//!   virtio-blk's.
//! - `virtio-blk-stuck` (`stuck_sector=N`, default 100; with the launcher's
//!   test hook stalling the host I/O at that sector): a one-sector read of
//!   sector N into a buffer of 0xa5 (request slot 1), `GUEST-BLK-WAIT reset`,
//!   and on a byte from the host (sent once the host's worker is stuck) a
//!   device reset timed with the TSC (`GUEST-BLK-RESET us=<n>`), a
//!   re-initialisation with the rings elsewhere, a write and read-back
//!   that must succeed, and a check that the stuck request's buffer,
//!   status byte and old used ring were never written:
//!   `GUEST-BLK-STUCK-UNTOUCHED after the reset`. Then `GUEST-BLK-WAIT
//!   check again`, and on the next byte (the host may have let the stuck
//!   I/O finish meanwhile) the same I/O and checks again
//!   (`GUEST-BLK-STUCK-UNTOUCHED at the end`).
//! - `virtio-blk-nospace` (a disk image larger than the space its file
//!   system has left): 64 KiB writes from sector 0 on until one fails
//!   (`GUEST-BLK-NOSPACE sector=<n> status=<s>`), one more write there
//!   (`GUEST-BLK-STATUS second-write=<s>`), then a read of sector 0 that
//!   must succeed and return what was written (`GUEST-BLK-AFTER-NOSPACE
//!   read ok`).

use crate::clock::{self, Deadline};
use crate::cmdline::Cmdline;
use crate::pci;
use crate::port::{inb, inl, inw, outb, outl, outw};
use crate::power;
use crate::println;
use crate::scenarios::{finish, rdtsc, Scenario};
use crate::virtio::legacy;
use crate::virtio::{
    read16, read64, read8, set_desc_at, status, write32, write64, write8, Device, Pages, Vq,
    BLK_DEVICE, DESC_INDIRECT, DESC_NEXT, DESC_WRITE, F_INDIRECT_DESC, F_VERSION_1, RING_BYTES,
    VENDOR,
};
use crate::virtio_scenarios::fail;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("virtio-blk-io", blk_io),
    ("virtio-blk-errors", blk_errors),
    ("virtio-blk-legacy", blk_legacy),
    ("bad-blk-writable-header", bad_writable_header),
    ("bad-blk-header-too-short", bad_header_too_short),
    ("bad-blk-no-status-byte", bad_no_status_byte),
    ("bad-blk-data-wrong-direction", bad_data_wrong_direction),
    ("bad-indirect-with-next", bad_indirect_with_next),
    ("bad-indirect-nested", bad_indirect_nested),
    ("bad-indirect-table-size", bad_indirect_table_size),
    ("bad-blk-beyond-capacity", bad_beyond_capacity),
    (
        "bad-blk-data-not-sector-multiple",
        bad_data_not_sector_multiple,
    ),
    ("bad-blk-flush-sector-not-zero", bad_flush_sector_not_zero),
    ("bad-blk-flush-with-data", bad_flush_with_data),
    ("bad-blk-get-id-length", bad_get_id_length),
    ("bad-blk-discard-segments", bad_discard_segments),
    ("bad-blk-discard-unmap", bad_discard_unmap),
    ("bad-blk-ro-not-accepted", bad_ro_not_accepted),
    ("bad-blk-legacy-header-layout", bad_legacy_header_layout),
    ("bad-config-field-not-offered", bad_config_field_not_offered),
    ("bad-config-access-width", bad_config_access_width),
    (
        "bad-config-write-before-features-ok",
        bad_config_write_before_features_ok,
    ),
    (
        "bad-blk-writeback-before-features-ok",
        bad_writeback_before_features_ok,
    ),
    ("bench-blk", bench_blk),
    ("bench-notify", bench_notify),
    ("virtio-blk-stuck", blk_stuck),
    ("virtio-blk-nospace", blk_nospace),
];

pub const SECTOR: u64 = 512;

/// Feature bits (virtio 1.0 §5.2.3, 1.1 for DISCARD and WRITE_ZEROES).
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_CONFIG_WCE: u64 = 1 << 11;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
/// What [`Blk::start`] accepts when offered.
const WANTED: u64 = F_FLUSH | F_DISCARD | F_WRITE_ZEROES | F_RO;
/// The unmap bit of a discard / write-zeroes segment's flags.
const SEGMENT_UNMAP: u32 = 1;

/// `struct virtio_blk_config` offsets (§5.2.4).
mod cfg {
    pub const CAPACITY: u64 = 0;
    pub const WRITEBACK: u64 = 32;
    pub const NUM_QUEUES: u64 = 34;
}

/// Request types and statuses (§5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;

/// The transitional PCI device id of virtio-blk (the legacy interface).
const BLK_LEGACY_DEVICE: u16 = 0x1001;

/// Descriptors in the queue; three per request slot.
const QSIZE: u16 = 128;
/// Requests in flight at most.
pub const MAX_DEPTH: u16 = QSIZE / 3;
/// How long one request may take before the scenario gives up.
const REQUEST_SECONDS: u32 = 10;
/// Bytes of the data area.
const DATA_BYTES: usize = 4 << 20;
/// What the status byte holds until the device writes it.
const STATUS_UNSET: u8 = 0xff;

static RING: Pages<RING_BYTES> = Pages::new();
/// The rings of a re-initialised device (`virtio-blk-stuck`), apart from
/// the first ones so that a late write to those shows.
static RING2: Pages<RING_BYTES> = Pages::new();
/// Per slot, 64 bytes: header at +0, discard/write-zeroes segment at +16,
/// status byte at +32.
static SLOTS: Pages<0x1000> = Pages::new();
/// Data buffers.
static DATA: Pages<DATA_BYTES> = Pages::new();

/// Runs `name` if it is one of ours; returns if it is not.
pub fn run(name: &str, cmdline: &Cmdline) {
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
        f(cmdline)
    }
}

/// The byte that `virtio-blk-io` writes at offset `i` of sector `sector`
/// (tests/virtio_blk.rs computes the same).
pub fn pattern(sector: u64, i: u64) -> u8 {
    ((sector as u8).wrapping_mul(37) ^ 0x5c).wrapping_add((i as u8).wrapping_mul(3))
}

fn data(off: u64) -> u64 {
    DATA.addr() + off
}

fn header(slot: u16) -> u64 {
    SLOTS.addr() + 64 * u64::from(slot)
}

fn segment(slot: u16) -> u64 {
    header(slot) + 16
}

fn status_byte(slot: u16) -> u64 {
    header(slot) + 32
}

/// Where a request's data is: guest address, length, device-writable.
#[derive(Clone, Copy)]
struct Buf {
    addr: u64,
    len: u32,
    writable: bool,
}

impl Buf {
    fn read_into(addr: u64, len: u32) -> Option<Buf> {
        Some(Buf {
            addr,
            len,
            writable: true,
        })
    }
    fn write_from(addr: u64, len: u32) -> Option<Buf> {
        Some(Buf {
            addr,
            len,
            writable: false,
        })
    }
}

/// A completed request.
struct Done {
    slot: u16,
    status: u8,
    used_len: u32,
}

/// How the driver reaches the function: notifications and the status.
enum Transport {
    Modern(Device),
    /// The legacy interface's I/O BAR (virtio 1.0 §4.1.4.8).
    Legacy {
        io: u16,
    },
}

impl Transport {
    fn status(&self) -> u8 {
        match self {
            Transport::Modern(d) => d.status(),
            Transport::Legacy { io } => inb(io + legacy::STATUS),
        }
    }

    fn notify(&self, vq: &Vq) {
        match self {
            Transport::Modern(d) => d.notify(vq),
            Transport::Legacy { io } => {
                core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
                outw(io + legacy::QUEUE_NOTIFY, vq.index)
            }
        }
    }
}

struct Blk {
    dev: Transport,
    vq: Vq,
    features: u64,
    offered: u64,
    capacity: u64,
}

/// Start line, PCI listing, the first modern virtio-blk function found.
fn probe() -> Device {
    println!("GUEST-TEST-START");
    pci::enumerate();
    Device::probe(BLK_DEVICE).unwrap_or_else(|| fail("no virtio-blk (1af4:1042) on bus 0"))
}

impl Blk {
    /// Start line, PCI listing, the first virtio-blk function initialised
    /// with VERSION_1 and whichever of FLUSH, DISCARD, WRITE_ZEROES, RO it
    /// offers, its queue live.
    fn start() -> Blk {
        Blk::start_with(0)
    }

    /// [`Blk::start`], also accepting `extra` (which must be offered).
    fn start_with(extra: u64) -> Blk {
        Blk::start_accepting(|offered| {
            if offered & extra != extra {
                fail("virtio-blk does not offer the features the scenario needs");
            }
            F_VERSION_1 | extra | offered & WANTED
        })
    }

    /// [`Blk::start`], accepting what `accept` makes of the offered
    /// features.
    fn start_accepting(accept: impl FnOnce(u64) -> u64) -> Blk {
        Blk::init(probe(), accept, RING.addr())
    }

    /// Initialises `dev` (reset first) accepting what `accept` makes of
    /// the offered features, its queue's rings at `ring`.
    fn init(dev: Device, accept: impl FnOnce(u64) -> u64, ring: u64) -> Blk {
        dev.begin();
        let offered = dev.device_features();
        let features = accept(offered);
        if dev.negotiate(features) & status::FEATURES_OK == 0 {
            fail("device refused FEATURES_OK");
        }
        let mut vq = Vq::at(0, QSIZE, ring);
        dev.setup_queue(&mut vq);
        if vq.size < 3 {
            fail("request queue too small");
        }
        dev.driver_ok();
        let capacity = dev.cfg64(cfg::CAPACITY);
        println!(
            "GUEST-BLK-CONFIG capacity={capacity} queue_size={}",
            vq.size
        );
        Blk {
            dev: Transport::Modern(dev),
            vq,
            features,
            offered,
            capacity,
        }
    }

    /// The first legacy virtio-blk function (1af4:1001) initialised as a
    /// legacy driver does it (reset, ACKNOWLEDGE, DRIVER, guest features:
    /// FLUSH if offered, queue 0 by PFN, DRIVER_OK), no ANY_LAYOUT.
    fn start_legacy() -> Blk {
        println!("GUEST-TEST-START");
        pci::enumerate();
        let io = crate::virtio::legacy_function(VENDOR, BLK_LEGACY_DEVICE, "virtio-blk");
        let reg = |r: u16| io + r;
        outb(reg(legacy::STATUS), 0);
        outb(reg(legacy::STATUS), status::ACKNOWLEDGE);
        outb(reg(legacy::STATUS), status::ACKNOWLEDGE | status::DRIVER);
        let offered = u64::from(inl(reg(legacy::HOST_FEATURES)));
        let features = offered & F_FLUSH;
        outl(reg(legacy::GUEST_FEATURES), features as u32);
        println!("GUEST-VIRTIO-FEATURES offered={offered:#x} accepted={features:#x}");
        outw(reg(legacy::QUEUE_SEL), 0);
        let size = inw(reg(legacy::QUEUE_NUM));
        if !(3..=256).contains(&size) || !size.is_power_of_two() {
            println!("GUEST-FAIL legacy queue size {size}");
            power::poweroff()
        }
        let vq = Vq::legacy_at(0, size, RING.addr());
        outl(reg(legacy::QUEUE_PFN), (vq.desc >> 12) as u32);
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK;
        outb(reg(legacy::STATUS), ok);
        // Any width will do on the legacy interface (§4.1.4.8).
        let lo = u64::from(inl(reg(legacy::CONFIG)));
        let capacity = u64::from(inl(reg(legacy::CONFIG + 4))) << 32 | lo;
        println!("GUEST-BLK-CONFIG capacity={capacity} queue_size={size} io={io:#x}");
        Blk {
            dev: Transport::Legacy { io },
            vq,
            features,
            offered,
            capacity,
        }
    }

    fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    /// Requests that fit in the queue at once.
    fn max_depth(&self) -> u16 {
        (self.vq.size / 3).min(MAX_DEPTH)
    }

    /// Builds the request chain of `slot` and puts it in the available
    /// ring without publishing it.
    fn submit(&mut self, slot: u16, kind: u32, sector: u64, buf: Option<Buf>) {
        let h = header(slot);
        write32(h, kind);
        write32(h + 4, 0);
        write64(h + 8, sector);
        write8(status_byte(slot), STATUS_UNSET);
        let d = 3 * slot;
        match buf {
            Some(b) => {
                self.vq.set_desc(d, h, 16, DESC_NEXT, d + 1);
                let w = if b.writable { DESC_WRITE } else { 0 };
                self.vq.set_desc(d + 1, b.addr, b.len, DESC_NEXT | w, d + 2);
            }
            None => self.vq.set_desc(d, h, 16, DESC_NEXT, d + 2),
        }
        self.vq.set_desc(d + 2, status_byte(slot), 1, DESC_WRITE, 0);
        self.vq.push(d);
    }

    /// Publishes what was submitted and notifies the device.
    fn kick(&mut self) {
        self.vq.publish_pushed();
        self.dev.notify(&self.vq);
    }

    /// A completed request, if the device has returned one.
    fn poll(&mut self) -> Option<Done> {
        let (id, used_len) = self.vq.poll_used()?;
        if id % 3 != 0 || id >= u32::from(3 * self.max_depth()) {
            println!("GUEST-FAIL used id {id} is no request head");
            power::poweroff()
        }
        let slot = (id / 3) as u16;
        Some(Done {
            slot,
            status: read8(status_byte(slot)),
            used_len,
        })
    }

    /// Waits (at most [`REQUEST_SECONDS`]) for the next completion.
    fn wait(&mut self) -> Done {
        let mut deadline = Deadline::after(REQUEST_SECONDS);
        loop {
            if let Some(d) = self.poll() {
                return d;
            }
            if deadline.expired() {
                fail("no used buffer from virtio-blk");
            }
            core::hint::spin_loop();
        }
    }

    /// One request in slot 0, waited for: (status, used length).
    fn request(&mut self, kind: u32, sector: u64, buf: Option<Buf>) -> (u8, u32) {
        self.submit(0, kind, sector, buf);
        self.kick();
        let d = self.wait();
        (d.status, d.used_len)
    }

    /// A request that must succeed.
    fn request_ok(&mut self, what: &str, kind: u32, sector: u64, buf: Option<Buf>) -> u32 {
        let (s, len) = self.request(kind, sector, buf);
        if s != S_OK {
            println!("GUEST-FAIL {what}: status {s}");
            power::poweroff()
        }
        len
    }

    /// A discard or write-zeroes of `num` sectors at `sector` (one segment
    /// with `flags`).
    fn range_request(&mut self, kind: u32, sector: u64, num: u32, flags: u32) -> u8 {
        let seg = segment(0);
        write64(seg, sector);
        write32(seg + 8, num);
        write32(seg + 12, flags);
        self.request(kind, sector, Buf::write_from(seg, 16)).0
    }
}

/// Fills `len` bytes at data offset `off` with the pattern of sectors from
/// `sector` on.
fn fill_pattern(off: u64, sector: u64, len: u64) {
    for i in 0..len {
        write8(data(off + i), pattern(sector + i / SECTOR, i % SECTOR));
    }
}

fn fill(off: u64, len: u64, byte: u8) {
    for i in 0..len {
        write8(data(off + i), byte);
    }
}

/// Checks the pattern at data offset `off`; fails naming the first bad byte.
fn check_pattern(what: &str, off: u64, sector: u64, len: u64) {
    for i in 0..len {
        let (got, want) = (
            read8(data(off + i)),
            pattern(sector + i / SECTOR, i % SECTOR),
        );
        if got != want {
            println!("GUEST-FAIL {what}: byte {i} is {got:#04x}, wrote {want:#04x}");
            power::poweroff()
        }
    }
}

fn check_used(what: &str, got: u32, want: u32) {
    if got != want {
        println!("GUEST-FAIL {what}: used length {got}, wanted {want}");
        power::poweroff()
    }
}

fn blk_io(_: &Cmdline) -> ! {
    let mut b = Blk::start();
    let cap = b.capacity;
    if cap < 64 {
        fail("the disk needs at least 64 sectors");
    }
    // Sectors 0..8 from data +0, the last sector from data +4096.
    fill_pattern(0, 0, 8 * SECTOR);
    fill_pattern(4096, cap - 1, SECTOR);
    let len = b.request_ok(
        "write sectors 0..8",
        T_OUT,
        0,
        Buf::write_from(data(0), 4096),
    );
    check_used("write", len, 1);
    b.request_ok(
        "write the last sector",
        T_OUT,
        cap - 1,
        Buf::write_from(data(4096), SECTOR as u32),
    );
    if b.has(F_FLUSH) {
        b.request_ok("flush", T_FLUSH, 0, None);
        println!("GUEST-BLK-FLUSH ok");
    } else {
        println!("GUEST-BLK-SKIP flush (not offered)");
    }

    // Read back into fresh buffers at +8192 and +12288.
    fill(8192, 4096 + SECTOR, 0xee);
    let len = b.request_ok(
        "read sectors 0..8",
        T_IN,
        0,
        Buf::read_into(data(8192), 4096),
    );
    check_used("read sectors 0..8", len, 4096 + 1);
    check_pattern("read sectors 0..8", 8192, 0, 8 * SECTOR);
    let len = b.request_ok(
        "read the last sector",
        T_IN,
        cap - 1,
        Buf::read_into(data(12288), SECTOR as u32),
    );
    check_used("read the last sector", len, SECTOR as u32 + 1);
    check_pattern("read the last sector", 12288, cap - 1, SECTOR);
    println!("GUEST-BLK-READBACK ok");

    // GET_ID: 20 bytes, NUL-padded.
    let id = data(16384);
    fill(16384, 20, 0);
    b.request_ok("get id", T_GET_ID, 0, Buf::read_into(id, 20));
    crate::print!("GUEST-BLK-ID ");
    for i in 0..20 {
        let c = read8(id + i);
        if c == 0 {
            break;
        }
        let c = if c.is_ascii_graphic() { c } else { b'?' };
        crate::print!("{}", c as char);
    }
    println!();

    if b.has(F_DISCARD) {
        let s = b.range_request(T_DISCARD, 16, 8, 0);
        if s != S_OK {
            println!("GUEST-FAIL discard 16..24: status {s}");
            power::poweroff()
        }
        println!("GUEST-BLK-DISCARD ok");
    } else {
        println!("GUEST-BLK-SKIP discard (not offered)");
    }
    if b.has(F_WRITE_ZEROES) {
        let s = b.range_request(T_WRITE_ZEROES, 32, 8, 0);
        if s != S_OK {
            println!("GUEST-FAIL write-zeroes 32..40: status {s}");
            power::poweroff()
        }
        fill(8192, 4096, 0xee);
        b.request_ok(
            "read sectors 32..40",
            T_IN,
            32,
            Buf::read_into(data(8192), 4096),
        );
        if let Some(i) = (0..4096).find(|&i| read8(data(8192 + i)) != 0) {
            println!("GUEST-FAIL write-zeroes: byte {i} of sectors 32..40 is not 0");
            power::poweroff()
        }
        println!("GUEST-BLK-WRITE-ZEROES ok");
    } else {
        println!("GUEST-BLK-SKIP write-zeroes (not offered)");
    }
    println!("GUEST-BLK-OK capacity={cap}");
    finish()
}

/// Errors a correct driver may meet: nothing here breaks a driver rule
/// (requests beyond the capacity do: `bad-blk-beyond-capacity`).
fn blk_errors(_: &Cmdline) -> ! {
    let mut b = Blk::start();
    let ro = b.offered & F_RO != 0;
    println!("GUEST-BLK-RO offered={}", u8::from(ro));
    let one = SECTOR as u32;

    let (s, _) = b.request(T_IN, 0, Buf::read_into(data(0), one));
    println!("GUEST-BLK-STATUS read={s}");
    crate::print!("GUEST-BLK-SECTOR0 ");
    for i in 0..16 {
        crate::print!("{:02x}", read8(data(i)));
    }
    println!();
    let (s, _) = b.request(99, 0, None);
    println!("GUEST-BLK-STATUS unknown-type={s}");
    if ro {
        fill(4096, SECTOR, 0x77);
        let (s, _) = b.request(T_OUT, 0, Buf::write_from(data(4096), one));
        println!("GUEST-BLK-STATUS ro-write={s}");
        if b.has(F_DISCARD) {
            let s = b.range_request(T_DISCARD, 0, 8, 0);
            println!("GUEST-BLK-STATUS ro-discard={s}");
        }
        if b.has(F_WRITE_ZEROES) {
            let s = b.range_request(T_WRITE_ZEROES, 0, 8, 0);
            println!("GUEST-BLK-STATUS ro-write-zeroes={s}");
        }
    }
    finish()
}

/// The legacy interface's driver: a write, a flush, a read-back and
/// GET_ID, each framed as §5.2.6.4 wants (header, data, status byte in
/// descriptors of their own).
fn blk_legacy(_: &Cmdline) -> ! {
    let mut b = Blk::start_legacy();
    let cap = b.capacity;
    if cap < 2 {
        fail("the disk needs at least 2 sectors");
    }
    fill_pattern(0, 1, SECTOR);
    b.request_ok(
        "write sector 1",
        T_OUT,
        1,
        Buf::write_from(data(0), SECTOR as u32),
    );
    if b.has(F_FLUSH) {
        b.request_ok("flush", T_FLUSH, 0, None);
    }
    fill(4096, SECTOR, 0xee);
    b.request_ok(
        "read sector 1",
        T_IN,
        1,
        Buf::read_into(data(4096), SECTOR as u32),
    );
    check_pattern("read sector 1", 4096, 1, SECTOR);
    b.request_ok("get id", T_GET_ID, 0, Buf::read_into(data(8192), 20));
    println!("GUEST-BLK-LEGACY-OK capacity={cap}");
    finish()
}

/// The header in a device-writable buffer: the chain has no readable part.
fn bad_writable_header(_: &Cmdline) -> ! {
    let mut b = Blk::start();
    let h = header(0);
    write32(h, T_IN);
    write64(h + 8, 0);
    b.vq.set_desc(0, h, 16, DESC_NEXT | DESC_WRITE, 1);
    b.vq.set_desc(1, data(0), SECTOR as u32, DESC_NEXT | DESC_WRITE, 2);
    b.vq.set_desc(2, status_byte(0), 1, DESC_WRITE, 0);
    b.vq.push(0);
    b.kick();
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// A request that breaks a rule the device still answers: waits for the
/// answer, prints `GUEST-BLK-STATUS <what>=<status>`, then [`crate::scenarios::after_bad`].
fn bad_request(mut b: Blk, what: &str, kind: u32, sector: u64, buf: Option<Buf>) -> ! {
    let (s, _) = b.request(kind, sector, buf);
    println!("GUEST-BLK-STATUS {what}={s}");
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// A T_IN request header for sector 0 in slot 0.
fn bad_header() -> u64 {
    let h = header(0);
    write32(h, T_IN);
    write32(h + 4, 0);
    write64(h + 8, 0);
    h
}

/// Only 8 of the 16 header bytes, then the status byte.
fn bad_header_too_short(_: &Cmdline) -> ! {
    let mut b = Blk::start();
    let h = bad_header();
    b.vq.set_desc(0, h, 8, DESC_NEXT, 1);
    b.vq.set_desc(1, status_byte(0), 1, DESC_WRITE, 0);
    b.vq.push(0);
    b.kick();
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// A write of one sector whose chain ends with its (readable) data: no
/// device-writable status byte.
fn bad_no_status_byte(_: &Cmdline) -> ! {
    let mut b = Blk::start();
    let h = bad_header();
    write32(h, T_OUT);
    write64(h + 8, 1);
    b.vq.set_desc(0, h, 16, DESC_NEXT, 1);
    b.vq.set_desc(1, data(0), SECTOR as u32, 0, 0);
    b.vq.push(0);
    b.kick();
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// Where the indirect tables go: the data area's last page.
fn table() -> u64 {
    data(DATA_BYTES as u64 - 0x1000)
}

/// A well-formed three-entry read request (header, one sector, status) in
/// the indirect table at `t`.
fn indirect_request(t: u64) {
    let h = bad_header();
    write8(status_byte(0), STATUS_UNSET);
    set_desc_at(t, 0, h, 16, DESC_NEXT, 1);
    set_desc_at(t, 1, data(0), SECTOR as u32, DESC_NEXT | DESC_WRITE, 2);
    set_desc_at(t, 2, status_byte(0), 1, DESC_WRITE, 0);
}

/// An indirect descriptor that also has NEXT set.
fn bad_indirect_with_next(_: &Cmdline) -> ! {
    let mut b = Blk::start_with(F_INDIRECT_DESC);
    let t = table();
    indirect_request(t);
    b.vq.set_desc(0, t, 48, DESC_INDIRECT | DESC_NEXT, 1);
    b.vq.set_desc(1, status_byte(1), 1, DESC_WRITE, 0);
    b.vq.push(0);
    b.kick();
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// An indirect table whose second entry is itself indirect.
fn bad_indirect_nested(_: &Cmdline) -> ! {
    let mut b = Blk::start_with(F_INDIRECT_DESC);
    let t = table();
    let inner = t + 0x100;
    indirect_request(inner);
    let h = bad_header();
    set_desc_at(t, 0, h, 16, DESC_NEXT, 1);
    set_desc_at(t, 1, inner + 16, 32, DESC_INDIRECT, 0);
    b.vq.set_desc(0, t, 32, DESC_INDIRECT, 0);
    b.vq.push(0);
    b.kick();
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// An indirect table of 40 bytes: not a multiple of 16.
fn bad_indirect_table_size(_: &Cmdline) -> ! {
    let mut b = Blk::start_with(F_INDIRECT_DESC);
    let t = table();
    indirect_request(t);
    b.vq.set_desc(0, t, 40, DESC_INDIRECT, 0);
    b.vq.push(0);
    b.kick();
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// A read whose data buffer is device-readable.
fn bad_data_wrong_direction(_: &Cmdline) -> ! {
    let mut b = Blk::start();
    b.submit(0, T_IN, 0, Buf::write_from(data(0), SECTOR as u32));
    b.kick();
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// A one-sector read at sector `capacity`, just past the end.
fn bad_beyond_capacity(_: &Cmdline) -> ! {
    let b = Blk::start();
    let buf = Buf::read_into(data(0), SECTOR as u32);
    let cap = b.capacity;
    bad_request(b, "read-beyond-capacity", T_IN, cap, buf)
}

/// A read of 100 bytes.
fn bad_data_not_sector_multiple(_: &Cmdline) -> ! {
    let b = Blk::start();
    let buf = Buf::read_into(data(0), 100);
    bad_request(b, "read-100-bytes", T_IN, 0, buf)
}

/// A flush naming sector 1.
fn bad_flush_sector_not_zero(_: &Cmdline) -> ! {
    let b = Blk::start_with(F_FLUSH);
    bad_request(b, "flush-sector-1", T_FLUSH, 1, None)
}

/// A flush carrying a sector of data.
fn bad_flush_with_data(_: &Cmdline) -> ! {
    let b = Blk::start_with(F_FLUSH);
    let buf = Buf::write_from(data(0), SECTOR as u32);
    bad_request(b, "flush-with-data", T_FLUSH, 0, buf)
}

/// GET_ID into 16 bytes instead of 20.
fn bad_get_id_length(_: &Cmdline) -> ! {
    let b = Blk::start();
    let buf = Buf::read_into(data(0), 16);
    bad_request(b, "get-id-16-bytes", T_GET_ID, 0, buf)
}

/// A discard of two segments where the device allows one
/// (`max_discard_seg` is 1).
fn bad_discard_segments(_: &Cmdline) -> ! {
    let b = Blk::start_with(F_DISCARD);
    let segments = data(0);
    for (i, sector) in [0u64, 8].iter().enumerate() {
        let seg = segments + 16 * i as u64;
        write64(seg, *sector);
        write32(seg + 8, 8);
        write32(seg + 12, 0);
    }
    let buf = Buf::write_from(segments, 32);
    bad_request(b, "discard-two-segments", T_DISCARD, 0, buf)
}

/// A discard segment with the unmap bit, which only write-zeroes takes.
fn bad_discard_unmap(_: &Cmdline) -> ! {
    let mut b = Blk::start_with(F_DISCARD);
    let s = b.range_request(T_DISCARD, 0, 8, SEGMENT_UNMAP);
    println!("GUEST-BLK-STATUS discard-unmap={s}");
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// A read-only disk (`,ro`) whose driver does not accept
/// VIRTIO_BLK_F_RO; the device tells at the first notification.
fn bad_ro_not_accepted(_: &Cmdline) -> ! {
    let b = Blk::start_accepting(|offered| {
        if offered & F_RO == 0 {
            fail("virtio-blk does not offer RO: attach the disk with ,ro");
        }
        F_VERSION_1 | offered & WANTED & !F_RO
    });
    let buf = Buf::read_into(data(0), SECTOR as u32);
    bad_request(b, "read", T_IN, 0, buf)
}

/// Legacy, no ANY_LAYOUT: a write whose header and data share one
/// descriptor.
fn bad_legacy_header_layout(_: &Cmdline) -> ! {
    let mut b = Blk::start_legacy();
    let h = data(0);
    write32(h, T_OUT);
    write32(h + 4, 0);
    write64(h + 8, 1);
    fill_pattern(16, 1, SECTOR);
    write8(status_byte(0), STATUS_UNSET);
    b.vq.set_desc(0, h, 16 + SECTOR as u32, DESC_NEXT, 1);
    b.vq.set_desc(1, status_byte(0), 1, DESC_WRITE, 0);
    b.vq.push(0);
    b.kick();
    let d = b.wait();
    println!("GUEST-BLK-STATUS legacy-write={}", d.status);
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// `num_queues` read, though VIRTIO_BLK_F_MQ is not offered.
fn bad_config_field_not_offered(_: &Cmdline) -> ! {
    let b = Blk::start();
    let Transport::Modern(dev) = &b.dev else {
        fail("not the modern interface")
    };
    core::hint::black_box(read16(dev.device_cfg.addr + cfg::NUM_QUEUES));
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// `capacity` in one 64-bit read instead of two 32-bit halves.
fn bad_config_access_width(_: &Cmdline) -> ! {
    let b = Blk::start();
    let Transport::Modern(dev) = &b.dev else {
        fail("not the modern interface")
    };
    core::hint::black_box(read64(dev.device_cfg.addr + cfg::CAPACITY));
    crate::scenarios::after_bad(|| (b.dev).status())
}

/// A configuration write (to `capacity`, which ignores it) after DRIVER,
/// before FEATURES_OK.
fn bad_config_write_before_features_ok(_: &Cmdline) -> ! {
    let dev = probe();
    dev.begin();
    dev.device_features();
    write32(dev.device_cfg.addr + cfg::CAPACITY, 0);
    crate::scenarios::after_bad(|| dev.status())
}

/// `writeback` read with the features written but before FEATURES_OK.
fn bad_writeback_before_features_ok(_: &Cmdline) -> ! {
    let dev = probe();
    dev.begin();
    let offered = dev.device_features();
    if offered & F_CONFIG_WCE == 0 {
        fail("virtio-blk does not offer CONFIG_WCE");
    }
    dev.set_driver_features(F_VERSION_1 | F_FLUSH | F_CONFIG_WCE);
    core::hint::black_box(read8(dev.device_cfg.addr + cfg::WRITEBACK));
    crate::scenarios::after_bad(|| dev.status())
}

/// A xorshift64 generator for the random offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Per second, from `n` events in `cycles` TSC ticks.
fn per_second(n: u64, cycles: u64, khz: u64) -> u64 {
    (u128::from(n) * u128::from(khz) * 1000 / u128::from(cycles.max(1))) as u64
}

/// Runs `count` requests of `kind` (reads or writes) of `len` bytes with
/// up to `depth` in flight, slot `s` using data + `s * len`; `next_sector`
/// says where each goes. Returns the TSC ticks taken.
fn io_loop(
    b: &mut Blk,
    kind: u32,
    count: u64,
    depth: u16,
    len: u32,
    mut next_sector: impl FnMut() -> u64,
) -> u64 {
    let buf = |slot: u16| {
        let addr = data(u64::from(slot) * u64::from(len));
        if kind == T_IN {
            Buf::read_into(addr, len)
        } else {
            Buf::write_from(addr, len)
        }
    };
    let t0 = rdtsc();
    let mut submitted = 0u64;
    let mut completed = 0u64;
    for slot in 0..depth {
        if submitted == count {
            break;
        }
        b.submit(slot, kind, next_sector(), buf(slot));
        submitted += 1;
    }
    b.kick();
    let mut idle_polls = 0u64;
    while completed < count {
        // Drain every completion, refill those slots, then one notify.
        let mut resubmitted = false;
        while let Some(d) = b.poll() {
            if d.status != S_OK {
                println!("GUEST-FAIL benchmark request: status {}", d.status);
                power::poweroff()
            }
            completed += 1;
            if submitted < count {
                b.submit(d.slot, kind, next_sector(), buf(d.slot));
                submitted += 1;
                resubmitted = true;
            }
        }
        if resubmitted {
            b.kick();
            idle_polls = 0;
        } else {
            idle_polls += 1;
            if idle_polls > 1 << 32 {
                fail("benchmark requests never completed");
            }
            core::hint::spin_loop();
        }
    }
    rdtsc() - t0
}

/// One request in slot 0, polled without the CMOS-clock deadline (whose
/// port reads would land inside the timed interval); fails the scenario
/// unless it completes with OK. Returns the TSC ticks the notify took.
fn request_spin(b: &mut Blk, kind: u32, sector: u64, buf: Option<Buf>) -> u64 {
    b.submit(0, kind, sector, buf);
    let t0 = rdtsc();
    b.kick();
    let kick = rdtsc() - t0;
    for _ in 0..1u64 << 32 {
        if let Some(d) = b.poll() {
            if d.status != S_OK {
                println!(
                    "GUEST-FAIL benchmark request type {kind}: status {}",
                    d.status
                );
                power::poweroff()
            }
            return kick;
        }
        core::hint::spin_loop();
    }
    fail("benchmark request never completed")
}

/// The benchmark's blk phases, each optional but the first:
/// - `rand_count=N` (20000) 4 KiB reads at random 4 KiB-aligned offsets,
///   `depth=D` (32) in flight: `GUEST-BENCH blk-4k-randread`;
/// - `rand1_count=N` (0: skipped) more at depth 1: `GUEST-BENCH
///   blk-4k-randread ... depth=1`;
/// - `seq_mib=M` (256; 0: skipped) MiB read sequentially in 1 MiB
///   requests, `seq_depth=S` (4) in flight: `GUEST-BENCH blk-1m-seqread`;
/// - `write_count=N` (0: skipped) 4 KiB writes at random offsets, `depth`
///   in flight, and after every `flush_every=F` (32) of them, once they
///   have completed, a FLUSH (waited for): `GUEST-BENCH
///   blk-4k-randwrite-flush iops=<writes/s, flushes included>`.
fn bench_blk(cmdline: &Cmdline) -> ! {
    let khz = clock::tsc_khz(cmdline);
    let mut b = Blk::start();
    let cap = b.capacity;
    let max = b.max_depth();
    let depth = (cmdline.get_u64("depth").unwrap_or(32) as u16).clamp(1, max);
    let count = cmdline.get_u64("rand_count").unwrap_or(20_000);
    let blocks = cap / 8;
    if blocks == 0 {
        fail("the disk is smaller than 4 KiB");
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut random_block = move || (rng.next() % blocks) * 8;
    let cycles = io_loop(&mut b, T_IN, count, depth, 4096, &mut random_block);
    println!(
        "GUEST-BENCH blk-4k-randread iops={} depth={depth} requests={count} tsc={cycles}",
        per_second(count, cycles, khz)
    );

    let count1 = cmdline.get_u64("rand1_count").unwrap_or(0);
    if count1 > 0 {
        let cycles = io_loop(&mut b, T_IN, count1, 1, 4096, &mut random_block);
        println!(
            "GUEST-BENCH blk-4k-randread iops={} depth=1 requests={count1} tsc={cycles}",
            per_second(count1, cycles, khz)
        );
    }

    const MIB: u64 = 1 << 20;
    let seq_depth = (cmdline.get_u64("seq_depth").unwrap_or(4) as u16)
        .clamp(1, (DATA_BYTES as u64 / MIB) as u16);
    let disk_mib = cap * SECTOR / MIB;
    let mib = cmdline.get_u64("seq_mib").unwrap_or(256);
    if mib > 0 {
        if disk_mib == 0 {
            fail("the disk is smaller than 1 MiB");
        }
        let mut next = 0u64;
        let per_mib = MIB / SECTOR;
        let cycles = io_loop(&mut b, T_IN, mib, seq_depth, MIB as u32, || {
            let s = next * per_mib;
            next = (next + 1) % disk_mib;
            s
        });
        println!(
            "GUEST-BENCH blk-1m-seqread mbps={} depth={seq_depth} mib={mib} tsc={cycles}",
            per_second(mib, cycles, khz)
        );
    }

    let writes = cmdline.get_u64("write_count").unwrap_or(0);
    if writes > 0 {
        if !b.has(F_FLUSH) {
            fail("virtio-blk does not offer FLUSH");
        }
        let every = cmdline.get_u64("flush_every").unwrap_or(32).max(1);
        let t0 = rdtsc();
        let (mut done, mut flushes) = (0u64, 0u64);
        while done < writes {
            let batch = every.min(writes - done);
            io_loop(&mut b, T_OUT, batch, depth, 4096, &mut random_block);
            request_spin(&mut b, T_FLUSH, 0, None);
            done += batch;
            flushes += 1;
        }
        let cycles = rdtsc() - t0;
        println!(
            "GUEST-BENCH blk-4k-randwrite-flush iops={} depth={depth} requests={writes} flushes={flushes} tsc={cycles}",
            per_second(writes, cycles, khz)
        );
    }
    finish()
}

/// The virtio-rng queue [`bench_notify`] uses, and its 1-byte buffer.
static RNG_RING: Pages<RING_BYTES> = Pages::new();
static RNG_BYTE: Pages<4096> = Pages::new();
/// Round-trip times in TSC ticks, one u32 each.
const MAX_SAMPLES: usize = 1 << 16;
static SAMPLES: Pages<{ MAX_SAMPLES * 4 }> = Pages::new();

/// Times `count` round trips of `one`, which must notify and poll to the
/// used entry and returns how long its notify (the guest's write to the
/// notify address) took; prints `GUEST-BENCH notify-<what> p50_ns=..
/// mean_ns=.. min_ns=.. p99_ns=.. kick_mean_ns=.. count=..`.
fn time_round_trips(what: &str, count: usize, khz: u64, mut one: impl FnMut() -> u64) {
    let count = count.clamp(1, MAX_SAMPLES);
    // SAFETY: SAMPLES is ours alone (no device is ever given it), one vCPU,
    // and this is the only reference to it while it lives.
    let samples = unsafe { core::slice::from_raw_parts_mut(SAMPLES.addr() as *mut u32, count) };
    let (mut total, mut kicks) = (0u64, 0u64);
    for s in samples.iter_mut() {
        let t0 = rdtsc();
        kicks += one();
        let t = rdtsc() - t0;
        total += t;
        *s = t.min(u64::from(u32::MAX)) as u32;
    }
    samples.sort_unstable();
    let ns = |ticks: u64| ticks * 1_000_000 / khz;
    println!(
        "GUEST-BENCH notify-{what} p50_ns={} mean_ns={} min_ns={} p99_ns={} kick_mean_ns={} count={count}",
        ns(u64::from(samples[count / 2])),
        ns(total / count as u64),
        ns(u64::from(samples[0])),
        ns(u64::from(samples[count * 99 / 100])),
        ns(kicks / count as u64),
    );
}

/// `bench-notify count=N` (20000), needs virtio-blk and virtio-rng: N
/// round trips of one request each, timed from the notify to the used
/// entry seen by this polling driver. First virtio-rng with a 1-byte
/// buffer (its worker only fills and completes it: the floor of the
/// notify path), then virtio-blk, one 512-byte read of sector 0. The
/// round trip includes the notify itself, timed on its own as
/// `kick_mean_ns` (on nested `kvm_pvm` hosts a ring-3 MMIO write traps
/// through the host kernel, which costs more than the device's work).
fn bench_notify(cmdline: &Cmdline) -> ! {
    let khz = clock::tsc_khz(cmdline);
    let count = cmdline.get_u64("count").unwrap_or(20_000) as usize;
    let mut b = Blk::start();
    let rng =
        Device::probe(crate::virtio::RNG_DEVICE).unwrap_or_else(|| fail("no virtio-rng on bus 0"));
    rng.init();
    let mut vq = Vq::at(0, 8, RNG_RING.addr());
    rng.setup_queue(&mut vq);
    rng.driver_ok();
    let byte = RNG_BYTE.addr();
    time_round_trips("rng", count, khz, || {
        vq.set_desc(0, byte, 1, DESC_WRITE, 0);
        vq.push(0);
        vq.publish_pushed();
        let t0 = rdtsc();
        rng.notify(&vq);
        let kick = rdtsc() - t0;
        if vq.wait_used().is_none() {
            fail("virtio-rng did not return the buffer");
        }
        kick
    });
    time_round_trips("blk", count, khz, || {
        request_spin(&mut b, T_IN, 0, Buf::read_into(data(0), SECTOR as u32))
    });
    finish()
}

/// Prints `GUEST-BLK-WAIT <what>` and waits (at most 60 s) for a byte from
/// the host on COM1.
fn wait_for_host(what: &str) {
    println!("GUEST-BLK-WAIT {what}");
    if crate::serial::read_byte(&mut Deadline::after(60)).is_none() {
        println!("GUEST-FAIL no word from the host to go on ({what})");
        power::poweroff()
    }
}

/// The request slot of `virtio-blk-stuck`'s stuck read (the requests
/// after the reset use slot 0).
const STUCK_SLOT: u16 = 1;
/// What the stuck read's buffer (data +0, one sector) holds.
const STUCK_FILL: u8 = 0xa5;

/// A read stuck in the host's I/O, a reset, a re-initialised device that
/// works, and nothing of the stuck read ever written (see the module docs).
fn blk_stuck(cmdline: &Cmdline) -> ! {
    let khz = clock::tsc_khz(cmdline);
    let sector = cmdline.get_u64("stuck_sector").unwrap_or(100);
    let mut b = Blk::start();
    if b.capacity < sector + 1 || b.capacity < 8 {
        fail("the disk is too small for the stuck sector");
    }
    fill(0, SECTOR, STUCK_FILL);
    b.submit(
        STUCK_SLOT,
        T_IN,
        sector,
        Buf::read_into(data(0), SECTOR as u32),
    );
    b.kick();
    println!("GUEST-BLK-STUCK-SUBMITTED sector={sector}");
    wait_for_host("reset");
    if let Some(d) = b.poll() {
        println!(
            "GUEST-FAIL the stuck request completed (status {})",
            d.status
        );
        power::poweroff()
    }
    let old_used = b.vq.used;
    let Transport::Modern(dev) = b.dev else {
        fail("virtio-blk-stuck needs the modern transport")
    };
    let t = rdtsc();
    dev.reset();
    let us = (rdtsc() - t) * 1000 / khz;
    println!("GUEST-BLK-RESET us={us}");
    let mut b = Blk::init(dev, |offered| F_VERSION_1 | offered & WANTED, RING2.addr());
    stuck_checks(&mut b, old_used, "after the reset");
    wait_for_host("check again");
    stuck_checks(&mut b, old_used, "at the end");
    finish()
}

/// I/O on the re-initialised device (sectors 1..3 written from data
/// +4096 and read back at +8192), then the stuck read's traces: its
/// buffer, its status byte, the old used ring.
fn stuck_checks(b: &mut Blk, old_used: u64, when: &str) {
    let len = 2 * SECTOR;
    fill_pattern(4096, 1, len);
    b.request_ok(
        "write sectors 1..3",
        T_OUT,
        1,
        Buf::write_from(data(4096), len as u32),
    );
    fill(8192, len, 0xee);
    b.request_ok(
        "read sectors 1..3",
        T_IN,
        1,
        Buf::read_into(data(8192), len as u32),
    );
    check_pattern("read sectors 1..3", 8192, 1, len);
    if let Some(i) = (0..SECTOR).find(|&i| read8(data(i)) != STUCK_FILL) {
        println!("GUEST-FAIL {when}: byte {i} of the stuck read's buffer was written");
        power::poweroff()
    }
    let status = read8(status_byte(STUCK_SLOT));
    if status != STATUS_UNSET {
        println!("GUEST-FAIL {when}: the stuck read's status byte is {status}");
        power::poweroff()
    }
    // Vq::at zeroed the old rings: flags, idx and the first entry.
    if read64(old_used) != 0 || read64(old_used + 8) != 0 {
        println!("GUEST-FAIL {when}: the old used ring was written");
        power::poweroff()
    }
    println!("GUEST-BLK-STUCK-UNTOUCHED {when}");
}

/// Writes until the host's file system is full; the failure is IOERR for
/// that request and the device goes on (see the module docs).
fn blk_nospace(_: &Cmdline) -> ! {
    const CHUNK: u64 = 64 << 10;
    let mut b = Blk::start();
    let cap = b.capacity;
    fill(0, CHUNK, 0x6b);
    let mut sector = 0;
    let status = loop {
        if sector + CHUNK / SECTOR > cap {
            fail("every write succeeded: the disk never filled up");
        }
        let (s, _) = b.request(T_OUT, sector, Buf::write_from(data(0), CHUNK as u32));
        if s != S_OK {
            break s;
        }
        sector += CHUNK / SECTOR;
    };
    println!("GUEST-BLK-NOSPACE sector={sector} status={status}");
    let (s, _) = b.request(T_OUT, sector, Buf::write_from(data(0), CHUNK as u32));
    println!("GUEST-BLK-STATUS second-write={s}");
    if sector == 0 {
        fail("the first write failed already");
    }
    fill(CHUNK, SECTOR, 0xee);
    b.request_ok(
        "read sector 0",
        T_IN,
        0,
        Buf::read_into(data(CHUNK), SECTOR as u32),
    );
    if let Some(i) = (0..SECTOR).find(|&i| read8(data(CHUNK + i)) != 0x6b) {
        println!("GUEST-FAIL read sector 0: byte {i} is not what was written");
        power::poweroff()
    }
    println!("GUEST-BLK-AFTER-NOSPACE read ok");
    finish()
}
