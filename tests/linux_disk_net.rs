//! End-to-end on real Linux: an ext4 root on virtio-blk and a virtio-net
//! device on a tap, in one boot (boots are slow on nested hosts).
//!
//! The launcher runs inside a network namespace this test creates and
//! deletes, so its tap and the host-side address never touch the machine's
//! own network; the guest pings only the tap's host side in that namespace.

mod common;

use common::{Guest, TempDir};
use std::process::{Command, Stdio};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(900);

/// A network namespace that is deleted when dropped, even if the test fails.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("launcher-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn ext4_root_on_virtio_blk_keeps_guest_writes_and_the_guest_pings_the_tap() {
    let images = common::require_images();
    let Some(ns) = Netns::new("e2e") else {
        eprintln!("skipped: cannot create a network namespace (needs root and iproute2)");
        return;
    };
    let dir = TempDir::new("e2e");
    let root = dir.path("root.ext4");
    std::fs::copy(images.join("rootfs.ext4"), &root).expect("copy the root image");
    let root_arg = root.to_str().unwrap().to_string();
    let kernel = images.join("vmlinux");

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_launcher")])
        .args(["512", kernel.to_str().unwrap(), "root=/dev/vda", "console=hvc0"])
        .args(["--block", &root_arg, "--tunnet=192.168.19.1"])
        .args(["check=net", "host_ip=192.168.19.1", "guest_ip=192.168.19.2", "finish=shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guest::spawn(cmd);

    let disk = g.wait_for("GUEST-BLOCK vda", BOOT);
    assert!(disk.contains("sectors=32768"), "{disk}");
    let net = g.wait_for("GUEST-NET eth0", BOOT);
    assert!(net.contains("mac="), "{net}");
    g.wait_for("GUEST-CHECK-BEGIN net", BOOT);
    g.wait_for("GUEST-CHECK-END net rc=0", BOOT);
    g.wait_for("GUEST-DONE", BOOT);
    // The probe's shell now reads the virtio console: write a file on the
    // root disk and make sure it reached the device.
    g.write_stdin(
        b"mount -o remount,rw / && echo launcher-was-here > /guest-wrote && sync && echo WROTE-$((6*7))\n",
    );
    g.wait_for("WROTE-42", BOOT);
    assert!(!g.stderr().contains("bad driver"), "{}", g.stderr());
    drop(g);

    let out = Command::new("debugfs")
        .args(["-R", "cat /guest-wrote", &root_arg])
        .output()
        .expect("run debugfs (e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "launcher-was-here", "debugfs: {}", String::from_utf8_lossy(&out.stderr));
}
