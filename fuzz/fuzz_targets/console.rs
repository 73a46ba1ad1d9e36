//! virtio-console's two queues, each in its own guest memory: receive
//! (terminal input into the guest's buffers) and transmit (the guest's
//! output to a writer that may fail), on random chains.
#![no_main]

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::virtio::console::{Console, InputQueue};
use devices::virtio::device::feature::VERSION_1;
use devices::virtio::VirtioDevice;
use fuzzing::{drive, queue_size, Input, Lane};
use libfuzzer_sys::fuzz_target;

/// Standard output behind the console's writer thread: takes everything
/// unless told to fail, as a closed pipe would.
struct Stdout(Arc<AtomicBool>);

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.load(Ordering::Relaxed) {
            Err(io::ErrorKind::BrokenPipe.into())
        } else {
            Ok(buf.len())
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let keys = InputQueue::new().expect("eventfds");
    let broken = Arc::new(AtomicBool::new(false));
    // A small buffer, so transmit chains also wait for the writer.
    let output = devices::output::Output::spawn(Box::new(Stdout(broken.clone())), 256)
        .expect("the writer thread");
    let mut console = Console::new(keys.clone(), output);
    let features = input.u64() & (console.features() | VERSION_1);
    let max = console.queue_max_sizes()[0];
    let mut handlers = console.activate(features).into_iter();
    let (Some(rx), Some(tx)) = (handlers.next(), handlers.next()) else {
        panic!("the console has two queues");
    };
    let rx_size = queue_size(input.u8(), max);
    let tx_size = queue_size(input.u8(), max);
    let mut lanes = [
        Lane::new(0, rx_size, max, features, rx),
        Lane::new(1, tx_size, max, features, tx),
    ];
    drive(&mut input, &mut lanes, |input| match input.u8() % 3 {
        0 => {
            keys.push(input.blob());
        }
        1 => broken.store(input.bool(), Ordering::Relaxed),
        _ => {
            let _ = keys.room().read();
        }
    });
    let _ = keys.in_use();
});
