//! Scenarios for the launcher's virtio-console (always present, 1af4:1043,
//! modern PCI transport): queue 0 is the receiveq (what the launcher's
//! stdin carries to the guest, device-writable buffers), queue 1 the
//! transmitq (the guest's output, copied to the launcher's stdout).
//!
//! - `virtio-console-out`: sets up the transmitq only and sends
//!   `HVC-OUT hello from the guest\n` in one buffer.
//! - `virtio-console-echo`: sets up both queues, sends `HVC-READY\n` (from
//!   then on the launcher routes its stdin to this console), posts receive
//!   buffers and waits (at most [`INPUT_SECONDS`], counted on the CMOS
//!   clock) for a line, then sends `HVC-ECHO <line>\n`.
//!
//! - `virtio-console-flood`: sends `lines=N` (default 30000) numbered
//!   lines `HVC-FLOOD 000000` … through the transmitq, 240 to a 4 KiB
//!   buffer, one buffer at a time as Linux's hvc does, waiting as long as
//!   it takes for each to come back (the launcher holds them while its
//!   stdout is not read), then `GUEST-FLOOD-SENT lines=N` on COM1.
//! - `serial-flood`: `bytes=N` (default 1 MiB) of numbered lines
//!   `SER-FLOOD 000000` on COM1 with `rep outsb` (4 KiB per instruction,
//!   so the flood is quick), then `GUEST-FLOOD-SENT bytes=N`.
//!
//! All print `GUEST-TEST-END` on COM1 and power off once the device has
//! returned every buffer; `GUEST-FAIL <why>` and a power-off otherwise.

use crate::cmdline::Cmdline;
use crate::port::{inb, outb};
use crate::println;
use crate::scenarios::{finish, Scenario};
use crate::serial::COM1;
use crate::virtio::{self, Device, Pages, Vq, CONSOLE_DEVICE, DESC_WRITE, RING_BYTES};
use crate::virtio_scenarios::fail;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("virtio-console-out", console_out),
    ("virtio-console-echo", console_echo),
    ("bad-console-buffer-direction", bad_console_buffer_direction),
    ("virtio-console-flood", console_flood),
    ("serial-flood", serial_flood),
];

const RECEIVEQ: u16 = 0;
const TRANSMITQ: u16 = 1;
/// Entries per queue (the device allows up to 128).
const QSIZE: u16 = 8;
/// Receive buffers kept posted, and the size of each.
const RX_BUFFERS: u16 = 4;
const RX_LEN: u32 = 64;
/// How long `virtio-console-echo` waits for its input line.
pub const INPUT_SECONDS: u32 = 20;
/// The longest input line kept.
const LINE_MAX: usize = 256;
/// Used-ring polls between two looks at the clock.
const POLLS_PER_CLOCK_READ: u32 = 4096;

static RX_RING: Pages<RING_BYTES> = Pages::new();
static TX_RING: Pages<RING_BYTES> = Pages::new();
/// Transmit data at +0 (up to 0x1000 bytes), receive buffer `n` at
/// +0x1000 + RX_LEN * n.
static DATA: Pages<0x2000> = Pages::new();

const TX_DATA_MAX: usize = 0x1000;

/// Runs `name` if it is one of ours; returns if it is not.
pub fn run(name: &str, cmdline: &Cmdline) {
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
        f(cmdline)
    }
}

/// The console with its transmitq (and receiveq if `rx`) live.
struct Console {
    dev: Device,
    rx: Option<Vq>,
    tx: Vq,
}

impl Console {
    fn start(rx: bool) -> Console {
        println!("GUEST-TEST-START");
        let dev = Device::probe(CONSOLE_DEVICE)
            .unwrap_or_else(|| fail("no virtio-console (1af4:1043) on bus 0"));
        DATA.clear();
        dev.init();
        let rx = rx.then(|| {
            let mut q = Vq::at(RECEIVEQ, QSIZE, RX_RING.addr());
            dev.setup_queue(&mut q);
            q
        });
        let mut tx = Vq::at(TRANSMITQ, QSIZE, TX_RING.addr());
        dev.setup_queue(&mut tx);
        dev.driver_ok();
        Console { dev, rx, tx }
    }

    /// Sends `parts`, concatenated, as one device-readable buffer and waits
    /// for the device to return it.
    fn send(&mut self, parts: &[&[u8]]) {
        let addr = DATA.addr();
        let mut len = 0usize;
        for part in parts {
            for &b in *part {
                if len == TX_DATA_MAX {
                    fail("transmit buffer overflow");
                }
                virtio::write8(addr + len as u64, b);
                len += 1;
            }
        }
        let head = self.tx.avail_idx % self.tx.size;
        self.tx.set_desc(head, addr, len as u32, 0, 0);
        self.tx.offer(head);
        self.dev.notify(&self.tx);
        let Some((id, used_len)) = self.tx.wait_used() else {
            fail("no used buffer on the transmitq")
        };
        println!("GUEST-HVC-TX len={len} used id={id} len={used_len}");
        if id != u32::from(head) {
            println!("GUEST-FAIL transmitq used id={id}, wanted {head}");
            crate::power::poweroff()
        }
    }

    /// Makes receive buffer `n` available (without notifying).
    fn post_rx(&mut self, n: u16) {
        let rx = self.rx.as_mut().expect("receiveq set up");
        rx.set_desc(n, rx_buffer(n), RX_LEN, DESC_WRITE, 0);
        rx.offer(n);
    }

    fn notify_rx(&self) {
        self.dev.notify(self.rx.as_ref().expect("receiveq set up"));
    }
}

fn rx_buffer(n: u16) -> u64 {
    DATA.addr() + 0x1000 + u64::from(RX_LEN) * u64::from(n)
}

/// The CMOS clock's seconds register (whatever its encoding: only changes
/// are counted).
fn rtc_seconds() -> u8 {
    outb(0x70, 0x00);
    inb(0x71)
}

/// Input the launcher sent to the 8250 instead: `GUEST-COM1-INPUT <hex>`
/// with what the UART's receive FIFO holds (LSR bit 0: data ready).
fn report_com1_input() {
    crate::print!("GUEST-COM1-INPUT ");
    for _ in 0..LINE_MAX {
        if inb(COM1 + 5) & 1 == 0 {
            break;
        }
        crate::print!("{:02x}", inb(COM1));
    }
    println!();
}

/// One buffer through the transmitq.
fn console_out(_: &Cmdline) -> ! {
    let mut c = Console::start(false);
    c.send(&[b"HVC-OUT hello from the guest\n"]);
    finish()
}

/// A line in through the receiveq, echoed out through the transmitq.
fn console_echo(_: &Cmdline) -> ! {
    let mut c = Console::start(true);
    c.send(&[b"HVC-READY\n"]);
    for n in 0..RX_BUFFERS {
        c.post_rx(n);
    }
    c.notify_rx();

    let mut line = [0u8; LINE_MAX];
    let mut len = 0usize;
    let mut seconds = 0u32;
    let mut last_second = rtc_seconds();
    let mut polls = 0u32;
    'input: loop {
        let used = c.rx.as_mut().expect("receiveq set up").poll_used();
        let Some((id, used_len)) = used else {
            polls += 1;
            if polls == POLLS_PER_CLOCK_READ {
                polls = 0;
                let now = rtc_seconds();
                if now != last_second {
                    last_second = now;
                    seconds += 1;
                    if seconds > INPUT_SECONDS {
                        report_com1_input();
                        fail("no input line on the virtio console within 20 s");
                    }
                }
            }
            core::hint::spin_loop();
            continue;
        };
        if id >= u32::from(RX_BUFFERS) || used_len > RX_LEN {
            println!("GUEST-FAIL receiveq used id={id} len={used_len}");
            crate::power::poweroff()
        }
        println!("GUEST-HVC-RX id={id} len={used_len}");
        let addr = rx_buffer(id as u16);
        for i in 0..u64::from(used_len) {
            let b = virtio::read8(addr + i);
            if b == b'\n' {
                break 'input;
            }
            if len == LINE_MAX {
                fail("input line too long");
            }
            line[len] = b;
            len += 1;
        }
        c.post_rx(id as u16);
        c.notify_rx();
    }
    let mut text = &line[..len];
    if let [rest @ .., b'\r'] = text {
        text = rest;
    }
    c.send(&[b"HVC-ECHO ", text, b"\n"]);
    finish()
}

/// A device-writable buffer on the transmitq (queue 1), which must carry
/// only device-readable ones (§5.3.6.1).
fn bad_console_buffer_direction(_: &Cmdline) -> ! {
    let mut c = Console::start(false);
    crate::pci::enumerate();
    let head = c.tx.avail_idx % c.tx.size;
    c.tx.set_desc(head, DATA.addr(), 16, DESC_WRITE, 0);
    c.tx.offer(head);
    c.dev.notify(&c.tx);
    crate::scenarios::after_bad(|| c.dev.status())
}

/// Bytes in one `HVC-FLOOD nnnnnn\n` / `SER-FLOOD nnnnnn\n` line.
const FLOOD_LINE: usize = 17;
/// Whole lines in one 4 KiB transmit buffer or `rep outsb`.
const FLOOD_LINES_PER_BUFFER: usize = 240;

/// Writes line `n` (`PREFIX nnnnnn\n`, six digits, `prefix` 10 bytes) at
/// `out`.
fn flood_line(out: &mut [u8], prefix: &[u8; 10], n: usize) {
    out[..10].copy_from_slice(prefix);
    let mut v = n;
    for i in (0..6).rev() {
        out[10 + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out[16] = b'\n';
}

/// Numbered lines through the transmitq, one 4 KiB buffer at a time, each
/// waited for without a time limit (the test's own timeout bounds it).
fn console_flood(cmdline: &Cmdline) -> ! {
    let lines = cmdline.get_u64("lines").unwrap_or(30_000) as usize;
    let mut c = Console::start(false);
    let addr = DATA.addr();
    let mut line = [0u8; FLOOD_LINE];
    let mut n = 0;
    while n < lines {
        let k = (lines - n).min(FLOOD_LINES_PER_BUFFER);
        for i in 0..k {
            flood_line(&mut line, b"HVC-FLOOD ", n + i);
            for (j, &b) in line.iter().enumerate() {
                virtio::write8(addr + (i * FLOOD_LINE + j) as u64, b);
            }
        }
        let head = c.tx.avail_idx % c.tx.size;
        c.tx.set_desc(head, addr, (k * FLOOD_LINE) as u32, 0, 0);
        c.tx.offer(head);
        c.dev.notify(&c.tx);
        let (id, _) = loop {
            if let Some(e) = c.tx.poll_used() {
                break e;
            }
            core::hint::spin_loop();
        };
        if id != u32::from(head) {
            println!("GUEST-FAIL transmitq used id={id}, wanted {head}");
            crate::power::poweroff()
        }
        n += k;
    }
    println!("GUEST-FLOOD-SENT lines={lines}");
    finish()
}

/// Numbered lines on COM1, 4 KiB per `rep outsb`: far more than a pipe
/// holds, as fast as the launcher takes port writes.
fn serial_flood(cmdline: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    let bytes = cmdline.get_u64("bytes").unwrap_or(1 << 20) as usize;
    let mut buf = [0u8; FLOOD_LINE * FLOOD_LINES_PER_BUFFER];
    let mut line = 0;
    let mut sent = 0;
    while sent < bytes {
        for i in 0..FLOOD_LINES_PER_BUFFER {
            flood_line(&mut buf[i * FLOOD_LINE..], b"SER-FLOOD ", line + i);
        }
        line += FLOOD_LINES_PER_BUFFER;
        let n = buf.len().min(bytes - sent);
        // SAFETY: reads `n` bytes of a live buffer; DF is clear.
        unsafe {
            core::arch::asm!(
                "rep outsb",
                in("dx") COM1,
                inout("rsi") buf.as_ptr() => _,
                inout("rcx") n => _,
                options(nostack, readonly)
            );
        }
        sent += n;
    }
    println!("GUEST-FLOOD-SENT bytes={bytes}");
    finish()
}
