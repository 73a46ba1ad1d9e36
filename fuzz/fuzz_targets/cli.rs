//! The command line: any argument vector (split from the input at NUL
//! bytes, non-UTF-8 included) is either a usage error with a message or a
//! `VmConfig`; parsing never panics.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::Parser;
use libfuzzer_sys::fuzz_target;

// `src/cli.rs` lives in the launcher's binary crate and depends on nothing
// but std and clap, so it is compiled here as it is, from its own file:
// the fuzzer parses exactly what the launcher parses, and the launcher
// needs no library target just for this. Items only `main.rs` uses are
// unused here.
#[allow(dead_code)]
#[path = "../../src/cli.rs"]
mod cli;

fuzz_target!(|data: &[u8]| {
    let args = std::iter::once(OsString::from("launcher")).chain(
        data.split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec())),
    );
    match cli::Cli::try_parse_from(args) {
        Ok(parsed) => {
            let config = cli::VmConfig::from(parsed);
            assert!(config.mem_mb >= cli::MIN_MEM_MB);
            assert!((1..=cli::MAX_CPUS).contains(&config.cpus));
        }
        Err(e) => {
            // What the launcher prints for it.
            let _ = e.render().to_string();
        }
    }
});
