//! How a run ends: exit codes, signals, and reboot by re-exec.
//!
//! The main thread's event loop (`vm::Vm::run`) waits for the first
//! [`VmRequest`] that ends the run (from a device, a vCPU, the terminal, the
//! control socket or a signal) and hands it to [`finish`]. Signals arrive on
//! that loop through a signalfd ([`Signals`]) and become requests through
//! [`ask_guest`]. A reboot is lguest's trick: rather than reset every
//! device, the launcher executes itself again with its original arguments,
//! so the second boot starts from exactly the state the first one did.
//! Every descriptor above stderr is marked close-on-exec first and `execve`
//! ends every other thread, so nothing leaks from one boot to the next.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use devices::virtio::vmmci::{Outcome, Request, VmmciControl};
use devices::VmRequest;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::{carry, terminal};

/// Exit codes, as documented in README.md and `launcher --help`.
pub mod code {
    /// The guest powered itself off.
    pub const POWEROFF: i32 = 0;
    /// Bad input (arguments, files) or a host-side failure (KVM, memory).
    pub const LAUNCHER_ERROR: i32 = 1;
    /// The command line could not be parsed (clap's own code).
    pub const USAGE: i32 = 2;
    /// A guest driver broke the virtio specification (strict checking).
    pub const BAD_DRIVER: i32 = 3;
    /// The guest did something the launcher cannot continue from.
    pub const GUEST_CRASH: i32 = 4;
    /// A launcher thread made a system call its seccomp filter forbids
    /// (`src/seccomp.rs`): a launcher bug, or a host library doing what
    /// the filters did not foresee.
    pub const SECCOMP: i32 = 5;
    /// Stopped by signal N: 128 + N (the console escape counts as SIGINT).
    pub const SIGNAL_BASE: i32 = 128;
}

/// Environment variable counting boots across re-execs, so the second boot
/// can say which it is and tests can tell boots apart.
pub const BOOT_COUNT_VAR: &str = "LAUNCHER_BOOT_COUNT";

/// The boot number of this process (1 for the first; a value that is not
/// a number from 1 up counts as the first).
pub fn boot_number() -> u32 {
    parse_boot_number(std::env::var(BOOT_COUNT_VAR).ok().as_deref())
}

fn parse_boot_number(v: Option<&str>) -> u32 {
    v.and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// The signals the launcher handles itself.
const HANDLED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Blocks the signals the launcher handles itself, in this thread and every
/// thread spawned after it, and opens the signalfd that [`Signals`] reads
/// them from. Must run before any other thread exists. If no signalfd can
/// be made the signals are unblocked again: they then kill the launcher
/// (the terminal stays raw), which beats ignoring them.
pub fn block_signals() -> Option<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it,
    // pthread_sigmask only changes this thread's mask and signalfd returns
    // a new descriptor (or -1) that we take ownership of at once.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd >= 0 {
            return Some(OwnedFd::from_raw_fd(fd));
        }
        log::warn!(
            "no signalfd ({}); signals will kill the launcher",
            std::io::Error::last_os_error()
        );
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        None
    }
}

/// What the host (a signal, the control socket) asks of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAsk {
    /// Shut down; `signal` is the exit status to use when it has to be
    /// done at once (128 + signal).
    Shutdown {
        signal: libc::c_int,
    },
    Reboot,
}

/// Carries out a host request: with a vmmci driver up in the guest it is
/// asked to shut down or reboot cleanly, with vmd's timeouts; otherwise
/// (or when the same request is already pending, i.e. asked twice) the
/// launcher stops or reboots at once. Returns what was done, for replies.
pub fn ask_guest(
    ask: HostAsk,
    why: &str,
    control: &devices::VmControl,
    vmmci: Option<&VmmciControl>,
) -> &'static str {
    let req = match ask {
        HostAsk::Shutdown { .. } => Request::Shutdown,
        HostAsk::Reboot => Request::Reboot,
    };
    if let Some(Outcome::Sent) = vmmci.map(|v| v.request(req)) {
        let what = if let HostAsk::Shutdown { signal } = ask {
            // A guest that reboots instead of shutting down must not
            // dodge the request: `finish` turns that reboot into a stop.
            PENDING_SHUTDOWN.store(signal, std::sync::atomic::Ordering::SeqCst);
            "shut down"
        } else {
            PENDING_SHUTDOWN.store(0, std::sync::atomic::Ordering::SeqCst);
            "reboot"
        };
        eprintln!("launcher: {why}: asked the guest to {what} through vmmci");
        return "asked the guest through vmmci";
    }
    match ask {
        HostAsk::Reboot => control.request(VmRequest::Reboot { reason: why.into() }),
        HostAsk::Shutdown { signal } => control.request(VmRequest::Signal(signal)),
    }
    "done at once"
}

/// The signal whose shutdown the guest was asked for through vmmci (0:
/// none): the exit status a reboot of the guest turns into.
static PENDING_SHUTDOWN: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The event loop's signal subscriber: turns handled signals into
/// requests through [`ask_guest`]; SIGHUP reboots, the others shut down.
pub struct Signals {
    fd: OwnedFd,
    control: devices::VmControl,
    vmmci: Option<VmmciControl>,
}

impl Signals {
    /// `fd` is the signalfd from [`block_signals`].
    pub fn new(fd: OwnedFd, control: devices::VmControl, vmmci: Option<VmmciControl>) -> Self {
        Self { fd, control, vmmci }
    }

    /// The next pending signal, if any (the signalfd is non-blocking).
    fn next(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is `size`
        // bytes long.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as libc::c_int)
    }

    fn handle(&self, sig: libc::c_int) {
        let (ask, why) = if sig == libc::SIGHUP {
            (HostAsk::Reboot, "SIGHUP".to_string())
        } else {
            (HostAsk::Shutdown { signal: sig }, format!("signal {sig}"))
        };
        ask_guest(ask, &why, &self.control, self.vmmci.as_ref());
    }
}

impl MutEventSubscriber for Signals {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Some(sig) = self.next() {
            self.handle(sig);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch for signals ({e}); they stay blocked until the run ends");
        }
    }
}

static REMOVE_ON_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Has `path` removed on every way out of the launcher (the control socket).
pub fn remove_on_exit(path: PathBuf) {
    REMOVE_ON_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path);
}

/// Writable disk images, flushed on every way out ([`sync_disks`]).
static SYNC_ON_EXIT: Mutex<Vec<(PathBuf, std::fs::File)>> = Mutex::new(Vec::new());

/// Has the disk image open as `file` (a descriptor of its own) flushed
/// with `fdatasync` on every way out of the launcher.
pub fn sync_on_exit(path: PathBuf, file: std::fs::File) {
    SYNC_ON_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path, file));
}

/// How long the way out waits for the disks' `fdatasync`. A flush that
/// takes longer is on storage that hangs (a network file system whose
/// server is gone): waiting on would keep the launcher, and whoever waits
/// for it, stuck without making the data any safer, since the dirty pages
/// stay in the host's page cache and are written back when the storage
/// returns whether or not this process still exists. What is lost by not
/// waiting is only the guarantee that they are on the storage when the
/// launcher exits, and the launcher says so.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// `fdatasync` on every writable disk: whatever the guest wrote and was
/// told is done reaches the image before the process exits or re-execs,
/// whatever ends the run (power-off, signal, reboot, bad driver, crash),
/// unless the storage hangs ([`FLUSH_WAIT`]).
fn sync_disks() {
    // try_lock: the panic hook may run while this thread holds the lock.
    let disks = match SYNC_ON_EXIT.try_lock() {
        Ok(d) => d,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    let files = disks
        .iter()
        .filter_map(|(path, file)| match file.try_clone() {
            Ok(f) => Some((path.clone(), f)),
            Err(e) => {
                eprintln!("launcher: cannot flush disk {}: {e}", path.display());
                None
            }
        })
        .collect();
    for (path, result) in flush_within(files, FLUSH_WAIT, |f| f.sync_data()) {
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => eprintln!("launcher: cannot flush disk {}: {e}", path.display()),
            None => eprintln!(
                "launcher: disk {}: its flush has not finished after {} s (is its storage hung?); exiting without it, so what the guest wrote may reach the image only later",
                path.display(),
                FLUSH_WAIT.as_secs()
            ),
        }
    }
}

/// The consoles' output, drained on the way out ([`drain_console`]).
static OUTPUT: Mutex<Option<devices::output::Output>> = Mutex::new(None);

/// Has the console output drained before the launcher exits or re-execs.
pub fn drain_on_exit(output: devices::output::Output) {
    *OUTPUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(output);
}

/// Lets the console writer finish what the guest printed, as long as the
/// reader keeps taking it: a guest's last lines before a power-off must
/// reach a pipe, but a stdout nobody reads must not keep the launcher
/// alive (it gives up after `stall` without progress), and says what was
/// lost.
fn drain_console(stall: std::time::Duration) {
    let output = OUTPUT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(output) = output else { return };
    let d = output.drain(stall);
    if d.dropped > 0 {
        eprintln!(
            "launcher: 8250 console: {} bytes of guest output dropped (stdout was not read fast enough)",
            d.dropped
        );
    }
    if d.unwritten > 0 {
        eprintln!(
            "launcher: {} bytes of guest console output not written (stdout is not being read)",
            d.unwritten
        );
    }
}

/// Runs `flush` on each disk, each on a thread of its own so that one hung
/// disk holds up no other, and waits for them until `wait` has passed.
/// Each disk's result, `None` for those still flushing then (their
/// threads are left to themselves; exit or `execve` ends them).
fn flush_within<F: Send + Sync + 'static>(
    disks: Vec<(PathBuf, F)>,
    wait: Duration,
    flush: fn(&F) -> std::io::Result<()>,
) -> Vec<(PathBuf, Option<std::io::Result<()>>)> {
    let deadline = Instant::now() + wait;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut results = Vec::new();
    let mut pending = 0;
    for (i, (path, disk)) in disks.into_iter().enumerate() {
        let (tx, disk) = (tx.clone(), std::sync::Arc::new(disk));
        let mine = disk.clone();
        let spawned = std::thread::Builder::new()
            .name("disk-flush".into())
            .spawn(move || {
                let _ = tx.send((i, flush(&mine)));
            });
        let result = match spawned {
            Ok(_) => {
                pending += 1;
                None
            }
            // No thread to spare: flush here, unbounded, rather than not at all.
            Err(_) => Some(flush(&disk)),
        };
        results.push((path, result));
    }
    drop(tx);
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((i, result)) = rx.recv_timeout(left) else {
            break;
        };
        results[i].1 = Some(result);
        pending -= 1;
    }
    results
}

/// Flushes the disks and removes what [`remove_on_exit`] named; called on
/// every way out but a reboot (whose next boot keeps using them), the
/// panic hook included.
pub fn cleanup() {
    sync_disks();
    // try_lock: the panic hook may run while this thread holds the lock.
    let paths = match REMOVE_ON_EXIT.try_lock() {
        Ok(p) => p,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for p in paths.iter() {
        let _ = std::fs::remove_file(p);
    }
}

/// The exit code for a request that ends the run, or `None` for a reboot.
pub fn exit_code(req: &VmRequest) -> Option<i32> {
    match req {
        VmRequest::Poweroff => Some(code::POWEROFF),
        VmRequest::Reboot { .. } => None,
        VmRequest::Signal(sig) => Some(code::SIGNAL_BASE + sig),
        VmRequest::Escape => Some(code::SIGNAL_BASE + libc::SIGINT),
        VmRequest::BadDriver { .. } => Some(code::BAD_DRIVER),
        VmRequest::GuestCrash { .. } => Some(code::GUEST_CRASH),
        VmRequest::HostError { .. } => Some(code::LAUNCHER_ERROR),
    }
}

/// Ends the process as `req` says: exit with its code, or re-exec.
pub fn finish(req: VmRequest, argv: &[OsString]) -> ! {
    terminal::restore();
    if let Some(lost) = devices::trace::finish() {
        eprintln!("launcher: trace: {lost}");
    }
    // The user asked to stop: no more than a moment for the console.
    drain_console(match req {
        VmRequest::Signal(_) | VmRequest::Escape => std::time::Duration::from_millis(100),
        _ => std::time::Duration::from_secs(1),
    });
    let pending = PENDING_SHUTDOWN.load(std::sync::atomic::Ordering::SeqCst);
    let req = match req {
        VmRequest::Reboot { reason } if pending != 0 => {
            eprintln!(
                "launcher: the guest rebooted ({reason}) while asked to shut down; not starting it again"
            );
            VmRequest::Signal(pending)
        }
        req => req,
    };
    // A reboot's next boot keeps using what `cleanup` would remove.
    if matches!(req, VmRequest::Reboot { .. }) {
        sync_disks();
    } else {
        cleanup();
    }
    match &req {
        VmRequest::Poweroff => log::info!("guest powered off"),
        VmRequest::Reboot { reason } => {
            // Saturates: four billion reboots later the number stops growing.
            let next = boot_number().saturating_add(1);
            eprintln!("launcher: guest reboot ({reason}); starting boot #{next}");
            let err = reexec(argv, next);
            eprintln!("launcher: cannot re-execute myself to reboot: {err}");
            std::process::exit(code::LAUNCHER_ERROR);
        }
        VmRequest::Signal(sig) => eprintln!("launcher: stopped by signal {sig}"),
        VmRequest::Escape => eprintln!("launcher: stopped from the console (Ctrl-C x3)"),
        VmRequest::BadDriver { report } => eprintln!("launcher: {report}"),
        VmRequest::GuestCrash { message } => eprintln!("launcher: guest crashed: {message}"),
        VmRequest::HostError { message } => eprintln!("launcher: {message}"),
    }
    std::process::exit(exit_code(&req).unwrap_or(code::LAUNCHER_ERROR))
}

/// For kernels without close_range(2) (before 5.11) or where seccomp
/// refuses it: flag every open descriptor above stderr close-on-exec.
fn mark_cloexec_one_by_one() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD only changes a flag of a descriptor number; a
        // number that closed meanwhile just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// `KEY=value` strings for the next boot: this process's environment with
/// [`BOOT_COUNT_VAR`] set to `boot`. Built here rather than with
/// `std::env::set_var`, which is unsound while other threads (vCPUs) run.
fn next_environment(boot: u32, carried: &str, state: &str) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.as_bytes();
            k != BOOT_COUNT_VAR.as_bytes()
                && k != carry::VAR.as_bytes()
                && k != carry::STATE_VAR.as_bytes()
        })
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    if let Ok(var) = CString::new(format!("{BOOT_COUNT_VAR}={boot}")) {
        env.push(var);
    }
    for (var, value) in [(carry::VAR, carried), (carry::STATE_VAR, state)] {
        if !value.is_empty() {
            if let Ok(kv) = CString::new(format!("{var}={value}")) {
                env.push(kv);
            }
        }
    }
    env
}

/// Opens the launcher's own binary (or takes the previous boot's
/// descriptor on it) and keeps it for the reboot's re-exec: after
/// `--chroot` no path leads back to it.
pub fn keep_own_binary() {
    let fd = carry::take_fd("exe").or_else(|| {
        // SAFETY: open with a static NUL-terminated path; a descriptor
        // returned is new and ours.
        let fd = unsafe { libc::open(c"/proc/self/exe".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        // SAFETY: as above.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    });
    match fd {
        Some(fd) => carry::keep("exe", fd),
        None => log::debug!("no descriptor on the launcher's binary; a reboot runs /proc/self/exe"),
    }
}

/// Executes the launcher again with `argv`; returns only on failure.
fn reexec(argv: &[OsString], boot: u32) -> std::io::Error {
    let args: Vec<CString> = match argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(e) => return std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    };
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let (kept, carried, state) = carry::for_exec();
    let exe = carry::fd_of("exe");
    let env = next_environment(boot, &carried, &state);
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: close_range only flags descriptors; sigprocmask restores the
    // mask we changed; execve/execvpe get NULL-terminated arrays of
    // NUL-terminated strings that outlive the calls.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            mark_cloexec_one_by_one();
        }
        // What `carry` keeps stays open (disk locks, the trace file).
        for &fd in &kept {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if let Some(fd) = exe {
            // The binary this run started from, wherever we are now.
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                ptrs.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        libc::execve(c"/proc/self/exe".as_ptr(), ptrs.as_ptr(), envp.as_ptr());
        // /proc may be missing (chroot): fall back to the name we were run as.
        libc::execvpe(ptrs[0], ptrs.as_ptr(), envp.as_ptr());
    }
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk whose flush hangs holds up neither the way out (beyond the
    /// wait) nor the other disks' flushes.
    #[test]
    fn a_hung_flush_is_waited_for_only_so_long() {
        /// A disk: `Some` hangs until its sender is dropped, `None` flushes
        /// at once.
        struct Disk(Option<Mutex<std::sync::mpsc::Receiver<()>>>);
        fn flush(d: &Disk) -> std::io::Result<()> {
            if let Some(hang) = &d.0 {
                let _ = hang.lock().unwrap().recv();
                return Err(std::io::Error::other("released"));
            }
            Ok(())
        }
        let (release, hang) = std::sync::mpsc::channel();
        let disks = vec![
            (PathBuf::from("a"), Disk(None)),
            (PathBuf::from("hung"), Disk(Some(Mutex::new(hang)))),
            (PathBuf::from("b"), Disk(None)),
        ];
        let t = Instant::now();
        let results = flush_within(disks, Duration::from_millis(200), flush);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let got: Vec<_> = results
            .iter()
            .map(|(p, r)| (p.to_str().unwrap(), r.as_ref().map(|r| r.is_ok())))
            .collect();
        assert_eq!(got, [("a", Some(true)), ("hung", None), ("b", Some(true))]);
        drop(release);
    }

    #[test]
    fn boot_numbers_parse_and_cannot_overflow() {
        assert_eq!(parse_boot_number(None), 1);
        assert_eq!(parse_boot_number(Some("7")), 7);
        for bad in ["", "0", "-3", "x", "99999999999999999999"] {
            assert_eq!(parse_boot_number(Some(bad)), 1, "{bad:?}");
        }
        assert_eq!(
            parse_boot_number(Some("4294967295")).saturating_add(1),
            u32::MAX
        );
    }

    #[test]
    fn exit_codes_are_distinct() {
        let reqs = [
            VmRequest::Poweroff,
            VmRequest::Signal(libc::SIGTERM),
            VmRequest::GuestCrash {
                message: String::new(),
            },
            VmRequest::HostError {
                message: String::new(),
            },
        ];
        let codes: Vec<_> = reqs.iter().map(|r| exit_code(r).unwrap()).collect();
        assert_eq!(codes, vec![0, 143, 4, 1]);
        assert_eq!(exit_code(&VmRequest::Escape), Some(130));
        assert_eq!(
            exit_code(&VmRequest::BadDriver {
                report: String::new()
            }),
            Some(3)
        );
        assert_eq!(
            exit_code(&VmRequest::Reboot {
                reason: String::new()
            }),
            None
        );
    }

    #[test]
    fn the_next_boot_gets_its_number_once() {
        let env = next_environment(7, "trace=9", "seccomp");
        let kept: Vec<_> = env
            .iter()
            .filter(|kv| kv.as_bytes().starts_with(carry::VAR.as_bytes()))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0].as_bytes(),
            format!("{}=trace=9", carry::VAR).as_bytes()
        );
        let counts: Vec<_> = env
            .iter()
            .filter(|kv| {
                kv.as_bytes()
                    .starts_with(format!("{BOOT_COUNT_VAR}=").as_bytes())
            })
            .collect();
        assert_eq!(counts.len(), 1);
        assert_eq!(
            counts[0].as_bytes(),
            format!("{BOOT_COUNT_VAR}=7").as_bytes()
        );
        assert!(env.len() > 1, "the rest of the environment is kept");
    }
}
