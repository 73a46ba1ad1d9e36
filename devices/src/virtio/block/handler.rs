//! What a virtio-blk request means (virtio 1.0 §5.2.6).
//!
//! Each chain the driver makes available is one request: a 16-byte
//! device-readable header (`type`, `reserved`, `sector`), then the data —
//! device-readable for writes, discard and write-zeroes segments,
//! device-writable for reads and GET_ID — and a final device-writable
//! status byte. The chain is treated as two byte streams (readable, then
//! writable) so buffer boundaries do not matter, as §2.4.4 requires.
//!
//! Data moves between guest RAM and the backing file through a bounce
//! buffer with positional I/O, so requests never share a file offset.
//! Everything the guest could reasonably get wrong at run time (a request
//! past the end of the disk, a write to a read-only disk, an operation not
//! negotiated) and every host I/O error becomes a status byte; only
//! malformed chains — a driver that does not follow the layout at all — are
//! [`Violation`]s, which end the queue.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::{ID_LEN, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SECTOR_SIZE};
use crate::virtio::device::QueueHandler;
use crate::virtio::queue::{Buffer, Chain, CheckedQueue};
use crate::virtio::rules::{Rule, Violation};

/// `struct virtio_blk_outhdr`.
const HEADER_LEN: u64 = 16;
/// `struct virtio_blk_discard_write_zeroes`.
const SEGMENT_LEN: u64 = 16;
/// Bounce buffer size: the most copied per `pread`/`pwrite`.
const BOUNCE_LEN: usize = 1 << 20;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// The backing file and what the driver may know about it, shared by the
/// device and the queue handler of each activation.
pub(super) struct Disk {
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// In 512-byte sectors; no request may reach past it.
    pub(super) capacity: u64,
    pub(super) read_only: bool,
    pub(super) id: [u8; ID_LEN],
}

/// The request queue's handler for one activation.
pub(super) struct BlockQueue {
    disk: Arc<Disk>,
    /// Negotiated features: FLUSH, DISCARD and WRITE_ZEROES requests are
    /// only served if the driver accepted them.
    features: u64,
    bounce: Vec<u8>,
}

/// How a request ended: the status byte and how many data bytes were
/// written into the chain's device-writable buffers before it.
struct Outcome {
    status: u8,
    written: u64,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome { status, written: 0 }
    }
}

/// The request as read from the chain, for checks and violation details.
struct Request {
    head: u16,
    kind: u32,
    sector: u64,
    /// Device-readable bytes after the header.
    out_len: u64,
    /// Device-writable bytes before the status byte.
    in_len: u64,
}

impl Request {
    fn describe(&self) -> String {
        format!(
            "request {} ({}, sector {}): {} device-readable data bytes after the header, {} device-writable data bytes before the status byte",
            self.head,
            type_name(self.kind),
            self.sector,
            self.out_len,
            self.in_len
        )
    }
}

fn type_name(kind: u32) -> String {
    match kind {
        VIRTIO_BLK_T_IN => "T_IN".into(),
        VIRTIO_BLK_T_OUT => "T_OUT".into(),
        VIRTIO_BLK_T_FLUSH => "T_FLUSH".into(),
        VIRTIO_BLK_T_GET_ID => "T_GET_ID".into(),
        VIRTIO_BLK_T_DISCARD => "T_DISCARD".into(),
        VIRTIO_BLK_T_WRITE_ZEROES => "T_WRITE_ZEROES".into(),
        other => format!("type {other}"),
    }
}

/// The `(address, length)` pieces covering bytes `skip..skip+len` of the
/// stream formed by `bufs` in order.
fn pieces<'a>(
    bufs: impl Iterator<Item = &'a Buffer>,
    mut skip: u64,
    mut len: u64,
) -> Vec<(GuestAddress, u64)> {
    let mut out = Vec::new();
    for b in bufs {
        if len == 0 {
            break;
        }
        let blen = u64::from(b.len);
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = (blen - skip).min(len);
        // The queue checked that the whole buffer lies in RAM: no overflow.
        out.push((GuestAddress(b.addr.0 + skip), n));
        len -= n;
        skip = 0;
    }
    out
}

/// Whether `sector .. sector + sectors` lies within the disk.
fn in_range(sector: u64, sectors: u64, capacity: u64) -> bool {
    sector
        .checked_add(sectors)
        .is_some_and(|end| end <= capacity)
}

/// errnos meaning "this filesystem cannot do that fallocate mode".
fn unsupported(e: &vmm_sys_util::errno::Error) -> bool {
    matches!(
        e.errno(),
        libc::EOPNOTSUPP | libc::ENOSYS | libc::ENODEV | libc::ENOTTY
    )
}

impl BlockQueue {
    pub(super) fn new(disk: Arc<Disk>, features: u64) -> Self {
        Self {
            disk,
            features,
            bounce: vec![0; BOUNCE_LEN],
        }
    }

    fn negotiated(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Serves one chain; returns the used length (data written + status).
    fn request(&mut self, chain: &Chain, mem: &GuestMemoryMmap) -> Result<u32, Violation> {
        let (readable, writable) = (chain.readable_len(), chain.writable_len());
        let head = chain.head;
        if readable == 0 {
            return Err(Violation::new(
                Rule::BlkHeaderNotReadable,
                format!(
                    "request {head}: the 16-byte header must be device-readable, but the chain is {writable} device-writable bytes"
                ),
            ));
        }
        if readable < HEADER_LEN {
            return Err(Violation::new(
                Rule::BlkHeaderTooShort,
                format!(
                    "request {head}: {readable} device-readable bytes, too few for the 16-byte header"
                ),
            ));
        }
        let header = chain
            .read_all(mem, HEADER_LEN as usize)
            .map_err(|e| memory_violation(head, e))?;
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let req = Request {
            head,
            // The low half of the first little-endian word is `type`.
            kind: (word(0) & 0xffff_ffff) as u32,
            sector: word(8),
            out_len: readable - HEADER_LEN,
            in_len: writable.saturating_sub(1),
        };
        if writable == 0 {
            return Err(Violation::new(
                Rule::BlkNoStatusByte,
                format!(
                    "{}: no device-writable status byte at the end",
                    req.describe()
                ),
            ));
        }
        let wrong_direction = match req.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => req.out_len > 0,
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => req.in_len > 0,
            _ => false,
        };
        if wrong_direction {
            return Err(Violation::new(
                Rule::BlkDataWrongDirection,
                format!(
                    "{}: its data must be device-{} only",
                    req.describe(),
                    if req.out_len > 0 {
                        "writable"
                    } else {
                        "readable"
                    }
                ),
            ));
        }

        let outcome = self.serve(&req, chain, mem)?;
        // The status byte is the last byte of the last writable buffer.
        if let Some(last) = chain.writable().last() {
            let at = GuestAddress(last.addr.0 + u64::from(last.len) - 1);
            mem.write_obj(outcome.status, at)
                .map_err(|e| memory_violation(head, e))?;
        }
        Ok(u32::try_from(outcome.written + 1).unwrap_or(u32::MAX))
    }

    /// Decides the status of a well-formed request and does its I/O.
    fn serve(
        &mut self,
        req: &Request,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<Outcome, Violation> {
        let needs = match req.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_GET_ID => None,
            VIRTIO_BLK_T_FLUSH => Some(VIRTIO_BLK_F_FLUSH),
            VIRTIO_BLK_T_DISCARD => Some(VIRTIO_BLK_F_DISCARD),
            VIRTIO_BLK_T_WRITE_ZEROES => Some(VIRTIO_BLK_F_WRITE_ZEROES),
            _ => {
                log::debug!("virtio-blk: {}: unsupported", req.describe());
                return Ok(Outcome::status(S_UNSUPP));
            }
        };
        if needs.is_some_and(|bit| !self.negotiated(bit)) {
            log::debug!(
                "virtio-blk: {}: its feature was not negotiated",
                req.describe()
            );
            return Ok(Outcome::status(S_UNSUPP));
        }
        let writes = matches!(
            req.kind,
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
        );
        if writes && self.disk.read_only {
            log::debug!("virtio-blk: {}: the disk is read-only", req.describe());
            return Ok(Outcome::status(S_IOERR));
        }
        match req.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => self.read_write(req, chain, mem),
            VIRTIO_BLK_T_FLUSH => Ok(Outcome::status(match self.disk.file.sync_data() {
                Ok(()) => S_OK,
                Err(e) => host_error(&self.disk, req, "fdatasync", &e),
            })),
            VIRTIO_BLK_T_GET_ID => {
                let n = (req.in_len as usize).min(ID_LEN);
                let written = chain
                    .write_all(mem, &self.disk.id[..n])
                    .map_err(|e| memory_violation(req.head, e))?;
                Ok(Outcome {
                    status: S_OK,
                    written: u64::from(written),
                })
            }
            _ => self.discard_or_zero(req, chain, mem),
        }
    }

    /// T_IN and T_OUT: whole sectors within the disk, or no I/O at all.
    fn read_write(
        &mut self,
        req: &Request,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<Outcome, Violation> {
        let reading = req.kind == VIRTIO_BLK_T_IN;
        let len = if reading { req.in_len } else { req.out_len };
        if len % SECTOR_SIZE != 0 {
            log::debug!(
                "virtio-blk: {}: not a whole number of sectors",
                req.describe()
            );
            return Ok(Outcome::status(S_IOERR));
        }
        if !in_range(req.sector, len / SECTOR_SIZE, self.disk.capacity) {
            log::debug!(
                "virtio-blk: {}: beyond the disk's {} sectors",
                req.describe(),
                self.disk.capacity
            );
            return Ok(Outcome::status(S_IOERR));
        }
        let parts = if reading {
            pieces(chain.writable(), 0, len)
        } else {
            pieces(chain.readable(), HEADER_LEN, len)
        };
        // In range, so sector * 512 + len fits comfortably in a u64.
        let mut offset = req.sector * SECTOR_SIZE;
        let mut written = 0;
        for (addr, plen) in parts {
            let mut done = 0;
            while done < plen {
                let n = (plen - done).min(BOUNCE_LEN as u64) as usize;
                let at = GuestAddress(addr.0 + done);
                let buf = &mut self.bounce[..n];
                let io = if reading {
                    self.disk.file.read_exact_at(buf, offset)
                } else {
                    mem.read_slice(buf, at)
                        .map_err(|e| memory_violation(req.head, e))?;
                    self.disk.file.write_all_at(buf, offset)
                };
                if let Err(e) = io {
                    let op = if reading { "read" } else { "write" };
                    return Ok(Outcome {
                        status: host_error(&self.disk, req, op, &e),
                        written,
                    });
                }
                if reading {
                    mem.write_slice(buf, at)
                        .map_err(|e| memory_violation(req.head, e))?;
                    written += n as u64;
                }
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(Outcome {
            status: S_OK,
            written,
        })
    }

    /// T_DISCARD and T_WRITE_ZEROES: every segment is checked before any
    /// is acted on, so a bad one leaves the disk untouched.
    fn discard_or_zero(
        &mut self,
        req: &Request,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<Outcome, Violation> {
        let zeroing = req.kind == VIRTIO_BLK_T_WRITE_ZEROES;
        let count = req.out_len / SEGMENT_LEN;
        let whole = count * SEGMENT_LEN == req.out_len;
        if count == 0 || !whole || count > u64::from(MAX_DISCARD_SEG) {
            log::debug!(
                "virtio-blk: {}: want 1 to {MAX_DISCARD_SEG} whole 16-byte segments",
                req.describe()
            );
            return Ok(Outcome::status(S_IOERR));
        }
        // count <= MAX_DISCARD_SEG, so this is small.
        let bytes = chain
            .read_all(mem, (HEADER_LEN + req.out_len) as usize)
            .map_err(|e| memory_violation(req.head, e))?;
        let mut segments = Vec::new();
        for seg in bytes[HEADER_LEN as usize..].chunks_exact(SEGMENT_LEN as usize) {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&seg[..8]);
            let sector = u64::from_le_bytes(sector);
            let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            // UNMAP is the only flag, and only for write-zeroes (§5.2.6.2).
            let known = if zeroing {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !known != 0 {
                log::debug!(
                    "virtio-blk: {}: segment flags {flags:#x} unknown",
                    req.describe()
                );
                return Ok(Outcome::status(S_UNSUPP));
            }
            if num > MAX_DISCARD_SECTORS || !in_range(sector, u64::from(num), self.disk.capacity) {
                log::debug!(
                    "virtio-blk: {}: segment of {num} sectors at {sector} is too long or beyond the disk's {} sectors",
                    req.describe(),
                    self.disk.capacity
                );
                return Ok(Outcome::status(S_IOERR));
            }
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            segments.push((sector * SECTOR_SIZE, u64::from(num) * SECTOR_SIZE, unmap));
        }
        for (offset, len, unmap) in segments {
            let r = if zeroing {
                self.zero(offset, len, unmap)
            } else {
                self.punch(offset, len)
            };
            if let Err(e) = r {
                let op = if zeroing { "write-zeroes" } else { "discard" };
                return Ok(Outcome::status(host_error(&self.disk, req, op, &e)));
            }
        }
        Ok(Outcome::status(S_OK))
    }

    /// Discard is a hint: where the filesystem cannot punch holes it does
    /// nothing rather than write zeros over what may be gigabytes.
    fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        match fallocate(&self.disk.file, FallocateMode::PunchHole, true, offset, len) {
            Err(e) if unsupported(&e) => {
                log::debug!(
                    "virtio-blk: {}: cannot punch holes ({e}); discard ignored",
                    self.disk.path.display()
                );
                Ok(())
            }
            r => r.map_err(io::Error::from),
        }
    }

    /// Write-zeroes must leave zeros: punch (if the driver allows unmapping)
    /// or zero the range, and write zeros where the filesystem can do
    /// neither.
    fn zero(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        for punch in [true, false] {
            if punch && !unmap {
                continue;
            }
            let mode = if punch {
                FallocateMode::PunchHole
            } else {
                FallocateMode::ZeroRange
            };
            match fallocate(&self.disk.file, mode, true, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.bounce.fill(0);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BOUNCE_LEN as u64) as usize;
            self.disk
                .file
                .write_all_at(&self.bounce[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A host I/O error fails this request only; the guest sees IOERR.
fn host_error(disk: &Disk, req: &Request, op: &str, e: &io::Error) -> u8 {
    log::warn!(
        "virtio-blk: {}: {op} failed: {e}; {} gets IOERR",
        disk.path.display(),
        req.describe()
    );
    S_IOERR
}

/// Guest memory the queue already validated could not be accessed: report
/// it against the request rather than guess a status.
fn memory_violation(head: u16, e: vm_memory::GuestMemoryError) -> Violation {
    Violation::new(
        Rule::DescriptorOutsideMemory,
        format!("request {head}: accessing its buffers: {e}"),
    )
}

impl QueueHandler for BlockQueue {
    fn process(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            let len = self.request(&chain, mem)?;
            queue.add_used(mem, chain.head, len)?;
            used = true;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_F_RO, VIRTIO_BLK_T_SCSI_CMD};
    use virtio_bindings::bindings::virtio_ring::{
        VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT,
        VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::virtio::block::{Block, BlockConfig, BlockError, QUEUE_SIZE};
    use crate::virtio::device::VirtioDevice;

    const QSIZE: u16 = 16;
    const RAM: u64 = 0x40000;
    /// Our used ring, clear of the mock's rings (see queue.rs's tests).
    const USED: u64 = 0x400;
    const HDR: u64 = 0x1000;
    const STATUS: u64 = 0x1800;
    const TABLE: u64 = 0x2000;
    const DATA: u64 = 0x10000;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const SECTOR: usize = SECTOR_SIZE as usize;
    const F_FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
    const F_DISCARD: u64 = 1 << VIRTIO_BLK_F_DISCARD;
    const F_WZ: u64 = 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    const ALL: u64 = F_FLUSH | F_DISCARD | F_WZ;

    /// A disk image under the temp dir, removed when dropped.
    struct TempDisk(PathBuf);

    impl TempDisk {
        fn new(len: usize) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "launcher-blk-{}-{}.img",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            let bytes: Vec<u8> = (0..len).map(pattern).collect();
            std::fs::write(&path, bytes).unwrap();
            TempDisk(path)
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }

        fn sectors(&self, first: usize, count: usize) -> Vec<u8> {
            self.contents()[first * SECTOR..(first + count) * SECTOR].to_vec()
        }
    }

    impl Drop for TempDisk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The initial contents: never zero, so zeroed ranges stand out.
    fn pattern(i: usize) -> u8 {
        (i % 251) as u8 + 1
    }

    fn open(disk: &TempDisk, read_only: bool, serial: Option<&str>) -> Block {
        Block::open(BlockConfig {
            path: disk.0.clone(),
            read_only,
            serial: serial.map(String::from),
        })
        .unwrap()
    }

    fn handler(block: &mut Block, features: u64) -> Box<dyn QueueHandler> {
        block.activate(features).pop().unwrap()
    }

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // reserved: ignored
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn segment(mem: &GuestMemoryMmap, at: u64, sector: u64, num: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&s, GuestAddress(at)).unwrap();
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// A fresh queue over clean rings, as a driver would set it up.
    fn queue(
        mem: &GuestMemoryMmap,
        features: u64,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, CheckedQueue) {
        mem.write_slice(&[0u8; 0x800], GuestAddress(0)).unwrap();
        let vq = MockSplitQueue::new(mem, QSIZE);
        let q = CheckedQueue::new(
            0,
            QUEUE_SIZE,
            QSIZE,
            vq.desc_table_addr().0,
            vq.avail_addr().0,
            USED,
            features,
            mem,
        )
        .unwrap();
        (vq, q)
    }

    /// Processes chain 0 and returns (status byte, used length).
    fn finish(
        h: &mut dyn QueueHandler,
        mut q: CheckedQueue,
        mem: &GuestMemoryMmap,
        status_at: u64,
    ) -> Result<(u8, u32), Violation> {
        mem.write_obj(0xffu8, GuestAddress(status_at)).unwrap();
        assert!(h.process(&mut q, mem)?);
        let used_idx = mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
        let id = mem.read_obj::<u32>(GuestAddress(USED + 4)).unwrap();
        assert_eq!((used_idx, id), (1, 0));
        let len = mem.read_obj::<u32>(GuestAddress(USED + 8)).unwrap();
        Ok((mem.read_obj(GuestAddress(status_at)).unwrap(), len))
    }

    /// Offers one direct chain of (address, length, device-writable)
    /// buffers and processes it.
    fn run_with(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        features: u64,
        bufs: &[(u64, u32, bool)],
    ) -> Result<(u8, u32), Violation> {
        let (vq, q) = queue(mem, features);
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            vq.desc_table()
                .store(i as u16, desc(addr, len, flags, i as u16 + 1))
                .unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let status_at = bufs
            .iter()
            .rev()
            .find(|b| b.2)
            .map_or(STATUS, |b| b.0 + u64::from(b.1) - 1);
        finish(h, q, mem, status_at)
    }

    fn run(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        bufs: &[(u64, u32, bool)],
    ) -> Result<(u8, u32), Violation> {
        run_with(h, mem, ALL, bufs)
    }

    /// header, data buffers (all of `writable`), status.
    fn simple(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[u32],
        writable: bool,
    ) -> Result<(u8, u32), Violation> {
        header(mem, HDR, kind, sector);
        let mut bufs = vec![(HDR, 16, false)];
        let mut at = DATA;
        for &len in data {
            bufs.push((at, len, writable));
            at += u64::from(len);
        }
        bufs.push((STATUS, 1, true));
        run(h, mem, &bufs)
    }

    fn guest(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn expect(r: Result<(u8, u32), Violation>, rule: Rule, needle: &str) {
        let v = r.unwrap_err();
        assert_eq!(v.rule, rule, "{v}");
        assert!(v.detail.contains(needle), "{v}");
    }

    // --- reads and writes ---

    #[test]
    fn read_write_round_trip() {
        let disk = TempDisk::new(64 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();

        let data: Vec<u8> = (0..2 * SECTOR).map(|i| (i * 7) as u8).collect();
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        // Two data buffers that do not break at a sector boundary.
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_OUT, 3, &[100, 924], false);
        assert_eq!(r.unwrap(), (S_OK, 1));
        assert_eq!(disk.sectors(3, 2), data);
        assert_eq!(disk.sectors(2, 1), TempDisk::new(3 * SECTOR).sectors(2, 1));

        mem.write_slice(&[0u8; 3 * SECTOR], GuestAddress(DATA))
            .unwrap();
        let r = simple(
            h.as_mut(),
            &mem,
            VIRTIO_BLK_T_IN,
            2,
            &[SECTOR as u32, 1000, 24],
            true,
        );
        assert_eq!(r.unwrap(), (S_OK, 3 * SECTOR as u32 + 1));
        assert_eq!(guest(&mem, DATA, 3 * SECTOR), disk.sectors(2, 3));
    }

    #[test]
    fn any_layout_and_indirect_chains() {
        // Header and data in one readable buffer; data and status in one
        // writable buffer; all reached through an indirect table.
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let features = ALL | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;
        let mut h = handler(&mut b, features);
        let mem = ram();
        header(&mem, DATA, VIRTIO_BLK_T_OUT, 5);
        mem.write_slice(&[0xaa; SECTOR], GuestAddress(DATA + 16))
            .unwrap();
        let r = run_with(
            h.as_mut(),
            &mem,
            features,
            &[(DATA, 16 + SECTOR as u32, false), (STATUS, 1, true)],
        );
        assert_eq!(r.unwrap(), (S_OK, 1));
        assert_eq!(disk.sectors(5, 1), vec![0xaa; SECTOR]);

        header(&mem, HDR, VIRTIO_BLK_T_IN, 5);
        let (vq, q) = queue(&mem, features);
        for (i, d) in [
            desc(HDR, 16, NEXT, 1),
            desc(DATA, SECTOR as u32 + 1, WRITE, 0),
        ]
        .iter()
        .enumerate()
        {
            mem.write_obj(*d, GuestAddress(TABLE + 16 * i as u64))
                .unwrap();
        }
        let indirect = VRING_DESC_F_INDIRECT as u16;
        vq.desc_table()
            .store(0, desc(TABLE, 32, indirect, 0))
            .unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        mem.write_slice(&[0u8; SECTOR], GuestAddress(DATA)).unwrap();
        let r = finish(h.as_mut(), q, &mem, DATA + SECTOR as u64);
        assert_eq!(r.unwrap(), (S_OK, SECTOR as u32 + 1));
        assert_eq!(guest(&mem, DATA, SECTOR), vec![0xaa; SECTOR]);
    }

    #[test]
    fn several_requests_in_one_notification() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let (vq, mut q) = queue(&mem, ALL);
        for r in 0..3u16 {
            let hdr = HDR + 16 * u64::from(r);
            let data = DATA + (SECTOR * usize::from(r)) as u64;
            header(&mem, hdr, VIRTIO_BLK_T_IN, u64::from(r));
            let d = 3 * r;
            vq.desc_table()
                .store(d, desc(hdr, 16, NEXT, d + 1))
                .unwrap();
            vq.desc_table()
                .store(d + 1, desc(data, SECTOR as u32, WRITE | NEXT, d + 2))
                .unwrap();
            vq.desc_table()
                .store(d + 2, desc(STATUS + u64::from(r), 1, WRITE, 0))
                .unwrap();
            vq.avail().ring().ref_at(usize::from(r)).unwrap().store(d);
        }
        vq.avail().idx().store(3);
        assert!(h.process(&mut q, &mem).unwrap());
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 3);
        assert_eq!(guest(&mem, STATUS, 3), vec![S_OK; 3]);
        assert_eq!(guest(&mem, DATA, 3 * SECTOR), disk.sectors(0, 3));
        assert!(!h.process(&mut q, &mem).unwrap());
    }

    #[test]
    fn out_of_range_is_ioerr_and_touches_nothing() {
        let disk = TempDisk::new(16 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        mem.write_slice(&[0x55; 2 * SECTOR], GuestAddress(DATA))
            .unwrap();
        for sector in [15, 16, u64::MAX, u64::MAX / 512] {
            let r = simple(
                h.as_mut(),
                &mem,
                VIRTIO_BLK_T_OUT,
                sector,
                &[2 * SECTOR as u32],
                false,
            );
            assert_eq!(r.unwrap(), (S_IOERR, 1), "sector {sector}");
            let r = simple(
                h.as_mut(),
                &mem,
                VIRTIO_BLK_T_IN,
                sector,
                &[2 * SECTOR as u32],
                true,
            );
            assert_eq!(r.unwrap(), (S_IOERR, 1), "sector {sector}");
            assert_eq!(guest(&mem, DATA, 2 * SECTOR), vec![0x55; 2 * SECTOR]);
        }
        assert_eq!(disk.contents(), before);
        // The last sector itself is fine.
        let r = simple(
            h.as_mut(),
            &mem,
            VIRTIO_BLK_T_IN,
            15,
            &[SECTOR as u32],
            true,
        );
        assert_eq!(r.unwrap(), (S_OK, SECTOR as u32 + 1));
    }

    #[test]
    fn partial_sectors_are_ioerr() {
        let disk = TempDisk::new(16 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let r = simple(
            h.as_mut(),
            &mem,
            VIRTIO_BLK_T_OUT,
            0,
            &[SECTOR as u32 + 1],
            false,
        );
        assert_eq!(r.unwrap(), (S_IOERR, 1));
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 0, &[100], true);
        assert_eq!(r.unwrap(), (S_IOERR, 1));
        assert_eq!(disk.contents(), before);
        // No data at all is a valid, empty transfer.
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 0, &[], true);
        assert_eq!(r.unwrap(), (S_OK, 1));
    }

    #[test]
    fn capacity_rounds_down_to_whole_sectors() {
        let disk = TempDisk::new(2 * SECTOR + 100);
        let mut b = open(&disk, false, None);
        assert_eq!(b.capacity(), 2);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 2, &[SECTOR as u32], true);
        assert_eq!(r.unwrap(), (S_IOERR, 1));
    }

    #[test]
    fn host_io_error_is_ioerr_and_the_queue_goes_on() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        // The file shrinks behind the device's back: reads past its new
        // end fail on the host.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.0)
            .unwrap()
            .set_len(4 * SECTOR as u64)
            .unwrap();
        let mem = ram();
        let r = simple(
            h.as_mut(),
            &mem,
            VIRTIO_BLK_T_IN,
            3,
            &[2 * SECTOR as u32],
            true,
        );
        // The short read fails as a whole: nothing is delivered.
        assert_eq!(r.unwrap(), (S_IOERR, 1));
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 0, &[SECTOR as u32], true);
        assert_eq!(r.unwrap(), (S_OK, SECTOR as u32 + 1));
    }

    // --- flush, GET_ID ---

    #[test]
    fn flush() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        assert_eq!(
            simple(h.as_mut(), &mem, VIRTIO_BLK_T_FLUSH, 0, &[], false).unwrap(),
            (S_OK, 1)
        );
    }

    #[test]
    fn get_id_default_and_given_serial() {
        let disk = TempDisk::new(8 * SECTOR);
        let name = disk.0.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.len() > 20);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, 0);
        let mem = ram();
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_GET_ID, 0, &[20], true);
        assert_eq!(r.unwrap(), (S_OK, 21));
        assert_eq!(guest(&mem, DATA, 20), name.as_bytes()[..20].to_vec());

        let mut b = open(&disk, true, Some("disk-7"));
        let mut h = handler(&mut b, 0);
        mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_GET_ID, 0, &[32], true);
        assert_eq!(r.unwrap(), (S_OK, 21));
        let mut want = b"disk-7".to_vec();
        want.resize(20, 0);
        want.extend([0xff; 12]);
        assert_eq!(guest(&mem, DATA, 32), want);
        // A short buffer gets what fits.
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_GET_ID, 0, &[4], true);
        assert_eq!(r.unwrap(), (S_OK, 5));
    }

    // --- discard, write-zeroes ---

    /// Whether the temp dir's filesystem can punch holes.
    fn can_punch(disk: &TempDisk) -> bool {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.0)
            .unwrap();
        fallocate(&f, FallocateMode::PunchHole, true, 0, 0x1000).is_ok()
    }

    #[test]
    fn discard_zeroes_and_frees_the_range() {
        let sectors = 2048; // 1 MiB
        let disk = TempDisk::new(sectors * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let blocks = std::fs::metadata(&disk.0).unwrap().blocks();
        header(&mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
        segment(&mem, DATA, 512, 512, 0);
        let r = run(
            h.as_mut(),
            &mem,
            &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
        );
        assert_eq!(r.unwrap(), (S_OK, 1));
        let after = disk.contents();
        assert_eq!(after.len(), sectors * SECTOR, "discard keeps the size");
        assert_eq!(
            after[..512 * SECTOR],
            TempDisk::new(512 * SECTOR).contents()[..]
        );
        assert_eq!(
            after[1024 * SECTOR..],
            TempDisk::new(sectors * SECTOR).contents()[1024 * SECTOR..]
        );
        if after[512 * SECTOR..1024 * SECTOR].iter().all(|&b| b == 0) {
            let now = std::fs::metadata(&disk.0).unwrap().blocks();
            assert!(now < blocks, "blocks {blocks} -> {now}");
        } else {
            // A filesystem without hole punching: discard is a no-op.
            assert!(!can_punch(&disk));
        }
    }

    #[test]
    fn discard_flags_range_and_segment_count() {
        let disk = TempDisk::new(64 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let chain = [(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)];
        header(&mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
        // UNMAP means nothing for discard.
        segment(&mem, DATA, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_UNSUPP, 1));
        for (sector, num) in [(60, 8), (u64::MAX, 8), (0, MAX_DISCARD_SECTORS + 1)] {
            segment(&mem, DATA, sector, num, 0);
            assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_IOERR, 1));
        }
        // Two segments (more than max_discard_seg), a partial one, none.
        segment(&mem, DATA, 0, 8, 0);
        segment(&mem, DATA + 16, 8, 8, 0);
        for len in [32, 20] {
            let chain = [(HDR, 16, false), (DATA, len, false), (STATUS, 1, true)];
            assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_IOERR, 1));
        }
        let chain = [(HDR, 16, false), (STATUS, 1, true)];
        assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_IOERR, 1));
        assert_eq!(disk.contents(), before);
    }

    #[test]
    fn write_zeroes_with_and_without_unmap() {
        let disk = TempDisk::new(64 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let chain = [(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)];
        header(&mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        segment(&mem, DATA, 3, 5, 0);
        assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_OK, 1));
        segment(&mem, DATA, 20, 9, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_OK, 1));
        segment(&mem, DATA, 40, 1, 0x2);
        assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_UNSUPP, 1));
        segment(&mem, DATA, 60, 5, 0);
        assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_IOERR, 1));

        let after = disk.contents();
        assert_eq!(after.len(), before.len());
        for s in 0..64 {
            let got = &after[s * SECTOR..(s + 1) * SECTOR];
            if (3..8).contains(&s) || (20..29).contains(&s) {
                assert!(got.iter().all(|&b| b == 0), "sector {s}");
            } else {
                assert_eq!(got, &before[s * SECTOR..(s + 1) * SECTOR], "sector {s}");
            }
        }
    }

    // --- status decisions ---

    #[test]
    fn read_only_disk_refuses_writes() {
        let disk = TempDisk::new(16 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, true, None);
        assert!(b.read_only());
        assert_ne!(b.features() & 1 << VIRTIO_BLK_F_RO, 0);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let r = simple(
            h.as_mut(),
            &mem,
            VIRTIO_BLK_T_OUT,
            0,
            &[SECTOR as u32],
            false,
        );
        assert_eq!(r.unwrap(), (S_IOERR, 1));
        for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            header(&mem, HDR, kind, 0);
            segment(&mem, DATA, 0, 8, 0);
            let chain = [(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)];
            assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_IOERR, 1));
        }
        assert_eq!(disk.contents(), before);
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 0, &[SECTOR as u32], true);
        assert_eq!(r.unwrap(), (S_OK, SECTOR as u32 + 1));
        assert_eq!(guest(&mem, DATA, SECTOR), before[..SECTOR]);
    }

    #[test]
    fn unknown_types_are_unsupp() {
        let disk = TempDisk::new(16 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        for kind in [VIRTIO_BLK_T_SCSI_CMD, 3, 99, u32::MAX] {
            // Data in either direction is fine: the type is not understood.
            let r = simple(h.as_mut(), &mem, kind, 0, &[SECTOR as u32], true);
            assert_eq!(r.unwrap(), (S_UNSUPP, 1), "type {kind}");
            let r = simple(h.as_mut(), &mem, kind, 0, &[SECTOR as u32], false);
            assert_eq!(r.unwrap(), (S_UNSUPP, 1), "type {kind}");
        }
    }

    #[test]
    fn types_need_their_features_negotiated() {
        let disk = TempDisk::new(16 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mem = ram();
        let cases = [
            (VIRTIO_BLK_T_FLUSH, F_FLUSH),
            (VIRTIO_BLK_T_DISCARD, F_DISCARD),
            (VIRTIO_BLK_T_WRITE_ZEROES, F_WZ),
        ];
        for (kind, feature) in cases {
            let mut h = handler(&mut b, ALL & !feature);
            header(&mem, HDR, kind, 0);
            segment(&mem, DATA, 0, 8, 0);
            let chain: &[_] = if kind == VIRTIO_BLK_T_FLUSH {
                &[(HDR, 16, false), (STATUS, 1, true)]
            } else {
                &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]
            };
            let r = run_with(h.as_mut(), &mem, ALL & !feature, chain);
            assert_eq!(r.unwrap(), (S_UNSUPP, 1), "{}", type_name(kind));
            let mut h = handler(&mut b, feature);
            let r = run_with(h.as_mut(), &mem, feature, chain);
            assert_eq!(r.unwrap(), (S_OK, 1), "{}", type_name(kind));
        }
        // The successful discard / write-zeroes zeroed sectors 0..8 only.
        let after = disk.contents();
        assert_eq!(after[8 * SECTOR..], before[8 * SECTOR..]);
    }

    // --- driver bugs ---

    #[test]
    fn header_must_be_sixteen_readable_bytes() {
        let disk = TempDisk::new(16 * SECTOR);
        let mut b = open(&disk, false, None);
        let mem = ram();
        let mut h = handler(&mut b, ALL);
        let r = run(h.as_mut(), &mem, &[(HDR, 16, true), (STATUS, 1, true)]);
        expect(
            r,
            Rule::BlkHeaderNotReadable,
            "request 0: the 16-byte header must be device-readable",
        );
        let mut h = handler(&mut b, ALL);
        let r = run(
            h.as_mut(),
            &mem,
            &[(HDR, 8, false), (HDR + 8, 4, false), (STATUS, 1, true)],
        );
        expect(r, Rule::BlkHeaderTooShort, "12 device-readable bytes");
    }

    #[test]
    fn status_byte_is_required() {
        let disk = TempDisk::new(16 * SECTOR);
        let mut b = open(&disk, false, None);
        let mem = ram();
        let mut h = handler(&mut b, ALL);
        header(&mem, HDR, VIRTIO_BLK_T_OUT, 1);
        let r = run(
            h.as_mut(),
            &mem,
            &[(HDR, 16, false), (DATA, SECTOR as u32, false)],
        );
        expect(
            r,
            Rule::BlkNoStatusByte,
            "request 0 (T_OUT, sector 1): 512 device-readable",
        );
        assert!(disk.contents() == TempDisk::new(16 * SECTOR).contents());
    }

    #[test]
    fn data_direction_must_match_the_type() {
        let disk = TempDisk::new(16 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mem = ram();
        let cases = [
            (VIRTIO_BLK_T_IN, false, "device-writable only"),
            (VIRTIO_BLK_T_GET_ID, false, "device-writable only"),
            (VIRTIO_BLK_T_OUT, true, "device-readable only"),
            (VIRTIO_BLK_T_DISCARD, true, "device-readable only"),
            (VIRTIO_BLK_T_WRITE_ZEROES, true, "device-readable only"),
        ];
        for (kind, writable, needle) in cases {
            let mut h = handler(&mut b, ALL);
            let r = simple(h.as_mut(), &mem, kind, 0, &[SECTOR as u32], writable);
            let v = r.unwrap_err();
            assert_eq!(v.rule, Rule::BlkDataWrongDirection, "{v}");
            assert!(v.detail.contains(&type_name(kind)), "{v}");
            assert!(v.detail.contains(needle), "{v}");
        }
        assert_eq!(disk.contents(), before);
    }

    // --- device identity ---

    #[test]
    fn identity_and_features() {
        let disk = TempDisk::new(16 * SECTOR);
        let b = open(&disk, false, None);
        assert_eq!((b.device_type(), b.name()), (2, "virtio-blk"));
        assert_eq!(b.queue_max_sizes(), &[256]);
        assert_eq!(b.path(), disk.0.as_path());
        let want = [1, 2, 6, 9, 13, 14, 28, 29]
            .iter()
            .fold(0u64, |f, bit| f | 1 << bit);
        assert_eq!(b.features(), want);
        assert_eq!(open(&disk, true, None).features(), want | 1 << 5);
    }

    fn config(b: &Block, offset: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0xee; len];
        b.read_config(offset, &mut v);
        v
    }

    fn config_u32(b: &Block, offset: usize) -> u32 {
        u32::from_le_bytes(config(b, offset, 4).try_into().unwrap())
    }

    #[test]
    fn config_space_layout() {
        let disk = TempDisk::new(0x1234 * SECTOR);
        let b = open(&disk, false, None);
        let cap = config(&b, 0, 8);
        assert_eq!(u64::from_le_bytes(cap.try_into().unwrap()), 0x1234);
        assert_eq!(config_u32(&b, 0), 0x1234);
        assert_eq!(config_u32(&b, 4), 0);
        assert_eq!(config(&b, 0, 1), vec![0x34]);
        assert_eq!(config(&b, 1, 2), vec![0x12, 0]);
        assert_eq!(config_u32(&b, 8), 1 << 20, "size_max");
        assert_eq!(config_u32(&b, 12), 254, "seg_max");
        assert_eq!(config_u32(&b, 16), 0, "geometry");
        assert_eq!(config_u32(&b, 20), 512, "blk_size");
        assert_eq!(config(&b, 24, 8), vec![0; 8], "topology");
        assert_eq!(config(&b, 32, 4), vec![1, 0, 0, 0], "writeback");
        assert_eq!(config_u32(&b, 36), 1 << 22, "max_discard_sectors");
        assert_eq!(config_u32(&b, 40), 1, "max_discard_seg");
        assert_eq!(config_u32(&b, 44), 8, "discard_sector_alignment");
        assert_eq!(config_u32(&b, 48), 1 << 22, "max_write_zeroes_sectors");
        assert_eq!(config_u32(&b, 52), 1, "max_write_zeroes_seg");
        assert_eq!(config(&b, 56, 1), vec![1], "write_zeroes_may_unmap");
        // Straddling fields, running off the end, far beyond it.
        assert_eq!(config(&b, 10, 4), vec![0x10, 0, 254, 0]);
        assert_eq!(config(&b, 56, 8), vec![1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(config(&b, 0x100, 4), vec![0; 4]);
        assert_eq!(config(&b, usize::MAX, 2), vec![0; 2]);
    }

    // --- open errors ---

    fn open_err(path: &Path, read_only: bool) -> BlockError {
        match Block::open(BlockConfig {
            path: path.to_path_buf(),
            read_only,
            serial: None,
        }) {
            Err(e) => e,
            Ok(_) => panic!("{} opened", path.display()),
        }
    }

    #[test]
    fn open_errors_name_the_path() {
        let missing = std::env::temp_dir().join("launcher-blk-no-such-file.img");
        for read_only in [true, false] {
            let e = open_err(&missing, read_only);
            assert!(matches!(e, BlockError::Open { .. }), "{e}");
            let s = e.to_string();
            assert!(s.contains(&*missing.to_string_lossy()), "{s}");
            assert!(s.contains("No such file"), "{s}");
        }

        let dir = std::env::temp_dir();
        for read_only in [true, false] {
            let e = open_err(&dir, read_only);
            assert!(matches!(e, BlockError::Directory { .. }), "{e}");
            assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}");
        }
    }

    #[test]
    fn unwritable_file_needs_ro() {
        // A 0444 file stops anyone but root; root is stopped by a running
        // executable (ETXTBSY) or a read-only sysfs attribute.
        let disk = TempDisk::new(4 * SECTOR);
        std::fs::set_permissions(&disk.0, std::fs::Permissions::from_mode(0o444)).unwrap();
        let candidates = [
            disk.0.clone(),
            std::env::current_exe().unwrap(),
            PathBuf::from("/sys/kernel/notes"),
        ];
        let unwritable = candidates.iter().find(|p| {
            std::fs::File::open(p).is_ok()
                && std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .is_err()
        });
        let Some(path) = unwritable else {
            eprintln!("no file here is readable but not writable; skipped");
            return;
        };
        let e = open_err(path, false);
        assert!(matches!(e, BlockError::OpenReadWrite { .. }), "{e}");
        let s = e.to_string();
        assert!(
            s.contains(&*path.to_string_lossy()) && s.contains(",ro"),
            "{s}"
        );
        if *path == disk.0 {
            assert_eq!(open(&disk, true, None).capacity(), 4);
        }
    }
}
