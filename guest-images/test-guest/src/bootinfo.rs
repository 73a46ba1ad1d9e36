//! What the VMM told the guest at boot, whichever entry it used: the
//! Linux zero page (`struct boot_params`: the launcher, 64-bit entry) or
//! the PVH start info (`struct hvm_start_info`: QEMU's `-kernel`, the PVH
//! entry). Both name a command line, a memory map (e820 types) and,
//! optionally, the ACPI RSDP; scenarios see one [`BootInfo`].

use crate::boot::PROTOCOL_PVH;
use crate::cmdline::Cmdline;

/// Only the first 4 GiB are identity-mapped (by the launcher, and by the
/// PVH entry), so nothing the boot protocol names may lie above.
pub const MAPPED_LIMIT: u64 = 1 << 32;

/// `struct boot_params` offsets (Linux, Documentation/arch/x86/zero-page.rst).
mod zp {
    pub const ACPI_RSDP_ADDR: u64 = 0x070;
    pub const EXT_CMD_LINE_PTR: u64 = 0x0c8;
    pub const E820_ENTRIES: u64 = 0x1e8;
    pub const CMD_LINE_PTR: u64 = 0x228;
    pub const E820_TABLE: u64 = 0x2d0;
    /// `struct boot_e820_entry`: addr, size, type (packed, 20 bytes).
    pub const E820_ENTRY: u64 = 20;
    pub const E820_MAX: u32 = 128;
}

/// `struct hvm_start_info` offsets (Xen, public/arch-x86/hvm/start_info.h).
mod pvh {
    /// "xEn3" with the 0x80 bit of the "E" set.
    pub const MAGIC: u32 = 0x336e_c578;
    pub const VERSION: u64 = 4;
    pub const CMDLINE_PADDR: u64 = 24;
    pub const RSDP_PADDR: u64 = 32;
    /// Version 1 and later only.
    pub const MEMMAP_PADDR: u64 = 40;
    pub const MEMMAP_ENTRIES: u64 = 48;
    /// `struct hvm_memmap_table_entry`: addr, size, type, reserved.
    pub const MEMMAP_ENTRY: u64 = 24;
    /// Entries we believe at most (a sanity bound, like e820's 128).
    pub const MEMMAP_MAX: u32 = 128;
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// A little-endian value at a guest-physical address below
/// [`MAPPED_LIMIT`]; 0 above it.
pub fn peek<T: Copy + Default>(addr: u64) -> T {
    if addr.saturating_add(core::mem::size_of::<T>() as u64) > MAPPED_LIMIT {
        return T::default();
    }
    // SAFETY: identity-mapped guest memory (RAM or firmware tables); the
    // read has no side effect and may be unaligned.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// The [`BootInfo`] of this boot, for scenarios that report it.
struct Current(core::cell::UnsafeCell<Option<BootInfo>>);

// SAFETY: one vCPU; written once by `user_main` before any scenario runs.
unsafe impl Sync for Current {}

static CURRENT: Current = Current(core::cell::UnsafeCell::new(None));

/// Records this boot's [`BootInfo`] (`user_main`, once).
pub fn set(info: BootInfo) {
    // SAFETY: see `Current`: nothing reads it yet.
    unsafe { *CURRENT.0.get() = Some(info) }
}

/// This boot's [`BootInfo`], if `user_main` recorded it.
pub fn get() -> Option<BootInfo> {
    // SAFETY: see `Current`: written before scenarios run, then only read.
    unsafe { *CURRENT.0.get() }
}

/// How the guest was booted and what it was given.
#[derive(Clone, Copy)]
pub struct BootInfo {
    pub protocol: Protocol,
    pub cmdline: Cmdline,
    /// The RSDP's address if the VMM said (0 if not: look in the BIOS area).
    pub rsdp: u64,
    memmap: u64,
    entries: u32,
    stride: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Linux64,
    Pvh,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linux64 => "linux64",
            Protocol::Pvh => "pvh",
        }
    }
}

/// One memory-map entry.
#[derive(Clone, Copy)]
pub struct Region {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl BootInfo {
    /// Reads what `_start` was handed.
    ///
    /// # Safety
    /// `info` and `protocol` must be what the boot entry passed, and what
    /// they point to must stay unchanged for the rest of the run.
    pub unsafe fn new(info: u64, protocol: u64) -> BootInfo {
        if protocol == PROTOCOL_PVH {
            BootInfo::pvh(info)
        } else {
            BootInfo::zero_page(info)
        }
    }

    unsafe fn zero_page(zp: u64) -> BootInfo {
        let lo = u64::from(peek::<u32>(zp + zp::CMD_LINE_PTR));
        let hi = u64::from(peek::<u32>(zp + zp::EXT_CMD_LINE_PTR));
        BootInfo {
            protocol: Protocol::Linux64,
            cmdline: Cmdline::at(if zp == 0 { 0 } else { hi << 32 | lo }),
            rsdp: if zp == 0 {
                0
            } else {
                peek(zp + zp::ACPI_RSDP_ADDR)
            },
            memmap: zp + zp::E820_TABLE,
            entries: if zp == 0 {
                0
            } else {
                u32::from(peek::<u8>(zp + zp::E820_ENTRIES)).min(zp::E820_MAX)
            },
            stride: zp::E820_ENTRY,
        }
    }

    unsafe fn pvh(si: u64) -> BootInfo {
        let mut b = BootInfo {
            protocol: Protocol::Pvh,
            cmdline: Cmdline::new(b""),
            rsdp: 0,
            memmap: 0,
            entries: 0,
            stride: pvh::MEMMAP_ENTRY,
        };
        if peek::<u32>(si) != pvh::MAGIC {
            return b;
        }
        b.cmdline = Cmdline::at(peek(si + pvh::CMDLINE_PADDR));
        b.rsdp = peek(si + pvh::RSDP_PADDR);
        if peek::<u32>(si + pvh::VERSION) >= 1 {
            b.memmap = peek(si + pvh::MEMMAP_PADDR);
            b.entries = peek::<u32>(si + pvh::MEMMAP_ENTRIES).min(pvh::MEMMAP_MAX);
        }
        b
    }

    /// The memory map, in the VMM's order.
    pub fn regions(&self) -> impl Iterator<Item = Region> + '_ {
        (0..u64::from(self.entries)).map(|i| {
            let e = self.memmap + i * self.stride;
            Region {
                addr: peek(e),
                size: peek(e + 8),
                kind: peek(e + 16),
            }
        })
    }

    /// Bytes of usable RAM the memory map lists.
    pub fn ram_bytes(&self) -> u64 {
        self.regions()
            .filter(|r| r.kind == E820_RAM)
            .map(|r| r.size)
            .sum()
    }

    /// Memory-map entries.
    pub fn region_count(&self) -> u32 {
        self.entries
    }
}
