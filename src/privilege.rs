//! Least privilege, lguest's way: `--username` and `--chroot`.
//!
//! Everything that needs root happens first (`/dev/kvm`, taps, disks,
//! the kernel and initrd, the control socket, the trace file: see
//! `vm::HostFiles` and `main`); then, before the launcher starts a single
//! thread or runs the guest, [`PrivilegeDrop::apply`] changes root to DIR, sets the
//! groups, gid and uid of the user and `no_new_privs`. From then on the
//! process holds no capabilities and sees only DIR.
//!
//! A reboot re-executes the launcher, which could then open none of those
//! files: they come with the re-exec as open descriptors (`carry`), the
//! binary itself is run through a descriptor opened before the drop, and
//! the next boot, finding `dropped` in `LAUNCHER_STATE`, does not drop
//! again. That binary must need nothing from DIR: a statically linked
//! launcher, or DIR holding its dynamic loader and libraries
//! ([`check_binary`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::carry;

/// A user to become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups (from /etc/group), the primary one included.
    pub groups: Vec<libc::gid_t>,
}

/// What `--username` and `--chroot` ask for, resolved and checked.
#[derive(Debug, Default)]
pub struct PrivilegeDrop {
    pub user: Option<User>,
    pub chroot: Option<PathBuf>,
    /// A previous boot of this run did it already (we came by re-exec).
    done: bool,
}

impl PrivilegeDrop {
    /// Resolves the user and checks DIR, before anything else is done, so
    /// a typo costs one sentence and exit code 1.
    pub fn plan(username: Option<&str>, chroot: Option<&Path>) -> Result<PrivilegeDrop, String> {
        if username.is_none() && chroot.is_none() {
            return Ok(PrivilegeDrop::default());
        }
        // A previous boot dropped them: this one runs inside DIR as the
        // user already. (A forged flag under uid 0 with --username gets
        // the drop done again, which is harmless.)
        // SAFETY: getuid takes no arguments and cannot fail.
        if carry::flag("dropped") && (unsafe { libc::getuid() } != 0 || username.is_none()) {
            carry::set_flag("dropped");
            return Ok(PrivilegeDrop {
                done: true,
                ..PrivilegeDrop::default()
            });
        }
        let user = match username {
            None => None,
            Some(name) => Some(
                lookup_user(
                    name,
                    &read_or_empty("/etc/passwd"),
                    &read_or_empty("/etc/group"),
                )
                .ok_or_else(|| {
                    format!("--username {name}: no such user (not in /etc/passwd, not a number)")
                })?,
            ),
        };
        let chroot = match chroot {
            None => None,
            Some(dir) => {
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(format!("--chroot {}: not a directory", dir.display())),
                    Err(e) => return Err(format!("--chroot {}: {e}", dir.display())),
                }
                check_binary(dir)?;
                Some(dir.to_path_buf())
            }
        };
        Ok(PrivilegeDrop {
            user,
            chroot,
            done: false,
        })
    }

    /// Whether anything is dropped in this run (now or by a previous boot).
    pub fn wanted(&self) -> bool {
        self.done || self.user.is_some() || self.chroot.is_some()
    }

    /// Changes root, groups, gid and uid, and sets `no_new_privs`. Must be
    /// called with no other thread running (setuid is per thread).
    pub fn apply(&self) -> Result<(), String> {
        if self.done || !self.wanted() {
            return Ok(());
        }
        let os = |what: String| format!("{what}: {}", std::io::Error::last_os_error());
        if let Some(dir) = &self.chroot {
            let c = CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| format!("--chroot {}: contains a NUL byte", dir.display()))?;
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            if unsafe { libc::chroot(c.as_ptr()) } != 0 {
                return Err(os(format!("--chroot {}", dir.display())));
            }
            // SAFETY: as above, with a static path.
            if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
                return Err(os(format!("--chroot {}: chdir /", dir.display())));
            }
        }
        if let Some(u) = &self.user {
            // SAFETY: setgroups reads `groups.len()` gids from a live Vec;
            // setgid and setuid take integers.
            unsafe {
                if libc::setgroups(u.groups.len(), u.groups.as_ptr()) != 0 {
                    return Err(os(format!("--username {}: setgroups", u.name)));
                }
                if libc::setgid(u.gid) != 0 {
                    return Err(os(format!("--username {}: setgid {}", u.name, u.gid)));
                }
                if libc::setuid(u.uid) != 0 {
                    return Err(os(format!("--username {}: setuid {}", u.name, u.uid)));
                }
            }
        }
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(os("no_new_privs".into()));
        }
        if let Some(u) = &self.user {
            if u.uid != 0 && effective_capabilities() != Some(0) {
                return Err(format!(
                    "--username {}: capabilities are still held after setuid",
                    u.name
                ));
            }
        }
        carry::set_flag("dropped");
        log::debug!(
            "privileges dropped:{}{}",
            self.user
                .as_ref()
                .map(|u| format!(" user {} (uid {}, gid {})", u.name, u.uid, u.gid))
                .unwrap_or_default(),
            self.chroot
                .as_ref()
                .map(|d| format!(" root {}", d.display()))
                .unwrap_or_default()
        );
        Ok(())
    }
}

fn read_or_empty(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `name` (or a number) in passwd(5) text, with its groups from group(5)
/// text. A number that is not in passwd is taken as uid and gid.
pub fn lookup_user(name: &str, passwd: &str, group: &str) -> Option<User> {
    let by_number: Option<libc::uid_t> = name.parse().ok();
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let uid: libc::uid_t = f[2].parse().ok()?;
        let gid: libc::gid_t = f[3].parse().ok()?;
        (f[0] == name || by_number == Some(uid)).then(|| (f[0].to_string(), uid, gid))
    });
    let (login, uid, gid) = match (entry, by_number) {
        (Some(e), _) => e,
        (None, Some(n)) => (name.to_string(), n, n),
        (None, None) => return None,
    };
    let mut groups = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(g) = f[2].parse::<libc::gid_t>() else {
            continue;
        };
        if f[3].split(',').any(|m| m == login) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    Some(User {
        name: login,
        uid,
        gid,
        groups,
    })
}

/// The effective capability set's low 64 bits, from capget(2).
fn effective_capabilities() -> Option<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget writes two `Data` for version 3, which `d` holds.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    (r == 0).then(|| u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
}

/// The reboot re-executes this binary inside DIR: the kernel then looks
/// for its dynamic loader (`PT_INTERP`) there. Refuses a dynamically
/// linked launcher whose loader DIR lacks.
fn check_binary(dir: &Path) -> Result<(), String> {
    use std::io::Read;
    // The program headers and the loader's path sit at the file's start.
    let mut exe = Vec::new();
    let read =
        std::fs::File::open("/proc/self/exe").and_then(|f| f.take(64 << 10).read_to_end(&mut exe));
    if read.is_err() {
        // Cannot tell: the reboot will say if it fails.
        return Ok(());
    }
    match interpreter(&exe) {
        Some(interp) if !dir.join(interp.trim_start_matches('/')).exists() => Err(format!(
            "--chroot {}: this launcher is dynamically linked, and a reboot re-executes it inside {0}, where its loader {interp} (and libraries) are missing; use a statically linked launcher (README, \"Least privilege\") or put them there",
            dir.display()
        )),
        _ => Ok(()),
    }
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF image, if it has one.
pub fn interpreter(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(elf.get(ph..ph + 4)?.try_into().ok()?);
        if p_type != 3 {
            return None;
        }
        let off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let len = usize::try_from(u64_at(ph + 32)?).ok()?;
        let bytes = elf.get(off..off.checked_add(len)?)?;
        let path = bytes.split(|&b| b == 0).next()?;
        Some(String::from_utf8_lossy(path).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        ann:x:1000:1000::/home/ann:/bin/sh\n\
        broken line\n";
    const GROUP: &str =
        "root:x:0:\nkvm:x:104:ann,bob\nnogroup:x:65534:\nann:x:1000:\nwheel:x:10:bob\n";

    #[test]
    fn users_are_found_by_name_and_number_with_their_groups() {
        let ann = lookup_user("ann", PASSWD, GROUP).unwrap();
        assert_eq!(
            (ann.uid, ann.gid, ann.groups.clone()),
            (1000, 1000, vec![1000, 104])
        );
        let nobody = lookup_user("nobody", PASSWD, GROUP).unwrap();
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
        assert_eq!(nobody.groups, vec![65534]);
        let by_number = lookup_user("1000", PASSWD, GROUP).unwrap();
        assert_eq!(by_number.name, "ann");
        let unknown_number = lookup_user("4242", PASSWD, GROUP).unwrap();
        assert_eq!((unknown_number.uid, unknown_number.gid), (4242, 4242));
        assert_eq!(lookup_user("mallory", PASSWD, GROUP), None);
        assert_eq!(lookup_user("broken line", PASSWD, GROUP), None);
    }

    #[test]
    fn the_dynamic_loader_is_read_from_the_program_headers() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        // The unit-test binary is built as cargo builds: dynamically.
        let interp = interpreter(&exe);
        assert!(
            interp.as_deref().is_some_and(|p| p.starts_with('/')),
            "{interp:?}"
        );
        assert_eq!(interpreter(b"\x7fELF\x02\x01junk"), None);
        assert_eq!(interpreter(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn a_missing_or_plain_file_chroot_is_refused() {
        let e = PrivilegeDrop::plan(None, Some(Path::new("/nonexistent/dir"))).unwrap_err();
        assert!(e.contains("/nonexistent/dir"), "{e}");
        let e = PrivilegeDrop::plan(None, Some(Path::new("/proc/self/exe"))).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        let e = PrivilegeDrop::plan(Some("no-such-user-here"), None).unwrap_err();
        assert!(e.contains("no such user"), "{e}");
    }
}
