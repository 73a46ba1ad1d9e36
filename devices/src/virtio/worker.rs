//! One thread per virtqueue.
//!
//! The guest's notification for a queue is a write to that queue's notify
//! address, which KVM turns into a signal on an ioeventfd without leaving
//! the guest's vCPU. The queue's worker sleeps on that eventfd (and on the
//! device's backend descriptor, if it has one, and a stop eventfd), runs
//! the device's [`QueueHandler`] over the [`CheckedQueue`], and interrupts
//! the guest through [`Interrupt`] when the driver wants to hear about used
//! buffers. A rule the handler cannot get past (its `Err`) ends the worker
//! and is reported; findings the queue or handler recorded and got past
//! (`CheckedQueue::record`) are reported with their level's consequences
//! and the worker goes on.
//!
//! ```text
//! guest writes notify ─► KVM ioeventfd ─► worker: handler.process(queue) ─► irqfd ─► guest
//! ```
//!
//! A worker touches guest memory only from inside its queue's
//! [`Gate`](super::gate::Gate): it enters before calling the handler and
//! leaves after the interrupt; the handler steps out for host I/O that may
//! block. [`Worker::stop`] therefore never waits for ever: the transport
//! closes the activation's gates first, then gives the thread until a
//! deadline to end, and a thread still stuck in host I/O by then is left
//! behind. When its I/O returns it finds the gate closed and ends without
//! a word to the guest.

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::trace::{Detail, Value};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::device::QueueHandler;
use super::interrupt::{Interrupt, ISR_QUEUE, NO_VECTOR};
use super::queue::CheckedQueue;
use super::rules::Violation;

/// Where a worker reports a broken rule; the transport decides what follows.
pub type ViolationSink = Arc<dyn Fn(Violation) + Send + Sync>;

/// Where a worker reports that it cannot go on for a host reason (its
/// epoll failed): the transport marks the device as needing a reset, so
/// the guest hears of it instead of a queue that silently went dead.
pub type FailureSink = Arc<dyn Fn(String) + Send + Sync>;

/// Test hook: [`Worker::spawn`] of a worker whose name starts with this
/// fails, as if the host had no threads left (by name, so that tests
/// running at the same time are not hit).
#[cfg(test)]
pub static FAIL_SPAWN_OF: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

const KICK: u64 = 0;
const STOP: u64 = 1;
const BACKEND: u64 = 2;

/// A running worker; [`Worker::stop`] ends it.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    /// Disconnected once the thread has ended (its sender is dropped last).
    ended: mpsc::Receiver<()>,
}

/// What one worker needs.
pub struct WorkerSetup {
    pub name: String,
    /// The device's type, for [`crate::threads::started`].
    pub device_type: u32,
    pub queue: CheckedQueue,
    pub handler: Box<dyn QueueHandler>,
    pub kick: EventFd,
    pub vector: u16,
    pub interrupt: Arc<Interrupt>,
    pub violations: ViolationSink,
    pub failed: FailureSink,
    pub mem: GuestMemoryMmap,
}

impl Worker {
    pub fn spawn(setup: WorkerSetup) -> std::io::Result<Worker> {
        #[cfg(test)]
        if FAIL_SPAWN_OF
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .is_some_and(|prefix| setup.name.starts_with(prefix))
        {
            return Err(std::io::Error::other("test hook: spawn fails"));
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_rx = stop.try_clone()?;
        let (ended_tx, ended) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(setup.name.clone())
            .spawn(move || {
                run(setup, stop_rx);
                drop(ended_tx);
            })?;
        Ok(Worker {
            stop,
            thread: Some(thread),
            ended,
        })
    }

    /// Tells the thread to stop and waits for it until `deadline`. `Err`
    /// gives the worker back if its thread is still busy then (stuck in
    /// host I/O, whose gate the caller has closed): the caller may keep it
    /// to see it end later, or drop it to leave the thread to itself.
    pub fn stop(mut self, deadline: Instant) -> Result<(), Worker> {
        let _ = self.stop.write(1);
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.ended.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self),
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                Ok(())
            }
        }
    }

    /// Whether the thread has ended (a worker [`Worker::stop`] gave back).
    pub fn has_ended(&self) -> bool {
        matches!(self.ended.try_recv(), Err(mpsc::TryRecvError::Disconnected))
    }
}

fn run(mut s: WorkerSetup, stop: EventFd) {
    crate::threads::started(crate::threads::ThreadKind::QueueWorker(s.device_type));
    // A host failure is reported only while the activation lasts: after a
    // reset it would mark the next one as needing a reset.
    let fail = |s: &WorkerSetup, what: String| {
        if s.queue.gate().enter() {
            (s.failed)(what);
        }
    };
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => return fail(&s, format!("queue worker {}: no epoll: {e}", s.name)),
    };
    let mut fds = vec![(KICK, s.kick.as_raw_fd()), (STOP, stop.as_raw_fd())];
    if let Some(fd) = s.handler.backend_fd() {
        fds.push((BACKEND, fd));
    }
    for (token, fd) in fds {
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        ) {
            let what = format!("queue worker {}: cannot wait on fd {fd}: {e}", s.name);
            return fail(&s, what);
        }
    }
    let mut events = vec![EpollEvent::default(); 4];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(&s, format!("queue worker {}: epoll: {e}", s.name)),
        };
        for ev in &events[..n] {
            match ev.data() {
                STOP => return,
                KICK => {
                    let _ = s.kick.read();
                    let q = s.queue.index();
                    s.queue.tracer().event(
                        Detail::Request,
                        "notify",
                        &[("queue", Value::U(q.into()))],
                        format_args!("queue {q} notified"),
                    );
                }
                _ => {}
            }
        }
        // Closed: the device was reset and the stop is on its way.
        if !s.queue.gate().enter() {
            return;
        }
        let result = s.handler.process(&mut s.queue, &s.mem);
        // The handler stepped out for host I/O and the device was reset
        // meanwhile (or it stayed inside past a reset that gave up waiting
        // for it): nothing it found or finished concerns the guest now.
        if !s.queue.gate().may_answer() {
            return;
        }
        for warning in s.queue.take_findings() {
            (s.violations)(warning);
        }
        match result {
            Ok(true) => {
                if s.queue.needs_interrupt(&s.mem) {
                    let q = s.queue.index();
                    s.queue.tracer().event(
                        Detail::Request,
                        "interrupt",
                        &[
                            ("queue", Value::U(q.into())),
                            ("vector", Value::U(s.vector.into())),
                        ],
                        format_args!(
                            "queue {q} interrupts the driver ({})",
                            if s.vector == NO_VECTOR {
                                "INTx".to_string()
                            } else {
                                format!("MSI-X vector {}", s.vector)
                            }
                        ),
                    );
                    s.interrupt.signal(s.vector, ISR_QUEUE);
                }
            }
            Ok(false) => {}
            Err(v) => {
                (s.violations)(v.on_queue(s.queue.index()));
                return;
            }
        }
        s.queue.gate().leave();
    }
}
