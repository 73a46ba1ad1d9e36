//! `launcher`: run a Linux guest on KVM from one small, readable process.
//!
//! `main` parses the command line ([`cli`]), builds the machine ([`vm`]),
//! runs it with the host event loop on this thread (signals, the control
//! socket, stdin, timers), and ends the process as the guest's last
//! request says ([`lifecycle`]): exit with a documented code, or re-exec
//! to reboot.

mod carry;
mod cli;
mod control;
mod error;
mod host;
mod lifecycle;
mod pci;
mod privilege;
mod seccomp;
mod terminal;
mod vcpu;
mod virtio;
mod vm;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use clap::Parser;
use event_manager::SubscriberOps;

/// When `main` began: vCPU 0 logs its first `KVM_RUN` relative to it
/// (`-v`), the launcher's own start-up figure for bench/run.
pub static STARTED: OnceLock<Instant> = OnceLock::new();

fn main() {
    STARTED.get_or_init(Instant::now);
    limit_malloc_arenas();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                lifecycle::code::USAGE
            } else {
                0
            });
        }
    };
    init_logging(cli.verbose);
    // Before any thread exists, so that every thread inherits the mask.
    let signals = lifecycle::block_signals();
    std::panic::set_hook(Box::new(|info| {
        terminal::restore();
        eprintln!("launcher: internal error (a bug, please report it): {info}");
        // A thread that died would leave the guest half-run (a vCPU gone,
        // the main thread waiting for ever): end the whole run instead.
        // The disks' flush and the socket's removal need calls only the
        // main thread's filter allows; elsewhere the exit goes without
        // them (the dirty pages reach the image from the page cache).
        if seccomp::may_clean_up() {
            lifecycle::cleanup();
        }
        std::process::exit(lifecycle::code::LAUNCHER_ERROR);
    }));

    // What --username and --chroot ask for, checked before anything is done.
    let drop = privilege::PrivilegeDrop::plan(cli.username.as_deref(), cli.chroot.as_deref())
        .unwrap_or_else(|e| fail(e));
    // Everything that may need privileges (or a path outside the chroot)
    // is opened now, or taken from the previous boot (`carry`).
    let trace_file = open_trace_file(&cli).unwrap_or_else(|e| fail(e));
    let seccomp = !cli.no_seccomp;
    let verbose = cli.verbose;
    let (trace_only, trace_everything) = (cli.trace.clone(), cli.trace_everything);
    let owner = drop.user.as_ref().map(|u| (u.uid, u.gid));
    let config = cli::VmConfig::from(cli);
    let host = host::Host::detect();
    host.describe();
    let boot = lifecycle::boot_number();
    if boot > 1 {
        log::info!("boot #{boot}");
    }
    let files = vm::HostFiles::open(&config, drop.wanted()).unwrap_or_else(|e| fail(e));
    let listener = config
        .control
        .as_ref()
        .map(|path| control::bind_or_take(path, owner).unwrap_or_else(|e| fail(e)));
    lifecycle::keep_own_binary();
    drop.apply().unwrap_or_else(|e| fail(e));
    // From here on: no new privileges, no new files from outside, and
    // (unless --no-seccomp) each thread filtered before it starts work.
    if seccomp {
        seccomp::enable().unwrap_or_else(|e| {
            fail(format!(
                "{e} (--no-seccomp runs without system call filters)"
            ))
        });
    } else {
        log::debug!("seccomp: off (--no-seccomp)");
    }
    let trace = devices::trace::Settings {
        verbose,
        only: trace_only,
        file: trace_file.map(|file| devices::trace::FileSettings {
            file,
            everything: trace_everything,
            boot,
        }),
    };
    devices::trace::init(trace).unwrap_or_else(|e| fail(format!("cannot set up tracing: {e}")));
    log::debug!("carried into a reboot: {}", carry::names().join(", "));
    let vm = match vm::Vm::new(&config, host, files) {
        Ok(vm) => vm,
        Err(e) => fail(e),
    };
    let mut events = match vm::EventLoop::new() {
        Ok(e) => e,
        Err(e) => fail(format!("cannot create the event loop: {e}")),
    };
    if let Some(fd) = signals {
        let s = lifecycle::Signals::new(fd, vm.control(), vm.vmmci());
        events.add_subscriber(Arc::new(Mutex::new(s)));
    }
    if let Some(listener) = listener {
        let server = control::ControlServer::new(listener, vm.control(), vm.vmmci());
        events.add_subscriber(Arc::new(Mutex::new(server)));
    }
    terminal::make_raw();
    let outcome = vm.run(events);
    lifecycle::finish(outcome, &argv)
}

/// The `--trace-file`: opened (and emptied) by the first boot only; a
/// reboot's re-exec carries it over (`carry`) and the next boot appends.
fn open_trace_file(cli: &cli::Cli) -> Result<Option<std::fs::File>, String> {
    let Some(path) = &cli.trace_file else {
        return Ok(None);
    };
    carry::take_or_open("trace", path, || std::fs::File::create(path))
        .map(Some)
        .map_err(|e| format!("cannot create the trace file {}: {e}", path.display()))
}

/// Ends a run that could not start: one sentence, exit code 1.
fn fail(e: impl std::fmt::Display) -> ! {
    terminal::restore();
    eprintln!("launcher: {e}");
    std::process::exit(lifecycle::code::LAUNCHER_ERROR);
}

/// Caps glibc's malloc arenas at the CPUs this process may run on (at
/// most 8), before any thread exists. Otherwise the ninth thread to
/// allocate (a blk queue's I/O threads come in eights) makes glibc count
/// the CPUs by opening `/sys/devices/system/cpu/online`, a call its
/// seccomp filter rightly refuses; and every arena keeps free memory of
/// its own, which bench/run's "memory beyond guest RAM" counts.
fn limit_malloc_arenas() {
    // sched_getaffinity, not available_parallelism(), which also reads
    // cgroup files: this runs on every start.
    // SAFETY: a zeroed cpu_set_t is an empty set; the kernel fills it
    // within the size given. mallopt only sets an allocator parameter,
    // before any other thread exists; on failure (0) glibc keeps its
    // default.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) == 0 {
            libc::CPU_COUNT(&set).clamp(1, 8)
        } else {
            1
        };
        libc::mallopt(libc::M_ARENA_MAX, cpus);
    }
}

/// Diagnostics go to stderr: `-v` and `-vv` what guest drivers, the
/// devices and the host workarounds do (the devices' detail is
/// `devices::trace`'s to decide), `-vvv` also every unclaimed I/O access.
/// RUST_LOG overrides.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 | 2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(format!(
        "warn,launcher={level},devices={level},loader={level}"
    )))
    .format_timestamp(None)
    .init();
}
