//! The virtio 1.0 PCI transport on random sequences of register accesses
//! (common configuration, ISR, device configuration, notifications, MSI-X
//! table and PBA, PCI configuration space with its capabilities and the
//! PCI_CFG window), strict or lenient, in front of the tests' fake device
//! (whose queue workers only count their wake-ups). Queue workers start
//! and stop as the driver sets DRIVER_OK and resets.
#![no_main]

use std::sync::Arc;

use devices::virtio::transport::modern::{ModernTransport, BAR_SIZE};
use devices::virtio::transport::testing::{fake, FakeHooks};
use fuzzing::{register_op, Input, Registers};
use libfuzzer_sys::fuzz_target;

const REGS: Registers = Registers {
    // Common configuration, ISR, device configuration, notify, MSI-X
    // table, PBA.
    bases: &[0x0, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000],
    size: BAR_SIZE,
    max_width: 8,
};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let hooks = Arc::new(FakeHooks::new(input.bool()));
    let (mut dev, _log, _counts) = fake(1 + usize::from(input.u8() % 3));
    dev.features |= input.u64() & !(0xff << 24);
    let mut t = ModernTransport::new(Box::new(dev), 3, hooks.clone());
    t.config_mut().set_bar_address(0, 0xc000_0000);
    t.config_mut().set_interrupt(1, 19);
    t.connect_interrupts().expect("interrupts");
    for _ in 0..fuzzing::MAX_OPS {
        if input.is_empty() {
            break;
        }
        register_op(&mut input, &mut t, &REGS, &hooks.mem);
    }
    for v in hooks.take_violations() {
        assert!(!v.to_string().is_empty());
    }
});
