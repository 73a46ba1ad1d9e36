//! `CheckedQueue` over descriptor tables and rings the input writes
//! straight into guest memory (RAM with a hole in it, as the launcher's
//! has at 3 GiB), interleaved with pops, used-ring returns and interrupt
//! decisions. Whatever the memory holds, a popped chain is a non-empty
//! list of buffers wholly in RAM, readable before writable, no longer than
//! the queue, at most 2^32 bytes; and a queue that reported a violation
//! reports the same one from then on.
#![no_main]

use devices::virtio::queue::CheckedQueue;
use fuzzing::{queue_size, Input};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Two adjacent regions, a hole, a third region: 60 KiB of RAM below 64 KiB.
const RANGES: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x2000), (0xb000, 0x5000)];
const MAX: u16 = 256;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let ranges = RANGES.map(|(a, l)| (GuestAddress(a), l));
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
    let size = queue_size(input.u8(), MAX);
    let (desc, avail, used) = (
        u64::from(input.u16()),
        u64::from(input.u16()),
        u64::from(input.u16()),
    );
    let bits = input.u8();
    let features = u64::from(bits & 1) << VIRTIO_RING_F_INDIRECT_DESC
        | u64::from(bits >> 1 & 1) << VIRTIO_RING_F_EVENT_IDX;
    let index = input.u16();
    let mut q = match CheckedQueue::new(index, MAX, size, desc, avail, used, features, &mem) {
        Ok(q) => q,
        Err(v) => {
            assert!(!v.to_string().is_empty());
            return;
        }
    };
    assert_eq!(q.size(), size);
    let mut avail_idx: u16 = 0;
    let mut broken = None;
    for _ in 0..fuzzing::MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 9 {
            // Raw bytes anywhere (writes into the hole fail, as for a guest).
            0 => {
                let at = input.u16();
                let _ = mem.write_slice(input.blob(), GuestAddress(at.into()));
            }
            // A descriptor as a driver writes it.
            1 => {
                let i = u64::from(input.u16() % size);
                let d = input.bytes(16);
                let _ = mem.write_slice(d, GuestAddress(desc + 16 * i));
            }
            // An indirect table entry (or any 16 bytes) at an address.
            2 => {
                let at = input.u16();
                let d = input.bytes(16);
                let _ = mem.write_slice(d, GuestAddress(at.into()));
            }
            // Offer a head: the next avail slot, then avail.idx.
            3 => {
                let head = input.u16();
                let slot = avail + 4 + 2 * u64::from(avail_idx % size);
                let _ = mem.write_obj(head, GuestAddress(slot));
                avail_idx = avail_idx.wrapping_add(1);
                let _ = mem.write_obj(avail_idx, GuestAddress(avail + 2));
            }
            4 => pop(&mut q, &mem, &mut broken, &mut input),
            5 => {
                let (head, len) = (input.u16(), input.u32());
                if let Err(v) = q.add_used(&mem, head, len) {
                    assert!(!v.to_string().is_empty());
                }
            }
            6 => {
                q.needs_interrupt(&mem);
            }
            7 => {
                let _ = q.check_fresh(&mem);
            }
            _ => {
                for v in q.take_findings() {
                    assert!(!v.to_string().is_empty());
                }
            }
        }
    }
    pop(&mut q, &mem, &mut broken, &mut input);
});

fn pop(
    q: &mut CheckedQueue,
    mem: &GuestMemoryMmap,
    broken: &mut Option<devices::virtio::Violation>,
    input: &mut Input,
) {
    match q.pop(mem) {
        Ok(Some(chain)) => {
            assert!(broken.is_none(), "a broken queue gave a chain");
            assert!(chain.head < q.size());
            assert!(!chain.buffers.is_empty(), "an empty chain");
            assert!(chain.buffers.len() <= usize::from(q.size()));
            let mut seen_writable = false;
            let mut total = 0u64;
            for b in &chain.buffers {
                assert!(
                    mem.check_range(b.addr, b.len as usize, Permissions::ReadWrite),
                    "buffer {b:?} is not all RAM"
                );
                assert!(!(seen_writable && !b.writable), "readable after writable");
                seen_writable |= b.writable;
                total += u64::from(b.len);
            }
            assert!(total <= 1 << 32);
            // The helpers devices use on a chain stay inside it.
            let limit = usize::from(input.u16());
            let read = chain.read_all(mem, limit).expect("buffers are in RAM");
            assert_eq!(read.len() as u64, chain.readable_len().min(limit as u64));
            let data = input.blob();
            let n = chain.write_all(mem, data).expect("buffers are in RAM");
            assert_eq!(u64::from(n), chain.writable_len().min(data.len() as u64));
        }
        Ok(None) => assert!(broken.is_none(), "a broken queue went quiet"),
        Err(v) => {
            assert!(!v.to_string().is_empty());
            if let Some(first) = broken {
                assert_eq!(&v, first, "a broken queue changed its violation");
            }
            *broken = Some(v);
        }
    }
}
