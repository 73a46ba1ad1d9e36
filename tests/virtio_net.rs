//! virtio-net (`--tunnet`, 1af4:1041) driven by the test guest's polled
//! ring-3 driver (guest-images/test-guest/src/net_scenarios.rs), with the
//! host end of the link inside a network namespace each test makes and
//! always deletes ([`common::NetNs`]): no tap, address or frame ever
//! appears outside it.
//!
//! - guest → tap: `virtio-net-tx` sends 8 broadcast frames of ethertype
//!   0x88b5; an AF_PACKET socket on the tap (a thread that entered the
//!   namespace) must receive all 8 payloads, in order, from the guest's MAC.
//! - tap → guest: once the guest prints `GUEST-NET-RX-READY`, frames sent
//!   into the tap through AF_PACKET must reach the guest, which prints
//!   each payload.
//! - The same with `--tunnet=10.77.0.1`, where the launcher creates the tap
//!   (in the namespace it was started in) and gives it the address.
//!
//! Skipped, saying why, when not root or without `ip`. Each run takes
//! about a second; every launcher runs with a 60 s timeout.

mod common;

use common::{ethernet_frame, test_guest, Guest, NetNs, PacketSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TIMEOUT;
const MEM_MB: &str = "16";
const ETHERTYPE: u16 = 0x88b5;
const TAP: &str = "ltap0";
const FRAMES: usize = 8;
/// A locally administered MAC given with `--tunnet …:MAC`.
const GIVEN_MAC: &str = "52:54:00:ab:cd:ef";

/// Starts the launcher inside `ns` with `net` (a --tunnet value).
fn start(ns: &NetNs, net: &str, scenario: &[&str]) -> Guest {
    start_with(ns, &[], net, scenario)
}

/// [`start`] with launcher `flags` too.
fn start_with(ns: &NetNs, flags: &[&str], net: &str, scenario: &[&str]) -> Guest {
    let elf = test_guest::path();
    let mut cmd = ns.launcher();
    cmd.args(flags)
        .arg(format!("--tunnet={net}"))
        .arg(MEM_MB)
        .arg(elf)
        .args(scenario);
    Guest::spawn(cmd)
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// The guest's MAC from its `GUEST-NET-MAC` line.
fn guest_mac(g: &mut Guest) -> [u8; 6] {
    let l = g.wait_for("GUEST-NET-MAC ", TIMEOUT);
    parse_mac(
        l["GUEST-NET-MAC ".len()..]
            .split_whitespace()
            .next()
            .unwrap(),
    )
}

fn assert_clean_exit(g: &mut Guest) {
    let status = g.wait_exit(TIMEOUT);
    common::assert_clean(status.code(), &g.output());
}

/// Captures frames of [`ETHERTYPE`] on `ifname` (all interfaces if `None`)
/// inside `ns` until `count` arrived or 30 s passed; `ready` is signalled
/// once the socket is bound.
fn capture(
    ns: &NetNs,
    ifname: Option<&'static str>,
    count: usize,
) -> (mpsc::Receiver<()>, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let s = PacketSocket::open(ifname, ETHERTYPE).expect("AF_PACKET socket in the namespace");
        tx.send(()).unwrap();
        s.frames(count, Duration::from_secs(30))
    });
    (rx, h)
}

fn check_tx_frames(frames: &[Vec<u8>], mac: [u8; 6], output: &str) {
    let payloads = common::frame_payloads(frames);
    let want: Vec<String> = (0..FRAMES).map(|i| format!("launcher-test {i}")).collect();
    assert_eq!(
        payloads, want,
        "frames captured on the tap; guest output:\n{output}"
    );
    for f in frames {
        assert_eq!(f[..6], [0xff; 6], "destination");
        assert_eq!(f[6..12], mac, "source is the guest's MAC");
        assert_eq!(u16::from_be_bytes([f[12], f[13]]), ETHERTYPE);
    }
}

#[test]
fn guest_frames_reach_the_tap() {
    if common::netns_skipped() {
        return;
    }
    let t = Instant::now();
    let ns = NetNs::with_tap(TAP);
    let (ready, cap) = capture(&ns, Some(TAP), FRAMES);
    ready
        .recv_timeout(TIMEOUT)
        .expect("capture socket not ready");
    let count = format!("count={FRAMES}");
    // The MAC given on the command line is what the guest's driver reads
    // from the device and sends from: not whatever the guest happened to
    // read (which would make the check circular).
    // -vv: each frame is also decoded on stderr.
    let mut g = start_with(
        &ns,
        &["-vv", "--trace", "virtio-net"],
        &format!("tap:{TAP}:{GIVEN_MAC}"),
        &["scenario=virtio-net-tx", &count],
    );
    let mac = guest_mac(&mut g);
    assert_eq!(mac, parse_mac(GIVEN_MAC), "the guest read another MAC");
    g.wait_for(&format!("GUEST-NET-TX sent={FRAMES}"), TIMEOUT);
    assert_clean_exit(&mut g);
    let frames = cap.join().unwrap();
    check_tx_frames(&frames, mac, &g.output());
    let decoded: Vec<String> = g
        .stderr()
        .lines()
        .filter(|l| l.contains("virtio-net 00:02.0: tx "))
        .map(String::from)
        .collect();
    assert_eq!(decoded.len(), FRAMES, "decoded frames: {decoded:#?}");
    for (d, f) in decoded.iter().zip(&frames) {
        assert!(
            d.ends_with(&format!("tx {} bytes, gso none, csum none", f.len())),
            "{d}"
        );
    }
    eprintln!("virtio-net-tx: {:?}", t.elapsed());
}

/// Sends `payloads` into `ifname` of `ns` to `dst`.
fn send_into_tap(ns: &NetNs, ifname: String, dst: [u8; 6], payloads: Vec<String>) {
    ns.spawn(move || {
        let s = PacketSocket::open(Some(&ifname), ETHERTYPE).expect("AF_PACKET socket");
        let src = [0x02, 0x00, 0x00, 0x00, 0x77, 0x01];
        for p in &payloads {
            s.send(&ethernet_frame(dst, src, ETHERTYPE, p.as_bytes()))
                .expect("send into the tap");
        }
    })
    .join()
    .unwrap();
}

fn check_rx(g: &mut Guest, payloads: &[String]) {
    for p in payloads {
        let l = g.wait_for("GUEST-NET-RX ", TIMEOUT);
        assert_eq!(l, format!("GUEST-NET-RX {p}"), "output:\n{}", g.output());
    }
    assert_clean_exit(g);
}

#[test]
fn tap_frames_reach_the_guest() {
    if common::netns_skipped() {
        return;
    }
    let t = Instant::now();
    let ns = NetNs::with_tap(TAP);
    let count = format!("count={FRAMES}");
    let mut g = start_with(
        &ns,
        &["-vv", "--trace", "virtio-net"],
        &format!("tap:{TAP}"),
        &["scenario=virtio-net-rx", &count],
    );
    let mac = guest_mac(&mut g);
    g.wait_for("GUEST-NET-RX-READY", TIMEOUT);
    // Half to the guest's MAC, half broadcast.
    let payloads: Vec<String> = (0..FRAMES).map(|i| format!("host-frame {i}")).collect();
    send_into_tap(&ns, TAP.into(), mac, payloads[..FRAMES / 2].to_vec());
    send_into_tap(&ns, TAP.into(), [0xff; 6], payloads[FRAMES / 2..].to_vec());
    check_rx(&mut g, &payloads);
    let decoded = g
        .stderr()
        .lines()
        .filter(|l| l.contains("virtio-net 00:02.0: rx ") && l.ends_with("bytes in 1 buffer(s)"))
        .count();
    assert!(
        decoded >= FRAMES,
        "{decoded} decoded frames:\n{}",
        g.stderr()
    );
    eprintln!("virtio-net-rx: {:?}", t.elapsed());
}

/// The interface holding `addr` in `ns` (from `ip -o -4 addr`).
fn interface_with(ns: &NetNs, addr: &str) -> Option<String> {
    ns.run(&["ip", "-o", "-4", "addr", "show"])
        .lines()
        .find(|l| l.contains(&format!("inet {addr}/24")))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
}

#[test]
fn launcher_made_tap_with_an_address_carries_frames_both_ways() {
    if common::netns_skipped() {
        return;
    }
    let t = Instant::now();
    let ns = NetNs::new();
    // Guest to host: capture on every interface of the namespace (the tap
    // does not exist before the launcher runs).
    let (ready, cap) = capture(&ns, None, FRAMES);
    ready
        .recv_timeout(TIMEOUT)
        .expect("capture socket not ready");
    let count = format!("count={FRAMES}");
    let tunnet = format!("10.77.0.1:{GIVEN_MAC}");
    let mut g = start(&ns, &tunnet, &["scenario=virtio-net-tx", &count]);
    let mac = guest_mac(&mut g);
    assert_eq!(mac, parse_mac(GIVEN_MAC), "the guest read another MAC");
    g.wait_for(&format!("GUEST-NET-TX sent={FRAMES}"), TIMEOUT);
    assert_clean_exit(&mut g);
    check_tx_frames(&cap.join().unwrap(), mac, &g.output());

    // Host to guest, on the tap the launcher made and addressed.
    let mut g = start(&ns, "10.77.0.1", &["scenario=virtio-net-rx", &count]);
    let mac = guest_mac(&mut g);
    g.wait_for("GUEST-NET-RX-READY", TIMEOUT);
    let tap = interface_with(&ns, "10.77.0.1").unwrap_or_else(|| {
        panic!(
            "no interface with 10.77.0.1/24 in the namespace:\n{}",
            ns.run(&["ip", "addr"])
        )
    });
    let payloads: Vec<String> = (0..FRAMES).map(|i| format!("host-frame {i}")).collect();
    send_into_tap(&ns, tap, mac, payloads.clone());
    check_rx(&mut g, &payloads);
    eprintln!("--tunnet=10.77.0.1 both ways: {:?}", t.elapsed());
}
