//! What the console shows, read from what the daemon writes and nothing else: `state/status.json`,
//! `state/received.jsonl`, `state/refused.jsonl`, `approvals/`, `quarantine/` and the audit log. Every
//! read is read-only and every failure becomes a line on the page, never a panic. Values stay plain
//! text here; the template escapes them.

use super::history::{Chart, History};
use crate::approvals;
use crate::config::Config;
use crate::status::{SessionStatus, Status};
use diode_console::utc;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// How many received files and refusals the page lists (newest first).
const RECEIVED_SHOWN: usize = 500;
/// Gaps drawn per incomplete object; more are counted, not drawn.
const GAPS_DRAWN: usize = 400;

/// The live sections (`receiver/templates/console.html`), which the shell wraps and the script swaps in.
#[derive(askama::Template)]
#[template(path = "console.html")]
pub struct Snapshot {
    pub now: String,
    /// Why the daemon's figures are missing or old, if they are.
    pub status_warning: Option<String>,
    pub listen: String,
    pub links: Vec<Link>,
    pub drops: Vec<(String, u64)>,
    pub receiving: Vec<Progress>,
    pub incomplete: Vec<Incomplete>,
    pub received: Vec<Received>,
    pub received_error: Option<String>,
    pub refused: Vec<Received>,
    pub approvals: Vec<ApprovalRow>,
    pub approvals_error: Option<String>,
    pub quarantined: Vec<Quarantined>,
    pub audit: Audit,
}

pub struct Link {
    pub sender: String,
    pub up: bool,
    pub last_seen: String,
    pub loss: String,
    pub frames: String,
    /// Frames per second and loss over the last hour, when the console has seen two samples.
    pub fps_chart: Option<Chart>,
    pub loss_chart: Option<Chart>,
}

pub struct Progress {
    pub name: String,
    pub sender: String,
    pub object: String,
    pub size: u64,
    /// 0..=1000 for `<progress max=1000>` (no inline style under the CSP).
    pub permille: u64,
    pub percent: String,
    pub blocks: String,
    /// "1.2 MB/s, 35 s left" once the console has seen it progress; empty before.
    pub rate: String,
}

pub struct Incomplete {
    pub p: Progress,
    pub missing: String,
    pub replay: Option<String>,
    pub error: Option<String>,
    /// The block count, the SVG's width in blocks.
    pub block_count: u64,
    /// Missing runs: first block and length.
    pub gaps: Vec<(u64, u64)>,
    pub gaps_not_drawn: usize,
}

pub struct Received {
    pub at: String,
    pub name: String,
    pub size: u64,
    pub hash: String,
    /// "file" or "envelope"; for a refusal, the reason in words.
    pub what: String,
    /// Lowercased name and hash, for the search box.
    pub search: String,
}

pub struct ApprovalRow {
    pub id: String,
    pub state: &'static str,
    pub words: String,
    pub decision: String,
    pub environment: String,
    pub artifact: String,
    pub digest: String,
    pub approvers: String,
}

pub struct Quarantined {
    pub at: String,
    pub reason: String,
    pub words: String,
    pub wire_name: String,
}

pub struct Audit {
    pub ok: bool,
    pub text: String,
}

fn progress(o: &crate::status::ObjectStatus) -> Progress {
    Progress {
        name: o.name.clone(),
        sender: o.sender.clone(),
        object: o.object.clone(),
        size: o.size,
        permille: (o.percent.clamp(0.0, 100.0) * 10.0) as u64,
        percent: format!("{:.1}", o.percent),
        blocks: format!("{}/{}", o.blocks_done, o.blocks),
        rate: String::new(),
    }
}

fn rate_words(bytes_per_sec: f64, secs_left: f64) -> String {
    format!(
        "{:.2} MB/s, {} left",
        bytes_per_sec / 1e6,
        humantime::format_duration(Duration::from_secs(secs_left.ceil() as u64))
    )
}

/// The daemon's status file, or why there is none.
pub fn read_status(cfg: &Config) -> Result<Status, String> {
    fs::read_to_string(cfg.status_path())
        .map_err(|e| {
            format!(
                "no status in {} ({e}): is diode-recv running with this config?",
                cfg.status_path().display()
            )
        })
        .and_then(|t| {
            serde_json::from_str(&t).map_err(|e| format!("the status file is damaged: {e}"))
        })
}

/// The missing runs of a gap report (`3,9,17-19`), at most `GAPS_DRAWN`; a report that does not parse
/// draws nothing (the text is still shown).
fn gaps(missing: &str) -> (Vec<(u64, u64)>, usize) {
    let Ok(r) = diode_proto::gap::parse(missing) else {
        return (Vec::new(), 0);
    };
    let drawn = r
        .iter()
        .take(GAPS_DRAWN)
        .map(|(a, b)| (u64::from(*a), u64::from(*b) - u64::from(*a) + 1))
        .collect();
    (drawn, r.len().saturating_sub(GAPS_DRAWN))
}

fn link(s: &SessionStatus) -> Link {
    Link {
        sender: s.sender.clone(),
        up: s.link == "up",
        last_seen: if s.last_seen_secs < 0.0 {
            "never".into()
        } else {
            format!("{:.1} s ago", s.last_seen_secs)
        },
        loss: format!("{:.2} %", s.loss_percent),
        frames: format!("{} of {}", s.frames_received, s.frames_expected),
        fps_chart: None,
        loss_chart: None,
    }
}

/// How much of the end of a JSONL file is read for its newest records: the page polls every 2 s and
/// received.jsonl only grows.
const TAIL_BYTES: u64 = 1 << 20;

/// The last `n` lines of a JSONL file that parse, newest first, from its last `TAIL_BYTES`.
fn newest_records(path: &Path, n: usize) -> Result<Vec<Value>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let fail = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(e)),
    };
    let len = f.metadata().map_err(fail)?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from)).map_err(fail)?;
    let mut bytes = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut bytes).map_err(fail)?;
    let text = String::from_utf8_lossy(&bytes);
    // a read that starts inside the file starts inside a line: that piece is skipped
    let whole = if from > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    Ok(whole
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str(l).ok())
        .take(n)
        .collect())
}

fn text(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

fn received_row(v: &Value, what: String) -> Received {
    let (name, hash) = (text(v, "name"), text(v, "blake3"));
    Received {
        at: v["at"].as_u64().map(utc).unwrap_or_default(),
        search: format!("{} {}", name.to_lowercase(), hash),
        name,
        size: v["size"].as_u64().unwrap_or(0),
        hash,
        what,
    }
}

fn approval_words(state: &str, detail: &str, expires: u64) -> String {
    match state {
        "valid" => format!("valid: a pipeline may consume it until {}", utc(expires)),
        "consumed" => "consumed: a pipeline has used it (it cannot be used again)".into(),
        "expired" => format!("expired at {} before it was used", utc(expires)),
        "rejection" => "a rejection: the approvers refused this artifact".into(),
        _ => format!("invalid now: {detail}"),
    }
}

/// A quarantine reason code (`diode_proto::envelope::Reject::code`) in words for the operator.
fn reason_words(code: &str) -> &'static str {
    match code {
        "malformed" => "not a well-formed approval envelope",
        "unknown_key" => "signed by a key this receiver does not trust",
        "bad_signature" => "the signature does not match the content (altered or forged)",
        "expired" => "it had already expired when it arrived",
        "future" => "issued in the future: the low side's clock is ahead",
        "unknown_environment" => "its environment has no rule on the high side",
        "rule_not_met" => "the high side's approval rule is not met",
        "replayed" => "the same envelope was received before (a replay)",
        _ => "refused",
    }
}

fn quarantined(dir: &Path) -> Vec<Quarantined> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, Quarantined)> = rd
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            // a quarantine report is small; anything large is not one of ours
            if e.metadata().ok()?.len() > 1 << 20 {
                return None;
            }
            let v: Value = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
            let at = v["received_at"].as_u64().unwrap_or(0);
            Some((
                at,
                Quarantined {
                    at: utc(at),
                    words: format!(
                        "{}: {}",
                        reason_words(v["reason"].as_str().unwrap_or_default()),
                        text(&v, "detail")
                    ),
                    reason: text(&v, "reason"),
                    wire_name: text(&v, "wire_name"),
                },
            ))
        })
        .collect();
    out.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    out.into_iter().map(|(_, q)| q).collect()
}

impl Snapshot {
    pub fn read(cfg: &Config, history: &Mutex<History>) -> Snapshot {
        let now = diode_host::unix_now();
        let status = read_status(cfg);
        // a poisoned lock only means a panic elsewhere mid-update: the figures are still usable
        let mut history = history.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(s) = &status {
            history.record(s);
        }
        let (status, status_warning) = match status {
            Ok(s) => {
                let age = now.saturating_sub(s.updated);
                let w = (age > 5).then(|| {
                    let running = fs::read_to_string(format!("/proc/{}/comm", s.pid))
                        .is_ok_and(|c| c.trim() == "diode-recv");
                    crate::status::staleness(
                        &s,
                        age,
                        running,
                        diode_host::atomic::free_space_at(&cfg.state),
                    )
                });
                (s, w)
            }
            Err(e) => (Status::default(), Some(e)),
        };
        // the newest session of each sender (sessions are sorted newest first)
        let mut seen = BTreeSet::new();
        let links = status
            .sessions
            .iter()
            .filter(|s| seen.insert(s.sender.clone()))
            .map(|s| {
                let mut l = link(s);
                if let Some((fps, loss)) = history.charts(&s.sender, now) {
                    (l.fps_chart, l.loss_chart) = (Some(fps), Some(loss));
                }
                l
            })
            .collect();
        let receiving = status
            .objects
            .iter()
            .filter(|o| o.state == "receiving")
            .map(|o| {
                let mut p = progress(o);
                if let Some((r, left)) = history.rate(&o.object, o.size) {
                    p.rate = rate_words(r, left);
                }
                p
            })
            .collect();
        drop(history);
        let incomplete = status
            .objects
            .iter()
            .filter(|o| o.state != "receiving")
            .map(|o| {
                let (gaps, gaps_not_drawn) = gaps(&o.missing);
                Incomplete {
                    p: progress(o),
                    missing: o.missing.clone(),
                    replay: o.replay.clone(),
                    error: o.error.clone(),
                    block_count: o.blocks.max(1),
                    gaps,
                    gaps_not_drawn,
                }
            })
            .collect();
        let (received, received_error) =
            match newest_records(&cfg.state.join("received.jsonl"), RECEIVED_SHOWN) {
                Ok(r) => (
                    r.iter()
                        .map(|v| {
                            let kind = v["kind"].as_str().unwrap_or("file").to_string();
                            received_row(v, kind)
                        })
                        .collect(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(e)),
            };
        let refused = newest_records(&cfg.state.join("refused.jsonl"), RECEIVED_SHOWN)
            .unwrap_or_default()
            .iter()
            .map(|v| received_row(v, format!("{}: {}", text(v, "reason"), text(v, "detail"))))
            .collect();
        let (approvals, approvals_error, quarantined) = match &cfg.approvals {
            None => (
                Vec::new(),
                Some("this recv.toml has no [approvals] section".to_string()),
                Vec::new(),
            ),
            Some(a) => {
                let q = quarantined(&a.quarantine);
                match approvals::list(cfg) {
                    Ok(l) => (
                        l.iter()
                            .rev()
                            .map(|l| {
                                let e = &l.env.envelope;
                                ApprovalRow {
                                    id: e.id.clone(),
                                    state: l.state,
                                    words: approval_words(l.state, &l.detail, e.expires_at),
                                    decision: e.decision.to_string(),
                                    environment: e.environment.clone(),
                                    artifact: format!("{} {}", e.artifact.name, e.artifact.version),
                                    digest: e.artifact.digest.clone(),
                                    approvers: e
                                        .approvers
                                        .iter()
                                        .map(|a| format!("{} ({})", a.name, a.role))
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                }
                            })
                            .collect(),
                        None,
                        q,
                    ),
                    Err(e) => (Vec::new(), Some(format!("{e:#}")), q),
                }
            }
        };
        let log = approvals::audit_log(cfg);
        let audit = match log.verify() {
            Ok(0) => Audit {
                ok: true,
                text: "empty: no record yet".into(),
            },
            Ok(n) => Audit {
                ok: true,
                text: format!("verified: all {n} records chain up to the head"),
            },
            Err(e) => Audit {
                ok: false,
                text: format!("BROKEN: {e:#}"),
            },
        };
        Snapshot {
            now: utc(now),
            status_warning,
            listen: status.listen.clone(),
            links,
            drops: status
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
            receiving,
            incomplete,
            received,
            received_error,
            refused,
            approvals,
            approvals_error,
            quarantined,
            audit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_runs_and_a_bad_report_draws_nothing() {
        assert_eq!(gaps("3,9,17-19"), (vec![(3, 1), (9, 1), (17, 3)], 0));
        assert_eq!(gaps(""), (vec![], 0));
        assert_eq!(gaps("5-2"), (vec![], 0));
        let many: Vec<String> = (0..GAPS_DRAWN as u32 + 7)
            .map(|i| (i * 2).to_string())
            .collect();
        let (drawn, more) = gaps(&many.join(","));
        assert_eq!((drawn.len(), more), (GAPS_DRAWN, 7));
    }

    #[test]
    fn newest_records_come_from_the_tail_newest_first() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let p = dir.path().join("received.jsonl");
        assert!(newest_records(&p, 5)?.is_empty(), "a missing file is empty");
        // more than TAIL_BYTES of records: the newest are read, a cut first line is skipped
        let line = |i: u64| format!("{{\"name\":\"f{i}\",\"pad\":\"{}\"}}\n", "x".repeat(100));
        let text: String = (0..20_000).map(line).collect();
        assert!(text.len() as u64 > TAIL_BYTES);
        fs::write(&p, text + "not json\n").map_err(|e| e.to_string())?;
        let r = newest_records(&p, 3)?;
        let names: Vec<&str> = r.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(names, ["f19999", "f19998", "f19997"]);
        let all = newest_records(&p, usize::MAX)?;
        assert!(all.len() < 20_000 && all.len() > 8_000, "{}", all.len());
        Ok(())
    }
}
