//! virtio-net's receive queue: frames of any size arrive from the backend
//! while the driver posts random chains, with any features (mergeable
//! buffers, legacy headers, offloads).
#![no_main]

use devices::virtio::device::feature::VERSION_1;
use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;
use fuzzing::{drive, queue_size, Frames, Input, Lane};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let frames = Frames::new();
    let mut net = Net::new(frames.backend(), Some([2, 0, 0, 0, 0, 1])).expect("a net device");
    let features = input.u64() & (net.features() | VERSION_1);
    let max = net.queue_max_sizes()[0];
    let size = queue_size(input.u8(), max);
    let rx = net.activate(features).remove(0);
    let mut lanes = [Lane::new(0, size, max, features, rx)];
    drive(&mut input, &mut lanes, |input| {
        // A frame of `len` bytes (up to 64 KiB) repeating the pattern given.
        let len = usize::from(input.u16());
        let pattern = input.blob();
        let frame: Vec<u8> = match pattern {
            [] => vec![0; len],
            p => p.iter().copied().cycle().take(len).collect(),
        };
        frames.push(&frame);
    });
});
