//! The two queues' work: frames between the backend (the tap) and guest RAM.
//!
//! **transmitq** ([`TxQueue`]): each chain the driver makes available is one
//! outgoing frame — the virtio-net header, then the Ethernet frame — in
//! device-readable buffers laid out any way the driver likes (§5.1.6.2).
//! The handler gathers it into one buffer and writes it to the backend in
//! one call; the tap takes the header as is, so checksum and segmentation
//! offloads the guest asked for are done by the host stack. A backend that
//! cannot take the frame right now drops it, as a congested link would.
//!
//! **receiveq** ([`RxQueue`]): the handler reads frames (header included)
//! from the backend and copies each into the device-writable buffers the
//! driver posted: one chain per frame, or, with VIRTIO_NET_F_MRG_RXBUF, as
//! many chains as the frame needs, with their number in the first chain's
//! `num_buffers` (§5.1.6.3–4). A frame that cannot be placed yet stays
//! pending in the handler, as do chains popped for it, until the driver
//! posts more buffers; a frame that can never fit is dropped.
//!
//! # Strict checks
//!
//! Each transmitted header is checked against what the negotiated features
//! allow ([`header::check_tx`]); each receive chain is checked when the
//! driver posts it (the handler takes every posted chain at once and holds
//! it until a frame comes), not only when a frame arrives. Both queues
//! check the legacy layout rule (§5.1.6.6) when it applies ([`Negotiated`]).
//! A broken MUST is returned, which ends the worker and is reported; a
//! lesser finding goes through [`CheckedQueue::warn`] and the frame or
//! buffer is handled as well as it can be (a buffer of the wrong direction
//! is ignored, a receive chain too short for any frame is given back
//! empty). What the driver got wrong in negotiation that only the device
//! knows about ([`Findings`]) is reported by whichever handler runs first.
//!
//! # Waiting for the tap without spinning
//!
//! The queue's worker waits, level-triggered, on the guest's kick eventfd
//! and on [`QueueHandler::backend_fd`]. Were that the tap itself, a frame
//! waiting while the guest has no receive buffers would keep the tap
//! readable and wake the worker in a tight loop. So the receive handler
//! returns an epoll instance of its own instead ([`RxGate`]): an epoll file
//! descriptor is itself pollable, readable exactly when one of the
//! descriptors in its interest list is ready. The tap is in that list only
//! while the handler can take a frame. When a frame is pending and the
//! driver has no buffers, the handler takes the tap out (`EPOLL_CTL_DEL`),
//! the gate goes quiet, and the worker sleeps on the kick eventfd alone;
//! the driver's next kick (it posts buffers and notifies, or the event
//! index the queue re-armed asks it to) runs the handler, which delivers
//! the pending frame, drains the tap and puts it back (`EPOLL_CTL_ADD`, which
//! reports at once a tap that filled up meanwhile). A backend that fails
//! for good (the tap was deleted) is taken out the same way, so its
//! permanent error condition cannot spin the worker either.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_config::VIRTIO_F_ANY_LAYOUT;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_MRG_RXBUF,
};
use vm_memory::{Bytes, GuestMemoryError, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::header::{self, NetHdr};
use super::{SharedBackend, LEGACY_HDR_LEN, MAX_FRAME, VNET_HDR_LEN};
use crate::bus::lock;
use crate::trace::{Detail, Value};
use crate::virtio::device::{feature, QueueHandler};
use crate::virtio::queue::{Chain, CheckedQueue};
use crate::virtio::rules::{Rule, Violation};

/// Frames delivered per call at most, so the worker interrupts the guest
/// and looks at its stop event now and then during a flood.
const RX_BUDGET: usize = 64;
/// Receive buffers a driver without MRG_RXBUF should post, in bytes:
/// a whole frame (§5.1.6.3.1) ...
const RX_MIN: u64 = 1526;
/// ... or a whole segmentation-offloaded one with GUEST_TSO4/TSO6/UFO.
const RX_MIN_GSO: u64 = 65562;

/// What the negotiated features mean for the buffers of both queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Negotiated {
    pub features: u64,
    /// The header the driver uses: 12 bytes, or 10 for a legacy driver
    /// without MRG_RXBUF (§5.1.6.1).
    pub hdr_len: usize,
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub mergeable: bool,
    /// A legacy driver without VIRTIO_F_ANY_LAYOUT must put the header
    /// alone in the first descriptor of every chain (§5.1.6.6). (A driver
    /// without VERSION_1 is a legacy one: a modern driver must accept it.)
    pub header_alone: bool,
    /// Without MRG_RXBUF, the receive chain length the driver should post.
    pub rx_min: u64,
}

impl Negotiated {
    pub(super) fn new(features: u64) -> Self {
        let has = |bit: u32| features & (1u64 << bit) != 0;
        let mergeable = has(VIRTIO_NET_F_MRG_RXBUF);
        let modern = features & feature::VERSION_1 != 0;
        let gso = [
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
        ];
        Negotiated {
            features,
            hdr_len: if mergeable || modern {
                VNET_HDR_LEN
            } else {
                LEGACY_HDR_LEN
            },
            mergeable,
            header_alone: !modern && !has(VIRTIO_F_ANY_LAYOUT),
            rx_min: if gso.into_iter().any(has) {
                RX_MIN_GSO
            } else {
                RX_MIN
            },
        }
    }
}

/// Findings about the negotiated features that the device makes at
/// DRIVER_OK, when [`VirtioDevice::activate`](crate::virtio::device::VirtioDevice::activate)
/// has no way to report them: the first handler to run reports them
/// through its queue (warnings with [`CheckedQueue::warn`], a MUST as its
/// error), so each is reported once per activation.
pub(super) struct Findings(Mutex<Vec<Violation>>);

impl Findings {
    pub(super) fn new(found: Vec<Violation>) -> Self {
        Findings(Mutex::new(found))
    }

    fn report(&self, queue: &mut CheckedQueue) -> Result<(), Violation> {
        let found = std::mem::take(&mut *lock(&self.0));
        let mut fatal = None;
        for v in found {
            if v.is_fatal() {
                fatal.get_or_insert(v);
            } else {
                queue.record(v.rule, v.detail);
            }
        }
        fatal.map_or(Ok(()), Err)
    }
}

/// The receive queue's wake-up descriptor: an epoll instance that contains
/// the backend only while the handler wants its frames.
pub(super) struct RxGate {
    epoll: Epoll,
    backend: RawFd,
}

impl RxGate {
    pub(super) fn new(backend: RawFd) -> io::Result<Self> {
        let gate = RxGate {
            epoll: Epoll::new()?,
            backend,
        };
        gate.open()?;
        Ok(gate)
    }

    /// Lets the backend's readiness through (idempotent).
    fn open(&self) -> io::Result<()> {
        let ev = EpollEvent::new(EventSet::IN, 0);
        match self.epoll.ctl(ControlOperation::Add, self.backend, ev) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Hides the backend's readiness (idempotent).
    fn close(&self) -> io::Result<()> {
        let ev = EpollEvent::default();
        match self.epoll.ctl(ControlOperation::Delete, self.backend, ev) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

/// What became of the pending frame.
enum Delivery {
    Used,
    /// It could never fit; gone.
    Dropped,
    /// The driver has no (or not enough) buffers; it stays pending.
    Stalled,
}

/// receiveq for one activation.
pub(super) struct RxQueue {
    backend: SharedBackend,
    gate: Arc<RxGate>,
    gate_open: bool,
    negotiated: Negotiated,
    findings: Arc<Findings>,
    /// `MAX_FRAME` bytes; the pending frame, in the driver's header format,
    /// is its first `pending` bytes.
    frame: Vec<u8>,
    pending: usize,
    /// Chains popped and checked but not used yet (posted ahead of any
    /// frame, waiting for enough of them to hold a merged frame, or left
    /// by a dropped frame).
    held: VecDeque<Chain>,
    /// A chain too short for any frame was given back empty since the
    /// last `process` returned: the driver may want an interrupt.
    gave_back: bool,
    /// The backend failed for good: receiving stops until a reset.
    dead: bool,
}

impl RxQueue {
    pub(super) fn new(
        backend: SharedBackend,
        gate: Arc<RxGate>,
        negotiated: Negotiated,
        findings: Arc<Findings>,
    ) -> Self {
        // A previous activation may have left the gate closed.
        let gate_open = match gate.open() {
            Ok(()) => true,
            Err(e) => {
                log::error!("virtio-net: cannot wait for received frames: {e}");
                false
            }
        };
        Self {
            backend,
            gate,
            gate_open,
            negotiated,
            findings,
            frame: vec![0; MAX_FRAME],
            pending: 0,
            held: VecDeque::new(),
            gave_back: false,
            dead: false,
        }
    }

    fn set_gate(&mut self, open: bool) {
        if open == self.gate_open {
            return;
        }
        let r = if open {
            self.gate.open()
        } else {
            self.gate.close()
        };
        match r {
            Ok(()) => self.gate_open = open,
            Err(e) => log::error!("virtio-net: receive epoll: {e}"),
        }
    }

    /// Reads the next frame from the backend into `frame`; false when none
    /// is waiting.
    fn fetch(&mut self) -> bool {
        let hdr_len = self.negotiated.hdr_len;
        loop {
            let r = lock(&self.backend).read_frame(&mut self.frame);
            match r {
                Ok(n) if n <= VNET_HDR_LEN => {
                    log::trace!("virtio-net: dropped a {n}-byte read from the backend: no frame");
                }
                Ok(n) => {
                    let short = VNET_HDR_LEN - hdr_len;
                    if short > 0 {
                        // A legacy header lacks num_buffers.
                        self.frame.copy_within(VNET_HDR_LEN..n, hdr_len);
                    }
                    self.pending = n - short;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!(
                        "virtio-net: reading from the backend: {e}; nothing more is received until the driver resets the device"
                    );
                    self.dead = true;
                    return false;
                }
            }
        }
    }

    /// Pops chains until one that can take a frame is held; false when the
    /// driver has none. A chain that can never take one (shorter than a
    /// header and a byte, allowed only without MRG_RXBUF) is given back
    /// empty after its warning, so it cannot block the queue.
    fn take_chain(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        while let Some(chain) = queue.pop(mem)? {
            if self.check_chain(&chain, queue)? {
                self.held.push_back(chain);
                return Ok(true);
            }
            queue.add_used(mem, chain.head, 0)?;
            self.gave_back = true;
        }
        Ok(false)
    }

    /// Checks a receive chain's shape (§5.1.6.3.1, §5.1.6.6); whether it
    /// can take a frame.
    fn check_chain(&self, chain: &Chain, queue: &mut CheckedQueue) -> Result<bool, Violation> {
        let n = self.negotiated;
        let head = chain.head;
        if let Some(b) = chain.readable().next() {
            queue.record(
                Rule::NetRxBufferReadable,
                format!(
                    "receive chain {head} has a device-readable buffer ({} bytes at {:#x}); the device ignores it",
                    b.len, b.addr.0
                ),
            );
        }
        if n.header_alone {
            let first = chain.writable().next().map_or(0, |b| b.len);
            if first as usize != n.hdr_len {
                return Err(Violation::new(
                    Rule::NetLegacyHeaderNotAlone,
                    format!(
                        "receive chain {head} starts with a {first}-byte buffer, not the {}-byte virtio-net header alone, and VIRTIO_F_ANY_LAYOUT was not negotiated",
                        n.hdr_len
                    ),
                ));
            }
        }
        let len = chain.writable_len();
        if n.mergeable {
            if len < n.hdr_len as u64 {
                return Err(Violation::new(
                    Rule::NetRxBufferTooShort,
                    format!(
                        "receive chain {head} holds {len} bytes, less than the {}-byte virtio-net header",
                        n.hdr_len
                    ),
                ));
            }
            return Ok(true);
        }
        if len < n.rx_min {
            queue.record(
                Rule::NetRxBufferSmall,
                format!(
                    "receive chain {head} holds {len} bytes, less than the {} a whole frame needs without VIRTIO_NET_F_MRG_RXBUF",
                    n.rx_min
                ),
            );
        }
        Ok(len > n.hdr_len as u64)
    }

    fn set_num_buffers(&mut self, n: u16) {
        if self.negotiated.hdr_len == VNET_HDR_LEN {
            self.frame[10..12].copy_from_slice(&n.to_le_bytes());
        }
    }

    /// One chain per frame (no MRG_RXBUF).
    fn deliver_one(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<Delivery, Violation> {
        if self.held.is_empty() && !self.take_chain(queue, mem)? {
            return Ok(Delivery::Stalled);
        }
        let len = self.pending;
        let room = self.held.front().map_or(0, Chain::writable_len);
        if len as u64 > room {
            // The chain stays held for the next frame.
            log::trace!(
                "virtio-net: dropped a {len}-byte frame: the driver's receive buffer holds {room}"
            );
            return Ok(Delivery::Dropped);
        }
        self.set_num_buffers(1);
        let Some(chain) = self.held.pop_front() else {
            return Ok(Delivery::Stalled);
        };
        let n = chain
            .write_all(mem, &self.frame[..len])
            .map_err(|e| memory_violation(&chain, e))?;
        queue.add_used(mem, chain.head, n)?;
        trace_rx(queue, len, 1);
        Ok(Delivery::Used)
    }

    /// As many chains as the frame needs (MRG_RXBUF).
    fn deliver_merged(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<Delivery, Violation> {
        let len = self.pending;
        let mut room: u64 = self.held.iter().map(Chain::writable_len).sum();
        while room < len as u64 {
            // Holding as many buffers as the queue has descriptors, the
            // driver cannot post more: this frame will never fit. (Indirect
            // tables make this count high, so such a frame may be dropped
            // a little early; Linux does not post receive buffers that way.)
            let descriptors: usize = self.held.iter().map(|c| c.buffers.len()).sum();
            if descriptors >= usize::from(queue.size()) {
                log::trace!(
                    "virtio-net: dropped a {len}-byte frame: {} receive buffers hold only {room}",
                    self.held.len()
                );
                return Ok(Delivery::Dropped);
            }
            if !self.take_chain(queue, mem)? {
                return Ok(Delivery::Stalled);
            }
            room += self.held.back().map_or(0, Chain::writable_len);
        }
        let mut count = 0;
        let mut covered = 0;
        for c in &self.held {
            count += 1;
            covered += c.writable_len();
            if covered >= len as u64 {
                break;
            }
        }
        // count <= held chains <= queue size <= 32768.
        self.set_num_buffers(u16::try_from(count).unwrap_or(u16::MAX));
        let mut off = 0;
        for chain in self.held.drain(..count) {
            let n = chain
                .write_all(mem, &self.frame[off..len])
                .map_err(|e| memory_violation(&chain, e))?;
            off += n as usize;
            queue.add_used(mem, chain.head, n)?;
        }
        trace_rx(queue, len, count);
        Ok(Delivery::Used)
    }
}

/// A frame handed to the driver (`-vv`): its length with the header and
/// the receive buffers it took.
fn trace_rx(queue: &CheckedQueue, len: usize, buffers: usize) {
    queue.tracer().event(
        Detail::Request,
        "rx",
        &[
            ("bytes", Value::U(len as u64)),
            ("buffers", Value::U(buffers as u64)),
        ],
        format_args!("rx {len} bytes in {buffers} buffer(s)"),
    );
}

impl QueueHandler for RxQueue {
    fn process(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        self.findings.report(queue)?;
        // Take (and so check) what the driver posted, frame or no frame.
        while self.take_chain(queue, mem)? {}
        let mut used = std::mem::take(&mut self.gave_back);
        for _ in 0..RX_BUDGET {
            if self.pending == 0 && (self.dead || !self.fetch()) {
                break;
            }
            let delivery = if self.negotiated.mergeable {
                self.deliver_merged(queue, mem)?
            } else {
                self.deliver_one(queue, mem)?
            };
            match delivery {
                Delivery::Used => used = true,
                Delivery::Dropped => {}
                Delivery::Stalled => {
                    self.set_gate(false);
                    return Ok(used || std::mem::take(&mut self.gave_back));
                }
            }
            self.pending = 0;
        }
        self.set_gate(!self.dead);
        Ok(used || std::mem::take(&mut self.gave_back))
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.gate.fd())
    }
}

/// transmitq for one activation.
pub(super) struct TxQueue {
    backend: SharedBackend,
    negotiated: Negotiated,
    findings: Arc<Findings>,
    /// The frame being sent, always with a 12-byte header.
    buf: Vec<u8>,
    /// A backend error was logged as a warning; later ones go to debug.
    warned: bool,
}

impl TxQueue {
    pub(super) fn new(
        backend: SharedBackend,
        negotiated: Negotiated,
        findings: Arc<Findings>,
    ) -> Self {
        Self {
            backend,
            negotiated,
            findings,
            buf: Vec::with_capacity(MAX_FRAME),
            warned: false,
        }
    }

    /// Gathers the chain's readable bytes into `buf`, widening a legacy
    /// 10-byte header to the backend's 12.
    fn gather(
        &mut self,
        chain: &Chain,
        mem: &GuestMemoryMmap,
        len: usize,
    ) -> Result<(), Violation> {
        let hdr_len = self.negotiated.hdr_len;
        let short = VNET_HDR_LEN - hdr_len;
        self.buf.clear();
        self.buf.resize(len + short, 0);
        let mut at = 0;
        for b in chain.readable() {
            let n = b.len as usize;
            mem.read_slice(&mut self.buf[at..at + n], b.addr)
                .map_err(|e| memory_violation(chain, e))?;
            at += n;
        }
        if short > 0 {
            self.buf.copy_within(hdr_len..len, VNET_HDR_LEN);
            self.buf[hdr_len..VNET_HDR_LEN].fill(0);
        }
        Ok(())
    }

    fn send(&mut self) {
        let r = lock(&self.backend).write_frame(&self.buf);
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                log::trace!(
                    "virtio-net: backend full; dropped a {}-byte frame",
                    self.buf.len()
                );
            }
            Err(e) if !self.warned => {
                self.warned = true;
                log::warn!("virtio-net: sending a frame: {e}; dropping it (and others like it)");
            }
            Err(e) => log::trace!("virtio-net: sending a frame: {e}; dropped"),
        }
    }

    /// Checks one transmit chain and sends its frame.
    fn transmit(
        &mut self,
        chain: &Chain,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), Violation> {
        let n = self.negotiated;
        let head = chain.head;
        let v =
            |rule, detail: String| Violation::new(rule, format!("transmit chain {head}{detail}"));
        if let Some(b) = chain.writable().next() {
            queue.record(
                Rule::NetTxBufferWritable,
                format!(
                    "transmit chain {head} has a device-writable buffer ({} bytes at {:#x}); the device ignores it",
                    b.len, b.addr.0
                ),
            );
        }
        let len = chain.readable_len();
        if len < n.hdr_len as u64 {
            return Err(v(
                Rule::NetTxTooShort,
                format!(
                    " holds {len} bytes, less than the {}-byte virtio-net header",
                    n.hdr_len
                ),
            ));
        }
        if n.header_alone {
            let first = chain.readable().next().map_or(0, |b| b.len);
            if first as usize != n.hdr_len {
                return Err(v(
                    Rule::NetLegacyHeaderNotAlone,
                    format!(
                        " starts with a {first}-byte buffer, not the {}-byte virtio-net header alone, and VIRTIO_F_ANY_LAYOUT was not negotiated",
                        n.hdr_len
                    ),
                ));
            }
        }
        let max = MAX_FRAME - VNET_HDR_LEN + n.hdr_len;
        let fits = usize::try_from(len).ok().filter(|&l| l <= max);
        let hdr = match fits {
            Some(l) => {
                self.gather(chain, mem, l)?;
                NetHdr::parse(&self.buf[..n.hdr_len])
            }
            None => NetHdr::parse(
                &chain
                    .read_all(mem, n.hdr_len)
                    .map_err(|e| memory_violation(chain, e))?,
            ),
        };
        let Some(hdr) = hdr else {
            return Err(v(Rule::NetTxTooShort, ": no virtio-net header".into()));
        };
        match header::check_tx(&hdr, len - n.hdr_len as u64, n.features) {
            Err((rule, detail)) => return Err(v(rule, format!(": {detail}"))),
            Ok(Some((rule, detail))) => {
                queue.record(rule, format!("transmit chain {head}: {detail}"))
            }
            Ok(None) => {}
        }
        let trace = queue.tracer();
        if trace.wants(Detail::Request) {
            let gso = match hdr.gso_type & 0x7f {
                0 => "none",
                1 => "tcpv4",
                3 => "udp",
                4 => "tcpv6",
                5 => "udp_l4",
                _ => "other",
            };
            let payload = len - n.hdr_len as u64;
            let csum = if hdr.flags & 1 != 0 {
                format!("{}+{}", hdr.csum_start, hdr.csum_offset)
            } else {
                "none".into()
            };
            trace.event(
                Detail::Request,
                "tx",
                &[
                    ("bytes", Value::U(payload)),
                    ("gso", Value::S(gso)),
                    ("gso_size", Value::U(hdr.gso_size.into())),
                    ("csum", Value::S(&csum)),
                ],
                format_args!("tx {payload} bytes, gso {gso}, csum {csum}"),
            );
        }
        match fits {
            Some(_) => self.send(),
            None => log::trace!(
                "virtio-net: dropped a {len}-byte frame from the driver: larger than {max}"
            ),
        }
        Ok(())
    }
}

impl QueueHandler for TxQueue {
    fn process(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        self.findings.report(queue)?;
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            self.transmit(&chain, queue, mem)?;
            queue.add_used(mem, chain.head, 0)?;
            used = true;
        }
        Ok(used)
    }
}

/// Buffers were checked to lie in RAM when popped, so this is unexpected;
/// report it as the rule it would break.
fn memory_violation(chain: &Chain, e: GuestMemoryError) -> Violation {
    Violation::new(
        Rule::DescriptorOutsideMemory,
        format!("chain {}: {e}", chain.head),
    )
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use virtio_bindings::bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC,
    };
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::super::{FrameBackend, Net};
    use super::*;
    use crate::pci::msix::Msix;
    use crate::virtio::device::{feature, VirtioDevice};
    use crate::virtio::interrupt::Interrupt;
    use crate::virtio::worker::{Worker, WorkerSetup};

    use crate::virtio::queue::testing::{QSIZE, USED};

    const RAM: usize = 1 << 20;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const MAC: u64 = 1 << VIRTIO_NET_F_MAC;
    const V1: u64 = feature::VERSION_1 | MAC;
    const MRG: u64 = V1 | 1 << VIRTIO_NET_F_MRG_RXBUF;
    const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    const TSO4: u64 = CSUM | 1 << VIRTIO_NET_F_HOST_TSO4;
    /// A legacy driver that lets header and data share a buffer.
    const LEGACY: u64 = MAC | 1 << VIRTIO_F_ANY_LAYOUT;

    /// One end of a SOCK_SEQPACKET pair standing in for a tap: one
    /// message per frame, non-blocking, pollable.
    struct Sock(File);

    impl FrameBackend for Sock {
        fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
        fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
            assert_eq!(self.0.write(frame)?, frame.len());
            Ok(())
        }
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    /// (the device's end, the host network's end)
    fn socket_pair() -> (File, File) {
        let mut fds = [0; 2];
        let ty = libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: `fds` has room for the two descriptors returned.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) },
            0
        );
        // SAFETY: both descriptors are fresh and owned by nothing else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        assert!(unsafe { libc::poll(&mut p, 1, 0) } >= 0);
        p.revents & libc::POLLIN != 0
    }

    fn recv(peer: &mut File) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME + 100];
        match peer.read(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// A frame as the tap would give it: a header with recognisable
    /// flags, gso and checksum fields (num_buffers 0), then a pattern.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
        f[..12].copy_from_slice(&[1, 0, 54, 0, 0, 0, 34, 0, 16, 0, 0, 0]);
        f
    }

    /// A frame a driver sends without offloads: an all-zero header.
    fn plain(len: usize, seed: u8) -> Vec<u8> {
        let mut f = frame(len, seed);
        f[..12].fill(0);
        f
    }

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    fn get(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// The driver's side of one queue.
    struct Driver<'a> {
        vq: MockSplitQueue<'a, GuestMemoryMmap>,
        mem: &'a GuestMemoryMmap,
        next_desc: u16,
        seen: u16,
    }

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemoryMmap, index: u16, features: u64) -> (Self, CheckedQueue) {
            let (vq, q) = crate::virtio::queue::testing::mock_queue(mem, index, 256, features);
            let d = Driver {
                vq,
                mem,
                next_desc: 0,
                seen: 0,
            };
            (d, q)
        }

        /// Makes a chain of (address, length, device-writable) available.
        fn post(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let me = self.next_desc;
                self.next_desc = (self.next_desc + 1) % QSIZE;
                let last = i + 1 == bufs.len();
                let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
                let d = RawDescriptor::from(Descriptor::new(addr, len, flags, self.next_desc));
                self.vq.desc_table().store(me, d).unwrap();
            }
            let idx = self.vq.avail().idx().load();
            let slot = usize::from(idx % QSIZE);
            self.vq.avail().ring().ref_at(slot).unwrap().store(head);
            self.vq.avail().idx().store(idx.wrapping_add(1));
            head
        }

        /// Used entries (head, length) added since the last call.
        fn used(&mut self) -> Vec<(u16, u32)> {
            let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            let mut out = Vec::new();
            while self.seen != idx {
                let at = USED + 4 + 8 * u64::from(self.seen % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                out.push((id as u16, len));
                self.seen = self.seen.wrapping_add(1);
            }
            out
        }
    }

    /// A device over a socket pair, activated with `features`: the host
    /// network's end, the receive and the transmit handlers.
    fn device(features: u64) -> (File, Box<dyn QueueHandler>, Box<dyn QueueHandler>) {
        let (dev, peer) = socket_pair();
        let mut net = Net::new(Box::new(Sock(dev)), None).unwrap();
        let mut h = net.activate(features).into_iter();
        let (rx, tx) = (h.next().unwrap(), h.next().unwrap());
        (peer, rx, tx)
    }

    fn expect(r: Result<bool, Violation>, rule: Rule, needle: &str) {
        let v = r.unwrap_err();
        assert_eq!(v.rule, rule, "{v}");
        assert!(v.detail.contains(needle), "{v}");
    }

    // --- transmit ---

    #[test]
    fn tx_gathers_each_chain_into_one_frame() {
        let mem = ram();
        let (mut peer, _rx, mut tx) = device(V1 | CSUM);
        let (mut drv, mut q) = Driver::new(&mem, 1, V1 | CSUM);
        let f = frame(100, 3);
        // Header and frame split at odd places, as §2.4.4 allows.
        mem.write_slice(&f[..5], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&f[5..35], GuestAddress(0x2000)).unwrap();
        mem.write_slice(&f[35..], GuestAddress(0x3000)).unwrap();
        let a = drv.post(&[(0x1000, 5, false), (0x2000, 30, false), (0x3000, 65, false)]);
        let g = plain(60, 9);
        mem.write_slice(&g, GuestAddress(0x4000)).unwrap();
        let b = drv.post(&[(0x4000, 60, false)]);

        assert!(tx.process(&mut q, &mem).unwrap());
        assert_eq!(q.take_findings(), vec![]);
        assert_eq!(recv(&mut peer).unwrap(), f);
        assert_eq!(recv(&mut peer).unwrap(), g);
        assert_eq!(recv(&mut peer), None);
        assert_eq!(drv.used(), vec![(a, 0), (b, 0)]);
        assert_eq!(tx.backend_fd(), None);
        assert!(!tx.process(&mut q, &mem).unwrap());
    }

    #[test]
    fn tx_writable_buffer_is_warned_and_ignored() {
        let mem = ram();
        let (mut peer, _rx, mut tx) = device(V1);
        let (mut drv, mut q) = Driver::new(&mem, 1, V1);
        let f = plain(64, 2);
        mem.write_slice(&f, GuestAddress(0x1000)).unwrap();
        let head = drv.post(&[(0x1000, 64, false), (0x2000, 16, true)]);
        assert!(tx.process(&mut q, &mem).unwrap());
        let w = q.take_findings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].rule, Rule::NetTxBufferWritable);
        assert!(
            w[0].detail
                .contains("transmit chain 0 has a device-writable buffer (16 bytes at 0x2000)"),
            "{}",
            w[0]
        );
        // The frame is the readable part alone, and nothing was written.
        assert_eq!(recv(&mut peer).unwrap(), f);
        assert_eq!(drv.used(), vec![(head, 0)]);
    }

    #[test]
    fn tx_chain_shorter_than_the_header() {
        let mem = ram();
        let (mut peer, _rx, mut tx) = device(V1);
        let (mut drv, mut q) = Driver::new(&mem, 1, V1);
        drv.post(&[(0x1000, 4, false), (0x2000, 7, false)]);
        expect(
            tx.process(&mut q, &mem),
            Rule::NetTxTooShort,
            "transmit chain 0 holds 11 bytes, less than the 12-byte virtio-net header",
        );
        assert_eq!(recv(&mut peer), None);
    }

    // --- receive ---

    #[test]
    fn rx_one_chain_per_frame() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(V1);
        let (mut drv, mut q) = Driver::new(&mem, 0, V1);
        let f = frame(80, 1);
        peer.write_all(&f).unwrap();
        // Header and data in separate buffers, as Linux posts them.
        let head = drv.post(&[(0x1000, 12, true), (0x2000, 1514, true)]);
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(head, 80)]);
        let mut want = f.clone();
        want[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
        assert_eq!(get(&mem, 0x1000, 12), want[..12]);
        assert_eq!(get(&mem, 0x2000, 68), want[12..]);
    }

    #[test]
    fn rx_mergeable_spreads_a_frame_and_counts_buffers() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(MRG);
        let (mut drv, mut q) = Driver::new(&mem, 0, MRG);
        let heads: Vec<u16> = (0..4)
            .map(|i| drv.post(&[(0x1000 * (i + 1), 1000, true)]))
            .collect();
        let big = frame(2500, 2);
        let small = frame(100, 5);
        peer.write_all(&big).unwrap();
        peer.write_all(&small).unwrap();
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(
            drv.used(),
            vec![
                (heads[0], 1000),
                (heads[1], 1000),
                (heads[2], 500),
                (heads[3], 100)
            ]
        );
        let mut got = get(&mem, 0x1000, 1000);
        got.extend(get(&mem, 0x2000, 1000));
        got.extend(get(&mem, 0x3000, 500));
        let mut want = big.clone();
        want[10..12].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(got, want);
        let got = get(&mem, 0x4000, 100);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
        assert_eq!(got[12..], small[12..]);
    }

    #[test]
    fn rx_mergeable_waits_for_enough_buffers() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(MRG);
        let (mut drv, mut q) = Driver::new(&mem, 0, MRG);
        let a = drv.post(&[(0x1000, 1000, true)]);
        peer.write_all(&frame(1800, 4)).unwrap();
        // One buffer is not enough: it is held, nothing is used yet.
        assert!(!rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![]);
        let b = drv.post(&[(0x2000, 1000, true)]);
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(a, 1000), (b, 800)]);
        assert_eq!(get(&mem, 0x1000 + 10, 2), 2u16.to_le_bytes());
    }

    #[test]
    fn rx_without_buffers_stops_watching_the_backend() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(V1);
        let (mut drv, mut q) = Driver::new(&mem, 0, V1);
        let gate = rx.backend_fd().unwrap();
        assert!(!readable(gate));
        let (f, g) = (frame(60, 1), frame(70, 2));
        peer.write_all(&f).unwrap();
        peer.write_all(&g).unwrap();
        assert!(readable(gate), "a waiting frame wakes the worker");

        // No buffers: the first frame is taken and held, and the gate goes
        // quiet although the second still waits in the backend, so a
        // level-triggered worker sleeps until the driver kicks.
        assert!(!rx.process(&mut q, &mem).unwrap());
        assert!(!readable(gate));
        assert!(
            !rx.process(&mut q, &mem).unwrap(),
            "a spurious call is harmless"
        );
        assert!(!readable(gate));

        // The driver posts one buffer: the held frame goes into it, the
        // next is read and held again.
        let a = drv.post(&[(0x1000, 1526, true)]);
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(a, 60)]);
        assert_eq!(get(&mem, 0x1000 + 12, 48), f[12..]);
        assert!(!readable(gate));

        // Buffers to spare: delivery resumes and the backend is watched again.
        let b = drv.post(&[(0x2000, 1526, true)]);
        let c = drv.post(&[(0x3000, 1526, true)]);
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(b, 70)]);
        assert!(!readable(gate), "the backend is drained");
        let h = frame(90, 3);
        peer.write_all(&h).unwrap();
        assert!(readable(gate));
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(c, 90)]);
        assert!(!readable(gate));
    }

    #[test]
    fn rx_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_reused() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(V1);
        let (mut drv, mut q) = Driver::new(&mem, 0, V1);
        let a = drv.post(&[(0x1000, 100, true)]);
        peer.write_all(&frame(300, 1)).unwrap();
        let small = frame(50, 2);
        peer.write_all(&small).unwrap();
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(a, 50)]);
        assert_eq!(get(&mem, 0x1000 + 12, 38), small[12..]);
    }

    #[test]
    fn rx_buffer_shorter_than_the_header() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(MRG);
        let (mut drv, mut q) = Driver::new(&mem, 0, MRG);
        drv.post(&[(0x1000, 8, true)]);
        peer.write_all(&frame(60, 1)).unwrap();
        expect(
            rx.process(&mut q, &mem),
            Rule::NetRxBufferTooShort,
            "receive chain 0 holds 8 bytes, less than the 12-byte virtio-net header",
        );
    }

    #[test]
    fn rx_readable_buffer_is_warned_and_ignored() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(V1);
        let (mut drv, mut q) = Driver::new(&mem, 0, V1);
        mem.write_slice(&[0xaa; 12], GuestAddress(0x1000)).unwrap();
        let head = drv.post(&[(0x1000, 12, false), (0x2000, 1526, true)]);
        let f = frame(60, 1);
        peer.write_all(&f).unwrap();
        assert!(rx.process(&mut q, &mem).unwrap());
        let w = q.take_findings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].rule, Rule::NetRxBufferReadable);
        assert!(
            w[0].detail
                .contains("receive chain 0 has a device-readable buffer (12 bytes at 0x1000)"),
            "{}",
            w[0]
        );
        assert_eq!(drv.used(), vec![(head, 60)]);
        assert_eq!(get(&mem, 0x1000, 12), [0xaa; 12], "left alone");
        assert_eq!(get(&mem, 0x2000 + 12, 48), f[12..]);
    }

    #[test]
    fn legacy_driver_without_mrg_rxbuf_uses_a_10_byte_header() {
        let mem = ram();
        let features = LEGACY | CSUM;
        let (mut peer, mut rx, mut tx) = device(features);
        let (mut drv_rx, mut rq) = Driver::new(&mem, 0, features);
        let f = frame(80, 1);
        peer.write_all(&f).unwrap();
        let head = drv_rx.post(&[(0x1000, 1526, true)]);
        assert!(rx.process(&mut rq, &mem).unwrap());
        assert_eq!(drv_rx.used(), vec![(head, 78)]);
        let got = get(&mem, 0x1000, 78);
        assert_eq!((&got[..10], &got[10..]), (&f[..10], &f[12..]));

        let mem = ram();
        let (mut drv_tx, mut tq) = Driver::new(&mem, 1, features);
        mem.write_slice(&got, GuestAddress(0x1000)).unwrap();
        drv_tx.post(&[(0x1000, 78, false)]);
        assert!(tx.process(&mut tq, &mem).unwrap());
        let mut want = f.clone();
        want[10..12].fill(0);
        assert_eq!(recv(&mut peer).unwrap(), want);
    }

    // --- strict checks ---

    /// Sends one frame of `packet` behind `hdr` (as one buffer) through a
    /// device activated with `features`; what `process` said, the warnings
    /// and whether the frame reached the host.
    fn send_one(
        features: u64,
        hdr: NetHdr,
        packet: &[u8],
    ) -> (Result<bool, Violation>, Vec<Violation>, bool) {
        let mem = ram();
        let (mut peer, _rx, mut tx) = device(features);
        let (mut drv, mut q) = Driver::new(&mem, 1, features);
        let mut f = hdr.to_bytes();
        f.extend_from_slice(packet);
        mem.write_slice(&f, GuestAddress(0x1000)).unwrap();
        drv.post(&[(0x1000, f.len() as u32, false)]);
        let r = tx.process(&mut q, &mem);
        (r, q.take_findings(), recv(&mut peer).is_some())
    }

    /// The header Linux's `xmit_skb` writes for a TSO segment of a TCP/IPv4
    /// stream: NEEDS_CSUM at the TCP checksum, gso_size the MSS.
    fn tso4_header() -> NetHdr {
        NetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: Some(0),
        }
    }

    #[test]
    fn tx_what_linux_sends_passes_and_is_sent() {
        for (features, hdr, len) in [
            (
                V1,
                NetHdr {
                    num_buffers: Some(0),
                    ..NetHdr::default()
                },
                60,
            ),
            (
                MRG | CSUM,
                NetHdr {
                    flags: 1,
                    csum_start: 34,
                    csum_offset: 6,
                    num_buffers: Some(0),
                    ..NetHdr::default()
                },
                60,
            ),
            (MRG | TSO4, tso4_header(), 3000),
        ] {
            let (r, w, sent) = send_one(features, hdr, &plain(len, 1)[12..]);
            assert_eq!((r, w, sent), (Ok(true), vec![], true), "{hdr:?}");
        }
    }

    #[test]
    fn tx_header_rules_stop_the_frame() {
        let packet = plain(3000, 1);
        let packet = &packet[12..];
        for (features, hdr, rule, needle) in [
            (
                V1,
                NetHdr {
                    num_buffers: Some(3),
                    ..NetHdr::default()
                },
                Rule::NetTxNumBuffers,
                "transmit chain 0: num_buffers is 3",
            ),
            (
                V1,
                NetHdr {
                    flags: 1,
                    num_buffers: Some(0),
                    ..NetHdr::default()
                },
                Rule::NetTxFlags,
                "flags 0x01 but VIRTIO_NET_F_CSUM was not negotiated",
            ),
            (
                V1 | CSUM,
                NetHdr {
                    flags: 2,
                    num_buffers: Some(0),
                    ..NetHdr::default()
                },
                Rule::NetTxFlags,
                "DATA_VALID",
            ),
            (
                V1 | CSUM,
                tso4_header(),
                Rule::NetTxGsoNotNegotiated,
                "none of HOST_TSO4",
            ),
            (
                V1 | TSO4,
                NetHdr {
                    gso_type: 4,
                    ..tso4_header()
                },
                Rule::NetTxGsoNotNegotiated,
                "(TCPV6/HOST_TSO6) without its feature",
            ),
            (
                V1 | TSO4,
                NetHdr {
                    flags: 0,
                    ..tso4_header()
                },
                Rule::NetTxGsoWithoutCsum,
                "no VIRTIO_NET_HDR_F_NEEDS_CSUM",
            ),
            (
                V1 | TSO4,
                NetHdr {
                    gso_size: 0,
                    ..tso4_header()
                },
                Rule::NetTxGsoSizeZero,
                "gso_size 0",
            ),
            (
                V1 | TSO4,
                NetHdr {
                    csum_start: 2980,
                    ..tso4_header()
                },
                Rule::NetTxCsumOutsidePacket,
                "csum_start 2980 + csum_offset 16 + 2 = 2998, beyond the 2988-byte packet",
            ),
        ] {
            let (r, _, sent) = send_one(features, hdr, packet);
            expect(r, rule, needle);
            assert!(!sent, "{rule:?}: the frame was sent");
        }
    }

    #[test]
    fn tx_ecn_without_host_ecn_is_a_warning_and_the_frame_goes() {
        let hdr = NetHdr {
            gso_type: 0x81,
            ..tso4_header()
        };
        let (r, w, sent) = send_one(V1 | TSO4, hdr, &plain(3000, 1)[12..]);
        assert_eq!((r, sent), (Ok(true), true));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].rule, Rule::NetTxEcnWithoutHostEcn);
        assert!(
            w[0].detail.contains("transmit chain 0: gso_type 0x81"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn legacy_headers_are_checked_in_their_own_size() {
        // 10 bytes without MRG_RXBUF: no num_buffers, so bytes 10..12 are
        // the packet's, whatever they hold.
        let legacy = NetHdr {
            num_buffers: None,
            ..NetHdr::default()
        };
        let mut packet = plain(60, 1)[12..].to_vec();
        packet[..2].copy_from_slice(&[7, 7]);
        assert_eq!(send_one(LEGACY, legacy, &packet).0, Ok(true));
        let (r, _, _) = send_one(LEGACY, NetHdr { flags: 1, ..legacy }, &packet);
        expect(r, Rule::NetTxFlags, "flags 0x01");
        // With MRG_RXBUF the legacy header has num_buffers too.
        let mrg = LEGACY | 1 << VIRTIO_NET_F_MRG_RXBUF;
        let (r, _, _) = send_one(
            mrg,
            NetHdr {
                num_buffers: Some(1),
                ..legacy
            },
            &packet,
        );
        expect(r, Rule::NetTxNumBuffers, "num_buffers is 1");
    }

    #[test]
    fn legacy_header_alone_without_any_layout() {
        let f = plain(60, 4);
        let legacy_hdr = &f[..10];
        let data = &f[12..];
        let mem = ram();
        mem.write_slice(legacy_hdr, GuestAddress(0x1000)).unwrap();
        mem.write_slice(data, GuestAddress(0x2000)).unwrap();
        mem.write_slice(&[legacy_hdr, data].concat(), GuestAddress(0x3000))
            .unwrap();
        // Header alone, then the data: fine; with ANY_LAYOUT, one buffer is too.
        for (features, bufs) in [
            (MAC, vec![(0x1000, 10, false), (0x2000, 48, false)]),
            (LEGACY, vec![(0x3000, 58, false)]),
        ] {
            let (mut peer, _rx, mut tx) = device(features);
            let (mut drv, mut q) = Driver::new(&mem, 1, features);
            drv.post(&bufs);
            assert!(tx.process(&mut q, &mem).unwrap(), "{bufs:?}");
            assert_eq!(recv(&mut peer).unwrap(), f);
        }
        let (_peer, _rx, mut tx) = device(MAC);
        let (mut drv, mut q) = Driver::new(&mem, 1, MAC);
        drv.post(&[(0x3000, 58, false)]);
        expect(
            tx.process(&mut q, &mem),
            Rule::NetLegacyHeaderNotAlone,
            "transmit chain 0 starts with a 58-byte buffer, not the 10-byte virtio-net header alone",
        );

        // Receive, the same: header alone passes, one buffer does not.
        let (_peer, mut rx, _tx) = device(MAC);
        let (mut drv, mut q) = Driver::new(&mem, 0, MAC);
        drv.post(&[(0x4000, 10, true), (0x5000, 1518, true)]);
        assert!(!rx.process(&mut q, &mem).unwrap());
        drv.post(&[(0x6000, 1528, true)]);
        expect(
            rx.process(&mut q, &mem),
            Rule::NetLegacyHeaderNotAlone,
            "receive chain 2 starts with a 1528-byte buffer",
        );
    }

    #[test]
    fn rx_buffers_are_checked_when_posted() {
        // No frame arrives: the short buffer is found all the same.
        let mem = ram();
        let (_peer, mut rx, _tx) = device(MRG);
        let (mut drv, mut q) = Driver::new(&mem, 0, MRG);
        drv.post(&[(0x1000, 1526, true)]);
        assert!(!rx.process(&mut q, &mem).unwrap());
        drv.post(&[(0x2000, 8, true)]);
        expect(
            rx.process(&mut q, &mem),
            Rule::NetRxBufferTooShort,
            "receive chain 1 holds 8 bytes",
        );
    }

    #[test]
    fn rx_small_buffers_without_mrg_rxbuf_are_a_warning() {
        let mem = ram();
        let (mut peer, mut rx, _tx) = device(V1);
        let (mut drv, mut q) = Driver::new(&mem, 0, V1);
        // Too short for any frame: given back empty; short for a full
        // frame: used for the frames that fit.
        let tiny = drv.post(&[(0x1000, 8, true)]);
        let small = drv.post(&[(0x2000, 512, true)]);
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(tiny, 0)]);
        let w = q.take_findings();
        assert_eq!(
            w.iter().map(|v| v.rule).collect::<Vec<_>>(),
            [Rule::NetRxBufferSmall, Rule::NetRxBufferSmall]
        );
        assert!(
            w[1].detail
                .contains("receive chain 1 holds 512 bytes, less than the 1526"),
            "{}",
            w[1]
        );
        peer.write_all(&frame(100, 1)).unwrap();
        assert!(rx.process(&mut q, &mem).unwrap());
        assert_eq!(drv.used(), vec![(small, 100)]);
        // With guest TSO the driver should post room for 64 KiB.
        let gso = V1 | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
        let (_peer, mut rx, _tx) = device(gso);
        let (mut drv, mut q) = Driver::new(&mem, 0, gso);
        drv.post(&[(0x1000, 1526, true)]);
        assert!(!rx.process(&mut q, &mem).unwrap());
        let w = q.take_findings();
        assert!(
            w.len() == 1 && w[0].detail.contains("less than the 65562"),
            "{w:?}"
        );
    }

    #[test]
    fn a_driver_without_mac_is_warned_once_by_the_first_queue_to_run() {
        let mem = ram();
        let features = feature::VERSION_1;
        let (_peer, mut rx, mut tx) = device(features);
        let (_drv, mut rq) = Driver::new(&mem, 0, features);
        let (_drv, mut tq) = Driver::new(&mem, 1, features);
        assert!(!tx.process(&mut tq, &mem).unwrap());
        let w = tq.take_findings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!((w[0].rule, w[0].queue), (Rule::NetMacNotAccepted, Some(1)));
        assert!(!tx.process(&mut tq, &mem).unwrap());
        assert!(!rx.process(&mut rq, &mem).unwrap());
        assert_eq!((tq.take_findings(), rq.take_findings()), (vec![], vec![]));
    }

    #[test]
    fn either_or_prerequisites_are_checked_at_driver_ok() {
        use virtio_bindings::bindings::virtio_net::{
            VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO6,
        };
        let mem = ram();
        let ecn = 1u64 << VIRTIO_NET_F_HOST_ECN;
        let (_peer, mut rx, _tx) = device(V1 | CSUM | ecn);
        let (_drv, mut q) = Driver::new(&mem, 0, V1 | CSUM | ecn);
        expect(
            rx.process(&mut q, &mem),
            Rule::FeatureMissingPrerequisite,
            &format!("feature {ecn:#x} needs one of 0x1800"),
        );
        for other in [TSO4, CSUM | 1 << VIRTIO_NET_F_HOST_TSO6] {
            let (_peer, mut rx, _tx) = device(V1 | other | ecn);
            let (_drv, mut q) = Driver::new(&mem, 0, V1 | other | ecn);
            assert_eq!(rx.process(&mut q, &mem), Ok(false));
        }
    }

    /// Counts how often the worker runs the handler.
    struct Counting(Box<dyn QueueHandler>, Arc<AtomicUsize>);

    impl QueueHandler for Counting {
        fn process(
            &mut self,
            queue: &mut CheckedQueue,
            mem: &GuestMemoryMmap,
        ) -> Result<bool, Violation> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.process(queue, mem)
        }
        fn backend_fd(&self) -> Option<RawFd> {
            self.0.backend_fd()
        }
    }

    /// The real worker thread: with frames waiting and no buffers it
    /// sleeps instead of spinning, and a kick after buffers are posted
    /// gets them delivered and the guest interrupted.
    #[test]
    fn worker_sleeps_while_stalled_and_resumes_on_kick() {
        let mem = ram();
        let (mut peer, rx, _tx) = device(V1);
        let (mut drv, q) = Driver::new(&mem, 0, V1);
        let calls = Arc::new(AtomicUsize::new(0));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt {
            msix: Arc::new(Mutex::new(Msix::new(1))),
            vectors: vec![],
            intx: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            isr: Arc::new(AtomicU8::new(0)),
        });
        let violations = Arc::new(Mutex::new(Vec::new()));
        let sink = violations.clone();
        let worker = Worker::spawn(WorkerSetup {
            name: "net-rx-test".into(),
            device_type: 1,
            queue: q,
            handler: Box::new(Counting(rx, calls.clone())),
            kick: kick.try_clone().unwrap(),
            vector: 0,
            interrupt: interrupt.clone(),
            violations: Arc::new(move |v| sink.lock().unwrap().push(v)),
            failed: Arc::new(|what| panic!("{what}")),
            mem: mem.clone(),
        })
        .unwrap();

        for i in 0..3 {
            peer.write_all(&frame(60 + i, i as u8)).unwrap();
        }
        // The worker wakes for the frames and finds no buffers: wait until
        // it did (however slow the machine), then give it time to spin if
        // it would; a spinning worker makes thousands of calls in 300 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the worker never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        let stalled = calls.load(Ordering::SeqCst);
        assert!(
            (1..=3).contains(&stalled),
            "{stalled} calls while stalled: the worker spins"
        );
        assert_eq!(interrupt.intx.read().ok(), None, "nothing was used");

        let heads: Vec<u16> = (0..3)
            .map(|i| drv.post(&[(0x1000 * (i + 1), 1526, true)]))
            .collect();
        kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut used = Vec::new();
        while used.len() < 3 && Instant::now() < deadline {
            used.extend(drv.used());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(used, vec![(heads[0], 60), (heads[1], 61), (heads[2], 62)]);
        assert!(interrupt.intx.read().is_ok(), "the guest was interrupted");
        std::thread::sleep(Duration::from_millis(100));
        let after = calls.load(Ordering::SeqCst) - stalled;
        assert!(after <= 3, "{after} calls after one kick");
        assert!(worker.stop(Instant::now() + Duration::from_secs(5)).is_ok());
        assert!(violations.lock().unwrap().is_empty());
    }
}
