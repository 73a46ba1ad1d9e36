//! PCI: configuration spaces, config mechanism #1, bus 0 with a host
//! bridge. Transports (virtio modern/legacy) build their functions from
//! [`config::ConfigSpace`]; the launcher places BARs before boot, as
//! firmware would, and [`bars::BarDecoder`] follows the guest when it
//! moves them or switches their decoding.

pub mod bars;
pub mod config;
pub mod msix;
pub mod root;

pub use bars::{AddressSpaces, BarDecoder};
pub use config::{Bar, BarKind, ConfigSpace, Identity};
pub use root::{HostBridge, PciFunction, PciRoot, SharedFunction};
