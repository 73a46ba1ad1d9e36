//! The 8250/16550A UART at COM1 (0x3f8, IRQ 4), on `vm-superio`.
//!
//! Guest writes to the transmit register go to the launcher's console
//! output (`crate::output`: a bounded buffer in front of stdout that drops
//! what does not fit, so a stdout nobody reads never stalls a vCPU); bytes typed on stdin are queued into the receive FIFO by the
//! launcher's event loop (its stdin subscriber) through [`InputSink`], and
//! [`RoomForInput`] tells it when the guest drained the FIFO. Interrupts
//! go out through an eventfd that the launcher registers as an irqfd on
//! GSI 4: Linux's tty layer waits for the transmitter-empty interrupt
//! before it sends more, so without it user-space output would never
//! appear.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, BusDevice};

/// Raises the UART's interrupt line by writing to an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the launcher's stdin subscriber that the receive FIFO drained and
/// it may push more.
pub struct RoomForInput(pub EventFd);

impl SerialEvents for RoomForInput {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // An eventfd counter cannot overflow from a few wake-ups.
        let _ = self.0.write(1);
    }
}

type Uart = Serial<IrqTrigger, RoomForInput, Box<dyn Write + Send>>;

/// COM1 as a bus device.
pub struct SerialPort {
    uart: Uart,
}

impl SerialPort {
    /// `irq` is signalled for every UART interrupt, `room` whenever the guest
    /// empties the receive FIFO; output goes to `out`.
    pub fn new(irq: EventFd, room: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::with_events(IrqTrigger(irq), RoomForInput(room), out),
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART's registers are bytes; a wider access reads the first one.
        data.fill(0);
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, b) {
                crate::guestlog::warn(
                    "serial output",
                    format_args!("serial: cannot pass a byte on: {e:?}"),
                );
            }
        }
    }
}

/// The input side of a [`SerialPort`], for the thread that reads stdin.
#[derive(Clone)]
pub struct InputSink {
    port: Arc<Mutex<SerialPort>>,
}

impl InputSink {
    pub fn new(port: Arc<Mutex<SerialPort>>) -> Self {
        Self { port }
    }

    /// Queues as many of `bytes` as the FIFO takes; returns how many.
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut port = lock(&self.port);
        if port.uart.fifo_capacity() == 0 {
            return 0;
        }
        port.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_writer_and_raises_thre_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let room = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = Sink::default();
        let mut port = SerialPort::new(irq.try_clone().unwrap(), room, Box::new(out.clone()));
        port.write(1, &[0x02]); // IER: transmitter-empty interrupt on
        assert!(irq.read().unwrap() >= 1);
        let mut iir = [0u8];
        port.read(2, &mut iir); // the driver acknowledges by reading IIR
        assert_eq!(iir[0] & 0x0f, 0x02, "THR empty pending");
        port.write(0, b"h");
        port.write(0, b"i");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert!(irq.read().is_ok());
    }

    #[test]
    fn input_is_read_back_and_wakes_the_feeder() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let room = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let port = Arc::new(Mutex::new(SerialPort::new(
            irq,
            room.try_clone().unwrap(),
            Box::new(std::io::sink()),
        )));
        let sink = InputSink::new(port.clone());
        assert_eq!(sink.push(b"ok"), 2);
        let mut b = [0u8];
        port.lock().unwrap().read(5, &mut b);
        assert_eq!(b[0] & 1, 1, "LSR data ready");
        port.lock().unwrap().read(0, &mut b);
        assert_eq!(b[0], b'o');
        port.lock().unwrap().read(0, &mut b);
        assert_eq!(b[0], b'k');
        assert!(room.read().unwrap() >= 1);
    }
}
