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
        lifecycle::cleanup();
        std::process::exit(lifecycle::code::LAUNCHER_ERROR);
    }));

    if let Err(e) = init_tracing(&cli) {
        eprintln!("launcher: {e}");
        std::process::exit(lifecycle::code::LAUNCHER_ERROR);
    }
    let config = cli::VmConfig::from(cli);
    let host = host::Host::detect();
    host.describe();
    let boot = lifecycle::boot_number();
    if boot > 1 {
        log::info!("boot #{boot}");
    }
    let vm = match vm::Vm::new(&config, host) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("launcher: {e}");
            std::process::exit(lifecycle::code::LAUNCHER_ERROR);
        }
    };
    let mut events = match vm::EventLoop::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("launcher: cannot create the event loop: {e}");
            std::process::exit(lifecycle::code::LAUNCHER_ERROR);
        }
    };
    if let Some(fd) = signals {
        let s = lifecycle::Signals::new(fd, vm.control(), vm.vmmci());
        events.add_subscriber(Arc::new(Mutex::new(s)));
    }
    if let Some(path) = &config.control {
        match control::bind(path) {
            Ok(listener) => {
                let server = control::ControlServer::new(listener, vm.control(), vm.vmmci());
                events.add_subscriber(Arc::new(Mutex::new(server)));
            }
            Err(e) => {
                eprintln!("launcher: {e}");
                std::process::exit(lifecycle::code::LAUNCHER_ERROR);
            }
        }
    }
    terminal::make_raw();
    let outcome = vm.run(events);
    lifecycle::finish(outcome, &argv)
}

/// Diagnostics go to stderr: `-v` and `-vv` what guest drivers, the
/// devices and the host workarounds do (the devices' detail is
/// `devices::trace`'s to decide), `-vvv` also every unclaimed I/O access.
/// RUST_LOG overrides.
/// Sets up `devices::trace` from `--trace`, `--trace-file` and `-v`. The
/// trace file is opened (and emptied) by the first boot only; a reboot's
/// re-exec carries it over (`carry`) and the next boot appends.
fn init_tracing(cli: &cli::Cli) -> Result<(), String> {
    let file = match &cli.trace_file {
        None => None,
        Some(path) => {
            let file = match carry::take("trace", path) {
                Some(f) => f,
                None => std::fs::File::create(path)
                    .map_err(|e| format!("cannot create the trace file {}: {e}", path.display()))?,
            };
            let copy = file
                .try_clone()
                .map_err(|e| format!("trace file {}: {e}", path.display()))?;
            carry::keep("trace", copy.into());
            Some(devices::trace::FileSettings {
                file,
                everything: cli.trace_everything,
                boot: lifecycle::boot_number(),
            })
        }
    };
    devices::trace::init(devices::trace::Settings {
        verbose: cli.verbose,
        only: cli.trace.clone(),
        file,
    })
    .map_err(|e| format!("cannot set up tracing: {e}"))
}

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
