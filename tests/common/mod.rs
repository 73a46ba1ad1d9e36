//! Shared test harness: finds guest images, runs the launcher binary as a
//! child with its output captured line by line, and waits for markers with
//! a deadline (never sleep-and-hope). A guest still running when its
//! [`Guest`] is dropped is killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod images;

/// Where prebuilt guest images are (see `images.rs` for the order).
pub fn guest_images() -> Option<PathBuf> {
    images::find(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The guest-image directory, or a panic that says how to get one: tests
/// that boot Linux must not pass by silently doing nothing.
pub fn require_images() -> PathBuf {
    guest_images().expect(
        "no guest images: set LAUNCHER_GUEST_IMAGES, put shared/guest-images beside \
         the checkout, or run guest-images/build.sh",
    )
}

/// How long a test-guest run may take before a test gives up on it (the
/// guest itself takes well under a second).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The one clean-run check every device test uses: the launcher exited 0
/// after the guest's `GUEST-TEST-END`, and nothing failed or was
/// reported on the way (no GUEST-FAIL / GUEST-PANIC, no "bad driver", no
/// strict-check warning). `output` is stdout and stderr together.
pub fn assert_clean(code: Option<i32>, output: &str) {
    assert_eq!(code, Some(0), "exit code; output:\n{output}");
    for bad in ["GUEST-FAIL", "GUEST-PANIC", "bad driver", "warning:"] {
        assert!(!output.contains(bad), "{bad}; output:\n{output}");
    }
    assert!(
        output.contains("GUEST-TEST-END"),
        "no GUEST-TEST-END:\n{output}"
    );
}

/// A test that cannot run here says why and returns; under CI
/// (`CI=true`, as `.ci/run` has it) a skip fails instead, so that a green
/// CI means every test ran.
pub fn skip(why: impl std::fmt::Display) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("skipped under CI, which must run every test: {why}");
    }
    eprintln!("skipped: {why}");
}

/// True on a host whose KVM emulates guest kernel mode (see docs/kvm-host.md).
pub fn nested_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

#[derive(Default)]
struct Output {
    /// (from stderr?, line)
    lines: Vec<(bool, String)>,
    open_streams: usize,
}

/// A running launcher.
pub struct Guest {
    child: Child,
    out: Arc<(Mutex<Output>, Condvar)>,
    /// How far `wait_for` has read, so markers are found in order.
    cursor: usize,
    status: Option<ExitStatus>,
}

pub fn launcher() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_launcher"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Guest {
    pub fn start(args: &[&str]) -> Guest {
        let mut cmd = launcher();
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Like [`Guest::start`], with the launcher's stdin a pipe that
    /// [`Guest::write_stdin`] writes to.
    pub fn start_with_stdin(args: &[&str]) -> Guest {
        let mut cmd = launcher();
        cmd.stdin(Stdio::piped()).args(args);
        Self::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Guest {
        let mut child = cmd.spawn().expect("cannot start the launcher binary");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        for (is_err, stream) in [(false, stdout), (true, stderr)] {
            let Some(stream) = stream else { continue };
            out.0.lock().unwrap().open_streams += 1;
            let out = out.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf)
                                .trim_end_matches(['\r', '\n'])
                                .to_string();
                            if std::env::var_os("LAUNCHER_TEST_ECHO").is_some() {
                                eprintln!("{}{line}", if is_err { "[err] " } else { "" });
                            }
                            out.0.lock().unwrap().lines.push((is_err, line));
                            out.1.notify_all();
                        }
                    }
                }
                out.0.lock().unwrap().open_streams -= 1;
                out.1.notify_all();
            });
        }
        Guest {
            child,
            out,
            cursor: 0,
            status: None,
        }
    }

    /// Waits until a line (stdout or stderr) after the last match contains
    /// `needle`; returns it. Panics with the whole output on timeout or if
    /// the launcher closes its output first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut out = lock.lock().unwrap();
        loop {
            if let Some(i) = out.lines[self.cursor..]
                .iter()
                .position(|(_, l)| l.contains(needle))
            {
                self.cursor += i + 1;
                return out.lines[self.cursor - 1].1.clone();
            }
            let now = Instant::now();
            if out.open_streams == 0 || now >= deadline {
                let why = if now >= deadline {
                    "timed out"
                } else {
                    "output ended"
                };
                let dump = dump(&out.lines);
                drop(out);
                panic!("{why} waiting for {needle:?} ({timeout:?}); output:\n{dump}");
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Waits for the launcher to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for the launcher") {
                self.status = Some(s);
                // Let the readers drain what the launcher wrote last.
                let (lock, cv) = &*self.out;
                let mut out = lock.lock().unwrap();
                while out.open_streams > 0 {
                    out = cv.wait_timeout(out, Duration::from_secs(5)).unwrap().0;
                }
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "launcher still running after {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `bytes` to the launcher's stdin, which must have been
    /// spawned as `Stdio::piped()`, and flushes.
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .expect("the launcher's stdin is not a pipe");
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .expect("cannot write to the launcher's stdin");
    }

    /// Hands over the launcher's stdin pipe, e.g. to a writer thread.
    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.child
            .stdin
            .take()
            .expect("the launcher's stdin is not a pipe")
    }

    /// Closes the launcher's stdin pipe (end of file for the launcher).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Sends `sig` to the launcher.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on a child we started and have not reaped.
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(
            r,
            0,
            "kill {}: {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far, stderr lines marked.
    pub fn output(&self) -> String {
        dump(&self.out.0.lock().unwrap().lines)
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        let out = self.out.0.lock().unwrap();
        out.lines
            .iter()
            .filter(|(e, _)| !*e)
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }

    pub fn stderr(&self) -> String {
        let out = self.out.0.lock().unwrap();
        out.lines
            .iter()
            .filter(|(e, _)| *e)
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }
}

fn dump(lines: &[(bool, String)]) -> String {
    lines
        .iter()
        .map(|(e, l)| format!("{}{l}\n", if *e { "[stderr] " } else { "" }))
        .collect()
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A file in a fresh temporary directory that is removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "launcher-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A sparse, all-zero file `name` of `len` bytes (a disk image).
    pub fn sparse(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(len))
            .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
pub mod strict;
pub mod test_guest;

/// Why network-namespace tests cannot run here (not root, no `ip`), or
/// `None` when they can.
pub fn netns_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: creating network namespaces and taps needs root".into());
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        _ => return Some("the `ip` command (iproute2) is missing".into()),
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// For tests that need network namespaces: true (after [`skip`], which
/// fails under CI) when they cannot run here.
pub fn netns_skipped() -> bool {
    match netns_unavailable() {
        Some(why) => {
            skip(why);
            true
        }
        None => false,
    }
}

/// A network namespace `launcher-test-<pid>-<n>` made for one test and
/// deleted (`ip netns del`) when dropped, also when the test fails.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("launcher-test-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("cannot run `ip netns add`");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        NetNs { name }
    }

    /// A new namespace with an up tap named `tap` in it.
    pub fn with_tap(tap: &str) -> NetNs {
        let ns = NetNs::new();
        ns.run(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
        ns.run(&["ip", "link", "set", tap, "up"]);
        ns
    }

    /// `ip netns exec <name> <program>`, output captured.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `args` inside the namespace; panics with its output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self
            .command(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {}: {e}", self.name));
        assert!(
            out.status.success(),
            "{args:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The launcher (the test binary's `launcher`) inside the namespace.
    pub fn launcher(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_launcher"))
    }

    /// Runs `f` on a thread of its own that has entered the namespace
    /// (`setns`, which moves only the calling thread).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: a valid namespace descriptor; only this thread moves.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An AF_PACKET socket for one ethertype, on one interface (or all of
/// them), in the network namespace of the thread that opens it.
pub struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
    ethertype: u16,
}

impl PacketSocket {
    /// `ifname` `None`: every interface (receive only).
    pub fn open(ifname: Option<&str>, ethertype: u16) -> std::io::Result<PacketSocket> {
        use std::os::fd::FromRawFd;
        let ifindex = match ifname {
            Some(name) => {
                let c = std::ffi::CString::new(name).unwrap();
                // SAFETY: a NUL-terminated name.
                let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
                if i == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                i as i32
            }
            None => 0,
        };
        let proto = i32::from(ethertype.to_be());
        // SAFETY: plain socket call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned here.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let s = PacketSocket {
            fd,
            ifindex,
            ethertype,
        };
        let addr = s.sockaddr();
        use std::os::fd::AsRawFd;
        // SAFETY: addr is a sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rcvbuf: libc::c_int = 8 << 20;
        // SAFETY: an int option.
        unsafe {
            libc::setsockopt(
                s.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                4,
            )
        };
        Ok(s)
    }

    fn sockaddr(&self) -> libc::sockaddr_ll {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = self.ethertype.to_be();
        a.sll_ifindex = self.ifindex;
        a.sll_halen = 6;
        a
    }

    /// One frame (from its Ethernet header on), or `None` after `timeout`.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> std::io::Result<Option<usize>> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(n as usize))
    }

    /// Sends `frame` (Ethernet header included) out of the interface.
    /// Up to `count` frames, or fewer if `within` passes first.
    pub fn frames(&self, count: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while frames.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv(&mut buf, left) {
                Ok(Some(n)) => frames.push(buf[..n].to_vec()),
                Ok(None) => {}
                Err(e) => panic!("receiving on the packet socket: {e}"),
            }
        }
        frames
    }

    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut addr = self.sockaddr();
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr are valid for their lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An Ethernet frame: destination, source, ethertype, payload.
/// The payloads of captured Ethernet frames as text (the bytes after the
/// 14-byte header, padding dropped).
pub fn frame_payloads(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            String::from_utf8_lossy(f.get(14..).unwrap_or_default())
                .trim_end_matches('\0')
                .to_string()
        })
        .collect()
}

pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The launcher's strict rule called `name` (its `Debug` name).
pub fn rule(name: &str) -> devices::virtio::Rule {
    *devices::virtio::Rule::ALL
        .iter()
        .find(|r| format!("{r:?}") == name)
        .unwrap_or_else(|| panic!("no rule {name} in devices::virtio::rules"))
}

/// How a report names rule `name`: "Name (virtio 1.2 §x)" for a MUST,
/// "Name (SHOULD, virtio 1.2 §x)" and the like for a warning.
pub fn rule_label(name: &str) -> String {
    rule(name).label()
}

/// One line of a `--trace-file` (docs/tracing.md).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEvent {
    pub boot: u64,
    pub device: String,
    pub kind: String,
    pub fields: serde_json::Value,
}

/// Every event in trace file `path`; panics on a line that is not one.
pub fn trace_events(path: &Path) -> Vec<TraceEvent> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("trace file {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(v["schema"], 1, "{l}");
            TraceEvent {
                boot: v["boot"].as_u64().expect("boot"),
                device: v["device"].as_str().expect("device").to_string(),
                kind: v["kind"].as_str().expect("kind").to_string(),
                fields: v["fields"].clone(),
            }
        })
        .collect()
}

/// The kinds of event that set a device up (what two boots of one
/// configuration must agree on, whatever the guest does later).
pub const SETUP_KINDS: &[&str] = &[
    "reset",
    "status",
    "features-offered",
    "features-accepted",
    "features-negotiated",
    "queue",
    "queue-disabled",
    "vector",
    "config-vector",
    "msix",
    "driver-ok",
];
