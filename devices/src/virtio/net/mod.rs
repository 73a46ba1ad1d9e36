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
pub mod tap;

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

use super::device::{feature, QueueHandler, VirtioDevice};
use crate::bus::lock;
use handler::{RxGate, RxQueue, TxQueue};
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

/// Device features offered (the transport adds VERSION_1).
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
    | feature::EVENT_IDX;

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
}

impl Net {
    /// A card with `mac` (or a random locally administered one) whose
    /// frames come from and go to `backend`.
    pub fn new(backend: Box<dyn FrameBackend>, mac: Option<[u8; 6]>) -> io::Result<Net> {
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
    fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>> {
        let flags = offload_flags(features);
        if let Err(e) = lock(&self.backend).set_offload(flags) {
            // The tap then hands over only plain frames, which any guest takes.
            log::warn!("virtio-net: {e}; receiving without offloads");
        }
        let mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let hdr_len = if mergeable || features & feature::VERSION_1 != 0 {
            VNET_HDR_LEN
        } else {
            LEGACY_HDR_LEN
        };
        vec![
            Box::new(RxQueue::new(
                self.backend.clone(),
                self.gate.clone(),
                mergeable,
                hdr_len,
            )),
            Box::new(TxQueue::new(self.backend.clone(), hdr_len)),
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
        for bit in [0, 1, 5, 7, 8, 10, 11, 12, 14, 15, 16, 29] {
            assert!(net.features() & (1 << bit) != 0, "bit {bit}");
        }
        // Nothing else: no control queue, no multiqueue, no ECN.
        assert_eq!(net.features().count_ones(), 12);
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
