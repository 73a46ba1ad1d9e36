//! virtio-rng's request queue on random chains: every writable buffer is
//! filled, readable ones end the queue, nothing else is touched.
#![no_main]

use devices::virtio::rng::Rng;
use devices::virtio::VirtioDevice;
use fuzzing::{drive, queue_size, Input, Lane};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut rng = Rng;
    let max = rng.queue_max_sizes()[0];
    let features = input.u64() & (rng.features() | devices::virtio::device::feature::VERSION_1);
    let size = queue_size(input.u8(), max);
    let handler = rng.activate(features).remove(0);
    let mut lanes = [Lane::new(0, size, max, features, handler)];
    drive(&mut input, &mut lanes, |_| {});
});
