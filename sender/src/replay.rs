//! Replay: `diode-send replay` queues a request for the daemon (an object whole or some of its blocks,
//! or everything sent since a moment), the daemon resolves it against the journal; `diode-send journal`
//! lists what the low side holds for replay.

use crate::config::Config;
use crate::daemon::Job;
use crate::journal::{replayable, Journal, ReplayRequest};
use anyhow::{bail, Context, Result};
use diode_proto::journal::{format_id, parse_id};
use std::time::Duration;

pub fn resolve_replay(journal: &Journal, r: &ReplayRequest) -> Result<Vec<Job>> {
    let entries = journal.load()?;
    if let Some(obj) = &r.object {
        let id = parse_id(obj)
            .with_context(|| format!("{obj:?} is not an object id (16 hex digits)"))?;
        let e = entries
            .iter()
            .find(|e| e.id == id)
            .with_context(|| format!("object {obj} is not in the journal"))?;
        let meta = replayable(e)?;
        let blocks = r
            .blocks
            .as_deref()
            .map(diode_proto::gap::parse)
            .transpose()?;
        return Ok(vec![Job::Replay {
            meta,
            path: e.path.clone(),
            blocks,
        }]);
    }
    let since = r.since.unwrap_or(0);
    Ok(entries
        .iter()
        .filter(|e| e.sent_at.is_some_and(|t| t >= since))
        .filter_map(|e| {
            replayable(e).ok().map(|meta| Job::Replay {
                meta,
                path: e.path.clone(),
                blocks: None,
            })
        })
        .collect())
}

pub fn replay(
    cfg: &Config,
    object: Option<String>,
    blocks: Option<String>,
    since: Option<String>,
) -> Result<()> {
    let journal = Journal::open(cfg)?;
    let req = match (&object, &since) {
        (Some(o), _) => {
            // check now, so the admin hears about a typo at once and not in the daemon's log
            let id = parse_id(o)
                .with_context(|| format!("{o:?} is not an object id (16 hex digits)"))?;
            let entries = journal.load()?;
            let e = entries
                .iter()
                .find(|e| e.id == id)
                .with_context(|| format!("object {o} is not in the journal"))?;
            replayable(e)?;
            if let Some(b) = &blocks {
                diode_proto::gap::parse(b)?;
            }
            ReplayRequest {
                object: Some(format_id(id)),
                blocks,
                since: None,
            }
        }
        (None, Some(s)) => ReplayRequest {
            object: None,
            blocks: None,
            since: Some(parse_since(s)?),
        },
        (None, None) => {
            bail!("say what to replay: --object ID [--blocks 17-19,40], or --since TIME")
        }
    };
    let p = journal.queue_replay(&req)?;
    println!(
        "replay queued ({}); the running diode-send sends it next",
        p.display()
    );
    Ok(())
}

fn parse_since(s: &str) -> Result<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(diode_host::unix_now().saturating_sub(d.as_secs()));
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    bail!("--since {s:?}: use RFC 3339 like 2026-11-24T10:00:00Z, an age like 2h, or Unix seconds")
}

pub fn list_journal(cfg: &Config) -> Result<()> {
    let journal = Journal::open(cfg)?;
    let entries = journal.load()?;
    if entries.is_empty() {
        println!("the journal is empty");
        return Ok(());
    }
    println!(
        "{:<16}  {:<20}  {:>12}  {:>6}  {:<8}  name",
        "object", "sent (UTC)", "bytes", "blocks", "state"
    );
    for e in entries {
        let (when, bytes, blocks) = match &e.sent {
            Some(m) => (
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(e.sent_at.unwrap_or(0)),
                )
                .to_string(),
                m.size.to_string(),
                e.blocks().map(|b| b.to_string()).unwrap_or_default(),
            ),
            None => (format!("queued {}", e.claimed_at), "-".into(), "-".into()),
        };
        let state = e.state();
        println!(
            "{:<16}  {:<20}  {:>12}  {:>6}  {:<8}  {}",
            format_id(e.id),
            when,
            bytes,
            blocks,
            state,
            e.name
        );
    }
    Ok(())
}
