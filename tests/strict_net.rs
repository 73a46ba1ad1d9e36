//! The strict virtio-net checks, seen from a guest driver: the test
//! guest's misbehaving drivers (guest-images/test-guest/src/net_scenarios.rs,
//! `bad-net-*`) against `launcher --tunnet=tap:NAME`, modern and
//! `--legacy`, with the tap inside a network namespace each test makes and
//! always deletes ([`common::NetNs`]): the launcher runs on a thread that
//! entered the namespace, so no tap or frame appears outside it.
//!
//! - `STOP_NET`, `STOP_NET_LEGACY` (tests/common/strict.rs): each scenario
//!   breaks one MUST; the launcher must exit 3 with one report naming
//!   virtio-net, its PCI address and the rule.
//! - `WARN_NET`: one warning line and the guest runs to its end, unless
//!   `--warnings-as-errors`.
//! - `--lenient`: a broken MUST on either queue sets DEVICE_NEEDS_RESET and
//!   the guest runs on.
//! - Well-behaved legacy drivers, with the header alone in its descriptor
//!   (no ANY_LAYOUT) or sharing one with the frame (ANY_LAYOUT, as Linux
//!   does), send and receive frames through the tap and are not reported.
//!
//! Receive buffers are checked when the driver posts them, so the `rx`
//! scenarios need no frames from the host. Skipped, saying why, when not
//! root or without `ip`.

mod common;

use common::strict::{self, *};
use common::{ethernet_frame, NetNs, PacketSocket};
use std::sync::mpsc;
use std::time::Duration;

const TAP: &str = "snet0";
const TUNNET: &str = "--tunnet=tap:snet0";
const ETHERTYPE: u16 = 0x88b5;
const FRAMES: usize = 4;

/// Runs `f` on a thread inside a fresh namespace with the tap, so the
/// launchers it starts open the tap there; a failure in `f` fails the test
/// with its own message.
fn in_namespace(f: impl FnOnce() + Send + 'static) {
    let ns = NetNs::with_tap(TAP);
    if let Err(panic) = ns.spawn(f).join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn every_net_stop_scenario_stops_the_launcher_naming_its_rule() {
    if common::netns_skipped() {
        return;
    }
    in_namespace(|| run_stop_table(&[TUNNET], "virtio-net", NET_IDS, STOP_NET));
}

#[test]
fn every_legacy_net_stop_scenario_stops_the_launcher_naming_its_rule() {
    if common::netns_skipped() {
        return;
    }
    in_namespace(|| {
        run_stop_table(
            &["--legacy", TUNNET],
            "virtio-net",
            NET_LEGACY_IDS,
            STOP_NET_LEGACY,
        )
    });
}

#[test]
fn every_net_warning_scenario_warns_once_and_stops_with_warnings_as_errors() {
    if common::netns_skipped() {
        return;
    }
    in_namespace(|| run_warning_table(&[TUNNET], "virtio-net", NET_IDS, WARN_NET));
}

/// A MUST found on the transmitq and one found on the receiveq: with
/// `--lenient` the guest runs on and sees DEVICE_NEEDS_RESET.
#[test]
fn lenient_net_violations_set_device_needs_reset() {
    if common::netns_skipped() {
        return;
    }
    in_namespace(|| {
        for (scenario, rule) in [
            ("bad-net-tx-num-buffers", "NetTxNumBuffers"),
            ("bad-net-rx-buffer-too-short", "NetRxBufferTooShort"),
        ] {
            let r = strict::run(&[TUNNET, "--lenient"], scenario);
            assert_eq!(r.code, Some(0), "{scenario}: exit code\n{}", r.output);
            assert!(
                r.stderr
                    .lines()
                    .any(|l| l.contains("bad driver: virtio-net") && l.contains(rule)),
                "{scenario}: no report of {rule}\n{}",
                r.output
            );
            let s = guest_status(&r.output);
            assert!(
                s.is_some_and(|s| s & NEEDS_RESET != 0),
                "{scenario}: status {s:x?}\n{}",
                r.output
            );
        }
    });
}

/// Checks a run of a well-behaved driver: exit 0, nothing reported.
fn assert_clean(r: &Run) {
    common::assert_clean(r.code, &r.output);
}

/// Boots the test guest with `flags` and the guest arguments `args`
/// (`scenario=...` and its options) and waits for the launcher to exit.
fn run_with(flags: &[&str], args: &[&str]) -> Run {
    common::strict::run_args(MEM_MB, flags, args)
}

/// Frames of [`ETHERTYPE`] captured on the tap while `run` runs, until
/// `count` arrived or 30 s passed. Call from inside the namespace: the
/// capturing thread, created by the caller's, starts in its namespace.
fn capture_while<T>(count: usize, run: impl FnOnce() -> T) -> (T, Vec<Vec<u8>>) {
    let (ready_tx, ready) = mpsc::channel();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let sock = PacketSocket::open(Some(TAP), ETHERTYPE).expect("AF_PACKET socket");
            ready_tx.send(()).unwrap();
            sock.frames(count, Duration::from_secs(30))
        });
        ready
            .recv_timeout(TIMEOUT)
            .expect("capture socket not ready");
        let t = run();
        (t, h.join().unwrap())
    })
}

/// The legacy driver sends frames with the 10-byte header, alone in its
/// descriptor or (with ANY_LAYOUT) in front of the frame; the tap gets
/// the frames, the launcher reports nothing.
#[test]
fn legacy_driver_frames_reach_the_tap_in_both_layouts() {
    if common::netns_skipped() {
        return;
    }
    in_namespace(|| {
        for layout in ["layout=split", "layout=any"] {
            let count = format!("count={FRAMES}");
            let (r, frames) = capture_while(FRAMES, || {
                run_with(
                    &["--legacy", TUNNET],
                    &["scenario=virtio-net-legacy-tx", &count, layout],
                )
            });
            assert_clean(&r);
            let payloads = common::frame_payloads(&frames);
            let want: Vec<String> = (0..FRAMES).map(|i| format!("launcher-test {i}")).collect();
            assert_eq!(payloads, want, "{layout}; guest output:\n{}", r.output);
        }
    });
}

/// The legacy driver receives frames sent into the tap, in both layouts.
#[test]
fn legacy_driver_receives_frames_in_both_layouts() {
    if common::netns_skipped() {
        return;
    }
    in_namespace(|| {
        for layout in ["layout=split", "layout=any"] {
            let elf = common::test_guest::path();
            let count = format!("count={FRAMES}");
            let mut g = common::Guest::start(&[
                "--legacy",
                TUNNET,
                MEM_MB,
                elf.to_str().unwrap(),
                "scenario=virtio-net-legacy-rx",
                &count,
                layout,
            ]);
            g.wait_for("GUEST-NET-RX-READY", TIMEOUT);
            let sock = PacketSocket::open(Some(TAP), ETHERTYPE).expect("AF_PACKET socket");
            let src = [0x02, 0x00, 0x00, 0x00, 0x77, 0x01];
            let payloads: Vec<String> = (0..FRAMES).map(|i| format!("host-frame {i}")).collect();
            for p in &payloads {
                sock.send(&ethernet_frame([0xff; 6], src, ETHERTYPE, p.as_bytes()))
                    .expect("send into the tap");
            }
            for p in &payloads {
                let l = g.wait_for("GUEST-NET-RX ", TIMEOUT);
                assert_eq!(l, format!("GUEST-NET-RX {p}"), "{layout}:\n{}", g.output());
            }
            let status = g.wait_exit(TIMEOUT);
            let r = Run {
                code: status.code(),
                output: g.output(),
                stderr: g.stderr(),
                elapsed: Duration::ZERO,
            };
            assert_clean(&r);
        }
    });
}

/// The well-behaved modern drivers of tests/virtio_net.rs draw no warning
/// either (virtio_net.rs checks for stops only).
#[test]
fn well_behaved_modern_driver_draws_no_warning() {
    if common::netns_skipped() {
        return;
    }
    in_namespace(|| {
        let count = format!("count={FRAMES}");
        let (r, frames) = capture_while(FRAMES, || {
            run_with(&[TUNNET], &["scenario=virtio-net-tx", &count])
        });
        assert_clean(&r);
        assert_eq!(frames.len(), FRAMES, "{}", r.output);
    });
}
