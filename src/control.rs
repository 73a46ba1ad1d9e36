//! The control socket (`--control PATH`): one command per line from
//! scripts, one line back.
//!
//! | command | effect | reply |
//! |---|---|---|
//! | `shutdown` | as SIGTERM: through vmmci if its driver is up, else stop at once (exit 143) | `ok: …` |
//! | `reboot` | as SIGHUP | `ok: …` |
//! | `status` | nothing | `running boot=N vmmci=up|down|absent` |
//!
//! The socket file is created at start (an existing socket file is
//! replaced, any other file is an error) and removed again on exit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use devices::virtio::vmmci::VmmciControl;
use devices::VmControl;

use crate::error::{Error, Result};
use crate::lifecycle::{ask_guest, boot_number, HostAsk};

/// Binds `path`; the listener is served by [`serve`].
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::Io {
                what: format!(
                    "use {} as the control socket: it exists and is not a socket",
                    path.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(Error::io(format!(
        "create the control socket {}",
        path.display()
    )))
}

/// Answers connections for the life of the VM, on a thread of its own.
pub fn serve(
    listener: UnixListener,
    path: PathBuf,
    control: VmControl,
    vmmci: Option<VmmciControl>,
) {
    REMOVE_ON_EXIT.get_or_init(|| path);
    let spawned = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = session(stream, &control, vmmci.as_ref()) {
                    log::debug!("control: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no control socket thread: {e}");
    }
}

static REMOVE_ON_EXIT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Removes the socket file; called on every way out of the launcher.
pub fn cleanup() {
    if let Some(p) = REMOVE_ON_EXIT.get() {
        let _ = std::fs::remove_file(p);
    }
}

fn session(
    stream: UnixStream,
    control: &VmControl,
    vmmci: Option<&VmmciControl>,
) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let reply = match line.trim() {
            "shutdown" => format!(
                "ok: {}",
                ask_guest(
                    HostAsk::Shutdown {
                        signal: libc::SIGTERM
                    },
                    "control socket",
                    control,
                    vmmci
                )
            ),
            "reboot" => format!(
                "ok: {}",
                ask_guest(HostAsk::Reboot, "control socket", control, vmmci)
            ),
            "status" => {
                let v = match vmmci {
                    None => "absent",
                    Some(v) if v.driver_ok() => "up",
                    Some(_) => "down",
                };
                format!("running boot={} vmmci={v}", boot_number())
            }
            "" => continue,
            other => format!("error: unknown command '{other}' (known: shutdown, reboot, status)"),
        };
        writeln!(out, "{reply}")?;
    }
    Ok(())
}
