//! Bad input gets one clear sentence and a non-zero exit, never a panic.
//! These run the real binary but never start a guest, so they are fast.

mod common;

use common::{launcher, TempDir};
use std::time::Duration;

/// How long a launcher that must refuse its input may take: it never
/// starts a guest, so anything longer means it did.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the launcher to completion (killed after [`TIMEOUT`], failing the
/// test); returns (exit code, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let mut child = launcher()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the launcher");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while child.try_wait().expect("wait for the launcher").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the launcher still runs after {TIMEOUT:?}: {args:?} started a guest");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child
        .wait_with_output()
        .expect("collect the launcher's output");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "the launcher panicked: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_one_clear_error(code: i32, stderr: &str, expect_code: i32, needle: &str) {
    assert_eq!(code, expect_code, "exit code; stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn zero_memory_is_a_usage_error() {
    let (code, err) = run(&["0", "vmlinux"]);
    assert_one_clear_error(code, &err, 2, "too little memory");
}

#[test]
fn missing_kernel_names_the_file() {
    let (code, err) = run(&["64", "/nonexistent/vmlinux-xyz"]);
    assert_one_clear_error(code, &err, 1, "/nonexistent/vmlinux-xyz");
}

#[test]
fn a_kernel_that_is_neither_elf_nor_bzimage_is_refused() {
    let dir = TempDir::new("badkernel");
    let k = dir.path("notakernel");
    std::fs::write(&k, vec![0x5au8; 8192]).unwrap();
    let (code, err) = run(&["64", k.to_str().unwrap()]);
    assert_one_clear_error(code, &err, 1, "notakernel");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
}

#[test]
fn missing_initrd_names_the_file() {
    let Some(images) = common::guest_images() else {
        common::skip("no guest images (see tests/common)");
        return;
    };
    let k = images.join("vmlinux");
    let (code, err) = run(&[
        "64",
        k.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd.img",
    ]);
    assert_one_clear_error(code, &err, 1, "/nonexistent/initrd.img");
}

#[test]
fn an_initrd_that_does_not_fit_is_refused() {
    let images = common::require_images();
    let dir = TempDir::new("biginitrd");
    let big = dir.path("big.cpio");
    // Sparse: 64 MiB of initrd for a 32 MiB guest.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let k = images.join("vmlinux");
    let (code, err) = run(&["32", k.to_str().unwrap(), "--initrd", big.to_str().unwrap()]);
    assert_one_clear_error(code, &err, 1, "big.cpio");
}

#[test]
fn more_memory_than_the_host_can_map_is_refused() {
    let (code, err) = run(&["99999999999", "vmlinux"]);
    assert_one_clear_error(code, &err, 2, "more memory");
    // Within the parser's bound but beyond this host: 32 TiB.
    let images = common::require_images();
    let k = images.join("vmlinux");
    // (If a host ever maps it, the guest would start: `run` then fails
    // after its timeout rather than hanging.)
    let (code, err) = run(&["33554432", k.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("33554432 MB"), "{err}");
}
