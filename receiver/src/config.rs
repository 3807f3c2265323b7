//! `recv.toml`: every key is documented in `receiver/recv.example.toml`, which the tests load.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
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
    #[serde(default = "d_replay_config")]
    pub replay_config: String,
}

fn d_rcvbuf() -> usize {
    64
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
        let mut c: Config = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.inbox, &mut c.state, &mut c.key]
            .into_iter()
            .chain(c.senders.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if c.senders.is_empty() {
            bail!(
                "{}: `senders` lists no trusted sender.pub: nothing could be received",
                path.display()
            );
        }
        Ok(c)
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.state.join("partial")
    }

    pub fn status_path(&self) -> PathBuf {
        self.state.join("status.json")
    }
}
