//! `adapter.toml`: every key is documented in `adapter/adapter.example.toml`, which the tests load.
//! Relative paths are relative to the config file, as in the sender's `send.toml`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The adapter's signing key (`adapter.key` from `diode-chat keygen`).
    pub key: PathBuf,
    /// The sender's outbox: signed envelopes are written here.
    pub outbox: PathBuf,
    /// The adapter's hash-chained audit log.
    pub audit: PathBuf,
    /// How long an envelope is valid when the command does not say (humantime: "1h", "30m").
    #[serde(default = "d_validity")]
    pub default_validity: String,
    // The chat settings (Slack, Teams, approval policy) come with the chat issue; until then an unknown
    // key such as a `[chat]` table is refused rather than silently ignored.
}

fn d_validity() -> String {
    "1h".into()
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut c: Config = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        // Absolute, so that the paths printed and written into the audit log mean the same thing
        // wherever the log is read.
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::path::absolute(base)
            .with_context(|| format!("cannot resolve the folder of {}", path.display()))?;
        for p in [&mut c.key, &mut c.outbox, &mut c.audit] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        parse_validity(&c.default_validity)
            .with_context(|| format!("default_validity in {}", path.display()))?;
        Ok(c)
    }

    pub fn default_validity(&self) -> Result<Duration> {
        parse_validity(&self.default_validity)
    }
}

/// A validity such as "1h" or "90m": at least one second, at most 30 days (the high side's own
/// maximum is usually far lower; this only catches typos such as "1y").
pub fn parse_validity(s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s).with_context(|| {
        format!("{s:?} is not a duration: use e.g. \"1h\", \"30m\", \"2h 30m\"")
    })?;
    if d.as_secs() < 1 {
        bail!("validity {s:?} is shorter than one second");
    }
    if d.as_secs() > 30 * 24 * 3600 {
        bail!("validity {s:?} is longer than 30 days: an approval should expire soon after it is given");
    }
    Ok(d)
}
