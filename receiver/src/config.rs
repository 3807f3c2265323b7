//! `recv.toml`: every key is documented in `receiver/recv.example.toml`, which the tests load.

use anyhow::{bail, Context, Result};
use diode_host::link::serial::Line;
use diode_host::link::LinkConfig;
use diode_proto::envelope::Rule;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The link's keys, shared with the other side's config (`diode_host::link::LinkConfig`).
    #[serde(skip)]
    pub line: LinkConfig,
    pub listen: Option<SocketAddr>,
    /// UDP ports to listen on: `listen`'s port and the next `ports - 1` (the sender's `ports` matches),
    /// so that a NIC's receive-side scaling spreads the frames over its queues and cores.
    #[serde(default = "d_ports")]
    pub ports: u16,
    pub inbox: PathBuf,
    pub state: PathBuf,
    pub key: PathBuf,
    pub senders: Vec<PathBuf>,
    #[serde(default = "d_rcvbuf")]
    pub rcvbuf_mb: usize,
    #[serde(default = "d_memory")]
    pub memory_mb: usize,
    #[serde(default = "d_stall")]
    pub stall_secs: u64,
    #[serde(default = "d_link_down")]
    pub link_down_secs: u64,
    #[serde(default = "d_expire")]
    pub expire_hours: u64,
    /// Seconds shards that came before their object's metadata are held for it.
    #[serde(default = "d_pending_secs")]
    pub pending_secs: u64,
    /// Objects being received at once (each a data and a state file in state/partial/).
    #[serde(default = "d_max_partial_objects")]
    pub max_partial_objects: usize,
    /// Declared bytes of the objects being received at once, MiB.
    #[serde(default = "d_max_partial_mb")]
    pub max_partial_mb: usize,
    #[serde(default = "d_replay_config")]
    pub replay_config: String,
    pub metrics_file: Option<PathBuf>,
    /// The kernel sandbox (seccomp + Landlock) after setup; off only for debugging.
    #[serde(default = "d_sandbox")]
    pub sandbox: bool,
    /// Write large objects (8 MiB and more) with O_DIRECT: whole pages go to the disk without a copy
    /// into the page cache.
    #[serde(default = "d_direct_io")]
    pub direct_io: bool,
    /// Rebuild blocks with lost data shards (Reed-Solomon) on the writer thread instead of the thread
    /// that takes frames off the socket.
    #[serde(default)]
    pub decode_on_writer: bool,
    /// Threads that open (authenticate and decrypt) frames over a UDP link ahead of the daemon's thread:
    /// "auto" (two fewer than the cores), a number, or 0 (all on the daemon's thread).
    #[serde(default)]
    pub open_threads: diode_host::threads::Threads,
    /// Threads beside the writer that rebuild blocks with lost shards (Reed-Solomon) over a UDP link:
    /// "auto" (three fewer than the cores), a number, or 0 (decoding as `decode_on_writer` says).
    #[serde(default)]
    pub decode_threads: diode_host::threads::Threads,
    /// Approval envelopes: absent means envelopes are not accepted (each stays a partial object with an
    /// error that status shows, until the section is configured and the receiver restarted).
    pub approvals: Option<ApprovalsConfig>,
}

/// `[approvals]`: what the high side trusts and requires. Its rules win over whatever the low side applied.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Trusted adapter public keys (adapter.pub); two during a key rotation.
    pub adapters: Vec<PathBuf>,
    /// Accepted envelopes, `<id>.json`.
    #[serde(default = "d_approvals_folder")]
    pub folder: PathBuf,
    /// Refused envelopes with the reason.
    #[serde(default = "d_quarantine")]
    pub quarantine: PathBuf,
    #[serde(default = "d_skew")]
    pub skew_secs: u64,
    /// Command (argv) run with each accepted envelope's JSON on stdin.
    pub hook: Option<Vec<String>>,
    #[serde(default = "d_hook_timeout")]
    pub hook_timeout_secs: u64,
    #[serde(default = "d_hook_retries")]
    pub hook_retries: u32,
    /// Per environment: minimum approvals, required roles, maximum validity.
    pub rules: BTreeMap<String, Rule>,
    /// Signed outcomes sent back to the low side through the reverse diode (`[approvals.outcomes]`).
    pub outcomes: Option<OutcomesConfig>,
}

/// `[approvals.outcomes]`: every record of the audit log goes back to the low side, signed, as an
/// `<hash>.outcome` file in the reverse link's outbox (`crate::outcomes`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct OutcomesConfig {
    /// The outbox of the reverse link's diode-send (the one with `envelope_only = true`).
    pub outbox: PathBuf,
    /// The outcome signing key (`diode-recv keygen --outcome`), mode 0600.
    pub key: PathBuf,
    /// This high side's name, as the low side shows it ("Refused on <name>: expired").
    #[serde(default = "d_outcome_name")]
    pub name: String,
}

fn d_outcome_name() -> String {
    "high side".into()
}

fn d_ports() -> u16 {
    1
}
fn d_pending_secs() -> u64 {
    30
}
fn d_max_partial_objects() -> usize {
    4096
}
fn d_max_partial_mb() -> usize {
    256 << 10
}
fn d_sandbox() -> bool {
    true
}
fn d_direct_io() -> bool {
    true
}
fn d_approvals_folder() -> PathBuf {
    "approvals".into()
}
fn d_quarantine() -> PathBuf {
    "quarantine".into()
}
fn d_skew() -> u64 {
    120
}
fn d_hook_timeout() -> u64 {
    30
}
fn d_hook_retries() -> u32 {
    3
}

fn d_rcvbuf() -> usize {
    256
}
fn d_memory() -> usize {
    48
}
fn d_stall() -> u64 {
    3
}
fn d_link_down() -> u64 {
    5
}
fn d_expire() -> u64 {
    7 * 24
}
fn d_replay_config() -> String {
    "send.toml".into()
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let (line, c) = LinkConfig::split::<Config>(&text, path)?;
        let mut c = Config { line, ..c };
        let base = path.parent().unwrap_or(Path::new("."));
        c.line.resolve(base);
        for p in [&mut c.inbox, &mut c.state, &mut c.key]
            .into_iter()
            .chain(c.senders.iter_mut())
            .chain(c.metrics_file.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(a) = c.approvals.as_mut() {
            for p in [&mut a.folder, &mut a.quarantine]
                .into_iter()
                .chain(a.adapters.iter_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            if let Some(o) = a.outcomes.as_mut() {
                for p in [&mut o.outbox, &mut o.key] {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
                let bad = o.name.is_empty()
                    || o.name.len() > 64
                    || o.name
                        .chars()
                        .any(|c| c.is_control() || diode_proto::object::invisible(c));
                if bad {
                    bail!(
                        "{}: [approvals.outcomes] name must be 1-64 printable characters",
                        path.display()
                    );
                }
            }
            if a.adapters.is_empty() {
                bail!(
                    "{}: [approvals] lists no trusted adapter key",
                    path.display()
                );
            }
            if a.hook.as_ref().is_some_and(|h| h.is_empty()) {
                bail!(
                    "{}: [approvals] hook is empty: leave it out or name a command",
                    path.display()
                );
            }
        }
        c.link_name()
            .with_context(|| format!("{}: the link", path.display()))?;
        if c.senders.is_empty() {
            bail!(
                "{}: `senders` lists no trusted sender.pub: nothing could be received",
                path.display()
            );
        }
        Ok(c)
    }

    /// The serial line, when `link = "serial"`.
    pub fn serial_line(&self) -> Result<Option<Line>> {
        self.line.serial_line()
    }

    pub fn udp_listen(&self) -> Result<SocketAddr> {
        self.listen.context(
            "listen = \"host:port\" (the UDP address to receive on) is required with link = \"udp\"",
        )
    }

    /// Every address to listen on: `listen` and the next `ports - 1` ports.
    pub fn udp_listens(&self) -> Result<Vec<SocketAddr>> {
        let first = self.udp_listen()?;
        diode_host::link::consecutive_ports(first, self.ports)
    }

    /// The link as shown in logs and status: the UDP address or `serial:DEVICE@BAUD`.
    pub fn link_name(&self) -> Result<String> {
        Ok(match self.serial_line()? {
            Some(l) => l.describe(),
            None if self.ports > 1 => {
                let l = self.udp_listens()?;
                match (l.first(), l.last()) {
                    (Some(a), Some(b)) => format!("{a} (ports {}-{})", a.port(), b.port()),
                    _ => self.udp_listen()?.to_string(),
                }
            }
            None => self.udp_listen()?.to_string(),
        })
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.state.join("partial")
    }

    pub fn status_path(&self) -> PathBuf {
        self.state.join("status.json")
    }
}
