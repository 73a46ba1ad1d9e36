//! virtio-rng (device type 4, virtio 1.0 §5.4): one request queue; every
//! device-writable buffer the driver offers is filled with bytes from the
//! host's `getrandom(2)`.

use vm_memory::GuestMemoryMmap;

use super::device::{QueueHandler, VirtioDevice};
use super::queue::CheckedQueue;
use super::rules::{Rule, Violation};

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

/// Fills `buf` from the host's entropy pool.
fn host_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

impl QueueHandler for RngQueue {
    fn process(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            if chain.readable().next().is_some() || chain.writable_len() == 0 {
                return Err(Violation::new(
                    Rule::RngBufferReadable,
                    format!(
                        "request {} has device-readable buffers or no writable space",
                        chain.head
                    ),
                ));
            }
            let want = (chain.writable_len() as usize).min(MAX_REQUEST);
            let mut bytes = vec![0u8; want];
            let len = match host_random(&mut bytes) {
                Ok(()) => chain.write_all(mem, &bytes).unwrap_or(0),
                Err(e) => {
                    log::warn!("virtio-rng: getrandom failed: {e}; returning no bytes");
                    0
                }
            };
            queue.add_used(mem, chain.head, len)?;
            used = true;
        }
        Ok(used)
    }
}
