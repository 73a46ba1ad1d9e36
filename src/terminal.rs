//! The launcher's terminal: raw mode while the guest runs, restored on
//! every way out, and [`StdinInput`], the event-loop subscriber that feeds
//! stdin to the guest's console.
//!
//! Raw mode (no echo, no line editing, no signals from keys) lets the guest
//! own the keyboard; so Ctrl-C goes to the guest, and, as in lguest, three
//! of them within a second stop the launcher. The saved settings live in a
//! global so that [`restore`] works from any exit path, the panic hook
//! included, without threading a guard through every function.
//!
//! Input runs on the main thread's event loop and must never block it.
//! Stdin stays a blocking descriptor (it is shared with the user's shell,
//! so it is not switched to O_NONBLOCK) and is read once each time epoll
//! says it is readable. What the guest has not taken yet waits in a
//! bounded buffer and is offered again whenever the console signals room
//! ([`ConsoleInput::room_fds`]); bytes beyond the bound are dropped, so
//! stdin, and with it the Ctrl-C escape, is read even from a guest that
//! reads nothing. A stdin epoll refuses (a regular file, /dev/null) cannot
//! block either, so it is read when the guest has room, only as much as
//! fits: nothing of a file is dropped.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use devices::{VmControl, VmRequest};
use event_manager::{Error as EventError, EventOps, EventSet, Events, MutEventSubscriber};

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

const CTRL_C: u8 = 0x03;
const ESCAPE_PRESSES: usize = 3;
const ESCAPE_WINDOW: Duration = Duration::from_secs(1);
/// Input the guest has not taken yet that is held for it; more is dropped.
pub const PENDING_LIMIT: usize = 64 * 1024;
/// Bytes read from stdin at a time.
const READ_CHUNK: usize = 4096;
/// Rounds of "read a file, offer it to the guest" per wake-up, so a guest
/// that reads fast cannot keep the loop to itself.
const FILE_ROUNDS: usize = 4;

/// Puts stdin in raw mode if it is a terminal and remembers how it was.
pub fn make_raw() {
    // SAFETY: termios is plain data filled in by tcgetattr before use.
    unsafe {
        if libc::isatty(0) != 1 {
            return;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return;
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        t.c_iflag &= !(libc::ICRNL | libc::IXON);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        libc::tcsetattr(0, libc::TCSANOW, &t);
    }
}

/// Puts the terminal back as it was; harmless to call more than once.
pub fn restore() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: `t` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
}

/// [`restore`] for a signal handler: it never waits for the lock (the
/// interrupted thread may hold it) and does not allocate.
pub fn restore_in_signal() {
    if let Ok(saved) = SAVED.try_lock() {
        if let Some(t) = saved.as_ref() {
            // SAFETY: `t` came from tcgetattr on the same descriptor;
            // tcsetattr is async-signal-safe.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Counts Ctrl-C presses; true once three fall within a second.
#[derive(Default)]
struct Escape(Vec<Instant>);

impl Escape {
    fn press(&mut self, now: Instant) -> bool {
        self.0.retain(|t| now.duration_since(*t) < ESCAPE_WINDOW);
        self.0.push(now);
        self.0.len() >= ESCAPE_PRESSES
    }
}

/// Where console input goes: the guest's console, seen from the host.
pub trait ConsoleInput: Send {
    /// Queues as many of `bytes` as the guest can take now; returns how
    /// many. Never blocks.
    fn push(&self, bytes: &[u8]) -> usize;
    /// Eventfds that turn readable when the guest took input (so there may
    /// be room for more).
    fn room_fds(&self) -> Vec<RawFd>;
    /// Clears the signals of [`ConsoleInput::room_fds`]; never blocks.
    fn clear_room(&self);
}

/// How stdin is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// epoll watches it: one read each time it says readable.
    Watched,
    /// epoll refused it (regular file, /dev/null): reads cannot block, so
    /// it is read when the guest has room.
    Unwatched,
    /// End of file, an error, or the escape: no more reading.
    Closed,
}

/// The stdin subscriber: stdin → bounded pending buffer → guest console.
pub struct StdinInput<I> {
    /// Stdin (borrowed: it is never closed here).
    fd: RawFd,
    input: I,
    control: VmControl,
    source: Source,
    /// Read but not yet taken by the guest; at most [`PENDING_LIMIT`].
    pending: VecDeque<u8>,
    escape: Escape,
    /// Whether dropping input was reported already.
    told_dropping: bool,
}

impl<I: ConsoleInput> StdinInput<I> {
    /// Feeds the launcher's stdin to `input`; the escape goes to `control`.
    pub fn new(input: I, control: VmControl) -> Self {
        Self::on_fd(0, input, control)
    }

    fn on_fd(fd: RawFd, input: I, control: VmControl) -> Self {
        Self {
            fd,
            input,
            control,
            source: Source::Closed,
            pending: VecDeque::new(),
            escape: Escape::default(),
            told_dropping: false,
        }
    }

    /// One read(2) of at most `max` bytes; `Ok(empty)` at end of file.
    fn read(&self, max: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max.min(READ_CHUNK)];
        loop {
            // SAFETY: reads at most buf.len() bytes into buf.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Takes bytes read from stdin: watches for the escape, keeps what fits
    /// for the guest and drops the rest.
    fn take(&mut self, bytes: &[u8], ops: &mut EventOps) {
        let now = Instant::now();
        if bytes
            .iter()
            .filter(|&&b| b == CTRL_C)
            .any(|_| self.escape.press(now))
        {
            self.control.request(VmRequest::Escape);
            self.close(ops);
            return;
        }
        let keep = bytes.len().min(PENDING_LIMIT - self.pending.len());
        self.pending.extend(&bytes[..keep]);
        if keep < bytes.len() && !self.told_dropping {
            self.told_dropping = true;
            log::debug!(
                "console: the guest is not reading input; dropping what does not fit in \
                 {PENDING_LIMIT} bytes"
            );
        }
    }

    /// Offers the pending bytes to the guest; returns how many it took.
    fn feed(&mut self) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let took = self.input.push(self.pending.make_contiguous());
        self.pending.drain(..took);
        took
    }

    fn close(&mut self, ops: &mut EventOps) {
        if self.source == Source::Watched {
            let _ = ops.remove(Events::new_raw(self.fd, EventSet::IN));
        }
        self.source = Source::Closed;
    }

    /// Acts on what one read gave; true when there is nothing more to
    /// read for now.
    fn handle_read(&mut self, result: std::io::Result<Vec<u8>>, ops: &mut EventOps) -> bool {
        match result {
            Ok(bytes) if bytes.is_empty() => {
                log::debug!("console: end of stdin");
                self.close(ops);
                true
            }
            Ok(bytes) => {
                self.take(&bytes, ops);
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(e) => {
                log::warn!("stdin: {e}; console input stops");
                self.close(ops);
                true
            }
        }
    }

    /// Stdin is readable (or hung up): one read, then offer it.
    fn on_readable(&mut self, ops: &mut EventOps) {
        let result = self.read(READ_CHUNK);
        self.handle_read(result, ops);
        self.feed();
    }

    /// For a stdin epoll cannot watch: read as much as fits, offer it, and
    /// go on while the guest takes all of it.
    fn pump_unwatched(&mut self, ops: &mut EventOps) {
        for _ in 0..FILE_ROUNDS {
            while self.source == Source::Unwatched && self.pending.len() < PENDING_LIMIT {
                let result = self.read(PENDING_LIMIT - self.pending.len());
                if self.handle_read(result, ops) {
                    break;
                }
            }
            if self.feed() == 0 || !self.pending.is_empty() || self.source != Source::Unwatched {
                return;
            }
        }
    }
}

impl<I: ConsoleInput> MutEventSubscriber for StdinInput<I> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.fd {
            self.on_readable(ops);
            return;
        }
        // The guest took input: room for more.
        self.input.clear_room();
        if self.source == Source::Unwatched {
            self.pump_unwatched(ops);
        } else {
            self.feed();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in self.input.room_fds() {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::warn!("console: cannot watch for room in the guest's console: {e}");
            }
        }
        match ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            Ok(()) => self.source = Source::Watched,
            Err(EventError::Epoll(e)) if e.errno() == libc::EPERM => {
                log::debug!("console: stdin is not pollable; read as the guest takes it");
                self.source = Source::Unwatched;
                self.pump_unwatched(ops);
            }
            Err(e) => log::debug!("console: no input from stdin: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::sync::Arc;

    use devices::Requests;
    use event_manager::{EventManager, SubscriberOps};
    use vmm_sys_util::eventfd::EventFd;

    /// A console that takes `room` more bytes, then nothing until the test
    /// "drains" it.
    #[derive(Clone)]
    struct Guest(Arc<GuestState>);

    struct GuestState {
        taken: Mutex<Vec<u8>>,
        room: Mutex<usize>,
        signal: EventFd,
    }

    impl Guest {
        fn new(room: usize) -> Guest {
            Guest(Arc::new(GuestState {
                taken: Mutex::new(Vec::new()),
                room: Mutex::new(room),
                signal: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }))
        }
        /// The guest read `n` bytes: room for as many more.
        fn drain(&self, n: usize) {
            *self.0.room.lock().unwrap() += n;
            self.0.signal.write(1).unwrap();
        }
        fn taken(&self) -> Vec<u8> {
            self.0.taken.lock().unwrap().clone()
        }
    }

    impl ConsoleInput for Guest {
        fn push(&self, bytes: &[u8]) -> usize {
            let mut room = self.0.room.lock().unwrap();
            let n = bytes.len().min(*room);
            *room -= n;
            self.0.taken.lock().unwrap().extend_from_slice(&bytes[..n]);
            n
        }
        fn room_fds(&self) -> Vec<RawFd> {
            vec![self.0.signal.as_raw_fd()]
        }
        fn clear_room(&self) {
            let _ = self.0.signal.read();
        }
    }

    type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    struct Rig {
        events: Loop,
        stdin: Arc<Mutex<StdinInput<Guest>>>,
        guest: Guest,
        requests: Requests,
    }

    impl Rig {
        /// The subscriber on `fd` (owned by the test) on a loop of its own.
        fn new(fd: RawFd, room: usize) -> Rig {
            let guest = Guest::new(room);
            let (control, requests) = VmControl::new().unwrap();
            let stdin = Arc::new(Mutex::new(StdinInput::on_fd(fd, guest.clone(), control)));
            let mut events = Loop::new().unwrap();
            events.add_subscriber(stdin.clone());
            Rig {
                events,
                stdin,
                guest,
                requests,
            }
        }
        /// Runs the loop until nothing is ready.
        fn settle(&mut self) {
            for _ in 0..10_000 {
                if self.events.run_with_timeout(0).unwrap() == 0 {
                    return;
                }
            }
            panic!("the loop never settles");
        }
        fn source(&self) -> Source {
            self.stdin.lock().unwrap().source
        }
        fn pending(&self) -> usize {
            self.stdin.lock().unwrap().pending.len()
        }
    }

    /// (read end, non-blocking write end)
    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors returned.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh and owned by nothing else; F_SETFL only
        // changes the write end's flags.
        unsafe {
            libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK);
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    /// Writes all of `bytes` into the pipe, running the loop whenever the
    /// pipe is full.
    fn write_through(rig: &mut Rig, w: &mut File, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match w.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            rig.settle();
        }
    }

    #[test]
    fn input_beyond_the_bound_is_dropped_and_the_escape_still_works() {
        let (r, mut w) = pipe();
        let mut rig = Rig::new(r.as_raw_fd(), 0);
        assert_eq!(rig.source(), Source::Watched);
        write_through(&mut rig, &mut w, &vec![b'x'; 4 * PENDING_LIMIT]);
        assert_eq!(rig.pending(), PENDING_LIMIT, "bounded");
        assert!(rig.guest.taken().is_empty());
        assert!(rig.requests.try_recv().is_err());
        write_through(&mut rig, &mut w, &[CTRL_C; 3]);
        assert_eq!(rig.requests.try_recv(), Ok(VmRequest::Escape));
        assert_eq!(rig.source(), Source::Closed);
    }

    #[test]
    fn pending_input_goes_in_as_the_guest_makes_room_then_eof() {
        let (r, mut w) = pipe();
        let mut rig = Rig::new(r.as_raw_fd(), 10);
        let text = b"the quick brown fox jumps over the lazy dog";
        write_through(&mut rig, &mut w, text);
        assert_eq!(rig.guest.taken(), &text[..10]);
        for _ in 0..10 {
            rig.guest.drain(7);
            rig.settle();
        }
        assert_eq!(rig.guest.taken(), text, "all of it, in order");
        assert_eq!(rig.pending(), 0);
        drop(w);
        rig.settle();
        assert_eq!(rig.source(), Source::Closed, "end of file");
    }

    #[test]
    fn a_regular_file_is_read_as_the_guest_takes_it_and_nothing_is_dropped() {
        let path = std::env::temp_dir().join(format!("launcher-stdin-{}", std::process::id()));
        // Letters only: Ctrl-C bytes would be the escape.
        let content: Vec<u8> = (0..3 * PENDING_LIMIT + 123)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut rig = Rig::new(file.as_raw_fd(), 1000);
        assert_eq!(rig.source(), Source::Unwatched, "epoll refuses files");
        assert_eq!(rig.guest.taken().len(), 1000);
        assert_eq!(rig.pending(), PENDING_LIMIT - 1000, "read only what fits");
        for _ in 0..10_000 {
            if rig.source() == Source::Closed && rig.pending() == 0 {
                break;
            }
            rig.guest.drain(4096);
            rig.settle();
        }
        assert_eq!(rig.guest.taken(), content);
        assert_eq!(rig.source(), Source::Closed);
    }

    #[test]
    fn dev_null_is_end_of_file_at_once() {
        let null = File::open("/dev/null").unwrap();
        let rig = Rig::new(null.as_raw_fd(), 10);
        assert_eq!(rig.source(), Source::Closed);
        assert!(rig.guest.taken().is_empty());
    }

    #[test]
    fn three_ctrl_c_within_a_second_escape() {
        let mut e = Escape::default();
        let t0 = Instant::now();
        assert!(!e.press(t0));
        assert!(!e.press(t0 + Duration::from_millis(300)));
        assert!(e.press(t0 + Duration::from_millis(600)));
        let mut e = Escape::default();
        assert!(!e.press(t0));
        assert!(!e.press(t0 + Duration::from_millis(900)));
        assert!(!e.press(t0 + Duration::from_millis(1500)));
    }
}
