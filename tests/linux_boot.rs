//! End-to-end: boot the real Linux kernel (the shared minimal one, or what
//! guest-images/build.sh built) and check what the guest itself reports
//! through its probe `/init` (lines starting with `GUEST-`).
//!
//! A boot takes minutes on a nested-KVM host, so each test batches every
//! check it can into one boot, and the timeouts are generous.

mod common;

use common::{Guest, TempDir};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The guest MAC the net test asks for (locally administered).
const MAC: &str = "52:54:00:12:34:56";

/// Time for one boot to reach the probe's end on the slowest host we know.
const BOOT: Duration = Duration::from_secs(600);

/// Every line of `output` that starts with `prefix`.
fn lines_with(output: &str, prefix: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn field<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split_once(marker)
        .map(|(_, rest)| rest.trim())
        .unwrap_or("")
}

/// MemTotal in kB from a `GUEST-MEM MemTotal: N kB` line.
fn mem_total_kb(line: &str) -> u64 {
    field(line, "MemTotal:")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {line:?}"))
}

/// ELF vmlinux + initramfs on the serial console, then `reboot -f` inside
/// the guest: the launcher re-executes itself and the kernel boots again.
/// Both boots go into one `--trace-file`: Linux sets virtio-blk and
/// virtio-rng up the same way each time (the deterministic trace's setup
/// events are equal).
#[test]
fn elf_vmlinux_boots_to_init_and_reboots_by_reexec() {
    let images = common::require_images();
    let kernel = images.join("vmlinux");
    let initrd = images.join("initramfs.cpio");
    let dir = common::TempDir::new("linux-reboot");
    let scratch = dir.sparse("scratch.img", 1 << 20);
    let trace = dir.path("trace.jsonl");
    let mut g = Guest::start(&[
        "512",
        kernel.to_str().unwrap(),
        "console=ttyS0",
        "--initrd",
        initrd.to_str().unwrap(),
        "launcher_test=elf",
        "finish=reboot",
        "--vmmci",
        "--rng",
        "--block",
        scratch.to_str().unwrap(),
        "--trace-file",
        trace.to_str().unwrap(),
    ]);
    g.wait_for("GUEST-INIT", BOOT);
    let cpus = g.wait_for("GUEST-CPUS", BOOT);
    assert_eq!(field(&cpus, "GUEST-CPUS"), "1", "{cpus}");
    let mem = mem_total_kb(&g.wait_for("GUEST-MEM", BOOT));
    // 512 MiB less what the kernel keeps for itself.
    assert!((400_000..=524_288).contains(&mem), "MemTotal {mem} kB");
    let cmdline = g.wait_for("GUEST-CMDLINE", BOOT);
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    assert!(cmdline.contains("launcher_test=elf"), "{cmdline}");
    assert!(cmdline.contains("finish=reboot"), "{cmdline}");
    g.wait_for("GUEST-DONE", BOOT);
    // The guest's reboot ends in the i8042 reset (or a triple fault).
    g.wait_for("starting boot #2", BOOT);
    g.wait_for("GUEST-INIT", BOOT);
    let cmdline2 = g.wait_for("GUEST-CMDLINE", BOOT);
    assert_eq!(cmdline2, cmdline, "second boot got the same command line");
    // Linux has no vmmci driver, so SIGTERM stops the guest at once with
    // the documented code instead of waiting for vmd's timeouts.
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "{}", g.output());

    let events = common::trace_events(&trace);
    for device in ["virtio-blk", "virtio-rng"] {
        // Up to DRIVER_OK: boot 1 then ends in the guest's reboot (which
        // resets the device), boot 2 in SIGTERM (which does not).
        let setup = |boot: u64| -> Vec<String> {
            let mut v: Vec<String> = events
                .iter()
                .filter(|e| {
                    e.boot == boot
                        && e.device.starts_with(device)
                        && common::SETUP_KINDS.contains(&e.kind.as_str())
                })
                .map(|e| format!("{} {}", e.kind, e.fields))
                .collect();
            if let Some(ok) = v.iter().position(|e| e.starts_with("driver-ok")) {
                v.truncate(ok + 1);
            }
            v
        };
        let (first, second) = (setup(1), setup(2));
        assert!(
            first.iter().any(|e| e.starts_with("driver-ok")),
            "{device}: Linux's driver came up in boot 1: {first:#?}"
        );
        assert_eq!(
            first, second,
            "{device}: the two boots set it up differently"
        );
    }
}

/// The small LZ4 bzImage through the 64-bit boot protocol, with two vCPUs
/// that Linux must bring up from the MP table (on a nested `kvm_pvm` host the
/// launcher adds `nopv`: KVM hypercalls from emulated ring 0 hang there, see
/// `src/host.rs`). Its decompressor runs first, so it is the slowest boot.
#[test]
fn bzimage_boots_two_cpus_to_init() {
    let images = common::require_images();
    let kernel = images.join("bzImage");
    let initrd = images.join("initramfs.cpio");
    let mut g = Guest::start(&[
        "--cpus",
        "2",
        "384",
        kernel.to_str().unwrap(),
        "console=ttyS0",
        "launcher_test=bzimage",
        "--initrd",
        initrd.to_str().unwrap(),
        "finish=wait",
    ]);
    g.wait_for("GUEST-INIT", BOOT * 2);
    let cpus = g.wait_for("GUEST-CPUS", BOOT);
    assert_eq!(field(&cpus, "GUEST-CPUS"), "2", "{cpus}");
    let mem = mem_total_kb(&g.wait_for("GUEST-MEM", BOOT));
    assert!((280_000..=393_216).contains(&mem), "MemTotal {mem} kB");
    let cmdline = g.wait_for("GUEST-CMDLINE", BOOT);
    assert!(cmdline.contains("launcher_test=bzimage"), "{cmdline}");
    g.wait_for("GUEST-DONE", BOOT);
}

/// virtio over the modern PCI transport on real Linux: the kernel's console
/// on hvc0 (the virtio console, always present) and `--rng`; the probe
/// `/init` lists the virtio devices, reads `/dev/hwrng` twice, and shows
/// the devices' MSI-X interrupts. The strict checker must stay silent.
#[test]
fn virtio_console_and_rng_with_msix() {
    let images = common::require_images();
    let kernel = images.join("vmlinux");
    let initrd = images.join("initramfs.cpio");
    let mut g = Guest::start(&[
        "512",
        kernel.to_str().unwrap(),
        "console=hvc0",
        "check=rng",
        "--rng",
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    g.wait_for("GUEST-INIT", BOOT);
    let console = g.wait_for("GUEST-PCI 0000:00:01.0", BOOT);
    assert!(
        console.contains("0x1af4:0x1043") && console.contains("driver=virtio-pci"),
        "{console}"
    );
    let rng = g.wait_for("GUEST-PCI 0000:00:02.0", BOOT);
    assert!(
        rng.contains("0x1af4:0x1044") && rng.contains("driver=virtio-pci"),
        "{rng}"
    );
    let v0 = g.wait_for("GUEST-VIRTIO virtio0", BOOT);
    assert!(
        v0.contains("device=0x0003") && v0.contains("driver=virtio_console"),
        "{v0}"
    );
    let v1 = g.wait_for("GUEST-VIRTIO virtio1", BOOT);
    assert!(
        v1.contains("device=0x0004") && v1.contains("driver=virtio_rng"),
        "{v1}"
    );
    g.wait_for("GUEST-IRQ", BOOT);
    let hwrng = g.wait_for("GUEST-HWRNG", BOOT);
    // Every virtio interrupt line the guest listed (they come before
    // GUEST-HWRNG), not only the first.
    let irqs = lines_with(&g.output(), "GUEST-IRQ");
    assert!(
        irqs.len() >= 2 && irqs.iter().all(|l| l.contains("PCI-MSI")),
        "virtio interrupts should all be MSI-X: {irqs:#?}"
    );
    assert!(hwrng.contains("virtio_rng"), "{hwrng}");
    let sample = g.wait_for("GUEST-RNG a=", BOOT);
    let a = field(&sample, "a=")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let b = field(&sample, "b=").to_string();
    assert_eq!((a.len(), b.len()), (64, 64), "{sample}");
    assert_ne!(a, b, "two reads gave the same bytes");
    g.wait_for("GUEST-CHECK-END rng rc=0", BOOT);
    g.wait_for("GUEST-DONE", BOOT);
    // The probe ends with `poweroff -f`: ACPI S5 through the PM1a control
    // register, which ends the launcher with exit code 0.
    let status = g.wait_exit(BOOT);
    assert_eq!(status.code(), Some(0), "{}", g.output());
    assert!(!g.stderr().contains("bad driver"), "{}", g.stderr());
}

/// The same devices over the legacy (virtio 0.9.5) transport, as Linux's
/// stock legacy driver sees them: console on hvc0, root on vda, rng; INTx
/// interrupts routed through the ACPI `_PRT`; `poweroff` exits 0.
#[test]
fn legacy_transport_console_root_and_rng() {
    let images = common::require_images();
    let dir = TempDir::new("legacy");
    let root = dir.path("root.ext4");
    std::fs::copy(images.join("rootfs.ext4"), &root).expect("copy the root image");
    let kernel = images.join("vmlinux");
    let mut g = Guest::start(&[
        "512",
        kernel.to_str().unwrap(),
        "--legacy",
        "console=hvc0",
        "root=/dev/vda",
        "--block",
        root.to_str().unwrap(),
        "--rng",
        "check=rng",
    ]);
    g.wait_for("GUEST-INIT", BOOT);
    for (slot, id) in [("01", "0x1003"), ("02", "0x1001"), ("03", "0x1005")] {
        let line = g.wait_for(&format!("GUEST-PCI 0000:00:{slot}.0"), BOOT);
        assert!(
            line.contains(&format!("0x1af4:{id}")) && line.contains("rev=0x00"),
            "{line}"
        );
        assert!(line.contains("driver=virtio-pci"), "{line}");
    }
    for (n, dev, drv) in [
        (0, "0x0003", "virtio_console"),
        (1, "0x0002", "virtio_blk"),
        (2, "0x0004", "virtio_rng"),
    ] {
        let line = g.wait_for(&format!("GUEST-VIRTIO virtio{n}"), BOOT);
        assert!(
            line.contains(&format!("device={dev}")) && line.contains(&format!("driver={drv}")),
            "{line}"
        );
        // Legacy drivers never set FEATURES_OK.
        assert!(line.contains("status=0x00000007"), "{line}");
    }
    g.wait_for("GUEST-IRQ", BOOT);
    let disk = g.wait_for("GUEST-BLOCK vda", BOOT);
    let irqs = lines_with(&g.output(), "GUEST-IRQ");
    assert!(
        !irqs.is_empty() && irqs.iter().all(|l| l.contains("IO-APIC")),
        "legacy virtio uses INTx: {irqs:#?}"
    );
    assert!(disk.contains("sectors=32768"), "{disk}");
    g.wait_for("GUEST-CHECK-END rng rc=0", BOOT);
    g.wait_for("GUEST-DONE", BOOT);
    let status = g.wait_exit(BOOT);
    assert_eq!(status.code(), Some(0), "{}", g.output());
    assert!(!g.stderr().contains("bad driver"), "{}", g.stderr());
}

/// An ext4 root on virtio-blk and a virtio-net device on a tap, in one boot.
/// The launcher runs inside a network namespace this test creates and
/// deletes, so its tap and the host-side address never touch the machine's
/// own network; the guest pings only the tap's host side in that namespace.
#[test]
fn ext4_root_on_virtio_blk_keeps_guest_writes_and_the_guest_pings_the_tap() {
    let images = common::require_images();
    if let Some(why) = common::netns_unavailable() {
        return common::skip(why);
    }
    let ns = common::NetNs::new();
    let dir = TempDir::new("e2e");
    let root = dir.path("root.ext4");
    std::fs::copy(images.join("rootfs.ext4"), &root).expect("copy the root image");
    let root_arg = root.to_str().unwrap().to_string();
    let kernel = images.join("vmlinux");

    let mut cmd = ns.launcher();
    cmd.args([
        "512",
        kernel.to_str().unwrap(),
        "root=/dev/vda",
        "console=hvc0",
    ])
    .args([
        "--block",
        &root_arg,
        &format!("--tunnet=192.168.19.1:{MAC}"),
    ])
    .args([
        "check=net",
        "host_ip=192.168.19.1",
        "guest_ip=192.168.19.2",
        "finish=shell",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut g = Guest::spawn(cmd);

    let disk = g.wait_for("GUEST-BLOCK vda", BOOT);
    assert!(disk.contains("sectors=32768"), "{disk}");
    let net = g.wait_for("GUEST-NET eth0", BOOT);
    // The MAC given with --tunnet IP:MAC is the one the guest's driver
    // read from the device.
    assert!(net.contains(&format!("mac={MAC}")), "{net}");
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
    assert_eq!(
        text.trim(),
        "launcher-was-here",
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
