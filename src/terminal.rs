//! The launcher's terminal: raw mode while the guest runs, restored on
//! every way out, and the thread that feeds stdin to the guest's console.
//!
//! Raw mode (no echo, no line editing, no signals from keys) lets the guest
//! own the keyboard; so Ctrl-C goes to the guest, and, as in lguest, three
//! of them within a second stop the launcher. The saved settings live in a
//! global so that [`restore`] works from any exit path, the panic hook
//! included, without threading a guard through every function.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use devices::{VmControl, VmRequest};

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

const CTRL_C: u8 = 0x03;
const ESCAPE_PRESSES: usize = 3;
const ESCAPE_WINDOW: Duration = Duration::from_secs(1);
/// How long typed input waits for a guest that reads none before it is
/// dropped.
const INPUT_STALL: Duration = Duration::from_secs(2);

/// Puts stdin in raw mode if it is a terminal and remembers how it was.
pub fn make_raw() {
    // SAFETY: termios is plain data filled in by tcgetattr before use.
    unsafe {
        if libc::isatty(0) != 1 {
            return;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return;
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        t.c_iflag &= !(libc::ICRNL | libc::IXON);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        libc::tcsetattr(0, libc::TCSANOW, &t);
    }
}

/// Puts the terminal back as it was; harmless to call more than once.
pub fn restore() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: `t` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
}

/// Counts Ctrl-C presses; true once three fall within a second.
#[derive(Default)]
struct Escape(Vec<Instant>);

impl Escape {
    fn press(&mut self, now: Instant) -> bool {
        self.0.retain(|t| now.duration_since(*t) < ESCAPE_WINDOW);
        self.0.push(now);
        self.0.len() >= ESCAPE_PRESSES
    }
}

/// Where console input goes: returns how many bytes it took; blocks the
/// caller (via `wait`) when the guest's buffer is full.
pub trait ConsoleInput: Send + 'static {
    fn push(&self, bytes: &[u8]) -> usize;
    /// Waits (briefly, at most about 100 ms) for the guest to read input.
    fn wait_for_room(&self);
}

/// Reads stdin for the life of the VM and passes it to `input`.
pub fn spawn_input_thread(input: impl ConsoleInput, control: VmControl) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            let mut escape = Escape::default();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return, // EOF: the guest just gets no more input.
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("stdin: {e}; console input stops");
                        return;
                    }
                };
                let chunk = &buf[..n];
                if chunk
                    .iter()
                    .filter(|&&b| b == CTRL_C)
                    .any(|_| escape.press(Instant::now()))
                {
                    control.request(VmRequest::Escape);
                    return;
                }
                // Feed the guest; if it takes nothing for a while (hung, or
                // not reading this console) drop the rest, so that stdin —
                // and with it the Ctrl-C escape — keeps being read.
                let mut rest = chunk;
                let mut stalled_since = None;
                while !rest.is_empty() {
                    let took = input.push(rest);
                    rest = &rest[took..];
                    if rest.is_empty() {
                        break;
                    }
                    if took > 0 {
                        stalled_since = None;
                    }
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= INPUT_STALL {
                        log::debug!(
                            "console: guest reads no input; {} bytes dropped",
                            rest.len()
                        );
                        break;
                    }
                    input.wait_for_room();
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no console input thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_ctrl_c_within_a_second_escape() {
        let mut e = Escape::default();
        let t0 = Instant::now();
        assert!(!e.press(t0));
        assert!(!e.press(t0 + Duration::from_millis(300)));
        assert!(e.press(t0 + Duration::from_millis(600)));
        let mut e = Escape::default();
        assert!(!e.press(t0));
        assert!(!e.press(t0 + Duration::from_millis(900)));
        assert!(!e.press(t0 + Duration::from_millis(1500)));
    }
}
