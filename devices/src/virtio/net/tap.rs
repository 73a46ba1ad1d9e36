//! A Linux tap interface: the host end of the guest's network card.
//!
//! The launcher opens `/dev/net/tun` and attaches it to a tap (a new one,
//! or one an administrator made for the user with `ip tuntap add dev NAME
//! mode tap user $USER`). Every `read(2)` on the descriptor then yields one
//! Ethernet frame the host sent towards the guest, and every `write(2)`
//! puts one frame from the guest onto the host's side of the link. The tap
//! is opened with `IFF_VNET_HDR` and a 12-byte header (`TUNSETVNETHDRSZ`),
//! so each frame carries a `struct virtio_net_hdr_mrg_rxbuf` in front —
//! the very header the guest's driver reads and writes — and checksum and
//! segmentation offloads pass straight through without being redone here.
//!
//! The host-side helpers ([`Tap::set_ipv4`], [`Tap::set_up`],
//! [`Tap::add_to_bridge`]) use `SIOC*` ioctls on an `AF_INET` socket; they
//! need CAP_NET_ADMIN, as `ip` would. Every error names the tap and the
//! operation, and where the cause is usually the same (no privilege, no
//! such interface) says what to do about it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

use super::FrameBackend;

const TUN_PATH: &str = "/dev/net/tun";
/// The interface name the kernel wrote into `ifr`.
fn ifr_name(ifr: &libc::ifreq) -> String {
    ifr.ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect()
}

/// `TUNGETIFF` (linux/if_tun.h), which the libc crate lacks.
const TUNGETIFF: libc::Ioctl = 0x8004_54d2;
/// `SIOCBRADDIF` (linux/sockios.h), which the libc crate lacks for glibc.
const SIOCBRADDIF: libc::Ioctl = 0x89a2;

/// A tap operation that failed, naming the tap and what was being done.
#[derive(Debug, Error)]
#[error("tap {tap}: {op}: {source}{hint}")]
pub struct TapError {
    /// The interface name, or what was asked for before the kernel named it.
    pub tap: String,
    pub op: String,
    #[source]
    pub source: io::Error,
    /// What usually fixes it, or empty.
    pub hint: &'static str,
}

impl From<TapError> for io::Error {
    fn from(e: TapError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

fn err(tap: &str, op: impl Into<String>, source: io::Error) -> io::Error {
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (this needs CAP_NET_ADMIN; without it, have an administrator create a tap \
             owned by you with `ip tuntap add dev NAME mode tap user $USER` and use that)"
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => " (no such device)",
        Some(libc::EBUSY) => " (already attached to another process)",
        _ => "",
    };
    TapError {
        tap: tap.to_string(),
        op: op.into(),
        source,
        hint,
    }
    .into()
}

/// An open tap, non-blocking and close-on-exec, with the virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates a tap (named `name_hint`, or `tapN` by the kernel) and
    /// attaches to it. Creating needs CAP_NET_ADMIN; if `name_hint` names
    /// an existing tap this attaches to that one, as `TUNSETIFF` does.
    pub fn create(name_hint: Option<&str>) -> io::Result<Tap> {
        Tap::attach(name_hint.unwrap_or(""))
    }

    /// Attaches to a tap that already exists, which needs no privilege
    /// when the tap's owner (or group) is the user. Refuses to create one.
    pub fn open_existing(name: &str) -> io::Result<Tap> {
        // Checks the name's length and that it holds no NUL.
        ifreq(name, name)?;
        let cname = std::ffi::CString::new(name)
            .map_err(|e| err(name, "interface name", io::Error::other(e)))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(TapError {
                tap: name.to_string(),
                op: "look up the interface".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
                hint: " (no such interface in this network namespace; create it with \
                       `ip tuntap add dev NAME mode tap user $USER`)",
            }
            .into());
        }
        Tap::attach(name)
    }

    /// A tap this process is already attached to through `fd` (one a
    /// previous boot kept open across a reboot's re-exec): checked with
    /// `TUNGETIFF` to be a tap, and named from it.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Tap> {
        let file = File::from(fd);
        // SAFETY: ifreq is plain data.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one `ifreq`, which `ifr` is and which
        // outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF, &mut ifr) } < 0 {
            return Err(err("(carried)", "TUNGETIFF", io::Error::last_os_error()));
        }
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        if flags & libc::IFF_TAP as libc::c_short == 0 {
            return Err(err(
                "(carried)",
                "TUNGETIFF",
                io::Error::new(io::ErrorKind::InvalidInput, "not a tap"),
            ));
        }
        let name = ifr_name(&ifr);
        Ok(Tap { file, name })
    }

    /// A second descriptor on the same tap (to keep it across a reboot).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }

    fn attach(name: &str) -> io::Result<Tap> {
        let label = if name.is_empty() { "(new)" } else { name };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| err(label, format!("open {TUN_PATH}"), e))?;
        let mut ifr = ifreq(label, name)?;
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is and
        // which outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            let e = io::Error::last_os_error();
            let op = if e.raw_os_error() == Some(libc::EINVAL) {
                "attach (TUNSETIFF; is it a tap, not a tun or another kind of interface?)"
            } else {
                "attach (TUNSETIFF)"
            };
            return Err(err(label, op, e));
        }
        let name = ifr_name(&ifr);
        let tap = Tap { file, name };
        tap.set_vnet_hdr_size(super::VNET_HDR_LEN as i32)?;
        Ok(tap)
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the virtio-net header length the tap adds and expects: 12,
    /// `struct virtio_net_hdr_mrg_rxbuf`, which is what virtio 1.0 uses.
    pub fn set_vnet_hdr_size(&self, size: i32) -> io::Result<()> {
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `size` for the duration of the call.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(err(
                &self.name,
                format!("set the virtio-net header size to {size} (TUNSETVNETHDRSZ)"),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Tells the tap which offloads (`TUN_F_*`) the guest can take, so it
    /// hands over unchecksummed or unsegmented frames only to a guest that
    /// negotiated them.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(err(
                &self.name,
                format!("set offloads {flags:#x} (TUNSETOFFLOAD)"),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Gives the host's side of the link an IPv4 address, as
    /// `ip addr add ADDR/PREFIX dev TAP` would.
    pub fn set_ipv4(&self, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let op = format!("set address {addr}/{prefix}");
        if prefix > 32 {
            return Err(err(
                &self.name,
                op,
                io::Error::new(io::ErrorKind::InvalidInput, "prefix longer than 32 bits"),
            ));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let sock = inet_socket().map_err(|e| err(&self.name, op.clone(), e))?;
        let mut ifr = ifreq(&self.name, &self.name)?;
        ifr.ifr_ifru.ifru_addr = sockaddr_in(addr);
        ioctl_ifreq(&sock, libc::SIOCSIFADDR, &mut ifr)
            .map_err(|e| err(&self.name, format!("{op} (SIOCSIFADDR)"), e))?;
        ifr.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
        ioctl_ifreq(&sock, libc::SIOCSIFNETMASK, &mut ifr)
            .map_err(|e| err(&self.name, format!("{op} (SIOCSIFNETMASK)"), e))
    }

    /// Brings the host's side of the link up, as `ip link set TAP up`.
    pub fn set_up(&self) -> io::Result<()> {
        let op = "bring the link up";
        let sock = inet_socket().map_err(|e| err(&self.name, op, e))?;
        let mut ifr = ifreq(&self.name, &self.name)?;
        ioctl_ifreq(&sock, libc::SIOCGIFFLAGS, &mut ifr)
            .map_err(|e| err(&self.name, format!("{op} (SIOCGIFFLAGS)"), e))?;
        // SAFETY: SIOCGIFFLAGS just filled in `ifru_flags`; every bit
        // pattern is a valid c_short.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        ioctl_ifreq(&sock, libc::SIOCSIFFLAGS, &mut ifr)
            .map_err(|e| err(&self.name, format!("{op} (SIOCSIFFLAGS)"), e))
    }

    /// Enslaves the tap to an existing bridge, as `ip link set TAP master
    /// BRIDGE`, so the guest sits on the bridge's network.
    pub fn add_to_bridge(&self, bridge: &str) -> io::Result<()> {
        let op = format!("add to bridge {bridge}");
        let cname = std::ffi::CString::new(self.name.as_str())
            .map_err(|e| err(&self.name, op.clone(), io::Error::other(e)))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(err(
                &self.name,
                format!("{op} (if_nametoindex)"),
                io::Error::last_os_error(),
            ));
        }
        let sock = inet_socket().map_err(|e| err(&self.name, op.clone(), e))?;
        let mut ifr = ifreq(&self.name, bridge)?;
        ifr.ifr_ifru.ifru_ifindex = index as libc::c_int;
        ioctl_ifreq(&sock, SIOCBRADDIF, &mut ifr)
            .map_err(|e| err(&self.name, format!("{op} (SIOCBRADDIF)"), e))
    }
}

impl FrameBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("tap {}: wrote {n} of {} bytes", self.name, frame.len()),
            ));
        }
        Ok(())
    }

    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags)
    }
}

/// An `ifreq` naming `name`; `tap` is only for the error message.
fn ifreq(tap: &str, name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(err(
            tap,
            format!("interface name {name:?}"),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("must be at most {} bytes, no NUL", libc::IFNAMSIZ - 1),
            ),
        ));
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of
    // integers, sockaddrs and a pointer), for which all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    Ok(ifr)
}

/// A socket to address interface ioctls through.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_ifreq(sock: &OwnedFd, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request passed here reads and/or writes one `ifreq`,
    // which `ifr` is, exclusively borrowed for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, ifr as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `addr` as a `struct sockaddr_in` in a `struct sockaddr`'s clothing.
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    // sa_data: port (2 bytes, zero), then the address in network order.
    for (d, s) in data[2..6].iter_mut().zip(addr.octets()) {
        *d = s as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: data,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::virtio::net::{offload_flags, FEATURES};

    /// `SIOCBRADDBR` (linux/sockios.h): takes the new bridge's name.
    const SIOCBRADDBR: libc::Ioctl = 0x89a0;

    fn netns_of_this_thread() -> std::path::PathBuf {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    }

    /// Runs `body` on a thread of its own in a network namespace of its
    /// own, which vanishes (taps, addresses, bridge and all) when the
    /// thread ends and the taps close; the host's namespace is never
    /// touched. Returns false, skipping, without the privilege for it.
    ///
    /// A test that cannot run says so; under CI (`CI=true`) that fails.
    fn skip(why: &str) {
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
            panic!("skipped under CI, which must run every test: {why}");
        }
        eprintln!("skipped: {why}");
    }

    fn in_private_netns(body: impl FnOnce() + Send + 'static) -> bool {
        std::thread::spawn(move || {
            let host = netns_of_this_thread();
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only
            // this thread into a new network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: no private network namespace: {}",
                    io::Error::last_os_error()
                );
                return false;
            }
            assert_ne!(
                netns_of_this_thread(),
                host,
                "still in the host's namespace"
            );
            body();
            true
        })
        .join()
        .unwrap()
    }

    /// An ARP request from 10.9.8.2 (`mac`) for 10.9.8.1, with a zero
    /// virtio-net header in front.
    fn arp_request(mac: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0xff; 6]);
        f.extend(mac);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend(mac);
        f.extend([10, 9, 8, 2]);
        f.extend([0; 6]);
        f.extend([10, 9, 8, 1]);
        f
    }

    /// Creates taps, configures the host side, and has the host's stack
    /// answer an ARP request written into the tap; needs root (or
    /// CAP_SYS_ADMIN and CAP_NET_ADMIN) and otherwise skips.
    #[test]
    fn real_tap_in_a_private_network_namespace() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return skip("creating taps needs root");
        }
        let ran = in_private_netns(|| {
            let mut tap = Tap::create(Some("lt0")).unwrap();
            assert_eq!(tap.name(), "lt0");
            let auto = Tap::create(None).unwrap();
            assert!(auto.name().starts_with("tap"), "{}", auto.name());
            tap.set_vnet_hdr_size(12).unwrap();
            Tap::set_offload(&tap, offload_flags(FEATURES)).unwrap();
            tap.set_ipv4(Ipv4Addr::new(10, 9, 8, 1), 24).unwrap();
            tap.set_up().unwrap();

            let mut buf = vec![0u8; super::super::MAX_FRAME];
            let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
            tap.write_frame(&arp_request(mac)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let reply = loop {
                assert!(Instant::now() < deadline, "no ARP reply from the host");
                match tap.read_frame(&mut buf) {
                    Ok(n) => {
                        let f = &buf[12..n];
                        // An ARP reply (ethertype 0x0806, op 2) to us.
                        if f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] {
                            break f.to_vec();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(reply[..6], mac, "sent to the guest's MAC");
            assert_eq!(reply[28..32], [10, 9, 8, 1], "from the host's address");

            // A persistent tap, as an administrator would leave it, can be
            // opened again by name.
            // SAFETY: TUNSETPERSIST takes its argument by value.
            let r = unsafe { libc::ioctl(auto.file.as_raw_fd(), libc::TUNSETPERSIST, 1) };
            assert_eq!(r, 0);
            let name = auto.name().to_string();
            drop(auto);
            let again = Tap::open_existing(&name).unwrap();
            assert_eq!(again.name(), name);
            let e = Tap::open_existing("nosuch0").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
            assert!(
                e.to_string()
                    .starts_with("tap nosuch0: look up the interface:")
                    && e.to_string().contains("ip tuntap add"),
                "{e}"
            );

            // Bridging.
            let sock = inet_socket().unwrap();
            // SAFETY: SIOCBRADDBR reads a NUL-terminated name, which the
            // literal is.
            let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR, c"ltbr0".as_ptr()) };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            tap.add_to_bridge("ltbr0").unwrap();
            let e = tap.add_to_bridge("nosuchbr").unwrap_err().to_string();
            assert!(
                e.starts_with("tap lt0: add to bridge nosuchbr (SIOCBRADDIF): "),
                "{e}"
            );
        });
        if !ran {
            skip("no private network namespace");
        }
    }

    #[test]
    fn errors_name_the_tap_and_the_operation() {
        let e = Tap::create(Some("a-name-far-too-long")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .starts_with("tap a-name-far-too-long: interface name \"a-name-far-too-long\": must be at most 15 bytes"),
            "{e}"
        );
        let e = err(
            "tap7",
            "attach (TUNSETIFF)",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        let s = e.to_string();
        assert!(s.starts_with("tap tap7: attach (TUNSETIFF): "), "{s}");
        assert!(
            s.contains("CAP_NET_ADMIN") && s.contains("ip tuntap add"),
            "{s}"
        );
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }
}
