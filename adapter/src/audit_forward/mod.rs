//! The audit log forwarded to the site's SIEM: every record, to each configured target (`syslog`: RFC
//! 5424 over TLS; `hec`: an HTTP collector in Splunk's HEC format).
//!
//! At least once, with a persisted position per target (`<audit>.forwarded-<target>`, like the
//! shipping's `<audit>.shipped`, `audit_ship::Position`): the records after it go in batches, and the
//! position moves only once the target has confirmed a batch (`Target::deliver` returned Ok). A target
//! that is down, refuses the TLS handshake or answers an error leaves the position where it was, and the
//! batch is sent again at the next look; a restart of the adapter (a kill -9 included) resumes from the
//! position. Records are sent twice only if the adapter dies between a confirmation and the position's
//! write, or if a target takes in a batch but does not confirm it in time (20 s): the batch is then
//! sent again, as it must be when a confirmation is missing.

pub mod hec;
pub mod syslog;

use crate::audit_ship::{appended, read_position, write_position};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Records per delivery: a long backlog moves in steps, each confirmed.
const BATCH: usize = 500;

/// `[audit_forwarding]` in adapter.toml.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Forwarding {
    /// RFC 5424 syslog over TLS (RFC 5425). None: not forwarded there.
    pub syslog: Option<syslog::Syslog>,
    /// An HTTP collector in Splunk's HEC format. None: not forwarded there.
    pub hec: Option<hec::Hec>,
}

impl Forwarding {
    /// Check the settings; paths become absolute against the config's folder.
    pub fn check(&mut self, base: &Path) -> Result<()> {
        if let Some(s) = &mut self.syslog {
            s.check(base)?;
        }
        if let Some(h) = &mut self.hec {
            h.check(base)?;
        }
        Ok(())
    }

    /// One forwarder per configured target, for the log at `log`.
    pub fn forwarders(&self, log: &Path) -> Result<Vec<Forwarder>> {
        let mut out = Vec::new();
        if let Some(s) = &self.syslog {
            out.push(Forwarder {
                log: log.to_path_buf(),
                every: every("syslog", &s.every)?,
                target: Box::new(syslog::Collector::new(s)?),
            });
        }
        if let Some(h) = &self.hec {
            out.push(Forwarder {
                log: log.to_path_buf(),
                every: every("hec", &h.every)?,
                target: Box::new(hec::Collector::new(h)?),
            });
        }
        Ok(out)
    }
}

fn every(target: &str, v: &str) -> Result<Duration> {
    humantime::parse_duration(v)
        .with_context(|| format!("audit_forwarding.{target}.every = {v:?} is not a duration"))
}

/// Where records go.
pub trait Target: Send + Sync {
    /// The position file's suffix, beside the log.
    fn position_suffix(&self) -> &'static str;
    /// For messages: "the syslog collector host:port".
    fn describe(&self) -> String;
    /// Deliver these records (the log's JSON lines); Ok only once the target has them.
    fn deliver(&self, records: &[&str]) -> Result<()>;
}

/// A target and the log it is fed from.
pub struct Forwarder {
    log: PathBuf,
    pub every: Duration,
    target: Box<dyn Target>,
}

impl Forwarder {
    /// Deliver everything after the position, batch by batch; Ok(records delivered now).
    pub fn forward(&self) -> Result<u64> {
        let suffix = self.target.position_suffix();
        let mut sent = 0;
        loop {
            let pos = read_position(&self.log, suffix)?;
            let Some(new) = appended(&self.log, &pos, Some(BATCH))? else {
                return Ok(sent);
            };
            let text = std::str::from_utf8(&new.bytes).context("the audit log is not UTF-8")?;
            let records: Vec<&str> = text.lines().collect();
            self.target.deliver(&records).with_context(|| {
                format!(
                    "records {}-{} not delivered to {}",
                    new.first,
                    new.next.count,
                    self.target.describe()
                )
            })?;
            write_position(&self.log, suffix, &new.next)?;
            sent += new.next.count - pos.count;
        }
    }

    pub fn describe(&self) -> String {
        self.target.describe()
    }
}

/// RFC 5424 PRINTUSASCII, 1 to `max` characters (also what a host name may be).
fn header_field(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.bytes().all(|b| (33..=126).contains(&b))
}

/// This machine's host name, or the NILVALUE.
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| header_field(h, 255))
        .unwrap_or_else(|| "-".into())
}
