//! A minimal virtio 1.0 driver for the modern PCI transport (virtio 1.0
//! §4.1), polled from ring 3: no interrupts (every vector stays NO_VECTOR),
//! one split virtqueue in a static, page-aligned buffer of the image (the
//! guest is identity-mapped, so its addresses are guest-physical).
//!
//! [`Device::probe`] finds the function on bus 0 (the modern id, else a
//! transitional one with the modern capabilities: QEMU's default on its
//! i440fx machine), turns on memory decoding and bus mastering, and
//! locates the common, notify, ISR, device and PCI-configuration-access
//! structures through the vendor capabilities, in whichever memory BAR
//! each names (BAR0 on the launcher; a 64-bit BAR4 that SeaBIOS placed on
//! QEMU).
//! Register accesses are volatile and of each field's own width; 64-bit
//! queue addresses are written as two 32-bit halves.
//!
//! The methods do exactly what they say and check nothing, so scenarios can
//! also use them to break the rules on purpose.

use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::pci::{self, Slot};
use crate::println;

pub const VENDOR: u16 = 0x1af4;
/// 0x1040 + device type 4 (entropy source).
pub const RNG_DEVICE: u16 = 0x1044;
/// 0x1040 + device type 3 (console).
pub const CONSOLE_DEVICE: u16 = 0x1043;
/// 0x1040 + device type 2 (block).
pub const BLK_DEVICE: u16 = 0x1042;
/// 0x1040 + device type 1 (network card).
pub const NET_DEVICE: u16 = 0x1041;

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// `struct virtio_pci_common_cfg` offsets (§4.1.4.3).
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_AVAIL: u64 = 0x28;
    pub const QUEUE_USED: u64 = 0x30;
}

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_INDIRECT_DESC.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

/// `struct virtq_desc` flags (§2.4.5).
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;
/// VIRTQ_AVAIL_F_NO_INTERRUPT: we poll.
pub const AVAIL_NO_INTERRUPT: u16 = 1;

/// Vendor capability (§4.1.4) and its cfg_type values.
const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// Transitional PCI device ids (virtio 1.0 §4.1.2.1): the device type is
/// the subsystem id; modern ids are 0x1040 + type.
const TRANSITIONAL_IDS: core::ops::RangeInclusive<u16> = 0x1000..=0x103f;
const MODERN_BASE: u16 = 0x1040;

/// How long to wait for the device (iterations of a polled loop).
const USED_SPINS: u64 = 20_000_000;
const RESET_SPINS: u32 = 100_000;

// Volatile accessors for identity-mapped guest-physical addresses.
pub fn read8(addr: u64) -> u8 {
    // SAFETY: scenario code passes BAR or RAM addresses, identity-mapped.
    unsafe { read_volatile(addr as *const u8) }
}
pub fn read16(addr: u64) -> u16 {
    // SAFETY: see `read8`.
    unsafe { read_volatile(addr as *const u16) }
}
pub fn read32(addr: u64) -> u32 {
    // SAFETY: see `read8`.
    unsafe { read_volatile(addr as *const u32) }
}
pub fn write8(addr: u64, v: u8) {
    // SAFETY: see `read8`.
    unsafe { write_volatile(addr as *mut u8, v) }
}
pub fn write16(addr: u64, v: u16) {
    // SAFETY: see `read8`.
    unsafe { write_volatile(addr as *mut u16, v) }
}
pub fn write32(addr: u64, v: u32) {
    // SAFETY: see `read8`.
    unsafe { write_volatile(addr as *mut u32, v) }
}
pub fn write64(addr: u64, v: u64) {
    // SAFETY: see `read8`.
    unsafe { write_volatile(addr as *mut u64, v) }
}

/// A page-aligned static area the device may DMA into.
#[repr(C, align(4096))]
pub struct Pages<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: one vCPU; the driver hands out addresses, never references.
unsafe impl<const N: usize> Sync for Pages<N> {}

impl<const N: usize> Pages<N> {
    pub const fn new() -> Self {
        Pages(UnsafeCell::new([0; N]))
    }
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }
    /// Zeroes the area.
    pub fn clear(&self) {
        for i in (0..N as u64).step_by(8) {
            write64(self.addr() + i, 0);
        }
    }
}

impl<const N: usize> Default for Pages<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The size of one queue's ring area: descriptors at +0, available ring at
/// +0x1000, used ring at +0x2000 (room for 256 entries each).
pub const RING_BYTES: usize = 0x3000;

/// The rings of the queue [`Vq::new`] sets up.
static RING: Pages<RING_BYTES> = Pages::new();
/// Buffers handed to the device (and an indirect table).
static BUFFERS: Pages<0x2000> = Pages::new();

/// Where buffer `n` (64 bytes each) lives.
pub fn buffer(n: u64) -> u64 {
    BUFFERS.addr() + 64 * n
}

/// A vendor capability's window into one of the function's BARs.
#[derive(Clone, Copy, Default)]
pub struct Window {
    pub addr: u64,
    pub len: u32,
}

/// A virtio function behind the modern PCI transport.
pub struct Device {
    pub slot: Slot,
    /// The base of the BAR holding the common configuration (BAR0 on the
    /// launcher, hence the name), so `common.addr - bar0` is its offset.
    pub bar0: u64,
    /// That BAR's index, for the PCI_CFG window.
    pub common_bar: u8,
    pub common: Window,
    pub notify: Window,
    pub notify_multiplier: u32,
    pub isr: Window,
    pub device_cfg: Window,
    /// Config-space offset of the VIRTIO_PCI_CAP_PCI_CFG capability.
    pub pci_cfg_cap: u8,
}

impl Device {
    /// Finds the function of modern id `device` on bus 0 (or a
    /// transitional function of the same type), enables memory space and
    /// bus mastering, and reads the vendor capabilities. Prints
    /// `GUEST-VIRTIO ...` with what it found; `None` without the common
    /// configuration (a legacy-only function).
    pub fn probe(device: u16) -> Option<Device> {
        let slot = find_function(device)?;
        let cmd = slot.read16(pci::COMMAND);
        slot.write16(
            pci::COMMAND,
            cmd | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER,
        );
        let mut d = Device {
            slot,
            bar0: 0,
            common_bar: 0,
            common: Window::default(),
            notify: Window::default(),
            notify_multiplier: 0,
            isr: Window::default(),
            device_cfg: Window::default(),
            pci_cfg_cap: 0,
        };
        for (off, id) in slot.capabilities() {
            if id != CAP_VENDOR {
                continue;
            }
            let cfg_type = slot.read8(off + 3);
            if cfg_type == CFG_PCI {
                d.pci_cfg_cap = off;
                continue;
            }
            let bar = slot.read8(off + 4);
            let Some(base) = slot.memory_bar(bar) else {
                continue;
            };
            let w = Window {
                addr: base + u64::from(slot.read32(off + 8)),
                len: slot.read32(off + 12),
            };
            if w.addr + u64::from(w.len) > crate::bootinfo::MAPPED_LIMIT {
                println!("GUEST-FAIL BAR{bar} at {base:#x}: above the identity map");
                crate::power::poweroff()
            }
            match cfg_type {
                CFG_COMMON => {
                    d.common = w;
                    d.bar0 = base;
                    d.common_bar = bar;
                }
                CFG_NOTIFY => {
                    d.notify = w;
                    d.notify_multiplier = slot.read32(off + 16);
                }
                CFG_ISR => d.isr = w,
                CFG_DEVICE => d.device_cfg = w,
                _ => {}
            }
        }
        println!(
            "GUEST-VIRTIO 00:{:02x}.0 bar{}={:#x} common={:#x}+{:#x} notify={:#x}+{:#x}*{} isr={:#x} device={:#x} pci_cfg_cap={:#x}",
            slot.0,
            d.common_bar,
            d.bar0,
            d.common.addr,
            d.common.len,
            d.notify.addr,
            d.notify.len,
            d.notify_multiplier,
            d.isr.addr,
            d.device_cfg.addr,
            d.pci_cfg_cap
        );
        if d.common.len == 0 {
            return None;
        }
        Some(d)
    }

    // Common configuration, one accessor per width.
    pub fn r8(&self, off: u64) -> u8 {
        read8(self.common.addr + off)
    }
    pub fn r16(&self, off: u64) -> u16 {
        read16(self.common.addr + off)
    }
    pub fn r32(&self, off: u64) -> u32 {
        read32(self.common.addr + off)
    }
    pub fn w8(&self, off: u64, v: u8) {
        write8(self.common.addr + off, v)
    }
    pub fn w16(&self, off: u64, v: u16) {
        write16(self.common.addr + off, v)
    }
    pub fn w32(&self, off: u64, v: u32) {
        write32(self.common.addr + off, v)
    }
    /// A 64-bit field as two 32-bit writes, low half first.
    pub fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }

    pub fn status(&self) -> u8 {
        self.r8(common::DEVICE_STATUS)
    }

    pub fn set_status(&self, s: u8) {
        self.w8(common::DEVICE_STATUS, s)
    }

    /// Adds `bits` to the status, keeping what is there.
    pub fn add_status(&self, bits: u8) {
        self.set_status(self.status() | bits)
    }

    /// Writes 0 and waits for the device to read back 0 (§4.1.4.3.2).
    pub fn reset(&self) {
        self.set_status(0);
        for _ in 0..RESET_SPINS {
            if self.status() == 0 {
                return;
            }
            core::hint::spin_loop();
        }
        crate::virtio_scenarios::fail("device did not reset");
    }

    /// All 64 device feature bits.
    pub fn device_features(&self) -> u64 {
        self.w32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.r32(common::DEVICE_FEATURE);
        self.w32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.r32(common::DEVICE_FEATURE);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// Writes both 32-bit halves of the driver features.
    pub fn set_driver_features(&self, f: u64) {
        self.w32(common::DRIVER_FEATURE_SELECT, 0);
        self.w32(common::DRIVER_FEATURE, f as u32);
        self.w32(common::DRIVER_FEATURE_SELECT, 1);
        self.w32(common::DRIVER_FEATURE, (f >> 32) as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER (§3.1.1 steps 1–3).
    pub fn begin(&self) {
        self.reset();
        self.set_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
    }

    /// Steps 4–6: accepts `accept` (no check against what is offered),
    /// sets FEATURES_OK and returns the status read back.
    pub fn negotiate(&self, accept: u64) -> u8 {
        let offered = self.device_features();
        println!("GUEST-VIRTIO-FEATURES offered={offered:#x} accepted={accept:#x}");
        self.set_driver_features(accept);
        self.add_status(status::FEATURES_OK);
        self.status()
    }

    /// `begin` and a VERSION_1-only negotiation, failing the scenario if the
    /// device refuses FEATURES_OK.
    pub fn init(&self) {
        self.begin();
        let s = self.negotiate(F_VERSION_1);
        if s & status::FEATURES_OK == 0 {
            crate::virtio_scenarios::fail("device refused FEATURES_OK");
        }
    }

    /// Programs queue `vq.index` from `vq` and enables it.
    pub fn setup_queue(&self, vq: &mut Vq) {
        self.program_queue(vq);
        self.w16(common::QUEUE_ENABLE, 1);
    }

    /// Everything `setup_queue` does except enabling.
    pub fn program_queue(&self, vq: &mut Vq) {
        self.w16(common::QUEUE_SELECT, vq.index);
        let max = self.r16(common::QUEUE_SIZE);
        if max == 0 {
            crate::virtio_scenarios::fail("queue 0 does not exist");
        }
        if vq.size > max {
            vq.size = max;
        }
        self.w16(common::QUEUE_SIZE, vq.size);
        self.w16(common::QUEUE_MSIX_VECTOR, NO_VECTOR);
        self.w64(common::QUEUE_DESC, vq.desc);
        self.w64(common::QUEUE_AVAIL, vq.avail);
        self.w64(common::QUEUE_USED, vq.used);
        vq.notify_off = self.r16(common::QUEUE_NOTIFY_OFF);
    }

    /// A little-endian 32-bit field of the device-specific configuration.
    pub fn cfg32(&self, off: u64) -> u32 {
        read32(self.device_cfg.addr + off)
    }

    /// A 64-bit device-configuration field as two 32-bit reads, repeated
    /// until `config_generation` is the same before and after (§4.1.4.3.1).
    pub fn cfg64(&self, off: u64) -> u64 {
        loop {
            let generation = self.r8(common::CONFIG_GENERATION);
            let lo = u64::from(self.cfg32(off));
            let hi = u64::from(self.cfg32(off + 4));
            if self.r8(common::CONFIG_GENERATION) == generation {
                return hi << 32 | lo;
            }
        }
    }

    /// A byte of the device-specific configuration.
    pub fn cfg8(&self, off: u64) -> u8 {
        read8(self.device_cfg.addr + off)
    }

    pub fn driver_ok(&self) {
        self.add_status(status::DRIVER_OK);
    }

    /// The notify address of a queue whose queue_notify_off is `off`.
    pub fn notify_addr(&self, off: u16) -> u64 {
        self.notify.addr + u64::from(off) * u64::from(self.notify_multiplier)
    }

    /// Notifies the device about `vq` (§4.1.4.4: write the queue index).
    pub fn notify(&self, vq: &Vq) {
        fence(Ordering::SeqCst);
        write16(self.notify_addr(vq.notify_off), vq.index);
    }

    /// A read through the VIRTIO_PCI_CAP_PCI_CFG window (§4.1.4.7): the
    /// common configuration's BAR, `offset`, `length` bytes.
    pub fn pci_cfg_read(&self, offset: u32, length: u32) -> u32 {
        let cap = self.pci_cfg_cap;
        self.slot.write8(cap + 4, self.common_bar);
        self.slot.write32(cap + 8, offset);
        self.slot.write32(cap + 12, length);
        match length {
            1 => u32::from(self.slot.read8(cap + 16)),
            2 => u32::from(self.slot.read16(cap + 16)),
            _ => self.slot.read32(cap + 16),
        }
    }
}

/// The function of modern id `modern`, else a transitional function
/// whose subsystem id is the same device type.
fn find_function(modern: u16) -> Option<Slot> {
    pci::find(VENDOR, modern).or_else(|| {
        let kind = modern.checked_sub(MODERN_BASE)?;
        (0..32).map(Slot).find(|s| {
            s.vendor() == VENDOR
                && TRANSITIONAL_IDS.contains(&s.device())
                && s.read16(pci::SUBSYSTEM_ID) == kind
        })
    })
}

/// The legacy (0.9.5) I/O BAR registers (virtio 1.2 §4.1.4.10); the
/// device configuration follows the header at 20 while MSI-X is off.
pub mod legacy {
    pub const HOST_FEATURES: u16 = 0;
    pub const GUEST_FEATURES: u16 = 4;
    pub const QUEUE_PFN: u16 = 8;
    pub const QUEUE_NUM: u16 = 12;
    pub const QUEUE_SEL: u16 = 14;
    pub const QUEUE_NOTIFY: u16 = 16;
    pub const STATUS: u16 = 18;
    pub const CONFIG: u16 = 20;
}

/// Finds the legacy function `vendor:device` on bus 0, turns on its I/O
/// space and bus mastering, and returns its I/O BAR's base port; fails the
/// scenario (naming `what`) if it is missing or its BAR0 is not I/O.
pub fn legacy_function(vendor: u16, device: u16, what: &str) -> u16 {
    let Some(slot) = pci::find(vendor, device) else {
        println!("GUEST-FAIL no legacy {what} ({vendor:04x}:{device:04x}) on bus 0");
        crate::power::poweroff()
    };
    let bar = slot.read32(pci::BAR0);
    if bar & 1 == 0 {
        crate::virtio_scenarios::fail("BAR0 of the legacy function is not an I/O BAR");
    }
    let cmd = slot.read16(pci::COMMAND);
    slot.write16(
        pci::COMMAND,
        cmd | pci::COMMAND_IO | pci::COMMAND_BUS_MASTER,
    );
    (bar & !3) as u16
}

/// A split virtqueue in [`RING`].
pub struct Vq {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub notify_off: u16,
    /// Next avail.idx the driver publishes.
    pub avail_idx: u16,
    /// used.idx the driver has seen.
    pub last_used: u16,
}

impl Vq {
    /// Queue `index` of `size` entries in freshly zeroed memory (the rings
    /// in [`RING`]; [`buffer`]s zeroed too).
    pub fn new(index: u16, size: u16) -> Vq {
        BUFFERS.clear();
        Vq::at(index, size, RING.addr())
    }

    /// Queue `index` of `size` entries with its rings in the page-aligned
    /// area of [`RING_BYTES`] at `base`, zeroed here; for drivers with more
    /// than one queue, or a second set of rings.
    pub fn at(index: u16, size: u16, base: u64) -> Vq {
        for i in (0..RING_BYTES as u64).step_by(8) {
            write64(base + i, 0);
        }
        let vq = Vq {
            index,
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            notify_off: 0,
            avail_idx: 0,
            last_used: 0,
        };
        write16(vq.avail, AVAIL_NO_INTERRUPT);
        vq
    }

    /// Queue `index` of the device's fixed `size` at page-aligned `base`,
    /// laid out the legacy way (Linux's `vring_init`): the available ring
    /// right after the descriptors, the used ring on the next 4 KiB
    /// boundary. Fails the scenario if that does not fit [`RING_BYTES`].
    pub fn legacy_at(index: u16, size: u16, base: u64) -> Vq {
        let mut vq = Vq::at(index, size, base);
        let n = u64::from(size);
        vq.avail = vq.desc + 16 * n;
        vq.used = (vq.avail + 6 + 2 * n).next_multiple_of(4096);
        if vq.used + 6 + 8 * n > base + RING_BYTES as u64 {
            crate::virtio_scenarios::fail("the legacy rings do not fit");
        }
        write16(vq.avail, AVAIL_NO_INTERRUPT);
        vq
    }

    /// Fills descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        set_desc_at(self.desc, i, addr, len, flags, next);
    }

    /// Makes chain `head` available (ring entry, then idx, in that order).
    pub fn offer(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        write16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.publish(self.avail_idx);
    }

    /// Puts chain `head` in the next available-ring slot without publishing
    /// it: several chains then go out with one [`Vq::publish_pushed`].
    pub fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        write16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes every chain [`Vq::push`] added (one avail.idx write).
    pub fn publish_pushed(&self) {
        self.publish(self.avail_idx);
    }

    /// Writes avail.idx (after a barrier).
    pub fn publish(&self, idx: u16) {
        fence(Ordering::SeqCst);
        write16(self.avail + 2, idx);
    }

    /// Polls the used ring for the next entry: (id, len), or `None` after a
    /// bounded spin.
    pub fn wait_used(&mut self) -> Option<(u32, u32)> {
        for _ in 0..USED_SPINS {
            if let Some(e) = self.poll_used() {
                return Some(e);
            }
            core::hint::spin_loop();
        }
        None
    }

    /// The next used entry (id, len) if the device has published one.
    pub fn poll_used(&mut self) -> Option<(u32, u32)> {
        if read16(self.used + 2) == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.size);
        let e = self.used + 4 + 8 * slot;
        self.last_used = self.last_used.wrapping_add(1);
        Some((read32(e), read32(e + 4)))
    }
}

/// Writes one `struct virtq_desc` at entry `i` of the table at `table`.
pub fn set_desc_at(table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = table + 16 * u64::from(i);
    write64(d, addr);
    write32(d + 8, len);
    write16(d + 12, flags);
    write16(d + 14, next);
}

/// One 64-bit read, for scenarios that break §4.1.3.1 on purpose (a
/// 64-bit configuration field must be read as two 32-bit halves).
pub fn read64(addr: u64) -> u64 {
    // SAFETY: see `read8`.
    unsafe { read_volatile(addr as *const u64) }
}
