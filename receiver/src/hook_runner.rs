//! The approval hook runs outside the receiver's sandbox. Seccomp filters and Landlock domains are
//! inherited across fork and exec, and the hook talks to a deploy system (sockets, other files), so the
//! daemon starts this helper — itself, re-executed as the hidden `hook-runner` subcommand — before it
//! sandboxes itself. The daemon writes one JSON line per accepted envelope on the helper's stdin; the
//! helper runs the hook (timeout, retries, audit: `approvals::run_hook`) and exits when the pipe closes.

use crate::approvals::{self, run_hook};
use crate::config::Config;
use anyhow::{Context, Result};
use diode_host::audit::AuditLog;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The daemon's end of the pipe to the helper: what `Approvals` hands accepted envelopes to.
#[derive(Clone)]
pub struct HookRunner {
    pipe: Arc<Mutex<ChildStdin>>,
}

/// One hook to run: the envelope id and its JSON, as the hook gets it on stdin.
#[derive(Serialize, Deserialize)]
struct Job {
    id: String,
    envelope: String,
}

/// Start the helper if `[approvals] hook` is set. Call before the sandbox is installed.
pub fn start(config: &Path, cfg: &Config) -> Result<Option<HookRunner>> {
    if cfg
        .approvals
        .as_ref()
        .and_then(|a| a.hook.as_ref())
        .is_none()
    {
        return Ok(None);
    }
    let exe =
        std::env::current_exe().context("cannot find this program to start the hook runner")?;
    let mut child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("hook-runner")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the approval hook runner")?;
    tracing::info!(
        pid = child.id(),
        "approval hooks run in a helper process outside the sandbox"
    );
    let stdin = child
        .stdin
        .take()
        .context("the approval hook runner has no input pipe")?;
    // the helper is not waited for: it lives as long as this process and ends when the pipe closes
    Ok(Some(HookRunner {
        pipe: Arc::new(Mutex::new(stdin)),
    }))
}

impl HookRunner {
    /// Hand an accepted envelope to the helper. Never blocks reception: the pipe is written from a thread.
    pub fn submit(&self, id: &str, envelope: &str) {
        let job = Job {
            id: id.to_string(),
            envelope: envelope.to_string(),
        };
        let Ok(mut line) = serde_json::to_string(&job) else {
            return;
        };
        line.push('\n');
        let id = id.to_string();
        let pipe = self.pipe.clone();
        std::thread::spawn(move || {
            let sent = match pipe.lock() {
                Ok(mut pipe) => pipe.write_all(line.as_bytes()).and_then(|_| pipe.flush()),
                Err(_) => Err(std::io::Error::other("the hook runner's pipe is poisoned")),
            };
            if let Err(e) = sent {
                tracing::error!(id, error = %e, "cannot hand the approval to the hook runner; the approval stays in approvals/ (restart diode-recv)");
            }
        });
    }
}

/// The helper's side (`diode-recv hook-runner`): run each job from stdin on its own thread, as the daemon
/// did before it was sandboxed; at end of input, wait for the hooks in flight, then exit.
pub fn serve(cfg: &Config) -> Result<()> {
    let Some(a) = cfg.approvals.as_ref() else {
        return Ok(());
    };
    let Some(hook) = a.hook.clone() else {
        return Ok(());
    };
    let timeout = Duration::from_secs(a.hook_timeout_secs);
    let retries = a.hook_retries;
    let audit_path = approvals::audit_log(cfg).path().to_path_buf();
    let mut running = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading the daemon's pipe")?;
        let Ok(job) = serde_json::from_str::<Job>(&line) else {
            tracing::warn!("hook runner: ignoring a malformed job line");
            continue;
        };
        let (hook, audit) = (hook.clone(), AuditLog::new(&audit_path));
        running.push(std::thread::spawn(move || {
            run_hook(&hook, &job.envelope, &job.id, timeout, retries, &audit)
        }));
        running.retain(|t| !t.is_finished());
    }
    for t in running {
        let _ = t.join();
    }
    Ok(())
}
