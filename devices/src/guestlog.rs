//! Messages a guest can cause as often as it likes (a warning from the
//! strict checker, a `--lenient` violation, an I/O error per request, a
//! write to a read-only register): each cause is printed once, then only
//! counted, so a misbehaving guest cannot flood the host's stderr. `-v`
//! (debug level) still shows every repeat.
//!
//! One limiter for the whole launcher: every device reports through
//! [`warn`] with a cause that names what happened and where (rule and
//! device, say), and [`suppressed`] tells the life cycle how many repeats
//! went unprinted.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Mutex;

static SEEN: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

/// Counts one occurrence of `cause`; true for the first.
pub fn first(cause: &str) -> bool {
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let n = seen
        .get_or_insert_with(HashMap::new)
        .entry(cause.to_string())
        .or_insert(0);
    *n += 1;
    *n == 1
}

/// Prints `launcher: {message}` on stderr the first time `cause` happens;
/// repeats go to the debug log only.
pub fn warn(cause: &str, message: impl Display) {
    if first(cause) {
        eprintln!("launcher: {message}");
    } else {
        log::debug!("{message} (again)");
    }
}

/// Causes that happened more than once, with how many repeats were not
/// printed, most first.
pub fn suppressed() -> Vec<(String, u64)> {
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<(String, u64)> = seen
        .iter()
        .flatten()
        .filter(|(_, &n)| n > 1)
        .map(|(c, &n)| (c.clone(), n - 1))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_printed_once_then_counted() {
        assert!(first("guestlog-test a"));
        assert!(!first("guestlog-test a"));
        assert!(first("guestlog-test b"));
        warn("guestlog-test a", "third");
        let mine: Vec<_> = suppressed()
            .into_iter()
            .filter(|(c, _)| c.starts_with("guestlog-test"))
            .collect();
        assert_eq!(mine, [("guestlog-test a".to_string(), 2)]);
    }
}
