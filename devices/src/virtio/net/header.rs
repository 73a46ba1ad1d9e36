//! The virtio-net header in front of every transmitted packet, and what
//! a driver may put in it (virtio 1.2 §5.1.6.2.1) given the features it
//! negotiated.
//!
//! ```text
//! struct virtio_net_hdr {   offset
//!     u8   flags;             0   NEEDS_CSUM (1), DATA_VALID (2), RSC_INFO (4)
//!     u8   gso_type;          1   NONE, TCPV4, UDP, TCPV6, UDP_L4, | ECN (0x80)
//!     le16 hdr_len;           2
//!     le16 gso_size;          4
//!     le16 csum_start;        6
//!     le16 csum_offset;       8
//!     le16 num_buffers;      10   only with VERSION_1 or MRG_RXBUF (§5.1.6.1)
//! };
//! ```
//!
//! A legacy driver writes the fields in its own byte order, which on x86
//! is little-endian as well.

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_RSC_INFO, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4,
};

use crate::virtio::rules::Rule;

/// A rule broken and what exactly the driver did.
pub(super) type Finding = (Rule, String);

const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
const RSC_INFO: u8 = VIRTIO_NET_HDR_F_RSC_INFO as u8;
const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

/// The segmentation types a driver may ask for, each with the feature that
/// allows it (§5.1.6.2.1: "If VIRTIO_NET_F_HOST_TSO4 is negotiated, the
/// driver MAY set gso_type to VIRTIO_NET_HDR_GSO_TCPV4 [...] otherwise the
/// driver MUST NOT").
const GSO_TYPES: &[(u32, u32, &str)] = &[
    (
        VIRTIO_NET_HDR_GSO_TCPV4,
        VIRTIO_NET_F_HOST_TSO4,
        "TCPV4/HOST_TSO4",
    ),
    (
        VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_F_HOST_TSO6,
        "TCPV6/HOST_TSO6",
    ),
    (
        VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_F_HOST_UFO,
        "UDP/HOST_UFO",
    ),
    (
        VIRTIO_NET_HDR_GSO_UDP_L4,
        VIRTIO_NET_F_HOST_USO,
        "UDP_L4/HOST_USO",
    ),
];

/// A `struct virtio_net_hdr` as the driver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// Present in the 12-byte header only.
    pub num_buffers: Option<u16>,
}

impl NetHdr {
    /// The header in `b`: 10 bytes (legacy without MRG_RXBUF) or 12; any
    /// other length is not a header.
    pub(super) fn parse(b: &[u8]) -> Option<NetHdr> {
        let le16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let num_buffers = match b.len() {
            10 => None,
            12 => Some(le16(10)),
            _ => return None,
        };
        Some(NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
            num_buffers,
        })
    }

    /// The header's bytes, 10 or 12 of them: for tests and test drivers.
    #[cfg(test)]
    pub(super) fn to_bytes(self) -> Vec<u8> {
        let mut b = vec![self.flags, self.gso_type];
        for v in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(n) = self.num_buffers {
            b.extend_from_slice(&n.to_le_bytes());
        }
        b
    }
}

/// Checks a transmitted header against §5.1.6.2.1; `packet_len` is what
/// follows it. A broken MUST is an `Err`; `Ok(Some(..))` a broken SHOULD,
/// after which the packet is sent all the same.
///
/// What Linux (drivers/net/virtio_net.c, `xmit_skb` and
/// `virtio_net_hdr_from_skb`) sends passes: flags 0, or NEEDS_CSUM with
/// csum_start/csum_offset inside the packet when CSUM was negotiated;
/// for GSO, NEEDS_CSUM, gso_size and a type it negotiated, ECN only with
/// HOST_ECN (it offers TSO_ECN to the stack only then); num_buffers 0.
pub(super) fn check_tx(
    h: &NetHdr,
    packet_len: u64,
    features: u64,
) -> Result<Option<Finding>, Finding> {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    if let Some(n) = h.num_buffers.filter(|&n| n != 0) {
        return Err((Rule::NetTxNumBuffers, format!("num_buffers is {n}")));
    }
    if h.flags & (DATA_VALID | RSC_INFO) != 0 {
        return Err((
            Rule::NetTxFlags,
            format!(
                "flags {:#04x} has VIRTIO_NET_HDR_F_DATA_VALID (2) or VIRTIO_NET_HDR_F_RSC_INFO (4)",
                h.flags
            ),
        ));
    }
    if h.flags != 0 && !has(VIRTIO_NET_F_CSUM) {
        return Err((
            Rule::NetTxFlags,
            format!(
                "flags {:#04x} but VIRTIO_NET_F_CSUM was not negotiated",
                h.flags
            ),
        ));
    }
    // "If none of the VIRTIO_NET_F_HOST_TSO4, TSO6, USO or UFO options
    // have been negotiated, the driver MUST set gso_type to
    // VIRTIO_NET_HDR_GSO_NONE": this includes a bare ECN bit.
    let any_gso = GSO_TYPES.iter().any(|&(_, f, _)| has(f));
    if h.gso_type != VIRTIO_NET_HDR_GSO_NONE as u8 && !any_gso {
        return Err((
            Rule::NetTxGsoNotNegotiated,
            format!(
                "gso_type {:#04x} but none of HOST_TSO4, HOST_TSO6, HOST_UFO, HOST_USO was negotiated",
                h.gso_type
            ),
        ));
    }
    let gso = h.gso_type & !GSO_ECN;
    if gso != VIRTIO_NET_HDR_GSO_NONE as u8 {
        match GSO_TYPES.iter().find(|&&(t, _, _)| t == u32::from(gso)) {
            None => {
                return Err((
                    Rule::NetTxGsoNotNegotiated,
                    format!("gso_type {:#04x} is no segmentation type", h.gso_type),
                ))
            }
            Some(&(_, f, name)) if !has(f) => {
                return Err((
                    Rule::NetTxGsoNotNegotiated,
                    format!("gso_type {:#04x} ({name}) without its feature", h.gso_type),
                ))
            }
            Some(_) => {}
        }
        if h.flags & NEEDS_CSUM == 0 {
            return Err((
                Rule::NetTxGsoWithoutCsum,
                format!(
                    "gso_type {:#04x} with flags {:#04x}, no VIRTIO_NET_HDR_F_NEEDS_CSUM",
                    h.gso_type, h.flags
                ),
            ));
        }
        if h.gso_size == 0 {
            return Err((
                Rule::NetTxGsoSizeZero,
                format!("gso_type {:#04x} with gso_size 0", h.gso_type),
            ));
        }
    }
    if h.flags & NEEDS_CSUM != 0 {
        // The checksum is 2 bytes at csum_start + csum_offset.
        let end = u64::from(h.csum_start) + u64::from(h.csum_offset) + 2;
        if end > packet_len {
            return Err((
                Rule::NetTxCsumOutsidePacket,
                format!(
                    "csum_start {} + csum_offset {} + 2 = {end}, beyond the {packet_len}-byte packet",
                    h.csum_start, h.csum_offset
                ),
            ));
        }
    }
    if h.gso_type & GSO_ECN != 0 && !has(VIRTIO_NET_F_HOST_ECN) {
        return Ok(Some((
            Rule::NetTxEcnWithoutHostEcn,
            format!(
                "gso_type {:#04x} has VIRTIO_NET_HDR_GSO_ECN but VIRTIO_NET_F_HOST_ECN was not negotiated",
                h.gso_type
            ),
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    const TSO4: u64 = CSUM | 1 << VIRTIO_NET_F_HOST_TSO4;
    const TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;

    fn hdr() -> NetHdr {
        NetHdr {
            num_buffers: Some(0),
            ..NetHdr::default()
        }
    }

    /// What Linux sends for a 1514-byte TCP segment of a 64 KiB send with
    /// TSO (Ethernet 14 + IPv4 20 + TCP 32 bytes of headers).
    fn linux_tso4() -> NetHdr {
        NetHdr {
            flags: NEEDS_CSUM,
            gso_type: TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: Some(0),
        }
    }

    fn rule(r: Result<Option<Finding>, Finding>) -> Option<Rule> {
        match r {
            Ok(Some((rule, _))) | Err((rule, _)) => Some(rule),
            Ok(None) => None,
        }
    }

    #[test]
    fn parse_reads_both_header_sizes() {
        let h = linux_tso4();
        assert_eq!(NetHdr::parse(&h.to_bytes()), Some(h));
        let legacy = NetHdr {
            num_buffers: None,
            ..h
        };
        assert_eq!(legacy.to_bytes().len(), 10);
        assert_eq!(NetHdr::parse(&legacy.to_bytes()), Some(legacy));
        assert_eq!(NetHdr::parse(&[0; 11]), None);
    }

    #[test]
    fn what_linux_sends_passes() {
        // Plain, checksummed, segmented; with and without num_buffers.
        let csum = NetHdr {
            flags: NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..hdr()
        };
        for (h, len, features) in [
            (hdr(), 60, 0),
            (hdr(), 60, TSO4),
            (csum, 42, CSUM),
            (linux_tso4(), 65000, TSO4),
            (
                NetHdr {
                    num_buffers: None,
                    ..linux_tso4()
                },
                65000,
                TSO4,
            ),
        ] {
            assert_eq!(check_tx(&h, len, features), Ok(None), "{h:?}");
        }
    }

    #[test]
    fn each_rule_on_its_own() {
        let ecn = TCPV4 | GSO_ECN;
        let cases: &[(NetHdr, u64, u64, Rule)] = &[
            (
                NetHdr {
                    num_buffers: Some(1),
                    ..hdr()
                },
                60,
                0,
                Rule::NetTxNumBuffers,
            ),
            (
                NetHdr {
                    flags: NEEDS_CSUM,
                    ..hdr()
                },
                60,
                0,
                Rule::NetTxFlags,
            ),
            (
                NetHdr {
                    flags: DATA_VALID,
                    ..hdr()
                },
                60,
                CSUM,
                Rule::NetTxFlags,
            ),
            (
                NetHdr {
                    flags: RSC_INFO,
                    ..hdr()
                },
                60,
                CSUM,
                Rule::NetTxFlags,
            ),
            (linux_tso4(), 65000, CSUM, Rule::NetTxGsoNotNegotiated),
            (
                NetHdr {
                    gso_type: GSO_ECN,
                    ..hdr()
                },
                60,
                CSUM,
                Rule::NetTxGsoNotNegotiated,
            ),
            (
                NetHdr {
                    gso_type: 2,
                    ..linux_tso4()
                },
                65000,
                TSO4,
                Rule::NetTxGsoNotNegotiated,
            ),
            (
                NetHdr {
                    gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
                    ..linux_tso4()
                },
                65000,
                TSO4,
                Rule::NetTxGsoNotNegotiated,
            ),
            (
                NetHdr {
                    flags: 0,
                    ..linux_tso4()
                },
                65000,
                TSO4,
                Rule::NetTxGsoWithoutCsum,
            ),
            (
                NetHdr {
                    gso_size: 0,
                    ..linux_tso4()
                },
                65000,
                TSO4,
                Rule::NetTxGsoSizeZero,
            ),
            (linux_tso4(), 51, TSO4, Rule::NetTxCsumOutsidePacket),
            (
                NetHdr {
                    gso_type: ecn,
                    ..linux_tso4()
                },
                65000,
                TSO4,
                Rule::NetTxEcnWithoutHostEcn,
            ),
        ];
        for (h, len, features, want) in cases {
            assert_eq!(
                rule(check_tx(h, *len, *features)),
                Some(*want),
                "{h:?} {features:#x}"
            );
        }
        // The checksum's last byte may be the packet's last.
        assert_eq!(check_tx(&linux_tso4(), 52, TSO4), Ok(None));
        // ECN is fine with HOST_ECN, and only a SHOULD without it.
        let h = NetHdr {
            gso_type: ecn,
            ..linux_tso4()
        };
        let with_ecn = TSO4 | 1 << VIRTIO_NET_F_HOST_ECN;
        assert_eq!(check_tx(&h, 65000, with_ecn), Ok(None));
        assert!(matches!(check_tx(&h, 65000, TSO4), Ok(Some(_))));
    }
}
