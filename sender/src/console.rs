//! `diode-send console`: a read-only web page for the low side's operator, in a process of its own. It
//! reads what the daemon writes and nothing else: `state/sending.json` (what is being sent and how fast),
//! the outbox (files waiting to be taken), the journal (objects claimed and sent, with their ids for
//! replay) and `state/replay/` (replay requests the daemon has not taken yet). Listening, the guard and
//! the page's shell are `diode-console`'s, as for `diode-recv console`.

use crate::config::Config;
use crate::journal::{Journal, ReplayRequest};
use crate::status::StatusFile;
use anyhow::Result;
use askama::Template;
use diode_console::{utc, Page, Plan, View};
use diode_proto::journal::{format_id, parse_id};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The console's port when `--listen` does not say.
pub const PORT: u16 = 8441;
/// Rows the page lists at most in each table.
const SHOWN: usize = 200;
/// Entries of the outbox looked at, at most (a huge backlog is counted up to here).
const OUTBOX_SCAN: usize = 20_000;
/// Older than this, the daemon's status is taken as a daemon that is not running.
const STALE_SECS: u64 = 10;

impl View for Snapshot {
    fn figures(&self) -> serde_json::Value {
        serde_json::json!({
            "now": self.now,
            "running": self.warning.is_none(),
            "sending": self.sending.len(),
            "waiting": self.waiting,
            "outbox": self.outbox_count,
            "replays": self.replays.len(),
            "journal": self.journal_count,
        })
    }
}

pub fn serve(cfg: Config, plan: Plan) -> Result<()> {
    diode_console::run(
        plan,
        Page {
            title: "diode-send console",
            heading: "diode-send: low side",
            search: Some("Search the journal by name or object id:"),
        },
        move || Snapshot::read(&cfg),
        std::future::pending(),
    )
}

/// The live sections (`templates/console.html`), which the shell wraps and the script swaps in.
#[derive(Template)]
#[template(path = "console.html")]
pub struct Snapshot {
    pub now: String,
    /// Why the daemon's figures are missing or old, if they are.
    pub warning: Option<String>,
    pub rate: String,
    pub pace: String,
    pub sent_total: String,
    /// Jobs the daemon holds behind the ones in the endpoint.
    pub waiting: usize,
    pub sending: Vec<Sending>,
    pub outbox: Vec<Waiting>,
    pub outbox_count: usize,
    pub outbox_error: Option<String>,
    pub replays: Vec<Replay>,
    pub journal: Vec<JournalRow>,
    pub journal_count: usize,
    pub journal_error: Option<String>,
}

pub struct Sending {
    pub name: String,
    pub object: String,
    pub permille: u64,
    pub done: String,
    pub what: &'static str,
}

pub struct Waiting {
    pub name: String,
    pub size: u64,
    pub since: String,
}

pub struct Replay {
    pub queued: String,
    pub what: String,
    pub name: String,
}

pub struct JournalRow {
    pub object: String,
    pub name: String,
    pub when: String,
    pub size: String,
    pub blocks: String,
    pub state: &'static str,
    pub search: String,
}

/// Bytes in words: "20 B", "531.2 kB", "12.00 MB".
fn size(bytes: u64) -> String {
    match bytes {
        0..10_000 => format!("{bytes} B"),
        10_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.2} MB", bytes as f64 / 1e6),
    }
}

fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

impl Snapshot {
    pub fn read(cfg: &Config) -> Snapshot {
        let now = diode_host::unix_now();
        let mut s = Snapshot {
            now: utc(now),
            warning: None,
            rate: "unknown".into(),
            pace: String::new(),
            sent_total: String::new(),
            waiting: 0,
            sending: Vec::new(),
            outbox: Vec::new(),
            outbox_count: 0,
            outbox_error: None,
            replays: Vec::new(),
            journal: Vec::new(),
            journal_count: 0,
            journal_error: None,
        };
        s.read_status(cfg, now);
        s.read_outbox(&cfg.outbox);
        s.read_journal(cfg);
        s
    }

    fn read_status(&mut self, cfg: &Config, now: u64) {
        let path = cfg.status_path();
        let st: StatusFile = match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(st) => st,
            Err(e) => {
                self.warning = Some(format!(
                    "No figures from diode-send ({}: {e}): is the daemon running?",
                    path.display()
                ));
                return;
            }
        };
        self.pace = format!("{} Mbit/s", st.pace_bps / 1_000_000);
        self.sent_total = format!("{} in {} frames", size(st.line_bytes), st.frames);
        let old = now.saturating_sub(st.updated);
        if old > STALE_SECS {
            self.warning = Some(format!(
                "diode-send's figures are {old} s old (written {}): the daemon is not running, or stalled",
                utc(st.updated)
            ));
            return;
        }
        self.rate = format!(
            "{:.2} MB/s, {:.0} frames/s",
            st.line_bytes_per_sec / 1e6,
            st.frames_per_sec
        );
        self.waiting = st.waiting;
        self.sending = st
            .sending
            .into_iter()
            .map(|f| {
                let total = f.size.saturating_mul(u64::from(f.passes.max(1))).max(1);
                Sending {
                    permille: (f.sent.min(total) * 1000) / total,
                    done: format!("{} of {}", size(f.sent.min(total)), size(total)),
                    what: if f.replay { "replay" } else { "new" },
                    name: f.name,
                    object: f.object,
                }
            })
            .collect();
    }

    /// Files in the outbox that the daemon has not taken yet, oldest first (hidden files are writers'
    /// temporaries, never taken: not listed).
    fn read_outbox(&mut self, root: &Path) {
        let mut found: Vec<(SystemTime, PathBuf, u64)> = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        let mut seen = 0usize;
        while let Some(d) = dirs.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if d == root => {
                    self.outbox_error = Some(format!("cannot list {}: {e}", root.display()));
                    return;
                }
                Err(_) => continue,
            };
            for e in rd.flatten() {
                seen += 1;
                if seen > OUTBOX_SCAN {
                    self.outbox_error = Some(format!(
                        "more than {OUTBOX_SCAN} entries in the outbox: the first ones are counted"
                    ));
                    break;
                }
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(e.path());
                } else if meta.is_file() {
                    let at = meta.modified().unwrap_or(UNIX_EPOCH);
                    found.push((at, e.path(), meta.len()));
                }
            }
        }
        found.sort();
        self.outbox_count = found.len();
        self.outbox = found
            .into_iter()
            .take(SHOWN)
            .map(|(at, p, size)| Waiting {
                name: p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned(),
                size,
                since: age(at),
            })
            .collect();
    }

    fn read_journal(&mut self, cfg: &Config) {
        let journal = Journal::at(cfg);
        let entries = match journal.load() {
            Ok(e) => e,
            Err(e) => {
                self.journal_error = Some(format!("{e:#}"));
                Vec::new()
            }
        };
        let name_of = |object: &str| {
            parse_id(object)
                .and_then(|id| entries.iter().find(|e| e.id == id))
                .map(|e| e.name.clone())
                .unwrap_or_default()
        };
        self.replays = journal
            .pending_replays()
            .into_iter()
            .map(|(file, r)| {
                // the file is named by the microsecond it was queued
                let queued = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|us| utc(us / 1_000_000))
                    .unwrap_or_default();
                let (what, name) = match r {
                    Ok(ReplayRequest {
                        object: Some(o),
                        blocks,
                        ..
                    }) => {
                        let blocks = blocks.map_or("whole".to_string(), |b| format!("blocks {b}"));
                        (format!("object {o}, {blocks}"), name_of(&o))
                    }
                    Ok(ReplayRequest { since: Some(t), .. }) => {
                        (format!("everything sent since {}", utc(t)), String::new())
                    }
                    Ok(_) => ("an empty request (ignored)".into(), String::new()),
                    Err(e) => (format!("unreadable: {e}"), String::new()),
                };
                Replay { queued, what, name }
            })
            .collect();
        self.journal_count = entries.len();
        self.journal = entries
            .iter()
            .rev()
            .take(SHOWN)
            .map(|e| {
                let object = format_id(e.id);
                JournalRow {
                    search: format!("{} {object}", e.name.to_lowercase()),
                    when: match e.sent_at {
                        Some(t) => utc(t),
                        None => format!("claimed {}", utc(e.claimed_at)),
                    },
                    size: e
                        .sent
                        .as_ref()
                        .map_or_else(|| "-".into(), |m| format!("{} B", m.size)),
                    blocks: e.blocks().map_or_else(|| "-".into(), |b| b.to_string()),
                    state: e.state(),
                    name: e.name.clone(),
                    object,
                }
            })
            .collect();
    }
}
