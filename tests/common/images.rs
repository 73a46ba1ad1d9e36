//! Where prebuilt guest images are, for the tests: one lookup, compiled
//! into the integration tests (`tests/common`) and into the loader's unit
//! tests (`#[path]`), in the order `guest-images/run-guest` searches too:
//! `$LAUNCHER_GUEST_IMAGES`, `../shared/guest-images` beside the checkout,
//! then the cache `guest-images/build.sh` fills (`$XDG_CACHE_HOME` or
//! `~/.cache`, then `launcher-guest-images`).

use std::path::{Path, PathBuf};

/// The first of those directories holding a `vmlinux`; `checkout` is the
/// repository's top directory.
pub fn find(checkout: &Path) -> Option<PathBuf> {
    let cache = |base: Option<PathBuf>| base.map(|b| b.join("launcher-guest-images"));
    let candidates = [
        std::env::var_os("LAUNCHER_GUEST_IMAGES").map(PathBuf::from),
        Some(checkout.join("../shared/guest-images")),
        cache(std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from)),
        cache(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("vmlinux").is_file())
}
