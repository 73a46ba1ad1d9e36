//! virtio: the strict-check rules now; transports, virtqueue checking and
//! devices build on them.

pub mod rules;

pub use rules::{Rule, Violation};
