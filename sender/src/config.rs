//! `send.toml`: every key is documented in `sender/send.example.toml`, which the tests load.

use anyhow::{bail, Context, Result};
use diode_proto::frame::shard_size_for_mtu;
use diode_proto::Geometry;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub target: SocketAddr,
    pub bind: Option<SocketAddr>,
    pub outbox: PathBuf,
    pub state: PathBuf,
    pub key: PathBuf,
    pub receiver: PathBuf,
    #[serde(default = "d_rate")]
    pub rate: String,
    #[serde(default = "d_gso")]
    pub gso: String,
    #[serde(default = "d_mtu")]
    pub mtu: usize,
    #[serde(default = "d_data")]
    pub data_shards: usize,
    #[serde(default = "d_parity")]
    pub parity_shards: usize,
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
    #[serde(default = "d_days")]
    pub retention_days: u64,
    #[serde(default = "d_gb")]
    pub retention_gb: u64,
}

fn d_rate() -> String {
    "1Gbit".into()
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
fn d_parity() -> usize {
    24
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
        let mut c: Config = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        // relative paths are relative to the config file
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.outbox, &mut c.state, &mut c.key, &mut c.receiver] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.rate_bps()?;
        c.use_gso()?;
        c.geometry()?;
        if c.passes == 0 || c.passes > 100 {
            bail!("passes = {} in {}: use 1 to 100", c.passes, path.display());
        }
        if c.interleave == 0 || c.interleave > 256 {
            bail!("interleave = {}: use 1 to 256 blocks", c.interleave);
        }
        Ok(c)
    }

    pub fn rate_bps(&self) -> Result<u64> {
        diode_host::pace::parse_rate(&self.rate).map_err(anyhow::Error::msg)
    }

    pub fn geometry(&self) -> Result<Geometry> {
        let Some(shard) = shard_size_for_mtu(self.mtu) else {
            bail!("mtu = {} is too small for a frame (at least 208)", self.mtu);
        };
        if self.mtu > 9000 {
            bail!("mtu = {} is larger than a jumbo frame (9000)", self.mtu);
        }
        Geometry::new(shard, self.data_shards, self.parity_shards)
            .context("data_shards / parity_shards")
    }

    /// Batch frames into one GSO send? "auto" batches towards loopback only: a GSO batch that is not
    /// split into datagrams before the link (a veth, a software bridge) is lost or kept as a whole, which
    /// turns independent frame loss into bursts of up to 44 frames.
    pub fn use_gso(&self) -> Result<bool> {
        match self.gso.as_str() {
            "auto" => Ok(self.target.ip().is_loopback()),
            "on" | "true" => Ok(true),
            "off" | "false" => Ok(false),
            g => bail!("gso = {g:?}: use \"auto\", \"on\" or \"off\""),
        }
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.state.join("objects")
    }

    pub fn replay_dir(&self) -> PathBuf {
        self.state.join("replay")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state.join("journal.jsonl")
    }
}
