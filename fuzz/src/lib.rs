//! What the fuzz targets share: a plain byte format for their inputs (so
//! the seed corpus can be written by `examples/seeds.rs` with [`Seed`]),
//! a driver that lays descriptor chains into guest memory the way a guest
//! does, and the invariants every queue handler must keep whatever the
//! driver posts.
//!
//! The invariants, checked after every call of a handler:
//! - the device writes guest memory only inside the device-writable
//!   buffers of chains it holds and in the used ring (never a descriptor
//!   table, an indirect table, the available ring or a readable buffer);
//! - every used element names a chain the driver made available and the
//!   device has not returned yet, with a length no larger than that
//!   chain's device-writable bytes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::net::FrameBackend;
use devices::virtio::queue::CheckedQueue;
use devices::virtio::QueueHandler;
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Reads a fuzz input front to back; past its end every number is 0 and
/// every byte string empty, so any input is a valid program.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.le::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    /// A byte string prefixed by its length (one byte).
    pub fn blob(&mut self) -> &'a [u8] {
        let n = self.u8();
        self.bytes(n.into())
    }
}

/// Writes what [`Input`] reads, for the seed corpus.
#[derive(Default)]
pub struct Seed(pub Vec<u8>);

impl Seed {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    pub fn blob(&mut self, v: &[u8]) -> &mut Self {
        let n = u8::try_from(v.len()).expect("a blob holds at most 255 bytes");
        self.u8(n).bytes(v)
    }
}

/// Guest RAM of the handler targets and where the driver puts things in it.
pub mod layout {
    pub const RAM: u64 = 0x10000;
    /// Descriptor table: 16 bytes an entry, 256 entries at most.
    pub const DESC: u64 = 0x0;
    /// Available ring: flags, idx, 256 entries, used_event.
    pub const AVAIL: u64 = 0x1000;
    /// Used ring: flags, idx, 256 elements, avail_event.
    pub const USED: u64 = 0x1400;
    /// Indirect tables, one after the other.
    pub const INDIRECT: u64 = 0x2000;
    /// Buffers live here and nowhere else.
    pub const DATA: u64 = 0x4000;
}
use layout::*;

/// One buffer of a chain as the driver posts it.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Buf {
    /// A buffer read from the input, always inside [`layout::DATA`]: where
    /// it starts, how long (at most to the end of RAM) and its direction.
    pub fn read(input: &mut Input) -> Self {
        let addr = DATA + u64::from(input.u16()) % (RAM - DATA);
        let len = u64::from(input.u16()).min(RAM - addr) as u32;
        let writable = input.bool();
        Buf {
            addr,
            len,
            writable,
        }
    }
}

/// A chain the device has not returned yet.
struct Posted {
    descriptors: Vec<u16>,
    writable: Vec<(u64, u64)>,
    writable_len: u64,
}

/// The guest side of one split virtqueue in its own guest memory.
pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    free: Vec<u16>,
    avail_idx: u16,
    used_idx: u16,
    next_indirect: u64,
    /// By head.
    posted: Vec<Option<Posted>>,
    /// Guest memory before and after a handler runs, kept between runs.
    before: Vec<u8>,
    after: Vec<u8>,
}

/// The queue sizes a driver may pick: powers of two up to the device's
/// maximum (at most 256, what [`layout`] has room for).
pub fn queue_size(pick: u8, max: u16) -> u16 {
    let size = 1u16 << (pick % 9);
    size.min(max).min(256)
}

impl Driver {
    /// Fresh RAM with the queue's rings of `size` entries.
    pub fn new(size: u16) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)])
            .expect("64 KiB of guest memory");
        Self {
            mem,
            size,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_idx: 0,
            next_indirect: INDIRECT,
            posted: (0..size).map(|_| None).collect(),
            before: Vec::new(),
            after: Vec::new(),
        }
    }

    /// The device's view of the rings, with `features` negotiated.
    pub fn queue(&self, index: u16, max: u16, features: u64) -> CheckedQueue {
        CheckedQueue::new(
            index, max, self.size, DESC, AVAIL, USED, features, &self.mem,
        )
        .expect("the driver's rings are valid")
    }

    /// Sets `used_event` (read by the device with EVENT_IDX).
    pub fn set_used_event(&self, v: u16) {
        let at = AVAIL + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(v, GuestAddress(at)).expect("in RAM");
    }

    /// Writes `bytes` into the data area at `offset` (wrapping inside it),
    /// as a driver fills its buffers.
    pub fn fill(&self, offset: u16, bytes: &[u8]) {
        let at = DATA + u64::from(offset) % (RAM - DATA);
        let n = (bytes.len() as u64).min(RAM - at) as usize;
        self.mem
            .write_slice(&bytes[..n], GuestAddress(at))
            .expect("in RAM");
    }

    fn write_desc(&self, at: u64, b: &Buf, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&b.addr.to_le_bytes());
        d[8..12].copy_from_slice(&b.len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(at)).expect("in RAM");
    }

    /// Makes `bufs` available as one chain, in a table of its own if
    /// `indirect`; false if the queue or the indirect area is full.
    pub fn post(&mut self, bufs: &[Buf], indirect: bool) -> bool {
        if bufs.is_empty() {
            return false;
        }
        let n = bufs.len();
        let dir = |b: &Buf| {
            if b.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            }
        };
        let descriptors = if indirect {
            let table = self.next_indirect;
            let len = 16 * n as u64;
            if table + len > DATA {
                return false;
            }
            let Some(head) = self.free.pop() else {
                return false;
            };
            self.next_indirect += len;
            for (i, b) in bufs.iter().enumerate() {
                let next = if i + 1 < n {
                    VRING_DESC_F_NEXT as u16
                } else {
                    0
                };
                self.write_desc(table + 16 * i as u64, b, dir(b) | next, i as u16 + 1);
            }
            let t = Buf {
                addr: table,
                len: len as u32,
                writable: false,
            };
            self.write_desc(
                DESC + 16 * u64::from(head),
                &t,
                VRING_DESC_F_INDIRECT as u16,
                0,
            );
            vec![head]
        } else {
            if self.free.len() < n {
                return false;
            }
            let ids: Vec<u16> = (0..n).filter_map(|_| self.free.pop()).collect();
            for (i, (b, &id)) in bufs.iter().zip(&ids).enumerate() {
                let (flags, next) = match ids.get(i + 1) {
                    Some(&next) => (VRING_DESC_F_NEXT as u16, next),
                    None => (0, 0),
                };
                self.write_desc(DESC + 16 * u64::from(id), b, dir(b) | flags, next);
            }
            ids
        };
        let head = descriptors[0];
        let writable: Vec<(u64, u64)> = bufs
            .iter()
            .filter(|b| b.writable)
            .map(|b| (b.addr, u64::from(b.len)))
            .collect();
        self.posted[usize::from(head)] = Some(Posted {
            descriptors,
            writable_len: writable.iter().map(|w| w.1).sum(),
            writable,
        });
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(slot))
            .expect("in RAM");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .expect("in RAM");
        true
    }

    /// Runs `handler` once as its worker would (process, then the
    /// interrupt decision and the findings) and checks the invariants.
    /// Returns whether the queue reported a violation.
    pub fn run(&mut self, handler: &mut dyn QueueHandler, queue: &mut CheckedQueue) -> bool {
        let allowed: Vec<(u64, u64)> = self
            .posted
            .iter()
            .flatten()
            .flat_map(|p| p.writable.iter().copied())
            .chain([(USED, 6 + 8 * u64::from(self.size))])
            .collect();
        let mut before = std::mem::take(&mut self.before);
        let mut after = std::mem::take(&mut self.after);
        before.resize(RAM as usize, 0);
        after.resize(RAM as usize, 0);
        self.mem
            .read_slice(&mut before, GuestAddress(0))
            .expect("in RAM");
        let result = handler.process(queue, &self.mem);
        self.mem
            .read_slice(&mut after, GuestAddress(0))
            .expect("in RAM");
        // Chunks compare with memcmp; only those that differ byte by byte.
        const CHUNK: usize = 256;
        for (c, (old, new)) in before.chunks(CHUNK).zip(after.chunks(CHUNK)).enumerate() {
            if old == new {
                continue;
            }
            for (i, _) in old.iter().zip(new).enumerate().filter(|(_, (a, b))| a != b) {
                let at = (c * CHUNK + i) as u64;
                assert!(
                    allowed.iter().any(|&(a, l)| at >= a && at - a < l),
                    "the device wrote guest memory at {at:#x}, outside the writable buffers it holds and the used ring"
                );
            }
        }
        (self.before, self.after) = (before, after);
        self.reap();
        let _ = queue.needs_interrupt(&self.mem);
        for finding in queue.take_findings() {
            assert!(!finding.to_string().is_empty());
        }
        match result {
            Ok(_) => false,
            Err(v) => {
                assert!(!v.to_string().is_empty());
                true
            }
        }
    }

    /// Takes what the device put on the used ring, checking each element.
    fn reap(&mut self) {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).expect("in RAM");
        while self.used_idx != idx {
            let at = USED + 4 + 8 * u64::from(self.used_idx % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("in RAM");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("in RAM");
            let posted = usize::try_from(id)
                .ok()
                .and_then(|id| self.posted.get_mut(id))
                .and_then(Option::take);
            let Some(p) = posted else {
                panic!("used element {id} names no chain the device holds");
            };
            assert!(
                u64::from(len) <= p.writable_len,
                "used length {len} of chain {id} exceeds its {} writable bytes",
                p.writable_len
            );
            self.free.extend(p.descriptors);
            self.used_idx = self.used_idx.wrapping_add(1);
        }
    }
}

/// A frame backend in memory: frames queued for the device to receive,
/// and a readiness eventfd as a tap's descriptor would be.
#[derive(Clone)]
pub struct Frames(Arc<FramesInner>);

struct FramesInner {
    incoming: Mutex<VecDeque<Vec<u8>>>,
    ready: EventFd,
    /// Frames the device sent, and whether the next write fails.
    sent: Mutex<usize>,
    refuse: Mutex<Option<io::ErrorKind>>,
}

impl Frames {
    pub fn new() -> Self {
        Frames(Arc::new(FramesInner {
            incoming: Mutex::new(VecDeque::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd"),
            sent: Mutex::new(0),
            refuse: Mutex::new(None),
        }))
    }

    /// A frame for the device to receive (header included).
    pub fn push(&self, frame: &[u8]) {
        self.0.incoming.lock().unwrap().push_back(frame.to_vec());
        let _ = self.0.ready.write(1);
    }

    /// Makes the device's writes fail with `kind` from now on (or not).
    pub fn refuse(&self, kind: Option<io::ErrorKind>) {
        *self.0.refuse.lock().unwrap() = kind;
    }

    pub fn sent(&self) -> usize {
        *self.0.sent.lock().unwrap()
    }

    pub fn backend(&self) -> Box<dyn FrameBackend> {
        Box::new(self.clone())
    }
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBackend for Frames {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.0.incoming.lock().unwrap();
        let Some(frame) = q.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if q.is_empty() {
            let _ = self.0.ready.read();
        }
        // A tap truncates what does not fit the read.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        assert!(
            (devices::virtio::net::VNET_HDR_LEN..=devices::virtio::net::MAX_FRAME)
                .contains(&frame.len()),
            "the device sent a {}-byte frame",
            frame.len()
        );
        if let Some(kind) = *self.0.refuse.lock().unwrap() {
            return Err(kind.into());
        }
        *self.0.sent.lock().unwrap() += 1;
        Ok(())
    }

    fn as_raw_fd(&self) -> RawFd {
        self.0.ready.as_raw_fd()
    }
}

/// A directory for files the targets make (disk images, kernels): tmpfs
/// where there is one, so `fdatasync` costs nothing.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("launcher-fuzz-{}-{name}", std::process::id()))
}

/// One queue of a device under test: the driver's side, the device's
/// checked view of it, and the device's handler.
pub struct Lane {
    pub driver: Driver,
    pub queue: CheckedQueue,
    pub handler: Box<dyn QueueHandler>,
}

impl Lane {
    /// Queue `index` of `size` entries (device maximum `max`) served by
    /// `handler`, with `features` negotiated.
    pub fn new(
        index: u16,
        size: u16,
        max: u16,
        features: u64,
        handler: Box<dyn QueueHandler>,
    ) -> Self {
        let driver = Driver::new(size);
        let queue = driver.queue(index, max, features);
        queue
            .check_fresh(&driver.mem)
            .expect("the used ring starts zeroed");
        Lane {
            driver,
            queue,
            handler,
        }
    }

    fn run(&mut self) -> bool {
        self.driver.run(&mut *self.handler, &mut self.queue)
    }
}

/// Most operations one input runs: a bound on the time an input takes.
pub const MAX_OPS: usize = 200;

/// Runs the operations in `input` on `lanes` (the high nibble of each
/// operation byte picks the lane): post a chain of up to 8 buffers,
/// directly or through an indirect table; run the handler; write bytes
/// into the data area; set `used_event`; or the target's own operation
/// (`extra`: a frame or console input arriving, a backend failing). Each
/// lane's handler runs once more at the end.
pub fn drive(input: &mut Input, lanes: &mut [Lane], mut extra: impl FnMut(&mut Input)) {
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let lane = &mut lanes[usize::from(op >> 4) % lanes.len()];
        match op & 0xf {
            0 => {
                let n = 1 + usize::from(input.u8() % 8);
                let bufs: Vec<Buf> = (0..n).map(|_| Buf::read(input)).collect();
                let indirect = input.bool();
                lane.driver.post(&bufs, indirect);
            }
            1 => {
                lane.run();
            }
            2 => {
                let at = input.u16();
                lane.driver.fill(at, input.blob());
            }
            3 => lane.driver.set_used_event(input.u16()),
            _ => extra(input),
        }
    }
    for lane in lanes {
        lane.run();
    }
}

/// A register map's layout as the transport targets aim at it: where its
/// structures start in the BAR, how big the BAR is, and the widest access
/// its bus makes (8 for MMIO, 4 for port I/O).
pub struct Registers {
    pub bases: &'static [u64],
    pub size: u64,
    pub max_width: usize,
}

impl Registers {
    /// An offset near a structure's start, or (for a pick past the list)
    /// anywhere in the BAR. An access may run past the BAR's end: the bus
    /// only looks at where it starts.
    fn offset(&self, input: &mut Input) -> u64 {
        let pick = usize::from(input.u8());
        let near = u64::from(input.u8());
        match self.bases.get(pick) {
            Some(base) => (base + near) % self.size,
            None => u64::from(input.u16()) % self.size,
        }
    }
}

fn width(input: &mut Input, max: usize) -> usize {
    let widths = [1, 2, 4, 8];
    let n = widths.iter().filter(|&&w| w <= max).count();
    widths[usize::from(input.u8()) % n]
}

/// One guest access to a PCI function with a register BAR: a BAR read or
/// write, a configuration-space read or write as mechanism #1 makes them
/// (offsets 0..=0xff, 1, 2 or 4 bytes, so up to 3 bytes past the end), or
/// a write into guest RAM (rings the transport checks at DRIVER_OK).
pub fn register_op<T>(input: &mut Input, t: &mut T, regs: &Registers, mem: &GuestMemoryMmap)
where
    T: devices::virtio::transport::BarRegisters + devices::pci::root::PciFunction,
{
    let mut buf = [0u8; 8];
    match input.u8() % 5 {
        0 => {
            let at = regs.offset(input);
            let w = width(input, regs.max_width);
            t.bar_read(at, &mut buf[..w]);
        }
        1 => {
            let at = regs.offset(input);
            let w = width(input, regs.max_width);
            buf = input.u64().to_le_bytes();
            t.bar_write(at, &buf[..w]);
        }
        2 => {
            let at = usize::from(input.u8());
            let w = width(input, 4);
            t.config_read(at, &mut buf[..w]);
        }
        3 => {
            let at = usize::from(input.u8());
            let w = width(input, 4);
            buf = input.u64().to_le_bytes();
            t.config_write(at, &buf[..w]);
        }
        _ => {
            let at = u64::from(input.u32()) % mem.last_addr().0;
            let _ = mem.write_slice(input.blob(), GuestAddress(at));
        }
    }
}
