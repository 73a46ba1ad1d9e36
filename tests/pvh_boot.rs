//! The test guest's second way in: its ELF carries the Xen note
//! `XEN_ELFNOTE_PHYS32_ENTRY` naming a 32-bit PVH entry, which QEMU's
//! `-kernel` uses, while the launcher keeps entering it at `e_entry`
//! (64-bit boot protocol). Checked here: the note itself, that the image
//! with the note still boots under the launcher the 64-bit way, and, with
//! `qemu-system-x86_64` installed, that QEMU boots it the PVH way (command
//! line and memory map from `hvm_start_info`), that its virtio driver finds
//! QEMU's transitional virtio-blk where SeaBIOS put the BARs, and that the
//! power-off found in QEMU's ACPI tables ends QEMU with exit code 0.
//!
//! Without QEMU the QEMU tests are skipped with the install command
//! (`common::skip`, which fails under CI, where `.ci/run` installs it).
//! Each QEMU boot takes 2–3 s here, most of it SeaBIOS in emulated ring 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{skip, test_guest, Guest, TempDir, TIMEOUT};

const QEMU: &str = "qemu-system-x86_64";
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// QEMU's guest RAM for these tests.
const QEMU_MEM_MIB: u64 = 64;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (type, offset, vaddr, filesz, memsz, flags, align) of every program header.
fn program_headers(elf: &[u8]) -> Vec<(u32, usize, u64, usize, u64, u32, u64)> {
    let (phoff, phentsize, phnum) = (
        u64_at(elf, 0x20) as usize,
        u16_at(elf, 0x36) as usize,
        u16_at(elf, 0x38) as usize,
    );
    (0..phnum)
        .map(|i| {
            let p = &elf[phoff + i * phentsize..];
            (
                u32_at(p, 0),
                u64_at(p, 8) as usize,
                u64_at(p, 16),
                u64_at(p, 32) as usize,
                u64_at(p, 40),
                u32_at(p, 4),
                u64_at(p, 48),
            )
        })
        .collect()
}

#[test]
fn the_elf_names_a_pvh_entry_in_its_executable_segment() {
    let elf = std::fs::read(test_guest::path()).unwrap();
    let phdrs = program_headers(&elf);
    let notes: Vec<_> = phdrs.iter().filter(|p| p.0 == PT_NOTE).collect();
    assert_eq!(notes.len(), 1, "one PT_NOTE: {phdrs:?}");
    let &(_, off, _, size, _, _, align) = notes[0];
    // QEMU pads the note name to p_align, so it must be the 4 Xen uses.
    assert_eq!(align, 4, "PT_NOTE alignment");
    let note = &elf[off..off + size];
    let (namesz, descsz, kind) = (u32_at(note, 0), u32_at(note, 4), u32_at(note, 8));
    assert_eq!((namesz, kind), (4, XEN_ELFNOTE_PHYS32_ENTRY), "{note:02x?}");
    assert_eq!(&note[12..16], b"Xen\0");
    assert_eq!(descsz, 8, "the entry as a 64-bit value, as Linux has it");
    let entry = u64_at(note, 16);
    let e_entry = u64_at(&elf, 0x18);
    assert_ne!(entry, e_entry, "the PVH entry is not the 64-bit one");
    let in_text = phdrs.iter().any(|&(t, _, vaddr, _, memsz, flags, _)| {
        t == PT_LOAD && flags & 1 != 0 && (vaddr..vaddr + memsz).contains(&entry)
    });
    assert!(
        in_text,
        "PVH entry {entry:#x} outside the executable PT_LOAD: {phdrs:?}"
    );
    assert!(entry < 1 << 32, "a 32-bit entry must be below 4 GiB");
}

#[test]
fn the_launcher_still_enters_it_at_the_64_bit_entry() {
    let elf = test_guest::path();
    let mut g = Guest::start(&["16", elf.to_str().unwrap(), "scenario=hello"]);
    let boot = g.wait_for("GUEST-BOOT", TIMEOUT);
    assert!(boot.contains("protocol=linux64"), "{boot}");
    let off = g.wait_for("GUEST-POWEROFF", TIMEOUT);
    assert!(
        off.contains("port=0x604 value=0x3400 source=acpi"),
        "the launcher's ACPI tables: {off}"
    );
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", g.output());
}

/// QEMU as these tests run it: KVM, default machine (i440fx) and CPU,
/// no default devices, COM1 on stdout, a reset ends QEMU instead of
/// looping. `None` (and a skip) when QEMU is not installed.
fn qemu(append: &str, extra: &[&str]) -> Option<Guest> {
    if Command::new(QEMU).arg("--version").output().is_err() {
        skip(format!(
            "{QEMU} is not installed (apt-get install qemu-system-x86)"
        ));
        return None;
    }
    let elf = test_guest::path();
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "kvm", "-m", &QEMU_MEM_MIB.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(&elf)
        .args(["-append", append])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Some(Guest::spawn(cmd))
}

/// SeaBIOS runs in emulated ring 0 on nested hosts: seconds, not ms.
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn qemu_boots_it_through_the_pvh_entry_and_it_powers_off() {
    let Some(mut g) = qemu("scenario=hello marker=pvh-xyz", &[]) else {
        return;
    };
    let ring = g.wait_for("GUEST-RING", QEMU_TIMEOUT);
    assert!(ring.ends_with("GUEST-RING 3"), "{ring}");
    let cmdline = g.wait_for("GUEST-CMDLINE", QEMU_TIMEOUT);
    assert!(
        cmdline.ends_with("scenario=hello marker=pvh-xyz"),
        "command line from hvm_start_info: {cmdline}"
    );
    let boot = g.wait_for("GUEST-BOOT", QEMU_TIMEOUT);
    assert!(boot.contains("protocol=pvh"), "{boot}");
    // The memory map from hvm_start_info: nearly all of -m is usable RAM.
    let ram_kib: u64 = boot
        .split_once("ram_kib=")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no ram_kib: {boot}"));
    assert!(
        (QEMU_MEM_MIB * 1024 * 9 / 10..=QEMU_MEM_MIB * 1024).contains(&ram_kib),
        "usable RAM {ram_kib} KiB of {QEMU_MEM_MIB} MiB: {boot}"
    );
    // PIIX4 PM: PM1a control where SeaBIOS put it, \_S5 = 0.
    let off = g.wait_for("GUEST-POWEROFF", QEMU_TIMEOUT);
    assert!(off.contains("value=0x2000 source=acpi"), "{off}");
    g.wait_for("GUEST-TEST-END", QEMU_TIMEOUT);
    let status = g.wait_exit(QEMU_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", g.output());
}

/// What `virtio-blk-io` writes at byte `i` of sector `sector` (the guest's
/// `blk_scenarios::pattern`).
fn pattern(sector: u64, i: u64) -> u8 {
    ((sector as u8).wrapping_mul(37) ^ 0x5c).wrapping_add((i as u8).wrapping_mul(3))
}

#[test]
fn under_qemu_its_driver_finds_the_transitional_virtio_blk_where_seabios_put_it() {
    let dir = TempDir::new("pvh-qemu-blk");
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let drive = format!("file={},format=raw,if=none,id=d0", disk.display());
    let extra = ["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"];
    let Some(mut g) = qemu("scenario=virtio-blk-io", &extra) else {
        return;
    };
    let pci = g.wait_for("1af4:1001", QEMU_TIMEOUT);
    assert!(pci.starts_with("GUEST-PCI 00:"), "{pci}");
    let virtio = g.wait_for("GUEST-VIRTIO 00:", QEMU_TIMEOUT);
    // The modern capabilities in QEMU's BAR4, not BAR0 (its legacy I/O BAR).
    assert!(virtio.contains(" bar4=0x"), "{virtio}");
    g.wait_for("GUEST-BLK-OK capacity=8192", QEMU_TIMEOUT);
    g.wait_for("GUEST-TEST-END", QEMU_TIMEOUT);
    let status = g.wait_exit(QEMU_TIMEOUT);
    let out = g.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        !out.contains("GUEST-FAIL") && !out.contains("GUEST-PANIC"),
        "{out}"
    );
    // What the guest wrote reached QEMU's backing file.
    let image = std::fs::read(&disk).unwrap();
    for i in 0..512 {
        assert_eq!(image[i as usize], pattern(0, i), "sector 0 byte {i}\n{out}");
    }
}
