//! Kernel loading: an ELF `vmlinux` (entered at its 64-bit `e_entry`) or a
//! bzImage (64-bit boot protocol, entered at load address + 0x200).
//!
//! Input is the kernel file named in [`crate::BootSpec`]. We read and check
//! its headers ourselves, so that every malformed image gets an
//! [`Error`] naming the file and the problem instead of linux-loader's
//! generic one, choose where it goes in guest RAM, and then let
//! linux-loader's [`Elf`]/[`BzImage`] copy the bytes. The result,
//! [`LoadedKernel`], tells [`crate::bootparams`] what to put in the zero
//! page and where the initrd may go.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::mem::{offset_of, size_of};
use std::path::Path;

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::layout::{MemoryLayout, HIMEM_START, MMIO_HOLE_END};
use crate::{Error, GuestMemory, Result};

/// Which format the kernel was, for logs and for the zero page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// An ELF64 x86-64 `vmlinux` (or any freestanding ELF kernel).
    Elf,
    /// A bzImage; `protocol` is its boot protocol version (0x020f = 2.15).
    BzImage { protocol: u16 },
}

/// Where a kernel ended up and what the boot protocol says about it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub kind: KernelKind,
    /// The 64-bit entry point (RIP).
    pub entry: GuestAddress,
    /// Lowest address the image occupies.
    pub load_addr: GuestAddress,
    /// First byte past everything the kernel owns (for a bzImage this
    /// includes the room it decompresses into, `init_size`).
    pub end: u64,
    /// bzImage only: its setup header, with `code32_start` set to the load
    /// address; the zero page's `hdr` starts as a copy of it.
    pub setup_header: Option<setup_header>,
    /// Longest command line the kernel accepts, without the NUL.
    pub cmdline_max: usize,
    /// Highest address the initrd may occupy (its last byte).
    pub initrd_addr_max: u64,
}

/// Linux's COMMAND_LINE_SIZE on x86, including the NUL; used for ELF
/// kernels, which carry no `cmdline_size`.
pub const ELF_CMDLINE_SIZE: usize = 2048;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const ELF32_EHDR_LEN: usize = 52;
const ELF64_EHDR_LEN: usize = 64;
const ELF64_PHDR_LEN: usize = 56;

/// Where the setup header starts in a bzImage (and in the zero page).
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Where "HdrS" sits; the byte before it gives the header's length.
const HDRS_OFFSET: usize = 0x202;
/// "HdrS", little-endian.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// Oldest protocol with a 64-bit entry whose fields we rely on.
pub const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry is this far into the protected-mode kernel.
pub const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// A relocatable bzImage that cannot go at `pref_address` tries here first
/// (what LOAD_PHYSICAL_ADDR is on x86-64), then at 1 MiB.
const BZIMAGE_FALLBACK_ADDR: u64 = 16 << 20;
/// Enough of the file to classify it and hold a whole setup header.
const HEAD_LEN: u64 = 0x1000;

/// Loads the kernel at `path` into `mem` and describes where it went.
pub fn load_kernel(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    path: &Path,
    file: Option<&File>,
    memory_is_zero: bool,
) -> Result<LoadedKernel> {
    let read_err = |source| Error::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::open_or_reuse(path, file).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(HEAD_LEN)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    let image = Image {
        path,
        file,
        len,
        head,
    };
    if len == 0 {
        Err(Error::KernelEmpty {
            path: path.to_path_buf(),
        })
    } else if image.head.starts_with(ELF_MAGIC) {
        load_elf(mem, layout, image, memory_is_zero)
    } else if image.head.len() < HDRS_OFFSET + 4 {
        Err(Error::KernelTooShort {
            path: path.to_path_buf(),
            len,
        })
    } else if image.head[HDRS_OFFSET..HDRS_OFFSET + 4] == HDRS_MAGIC.to_le_bytes() {
        load_bzimage(mem, layout, image)
    } else {
        Err(Error::KernelFormat {
            path: path.to_path_buf(),
        })
    }
}

/// An open kernel file and its first [`HEAD_LEN`] bytes.
struct Image<'a> {
    path: &'a Path,
    file: File,
    len: u64,
    head: Vec<u8>,
}

impl Image<'_> {
    fn elf_error(&self, problem: String) -> Error {
        Error::ElfMalformed {
            path: self.path.to_path_buf(),
            problem,
        }
    }

    fn bzimage_error(&self, problem: String) -> Error {
        Error::BzImageMalformed {
            path: self.path.to_path_buf(),
            problem,
        }
    }

    fn read_error(&self, source: io::Error) -> Error {
        Error::KernelRead {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn copy_error(&self, source: linux_loader::loader::Error) -> Error {
        Error::KernelCopy {
            path: self.path.to_path_buf(),
            source,
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

/// One PT_LOAD program header, the fields we check.
struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn load_elf(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    mut image: Image,
    memory_is_zero: bool,
) -> Result<LoadedKernel> {
    let path = image.path.to_path_buf();
    let h = &image.head;
    let class = h.get(4).copied();
    if class == Some(ELFCLASS32) && h.len() >= ELF32_EHDR_LEN {
        return Err(Error::Elf32 { path });
    }
    if h.len() < ELF64_EHDR_LEN {
        return Err(Error::KernelTooShort {
            path,
            len: image.len,
        });
    }
    if class != Some(ELFCLASS64) {
        return Err(image.elf_error(format!(
            "its class byte is {}, neither 32- nor 64-bit",
            h[4]
        )));
    }
    if h[5] != ELFDATA2LSB {
        return Err(image.elf_error("it is big-endian, but x86-64 is little-endian".into()));
    }
    let machine = u16_at(h, 18);
    if machine != EM_X86_64 {
        return Err(Error::ElfMachine { path, machine });
    }
    let e_type = u16_at(h, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(image.elf_error(format!("its type is {e_type}, not an executable")));
    }
    let entry = u64_at(h, 24);
    let phoff = u64_at(h, 32);
    let phentsize = usize::from(u16_at(h, 54));
    let phnum = usize::from(u16_at(h, 56));
    if phentsize != ELF64_PHDR_LEN {
        return Err(image.elf_error(format!("its program headers are {phentsize} bytes, not 56")));
    }
    if phnum == 0 {
        return Err(image.elf_error("it has no program headers".into()));
    }
    let ph_len = (phnum * ELF64_PHDR_LEN) as u64;
    if phoff < ELF64_EHDR_LEN as u64
        || !matches!(phoff.checked_add(ph_len), Some(end) if end <= image.len)
    {
        return Err(image.elf_error(format!(
            "its program headers at offset {phoff:#x} are not inside the file"
        )));
    }
    let mut ph = vec![0u8; phnum * ELF64_PHDR_LEN];
    image
        .file
        .seek(SeekFrom::Start(phoff))
        .map_err(|e| image.read_error(e))?;
    image
        .file
        .read_exact(&mut ph)
        .map_err(|e| image.read_error(e))?;

    let segments: Vec<Segment> = ph
        .chunks_exact(ELF64_PHDR_LEN)
        .filter(|p| u32_at(p, 0) == PT_LOAD)
        .map(|p| Segment {
            offset: u64_at(p, 8),
            paddr: u64_at(p, 24),
            filesz: u64_at(p, 32),
            memsz: u64_at(p, 40),
        })
        .collect();
    if segments.is_empty() {
        return Err(image.elf_error("it has no loadable (PT_LOAD) segments".into()));
    }
    let ram_end = layout.low_ram_end();
    let (mut start, mut end) = (u64::MAX, 0);
    for (i, s) in segments.iter().enumerate() {
        if s.filesz > s.memsz {
            return Err(image.elf_error(format!(
                "loadable segment {i} has more file bytes than memory bytes"
            )));
        }
        if !matches!(s.offset.checked_add(s.filesz), Some(end) if end <= image.len) {
            return Err(image.elf_error(format!(
                "loadable segment {i} runs past the end of the file"
            )));
        }
        if s.paddr < HIMEM_START {
            return Err(image.elf_error(format!(
                "loadable segment {i} is at {:#x}, below 1 MiB where the boot tables live",
                s.paddr
            )));
        }
        let seg_end = s.paddr.checked_add(s.memsz).ok_or_else(|| {
            image.elf_error(format!(
                "loadable segment {i} wraps around the address space"
            ))
        })?;
        if seg_end > ram_end {
            return Err(Error::KernelTooBig {
                path,
                end: seg_end,
                ram_end,
            });
        }
        start = start.min(s.paddr);
        end = end.max(seg_end);
    }
    if !segments
        .iter()
        .any(|s| (s.paddr..s.paddr + s.memsz).contains(&entry))
    {
        return Err(image.elf_error(format!(
            "its entry point {entry:#x} is outside its loadable segments"
        )));
    }

    Elf::load(mem, None, &mut image.file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| image.copy_error(e))?;
    // linux-loader copies the file bytes only; the .bss tail must read as
    // zero even if this memory was used before (fresh memory already does).
    for s in segments
        .iter()
        .filter(|s| s.memsz > s.filesz && !memory_is_zero)
    {
        zero(mem, s.paddr + s.filesz, s.memsz - s.filesz)?;
    }

    Ok(LoadedKernel {
        kind: KernelKind::Elf,
        entry: GuestAddress(entry),
        load_addr: GuestAddress(start),
        end,
        setup_header: None,
        cmdline_max: ELF_CMDLINE_SIZE - 1,
        // Protocol-less kernels: anywhere the 32-bit ramdisk_image reaches.
        initrd_addr_max: MMIO_HOLE_END - 1,
    })
}

/// Zeroes `len` bytes of guest memory at `addr`, a chunk at a time.
fn zero(mem: &GuestMemory, addr: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 64 << 10;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        let at = addr + done;
        mem.write_slice(&zeros[..n as usize], GuestAddress(at))
            .map_err(|source| Error::GuestWrite {
                what: "kernel's zero-filled tail",
                addr: at,
                source,
            })?;
        done += n;
    }
    Ok(())
}

fn load_bzimage(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    mut image: Image,
) -> Result<LoadedKernel> {
    let path = image.path.to_path_buf();
    // Boot protocol: the header ends at 0x202 + the byte at 0x201.
    let declared = HDRS_OFFSET + usize::from(image.head[HDRS_OFFSET - 1]) - SETUP_HEADER_OFFSET;
    let hdr_len = declared.min(size_of::<setup_header>());
    if image.head.len() < SETUP_HEADER_OFFSET + hdr_len {
        return Err(Error::KernelTooShort {
            path,
            len: image.len,
        });
    }
    let mut hdr = setup_header::default();
    hdr.as_mut_slice()[..hdr_len]
        .copy_from_slice(&image.head[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + hdr_len]);

    let version = hdr.version;
    if version < MIN_BZIMAGE_PROTOCOL {
        return Err(Error::BzImageProtocol { path, version });
    }
    // Protocol 2.12's header ends with init_size; we read up to it.
    let needed = offset_of!(setup_header, init_size) + size_of::<u32>();
    if hdr_len < needed {
        return Err(image.bzimage_error(format!(
            "its setup header is {hdr_len} bytes, too short for protocol 2.12 ({needed} bytes)"
        )));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(Error::BzImageNotHigh { path });
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::BzImageNot64 { path });
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (setup_sects + 1) * 512;
    if image.len <= setup_len {
        return Err(image.bzimage_error(format!(
            "it is {} bytes long, but its protected-mode kernel should start at offset {setup_len:#x}",
            image.len
        )));
    }
    let payload = image.len - setup_len;
    let align = u64::from(hdr.kernel_alignment);
    if !align.is_power_of_two() {
        return Err(image.bzimage_error(format!(
            "its kernel_alignment {align:#x} is not a power of two"
        )));
    }
    let size = payload.max(u64::from(hdr.init_size));
    let ram_end = layout.low_ram_end();
    let addr = place_bzimage(
        hdr.pref_address,
        align,
        hdr.relocatable_kernel != 0,
        size,
        ram_end,
    )
    .map_err(|end| Error::KernelTooBig {
        path: path.clone(),
        end,
        ram_end,
    })?;

    BzImage::load(mem, Some(GuestAddress(addr)), &mut image.file, None)
        .map_err(|e| image.copy_error(e))?;
    // `addr` + `size` <= `ram_end` <= 3 GiB, so it fits the 32-bit field.
    hdr.code32_start = addr as u32;

    Ok(LoadedKernel {
        kind: KernelKind::BzImage { protocol: version },
        entry: GuestAddress(addr + BZIMAGE_ENTRY_64_OFFSET),
        load_addr: GuestAddress(addr),
        end: addr + size,
        setup_header: Some(hdr),
        cmdline_max: hdr.cmdline_size as usize,
        initrd_addr_max: u64::from(hdr.initrd_addr_max),
    })
}

/// Chooses a bzImage's load address: `pref_address` if it is aligned (or
/// the kernel cannot move), else the first `align`-aligned address at or
/// above 16 MiB, then 1 MiB, where `size` bytes fit below `ram_end`.
/// On failure returns where the first candidate would have ended.
/// `align` must be a power of two (the caller checks the header's).
fn place_bzimage(
    pref: u64,
    align: u64,
    relocatable: bool,
    size: u64,
    ram_end: u64,
) -> std::result::Result<u64, u64> {
    let align_up = |a: u64| a.checked_next_multiple_of(align);
    let mut candidates = Vec::with_capacity(3);
    if pref >= HIMEM_START && (!relocatable || pref & (align - 1) == 0) {
        candidates.push(Some(pref));
    }
    if relocatable || candidates.is_empty() {
        candidates.push(align_up(BZIMAGE_FALLBACK_ADDR));
        candidates.push(align_up(HIMEM_START));
    }
    let ends = |start: u64| start.checked_add(size);
    candidates
        .iter()
        .flatten()
        .copied()
        .find(|&start| ends(start).is_some_and(|end| end <= ram_end))
        .ok_or_else(|| {
            candidates
                .iter()
                .flatten()
                .find_map(|&s| ends(s))
                .unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const ALIGN: u64 = 2 * MIB;

    #[test]
    fn pref_address_is_used_when_aligned_and_it_fits() {
        assert_eq!(
            place_bzimage(16 * MIB, ALIGN, true, 8 * MIB, 64 * MIB),
            Ok(16 * MIB)
        );
        assert_eq!(
            place_bzimage(32 * MIB, ALIGN, true, 8 * MIB, 64 * MIB),
            Ok(32 * MIB)
        );
    }

    #[test]
    fn relocatable_kernel_falls_back_to_16_then_1_mib() {
        assert_eq!(
            place_bzimage(17 * MIB, ALIGN, true, 8 * MIB, 64 * MIB),
            Ok(16 * MIB)
        );
        assert_eq!(
            place_bzimage(16 * MIB, ALIGN, true, 20 * MIB, 30 * MIB),
            Ok(2 * MIB)
        );
        assert_eq!(
            place_bzimage(16 * MIB, MIB, true, 20 * MIB, 30 * MIB),
            Ok(MIB)
        );
        assert_eq!(
            place_bzimage(16 * MIB, ALIGN, true, 40 * MIB, 30 * MIB),
            Err(56 * MIB)
        );
    }

    #[test]
    fn fixed_kernel_goes_only_to_pref_address() {
        assert_eq!(
            place_bzimage(17 * MIB, ALIGN, false, 8 * MIB, 64 * MIB),
            Ok(17 * MIB)
        );
        assert_eq!(
            place_bzimage(16 * MIB, ALIGN, false, 60 * MIB, 64 * MIB),
            Err(76 * MIB)
        );
    }
}
