//! Scenarios for vmmci, OpenBSD's VMM Control Interface (`--vmmci`,
//! 0b5d:0777, legacy virtio I/O BAR without queues), driven by polling:
//! the test guest takes no interrupts.
//!
//! - `vmmci-openbsd`: as OpenBSD's `vmmci(4)`: exact 32-bit accesses to
//!   the device configuration, ISR polled for the configuration change.
//! - `vmmci-linux`: as the out-of-tree Linux driver behind Linux's stock
//!   legacy transport: configuration read and written byte by byte, ISR
//!   never read; after the command arrives it watches the command register
//!   for 1–2 s and prints `GUEST-VMMCI repeats=<n>` (changes seen).
//!
//! Both print `GUEST-VMMCI features=<hex>`, `GUEST-VMMCI time sec=<s>
//! usec=<us>`, `GUEST-VMMCI-READY`, then wait (~30 s, CMOS clock) for a
//! command: `GUEST-VMMCI command=<n>`, the ack (`GUEST-VMMCI acked`, not
//! with `noack=1`, which then spins until the launcher gives up, or reboots
//! instead of shutting down with `onshutdown=reboot`), and a
//! power-off for SHUTDOWN (1) or an i8042 reset for REBOOT (2).
//!
//! - `reboot-on-input`: prints `GUEST-TEST-START` and reboots when a byte
//!   arrives on COM1 (the launcher's stdin).

use crate::clock::{rtc_seconds, Deadline};
use crate::cmdline::Cmdline;
use crate::pci;
use crate::port::{inb, inl, outb, outl};
use crate::power;
use crate::println;
use crate::scenarios::Scenario;

pub const VENDOR: u16 = 0x0b5d;
pub const DEVICE: u16 = 0x0777;

/// Legacy virtio I/O BAR registers; the device configuration starts at 20.
mod reg {
    pub const HOST_FEATURES: u16 = 0;
    pub const GUEST_FEATURES: u16 = 4;
    pub const STATUS: u16 = 18;
    pub const ISR: u16 = 19;
    pub const COMMAND: u16 = 20;
    pub const TIME_SEC_LO: u16 = 24;
    pub const TIME_SEC_HI: u16 = 28;
    pub const TIME_USEC_LO: u16 = 32;
    pub const TIME_USEC_HI: u16 = 36;
}

mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
}

const ISR_CONFIG: u8 = 2;
const FEATURES: u32 = 7;
const SHUTDOWN: u32 = 1;
const REBOOT: u32 = 2;
/// Seconds to wait for a command.
const COMMAND_WAIT: u32 = 30;
/// Seconds to watch for repeated commands (Linux style): 1 to 2 s on the
/// CMOS clock, well inside vmd's 3 s short timeout for the ack that follows.
const REPEAT_WATCH: u32 = 1;

pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("vmmci-openbsd", openbsd),
    ("vmmci-linux", linux),
    ("reboot-on-input", reboot_on_input),
];

/// Runs `name` if it is one of ours; returns if it is not.
pub fn run(name: &str, cmdline: &Cmdline) {
    if let Some((_, f)) = SCENARIOS.iter().find(|(n, _)| *n == name) {
        f(cmdline)
    }
}

/// How the driver reaches the device configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Exact 32-bit accesses (vmd answers nothing else).
    OpenBsd,
    /// Four 8-bit accesses per register (Linux's legacy virtio-pci).
    Linux,
}

struct Vmmci {
    io: u16,
    style: Style,
}

impl Vmmci {
    fn read(&self, off: u16) -> u32 {
        match self.style {
            Style::OpenBsd => inl(self.io + off),
            Style::Linux => (0..4).fold(0u32, |v, i| {
                v | u32::from(inb(self.io + off + i)) << (8 * i)
            }),
        }
    }

    fn write(&self, off: u16, v: u32) {
        match self.style {
            Style::OpenBsd => outl(self.io + off, v),
            Style::Linux => {
                for (i, b) in v.to_le_bytes().into_iter().enumerate() {
                    outb(self.io + off + i as u16, b);
                }
            }
        }
    }

    fn set_status(&self, s: u8) {
        outb(self.io + reg::STATUS, s);
    }
}

/// Finds the device, enables its I/O decoding and returns its BAR0 port.
fn probe(style: Style) -> Vmmci {
    let Some(slot) = pci::find(VENDOR, DEVICE) else {
        panic!("no vmmci device (0b5d:0777): start the launcher with --vmmci")
    };
    let cmd = slot.read16(pci::COMMAND);
    slot.write16(pci::COMMAND, cmd | pci::COMMAND_IO);
    let bar = slot.read32(pci::BAR0);
    assert!(bar & 1 == 1, "vmmci BAR0 {bar:#x} is not I/O space");
    let io = (bar & 0xfffc) as u16;
    assert!(io != 0, "vmmci BAR0 is not assigned");
    Vmmci { io, style }
}

fn openbsd(cmdline: &Cmdline) -> ! {
    drive(cmdline, Style::OpenBsd)
}

fn linux(cmdline: &Cmdline) -> ! {
    drive(cmdline, Style::Linux)
}

fn drive(cmdline: &Cmdline, style: Style) -> ! {
    println!("GUEST-TEST-START");
    let dev = probe(style);
    dev.set_status(0);
    dev.set_status(status::ACKNOWLEDGE | status::DRIVER);
    // Linux's legacy transport reads the feature words with ioread32 too.
    let host = inl(dev.io + reg::HOST_FEATURES);
    println!("GUEST-VMMCI features={host:x}");
    outl(dev.io + reg::GUEST_FEATURES, FEATURES);
    dev.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);

    // The read of 24 latches the host clock; both drivers read it first.
    let sec_lo = dev.read(reg::TIME_SEC_LO);
    let sec_hi = dev.read(reg::TIME_SEC_HI);
    let usec_lo = dev.read(reg::TIME_USEC_LO);
    let usec_hi = dev.read(reg::TIME_USEC_HI);
    let sec = u64::from(sec_hi) << 32 | u64::from(sec_lo);
    let usec = u64::from(usec_hi) << 32 | u64::from(usec_lo);
    println!("GUEST-VMMCI time sec={sec} usec={usec}");
    println!("GUEST-VMMCI-READY");

    let command = wait_command(&dev);
    println!("GUEST-VMMCI command={command}");
    if style == Style::Linux {
        let repeats = watch_repeats(&dev, command);
        println!("GUEST-VMMCI repeats={repeats}");
    }
    if cmdline.get_u64("noack") == Some(1) {
        println!("GUEST-VMMCI not acking");
        power::halt_forever()
    }
    if command == SHUTDOWN && cmdline.get("onshutdown") == Some("reboot") {
        // A guest that tries to dodge the host's shutdown.
        println!("GUEST-VMMCI rebooting instead");
        power::reboot()
    }
    dev.write(reg::COMMAND, command);
    println!("GUEST-VMMCI acked");
    match command {
        SHUTDOWN => power::poweroff(),
        REBOOT => power::reboot(),
        c => panic!("unexpected vmmci command {c}"),
    }
}

/// Polls (ISR too, OpenBSD style) until the command register is not NONE.
fn wait_command(dev: &Vmmci) -> u32 {
    let mut deadline = Deadline::after(COMMAND_WAIT);
    loop {
        let isr_config = dev.style == Style::OpenBsd && inb(dev.io + reg::ISR) & ISR_CONFIG != 0;
        let command = dev.read(reg::COMMAND);
        if command != 0 {
            return command;
        }
        if isr_config {
            println!("GUEST-VMMCI config change without a command");
        }
        if deadline.expired() {
            panic!("no vmmci command within {COMMAND_WAIT} s");
        }
    }
}

/// Keeps reading the command register for 1–2 s and counts its changes.
/// Looks at the CMOS clock on every round (not through [`Deadline`], which
/// looks only every few thousand polls): port exits are slow on nested
/// hosts, and the ack must still come within vmd's 3 s.
fn watch_repeats(dev: &Vmmci, command: u32) -> u32 {
    let mut second = rtc_seconds();
    let mut ticks = 0;
    let mut last = command;
    let mut changes = 0;
    while ticks <= REPEAT_WATCH {
        let now = dev.read(reg::COMMAND);
        if now != last {
            println!("GUEST-VMMCI command changed {last} -> {now}");
            changes += 1;
            last = now;
        }
        let s = rtc_seconds();
        if s != second {
            second = s;
            ticks += 1;
        }
    }
    changes
}

/// `GUEST-TEST-START`, a short wait, then an i8042 reset.
/// Prints `GUEST-TEST-START`, then reboots once a byte arrives on COM1
/// (the launcher's stdin): the test decides when, so it can inspect the
/// launcher for as long as it needs, however busy the host is.
fn reboot_on_input(_: &Cmdline) -> ! {
    println!("GUEST-TEST-START");
    // LSR bit 0: data ready.
    while inb(crate::serial::COM1 + 5) & 1 == 0 {
        core::hint::spin_loop();
    }
    power::reboot()
}
