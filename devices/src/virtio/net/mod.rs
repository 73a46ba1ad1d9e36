//! virtio-net (device type 1, virtio 1.0 §5.1): the guest's network card,
//! wired to a Linux tap on the host.
//!
//! ```text
//! host stack ─► tap ─read─► receiveq (0) handler ─► guest's writable buffers
//! guest's readable buffers ─► transmitq (1) handler ─write─► tap ─► host stack
//! ```
//!
//! This module says who the device is — feature bits, the configuration
//! space (MAC, link status, one queue pair), the MAC itself — and, when the
//! driver sets DRIVER_OK, tells the tap which offloads the guest accepted
//! and hands out one handler per queue ([`handler`]). The frames themselves
//! come from and go to a [`FrameBackend`]: in the launcher a [`tap::Tap`],
//! in tests a socket pair. Frames on the backend carry the same 12-byte
//! `struct virtio_net_hdr_mrg_rxbuf` the guest uses, so checksum and
//! segmentation offload information passes through untouched.

mod handler;
mod header;
pub mod tap;

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_config::VIRTIO_F_ANY_LAYOUT;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6,
    VIRTIO_NET_F_HASH_REPORT, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_NOTF_COAL,
    VIRTIO_NET_F_RSC_EXT, VIRTIO_NET_F_RSS, VIRTIO_NET_F_SPEED_DUPLEX, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_F_VQ_NOTF_COAL, VIRTIO_NET_S_LINK_UP,
};

use super::device::{feature, ConfigField, QueueHandler, VirtioDevice};
use super::rules::{Rule, Violation};
use crate::bus::lock;
use handler::{Findings, Negotiated, RxGate, RxQueue, TxQueue};
pub use tap::{Tap, TapError};

/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_mrg_rxbuf`: what virtio 1.0 always uses, and what
/// the tap is set to add and expect.
pub const VNET_HDR_LEN: usize = 12;
/// The legacy header without `num_buffers` (no VERSION_1, no MRG_RXBUF).
const LEGACY_HDR_LEN: usize = 10;
/// Largest frame a backend read can return: the header and a 64 KiB GSO
/// packet with its Ethernet header (the tap's own limit).
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65550;
/// `mac`, `status`, `max_virtqueue_pairs`; reads beyond return zeros.
const CONFIG_LEN: usize = 10;

/// Where Ethernet frames come from and go to. Each frame starts with the
/// 12-byte virtio-net header. Both calls must not block: the queue worker
/// waits for [`as_raw_fd`](FrameBackend::as_raw_fd) to be readable instead.
pub trait FrameBackend: Send {
    /// One frame into `buf`, or `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// `frame` as one frame; `WouldBlock` when the backend is full.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Readable whenever a frame is waiting.
    fn as_raw_fd(&self) -> RawFd;
    /// The `TUN_F_*` offloads the guest accepted; backends that never
    /// produce offloaded frames ignore it.
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// The backend, shared by the receive and transmit handlers (each holds
/// the lock only for one non-blocking read or write).
type SharedBackend = Arc<Mutex<Box<dyn FrameBackend>>>;

/// Device features offered (the transport adds VERSION_1). ANY_LAYOUT
/// matters only to legacy drivers, which see bits 0..32: it lets them put
/// the header and the packet in one buffer, as Linux does (its
/// `features_legacy` accepts it; a modern Linux driver never does), where
/// without it the header must be alone in the first descriptor (§5.1.6.6,
/// and §6.3: transitional devices offer it).
pub const FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_UFO)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_UFO)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_F_ANY_LAYOUT)
    | feature::EVENT_IDX;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// §5.1.3.1, the features that require another: accepting the first
/// without the second is `FeatureMissingPrerequisite` (§2.2.1), which the
/// transport checks when the driver sets FEATURES_OK (a legacy driver:
/// when it writes its features). Pairs whose first feature the device
/// does not offer cannot be reached (accepting it is `FeatureNotOffered`
/// first) but are listed all the same, so offering one is enough.
/// GUEST_USO4/6, NOTF_COAL and VQ_NOTF_COAL are virtio 1.3's.
const PREREQUISITES: &[(u64, u64)] = &[
    (bit(VIRTIO_NET_F_GUEST_TSO4), bit(VIRTIO_NET_F_GUEST_CSUM)),
    (bit(VIRTIO_NET_F_GUEST_TSO6), bit(VIRTIO_NET_F_GUEST_CSUM)),
    (bit(VIRTIO_NET_F_GUEST_UFO), bit(VIRTIO_NET_F_GUEST_CSUM)),
    (bit(VIRTIO_NET_F_GUEST_USO4), bit(VIRTIO_NET_F_GUEST_CSUM)),
    (bit(VIRTIO_NET_F_GUEST_USO6), bit(VIRTIO_NET_F_GUEST_CSUM)),
    (bit(VIRTIO_NET_F_HOST_TSO4), bit(VIRTIO_NET_F_CSUM)),
    (bit(VIRTIO_NET_F_HOST_TSO6), bit(VIRTIO_NET_F_CSUM)),
    (bit(VIRTIO_NET_F_HOST_UFO), bit(VIRTIO_NET_F_CSUM)),
    (bit(VIRTIO_NET_F_HOST_USO), bit(VIRTIO_NET_F_CSUM)),
    (bit(VIRTIO_NET_F_CTRL_RX), bit(VIRTIO_NET_F_CTRL_VQ)),
    (bit(VIRTIO_NET_F_CTRL_VLAN), bit(VIRTIO_NET_F_CTRL_VQ)),
    (bit(VIRTIO_NET_F_GUEST_ANNOUNCE), bit(VIRTIO_NET_F_CTRL_VQ)),
    (bit(VIRTIO_NET_F_MQ), bit(VIRTIO_NET_F_CTRL_VQ)),
    (bit(VIRTIO_NET_F_CTRL_MAC_ADDR), bit(VIRTIO_NET_F_CTRL_VQ)),
    (bit(VIRTIO_NET_F_NOTF_COAL), bit(VIRTIO_NET_F_CTRL_VQ)),
    (bit(VIRTIO_NET_F_RSS), bit(VIRTIO_NET_F_CTRL_VQ)),
    (bit(VIRTIO_NET_F_VQ_NOTF_COAL), bit(VIRTIO_NET_F_CTRL_VQ)),
];

/// §5.1.3.1's "requires A or B": the transport's table means "all of", so
/// these are checked by the device at DRIVER_OK ([`negotiation_findings`]).
const PREREQUISITES_ANY: &[(u64, u64)] = &[
    (
        bit(VIRTIO_NET_F_GUEST_ECN),
        bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6),
    ),
    (
        bit(VIRTIO_NET_F_HOST_ECN),
        bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6),
    ),
    (
        bit(VIRTIO_NET_F_RSC_EXT),
        bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6),
    ),
];

/// `struct virtio_net_config` (virtio 1.2 §5.1.4). Every field is listed,
/// offered or not, so that touching one whose feature is not offered is
/// `ConfigFieldNotOffered`. `mac` is always there ("The mac address field
/// always exists (though is only valid if VIRTIO_NET_F_MAC is set)").
const CONFIG_FIELDS: &[ConfigField] = &[
    ConfigField::always("mac", 0, 6, 1),
    ConfigField::with("status", 6, 2, 2, bit(VIRTIO_NET_F_STATUS)),
    ConfigField::with(
        "max_virtqueue_pairs",
        8,
        2,
        2,
        bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_RSS),
    ),
    ConfigField::with("mtu", 10, 2, 2, bit(VIRTIO_NET_F_MTU)),
    ConfigField::with("speed", 12, 4, 4, bit(VIRTIO_NET_F_SPEED_DUPLEX)),
    ConfigField::with("duplex", 16, 1, 1, bit(VIRTIO_NET_F_SPEED_DUPLEX)),
    ConfigField::with(
        "rss_max_key_size",
        17,
        1,
        1,
        bit(VIRTIO_NET_F_RSS) | bit(VIRTIO_NET_F_HASH_REPORT),
    ),
    ConfigField::with(
        "rss_max_indirection_table_length",
        18,
        2,
        2,
        bit(VIRTIO_NET_F_RSS),
    ),
    ConfigField::with(
        "supported_hash_types",
        20,
        4,
        4,
        bit(VIRTIO_NET_F_RSS) | bit(VIRTIO_NET_F_HASH_REPORT),
    ),
];

/// What the device finds wrong with `features` at DRIVER_OK, for the
/// queue handlers to report ([`Findings`]): a SHOULD about the MAC
/// (§5.1.4.2) and the either-or prerequisites the transport cannot
/// express ([`PREREQUISITES_ANY`]).
fn negotiation_findings(features: u64) -> Vec<Violation> {
    let mut found = Vec::new();
    let mac = bit(VIRTIO_NET_F_MAC);
    if FEATURES & mac != 0 && features & mac == 0 {
        found.push(Violation::new(
            Rule::NetMacNotAccepted,
            format!("driver features {features:#x} lack VIRTIO_NET_F_MAC (bit 5), which the device offers"),
        ));
    }
    for &(f, any) in PREREQUISITES_ANY {
        if features & f != 0 && features & any == 0 {
            found.push(Violation::new(
                Rule::FeatureMissingPrerequisite,
                format!("driver accepted {features:#x}: feature {f:#x} needs one of {any:#x}"),
            ));
        }
    }
    found
}

/// The tap offloads (`TUN_F_*`) matching what the guest negotiated: the tap
/// may hand the guest partially checksummed or unsegmented frames only if
/// the guest said it can take them. The kernel refuses segmentation
/// offloads without checksum offload, and so does virtio (§5.1.3.1).
pub fn offload_flags(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (bit, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_ECN, libc::TUN_F_TSO_ECN),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if has(bit) {
            flags |= flag;
        }
    }
    flags
}

/// A random locally administered unicast MAC, for when none was given.
pub fn random_mac() -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    super::rng::host_random(&mut mac).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("virtio-net: cannot get random bytes for a MAC address: {e}"),
        )
    })?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`, for logs and errors.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A virtio-net device over one frame backend.
pub struct Net {
    backend: SharedBackend,
    /// What the receive queue's worker waits on; see [`handler`].
    gate: Arc<RxGate>,
    mac: [u8; 6],
    /// The MAC was chosen at random (none given): left out of traces
    /// meant to compare runs.
    random_mac: bool,
}

impl Net {
    /// A card with `mac` (or a random locally administered one) whose
    /// frames come from and go to `backend`.
    pub fn new(backend: Box<dyn FrameBackend>, mac: Option<[u8; 6]>) -> io::Result<Net> {
        let chosen_here = mac.is_none();
        let mac = match mac {
            Some(m) if m[0] & 1 != 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "virtio-net: MAC {} is a multicast address; a card needs a unicast one",
                        format_mac(&m)
                    ),
                ));
            }
            Some(m) => m,
            None => random_mac()?,
        };
        let gate = RxGate::new(backend.as_raw_fd())
            .map_err(|e| io::Error::new(e.kind(), format!("virtio-net: receive epoll: {e}")))?;
        Ok(Net {
            backend: Arc::new(Mutex::new(backend)),
            gate: Arc::new(gate),
            mac,
            random_mac: chosen_here,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn config_is_random(&self, offset: usize, len: usize) -> bool {
        self.random_mac && offset < 6 && len > 0
    }
    fn feature_names(&self) -> &'static [(u32, &'static str)] {
        &[
            (0, "NET_F_CSUM"),
            (1, "NET_F_GUEST_CSUM"),
            (2, "NET_F_CTRL_GUEST_OFFLOADS"),
            (3, "NET_F_MTU"),
            (5, "NET_F_MAC"),
            (6, "NET_F_GSO"),
            (7, "NET_F_GUEST_TSO4"),
            (8, "NET_F_GUEST_TSO6"),
            (9, "NET_F_GUEST_ECN"),
            (10, "NET_F_GUEST_UFO"),
            (11, "NET_F_HOST_TSO4"),
            (12, "NET_F_HOST_TSO6"),
            (13, "NET_F_HOST_ECN"),
            (14, "NET_F_HOST_UFO"),
            (15, "NET_F_MRG_RXBUF"),
            (16, "NET_F_STATUS"),
            (17, "NET_F_CTRL_VQ"),
            (18, "NET_F_CTRL_RX"),
            (19, "NET_F_CTRL_VLAN"),
            (21, "NET_F_GUEST_ANNOUNCE"),
            (22, "NET_F_MQ"),
            (23, "NET_F_CTRL_MAC_ADDR"),
        ]
    }
    fn device_type(&self) -> u16 {
        1
    }
    fn name(&self) -> &'static str {
        "virtio-net"
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let c = self.config();
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i)
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
    fn config_fields(&self) -> &'static [ConfigField] {
        CONFIG_FIELDS
    }
    fn feature_prerequisites(&self) -> &'static [(u64, u64)] {
        PREREQUISITES
    }
    fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>> {
        let flags = offload_flags(features);
        if let Err(e) = lock(&self.backend).set_offload(flags) {
            // The tap then hands over only plain frames, which any guest takes.
            log::warn!("virtio-net: {e}; receiving without offloads");
        }
        let negotiated = Negotiated::new(features);
        let findings = Arc::new(Findings::new(negotiation_findings(features)));
        vec![
            Box::new(RxQueue::new(
                self.backend.clone(),
                self.gate.clone(),
                negotiated,
                findings.clone(),
            )),
            Box::new(TxQueue::new(self.backend.clone(), negotiated, findings)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A backend that never has anything: enough for the device itself.
    struct Idle(vmm_sys_util::eventfd::EventFd);

    impl FrameBackend for Idle {
        fn read_frame(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn write_frame(&mut self, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    fn idle() -> Box<dyn FrameBackend> {
        Box::new(Idle(vmm_sys_util::eventfd::EventFd::new(0).unwrap()))
    }

    #[test]
    fn config_space_reads_at_any_offset_and_width() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let net = Net::new(idle(), Some(mac)).unwrap();
        let mut all = [0xffu8; 12];
        net.read_config(0, &mut all);
        assert_eq!(all, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0, 0]);
        let mut w = [0u8; 4];
        net.read_config(2, &mut w);
        assert_eq!(w, [0x00, 0x12, 0x34, 0x56]);
        let mut s = [0u8; 2];
        net.read_config(6, &mut s);
        assert_eq!(u16::from_le_bytes(s), 1, "link up");
        net.read_config(8, &mut s);
        assert_eq!(u16::from_le_bytes(s), 1, "one queue pair");
        let mut b = [0xffu8; 1];
        net.read_config(5, &mut b);
        assert_eq!(b, [0x56]);
        net.read_config(usize::MAX, &mut s);
        assert_eq!(s, [0, 0]);
    }

    #[test]
    fn identity_features_and_queues() {
        let net = Net::new(idle(), None).unwrap();
        assert_eq!((net.device_type(), net.name()), (1, "virtio-net"));
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        for bit in [0, 1, 5, 7, 8, 10, 11, 12, 14, 15, 16, 27, 29] {
            assert!(net.features() & (1 << bit) != 0, "bit {bit}");
        }
        // Nothing else: no control queue, no multiqueue, no ECN.
        assert_eq!(net.features().count_ones(), 13);
    }

    /// The configuration layout is virtio 1.2's, field after field, and
    /// what the device offers covers what it fills in.
    #[test]
    fn config_fields_follow_the_spec_layout() {
        let net = Net::new(idle(), None).unwrap();
        let fields = net.config_fields();
        let mut end = 0;
        for f in fields {
            assert_eq!(f.offset, end, "{} follows the previous field", f.name);
            assert_eq!(f.len % u16::from(f.elem), 0, "{}", f.name);
            end = f.offset + f.len;
        }
        assert_eq!(end, 24);
        let offered = |name: &str| {
            let f = fields.iter().find(|f| f.name == name).unwrap();
            f.feature == 0 || net.features() & f.feature != 0
        };
        assert!(offered("mac") && offered("status"));
        for absent in [
            "max_virtqueue_pairs",
            "mtu",
            "speed",
            "duplex",
            "supported_hash_types",
        ] {
            assert!(!offered(absent), "{absent}");
        }
    }

    /// §5.1.3.1: each offered feature that needs another has its pair, and
    /// the device offers what it needs.
    #[test]
    fn prerequisites_of_the_offered_features() {
        let net = Net::new(idle(), None).unwrap();
        let pre = net.feature_prerequisites();
        let needs = |f: u32| pre.iter().find(|&&(x, _)| x == bit(f)).map(|&(_, n)| n);
        for (f, n) in [
            (VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_CSUM),
            (VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_CSUM),
            (VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_CSUM),
            (VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_CSUM),
            (VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_CSUM),
            (VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_CSUM),
            (VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ),
        ] {
            assert_eq!(needs(f), Some(bit(n)), "feature {f}");
        }
        for &(f, n) in pre.iter().chain(PREREQUISITES_ANY) {
            if FEATURES & f != 0 {
                assert_ne!(FEATURES & n, 0, "{f:#x} is offered without {n:#x}");
            }
        }
    }

    #[test]
    fn negotiation_findings_name_the_missing_feature() {
        let mac = bit(VIRTIO_NET_F_MAC);
        assert_eq!(negotiation_findings(FEATURES), vec![]);
        let f = negotiation_findings(FEATURES & !mac);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, Rule::NetMacNotAccepted);
        let ecn = bit(VIRTIO_NET_F_GUEST_ECN);
        let f = negotiation_findings(mac | bit(VIRTIO_NET_F_GUEST_CSUM) | ecn);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, Rule::FeatureMissingPrerequisite);
        assert!(
            f[0].detail.contains("feature 0x200 needs one of 0x180"),
            "{}",
            f[0]
        );
        assert_eq!(
            negotiation_findings(mac | bit(VIRTIO_NET_F_GUEST_TSO6) | ecn),
            vec![]
        );
    }

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let a = Net::new(idle(), None).unwrap().mac();
        let b = Net::new(idle(), None).unwrap().mac();
        for m in [a, b] {
            assert_eq!(m[0] & 0x03, 0x02, "{}", format_mac(&m));
        }
        assert_ne!(a, b);
        let err = Net::new(idle(), Some([0x01, 0, 0, 0, 0, 1]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("01:00:00:00:00:01 is a multicast"), "{err}");
    }

    #[test]
    fn offloads_follow_guest_features() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |a, &b| a | 1 << b);
        assert_eq!(offload_flags(0), 0);
        // Segmentation without checksum offload is not a thing.
        assert_eq!(offload_flags(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
        assert_eq!(
            offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM])),
            libc::TUN_F_CSUM
        );
        assert_eq!(
            offload_flags(f(&[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_UFO,
                VIRTIO_NET_F_HOST_TSO4,
            ])),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO
        );
    }
}
