//! Writes the seed corpus, `seeds/<target>/<name>`: for each target, the
//! inputs a well-behaved driver, user or kernel file would give, in the
//! byte format `fuzzing::Input` reads, so the fuzzer starts from deep
//! inside each state machine. Run from `fuzz/` after changing a target's
//! input format: `cargo +nightly run --example seeds`.

use std::path::Path;

use fuzzing::Seed;

/// Handler targets' operations (see `fuzzing::drive`).
const POST: u8 = 0;
const RUN: u8 = 1;
const FILL: u8 = 2;
const USED_EVENT: u8 = 3;
const EXTRA: u8 = 4;
/// Lane 1 (the console's transmit queue).
const LANE1: u8 = 0x10;

/// Queue size picks: 1 << n.
const SIZE_16: u8 = 4;
const SIZE_256: u8 = 8;

const VERSION_1: u64 = 1 << 32;
const ALL: u64 = u64::MAX;

/// A buffer at data-area offset `at`.
fn buf(s: &mut Seed, at: u16, len: u16, writable: bool) {
    s.u16(at).u16(len).u8(writable.into());
}

fn post(s: &mut Seed, lane: u8, bufs: &[(u16, u16, bool)], indirect: bool) {
    s.u8(lane | POST).u8(bufs.len() as u8 - 1);
    for &(at, len, w) in bufs {
        buf(s, at, len, w);
    }
    s.u8(indirect.into());
}

fn fill(s: &mut Seed, lane: u8, at: u16, bytes: &[u8]) {
    s.u8(lane | FILL).u16(at).blob(bytes);
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("seed directory");
    std::fs::write(d.join(name), bytes).expect("seed file");
}

fn rng(dir: &Path) {
    for (name, features, indirect) in [
        ("one-buffer", VERSION_1, false),
        ("legacy", 0, false),
        ("indirect-event-idx", ALL, true),
    ] {
        let mut s = Seed::default();
        s.u64(features).u8(SIZE_16);
        post(&mut s, 0, &[(0, 64, true)], false);
        post(
            &mut s,
            0,
            &[(0x100, 16, true), (0x200, 300, true)],
            indirect,
        );
        s.u8(USED_EVENT).u16(1);
        s.u8(RUN);
        write(dir, "rng", name, &s.0);
    }
}

/// `struct virtio_blk_outhdr`.
fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend(0u32.to_le_bytes());
    h.extend(sector.to_le_bytes());
    h
}

fn blk(dir: &Path) {
    const IN: u32 = 0;
    const OUT: u32 = 1;
    const FLUSH: u32 = 4;
    const GET_ID: u32 = 8;
    const DISCARD: u32 = 11;
    const WRITE_ZEROES: u32 = 13;
    // (name, type, sector, data buffers after the header, data in them)
    let cases: [(&str, u32, u64, &[(u16, u16, bool)], &[u8]); 7] = [
        ("read", IN, 2, &[(0x1000, 1024, true)], &[]),
        ("write", OUT, 1, &[(0x1000, 512, false)], b"data"),
        ("flush", FLUSH, 0, &[], &[]),
        ("get-id", GET_ID, 0, &[(0x1000, 20, true)], &[]),
        (
            "discard",
            DISCARD,
            0,
            &[(0x1000, 16, false)],
            &[4, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "write-zeroes-unmap",
            WRITE_ZEROES,
            0,
            &[(0x1000, 16, false)],
            &[0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0],
        ),
        ("read-past-end", IN, 63, &[(0x1000, 1024, true)], &[]),
    ];
    for (name, kind, sector, data, bytes) in cases {
        for (variant, features, indirect) in
            [("", ALL, false), ("-legacy-indirect", 0xffff_ffff, true)]
        {
            let mut s = Seed::default();
            s.u8(0).u8(64).blob(b"disk image").u8(1).blob(b"serial");
            s.u64(features).u8(0).u8(SIZE_16);
            fill(&mut s, 0, 0, &blk_header(kind, sector));
            fill(&mut s, 0, 0x1000, bytes);
            let mut bufs = vec![(0, 16, false)];
            bufs.extend_from_slice(data);
            bufs.push((0x3000, 1, true));
            post(&mut s, 0, &bufs, indirect);
            s.u8(RUN);
            write(dir, "blk", &format!("{name}{variant}"), &s.0);
        }
    }
    // Read-only, writethrough, two requests in one chain's worth of buffers.
    let mut s = Seed::default();
    s.u8(1)
        .u8(8)
        .blob(b"")
        .u8(0)
        .u64(ALL)
        .u8(1)
        .u8(0)
        .u8(SIZE_256);
    fill(&mut s, 0, 0, &blk_header(OUT, 0));
    post(
        &mut s,
        0,
        &[(0, 16, false), (0x1000, 512, false), (0x3000, 1, true)],
        false,
    );
    fill(&mut s, 0, 0x20, &blk_header(IN, 0));
    post(
        &mut s,
        0,
        &[(0x20, 16, false), (0x1000, 512, true), (0x3001, 1, true)],
        false,
    );
    s.u8(EXTRA).u8(0).u8(RUN);
    write(dir, "blk", "read-only", &s.0);
}

/// A virtio-net header (12 bytes) and an Ethernet frame of `len` bytes.
fn net_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend((0..len).map(|i| i as u8));
    f
}

fn net(dir: &Path) {
    const MAC: u64 = 1 << 5;
    const MRG_RXBUF: u64 = 1 << 15;
    const ANY_LAYOUT: u64 = 1 << 27;
    // Transmit: header and frame apart, together, and with a GSO header.
    for (name, features, bufs) in [
        (
            "split",
            VERSION_1 | MAC,
            &[(0u16, 12u16, false), (0x100, 60, false)][..],
        ),
        ("together", VERSION_1 | MAC, &[(0, 72, false)][..]),
        (
            "legacy-header-alone",
            MAC,
            &[(0, 10, false), (0x100, 60, false)][..],
        ),
        ("legacy-any-layout", MAC | ANY_LAYOUT, &[(0, 70, false)][..]),
        (
            "all-features",
            ALL,
            &[(0, 12, false), (0x100, 60, false)][..],
        ),
    ] {
        let mut s = Seed::default();
        s.u64(features).u8(SIZE_16);
        fill(&mut s, 0, 0, &net_frame(0));
        fill(&mut s, 0, 0x100, &net_frame(60)[12..]);
        post(&mut s, 0, bufs, false);
        s.u8(RUN);
        post(&mut s, 0, bufs, true);
        s.u8(EXTRA).u8(1).u8(RUN);
        write(dir, "net_tx", name, &s.0);
    }
    // Receive: one chain per frame, mergeable buffers, legacy header.
    let big = [(0u16, 12u16, true), (0x100, 1514, true)];
    let small = [(0x1000, 1000, true)];
    for (name, features, bufs, frame) in [
        ("one-chain", VERSION_1 | MAC, &big[..], 80u16),
        ("mergeable", VERSION_1 | MAC | MRG_RXBUF, &small[..], 2500),
        (
            "legacy",
            MAC,
            &[(0u16, 10u16, true), (0x100, 1514, true)][..],
            60,
        ),
        ("all-features", ALL, &small[..], 70),
    ] {
        let mut s = Seed::default();
        s.u64(features).u8(SIZE_16);
        post(&mut s, 0, bufs, false);
        post(&mut s, 0, bufs, true);
        post(&mut s, 0, bufs, false);
        s.u8(EXTRA).u16(frame).blob(&net_frame(14));
        s.u8(RUN);
        s.u8(EXTRA).u16(frame / 2).blob(&[]);
        s.u8(RUN);
        write(dir, "net_rx", name, &s.0);
    }
}

fn console(dir: &Path) {
    let mut s = Seed::default();
    s.u64(VERSION_1).u8(SIZE_16).u8(SIZE_16);
    post(&mut s, 0, &[(0, 64, true)], false);
    s.u8(EXTRA).u8(0).blob(b"ls -l\n");
    s.u8(RUN);
    fill(&mut s, LANE1, 0x100, b"hello from the guest\n");
    post(&mut s, LANE1, &[(0x100, 21, false)], false);
    s.u8(LANE1 | RUN);
    s.u8(EXTRA).u8(1).u8(1);
    post(
        &mut s,
        LANE1,
        &[(0x100, 10, false), (0x200, 10, false)],
        true,
    );
    s.u8(LANE1 | RUN);
    write(dir, "console", "both-queues", &s.0);
}

/// A descriptor: address, length, flags, next.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend(len.to_le_bytes());
    d.extend(flags.to_le_bytes());
    d.extend(next.to_le_bytes());
    d
}

fn queue(dir: &Path) {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    // Op codes of the queue target.
    const DESC: u8 = 1;
    const TABLE: u8 = 2;
    const OFFER: u8 = 3;
    const POP: u8 = 4;
    const ADD_USED: u8 = 5;
    const NEEDS_INTERRUPT: u8 = 6;
    let start = |s: &mut Seed, bits: u8| {
        s.u8(SIZE_16).u16(0).u16(0x1000).u16(0x1400).u8(bits).u16(0);
    };
    let pop = |s: &mut Seed| {
        s.u8(POP).u16(64).blob(b"written");
    };
    // A readable then a writable buffer, the second across two regions.
    let mut s = Seed::default();
    start(&mut s, 0);
    s.u8(DESC).u16(0).bytes(&desc(0x2000, 16, NEXT, 1));
    s.u8(DESC).u16(1).bytes(&desc(0x7ff0, 0x20, WRITE, 0));
    s.u8(OFFER).u16(0);
    pop(&mut s);
    s.u8(ADD_USED).u16(0).u32(0x20).u8(NEEDS_INTERRUPT);
    pop(&mut s);
    write(dir, "queue", "two-buffers", &s.0);
    // An indirect table of three with EVENT_IDX.
    let mut s = Seed::default();
    start(&mut s, 3);
    s.u8(TABLE).u16(0x3000).bytes(&desc(0x2000, 16, NEXT, 1));
    s.u8(TABLE)
        .u16(0x3010)
        .bytes(&desc(0x2100, 100, NEXT | WRITE, 2));
    s.u8(TABLE).u16(0x3020).bytes(&desc(0xb000, 1, WRITE, 0));
    s.u8(DESC).u16(5).bytes(&desc(0x3000, 48, INDIRECT, 0));
    s.u8(OFFER).u16(5);
    pop(&mut s);
    s.u8(ADD_USED).u16(5).u32(1).u8(NEEDS_INTERRUPT);
    s.u8(OFFER).u16(5);
    pop(&mut s);
    write(dir, "queue", "indirect-event-idx", &s.0);
    // A buffer across the hole, a loop, a head out of range.
    let mut s = Seed::default();
    start(&mut s, 1);
    s.u8(DESC).u16(0).bytes(&desc(0x9ff0, 0x20, 0, 0));
    s.u8(DESC).u16(1).bytes(&desc(0x2000, 8, NEXT, 2));
    s.u8(DESC).u16(2).bytes(&desc(0x2000, 8, NEXT, 1));
    s.u8(OFFER).u16(0).u8(OFFER).u16(1).u8(OFFER).u16(16);
    pop(&mut s);
    pop(&mut s);
    write(dir, "queue", "violations", &s.0);
}

/// A register access (`fuzzing::register_op`): BAR or config space.
fn bar_write(s: &mut Seed, base: u8, near: u8, width: u8, v: u64) {
    let w = [1, 2, 4, 8].iter().position(|&x| x == width).unwrap() as u8;
    s.u8(1).u8(base).u8(near).u8(w).u64(v);
}
fn bar_read(s: &mut Seed, base: u8, near: u8, width: u8) {
    let w = [1, 2, 4, 8].iter().position(|&x| x == width).unwrap() as u8;
    s.u8(0).u8(base).u8(near).u8(w);
}
fn config_write(s: &mut Seed, at: u8, width: u8, v: u32) {
    let w = [1, 2, 4].iter().position(|&x| x == width).unwrap() as u8;
    s.u8(3).u8(at).u8(w).u64(v.into());
}
fn config_read(s: &mut Seed, at: u8, width: u8) {
    let w = [1, 2, 4].iter().position(|&x| x == width).unwrap() as u8;
    s.u8(2).u8(at).u8(w);
}

fn modern(dir: &Path) {
    // BAR structure picks (see the target): common config, ISR, device
    // config, notify, MSI-X table.
    const COMMON: u8 = 0;
    const ISR: u8 = 1;
    const DEVICE: u8 = 2;
    const NOTIFY: u8 = 3;
    const MSIX: u8 = 4;
    for (name, lenient, queues) in [("linux-probe", 0u8, 1u8), ("lenient-3-queues", 1, 2)] {
        let mut s = Seed::default();
        s.u8(lenient).u8(queues).u64(0);
        config_write(&mut s, 0x04, 2, 0x0006); // memory space, bus master
        config_read(&mut s, 0x34, 1);
        config_read(&mut s, 0x40, 4);
        bar_write(&mut s, COMMON, 0x14, 1, 0); // reset
        bar_write(&mut s, COMMON, 0x14, 1, 1); // ACKNOWLEDGE
        bar_write(&mut s, COMMON, 0x14, 1, 3); // DRIVER
        bar_write(&mut s, COMMON, 0x00, 4, 1);
        bar_read(&mut s, COMMON, 0x04, 4);
        bar_write(&mut s, COMMON, 0x08, 4, 1);
        bar_write(&mut s, COMMON, 0x0c, 4, 1); // VERSION_1
        bar_write(&mut s, COMMON, 0x08, 4, 0);
        bar_write(&mut s, COMMON, 0x0c, 4, 5);
        bar_write(&mut s, COMMON, 0x14, 1, 0xb); // FEATURES_OK
        bar_read(&mut s, COMMON, 0x14, 1);
        bar_read(&mut s, DEVICE, 0, 4);
        bar_write(&mut s, MSIX, 0, 4, 0xfee0_0000);
        bar_write(&mut s, MSIX, 8, 4, 0x41);
        bar_write(&mut s, MSIX, 12, 4, 0);
        bar_write(&mut s, COMMON, 0x10, 2, 0);
        for q in 0..=u64::from(queues) {
            let base = 0x10000 + q * 0x3000;
            bar_write(&mut s, COMMON, 0x16, 2, q);
            bar_read(&mut s, COMMON, 0x18, 2);
            bar_write(&mut s, COMMON, 0x18, 2, 64);
            bar_write(&mut s, COMMON, 0x1a, 2, 0);
            bar_write(&mut s, COMMON, 0x20, 4, base);
            bar_write(&mut s, COMMON, 0x24, 4, 0);
            bar_write(&mut s, COMMON, 0x28, 4, base + 0x1000);
            bar_write(&mut s, COMMON, 0x30, 4, base + 0x2000);
            bar_read(&mut s, COMMON, 0x1e, 2);
            bar_write(&mut s, COMMON, 0x1c, 2, 1);
        }
        config_write(&mut s, 0x9a, 2, 0x8000); // MSI-X enable (cap at 0x98)
        bar_write(&mut s, COMMON, 0x14, 1, 0xf); // DRIVER_OK
        bar_write(&mut s, NOTIFY, 0, 2, 0);
        bar_read(&mut s, ISR, 0, 1);
        bar_write(&mut s, COMMON, 0x14, 1, 0); // reset
        bar_read(&mut s, COMMON, 0x14, 1);
        write(&dir, "modern", name, &s.0);
    }
}

fn legacy(dir: &Path) {
    const HEADER: u8 = 0;
    for (name, lenient, queues) in [("linux-probe", 0u8, 0u8), ("lenient-3-queues", 1, 2)] {
        let mut s = Seed::default();
        s.u8(lenient).u8(queues).u64(0);
        config_write(&mut s, 0x04, 2, 0x0005); // I/O space, bus master
        config_read(&mut s, 0x10, 4);
        bar_write(&mut s, HEADER, 18, 1, 0);
        bar_write(&mut s, HEADER, 18, 1, 1);
        bar_write(&mut s, HEADER, 18, 1, 3);
        bar_read(&mut s, HEADER, 0, 4);
        bar_write(&mut s, HEADER, 4, 4, 5);
        for q in 0..=u64::from(queues) {
            bar_write(&mut s, HEADER, 14, 2, q);
            bar_read(&mut s, HEADER, 12, 2);
            bar_write(&mut s, HEADER, 8, 4, 0x10 + 8 * q);
        }
        bar_write(&mut s, HEADER, 18, 1, 7); // DRIVER_OK
        bar_write(&mut s, HEADER, 16, 2, 0);
        bar_read(&mut s, HEADER, 19, 1);
        bar_read(&mut s, HEADER, 20, 4);
        bar_write(&mut s, HEADER, 18, 1, 0);
        write(&dir, "legacy", name, &s.0);
    }
}

fn vmmci(dir: &Path) {
    const REGS: u8 = 5;
    const SHUTDOWN: u8 = 0;
    const REBOOT: u8 = 1;
    const SYNCRTC: u8 = 2;
    const EXPIRE: u8 = 3;
    const CLOCK: u8 = 4;
    for (name, vmd, request) in [("shutdown-acked", 1u8, SHUTDOWN), ("reboot", 0, REBOOT)] {
        let mut s = Seed::default();
        s.u8(0).u8(vmd);
        let w = |s: &mut Seed, at: u8, width: u8, v: u64| {
            s.u8(REGS);
            bar_write(s, 0, at, width, v);
        };
        w(&mut s, 18, 1, 3);
        w(&mut s, 4, 4, 7);
        w(&mut s, 18, 1, 7);
        s.u8(request);
        s.u8(REGS);
        bar_read(&mut s, 0, 19, 1);
        s.u8(REGS);
        bar_read(&mut s, 0, 20, 4);
        w(&mut s, 20, 4, u64::from(request) + 1);
        s.u8(EXPIRE).u32(5000);
        s.u8(CLOCK).u64(1_700_000_000).u32(123_456_789);
        for at in [24, 28, 32, 36] {
            s.u8(REGS);
            bar_read(&mut s, 0, at, 4);
        }
        s.u8(SYNCRTC);
        w(&mut s, 20, 4, 3);
        s.u8(EXPIRE).u32(200_000);
        w(&mut s, 18, 1, 0);
        write(&dir, "vmmci", name, &s.0);
    }
}

/// An x86-64 ELF executable with PT_LOAD segments (paddr, data, memsz),
/// the data right after the program headers.
fn elf(entry: u64, segs: &[(u64, &[u8], u64)]) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut off = 64 + 56 * segs.len() as u64;
    for (paddr, data, memsz) in segs {
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[4..8].copy_from_slice(&7u32.to_le_bytes());
        ph[8..16].copy_from_slice(&off.to_le_bytes());
        ph[16..24].copy_from_slice(&paddr.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        out.extend(ph);
        off += data.len() as u64;
    }
    for (_, data, _) in segs {
        out.extend_from_slice(data);
    }
    out
}

/// A bzImage: one setup sector, protocol 2.15, 64-bit, relocatable.
fn bzimage(payload: usize, init_size: u32) -> Vec<u8> {
    let mut out = vec![0u8; 1024];
    out[0x1f1] = 1;
    out[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    out[0x200] = 0xeb;
    out[0x201] = 0x66;
    out[0x202..0x206].copy_from_slice(b"HdrS");
    out[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    out[0x211] = 1; // LOADED_HIGH
    out[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    out[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    out[0x234] = 1;
    out[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    out[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    out[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    out[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    out.extend((0..payload).map(|i| (i % 251) as u8));
    out
}

fn loader(dir: &Path) {
    const MIB: u64 = 1 << 20;
    let kernels: [(&str, Vec<u8>); 4] = [
        ("elf", elf(MIB + 0x10, &[(MIB, &[0xc3; 256], 0x1000)])),
        (
            "elf-two-segments",
            elf(
                2 * MIB,
                &[(MIB, &[0x90; 64], 64), (2 * MIB, &[0xc3; 64], 0x10000)],
            ),
        ),
        ("bzimage", bzimage(0x400, 0x10_0000)),
        ("bzimage-big-init", bzimage(0x200, 0x300_0000)),
    ];
    for (name, kernel) in &kernels {
        for (suffix, initrd) in [("", None), ("-initrd", Some(&b"070701 cpio"[..]))] {
            let mut s = Seed::default();
            s.u8(u8::from(initrd.is_some()) | 2);
            s.blob(b"console=ttyS0 root=/dev/vda");
            s.u16(kernel.len() as u16).bytes(kernel);
            if let Some(i) = initrd {
                s.bytes(i);
            }
            write(dir, "loader", &format!("{name}{suffix}"), &s.0);
        }
    }
}

fn cli(dir: &Path) {
    let lines: [(&str, &[&str]); 7] = [
        ("minimal", &["512", "vmlinux", "console=ttyS0"]),
        (
            "devices",
            &[
                "--cpus",
                "2",
                "--block",
                "disk.img,ro,serial=abc",
                "--block",
                "b.img",
                "--tunnet",
                "10.0.0.1:52:54:00:12:34:56",
                "--rng",
                "1024",
                "bzImage",
                "root=/dev/vda",
            ],
        ),
        (
            "vmd",
            &[
                "--vmd",
                "--control",
                "ctl.sock",
                "--lenient",
                "-vv",
                "64",
                "bsd",
                "--initrd",
                "rd",
            ],
        ),
        (
            "taps",
            &[
                "--tunnet",
                "bridge:br0",
                "--tunnet",
                "tap:tap0:02:00:00:00:00:01",
                "--legacy",
                "--vmmci",
                "--warnings-as-errors",
                "32",
                "k",
            ],
        ),
        ("help", &["--help"]),
        (
            "conflict",
            &["--lenient", "--warnings-as-errors", "16", "k"],
        ),
        ("bad-mem", &["15", "k"]),
    ];
    for (name, args) in lines {
        write(dir, "cli", name, args.join("\0").as_bytes());
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    rng(&dir);
    blk(&dir);
    net(&dir);
    console(&dir);
    queue(&dir);
    modern(&dir);
    legacy(&dir);
    vmmci(&dir);
    loader(&dir);
    cli(&dir);
}
