//! PCI: configuration spaces, config mechanism #1, bus 0 with a host
//! bridge. Transports (virtio modern/legacy) build their functions from
//! [`config::ConfigSpace`]; the launcher places BARs before boot, as
//! firmware would.

pub mod config;
pub mod msix;
pub mod root;

pub use config::{Bar, BarKind, ConfigSpace, Identity};
pub use root::{HostBridge, PciFunction, PciRoot, SharedFunction};
