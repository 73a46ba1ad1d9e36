//! virtio-rng (device type 4, virtio 1.0 §5.4): one request queue; every
//! device-writable buffer the driver offers is filled with bytes from the
//! host's `getrandom(2)`.

use std::io;

use vm_memory::GuestMemoryMmap;

use super::device::{QueueHandler, VirtioDevice};
use super::queue::CheckedQueue;
use super::rules::{Rule, Violation};
use crate::trace::{Detail, Value};

const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per request: a guest asking for more gets this
/// much, as the spec allows (the used length says how many).
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        4
    }
    fn name(&self) -> &'static str {
        "virtio-rng"
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn read_config(&self, _offset: usize, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _features: u64) -> Vec<Box<dyn QueueHandler>> {
        vec![Box::new(RngQueue)]
    }
}

struct RngQueue;

/// Fills `buf` from the host's entropy pool: the one way devices get
/// randomness (virtio-rng's bytes, virtio-net's MAC). The `getrandom` crate
/// retries short reads and EINTR itself.
pub(crate) fn host_random(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(entropy_error)
}

/// getrandom's error as an `io::Error`, so an errno prints as its sentence
/// ("Operation not permitted (os error 1)") rather than as "OS Error: 1",
/// which is all getrandom's own Display says without its `std` feature.
fn entropy_error(e: getrandom::Error) -> io::Error {
    match e.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    }
}

impl QueueHandler for RngQueue {
    fn process(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            if chain.readable().next().is_some() {
                return Err(Violation::new(
                    Rule::RngBufferReadable,
                    format!("request {} has device-readable buffers", chain.head),
                ));
            }
            let want = (chain.writable_len() as usize).min(MAX_REQUEST);
            let mut bytes = vec![0u8; want];
            let len = match host_random(&mut bytes) {
                Ok(()) => chain.write_all(mem, &bytes).unwrap_or(0),
                Err(e) => {
                    let why = format!("virtio-rng: getrandom failed: {e}; returning no bytes");
                    crate::guestlog::warn("virtio-rng getrandom", why);
                    0
                }
            };
            queue.add_used(mem, chain.head, len)?;
            queue.tracer().event(
                Detail::Request,
                "entropy",
                &[("bytes", Value::U(len.into()))],
                format_args!("{len} bytes of entropy"),
            );
            used = true;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_random_fills_any_length() {
        host_random(&mut []).unwrap();
        let mut a = vec![0u8; MAX_REQUEST];
        let mut b = vec![0u8; MAX_REQUEST];
        host_random(&mut a).unwrap();
        host_random(&mut b).unwrap();
        // 64 KiB of zeros, or twice the same, is not what the pool gives.
        assert!(a.iter().any(|&x| x != 0));
        assert!(
            a[MAX_REQUEST - 32..].iter().any(|&x| x != 0),
            "tail unfilled"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn entropy_errors_read_as_sentences() {
        let e = entropy_error(getrandom::Error::UNSUPPORTED);
        assert_eq!(e.to_string(), "getrandom: this target is not supported");
    }
}
