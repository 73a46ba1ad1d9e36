//! End-to-end tests of [`crate::load`] with synthetic kernels: what lands
//! in guest memory, the zero page, initrd placement, and a clear error for
//! every malformed input.

use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress};

use crate::bootparams::{E820_RAM, E820_RESERVED};
use crate::kernel::KernelKind;
use crate::layout::{CMDLINE_ADDR, RNG_SEED_ADDR, ZERO_PAGE_ADDR};
use crate::testutil::*;
use crate::{load, BootInfo, BootSpec, Error, Result};

fn spec<'a>(kernel: &'a Path, initrd: Option<&'a Path>, cmdline: &'a str) -> BootSpec<'a> {
    BootSpec {
        kernel,
        initrd,
        cmdline,
        cpus: 1,
        kernel_file: None,
        initrd_file: None,
        memory_is_zero: false,
    }
}

fn load_bytes(mb: u64, kernel: &[u8]) -> Result<BootInfo> {
    let (layout, mem) = guest(mb);
    let k = TempFile::new(kernel);
    load(&mem, &layout, &spec(k.path(), None, "console=ttyS0"))
}

fn zero_page(mem: &crate::GuestMemory) -> boot_params {
    mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
}

/// Loads `kernel` and asserts the error names the file and says `what`.
fn expect_kernel_error(kernel: &[u8], what: &str) -> Error {
    let (layout, mem) = guest(64);
    let k = TempFile::new(kernel);
    let err = load(&mem, &layout, &spec(k.path(), None, "")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&k.path().display().to_string()),
        "no path in: {msg}"
    );
    assert!(msg.contains(what), "expected {what:?} in: {msg}");
    err
}

#[test]
fn elf_is_entered_at_e_entry_with_bss_zeroed() {
    let (layout, mem) = guest(64);
    mem.write_slice(&[0xffu8; 0x2000], GuestAddress(MIB + 0x2000))
        .unwrap();
    let k = TempFile::new(&good_elf());
    let info = load(&mem, &layout, &spec(k.path(), None, "")).unwrap();
    assert_eq!(info.entry, GuestAddress(MIB + 0x10));
    assert_eq!(info.zero_page, GuestAddress(ZERO_PAGE_ADDR));
    assert_eq!(info.kind, KernelKind::Elf);
    assert_eq!(info.initrd, None);
    let mut buf = [0u8; 0x4000];
    mem.read_slice(&mut buf, GuestAddress(MIB)).unwrap();
    assert!(buf[..0x2000].iter().all(|&b| b == 0xc3));
    assert!(buf[0x2000..].iter().all(|&b| b == 0), ".bss not zeroed");
}

/// Memory the caller says is fresh is not written where .bss lies (the
/// launcher's guest RAM is mapped just before: writing zeros would only
/// fault in host pages).
#[test]
fn fresh_memory_is_left_alone_under_bss() {
    let (layout, mem) = guest(64);
    mem.write_slice(&[0xffu8; 0x2000], GuestAddress(MIB + 0x2000))
        .unwrap();
    let k = TempFile::new(&good_elf());
    let mut s = spec(k.path(), None, "");
    s.memory_is_zero = true;
    load(&mem, &layout, &s).unwrap();
    let mut buf = [0u8; 0x2000];
    mem.read_slice(&mut buf, GuestAddress(MIB + 0x2000))
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0xff), "written although fresh");
}

/// After a privilege drop the launcher hands over open files whose paths
/// it can no longer reach: they are read from their start, and the paths
/// only name them in messages.
#[test]
fn open_kernel_and_initrd_are_read_from_their_start() {
    use std::io::Read;
    let (layout, mem) = guest(64);
    let k = TempFile::new(&good_elf());
    let initrd = TempFile::new(&[0x5a; 5000]);
    let mut kf = std::fs::File::open(k.path()).unwrap();
    let mut inf = std::fs::File::open(initrd.path()).unwrap();
    // Somewhere in the middle, as a previous boot would have left them.
    kf.read_exact(&mut [0; 100]).unwrap();
    inf.read_exact(&mut [0; 100]).unwrap();
    let gone = Path::new("/nonexistent/vmlinux");
    let mut s = spec(gone, Some(gone), "console=ttyS0");
    s.kernel_file = Some(&kf);
    s.initrd_file = Some(&inf);
    let info = load(&mem, &layout, &s).unwrap();
    assert_eq!(info.initrd.map(|(_, size)| size), Some(5000));
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, info.initrd.unwrap().0).unwrap();
    assert_eq!(first, [0x5a; 4]);
}

#[test]
fn zero_page_fields_for_elf() {
    let (layout, mem) = guest(64);
    let k = TempFile::new(&good_elf());
    let initrd = TempFile::new(&[0x5a; 5000]);
    let cmdline = "console=ttyS0 root=/dev/vda";
    let info = load(&mem, &layout, &spec(k.path(), Some(initrd.path()), cmdline)).unwrap();
    let p = zero_page(&mem);

    assert_eq!({ p.hdr.boot_flag }, 0xaa55);
    assert_eq!({ p.hdr.header }, 0x5372_6448);
    assert_eq!(p.hdr.type_of_loader, 0xff);
    assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!({ p.ext_cmd_line_ptr }, 0);
    assert_eq!({ p.hdr.cmdline_size }, cmdline.len() as u32);
    let mut buf = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
        .unwrap();
    assert_eq!(&buf[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(buf[cmdline.len()], 0);

    let (addr, size) = info.initrd.unwrap();
    assert_eq!(size, 5000);
    assert_eq!({ p.hdr.ramdisk_image }, addr.0 as u32);
    assert_eq!({ p.hdr.ramdisk_size }, 5000);
    assert_eq!({ p.ext_ramdisk_image }, 0);
    assert_eq!({ p.ext_ramdisk_size }, 0);
    assert_eq!(addr.0 % 0x1000, 0);
    assert_eq!(addr.0, (64 * MIB - 5000) & !0xfff, "as high as possible");
    let mut initrd_bytes = vec![0u8; 5000];
    mem.read_slice(&mut initrd_bytes, addr).unwrap();
    assert!(initrd_bytes.iter().all(|&b| b == 0x5a));

    let e820: Vec<_> = p.e820_table[..usize::from(p.e820_entries)]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    assert_eq!(
        e820,
        [
            (0, 0x9fc00, E820_RAM),
            (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
            (0x100000, 64 * MIB - 0x100000, E820_RAM),
            (0xfec0_0000, 0x140_0000, E820_RESERVED),
        ]
    );

    assert_eq!({ p.hdr.setup_data }, RNG_SEED_ADDR);
    assert_eq!(read_u64(&mem, RNG_SEED_ADDR), 0, "setup_data list must end");
    assert_eq!(read_u32(&mem, RNG_SEED_ADDR + 8), 9, "SETUP_RNG_SEED");
    assert_eq!(read_u32(&mem, RNG_SEED_ADDR + 12), 32);
    let mut seed = [0u8; 32];
    mem.read_slice(&mut seed, GuestAddress(RNG_SEED_ADDR + 16))
        .unwrap();
    assert!(seed.iter().any(|&b| b != 0), "seed looks unfilled");
}

#[test]
fn bzimage_goes_to_pref_address_and_its_header_to_the_zero_page() {
    let (layout, mem) = guest(64);
    let bz = Bz::default();
    let k = TempFile::new(&bz.image());
    let info = load(&mem, &layout, &spec(k.path(), None, "quiet")).unwrap();
    assert_eq!(info.kind, KernelKind::BzImage { protocol: 0x020f });
    assert_eq!(info.entry, GuestAddress(16 * MIB + 0x200));
    let mut payload = vec![0u8; bz.payload_len];
    mem.read_slice(&mut payload, GuestAddress(16 * MIB))
        .unwrap();
    assert!(payload
        .iter()
        .enumerate()
        .all(|(i, &b)| b == payload_byte(i)));

    let p = zero_page(&mem);
    assert_eq!({ p.hdr.header }, 0x5372_6448);
    assert_eq!({ p.hdr.version }, 0x020f);
    assert_eq!({ p.hdr.code32_start }, (16 * MIB) as u32);
    assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
    assert_eq!({ p.hdr.xloadflags }, 1);
    assert_eq!({ p.hdr.init_size }, bz.init_size);
    assert_eq!(p.hdr.type_of_loader, 0xff);
    assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!({ p.hdr.cmdline_size }, 5);
    assert_eq!({ p.hdr.setup_data }, RNG_SEED_ADDR);
    assert_eq!(p.e820_entries, 4);
}

#[test]
fn relocatable_bzimage_with_unaligned_pref_address_goes_to_16_mib() {
    let bz = Bz {
        pref_address: 0x110_0000,
        ..Bz::default()
    };
    let info = load_bytes(64, &bz.image()).unwrap();
    assert_eq!(info.entry, GuestAddress(16 * MIB + 0x200));
}

#[test]
fn relocatable_bzimage_moves_down_when_16_mib_is_too_high() {
    // 17 MiB of init_size does not fit at 16 MiB in 32 MiB, but at 2 MiB.
    let bz = Bz {
        init_size: 17 << 20,
        ..Bz::default()
    };
    let info = load_bytes(32, &bz.image()).unwrap();
    assert_eq!(info.entry, GuestAddress(2 * MIB + 0x200));
}

#[test]
fn bzimage_initrd_respects_initrd_addr_max() {
    let (layout, mem) = guest(256);
    let bz = Bz {
        initrd_addr_max: (64 << 20) - 1,
        ..Bz::default()
    };
    let k = TempFile::new(&bz.image());
    let initrd = TempFile::new(&[1; 0x1800]);
    let info = load(&mem, &layout, &spec(k.path(), Some(initrd.path()), "")).unwrap();
    let (addr, size) = info.initrd.unwrap();
    assert_eq!(addr.0, 64 * MIB - 0x2000);
    assert!(addr.0 + size <= 64 * MIB);
    // Kernel occupies [16 MiB, 17 MiB).
    assert!(addr.0 >= 17 * MIB);
}

#[test]
fn initrd_that_does_not_fit_above_the_kernel_is_refused() {
    let (layout, mem) = guest(64);
    // Kernel at [16 MiB, 17 MiB), initrd must end by 18 MiB: 2 MiB is too much.
    let bz = Bz {
        initrd_addr_max: (18 << 20) - 1,
        ..Bz::default()
    };
    let k = TempFile::new(&bz.image());
    let initrd = TempFile::new(&vec![0; 2 << 20]);
    let err = load(&mem, &layout, &spec(k.path(), Some(initrd.path()), "")).unwrap_err();
    assert!(
        matches!(err, Error::InitrdTooBig { floor, limit, .. } if floor == 17 * MIB && limit == 18 * MIB)
    );
    assert!(
        err.to_string()
            .contains(&initrd.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn empty_and_missing_initrds_are_refused() {
    let (layout, mem) = guest(64);
    let k = TempFile::new(&good_elf());
    let empty = TempFile::new(&[]);
    let err = load(&mem, &layout, &spec(k.path(), Some(empty.path()), "")).unwrap_err();
    assert!(matches!(err, Error::InitrdEmpty { .. }), "{err}");
    let missing = Path::new("/nonexistent/initrd.img");
    let err = load(&mem, &layout, &spec(k.path(), Some(missing), "")).unwrap_err();
    assert!(matches!(err, Error::InitrdRead { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/initrd.img"), "{err}");
}

#[test]
fn missing_kernel_names_the_path() {
    let (layout, mem) = guest(64);
    let err = load(
        &mem,
        &layout,
        &spec(Path::new("/nonexistent/vmlinux"), None, ""),
    )
    .unwrap_err();
    assert!(matches!(err, Error::KernelRead { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read kernel /nonexistent/vmlinux: "),
        "{err}"
    );
}

#[test]
fn empty_kernel() {
    let e = expect_kernel_error(&[], "is empty");
    assert!(matches!(e, Error::KernelEmpty { .. }));
}

#[test]
fn too_short_kernels() {
    let e = expect_kernel_error(b"0123456789", "too short");
    assert!(matches!(e, Error::KernelTooShort { len: 10, .. }));
    let mut elf = b"\x7fELF\x02\x01".to_vec();
    elf.resize(40, 0);
    let e = expect_kernel_error(&elf, "too short");
    assert!(matches!(e, Error::KernelTooShort { len: 40, .. }));
}

#[test]
fn neither_elf_nor_bzimage() {
    let e = expect_kernel_error(&[0u8; 4096], "neither an ELF vmlinux nor a bzImage");
    assert!(matches!(e, Error::KernelFormat { .. }));
}

#[test]
fn elf32_is_refused() {
    let e = expect_kernel_error(&elf32(), "32-bit ELF");
    assert!(matches!(e, Error::Elf32 { .. }));
}

#[test]
fn elf_for_another_machine_is_refused() {
    let mut elf = good_elf();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let e = expect_kernel_error(&elf, "machine 183, not for x86-64");
    assert!(matches!(e, Error::ElfMachine { machine: 183, .. }));
}

#[test]
fn malformed_elf_headers_are_refused() {
    let seg = |paddr| Seg {
        paddr,
        data: vec![0; 16],
        memsz: 16,
    };
    expect_kernel_error(&elf64(62, 0x1000, &[seg(0x1000)]), "below 1 MiB");
    expect_kernel_error(
        &elf64(62, 0x300000, &[seg(MIB)]),
        "entry point 0x300000 is outside",
    );
    expect_kernel_error(&elf64(62, MIB, &[]), "no program headers");
    let mut big_endian = good_elf();
    big_endian[5] = 2;
    expect_kernel_error(&big_endian, "big-endian");
    let mut truncated = good_elf();
    truncated.truncate(0x1800);
    expect_kernel_error(&truncated, "runs past the end of the file");
}

#[test]
fn elf_larger_than_guest_memory_is_refused() {
    let seg = Seg {
        paddr: 60 * MIB,
        data: vec![0; 16],
        memsz: 8 * MIB,
    };
    let e = expect_kernel_error(
        &elf64(62, 60 * MIB, &[seg]),
        "needs guest memory up to 0x4400000",
    );
    assert!(matches!(e, Error::KernelTooBig { ram_end, .. } if ram_end == 64 * MIB));
}

#[test]
fn old_bzimage_protocol_is_refused() {
    let bz = Bz {
        version: 0x020b,
        ..Bz::default()
    };
    let e = expect_kernel_error(&bz.image(), "boot protocol 2.11");
    assert!(matches!(
        e,
        Error::BzImageProtocol {
            version: 0x020b,
            ..
        }
    ));
}

#[test]
fn bzimage_without_64_bit_entry_is_refused() {
    let bz = Bz {
        xloadflags: 0,
        ..Bz::default()
    };
    let e = expect_kernel_error(&bz.image(), "XLF_KERNEL_64");
    assert!(matches!(e, Error::BzImageNot64 { .. }));
}

#[test]
fn bzimage_not_loaded_high_is_refused() {
    let bz = Bz {
        loadflags: 0,
        ..Bz::default()
    };
    let e = expect_kernel_error(&bz.image(), "LOADED_HIGH");
    assert!(matches!(e, Error::BzImageNotHigh { .. }));
}

#[test]
fn malformed_bzimages_are_refused() {
    let bz = Bz {
        kernel_alignment: 0x30_0000,
        ..Bz::default()
    };
    expect_kernel_error(&bz.image(), "not a power of two");
    let mut no_payload = Bz::default().image();
    no_payload.truncate(1024);
    expect_kernel_error(
        &no_payload,
        "protected-mode kernel should start at offset 0x400",
    );
    let mut short_header = Bz::default().image();
    short_header[0x201] = 0x20; // header ends at 0x222, before init_size
    expect_kernel_error(&short_header, "too short for protocol 2.12");
}

#[test]
fn bzimage_larger_than_guest_memory_is_refused() {
    let bz = Bz {
        init_size: 63 << 20,
        ..Bz::default()
    };
    let e = expect_kernel_error(&bz.image(), "needs guest memory up to");
    assert!(matches!(e, Error::KernelTooBig { .. }));
    let (layout, mem) = guest(16);
    let k = TempFile::new(&bz.image());
    let err = load(&mem, &layout, &spec(k.path(), None, "")).unwrap_err();
    assert!(
        matches!(err, Error::KernelTooBig { ram_end, .. } if ram_end == 16 * MIB),
        "{err}"
    );
}

#[test]
fn command_line_limits() {
    let (layout, mem) = guest(64);
    let k = TempFile::new(&good_elf());
    let ok = "x".repeat(2047);
    assert!(load(&mem, &layout, &spec(k.path(), None, &ok)).is_ok());
    let long = "x".repeat(2048);
    let err = load(&mem, &layout, &spec(k.path(), None, &long)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ),
        "{err}"
    );
    let err = load(&mem, &layout, &spec(k.path(), None, "a\0b")).unwrap_err();
    assert!(matches!(err, Error::CmdlineNul { offset: 1 }), "{err}");

    let bz = TempFile::new(
        &Bz {
            cmdline_size: 100,
            ..Bz::default()
        }
        .image(),
    );
    let err = load(&mem, &layout, &spec(bz.path(), None, &"y".repeat(101))).unwrap_err();
    assert!(
        matches!(err, Error::CmdlineTooLong { len: 101, max: 100 }),
        "{err}"
    );
}

#[test]
fn cpu_count_is_checked_first() {
    let (layout, mem) = guest(64);
    let k = TempFile::new(&good_elf());
    for cpus in [0, 255] {
        let s = BootSpec {
            cpus,
            ..spec(k.path(), None, "")
        };
        let err = load(&mem, &layout, &s).unwrap_err();
        assert!(matches!(err, Error::Cpus { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{cpus} vCPUs")), "{err}");
    }
    let s = BootSpec {
        cpus: 254,
        ..spec(k.path(), None, "")
    };
    assert!(load(&mem, &layout, &s).is_ok());
}

#[test]
fn load_writes_mp_table_gdt_and_page_tables() {
    let (layout, mem) = guest(64);
    let k = TempFile::new(&good_elf());
    let s = BootSpec {
        cpus: 4,
        ..spec(k.path(), None, "")
    };
    load(&mem, &layout, &s).unwrap();
    assert_eq!(
        read_u32(&mem, crate::layout::EBDA_START),
        u32::from_le_bytes(*b"_MP_")
    );
    assert_eq!(
        read_u64(&mem, crate::layout::GDT_ADDR + 8),
        crate::cpu::GDT[1]
    );
    assert_eq!(
        read_u64(&mem, crate::layout::PML4_ADDR),
        crate::layout::PDPT_ADDR | 7
    );
}

/// The integration tests' image lookup, the same source file.
#[path = "../../tests/common/images.rs"]
mod images;

fn guest_images() -> Option<PathBuf> {
    images::find(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// One real image, or `None` (and a note) when there are none: these
/// smoke tests are extras, the integration tests insist on images.
fn guest_image(name: &str) -> Option<PathBuf> {
    let found = guest_images().map(|d| d.join(name)).filter(|p| p.is_file());
    if found.is_none() {
        let why = format!(
            "no guest image {name} (set LAUNCHER_GUEST_IMAGES, put \
             shared/guest-images beside the checkout, or run guest-images/build.sh)"
        );
        crate::testutil::skip(&why);
    }
    found
}

#[test]
fn real_vmlinux_smoke() {
    let Some(vmlinux) = guest_image("vmlinux") else {
        return;
    };
    let initrd = guest_image("initramfs.cpio");
    let (layout, mem) = guest(256);
    let s = BootSpec {
        cpus: 2,
        ..spec(&vmlinux, initrd.as_deref(), "console=ttyS0")
    };
    let info = load(&mem, &layout, &s).unwrap();
    assert_eq!(info.kind, KernelKind::Elf);
    assert_eq!(info.entry, GuestAddress(0x100_0000), "vmlinux's startup_64");
    if let Some((addr, size)) = info.initrd {
        assert!(addr.0 + size <= 256 * MIB && addr.0 % 0x1000 == 0);
    }
}

#[test]
fn real_bzimage_smoke() {
    let Some(bzimage) = guest_image("bzImage") else {
        return;
    };
    let initrd = guest_image("initramfs.cpio");
    let (layout, mem) = guest(256);
    let s = BootSpec {
        cpus: 2,
        ..spec(&bzimage, initrd.as_deref(), "console=ttyS0")
    };
    let info = load(&mem, &layout, &s).unwrap();
    let KernelKind::BzImage { protocol } = info.kind else {
        panic!("not a bzImage: {info:?}")
    };
    assert!(protocol >= 0x020c);
    let p = zero_page(&mem);
    let load_addr = u64::from(p.hdr.code32_start);
    assert_eq!(info.entry.0, load_addr + 0x200);
    assert_eq!(load_addr % u64::from(p.hdr.kernel_alignment), 0);
    let kernel_end = load_addr + u64::from(p.hdr.init_size);
    if let Some((addr, size)) = info.initrd {
        assert!(addr.0 >= kernel_end);
        assert!(addr.0 + size <= u64::from(p.hdr.initrd_addr_max) + 1);
    }
}
