//! The receiver's sandbox policy (the mechanism is `diode_host::sandbox`): Landlock before the first
//! thread is started (a Landlock domain covers the calling thread and what it starts later), limiting the
//! filesystem to the inbox, state, approvals and quarantine folders plus read-only keys and config; then,
//! once the link is open, a seccomp filter on every thread so that nothing in this process can open a
//! socket or send. `sandbox = false` in recv.toml turns both off, for debugging only.

use crate::config::Config;
use anyhow::{Context, Result};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// Names a test-only probe run right after the sandbox is installed: `send=HOST:PORT` tries to send a
/// datagram from a new socket and from the link socket, `write=PATH` tries to create a file. Each
/// outcome is logged ("sandbox probe"); the daemon carries on.
const PROBE_VAR: &str = "DIODE_TEST_SANDBOX_PROBE";

pub struct Sandbox {
    on: bool,
}

/// Landlock. Call before any thread is started and after the keys are loaded; creates the folders it
/// allows (Landlock rules name existing paths).
pub fn restrict_files(cfg: &Config, config: &Path) -> Result<Sandbox> {
    if !cfg.sandbox {
        tracing::warn!("sandbox = false: no seccomp filter and no Landlock; for debugging only");
        return Ok(Sandbox { on: false });
    }
    let mut rw: Vec<PathBuf> = vec![cfg.inbox.clone(), cfg.state.clone(), cfg.partial_dir()];
    let mut ro: Vec<PathBuf> = vec![cfg.key.clone(), config.to_path_buf()];
    ro.extend(cfg.senders.iter().cloned());
    if let Some(a) = &cfg.approvals {
        rw.extend([
            crate::approvals::state_dir(cfg),
            a.folder.clone(),
            a.quarantine.clone(),
        ]);
        ro.extend(a.adapters.iter().cloned());
        if let Some(o) = &a.outcomes {
            rw.push(o.outbox.clone());
            ro.push(o.key.clone());
        }
    }
    // the metrics file is replaced atomically: a temporary file beside it, then a rename
    if let Some(dir) = cfg.metrics_file.as_deref().and_then(Path::parent) {
        rw.push(dir.to_path_buf());
    }
    for d in &rw {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let dev: Vec<&Path> = cfg.line.device.as_deref().into_iter().collect();
    let rw: Vec<&Path> = rw.iter().map(PathBuf::as_path).collect();
    let ro: Vec<&Path> = ro.iter().map(PathBuf::as_path).collect();
    let enforced = diode_host::sandbox::restrict_files(&rw, &ro, &dev)?;
    tracing::info!(
        landlock = %enforced,
        read_write = ?rw,
        "sandbox: filesystem limited to the inbox, state, approvals and quarantine folders (keys and config read-only)"
    );
    Ok(Sandbox { on: true })
}

impl Sandbox {
    /// Seccomp on every thread, once the link is open. `link` is the UDP socket (none on a serial line).
    pub fn forbid_sending(&self, link: Option<BorrowedFd<'_>>) -> Result<()> {
        if self.on {
            let denied = diode_host::sandbox::forbid_sending()?;
            tracing::info!(refused = %denied,
                "sandbox: seccomp filter on every thread: sending and new sockets are refused (EPERM)");
        }
        probe(link);
        Ok(())
    }
}

fn probe(link: Option<BorrowedFd<'_>>) {
    let Ok(spec) = std::env::var(PROBE_VAR) else {
        return;
    };
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "ALLOWED".to_string(),
        Err(e) => format!("refused: {e}"),
    };
    for item in spec.split(',') {
        if let Some(to) = item.strip_prefix("send=") {
            let Ok(to) = to.parse::<std::net::SocketAddr>() else {
                tracing::warn!(spec = item, "sandbox probe: not an address");
                continue;
            };
            let r = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"probe", to));
            tracing::warn!(probe = "send from a new socket", result = %outcome(r.map(|_| ())), "sandbox probe");
            if let Some(fd) = link {
                let r = socket2::SockRef::from(&fd).send_to(b"probe", &to.into());
                tracing::warn!(probe = "send on the link socket", result = %outcome(r.map(|_| ())), "sandbox probe");
            }
        } else if let Some(path) = item.strip_prefix("write=") {
            let r = std::fs::write(path, b"probe");
            tracing::warn!(probe = "write outside the allowed folders", path, result = %outcome(r), "sandbox probe");
        }
    }
}
