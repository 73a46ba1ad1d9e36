//! Disk images are locked (`flock`): exclusively when attached read-write,
//! shared with `,ro`, and the lock is kept across a reboot's re-exec (the
//! launcher carries the open image into the next boot). A FIFO given as a
//! disk, kernel or initrd is refused at once instead of hanging `open`.

mod common;

use common::{test_guest, Guest, TempDir, TIMEOUT};

/// A 1 MiB image in `dir`.
fn image(dir: &TempDir) -> String {
    let p = dir.sparse("disk.img", 1 << 20);
    p.to_str().expect("UTF-8 path").to_string()
}

/// A guest that waits, with `disks` attached.
fn holder(disks: &[&str]) -> Guest {
    let elf = test_guest::path();
    let mut args: Vec<&str> = Vec::new();
    for d in disks {
        args.extend(["--block", d]);
    }
    args.extend(["16", elf.to_str().unwrap(), "scenario=wait-forever"]);
    let mut g = Guest::start(&args);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    g
}

/// Runs a launcher with `disks` that must be refused at once; returns
/// its stderr.
fn refused(disks: &[&str]) -> String {
    let elf = test_guest::path();
    let mut args: Vec<&str> = Vec::new();
    for d in disks {
        args.extend(["--block", d]);
    }
    args.extend(["16", elf.to_str().unwrap()]);
    let mut g = Guest::start(&args);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}", g.output());
    let err = g.stderr();
    assert!(!g.stdout().contains("GUEST-TEST-START"), "the guest ran");
    err
}

/// Reboots `g` (no vmmci driver: SIGHUP re-executes at once) into boot
/// number `boot` and checks that `img` is still locked then.
fn reboot_still_locked(g: &mut Guest, boot: u32, img: &str) {
    g.signal(libc::SIGHUP);
    g.wait_for(&format!("starting boot #{boot}"), TIMEOUT);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    let err = refused(&[img]);
    assert!(
        err.contains("is in use by another process"),
        "boot {boot}: {err}"
    );
}

fn stop(mut g: Guest) {
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(143), "{}", g.output());
}

#[test]
fn a_second_launcher_and_a_second_use_are_refused() {
    let dir = TempDir::new("disk-locks");
    let img = image(&dir);
    let g = holder(&[&img]);
    let err = refused(&[&img]);
    assert!(
        err.contains(&format!("disk image {img}: is in use by another process")),
        "{err}"
    );
    let ro = format!("{img},ro");
    let err = refused(&[&ro]);
    assert!(
        err.contains("is in use by another process for writing"),
        "{err}"
    );
    stop(g);
    // The same image twice in one launcher.
    let err = refused(&[&img, &img]);
    assert!(err.contains("is in use by another process"), "{err}");
}

#[test]
fn read_only_images_are_shared() {
    let dir = TempDir::new("disk-locks-ro");
    let img = image(&dir);
    let ro = format!("{img},ro");
    let g = holder(&[&ro, &ro]);
    let h = holder(&[&ro]);
    let err = refused(&[&img]);
    assert!(err.contains("is in use by another process"), "{err}");
    stop(g);
    stop(h);
}

#[test]
fn the_lock_is_kept_across_a_reboot() {
    let dir = TempDir::new("disk-locks-reboot");
    let img = image(&dir);
    let mut g = holder(&[&img]);
    for boot in 2..=3 {
        reboot_still_locked(&mut g, boot, &img);
        // Not locked again after a gap: the very descriptor was carried
        // over (named in LAUNCHER_FDS, still the image, still locked).
        let env = std::fs::read(format!("/proc/{}/environ", g.pid())).expect("environ");
        let env = String::from_utf8_lossy(&env);
        let fds = env
            .split('\0')
            .find_map(|kv| kv.strip_prefix("LAUNCHER_FDS="))
            .unwrap_or_else(|| panic!("boot {boot}: no LAUNCHER_FDS"));
        let fd = fds
            .split(',')
            .find_map(|kv| kv.strip_prefix("disk0="))
            .and_then(|v| v.split(':').next())
            .unwrap_or_else(|| panic!("boot {boot}: disk0 not carried: {fds}"));
        let target = std::fs::read_link(format!("/proc/{}/fd/{fd}", g.pid())).expect("fd");
        assert_eq!(target.to_str(), Some(img.as_str()));
        let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", g.pid())).unwrap();
        assert!(info.contains("FLOCK") && info.contains("WRITE"), "{info}");
    }
    stop(g);
    // Released at exit.
    stop(holder(&[&img]));
}

/// An image replaced between boots (a new file renamed over it): the next
/// boot opens and locks the new file, and the old descriptor, which it
/// could not take, goes no further than that boot (the re-exec passes on
/// only what the boot kept).
#[test]
fn a_replaced_image_is_not_carried_any_further() {
    let dir = TempDir::new("disk-locks-replaced");
    let img = image(&dir);
    let mut g = holder(&[&img]);
    let fresh = dir.sparse("new.img", 1 << 20);
    std::fs::rename(&fresh, &img).unwrap();
    let deleted = |g: &Guest| {
        std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|t| t.to_string_lossy().contains("(deleted)"))
            .count()
    };
    for boot in 2..=3 {
        reboot_still_locked(&mut g, boot, &img);
    }
    assert_eq!(deleted(&g), 0, "the replaced image is still open at boot 3");
    stop(g);
}

#[test]
fn a_fifo_is_refused_as_disk_kernel_or_initrd() {
    let dir = TempDir::new("disk-fifo");
    let fifo = dir.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    let elf = test_guest::path();
    let elf = elf.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--block", f, "16", elf],
            format!("disk image {f}: is a FIFO, not a regular file or block device"),
        ),
        (
            vec!["--initrd", f, "16", elf],
            format!("cannot read initrd {f}: it is a FIFO, not a regular file"),
        ),
        (
            vec!["16", f],
            format!("cannot read kernel {f}: it is a FIFO, not a regular file"),
        ),
    ] {
        let mut g = Guest::start(&args);
        let status = g.wait_exit(TIMEOUT);
        assert_eq!(status.code(), Some(1), "{args:?}: {}", g.output());
        assert!(g.stderr().contains(&says), "{args:?}: {}", g.stderr());
    }
}
