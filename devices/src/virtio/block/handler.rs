//! What a virtio-blk request means (virtio 1.0 §5.2.6), and how the
//! requests of one notification are carried out together.
//!
//! Each chain the driver makes available is one request: a 16-byte
//! device-readable header (`type`, `reserved`, `sector`), then the data —
//! device-readable for writes, discard and write-zeroes segments,
//! device-writable for reads and GET_ID — and a final device-writable
//! status byte. The chain is treated as two byte streams (readable, then
//! writable) so buffer boundaries do not matter, as §2.4.4 requires.
//!
//! # The request path
//!
//! The queue's worker pops and checks every available chain; what needs
//! no host I/O (a refusal, GET_ID) is answered at once. A read is first
//! tried on the worker with `preadv2(RWF_NOWAIT)` straight into the
//! guest's buffers, which succeeds only for what the page cache holds:
//! waking a thread costs more than a cached 4 KiB read (on the 2-CPU bench
//! machine, handing every read over cut depth-32 reads to a fifth), so
//! only requests that may wait for the disk run side by side. Those —
//! reads the cache could not serve (all reads on a file system without
//! `RWF_NOWAIT`, such as NFS), writes, discards
//! and write-zeroes — become [`Job`]s: all but the notification's last go
//! to the queue's I/O threads ([`pool`], started lazily by the worker, at
//! most [`IO_THREADS`]); the worker runs the last itself (a lone request
//! costs no hand-over), helps with what no thread has picked up yet, and
//! then waits for the rest. It answers each request — status byte, used
//! ring — as it completes, so used entries may be published out of order
//! (legal: a device may use buffers in any order, §2.7.8 of virtio 1.2).
//! `process` returns once every request it popped is answered, so the
//! worker's interrupt covers them all.
//!
//! A FLUSH is a barrier: every job before it completes first, then the
//! `fdatasync` runs, so it covers every write the driver submitted before
//! it (§5.2.6.2 asks only for completed ones).
//!
//! # Guest memory and resets
//!
//! Every host call that may block (`pread`, `pwritev`, `fdatasync`,
//! `fallocate`) runs outside a [`Gate`] into the device's activation: a
//! reset never waits for it, and a request whose device was reset
//! meanwhile is dropped before its data reaches guest memory or its status
//! the used ring. An I/O thread has a gate of its own into the worker's
//! activation ([`Gate::sibling`]), so a reset also waits for a thread
//! that is copying into guest memory, and no longer.
//!
//! - Writes are zero-copy: `pwritev` straight from the guest's buffers
//!   (host addresses of guest RAM, each range inside RAM as the queue
//!   checked; a buffer that crosses from one RAM region into the next is
//!   two iovecs). A write only reads guest memory, so it may go on after
//!   a reset: at worst the image gets what the buffer holds by then, as a
//!   real disk may still write a request it was given.
//! - Reads the page cache holds are zero-copy too on a modern device,
//!   and run *inside* the gate: `RWF_NOWAIT` returns EAGAIN rather than
//!   wait for the data, so such a read is bounded like any copy into
//!   guest memory, and a reset waits for it as it would for the copy. The
//!   kernel may still make it wait now and then (readahead it starts on
//!   the way; the image is opened `O_NOATIME` so that an access-time
//!   update does not). Should that outlast a reset's wait, the reset is
//!   finished for the driver only when the worker has left: device_status
//!   reads non-zero until then (§4.1.4.3.2, `transport/core.rs`), and
//!   what the worker finishes after the reset answers nobody
//!   ([`Gate::may_answer`]). A legacy driver has no such handshake, so a
//!   legacy device reads the page cache into the bounce buffer outside
//!   the gate, as below.
//! - Reads that would wait go through a private bounce buffer (per I/O
//!   thread, up to [`BOUNCE_LEN`] at a time) and are copied into guest
//!   memory only from inside the gate. A zero-copy `preadv` would write
//!   the guest's buffer during a syscall that may hang (a disk on a dead
//!   NFS server); the reset could then either wait for ever or complete
//!   while the old read may still land in memory the driver owns again.
//!   The reset must stay bounded (~100 ms) and the buffer untouched
//!   (`tests/blk_host_io.rs`), so these keep the copy, one `memcpy` per
//!   byte against a disk's wait.
//!
//! # What a driver can get wrong, and what follows
//!
//! - A chain the device cannot parse at all (no readable 16-byte header,
//!   no status byte, data in the wrong direction) is a malformed request:
//!   a [`Violation`] from `process`, which ends the queue.
//! - A request that breaks a driver requirement of §5.2.6.1 (beyond the
//!   capacity, not whole sectors, a FLUSH with a sector, a GET_ID not of
//!   20 bytes, bad DISCARD / WRITE_ZEROES segments) or the legacy framing
//!   rule (§5.2.6.4) is answered with the status the device always gave
//!   it (IOERR, UNSUPP, or OK where it can be carried out) and the rule is
//!   recorded on the queue for the worker to report: a MUST still stops a
//!   strict run, and under `--lenient` the driver gets its answer and the
//!   device goes on. SHOULDs (a FLUSH with data, RO not accepted) are
//!   warnings the same way.
//! - Everything else (a write to a read-only disk, an operation not
//!   negotiated, an unknown type, a host I/O error such as ENOSPC or EIO)
//!   is just a status byte.

mod pool;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_ANY_LAYOUT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::{ID_LEN, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SEG, SECTOR_SIZE};
use crate::trace::{Detail, Value};
use crate::virtio::device::{feature, QueueHandler};
use crate::virtio::gate::{Gate, Revoked};
use crate::virtio::queue::{Buffer, Chain, CheckedQueue};
use crate::virtio::rules::{Rule, Violation};
use pool::Pool;

/// `struct virtio_blk_outhdr`.
const HEADER_LEN: u64 = 16;
/// `struct virtio_blk_discard_write_zeroes`.
const SEGMENT_LEN: u64 = 16;
/// Bounce buffer size: the most read per `pread` (reads only; writes go
/// straight from guest memory).
const BOUNCE_LEN: usize = 1 << 20;
/// I/O threads per queue at most, besides the worker: a notification's
/// requests beyond that wait for a free thread (or the worker).
pub const IO_THREADS: usize = 8;
/// Guest buffers per `pwritev` (the kernel's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

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
    /// The `writeback` configuration field: with CONFIG_WCE negotiated,
    /// 0 asks for writethrough (every write stable when it completes).
    pub(super) writeback: AtomicBool,
    /// `fdatasync` failures so far ([`sync`]).
    pub(super) sync_failures: AtomicU64,
}

/// The request queue's handler for one activation.
pub(super) struct BlockQueue {
    disk: Arc<Disk>,
    /// Negotiated features: FLUSH, DISCARD and WRITE_ZEROES requests are
    /// only served if the driver accepted them.
    features: u64,
    /// The worker's own bounce buffer, for the jobs it runs itself.
    bounce: Vec<u8>,
    /// Whether the first `process` has looked at the negotiated features
    /// (`BlkRoNotAccepted`).
    checked_features: bool,
    /// The I/O threads, from the first notification with two requests on.
    pool: Option<Pool>,
    /// Jobs handed to the pool and not yet answered.
    outstanding: usize,
    /// Whether this `process` put anything on the used ring.
    used: bool,
    /// Whether the file takes `RWF_NOWAIT` reads (until it says not).
    nowait_reads: bool,
}

/// A driver requirement a request broke, with what exactly the driver did.
type Broken = (Rule, String);

/// How a request ended: the status byte, how many data bytes were written
/// into the chain's device-writable buffers before it, and the rule the
/// request broke though the device answered it.
struct Outcome {
    status: u8,
    written: u64,
    broke: Option<Broken>,
    /// The device was reset while the host I/O ran: no answer at all.
    revoked: bool,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome {
            status,
            written: 0,
            broke: None,
            revoked: false,
        }
    }

    fn revoked() -> Self {
        Outcome {
            revoked: true,
            ..Outcome::status(S_IOERR)
        }
    }

    /// Answered with `status`, as the device always answered such a
    /// request, and `rule` reported.
    fn refused(status: u8, rule: Rule, detail: String) -> Self {
        Outcome {
            broke: Some((rule, detail)),
            ..Outcome::status(status)
        }
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

/// A checked request and what answering it takes, apart from its outcome.
struct Reply {
    req: Request,
    /// The status byte: the last byte of the writable stream.
    status_at: Option<GuestAddress>,
    /// The rule it broke though it is served (legacy layout, a FLUSH
    /// with a sector or data).
    broke: Option<Broken>,
}

/// The host I/O a request needs; everything in it was checked already.
enum Io {
    /// Into the guest's `parts` (device-writable), from `offset`.
    Read {
        offset: u64,
        parts: Vec<(GuestAddress, u64)>,
    },
    /// From the guest's `parts` (device-readable), to `offset`;
    /// `fdatasync` after it if `stable`.
    Write {
        offset: u64,
        parts: Vec<(GuestAddress, u64)>,
        stable: bool,
    },
    Flush,
    /// Discard or write-zeroes `(offset, len, unmap)` segments.
    Trim {
        zeroing: bool,
        segments: Vec<(u64, u64, bool)>,
        stable: bool,
    },
}

/// A request waiting for, or in, its host I/O.
struct Job {
    reply: Reply,
    io: Io,
    /// An I/O thread's way into the activation, given when the job is
    /// handed to the pool.
    gate: Option<Gate>,
}

/// What serving a chain comes to before any host I/O.
enum Step {
    Answer(Reply, Outcome),
    Job(Job),
}

/// Why `process` stops early.
enum Halt {
    /// The device was reset while this thread was outside its gate.
    Revoked,
    Broken(Violation),
}

impl From<Violation> for Halt {
    fn from(v: Violation) -> Self {
        Halt::Broken(v)
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

/// Copies `data` into the guest's `parts`, from byte `skip` of their
/// stream on.
fn scatter(
    mem: &GuestMemoryMmap,
    parts: &[(GuestAddress, u64)],
    mut skip: u64,
    mut data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    for &(addr, len) in parts {
        if data.is_empty() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = usize::try_from(len - skip).map_or(data.len(), |n| n.min(data.len()));
        mem.write_slice(&data[..n], GuestAddress(addr.0 + skip))?;
        data = &data[n..];
        skip = 0;
    }
    Ok(())
}

/// The host addresses of the guest's `parts`, for `pwritev` and
/// `preadv2`; a part that
/// crosses from one RAM region into the next becomes two.
fn guest_iovecs(
    mem: &GuestMemoryMmap,
    parts: &[(GuestAddress, u64)],
) -> Result<Vec<libc::iovec>, vm_memory::GuestMemoryError> {
    let mut iov = Vec::with_capacity(parts.len());
    for &(addr, len) in parts {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        for slice in mem.get_slices(addr, len) {
            let slice = slice?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                iov_len: slice.len(),
            });
        }
    }
    Ok(iov)
}

/// How far a page-cache read into guest memory got.
#[derive(Debug, PartialEq, Eq)]
enum Cached {
    /// All of it.
    All,
    /// Part of it would wait for the disk (EAGAIN, or a short read the
    /// page cache could not complete).
    WouldWait,
    /// The file ends before the request does (it shrank since it was
    /// opened).
    Eof,
}

/// `preadv2(RWF_NOWAIT)` of all of `iov` at `offset` straight into guest
/// memory, however many calls it takes, as long as the page cache holds
/// the data: such a read never waits for the disk, so it may run inside
/// the gate like any copy into guest memory. `done` counts the bytes read,
/// whatever the outcome.
fn preadv_cached(
    file: &File,
    iov: &mut [libc::iovec],
    mut offset: u64,
    done: &mut u64,
) -> io::Result<Cached> {
    let mut first = 0;
    while let Some(count) = next_iovecs(iov, &mut first) {
        let at = file_offset(offset)?;
        // SAFETY: `iov[first..first + count]` are valid iovecs into guest
        // RAM, mapped for as long as the caller's `GuestMemoryMmap` lives
        // (the whole call), or into the caller's bounce buffer, which it
        // holds mutably; the kernel writes at most their lengths.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                iov[first..].as_ptr(),
                count,
                at,
                libc::RWF_NOWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(Cached::WouldWait),
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Ok(Cached::Eof);
        }
        // n > 0 and at most the bytes asked for.
        let n = n as usize;
        offset += n as u64;
        *done += n as u64;
        advance(iov, &mut first, n);
    }
    Ok(Cached::All)
}

/// `pwritev` of all of `iov` at `offset`, however many calls it takes.
/// The caller keeps the guest memory `iov` points into mapped throughout
/// (it holds the `GuestMemoryMmap`).
fn pwritev_all(file: &File, iov: &mut [libc::iovec], mut offset: u64) -> io::Result<()> {
    let mut first = 0;
    while let Some(count) = next_iovecs(iov, &mut first) {
        let at = file_offset(offset)?;
        // SAFETY: `iov[first..first + count]` are valid iovecs into guest
        // RAM, mapped for as long as the caller's `GuestMemoryMmap` lives
        // (the whole call); `pwritev` only reads them.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov[first..].as_ptr(), count, at) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // n > 0 and at most the bytes asked for.
        let n = n as usize;
        offset += n as u64;
        advance(iov, &mut first, n);
    }
    Ok(())
}

fn file_offset(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// Skips empty iovecs from `first` on; how many to pass to the next call
/// (at most `IOV_MAX`), or `None` when all are done.
fn next_iovecs(iov: &[libc::iovec], first: &mut usize) -> Option<libc::c_int> {
    while *first < iov.len() && iov[*first].iov_len == 0 {
        *first += 1;
    }
    let count = (iov.len() - *first).min(IOV_MAX);
    // At most IOV_MAX (1024): fits a c_int.
    (count > 0).then_some(count as libc::c_int)
}

/// Moves `iov` past the `n` bytes a call transferred.
fn advance(iov: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while n > 0 && *first < iov.len() {
        let v = &mut iov[*first];
        if n >= v.iov_len {
            n -= v.iov_len;
            *first += 1;
        } else {
            // SAFETY: still within the same guest buffer: n < iov_len.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            n = 0;
        }
    }
}

/// The first `n` bytes of a bounce buffer, grown to hold them.
fn room(bounce: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if bounce.len() < n {
        bounce.resize(n, 0);
    }
    &mut bounce[..n]
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
            bounce: Vec::new(),
            checked_features: false,
            pool: None,
            outstanding: 0,
            used: false,
            nowait_reads: true,
        }
    }

    fn negotiated(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Whether a write must be stable when it completes (§5.2.6.2): with
    /// neither CONFIG_WCE nor FLUSH negotiated (FLUSH is always offered),
    /// or with CONFIG_WCE and `writeback` 0. Otherwise the driver flushes.
    fn writethrough(&self) -> bool {
        if self.negotiated(VIRTIO_BLK_F_CONFIG_WCE) {
            !self.disk.writeback.load(Ordering::SeqCst)
        } else {
            !self.negotiated(VIRTIO_BLK_F_FLUSH)
        }
    }

    /// `BlkRoNotAccepted` (§5.2.6.1, a SHOULD): checked at the first
    /// `process` of an activation, the first moment the handler can
    /// report anything; a driver that never notifies is not warned.
    fn check_features(&mut self, queue: &mut CheckedQueue) {
        if std::mem::replace(&mut self.checked_features, true) {
            return;
        }
        if self.disk.read_only && !self.negotiated(VIRTIO_BLK_F_RO) {
            queue.record(
                Rule::BlkRoNotAccepted,
                format!(
                    "the disk is read-only and offers VIRTIO_BLK_F_RO, but the driver accepted features {:#x} without it",
                    self.features
                ),
            );
        }
    }

    /// Checks one chain and decides what serving it takes: an answer now,
    /// or a job of host I/O.
    fn prepare(&self, chain: &Chain, mem: &GuestMemoryMmap) -> Result<Step, Violation> {
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

        let layout = self.legacy_layout(&req, chain);
        // The status byte is the last byte of the writable stream: not
        // "of the last writable buffer", which may be empty (found by the
        // blk fuzz target; the byte went just before that buffer).
        let status_at = pieces(chain.writable(), writable - 1, 1)
            .first()
            .map(|&(at, _)| at);
        let served = self.serve(&req, chain, mem)?;
        let reply = |req, broke: Option<Broken>| Reply {
            req,
            status_at,
            broke: layout.clone().or(broke),
        };
        Ok(match served {
            Ok(outcome) => {
                let broke = outcome.broke.clone();
                Step::Answer(reply(req, broke), outcome)
            }
            Err((io, broke)) => Step::Job(Job {
                reply: reply(req, broke),
                io,
                gate: None,
            }),
        })
    }

    /// §5.2.6.4: on the legacy interface without VIRTIO_F_ANY_LAYOUT the
    /// header is a descriptor of its own and the status byte the last,
    /// 1-byte descriptor. The spec says "a single 8-byte descriptor
    /// containing type, reserved and sector"; those are 16 bytes (an
    /// erratum), and 16 is what legacy drivers send. The device copes with
    /// any layout, so the request is still served.
    fn legacy_layout(&self, req: &Request, chain: &Chain) -> Option<Broken> {
        let modern_or_any = feature::VERSION_1 | 1 << VIRTIO_F_ANY_LAYOUT;
        if self.features & modern_or_any != 0 {
            return None;
        }
        let (first, last) = (chain.buffers.first()?, chain.buffers.last()?);
        if !first.writable && u64::from(first.len) == HEADER_LEN && last.writable && last.len == 1 {
            return None;
        }
        let what = |b: &Buffer| {
            let dir = if b.writable { "writable" } else { "readable" };
            format!("{} device-{dir} bytes", b.len)
        };
        Some((
            Rule::BlkLegacyHeaderLayout,
            format!(
                "{}: on the legacy interface without VIRTIO_F_ANY_LAYOUT the 16-byte header and the status byte each need a descriptor of their own (the spec's \"8-byte\" is an erratum), but the first descriptor holds {} and the last {}",
                req.describe(),
                what(first),
                what(last)
            ),
        ))
    }

    /// Decides the status of a well-formed request, or the host I/O it
    /// needs (with the rule it broke all the same).
    fn serve(
        &self,
        req: &Request,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, Violation> {
        let needs = match req.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_GET_ID => None,
            VIRTIO_BLK_T_FLUSH => Some(VIRTIO_BLK_F_FLUSH),
            VIRTIO_BLK_T_DISCARD => Some(VIRTIO_BLK_F_DISCARD),
            VIRTIO_BLK_T_WRITE_ZEROES => Some(VIRTIO_BLK_F_WRITE_ZEROES),
            _ => {
                log::trace!("virtio-blk: {}: unsupported", req.describe());
                return Ok(Ok(Outcome::status(S_UNSUPP)));
            }
        };
        if needs.is_some_and(|bit| !self.negotiated(bit)) {
            log::trace!(
                "virtio-blk: {}: its feature was not negotiated",
                req.describe()
            );
            return Ok(Ok(Outcome::status(S_UNSUPP)));
        }
        match req.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => Ok(self.read_write(req, chain)),
            VIRTIO_BLK_T_FLUSH => Ok(Err((Io::Flush, flush_rule(req)))),
            VIRTIO_BLK_T_GET_ID => self.get_id(req, chain, mem).map(Ok),
            _ => self.discard_or_zero(req, chain, mem),
        }
    }

    /// Refuses a write to a read-only disk (§5.2.6.2: IOERR, nothing
    /// written).
    fn read_only(&self, req: &Request) -> Option<Outcome> {
        if !self.disk.read_only {
            return None;
        }
        log::trace!("virtio-blk: {}: the disk is read-only", req.describe());
        Some(Outcome::status(S_IOERR))
    }

    /// T_GET_ID: exactly 20 bytes (§5.2.6.1); other lengths get what fits,
    /// as before the rule was checked.
    fn get_id(
        &self,
        req: &Request,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<Outcome, Violation> {
        let n = (req.in_len as usize).min(ID_LEN);
        let written = chain
            .write_all(mem, &self.disk.id[..n])
            .map_err(|e| memory_violation(req.head, e))?;
        let broke = (req.in_len != ID_LEN as u64).then(|| {
            (
                Rule::BlkGetIdLength,
                format!(
                    "{}: GET_ID takes exactly {ID_LEN} bytes of data",
                    req.describe()
                ),
            )
        });
        Ok(Outcome {
            written: u64::from(written),
            broke,
            ..Outcome::status(S_OK)
        })
    }

    /// T_IN and T_OUT: whole sectors within the disk, or no I/O at all.
    fn read_write(&self, req: &Request, chain: &Chain) -> Served {
        let reading = req.kind == VIRTIO_BLK_T_IN;
        let len = if reading { req.in_len } else { req.out_len };
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Ok(Outcome::refused(
                S_IOERR,
                Rule::BlkDataNotSectorMultiple,
                format!(
                    "{}: {len} data bytes are not a whole number of {SECTOR_SIZE}-byte sectors",
                    req.describe()
                ),
            ));
        }
        if !in_range(req.sector, len / SECTOR_SIZE, self.disk.capacity) {
            let beyond = format!(
                "{}: beyond the disk's {} sectors",
                req.describe(),
                self.disk.capacity
            );
            // An empty transfer past the end reads or writes nothing:
            // refused, but no rule names it.
            if len == 0 {
                log::trace!("virtio-blk: {beyond}");
                return Ok(Outcome::status(S_IOERR));
            }
            return Ok(Outcome::refused(S_IOERR, Rule::BlkBeyondCapacity, beyond));
        }
        // In range, so sector * 512 + len fits comfortably in a u64.
        let offset = req.sector * SECTOR_SIZE;
        if reading {
            let parts = pieces(chain.writable(), 0, len);
            return Err((Io::Read { offset, parts }, None));
        }
        if let Some(refused) = self.read_only(req) {
            return Ok(refused);
        }
        let parts = pieces(chain.readable(), HEADER_LEN, len);
        // An empty write needs nothing stable.
        let stable = len > 0 && self.writethrough();
        Err((
            Io::Write {
                offset,
                parts,
                stable,
            },
            None,
        ))
    }

    /// T_DISCARD and T_WRITE_ZEROES: every segment is checked before any
    /// is acted on, so a bad one leaves the disk untouched.
    fn discard_or_zero(
        &self,
        req: &Request,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, Violation> {
        let zeroing = req.kind == VIRTIO_BLK_T_WRITE_ZEROES;
        let (limit, field) = if zeroing {
            (MAX_WRITE_ZEROES_SEG, "max_write_zeroes_seg")
        } else {
            (MAX_DISCARD_SEG, "max_discard_seg")
        };
        let count = req.out_len / SEGMENT_LEN;
        if !req.out_len.is_multiple_of(SEGMENT_LEN) || count > u64::from(limit) {
            return Ok(Ok(Outcome::refused(
                S_IOERR,
                Rule::BlkDiscardSegments,
                format!(
                    "{}: {} bytes of segments; they must be whole {SEGMENT_LEN}-byte segments, at most {limit} ({field})",
                    req.describe(),
                    req.out_len
                ),
            )));
        }
        if count == 0 {
            // Whole segments, none of them: no rule names it, but there is
            // nothing to carry out.
            log::trace!("virtio-blk: {}: no segments", req.describe());
            return Ok(Ok(Outcome::status(S_IOERR)));
        }
        // count <= the segment limit, so this is small.
        let bytes = chain
            .read_all(mem, (HEADER_LEN + req.out_len) as usize)
            .map_err(|e| memory_violation(req.head, e))?;
        let mut segments = Vec::new();
        for (i, seg) in bytes[HEADER_LEN as usize..]
            .chunks_exact(SEGMENT_LEN as usize)
            .enumerate()
        {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&seg[..8]);
            let sector = u64::from_le_bytes(sector);
            let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            if unmap && !zeroing {
                // §5.2.6.2: the device answers UNSUPP.
                return Ok(Ok(Outcome::refused(
                    S_UNSUPP,
                    Rule::BlkDiscardUnmap,
                    format!("{}: segment {i} has the unmap bit set", req.describe()),
                )));
            }
            // UNMAP is the only flag (§5.2.6.2: unknown flags are UNSUPP).
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                log::trace!(
                    "virtio-blk: {}: segment flags {flags:#x} unknown",
                    req.describe()
                );
                return Ok(Ok(Outcome::status(S_UNSUPP)));
            }
            let fits = in_range(sector, u64::from(num), self.disk.capacity);
            if zeroing && !fits {
                // Writing zeros is a write; a discard beyond the end
                // writes nothing and is merely refused below.
                return Ok(Ok(Outcome::refused(
                    S_IOERR,
                    Rule::BlkBeyondCapacity,
                    format!(
                        "{}: segment {i} ({num} sectors at {sector}) is beyond the disk's {} sectors",
                        req.describe(),
                        self.disk.capacity
                    ),
                )));
            }
            if num > MAX_DISCARD_SECTORS || !fits {
                log::trace!(
                    "virtio-blk: {}: segment of {num} sectors at {sector} is too long or beyond the disk's {} sectors",
                    req.describe(),
                    self.disk.capacity
                );
                return Ok(Ok(Outcome::status(S_IOERR)));
            }
            segments.push((sector * SECTOR_SIZE, u64::from(num) * SECTOR_SIZE, unmap));
        }
        if let Some(refused) = self.read_only(req) {
            return Ok(Ok(refused));
        }
        let stable = zeroing && self.writethrough();
        Ok(Err((
            Io::Trim {
                zeroing,
                segments,
                stable,
            },
            None,
        )))
    }

    /// Answers a request from inside the worker's gate: trace, status
    /// byte, used ring, then the rule it broke.
    fn finish(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
        reply: Reply,
        outcome: Outcome,
    ) -> Result<(), Halt> {
        // A worker that stayed inside past a reset that gave up waiting
        // for it (a cached read the kernel made wait) answers nobody, and
        // starts nothing more: the queue is no longer its own.
        if !queue.gate().may_answer() {
            return Err(Halt::Revoked);
        }
        let req = &reply.req;
        let trace = queue.tracer();
        if trace.wants(Detail::Request) {
            let op = type_name(req.kind);
            let op = op.trim_start_matches("T_");
            let status = match outcome.status {
                S_OK => "OK",
                S_IOERR => "IOERR",
                _ => "UNSUPP",
            };
            let bytes = req.out_len + req.in_len;
            trace.event(
                Detail::Request,
                "request",
                &[
                    ("op", Value::S(op)),
                    ("sector", Value::U(req.sector)),
                    ("bytes", Value::U(bytes)),
                    ("status", Value::S(status)),
                ],
                format_args!("{op} sector {}, {bytes} bytes → {status}", req.sector),
            );
        }
        if let Some(at) = reply.status_at {
            mem.write_obj(outcome.status, at)
                .map_err(|e| memory_violation(req.head, e))?;
        }
        // The used length counts the bytes written from the first
        // device-writable byte on without a gap (virtio 1.1 §2.7.8.2: the
        // device "MUST write at least len bytes ... beginning at the first
        // device-writable buffer"): the status byte only when every data
        // byte before it was written too.
        let written = if outcome.written == req.in_len {
            outcome.written + 1
        } else {
            outcome.written
        };
        let len = u32::try_from(written).unwrap_or(u32::MAX);
        queue.add_used(mem, req.head, len)?;
        self.used = true;
        // Answered first, then reported: the worker hands the rule to
        // the transport after `process`, so a MUST still stops a
        // strict run, and under --lenient the device goes on. (See
        // the module docs; `warn` records any level.)
        if let Some((rule, detail)) = reply.broke {
            queue.record(rule, detail);
        }
        Ok(())
    }

    /// Runs `job` on the worker, inside its gate but for the host calls,
    /// and answers it.
    fn run_here(
        &mut self,
        job: Job,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), Halt> {
        let outcome = execute(&job, &self.disk, mem, queue.gate(), &mut self.bounce)?;
        if outcome.revoked {
            return Err(Halt::Revoked);
        }
        self.finish(queue, mem, job.reply, outcome)?;
        Ok(())
    }

    /// A read served here if the page cache holds all of it
    /// (`preadv2(RWF_NOWAIT)`); `None` if part of it would wait, for an I/O
    /// thread to do the whole read through its bounce buffer, outside the
    /// gate. Waking a thread costs more than a cached read, so only reads
    /// that go to the disk are worth running side by side.
    ///
    /// A modern device reads straight into the guest's buffers, inside
    /// the gate: such a read waits for nothing but, rarely, the kernel's
    /// own readahead or atime work, and should that outlast a reset's
    /// wait, the modern reset handshake keeps the driver off its buffers
    /// until the worker has left (`transport/core.rs`, `GATE_WAIT`). A
    /// legacy driver has no such handshake: there the read goes outside
    /// the gate into the bounce buffer and is copied in from inside.
    fn read_now(
        &mut self,
        job: &Job,
        gate: &Gate,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<Outcome>, Violation> {
        let Io::Read { offset, parts } = &job.io else {
            return Ok(None);
        };
        let req = &job.reply.req;
        // Reset meanwhile (the worker stays inside until it returns).
        if !gate.may_answer() {
            return Ok(Some(Outcome::revoked()));
        }
        // The test hook's stall stands for host I/O that hangs: outside
        // the gate, where a read that waits for the disk would be.
        if crate::test_hooks::ENABLED
            && gate
                .outside(|| crate::test_hooks::blk_io(req.sector))
                .is_err()
        {
            return Ok(Some(Outcome::revoked()));
        }
        let file = &self.disk.file;
        let mut done = 0;
        let read = if self.features & feature::VERSION_1 != 0 {
            let mut iov = guest_iovecs(mem, parts).map_err(|e| memory_violation(req.head, e))?;
            preadv_cached(file, &mut iov, *offset, &mut done)
        } else {
            let total: u64 = parts.iter().map(|&(_, n)| n).sum();
            let Some(n) = usize::try_from(total).ok().filter(|&n| n <= BOUNCE_LEN) else {
                return Ok(None);
            };
            let buf = room(&mut self.bounce, n);
            let mut iov = [libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            }];
            match gate.outside(|| preadv_cached(file, &mut iov, *offset, &mut done)) {
                Err(Revoked) => return Ok(Some(Outcome::revoked())),
                Ok(read) => {
                    // `done` ≤ n: what the kernel put in the bounce buffer.
                    scatter(mem, parts, 0, &self.bounce[..done as usize])
                        .map_err(|e| memory_violation(req.head, e))?;
                    read
                }
            }
        };
        let failed = |e: io::Error, done| {
            Some(Outcome {
                written: done,
                ..Outcome::status(host_error(&self.disk, req, "read", &e))
            })
        };
        Ok(match read {
            Ok(Cached::All) => Some(Outcome {
                written: done,
                ..Outcome::status(S_OK)
            }),
            Ok(Cached::WouldWait) => None,
            Ok(Cached::Eof) => failed(io::ErrorKind::UnexpectedEof.into(), done),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                // tmpfs, NFS, kernels before 4.14: every read to the threads.
                self.nowait_reads = false;
                None
            }
            Err(e) => failed(e, done),
        })
    }

    /// Hands `job` to the I/O threads, starting one if none is free.
    fn hand_over(&mut self, mut job: Job, queue: &CheckedQueue, mem: &GuestMemoryMmap) {
        let pool = self
            .pool
            .get_or_insert_with(|| Pool::new(self.disk.clone(), mem.clone()));
        job.gate = Some(queue.gate().sibling());
        pool.push(job);
        self.outstanding += 1;
    }

    /// Until every job handed over is answered: runs those no I/O thread
    /// has picked up yet, then waits, outside the gate, for the others.
    fn settle(&mut self, queue: &mut CheckedQueue, mem: &GuestMemoryMmap) -> Result<(), Halt> {
        while self.outstanding > 0 {
            let Some(pool) = &self.pool else {
                self.outstanding = 0;
                break;
            };
            if let Some(job) = pool.take() {
                self.outstanding -= 1;
                self.run_here(job, queue, mem)?;
                continue;
            }
            let done = queue.gate().outside(|| pool.done());
            let Ok(done) = done else {
                return Err(Halt::Revoked);
            };
            let Some((job, result)) = done else {
                // Every I/O thread is gone (cannot happen while the pool
                // lives): nothing more will come.
                self.outstanding = 0;
                break;
            };
            self.outstanding -= 1;
            let outcome = result?;
            if outcome.revoked {
                return Err(Halt::Revoked);
            }
            self.finish(queue, mem, job.reply, outcome)?;
        }
        Ok(())
    }

    /// Ends the I/O threads once the queue is given up (reset, or a
    /// malformed request): they finish what they hold and end, touching
    /// no guest memory since. Joined outside the gate, so that one stuck
    /// in host I/O does not hold up a reset meanwhile.
    fn stop_io_threads(&mut self, queue: &CheckedQueue) {
        let pool = self.pool.take();
        self.outstanding = 0;
        let _ = queue.gate().outside(|| drop(pool));
    }

    /// The body of `process`: every available chain answered, or why not.
    fn serve_all(&mut self, queue: &mut CheckedQueue, mem: &GuestMemoryMmap) -> Result<(), Halt> {
        // The notification's latest job, kept back to be run here.
        let mut held: Option<Job> = None;
        let popped = loop {
            let chain = match queue.pop(mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(()),
                Err(v) => break Err(v),
            };
            let step = match self.prepare(&chain, mem) {
                Ok(step) => step,
                Err(v) => break Err(v),
            };
            match step {
                Step::Answer(reply, outcome) => self.finish(queue, mem, reply, outcome)?,
                Step::Job(job) if matches!(job.io, Io::Flush) => {
                    // A barrier: every write before it completes first.
                    if let Some(prev) = held.take() {
                        self.hand_over(prev, queue, mem);
                    }
                    self.settle(queue, mem)?;
                    self.run_here(job, queue, mem)?;
                }
                Step::Job(job) if matches!(job.io, Io::Read { .. }) && self.nowait_reads => {
                    match self.read_now(&job, queue.gate(), mem)? {
                        Some(outcome) if outcome.revoked => return Err(Halt::Revoked),
                        Some(outcome) => self.finish(queue, mem, job.reply, outcome)?,
                        None => {
                            if let Some(prev) = held.replace(job) {
                                self.hand_over(prev, queue, mem);
                            }
                        }
                    }
                }
                Step::Job(job) => {
                    if let Some(prev) = held.replace(job) {
                        self.hand_over(prev, queue, mem);
                    }
                }
            }
        };
        if let Some(job) = held {
            self.run_here(job, queue, mem)?;
        }
        self.settle(queue, mem)?;
        Ok(popped?)
    }
}

/// `Ok`: the outcome; `Err`: the host I/O still to do, and the rule the
/// request broke though it is carried out.
type Served = Result<Outcome, (Io, Option<Broken>)>;

/// A FLUSH names sector 0 and carries no data (§5.2.6.1); either way the
/// cache is flushed, as a driver that asks for a flush wants.
fn flush_rule(req: &Request) -> Option<Broken> {
    let data = req.out_len + req.in_len;
    if req.sector != 0 {
        Some((
            Rule::BlkFlushSectorNotZero,
            format!("{}: a flush names sector {}", req.describe(), req.sector),
        ))
    } else if data != 0 {
        Some((
            Rule::BlkFlushWithData,
            format!("{}: a flush carries {data} data bytes", req.describe()),
        ))
    } else {
        None
    }
}

/// Does `job`'s host I/O on this thread, which is inside `gate` and
/// steps out of it for every call that may block; a read's data is copied
/// into guest memory from inside. The outcome is `revoked` if the device
/// was reset meanwhile (nothing was written to guest memory since).
fn execute(
    job: &Job,
    disk: &Disk,
    mem: &GuestMemoryMmap,
    gate: &Gate,
    bounce: &mut Vec<u8>,
) -> Result<Outcome, Violation> {
    let req = &job.reply.req;
    let file = &disk.file;
    // Write-back errors seen by any sync so far: a stable write whose own
    // sync finds more of them than there were before it began may have
    // lost its data to one (see [`sync`]).
    let failures = disk.sync_failures.load(Ordering::SeqCst);
    match &job.io {
        Io::Read { offset, parts } => {
            let total: u64 = parts.iter().map(|&(_, n)| n).sum();
            let mut done = 0;
            while done < total {
                let n = (total - done).min(BOUNCE_LEN as u64) as usize;
                let buf = room(bounce, n);
                // Into the bounce buffer, never straight into guest memory:
                // the device may be reset before the read returns.
                let io = gate.outside(|| {
                    crate::test_hooks::blk_io(req.sector);
                    file.read_exact_at(buf, offset + done)
                });
                match io {
                    Err(Revoked) => return Ok(Outcome::revoked()),
                    Ok(Err(e)) => {
                        return Ok(Outcome {
                            written: done,
                            ..Outcome::status(host_error(disk, req, "read", &e))
                        })
                    }
                    Ok(Ok(())) => {}
                }
                scatter(mem, parts, done, buf).map_err(|e| memory_violation(req.head, e))?;
                done += n as u64;
            }
            Ok(Outcome {
                written: done,
                ..Outcome::status(S_OK)
            })
        }
        Io::Write {
            offset,
            parts,
            stable,
        } => {
            let mut iov = guest_iovecs(mem, parts).map_err(|e| memory_violation(req.head, e))?;
            let write = || {
                crate::test_hooks::blk_io(req.sector);
                pwritev_all(file, &mut iov, *offset)
            };
            if let Err(failed) = host_io(disk, req, gate, "write", write) {
                return Ok(failed);
            }
            if *stable {
                if let Err(failed) = sync(disk, req, gate, failures) {
                    return Ok(failed);
                }
            }
            Ok(Outcome::status(S_OK))
        }
        Io::Flush => Ok(match sync(disk, req, gate, failures) {
            Err(failed) => failed,
            Ok(()) => Outcome::status(S_OK),
        }),
        Io::Trim {
            zeroing,
            segments,
            stable,
        } => {
            let op = if *zeroing { "write-zeroes" } else { "discard" };
            for &(offset, len, unmap) in segments {
                let io = || {
                    if *zeroing {
                        zero(disk, offset, len, unmap, bounce)
                    } else {
                        punch(disk, offset, len)
                    }
                };
                if let Err(failed) = host_io(disk, req, gate, op, io) {
                    return Ok(failed);
                }
            }
            if *stable {
                if let Err(failed) = sync(disk, req, gate, failures) {
                    return Ok(failed);
                }
            }
            Ok(Outcome::status(S_OK))
        }
    }
}

/// `fdatasync` for a request that began when `failures` write-back errors
/// had been seen. Linux reports a write-back error to one `fdatasync` of
/// the open file only; with requests on several I/O threads, the sync
/// that sees it may be another request's, whose pages it wrote back
/// along with its own. So a failure is counted on the disk, and a sync
/// that succeeds after another one failed since its request began fails
/// too: never OK for data that may not have reached the disk.
fn sync(disk: &Disk, req: &Request, gate: &Gate, failures: u64) -> Result<(), Outcome> {
    let result = host_io(disk, req, gate, "fdatasync", || disk.file.sync_data());
    if let Err(failed) = &result {
        if !failed.revoked {
            disk.sync_failures.fetch_add(1, Ordering::SeqCst);
        }
        return result;
    }
    if disk.sync_failures.load(Ordering::SeqCst) != failures {
        let e = io::Error::other("another request's fdatasync failed meanwhile");
        return Err(Outcome::status(host_error(disk, req, "fdatasync", &e)));
    }
    Ok(())
}

/// Discard is a hint: where the filesystem cannot punch holes it does
/// nothing rather than write zeros over what may be gigabytes.
fn punch(disk: &Disk, offset: u64, len: u64) -> io::Result<()> {
    match fallocate(&disk.file, FallocateMode::PunchHole, true, offset, len) {
        Err(e) if unsupported(&e) => {
            log::trace!(
                "virtio-blk: {}: cannot punch holes ({e}); discard ignored",
                disk.path.display()
            );
            Ok(())
        }
        r => r.map_err(io::Error::from),
    }
}

/// Write-zeroes must leave zeros: punch (if the driver allows unmapping)
/// or zero the range, and write zeros where the filesystem can do
/// neither.
fn zero(disk: &Disk, offset: u64, len: u64, unmap: bool, bounce: &mut Vec<u8>) -> io::Result<()> {
    for punch in [true, false] {
        if punch && !unmap {
            continue;
        }
        let mode = if punch {
            FallocateMode::PunchHole
        } else {
            FallocateMode::ZeroRange
        };
        match fallocate(&disk.file, mode, true, offset, len) {
            Ok(()) => return Ok(()),
            Err(e) if unsupported(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    room(bounce, len.min(BOUNCE_LEN as u64) as usize).fill(0);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(BOUNCE_LEN as u64) as usize;
        disk.file.write_all_at(&bounce[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A host I/O error fails this request only; the guest sees IOERR.
/// Runs blocking host I/O `io` on `disk` outside the gate. On failure, the
/// request's answer: none if the device was reset meanwhile, IOERR (said
/// through [`host_error`]) if `op` failed.
fn host_io(
    disk: &Disk,
    req: &Request,
    gate: &Gate,
    op: &str,
    io: impl FnOnce() -> io::Result<()>,
) -> Result<(), Outcome> {
    match gate.outside(io) {
        Err(Revoked) => Err(Outcome::revoked()),
        Ok(Err(e)) => Err(Outcome::status(host_error(disk, req, op, &e))),
        Ok(Ok(())) => Ok(()),
    }
}

fn host_error(disk: &Disk, req: &Request, op: &str, e: &io::Error) -> u8 {
    // Once per disk, operation and error kind; repeats are counted.
    let cause = format!("virtio-blk {} {op} {:?}", disk.path.display(), e.kind());
    let message = format!(
        "virtio-blk: {}: {op} failed: {e}; {} gets IOERR",
        disk.path.display(),
        req.describe()
    );
    crate::guestlog::warn(&cause, message);
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
        self.check_features(queue);
        self.used = false;
        match self.serve_all(queue, mem) {
            Ok(()) => Ok(self.used),
            // Reset during a request's host I/O: the queue is no longer
            // ours; the worker sees the gate closed and ends. What the I/O
            // threads still hold is dropped with them.
            Err(Halt::Revoked) => {
                self.stop_io_threads(queue);
                Ok(self.used)
            }
            Err(Halt::Broken(v)) => {
                self.stop_io_threads(queue);
                Err(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_SCSI_CMD;
    use virtio_bindings::bindings::virtio_ring::{
        VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT,
        VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::block::{Block, BlockConfig, BlockError, QUEUE_SIZE};
    use crate::virtio::device::VirtioDevice;

    use crate::virtio::queue::testing::USED;

    const RAM: u64 = 0x40000;
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
    const F_RO: u64 = 1 << VIRTIO_BLK_F_RO;
    const F_WCE: u64 = 1 << VIRTIO_BLK_F_CONFIG_WCE;
    /// What a modern driver accepts; most tests take it.
    const ALL: u64 = F_FLUSH | F_DISCARD | F_WZ | feature::VERSION_1;

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

        /// Cuts the image to `len` bytes behind the device's back.
        fn shrink(&self, len: usize) {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.0)
                .unwrap()
                .set_len(len as u64)
                .unwrap();
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
        crate::virtio::queue::testing::mock_queue(mem, 0, QUEUE_SIZE, features)
    }

    /// What processing one chain gave: the status byte, the used length
    /// and what the handler recorded on the queue for the worker to report.
    type Reply = (u8, u32, Vec<Violation>);

    /// Processes chain 0 (already offered on `q`).
    fn finish_reporting(
        h: &mut dyn QueueHandler,
        mut q: CheckedQueue,
        mem: &GuestMemoryMmap,
        status_at: u64,
    ) -> Result<Reply, Violation> {
        mem.write_obj(0xffu8, GuestAddress(status_at)).unwrap();
        assert!(h.process(&mut q, mem)?);
        let used_idx = mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
        let id = mem.read_obj::<u32>(GuestAddress(USED + 4)).unwrap();
        assert_eq!((used_idx, id), (1, 0));
        let len = mem.read_obj::<u32>(GuestAddress(USED + 8)).unwrap();
        let status = mem.read_obj(GuestAddress(status_at)).unwrap();
        Ok((status, len, q.take_findings()))
    }

    /// [`finish_reporting`] for a request that must break no rule:
    /// (status byte, used length).
    fn finish(
        h: &mut dyn QueueHandler,
        q: CheckedQueue,
        mem: &GuestMemoryMmap,
        status_at: u64,
    ) -> Result<(u8, u32), Violation> {
        let (status, len, reported) = finish_reporting(h, q, mem, status_at)?;
        assert!(reported.is_empty(), "reported: {reported:?}");
        Ok((status, len))
    }

    /// Offers one direct chain of (address, length, device-writable)
    /// buffers; returns the queue and where its status byte is.
    fn offer(
        mem: &GuestMemoryMmap,
        features: u64,
        bufs: &[(u64, u32, bool)],
    ) -> (CheckedQueue, u64) {
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
        (q, status_at)
    }

    /// Offers a chain ([`offer`]) and processes it; the request must break
    /// no rule.
    fn run_with(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        features: u64,
        bufs: &[(u64, u32, bool)],
    ) -> Result<(u8, u32), Violation> {
        let (q, status_at) = offer(mem, features, bufs);
        finish(h, q, mem, status_at)
    }

    /// [`run_with`] for a request that may break a rule.
    fn run_reporting(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        features: u64,
        bufs: &[(u64, u32, bool)],
    ) -> Result<Reply, Violation> {
        let (q, status_at) = offer(mem, features, bufs);
        finish_reporting(h, q, mem, status_at)
    }

    fn run(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        bufs: &[(u64, u32, bool)],
    ) -> Result<(u8, u32), Violation> {
        run_with(h, mem, ALL, bufs)
    }

    /// Writes a header of `kind` for `sector` at HDR; returns the chain:
    /// header, data buffers at DATA (all of `writable`), status.
    fn simple_chain(
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[u32],
        writable: bool,
    ) -> Vec<(u64, u32, bool)> {
        header(mem, HDR, kind, sector);
        let mut bufs = vec![(HDR, 16, false)];
        let mut at = DATA;
        for &len in data {
            bufs.push((at, len, writable));
            at += u64::from(len);
        }
        bufs.push((STATUS, 1, true));
        bufs
    }

    fn simple(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[u32],
        writable: bool,
    ) -> Result<(u8, u32), Violation> {
        let chain = simple_chain(mem, kind, sector, data, writable);
        run(h, mem, &chain)
    }

    fn simple_reporting(
        h: &mut dyn QueueHandler,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[u32],
        writable: bool,
    ) -> Result<Reply, Violation> {
        let chain = simple_chain(mem, kind, sector, data, writable);
        run_reporting(h, mem, ALL, &chain)
    }

    /// A request answered with `status` (and `used` bytes) that broke
    /// `rule`, recorded once on the queue with `needle` in its detail.
    fn expect_reported(
        r: Result<Reply, Violation>,
        (status, used): (u8, u32),
        rule: Rule,
        needle: &str,
    ) {
        let (s, len, reported) = r.unwrap();
        let [v] = &reported[..] else {
            panic!("reported {reported:?}, wanted one {rule:?}");
        };
        assert_eq!((v.rule, v.queue), (rule, Some(0)), "{v}");
        assert!(v.detail.contains(needle), "{v}");
        assert_eq!((s, len), (status, used), "{v}");
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
        let before: Vec<u8> = (2 * SECTOR..3 * SECTOR).map(pattern).collect();
        assert_eq!(disk.sectors(2, 1), before, "the sector before, untouched");

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
    fn an_empty_last_writable_buffer_holds_no_status_byte() {
        // The status is the last byte of the writable stream: here the
        // data buffer's, and nothing is written around the empty one.
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        mem.write_obj(0x55u8, GuestAddress(STATUS - 1)).unwrap();
        let bufs = [
            (HDR, 16, false),
            (DATA, SECTOR as u32 + 1, true),
            (STATUS, 0, true),
        ];
        let (q, _) = offer(&mem, ALL, &bufs);
        let status_at = DATA + SECTOR as u64;
        let (status, len, reported) = finish_reporting(h.as_mut(), q, &mem, status_at).unwrap();
        assert_eq!((status, len), (S_OK, SECTOR as u32 + 1));
        let rules: Vec<Rule> = reported.iter().map(|v| v.rule).collect();
        assert_eq!(rules, [Rule::DescriptorZeroLength]);
        assert_eq!(guest(&mem, DATA, SECTOR), disk.sectors(0, 1));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS - 1)).unwrap(), 0x55);
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

    /// Reads and writes go straight between the file and the guest's
    /// buffers: a request's data in buffers of odd sizes, the first
    /// sharing its descriptor with the header (a write) or the last with
    /// the status byte (a read), lands byte for byte where it belongs.
    #[test]
    fn zero_copy_over_partial_descriptors() {
        // Modern; and legacy, whose cached reads go through the bounce
        // buffer instead (no reset handshake) and must land the same.
        let legacy = ALL & !feature::VERSION_1 | 1 << VIRTIO_F_ANY_LAYOUT;
        for features in [ALL, legacy] {
            over_partial_descriptors(features);
        }
    }

    fn over_partial_descriptors(features: u64) {
        let disk = TempDisk::new(16 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, features);
        let mem = ram();
        let data: Vec<u8> = (0..4 * SECTOR).map(|i| (i * 13 + 5) as u8).collect();
        // Header + 300 data bytes | 1 byte | 1000 bytes | the rest.
        header(&mem, HDR, VIRTIO_BLK_T_OUT, 3);
        mem.write_slice(&data[..300], GuestAddress(HDR + 16))
            .unwrap();
        let cuts = [300, 301, 1301, 4 * SECTOR];
        let at = [DATA, DATA + 0x1000, DATA + 0x3000];
        for (i, w) in cuts.windows(2).enumerate() {
            mem.write_slice(&data[w[0]..w[1]], GuestAddress(at[i]))
                .unwrap();
        }
        let bufs = [
            (HDR, 16 + 300, false),
            (at[0], 1, false),
            (at[1], 1000, false),
            (at[2], (4 * SECTOR - 1301) as u32, false),
            (STATUS, 1, true),
        ];
        assert_eq!(
            run_with(h.as_mut(), &mem, features, &bufs).unwrap(),
            (S_OK, 1)
        );
        assert_eq!(disk.sectors(3, 4), data);
        let before: Vec<u8> = (2 * SECTOR..3 * SECTOR).map(pattern).collect();
        assert_eq!(disk.sectors(2, 1), before, "the sector before, untouched");

        // Back, into 7 | 505 | 1536 + status in one buffer.
        header(&mem, HDR, VIRTIO_BLK_T_IN, 3);
        mem.write_slice(&[0u8; 0x4000], GuestAddress(DATA)).unwrap();
        let tail = DATA + 0x2000;
        let bufs = [
            (HDR, 16, false),
            (DATA, 7, true),
            (DATA + 0x1000, 505, true),
            (tail, 3 * SECTOR as u32 + 1, true),
        ];
        let r = run_with(h.as_mut(), &mem, features, &bufs);
        assert_eq!(r.unwrap(), (S_OK, 4 * SECTOR as u32 + 1));
        let mut got = guest(&mem, DATA, 7);
        got.extend(guest(&mem, DATA + 0x1000, 505));
        got.extend(guest(&mem, tail, 3 * SECTOR));
        assert_eq!(got, data);
        assert_eq!(guest(&mem, DATA + 7, 1), [0], "beyond the first buffer");
    }

    /// Guest RAM in two regions (as below and above the MMIO hole, here
    /// adjacent): a buffer that starts in one and ends in the next is one
    /// iovec per region, for writes and reads alike.
    #[test]
    fn zero_copy_buffers_that_cross_guest_memory_regions() {
        let disk = TempDisk::new(16 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let half = RAM / 2;
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), half as usize),
            (GuestAddress(half), half as usize),
        ])
        .unwrap();
        assert_eq!(mem.num_regions(), 2);
        let data: Vec<u8> = (0..2 * SECTOR).map(|i| (i * 31 + 7) as u8).collect();
        let across = half - 700;
        mem.write_slice(&data, GuestAddress(across)).unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_OUT, 9);
        let bufs = [
            (HDR, 16, false),
            (across, 2 * SECTOR as u32, false),
            (STATUS, 1, true),
        ];
        assert_eq!(run(h.as_mut(), &mem, &bufs).unwrap(), (S_OK, 1));
        assert_eq!(disk.sectors(9, 2), data);

        let back = half - 300;
        mem.write_slice(&[0u8; 2 * SECTOR], GuestAddress(back))
            .unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_IN, 9);
        let bufs = [
            (HDR, 16, false),
            (back, 2 * SECTOR as u32, true),
            (STATUS, 1, true),
        ];
        let r = run(h.as_mut(), &mem, &bufs);
        assert_eq!(r.unwrap(), (S_OK, 2 * SECTOR as u32 + 1));
        assert_eq!(guest(&mem, back, 2 * SECTOR), data);
    }

    /// The image shrinks behind the device's back to 4½ sectors: a read
    /// across the new end is IOERR with what the file still had in the
    /// guest's buffer (and counted in the used length, the status byte
    /// not), a read wholly past it IOERR with nothing; the device goes on.
    #[test]
    fn zero_copy_short_reads_at_the_end_of_the_file() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let end = 4 * SECTOR + SECTOR / 2;
        disk.shrink(end);
        let mem = ram();
        mem.write_slice(&[0u8; 3 * SECTOR], GuestAddress(DATA))
            .unwrap();
        let r = simple(
            h.as_mut(),
            &mem,
            VIRTIO_BLK_T_IN,
            3,
            &[3 * SECTOR as u32],
            true,
        );
        let had = end - 3 * SECTOR;
        assert_eq!(r.unwrap(), (S_IOERR, had as u32));
        assert_eq!(guest(&mem, DATA, had), disk.contents()[3 * SECTOR..]);
        assert_eq!(guest(&mem, DATA + had as u64, SECTOR), vec![0; SECTOR]);

        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 6, &[SECTOR as u32], true);
        assert_eq!(r.unwrap(), (S_IOERR, 0));
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 1, &[SECTOR as u32], true);
        assert_eq!(r.unwrap(), (S_OK, SECTOR as u32 + 1));
        assert_eq!(guest(&mem, DATA, SECTOR), disk.sectors(1, 1));
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

    /// Writes, a FLUSH and reads in one notification: the writes go to
    /// the I/O threads (all but the last), the FLUSH waits for them, and
    /// every request is answered, each once, before `process` returns.
    #[test]
    fn writes_flush_and_reads_in_one_notification() {
        let disk = TempDisk::new(16 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let (vq, mut q) = queue(&mem, ALL);
        let kinds = [
            (VIRTIO_BLK_T_OUT, 0u64),
            (VIRTIO_BLK_T_OUT, 1),
            (VIRTIO_BLK_T_OUT, 2),
            (VIRTIO_BLK_T_FLUSH, 0),
            (VIRTIO_BLK_T_IN, 8),
        ];
        for (r, &(kind, sector)) in kinds.iter().enumerate() {
            let r16 = r as u16;
            let hdr = HDR + 16 * r as u64;
            let data = DATA + (SECTOR * r) as u64;
            header(&mem, hdr, kind, sector);
            mem.write_slice(&[0x40 + r as u8; SECTOR], GuestAddress(data))
                .unwrap();
            let d = 3 * r16;
            let status = STATUS + r as u64;
            vq.desc_table()
                .store(d, desc(hdr, 16, NEXT, d + 1))
                .unwrap();
            if kind == VIRTIO_BLK_T_FLUSH {
                vq.desc_table()
                    .store(d + 1, desc(status, 1, WRITE, 0))
                    .unwrap();
            } else {
                let w = if kind == VIRTIO_BLK_T_IN { WRITE } else { 0 };
                vq.desc_table()
                    .store(d + 1, desc(data, SECTOR as u32, w | NEXT, d + 2))
                    .unwrap();
                vq.desc_table()
                    .store(d + 2, desc(status, 1, WRITE, 0))
                    .unwrap();
            }
            vq.avail().ring().ref_at(r).unwrap().store(d);
        }
        vq.avail().idx().store(kinds.len() as u16);
        mem.write_slice(&[0xffu8; 5], GuestAddress(STATUS)).unwrap();
        assert!(h.process(&mut q, &mem).unwrap());
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 5);
        assert_eq!(guest(&mem, STATUS, 5), vec![S_OK; 5]);
        let mut heads: Vec<u32> = (0..5)
            .map(|i| mem.read_obj::<u32>(GuestAddress(USED + 4 + 8 * i)).unwrap())
            .collect();
        heads.sort_unstable();
        assert_eq!(heads, vec![0, 3, 6, 9, 12], "each request used once");
        for r in 0..3 {
            assert_eq!(disk.sectors(r, 1), vec![0x40 + r as u8; SECTOR]);
        }
        let read = |r: usize| guest(&mem, DATA + (SECTOR * r) as u64, SECTOR);
        assert_eq!(read(4), disk.sectors(8, 1));
        assert!(!h.process(&mut q, &mem).unwrap());
    }

    #[test]
    fn beyond_capacity_is_ioerr_reported_and_touches_nothing() {
        let disk = TempDisk::new(16 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        mem.write_slice(&[0x55; 2 * SECTOR], GuestAddress(DATA))
            .unwrap();
        // Across the end, just past it, and sectors whose byte offset or
        // end overflows.
        for sector in [15, 16, u64::MAX, u64::MAX / 512] {
            for (kind, writable) in [(VIRTIO_BLK_T_OUT, false), (VIRTIO_BLK_T_IN, true)] {
                let data = [2 * SECTOR as u32];
                let r = simple_reporting(h.as_mut(), &mem, kind, sector, &data, writable);
                let needle = "beyond the disk's 16 sectors";
                // A read's used length is 0: no byte before its status
                // byte was written (see `finish`).
                let used = u32::from(!writable);
                expect_reported(r, (S_IOERR, used), Rule::BlkBeyondCapacity, needle);
            }
            assert_eq!(guest(&mem, DATA, 2 * SECTOR), vec![0x55; 2 * SECTOR]);
        }
        assert_eq!(disk.contents(), before);
        // An empty transfer past the end moves nothing: refused, no rule.
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 17, &[], true);
        assert_eq!(r.unwrap(), (S_IOERR, 1));
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
    fn partial_sectors_are_ioerr_and_reported() {
        let disk = TempDisk::new(16 * SECTOR);
        let before = disk.contents();
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let data = [SECTOR as u32 + 1];
        let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_OUT, 0, &data, false);
        let needle = "513 data bytes are not a whole number of 512-byte sectors";
        expect_reported(r, (S_IOERR, 1), Rule::BlkDataNotSectorMultiple, needle);
        // Beyond the end as well: the length is checked first.
        let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 99, &[100], true);
        let needle = "request 0 (T_IN, sector 99): 0 device-readable data bytes after the header, 100 device-writable";
        expect_reported(r, (S_IOERR, 0), Rule::BlkDataNotSectorMultiple, needle);
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
        let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_IN, 2, &[SECTOR as u32], true);
        let needle = "beyond the disk's 2 sectors";
        expect_reported(r, (S_IOERR, 0), Rule::BlkBeyondCapacity, needle);
    }

    /// ENOSPC (and EIO alike) from the host fails that write only, with
    /// IOERR; the next request is served. `/dev/full` refuses every write
    /// with ENOSPC and reads as zeros. The warning goes through the
    /// once-per-cause limiter: the second failure is only counted.
    #[test]
    fn host_write_errors_are_ioerr_for_that_request_only() {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap();
        let disk = Disk {
            file,
            path: PathBuf::from("/dev/full"),
            capacity: 8,
            read_only: false,
            id: [0; ID_LEN],
            writeback: AtomicBool::new(true),
            sync_failures: AtomicU64::new(0),
        };
        let mut h = BlockQueue::new(Arc::new(disk), ALL);
        let mem = ram();
        for _ in 0..2 {
            mem.write_slice(&[0x5a; SECTOR], GuestAddress(DATA))
                .unwrap();
            let r = simple(&mut h, &mem, VIRTIO_BLK_T_OUT, 1, &[SECTOR as u32], false);
            assert_eq!(r.unwrap(), (S_IOERR, 1));
        }
        let r = simple(&mut h, &mem, VIRTIO_BLK_T_IN, 1, &[SECTOR as u32], true);
        assert_eq!(r.unwrap(), (S_OK, SECTOR as u32 + 1));
        let mut back = [0xffu8; SECTOR];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, [0u8; SECTOR], "the read was served");
        let cause = format!(
            "virtio-blk /dev/full write {:?}",
            io::ErrorKind::StorageFull
        );
        let counted = crate::guestlog::suppressed()
            .into_iter()
            .find(|(c, _)| *c == cause);
        assert_eq!(counted, Some((cause, 1)), "printed once, then counted");
    }

    /// Linux reports a write-back error to one `fdatasync` of the file
    /// only: a sync that succeeds after another request's sync failed
    /// since this request began fails too; one with no failure since, or
    /// only failures before it began, succeeds.
    #[test]
    fn a_sync_after_another_requests_failed_sync_is_ioerr() {
        let disk = TempDisk::new(8 * SECTOR);
        let b = open(&disk, false, None);
        let req = Request {
            head: 0,
            kind: VIRTIO_BLK_T_FLUSH,
            sector: 0,
            out_len: 0,
            in_len: 0,
        };
        let gate = Gate::always_open();
        let d = &b.disk;
        assert!(sync(d, &req, &gate, 0).is_ok());
        // Another request's sync failed meanwhile.
        d.sync_failures.fetch_add(1, Ordering::SeqCst);
        let failed = sync(d, &req, &gate, 0).err().map(|o| o.status);
        assert_eq!(failed, Some(S_IOERR));
        // A request begun after that failure is not blamed for it.
        assert!(sync(d, &req, &gate, 1).is_ok());
    }

    /// A device reset while a request's host I/O runs (the gate closes
    /// while the handler is outside it): the request is dropped when the
    /// I/O returns. Its data never reaches guest memory, its status byte
    /// and the used ring stay as they were, nothing is recorded.
    #[test]
    fn a_request_whose_device_is_reset_during_its_host_io_is_dropped() {
        use crate::virtio::gate::Generation;
        let disk = TempDisk::new(64 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let one = [SECTOR as u32];
        let cases: [(u32, &[u32], bool); 4] = [
            (VIRTIO_BLK_T_IN, &one, true),
            (VIRTIO_BLK_T_OUT, &one, false),
            (VIRTIO_BLK_T_FLUSH, &[], false),
            (VIRTIO_BLK_T_WRITE_ZEROES, &[SEGMENT_LEN as u32], false),
        ];
        for (kind, data, writable) in cases {
            let chain = simple_chain(&mem, kind, 0, data, writable);
            if kind == VIRTIO_BLK_T_WRITE_ZEROES {
                segment(&mem, DATA, 8, 8, 0);
            } else {
                mem.write_slice(&[0xee; SECTOR], GuestAddress(DATA))
                    .unwrap();
            }
            let (mut q, status_at) = offer(&mem, ALL, &chain);
            mem.write_obj(0xffu8, GuestAddress(status_at)).unwrap();
            let generation = Generation::new("virtio-blk test");
            let gate = Gate::new(generation.clone(), 0);
            assert!(gate.enter());
            q.set_gate(gate);
            // The reset closes the generation; the handler is inside and
            // steps out for its I/O next, as if the reset came then.
            generation.close(std::time::Duration::ZERO);
            let what = type_name(kind);
            assert!(!h.process(&mut q, &mem).unwrap(), "{what}: nothing used");
            assert!(!q.gate().is_inside(), "{what}");
            assert!(q.take_findings().is_empty(), "{what}");
            let used_idx = mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
            let status = mem.read_obj::<u8>(GuestAddress(status_at)).unwrap();
            assert_eq!((used_idx, status), (0, 0xff), "{what}");
            if kind == VIRTIO_BLK_T_IN {
                let mut back = [0u8; SECTOR];
                mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
                assert_eq!(back, [0xee; SECTOR], "the read reached guest memory");
            }
        }
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
    fn flush_with_a_sector_or_data_is_served_and_reported() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_FLUSH, 5, &[], false);
        expect_reported(
            r,
            (S_OK, 1),
            Rule::BlkFlushSectorNotZero,
            "a flush names sector 5",
        );
        let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_FLUSH, 0, &[512], false);
        expect_reported(
            r,
            (S_OK, 1),
            Rule::BlkFlushWithData,
            "a flush carries 512 data bytes",
        );
        assert_eq!(
            Rule::BlkFlushWithData.level(),
            crate::virtio::rules::Level::Should
        );
        let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_FLUSH, 0, &[7], true);
        // Nothing written into the 7 bytes before the status byte: used 0.
        expect_reported(r, (S_OK, 0), Rule::BlkFlushWithData, "7 data bytes");
        // Both: the MUST is the one reported.
        let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_FLUSH, 1, &[512], false);
        expect_reported(r, (S_OK, 1), Rule::BlkFlushSectorNotZero, "sector 1");
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
        // Closed (and unlocked) before the image is attached again.
        drop((h, b));

        let mut b = open(&disk, true, Some("disk-7"));
        let mut h = handler(&mut b, F_RO);
        mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        let r = simple(h.as_mut(), &mem, VIRTIO_BLK_T_GET_ID, 0, &[8, 12], true);
        assert_eq!(r.unwrap(), (S_OK, 21));
        let mut want = b"disk-7".to_vec();
        want.resize(20, 0);
        want.extend([0xff; 12]);
        assert_eq!(guest(&mem, DATA, 32), want);
    }

    #[test]
    fn get_id_of_other_lengths_is_answered_and_reported() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, Some("disk-7"));
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        // Longer: the 20 bytes (the status byte is not next to them);
        // shorter: what fits; none: nothing.
        for (len, used) in [(32, 20), (4, 5), (0, 1)] {
            let data: &[u32] = if len == 0 { &[] } else { &[len] };
            let r = simple_reporting(h.as_mut(), &mem, VIRTIO_BLK_T_GET_ID, 0, data, true);
            let needle = format!(
                "{len} device-writable data bytes before the status byte: GET_ID takes exactly 20"
            );
            expect_reported(r, (S_OK, used), Rule::BlkGetIdLength, &needle);
        }
        assert_eq!(guest(&mem, DATA, 7), b"disk-7\0");
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
        // The unmap bit must be 0 in a discard: UNSUPP (§5.2.6.2).
        segment(&mem, DATA, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        let r = run_reporting(h.as_mut(), &mem, ALL, &chain);
        expect_reported(
            r,
            (S_UNSUPP, 1),
            Rule::BlkDiscardUnmap,
            "segment 0 has the unmap bit set",
        );
        // Unknown flags are UNSUPP too, but no driver rule names them.
        segment(&mem, DATA, 0, 8, 0x4);
        assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_UNSUPP, 1));
        // Beyond the end (a discard writes nothing, so no rule), too long.
        for (sector, num) in [(60, 8), (u64::MAX, 8), (0, MAX_DISCARD_SECTORS + 1)] {
            segment(&mem, DATA, sector, num, 0);
            assert_eq!(run(h.as_mut(), &mem, &chain).unwrap(), (S_IOERR, 1));
        }
        // Two segments (more than max_discard_seg), a partial one.
        segment(&mem, DATA, 0, 8, 0);
        segment(&mem, DATA + 16, 8, 8, 0);
        for (len, needle) in [(32, "32 bytes of segments"), (20, "20 bytes of segments")] {
            let chain = [(HDR, 16, false), (DATA, len, false), (STATUS, 1, true)];
            let r = run_reporting(h.as_mut(), &mem, ALL, &chain);
            expect_reported(r, (S_IOERR, 1), Rule::BlkDiscardSegments, needle);
        }
        // None at all: whole segments within the limit, but nothing to do.
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
        // Zeroing past the end is a write beyond the capacity.
        segment(&mem, DATA, 60, 5, 0);
        let r = run_reporting(h.as_mut(), &mem, ALL, &chain);
        let needle = "segment 0 (5 sectors at 60) is beyond the disk's 64 sectors";
        expect_reported(r, (S_IOERR, 1), Rule::BlkBeyondCapacity, needle);
        // More than max_write_zeroes_seg segments.
        segment(&mem, DATA + 16, 8, 8, 0);
        let two = [(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)];
        let r = run_reporting(h.as_mut(), &mem, ALL, &two);
        expect_reported(
            r,
            (S_IOERR, 1),
            Rule::BlkDiscardSegments,
            "at most 1 (max_write_zeroes_seg)",
        );

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
        assert_ne!(b.features() & F_RO, 0);
        let mut h = handler(&mut b, ALL | F_RO);
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
            assert_eq!(r.unwrap(), (S_UNSUPP, 0), "type {kind}");
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

    // --- what the handler reports without ending the queue ---

    #[test]
    fn a_reported_request_is_answered_and_the_queue_goes_on() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let mut h = handler(&mut b, ALL);
        let mem = ram();
        let (vq, mut q) = queue(&mem, ALL);
        // Request 0 reads beyond the end, request 3 reads sector 0.
        for (r, sector) in [(0u16, 8u64), (3, 0)] {
            let hdr = HDR + 16 * u64::from(r);
            header(&mem, hdr, VIRTIO_BLK_T_IN, sector);
            let data = DATA + SECTOR as u64 * u64::from(r);
            vq.desc_table()
                .store(r, desc(hdr, 16, NEXT, r + 1))
                .unwrap();
            let d = desc(data, SECTOR as u32, WRITE | NEXT, r + 2);
            vq.desc_table().store(r + 1, d).unwrap();
            let status = desc(STATUS + u64::from(r), 1, WRITE, 0);
            vq.desc_table().store(r + 2, status).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().ring().ref_at(1).unwrap().store(3);
        vq.avail().idx().store(2);
        assert!(h.process(&mut q, &mem).unwrap());
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 2);
        assert_eq!(guest(&mem, STATUS, 4), vec![S_IOERR, 0, 0, S_OK]);
        let reported: Vec<Rule> = q.take_findings().iter().map(|v| v.rule).collect();
        assert_eq!(reported, [Rule::BlkBeyondCapacity]);
        let third = DATA + 3 * SECTOR as u64;
        assert_eq!(guest(&mem, third, SECTOR), disk.sectors(0, 1));
    }

    #[test]
    fn ro_not_accepted_is_warned_once_per_activation() {
        let disk = TempDisk::new(8 * SECTOR);
        let mem = ram();
        let mut ro = open(&disk, true, None);
        for (features, warned) in [(ALL, true), (ALL | F_RO, false)] {
            let mut h = handler(&mut ro, features);
            let (_vq, mut q) = queue(&mem, features);
            assert!(!h.process(&mut q, &mem).unwrap());
            let reported = q.take_findings();
            assert_eq!(reported.len(), usize::from(warned), "{reported:?}");
            if let Some(v) = reported.first() {
                assert_eq!(v.rule, Rule::BlkRoNotAccepted);
                assert!(v.detail.contains("without it"), "{v}");
            }
            assert!(!h.process(&mut q, &mem).unwrap());
            assert!(q.take_findings().is_empty());
        }
        // A writable disk does not offer RO.
        drop(ro);
        let mut rw = open(&disk, false, None);
        let mut h = handler(&mut rw, ALL);
        let (_vq, mut q) = queue(&mem, ALL);
        assert!(!h.process(&mut q, &mem).unwrap());
        assert!(q.take_findings().is_empty());
    }

    #[test]
    fn legacy_framing_header_and_status_in_descriptors_of_their_own() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let legacy = F_FLUSH;
        let mut h = handler(&mut b, legacy);
        let mem = ram();
        header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
        let good = [(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)];
        assert_eq!(
            run_with(h.as_mut(), &mem, legacy, &good).unwrap(),
            (S_OK, 513)
        );
        // Header and data of a write in one descriptor: served all the same.
        header(&mem, DATA, VIRTIO_BLK_T_OUT, 2);
        mem.write_slice(&[0x3c; SECTOR], GuestAddress(DATA + 16))
            .unwrap();
        let merged = [(DATA, 16 + 512, false), (STATUS, 1, true)];
        let r = run_reporting(h.as_mut(), &mem, legacy, &merged);
        let needle =
            "the first descriptor holds 528 device-readable bytes and the last 1 device-writable";
        expect_reported(r, (S_OK, 1), Rule::BlkLegacyHeaderLayout, needle);
        assert_eq!(disk.sectors(2, 1), vec![0x3c; SECTOR]);
        // A read with the status byte at the end of its data buffer.
        header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
        let tail = [(HDR, 16, false), (DATA, 513, true)];
        let r = run_reporting(h.as_mut(), &mem, legacy, &tail);
        let needle = "and the last 513 device-writable bytes";
        expect_reported(r, (S_OK, 513), Rule::BlkLegacyHeaderLayout, needle);
        // A flush whose header comes in two halves.
        header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
        let split = [(HDR, 8, false), (HDR + 8, 8, false), (STATUS, 1, true)];
        let r = run_reporting(h.as_mut(), &mem, legacy, &split);
        let needle = "the first descriptor holds 8 device-readable bytes";
        expect_reported(r, (S_OK, 1), Rule::BlkLegacyHeaderLayout, needle);
        // With ANY_LAYOUT negotiated, or on the modern interface, any
        // layout is fine.
        header(&mem, DATA, VIRTIO_BLK_T_OUT, 2);
        for features in [legacy | 1 << VIRTIO_F_ANY_LAYOUT, ALL] {
            let mut h = handler(&mut b, features);
            let r = run_with(h.as_mut(), &mem, features, &merged);
            assert_eq!(r.unwrap(), (S_OK, 1));
        }
    }

    #[test]
    fn writes_are_stable_when_the_driver_cannot_flush() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        let writethrough =
            |b: &mut Block, features| BlockQueue::new(b.disk.clone(), features).writethrough();
        // FLUSH (a writeback cache the driver flushes) or neither.
        assert!(!writethrough(&mut b, ALL));
        assert!(writethrough(&mut b, ALL & !F_FLUSH));
        // CONFIG_WCE: whatever `writeback` says.
        assert!(!writethrough(&mut b, ALL | F_WCE));
        b.write_config(32, &[0]);
        assert!(writethrough(&mut b, ALL | F_WCE));
        b.write_config(32, &[1]);
        assert!(!writethrough(&mut b, ALL | F_WCE));
        // Not 0 or 1, or not writeback: ignored.
        b.write_config(32, &[2]);
        b.write_config(0, &[0; 4]);
        assert_eq!(config(&b, 32, 1), [1]);
        assert_eq!(config_u32(&b, 0), 8);
    }

    #[test]
    fn writeback_starts_at_0_with_config_wce_but_not_flush() {
        let disk = TempDisk::new(8 * SECTOR);
        let mut b = open(&disk, false, None);
        assert_eq!(config(&b, 32, 1), [1]);
        b.activate(ALL | F_WCE);
        assert_eq!(config(&b, 32, 1), [1]);
        b.activate((ALL | F_WCE) & !F_FLUSH);
        assert_eq!(config(&b, 32, 1), [0]);
        b.reset();
        assert_eq!(config(&b, 32, 1), [1]);
        b.write_config(32, &[0]);
        assert_eq!(config(&b, 32, 4), [0, 0, 0, 0]);
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
        let want = [1, 2, 6, 9, 11, 13, 14, 28, 29]
            .iter()
            .fold(0u64, |f, bit| f | 1 << bit);
        assert_eq!(b.features(), want);
        drop(b);
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

    #[test]
    fn config_fields_cover_virtio_blk_config_without_gaps() {
        let fields = crate::virtio::block::BLK_CONFIG_FIELDS;
        let mut end = 0;
        for f in fields {
            assert_eq!(f.offset, end, "{} does not follow its predecessor", f.name);
            assert!(f.len % u16::from(f.elem) == 0 && f.offset % u16::from(f.elem.min(4)) == 0);
            assert_eq!(
                f.feature.count_ones(),
                u32::from(f.feature != 0),
                "{}",
                f.name
            );
            end = f.offset + f.len;
        }
        assert_eq!(
            end, 96,
            "struct virtio_blk_config with the zoned characteristics"
        );
        let at = |name| fields.iter().find(|f| f.name == name).unwrap();
        assert_eq!(at("capacity").feature, 0);
        assert_eq!(at("num_queues").offset, 34);
        assert_eq!(at("max_secure_erase_sectors").offset, 60);
        let wb = at("writeback");
        assert!(wb.after_features_ok && wb.offset == 32 && wb.feature == F_WCE);
        assert_eq!(fields.iter().filter(|f| f.after_features_ok).count(), 1);
    }

    /// A Core over a real virtio-blk, for the configuration checks.
    fn blk_core(
        version: crate::virtio::transport::core::Version,
        disk: &TempDisk,
    ) -> (
        crate::virtio::transport::core::Core,
        Arc<crate::virtio::transport::testing::FakeHooks>,
    ) {
        use crate::virtio::transport::core::{Core, Doorbell, Names};
        use crate::virtio::transport::VmHooks;
        struct NoBell;
        impl Doorbell for NoBell {
            fn connect(&mut self, _: &dyn VmHooks, _: Names, _: u64, _: &[(u16, &EventFd)]) {}
            fn disconnect(&mut self, _: &dyn VmHooks, _: &str) {}
        }
        let hooks = Arc::new(crate::virtio::transport::testing::FakeHooks::new(false));
        let dev = Box::new(open(disk, false, None));
        let core = Core::new(dev, version, 2, hooks.clone(), 2, Box::new(NoBell));
        (core, hooks)
    }

    /// What Linux 6.1's virtio_blk reads on our device (virtblk_probe and
    /// friends, each only with its feature negotiated), at the width its
    /// modern `vp_get` uses: (offset, bytes). `capacity` is a 64-bit
    /// field, which `vp_get` reads as two 32-bit halves.
    const LINUX_READS: &[(u64, usize)] = &[
        (12, 4), // seg_max
        (0, 4),  // capacity, low
        (4, 4),  // capacity, high
        (32, 1), // writeback (wce)
        (8, 4),  // size_max
        (20, 4), // blk_size
        (44, 4), // discard_sector_alignment
        (36, 4), // max_discard_sectors
        (40, 4), // max_discard_seg
        (48, 4), // max_write_zeroes_sectors
    ];

    #[test]
    fn linux_config_reads_break_no_rule_and_bad_ones_are_named() {
        use crate::virtio::device::status::{ACKNOWLEDGE, DRIVER, FEATURES_OK};
        use crate::virtio::transport::core::Version;
        let disk = TempDisk::new(0x1234 * SECTOR);
        for version in [Version::Modern, Version::Legacy] {
            let (mut core, hooks) = blk_core(version, &disk);
            core.write_status(ACKNOWLEDGE, 0);
            core.write_status(ACKNOWLEDGE | DRIVER, 0);
            // A driver may look at the configuration before accepting.
            let mut cap = [0u8; 4];
            core.read_config(0, &mut cap);
            let offered = core.offered();
            core.write_driver_features(0, offered as u32);
            core.write_driver_features(1, (offered >> 32) as u32);
            if version == Version::Modern {
                core.write_status(ACKNOWLEDGE | DRIVER | FEATURES_OK, 0);
            }
            let mut got = Vec::new();
            for &(offset, len) in LINUX_READS {
                let mut buf = vec![0u8; len];
                match version {
                    Version::Modern => core.read_config(offset, &mut buf),
                    // The legacy vp_get reads byte by byte.
                    Version::Legacy => {
                        for (i, b) in buf.iter_mut().enumerate() {
                            core.read_config(offset + i as u64, std::slice::from_mut(b));
                        }
                    }
                }
                got.push(buf);
            }
            assert_eq!(hooks.take_violations(), [], "{version:?}");
            assert_eq!(got[1], 0x1234u32.to_le_bytes(), "{version:?}");
            assert_eq!(got[3], [1], "{version:?}: writeback");
            // Changing the cache mode later, as Linux's cache_type does.
            core.write_config(32, &[0]);
            assert_eq!(hooks.take_violations(), [], "{version:?}");
            // Fields of features not offered, whatever the interface.
            for (offset, len, name) in [
                (34, 2, "num_queues"),
                (16, 2, "geometry.cylinders"),
                (60, 4, "max_secure_erase_sectors"),
            ] {
                core.read_config(offset, &mut vec![0; len]);
                let v = hooks.take_violations();
                assert_eq!(
                    v.iter().map(|v| v.rule).collect::<Vec<_>>(),
                    [Rule::ConfigFieldNotOffered],
                    "{version:?} {name}"
                );
                assert!(v[0].detail.contains(name), "{}", v[0]);
            }
        }

        // The modern interface only: widths and FEATURES_OK.
        let (mut core, hooks) = blk_core(Version::Modern, &disk);
        core.write_status(ACKNOWLEDGE, 0);
        core.write_status(ACKNOWLEDGE | DRIVER, 0);
        let expect = |rule: Rule, needle: &str| {
            let v = hooks.take_violations();
            assert_eq!(
                v.iter().map(|v| v.rule).collect::<Vec<_>>(),
                [rule],
                "{needle}"
            );
            assert!(v[0].detail.contains(needle), "{}", v[0]);
        };
        core.read_config(0, &mut [0; 8]);
        expect(Rule::ConfigAccessWidth, "8-byte read at config offset 0x0");
        core.read_config(20, &mut [0; 2]);
        expect(Rule::ConfigAccessWidth, "2-byte read at config offset 0x14");
        core.read_config(32, &mut [0; 1]);
        expect(
            Rule::BlkWritebackBeforeFeaturesOk,
            "(writeback) before FEATURES_OK",
        );
        core.write_config(0, &[0; 4]);
        expect(
            Rule::ConfigWriteBeforeFeaturesOk,
            "(capacity) before FEATURES_OK",
        );
        // Writing writeback early is a write before FEATURES_OK (the
        // writeback rule is about reads).
        core.write_config(32, &[0]);
        expect(
            Rule::ConfigWriteBeforeFeaturesOk,
            "(writeback) before FEATURES_OK",
        );

        // A legacy driver may use any width, but one access covering a
        // field of a feature not offered still touched it. (The modern
        // core goes first: it holds the image's lock.)
        drop(core);
        let (mut core, hooks) = blk_core(Version::Legacy, &disk);
        core.read_config(32, &mut [0; 4]);
        let v = hooks.take_violations();
        assert_eq!(
            v.iter().map(|v| v.rule).collect::<Vec<_>>(),
            [Rule::ConfigFieldNotOffered]
        );
        assert!(v[0].detail.contains("num_queues"), "{}", v[0]);
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
