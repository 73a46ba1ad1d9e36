//! virtio-blk's request queue on random chains over a small disk image
//! (read-only or not, on tmpfs): every request type, any layout, any
//! sector, with the device's answers checked by the handler invariants
//! (`fuzzing::Driver::run`).
#![no_main]

use std::fs::OpenOptions;
use std::io::Write;

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::device::feature::VERSION_1;
use devices::virtio::VirtioDevice;
use fuzzing::{drive, queue_size, scratch, Input, Lane};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let read_only = input.bool();
    // Up to 64 sectors; the image starts with the input's bytes.
    let sectors = u64::from(input.u8() % 65);
    let path = scratch("disk");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("a scratch disk image");
        f.write_all(input.blob()).expect("writing the image");
        f.set_len(sectors * 512).expect("sizing the image");
    }
    let serial = input
        .bool()
        .then(|| String::from_utf8_lossy(input.blob()).into_owned());
    let mut blk = Block::open(BlockConfig {
        path,
        read_only,
        serial,
    })
    .expect("opening the image");
    let features = input.u64() & (blk.features() | VERSION_1);
    if input.bool() {
        // The driver's writeback choice (CONFIG_WCE), before DRIVER_OK.
        blk.write_config(32, &[input.u8() & 1]);
    }
    let max = blk.queue_max_sizes()[0];
    let size = queue_size(input.u8(), max);
    let handler = blk.activate(features).remove(0);
    let mut lanes = [Lane::new(0, size, max, features, handler)];
    drive(&mut input, &mut lanes, |input| {
        // The driver flips writeback while requests run.
        blk.write_config(32, &[input.u8() & 1]);
    });
});
