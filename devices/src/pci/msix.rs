//! MSI-X: the capability, the vector table and the pending-bit array.
//!
//! The table lives in a memory BAR the transport exposes; the guest writes
//! each vector's message address and data there and (un)masks it. The
//! device side asks [`Msix::fire`] whether a vector may be delivered now;
//! a masked vector sets its pending bit instead and is delivered when
//! unmasked. Actual delivery is the launcher's job (KVM GSI routing plus an
//! irqfd per vector), told about changes through [`MsixChange`].

/// Capability id of MSI-X.
pub const CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable and function mask.
pub const CTRL_ENABLE: u16 = 1 << 15;
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry.
pub const ENTRY_SIZE: usize = 16;
const VECTOR_MASKED: u32 = 1;

/// One vector as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

/// What a guest access changed, for the launcher to update KVM's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixChange {
    /// Vector `0` now sends this message.
    Route(u16, MsiMessage),
    /// A pending vector was unmasked: deliver it now.
    DeliverPending(u16),
}

#[derive(Debug, Clone)]
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    control: u16,
}

impl Msix {
    /// A table of `vectors` entries, all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Self {
        let n = usize::from(vectors);
        Self {
            entries: vec![
                Entry {
                    ctrl: VECTOR_MASKED,
                    ..Default::default()
                };
                n
            ],
            pending: vec![false; n],
            control: 0,
        }
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Table size in bytes (the BAR region the table needs).
    pub fn table_len(&self) -> usize {
        self.entries.len() * ENTRY_SIZE
    }

    /// PBA size in bytes (rounded to whole 64-bit words).
    pub fn pba_len(&self) -> usize {
        self.entries.len().div_ceil(64) * 8
    }

    pub fn enabled(&self) -> bool {
        self.control & CTRL_ENABLE != 0
    }

    fn masked(&self, v: usize) -> bool {
        self.control & CTRL_FUNCTION_MASK != 0 || self.entries[v].ctrl & VECTOR_MASKED != 0
    }

    /// The message vector `v` sends, if the guest set one up.
    pub fn message(&self, v: u16) -> Option<MsiMessage> {
        let e = self.entries.get(usize::from(v))?;
        Some(MsiMessage {
            address: u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo),
            data: e.data,
        })
    }

    /// Updates message control from a capability write; returns vectors
    /// that become deliverable because the function mask was lifted.
    pub fn set_control(&mut self, value: u16) -> Vec<MsixChange> {
        let was_masked: Vec<bool> = (0..self.entries.len()).map(|v| self.masked(v)).collect();
        self.control = value & (CTRL_ENABLE | CTRL_FUNCTION_MASK);
        self.unmasked_pending(&was_masked)
    }

    pub fn control(&self) -> u16 {
        self.control
    }

    fn unmasked_pending(&mut self, was_masked: &[bool]) -> Vec<MsixChange> {
        let mut out = Vec::new();
        for (v, &was) in was_masked.iter().enumerate() {
            if was && !self.masked(v) && self.pending[v] && self.enabled() {
                self.pending[v] = false;
                out.push(MsixChange::DeliverPending(v as u16));
            }
        }
        out
    }

    /// Reads the table at `offset`.
    pub fn read_table(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i;
            *b = self
                .entries
                .get(o / ENTRY_SIZE)
                .map(|e| {
                    let word = [e.addr_lo, e.addr_hi, e.data, e.ctrl][o % ENTRY_SIZE / 4];
                    word.to_le_bytes()[o % 4]
                })
                .unwrap_or(0);
        }
    }

    /// Writes the table at `offset`; returns route updates and deliveries.
    pub fn write_table(&mut self, offset: usize, data: &[u8]) -> Vec<MsixChange> {
        let was_masked: Vec<bool> = (0..self.entries.len()).map(|v| self.masked(v)).collect();
        let mut touched = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let o = offset + i;
            let Some(e) = self.entries.get_mut(o / ENTRY_SIZE) else {
                continue;
            };
            let word = match o % ENTRY_SIZE / 4 {
                0 => &mut e.addr_lo,
                1 => &mut e.addr_hi,
                2 => &mut e.data,
                _ => &mut e.ctrl,
            };
            let shift = (o % 4) * 8;
            *word = (*word & !(0xff << shift)) | (u32::from(b) << shift);
            if !touched.contains(&(o / ENTRY_SIZE)) {
                touched.push(o / ENTRY_SIZE);
            }
        }
        let mut out: Vec<MsixChange> = touched
            .into_iter()
            .filter_map(|v| {
                self.message(v as u16)
                    .map(|m| MsixChange::Route(v as u16, m))
            })
            .collect();
        out.extend(self.unmasked_pending(&was_masked));
        out
    }

    /// Reads the pending-bit array at `offset`.
    pub fn read_pba(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset + i;
            *b = (0..8)
                .filter(|bit| self.pending.get(byte * 8 + bit).copied().unwrap_or(false))
                .fold(0, |acc, bit| acc | 1 << bit);
        }
    }

    /// Decides whether vector `v` may be delivered now; if it is masked the
    /// pending bit is set and false returned.
    pub fn fire(&mut self, v: u16) -> bool {
        let v = usize::from(v);
        if v >= self.entries.len() || !self.enabled() {
            return false;
        }
        if self.masked(v) {
            self.pending[v] = true;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_routes_and_holds_masked_vectors_pending() {
        let mut m = Msix::new(3);
        assert_eq!((m.table_len(), m.pba_len()), (48, 8));
        assert!(!m.fire(0), "disabled");
        m.set_control(CTRL_ENABLE);
        let changes = m.write_table(16, &[0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0, 0, 0]);
        assert_eq!(
            changes,
            vec![MsixChange::Route(
                1,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x41
                }
            )]
        );
        assert!(!m.fire(1), "still masked");
        let mut pba = [0u8; 1];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b010);
        let changes = m.write_table(16 + 12, &[0, 0, 0, 0]);
        assert!(
            changes.contains(&MsixChange::DeliverPending(1)),
            "{changes:?}"
        );
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        assert!(m.fire(1));
        let mut b = [0u8; 4];
        m.read_table(16, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xfee0_1000);
    }

    #[test]
    fn function_mask_defers_every_vector() {
        let mut m = Msix::new(2);
        m.write_table(12, &[0, 0, 0, 0]);
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(!m.fire(0));
        assert_eq!(
            m.set_control(CTRL_ENABLE),
            vec![MsixChange::DeliverPending(0)]
        );
        assert!(m.fire(0));
        assert!(!m.fire(7), "no such vector");
    }
}
