//! Checked split virtqueues: the only way device handlers see guest buffers.
//!
//! The transport hands [`CheckedQueue::new`] the values the driver programmed
//! (size, ring addresses, negotiated features); each device's worker thread
//! then [`pop`](CheckedQueue::pop)s chains the driver made available, works on
//! their [`Buffer`]s in guest RAM, returns them with
//! [`add_used`](CheckedQueue::add_used) and asks
//! [`needs_interrupt`](CheckedQueue::needs_interrupt) before signalling.
//!
//! Ring state (next available / used index, event-index suppression) lives in
//! [`virtio_queue::Queue`]; the descriptor walk is done here, straight from
//! guest memory, because the crate's iterator silently stops on the very
//! conditions a strict launcher must report. Every breach of a virtio 1.0
//! split-virtqueue rule (§2.4) becomes a [`Violation`] naming the [`Rule`],
//! the queue, and the exact values, and goes back up through the handler to
//! the worker and the transport. A queue that reported a violation keeps
//! reporting it: the driver must reset the device before it is used again.
//!
//! Each queue carries its worker's [`Gate`] into the device's current
//! activation: handlers step out of it for blocking host I/O, and after a
//! reset the queue writes nothing more to the used ring.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_AVAIL_F_NO_INTERRUPT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions};

use super::gate::Gate;
use super::rules::{Rule, Violation};
use crate::trace::Tracer;

/// Size of one `struct virtq_desc`.
const DESC_SIZE: u64 = 16;
/// `flags` + `idx` before the available ring's entries.
const AVAIL_HEADER: u64 = 4;
/// A chain may carry at most 2^32 bytes in total (§2.4.5.1).
const MAX_CHAIN_BYTES: u64 = 1 << 32;

/// One guest buffer of a chain, already known to lie wholly in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE); otherwise device-readable.
    pub writable: bool,
}

/// A validated descriptor chain: readable buffers first, then writable ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Head descriptor index, which [`CheckedQueue::add_used`] gives back.
    pub head: u16,
    pub buffers: Vec<Buffer>,
}

impl Chain {
    /// The buffers the device reads (requests, payloads from the driver).
    pub fn readable(&self) -> impl Iterator<Item = &Buffer> {
        self.buffers.iter().filter(|b| !b.writable)
    }

    /// The buffers the device fills (responses, status bytes).
    pub fn writable(&self) -> impl Iterator<Item = &Buffer> {
        self.buffers.iter().filter(|b| b.writable)
    }

    pub fn readable_len(&self) -> u64 {
        self.readable().map(|b| u64::from(b.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable().map(|b| u64::from(b.len)).sum()
    }

    /// Gathers the readable bytes in chain order, at most `limit` of them,
    /// so a device can parse a request without walking buffers itself.
    pub fn read_all(
        &self,
        mem: &GuestMemoryMmap,
        limit: usize,
    ) -> Result<Vec<u8>, GuestMemoryError> {
        let total = usize::try_from(self.readable_len()).unwrap_or(usize::MAX);
        let mut out = vec![0u8; total.min(limit)];
        let mut done = 0;
        for b in self.readable() {
            if done == out.len() {
                break;
            }
            let n = (b.len as usize).min(out.len() - done);
            mem.read_slice(&mut out[done..done + n], b.addr)?;
            done += n;
        }
        Ok(out)
    }

    /// Scatters `data` over the writable buffers in chain order. Returns the
    /// bytes written (what the used ring's `len` should say); data that does
    /// not fit is dropped, so callers compare with `data.len()` if it matters.
    pub fn write_all(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<u32, GuestMemoryError> {
        // The used ring's len is 32 bits wide; never claim more than that.
        let data = &data[..data.len().min(u32::MAX as usize)];
        let mut done = 0;
        for b in self.writable() {
            if done == data.len() {
                break;
            }
            let n = (b.len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], b.addr)?;
            done += n;
        }
        Ok(u32::try_from(done).unwrap_or(u32::MAX))
    }
}

/// Where a descriptor was read from, for violation details.
#[derive(Clone, Copy)]
enum Table {
    /// The queue's own descriptor table.
    Direct,
    /// An indirect table at this address, reached through this direct descriptor.
    Indirect { addr: GuestAddress, from: u16 },
}

impl Table {
    fn name(self, i: u16) -> String {
        match self {
            Table::Direct => format!("descriptor {i}"),
            Table::Indirect { addr, from } => format!(
                "entry {i} of the indirect table at {:#x} (from descriptor {from})",
                addr.0
            ),
        }
    }
}

/// State of one chain walk.
struct Walk {
    head: u16,
    buffers: Vec<Buffer>,
    bytes: u64,
    /// Descriptors visited so far, direct and indirect; bounded by the queue size.
    count: u32,
    /// Findings that do not stop the walk.
    warnings: Vec<Violation>,
}

/// One split virtqueue as the driver set it up, checked against §2.4.
#[derive(Debug)]
pub struct CheckedQueue {
    queue: Queue,
    index: u16,
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    indirect_allowed: bool,
    /// VIRTIO_F_EVENT_IDX negotiated: `used_event` replaces NO_INTERRUPT.
    event_idx: bool,
    /// The first violation seen; a broken queue stays broken until reset.
    broken: Option<Violation>,
    /// avail.idx as last read: it may never go back (§2.7.6.1 of 1.2).
    seen_avail: Wrapping<u16>,
    /// Heads made available and read from the ring but not popped yet.
    ahead: std::collections::VecDeque<u16>,
    /// Per head: how often it is exposed now (made available and not used
    /// yet). A second exposure of a head while the first lasts is
    /// `BufferReusedInFlight` (§3.3.1 of 1.2).
    exposed: Vec<u16>,
    /// Findings the device got past, for the worker to report.
    warnings: Vec<Violation>,
    /// The worker's way into the device's current activation: the used
    /// ring is written only from inside it (see [`super::gate`]).
    gate: Gate,
    /// The device's tracer: handlers trace decoded requests with it, the
    /// worker notifications and interrupts.
    trace: Tracer,
}

impl CheckedQueue {
    /// Builds the queue from the values the driver programmed through the
    /// transport; `max_size` is the device's limit for this queue.
    // The arguments mirror the transport's per-queue registers one to one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u16,
        max_size: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        features: u64,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, Violation> {
        let v = |rule, detail: String| Violation::new(rule, detail).on_queue(index);
        if size == 0 || !size.is_power_of_two() || size > max_size {
            return Err(v(
                Rule::QueueSizeInvalid,
                format!("queue size {size}, device maximum {max_size}"),
            ));
        }
        let mut queue = Queue::new(max_size).map_err(|e| {
            v(
                Rule::QueueSizeInvalid,
                format!("device maximum {max_size} is not a valid queue size: {e}"),
            )
        })?;
        queue.set_size(size);

        let n = u64::from(size);
        // (name, address, alignment, length) per §2.4.
        let rings = [
            ("descriptor table", desc, 16, DESC_SIZE * n),
            ("available ring", avail, 2, 6 + 2 * n),
            ("used ring", used, 4, 6 + 8 * n),
        ];
        for (name, addr, align, len) in rings {
            if addr % align != 0 {
                return Err(v(
                    Rule::QueueAddressAlignment,
                    format!("{name} at {addr:#x} is not {align}-byte aligned"),
                ));
            }
            if !in_ram(mem, GuestAddress(addr), len) {
                return Err(v(
                    Rule::QueueAddressOutsideMemory,
                    format!(
                        "{name} at {addr:#x}..{:#x} is not all guest RAM",
                        addr.wrapping_add(len)
                    ),
                ));
            }
        }
        // Alignment was checked above, so these cannot fail.
        let set = [
            queue.try_set_desc_table_address(GuestAddress(desc)),
            queue.try_set_avail_ring_address(GuestAddress(avail)),
            queue.try_set_used_ring_address(GuestAddress(used)),
        ];
        if let Some(Err(e)) = set.into_iter().find(Result::is_err) {
            return Err(v(Rule::QueueAddressAlignment, e.to_string()));
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Ok(Self {
            queue,
            index,
            indirect_allowed: features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0,
            event_idx,
            broken: None,
            seen_avail: Wrapping(0),
            ahead: std::collections::VecDeque::new(),
            exposed: vec![0; usize::from(size)],
            warnings: Vec::new(),
            gate: Gate::always_open(),
            trace: Tracer::quiet(String::new()),
        })
    }

    /// Ties the queue to the device activation `gate` belongs to; until
    /// then (handlers tested without a transport) its gate never closes.
    pub fn set_gate(&mut self, gate: Gate) {
        self.gate = gate;
    }

    /// Traces through `trace` (the device's); until then, nowhere.
    pub fn set_tracer(&mut self, trace: Tracer) {
        self.trace = trace;
    }

    pub fn tracer(&self) -> &Tracer {
        &self.trace
    }

    /// The gate a handler steps out of for blocking host I/O
    /// ([`Gate::outside`]).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Checks what the driver must have set up before the device first
    /// uses the queue: used.flags is 0 (§2.7.10.1 of 1.2). Called at
    /// DRIVER_OK, before the device writes the used ring itself.
    pub fn check_fresh(&self, mem: &GuestMemoryMmap) -> Result<(), Violation> {
        let used = self.queue.used_ring();
        let flags = mem.read_obj::<u16>(GuestAddress(used)).map(u16::from_le);
        match flags {
            Ok(0) => Ok(()),
            Ok(f) => Err(self.violation(
                Rule::UsedFlagsNotZero,
                format!("used.flags at {used:#x} is {f:#x}"),
            )),
            Err(e) => Err(self.violation(
                Rule::QueueAddressOutsideMemory,
                format!("reading used.flags: {e}"),
            )),
        }
    }

    /// Records a rule a request broke that the device handled anyway (a
    /// SHOULD, a device limit, or a MUST the device still answered, such
    /// as a read past the capacity getting IOERR): the worker reports it
    /// after the handler returns, with its level's consequences, and goes
    /// on. A MUST the handler cannot get past is its `Err` instead.
    pub fn record(&mut self, rule: Rule, detail: String) {
        let v = self.violation(rule, detail);
        self.warnings.push(v);
    }

    /// The findings recorded since the last call.
    pub fn take_findings(&mut self) -> Vec<Violation> {
        std::mem::take(&mut self.warnings)
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// Next available chain, validated; `Ok(None)` when the driver made
    /// nothing new available. A violating chain is consumed, and the queue
    /// reports the same violation from then on.
    pub fn pop(&mut self, mem: &GuestMemoryMmap) -> Result<Option<Chain>, Violation> {
        if let Some(v) = &self.broken {
            return Err(v.clone());
        }
        let r = self.pop_inner(mem);
        if let Err(v) = &r {
            self.broken = Some(v.clone());
        }
        r
    }

    fn pop_inner(&mut self, mem: &GuestMemoryMmap) -> Result<Option<Chain>, Violation> {
        let size = self.queue.size();
        let next = Wrapping(self.queue.next_avail());
        let mut idx = self.avail_idx(mem)?;
        self.check_avail_flags(mem)?;
        if idx == next {
            // Drained: re-arm the driver's notifications (with EVENT_IDX the
            // driver only kicks when it passes avail_event, which must follow
            // us), then look once more so a buffer added meanwhile is not
            // left waiting for a kick that will never come.
            let more = self.queue.enable_notification(mem).map_err(|e| {
                self.violation(
                    Rule::QueueAddressOutsideMemory,
                    format!("writing the used ring: {e}"),
                )
            })?;
            if !more {
                return Ok(None);
            }
            idx = self.avail_idx(mem)?;
        }
        let pending = (idx - next).0;
        if pending == 0 {
            return Ok(None);
        }
        if pending > size {
            return Err(self.violation(
                Rule::AvailIndexJump,
                format!(
                    "avail.idx is {} but the device has consumed up to {}: {pending} new entries in a queue of {size}",
                    idx.0, next.0
                ),
            ));
        }
        self.note_exposed(mem, next, pending)?;
        let slot = next.0 % size;
        let head = self.ahead.pop_front().unwrap_or(u16::MAX);
        self.queue.set_next_avail((next + Wrapping(1)).0);
        if head >= size {
            return Err(self.violation(
                Rule::DescriptorIndexOutOfRange,
                format!("avail.ring[{slot}] names head descriptor {head}, the table has {size}"),
            ));
        }
        let mut walk = Walk {
            head,
            buffers: Vec::new(),
            bytes: 0,
            count: 0,
            warnings: Vec::new(),
        };
        self.walk_table(
            mem,
            &mut walk,
            GuestAddress(self.queue.desc_table()),
            size,
            head,
            Table::Direct,
        )?;
        self.warnings.append(&mut walk.warnings);
        Ok(Some(Chain {
            head,
            buffers: walk.buffers,
        }))
    }

    /// avail.idx; Acquire, so the ring entries and descriptors behind it are
    /// read after it. It may only move forward.
    fn avail_idx(&mut self, mem: &GuestMemoryMmap) -> Result<Wrapping<u16>, Violation> {
        let idx = self.queue.avail_idx(mem, Ordering::Acquire).map_err(|e| {
            self.violation(
                Rule::QueueAddressOutsideMemory,
                format!("reading avail.idx: {e}"),
            )
        })?;
        let back = (self.seen_avail - idx).0;
        if back != 0 && back < 0x8000 {
            return Err(self.violation(
                Rule::AvailIndexDecrement,
                format!(
                    "avail.idx went back from {} to {}",
                    self.seen_avail.0, idx.0
                ),
            ));
        }
        self.seen_avail = idx;
        Ok(idx)
    }

    /// Follows `next` links through one table (`entries` long) from `start`.
    fn walk_table(
        &self,
        mem: &GuestMemoryMmap,
        walk: &mut Walk,
        base: GuestAddress,
        entries: u16,
        start: u16,
        table: Table,
    ) -> Result<(), Violation> {
        let mut visited = vec![false; usize::from(entries)];
        let mut i = start;
        loop {
            if visited[usize::from(i)] {
                return Err(self.violation(
                    Rule::DescriptorLoop,
                    format!(
                        "the chain from head {} comes back to {}",
                        walk.head,
                        table.name(i)
                    ),
                ));
            }
            visited[usize::from(i)] = true;
            walk.count += 1;
            if walk.count > u32::from(self.queue.size()) {
                return Err(self.violation(
                    Rule::DescriptorLoop,
                    format!(
                        "the chain from head {} is longer than the queue size {} at {}",
                        walk.head,
                        self.queue.size(),
                        table.name(i)
                    ),
                ));
            }
            let at = GuestAddress(base.0 + DESC_SIZE * u64::from(i));
            let d: Descriptor = mem.read_obj(at).map_err(|e| {
                self.violation(
                    Rule::DescriptorOutsideMemory,
                    format!("reading {}: {e}", table.name(i)),
                )
            })?;

            if d.refers_to_indirect_table() {
                return self.indirect(mem, walk, &d, i, table);
            }
            self.add_buffer(mem, walk, &d, i, table)?;
            if !d.has_next() {
                return Ok(());
            }
            if d.next() >= entries {
                return Err(self.violation(
                    Rule::DescriptorIndexOutOfRange,
                    format!(
                        "{} has next {}, the table has {entries}",
                        table.name(i),
                        d.next()
                    ),
                ));
            }
            i = d.next();
        }
    }

    /// Checks an indirect descriptor (§2.4.5.3.1) and walks its table. The
    /// device must accept direct descriptors followed by one indirect one, so
    /// an indirect descriptor ends the direct part of the chain.
    fn indirect(
        &self,
        mem: &GuestMemoryMmap,
        walk: &mut Walk,
        d: &Descriptor,
        i: u16,
        table: Table,
    ) -> Result<(), Violation> {
        let name = table.name(i);
        let from = match table {
            Table::Indirect { .. } => {
                return Err(self.violation(
                    Rule::IndirectNested,
                    format!("{name} has VIRTQ_DESC_F_INDIRECT"),
                ));
            }
            Table::Direct => i,
        };
        if !self.indirect_allowed {
            return Err(self.violation(
                Rule::IndirectNotNegotiated,
                format!("{name} has VIRTQ_DESC_F_INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated"),
            ));
        }
        if d.has_next() {
            return Err(self.violation(
                Rule::IndirectWithNext,
                format!(
                    "{name} has both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT (next {})",
                    d.next()
                ),
            ));
        }
        let len = d.len();
        let entries = u64::from(len) / DESC_SIZE;
        // A chain may not be longer than the queue, so neither may a table.
        if len == 0 || u64::from(len) % DESC_SIZE != 0 || entries > u64::from(self.queue.size()) {
            return Err(self.violation(
                Rule::IndirectTableSize,
                format!(
                    "{name} points to an indirect table of {len} bytes; it must be a non-zero multiple of 16 with at most {} entries",
                    self.queue.size()
                ),
            ));
        }
        let addr = d.addr();
        if !in_ram(mem, addr, u64::from(len)) {
            return Err(self.violation(
                Rule::DescriptorOutsideMemory,
                format!(
                    "{name} points to an indirect table at {:#x}..{:#x}, not all guest RAM",
                    addr.0,
                    addr.0.wrapping_add(u64::from(len))
                ),
            ));
        }
        // entries <= queue size <= 32768, so it fits.
        let entries = u16::try_from(entries).unwrap_or(u16::MAX);
        walk.count -= 1; // the indirect descriptor itself carries no buffer
        self.walk_table(mem, walk, addr, entries, 0, Table::Indirect { addr, from })
    }

    /// Checks one buffer descriptor and appends it to the chain.
    fn add_buffer(
        &self,
        mem: &GuestMemoryMmap,
        walk: &mut Walk,
        d: &Descriptor,
        i: u16,
        table: Table,
    ) -> Result<(), Violation> {
        let name = table.name(i);
        let (addr, len) = (d.addr(), d.len());
        if len == 0 {
            // No spec text forbids it; QEMU refuses it, so drivers that
            // rely on it are not portable. It carries no data either way.
            walk.warnings.push(self.violation(
                Rule::DescriptorZeroLength,
                format!("{name} has length 0 (address {:#x})", addr.0),
            ));
        }
        if !in_ram(mem, addr, u64::from(len)) {
            return Err(self.violation(
                Rule::DescriptorOutsideMemory,
                format!(
                    "{name} covers {:#x}..{:#x}, not all guest RAM",
                    addr.0,
                    addr.0.wrapping_add(u64::from(len))
                ),
            ));
        }
        let writable = d.is_write_only();
        if !writable && walk.buffers.last().is_some_and(|b| b.writable) {
            return Err(self.violation(
                Rule::WriteBeforeRead,
                format!("{name} is device-readable but follows a device-writable descriptor"),
            ));
        }
        walk.bytes += u64::from(len);
        if walk.bytes > MAX_CHAIN_BYTES {
            return Err(self.violation(
                Rule::DescriptorLoop,
                format!(
                    "the chain from head {} exceeds 2^32 bytes at {name}",
                    walk.head
                ),
            ));
        }
        walk.buffers.push(Buffer {
            addr,
            len,
            writable,
        });
        Ok(())
    }

    /// Returns chain `head` to the driver, `len` bytes written into it.
    /// Fails only if the device names a head outside the table (a device
    /// bug, reported loudly all the same) or the used ring cannot be written.
    /// After a reset (the worker is not inside its gate, or its gate's
    /// generation is closed) nothing is written: the ring belongs to the
    /// driver again.
    pub fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), Violation> {
        if !self.gate.may_answer() {
            log::debug!(
                "queue {}: head {head} used after a reset; dropped",
                self.index
            );
            return Ok(());
        }
        let size = self.queue.size();
        if head >= size {
            return Err(self.violation(
                Rule::DescriptorIndexOutOfRange,
                format!("device bug: add_used of head {head}, the table has {size}"),
            ));
        }
        let exposed = &mut self.exposed[usize::from(head)];
        *exposed = exposed.saturating_sub(1);
        self.queue.add_used(mem, head, len).map_err(|e| {
            self.violation(
                Rule::QueueAddressOutsideMemory,
                format!("writing the used ring: {e}"),
            )
        })
    }

    /// Whether the driver wants an interrupt for what was used since the last
    /// call: `used_event` decides with VIRTIO_F_EVENT_IDX, otherwise
    /// VIRTQ_AVAIL_F_NO_INTERRUPT (§2.4.7.2). Errs towards interrupting.
    pub fn needs_interrupt(&mut self, mem: &GuestMemoryMmap) -> bool {
        if !self.gate.may_answer() {
            return false;
        }
        if self.event_idx {
            return self.queue.needs_notification(mem).unwrap_or(true);
        }
        // The used-ring writes must be visible before the driver's flag is read.
        fence(Ordering::SeqCst);
        mem.load::<u16>(GuestAddress(self.queue.avail_ring()), Ordering::Relaxed)
            .map(|flags| u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
            .unwrap_or(true)
    }

    /// Reads the avail ring entries the driver exposed since the last look
    /// (`pending` from `next` on) and counts their heads as exposed; one
    /// already exposed is offered twice before the device used it. The
    /// literal MUST forbids altering an exposed chain, which the device
    /// cannot see; offering it again is suspicious, not proof: a warning.
    fn note_exposed(
        &mut self,
        mem: &GuestMemoryMmap,
        next: Wrapping<u16>,
        pending: u16,
    ) -> Result<(), Violation> {
        let size = self.queue.size();
        while self.ahead.len() < usize::from(pending) {
            let slot = (next + Wrapping(self.ahead.len() as u16)).0 % size;
            let entry = GuestAddress(self.queue.avail_ring() + AVAIL_HEADER + 2 * u64::from(slot));
            let head = mem
                .load::<u16>(entry, Ordering::Acquire)
                .map(u16::from_le)
                .map_err(|e| {
                    self.violation(
                        Rule::QueueAddressOutsideMemory,
                        format!("reading avail.ring[{slot}]: {e}"),
                    )
                })?;
            self.ahead.push_back(head);
            if let Some(n) = self.exposed.get_mut(usize::from(head)) {
                *n += 1;
                if *n > 1 {
                    let v = self.violation(
                        Rule::BufferReusedInFlight,
                        format!("avail.ring[{slot}] names head {head}, which is already available and not used yet"),
                    );
                    self.warnings.push(v);
                }
            }
        }
        Ok(())
    }

    /// avail.flags: 0 or VIRTQ_AVAIL_F_NO_INTERRUPT, and 0 with EVENT_IDX
    /// (§2.7.7.1 of 1.2).
    fn check_avail_flags(&self, mem: &GuestMemoryMmap) -> Result<(), Violation> {
        let at = GuestAddress(self.queue.avail_ring());
        let flags = mem.load::<u16>(at, Ordering::Relaxed).map(u16::from_le);
        let allowed = if self.event_idx {
            0
        } else {
            VRING_AVAIL_F_NO_INTERRUPT as u16
        };
        match flags {
            Ok(f) if f & !allowed == 0 => Ok(()),
            Ok(f) => Err(self.violation(
                Rule::AvailFlagsInvalid,
                format!(
                    "avail.flags is {f:#x}{}",
                    if self.event_idx {
                        " with VIRTIO_F_EVENT_IDX negotiated"
                    } else {
                        ""
                    }
                ),
            )),
            Err(e) => Err(self.violation(
                Rule::QueueAddressOutsideMemory,
                format!("reading avail.flags: {e}"),
            )),
        }
    }

    fn violation(&self, rule: Rule, detail: String) -> Violation {
        Violation::new(rule, detail).on_queue(self.index)
    }
}

/// Whether `addr..addr+len` is wholly guest RAM (and does not wrap).
fn in_ram(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    match (addr.0.checked_add(len), usize::try_from(len)) {
        (Some(_), Ok(len)) => GuestMemory::check_range(mem, addr, len, Permissions::ReadWrite),
        _ => false,
    }
}

/// What the queue's and the devices' handler tests share: the driver side
/// (virtio-queue's mock) and a [`CheckedQueue`] over the same rings.
#[cfg(test)]
pub(crate) mod testing {
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::CheckedQueue;

    /// Entries in the mock queues.
    pub const QSIZE: u16 = 16;
    /// Where our used ring goes: the mock sizes its available ring in
    /// entries, not bytes, so its own used ring would overlap it.
    pub const USED: u64 = 0x400;

    /// A mock driver's rings at `at` and queue `index` over them (device
    /// maximum `max`, [`QSIZE`] entries, used ring at `used`), with
    /// `features` negotiated.
    pub fn mock_queue_at(
        mem: &GuestMemoryMmap,
        at: GuestAddress,
        index: u16,
        max: u16,
        used: u64,
        features: u64,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, CheckedQueue) {
        let vq = MockSplitQueue::create(mem, at, QSIZE);
        let q = CheckedQueue::new(
            index,
            max,
            QSIZE,
            vq.desc_table_addr().0,
            vq.avail_addr().0,
            used,
            features,
            mem,
        )
        .expect("a valid mock queue");
        (vq, q)
    }

    /// [`mock_queue_at`] at address 0 with the used ring at [`USED`].
    pub fn mock_queue(
        mem: &GuestMemoryMmap,
        index: u16,
        max: u16,
        features: u64,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, CheckedQueue) {
        mock_queue_at(mem, GuestAddress(0), index, max, USED, features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::testing::{QSIZE, USED};

    const RAM: u64 = 0x10000;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
    const F_INDIRECT: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
    const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    /// Where tests put indirect tables, clear of the rings and buffers.
    const TABLE: u64 = 0x8000;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// The driver side (the crate's mock) and our queue over the same rings.
    fn setup(
        mem: &GuestMemoryMmap,
        index: u16,
        features: u64,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, CheckedQueue) {
        super::testing::mock_queue(mem, index, 256, features)
    }

    fn put(vq: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16, d: RawDescriptor) {
        vq.desc_table().store(i, d).unwrap();
    }

    /// Makes `head` available in the next ring slot, as a driver would.
    fn offer(vq: &MockSplitQueue<'_, GuestMemoryMmap>, head: u16) {
        let idx = vq.avail().idx().load();
        vq.avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        vq.avail().idx().store(idx.wrapping_add(1));
    }

    fn write_table(mem: &GuestMemoryMmap, at: u64, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(at + 16 * i as u64)).unwrap();
        }
    }

    fn buf(addr: u64, len: u32, writable: bool) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    /// Pops expecting a violation; checks rule and queue index.
    fn expect(q: &mut CheckedQueue, mem: &GuestMemoryMmap, rule: Rule) -> Violation {
        let v = q.pop(mem).unwrap_err();
        assert_eq!(v.rule, rule, "{v}");
        assert_eq!(v.queue, Some(q.index()), "{v}");
        v
    }

    fn new_err(size: u16, desc: u64, avail: u64, used: u64) -> Violation {
        CheckedQueue::new(5, 256, size, desc, avail, used, 0, &ram()).unwrap_err()
    }

    // --- queue setup ---

    #[test]
    fn queue_size_must_be_power_of_two_nonzero_within_max() {
        for size in [0, 3, 100, 512] {
            let v = new_err(size, 0, 0x1000, 0x2000);
            assert_eq!(
                (v.rule, v.queue),
                (Rule::QueueSizeInvalid, Some(5)),
                "{size}: {v}"
            );
        }
    }

    #[test]
    fn ring_addresses_must_be_aligned() {
        for (d, a, u) in [
            (0x8, 0x1000, 0x2000),
            (0, 0x1001, 0x2000),
            (0, 0x1000, 0x2002),
        ] {
            let v = new_err(16, d, a, u);
            assert_eq!(
                (v.rule, v.queue),
                (Rule::QueueAddressAlignment, Some(5)),
                "{v}"
            );
        }
    }

    #[test]
    fn rings_must_lie_wholly_in_ram() {
        // Each ring starts in RAM but its tail (16*n, 6+2*n, 6+8*n) does not.
        let cases = [
            (RAM - 0xf0, 0x1000, 0x2000),
            (0, RAM - 0x20, 0x2000),
            (0, 0x1000, RAM - 0x80),
            (u64::MAX - 0xf, 0x1000, 0x2000),
        ];
        for (d, a, u) in cases {
            let v = new_err(16, d, a, u);
            assert_eq!(
                (v.rule, v.queue),
                (Rule::QueueAddressOutsideMemory, Some(5)),
                "{v}"
            );
        }
        // Exactly fitting at the end of RAM is fine.
        let mem = ram();
        assert!(
            CheckedQueue::new(0, 16, 16, RAM - 0x100, RAM - 0x126, RAM - 0x188, 0, &mem).is_ok()
        );
    }

    // --- well-formed chains ---

    #[test]
    fn nothing_available_pops_none() {
        let mem = ram();
        let (_vq, mut q) = setup(&mem, 0, 0);
        assert_eq!(q.pop(&mem).unwrap(), None);
    }

    #[test]
    fn direct_mixed_chain_is_readable_then_writable() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 1, 0);
        put(&vq, 3, desc(0x1000, 0x10, NEXT, 7));
        put(&vq, 7, desc(0x2000, 0x200, NEXT, 1));
        put(&vq, 1, desc(0x3000, 0x1, WRITE, 0));
        offer(&vq, 3);
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!(c.head, 3);
        assert_eq!(
            c.buffers,
            vec![
                buf(0x1000, 0x10, false),
                buf(0x2000, 0x200, false),
                buf(0x3000, 1, true)
            ]
        );
        assert_eq!((c.readable_len(), c.writable_len()), (0x210, 1));
        assert_eq!(c.readable().count(), 2);
        assert_eq!(c.writable().count(), 1);
        assert_eq!(q.pop(&mem).unwrap(), None);
    }

    #[test]
    fn several_chains_come_out_in_ring_order() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, 0);
        put(&vq, 0, desc(0x1000, 8, 0, 0));
        put(&vq, 1, desc(0x2000, 8, WRITE | NEXT, 2));
        put(&vq, 2, desc(0x3000, 8, WRITE, 0));
        put(&vq, 5, desc(0x4000, 8, 0, 0));
        for h in [5, 0, 1] {
            offer(&vq, h);
        }
        let heads: Vec<_> = std::iter::from_fn(|| q.pop(&mem).unwrap()).collect();
        assert_eq!(
            heads.iter().map(|c| c.head).collect::<Vec<_>>(),
            vec![5, 0, 1]
        );
        assert_eq!(
            heads[2].buffers,
            vec![buf(0x2000, 8, true), buf(0x3000, 8, true)]
        );
    }

    #[test]
    fn avail_index_wraps_around_16_bits() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, 0);
        q.queue.set_next_avail(0xfffe);
        vq.avail().idx().store(0xfffe);
        for h in 0..3 {
            put(&vq, h, desc(0x1000 * (u64::from(h) + 1), 4, 0, 0));
            offer(&vq, h);
        }
        assert_eq!(vq.avail().idx().load(), 1);
        for h in 0..3 {
            assert_eq!(q.pop(&mem).unwrap().unwrap().head, h);
        }
        assert_eq!(q.pop(&mem).unwrap(), None);
        assert_eq!(q.queue.next_avail(), 1);
    }

    #[test]
    fn indirect_chain_is_followed() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 2, F_INDIRECT);
        write_table(
            &mem,
            TABLE,
            &[
                desc(0x1000, 16, NEXT, 2),
                desc(0, 0, 0, 0),
                desc(0x2000, 512, WRITE | NEXT, 3),
                desc(0x3000, 1, WRITE, 0),
            ],
        );
        put(&vq, 4, desc(TABLE, 4 * 16, INDIRECT, 0));
        offer(&vq, 4);
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!(c.head, 4);
        assert_eq!(
            c.buffers,
            vec![
                buf(0x1000, 16, false),
                buf(0x2000, 512, true),
                buf(0x3000, 1, true)
            ]
        );
    }

    #[test]
    fn direct_descriptors_may_precede_one_indirect() {
        // §2.4.5.3.2: the device must handle this shape.
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, F_INDIRECT);
        write_table(&mem, TABLE, &[desc(0x2000, 8, WRITE, 0)]);
        put(&vq, 0, desc(0x1000, 8, NEXT, 1));
        put(&vq, 1, desc(TABLE, 16, INDIRECT | WRITE, 0)); // WRITE on it is ignored
        offer(&vq, 0);
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!(c.buffers, vec![buf(0x1000, 8, false), buf(0x2000, 8, true)]);
    }

    #[test]
    fn read_all_and_write_all_copy_across_buffers() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, 0);
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b" world", GuestAddress(0x2000)).unwrap();
        put(&vq, 0, desc(0x1000, 5, NEXT, 1));
        put(&vq, 1, desc(0x2000, 6, NEXT, 2));
        put(&vq, 2, desc(0x3000, 3, WRITE | NEXT, 3));
        put(&vq, 3, desc(0x4000, 4, WRITE, 0));
        offer(&vq, 0);
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!(c.read_all(&mem, 100).unwrap(), b"hello world");
        assert_eq!(c.read_all(&mem, 7).unwrap(), b"hello w");
        assert_eq!(c.write_all(&mem, b"abcdefghij").unwrap(), 7);
        let mut out = [0u8; 7];
        mem.read_slice(&mut out[..3], GuestAddress(0x3000)).unwrap();
        mem.read_slice(&mut out[3..], GuestAddress(0x4000)).unwrap();
        assert_eq!(&out, b"abcdefg");
        assert_eq!(c.write_all(&mem, b"xy").unwrap(), 2);
    }

    // --- violations on pop ---

    #[test]
    fn avail_index_jump() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 3, 0);
        vq.avail().idx().store(QSIZE + 1);
        let v = expect(&mut q, &mem, Rule::AvailIndexJump);
        assert!(v.detail.contains("avail.idx is 17"), "{v}");
    }

    #[test]
    fn avail_index_may_be_a_full_queue_ahead() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 3, 0);
        for h in 0..QSIZE {
            put(&vq, h, desc(0x1000, 1, 0, 0));
            offer(&vq, h);
        }
        assert_eq!(
            std::iter::from_fn(|| q.pop(&mem).unwrap()).count(),
            usize::from(QSIZE)
        );
    }

    #[test]
    fn head_index_out_of_range() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 4, 0);
        offer(&vq, QSIZE);
        let v = expect(&mut q, &mem, Rule::DescriptorIndexOutOfRange);
        assert!(v.detail.contains("head descriptor 16"), "{v}");
    }

    #[test]
    fn next_index_out_of_range() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 4, 0);
        put(&vq, 0, desc(0x1000, 8, NEXT, 200));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::DescriptorIndexOutOfRange);
        assert!(v.detail.contains("descriptor 0 has next 200"), "{v}");
    }

    #[test]
    fn indirect_next_out_of_range() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 4, F_INDIRECT);
        write_table(
            &mem,
            TABLE,
            &[desc(0x1000, 8, NEXT, 2), desc(0x2000, 8, 0, 0)],
        );
        put(&vq, 0, desc(TABLE, 32, INDIRECT, 0));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::DescriptorIndexOutOfRange);
        assert!(v.detail.contains("indirect table at 0x8000"), "{v}");
    }

    #[test]
    fn descriptor_loop() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 6, 0);
        put(&vq, 0, desc(0x1000, 8, NEXT, 1));
        put(&vq, 1, desc(0x2000, 8, NEXT, 2));
        put(&vq, 2, desc(0x3000, 8, NEXT, 1));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::DescriptorLoop);
        assert!(v.detail.contains("comes back to descriptor 1"), "{v}");
    }

    #[test]
    fn indirect_loop() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 6, F_INDIRECT);
        write_table(
            &mem,
            TABLE,
            &[desc(0x1000, 8, NEXT, 1), desc(0x2000, 8, NEXT, 0)],
        );
        put(&vq, 0, desc(TABLE, 32, INDIRECT, 0));
        offer(&vq, 0);
        expect(&mut q, &mem, Rule::DescriptorLoop);
    }

    #[test]
    fn chain_longer_than_queue() {
        // 2 direct + 15 indirect = 17 buffers in a queue of 16.
        let mem = ram();
        let (vq, mut q) = setup(&mem, 6, F_INDIRECT);
        let table: Vec<_> = (0..15)
            .map(|i| desc(0x1000, 8, if i < 14 { NEXT } else { 0 }, i + 1))
            .collect();
        write_table(&mem, TABLE, &table);
        put(&vq, 0, desc(0x1000, 8, NEXT, 1));
        put(&vq, 1, desc(0x1000, 8, NEXT, 2));
        put(&vq, 2, desc(TABLE, 15 * 16, INDIRECT, 0));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::DescriptorLoop);
        assert!(v.detail.contains("longer than the queue size 16"), "{v}");
    }

    #[test]
    fn descriptor_outside_memory() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 7, 0);
        put(&vq, 0, desc(0x1000, 8, NEXT, 1));
        put(&vq, 1, desc(RAM - 0x10, 0x20, WRITE, 0));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::DescriptorOutsideMemory);
        assert!(
            v.detail.contains("descriptor 1 covers 0xfff0..0x10010"),
            "{v}"
        );
        // Wrapping around the address space is outside too.
        let (vq, mut q) = setup(&mem, 7, 0);
        put(&vq, 0, desc(u64::MAX - 3, 8, 0, 0));
        offer(&vq, 0);
        expect(&mut q, &mem, Rule::DescriptorOutsideMemory);
    }

    #[test]
    fn indirect_table_outside_memory() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 7, F_INDIRECT);
        put(&vq, 0, desc(RAM - 16, 32, INDIRECT, 0));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::DescriptorOutsideMemory);
        assert!(v.detail.contains("indirect table at 0xfff0"), "{v}");
    }

    #[test]
    fn descriptor_zero_length() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 8, 0);
        put(&vq, 0, desc(0x1000, 8, NEXT, 1));
        put(&vq, 1, desc(0x2000, 0, WRITE, 0));
        offer(&vq, 0);
        // A device limit, not a spec rule: the chain goes through, with a
        // warning for the worker to report.
        let chain = q.pop(&mem).unwrap().unwrap();
        assert_eq!(chain.buffers.len(), 2);
        let w = q.take_findings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            (w[0].rule, w[0].queue),
            (Rule::DescriptorZeroLength, Some(8))
        );
        assert!(
            w[0].detail.contains("descriptor 1 has length 0"),
            "{}",
            w[0]
        );
        assert!(q.take_findings().is_empty(), "taken once");
    }

    #[test]
    fn avail_index_may_not_go_back() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 3, 0);
        put(&vq, 0, desc(0x1000, 8, 0, 0));
        put(&vq, 1, desc(0x1100, 8, 0, 0));
        offer(&vq, 0);
        offer(&vq, 1);
        assert_eq!(q.pop(&mem).unwrap().unwrap().head, 0);
        // The driver takes back the entry the device has not read yet.
        vq.avail().idx().store(1);
        let v = expect(&mut q, &mem, Rule::AvailIndexDecrement);
        assert!(v.detail.contains("from 2 to 1"), "{v}");
    }

    #[test]
    fn avail_flags_are_0_or_no_interrupt_and_0_with_event_idx() {
        for (features, flags, ok) in [
            (0, 0, true),
            (0, 1, true),
            (0, 2, false),
            (F_EVENT_IDX, 0, true),
            (F_EVENT_IDX, 1, false),
        ] {
            let mem = ram();
            let (vq, mut q) = setup(&mem, 4, features);
            put(&vq, 0, desc(0x1000, 8, 0, 0));
            offer(&vq, 0);
            mem.write_obj::<u16>(flags, vq.avail_addr()).unwrap();
            if ok {
                assert!(q.pop(&mem).unwrap().is_some(), "flags {flags}");
            } else {
                expect(&mut q, &mem, Rule::AvailFlagsInvalid);
            }
        }
    }

    #[test]
    fn a_head_in_flight_may_not_be_offered_again() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 6, 0);
        put(&vq, 0, desc(0x1000, 8, WRITE, 0));
        offer(&vq, 0);
        assert_eq!(q.pop(&mem).unwrap().unwrap().head, 0);
        assert!(q.take_findings().is_empty());
        offer(&vq, 0);
        assert_eq!(q.pop(&mem).unwrap().unwrap().head, 0, "served all the same");
        let w = q.take_findings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].rule, Rule::BufferReusedInFlight);
        assert!(w[0].detail.contains("head 0"), "{}", w[0]);

        // Twice in one batch: the second is seen when the ring is read.
        let (vq, mut q) = setup(&mem, 6, 0);
        offer(&vq, 0);
        offer(&vq, 0);
        assert_eq!(q.pop(&mem).unwrap().unwrap().head, 0);
        assert_eq!(q.take_findings().len(), 1);

        // Once used, it may come again.
        let (vq, mut q) = setup(&mem, 6, 0);
        offer(&vq, 0);
        assert_eq!(q.pop(&mem).unwrap().unwrap().head, 0);
        q.add_used(&mem, 0, 8).unwrap();
        offer(&vq, 0);
        assert_eq!(q.pop(&mem).unwrap().unwrap().head, 0);
        assert!(q.take_findings().is_empty());
    }

    #[test]
    fn used_flags_must_start_at_zero() {
        let mem = ram();
        let (_vq, q) = setup(&mem, 2, 0);
        q.check_fresh(&mem).unwrap();
        mem.write_obj(1u16, GuestAddress(USED)).unwrap();
        let v = q.check_fresh(&mem).unwrap_err();
        assert_eq!((v.rule, v.queue), (Rule::UsedFlagsNotZero, Some(2)));
    }

    #[test]
    fn write_before_read() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 9, 0);
        put(&vq, 0, desc(0x1000, 8, WRITE | NEXT, 1));
        put(&vq, 1, desc(0x2000, 8, 0, 0));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::WriteBeforeRead);
        assert!(v.detail.contains("descriptor 1 is device-readable"), "{v}");
    }

    #[test]
    fn write_before_read_across_indirect() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 9, F_INDIRECT);
        write_table(&mem, TABLE, &[desc(0x2000, 8, 0, 0)]);
        put(&vq, 0, desc(0x1000, 8, WRITE | NEXT, 1));
        put(&vq, 1, desc(TABLE, 16, INDIRECT, 0));
        offer(&vq, 0);
        expect(&mut q, &mem, Rule::WriteBeforeRead);
    }

    #[test]
    fn indirect_not_negotiated() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 10, 0);
        write_table(&mem, TABLE, &[desc(0x2000, 8, 0, 0)]);
        put(&vq, 0, desc(TABLE, 16, INDIRECT, 0));
        offer(&vq, 0);
        expect(&mut q, &mem, Rule::IndirectNotNegotiated);
    }

    #[test]
    fn indirect_with_next() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 11, F_INDIRECT);
        write_table(&mem, TABLE, &[desc(0x2000, 8, 0, 0)]);
        put(&vq, 0, desc(TABLE, 16, INDIRECT | NEXT, 1));
        put(&vq, 1, desc(0x1000, 8, WRITE, 0));
        offer(&vq, 0);
        expect(&mut q, &mem, Rule::IndirectWithNext);
    }

    #[test]
    fn indirect_nested() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 12, F_INDIRECT);
        write_table(
            &mem,
            TABLE,
            &[
                desc(0x1000, 8, NEXT, 1),
                desc(TABLE + 0x100, 16, INDIRECT, 0),
            ],
        );
        write_table(&mem, TABLE + 0x100, &[desc(0x2000, 8, 0, 0)]);
        put(&vq, 0, desc(TABLE, 32, INDIRECT, 0));
        offer(&vq, 0);
        let v = expect(&mut q, &mem, Rule::IndirectNested);
        assert!(
            v.detail.contains("entry 1 of the indirect table at 0x8000"),
            "{v}"
        );
    }

    #[test]
    fn indirect_table_size() {
        // Zero, not a multiple of 16, more entries than the queue holds.
        for len in [0, 24, 17 * 16] {
            let mem = ram();
            let (vq, mut q) = setup(&mem, 13, F_INDIRECT);
            put(&vq, 0, desc(TABLE, len, INDIRECT, 0));
            offer(&vq, 0);
            let v = expect(&mut q, &mem, Rule::IndirectTableSize);
            assert!(v.detail.contains(&format!("{len} bytes")), "{v}");
        }
    }

    #[test]
    fn a_broken_queue_stays_broken() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 14, 0);
        put(&vq, 0, desc(0x1000, 8, NEXT, 99));
        put(&vq, 1, desc(0x1000, 8, 0, 0));
        offer(&vq, 0);
        offer(&vq, 1);
        let first = expect(&mut q, &mem, Rule::DescriptorIndexOutOfRange);
        assert_eq!(q.pop(&mem).unwrap_err(), first);
    }

    // --- used ring and interrupts ---

    #[test]
    fn draining_rearms_driver_notifications() {
        // With EVENT_IDX the driver kicks only when avail.idx passes
        // avail_event (after the used ring), so a drained queue must publish
        // how far it got.
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, F_EVENT_IDX);
        let avail_event = GuestAddress(USED + 4 + 8 * u64::from(QSIZE));
        mem.write_obj(0xffffu16, avail_event).unwrap();
        for h in 0..3 {
            put(&vq, h, desc(0x1000, 8, 0, 0));
            offer(&vq, h);
        }
        assert_eq!(std::iter::from_fn(|| q.pop(&mem).unwrap()).count(), 3);
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 3);
    }

    #[test]
    fn add_used_fills_the_used_ring() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, 0);
        put(&vq, 2, desc(0x1000, 8, WRITE, 0));
        offer(&vq, 2);
        let c = q.pop(&mem).unwrap().unwrap();
        q.add_used(&mem, c.head, 5).unwrap();
        let read = |off: u64| mem.read_obj::<u32>(GuestAddress(USED + off)).unwrap();
        // used.idx is the upper half of the first word; ring[0] = (id, len).
        assert_eq!((read(0) >> 16, read(4), read(8)), (1, 2, 5));
        let v = q.add_used(&mem, QSIZE, 0).unwrap_err();
        assert_eq!(
            (v.rule, v.queue),
            (Rule::DescriptorIndexOutOfRange, Some(0))
        );
    }

    #[test]
    fn interrupt_unless_no_interrupt_flag() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, 0);
        q.add_used(&mem, 0, 0).unwrap();
        assert!(q.needs_interrupt(&mem));
        mem.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, vq.avail_addr())
            .unwrap();
        q.add_used(&mem, 1, 0).unwrap();
        assert!(!q.needs_interrupt(&mem));
    }

    #[test]
    fn event_idx_uses_used_event_and_ignores_the_flag() {
        let mem = ram();
        let (vq, mut q) = setup(&mem, 0, F_EVENT_IDX);
        let used_event = GuestAddress(vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
        mem.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, vq.avail_addr())
            .unwrap();
        // used_event = 1: interrupt once used.idx moves past 1, i.e. after the second.
        mem.write_obj(1u16, used_event).unwrap();
        q.add_used(&mem, 0, 0).unwrap();
        assert!(!q.needs_interrupt(&mem));
        q.add_used(&mem, 1, 0).unwrap();
        assert!(q.needs_interrupt(&mem));
        q.add_used(&mem, 2, 0).unwrap();
        assert!(!q.needs_interrupt(&mem));
    }
}
