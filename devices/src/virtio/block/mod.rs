//! virtio-blk (device type 2, virtio 1.0 §5.2): a guest disk backed by a
//! host file (or block device) named on the command line.
//!
//! This module says who the device is: it opens the backing file at
//! startup (so a missing or unwritable image is reported before the guest
//! runs), works out the capacity, and serves the feature bits and the
//! `struct virtio_blk_config` the driver reads, with its layout for the
//! strict checks of configuration accesses ([`BLK_CONFIG_FIELDS`]) and
//! its one writable field, `writeback` (VIRTIO_BLK_F_CONFIG_WCE). What a
//! request on the single request queue means — reads, writes, flushes,
//! GET_ID, discard, write-zeroes, and which requests break a driver rule —
//! lives in `handler.rs`, which moves data between guest RAM and the file
//! with positional I/O (`pread` through a bounce buffer, `pwritev` from
//! guest memory) on the worker thread and, for requests that may wait for
//! the disk, on a small pool of I/O threads per queue.

mod handler;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SECURE_ERASE,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_F_ZONED, VIRTIO_BLK_ID_BYTES,
};

use super::device::{feature, ConfigField, QueueHandler, VirtioDevice};
use handler::{BlockQueue, Disk};

/// The unit of `capacity` and of request sectors, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// The one request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Data buffers per request: the queue size less header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest single data buffer the driver should build (advisory: larger
/// ones are still served, in bounce-buffer-sized pieces).
pub const SIZE_MAX: u32 = 1 << 20;
/// Sectors one discard or write-zeroes segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Segments per discard request (`max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 1;
/// Segments per write-zeroes request (`max_write_zeroes_seg`).
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Discard granularity hint in sectors: 4 KiB, the usual host block size,
/// so punched holes free whole blocks.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Length of `struct virtio_blk_config` up to `write_zeroes_may_unmap`
/// and its padding; reads beyond it return zeros.
const CONFIG_LEN: usize = 60;
/// Bytes of the GET_ID string.
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Where `writeback` is in the configuration space.
const WRITEBACK: usize = 32;

/// `struct virtio_blk_config` field by field (virtio 1.2 §5.2.4, and the
/// `zoned` characteristics of 1.3), each with the feature that makes it
/// exist. Fields of features this device does not offer are listed too, so
/// that a driver touching them is `ConfigFieldNotOffered`; padding is
/// always there and harmless to read. Linux 6.1 reads each field it uses
/// at its own width (`capacity` as two 32-bit halves) and only when the
/// feature was negotiated, so it never trips these checks.
pub const BLK_CONFIG_FIELDS: &[ConfigField] = {
    const fn f(name: &'static str, offset: u16, len: u16, elem: u8, bit: u32) -> ConfigField {
        ConfigField::with(name, offset, len, elem, 1 << bit)
    }
    use VIRTIO_BLK_F_DISCARD as DISCARD;
    use VIRTIO_BLK_F_GEOMETRY as GEOMETRY;
    use VIRTIO_BLK_F_SECURE_ERASE as SECURE_ERASE;
    use VIRTIO_BLK_F_TOPOLOGY as TOPOLOGY;
    use VIRTIO_BLK_F_WRITE_ZEROES as WRITE_ZEROES;
    use VIRTIO_BLK_F_ZONED as ZONED;
    &[
        ConfigField::always("capacity", 0, 8, 8),
        f("size_max", 8, 4, 4, VIRTIO_BLK_F_SIZE_MAX),
        f("seg_max", 12, 4, 4, VIRTIO_BLK_F_SEG_MAX),
        f("geometry.cylinders", 16, 2, 2, GEOMETRY),
        f("geometry.heads", 18, 1, 1, GEOMETRY),
        f("geometry.sectors", 19, 1, 1, GEOMETRY),
        f("blk_size", 20, 4, 4, VIRTIO_BLK_F_BLK_SIZE),
        f("topology.physical_block_exp", 24, 1, 1, TOPOLOGY),
        f("topology.alignment_offset", 25, 1, 1, TOPOLOGY),
        f("topology.min_io_size", 26, 2, 2, TOPOLOGY),
        f("topology.opt_io_size", 28, 4, 4, TOPOLOGY),
        // §5.2.5.1: not to be read before FEATURES_OK, feature or not.
        ConfigField {
            after_features_ok: true,
            ..f("writeback", 32, 1, 1, VIRTIO_BLK_F_CONFIG_WCE)
        },
        ConfigField::always("unused0", 33, 1, 1),
        f("num_queues", 34, 2, 2, VIRTIO_BLK_F_MQ),
        f("max_discard_sectors", 36, 4, 4, DISCARD),
        f("max_discard_seg", 40, 4, 4, DISCARD),
        f("discard_sector_alignment", 44, 4, 4, DISCARD),
        f("max_write_zeroes_sectors", 48, 4, 4, WRITE_ZEROES),
        f("max_write_zeroes_seg", 52, 4, 4, WRITE_ZEROES),
        f("write_zeroes_may_unmap", 56, 1, 1, WRITE_ZEROES),
        ConfigField::always("unused1", 57, 3, 1),
        f("max_secure_erase_sectors", 60, 4, 4, SECURE_ERASE),
        f("max_secure_erase_seg", 64, 4, 4, SECURE_ERASE),
        f("secure_erase_sector_alignment", 68, 4, 4, SECURE_ERASE),
        f("zoned.zone_sectors", 72, 4, 4, ZONED),
        f("zoned.max_open_zones", 76, 4, 4, ZONED),
        f("zoned.max_active_zones", 80, 4, 4, ZONED),
        f("zoned.max_append_sectors", 84, 4, 4, ZONED),
        f("zoned.write_granularity", 88, 4, 4, ZONED),
        f("zoned.model", 92, 1, 1, ZONED),
        f("zoned.unused2", 93, 3, 1, ZONED),
    ]
};

/// How to attach one disk, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Backing file or host block device.
    pub path: PathBuf,
    /// Offer VIRTIO_BLK_F_RO and refuse writes; the file is opened read-only.
    pub read_only: bool,
    /// What GET_ID returns (at most 20 bytes are used); by default the
    /// file's name.
    pub serial: Option<String>,
}

/// Why a disk could not be attached; printed by the launcher at startup.
#[derive(Debug, Error)]
pub enum BlockError {
    #[error("disk image {}: cannot open it: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    /// Readable but not writable: the user probably meant `,ro`.
    #[error(
        "disk image {}: cannot open it read-write: {source} (append ,ro to attach it read-only)",
        path.display()
    )]
    OpenReadWrite { path: PathBuf, source: io::Error },
    #[error("disk image {}: is a directory, not a file or block device", path.display())]
    Directory { path: PathBuf },
    #[error("disk image {}: cannot find its size: {source}", path.display())]
    Size { path: PathBuf, source: io::Error },
    /// A FIFO, socket or character device: `open` could hang, reads never end.
    #[error("disk image {}: is {what}, not a regular file or block device", path.display())]
    NotADisk { path: PathBuf, what: &'static str },
    /// Another process (or this launcher, given the image twice) holds it.
    #[error(
        "disk image {}: is in use by another process{} (it holds a lock on it)",
        path.display(),
        if *read_only { " for writing" } else { "" }
    )]
    InUse { path: PathBuf, read_only: bool },
    #[error("disk image {}: cannot lock it: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
}

/// A virtio-blk device over one open backing file.
pub struct Block {
    disk: Arc<Disk>,
    config: [u8; CONFIG_LEN],
}

impl Block {
    /// Opens the backing file (read-write unless `read_only`) and sizes the
    /// disk from its length, rounded down to whole sectors.
    pub fn open(cfg: BlockConfig) -> Result<Block, BlockError> {
        Self::open_carried(cfg, None)
    }

    /// [`Block::open`], or over `carried`: the descriptor (and its lock)
    /// the previous boot kept for this disk across a reboot's re-exec.
    ///
    /// A read-write disk is locked exclusively and a read-only one shared
    /// (`flock`, held by the open file, so kept across the re-exec), as
    /// QEMU does: two launchers writing one image would corrupt it.
    pub fn open_carried(cfg: BlockConfig, carried: Option<File>) -> Result<Block, BlockError> {
        let path = cfg.path;
        let file = match carried {
            Some(f) => f,
            None => {
                let f = open_file(&path, cfg.read_only)?;
                lock(&f, &path, cfg.read_only)?;
                f
            }
        };
        let bytes = disk_bytes(&file, &path)?;
        if bytes % SECTOR_SIZE != 0 {
            log::warn!(
                "disk image {}: {bytes} bytes is not a whole number of {SECTOR_SIZE}-byte sectors; the last {} bytes are not visible to the guest",
                path.display(),
                bytes % SECTOR_SIZE
            );
        }
        let capacity = bytes / SECTOR_SIZE;
        let id = serial_id(cfg.serial.as_deref(), &path);
        log::info!(
            "virtio-blk: {} ({capacity} sectors{}) serial {:?}",
            path.display(),
            if cfg.read_only { ", read-only" } else { "" },
            String::from_utf8_lossy(&id).trim_end_matches('\0')
        );
        Ok(Block {
            config: config_space(capacity),
            disk: Arc::new(Disk {
                file,
                path,
                capacity,
                read_only: cfg.read_only,
                id,
                writeback: AtomicBool::new(true),
                sync_failures: AtomicU64::new(0),
            }),
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    /// A descriptor of its own on the backing file (close-on-exec), for
    /// the launcher to `fdatasync` on its way out.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.disk.file.try_clone()
    }
}

/// Locks the image: exclusive for writing, shared for reading.
fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), BlockError> {
    let how = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor we own; it only takes a lock.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(BlockError::InUse {
            path: path.to_path_buf(),
            read_only,
        });
    }
    Err(BlockError::Lock {
        path: path.to_path_buf(),
        source: e,
    })
}

/// What a disk cannot be, named; `None` for a regular file or block device.
fn not_a_disk(file: &File) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = file.metadata().ok()?.file_type();
    if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else {
        None
    }
}

/// Opens the backing file; when read-write fails but read-only works, says
/// so, since attaching the disk read-only is then the likely fix. Opened
/// non-blocking, so a FIFO without a writer is refused instead of hanging
/// `open`.
fn open_file(path: &Path, read_only: bool) -> Result<File, BlockError> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |write| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    let file = match open(!read_only) {
        Ok(file) => Ok(file),
        // Opening a directory read-write fails with EISDIR; say it plainly.
        Err(_) if path.is_dir() => Err(BlockError::Directory {
            path: path.to_path_buf(),
        }),
        Err(source) if !read_only && open(false).is_ok() => Err(BlockError::OpenReadWrite {
            path: path.to_path_buf(),
            source,
        }),
        Err(source) => Err(BlockError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }?;
    if let Some(what) = not_a_disk(&file) {
        return Err(BlockError::NotADisk {
            path: path.to_path_buf(),
            what,
        });
    }
    // Regular files and block devices ignore O_NONBLOCK; cleared anyway
    // so that every read and write blocks as the handler expects.
    // O_NOATIME where the file system lets us (we own the image, or
    // CAP_FOWNER): a read that updates the access time starts a journal
    // transaction, which may wait, and cached reads are meant not to.
    // SAFETY: F_SETFL on a descriptor we own, with flags we just read.
    unsafe {
        let fd = file.as_raw_fd();
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            let fl = fl & !libc::O_NONBLOCK;
            if libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NOATIME) != 0 {
                libc::fcntl(fd, libc::F_SETFL, fl);
            }
        }
    }
    Ok(file)
}

/// The backing file's length; seeking to the end also sizes block devices,
/// whose metadata length is 0.
fn disk_bytes(file: &File, path: &Path) -> Result<u64, BlockError> {
    let size_err = |source| BlockError::Size {
        path: path.to_path_buf(),
        source,
    };
    if file.metadata().map_err(size_err)?.is_dir() {
        return Err(BlockError::Directory {
            path: path.to_path_buf(),
        });
    }
    let mut f = file;
    f.seek(SeekFrom::End(0)).map_err(size_err)
}

/// The GET_ID string: the given serial or the file name, cut to 20 bytes
/// and NUL-padded (no terminator when all 20 are used, as the spec says).
fn serial_id(serial: Option<&str>, path: &Path) -> [u8; ID_LEN] {
    let src = match serial {
        Some(s) => s.as_bytes(),
        None => path.file_name().map(|n| n.as_bytes()).unwrap_or_default(),
    };
    if serial.is_some() && src.len() > ID_LEN {
        log::warn!(
            "disk image {}: serial {:?} is cut to {ID_LEN} bytes",
            path.display(),
            String::from_utf8_lossy(src)
        );
    }
    let mut id = [0u8; ID_LEN];
    let n = src.len().min(ID_LEN);
    id[..n].copy_from_slice(&src[..n]);
    id
}

/// `struct virtio_blk_config` (virtio 1.0 §5.2.4 and the discard /
/// write-zeroes fields of 1.1), little-endian.
fn config_space(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &capacity.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    // geometry @16: zeros (VIRTIO_BLK_F_GEOMETRY is not offered).
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    // topology @24: zeros (VIRTIO_BLK_F_TOPOLOGY is not offered).
    // writeback @32: read from the disk's live mode (see `read_config`).
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
    // write_zeroes_may_unmap @56: an UNMAP write-zeroes may punch a hole.
    put(56, &[1]);
    c
}

impl VirtioDevice for Block {
    fn feature_names(&self) -> &'static [(u32, &'static str)] {
        &[
            (1, "BLK_F_SIZE_MAX"),
            (2, "BLK_F_SEG_MAX"),
            (4, "BLK_F_GEOMETRY"),
            (5, "BLK_F_RO"),
            (6, "BLK_F_BLK_SIZE"),
            (9, "BLK_F_FLUSH"),
            (10, "BLK_F_TOPOLOGY"),
            (11, "BLK_F_CONFIG_WCE"),
            (12, "BLK_F_MQ"),
            (13, "BLK_F_DISCARD"),
            (14, "BLK_F_WRITE_ZEROES"),
        ]
    }
    fn device_type(&self) -> u16 {
        2
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn features(&self) -> u64 {
        let mut f = [
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
        ]
        .iter()
        .fold(0u64, |f, bit| f | 1 << bit);
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f | feature::INDIRECT_DESC | feature::EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let writeback = u8::from(self.disk.writeback.load(Ordering::SeqCst));
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i) {
                Some(WRITEBACK) => writeback,
                at => at.and_then(|at| self.config.get(at)).copied().unwrap_or(0),
            };
        }
    }

    /// Only `writeback` is writable (§5.2.6.1: 0 writethrough, 1
    /// writeback); other writes change nothing.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        match (offset, data) {
            (WRITEBACK, &[mode @ (0 | 1)]) => {
                log::debug!("virtio-blk: writeback = {mode}");
                self.disk.writeback.store(mode == 1, Ordering::SeqCst);
            }
            _ => log::debug!("virtio-blk: config write at {offset:#x} ignored: {data:02x?}"),
        }
    }

    fn config_fields(&self) -> &'static [ConfigField] {
        BLK_CONFIG_FIELDS
    }

    /// §5.2.5.2: with CONFIG_WCE but not FLUSH negotiated, `writeback`
    /// starts at 0. The device learns the features only now, at
    /// DRIVER_OK; a driver reading `writeback` between FEATURES_OK and
    /// DRIVER_OK still sees 1 (a hook at FEATURES_OK would close that gap).
    fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>> {
        let has = |bit: u32| features & (1 << bit) != 0;
        if has(VIRTIO_BLK_F_CONFIG_WCE) && !has(VIRTIO_BLK_F_FLUSH) {
            self.disk.writeback.store(false, Ordering::SeqCst);
        }
        vec![Box::new(BlockQueue::new(self.disk.clone(), features))]
    }

    /// The cache mode after a reset is writeback again (§5.2.5: either
    /// is allowed; the host page cache is one).
    fn reset(&mut self) {
        self.disk.writeback.store(true, Ordering::SeqCst);
    }
}
