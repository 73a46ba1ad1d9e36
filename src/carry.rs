//! What one boot hands the next across a reboot's re-exec.
//!
//! Everything above stderr is close-on-exec when the launcher re-executes
//! itself, except the descriptors kept here, by name:
//!
//! | name | what | why it is not opened again |
//! |---|---|---|
//! | `kvm` | `/dev/kvm` | after `--username` the next boot may not open it |
//! | `disk<N>` | each `--block` image | its lock must not lapse between boots (another launcher could take the image in the gap) |
//! | `tap<N>` | each `--tunnet` tap | the host side keeps its name and address, and creating one needs CAP_NET_ADMIN |
//! | `control` | the `--control` socket, listening | clients never find it missing, and it could not be made again inside a chroot |
//! | `trace` | the `--trace-file` | the next boot appends to it |
//! | `exe` | the launcher's own binary | re-executed through the descriptor (`execveat`), as `/proc` is not inside a chroot |
//! | `kernel`, `initrd` | the files booted | only after a privilege drop (`--username`, `--chroot`); otherwise they are opened by name again, so a rebuilt kernel is what the next boot runs |
//!
//! The next boot finds them in `LAUNCHER_FDS` (`kvm=3,disk0=5:2049:1311`)
//! and takes each by name, after checking it is what the name says: a
//! file is compared (device and inode) with the path the command line
//! names, or, where that path cannot be seen (inside a chroot), with the
//! device and inode the previous boot recorded; `kvm`, taps and the socket
//! are checked by the code that takes them. A stale or forged variable
//! cannot hand a boot some other descriptor in place of a file.
//!
//! Facts that are not descriptors travel in `LAUNCHER_STATE`, a list of
//! words ([`set_flag`], [`flag`]).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// The environment variable naming the carried descriptors.
pub const VAR: &str = "LAUNCHER_FDS";
/// The environment variable with the carried facts.
pub const STATE_VAR: &str = "LAUNCHER_STATE";

struct Kept {
    name: String,
    fd: OwnedFd,
    /// (device, inode) for files, checked by the next boot.
    id: Option<(u64, u64)>,
}

static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());
static FLAGS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Keeps `fd` open into the next boot as `name`, to be taken with
/// [`take_fd`] (the taker checks what it is).
pub fn keep(name: &str, fd: OwnedFd) {
    push(name, fd, None);
}

/// Keeps the file `fd` open into the next boot as `name`, to be taken with
/// [`take`], which checks it is the same file.
pub fn keep_file(name: &str, fd: OwnedFd) {
    let id = identity(fd.as_raw_fd());
    push(name, fd, id);
}

/// A descriptor's (device, inode), if `fstat` works on it.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes `st`, which is valid and writable; it
    // fails for a closed descriptor.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn push(name: &str, fd: OwnedFd, id: Option<(u64, u64)>) {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.retain(|k| k.name != name);
    kept.push(Kept {
        name: name.to_string(),
        fd,
        id,
    });
}

/// Records a fact for the next boot.
pub fn set_flag(word: &'static str) {
    let mut flags = FLAGS.lock().unwrap_or_else(|e| e.into_inner());
    if !flags.contains(&word) {
        flags.push(word);
    }
}

/// Whether the previous boot recorded `word`.
pub fn flag(word: &str) -> bool {
    std::env::var(STATE_VAR)
        .map(|v| v.split(',').any(|w| w == word))
        .unwrap_or(false)
}

/// `path`'s file as the previous boot kept it under `name` ([`take`]), or
/// else as `open` opens it; kept for the next boot either way.
pub fn take_or_open(
    name: &str,
    path: &Path,
    open: impl FnOnce() -> std::io::Result<File>,
) -> std::io::Result<File> {
    let file = match take(name, path) {
        Some(f) => f,
        None => open()?,
    };
    keep_file(name, file.try_clone()?.into());
    Ok(file)
}

/// The descriptor the previous boot kept as `name`, if it is still open
/// and is `path`'s file; close-on-exec again from here on.
pub fn take(name: &str, path: &Path) -> Option<File> {
    let (fd, recorded) = parse(&std::env::var(VAR).ok()?, name)?;
    let want = match std::fs::metadata(path) {
        Ok(m) => (m.dev(), m.ino()),
        // Not visible from here (a chroot): the previous boot's record.
        Err(_) => recorded?,
    };
    if identity(fd) != Some(want) {
        return None;
    }
    // SAFETY: the previous boot left this descriptor open for us under
    // this name, and it is the file we want; nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    set_cloexec(fd);
    Some(file)
}

/// The descriptor the previous boot kept as `name`, if it is still open;
/// close-on-exec again. The caller checks it is what it should be.
pub fn take_fd(name: &str) -> Option<OwnedFd> {
    let (fd, _) = parse(&std::env::var(VAR).ok()?, name)?;
    // SAFETY: F_GETFD only reads a flag; it fails for a closed descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the previous boot left this descriptor open for us under
    // this name; nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(fd);
    Some(owned)
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// `name`'s descriptor and recorded (device, inode) in a `LAUNCHER_FDS`
/// value.
fn parse(value: &str, name: &str) -> Option<(RawFd, Option<(u64, u64)>)> {
    let (_, v) = value
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)?;
    let mut parts = v.split(':');
    let fd: RawFd = parts.next()?.parse().ok().filter(|&fd| fd > 2)?;
    let id = match (parts.next(), parts.next()) {
        (Some(d), Some(i)) => Some((d.parse().ok()?, i.parse().ok()?)),
        _ => None,
    };
    Some((fd, id))
}

/// For the re-exec: the kept descriptors (to leave open), the value of
/// `LAUNCHER_FDS` naming them and that of `LAUNCHER_STATE`.
pub fn for_exec() -> (Vec<RawFd>, String, String) {
    let kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let fds = kept.iter().map(|k| k.fd.as_raw_fd()).collect();
    let value = kept
        .iter()
        .map(|k| match k.id {
            Some((dev, ino)) => format!("{}={}:{dev}:{ino}", k.name, k.fd.as_raw_fd()),
            None => format!("{}={}", k.name, k.fd.as_raw_fd()),
        })
        .collect::<Vec<_>>()
        .join(",");
    let state = FLAGS.lock().unwrap_or_else(|e| e.into_inner()).join(",");
    (fds, value, state)
}

/// The descriptor kept as `name` (for the re-exec itself).
pub fn fd_of(name: &str) -> Option<RawFd> {
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|k| k.name == name)
        .map(|k| k.fd.as_raw_fd())
}

/// The names of what is kept, for `-v`.
pub fn names() -> Vec<String> {
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|k| k.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_and_junk_is_not() {
        assert_eq!(parse("disk0=5,trace=7", "trace"), Some((7, None)));
        assert_eq!(parse("disk0=5,trace=7", "disk0"), Some((5, None)));
        assert_eq!(
            parse("kvm=3,disk0=5:2049:1311", "disk0"),
            Some((5, Some((2049, 1311))))
        );
        assert_eq!(parse("disk0=5:x:1", "disk0"), None);
        assert_eq!(parse("disk0=5", "disk1"), None);
        assert_eq!(parse("disk0=x,trace=1", "disk0"), None);
        assert_eq!(parse("trace=1", "trace"), None, "stdio is never taken");
        assert_eq!(parse("", "trace"), None);
    }
}
