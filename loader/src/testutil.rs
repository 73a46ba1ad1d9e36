//! Test helpers: temporary files, guest memory, and tiny synthetic ELF and
//! bzImage kernels built byte by byte, so every malformed-kernel case can
//! be tested without real images.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::GuestAddress;

use crate::layout::MemoryLayout;
use crate::GuestMemory;

pub const MIB: u64 = 1 << 20;

/// A test that cannot run here says why; under CI (`CI=true`, as
/// `.ci/run` has it) that fails instead, so a green CI ran every test.
pub fn skip(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("skipped under CI, which must run every test: {why}");
    }
    eprintln!("skipped: {why}");
}

/// A file in the temp directory, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(contents: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("loader-test-{}-{n}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A layout of `mb` MiB and guest memory allocated from it.
pub fn guest(mb: u64) -> (MemoryLayout, GuestMemory) {
    let layout = MemoryLayout::new(mb * MIB).unwrap();
    let mem = GuestMemory::from_ranges(layout.ram_ranges()).unwrap();
    (layout, mem)
}

pub fn read_u32(mem: &GuestMemory, addr: u64) -> u32 {
    use vm_memory::Bytes;
    mem.read_obj(GuestAddress(addr)).unwrap()
}

pub fn read_u64(mem: &GuestMemory, addr: u64) -> u64 {
    use vm_memory::Bytes;
    mem.read_obj(GuestAddress(addr)).unwrap()
}

/// One loadable segment: physical address, file bytes, memory size.
pub struct Seg {
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

/// An ELF64 executable for `machine` with PT_LOAD `segs`.
pub fn elf64(machine: u16, entry: u64, segs: &[Seg]) -> Vec<u8> {
    let phoff = 64u64;
    let mut data_off = 0x1000u64;
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little-endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut bodies = Vec::new();
    for s in segs {
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&7u32.to_le_bytes());
        ph[8..16].copy_from_slice(&data_off.to_le_bytes());
        ph[16..24].copy_from_slice(&s.paddr.to_le_bytes());
        ph[24..32].copy_from_slice(&s.paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(s.data.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&s.memsz.to_le_bytes());
        out.extend_from_slice(&ph);
        bodies.push((data_off, &s.data));
        data_off += (s.data.len() as u64).next_multiple_of(0x1000);
    }
    for (off, data) in bodies {
        out.resize(off as usize, 0);
        out.extend_from_slice(data);
    }
    out
}

/// A minimal valid x86-64 ELF: 8 KiB at 1 MiB plus 8 KiB of .bss.
pub fn good_elf() -> Vec<u8> {
    let seg = Seg {
        paddr: MIB,
        data: vec![0xc3; 0x2000],
        memsz: 0x4000,
    };
    elf64(62, MIB + 0x10, &[seg])
}

/// An ELF32 header for i386.
pub fn elf32() -> Vec<u8> {
    let mut out = vec![0u8; 52];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 1;
    out[5] = 1;
    out[18..20].copy_from_slice(&3u16.to_le_bytes());
    out
}

/// The setup-header fields a bzImage test cares about.
#[derive(Clone, Copy)]
pub struct Bz {
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub kernel_alignment: u32,
    pub relocatable: u8,
    pub pref_address: u64,
    pub init_size: u32,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
    pub setup_sects: u8,
    pub payload_len: usize,
}

impl Default for Bz {
    fn default() -> Self {
        Self {
            version: 0x020f,
            loadflags: 1,
            xloadflags: 1,
            kernel_alignment: 0x20_0000,
            relocatable: 1,
            pref_address: 0x100_0000,
            init_size: 0x10_0000,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            setup_sects: 1,
            payload_len: 0x3000,
        }
    }
}

/// Payload byte `i` of a synthetic bzImage, so tests can find it in memory.
pub fn payload_byte(i: usize) -> u8 {
    (i % 251) as u8
}

impl Bz {
    pub fn image(&self) -> Vec<u8> {
        let setup_len = (usize::from(self.setup_sects) + 1) * 512;
        let mut out = vec![0u8; setup_len];
        out[0x1f1] = self.setup_sects;
        out[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        out[0x200] = 0xeb; // jmp to the end of the header at 0x268
        out[0x201] = 0x66;
        out[0x202..0x206].copy_from_slice(b"HdrS");
        out[0x206..0x208].copy_from_slice(&self.version.to_le_bytes());
        out[0x211] = self.loadflags;
        out[0x22c..0x230].copy_from_slice(&self.initrd_addr_max.to_le_bytes());
        out[0x230..0x234].copy_from_slice(&self.kernel_alignment.to_le_bytes());
        out[0x234] = self.relocatable;
        out[0x236..0x238].copy_from_slice(&self.xloadflags.to_le_bytes());
        out[0x238..0x23c].copy_from_slice(&self.cmdline_size.to_le_bytes());
        out[0x258..0x260].copy_from_slice(&self.pref_address.to_le_bytes());
        out[0x260..0x264].copy_from_slice(&self.init_size.to_le_bytes());
        out.extend((0..self.payload_len).map(payload_byte));
        out
    }
}
