//! The zero page (`struct boot_params`) and what it points to: the e820
//! memory map, the command line, the initrd and a `setup_data` RNG seed.
//!
//! Inputs are the [`MemoryLayout`], the [`LoadedKernel`] (whose bzImage
//! setup header the zero page's `hdr` starts from, as the boot protocol
//! says), the user's command line and initrd, and 32 bytes of host entropy.
//! Everything is written to the fixed low addresses in [`crate::layout`];
//! the kernel finds it all from the zero page address in RSI.

use std::io;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, SETUP_RNG_SEED};
use vm_memory::{Bytes, GuestAddress};

use crate::kernel::{LoadedKernel, HDRS_MAGIC};
use crate::layout::{
    MemoryLayout, CMDLINE_ADDR, CMDLINE_AREA_END, EBDA_START, HIMEM_START, MMIO_HOLE_END,
    PCI_WINDOW_END, RNG_SEED_ADDR, ZERO_PAGE_ADDR,
};
use crate::{write_guest, Error, GuestMemory, Result};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of memory the OS must leave alone.
pub const E820_RESERVED: u32 = 2;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `vid_mode` meaning "normal": no video mode switch.
const VID_MODE_NORMAL: u16 = 0xffff;
/// `boot_flag` a real boot sector carries; set for ELF kernels too.
const BOOT_FLAG: u16 = 0xaa55;
/// Bytes of entropy in the RNG seed.
pub const RNG_SEED_LEN: usize = 32;
/// `struct setup_data` header: next (u64), type (u32), len (u32).
const SETUP_DATA_HEADER_LEN: usize = 16;
/// Initrd placement granularity.
const PAGE_SIZE: u64 = 0x1000;

/// The e820 map for `layout`: low RAM, the reserved EBDA/BIOS area with
/// the MP table, RAM from 1 MiB, the reserved top of the MMIO hole (from
/// the IOAPIC up; the PCI window below it is a gap), RAM above 4 GiB.
pub fn e820_table(layout: &MemoryLayout) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, r#type: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    let mut table = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START, E820_RESERVED),
        entry(HIMEM_START, layout.low_ram_end(), E820_RAM),
        entry(PCI_WINDOW_END, MMIO_HOLE_END, E820_RESERVED),
    ];
    if let Some((start, len)) = layout.high_ram() {
        table.push(entry(start, start + len, E820_RAM));
    }
    table
}

/// Longest command line (without NUL) that both the kernel and the room
/// at [`CMDLINE_ADDR`] allow.
pub fn cmdline_capacity(kernel_max: usize) -> usize {
    kernel_max.min((CMDLINE_AREA_END - CMDLINE_ADDR) as usize - 1)
}

/// Writes `cmdline` NUL-terminated at [`CMDLINE_ADDR`] after checking it is
/// at most `max` bytes and has no NUL that would cut it short.
pub fn write_cmdline(mem: &GuestMemory, cmdline: &str, max: usize) -> Result<()> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(Error::CmdlineNul { offset });
    }
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    write_guest(mem, "kernel command line", CMDLINE_ADDR, &bytes)
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible
/// with its end at or below `limit`, and starting at or above `floor`.
pub fn place_initrd(size: u64, floor: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    let floor = floor.checked_next_multiple_of(PAGE_SIZE)?;
    (start >= floor).then_some(start)
}

/// The highest end an initrd may have for this kernel: below its
/// `initrd_addr_max` and below the MMIO hole.
pub fn initrd_limit(layout: &MemoryLayout, kernel: &LoadedKernel) -> u64 {
    kernel
        .initrd_addr_max
        .saturating_add(1)
        .min(layout.low_ram_end())
}

/// Copies the initrd at `path` into guest memory above the kernel and
/// returns its address and size.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    file: Option<&std::fs::File>,
    kernel_end: u64,
    limit: u64,
) -> Result<(GuestAddress, u64)> {
    let read_err = |source| Error::InitrdRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::open_or_reuse(path, file).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size == 0 {
        return Err(Error::InitrdEmpty {
            path: path.to_path_buf(),
        });
    }
    let floor = kernel_end.max(HIMEM_START);
    let addr = place_initrd(size, floor, limit).ok_or_else(|| Error::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        floor,
        limit,
    })?;
    // `size` <= `limit` <= 3 GiB, so it fits in usize.
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| Error::InitrdCopy {
            path: path.to_path_buf(),
            addr,
            source,
        })?;
    Ok((GuestAddress(addr), size))
}

/// 32 bytes from the host's getrandom(2), through the `getrandom` crate,
/// which retries short reads and EINTR itself.
fn host_entropy() -> Result<[u8; RNG_SEED_LEN]> {
    let mut seed = [0u8; RNG_SEED_LEN];
    getrandom::fill(&mut seed).map_err(|e| Error::Entropy(entropy_error(e)))?;
    Ok(seed)
}

/// The crate's error as an `io::Error`, so an errno prints as its sentence
/// ("Operation not permitted (os error 1)") rather than as "OS Error: 1",
/// which is all getrandom's own Display says without its `std` feature.
fn entropy_error(e: getrandom::Error) -> io::Error {
    match e.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    }
}

/// Writes a SETUP_RNG_SEED `setup_data` node with fresh host entropy at
/// [`RNG_SEED_ADDR`]: Linux feeds it to its RNG in early boot, so the
/// guest has good randomness before it has any devices.
pub fn write_rng_seed(mem: &GuestMemory) -> Result<GuestAddress> {
    let seed = host_entropy()?;
    let mut node = Vec::with_capacity(SETUP_DATA_HEADER_LEN + RNG_SEED_LEN);
    node.extend_from_slice(&0u64.to_le_bytes()); // next: end of the list
    node.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    node.extend_from_slice(&(RNG_SEED_LEN as u32).to_le_bytes());
    node.extend_from_slice(&seed);
    write_guest(mem, "RNG seed setup_data", RNG_SEED_ADDR, &node)?;
    Ok(GuestAddress(RNG_SEED_ADDR))
}

/// Builds the zero page. For a bzImage `hdr` is the image's own setup
/// header; for an ELF kernel it gets just the magic a loader would see.
pub fn zero_page(
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
    setup_data: Option<GuestAddress>,
) -> boot_params {
    let mut p = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => p.hdr = hdr,
        None => {
            p.hdr.boot_flag = BOOT_FLAG;
            p.hdr.header = HDRS_MAGIC;
        }
    }
    p.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.hdr.vid_mode = VID_MODE_NORMAL;
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    p.ext_cmd_line_ptr = (CMDLINE_ADDR >> 32) as u32;
    // Our command line's length without the NUL (at most the capacity
    // checked by write_cmdline, far below 4 GiB).
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr.0 as u32;
        p.ext_ramdisk_image = (addr.0 >> 32) as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    p.hdr.setup_data = setup_data.map_or(0, |a| a.0);
    let table = e820_table(layout);
    for (slot, entry) in p.e820_table.iter_mut().zip(&table) {
        *slot = *entry;
    }
    // At most five entries, far below the zero page's 128.
    p.e820_entries = table.len() as u8;
    p
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`] and returns that address.
/// Tells the kernel where the ACPI RSDP is (`boot_params.acpi_rsdp_addr`),
/// so it need not scan the BIOS area for it.
pub fn set_acpi_rsdp(mem: &GuestMemory, rsdp: GuestAddress) -> Result<()> {
    let field = std::mem::offset_of!(boot_params, acpi_rsdp_addr) as u64;
    write_guest(
        mem,
        "ACPI RSDP pointer",
        ZERO_PAGE_ADDR + field,
        &rsdp.0.to_le_bytes(),
    )
}

pub fn write_zero_page(mem: &GuestMemory, params: &boot_params) -> Result<GuestAddress> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| Error::GuestWrite {
            what: "zero page",
            addr: ZERO_PAGE_ADDR,
            source,
        })?;
    Ok(GuestAddress(ZERO_PAGE_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MMIO_HOLE_START;
    use crate::testutil::MIB;

    fn table(mb: u64) -> Vec<(u64, u64, u32)> {
        let layout = MemoryLayout::new(mb * MIB).unwrap();
        e820_table(&layout)
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect()
    }

    #[test]
    fn e820_for_64_mib() {
        assert_eq!(
            table(64),
            [
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x400 + 0x6_0000, E820_RESERVED),
                (0x10_0000, 0x400_0000 - 0x10_0000, E820_RAM),
                (0xfec0_0000, 0x140_0000, E820_RESERVED),
            ]
        );
    }

    #[test]
    fn e820_for_3000_mib() {
        assert_eq!(
            table(3000),
            [
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x6_0400, E820_RESERVED),
                (0x10_0000, 0xbb80_0000 - 0x10_0000, E820_RAM),
                (0xfec0_0000, 0x140_0000, E820_RESERVED),
            ]
        );
    }

    #[test]
    fn e820_for_5000_mib() {
        assert_eq!(
            table(5000),
            [
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x6_0400, E820_RESERVED),
                (0x10_0000, 0xc000_0000 - 0x10_0000, E820_RAM),
                (0xfec0_0000, 0x140_0000, E820_RESERVED),
                (0x1_0000_0000, 0x7880_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_above_the_floor() {
        assert_eq!(
            place_initrd(0x1000, 0x20_0000, 0x400_0000),
            Some(0x3ff_f000)
        );
        assert_eq!(
            place_initrd(0x1001, 0x20_0000, 0x400_0000),
            Some(0x3ff_e000)
        );
        // The floor is rounded up to a page before comparing.
        assert_eq!(
            place_initrd(0x1000, 0x3ff_e001, 0x400_0000),
            Some(0x3ff_f000)
        );
        assert_eq!(place_initrd(0x1000, 0x3ff_f001, 0x400_0000), None);
        // Exactly fills the gap.
        assert_eq!(
            place_initrd(0x10_0000, 0x30_0000, 0x40_0000),
            Some(0x30_0000)
        );
        assert_eq!(place_initrd(0x10_0001, 0x30_0000, 0x40_0000), None);
        assert_eq!(place_initrd(u64::MAX, 0, 0x40_0000), None);
    }

    #[test]
    fn initrd_limit_is_the_lower_of_addr_max_and_low_ram() {
        let kernel = |initrd_addr_max| LoadedKernel {
            kind: crate::kernel::KernelKind::Elf,
            entry: GuestAddress(MIB),
            load_addr: GuestAddress(MIB),
            end: 2 * MIB,
            setup_header: None,
            cmdline_max: 2047,
            initrd_addr_max,
        };
        let small = MemoryLayout::new(64 * MIB).unwrap();
        let big = MemoryLayout::new(5000 * MIB).unwrap();
        assert_eq!(initrd_limit(&small, &kernel(0x7fff_ffff)), 64 * MIB);
        assert_eq!(initrd_limit(&big, &kernel(0x7fff_ffff)), 0x8000_0000);
        assert_eq!(
            initrd_limit(&big, &kernel(MMIO_HOLE_END - 1)),
            MMIO_HOLE_START
        );
    }

    #[test]
    fn cmdline_capacity_is_bounded_by_its_area() {
        assert_eq!(cmdline_capacity(2047), 2047);
        assert_eq!(
            cmdline_capacity(usize::MAX),
            (CMDLINE_AREA_END - CMDLINE_ADDR) as usize - 1
        );
    }

    #[test]
    fn seeds_are_fresh_and_entropy_errors_read_as_sentences() {
        let a = host_entropy().unwrap();
        assert_ne!(a, host_entropy().unwrap());
        let msg = Error::Entropy(entropy_error(getrandom::Error::UNSUPPORTED)).to_string();
        assert_eq!(
            msg,
            "cannot get host entropy for the guest's RNG seed: \
             getrandom: this target is not supported"
        );
    }
}
