//! The control socket (`--control PATH`): one command per line from
//! scripts, one line back.
//!
//! | command | effect | reply |
//! |---|---|---|
//! | `shutdown` | as SIGTERM: through vmmci if its driver is up, else stop at once (exit 143) | `ok: …` |
//! | `reboot` | as SIGHUP | `ok: …` |
//! | `status` | nothing | `running boot=N vmmci=up|down|absent` |
//!
//! The socket file is created at start with mode 0600, owned by the
//! `--username` user when there is one (a stale socket file is replaced;
//! one another launcher answers on, or any other file, is an error), kept
//! listening across reboots (`carry`: clients never find it missing) and
//! removed on exit (not after `--chroot`, whose process can no longer
//! reach it: the next launcher on that path replaces the stale file).
//! Clients that are neither the launcher's user nor root (SO_PEERCRED)
//! are refused, should the file's mode have been opened up. An accept error (out of descriptors) rests
//! the listener for 100 ms instead of letting it spin the loop.
//!
//! [`ControlServer`] serves it as a subscriber of the launcher's event loop
//! on the main thread, so nothing here may block: the listener and every
//! client are non-blocking and watched by epoll, at most [`MAX_CLIENTS`] at
//! a time (a new one pushes out the one idle longest). Bytes from a client
//! collect in a [`LineBuffer`] until a newline; a line longer than
//! [`MAX_LINE`] gets an error reply and the connection is closed. Replies
//! are written without waiting: a client that does not read them (its
//! socket buffer full) is dropped. Commands become host requests through
//! [`lifecycle::ask_guest`](crate::lifecycle::ask_guest).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use devices::virtio::vmmci::VmmciControl;
use devices::VmControl;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::error::{Error, Result};
use crate::lifecycle::{ask_guest, boot_number, remove_on_exit, HostAsk};

/// The longest command line accepted, newline not counted.
pub const MAX_LINE: usize = 256;
/// Clients served at once.
pub const MAX_CLIENTS: usize = 16;
/// Bytes read from one client per wake-up, so one busy client cannot keep
/// the loop from the others.
const READ_CHUNK: usize = 4096;

/// The listening socket the previous boot kept (a reboot's re-exec), if
/// it is still listening on `path`, or a new one ([`bind`]) owned by
/// `owner` (uid, gid) when given; kept for the next boot either way.
pub fn bind_or_take(
    path: &Path,
    owner: Option<(libc::uid_t, libc::gid_t)>,
) -> Result<UnixListener> {
    let carried = crate::carry::take_fd("control")
        .map(UnixListener::from)
        .filter(|l| {
            l.local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p == path))
                .unwrap_or(false)
        });
    let listener = match carried {
        Some(l) => {
            remove_on_exit(path.to_path_buf());
            l
        }
        None => {
            let l = bind(path)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(Error::io(
                    format!("give the control socket {} to --username", path.display()),
                ))?;
            }
            l
        }
    };
    let copy = listener
        .try_clone()
        .map_err(Error::io("keep the control socket across a reboot"))?;
    crate::carry::keep("control", copy.into());
    Ok(listener)
}

/// Binds `path`; the listener is served by a [`ControlServer`].
///
/// A stale socket file (nobody answers on it) is replaced; one another
/// launcher still answers on is not: that launcher's scripts would lose
/// it. The socket is made mode 0600 (its owner only), and
/// [`ControlServer`] also refuses peers that are neither its user nor root.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let exists = |why: &str| Error::Io {
            what: format!("use {} as the control socket: {why}", path.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        };
        if !meta.file_type().is_socket() {
            return Err(exists("it exists and is not a socket"));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(exists("another running launcher answers on it"));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(Error::io(format!(
        "create the control socket {}",
        path.display()
    )))?;
    remove_on_exit(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(Error::io(
        format!("make the control socket {} private", path.display()),
    ))?;
    listener
        .set_nonblocking(true)
        .map_err(Error::io("make the control socket non-blocking"))?;
    Ok(listener)
}

/// One complete line, or the news that a line broke [`MAX_LINE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Command(String),
    TooLong,
}

/// Splits a client's byte stream into lines, holding at most [`MAX_LINE`]
/// bytes of an unfinished one.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
    /// A line broke the limit: everything after it is ignored.
    overflowed: bool,
}

impl LineBuffer {
    /// Adds bytes as they came from the client; returns the lines they
    /// complete, in order. [`Line::TooLong`] is the last thing it ever
    /// returns.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        if self.overflowed {
            return lines;
        }
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, complete) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            if self.partial.len() + body.len() > MAX_LINE {
                self.overflowed = true;
                self.partial = Vec::new();
                lines.push(Line::TooLong);
                return lines;
            }
            self.partial.extend_from_slice(body);
            if complete {
                let line = std::mem::take(&mut self.partial);
                lines.push(Line::Command(String::from_utf8_lossy(&line).into_owned()));
            }
        }
        lines
    }

    /// At end of input: the last line, if it had no newline.
    pub fn finish(&mut self) -> Option<Line> {
        if self.overflowed || self.partial.is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.partial);
        Some(Line::Command(String::from_utf8_lossy(&line).into_owned()))
    }
}

/// The reply to one command line; `None` for a blank line.
fn reply(line: &str, control: &VmControl, vmmci: Option<&VmmciControl>) -> Option<String> {
    let reply = match line.trim() {
        "shutdown" => format!(
            "ok: {}",
            ask_guest(
                HostAsk::Shutdown {
                    signal: libc::SIGTERM
                },
                "control socket",
                control,
                vmmci
            )
        ),
        "reboot" => format!(
            "ok: {}",
            ask_guest(HostAsk::Reboot, "control socket", control, vmmci)
        ),
        "status" => {
            let v = match vmmci {
                None => "absent",
                Some(v) if v.driver_ok() => "up",
                Some(_) => "down",
            };
            format!("running boot={} vmmci={v}", boot_number())
        }
        "" => return None,
        other => format!("error: unknown command '{other}' (known: shutdown, reboot, status)"),
    };
    Some(reply)
}

struct Client {
    stream: UnixStream,
    lines: LineBuffer,
    /// [`ControlServer::clock`] when it last sent something.
    last_active: u64,
}

/// How long the listener rests after an accept error (out of descriptors,
/// say), so a listener that stays readable cannot spin the loop.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The control socket's event-loop subscriber.
pub struct ControlServer {
    listener: UnixListener,
    /// Brings the listener back after [`ACCEPT_BACKOFF`].
    backoff: Option<vmm_sys_util::timerfd::TimerFd>,
    /// The listener is out of the loop, waiting for `backoff`.
    resting: bool,
    clients: HashMap<RawFd, Client>,
    control: VmControl,
    vmmci: Option<VmmciControl>,
    /// Counts client activity, to find the one idle longest.
    clock: u64,
}

/// What to do with a client after its turn.
enum Verdict {
    Keep,
    Close(&'static str),
}

impl ControlServer {
    /// Serves `listener` (from [`bind`]) for the life of the VM.
    pub fn new(listener: UnixListener, control: VmControl, vmmci: Option<VmmciControl>) -> Self {
        let backoff = devices::virtio::vmmci::nonblocking_timer()
            .map_err(|e| {
                log::warn!("control: no back-off timer ({e}); accept errors are only logged")
            })
            .ok();
        Self {
            listener,
            backoff,
            resting: false,
            clients: HashMap::new(),
            control,
            vmmci,
            clock: 0,
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        // Bounded, so a flood of connections cannot hold the loop.
        for _ in 0..MAX_CLIENTS {
            match self.listener.accept() {
                Ok((stream, _)) => self.add(stream, ops),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    devices::guestlog::warn(
                        "control socket accept",
                        format_args!("control socket: cannot accept a client ({e}); resting {ACCEPT_BACKOFF:?}"),
                    );
                    self.rest(ops);
                    return;
                }
            }
        }
    }

    /// Takes the listener out of the loop for [`ACCEPT_BACKOFF`].
    fn rest(&mut self, ops: &mut EventOps) {
        let Some(timer) = self.backoff.as_mut() else {
            return;
        };
        if timer.reset(ACCEPT_BACKOFF, None).is_ok()
            && ops
                .remove(Events::new(&self.listener, EventSet::IN))
                .is_ok()
        {
            self.resting = true;
        }
    }

    /// The back-off is over: the listener is watched again.
    fn wake(&mut self, ops: &mut EventOps) {
        if let Some(t) = self.backoff.as_mut() {
            let _ = t.wait();
        }
        if self.resting && ops.add(Events::new(&self.listener, EventSet::IN)).is_ok() {
            self.resting = false;
        }
    }

    /// Whether the peer on `stream` may command this launcher: its own
    /// user or root (SO_PEERCRED).
    fn allowed(stream: &UnixStream) -> bool {
        let mut cred = libc::ucred {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        // SAFETY: geteuid has no failure mode.
        let me = unsafe { libc::geteuid() };
        r == 0 && (cred.uid == me || cred.uid == 0)
    }

    fn add(&mut self, mut stream: UnixStream, ops: &mut EventOps) {
        if let Err(e) = stream.set_nonblocking(true) {
            log::debug!("control: {e}");
            return;
        }
        if !Self::allowed(&stream) {
            let _ = send(&mut stream, "error: permission denied");
            devices::guestlog::warn(
                "control socket peer refused",
                "control socket: refused a client that is neither this launcher's user nor root",
            );
            return;
        }
        if self.clients.len() >= MAX_CLIENTS {
            let idlest = self
                .clients
                .iter()
                .min_by_key(|(_, c)| c.last_active)
                .map(|(&fd, _)| fd);
            if let Some(fd) = idlest {
                self.close(fd, ops, "too many clients; dropped the one idle longest");
            }
        }
        let fd = stream.as_raw_fd();
        if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
            log::debug!("control: cannot watch a client: {e}");
            return;
        }
        self.clock += 1;
        self.clients.insert(
            fd,
            Client {
                stream,
                lines: LineBuffer::default(),
                last_active: self.clock,
            },
        );
    }

    /// Stops watching `fd` (while it is still open) and closes it.
    fn close(&mut self, fd: RawFd, ops: &mut EventOps, why: &str) {
        if let Some(client) = self.clients.remove(&fd) {
            log::debug!("control: closing a client: {why}");
            let _ = ops.remove(Events::new(&client.stream, EventSet::IN));
        }
    }

    /// One read from client `fd`, and the replies to the lines it finished.
    fn serve(&mut self, fd: RawFd) -> Verdict {
        let Some(client) = self.clients.get_mut(&fd) else {
            return Verdict::Keep;
        };
        self.clock += 1;
        client.last_active = self.clock;
        let mut buf = [0u8; READ_CHUNK];
        let (lines, at_end) = match client.stream.read(&mut buf) {
            Ok(0) => (client.lines.finish().into_iter().collect(), true),
            Ok(n) => (client.lines.feed(&buf[..n]), false),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return Verdict::Keep
            }
            Err(_) => return Verdict::Close("read error"),
        };
        for line in lines {
            let text = match line {
                Line::Command(c) => match reply(&c, &self.control, self.vmmci.as_ref()) {
                    Some(r) => r,
                    None => continue,
                },
                Line::TooLong => {
                    let _ = send(
                        &mut client.stream,
                        &format!("error: line longer than {MAX_LINE} bytes"),
                    );
                    return Verdict::Close("line too long");
                }
            };
            if !send(&mut client.stream, &text) {
                return Verdict::Close("it does not read its replies");
            }
        }
        if at_end {
            Verdict::Close("end of input")
        } else {
            Verdict::Keep
        }
    }
}

/// Writes `line` and a newline without waiting; false unless all of it
/// went out at once.
fn send(stream: &mut UnixStream, line: &str) -> bool {
    let bytes = format!("{line}\n");
    matches!(stream.write(bytes.as_bytes()), Ok(n) if n == bytes.len())
}

impl MutEventSubscriber for ControlServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if self.backoff.as_ref().is_some_and(|t| t.as_raw_fd() == fd) {
            self.wake(ops);
        } else if let Verdict::Close(why) = self.serve(fd) {
            self.close(fd, ops, why);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("control: cannot watch the socket: {e}");
        }
        if let Some(t) = &self.backoff {
            if let Err(e) = ops.add(Events::new(t, EventSet::IN)) {
                log::warn!("control: cannot watch the back-off timer: {e}");
                self.backoff = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use devices::{Requests, VmRequest};
    use event_manager::{EventManager, SubscriberOps};

    fn cmd(s: &str) -> Line {
        Line::Command(s.into())
    }

    #[test]
    fn lines_split_across_reads_and_several_in_one() {
        let mut b = LineBuffer::default();
        assert_eq!(b.feed(b"sta"), vec![]);
        assert_eq!(b.feed(b"tus\nreb"), vec![cmd("status")]);
        assert_eq!(
            b.feed(b"oot\r\n\nshutdown\n"),
            vec![cmd("reboot\r"), cmd(""), cmd("shutdown")]
        );
        assert_eq!(b.finish(), None, "nothing unfinished");
        assert_eq!(b.feed(b"status"), vec![]);
        assert_eq!(
            b.finish(),
            Some(cmd("status")),
            "a last line without newline"
        );
    }

    #[test]
    fn a_line_at_the_limit_passes_one_byte_more_does_not() {
        let mut b = LineBuffer::default();
        let max = "x".repeat(MAX_LINE);
        assert_eq!(b.feed(format!("{max}\n").as_bytes()), vec![cmd(&max)]);
        // Over the limit in pieces, without a newline yet.
        assert_eq!(b.feed(max.as_bytes()), vec![]);
        assert_eq!(b.feed(b"x"), vec![Line::TooLong]);
        assert_eq!(b.feed(b"\nstatus\n"), vec![], "nothing after TooLong");
        assert_eq!(b.finish(), None);
        // Lines before the long one in the same read still count.
        let mut b = LineBuffer::default();
        let input = format!("status\n{max}y\nstatus\n");
        assert_eq!(b.feed(input.as_bytes()), vec![cmd("status"), Line::TooLong]);
    }

    #[test]
    fn replies() {
        let (control, requests) = VmControl::new().unwrap();
        assert_eq!(reply("  ", &control, None), None);
        assert_eq!(
            reply("status\r", &control, None).unwrap(),
            format!("running boot={} vmmci=absent", boot_number())
        );
        assert!(reply("frob", &control, None)
            .unwrap()
            .starts_with("error: unknown command 'frob'"));
        assert!(requests.try_recv().is_err());
        assert_eq!(
            reply("shutdown", &control, None).unwrap(),
            "ok: done at once"
        );
        assert_eq!(requests.try_recv(), Ok(VmRequest::Signal(libc::SIGTERM)));
    }

    /// A server on a fresh socket, its loop on a thread of its own.
    struct Rig {
        path: PathBuf,
        requests: Requests,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Rig {
        fn new(tag: &str) -> Rig {
            let path = std::env::temp_dir().join(format!(
                "launcher-control-{tag}-{}.sock",
                std::process::id()
            ));
            let listener = bind(&path).unwrap();
            let (control, requests) = VmControl::new().unwrap();
            let server = ControlServer::new(listener, control, None);
            let stop = Arc::new(AtomicBool::new(false));
            let stopped = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut events =
                    EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
                events.add_subscriber(Arc::new(Mutex::new(server)));
                while !stopped.load(Ordering::Relaxed) {
                    events.run_with_timeout(20).unwrap();
                }
            });
            Rig {
                path,
                requests,
                stop,
                thread: Some(thread),
            }
        }

        fn connect(&self) -> UnixStream {
            let s = UnixStream::connect(&self.path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        }

        /// One command on a fresh connection; the reply line.
        fn ask(&self, cmd: &str) -> String {
            let mut s = self.connect();
            writeln!(s, "{cmd}").unwrap();
            read_line(&s)
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn read_line(s: &UnixStream) -> String {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    /// True once the server closed `s` (end of file), within 10 s.
    fn closed(s: &UnixStream) -> bool {
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match (&*s).read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(e) => panic!("{e}"),
            }
        }
        false
    }

    #[test]
    fn an_over_long_line_gets_an_error_and_the_connection_closed() {
        let rig = Rig::new("long");
        let mut s = rig.connect();
        s.write_all(&[b'a'; MAX_LINE + 1]).unwrap();
        assert_eq!(
            read_line(&s),
            format!("error: line longer than {MAX_LINE} bytes\n")
        );
        assert!(closed(&s));
        assert!(rig.ask("status").starts_with("running boot="));
    }

    #[test]
    fn silent_and_half_line_clients_hold_nobody_up() {
        let rig = Rig::new("silent");
        let _silent = rig.connect();
        let mut half = rig.connect();
        half.write_all(b"stat").unwrap();
        assert!(rig.ask("status").starts_with("running boot="));
        // The half line finishes later and is answered then.
        half.write_all(b"us\n").unwrap();
        assert!(read_line(&half).starts_with("running boot="));
        // Shut down the write side: the last line counts without newline.
        let mut last = rig.connect();
        last.write_all(b"shutdown").unwrap();
        last.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_line(&last), "ok: done at once\n");
        assert!(closed(&last));
        assert_eq!(
            rig.requests.try_recv(),
            Ok(VmRequest::Signal(libc::SIGTERM))
        );
    }

    #[test]
    fn a_client_that_never_reads_its_replies_is_dropped() {
        let rig = Rig::new("noread");
        let mut s = rig.connect();
        let burst = "status\n".repeat(1000);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Keep asking without reading; the server must give up on us.
        let dropped = loop {
            assert!(Instant::now() < deadline, "never dropped");
            if s.write_all(burst.as_bytes()).is_err() {
                break true;
            }
            // Other clients are served all the while.
            assert!(rig.ask("status").starts_with("running boot="));
        };
        assert!(dropped);
    }

    #[test]
    fn too_many_clients_push_out_the_idlest() {
        let rig = Rig::new("many");
        let idle = rig.connect();
        let mut busy: Vec<UnixStream> = (1..MAX_CLIENTS).map(|_| rig.connect()).collect();
        for s in &mut busy {
            writeln!(s, "status").unwrap();
            assert!(read_line(s).starts_with("running"));
        }
        // One more: the idle one goes.
        assert!(rig.ask("status").starts_with("running"));
        assert!(closed(&idle));
        for s in &mut busy {
            writeln!(s, "status").unwrap();
            assert!(read_line(s).starts_with("running"), "busy ones stay");
        }
    }
}
