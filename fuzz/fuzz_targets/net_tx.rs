//! virtio-net's transmit queue: random chains as frames, with any
//! features, headers the input writes, and a backend that may refuse;
//! every frame reaching the backend is checked for size
//! (`fuzzing::Frames`).
#![no_main]

use std::io::ErrorKind;

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
    let max = net.queue_max_sizes()[1];
    let size = queue_size(input.u8(), max);
    let tx = net.activate(features).remove(1);
    let mut lanes = [Lane::new(1, size, max, features, tx)];
    drive(&mut input, &mut lanes, |input| {
        frames.refuse(match input.u8() % 3 {
            0 => None,
            1 => Some(ErrorKind::WouldBlock),
            _ => Some(ErrorKind::BrokenPipe),
        });
    });
    let _ = frames.sent();
});
