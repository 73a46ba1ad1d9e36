//! How devices and vCPU threads ask the VM to change state.
//!
//! The launcher's main thread owns the receiving end and acts on the first
//! request that ends the run (power off, reboot, stop). Devices hold a cheap
//! clone of [`VmControl`]; sending never blocks, so a vCPU thread can ask
//! for a reboot from inside an I/O exit.

use std::sync::mpsc::{channel, Receiver, Sender};

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
pub struct VmControl(Sender<VmRequest>);

impl VmControl {
    pub fn new() -> (Self, Receiver<VmRequest>) {
        let (tx, rx) = channel();
        (Self(tx), rx)
    }

    /// Sends `req`; if the main thread is already gone the process is
    /// ending anyway, so a failed send is ignored.
    pub fn request(&self, req: VmRequest) {
        let _ = self.0.send(req);
    }
}
