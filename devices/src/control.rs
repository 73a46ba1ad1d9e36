//! How devices and vCPU threads ask the VM to change state.
//!
//! The launcher's event loop owns the receiving end ([`Requests`]) and acts
//! on the first request that ends the run (power off, reboot, stop).
//! Devices hold a cheap clone of [`VmControl`]; sending never blocks, so a
//! vCPU thread can ask for a reboot from inside an I/O exit. Each request
//! also signals an eventfd, which is how the loop (an epoll) hears of it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Something only the VM as a whole can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest powered itself off.
    Poweroff,
    /// The guest (or the host, through a signal) asked for a reboot.
    Reboot { reason: String },
    /// A host signal (SIGTERM, SIGINT, ...) that stops the guest at once.
    Signal(i32),
    /// A guest driver broke a virtio rule (strict mode); `report` is the
    /// one-line "bad driver" message.
    BadDriver { report: String },
    /// The user typed the console escape (three Ctrl-C within a second).
    Escape,
    /// The guest did something the launcher cannot go on from: an
    /// instruction the host cannot emulate, a failed VM entry.
    GuestCrash { message: String },
    /// Something on the host side failed while the guest was running.
    HostError { message: String },
}

/// The sending side, handed to every device and vCPU thread.
#[derive(Debug, Clone)]
pub struct VmControl {
    tx: Sender<VmRequest>,
    wake: Arc<EventFd>,
    /// Set by the first request: every request ends the run, so the vCPUs
    /// stop entering the guest at once (the guest's next instruction after
    /// a bad access never runs).
    ending: Arc<AtomicBool>,
}

/// The receiving side: readable (as a descriptor) once a request waits.
#[derive(Debug)]
pub struct Requests {
    rx: Receiver<VmRequest>,
    wake: Arc<EventFd>,
}

impl VmControl {
    /// A connected pair; fails only if no eventfd can be made.
    pub fn new() -> std::io::Result<(Self, Requests)> {
        let (tx, rx) = channel();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        Ok((
            Self {
                tx,
                wake: wake.clone(),
                ending: Arc::new(AtomicBool::new(false)),
            },
            Requests { rx, wake },
        ))
    }

    /// Sends `req` and wakes the receiver. Never blocks: the channel is
    /// unbounded and the eventfd non-blocking (its counter cannot fill up
    /// from one write per request). If the receiver is already gone the
    /// process is ending anyway, so a failed send is ignored.
    pub fn request(&self, req: VmRequest) {
        self.ending.store(true, Ordering::SeqCst);
        let _ = self.tx.send(req);
        let _ = self.wake.write(1);
    }

    /// Whether a request that ends the run was made: a vCPU must not enter
    /// the guest again.
    pub fn ending(&self) -> bool {
        self.ending.load(Ordering::SeqCst)
    }
}

impl Requests {
    /// Clears the wake-up signal. Call it before draining with
    /// [`Requests::try_recv`], so a request sent in between is not missed
    /// (it leaves the descriptor readable for the next round).
    pub fn clear(&self) {
        let _ = self.wake.read();
    }

    /// The next request, without waiting.
    pub fn try_recv(&self) -> Result<VmRequest, TryRecvError> {
        self.rx.try_recv()
    }
}

impl AsRawFd for Requests {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_request_makes_the_receiver_readable_until_cleared() {
        let (control, requests) = VmControl::new().unwrap();
        assert!(!readable(requests.as_raw_fd()));
        control.clone().request(VmRequest::Poweroff);
        control.request(VmRequest::Escape);
        assert!(readable(requests.as_raw_fd()));
        requests.clear();
        assert!(!readable(requests.as_raw_fd()));
        assert_eq!(requests.try_recv(), Ok(VmRequest::Poweroff));
        assert_eq!(requests.try_recv(), Ok(VmRequest::Escape));
        assert!(requests.try_recv().is_err());
    }
}
