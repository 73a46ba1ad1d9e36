//! virtio: devices, the transports that expose them over PCI, the checked
//! virtqueue layer, per-queue workers, and the table of strict rules.

pub mod block;
pub mod console;
pub mod device;
pub mod gate;
pub mod interrupt;
pub mod net;
pub mod queue;
pub mod rng;
pub mod rules;
pub mod transport;
pub mod vmmci;
pub mod worker;

pub use device::{QueueHandler, VirtioDevice};
pub use rules::{Level, Rule, Verdict, Violation};
