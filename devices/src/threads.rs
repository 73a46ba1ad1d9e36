//! What each thread the devices start is, told to whoever wants to know.
//!
//! The devices start threads of their own (a queue's worker at DRIVER_OK,
//! the legacy transport's kick relay, the console and trace writers). The
//! launcher narrows each thread's system calls to what its kind needs
//! (`src/seccomp.rs`); the devices know nothing of that policy, only that
//! every thread they start calls [`started`] with its kind first, before
//! it touches anything the guest controls.

use std::sync::OnceLock;

/// What a thread does, as far as its system calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A virtqueue's worker; the device type (virtio 1.0 §5: 1 net, 2
    /// block, 3 console, 4 rng; vmmci's id otherwise).
    QueueWorker(u32),
    /// One of a virtio-blk queue's I/O threads, started by its worker:
    /// requests that may wait for the disk.
    BlkIo,
    /// The legacy transport's relay of one port notification to several
    /// queues' workers.
    KickRelay,
    /// A writer thread of `output::Output`: the console's stdout or the
    /// trace file.
    Writer,
}

static HOOK: OnceLock<fn(ThreadKind)> = OnceLock::new();

/// Has `hook` called at the start of every thread the devices start (once
/// per process; later calls are ignored).
pub fn set_start_hook(hook: fn(ThreadKind)) {
    let _ = HOOK.set(hook);
}

/// Called first thing by every thread the devices start.
pub fn started(kind: ThreadKind) {
    if let Some(hook) = HOOK.get() {
        hook(kind);
    }
}
