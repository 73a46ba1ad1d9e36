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
    after_help = "Examples:\n  launcher 512 vmlinux console=ttyS0 --initrd initramfs.cpio.gz\n  launcher --cpus 2 1024 bzImage console=ttyS0 root=/dev/vda\n\nExit codes: 0 guest powered off; 1 launcher or host error; 2 usage error;\n3 bad driver; 4 guest crashed; 5 a launcher thread broke its seccomp filter;\n128+N stopped by signal N (130: console escape).\nA guest reboot re-executes the launcher with the same arguments."
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

    /// A virtio-net device on a tap; repeatable. `IPADDR[:MAC]` creates a
    /// tap with IPADDR/24 on the host side, `bridge:NAME[:MAC]` adds a new
    /// tap to an existing bridge, `tap:NAME[:MAC]` opens an existing tap
    /// (no CAP_NET_ADMIN needed).
    #[arg(long = "tunnet", value_name = "IPADDR[:MAC]|bridge:NAME[:MAC]|tap:NAME[:MAC]", value_parser = parse_tunnet)]
    pub nets: Vec<NetArg>,

    /// Add a virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    pub rng: bool,

    /// Use the legacy (virtio 0.9.5) PCI transport for every virtio device.
    #[arg(long)]
    pub legacy: bool,

    /// Mimic OpenBSD vmd's machine: legacy transport with vmd's PCI ids and
    /// device order, the 8250 as the only console, vmmci last.
    #[arg(long)]
    pub vmd: bool,

    /// Add OpenBSD's vmmci control device (clean shutdown, reboot, clock
    /// sync); always on with --vmd.
    #[arg(long)]
    pub vmmci: bool,

    /// A Unix socket taking `shutdown`, `reboot` and `status` commands.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// On a virtio rule broken by a guest driver, log it and set
    /// DEVICE_NEEDS_RESET instead of stopping the guest.
    #[arg(long, conflicts_with = "warnings_as_errors")]
    pub lenient: bool,

    /// Stop the guest on a strict-check warning (a broken SHOULD, a device
    /// limit, a heuristic finding) as on a broken MUST: exit code 3.
    #[arg(long)]
    pub warnings_as_errors: bool,

    /// Trace what the guest's drivers and the launcher do: -v each device's
    /// life (status, features, queues, vectors, resets), -vv also every
    /// request, notification and interrupt, -vvv also every register access.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Give the -v/-vv/-vvv detail only to these devices, by name
    /// (virtio-blk), by the name Linux gives a disk (vda) or by PCI address
    /// (00:03.0); the others stay at -v.
    #[arg(long, value_delimiter = ',', value_name = "DEVICE", value_parser = parse_trace_device)]
    pub trace: Vec<String>,

    /// Write the devices' events to FILE as JSON lines (docs/tracing.md),
    /// made to be compared between runs; a reboot appends to it.
    #[arg(long, value_name = "FILE")]
    pub trace_file: Option<PathBuf>,

    /// In the trace file, every event as it happens, with host times and
    /// guest addresses (not comparable between runs).
    #[arg(long, requires = "trace_file")]
    pub trace_everything: bool,

    /// Once the machine's files are open, become this user (a name from
    /// /etc/passwd or a number): its uid, gid and groups, no capabilities.
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,

    /// Once the machine's files are open, change root to DIR (an empty
    /// directory will do; a reboot needs a statically linked launcher or
    /// its dynamic loader and libraries inside DIR).
    #[arg(long, value_name = "DIR")]
    pub chroot: Option<PathBuf>,

    /// Run without seccomp filters (for debugging the launcher: normally
    /// each thread may make only the system calls its work needs).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// Device names `--trace` knows.
const TRACE_NAMES: &[&str] = &[
    "virtio-console",
    "virtio-blk",
    "virtio-net",
    "virtio-rng",
    "vmmci",
];

fn parse_trace_device(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let disk = b.len() == 3 && s.starts_with("vd") && b[2].is_ascii_lowercase();
    let pci = b.len() == 7
        && b[2] == b':'
        && b[5] == b'.'
        && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_hexdigit())
        && b[6].is_ascii_digit();
    if TRACE_NAMES.contains(&s) || disk || pci {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "unknown device {s:?}: give a name ({}), a disk (vda) or a PCI address (00:03.0)",
            TRACE_NAMES.join(", ")
        ))
    }
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

/// Where a `--tunnet` device's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// A new tap whose host side gets this address /24.
    Address(std::net::Ipv4Addr),
    /// A new tap added to this existing bridge.
    Bridge(String),
    /// An existing tap, opened by name.
    Existing(String),
}

/// One `--tunnet` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArg {
    pub source: TapSource,
    pub mac: Option<[u8; 6]>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{s}' is not a MAC address (like 52:54:00:12:34:56)"))?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| format!("'{s}' is not a MAC address (like 52:54:00:12:34:56)"))?;
    if mac[0] & 1 != 0 {
        return Err(format!(
            "MAC {s} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(mac)
}

fn parse_tunnet(s: &str) -> Result<NetArg, String> {
    let named = |rest: &str, what: &str| -> Result<(String, Option<[u8; 6]>), String> {
        let (name, mac) = match rest.split_once(':') {
            Some((n, m)) => (n, Some(parse_mac(m)?)),
            None => (rest, None),
        };
        if name.is_empty() || name.len() > 15 {
            return Err(format!(
                "--tunnet {what}: '{name}' is not an interface name (1 to 15 characters)"
            ));
        }
        Ok((name.to_string(), mac))
    };
    if let Some(rest) = s.strip_prefix("bridge:") {
        let (name, mac) = named(rest, "bridge")?;
        return Ok(NetArg {
            source: TapSource::Bridge(name),
            mac,
        });
    }
    if let Some(rest) = s.strip_prefix("tap:") {
        let (name, mac) = named(rest, "tap")?;
        return Ok(NetArg {
            source: TapSource::Existing(name),
            mac,
        });
    }
    let (ip, mac) = match s.split_once(':') {
        Some((ip, mac)) => (ip, Some(parse_mac(mac)?)),
        None => (s, None),
    };
    let ip = ip.parse().map_err(|_| {
        format!("--tunnet '{s}': expected IPADDR[:MAC], bridge:NAME[:MAC] or tap:NAME[:MAC]")
    })?;
    Ok(NetArg {
        source: TapSource::Address(ip),
        mac,
    })
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
    pub nets: Vec<NetArg>,
    pub rng: bool,
    pub legacy: bool,
    pub vmd: bool,
    pub vmmci: bool,
    pub lenient: bool,
    pub warnings_as_errors: bool,
    pub control: Option<PathBuf>,
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
            nets: cli.nets,
            rng: cli.rng,
            legacy: cli.legacy || cli.vmd,
            vmd: cli.vmd,
            vmmci: cli.vmmci || cli.vmd,
            lenient: cli.lenient,
            warnings_as_errors: cli.warnings_as_errors,
            control: cli.control,
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
    fn trace_names_devices_disks_or_pci_addresses() {
        let cli = Cli::try_parse_from(["launcher", "--trace", "virtio-blk,vdb,00:0A.0", "16", "k"])
            .unwrap();
        assert_eq!(cli.trace, ["virtio-blk", "vdb", "00:0a.0"]);
        for bad in ["blk", "vd1", "0:03.0", "virtio-gpu"] {
            let e = Cli::try_parse_from(["launcher", "--trace", bad, "16", "k"]).unwrap_err();
            assert!(e.to_string().contains("unknown device"), "{bad}: {e}");
        }
        let e = Cli::try_parse_from(["launcher", "--trace-everything", "16", "k"]).unwrap_err();
        assert!(e.to_string().contains("--trace-file"), "{e}");
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
    fn tunnet_forms() {
        let c = parse(&[
            "64",
            "k",
            "--tunnet=192.168.19.1",
            "--tunnet",
            "10.0.0.1:52:54:00:12:34:56",
            "--tunnet=bridge:br0",
            "--tunnet=tap:tap7:02:00:00:00:00:01",
        ])
        .unwrap();
        let ip = |s: &str| TapSource::Address(s.parse().unwrap());
        assert_eq!(
            c.nets[0],
            NetArg {
                source: ip("192.168.19.1"),
                mac: None
            }
        );
        assert_eq!(
            c.nets[1],
            NetArg {
                source: ip("10.0.0.1"),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
            }
        );
        assert_eq!(
            c.nets[2],
            NetArg {
                source: TapSource::Bridge("br0".into()),
                mac: None
            }
        );
        assert_eq!(
            c.nets[3],
            NetArg {
                source: TapSource::Existing("tap7".into()),
                mac: Some([2, 0, 0, 0, 0, 1])
            }
        );
        for (bad, why) in [
            ("300.1.1.1", "expected IPADDR"),
            ("10.0.0.1:zz", "not a MAC"),
            ("10.0.0.1:01:00:00:00:00:01", "multicast"),
            ("bridge:", "not an interface name"),
            ("tap:averyveryverylongname", "not an interface name"),
        ] {
            let e = parse(&["64", "k", "--tunnet", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
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
