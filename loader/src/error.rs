//! The crate's one error type.
//!
//! Every message is a single sentence that names the input at fault (the
//! kernel or initrd path, the memory size, the vCPU count, the command line)
//! and what is wrong with it, because the launcher prints it as is and
//! exits.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while laying out memory and loading a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A zero-sized machine was asked for.
    #[error("guest memory size is 0 bytes; at least 16 MiB is needed")]
    NoMemory,
    /// Less memory than a kernel and its boot tables need.
    #[error("guest memory of {bytes} bytes is too small; at least 16 MiB is needed")]
    MemoryTooSmall { bytes: u64 },
    /// So much memory that the RAM above the MMIO hole overflows the address space.
    #[error("guest memory of {bytes} bytes does not fit in the guest physical address space")]
    MemoryTooLarge { bytes: u64 },
    /// The MP table can describe 1 to 254 CPUs (APIC id 255 is broadcast).
    #[error("{cpus} vCPUs were asked for, but the MP table can describe 1 to 254")]
    Cpus { cpus: u8 },
    /// The MP table would spill out of its reserved area below 1 MiB.
    #[error("the MP table for {cpus} vCPUs needs {size} bytes, but its area below 1 MiB holds only {room}")]
    MpTableTooBig { cpus: u8, size: usize, room: usize },

    /// The kernel file is missing or unreadable.
    #[error("cannot read kernel {}: {source}", path.display())]
    KernelRead { path: PathBuf, source: io::Error },
    /// A zero-length kernel file.
    #[error("kernel {} is empty", path.display())]
    KernelEmpty { path: PathBuf },
    /// Too short to hold an ELF header or a bzImage setup header.
    #[error("kernel {} is only {len} bytes long, too short to be an ELF vmlinux or a bzImage", path.display())]
    KernelTooShort { path: PathBuf, len: u64 },
    /// Neither ELF magic nor the bzImage "HdrS" signature.
    #[error("kernel {} is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" at offset 0x202)", path.display())]
    KernelFormat { path: PathBuf },
    /// ELFCLASS32: we only enter kernels in long mode.
    #[error("kernel {} is a 32-bit ELF, but only a 64-bit x86-64 vmlinux can be booted", path.display())]
    Elf32 { path: PathBuf },
    /// An ELF64 for another architecture.
    #[error("kernel {} is an ELF for machine {machine}, not for x86-64 (62)", path.display())]
    ElfMachine { path: PathBuf, machine: u16 },
    /// An x86-64 ELF whose headers make no sense.
    #[error("kernel {} is a malformed ELF: {problem}", path.display())]
    ElfMalformed { path: PathBuf, problem: String },
    /// A bzImage too old to have a 64-bit entry point we can trust.
    #[error("kernel {} is a bzImage with boot protocol {}.{:02}, but the 64-bit entry needs 2.12 or newer", path.display(), version >> 8, version & 0xff)]
    BzImageProtocol { path: PathBuf, version: u16 },
    /// A bzImage built without the 64-bit entry (a 32-bit kernel).
    #[error("kernel {} is a bzImage without a 64-bit entry point (XLF_KERNEL_64 is not set)", path.display())]
    BzImageNot64 { path: PathBuf },
    /// A zImage-style kernel that wants to live below 1 MiB.
    #[error("kernel {} is a bzImage that cannot be loaded above 1 MiB (LOADED_HIGH is not set)", path.display())]
    BzImageNotHigh { path: PathBuf },
    /// A bzImage whose header fields contradict each other or the file.
    #[error("kernel {} is a malformed bzImage: {problem}", path.display())]
    BzImageMalformed { path: PathBuf, problem: String },
    /// The kernel image (or its decompression space) runs past low RAM.
    #[error("kernel {} needs guest memory up to {end:#x}, but RAM below the MMIO hole ends at {ram_end:#x}", path.display())]
    KernelTooBig {
        path: PathBuf,
        end: u64,
        ram_end: u64,
    },
    /// linux-loader refused to copy an image we had already checked.
    #[error("cannot copy kernel {} into guest memory: {source}", path.display())]
    KernelCopy {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },

    /// The initrd file is missing or unreadable.
    #[error("cannot read initrd {}: {source}", path.display())]
    InitrdRead { path: PathBuf, source: io::Error },
    /// A zero-length initrd.
    #[error("initrd {} is empty", path.display())]
    InitrdEmpty { path: PathBuf },
    /// The initrd could not be copied into guest RAM.
    #[error("cannot copy initrd {} into guest memory at {addr:#x}: {source}", path.display())]
    InitrdCopy {
        path: PathBuf,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    /// No room between the kernel's end and the highest address the kernel accepts.
    #[error("initrd {} ({size} bytes) does not fit in guest memory between the kernel's end at {floor:#x} and {limit:#x}", path.display())]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        floor: u64,
        limit: u64,
    },

    /// Longer than the kernel's COMMAND_LINE_SIZE (or the bzImage's cmdline_size).
    #[error("the kernel command line is {len} bytes long, but this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    /// A NUL would silently cut the command line short.
    #[error("the kernel command line contains a NUL byte at offset {offset}")]
    CmdlineNul { offset: usize },

    /// getrandom(2) failed, so the guest would boot without a seed.
    #[error("cannot get host entropy for the guest's RNG seed: {0}")]
    Entropy(io::Error),
    /// A boot structure did not fit in guest memory.
    #[error("cannot write the {what} to guest memory at {addr:#x}: {source}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
