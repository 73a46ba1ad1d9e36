//! The strict checker against a correct driver: real Linux 6.1, in strict
//! mode (no `--lenient`), must never be reported. Every device the launcher
//! has (console, a root disk and a scratch disk, net on a tap inside a
//! network namespace the test makes, rng) once under the modern transport
//! and once under `--legacy`: the guest unbinds and rebinds every bound
//! virtio driver except the console's and the root disk's (Linux's remove
//! path resets the device and then tears its queues down, which is where
//! strict checkers raise false alarms), then uses each device again (rng
//! read, scratch disk write and read back, ping) and powers off. The run
//! must end with exit code 0 and no "bad driver" or warning line.
//!
//! One boot per transport, the two in parallel; each takes about a minute
//! on a nested-KVM host.

mod common;

use common::{Guest, NetNs, TempDir};
use std::process::Stdio;
use std::time::Duration;

/// Time for one boot and the whole script on the slowest host we know.
const BOOT: Duration = Duration::from_secs(600);
/// What the guest writes to the scratch disk and reads back.
const SCRATCH: &str = "launcher-scratch-after-rebind";

/// The shell steps, each ending in a marker the shell computes (so that
/// the echo of the typed line does not match): unbind and rebind, then use
/// each device.
fn script(host_ip: &str, guest_ip: &str) -> Vec<(String, String)> {
    vec![
        (
            "cd /sys/bus/virtio/devices; R=$(basename $(readlink /sys/block/vda/device)); \
             for d in *; do drv=$(readlink $d/driver); drv=${drv##*/}; \
             [ -z \"$drv\" ] || [ \"$d\" = \"$R\" ] || [ \"$drv\" = virtio_console ] && continue; \
             echo $d > /sys/bus/virtio/drivers/$drv/unbind && echo $d > /sys/bus/virtio/drivers/$drv/bind \
             && echo REBOUND-$d-$drv-$((1+1)); done; cd /; echo REBIND-$((40+2))"
                .to_string(),
            "REBIND-42".to_string(),
        ),
        (
            "echo RNG-$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n')-$((3+4))"
                .to_string(),
            "-7".to_string(),
        ),
        (
            format!(
                "echo {SCRATCH} > /tmp/s && dd if=/tmp/s of=/dev/vdb bs=512 count=1 conv=sync 2>/dev/null \
                 && sync && echo 3 > /proc/sys/vm/drop_caches && echo READ-$(head -c {} /dev/vdb)-$((5+5))",
                SCRATCH.len()
            ),
            format!("READ-{SCRATCH}-10"),
        ),
        (
            format!(
                "ip link set eth0 up; ip addr add {guest_ip}/24 dev eth0; \
                 ping -c 2 -W 5 {host_ip} >/dev/null && echo PING-$((6*7))"
            ),
            "PING-42".to_string(),
        ),
    ]
}

/// Boots real Linux with every device (`flags` pick the transport), runs
/// [`script`] in its shell, powers off; checks the run is clean.
fn rebind_everything(flags: &[&str], subnet: u8) {
    if let Some(why) = common::netns_unavailable() {
        panic!("this test needs network namespaces: {why}");
    }
    let images = common::require_images();
    let ns = NetNs::new();
    let dir = TempDir::new("linux-strict");
    let root = dir.path("root.ext4");
    std::fs::copy(images.join("rootfs.ext4"), &root).expect("copy the root image");
    let scratch = dir.path("scratch.img");
    std::fs::File::create(&scratch)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create the scratch disk");
    let (host_ip, guest_ip) = (format!("10.0.{subnet}.1"), format!("10.0.{subnet}.2"));
    let mut cmd = ns.launcher();
    cmd.args([
        "512",
        images.join("vmlinux").to_str().unwrap(),
        "root=/dev/vda",
        "console=hvc0",
        "check=rng",
        "finish=shell",
        "--block",
        root.to_str().unwrap(),
        "--block",
        scratch.to_str().unwrap(),
        "--rng",
        &format!("--tunnet={host_ip}"),
    ])
    .args(flags)
    .stdin(Stdio::piped());
    let mut g = Guest::spawn(cmd);
    g.wait_for("GUEST-CHECK-END rng rc=0", BOOT);
    g.wait_for("GUEST-DONE", BOOT);
    for (line, marker) in script(&host_ip, &guest_ip) {
        g.write_stdin(format!("{line}\n").as_bytes());
        let got = g.wait_for(&marker, BOOT);
        if marker.starts_with('-') {
            // The rng step: 32 hex digits before the marker.
            let hex = got
                .trim()
                .trim_start_matches("RNG-")
                .trim_end_matches(&marker);
            assert_eq!(hex.len(), 32, "rng read after rebinding: {got:?}");
        }
    }
    let rebound = g.output();
    for drv in ["virtio_blk", "virtio_net", "virtio_rng"] {
        assert!(
            rebound
                .lines()
                .any(|l| l.starts_with("REBOUND-") && l.contains(drv)),
            "{drv} was not unbound and rebound:\n{rebound}"
        );
    }
    g.write_stdin(b"poweroff -f\n");
    let status = g.wait_exit(BOOT);
    let stderr = g.stderr();
    assert_eq!(status.code(), Some(0), "{}", g.output());
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("bad driver") || l.contains("warning:"))
        .collect();
    assert!(
        reports.is_empty(),
        "a correct driver was reported: {reports:#?}"
    );
    let disk = std::fs::read(&scratch).expect("read the scratch disk back");
    assert_eq!(
        &disk[..SCRATCH.len()],
        SCRATCH.as_bytes(),
        "the guest's write did not reach the scratch disk"
    );
}

#[test]
fn linux_rebinds_every_modern_virtio_driver_without_a_report() {
    rebind_everything(&[], 31);
}

#[test]
fn linux_rebinds_every_legacy_virtio_driver_without_a_report() {
    rebind_everything(&["--legacy"], 32);
}
