//! Hooks for the launcher's integration tests, compiled in only with the
//! `test-hooks` feature; without it every hook is an empty function.
//!
//! `cargo test` turns the feature on through the launcher's
//! dev-dependencies, so the binary the integration tests run carries it;
//! `cargo build` and release builds do not. Each hook reads its
//! environment variable once and does nothing when it is unset.
//!
//! - `LAUNCHER_TEST_BLK_STALL=SECTOR:FIFO`: the host I/O (`pread` or
//!   `pwrite`) of every virtio-blk read or write request that starts at
//!   SECTOR blocks, as if the disk hung, until a byte (or end of file) can
//!   be read from the named pipe FIFO. It says so on stderr
//!   (`test hook: blk I/O at sector N stalls`, then `... released`), so a
//!   test knows when a worker is stuck.
//! - `LAUNCHER_TEST_SECCOMP_VIOLATION=KIND` (read by the launcher's
//!   `src/seccomp.rs`): the first thread of that filter kind makes a
//!   system call no filter allows, right after installing its filter.

/// Whether this build has the hooks: the launcher's own test hooks
/// (`src/seccomp.rs`) look at it.
pub const ENABLED: bool = cfg!(feature = "test-hooks");

/// Called by the virtio-blk handler just before the host I/O of a read
/// or write request that starts at `sector`, outside the queue's gate.
#[inline]
pub fn blk_io(sector: u64) {
    #[cfg(feature = "test-hooks")]
    enabled::blk_io(sector);
    let _ = sector;
}

#[cfg(feature = "test-hooks")]
mod enabled {
    use std::io::Read;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    pub const BLK_STALL: &str = "LAUNCHER_TEST_BLK_STALL";

    /// `SECTOR:FIFO`, parsed.
    fn blk_stall() -> Option<&'static (u64, PathBuf)> {
        static STALL: OnceLock<Option<(u64, PathBuf)>> = OnceLock::new();
        STALL
            .get_or_init(|| {
                let v = std::env::var(BLK_STALL).ok()?;
                let (sector, fifo) = v.split_once(':')?;
                Some((sector.parse().ok()?, PathBuf::from(fifo)))
            })
            .as_ref()
    }

    pub fn blk_io(sector: u64) {
        let Some((at, fifo)) = blk_stall() else {
            return;
        };
        if sector != *at {
            return;
        }
        eprintln!("launcher: test hook: blk I/O at sector {sector} stalls");
        // Opening a pipe for reading waits for a writer; then one byte,
        // or the end of file when the writer closes without writing.
        if let Ok(mut f) = std::fs::File::open(fifo) {
            let _ = f.read(&mut [0u8]);
        }
        eprintln!("launcher: test hook: blk I/O at sector {sector} released");
    }
}
