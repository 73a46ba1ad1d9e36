//! Ring-0 bring-up, all in assembly: the host's KVM emulates guest ring-0
//! code instruction by instruction (about a million instructions a second),
//! so ring 0 does the bare minimum, in a few hundred instructions, and no
//! Rust code (which may use SSE the emulator cannot handle) ever runs there.
//!
//! Two ways in, one way on:
//! - `_start`, the ELF entry, per the Linux 64-bit boot protocol (long
//!   mode, identity map with U/S set, RSI = zero page): how the launcher
//!   boots it.
//! - `_start_pvh`, named by the Xen ELF note `XEN_ELFNOTE_PHYS32_ENTRY`
//!   (the x86/HVM direct boot ABI, "PVH"), for VMMs that boot an ELF that
//!   way, such as `qemu-system-x86_64 -kernel`: 32-bit protected mode,
//!   paging off, EBX = `struct hvm_start_info`. It identity-maps the first
//!   4 GiB with 2 MiB pages (U/S set, like the launcher's map, so ring 3
//!   can use and extend it), enters long mode and joins `_start`.
//!
//! Then:
//! 1. CR0.MP on, CR0.EM/TS off, CR4.OSFXSR|OSXMMEXCPT on (Rust uses SSE);
//! 2. its own stack, GDT (with a TSS whose RSP0 is the ring-0 stack) and an
//!    IDT for vectors 0–31;
//! 3. `iretq` to ring 3 with IOPL=3 and IF=0, calling
//!    [`crate::user_main`]`(boot_info, protocol)` on the user stack
//!    (the zero page or the start info, and which of the two it is:
//!    [`PROTOCOL_LINUX64`] or [`PROTOCOL_PVH`]).
//!
//! Port I/O from ring 3 is allowed twice over: by IOPL=3 and by an all-zero
//! I/O permission bitmap in the TSS. The bitmap is what works on the nested
//! `kvm_pvm` hosts: there guest ring 3 runs as host user code, whose
//! hardware IOPL is always 0, so the IOPL we set is dropped on the way to
//! ring 3 (RFLAGS reads 0x...0002 there); every `in`/`out` traps with #GP
//! and KVM's emulator performs it if the *guest's* rules allow it, which it
//! checks against the TSS bitmap. Cost measured there: about 48 µs per port
//! access from ring 3 (scenario `pio-bench`). Without the bitmap each
//! `in`/`out` in ring 3 is a #GP (vector 13).
//!
//! An exception (from ring 3, or from ring 0 during bring-up) lands in a
//! stub that pushes the vector, records the frame and `iretq`s to ring 3
//! into [`crate::exception_report`] on a stack of its own, which prints
//! `GUEST-PANIC exception …` and powers off. A fault while reporting one
//! prints a fixed line and powers off from ring 0 directly (through the
//! register [`crate::power`] found in the ACPI tables). Either way an
//! exception never becomes a triple fault (which the launcher treats as a
//! reboot, i.e. an endless loop).

use core::arch::global_asm;

/// GDT selectors (see the table in the assembly below).
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
pub const TSS_SEL: u16 = 0x28;

/// RFLAGS for ring 3: IOPL=3, IF=0, reserved bit 1.
pub const USER_RFLAGS: u64 = 0x3002;

extern "C" {
    /// CR3 as the loader set it, saved by `_start` (ring 3 cannot read CR3).
    static __boot_cr3: u64;
}

/// The page tables the loader gave us (their PML4's address): the
/// identity map carries the U/S bit, so ring 3 can extend it.
pub fn boot_cr3() -> u64 {
    // SAFETY: written once by `_start` before ring 3 runs; read-only after.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(__boot_cr3)) }
}

/// Number of IDT entries (the CPU exceptions).
pub const IDT_ENTRIES: usize = 32;

/// What `_start` passes [`crate::user_main`] as `protocol`: booted through
/// the Linux 64-bit entry (the argument is the zero page)...
pub const PROTOCOL_LINUX64: u64 = 0;
/// ... or through the PVH entry (the argument is `hvm_start_info`).
pub const PROTOCOL_PVH: u64 = 1;

/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Page-table entry bits: present, writable, user, 2 MiB page.
const PTE_TABLE: u32 = 0x7;
const PTE_LARGE: u32 = 0x87;
/// CR4.PAE, EFER (MSR) and EFER.LME, CR0.PG|PE.
const CR4_PAE: u32 = 1 << 5;
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;
const CR0_PG_PE: u32 = 0x8000_0001;

extern "C" {
    /// Where the ring-0 fallback power-off writes, and what (the launcher's
    /// PM1a control register and S5 until [`crate::power`] reads ACPI).
    static mut __poweroff_port: u16;
    static mut __poweroff_value: u16;
}

/// Tells the ring-0 fallback power-off (a fault while reporting a fault)
/// which register and value this machine's ACPI tables name.
pub fn set_ring0_poweroff(port: u16, value: u16) {
    // SAFETY: plain data in the image, written by ring 3 only here, read
    // by the ring-0 stub only after a nested fault; one vCPU.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!(__poweroff_port), port);
        core::ptr::write_volatile(core::ptr::addr_of_mut!(__poweroff_value), value);
    }
}

global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
    .type _start, @function
_start:
    cli
    cld
    mov r15, rsi                    /* zero page, for user_main */
    mov r14d, {protocol_linux64}
__start64:

    /* FPU/SSE: CR0.MP=1, CR0.EM=0, CR0.TS=0; CR4.OSFXSR|OSXMMEXCPT. */
    mov rax, cr0
    or rax, 0x2
    and rax, -13                    /* ~0xc: clear EM (bit 2), TS (bit 3) */
    mov cr0, rax
    mov rax, cr4
    or rax, 0x600
    mov cr4, rax

    lea rsp, [rip + __kstack_top]
    mov rax, cr3                    /* for ring 3 (`boot_cr3`) */
    mov [rip + __boot_cr3], rax

    /* Zero what ring 0 relies on (IDT, TSS with its I/O bitmap, the
       exception flag) in case the loader did not zero .bss; the rest of
       .bss is stacks, and zeroing it here would cost emulated time. */
    lea rdi, [rip + __idt]
    lea rcx, [rip + __boot_bss_end]
    sub rcx, rdi
    shr rcx, 3
    xor eax, eax
    rep stosq

    /* TSS: RSP0 = ring-0 stack; an all-zero I/O bitmap (every port allowed)
       at offset 104, ended by the 0xff byte the CPU requires. */
    lea rax, [rip + __kstack_top]
    lea rdi, [rip + __tss]
    mov [rdi + 4], rax
    mov word ptr [rdi + 102], 104   /* I/O bitmap right after the TSS */
    mov byte ptr [rdi + 104 + 8192], 0xff

    /* TSS descriptor (16 bytes at GDT offset 0x28): limit 104 + 8192 (the
       TSS, the 8 KiB bitmap and its end byte), type 0x89. */
    lea rax, [rip + __tss]
    lea rdi, [rip + __gdt_tss]
    mov word ptr [rdi], 104 + 8192
    mov [rdi + 2], ax               /* base 15:0 */
    shr rax, 16
    mov [rdi + 4], al               /* base 23:16 */
    mov byte ptr [rdi + 5], 0x89    /* present, 64-bit TSS (available) */
    mov byte ptr [rdi + 6], 0
    mov [rdi + 7], ah               /* base 31:24 */
    shr rax, 16
    mov [rdi + 8], eax              /* base 63:32 */
    mov dword ptr [rdi + 12], 0

    lgdt [rip + __gdtr]
    push {kernel_cs}
    lea rax, [rip + 2f]
    push rax
    retfq
2:
    mov ax, {kernel_ds}
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov ax, {tss_sel}
    ltr ax

    /* IDT: one interrupt gate (DPL 0, selector 0x08) per exception stub. */
    lea rdi, [rip + __idt]
    lea rsi, [rip + __isr_table]
    xor ecx, ecx
3:
    mov rax, [rsi + rcx * 8]
    mov [rdi], ax                   /* offset 15:0 */
    mov word ptr [rdi + 2], {kernel_cs}
    mov word ptr [rdi + 4], 0x8e00  /* P, DPL 0, 64-bit interrupt gate */
    shr rax, 16
    mov [rdi + 6], ax               /* offset 31:16 */
    shr rax, 16
    mov [rdi + 8], eax              /* offset 63:32 */
    mov dword ptr [rdi + 12], 0
    add rdi, 16
    inc ecx
    cmp ecx, {idt_entries}
    jne 3b
    lidt [rip + __idtr]

    /* Off to ring 3: user_main(zero_page), never returns. */
    mov ax, {user_ds}
    mov ds, ax
    mov es, ax
    mov rdi, r15
    mov rsi, r14
    push {user_ds}                  /* SS */
    lea rax, [rip + __ustack_top - 8] /* as if called: rsp % 16 == 8 */
    push rax                        /* RSP */
    push {user_rflags}              /* RFLAGS */
    push {user_cs}                  /* CS */
    lea rax, [rip + {user_main}]
    push rax                        /* RIP */
    iretq
    .size _start, . - _start

    /* The PVH entry: 32-bit protected mode, paging off, EBX = start info,
       no stack. Identity-map 4 GiB: PML4[0] -> PDPT, PDPT[0..4] -> four
       page directories of 2 MiB pages, all with U/S set. */
    .code32
    .global _start_pvh
    .type _start_pvh, @function
_start_pvh:
    cli
    cld
    mov esi, ebx                    /* start info, for user_main */
    mov edi, offset __pvh_pml4      /* PML4 and PDPT: zeroed */
    mov ecx, 2 * 4096 / 4
    xor eax, eax
    rep stosd
    mov dword ptr [__pvh_pml4], offset __pvh_pdpt + {pte_table}
    mov eax, offset __pvh_pd + {pte_table}
    mov dword ptr [__pvh_pdpt], eax
    add eax, 4096
    mov dword ptr [__pvh_pdpt + 8], eax
    add eax, 4096
    mov dword ptr [__pvh_pdpt + 16], eax
    add eax, 4096
    mov dword ptr [__pvh_pdpt + 24], eax
    mov edi, offset __pvh_pd        /* 2048 entries, 2 MiB each */
    mov eax, {pte_large}
    xor edx, edx
    mov ecx, 2048
9:
    mov [edi], eax
    mov [edi + 4], edx
    add eax, 0x200000
    add edi, 8
    dec ecx
    jnz 9b

    mov eax, cr4
    or eax, {cr4_pae}
    mov cr4, eax
    mov eax, offset __pvh_pml4
    mov cr3, eax
    mov ecx, {msr_efer}
    rdmsr
    or eax, {efer_lme}
    wrmsr
    mov eax, cr0
    or eax, {cr0_pg_pe}
    mov cr0, eax                    /* long mode (compatibility) */
    lgdt [__gdtr]                   /* base fits 32 bits: the low half */
    mov esp, offset __kstack_top
    push {kernel_cs}
    mov eax, offset __pvh_long
    push eax
    retf                            /* to 64-bit code */
    .code64
__pvh_long:
    mov r15d, esi                   /* zero-extends: the upper halves of */
    mov r14d, {protocol_pvh}        /* registers are undefined here */
    jmp __start64
    .size _start_pvh, . - _start_pvh

    /* Exception stubs: make every frame [vector, error code, RIP, CS,
       RFLAGS, RSP, SS] and go to __isr_common. */
    .macro ISR_NOERR n
__isr\n:
    push 0
    push \n
    jmp __isr_common
    .endm
    .macro ISR_ERR n
__isr\n:
    push \n
    jmp __isr_common
    .endm

    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR 8
    ISR_NOERR 9
    ISR_ERR 10
    ISR_ERR 11
    ISR_ERR 12
    ISR_ERR 13
    ISR_ERR 14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR 17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR 21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR 29
    ISR_ERR 30
    ISR_NOERR 31

__isr_common:
    cmp byte ptr [rip + __in_exception], 0
    jne 5f
    mov byte ptr [rip + __in_exception], 1
    /* exception_report(vector, error, rip, cs, cr2) in ring 3. */
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    mov rcx, [rsp + 24]
    mov r8, cr2
    mov ax, {user_ds}
    mov ds, ax
    mov es, ax
    push {user_ds}
    lea rax, [rip + __xstack_top - 8]
    push rax
    push {user_rflags}
    push {user_cs}
    lea rax, [rip + {exception_report}]
    push rax
    iretq

5:  /* Faulted while reporting a fault: fixed line, power off, from ring 0. */
    lea rsi, [rip + __nested_msg]
6:
    mov al, [rsi]
    test al, al
    jz 7f
    mov dx, 0x3f8
    out dx, al
    inc rsi
    jmp 6b
7:
    mov dx, [rip + __poweroff_port]
    mov ax, [rip + __poweroff_value]
    out dx, ax
8:                                  /* never reset: that would loop forever */
    hlt
    jmp 8b

    .section .rodata.boot, "a"
__nested_msg:
    .asciz "GUEST-PANIC nested exception while reporting an exception\r\n"

    /* The PVH entry point for the VMM (p_align of PT_NOTE must be 4:
       QEMU pads the name to it). */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen" and its NUL */
    .long 8                         /* descsz */
    .long {xen_phys32_entry}
    .asciz "Xen"
    .balign 4
    .quad _start_pvh

    .section .data.boot, "aw"
    .balign 8
    .global __boot_cr3
__boot_cr3:
    .quad 0
    .global __poweroff_port
    .global __poweroff_value
__poweroff_port:
    .word 0x604
__poweroff_value:
    .word 0x3400
    .balign 8
__isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad __isr\n
    .endr

    .balign 16
__gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00cff2000000ffff        /* 0x18 user data (DPL 3) */
    .quad 0x00affa000000ffff        /* 0x20 user code, 64-bit (DPL 3) */
__gdt_tss:
    .quad 0                         /* 0x28 TSS, filled in by _start */
    .quad 0
__gdt_end:

    .balign 8
    .word 0, 0, 0
__gdtr:
    .word __gdt_end - __gdt - 1
    .quad __gdt
    .word 0, 0, 0
__idtr:
    .word {idt_entries} * 16 - 1
    .quad __idt

    .section .bss.boot, "aw", @nobits
    .balign 4096
__idt:
    .skip {idt_entries} * 16
__tss:                              /* 104 bytes, then the I/O bitmap */
    .skip 104 + 8192 + 1
__in_exception:
    .skip 1
    .balign 8
__boot_bss_end:
    .balign 4096
    .skip 16384
__kstack_top:                       /* ring 0: bring-up and exception entry */
    .skip 16384
__xstack_top:                       /* ring 3: exception_report */
    .skip 131072
__ustack_top:                       /* ring 3: user_main */
    .balign 4096
__pvh_pml4:                         /* the PVH entry's page tables */
    .skip 4096
__pvh_pdpt:
    .skip 4096
__pvh_pd:
    .skip 4 * 4096

    .text
"#,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    tss_sel = const TSS_SEL,
    user_rflags = const USER_RFLAGS,
    idt_entries = const IDT_ENTRIES,
    protocol_linux64 = const PROTOCOL_LINUX64,
    protocol_pvh = const PROTOCOL_PVH,
    xen_phys32_entry = const XEN_ELFNOTE_PHYS32_ENTRY,
    pte_table = const PTE_TABLE,
    pte_large = const PTE_LARGE,
    cr4_pae = const CR4_PAE,
    msr_efer = const MSR_EFER,
    efer_lme = const EFER_LME,
    cr0_pg_pe = const CR0_PG_PE,
    user_main = sym crate::user_main,
    exception_report = sym crate::exception_report,
);
