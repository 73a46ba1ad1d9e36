//! Scenarios for the launcher's virtio-net (`--tunnet ...`, 1af4:1041,
//! modern PCI transport; queue 0 receiveq, queue 1 transmitq), driven by a
//! polled ring-3 driver that negotiates VERSION_1 (and MAC when offered),
//! so every buffer starts with the 12-byte `virtio_net_hdr_mrg_rxbuf`.
//! Test frames use ethertype [`ETHERTYPE`] (0x88b5, "local experimental").
//!
//! - `virtio-net-tx count=N` (8): N frames to ff:ff:ff:ff:ff:ff with the
//!   payload `launcher-test <i>`; `GUEST-NET-TX sent=N` once all are used.
//! - `virtio-net-rx count=N` (4): posts receive buffers, prints
//!   `GUEST-NET-RX-READY`, and waits (at most `seconds=S`, 20, by the CMOS
//!   clock) for N frames of [`ETHERTYPE`], printing `GUEST-NET-RX
//!   <payload>` for each (trailing NULs of a padded frame dropped).
//! - `bench-net mode=tx count=N` (100000): N small frames, as fast as the
//!   ring allows; `mode=rx`: counts frames of [`ETHERTYPE`] until one whose
//!   payload starts with `bench-end` (or `seconds=S`, 60, pass). Both print
//!   `GUEST-BENCH net-<tx|rx> frames=<n> fps=<n>` (see bench/README.md).
//! - `virtio-net-legacy-tx` and `virtio-net-legacy-rx` (`--legacy`,
//!   1af4:1000): the same as `virtio-net-tx`/`-rx` through the legacy
//!   transport with the 10-byte header, `layout=split` (default: the
//!   header alone in its own descriptor, as §5.1.6.6 asks without
//!   VIRTIO_F_ANY_LAYOUT) or `layout=any` (ANY_LAYOUT accepted, header and
//!   frame in one buffer, as Linux does).
//! - `bad-net-<rule>` and `bad-net-legacy-<rule>`: break one of the
//!   launcher's virtio-net rules once ([`BAD`]), print `GUEST-AFTER-BAD`,
//!   wait a little for `DEVICE_NEEDS_RESET` (`--lenient`), print
//!   `GUEST-STATUS <device_status>` and power off. A scenario whose rule
//!   is only a warning first makes sure the device has seen the buffer:
//!   it waits for the used transmit buffer, or (receive buffers, which
//!   stay with the device) for the device to publish, with
//!   VIRTIO_F_EVENT_IDX, that it has taken them (`avail_event`).

use core::fmt::Write;

use crate::clock::{self, Deadline};
use crate::cmdline::Cmdline;
use crate::pci;
use crate::port::{inb, inl, inw, outb, outl, outw};
use crate::power;
use crate::scenarios::{finish, rdtsc, Scenario};
use crate::virtio::legacy as reg;
use crate::virtio::{
    read16, read8, status, write16, write8, Device, Pages, Vq, DESC_NEXT, DESC_WRITE, F_VERSION_1,
    NET_DEVICE, RING_BYTES, VENDOR,
};
use crate::virtio_scenarios::fail;
use crate::{print, println};

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("virtio-net-tx", net_tx),
    ("virtio-net-rx", net_rx),
    ("bench-net", bench_net),
    ("virtio-net-legacy-tx", legacy_tx),
    ("virtio-net-legacy-rx", legacy_rx),
];

/// The misbehaving drivers, each breaking the rule it is named after
/// (modern, `--tunnet`; `bad-net-legacy-*`: `--legacy --tunnet`).
pub const BAD: &[(&str, Scenario)] = &[
    (
        "bad-net-feature-missing-prerequisite",
        bad_feature_missing_prerequisite,
    ),
    ("bad-net-tx-too-short", bad_tx_too_short),
    ("bad-net-tx-num-buffers", bad_tx_num_buffers),
    ("bad-net-tx-flags", bad_tx_flags),
    ("bad-net-tx-data-valid", bad_tx_data_valid),
    ("bad-net-tx-gso-not-negotiated", bad_tx_gso_not_negotiated),
    ("bad-net-tx-gso-without-csum", bad_tx_gso_without_csum),
    ("bad-net-tx-gso-size-zero", bad_tx_gso_size_zero),
    ("bad-net-tx-csum-outside-packet", bad_tx_csum_outside_packet),
    (
        "bad-net-tx-ecn-without-host-ecn",
        bad_tx_ecn_without_host_ecn,
    ),
    ("bad-net-tx-buffer-writable", bad_tx_buffer_writable),
    ("bad-net-rx-buffer-too-short", bad_rx_buffer_too_short),
    ("bad-net-rx-buffer-small", bad_rx_buffer_small),
    ("bad-net-rx-buffer-readable", bad_rx_buffer_readable),
    ("bad-net-mac-not-accepted", bad_mac_not_accepted),
    (
        "bad-net-legacy-header-not-alone",
        bad_legacy_header_not_alone,
    ),
    (
        "bad-net-legacy-rx-header-not-alone",
        bad_legacy_rx_header_not_alone,
    ),
    ("bad-net-legacy-tx-flags", bad_legacy_tx_flags),
    ("bad-net-legacy-tx-num-buffers", bad_legacy_tx_num_buffers),
];

pub const ETHERTYPE: u16 = 0x88b5;
const F_CSUM: u64 = 1 << 0;
const F_MAC: u64 = 1 << 5;
const F_HOST_TSO4: u64 = 1 << 11;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_ANY_LAYOUT: u64 = 1 << 27;
const F_EVENT_IDX: u64 = 1 << 29;
/// `struct virtio_net_hdr` flags and gso types (§5.1.6).
const HDR_F_NEEDS_CSUM: u8 = 1;
const HDR_F_DATA_VALID: u8 = 2;
const GSO_TCPV4: u8 = 1;
const GSO_ECN: u8 = 0x80;
const RXQ: u16 = 0;
const TXQ: u16 = 1;
/// Entries per queue (the device allows 256).
const QSIZE: u16 = 256;
/// `struct virtio_net_hdr_mrg_rxbuf`.
const HDR: u64 = 12;
/// Each receive buffer: header and a full 1514-byte frame, rounded up.
const RX_LEN: u64 = 2048;
/// Each transmit slot: header and a small frame.
const TX_LEN: u64 = 128;
/// Destination, source, ethertype.
const ETH_HDR: u64 = 14;

static RX_RING: Pages<RING_BYTES> = Pages::new();
static TX_RING: Pages<RING_BYTES> = Pages::new();
static RX_BUFS: Pages<{ QSIZE as usize * RX_LEN as usize }> = Pages::new();
static TX_BUFS: Pages<{ QSIZE as usize * TX_LEN as usize }> = Pages::new();

/// Runs `name` if it is one of ours; returns if it is not.
pub fn run(name: &str, cmdline: &Cmdline) {
    if let Some((_, f)) = SCENARIOS.iter().chain(BAD).find(|(n, _)| *n == name) {
        f(cmdline)
    }
}

fn rx_buf(n: u16) -> u64 {
    RX_BUFS.addr() + RX_LEN * u64::from(n)
}

fn tx_buf(n: u16) -> u64 {
    TX_BUFS.addr() + TX_LEN * u64::from(n)
}

/// A small byte buffer that `write!` can fill.
struct Text {
    buf: [u8; 64],
    len: usize,
}

impl Text {
    fn new() -> Text {
        Text {
            buf: [0; 64],
            len: 0,
        }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        let end = self.len + b.len();
        if end > self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

struct Net {
    dev: Device,
    rx: Vq,
    tx: Vq,
    mac: [u8; 6],
    /// Transmit descriptors not in the device's hands.
    tx_free: [u16; QSIZE as usize],
    tx_free_len: usize,
}

/// Start line, PCI listing, the modern virtio-net function probed, reset,
/// ACKNOWLEDGE and DRIVER set.
fn begin() -> Device {
    println!("GUEST-TEST-START");
    pci::enumerate();
    let dev =
        Device::probe(NET_DEVICE).unwrap_or_else(|| fail("no virtio-net (1af4:1041) on bus 0"));
    dev.begin();
    dev
}

impl Net {
    /// A well-behaved driver's device: VERSION_1, and MAC if offered.
    fn start() -> Net {
        Net::start_with(|offered| F_VERSION_1 | offered & F_MAC)
    }

    /// The device initialised up to DRIVER_OK, accepting what `accept`
    /// makes of the offered features (with VIRTIO_F_EVENT_IDX, avail.flags
    /// stays 0 as §2.7.7.1 asks).
    fn start_with(accept: impl Fn(u64) -> u64) -> Net {
        let dev = begin();
        let accepted = accept(dev.device_features());
        if dev.negotiate(accepted) & status::FEATURES_OK == 0 {
            fail("device refused FEATURES_OK");
        }
        let mut rx = Vq::at(RXQ, QSIZE, RX_RING.addr());
        let mut tx = Vq::at(TXQ, QSIZE, TX_RING.addr());
        if accepted & F_EVENT_IDX != 0 {
            write16(rx.avail, 0);
            write16(tx.avail, 0);
        }
        dev.setup_queue(&mut rx);
        dev.setup_queue(&mut tx);
        dev.driver_ok();
        let mut mac = [0u8; 6];
        for (i, m) in mac.iter_mut().enumerate() {
            *m = dev.cfg8(i as u64);
        }
        println!(
            "GUEST-NET-MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} rx_size={} tx_size={}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], rx.size, tx.size
        );
        let mut tx_free = [0u16; QSIZE as usize];
        for (i, f) in tx_free.iter_mut().enumerate() {
            *f = i as u16;
        }
        let tx_free_len = usize::from(tx.size);
        Net {
            dev,
            rx,
            tx,
            mac,
            tx_free,
            tx_free_len,
        }
    }

    /// Makes receive buffer `n` available (not published).
    fn post_rx(&mut self, n: u16) {
        self.rx.set_desc(n, rx_buf(n), RX_LEN as u32, DESC_WRITE, 0);
        self.rx.push(n);
    }

    fn kick_rx(&mut self) {
        self.rx.publish_pushed();
        self.dev.notify(&self.rx);
    }

    /// Posts every receive buffer and notifies.
    fn post_all_rx(&mut self) {
        for n in 0..self.rx.size {
            self.post_rx(n);
        }
        self.kick_rx();
    }

    /// Takes back transmit buffers the device has used.
    fn reclaim_tx(&mut self) -> usize {
        let mut n = 0;
        while let Some((id, _)) = self.tx.poll_used() {
            if id >= u32::from(self.tx.size) || self.tx_free_len == usize::from(self.tx.size) {
                println!("GUEST-FAIL transmitq used id {id} was not in flight");
                power::poweroff()
            }
            self.tx_free[self.tx_free_len] = id as u16;
            self.tx_free_len += 1;
            n += 1;
        }
        n
    }

    fn tx_in_flight(&self) -> usize {
        usize::from(self.tx.size) - self.tx_free_len
    }

    /// Queues a broadcast frame of [`ETHERTYPE`] carrying `payload`, if a
    /// transmit buffer is free (not published).
    fn queue_tx(&mut self, payload: &[u8]) -> bool {
        if self.tx_free_len == 0 {
            return false;
        }
        self.tx_free_len -= 1;
        let d = self.tx_free[self.tx_free_len];
        let a = tx_buf(d);
        let mut at = a;
        let mut put = |b: u8| {
            write8(at, b);
            at += 1;
        };
        for _ in 0..HDR {
            put(0);
        }
        for _ in 0..6 {
            put(0xff);
        }
        for &m in &self.mac {
            put(m);
        }
        for &b in &ETHERTYPE.to_be_bytes() {
            put(b);
        }
        let room = (TX_LEN - HDR - ETH_HDR) as usize;
        for &b in &payload[..payload.len().min(room)] {
            put(b);
        }
        self.tx.set_desc(d, a, (at - a) as u32, 0, 0);
        self.tx.push(d);
        true
    }

    fn kick_tx(&mut self) {
        self.tx.publish_pushed();
        self.dev.notify(&self.tx);
    }
}

/// The ethertype and payload of the frame in receive buffer `id` that the
/// device filled with `len` bytes (header included).
fn received(id: u32, len: u32) -> (u16, u64, u64) {
    if id >= u32::from(QSIZE) || u64::from(len) > RX_LEN || u64::from(len) < HDR {
        println!("GUEST-FAIL receiveq used id={id} len={len}");
        power::poweroff()
    }
    let frame = rx_buf(id as u16) + HDR;
    let flen = u64::from(len) - HDR;
    if flen < ETH_HDR {
        return (0, frame, 0);
    }
    let et = u16::from_be(read16(frame + 12));
    (et, frame + ETH_HDR, flen - ETH_HDR)
}

fn net_tx(cmdline: &Cmdline) -> ! {
    let mut n = Net::start();
    let count = cmdline.get_u64("count").unwrap_or(8);
    let mut sent = 0;
    let mut deadline = Deadline::after(20);
    while sent < count || n.tx_in_flight() > 0 {
        n.reclaim_tx();
        if sent < count {
            let mut t = Text::new();
            let _ = write!(t, "launcher-test {sent}");
            if n.queue_tx(t.bytes()) {
                n.kick_tx();
                sent += 1;
                continue;
            }
        }
        if deadline.expired() {
            fail("the transmitq did not return its buffers within 20 s");
        }
        core::hint::spin_loop();
    }
    println!("GUEST-NET-TX sent={count}");
    finish()
}

/// `GUEST-NET-RX <payload>`, trailing NULs (padding) dropped.
fn print_payload(payload: u64, plen: u64) {
    let mut end = plen;
    while end > 0 && read8(payload + end - 1) == 0 {
        end -= 1;
    }
    print!("GUEST-NET-RX ");
    for i in 0..end {
        let c = read8(payload + i);
        let c = if c.is_ascii_graphic() || c == b' ' {
            c
        } else {
            b'?'
        };
        print!("{}", c as char);
    }
    println!();
}

fn net_rx(cmdline: &Cmdline) -> ! {
    let mut n = Net::start();
    let count = cmdline.get_u64("count").unwrap_or(4);
    let seconds = cmdline.get_u64("seconds").unwrap_or(20) as u32;
    n.post_all_rx();
    println!("GUEST-NET-RX-READY");
    let mut got = 0;
    let mut others = 0u64;
    let mut deadline = Deadline::after(seconds);
    while got < count {
        let Some((id, len)) = n.rx.poll_used() else {
            if deadline.expired() {
                println!("GUEST-NET-RX-TIMEOUT got={got} others={others}");
                fail("not all frames arrived in time");
            }
            core::hint::spin_loop();
            continue;
        };
        let (et, payload, plen) = received(id, len);
        if et == ETHERTYPE {
            print_payload(payload, plen);
            got += 1;
        } else {
            others += 1;
        }
        n.post_rx(id as u16);
        n.kick_rx();
    }
    println!("GUEST-NET-RX-DONE got={got} others={others}");
    finish()
}

fn bench_net(cmdline: &Cmdline) -> ! {
    let khz = clock::tsc_khz(cmdline);
    match cmdline.get("mode").unwrap_or("tx") {
        "tx" => bench_tx(cmdline, khz),
        "rx" => bench_rx(cmdline, khz),
        m => {
            println!("GUEST-FAIL bench-net: unknown mode {m:?} (tx or rx)");
            power::poweroff()
        }
    }
}

fn per_second(n: u64, cycles: u64, khz: u64) -> u64 {
    (u128::from(n) * u128::from(khz) * 1000 / u128::from(cycles.max(1))) as u64
}

fn bench_tx(cmdline: &Cmdline, khz: u64) -> ! {
    let mut n = Net::start();
    let count = cmdline.get_u64("count").unwrap_or(100_000);
    let mut sent = 0u64;
    let mut kicks = 0u64;
    let mut idle = 0u64;
    let t0 = rdtsc();
    while sent < count || n.tx_in_flight() > 0 {
        n.reclaim_tx();
        let mut queued = false;
        while sent < count {
            let mut t = Text::new();
            let _ = write!(t, "launcher-bench {sent}");
            if !n.queue_tx(t.bytes()) {
                break;
            }
            sent += 1;
            queued = true;
        }
        if queued {
            n.kick_tx();
            kicks += 1;
            idle = 0;
        } else {
            idle += 1;
            if idle > 1 << 32 {
                fail("the transmitq stopped returning buffers");
            }
            core::hint::spin_loop();
        }
    }
    let cycles = rdtsc() - t0;
    println!(
        "GUEST-BENCH net-tx frames={count} fps={} kicks={kicks} tsc={cycles}",
        per_second(count, cycles, khz)
    );
    finish()
}

fn bench_rx(cmdline: &Cmdline, khz: u64) -> ! {
    let mut n = Net::start();
    let seconds = cmdline.get_u64("seconds").unwrap_or(60) as u32;
    n.post_all_rx();
    println!("GUEST-NET-RX-READY");
    let mut frames = 0u64;
    let mut first = 0u64;
    let mut last = 0u64;
    let mut deadline = Deadline::after(seconds);
    let mut ended = false;
    while !ended {
        let mut any = false;
        while let Some((id, len)) = n.rx.poll_used() {
            any = true;
            let (et, payload, plen) = received(id, len);
            if et == ETHERTYPE {
                let end =
                    plen >= 9 && (0..9).all(|i| read8(payload + i) == b"bench-end"[i as usize]);
                if end {
                    ended = true;
                } else {
                    if frames == 0 {
                        first = rdtsc();
                    }
                    last = rdtsc();
                    frames += 1;
                }
            }
            n.post_rx(id as u16);
        }
        if any {
            n.kick_rx();
        } else if deadline.expired() {
            println!("GUEST-NET-RX-TIMEOUT frames={frames}");
            break;
        } else {
            core::hint::spin_loop();
        }
    }
    println!(
        "GUEST-BENCH net-rx frames={frames} fps={} tsc={}",
        per_second(frames.saturating_sub(1), last - first, khz),
        last - first
    );
    finish()
}

// ---- misbehaving drivers (modern) ----

/// Seconds to wait for the device to take a buffer.
const WAIT_SECONDS: u32 = 10;

/// A `struct virtio_net_hdr`, all 12 bytes (`num_buffers` last).
#[derive(Clone, Copy, Default)]
struct Hdr {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
    num_buffers: u16,
}

impl Hdr {
    fn bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        let words = [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ];
        for (i, w) in words.iter().enumerate() {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// What Linux sends for a TCP/IPv4 segmentation request: the checksum
    /// to fill in at the TCP header's, segments of `gso_size` bytes.
    fn tso4() -> Hdr {
        Hdr {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 100,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }
}

/// Writes `bytes` at `at`; the address after them.
fn put(at: u64, bytes: &[u8]) -> u64 {
    for (i, &b) in bytes.iter().enumerate() {
        write8(at + i as u64, b);
    }
    at + bytes.len() as u64
}

/// `hdr`, then a broadcast frame of [`ETHERTYPE`] from `mac` carrying
/// `payload`, at `at`; its length.
fn test_frame(at: u64, hdr: &[u8], mac: &[u8; 6], payload: &[u8]) -> u32 {
    let mut p = put(at, hdr);
    p = put(p, &[0xff; 6]);
    p = put(p, mac);
    p = put(p, &ETHERTYPE.to_be_bytes());
    p = put(p, payload);
    (p - at) as u32
}

/// `hdr`, then a broadcast TCP/IPv4 frame from `mac` with 200 bytes of
/// data (10.77.9.2:40000 to 10.77.9.1:9, TCP checksum left for the
/// device), at `at`; its length. For the segmentation scenarios.
fn tcp_frame(at: u64, hdr: &[u8], mac: &[u8; 6]) -> u32 {
    const DATA: u16 = 200;
    let mut p = put(at, hdr);
    p = put(p, &[0xff; 6]);
    p = put(p, mac);
    p = put(p, &0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + 20 + DATA).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 77, 9, 2]);
    ip[16..20].copy_from_slice(&[10, 77, 9, 1]);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p = put(p, &ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
    tcp[7] = 1; // sequence number
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    p = put(p, &tcp);
    for i in 0..DATA {
        write8(p + u64::from(i), b'a' + (i % 26) as u8);
    }
    (p + u64::from(DATA) - at) as u32
}

/// Fills descriptors 0.. of `vq` with one chain of `bufs` (address,
/// length, device-writable) and makes it available.
fn offer_chain(vq: &mut Vq, bufs: &[(u64, u32, bool)]) {
    for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
        let next = if i + 1 < bufs.len() { DESC_NEXT } else { 0 };
        let write = if writable { DESC_WRITE } else { 0 };
        vq.set_desc(i as u16, addr, len, next | write, i as u16 + 1);
    }
    vq.offer(0);
}

impl Net {
    /// One chain on the transmitq, notified.
    fn send_chain(&mut self, bufs: &[(u64, u32, bool)]) {
        offer_chain(&mut self.tx, bufs);
        self.dev.notify(&self.tx);
    }

    /// One chain on the receiveq, notified.
    fn post_chain(&mut self, bufs: &[(u64, u32, bool)]) {
        offer_chain(&mut self.rx, bufs);
        self.dev.notify(&self.rx);
    }

    /// A test frame behind `hdr` (its first `hdr_len` bytes) in one buffer.
    fn send_test_frame(&mut self, hdr: &Hdr, hdr_len: usize) {
        let a = tx_buf(0);
        let len = test_frame(a, &hdr.bytes()[..hdr_len], &self.mac, b"launcher-bad");
        self.send_chain(&[(a, len, false)]);
    }

    /// A TCP frame behind `hdr` in one buffer.
    fn send_tcp_frame(&mut self, hdr: &Hdr) {
        let a = tx_buf(0);
        let len = tcp_frame(a, &hdr.bytes(), &self.mac);
        self.send_chain(&[(a, len, false)]);
    }

    /// Waits until the device has used a transmit buffer.
    fn wait_tx_used(&mut self) {
        let mut deadline = Deadline::after(WAIT_SECONDS);
        while self.tx.poll_used().is_none() {
            if deadline.expired() {
                fail("the transmitq did not use the buffer");
            }
            core::hint::spin_loop();
        }
    }

    /// Waits until the device has taken every receive buffer made
    /// available: with VIRTIO_F_EVENT_IDX it then publishes avail_event
    /// (after the used ring) as the index it will look at next.
    fn wait_rx_taken(&mut self) {
        let avail_event = self.rx.used + 4 + 8 * u64::from(self.rx.size);
        let mut deadline = Deadline::after(WAIT_SECONDS);
        while read16(avail_event) != self.rx.avail_idx {
            if deadline.expired() {
                fail("the receiveq did not take the buffers");
            }
            core::hint::spin_loop();
        }
    }
}

/// VERSION_1, MAC and `more`.
fn accept(more: u64) -> impl Fn(u64) -> u64 {
    move |offered| F_VERSION_1 | offered & F_MAC | more
}

/// HOST_TSO4 without the CSUM it requires (§5.1.3.1).
fn bad_feature_missing_prerequisite(_: &Cmdline) -> ! {
    let dev = begin();
    let offered = dev.device_features();
    if offered & F_HOST_TSO4 == 0 {
        fail("the device does not offer HOST_TSO4");
    }
    dev.negotiate(F_VERSION_1 | offered & F_MAC | F_HOST_TSO4);
    crate::scenarios::after_bad(|| dev.status())
}

/// A transmit chain of 8 bytes: not even the 12-byte header.
fn bad_tx_too_short(_: &Cmdline) -> ! {
    let mut n = Net::start();
    put(tx_buf(0), &[0; 8]);
    n.send_chain(&[(tx_buf(0), 8, false)]);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// num_buffers 1 in a transmitted header.
fn bad_tx_num_buffers(_: &Cmdline) -> ! {
    let mut n = Net::start();
    let hdr = Hdr {
        num_buffers: 1,
        ..Hdr::default()
    };
    n.send_test_frame(&hdr, 12);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// NEEDS_CSUM (inside the packet) without VIRTIO_NET_F_CSUM.
fn bad_tx_flags(_: &Cmdline) -> ! {
    let mut n = Net::start();
    let hdr = Hdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 14,
        csum_offset: 0,
        ..Hdr::default()
    };
    n.send_test_frame(&hdr, 12);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// DATA_VALID, which only the device may set, with CSUM negotiated.
fn bad_tx_data_valid(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_CSUM));
    let hdr = Hdr {
        flags: HDR_F_DATA_VALID,
        ..Hdr::default()
    };
    n.send_test_frame(&hdr, 12);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// A TCPv4 segmentation request with CSUM but not HOST_TSO4.
fn bad_tx_gso_not_negotiated(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_CSUM));
    n.send_tcp_frame(&Hdr::tso4());
    crate::scenarios::after_bad(|| n.dev.status())
}

/// A segmentation request without NEEDS_CSUM.
fn bad_tx_gso_without_csum(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_CSUM | F_HOST_TSO4));
    let hdr = Hdr {
        flags: 0,
        ..Hdr::tso4()
    };
    n.send_tcp_frame(&hdr);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// A segmentation request with gso_size 0.
fn bad_tx_gso_size_zero(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_CSUM | F_HOST_TSO4));
    let hdr = Hdr {
        gso_size: 0,
        ..Hdr::tso4()
    };
    n.send_tcp_frame(&hdr);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// A checksum to be stored beyond the end of the packet.
fn bad_tx_csum_outside_packet(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_CSUM));
    let hdr = Hdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 1000,
        csum_offset: 16,
        ..Hdr::default()
    };
    n.send_test_frame(&hdr, 12);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// An ECN-marked TSO request without HOST_ECN (a SHOULD NOT): the frame
/// is still sent, so the used buffer comes back.
fn bad_tx_ecn_without_host_ecn(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_CSUM | F_HOST_TSO4));
    let hdr = Hdr {
        gso_type: GSO_TCPV4 | GSO_ECN,
        ..Hdr::tso4()
    };
    n.send_tcp_frame(&hdr);
    n.wait_tx_used();
    crate::scenarios::after_bad(|| n.dev.status())
}

/// A good frame followed by a device-writable buffer (a device limit:
/// the device ignores it and sends the frame).
fn bad_tx_buffer_writable(_: &Cmdline) -> ! {
    let mut n = Net::start();
    let a = tx_buf(0);
    let len = test_frame(a, &[0; 12], &n.mac, b"launcher-writable");
    n.send_chain(&[(a, len, false), (tx_buf(1), 16, true)]);
    n.wait_tx_used();
    crate::scenarios::after_bad(|| n.dev.status())
}

/// With MRG_RXBUF, a receive buffer of 8 bytes: less than the header.
fn bad_rx_buffer_too_short(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_MRG_RXBUF));
    n.post_chain(&[(rx_buf(0), 8, true)]);
    crate::scenarios::after_bad(|| n.dev.status())
}

/// Without MRG_RXBUF, a receive buffer of 512 bytes: short of a whole
/// 1526-byte frame (a SHOULD).
fn bad_rx_buffer_small(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_EVENT_IDX));
    n.post_chain(&[(rx_buf(0), 512, true)]);
    n.wait_rx_taken();
    crate::scenarios::after_bad(|| n.dev.status())
}

/// A receive chain that starts with a device-readable buffer (a device
/// limit: it is ignored), then room for a whole frame.
fn bad_rx_buffer_readable(_: &Cmdline) -> ! {
    let mut n = Net::start_with(accept(F_EVENT_IDX));
    let a = rx_buf(0);
    n.post_chain(&[(a, 12, false), (a + 16, RX_LEN as u32 - 16, true)]);
    n.wait_rx_taken();
    crate::scenarios::after_bad(|| n.dev.status())
}

/// VERSION_1 alone although the device offers MAC (a SHOULD): the
/// device says so when the driver first uses a queue, here a good frame.
fn bad_mac_not_accepted(_: &Cmdline) -> ! {
    let mut n = Net::start_with(|_| F_VERSION_1);
    if !n.queue_tx(b"launcher-no-mac") {
        fail("no transmit buffer");
    }
    n.kick_tx();
    n.wait_tx_used();
    crate::scenarios::after_bad(|| n.dev.status())
}

// ---- the legacy interface (`--legacy`, 1af4:1000) ----

/// The transitional PCI device id of virtio-net.
const NET_LEGACY_DEVICE: u16 = 0x1000;

/// A legacy driver's virtio-net: its I/O BAR, both queues (laid out the
/// legacy way in [`RX_RING`] and [`TX_RING`]) and its header size.
struct LegacyNet {
    io: u16,
    rx: Vq,
    tx: Vq,
    mac: [u8; 6],
    /// 10 bytes, or 12 with MRG_RXBUF.
    hdr: u64,
}

impl LegacyNet {
    /// Reset, ACKNOWLEDGE, DRIVER, the features `accept` picks, both
    /// queues placed, DRIVER_OK; prints `GUEST-NET-MAC`.
    fn start(accept: impl Fn(u64) -> u64) -> LegacyNet {
        println!("GUEST-TEST-START");
        pci::enumerate();
        let io = crate::virtio::legacy_function(VENDOR, NET_LEGACY_DEVICE, "virtio-net");
        let ad = status::ACKNOWLEDGE | status::DRIVER;
        outb(io + reg::STATUS, 0);
        outb(io + reg::STATUS, status::ACKNOWLEDGE);
        outb(io + reg::STATUS, ad);
        let offered = u64::from(inl(io + reg::HOST_FEATURES));
        let accepted = accept(offered);
        outl(io + reg::GUEST_FEATURES, accepted as u32);
        println!("GUEST-VIRTIO-FEATURES offered={offered:#x} accepted={accepted:#x}");
        let rx = legacy_queue(io, RXQ, RX_RING.addr());
        let tx = legacy_queue(io, TXQ, TX_RING.addr());
        outb(io + reg::STATUS, ad | status::DRIVER_OK);
        let mut mac = [0u8; 6];
        for (i, m) in mac.iter_mut().enumerate() {
            *m = inb(io + reg::CONFIG + i as u16);
        }
        println!(
            "GUEST-NET-MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} rx_size={} tx_size={}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], rx.size, tx.size
        );
        let hdr = if accepted & F_MRG_RXBUF != 0 { 12 } else { 10 };
        LegacyNet {
            io,
            rx,
            tx,
            mac,
            hdr,
        }
    }

    fn status(&self) -> u8 {
        inb(self.io + reg::STATUS)
    }

    fn notify(&self, vq: &Vq) {
        outw(self.io + reg::QUEUE_NOTIFY, vq.index);
    }

    /// One chain on the transmitq, notified.
    fn send_chain(&mut self, bufs: &[(u64, u32, bool)]) {
        offer_chain(&mut self.tx, bufs);
        self.notify(&self.tx);
    }

    /// One chain on the receiveq, notified.
    fn post_chain(&mut self, bufs: &[(u64, u32, bool)]) {
        offer_chain(&mut self.rx, bufs);
        self.notify(&self.rx);
    }

    fn wait_tx_used(&mut self) {
        let mut deadline = Deadline::after(WAIT_SECONDS);
        while self.tx.poll_used().is_none() {
            if deadline.expired() {
                fail("the legacy transmitq did not use the buffer");
            }
            core::hint::spin_loop();
        }
    }
}

/// Selects queue `index`, places it at `base` (page-aligned, room for
/// [`RING_BYTES`]) the legacy way, with its fixed size, and gives the
/// device its page number.
fn legacy_queue(io: u16, index: u16, base: u64) -> Vq {
    outw(io + reg::QUEUE_SEL, index);
    let size = inw(io + reg::QUEUE_NUM);
    if size == 0 || size > QSIZE || !size.is_power_of_two() {
        println!("GUEST-FAIL legacy queue {index} size {size}");
        power::poweroff()
    }
    let vq = Vq::legacy_at(index, size, base);
    outl(io + reg::QUEUE_PFN, (base >> 12) as u32);
    vq
}

/// `layout=split` (default) or `layout=any`: whether the driver accepts
/// ANY_LAYOUT and puts header and frame in one buffer.
fn any_layout(cmdline: &Cmdline) -> bool {
    match cmdline.get("layout").unwrap_or("split") {
        "split" => false,
        "any" => true,
        l => {
            println!("GUEST-FAIL layout={l}: split or any");
            power::poweroff()
        }
    }
}

fn legacy_tx(cmdline: &Cmdline) -> ! {
    let any = any_layout(cmdline);
    let extra = if any { F_ANY_LAYOUT } else { 0 };
    let mut n = LegacyNet::start(|offered| offered & (F_MAC | extra));
    let count = cmdline.get_u64("count").unwrap_or(8);
    for i in 0..count {
        let mut t = Text::new();
        let _ = write!(t, "launcher-test {i}");
        let hdr = [0u8; 10];
        let (a, b) = (tx_buf(0), tx_buf(1));
        if any {
            let len = test_frame(a, &hdr, &n.mac, t.bytes());
            n.send_chain(&[(a, len, false)]);
        } else {
            put(a, &hdr);
            let len = test_frame(b, &[], &n.mac, t.bytes());
            n.send_chain(&[(a, 10, false), (b, len, false)]);
        }
        n.wait_tx_used();
    }
    println!("GUEST-NET-TX sent={count}");
    finish()
}

fn legacy_rx(cmdline: &Cmdline) -> ! {
    let any = any_layout(cmdline);
    let extra = if any { F_ANY_LAYOUT } else { 0 };
    let mut n = LegacyNet::start(|offered| offered & (F_MAC | extra));
    let count = cmdline.get_u64("count").unwrap_or(4);
    let seconds = cmdline.get_u64("seconds").unwrap_or(20) as u32;
    // Split: descriptors 2k and 2k+1 are buffer k's header and frame.
    let per = if any { 1 } else { 2 };
    let buffers = n.rx.size / per;
    let post = |n: &mut LegacyNet, k: u16| {
        let a = rx_buf(k);
        if any {
            n.rx.set_desc(k, a, RX_LEN as u32, DESC_WRITE, 0);
        } else {
            let d = 2 * k;
            n.rx.set_desc(d, a, n.hdr as u32, DESC_WRITE | DESC_NEXT, d + 1);
            n.rx.set_desc(d + 1, a + 16, RX_LEN as u32 - 16, DESC_WRITE, 0);
        }
        n.rx.push(k * per);
    };
    for k in 0..buffers {
        post(&mut n, k);
    }
    n.rx.publish_pushed();
    n.notify(&n.rx);
    println!("GUEST-NET-RX-READY");
    let (mut got, mut others) = (0, 0u64);
    let mut deadline = Deadline::after(seconds);
    while got < count {
        let Some((id, len)) = n.rx.poll_used() else {
            if deadline.expired() {
                println!("GUEST-NET-RX-TIMEOUT got={got} others={others}");
                fail("not all frames arrived in time");
            }
            core::hint::spin_loop();
            continue;
        };
        let k = (id / u32::from(per)) as u16;
        if id % u32::from(per) != 0 || k >= buffers || u64::from(len) < n.hdr + ETH_HDR {
            println!("GUEST-FAIL legacy receiveq used id={id} len={len}");
            power::poweroff()
        }
        let frame = if any {
            rx_buf(k) + n.hdr
        } else {
            rx_buf(k) + 16
        };
        let flen = u64::from(len) - n.hdr;
        if u16::from_be(read16(frame + 12)) == ETHERTYPE {
            print_payload(frame + ETH_HDR, flen - ETH_HDR);
            got += 1;
        } else {
            others += 1;
        }
        post(&mut n, k);
        n.rx.publish_pushed();
        n.notify(&n.rx);
    }
    println!("GUEST-NET-RX-DONE got={got} others={others}");
    finish()
}

/// Without ANY_LAYOUT, header and frame in one transmit buffer.
fn bad_legacy_header_not_alone(_: &Cmdline) -> ! {
    let mut n = LegacyNet::start(|offered| offered & F_MAC);
    let a = tx_buf(0);
    let len = test_frame(a, &[0; 10], &n.mac, b"launcher-bad");
    n.send_chain(&[(a, len, false)]);
    crate::scenarios::after_bad(|| n.status())
}

/// Without ANY_LAYOUT, one receive buffer for header and frame (what
/// Linux posts, which is why the device offers ANY_LAYOUT).
fn bad_legacy_rx_header_not_alone(_: &Cmdline) -> ! {
    let mut n = LegacyNet::start(|offered| offered & F_MAC);
    n.post_chain(&[(rx_buf(0), 1528, true)]);
    crate::scenarios::after_bad(|| n.status())
}

/// The 10-byte legacy header with NEEDS_CSUM but no CSUM negotiated.
fn bad_legacy_tx_flags(_: &Cmdline) -> ! {
    let mut n = LegacyNet::start(|offered| offered & (F_MAC | F_ANY_LAYOUT));
    let hdr = Hdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 14,
        ..Hdr::default()
    };
    let a = tx_buf(0);
    let len = test_frame(a, &hdr.bytes()[..10], &n.mac, b"launcher-bad");
    n.send_chain(&[(a, len, false)]);
    crate::scenarios::after_bad(|| n.status())
}

/// With MRG_RXBUF the legacy header has num_buffers too: 1 is wrong.
fn bad_legacy_tx_num_buffers(_: &Cmdline) -> ! {
    let mut n = LegacyNet::start(|offered| offered & (F_MAC | F_ANY_LAYOUT | F_MRG_RXBUF));
    let hdr = Hdr {
        num_buffers: 1,
        ..Hdr::default()
    };
    let a = tx_buf(0);
    let len = test_frame(a, &hdr.bytes(), &n.mac, b"launcher-bad");
    n.send_chain(&[(a, len, false)]);
    crate::scenarios::after_bad(|| n.status())
}
