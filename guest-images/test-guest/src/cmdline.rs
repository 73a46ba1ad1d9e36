//! The kernel command line, wherever the boot protocol put it
//! ([`crate::bootinfo`] finds it).

/// Longest command line we read (Linux's COMMAND_LINE_SIZE).
const MAX_LEN: usize = 2048;

/// Whitespace-separated words, `key=value` or bare flags.
#[derive(Clone, Copy)]
pub struct Cmdline(&'static str);

impl Cmdline {
    /// The NUL-terminated command line at guest-physical `addr` (empty if
    /// `addr` is 0 or not identity-mapped).
    ///
    /// # Safety
    /// `addr` must be what the boot protocol named, and the command line
    /// must stay unchanged for the rest of the run.
    pub unsafe fn at(addr: u64) -> Cmdline {
        if addr == 0 || addr >= crate::bootinfo::MAPPED_LIMIT {
            return Cmdline("");
        }
        let p = addr as *const u8;
        let mut len = 0;
        while len < MAX_LEN && *p.add(len) != 0 {
            len += 1;
        }
        Cmdline::new(core::slice::from_raw_parts(p, len))
    }

    /// A command line from bytes; stops at the first byte that is not UTF-8.
    pub fn new(bytes: &'static [u8]) -> Cmdline {
        match core::str::from_utf8(bytes) {
            Ok(s) => Cmdline(s),
            Err(e) => {
                let (ok, _) = bytes.split_at(e.valid_up_to());
                Cmdline(core::str::from_utf8(ok).unwrap_or(""))
            }
        }
    }

    /// The whole command line.
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// The value of the last `key=value` word (later words override).
    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.0
            .split_ascii_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .next_back()
    }

    /// A numeric `key=value` (decimal, or hex with 0x).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    /// Whether a bare word `flag` (or `flag=...`) is present.
    pub fn has(&self, flag: &str) -> bool {
        self.0
            .split_ascii_whitespace()
            .any(|w| w == flag || w.split_once('=').is_some_and(|(k, _)| k == flag))
    }
}
