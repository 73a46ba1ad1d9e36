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

use core::fmt::Write;

use crate::clock::{self, Deadline};
use crate::cmdline::Cmdline;
use crate::pci;
use crate::power;
use crate::scenarios::{finish, rdtsc, Scenario};
use crate::virtio::{
    read16, read8, status, write8, Device, Pages, Vq, DESC_WRITE, F_VERSION_1, NET_DEVICE,
    RING_BYTES,
};
use crate::virtio_scenarios::fail;
use crate::{print, println};

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("virtio-net-tx", net_tx),
    ("virtio-net-rx", net_rx),
    ("bench-net", bench_net),
];

pub const ETHERTYPE: u16 = 0x88b5;
const F_MAC: u64 = 1 << 5;
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
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
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

impl Net {
    fn start() -> Net {
        println!("GUEST-TEST-START");
        pci::enumerate();
        let dev =
            Device::probe(NET_DEVICE).unwrap_or_else(|| fail("no virtio-net (1af4:1041) on bus 0"));
        dev.begin();
        let offered = dev.device_features();
        if dev.negotiate(F_VERSION_1 | offered & F_MAC) & status::FEATURES_OK == 0 {
            fail("device refused FEATURES_OK");
        }
        let mut rx = Vq::at(RXQ, QSIZE, RX_RING.addr());
        dev.setup_queue(&mut rx);
        let mut tx = Vq::at(TXQ, QSIZE, TX_RING.addr());
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
