//! Descriptors kept open across a reboot's re-exec, by name.
//!
//! Everything above stderr is close-on-exec when the launcher re-executes
//! itself, except what is kept here: the disk images, whose locks must not
//! lapse between two boots (another launcher could take the image in the
//! gap), and the trace file, which the next boot appends to. The next boot
//! finds them in `LAUNCHER_FDS` (`disk0=5,trace=7`) and takes each by name,
//! checking it is the file the command line names (same device and inode),
//! so a stale or forged variable cannot hand it some other descriptor.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// The environment variable the next boot reads.
pub const VAR: &str = "LAUNCHER_FDS";

static KEPT: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());

/// Keeps `fd` open into the next boot as `name`.
pub fn keep(name: &str, fd: OwnedFd) {
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.to_string(), fd));
}

/// The descriptor the previous boot kept as `name`, if it is still open
/// and is `path`'s file; close-on-exec again from here on.
pub fn take(name: &str, path: &Path) -> Option<File> {
    let fd = parse(&std::env::var(VAR).ok()?, name)?;
    let want = std::fs::metadata(path).ok()?;
    // SAFETY: fstat on any integer only reads; it fails for a closed fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid, writable stat.
    if unsafe { libc::fstat(fd, &mut st) } != 0
        || st.st_dev != want.dev()
        || st.st_ino != want.ino()
    {
        return None;
    }
    // SAFETY: the previous boot left this descriptor open for us under
    // this name; nothing else in this process owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor we now own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(file)
}

/// `name`'s descriptor in a `LAUNCHER_FDS` value.
fn parse(value: &str, name: &str) -> Option<RawFd> {
    value
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .filter(|&fd| fd > 2)
}

/// For the re-exec: the kept descriptors (to leave open) and the value of
/// `LAUNCHER_FDS` naming them.
pub fn for_exec() -> (Vec<RawFd>, String) {
    let kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let fds = kept.iter().map(|(_, f)| f.as_raw_fd()).collect();
    let value = kept
        .iter()
        .map(|(n, f)| format!("{n}={}", f.as_raw_fd()))
        .collect::<Vec<_>>()
        .join(",");
    (fds, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_and_junk_is_not() {
        assert_eq!(parse("disk0=5,trace=7", "trace"), Some(7));
        assert_eq!(parse("disk0=5,trace=7", "disk0"), Some(5));
        assert_eq!(parse("disk0=5", "disk1"), None);
        assert_eq!(parse("disk0=x,trace=1", "disk0"), None);
        assert_eq!(parse("trace=1", "trace"), None, "stdio is never taken");
        assert_eq!(parse("", "trace"), None);
    }
}
