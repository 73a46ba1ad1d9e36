//! What kind of KVM host we are on, and the workarounds some hosts need.
//!
//! On an ordinary VT-x/AMD-V host the launcher does nothing special. On a
//! nested, paging-based KVM (the `kvm_pvm` module, as on the machines this
//! project is developed on) guest kernel code is emulated instruction by
//! instruction and the emulator refuses a few instructions Linux uses. We
//! detect such a host by its module, never assume it, and then:
//! - append kernel arguments that switch the offending features off
//!   ([`Host::extra_cmdline`]), since KVM_SET_CPUID2 does not hide them
//!   from emulated code;
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
    /// Detects the host from `/sys/module`.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    fn detect_in(sys_module: &Path) -> Self {
        let kind = if sys_module.join("kvm_pvm").exists() {
            HostKind::NestedPvm
        } else {
            HostKind::Hardware
        };
        Self { kind }
    }

    /// Arguments to append to the guest's command line on this host, for
    /// a guest with `cpus` vCPUs whose TSC runs at `tsc_khz` (if known).
    ///
    /// With more than one vCPU Linux uses KVM's paravirtual hypercalls
    /// (`vmcall` for PV IPIs and spinlock kicks), and on this host a
    /// hypercall from emulated ring 0 never completes: the secondary CPU
    /// was seen stuck in `kvm_hypercall4` from `__send_ipi_mask` while the
    /// boot CPU spun in `queued_spin_lock_slowpath`. `nopv` keeps Linux off
    /// every KVM PV interface; it also loses kvmclock, and the PIT
    /// calibration of the TSC fails under emulation, so the TSC frequency
    /// is given outright.
    pub fn extra_cmdline(&self, cpus: u8, tsc_khz: Option<u32>) -> Option<String> {
        match self.kind {
            HostKind::NestedPvm if cpus > 1 => {
                let mut s = format!("{PVM_CMDLINE} nopv");
                if let Some(khz) = tsc_khz {
                    s.push_str(&format!(" tsc_early_khz={khz}"));
                }
                Some(s)
            }
            HostKind::NestedPvm => Some(PVM_CMDLINE.to_string()),
            HostKind::Hardware => None,
        }
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
        assert_eq!(hw.extra_cmdline(2, Some(1000)), None);
        assert_eq!(
            pvm().extra_cmdline(1, Some(1000)).as_deref(),
            Some(PVM_CMDLINE)
        );
        let smp = pvm().extra_cmdline(2, Some(2_445_000)).unwrap();
        assert!(smp.ends_with(" nopv tsc_early_khz=2445000"), "{smp}");
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(hex_bytes(&[0x0f, 0x01, 0xca]), "0f 01 ca");
    }
}
