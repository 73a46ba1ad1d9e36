//! What kind of KVM host we are on, and the workarounds some hosts need.
//!
//! On an ordinary VT-x/AMD-V host the launcher does nothing special. On a
//! nested, paging-based KVM (the `kvm_pvm` module, as on the machines this
//! project is developed on) guest kernel code is emulated instruction by
//! instruction and the emulator refuses a few instructions Linux uses. We
//! detect such a host by its module, never assume it, and then:
//! - append kernel arguments that switch the offending features off, since
//!   KVM_SET_CPUID2 does not hide them from emulated code, and arguments
//!   that spare Linux boot work costing seconds under emulation
//!   ([`Host::kernel_cmdline`]);
//! - finish the refused instructions ourselves ([`Host::fix_emulation_failure`]):
//!   `int3` becomes an injected #BP, `clac`/`stac` flip RFLAGS.AC, `fwait`
//!   is skipped.
//!
//! Any other emulation failure is reported with RIP and instruction bytes.

use std::fmt::Write as _;
use std::path::Path;

use kvm_bindings::kvm_regs;

/// Kernel arguments that keep Linux away from what a `kvm_pvm` host cannot
/// emulate (measured; see docs/kvm-host.md).
const PVM_CMDLINE: &str = "noxsave nosmap nosmep clearcpuid=cx16,popcnt,fsgsbase,rdpid,rdrand,rdseed,movbe,erms,fsrm,avx,avx2,bmi1,bmi2,clwb,clflushopt,xsaveopt,xsavec,xsaves,pcid,invpcid,umip";

/// Kernel arguments that spare Linux boot work which costs a `kvm_pvm` host
/// dearly: every guest kernel instruction is emulated there, and so is
/// every byte of the `rep stosb`/`rep movsb` a size-optimised kernel uses
/// for memset and memcpy. The savings quoted are of a 512 MB boot of the
/// shared kernel to `Run /init` (docs/kvm-host.md has the profile).
const PVM_BOOT_ARGS: &[&str] = &[
    // The default ("embed") first per-cpu chunk zeroes a 2 MiB unit per
    // CPU, byte by byte here, and gives most of it back at once; built
    // from 4 KiB pages the per-cpu setup is 5 times faster (~2 % of the
    // boot). Per-cpu data is then reached through vmalloc mappings.
    "percpu_alloc=page",
    // Only COM1 exists, but Linux registers ttyS1..ttyS3 anyway:
    // serial8250_init takes half as long (~0.5 % of the boot).
    "8250.nr_uarts=1",
    // Write-protecting the kernel splits its 2 MiB mappings page by page
    // and then poisons and frees 3 MiB of text/rodata gaps: ~8 % of the
    // boot. The guest kernel's text stays writable; a guest that wants the
    // protection passes rodata=on, which wins.
    "rodata=off",
];

/// Appended when there is an initrd: Linux would poison every byte of it
/// before freeing it, ~0.3 s per MiB here (3 % of the boot with the
/// shared 1.9 MiB initramfs); the initrd's size in guest RAM stays
/// reserved instead.
const PVM_INITRD_ARG: &str = "retain_initrd";

const RFLAGS_AC: u64 = 1 << 18;

/// The host's KVM flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware virtualization: guest code runs natively.
    Hardware,
    /// Nested paging-based KVM that emulates guest ring 0.
    NestedPvm,
}

#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub kind: HostKind,
}

/// What to do after an emulation failure.
#[derive(Debug, PartialEq)]
pub enum Fix {
    /// Set these registers and, if `inject_bp`, queue #BP; then run on.
    Resume {
        regs: kvm_regs,
        inject_bp: bool,
        what: &'static str,
    },
    /// Not an instruction we know how to finish.
    Unknown,
}

impl Host {
    /// Detects the host from `/sys/module`; inside a `--chroot`, where it
    /// cannot be seen, the first boot's finding comes with the re-exec.
    pub fn detect() -> Self {
        let sys = Path::new("/sys/module");
        let kind = if sys.is_dir() {
            Self::detect_in(sys).kind
        } else if crate::carry::flag("kvm_pvm") {
            HostKind::NestedPvm
        } else {
            HostKind::Hardware
        };
        if kind == HostKind::NestedPvm {
            crate::carry::set_flag("kvm_pvm");
        }
        Self { kind }
    }

    fn detect_in(sys_module: &Path) -> Self {
        let kind = if sys_module.join("kvm_pvm").exists() {
            HostKind::NestedPvm
        } else {
            HostKind::Hardware
        };
        Self { kind }
    }

    /// The kernel command line for a guest whose own arguments are `user`,
    /// with `cpus` vCPUs whose TSC runs at `tsc_khz` (if known) and, if
    /// `initrd`, an initrd. On a `kvm_pvm` host our arguments go before a
    /// `--` (after it they would be init's); those that only save boot
    /// time are left out where `user` already sets the same name, so the
    /// guest's choice wins.
    pub fn kernel_cmdline(
        &self,
        user: &str,
        cpus: u8,
        tsc_khz: Option<u32>,
        initrd: bool,
    ) -> String {
        if self.kind != HostKind::NestedPvm {
            return user.to_string();
        }
        let (kernel, init) = split_init_args(user);
        let given: Vec<String> = kernel.split_whitespace().map(arg_name).collect();
        let mut args: Vec<String> = PVM_CMDLINE.split(' ').map(String::from).collect();
        args.extend(smp_args(cpus, tsc_khz));
        let saving = PVM_BOOT_ARGS
            .iter()
            .copied()
            .chain(initrd.then_some(PVM_INITRD_ARG));
        args.extend(
            saving
                .filter(|a| !given.contains(&arg_name(a)))
                .map(String::from),
        );
        let mut s = kernel.trim_end().to_string();
        for a in args {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&a);
        }
        if let Some(init) = init {
            s.push_str(" --");
            s.push_str(init);
        }
        s
    }

    /// Says in `--verbose` output what this host needs.
    pub fn describe(&self) {
        match self.kind {
            HostKind::Hardware => log::debug!("host: hardware-assisted KVM, no workarounds"),
            HostKind::NestedPvm => {
                log::debug!(
                    "host: nested paging-based KVM (kvm_pvm): guest kernel code is emulated"
                );
                log::debug!("host: appending to the kernel command line: {PVM_CMDLINE}");
                log::debug!("host: with more than one vCPU also 'nopv' (KVM hypercalls hang here) and the TSC frequency");
                log::debug!(
                    "host: to spare the emulated boot: {}, with an initrd '{PVM_INITRD_ARG}' (the guest's own arguments win)",
                    PVM_BOOT_ARGS.join(" ")
                );
                log::debug!(
                    "host: will finish int3 (inject #BP), clac/stac and fwait for the guest"
                );
            }
        }
    }

    /// Decides how to get past an emulation failure at `regs.rip`, whose
    /// instruction starts with `insn`.
    pub fn fix_emulation_failure(&self, regs: &kvm_regs, insn: &[u8]) -> Fix {
        if self.kind != HostKind::NestedPvm {
            return Fix::Unknown;
        }
        let mut regs = *regs;
        let (len, what, inject_bp) = match insn {
            [0xcc, ..] => (1, "int3", true),
            [0x0f, 0x01, 0xca, ..] => {
                regs.rflags &= !RFLAGS_AC;
                (3, "clac", false)
            }
            [0x0f, 0x01, 0xcb, ..] => {
                regs.rflags |= RFLAGS_AC;
                (3, "stac", false)
            }
            [0x9b, ..] => (1, "fwait", false),
            _ => return Fix::Unknown,
        };
        regs.rip = regs.rip.wrapping_add(len);
        Fix::Resume {
            regs,
            inject_bp,
            what,
        }
    }
}

/// The name of a kernel argument as Linux compares it: the part before
/// `=`, with `-` and `_` alike, and the 8250 driver's old module name
/// (`8250_core.`) the same as its new one.
fn arg_name(arg: &str) -> String {
    let name = arg
        .split_once('=')
        .map_or(arg, |(n, _)| n)
        .replace('-', "_");
    match name.strip_prefix("8250_core.") {
        Some(param) => format!("8250.{param}"),
        None => name,
    }
}

/// What a `kvm_pvm` host needs for more than one vCPU.
///
/// With more than one vCPU Linux uses KVM's paravirtual hypercalls
/// (`vmcall` for PV IPIs and spinlock kicks), and on this host a hypercall
/// from emulated ring 0 never completes: the secondary CPU was seen stuck
/// in `kvm_hypercall4` from `__send_ipi_mask` while the boot CPU spun in
/// `queued_spin_lock_slowpath`. `nopv` keeps Linux off every KVM PV
/// interface; it also loses kvmclock, and the PIT calibration of the TSC
/// fails under emulation, so the TSC frequency is given outright.
fn smp_args(cpus: u8, tsc_khz: Option<u32>) -> Vec<String> {
    if cpus <= 1 {
        return Vec::new();
    }
    let mut args = vec!["nopv".to_string()];
    args.extend(tsc_khz.map(|khz| format!("tsc_early_khz={khz}")));
    args
}

/// Splits `cmdline` at its first lone `--`: Linux hands what follows to
/// init. The second part starts right after the `--`.
fn split_init_args(cmdline: &str) -> (&str, Option<&str>) {
    // Nothing, or white space (`Option::is_none_or` is newer than our MSRV).
    let blank = |c: Option<char>| c.filter(|c| !c.is_whitespace()).is_none();
    let lone = |i: usize| {
        blank(cmdline[..i].chars().next_back()) && blank(cmdline[i + 2..].chars().next())
    };
    match cmdline
        .match_indices("--")
        .map(|(i, _)| i)
        .find(|&i| lone(i))
    {
        Some(i) => (&cmdline[..i], Some(&cmdline[i + 2..])),
        None => (cmdline, None),
    }
}

/// Formats instruction bytes for a report: "0f 01 ca".
pub fn hex_bytes(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        let _ = write!(s, "{}{b:02x}", if i > 0 { " " } else { "" });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvm() -> Host {
        Host {
            kind: HostKind::NestedPvm,
        }
    }

    #[test]
    fn detects_by_module() {
        let dir = std::env::temp_dir().join(format!("launcher-host-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm_intel")).unwrap();
        assert_eq!(Host::detect_in(&dir).kind, HostKind::Hardware);
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert_eq!(Host::detect_in(&dir).kind, HostKind::NestedPvm);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finishes_known_instructions_only_on_pvm() {
        let regs = kvm_regs {
            rip: 0x1000,
            rflags: 0x2,
            ..Default::default()
        };
        let Fix::Resume {
            regs: r,
            inject_bp,
            what,
        } = pvm().fix_emulation_failure(&regs, &[0xcc, 0x90])
        else {
            panic!("int3 not handled")
        };
        assert_eq!((r.rip, inject_bp, what), (0x1001, true, "int3"));
        let Fix::Resume { regs: r, .. } = pvm().fix_emulation_failure(&regs, &[0x0f, 0x01, 0xcb])
        else {
            panic!("stac not handled")
        };
        assert_eq!((r.rip, r.rflags & RFLAGS_AC), (0x1003, RFLAGS_AC));
        let Fix::Resume { regs: r2, .. } = pvm().fix_emulation_failure(&r, &[0x0f, 0x01, 0xca])
        else {
            panic!("clac not handled")
        };
        assert_eq!(r2.rflags & RFLAGS_AC, 0);
        let Fix::Resume {
            regs: r, inject_bp, ..
        } = pvm().fix_emulation_failure(&regs, &[0x9b])
        else {
            panic!("fwait not handled")
        };
        assert_eq!((r.rip, inject_bp), (0x1001, false));
        assert_eq!(
            pvm().fix_emulation_failure(&regs, &[0x0f, 0x0b]),
            Fix::Unknown
        );
        let hw = Host {
            kind: HostKind::Hardware,
        };
        assert_eq!(hw.fix_emulation_failure(&regs, &[0xcc]), Fix::Unknown);
    }

    /// The whole command line one vCPU with an initrd gets here, in order.
    #[test]
    fn pvm_cmdline_for_one_cpu() {
        assert_eq!(
            pvm().kernel_cmdline("console=ttyS0", 1, Some(2_300_000), true),
            format!("console=ttyS0 {PVM_CMDLINE} percpu_alloc=page 8250.nr_uarts=1 rodata=off retain_initrd")
        );
        assert_eq!(
            pvm().kernel_cmdline("", 1, None, false),
            format!("{PVM_CMDLINE} percpu_alloc=page 8250.nr_uarts=1 rodata=off")
        );
    }

    #[test]
    fn pvm_cmdline_for_smp_gives_the_tsc_frequency() {
        let smp = pvm().kernel_cmdline("console=ttyS0", 2, Some(2_445_000), false);
        assert_eq!(
            smp,
            format!(
                "console=ttyS0 {PVM_CMDLINE} nopv tsc_early_khz=2445000 percpu_alloc=page 8250.nr_uarts=1 rodata=off"
            )
        );
        let unknown = pvm().kernel_cmdline("", 4, None, false);
        assert!(unknown.contains(" nopv percpu_alloc=page"), "{unknown}");
        assert!(!unknown.contains("tsc_early_khz"), "{unknown}");
    }

    #[test]
    fn hardware_cmdline_is_the_users() {
        let hw = Host {
            kind: HostKind::Hardware,
        };
        for cpus in [1, 2] {
            assert_eq!(
                hw.kernel_cmdline("console=ttyS0 -- x", cpus, Some(1000), true),
                "console=ttyS0 -- x"
            );
        }
    }

    /// A time-saving argument the guest sets itself is not added again
    /// (Linux would take the last one); the workarounds always are.
    #[test]
    fn the_guests_own_arguments_win() {
        let line = pvm().kernel_cmdline(
            "rodata=on 8250_core.nr-uarts=4 retain_initrd percpu_alloc=embed clearcpuid=sgx",
            1,
            None,
            true,
        );
        assert_eq!(
            line,
            format!(
                "rodata=on 8250_core.nr-uarts=4 retain_initrd percpu_alloc=embed clearcpuid=sgx {PVM_CMDLINE}"
            )
        );
        // A name after `--` is init's, not the kernel's.
        let line = pvm().kernel_cmdline("quiet -- rodata=on", 1, None, false);
        assert_eq!(
            line,
            format!(
                "quiet {PVM_CMDLINE} percpu_alloc=page 8250.nr_uarts=1 rodata=off -- rodata=on"
            )
        );
    }

    /// Arguments after a lone `--` belong to init: ours go before it.
    #[test]
    fn init_arguments_stay_last() {
        let line = pvm().kernel_cmdline("console=ttyS0 -- single  x", 1, None, false);
        assert!(
            line.starts_with(&format!("console=ttyS0 {PVM_CMDLINE} ")),
            "{line}"
        );
        assert!(line.ends_with(" rodata=off -- single  x"), "{line}");
        let line = pvm().kernel_cmdline("--", 1, None, false);
        assert!(
            line.starts_with(PVM_CMDLINE) && line.ends_with(" rodata=off --"),
            "{line}"
        );
        // Not a lone `--`: an ordinary argument.
        let line = pvm().kernel_cmdline("a--b --c", 1, None, false);
        assert!(
            line.starts_with(&format!("a--b --c {PVM_CMDLINE}")),
            "{line}"
        );
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(hex_bytes(&[0x0f, 0x01, 0xca]), "0f 01 ca");
    }
}
