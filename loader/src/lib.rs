//! Everything between "here is a kernel file" and "the boot vCPU may run":
//! guest memory layout, kernel and initrd loading, the zero page with its
//! e820 map, command line and RNG seed, the MP table, and the GDT, page
//! tables and registers for Linux's 64-bit entry.
//!
//! The launcher (`src/vm.rs`) builds a [`layout::MemoryLayout`], allocates
//! a [`GuestMemory`] from it and calls [`load`]; `src/vcpu.rs` then takes
//! [`cpu::setup_sregs`] and [`cpu::boot_regs`] to KVM. Nothing here makes
//! a KVM ioctl, so all of it is unit-tested without `/dev/kvm`.

pub mod acpi;
pub mod bootparams;
pub mod cpu;
mod error;
pub mod kernel;
pub mod layout;
pub mod mptable;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use error::{Error, Result};

/// Opens `path` for reading if it is a regular file. A FIFO would hang
/// `open` (no writer) or feed a stream of unknown length, a character
/// device an endless one: refused with what it is, without blocking.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let t = file.metadata()?.file_type();
    let what = if t.is_file() {
        return Ok(file);
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a directory"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("it is {what}, not a regular file"),
    ))
}
/// `given` (an already open descriptor on `path`'s file: after a
/// privilege drop the path may not be reachable) read from its start, or
/// `path` opened with [`open_regular`].
pub(crate) fn open_or_reuse(
    path: &Path,
    given: Option<&std::fs::File>,
) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    let Some(f) = given else {
        return open_regular(path);
    };
    let mut file = f.try_clone()?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

pub use vm_memory::GuestMemoryMmap as GuestMemory;

use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

/// What to boot.
#[derive(Clone, Copy, Debug)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    /// The kernel and initrd already open (named by the paths above in
    /// messages), instead of opening the paths.
    pub kernel_file: Option<&'a std::fs::File>,
    pub initrd_file: Option<&'a std::fs::File>,
    /// Guest memory is freshly mapped (all zero): the kernel's zero-filled
    /// tail (.bss) is left as it is instead of written with zeros, which
    /// would fault in megabytes of host memory before the guest runs.
    pub memory_is_zero: bool,
    pub cmdline: &'a str,
    pub cpus: u8,
}

/// Where things ended up; everything the vCPU setup needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// 64-bit entry point (ELF `e_entry` or bzImage load address + 0x200).
    pub entry: GuestAddress,
    /// The zero page; goes in RSI.
    pub zero_page: GuestAddress,
    pub kind: kernel::KernelKind,
    /// Initrd address and size, if one was given.
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Loads kernel, initrd, command line, writes zero page, e820, setup_data
/// RNG seed, MP table, GDT and page tables. One call does it all.
pub fn load(mem: &GuestMemory, layout: &layout::MemoryLayout, spec: &BootSpec) -> Result<BootInfo> {
    // Cheap argument checks first, so a bad count fails before any I/O.
    mptable::check_cpus(spec.cpus)?;
    let kernel = kernel::load_kernel(
        mem,
        layout,
        spec.kernel,
        spec.kernel_file,
        spec.memory_is_zero,
    )?;
    let max = bootparams::cmdline_capacity(kernel.cmdline_max);
    bootparams::write_cmdline(mem, spec.cmdline, max)?;
    let initrd = match spec.initrd {
        Some(path) => {
            let limit = bootparams::initrd_limit(layout, &kernel);
            Some(bootparams::load_initrd(
                mem,
                path,
                spec.initrd_file,
                kernel.end,
                limit,
            )?)
        }
        None => None,
    };
    let seed = bootparams::write_rng_seed(mem)?;
    let params = bootparams::zero_page(layout, &kernel, spec.cmdline.len(), initrd, Some(seed));
    let zero_page = bootparams::write_zero_page(mem, &params)?;
    mptable::setup_mptable(mem, spec.cpus)?;
    cpu::write_gdt(mem)?;
    cpu::write_page_tables(mem)?;
    Ok(BootInfo {
        entry: kernel.entry,
        zero_page,
        kind: kernel.kind,
        initrd,
    })
}

/// Writes `bytes` at `addr`, naming `what` if guest memory is too small.
pub(crate) fn write_guest(
    mem: &GuestMemory,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::GuestWrite { what, addr, source })
}
