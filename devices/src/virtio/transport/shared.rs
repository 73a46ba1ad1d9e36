//! What both virtio PCI transports do the same way: report a rule the
//! driver broke (and, under `--lenient`, flag DEVICE_NEEDS_RESET and tell
//! the driver with a configuration interrupt), and start a queue's worker.
//! The transports differ only in register layouts and in how a queue's
//! notification reaches its worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::VmHooks;
use crate::bus::{lock, BusDevice};
use crate::pci::PciFunction;
use crate::virtio::device::{status, QueueHandler};
use crate::virtio::interrupt::{Interrupt, ISR_CONFIG};
use crate::virtio::queue::CheckedQueue;
use crate::virtio::rules::{Rule, Violation};
use crate::virtio::worker::{ViolationSink, Worker, WorkerSetup};

/// Reports a function's violations; cheap to clone into its workers.
#[derive(Clone)]
pub struct Reporter {
    hooks: Arc<dyn VmHooks>,
    /// "virtio-rng 00:03.0".
    label: String,
    /// DEVICE_NEEDS_RESET, set by the transport or by any of its workers.
    needs_reset: Arc<AtomicBool>,
}

impl Reporter {
    pub fn new(hooks: Arc<dyn VmHooks>, label: String) -> Self {
        Self {
            hooks,
            label,
            needs_reset: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Reports `v` (strict mode ends the VM there); under `--lenient` marks
    /// the device as needing a reset and signals the configuration vector
    /// (`config` = the interrupt and the vector the driver chose for it).
    pub fn raise(&self, v: Violation, config: Option<(&Interrupt, u16)>) {
        self.hooks.report(&v.on_device(self.label.clone()));
        if self.hooks.lenient() {
            self.needs_reset.store(true, Ordering::SeqCst);
            if let Some((irq, vector)) = config {
                irq.signal(vector, ISR_CONFIG);
            }
        }
    }

    /// `status` as the driver reads it, with DEVICE_NEEDS_RESET if flagged.
    pub fn status(&self, status: u8) -> u8 {
        if self.needs_reset.load(Ordering::SeqCst) {
            status | status::DEVICE_NEEDS_RESET
        } else {
            status
        }
    }

    /// Forgets DEVICE_NEEDS_RESET: the driver reset the device.
    pub fn clear(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// The same reporting for a worker thread.
    fn sink(&self, irq: Arc<Interrupt>, config_vector: u16) -> ViolationSink {
        let me = self.clone();
        Arc::new(move |v: Violation| me.raise(v, Some((&irq, config_vector))))
    }
}

/// One queue ready to run, as a transport hands it to [`start_worker`].
pub struct QueueWork {
    pub index: u16,
    pub queue: CheckedQueue,
    pub handler: Box<dyn QueueHandler>,
    /// MSI-X vector for used-buffer interrupts (NO_VECTOR for INTx).
    pub vector: u16,
}

/// Starts the worker thread for `work` under `device_name`; returns it with
/// the eventfd the transport must make the queue's notification signal.
pub fn start_worker(
    device_name: &str,
    work: QueueWork,
    interrupt: &Arc<Interrupt>,
    config_vector: u16,
    reporter: &Reporter,
    mem: &GuestMemoryMmap,
) -> std::io::Result<(Worker, EventFd)> {
    let kick = EventFd::new(libc::EFD_NONBLOCK)?;
    let worker = Worker::spawn(WorkerSetup {
        name: format!("{device_name}-q{}", work.index),
        queue: work.queue,
        handler: work.handler,
        kick: kick.try_clone()?,
        vector: work.vector,
        interrupt: interrupt.clone(),
        violations: reporter.sink(interrupt.clone(), config_vector),
        mem: mem.clone(),
    })?;
    Ok((worker, kick))
}

/// A transport's BAR registers, as its bus device sees them.
pub trait BarRegisters: Send {
    fn bar_read(&mut self, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, offset: u64, data: &[u8]);
}

/// One transport reached two ways: its BAR through a bus ([`Bar`]) and its
/// configuration space through the PCI root ([`Function`]).
pub struct Bar<T>(pub Arc<Mutex<T>>);

impl<T: BarRegisters> BusDevice for Bar<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).bar_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).bar_write(offset, data)
    }
}

/// See [`Bar`].
pub struct Function<T>(pub Arc<Mutex<T>>);

impl<T: PciFunction> PciFunction for Function<T> {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        lock(&self.0).config_read(offset, data)
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        lock(&self.0).config_write(offset, data)
    }
}

/// The driver-status rules both transports share (§2.1.2, §3.1.1), for a
/// write of `new` over `old` (non-zero: zero is a reset). The first rule
/// broken, with its detail.
pub fn status_kept(old: u8, new: u8) -> Result<(), (Rule, String)> {
    let what = || format!("status {old:#04x} -> {new:#04x}");
    if old & !new & !status::DEVICE_NEEDS_RESET != 0 {
        return Err((Rule::StatusClearedBit, what()));
    }
    if old & status::FAILED != 0 {
        return Err((Rule::StatusFailedThenMore, what()));
    }
    Ok(())
}

/// Status bits must be added in order: DRIVER after ACKNOWLEDGE, and the
/// given steps before FEATURES_OK and DRIVER_OK (a legacy driver has no
/// FEATURES_OK step, so its transport passes `None` for it); the driver
/// never sets DEVICE_NEEDS_RESET.
pub fn status_in_order(
    old: u8,
    new: u8,
    features_ok_needs: Option<u8>,
    driver_ok_needs: u8,
) -> Result<(), (Rule, String)> {
    let added = new & !old;
    let needs = |bit: u8, before: u8| added & bit != 0 && new & before != before;
    if needs(status::DRIVER, status::ACKNOWLEDGE)
        || features_ok_needs.is_some_and(|before| needs(status::FEATURES_OK, before))
        || needs(status::DRIVER_OK, driver_ok_needs)
        || added & status::DEVICE_NEEDS_RESET != 0
    {
        return Err((
            Rule::StatusOrder,
            format!("status {old:#04x} -> {new:#04x}"),
        ));
    }
    Ok(())
}
