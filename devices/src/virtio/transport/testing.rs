//! What the transport tests share: [`VmHooks`] without KVM, a fake device
//! whose queue handlers count their calls, and register access as a
//! driver does it. Used by the core's tests, both register maps' tests
//! and vmmci's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{BarRegisters, VmHooks};
use crate::pci::msix::MsiMessage;
use crate::virtio::device::{feature, QueueHandler, VirtioDevice};
use crate::virtio::queue::CheckedQueue;
use crate::virtio::rules::{Rule, Violation};

pub const RAM: usize = 1 << 20;

pub struct FakeHooks {
    pub mem: GuestMemoryMmap,
    pub lenient: bool,
    pub violations: Mutex<Vec<Violation>>,
    /// A clone of the INTx irqfd handed out, to count pulses.
    pub intx: Mutex<Option<EventFd>>,
    /// Registered ioeventfds (clones) by address or port, and the
    /// addresses or ports unregistered since.
    pub ioevents: Mutex<Vec<(u64, EventFd)>>,
    pub unregistered: Mutex<Vec<u64>>,
    /// MSI routes set: (vector, message).
    pub routes: Mutex<Vec<(u16, MsiMessage)>>,
}

impl FakeHooks {
    pub fn new(lenient: bool) -> Self {
        Self {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap(),
            lenient,
            violations: Mutex::new(Vec::new()),
            intx: Mutex::new(None),
            ioevents: Mutex::new(Vec::new()),
            unregistered: Mutex::new(Vec::new()),
            routes: Mutex::new(Vec::new()),
        }
    }

    /// The rules broken so far, emptying the list.
    pub fn take(&self) -> Vec<Rule> {
        self.take_violations().into_iter().map(|v| v.rule).collect()
    }

    /// The violations reported so far, emptying the list.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut *self.violations.lock().unwrap())
    }

    /// INTx pulses since the last call.
    pub fn pulses(&self) -> u64 {
        let g = self.intx.lock().unwrap();
        g.as_ref().and_then(|fd| fd.read().ok()).unwrap_or(0)
    }

    /// The addresses (or ports) with an ioeventfd registered now.
    pub fn ioevent_addresses(&self) -> Vec<u64> {
        self.ioevents
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| *a)
            .collect()
    }

    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.ioevents.lock().unwrap().push((addr, fd.try_clone()?));
        Ok(())
    }

    fn unregister(&self, addr: u64) -> std::io::Result<()> {
        self.ioevents.lock().unwrap().retain(|(a, _)| *a != addr);
        self.unregistered.lock().unwrap().push(addr);
        Ok(())
    }
}

impl VmHooks for FakeHooks {
    fn memory(&self) -> GuestMemoryMmap {
        self.mem.clone()
    }
    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.register(fd, addr)
    }
    fn unregister_ioevent(&self, _: &EventFd, addr: u64) -> std::io::Result<()> {
        self.unregister(addr)
    }
    fn register_ioevent_pio(&self, fd: &EventFd, port: u16) -> std::io::Result<()> {
        self.register(fd, port.into())
    }
    fn unregister_ioevent_pio(&self, _: &EventFd, port: u16) -> std::io::Result<()> {
        self.unregister(port.into())
    }
    fn msi_irqfd(&self, _: u8, _: u16) -> std::io::Result<EventFd> {
        EventFd::new(libc::EFD_NONBLOCK)
    }
    fn set_msi_route(&self, _: u8, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
        self.routes.lock().unwrap().push((vector, msg));
        Ok(())
    }
    fn intx_irqfd(&self, _: u8) -> std::io::Result<EventFd> {
        let fd = EventFd::new(libc::EFD_NONBLOCK)?;
        *self.intx.lock().unwrap() = Some(fd.try_clone()?);
        Ok(fd)
    }
    fn report(&self, violation: &Violation) {
        self.violations.lock().unwrap().push(violation.clone());
    }
    fn lenient(&self) -> bool {
        self.lenient
    }
}

/// Register-level access to a transport's BAR, as a driver does it.
pub trait Regs {
    fn r(&mut self, offset: u64, width: usize) -> u32;
    fn w(&mut self, offset: u64, width: usize, v: u32);
}

impl<T: BarRegisters> Regs for T {
    fn r(&mut self, offset: u64, width: usize) -> u32 {
        let mut b = [0u8; 4];
        self.bar_read(offset, &mut b[..width]);
        u32::from_le_bytes(b)
    }
    fn w(&mut self, offset: u64, width: usize, v: u32) {
        self.bar_write(offset, &v.to_le_bytes()[..width]);
    }
}

/// Reads every offset in `offsets` at widths 1, 2 and 4: a read at a
/// register's own offset and width (`field` gives them for the register
/// containing an offset) is accepted, any other is `rule` and reads 0.
pub fn reads_need_exact_offset_and_width(
    t: &mut impl Regs,
    hooks: &FakeHooks,
    offsets: std::ops::Range<u64>,
    rule: Rule,
    field: impl Fn(u64) -> Option<(u64, usize)>,
) {
    for off in offsets {
        for width in [1, 2, 4] {
            let exact = field(off) == Some((off, width));
            let v = t.r(off, width);
            let rules = hooks.take();
            if exact {
                assert!(rules.is_empty(), "{width}-byte read at {off:#x}: {rules:?}");
            } else {
                assert_eq!(rules, [rule], "{width}-byte read at {off:#x}");
                assert_eq!(v, 0, "{width}-byte read at {off:#x}");
            }
        }
    }
}

/// What a [`Fake`] device saw.
#[derive(Default)]
pub struct Log {
    pub activated: Option<u64>,
    pub resets: usize,
}

/// A device with `n` queues of 64 whose handlers count their calls.
pub struct Fake {
    pub features: u64,
    pub sizes: Vec<u16>,
    pub config: Vec<u8>,
    pub log: Arc<Mutex<Log>>,
    pub counts: Arc<Vec<AtomicUsize>>,
    /// Makes the handlers block as in stuck host I/O.
    pub stall: Option<Arc<Stall>>,
}

/// Host I/O that hangs until released, for a [`Fake`]'s handlers: the
/// first `calls` calls of `process` block outside the queue's gate (or,
/// [`Stall::inside`], inside it, as a cached read the kernel makes wait).
pub struct Stall {
    calls: AtomicUsize,
    inside: bool,
    released: Mutex<bool>,
    cv: Condvar,
    /// Calls that blocked, and those that found the device reset when the
    /// block ended (they then record a finding and claim a used buffer,
    /// which the worker must drop).
    pub stuck: AtomicUsize,
    pub revoked: AtomicUsize,
}

impl Stall {
    pub fn new(calls: usize) -> Arc<Stall> {
        Self::with(calls, false)
    }

    /// Blocks inside the gate.
    pub fn inside(calls: usize) -> Arc<Stall> {
        Self::with(calls, true)
    }

    fn with(calls: usize, inside: bool) -> Arc<Stall> {
        Arc::new(Stall {
            calls: AtomicUsize::new(calls),
            inside,
            released: Mutex::new(false),
            cv: Condvar::new(),
            stuck: AtomicUsize::new(0),
            revoked: AtomicUsize::new(0),
        })
    }

    /// Ends every block, now and later.
    pub fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn block(&self) {
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.cv.wait(released).unwrap();
        }
    }

    fn process(&self, queue: &mut CheckedQueue) -> bool {
        let take = |n: usize| n.checked_sub(1);
        if self
            .calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
            .is_err()
        {
            return false;
        }
        self.stuck.fetch_add(1, Ordering::SeqCst);
        if self.inside {
            self.block();
            if queue.gate().may_answer() {
                return false;
            }
        } else if queue.gate().outside(|| self.block()).is_ok() {
            return false;
        }
        self.revoked.fetch_add(1, Ordering::SeqCst);
        queue.record(Rule::NotifyBadQueue, "a stale worker's finding".into());
        true
    }
}

struct Counting(Arc<Vec<AtomicUsize>>, usize, Option<Arc<Stall>>);

impl QueueHandler for Counting {
    fn process(&mut self, q: &mut CheckedQueue, _: &GuestMemoryMmap) -> Result<bool, Violation> {
        self.0[self.1].fetch_add(1, Ordering::SeqCst);
        Ok(self.2.as_ref().is_some_and(|s| s.process(q)))
    }
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u16 {
        4
    }
    fn name(&self) -> &'static str {
        "fake"
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn read_config(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset + i).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>> {
        self.log.lock().unwrap().activated = Some(features);
        (0..self.sizes.len())
            .map(|q| {
                let h = Counting(self.counts.clone(), q, self.stall.clone());
                Box::new(h) as Box<dyn QueueHandler>
            })
            .collect()
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().resets += 1;
    }
}

/// A [`Fake`] with `queues` queues offering VERSION_1 and bits 0 and 2,
/// with what it logs and its handlers' call counts.
pub fn fake(queues: usize) -> (Fake, Arc<Mutex<Log>>, Arc<Vec<AtomicUsize>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let counts = Arc::new((0..queues).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
    let dev = Fake {
        features: feature::VERSION_1 | 0b101,
        sizes: vec![64; queues],
        config: (0..40).map(|i| 0xa0 + i as u8).collect(),
        log: log.clone(),
        counts: counts.clone(),
        stall: None,
    };
    (dev, log, counts)
}

/// Polls `done` until it holds, failing the test after 5 s.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
