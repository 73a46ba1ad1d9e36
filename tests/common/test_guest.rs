//! Builds the freestanding test guest (guest-images/test-guest) once per
//! test process and hands out the path of its ELF image.
//!
//! The guest is its own Cargo workspace (the launcher's excludes it) with
//! its own flags (.cargo/config.toml: host target used freestanding,
//! static relocation model; build.rs: no C runtime, static, non-PIE,
//! link.ld). It is built with `cargo build --release` in its directory,
//! into `<workspace>/target/test-guest`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target the guest is built for (named in its .cargo/config.toml).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The crate directory of the test guest.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/test-guest")
}

/// Where its build goes.
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-guest")
}

/// The test guest's ELF ("vmlinux"), built on first use. Panics with
/// cargo's output if the build fails.
pub fn path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = target_dir();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(source_dir())
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // Flags meant for the launcher (coverage, sanitizers, a target chosen
    // for the outer build) must not leak into the freestanding guest: they
    // would replace its own rustflags.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        "CARGO_PROFILE_RELEASE_PANIC",
        "CARGO_PROFILE_RELEASE_LTO",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the test guest: {e}"));
    if !out.status.success() {
        panic!(
            "building the test guest ({}) failed ({}):\n{}{}",
            source_dir().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let elf = target_dir.join(GUEST_TARGET).join("release/test-guest");
    assert!(
        elf.is_file(),
        "cargo built the test guest but {} is missing",
        elf.display()
    );
    elf
}
