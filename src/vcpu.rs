//! Virtual CPUs: their initial state and the `KVM_RUN` loop.
//!
//! Each vCPU runs on its own thread. An exit to user space is dispatched
//! here: port I/O and MMIO to the [`Bus`]es (devices then do their work
//! elsewhere, e.g. on virtqueue workers, so no vCPU waits for a disk), a
//! triple fault or a reset event to a reboot request, an emulation failure
//! to the host workarounds in [`crate::host`] or, failing those, to a
//! report with RIP and the instruction bytes.

use std::sync::Arc;

use devices::{Bus, VmControl, VmRequest};
use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use loader::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::host::{hex_bytes, Fix, Host};

/// MSRs given a defined value at reset, as firmware would leave them.
const BOOT_MSRS: &[(u32, u64)] = &[
    (0x174, 0),             // IA32_SYSENTER_CS
    (0x175, 0),             // IA32_SYSENTER_ESP
    (0x176, 0),             // IA32_SYSENTER_EIP
    (0xc000_0081, 0),       // STAR
    (0xc000_0082, 0),       // LSTAR
    (0xc000_0083, 0),       // CSTAR
    (0xc000_0084, 0),       // SYSCALL_MASK
    (0xc000_0102, 0),       // KERNEL_GS_BASE
    (0x10, 0),              // TSC
    (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
    (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
];

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0b100;
const APIC_MODE_EXTINT: u32 = 0b111;

/// Gives vCPU `id` its CPUID, MSRs, FPU and local APIC; the boot CPU also
/// gets the registers for the kernel's 64-bit entry.
pub fn configure(
    fd: &VcpuFd,
    id: u8,
    cpus: u8,
    base_cpuid: &CpuId,
    mem: &GuestMemory,
    boot: &loader::BootInfo,
) -> Result<()> {
    let what = |step: &'static str| {
        move |e| Error::VcpuSetup {
            id,
            step,
            source: e,
        }
    };
    fd.set_cpuid2(&cpuid_for(base_cpuid, id, cpus))
        .map_err(what("CPUID"))?;

    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::VcpuSetup {
        id,
        step: "MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let set = fd.set_msrs(&msrs).map_err(what("MSRs"))?;
    if set != entries.len() {
        log::debug!("vcpu{id}: KVM took {set} of {} boot MSRs", entries.len());
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(what("FPU"))?;

    // LINT0 receives the 8259's interrupts (ExtINT), LINT1 is NMI, as on a
    // PC after the BIOS: Linux relies on this for the legacy timer path.
    let mut lapic = fd.get_lapic().map_err(what("local APIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic).map_err(what("local APIC"))?;

    if id == 0 {
        let mut sregs = fd.get_sregs().map_err(what("segment registers"))?;
        loader::cpu::setup_sregs(mem, &mut sregs).map_err(Error::Load)?;
        fd.set_sregs(&sregs).map_err(what("segment registers"))?;
        fd.set_regs(&loader::cpu::boot_regs(boot))
            .map_err(what("registers"))?;
    }
    Ok(())
}

/// KVM's supported CPUID with this vCPU's APIC id filled in and the
/// hypervisor bit set.
fn cpuid_for(base: &CpuId, id: u8, cpus: u8) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(cpus) << 16);
                e.ecx |= 1 << 31;
                if cpus > 1 {
                    e.edx |= 1 << 28;
                }
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    cpuid
}

fn set_lvt_mode(regs: &mut [libc::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !(0b111 << 8)) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as libc::c_char;
    }
}

/// One vCPU and what its exits go to.
pub struct Vcpu {
    pub fd: VcpuFd,
    pub id: u8,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: VmControl,
    pub host: Host,
    pub mem: GuestMemory,
}

/// The element size of the port access `KVM_RUN` just returned with
/// (1, 2 or 4; at least 1).
fn io_size(run: *const kvm_bindings::kvm_run) -> usize {
    // SAFETY: `run` is this vCPU's mapped kvm_run, valid for its life; the
    // exit reason is KVM_EXIT_IO, so `io` is the union member KVM filled
    // in, and reading a copy of it aliases no Rust reference mutably.
    let size = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() };
    usize::from(size).max(1)
}

impl Vcpu {
    /// Runs the guest until something ends the run; the reason goes to
    /// `control`, and the thread returns.
    pub fn run(mut self) {
        crate::seccomp::install_or_exit(crate::seccomp::Kind::Vcpu);
        let mut fixed = std::collections::BTreeSet::new();
        let mut waiting_for_sipi = false;
        // The run structure stays mapped for the vCPU's life; its `io`
        // member tells the element size of a string (rep ins/outs) access.
        let run_ptr: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        if let (0, Some(t)) = (self.id, crate::STARTED.get()) {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            log::debug!("vcpu0: first KVM_RUN {ms:.2} ms after main() began");
        }
        loop {
            // The run is ending (a bad driver caught at this very access,
            // say): the guest runs no further instruction.
            if self.control.ending() {
                return;
            }
            let exit = match self.fd.run() {
                Ok(exit) => {
                    if std::mem::take(&mut waiting_for_sipi) {
                        log::debug!("vcpu{}: started by its start-up IPI", self.id);
                    }
                    exit
                }
                Err(e) if e.errno() == libc::EINTR => continue,
                // A secondary vCPU waiting for its start-up IPI: KVM on
                // some hosts returns EAGAIN rather than blocking.
                Err(e) if e.errno() == libc::EAGAIN => {
                    if !waiting_for_sipi {
                        log::debug!("vcpu{}: waiting for its start-up IPI", self.id);
                        waiting_for_sipi = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                Err(e) => {
                    return self.end(VmRequest::HostError {
                        message: format!("KVM_RUN failed on vCPU {}: {e}", self.id),
                    })
                }
            };
            match exit {
                VcpuExit::IoIn(port, data) => {
                    // A string instruction brings count elements at once:
                    // each is its own access of the instruction's width.
                    for element in data.chunks_mut(io_size(run_ptr)) {
                        if !self.pio.read(port.into(), element) {
                            log::trace!("vcpu{}: in {port:#x} ({} bytes): nobody there", self.id, element.len());
                        }
                    }
                }
                VcpuExit::IoOut(port, data) => {
                    for element in data.chunks(io_size(run_ptr)) {
                        if !self.pio.write(port.into(), element) {
                            log::trace!("vcpu{}: out {port:#x} = {element:02x?}: nobody there", self.id);
                        }
                    }
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !self.mmio.read(addr, data) {
                        log::trace!("vcpu{}: MMIO read {addr:#x}: nobody there", self.id);
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !self.mmio.write(addr, data) {
                        log::trace!("vcpu{}: MMIO write {addr:#x}: nobody there", self.id);
                    }
                }
                // With the in-kernel irqchip KVM handles HLT itself; if one
                // reaches us, the guest simply runs on at the next interrupt.
                VcpuExit::Hlt => {}
                VcpuExit::Shutdown => {
                    return self.end(VmRequest::Reboot { reason: "triple fault".into() })
                }
                VcpuExit::SystemEvent(kind, _) => {
                    return self.end(match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => VmRequest::Poweroff,
                        KVM_SYSTEM_EVENT_RESET => VmRequest::Reboot { reason: "system reset".into() },
                        KVM_SYSTEM_EVENT_CRASH => VmRequest::GuestCrash { message: "the guest reported a crash".into() },
                        k => VmRequest::GuestCrash { message: format!("unknown system event {k}") },
                    })
                }
                VcpuExit::InternalError => {
                    if let Err(req) = self.emulation_failure(&mut fixed) {
                        return self.end(req);
                    }
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    return self.end(VmRequest::GuestCrash {
                        message: format!(
                            "vCPU {} could not enter the guest (hardware reason {reason:#x}, cpu {cpu})",
                            self.id
                        ),
                    })
                }
                VcpuExit::Intr => {}
                other => {
                    let message = format!("vCPU {}: unexpected exit {other:?}", self.id);
                    return self.end(VmRequest::GuestCrash { message });
                }
            }
        }
    }

    fn end(&self, req: VmRequest) {
        log::debug!("vcpu{}: stops: {req:?}", self.id);
        self.control.request(req);
    }

    /// Handles `KVM_EXIT_INTERNAL_ERROR`: finishes the instructions the
    /// host is known to refuse, reports anything else.
    fn emulation_failure(
        &mut self,
        fixed: &mut std::collections::BTreeSet<&'static str>,
    ) -> std::result::Result<(), VmRequest> {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the union member KVM filled in.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let crash = |message: String| VmRequest::GuestCrash { message };
        let regs = self.fd.get_regs().map_err(|e| {
            crash(format!(
                "vCPU {}: internal error {suberror}, registers unreadable: {e}",
                self.id
            ))
        })?;
        let insn = self.instruction_bytes(regs.rip);
        if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
            if let Fix::Resume {
                regs: next,
                inject_bp,
                what,
            } = self.host.fix_emulation_failure(&regs, &insn)
            {
                if fixed.insert(what) {
                    log::debug!(
                        "vcpu{}: host cannot emulate {what} at {:#x}; finishing it for the guest",
                        self.id,
                        regs.rip
                    );
                }
                let res = self.fd.set_regs(&next).and_then(|_| {
                    if !inject_bp {
                        return Ok(());
                    }
                    let mut ev = self.fd.get_vcpu_events()?;
                    ev.exception.injected = 1;
                    ev.exception.nr = 3; // #BP
                    ev.exception.has_error_code = 0;
                    ev.exception.error_code = 0;
                    self.fd.set_vcpu_events(&ev)
                });
                return res.map_err(|e| VmRequest::HostError {
                    message: format!("vCPU {}: cannot finish {what} for the guest: {e}", self.id),
                });
            }
        }
        let kind = if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
            "the host cannot emulate the instruction"
        } else {
            "KVM internal error"
        };
        Err(crash(format!(
            "vCPU {}: {kind} at RIP {:#x} (bytes: {}; suberror {suberror})",
            self.id,
            regs.rip,
            if insn.is_empty() {
                "unreadable".into()
            } else {
                hex_bytes(&insn)
            }
        )))
    }

    /// Up to 15 bytes (the longest x86 instruction) at guest-virtual `rip`,
    /// fewer where the translation ends.
    fn instruction_bytes(&self, rip: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(15);
        let mut va = rip;
        while out.len() < 15 {
            let Ok(t) = self.fd.translate_gva(va) else {
                break;
            };
            if t.valid == 0 {
                break;
            }
            let in_page = (0x1000 - (va & 0xfff)) as usize;
            let mut buf = vec![0u8; in_page.min(15 - out.len())];
            if self
                .mem
                .read_slice(&mut buf, GuestAddress(t.physical_address))
                .is_err()
            {
                break;
            }
            let Some(next) = va.checked_add(buf.len() as u64) else {
                break;
            };
            va = next;
            out.extend_from_slice(&buf);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_keeps_other_bits() {
        let mut regs = [0 as libc::c_char; 1024];
        regs[APIC_LVT_LINT0] = 0x30;
        regs[APIC_LVT_LINT0 + 2] = 0x01; // mask bit 16
        set_lvt_mode(&mut regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT_LINT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT_LINT0 + 2] as u8, 0x01);
    }
}
