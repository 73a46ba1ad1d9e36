//! A queue's I/O threads: the requests of one notification in flight
//! together (see the handler's module docs for who does what).
//!
//! The worker starts them lazily, from its own thread, when a
//! notification brings more jobs than there are idle threads, up to
//! [`IO_THREADS`]; each is named `<worker>-io<N>` (`blk-02-q0-io1`).
//! Dropping the pool (the handler goes with its worker) lets them finish
//! the job they hold, drops the queued ones and joins them, so they end
//! with the worker; one stuck in host I/O keeps the worker waiting, as
//! the worker's own stuck call would.
//!
//! What a thread does, for a seccomp allow-list: `futex` (the job queue,
//! the completion channel and the gate), `pread64`, `pwritev`,
//! `fdatasync`, `fallocate`, `pwrite64` (write-zeroes where the file
//! system can neither punch nor zero a range), `write` to stderr (a
//! warning), `mmap`/`munmap`/`mremap`/`madvise`/`brk` (the allocator: a
//! read's bounce buffer grows to 1 MiB, the request's Strings),
//! `sched_yield`, and at its start and end what `std::thread` does
//! (`mmap`/`mprotect` of its stack, `rseq`, `set_robust_list`,
//! `sigaltstack`, `prctl(PR_SET_NAME)`, `munmap`, `exit`); the test hook
//! (`--features test-hooks` only) opens and reads a FIFO.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;

use super::{execute, Disk, Job, Outcome, IO_THREADS};
use crate::virtio::rules::Violation;

/// A job back from a thread, with how it ended.
pub(super) type Done = (Job, Result<Outcome, Violation>);

pub(super) struct Pool {
    shared: Arc<Shared>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    disk: Arc<Disk>,
    mem: GuestMemoryMmap,
    /// The worker's thread name, which the I/O threads' names extend.
    name: String,
    /// Whether starting a thread failed once (said once; the worker then
    /// runs what no thread takes).
    spawn_failed: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

struct State {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    closing: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pool {
    /// No thread yet; called on the worker's thread, whose name it keeps.
    pub(super) fn new(disk: Arc<Disk>, mem: GuestMemoryMmap) -> Pool {
        let (done_tx, done_rx) = mpsc::channel();
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    jobs: VecDeque::new(),
                    idle: 0,
                    closing: false,
                }),
                work: Condvar::new(),
            }),
            done_tx,
            done_rx,
            threads: Vec::new(),
            disk,
            mem,
            name: std::thread::current()
                .name()
                .unwrap_or("virtio-blk")
                .to_string(),
            spawn_failed: false,
        }
    }

    /// Queues `job` for the threads, starting one more if all are busy.
    pub(super) fn push(&mut self, job: Job) {
        let short = {
            let mut s = self.shared.state();
            s.jobs.push_back(job);
            s.jobs.len() > s.idle
        };
        self.shared.work.notify_one();
        if short && self.threads.len() < IO_THREADS && !self.spawn_failed {
            self.spawn();
        }
    }

    fn spawn(&mut self) {
        let name = format!("{}-io{}", self.name, self.threads.len() + 1);
        let shared = self.shared.clone();
        let done = self.done_tx.clone();
        let disk = self.disk.clone();
        let mem = self.mem.clone();
        match std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || serve(&shared, &done, &disk, &mem))
        {
            Ok(t) => self.threads.push(t),
            Err(e) => {
                self.spawn_failed = true;
                log::warn!(
                    "{name}: cannot start an I/O thread ({e}); the queue's requests run {} at a time",
                    self.threads.len() + 1
                );
            }
        }
    }

    /// A queued job no thread has taken yet, for the worker to run.
    pub(super) fn take(&self) -> Option<Job> {
        self.shared.state().jobs.pop_front()
    }

    /// Waits for the next job a thread finished.
    pub(super) fn done(&self) -> Option<Done> {
        self.done_rx.recv().ok()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut s = self.shared.state();
            s.closing = true;
            s.jobs.clear();
        }
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One I/O thread: takes jobs until the pool closes. A job runs inside
/// its own gate into the activation, or not at all once it is closed.
fn serve(shared: &Shared, done: &mpsc::Sender<Done>, disk: &Disk, mem: &GuestMemoryMmap) {
    crate::threads::started(crate::threads::ThreadKind::BlkIo);
    let mut bounce = Vec::new();
    loop {
        let mut job = {
            let mut s = shared.state();
            loop {
                if s.closing {
                    return;
                }
                if let Some(job) = s.jobs.pop_front() {
                    break job;
                }
                s.idle += 1;
                s = shared.work.wait(s).unwrap_or_else(|e| e.into_inner());
                s.idle -= 1;
            }
        };
        let result = match job.gate.take() {
            Some(gate) if gate.enter() => execute(&job, disk, mem, &gate, &mut bounce),
            // Reset before the job started: it is not done at all.
            _ => Ok(Outcome::revoked()),
        };
        if done.send((job, result)).is_err() {
            return;
        }
    }
}
