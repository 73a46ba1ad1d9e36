//! `--vmd`: the machine OpenBSD's vmd gives its guests, as the test guest
//! sees it on the PCI bus (ids, classes and order from docs/vmmci.md), with
//! a legacy virtio-rng that still works.

mod common;

use common::{test_guest, Guest, TempDir};

use common::TIMEOUT;

#[test]
fn vmd_profile_has_vmds_ids_order_and_no_virtio_console() {
    let dir = TempDir::new("vmd");
    let disk = dir.sparse("disk.img", 1 << 20);
    let elf = test_guest::path();
    let mut g = Guest::start(&[
        "16",
        elf.to_str().unwrap(),
        "--vmd",
        "--rng",
        "--block",
        disk.to_str().unwrap(),
        "scenario=virtio-rng-legacy",
    ]);
    // Host bridge, then rng, block, and vmmci last; no virtio console.
    for want in [
        "GUEST-PCI 00:00.0 0b5d:0666 060000",
        "GUEST-PCI 00:01.0 1af4:1005 088000",
        "GUEST-PCI 00:02.0 1af4:1001 010000",
        "GUEST-PCI 00:03.0 0b5d:0777 078000",
    ] {
        let line = g.wait_for("GUEST-PCI 00:", TIMEOUT);
        assert_eq!(line, want, "{}", g.output());
    }
    let rng = g.wait_for("GUEST-RNG", TIMEOUT);
    assert!(rng.contains("a=") && rng.contains("b="), "{rng}");
    for bad in ["GUEST-FAIL", "GUEST-PANIC"] {
        assert!(!g.output().contains(bad), "{}", g.output());
    }
    let status = g.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", g.output());
    assert!(
        !g.output().contains("GUEST-PCI 00:04.0"),
        "nothing after vmmci"
    );
    assert!(!g.stderr().contains("bad driver"), "{}", g.stderr());
}
