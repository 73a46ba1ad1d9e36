//! The command line, lguest style: `launcher [OPTIONS] <MEM_MB> <KERNEL>
//! [KERNEL_ARGS]...`, options before or after the positional arguments.
//!
//! Parsing (clap) turns arguments into a [`VmConfig`]; everything that can
//! be checked without touching KVM or the files is checked here, so a typo
//! costs one clear sentence and exit code 2 instead of a half-built VM.

use std::path::PathBuf;

use clap::Parser;

/// Smallest guest we agree to build: below this a Linux kernel cannot even
/// unpack itself, and the memory layout has no room for its tables.
pub const MIN_MEM_MB: u64 = 16;
/// Most vCPUs: the MP table gives each an APIC id below the IOAPIC's.
pub const MAX_CPUS: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "launcher",
    version,
    about = "Run a Linux guest on KVM from one small, readable process",
    after_help = "Examples:\n  launcher 512 vmlinux console=ttyS0 --initrd initramfs.cpio.gz\n  launcher --cpus 2 1024 bzImage console=ttyS0 root=/dev/vda\n\nExit codes: 0 guest powered off; 1 launcher or host error; 2 usage error;\n3 bad driver; 4 guest crashed; 128+N stopped by signal N (130: console escape).\nA guest reboot re-executes the launcher with the same arguments."
)]
pub struct Cli {
    /// Guest memory in megabytes (MiB).
    #[arg(value_name = "MEM_MB", value_parser = parse_mem)]
    pub mem_mb: u64,

    /// Kernel to boot: an ELF vmlinux or a bzImage with a 64-bit entry.
    #[arg(value_name = "KERNEL")]
    pub kernel: PathBuf,

    /// Kernel command line words, joined with spaces.
    #[arg(value_name = "KERNEL_ARGS", allow_hyphen_values = false)]
    pub kernel_args: Vec<String>,

    /// Initial ramdisk (cpio, optionally compressed) loaded for the kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,

    /// Number of virtual CPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_cpus)]
    pub cpus: u8,

    /// A virtio-blk disk backed by FILE; repeatable (vda, vdb, ... in order).
    /// `,ro` makes it read-only, `,serial=ID` sets what GET_ID returns.
    #[arg(long = "block", value_name = "FILE[,ro][,serial=ID]", value_parser = parse_block)]
    pub blocks: Vec<BlockArg>,

    /// Add a virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    pub rng: bool,

    /// On a virtio rule broken by a guest driver, log it and set
    /// DEVICE_NEEDS_RESET instead of stopping the guest.
    #[arg(long)]
    pub lenient: bool,

    /// Trace what the launcher and the guest's drivers do (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// One `--block` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockArg {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: Option<String>,
}

fn parse_block(s: &str) -> Result<BlockArg, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("--block needs a file name")?;
    let mut arg = BlockArg {
        path: PathBuf::from(path),
        read_only: false,
        serial: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => arg.read_only = true,
            Some(("serial", id)) if !id.is_empty() && id.len() <= 20 => {
                arg.serial = Some(id.to_string())
            }
            Some(("serial", _)) => {
                return Err(format!("serial '{opt}' must be 1 to 20 characters"))
            }
            _ => {
                return Err(format!(
                    "unknown --block option '{opt}' (known: ro, serial=ID)"
                ))
            }
        }
    }
    Ok(arg)
}

/// Everything needed to build and run one VM, checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub mem_mb: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// What the user asked for; host workarounds are appended later.
    pub cmdline: String,
    pub cpus: u8,
    pub blocks: Vec<BlockArg>,
    pub rng: bool,
    pub lenient: bool,
}

impl From<Cli> for VmConfig {
    fn from(cli: Cli) -> Self {
        Self {
            mem_mb: cli.mem_mb,
            kernel: cli.kernel,
            initrd: cli.initrd,
            cmdline: cli.kernel_args.join(" "),
            cpus: cli.cpus,
            blocks: cli.blocks,
            rng: cli.rng,
            lenient: cli.lenient,
        }
    }
}

fn parse_mem(s: &str) -> Result<u64, String> {
    let mb: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a memory size in megabytes (e.g. 512)"))?;
    if mb < MIN_MEM_MB {
        return Err(format!(
            "{mb} MB is too little memory for a guest; give at least {MIN_MEM_MB}"
        ));
    }
    // Guest-physical addresses beyond 2^46 are more than any x86 host maps.
    if mb > (1 << 26) {
        return Err(format!("{mb} MB is more memory than any host can map"));
    }
    Ok(mb)
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a CPU count; give a number from 1 to {MAX_CPUS}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("launcher").chain(args.iter().copied()))
            .map(VmConfig::from)
    }

    #[test]
    fn options_go_before_or_after_positionals() {
        let a = parse(&["512", "vmlinux", "console=ttyS0", "--initrd", "i.cpio"]).unwrap();
        let b = parse(&["--initrd", "i.cpio", "512", "vmlinux", "console=ttyS0"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cmdline, "console=ttyS0");
        assert_eq!(a.cpus, 1);
        let c = parse(&[
            "512",
            "vmlinux",
            "root=/dev/vda",
            "--cpus",
            "2",
            "ro",
            "quiet",
        ])
        .unwrap();
        assert_eq!(c.cmdline, "root=/dev/vda ro quiet");
        assert_eq!(c.cpus, 2);
    }

    #[test]
    fn block_options() {
        let c = parse(&[
            "64",
            "k",
            "--block",
            "a.img",
            "--block",
            "b.img,ro,serial=disk2",
        ])
        .unwrap();
        assert_eq!(c.blocks.len(), 2);
        assert_eq!(
            c.blocks[0],
            BlockArg {
                path: "a.img".into(),
                read_only: false,
                serial: None
            }
        );
        assert_eq!(
            c.blocks[1],
            BlockArg {
                path: "b.img".into(),
                read_only: true,
                serial: Some("disk2".into())
            }
        );
        let e = parse(&["64", "k", "--block", "a.img,rw"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown --block option 'rw'"), "{e}");
        let e = parse(&["64", "k", "--block", ",ro"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a file name"), "{e}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let e = parse(&["0", "vmlinux"]).unwrap_err().to_string();
        assert!(e.contains("too little memory"), "{e}");
        let e = parse(&["lots", "vmlinux"]).unwrap_err().to_string();
        assert!(e.contains("not a memory size"), "{e}");
        let e = parse(&["99999999999", "vmlinux"]).unwrap_err().to_string();
        assert!(e.contains("more memory than any host"), "{e}");
        let e = parse(&["512", "vmlinux", "--cpus", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a CPU count"), "{e}");
        assert!(parse(&["512"]).is_err());
    }
}
