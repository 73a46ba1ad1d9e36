//! Emulated devices for the launcher.
//!
//! Everything a guest can touch lives here, apart from KVM itself: the I/O
//! buses that vCPU exits are dispatched to ([`bus`]), the legacy PC devices
//! Linux expects to find ([`legacy`]), and the way a device asks the VM to
//! end, reboot or stop ([`control`]). Devices never call KVM; they get
//! eventfds for interrupts and send [`control::VmRequest`]s for life-cycle
//! changes, so they can be unit-tested without `/dev/kvm`.

pub mod bus;
pub mod control;
pub mod guestlog;
pub mod legacy;
pub mod output;
pub mod pci;
pub mod test_hooks;
pub mod threads;
pub mod trace;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use control::{Requests, VmControl, VmRequest};
