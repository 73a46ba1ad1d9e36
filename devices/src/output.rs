//! The consoles' way to the launcher's stdout: a bounded buffer and one
//! writer thread (`console-out`) that owns the host side. The streamed
//! trace file (`crate::trace`) uses the same machinery (`trace-out`).
//!
//! Guest console bytes arrive on vCPU threads (the 8250) and on a queue
//! worker (virtio-console's transmitq), often with a device lock held. A
//! `write(2)` there would let a stdout nobody reads (`launcher … | (sleep
//! 1000)`) stall the vCPU, the stdin subscriber waiting on the same lock
//! (and with it the Ctrl-C escape) and a device reset joining the worker.
//! So producers only copy into [`Output`]'s buffer under a short lock, and
//! the writer thread does the blocking writes.
//!
//! The two consoles use the bound differently. The 8250 has no flow
//! control towards the guest: what does not fit is dropped and counted
//! ([`SerialSink`]), said once when it starts and in total at exit. A
//! virtio driver waits for its transmit buffers to come back, so
//! virtio-console holds them until their bytes have been *written*
//! ([`Output::push`] returns where a buffer's bytes end, [`Output::written`]
//! says how far the writer got, [`Output::progress`] wakes the worker):
//! backpressure, and a slow but live reader (`| less`) loses nothing.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// Bytes waiting for the writer at most (plus one chunk being written).
pub const CAPACITY: usize = 64 * 1024;
/// The most the writer takes out of the buffer for one `write`.
const CHUNK: usize = 16 * 1024;

/// A handle on the console output; clones share one buffer and writer.
pub struct Output {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes arrive or the last handle goes: wakes the writer.
    data: Condvar,
    /// Signalled after every write: wakes [`Output::drain`].
    done: Condvar,
    /// Written after every write: wakes virtio-console's transmit worker,
    /// which holds buffers until their bytes are out.
    progress: EventFd,
    capacity: usize,
    handles: AtomicUsize,
}

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// Bytes taken out of `buf` by the writer and not yet written.
    in_flight: usize,
    /// Bytes ever accepted: the position just after the last one.
    accepted: u64,
    /// Bytes written out (or discarded once the output failed).
    written: u64,
    /// 8250 bytes that found no room.
    dropped: u64,
    /// A write failed (the reader went away: EPIPE, or EIO): from then on
    /// bytes are accepted and discarded, so no guest waits for them.
    failed: bool,
    /// The last handle is gone: the writer ends once `buf` is empty.
    closed: bool,
    /// The writer sleeps on `data`: only then is a wake-up (a futex call
    /// per 8250 byte otherwise) worth making.
    idle: bool,
}

/// What [`Output::drain`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Bytes still unwritten when the wait gave up.
    pub unwritten: u64,
    /// 8250 bytes dropped for want of room, over the whole run.
    pub dropped: u64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking thread ends the process (the launcher's panic hook); the
    // state itself stays consistent between statements.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Output {
    /// The launcher's stdout (a descriptor of its own, close-on-exec), so
    /// no write goes through std's stdout lock, which a blocked writer
    /// would hold while the process exits.
    /// A closed stdout (`>&-`) discards the output, as writes to it would.
    pub fn stdout() -> std::io::Result<Output> {
        use std::os::fd::AsFd;
        let sink: Box<dyn Write + Send> = match std::io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => Box::new(std::fs::File::from(fd)),
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => Box::new(std::io::sink()),
            Err(e) => return Err(e),
        };
        Self::spawn(sink, CAPACITY)
    }

    /// Starts the writer thread on `sink`, with room for `capacity` bytes.
    pub fn spawn(sink: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Output> {
        Self::spawn_named("console-out", sink, capacity)
    }

    /// [`Output::spawn`] with the writer thread called `name`.
    pub fn spawn_named(
        name: &str,
        mut sink: Box<dyn Write + Send>,
        capacity: usize,
    ) -> std::io::Result<Output> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            data: Condvar::new(),
            done: Condvar::new(),
            progress: EventFd::new(libc::EFD_NONBLOCK)?,
            capacity,
            handles: AtomicUsize::new(1),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::threads::started(crate::threads::ThreadKind::Writer);
                s.write_out(&mut *sink)
            })?;
        Ok(Output { shared })
    }

    /// Takes as many of `bytes` as there is room for, never blocking.
    /// Returns how many it took and the output position just after them:
    /// once [`Output::written`] reaches it, they are out.
    pub fn push(&self, bytes: &[u8]) -> (usize, u64) {
        let mut st = lock(&self.shared.state);
        if st.failed {
            // Nobody is reading any more: take everything, write nothing.
            st.accepted += bytes.len() as u64;
            st.written = st.accepted;
            return (bytes.len(), st.accepted);
        }
        let room = self
            .shared
            .capacity
            .saturating_sub(st.buf.len() + st.in_flight);
        let n = room.min(bytes.len());
        st.buf.extend(&bytes[..n]);
        st.accepted += n as u64;
        let end = st.accepted;
        let wake = n > 0 && st.idle;
        drop(st);
        if wake {
            self.shared.data.notify_one();
        }
        (n, end)
    }

    /// Takes all of `bytes` or, if they do not fit, none (a trace line is
    /// whole or absent).
    pub fn push_whole(&self, bytes: &[u8]) -> bool {
        let fits = {
            let st = lock(&self.shared.state);
            st.failed || st.buf.len() + st.in_flight + bytes.len() <= self.shared.capacity
        };
        // Only the trace writer pushes into its output, so the room seen
        // is still there.
        fits && self.push(bytes).0 == bytes.len()
    }

    /// Free room in the buffer now (another producer may take it first).
    pub fn room(&self) -> usize {
        let st = lock(&self.shared.state);
        if st.failed {
            return usize::MAX;
        }
        self.shared
            .capacity
            .saturating_sub(st.buf.len() + st.in_flight)
    }

    /// How many bytes have been written out (or discarded after a failure).
    pub fn written(&self) -> u64 {
        lock(&self.shared.state).written
    }

    /// Readable after the writer made progress (non-blocking eventfd; the
    /// reader clears it).
    pub fn progress(&self) -> &EventFd {
        &self.shared.progress
    }

    /// The 8250's side: drops what does not fit.
    pub fn serial_sink(&self) -> SerialSink {
        SerialSink(self.clone())
    }

    /// Waits until everything accepted so far is written, giving up once
    /// the writer made no progress for `stall` (a reader that stopped
    /// reading must not keep the launcher from exiting).
    pub fn drain(&self, stall: Duration) -> Drained {
        let mut st = lock(&self.shared.state);
        let target = st.accepted;
        let mut last = st.written;
        let mut deadline = Instant::now() + stall;
        while st.written < target {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .done
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if st.written != last {
                last = st.written;
                deadline = Instant::now() + stall;
            }
        }
        Drained {
            unwritten: target.saturating_sub(st.written),
            dropped: st.dropped,
        }
    }
}

impl Clone for Output {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Output {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            lock(&self.shared.state).closed = true;
            self.shared.data.notify_one();
        }
    }
}

impl Shared {
    /// The `console-out` thread: takes a chunk, writes it without the lock
    /// held, counts it written, wakes whoever waits for progress.
    fn write_out(&self, sink: &mut dyn Write) {
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            let mut st = lock(&self.state);
            while st.buf.is_empty() && !st.closed {
                st.idle = true;
                st = self.data.wait(st).unwrap_or_else(|e| e.into_inner());
                st.idle = false;
            }
            if st.buf.is_empty() {
                return;
            }
            let n = st.buf.len().min(CHUNK);
            chunk.clear();
            chunk.extend(st.buf.drain(..n));
            st.in_flight = n;
            drop(st);

            let result = sink.write_all(&chunk).and_then(|()| sink.flush());

            let mut st = lock(&self.state);
            st.in_flight = 0;
            st.written += n as u64;
            if let Err(e) = result {
                if !st.failed {
                    log::warn!(
                        "console output: cannot write to stdout ({e}); discarding it from now on"
                    );
                }
                st.failed = true;
                let discarded = st.buf.len() as u64;
                st.buf.clear();
                st.written += discarded;
            }
            drop(st);
            self.done.notify_all();
            // An eventfd counter cannot overflow from one wake-up per write.
            let _ = self.progress.write(1);
        }
    }
}

/// The 8250's writer: takes what fits, drops and counts the rest (the
/// UART has no way to tell the guest to wait).
pub struct SerialSink(Output);

impl Write for SerialSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let (n, _) = self.0.push(bytes);
        if n < bytes.len() {
            let lost = (bytes.len() - n) as u64;
            let first = {
                let mut st = lock(&self.0.shared.state);
                st.dropped += lost;
                st.dropped == lost
            };
            if first {
                log::warn!(
                    "8250 console: stdout is not being read; output beyond {} KiB is dropped (counted, total at exit)",
                    self.0.shared.capacity / 1024
                );
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Outputs whose writes the test lets through one at a time.
#[cfg(test)]
pub mod testing {
    use super::*;
    use std::sync::mpsc;

    /// A sink that blocks each write until the test lets it through.
    struct Gate {
        go: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.go
                .recv()
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub fn gated(capacity: usize) -> (Output, mpsc::Sender<()>, Arc<Mutex<Vec<u8>>>) {
        let (tx, rx) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = Output::spawn(
            Box::new(Gate {
                go: rx,
                out: out.clone(),
            }),
            capacity,
        )
        .unwrap();
        (o, tx, out)
    }

    /// Waits (bounded) until the writer has written `n` bytes.
    pub fn wait_written(o: &Output, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while o.written() < n {
            assert!(Instant::now() < deadline, "writer stuck at {}", o.written());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{gated, wait_written};
    use super::*;

    #[test]
    fn push_never_blocks_and_takes_only_what_fits() {
        let (o, go, out) = gated(8);
        assert_eq!(o.push(b"hello"), (5, 5));
        assert_eq!(o.push(b"world"), (3, 8), "room for three more");
        assert_eq!(o.push(b"!"), (0, 8));
        assert_eq!(o.room(), 0);
        assert_eq!(o.written(), 0, "the writer is held");
        go.send(()).unwrap();
        wait_written(&o, 8);
        assert_eq!(&*out.lock().unwrap(), b"hellowor");
        assert!(o.progress().read().unwrap() >= 1);
        assert_eq!(o.room(), 8);
    }

    #[test]
    fn the_serial_sink_drops_and_counts_what_does_not_fit() {
        let (o, go, out) = gated(4);
        let mut s = o.serial_sink();
        assert_eq!(s.write(b"abcdef").unwrap(), 6, "the UART never waits");
        assert_eq!(s.write(b"gh").unwrap(), 2);
        go.send(()).unwrap();
        let d = o.drain(Duration::from_secs(10));
        assert_eq!(
            d,
            Drained {
                unwritten: 0,
                dropped: 4
            }
        );
        assert_eq!(&*out.lock().unwrap(), b"abcd");
    }

    #[test]
    fn drain_gives_up_on_a_stalled_reader_and_waits_for_a_live_one() {
        let (o, go, _out) = gated(64);
        o.push(b"first");
        let t = Instant::now();
        let d = o.drain(Duration::from_millis(50));
        assert_eq!(d.unwritten, 5);
        assert!(t.elapsed() < Duration::from_secs(5));
        // A live (if slow) reader: each write comes 30 ms after the last,
        // well within the stall time, so drain waits for all of them.
        let feeder = std::thread::spawn(move || {
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(30));
                if go.send(()).is_err() {
                    break;
                }
            }
        });
        o.push(b"second");
        o.push(b"third");
        let d = o.drain(Duration::from_secs(5));
        assert_eq!(d.unwritten, 0);
        feeder.join().unwrap();
    }

    #[test]
    fn a_failed_output_discards_so_nobody_waits() {
        let (o, go, _out) = gated(4);
        o.push(b"ab");
        drop(go); // the next write fails with EPIPE
        wait_written(&o, 2);
        assert_eq!(o.push(b"0123456789"), (10, 12), "taken and discarded");
        assert_eq!(o.written(), 12);
        assert_eq!(o.drain(Duration::from_millis(10)).unwritten, 0);
    }
}
