//! virtio-console (device type 3, virtio 1.0 §5.3), one port, no
//! multiport: queue 0 (receiveq) carries what the user types to the guest,
//! queue 1 (transmitq) carries the guest's output to the launcher's
//! stdout, through `crate::output`'s writer thread, holding the guest's
//! buffers until their bytes are written (backpressure). It is always present, as in lguest, so `console=hvc0` works.
//!
//! Input arrives from the launcher's event loop (the terminal's stdin
//! subscriber) through [`InputQueue`]: bytes wait in a bounded shared
//! buffer and an eventfd wakes the receive queue's worker, which copies
//! them into whatever buffers the driver has posted; with no buffers posted
//! they wait until the driver posts some (its notification wakes the worker
//! again). Once the worker has taken bytes it signals a second eventfd,
//! [`InputQueue::room`], so the event loop knows more input fits.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::output::Output;
use crate::trace::{Detail, Value};
use crate::virtio::device::{QueueHandler, VirtioDevice};
use crate::virtio::queue::{Chain, CheckedQueue};
use crate::virtio::rules::{Rule, Violation};

const QUEUE_SIZE: u16 = 128;
/// Bytes copied from guest memory to stdout at a time.
const TX_CHUNK: usize = 64 * 1024;
/// Input held for the guest at most; beyond it the terminal keeps the
/// rest and waits for [`InputQueue::room`].
const INPUT_LIMIT: usize = 64 * 1024;

/// Input waiting for the guest, shared with the launcher's event loop.
pub struct InputQueue {
    pending: Mutex<VecDeque<u8>>,
    /// Written by [`InputQueue::push`]: wakes the receive queue's worker.
    ready: EventFd,
    /// Written by the worker when it took bytes, and when the console comes
    /// into use: wakes whoever feeds input, as there may be room now.
    room: EventFd,
    /// The guest has written to this console: it is the one in use, so
    /// the terminal's input belongs here.
    in_use: AtomicBool,
}

impl InputQueue {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            pending: Mutex::new(VecDeque::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK)?,
            room: EventFd::new(libc::EFD_NONBLOCK)?,
            in_use: AtomicBool::new(false),
        }))
    }

    /// Queues `bytes` for the guest; returns how many fit.
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut p = lock(&self.pending);
        let n = bytes.len().min(INPUT_LIMIT - p.len());
        p.extend(&bytes[..n]);
        drop(p);
        if n > 0 {
            let _ = self.ready.write(1);
        }
        n
    }

    /// True once the guest's driver has sent output through this console.
    pub fn in_use(&self) -> bool {
        self.in_use.load(Ordering::Acquire)
    }

    /// Readable once the guest took queued input (or the console came
    /// into use) since the last read: more may fit now. Never blocks to
    /// read (non-blocking eventfd).
    pub fn room(&self) -> &EventFd {
        &self.room
    }
}

pub struct Console {
    input: Arc<InputQueue>,
    output: Output,
}

impl Console {
    pub fn new(input: Arc<InputQueue>, output: Output) -> Self {
        Self { input, output }
    }
}

impl VirtioDevice for Console {
    fn feature_names(&self) -> &'static [(u32, &'static str)] {
        &[
            (0, "CONSOLE_F_SIZE"),
            (1, "CONSOLE_F_MULTIPORT"),
            (2, "CONSOLE_F_EMERG_WRITE"),
        ]
    }
    fn device_type(&self) -> u16 {
        3
    }
    fn name(&self) -> &'static str {
        "virtio-console"
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, _offset: usize, data: &mut [u8]) {
        // cols, rows, max_nr_ports: meaningful only with features we do
        // not offer.
        data.fill(0);
    }
    /// `struct virtio_console_config` (§5.3.4): every field belongs to a
    /// feature this device does not offer (SIZE, bit 0; MULTIPORT, 1;
    /// EMERG_WRITE, 2), so any access is `ConfigFieldNotOffered`. Linux
    /// 6.1 reads `cols` and `rows` without checking SIZE only on a
    /// configuration interrupt, which this console raises only under
    /// `--lenient` after a violation.
    fn config_fields(&self) -> &'static [crate::virtio::device::ConfigField] {
        use crate::virtio::device::ConfigField;
        const SIZE: u64 = 1 << 0;
        const MULTIPORT: u64 = 1 << 1;
        const EMERG_WRITE: u64 = 1 << 2;
        const FIELDS: &[ConfigField] = &[
            ConfigField::with("cols", 0, 2, 2, SIZE),
            ConfigField::with("rows", 2, 2, 2, SIZE),
            ConfigField::with("max_nr_ports", 4, 4, 4, MULTIPORT),
            ConfigField::with("emerg_wr", 8, 4, 4, EMERG_WRITE),
        ];
        FIELDS
    }
    fn activate(&mut self, _features: u64) -> Vec<Box<dyn QueueHandler>> {
        vec![
            Box::new(Receive {
                input: self.input.clone(),
            }),
            Box::new(Transmit {
                output: self.output.clone(),
                input: self.input.clone(),
                copying: None,
                waiting: VecDeque::new(),
            }),
        ]
    }
}

/// receiveq: terminal input into the guest's buffers.
struct Receive {
    input: Arc<InputQueue>,
}

impl QueueHandler for Receive {
    fn process(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        let _ = self.input.ready.read();
        let mut used = false;
        loop {
            let mut pending = lock(&self.input.pending);
            if pending.is_empty() {
                break;
            }
            let Some(chain) = queue.pop(mem)? else {
                break;
            };
            if chain.readable().next().is_some() {
                return Err(Violation::new(
                    Rule::ConsoleBufferDirection,
                    format!("receive buffer {} is device-readable", chain.head),
                ));
            }
            let n = (chain.writable_len() as usize).min(pending.len());
            let bytes: Vec<u8> = pending.drain(..n).collect();
            drop(pending);
            let len = chain.write_all(mem, &bytes).unwrap_or(0);
            queue.add_used(mem, chain.head, len)?;
            queue.tracer().event(
                Detail::Request,
                "input",
                &[("bytes", Value::U(len.into()))],
                format_args!("{len} bytes of input to the guest"),
            );
            used = true;
        }
        if used {
            // An eventfd counter cannot overflow from a few wake-ups.
            let _ = self.input.room.write(1);
        }
        Ok(used)
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.input.ready.as_raw_fd())
    }
}

/// transmitq: the guest's output to stdout, with backpressure. A chain is
/// copied into [`Output`]'s bounded buffer as room allows and goes back to
/// the guest only once the writer thread has written its last byte: a
/// driver that waits for its buffers (Linux's hvc does) waits for the
/// reader, and a chain that does not fit waits in the available ring.
struct Transmit {
    output: Output,
    input: Arc<InputQueue>,
    /// The chain being copied into the output buffer, if it did not fit.
    copying: Option<Copying>,
    /// Chains wholly copied, with the output position of their last byte,
    /// oldest first: used once [`Output::written`] gets there.
    waiting: VecDeque<(u16, u64)>,
}

/// Where the copy of a chain's readable bytes stands.
struct Copying {
    chain: Chain,
    /// Readable buffer being copied, and bytes of it done.
    buffer: usize,
    done: u64,
    /// Output position after the chain's bytes taken so far.
    end: u64,
}

impl Transmit {
    /// Copies as much of `c` as the output takes; true once all of it went.
    fn copy(&self, c: &mut Copying, mem: &GuestMemoryMmap) -> bool {
        let mut chunk = Vec::new();
        loop {
            let Some(b) = c.chain.readable().nth(c.buffer).copied() else {
                return true;
            };
            if c.done >= u64::from(b.len) {
                c.buffer += 1;
                c.done = 0;
                continue;
            }
            // Bounded pieces: a chain may describe gigabytes (descriptors
            // can alias), which must not become one host allocation.
            let n = (u64::from(b.len) - c.done)
                .min(TX_CHUNK as u64)
                .min(self.output.room() as u64) as usize;
            if n == 0 {
                return false;
            }
            chunk.resize(n, 0);
            let read = b
                .addr
                .checked_add(c.done)
                .map(|a| mem.read_slice(&mut chunk, a));
            if !matches!(read, Some(Ok(()))) {
                // Validated buffers lie in RAM; should it fail anyway, the
                // rest of this buffer is skipped, not retried forever.
                log::trace!("virtio-console: unreadable transmit buffer skipped");
                c.buffer += 1;
                c.done = 0;
                continue;
            }
            let (took, end) = self.output.push(&chunk);
            if took > 0 {
                c.done += took as u64;
                c.end = end;
            }
            if took < n {
                return false;
            }
        }
    }
}

impl QueueHandler for Transmit {
    fn process(
        &mut self,
        queue: &mut CheckedQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Violation> {
        let _ = self.output.progress().read();
        let mut used = false;
        loop {
            let written = self.output.written();
            while let Some(&(head, end)) = self.waiting.front() {
                if end > written {
                    break;
                }
                self.waiting.pop_front();
                queue.add_used(mem, head, 0)?;
                used = true;
            }
            if self.copying.is_none() {
                let Some(chain) = queue.pop(mem)? else {
                    break;
                };
                if chain.writable().next().is_some() {
                    return Err(Violation::new(
                        Rule::ConsoleBufferDirection,
                        format!("transmit buffer {} is device-writable", chain.head),
                    ));
                }
                // Claim the terminal's input before the output is visible:
                // a user (or script) answering the guest's first line must
                // reach this console, not the UART.
                if !self.input.in_use.swap(true, Ordering::AcqRel) {
                    // Input held back for the 8250 may go here now.
                    let _ = self.input.room.write(1);
                }
                let end = self.output.push(&[]).1;
                self.copying = Some(Copying {
                    chain,
                    buffer: 0,
                    done: 0,
                    end,
                });
            }
            let Some(mut c) = self.copying.take() else {
                break;
            };
            if !self.copy(&mut c, mem) {
                // Full: the writer's progress eventfd brings us back.
                self.copying = Some(c);
                break;
            }
            let bytes = c.chain.readable_len();
            queue.tracer().event(
                Detail::Request,
                "output",
                &[("bytes", Value::U(bytes))],
                format_args!("{bytes} bytes of output from the guest"),
            );
            self.waiting.push_back((c.chain.head, c.end));
        }
        Ok(used)
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.output.progress().as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use crate::output::testing::{gated, wait_written};
    use crate::virtio::queue::testing::{mock_queue, mock_queue_at};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestAddress;

    use super::*;

    use crate::virtio::queue::testing::QSIZE;

    const BUF: u64 = 0x2000;

    fn readable(fd: &EventFd) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn room_is_signalled_once_the_guest_takes_input_or_uses_the_console() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (vq, mut rxq) = mock_queue(&mem, 0, QSIZE, 0);
        let input = InputQueue::new().unwrap();
        // Writes wait for the test, so "not written yet" below is so.
        let (output, go, _out) = gated(crate::output::CAPACITY);
        let mut console = Console::new(input.clone(), output.clone());
        let mut handlers = console.activate(0).into_iter();
        let mut receive = handlers.next().unwrap();

        assert_eq!(input.push(&vec![b'x'; INPUT_LIMIT + 10]), INPUT_LIMIT);
        assert_eq!(input.push(b"y"), 0, "full");
        assert!(!receive.process(&mut rxq, &mem).unwrap(), "no buffers yet");
        assert!(!readable(input.room()), "nothing taken, no room");

        let d = Descriptor::new(BUF, 100, VRING_DESC_F_WRITE as u16, 0);
        vq.desc_table().store(0, RawDescriptor::from(d)).unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        assert!(receive.process(&mut rxq, &mem).unwrap());
        assert!(readable(input.room()));
        input.room().read().unwrap();
        assert_eq!(input.push(&[b'z'; 200]), 100, "the room the guest made");

        // The console coming into use also means room (for input that
        // waited for the 8250).
        assert!(!input.in_use());
        let mut transmit = handlers.next().unwrap();
        let (txq_vq, mut txq) = mock_queue_at(&mem, GuestAddress(0x4000), 1, QSIZE, 0x8000, 0);
        let d = Descriptor::new(BUF, 4, 0, 0);
        txq_vq
            .desc_table()
            .store(0, RawDescriptor::from(d))
            .unwrap();
        txq_vq.avail().ring().ref_at(0).unwrap().store(0);
        txq_vq.avail().idx().store(1);
        assert!(
            !transmit.process(&mut txq, &mem).unwrap(),
            "not written yet"
        );
        assert!(input.in_use(), "claimed when taken, before it is written");
        assert!(readable(input.room()));
        go.send(()).unwrap();
        wait_written(&output, 4);
        assert!(transmit.process(&mut txq, &mem).unwrap());
    }

    /// A transmitq with `chains` one-buffer chains of `len` bytes each at
    /// BUF + i * len, made available.
    fn transmit_chains(
        mem: &GuestMemoryMmap,
        chains: u16,
        len: u32,
    ) -> (
        virtio_queue::mock::MockSplitQueue<'_, GuestMemoryMmap>,
        CheckedQueue,
    ) {
        let (vq, q) = mock_queue_at(mem, GuestAddress(0x4000), 1, QSIZE, TX_USED, 0);
        for i in 0..chains {
            let addr = BUF + u64::from(i) * u64::from(len);
            let bytes: Vec<u8> = (0..len)
                .map(|j| b'a' + ((i as u32 + j) % 26) as u8)
                .collect();
            mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            let d = Descriptor::new(addr, len, 0, 0);
            vq.desc_table().store(i, RawDescriptor::from(d)).unwrap();
            vq.avail().ring().ref_at(i.into()).unwrap().store(i);
        }
        vq.avail().idx().store(chains);
        (vq, q)
    }

    /// Where [`transmit_chains`] puts the used ring.
    const TX_USED: u64 = 0x8000;

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(TX_USED + 2)).unwrap()
    }

    #[test]
    fn transmit_buffers_are_held_until_their_bytes_are_written() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // Room for 100 bytes: three chains of 60 do not fit at once.
        let (output, go, out) = gated(100);
        let mut console = Console::new(InputQueue::new().unwrap(), output.clone());
        let mut transmit = console.activate(0).into_iter().nth(1).unwrap();
        let (_vq, mut txq) = transmit_chains(&mem, 3, 60);

        assert!(!transmit.process(&mut txq, &mem).unwrap());
        assert_eq!(used_idx(&mem), 0, "nothing written, nothing given back");

        // Each write lets one chunk (everything buffered) through.
        let mut expected = Vec::new();
        for i in 0..3u32 {
            expected.extend((0..60).map(|j| b'a' + ((i + j) % 26) as u8));
        }
        let mut rounds = 0;
        while used_idx(&mem) < 3 {
            rounds += 1;
            assert!(rounds < 100, "transmit stalled");
            let before = out.lock().unwrap().len() as u64;
            go.send(()).unwrap();
            wait_written(&output, before + 1);
            transmit.process(&mut txq, &mem).unwrap();
        }
        assert_eq!(*out.lock().unwrap(), expected, "every byte, in order");
    }

    #[test]
    fn a_chain_larger_than_the_buffer_goes_out_in_pieces() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (output, go, out) = gated(16);
        let mut console = Console::new(InputQueue::new().unwrap(), output.clone());
        let mut transmit = console.activate(0).into_iter().nth(1).unwrap();
        let (_vq, mut txq) = transmit_chains(&mem, 1, 100);
        let mut rounds = 0;
        while used_idx(&mem) < 1 {
            rounds += 1;
            assert!(rounds < 100, "transmit stalled");
            transmit.process(&mut txq, &mem).unwrap();
            if used_idx(&mem) == 0 {
                let before = out.lock().unwrap().len() as u64;
                go.send(()).unwrap();
                wait_written(&output, before + 1);
            }
        }
        assert_eq!(out.lock().unwrap().len(), 100);
        let len: u32 = mem.read_obj(GuestAddress(TX_USED + 8)).unwrap();
        assert_eq!(len, 0, "the device wrote nothing into it");
    }
}
