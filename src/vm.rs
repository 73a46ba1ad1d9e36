//! Assembles a machine from a [`VmConfig`] and runs it until something ends
//! the run.
//!
//! Order matters and is the whole story of a boot: open KVM and check what
//! it can do; allocate guest RAM around the MMIO hole and hand it to KVM;
//! create the in-kernel interrupt controllers and PIT; load the kernel,
//! initrd and boot tables ([`loader`]); put the legacy devices on the
//! port-I/O bus with their interrupts wired to irqfds; create and configure
//! the vCPUs; start one thread per vCPU; then run the host event loop
//! ([`EventLoop`], on the calling thread) until the first [`VmRequest`]
//! that ends the run.
//!
//! The event loop is rust-vmm's `event-manager`: one epoll, and for each
//! kind of host event a subscriber in the file of the thing it serves:
//! signals (`lifecycle.rs`), stdin (`terminal.rs`), the control socket
//! (`control.rs`), vmmci's timeouts and clock watch
//! (`devices/src/virtio/vmmci/host.rs`), and here [`FirstRequest`], which
//! hears every [`VmControl::request`] through an eventfd and ends the loop.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::legacy::{ports, Cmos, InputSink, PowerManagement, SerialPort, I8042};
use devices::pci::{self, HostBridge, Identity};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::console::{Console, InputQueue};
use devices::virtio::net::tap::Tap;
use devices::virtio::net::{format_mac, Net};
use devices::virtio::rng::Rng;
use devices::virtio::transport::legacy;
use devices::virtio::vmmci::{self, ClockWatcher, Vmmci, VmmciControl, VmmciEvent};
use devices::virtio::VirtioDevice;
use devices::{Bus, Requests, VmControl, VmRequest};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use loader::layout::MemoryLayout;
use loader::GuestMemory;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::cli::{NetArg, TapSource, VmConfig};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::pci::{PciBuilder, Transport};
use crate::terminal::{self, ConsoleInput};
use crate::vcpu::{self, Vcpu};
use crate::virtio::KvmHooks;

/// Where KVM keeps its TSS and identity map on Intel: three pages just
/// below the BIOS area, inside the MMIO hole where no RAM or BAR lives.
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// The host event loop: every subscriber runs on the thread that calls
/// [`Vm::run`], one event at a time.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A machine ready to run: its threads start in [`Vm::run`].
pub struct Vm {
    _kvm: Kvm,
    _vm: Arc<VmFd>,
    vcpus: Vec<Vcpu>,
    control: VmControl,
    requests: Requests,
    serial: Arc<Mutex<SerialPort>>,
    serial_room: EventFd,
    console_input: Arc<InputQueue>,
    vmmci: Option<VmmciControl>,
}

/// What the machine needs from the host that may take privileges to open
/// (`/dev/kvm`, the disks, the taps, the kernel and initrd): opened before
/// `--username` and `--chroot` drop them, and kept open across a reboot's
/// re-exec (`carry`), where the next boot takes them instead of opening.
pub struct HostFiles {
    kvm: Kvm,
    disks: Vec<Block>,
    nets: Vec<Net>,
    /// Only with a privilege drop; otherwise the loader opens the paths
    /// (each boot, so that a reboot runs a rebuilt kernel).
    kernel: Option<std::fs::File>,
    initrd: Option<std::fs::File>,
}

impl HostFiles {
    /// Opens (or takes from the previous boot) everything `config` names;
    /// `boot_files`: the kernel and initrd too.
    pub fn open(config: &VmConfig, boot_files: bool) -> Result<HostFiles> {
        let kvm = open_kvm()?;
        let mut disks = Vec::new();
        for (i, b) in config.blocks.iter().enumerate() {
            // After a reboot, the same open file and its lock.
            let name = format!("disk{i}");
            let disk = Block::open_carried(
                BlockConfig {
                    path: b.path.clone(),
                    read_only: b.read_only,
                    serial: b.serial.clone(),
                },
                crate::carry::take(&name, &b.path),
            )?;
            let kept = disk.sync_handle().map_err(Error::io(format!(
                "keep {} open (and locked) across a reboot",
                b.path.display()
            )))?;
            crate::carry::keep_file(&name, kept.into());
            log::debug!(
                "block: {} ({} sectors{})",
                b.path.display(),
                disk.capacity(),
                if b.read_only { ", read-only" } else { "" }
            );
            if !b.read_only {
                let handle = disk.sync_handle().map_err(Error::io(format!(
                    "keep a descriptor on {} to flush it at exit",
                    b.path.display()
                )))?;
                crate::lifecycle::sync_on_exit(b.path.clone(), handle);
            }
            disks.push(disk);
        }
        let mut nets = Vec::new();
        for (i, n) in config.nets.iter().enumerate() {
            nets.push(open_net(n, i)?);
        }
        let (kernel, initrd) = if boot_files {
            let kernel = boot_file("kernel", &config.kernel)?;
            let initrd = match &config.initrd {
                Some(p) => Some(boot_file("initrd", p)?),
                None => None,
            };
            (Some(kernel), initrd)
        } else {
            (None, None)
        };
        Ok(HostFiles {
            kvm,
            disks,
            nets,
            kernel,
            initrd,
        })
    }
}

/// `/dev/kvm`, from the previous boot or opened; kept for the next.
fn open_kvm() -> Result<Kvm> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let carried = crate::carry::take_fd("kvm").filter(|fd| {
        // SAFETY: stat is plain data; fstat only writes it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above, on a descriptor we own.
        let ok = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0;
        ok && st.st_mode & libc::S_IFMT == libc::S_IFCHR
    });
    let kvm = match carried {
        // SAFETY: a character device the previous boot kept open as
        // `kvm`; `check_kvm` then asks it for KVM's API version, which
        // no other device answers.
        Some(fd) => unsafe { Kvm::from_raw_fd(fd.into_raw_fd()) },
        None => Kvm::new().map_err(Error::KvmOpen)?,
    };
    // SAFETY: dup of a descriptor `kvm` owns; the copy is ours.
    let copy = unsafe { libc::fcntl(kvm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(Error::io("keep /dev/kvm open across a reboot")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `copy` is a new descriptor nothing else owns.
    crate::carry::keep("kvm", unsafe { std::os::fd::OwnedFd::from_raw_fd(copy) });
    Ok(kvm)
}

/// The kernel or initrd at `path`, from the previous boot or opened
/// (regular files only, never blocking); kept for the next.
fn boot_file(name: &str, path: &std::path::Path) -> Result<std::fs::File> {
    crate::carry::take_or_open(name, path, || loader::open_regular(path))
        .map_err(Error::io(format!("open the {name} {}", path.display())))
}

impl Vm {
    /// Builds the machine described by `config` on `host` from `files`.
    pub fn new(config: &VmConfig, host: Host, files: HostFiles) -> Result<Self> {
        let HostFiles {
            kvm,
            disks,
            nets,
            kernel,
            initrd,
        } = files;
        check_kvm(&kvm)?;
        let cpuid = supported_cpuid_meanwhile(&kvm);
        let max = kvm.get_max_vcpus();
        if usize::from(config.cpus) > max {
            return Err(Error::TooManyCpus {
                asked: config.cpus,
                max,
            });
        }

        let mem_bytes = config.mem_mb << 20;
        let layout = MemoryLayout::new(mem_bytes)?;
        let mem = GuestMemory::from_ranges(layout.ram_ranges()).map_err(|e| Error::Memory {
            mb: config.mem_mb,
            reason: e.to_string(),
        })?;

        let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("create a VM"))?);
        register_memory(&vm, &mem, config.mem_mb)?;
        for (start, len) in layout.ram_ranges() {
            log::debug!("guest RAM {:#x}..{:#x}", start.0, start.0 + *len as u64);
        }
        vm.set_tss_address(KVM_TSS_ADDR)
            .map_err(Error::kvm("place its TSS"))?;
        vm.create_irq_chip()
            .map_err(Error::kvm("create the interrupt controllers"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(Error::kvm("create the PIT"))?;

        let vcpu_fds = (0..config.cpus)
            .map(|id| {
                vm.create_vcpu(id.into())
                    .map_err(Error::kvm("create a vCPU"))
            })
            .collect::<Result<Vec<_>>>()?;
        let tsc_khz = vcpu_fds.first().and_then(|fd| fd.get_tsc_khz().ok());
        let cmdline = host.kernel_cmdline(
            &config.cmdline,
            config.cpus,
            tsc_khz,
            config.initrd.is_some(),
        );
        log::debug!("kernel command line: {cmdline}");
        let spec = loader::BootSpec {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &cmdline,
            cpus: config.cpus,
            kernel_file: kernel.as_ref(),
            initrd_file: initrd.as_ref(),
            // Mapped just above, anonymous: all zero.
            memory_is_zero: true,
        };
        let boot = loader::load(&mem, &layout, &spec)?;
        log::debug!(
            "loaded {:?} kernel, entry {:#x}, zero page {:#x}, initrd {:x?}",
            boot.kind,
            boot.entry.0,
            boot.zero_page.0,
            boot.initrd
        );

        let (control, requests) =
            VmControl::new().map_err(Error::io("create the request channel's eventfd"))?;
        let pio = Arc::new(Bus::new());
        let irq = |gsi: u32| -> Result<EventFd> {
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("create an eventfd"))?;
            vm.register_irqfd(&fd, gsi)
                .map_err(Error::kvm("wire an interrupt (irqfd)"))?;
            Ok(fd)
        };
        let output = devices::output::Output::stdout()
            .map_err(Error::io("start the console output thread"))?;
        crate::lifecycle::drain_on_exit(output.clone());
        let serial_room =
            EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("create an eventfd"))?;
        let serial = Arc::new(Mutex::new(SerialPort::new(
            irq(ports::COM1_IRQ)?,
            serial_room
                .try_clone()
                .map_err(Error::io("clone an eventfd"))?,
            Box::new(output.serial_sink()),
        )));
        pio.insert(serial.clone(), ports::COM1, ports::COM1_LEN)?;
        let i8042 = I8042::new(Some(irq(1)?), control.clone());
        pio.insert(Arc::new(Mutex::new(i8042)), ports::I8042, ports::I8042_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(Cmos::new())),
            ports::CMOS,
            ports::CMOS_LEN,
        )?;
        let hooks = Arc::new(KvmHooks::new(
            vm.clone(),
            mem.clone(),
            control.clone(),
            config.lenient,
            config.warnings_as_errors,
        ));
        hooks
            .install_routes()
            .map_err(Error::io("set up interrupt routing"))?;
        let console_input = InputQueue::new().map_err(Error::io("create an eventfd"))?;
        let mmio = Arc::new(Bus::new());
        let bridge = if config.vmd {
            HostBridge::with_identity(vmd_identity_bridge())
        } else {
            HostBridge::new()
        };
        let tss = (KVM_TSS_ADDR as u64, 0x3000);
        let spaces = crate::pci::address_spaces(&mmio, &pio, &layout, tss);
        let mut pci = PciBuilder::new(bridge, control.clone(), hooks.clone(), spaces);
        let transport = |ty: u16| match (config.vmd, config.legacy) {
            (true, _) => {
                Transport::Legacy(Some((legacy::vmd_identity(ty), legacy::DEFAULT_BAR_SIZE)))
            }
            (false, true) => Transport::Legacy(None),
            (false, false) => Transport::Modern,
        };
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        // vmd has no virtio console (its guests use the 8250) and puts the
        // rng first; we otherwise follow lguest: console first, always.
        if !config.vmd {
            devices.push(Box::new(Console::new(
                console_input.clone(),
                output.clone(),
            )));
        }
        if config.vmd && config.rng {
            devices.push(Box::new(Rng));
        }
        for disk in disks {
            devices.push(Box::new(disk));
        }
        for net in nets {
            devices.push(Box::new(net));
        }
        if config.rng && !config.vmd {
            devices.push(Box::new(Rng));
        }
        for device in devices {
            let t = transport(device.device_type());
            pci.add(device, t)?;
        }
        let vmmci = if config.vmmci {
            let events = control.clone();
            let (device, handle) = Vmmci::new(Box::new(move |ev| {
                events.request(match ev {
                    VmmciEvent::ShutdownNow => VmRequest::Poweroff,
                    VmmciEvent::RebootNow => VmRequest::Reboot {
                        reason: "vmmci".into(),
                    },
                })
            }))
            .map_err(Error::io("create vmmci's timer"))?;
            // vmmci is always last, as in vmd.
            let t = Transport::Legacy(Some((vmmci::IDENTITY, vmmci::BAR_SIZE)));
            pci.add(Box::new(device), t)?;
            Some(handle)
        } else {
            None
        };
        let (pci, intx) = pci.finish();
        loader::mptable::setup_mptable_with_pci(&mem, config.cpus, &intx)?;
        let rsdp = loader::acpi::setup_acpi(&mem, config.cpus, &intx)?;
        log::debug!("ACPI tables: RSDP at {:#x}", rsdp.0);
        loader::bootparams::set_acpi_rsdp(&mem, rsdp)?;
        pio.insert(
            Arc::new(Mutex::new(pci)),
            pci::root::CONFIG_PORT,
            pci::root::CONFIG_PORT_LEN,
        )?;
        let pm = PowerManagement::new(control.clone());
        pio.insert(Arc::new(Mutex::new(pm)), ports::PM, ports::PM_LEN)?;

        let base_cpuid = match cpuid.map(|t| t.join()) {
            Some(Ok(asked)) => asked,
            // No thread, or it died: ask here.
            _ => supported_cpuid(&kvm),
        }
        .map_err(Error::kvm("report its CPUID"))?;
        let mut vcpus = Vec::with_capacity(config.cpus.into());
        for (id, fd) in (0..config.cpus).zip(vcpu_fds) {
            vcpu::configure(&fd, id, config.cpus, &base_cpuid, &mem, &boot)?;
            vcpus.push(Vcpu {
                fd,
                id,
                pio: pio.clone(),
                mmio: mmio.clone(),
                control: control.clone(),
                host,
                mem: mem.clone(),
            });
        }
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            vcpus,
            control,
            requests,
            serial,
            serial_room,
            console_input,
            vmmci,
        })
    }

    /// Starts the vCPU threads, adds the VM's own subscribers (stdin,
    /// vmmci, requests) to `events` and runs the loop on this thread until
    /// a request ends the run; returns that request.
    pub fn run(self, mut events: EventLoop) -> VmRequest {
        for vcpu in self.vcpus {
            let name = format!("vcpu{}", vcpu.id);
            if let Err(e) = std::thread::Builder::new()
                .name(name)
                .spawn(move || vcpu.run())
            {
                return VmRequest::HostError {
                    message: format!("cannot start a vCPU thread: {e}"),
                };
            }
        }
        let serial = SerialInput {
            sink: InputSink::new(self.serial),
            room: self.serial_room,
        };
        let route = StdinRoute {
            serial,
            virtio: self.console_input,
        };
        events.add_subscriber(Arc::new(Mutex::new(terminal::StdinInput::new(
            route,
            self.control.clone(),
        ))));
        if let Some(v) = &self.vmmci {
            events.add_subscriber(Arc::new(Mutex::new(v.timer())));
            match ClockWatcher::new(v.clone()) {
                Ok(w) => {
                    events.add_subscriber(Arc::new(Mutex::new(w)));
                }
                Err(e) => log::warn!("no clock watch (host suspends go unnoticed): {e}"),
            }
        }
        let first = Arc::new(Mutex::new(FirstRequest {
            requests: self.requests,
            first: None,
        }));
        events.add_subscriber(first.clone());
        loop {
            let taken = first.lock().unwrap_or_else(|e| e.into_inner()).first.take();
            if let Some(req) = taken {
                return req;
            }
            if let Err(e) = events.run() {
                return VmRequest::HostError {
                    message: format!("the event loop failed: {e}"),
                };
            }
        }
    }

    /// The handle host events (signals, the control socket) send through.
    pub fn control(&self) -> VmControl {
        self.control.clone()
    }

    /// The vmmci device's host side, when the guest has one.
    pub fn vmmci(&self) -> Option<VmmciControl> {
        self.vmmci.clone()
    }
}

/// The event loop's subscriber for [`VmControl::request`]: keeps the first
/// request, which ends [`Vm::run`]; later ones (the run is ending) are
/// logged and dropped.
struct FirstRequest {
    requests: Requests,
    first: Option<VmRequest>,
}

impl MutEventSubscriber for FirstRequest {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.requests.clear();
        while let Ok(req) = self.requests.try_recv() {
            if self.first.is_none() {
                self.first = Some(req);
            } else {
                log::debug!("ignored, the run is ending: {req:?}");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.requests, EventSet::IN)) {
            // Nothing could end the run: fail it instead.
            self.first = Some(VmRequest::HostError {
                message: format!("cannot watch for requests: {e}"),
            });
        }
    }
}

/// Console input for the 8250: its FIFO, and the eventfd the UART signals
/// when the guest drained it.
struct SerialInput {
    sink: InputSink,
    room: EventFd,
}

/// vmd's host bridge (see docs/vmmci.md).
fn vmd_identity_bridge() -> Identity {
    Identity {
        vendor: 0x0b5d,
        device: 0x0666,
        class: 0x06,
        ..Default::default()
    }
}

/// Opens or creates the tap a `--tunnet` argument names and puts a
/// virtio-net device on it.
fn open_net(arg: &NetArg, index: usize) -> Result<Net> {
    let what = |w: &str| Error::io(format!("{w} for --tunnet {:?}", arg.source));
    let name = format!("tap{index}");
    let carried = crate::carry::take_fd(&name).and_then(|fd| Tap::from_fd(fd).ok());
    let tap = match (carried, &arg.source) {
        // The previous boot's tap, configured then (a reboot's re-exec).
        (Some(tap), _) => tap,
        (None, source) => open_tap(source).map_err(what("open"))?,
    };
    crate::carry::keep(&name, tap.try_clone_fd().map_err(what("keep the tap"))?);
    let tap_name = tap.name().to_string();
    let net = Net::new(Box::new(tap), arg.mac).map_err(what("set up virtio-net"))?;
    log::debug!("net: tap {tap_name}, guest MAC {}", format_mac(&net.mac()));
    Ok(net)
}

/// Creates, configures or opens the tap `source` names.
fn open_tap(source: &TapSource) -> std::io::Result<Tap> {
    Ok(match source {
        TapSource::Address(ip) => {
            let tap = Tap::create(None)?;
            tap.set_ipv4(*ip, 24)?;
            tap.set_up()?;
            tap
        }
        TapSource::Bridge(bridge) => {
            let tap = Tap::create(None)?;
            tap.add_to_bridge(bridge)?;
            tap.set_up()?;
            tap
        }
        TapSource::Existing(name) => Tap::open_existing(name)?,
    })
}

/// Terminal input goes to the console the guest uses: the virtio console
/// once its driver has written to it (`console=hvc0`), else the 8250.
struct StdinRoute {
    serial: SerialInput,
    virtio: Arc<InputQueue>,
}

impl ConsoleInput for StdinRoute {
    fn push(&self, bytes: &[u8]) -> usize {
        if self.virtio.in_use() {
            self.virtio.push(bytes)
        } else {
            self.serial.sink.push(bytes)
        }
    }
    fn room_fds(&self) -> Vec<RawFd> {
        vec![self.serial.room.as_raw_fd(), self.virtio.room().as_raw_fd()]
    }
    fn clear_room(&self) {
        // Non-blocking eventfds: reading one that is clear just fails.
        let _ = self.serial.room.read();
        let _ = self.virtio.room().read();
    }
}

fn supported_cpuid(kvm: &Kvm) -> std::result::Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
}

/// `KVM_GET_SUPPORTED_CPUID` on a thread of its own (`cpuid`), while this
/// one builds the machine: KVM runs CPUID for every leaf, which on a
/// nested host traps each time (about a millisecond in all, a quarter of
/// the launcher's start-up there). `None` if the thread cannot start;
/// the caller then asks itself. The thread runs under the main thread's
/// seccomp filter and is joined before any vCPU starts.
fn supported_cpuid_meanwhile(
    kvm: &Kvm,
) -> Option<std::thread::JoinHandle<std::result::Result<CpuId, kvm_ioctls::Error>>> {
    // SAFETY: dup of the open /dev/kvm descriptor; a negative result is
    // checked before the new Kvm takes ownership of it.
    let fd = unsafe { libc::dup(kvm.as_raw_fd()) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor of /dev/kvm that nothing else owns.
    let own = unsafe { Kvm::from_raw_fd(fd) };
    std::thread::Builder::new()
        .name("cpuid".into())
        .spawn(move || supported_cpuid(&own))
        .ok()
}

/// Checks the KVM API version and the capabilities the launcher relies on.
fn check_kvm(kvm: &Kvm) -> Result<()> {
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(Error::KvmApi(api));
    }
    for (cap, name) in [
        (
            Cap::Irqchip,
            "an in-kernel interrupt controller (KVM_CAP_IRQCHIP)",
        ),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCap(name));
        }
    }
    Ok(())
}

/// Tells KVM where each RAM region lives in our address space.
fn register_memory(vm: &VmFd, mem: &GuestMemory, mb: u64) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VM
        // keeps (through the vCPUs' clones) for as long as the guest runs.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| Error::MemoryMap { mb, source })?;
    }
    Ok(())
}
