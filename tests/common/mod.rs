//! Shared test harness: finds guest images, runs the launcher binary as a
//! child with its output captured line by line, and waits for markers with
//! a deadline (never sleep-and-hope). A guest still running when its
//! [`Guest`] is dropped is killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where prebuilt guest images are: `$LAUNCHER_GUEST_IMAGES`, the shared
/// folder beside the checkout, or what `guest-images/build.sh` built.
pub fn guest_images() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("LAUNCHER_GUEST_IMAGES").map(PathBuf::from),
        Some(manifest.join("../shared/guest-images")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/launcher-guest-images")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("vmlinux").is_file())
}

/// The guest-image directory, or a panic that says how to get one: tests
/// that boot Linux must not pass by silently doing nothing.
pub fn require_images() -> PathBuf {
    guest_images().expect(
        "no guest images: set LAUNCHER_GUEST_IMAGES, put shared/guest-images beside \
         the checkout, or run guest-images/build.sh",
    )
}

/// True on a host whose KVM emulates guest kernel mode (see docs/kvm-host.md).
pub fn nested_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

#[derive(Default)]
struct Output {
    /// (from stderr?, line)
    lines: Vec<(bool, String)>,
    open_streams: usize,
}

/// A running launcher.
pub struct Guest {
    child: Child,
    out: Arc<(Mutex<Output>, Condvar)>,
    /// How far `wait_for` has read, so markers are found in order.
    cursor: usize,
    status: Option<ExitStatus>,
}

pub fn launcher() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_launcher"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Guest {
    pub fn start(args: &[&str]) -> Guest {
        let mut cmd = launcher();
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Like [`Guest::start`], with the launcher's stdin a pipe that
    /// [`Guest::write_stdin`] writes to.
    pub fn start_with_stdin(args: &[&str]) -> Guest {
        let mut cmd = launcher();
        cmd.stdin(Stdio::piped()).args(args);
        Self::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Guest {
        let mut child = cmd.spawn().expect("cannot start the launcher binary");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        for (is_err, stream) in [(false, stdout), (true, stderr)] {
            let Some(stream) = stream else { continue };
            out.0.lock().unwrap().open_streams += 1;
            let out = out.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf)
                                .trim_end_matches(['\r', '\n'])
                                .to_string();
                            if std::env::var_os("LAUNCHER_TEST_ECHO").is_some() {
                                eprintln!("{}{line}", if is_err { "[err] " } else { "" });
                            }
                            out.0.lock().unwrap().lines.push((is_err, line));
                            out.1.notify_all();
                        }
                    }
                }
                out.0.lock().unwrap().open_streams -= 1;
                out.1.notify_all();
            });
        }
        Guest {
            child,
            out,
            cursor: 0,
            status: None,
        }
    }

    /// Waits until a line (stdout or stderr) after the last match contains
    /// `needle`; returns it. Panics with the whole output on timeout or if
    /// the launcher closes its output first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut out = lock.lock().unwrap();
        loop {
            if let Some(i) = out.lines[self.cursor..]
                .iter()
                .position(|(_, l)| l.contains(needle))
            {
                self.cursor += i + 1;
                return out.lines[self.cursor - 1].1.clone();
            }
            let now = Instant::now();
            if out.open_streams == 0 || now >= deadline {
                let why = if now >= deadline {
                    "timed out"
                } else {
                    "output ended"
                };
                let dump = dump(&out.lines);
                drop(out);
                panic!("{why} waiting for {needle:?} ({timeout:?}); output:\n{dump}");
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Waits for the launcher to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for the launcher") {
                self.status = Some(s);
                // Let the readers drain what the launcher wrote last.
                let (lock, cv) = &*self.out;
                let mut out = lock.lock().unwrap();
                while out.open_streams > 0 {
                    out = cv.wait_timeout(out, Duration::from_secs(5)).unwrap().0;
                }
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "launcher still running after {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `bytes` to the launcher's stdin, which must have been
    /// spawned as `Stdio::piped()`, and flushes.
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .expect("the launcher's stdin is not a pipe");
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .expect("cannot write to the launcher's stdin");
    }

    /// Closes the launcher's stdin pipe (end of file for the launcher).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far, stderr lines marked.
    pub fn output(&self) -> String {
        dump(&self.out.0.lock().unwrap().lines)
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        let out = self.out.0.lock().unwrap();
        out.lines
            .iter()
            .filter(|(e, _)| !*e)
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }

    pub fn stderr(&self) -> String {
        let out = self.out.0.lock().unwrap();
        out.lines
            .iter()
            .filter(|(e, _)| *e)
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }
}

fn dump(lines: &[(bool, String)]) -> String {
    lines
        .iter()
        .map(|(e, l)| format!("{}{l}\n", if *e { "[stderr] " } else { "" }))
        .collect()
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A file in a fresh temporary directory that is removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "launcher-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
pub mod test_guest;
