//! Fencing a device reset off from work still in flight.
//!
//! A reset must not wait for ever on a worker that is stuck in host I/O
//! (a disk image on a hung network file system), yet once the reset is
//! done nothing of the old activation may touch guest memory: the driver
//! owns its buffers and rings again and may already have handed them to
//! the re-initialised device. So each activation of a device is one
//! [`Generation`], and each of its queue workers holds a [`Gate`] into it:
//!
//! - A worker is *inside* its gate whenever it may read or write guest
//!   memory, use the used ring or interrupt the guest (the worker loop
//!   enters before calling the handler and leaves after signalling).
//! - Host I/O that can block happens *outside*: a handler steps out with
//!   [`Gate::outside`] around `pread`, `pwrite`, `fdatasync`, and learns on
//!   the way back in whether the device was reset meanwhile
//!   ([`Revoked`]); it then drops the request without a word to the guest.
//!   So block reads that may wait for the disk land in a private bounce
//!   buffer and are copied into guest memory only after re-entering (reads
//!   the page cache holds go straight into guest memory from inside; see
//!   the block handler's docs for the rare one the kernel makes wait).
//! - The reset [`Generation::close`]s the generation: from then on no gate
//!   lets anyone in, and `close` waits (bounded) until every worker that
//!   was inside has left. When it returns `true`, guest memory is the
//!   driver's alone, whatever the stuck workers do later. When it gives
//!   up, a modern transport keeps the reset unfinished for the driver
//!   until [`Generation::drained`], and a worker still inside a closed
//!   generation answers nobody ([`Gate::may_answer`]).
//!
//! ```text
//!  worker:  enter ── pop, parse ── outside(pread) ── enter? ── copy, used ring, irq ── leave
//!                                        │                │
//!  vCPU reset:            close ─────────┴─ (waits only for  └─ Revoked: result discarded
//!                                            workers inside)
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One activation of a device, from DRIVER_OK to the next reset.
pub struct Generation {
    /// "virtio-blk 00:02.0", for messages.
    label: String,
    /// Changed under `state`'s lock (so `enter` and `close` see one
    /// order), read without it: workers ask before every answer.
    open: AtomicBool,
    state: Mutex<State>,
    left: Condvar,
}

struct State {
    /// Workers inside a gate now.
    inside: usize,
}

impl Generation {
    pub fn new(label: impl Into<String>) -> Arc<Generation> {
        Arc::new(Generation {
            label: label.into(),
            open: AtomicBool::new(true),
            state: Mutex::new(State { inside: 0 }),
            left: Condvar::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Whether no worker is inside any more (a close that timed out may
    /// still be waited for this way, without blocking).
    pub fn drained(&self) -> bool {
        self.state().inside == 0
    }

    /// Lets nobody in any more and waits, at most `wait`, for the workers
    /// inside to leave. Whether none is inside: only then is guest memory
    /// safe from this generation (a worker still inside after `wait` is in
    /// a call the kernel made wait, such as a cached block read, or in a
    /// handler that blocked without stepping out, a handler bug; see
    /// [`Generation::drained`]).
    pub fn close(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut s = self.state();
        self.open.store(false, Ordering::SeqCst);
        while s.inside > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .left
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// A worker's way into its [`Generation`]: one per queue worker, carried
/// by its [`CheckedQueue`](super::queue::CheckedQueue).
pub struct Gate {
    generation: Arc<Generation>,
    queue: u16,
    /// Whether this worker is inside now; only its own thread changes it.
    inside: AtomicBool,
}

/// The device was reset while the worker was outside its gate: what it
/// was doing is no longer anybody's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked;

impl Gate {
    /// Queue `queue`'s gate into `generation`; the worker starts outside.
    pub fn new(generation: Arc<Generation>, queue: u16) -> Gate {
        Gate {
            generation,
            queue,
            inside: AtomicBool::new(false),
        }
    }

    /// A gate already inside a generation nobody closes: for handlers run
    /// without a transport (unit tests, fuzzing).
    pub fn always_open() -> Gate {
        Gate {
            generation: Generation::new("no transport"),
            queue: 0,
            inside: AtomicBool::new(false),
        }
        .entered()
    }

    /// Another gate into this gate's generation, outside to begin with:
    /// for a helper thread (virtio-blk's I/O threads) that touches guest
    /// memory on the worker's behalf, so that a reset waits for it too.
    pub fn sibling(&self) -> Gate {
        Gate::new(self.generation.clone(), self.queue)
    }

    fn entered(self) -> Gate {
        self.enter();
        self
    }

    /// Goes in if the generation is still open; whether it is inside.
    pub fn enter(&self) -> bool {
        if self.is_inside() {
            return true;
        }
        let mut s = self.generation.state();
        if !self.generation.is_open() {
            return false;
        }
        s.inside += 1;
        self.inside.store(true, Ordering::SeqCst);
        true
    }

    /// Goes out, letting a waiting [`Generation::close`] return.
    pub fn leave(&self) {
        if !self.is_inside() {
            return;
        }
        let mut s = self.generation.state();
        s.inside -= 1;
        self.inside.store(false, Ordering::SeqCst);
        self.generation.left.notify_all();
    }

    /// Whether this worker may touch guest memory now.
    pub fn is_inside(&self) -> bool {
        self.inside.load(Ordering::SeqCst)
    }

    /// Whether the worker may still answer the driver (used ring, status
    /// bytes, interrupts): inside, and the generation not closed. Only a
    /// worker that stayed inside past a close that gave up waiting for it
    /// is inside a closed generation; what it finishes reaches nobody.
    pub fn may_answer(&self) -> bool {
        self.is_inside() && self.generation.is_open()
    }

    /// Runs `io`, which may block on the host, outside the gate, and goes
    /// back in. `Err(Revoked)` if the device was reset meanwhile (or the
    /// worker was not inside to begin with, so `io` did not run): the
    /// caller must then drop what it was doing, its result included, and
    /// touch neither guest memory nor the queue.
    pub fn outside<T>(&self, io: impl FnOnce() -> T) -> Result<T, Revoked> {
        if !self.is_inside() {
            return Err(Revoked);
        }
        self.leave();
        let result = io();
        if self.enter() {
            return Ok(result);
        }
        let label = &self.generation.label;
        crate::guestlog::warn(
            &format!("{label} late completion"),
            format_args!(
                "{label}: queue {}: host I/O finished after the device was reset; its result is discarded",
                self.queue
            ),
        );
        Err(Revoked)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.leave();
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("generation", &self.generation.label)
            .field("queue", &self.queue)
            .field("inside", &self.is_inside())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn close_waits_for_a_worker_inside_and_shuts_the_door() {
        let g = Generation::new("gate-test a");
        let gate = Gate::new(g.clone(), 0);
        assert!(gate.enter());
        let (tx, rx) = mpsc::channel();
        let closer = {
            let g = g.clone();
            std::thread::spawn(move || {
                let r = g.close(Duration::from_secs(10));
                tx.send(()).unwrap();
                r
            })
        };
        // Still inside: close cannot have returned.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        gate.leave();
        assert!(closer.join().unwrap(), "closed once the worker left");
        assert!(!gate.enter(), "nobody gets in after a close");
        assert!(!g.is_open());
    }

    #[test]
    fn close_gives_up_after_its_wait() {
        let g = Generation::new("gate-test b");
        let gate = Gate::new(g.clone(), 0);
        assert!(gate.enter());
        let t = Instant::now();
        assert!(!g.close(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert!(gate.is_inside(), "close does not throw anyone out");
    }

    /// The reset does not wait for I/O outside the gate, and the I/O's
    /// owner learns of the reset when it returns.
    #[test]
    fn io_outside_does_not_hold_up_a_close_and_is_revoked() {
        let g = Generation::new("gate-test c");
        let gate = Gate::new(g.clone(), 3);
        assert!(gate.enter());
        let (release, blocked) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            gate.outside(|| {
                started_tx.send(()).unwrap();
                blocked.recv().unwrap();
            })
        });
        started.recv().unwrap();
        let t = Instant::now();
        assert!(g.close(Duration::from_secs(10)));
        assert!(t.elapsed() < Duration::from_secs(1));
        release.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), Err(Revoked));
    }

    #[test]
    fn io_outside_an_open_generation_goes_back_in() {
        let gate = Gate::always_open();
        assert!(gate.is_inside());
        assert_eq!(gate.outside(|| 7), Ok(7));
        assert!(gate.is_inside());
        let outside = Gate::new(Generation::new("gate-test d"), 0);
        assert_eq!(
            outside.outside(|| 7),
            Err(Revoked),
            "not inside to begin with"
        );
    }

    #[test]
    fn a_dropped_gate_leaves() {
        let g = Generation::new("gate-test e");
        let gate = Gate::new(g.clone(), 0);
        assert!(gate.enter());
        drop(gate);
        assert!(g.close(Duration::ZERO));
    }
}
