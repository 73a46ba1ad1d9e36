//! The boot loader on mutated kernel (ELF vmlinux or bzImage) and initrd
//! files: `loader::load` either refuses the files with an error naming
//! the problem or places everything inside the guest's RAM.
#![no_main]

use std::sync::OnceLock;

use fuzzing::{scratch, Input};
use libfuzzer_sys::fuzz_target;
use loader::layout::MemoryLayout;
use loader::{BootSpec, GuestMemory};

/// 64 MiB of guest RAM, made once: the loader overwrites what it uses.
fn guest() -> &'static (MemoryLayout, GuestMemory) {
    static GUEST: OnceLock<(MemoryLayout, GuestMemory)> = OnceLock::new();
    GUEST.get_or_init(|| {
        let layout = MemoryLayout::new(64 << 20).expect("a 64 MiB layout");
        let mem = GuestMemory::from_ranges(layout.ram_ranges()).expect("guest memory");
        (layout, mem)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (layout, mem) = guest();
    let flags = input.u8();
    let cpus = 1 + (flags >> 1) % 4;
    let cmdline = String::from_utf8_lossy(input.blob()).into_owned();
    let kernel_len = usize::from(input.u16());
    let kernel = scratch("kernel");
    std::fs::write(&kernel, input.bytes(kernel_len)).expect("writing the kernel");
    let initrd = scratch("initrd");
    if flags & 1 != 0 {
        std::fs::write(&initrd, input.rest()).expect("writing the initrd");
    }
    let spec = BootSpec {
        kernel: &kernel,
        initrd: (flags & 1 != 0).then_some(initrd.as_path()),
        cmdline: &cmdline,
        cpus,
        kernel_file: None,
        initrd_file: None,
        // The fuzz target reuses one guest memory.
        memory_is_zero: false,
    };
    match loader::load(mem, layout, &spec) {
        Ok(info) => {
            let ram = layout.low_ram_end();
            assert!(info.entry.0 < ram, "entry {:#x} outside RAM", info.entry.0);
            if let Some((addr, size)) = info.initrd {
                assert!(
                    addr.0 >= 1 << 20 && addr.0 + size <= ram,
                    "initrd at {addr:?}+{size:#x}"
                );
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
