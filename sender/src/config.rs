//! `send.toml`: every key is documented in `sender/send.example.toml`, which the tests load.

use anyhow::{bail, Context, Result};
use diode_host::link::serial::Line;
use diode_host::link::{LinkConfig, LinkKind};
use diode_proto::frame::shard_size_for_mtu;
use diode_proto::Geometry;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The link's keys, shared with the other side's config (`diode_host::link::LinkConfig`).
    #[serde(skip)]
    pub line: LinkConfig,
    pub target: Option<SocketAddr>,
    pub bind: Option<SocketAddr>,
    /// UDP ports to send to: `target`'s port and the next `ports - 1`, one send each in turn (the
    /// receiver's `ports` matches), so that the receiving NIC spreads frames over its queues and cores.
    #[serde(default = "d_ports")]
    pub ports: u16,
    pub outbox: PathBuf,
    pub state: PathBuf,
    pub key: PathBuf,
    pub receiver: PathBuf,
    pub rate: Option<String>,
    /// The kernel's filter against receiving on the link; off only for debugging.
    #[serde(default = "d_true")]
    pub sandbox: bool,
    #[serde(default = "d_gso")]
    pub gso: String,
    /// Threads that seal frames over a UDP link: "auto" (two fewer than the cores), a number, or 0 (all
    /// on the daemon's thread).
    #[serde(default)]
    pub seal_threads: diode_host::threads::Threads,
    #[serde(default = "d_mtu")]
    pub mtu: usize,
    #[serde(default = "d_data")]
    pub data_shards: usize,
    pub parity_shards: Option<usize>,
    #[serde(default = "d_passes")]
    pub passes: u32,
    #[serde(default = "d_interleave")]
    pub interleave: usize,
    #[serde(default = "d_one")]
    pub announce_secs: f64,
    #[serde(default = "d_one")]
    pub heartbeat_secs: f64,
    #[serde(default = "d_rekey")]
    pub rekey_secs: u64,
    #[serde(default = "d_settle")]
    pub settle_secs: u64,
    #[serde(default = "d_true")]
    pub repeat_small: bool,
    #[serde(default)]
    pub envelope_only: bool,
    #[serde(default = "d_envelope_max")]
    pub max_envelope_bytes: usize,
    pub pipeline_key: Option<PathBuf>,
    #[serde(default = "d_days")]
    pub retention_days: u64,
    #[serde(default = "d_gb")]
    pub retention_gb: u64,
}

/// Over serial, objects up to this size travel in small shards (see `geometry_for`).
const SMALL_OBJECT: u64 = 8 << 10;
const SMALL_SHARD: usize = 256;

fn d_envelope_max() -> usize {
    16 << 10
}
fn d_true() -> bool {
    true
}
fn d_ports() -> u16 {
    1
}
fn d_gso() -> String {
    "auto".into()
}
fn d_mtu() -> usize {
    1500
}
fn d_data() -> usize {
    128
}
/// Default parity shards per block: 24 of 128 over UDP (survives 5 % random loss with a wide margin), 8
/// over serial, where a line loses a frame in hundreds (a bit error rate of 1e-7 costs one 1.5 KB frame in
/// 850) and every parity byte is line time: 8 keeps goodput near 89 % of a 115200-baud line (24: 80 %).
fn default_parity(link: LinkKind) -> usize {
    match link {
        LinkKind::Udp => 24,
        LinkKind::Serial => 8,
    }
}
fn d_passes() -> u32 {
    1
}
fn d_interleave() -> usize {
    32
}
fn d_one() -> f64 {
    1.0
}
fn d_rekey() -> u64 {
    3600
}
fn d_settle() -> u64 {
    3
}
fn d_days() -> u64 {
    7
}
fn d_gb() -> u64 {
    20
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let (line, c) = LinkConfig::split::<Config>(&text, path)?;
        let mut c = Config { line, ..c };
        // relative paths are relative to the config file
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.outbox, &mut c.state, &mut c.key, &mut c.receiver] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.line.resolve(base);
        for p in [c.pipeline_key.as_mut()].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if !(256..=diode_proto::envelope::MAX_ENVELOPE_BYTES).contains(&c.max_envelope_bytes) {
            bail!(
                "max_envelope_bytes = {}: use 256 to {}",
                c.max_envelope_bytes,
                diode_proto::envelope::MAX_ENVELOPE_BYTES
            );
        }
        c.serial_line()?;
        if c.line.link == LinkKind::Udp {
            c.udp_targets()?;
        }
        c.rate_bps()?;
        c.gso_setting()?;
        c.geometry()?;
        if c.passes == 0 || c.passes > 100 {
            bail!("passes = {} in {}: use 1 to 100", c.passes, path.display());
        }
        if c.interleave == 0 || c.interleave > 256 {
            bail!("interleave = {}: use 1 to 256 blocks", c.interleave);
        }
        Ok(c)
    }

    /// The pace: `rate`, or by default 1 Gbit/s over UDP and the line's speed over serial. A serial pace
    /// above the line is refused.
    pub fn rate_bps(&self) -> Result<u64> {
        let line = self.serial_line()?;
        let bps = match (&self.rate, &line) {
            (Some(r), _) => diode_host::pace::parse_rate(r).map_err(anyhow::Error::msg)?,
            (None, Some(l)) => u64::from(l.baud),
            (None, None) => 1_000_000_000,
        };
        if let Some(l) = &line {
            diode_host::link::serial::check_rate(l, bps)?;
        }
        Ok(bps)
    }

    /// The serial line, when `link = "serial"`.
    pub fn serial_line(&self) -> Result<Option<Line>> {
        self.line.serial_line()
    }

    pub fn udp_target(&self) -> Result<SocketAddr> {
        self.target.context(
            "target = \"host:port\" (the receiver's UDP address) is required with link = \"udp\"",
        )
    }

    /// Every address to send to: `target` and the next `ports - 1` ports.
    pub fn udp_targets(&self) -> Result<Vec<SocketAddr>> {
        diode_host::link::consecutive_ports(self.udp_target()?, self.ports)
    }

    pub fn geometry(&self) -> Result<Geometry> {
        let Some(shard) = shard_size_for_mtu(self.mtu) else {
            bail!("mtu = {} is too small for a frame (at least 208)", self.mtu);
        };
        if self.mtu > 9000 {
            bail!("mtu = {} is larger than a jumbo frame (9000)", self.mtu);
        }
        let parity = self
            .parity_shards
            .unwrap_or_else(|| default_parity(self.line.link));
        let bytes = ((self.data_shards + parity) * shard) as u64;
        if bytes > diode_proto::object::MAX_BLOCK_BYTES {
            bail!(
                "data_shards + parity_shards = {} shards of {shard} bytes make {bytes}-byte blocks: at most {} (the receiver holds a block in memory)",
                self.data_shards + parity,
                diode_proto::object::MAX_BLOCK_BYTES
            );
        }
        Geometry::new(shard, self.data_shards, parity).context("data_shards / parity_shards")
    }

    /// The geometry of an object of `size` bytes. Over a serial line a small object (an approval envelope)
    /// travels in `SMALL_SHARD`-byte shards: a 1 KiB envelope then crosses a 115200-baud line as 4 data
    /// and 4 parity frames of 256 bytes instead of 1 + 4 frames padded to the full shard size (5.9 KB on
    /// the line instead of 7.4 KB, and losing a frame costs a quarter of the loss). Each object's geometry
    /// travels in its metadata, so the receiver needs no setting.
    pub fn geometry_for(&self, size: u64) -> Result<Geometry> {
        let g = self.geometry()?;
        if self.line.link == LinkKind::Serial && size <= SMALL_OBJECT && g.shard_size > SMALL_SHARD
        {
            return Geometry::new(SMALL_SHARD, g.data_shards, g.parity_shards)
                .context("data_shards / parity_shards");
        }
        Ok(g)
    }

    /// Batch frames into one GSO send: Some(yes or no) as set, None for "auto" (decided from the egress
    /// device at start: `diode_host::link::egress`).
    pub fn gso_setting(&self) -> Result<Option<bool>> {
        match self.gso.as_str() {
            "auto" => Ok(None),
            "on" | "true" => Ok(Some(true)),
            "off" | "false" => Ok(Some(false)),
            g => bail!("gso = {g:?}: use \"auto\", \"on\" or \"off\""),
        }
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.state.join("objects")
    }

    pub fn replay_dir(&self) -> PathBuf {
        self.state.join("replay")
    }

    /// What the daemon is doing (`status.rs`), for `diode-send console` (not `status.json`: a test site
    /// shares one state folder between the sender and the receiver, whose status that is).
    pub fn status_path(&self) -> PathBuf {
        self.state.join("sending.json")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state.join("journal.jsonl")
    }
}
