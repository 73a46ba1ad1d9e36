//! seccomp: every thread may make only the system calls its kind needs.
//!
//! The guest reaches the launcher's code on the vCPU threads (port and
//! MMIO exits), the queue workers (virtqueues) and the writers (console
//! output). Each installs an allow-list for its kind ([`Kind`]) before it
//! looks at anything the guest controls; the main thread installs its own
//! once the machine's files are open and before any other thread exists,
//! so every thread is filtered (`Seccomp: 2` in `/proc/<pid>/task/*/status`)
//! before the guest runs its first instruction.
//!
//! Two facts of seccomp shape the lists:
//! - A filter applies to the threads its thread starts afterwards, and
//!   theirs only narrow it. The vCPU threads start the queue workers (at
//!   DRIVER_OK), so the vCPU list holds the workers' calls too, as a blk
//!   worker's holds its I/O threads' ([`Kind::starts`]); the main
//!   thread starts everything and its list is the widest (the set-up of a
//!   machine, the event loop, and the re-exec of a reboot).
//! - Filters survive `execve` and stack. A reboot re-executes the launcher
//!   from the main thread, whose filter the next boot's main thread so
//!   inherits and keeps: it installs none of its own (it knows from
//!   `LAUNCHER_STATE` and `PR_GET_SECCOMP`), and every boot's threads carry
//!   the same filters (two to four), however many reboots came before.
//!
//! A forbidden call is trapped (`SIGSYS`): the launcher names the thread
//! and the system call, restores the terminal and exits with code 5. The
//! disks are not flushed then (what the guest wrote is in the host's page
//! cache and reaches the image anyway). `--no-seccomp` installs nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::threads::ThreadKind;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::{carry, lifecycle, terminal};

/// The thread kinds, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Main,
    Vcpu,
    BlkWorker,
    /// A virtio-blk queue's I/O thread (started by its worker).
    BlkIo,
    NetWorker,
    ConsoleWorker,
    RngWorker,
    /// The queue worker of any other device (vmmci).
    OtherWorker,
    KickRelay,
    Writer,
}

impl Kind {
    #[cfg(test)]
    const ALL: [Kind; 10] = [
        Kind::Main,
        Kind::Vcpu,
        Kind::BlkWorker,
        Kind::BlkIo,
        Kind::NetWorker,
        Kind::ConsoleWorker,
        Kind::RngWorker,
        Kind::OtherWorker,
        Kind::KickRelay,
        Kind::Writer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Vcpu => "vcpu",
            Kind::BlkWorker => "blk-worker",
            Kind::BlkIo => "blk-io",
            Kind::NetWorker => "net-worker",
            Kind::ConsoleWorker => "console-worker",
            Kind::RngWorker => "rng-worker",
            Kind::OtherWorker => "worker",
            Kind::KickRelay => "kick-relay",
            Kind::Writer => "writer",
        }
    }

    fn of(thread: ThreadKind) -> Kind {
        match thread {
            ThreadKind::QueueWorker(1) => Kind::NetWorker,
            ThreadKind::QueueWorker(2) => Kind::BlkWorker,
            ThreadKind::QueueWorker(3) => Kind::ConsoleWorker,
            ThreadKind::QueueWorker(4) => Kind::RngWorker,
            ThreadKind::QueueWorker(_) => Kind::OtherWorker,
            ThreadKind::BlkIo => Kind::BlkIo,
            ThreadKind::KickRelay => Kind::KickRelay,
            ThreadKind::Writer => Kind::Writer,
        }
    }

    /// The system calls allowed to this kind, beyond [`EVERY_THREAD`].
    fn calls(self) -> &'static [i64] {
        match self {
            Kind::Main => MAIN,
            Kind::Vcpu => VCPU,
            Kind::BlkWorker | Kind::BlkIo => BLK,
            Kind::NetWorker => NET,
            Kind::ConsoleWorker | Kind::RngWorker | Kind::OtherWorker => &[],
            Kind::KickRelay | Kind::Writer => &[],
        }
    }

    /// The kinds of thread this kind starts. A filter only narrows the
    /// one its thread was started under, so this kind's list holds theirs
    /// too ([`allowed`]), besides the calls that start a thread.
    fn starts(self) -> &'static [Kind] {
        match self {
            Kind::Main => &[Kind::Vcpu, Kind::Writer],
            // Lazily, when a notification brings requests that may wait.
            Kind::BlkWorker => &[Kind::BlkIo],
            // At DRIVER_OK, from the status write.
            Kind::Vcpu => &[
                Kind::BlkWorker,
                Kind::NetWorker,
                Kind::ConsoleWorker,
                Kind::RngWorker,
                Kind::OtherWorker,
                Kind::KickRelay,
            ],
            _ => &[],
        }
    }
}

/// What every thread does: memory, locks, time, its own exit, the log
/// (stderr), eventfds and the epoll it waits in.
const EVERY_THREAD: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
    libc::SYS_sched_getaffinity,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_fcntl,
];

/// Starting a thread (std and glibc: its stack, guard page, signal stack,
/// name) and installing its filter.
const STARTING_THREADS: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_seccomp,
    libc::SYS_prctl,
];

/// The main thread: setting up a machine (this boot's, and the next
/// boot's after a re-exec, whose dynamic loader runs under this filter
/// too), the event loop (signals, stdin, the control socket, timers), the
/// disks' flush at exit and the re-exec itself.
const MAIN: &[i64] = &[
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_ioctl,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_close_range,
    libc::SYS_prlimit64,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_flock,
    libc::SYS_fallocate,
    libc::SYS_arch_prctl,
    libc::SYS_set_tid_address,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_rt_sigaction,
    libc::SYS_sysinfo,
    libc::SYS_capget,
];

/// A vCPU: `KVM_RUN` and what its port and MMIO exits do (devices'
/// registers, ioeventfd, irqfd and MSI routes at DRIVER_OK and on vector
/// changes, the tap's offloads); the workers' calls come with
/// [`Kind::starts`].
const VCPU: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_timerfd_settime,
];

/// A virtio-blk queue worker: positional I/O on the image, its flush,
/// discard and write-zeroes.
const BLK: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
];

/// A virtio-net queue worker: frames to and from the tap.
const NET: &[i64] = &[libc::SYS_readv, libc::SYS_writev];

/// `prctl` options a thread starting others needs: its children name
/// themselves, and seccompiler sets no_new_privs before each filter.
const PRCTL_OPTIONS: &[libc::c_int] = &[
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_GET_SECCOMP,
];

/// The compiled filter of each kind, made when its first thread starts
/// (most kinds start after the guest does: none of them delays the boot).
static PROGRAMS: Mutex<Vec<(Kind, Arc<BpfProgram>)>> = Mutex::new(Vec::new());
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Kinds already said at `-v`, so that each is said once per boot.
static SAID: Mutex<Vec<Kind>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's filter and name, for the SIGSYS report (which may
    /// make no call the filter might forbid, so it cannot ask the kernel).
    static THREAD_KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn remember(kind: Kind) {
    THREAD_KIND.with(|k| k.set(kind.name()));
    let mut name = [0u8; 16];
    let current = std::thread::current();
    let given = current.name().unwrap_or("launcher").as_bytes();
    let n = given.len().min(15);
    name[..n].copy_from_slice(&given[..n]);
    THREAD_NAME.with(|t| t.set(name));
}

/// Turns filtering on for this boot: makes forbidden calls reports
/// ([`on_sigsys`]), has the devices' threads
/// filter themselves, and filters the main thread, unless the previous
/// boot's main filter came with the re-exec. Call it on the main thread
/// with no other thread running.
pub fn enable() -> Result<(), String> {
    install_sigsys_handler()?;
    ENABLED.store(true, Ordering::SeqCst);
    devices::threads::set_start_hook(device_thread_started);
    // SAFETY: PR_GET_SECCOMP takes no pointers; it returns the mode.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP) };
    let inherited = carry::flag("seccomp") && mode == 2;
    carry::set_flag("seccomp");
    if inherited {
        remember(Kind::Main);
        log::debug!("seccomp: the main filter came with the reboot's re-exec (not stacked again)");
        return Ok(());
    }
    install(Kind::Main)
}

/// Installs `kind`'s filter on the calling thread, if filtering is on.
pub fn install(kind: Kind) -> Result<(), String> {
    if !ENABLED.load(Ordering::SeqCst) {
        return Ok(());
    }
    let program = program(kind)?;
    seccompiler::apply_filter(&program)
        .map_err(|e| format!("seccomp: cannot install the {} filter: {e}", kind.name()))?;
    remember(kind);
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&kind) {
        said.push(kind);
        log::debug!(
            "seccomp: {} filter installed ({} system calls allowed)",
            kind.name(),
            allowed(kind).len()
        );
    }
    drop(said);
    test_hook_forbidden_call(kind);
    Ok(())
}

/// Whether this thread may do the way out's clean-up (start flush
/// threads, remove files): the main thread and unfiltered ones.
pub fn may_clean_up() -> bool {
    let kind = THREAD_KIND.with(|k| k.get());
    kind == "unfiltered" || kind == Kind::Main.name()
}

/// For threads the launcher starts itself: installs `kind`'s filter, or
/// ends the launcher (a thread must not run unfiltered when filtering is
/// on).
pub fn install_or_exit(kind: Kind) {
    if let Err(e) = install(kind) {
        terminal::restore();
        eprintln!("launcher: {e}");
        std::process::exit(lifecycle::code::LAUNCHER_ERROR);
    }
}

/// `kind`'s filter, compiled on first use.
fn program(kind: Kind) -> Result<Arc<BpfProgram>, String> {
    let mut programs = PROGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = programs.iter().find(|(k, _)| *k == kind) {
        return Ok(p.clone());
    }
    let p = Arc::new(compile(kind)?);
    programs.push((kind, p.clone()));
    Ok(p)
}

fn compile(kind: Kind) -> Result<BpfProgram, String> {
    let what = |e: &dyn std::fmt::Display| format!("seccomp: the {} filter: {e}", kind.name());
    let arch = std::env::consts::ARCH.try_into().map_err(|e| what(&e))?;
    let filter = SeccompFilter::new(
        rules(kind)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| what(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| what(&e))
}

fn device_thread_started(thread: ThreadKind) {
    install_or_exit(Kind::of(thread));
}

/// Every system call `kind` may make: its own, and those of every kind
/// it starts.
fn allowed(kind: Kind) -> Vec<i64> {
    let mut calls: Vec<i64> = EVERY_THREAD.iter().chain(kind.calls()).copied().collect();
    if !kind.starts().is_empty() {
        calls.extend_from_slice(STARTING_THREADS);
    }
    for &started in kind.starts() {
        calls.extend(allowed(started));
    }
    // The test-hook build's stalled blk I/O (LAUNCHER_TEST_BLK_STALL)
    // opens its FIFO on the blk worker or an I/O thread.
    if devices::test_hooks::ENABLED && kind == Kind::BlkIo {
        calls.push(libc::SYS_openat);
    }
    calls.sort_unstable();
    calls.dedup();
    calls
}

/// One rule: every `(argument, operation, value)` holds (32-bit compares).
fn rule(conditions: &[(u8, SeccompCmpOp, u64)]) -> Result<SeccompRule, String> {
    conditions
        .iter()
        .map(|(arg, op, value)| {
            SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(SeccompRule::new)
        .map_err(|e| format!("seccomp: a rule: {e}"))
}

/// The argument checks of `kind`'s calls (none: any arguments).
///
/// - `prctl` outside main: only [`PRCTL_OPTIONS`].
/// - `ioctl` on a vCPU (and so on the workers it starts): KVM's own
///   requests (type 0xAE: `KVM_RUN`, ioeventfd, irqfd, GSI routes, the
///   host workarounds' registers) and the tap's `TUNSETOFFLOAD` at
///   feature negotiation; nothing for a terminal or a socket.
/// - `ioctl` on main: anything but the two requests that push input into
///   a terminal (`TIOCSTI`, `TIOCLINUX`'s paste), which no thread needs.
fn arguments(kind: Kind, call: i64) -> Result<Vec<SeccompRule>, String> {
    use SeccompCmpOp::{Eq, MaskedEq, Ne};
    Ok(match (kind, call) {
        (Kind::Main, libc::SYS_prctl) => Vec::new(),
        (_, libc::SYS_prctl) => PRCTL_OPTIONS
            .iter()
            .map(|&op| rule(&[(0, Eq, op as u64)]))
            .collect::<Result<_, _>>()?,
        (Kind::Vcpu, libc::SYS_ioctl) => vec![
            rule(&[(1, MaskedEq(0xff00), u64::from(KVMIO) << 8)])?,
            rule(&[(1, Eq, libc::TUNSETOFFLOAD)])?,
        ],
        (Kind::Main, libc::SYS_ioctl) => {
            vec![rule(&[(1, Ne, libc::TIOCSTI), (1, Ne, libc::TIOCLINUX)])?]
        }
        _ => Vec::new(),
    })
}

/// The ioctl type of every KVM request (linux/kvm.h).
const KVMIO: u8 = 0xae;

fn rules(kind: Kind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    allowed(kind)
        .into_iter()
        .map(|call| Ok((call, arguments(kind, call)?)))
        .collect()
}

fn install_sigsys_handler() -> Result<(), String> {
    // SAFETY: sigaction is plain data; the handler is an extern "C" fn
    // that only makes async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "seccomp: cannot catch SIGSYS: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// `siginfo_t`'s SIGSYS fields (`_sigsys`), which the libc crate lacks.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A call the thread's filter forbids: say which, put the terminal back,
/// exit with code 5. Only async-signal-safe calls (and no allocation).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS, whose layout
    // begins as `SigsysInfo` does.
    let nr = unsafe { (*(info as *const SigsysInfo)).syscall };
    let kind = THREAD_KIND.with(|k| k.get());
    let name = THREAD_NAME.with(|t| t.get());
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let mut msg = Message::default();
    msg.push(b"\nlauncher: seccomp: thread ");
    msg.push(&name[..name_len]);
    msg.push(b" (");
    msg.push(kind.as_bytes());
    msg.push(b" filter) made system call ");
    msg.number(nr);
    msg.push(b", which its filter forbids; stopping with exit code 5 (a launcher bug: please report it; --no-seccomp runs without filters)\n");
    terminal::restore_in_signal();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is live.
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::_exit(lifecycle::code::SECCOMP);
    }
}

/// A message built without allocating, for the signal handler.
struct Message {
    buf: [u8; 512],
    len: usize,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl Message {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, n: libc::c_int) {
        let mut digits = [0u8; 12];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

/// Test hook (the `test-hooks` build only): `LAUNCHER_TEST_SECCOMP_VIOLATION=KIND`
/// makes the first thread of that kind call `acct(2)`, which no list
/// allows, right after installing its filter; `KIND:ioctl` makes it ask
/// for stdin's terminal settings (`TCGETS`), a request only main may make.
fn test_hook_forbidden_call(kind: Kind) {
    if !devices::test_hooks::ENABLED {
        return;
    }
    let Ok(v) = std::env::var("LAUNCHER_TEST_SECCOMP_VIOLATION") else {
        return;
    };
    if v == kind.name() {
        // SAFETY: acct(NULL) takes no memory; the filter traps it anyway.
        unsafe { libc::syscall(libc::SYS_acct, std::ptr::null::<libc::c_char>()) };
    } else if v.strip_suffix(":ioctl") == Some(kind.name()) {
        // SAFETY: TCGETS writes one termios into `t`, which outlives the
        // call; the filter traps it anyway.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::ioctl(0, libc::TCGETS, &mut t) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_and_none_allows_what_no_thread_needs() {
        let arch = std::env::consts::ARCH.try_into().unwrap();
        for kind in Kind::ALL {
            let f = SeccompFilter::new(
                rules(kind).unwrap(),
                SeccompAction::Trap,
                SeccompAction::Allow,
                arch,
            )
            .unwrap();
            let p: BpfProgram = f.try_into().unwrap();
            assert!(!p.is_empty());
            let calls = allowed(kind);
            for never in [
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_acct,
                libc::SYS_setuid,
                libc::SYS_chroot,
                libc::SYS_process_vm_writev,
                libc::SYS_bpf,
            ] {
                assert!(!calls.contains(&never), "{kind:?} allows {never}");
            }
        }
        for worker in [Kind::BlkIo, Kind::NetWorker, Kind::Writer] {
            let calls = allowed(worker);
            for not_theirs in [
                libc::SYS_ioctl,
                libc::SYS_open,
                libc::SYS_execve,
                libc::SYS_socket,
                libc::SYS_clone,
            ] {
                assert!(
                    !calls.contains(&not_theirs),
                    "{worker:?} allows {not_theirs}"
                );
            }
        }
    }

    #[test]
    fn a_vcpu_allows_what_the_workers_it_starts_need() {
        let vcpu = allowed(Kind::Vcpu);
        for worker in [
            Kind::BlkWorker,
            Kind::NetWorker,
            Kind::ConsoleWorker,
            Kind::RngWorker,
            Kind::OtherWorker,
            Kind::KickRelay,
        ] {
            for call in allowed(worker) {
                assert!(vcpu.contains(&call), "{worker:?} needs {call}");
            }
        }
        let main = allowed(Kind::Main);
        for call in vcpu.iter().chain(&allowed(Kind::Writer)) {
            assert!(main.contains(call), "main lacks {call}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut m = Message::default();
        m.number(0);
        m.push(b" ");
        m.number(163);
        m.push(b" ");
        m.number(-5);
        assert_eq!(&m.buf[..m.len], b"0 163 -5");
    }
}
