//! `diode-chat console`: a read-only web page for the approval side's operator, in a process of its own.
//! It reads what `diode-chat serve` writes and nothing else: the SQLite state opened read-only (requests
//! open with their votes, deadlines and escalation tier; recent decisions) and the audit log (the
//! high side's outcomes that came back through the reverse diode, and whether the chain verifies).
//! Nothing from the config's secrets reaches the page: it shows the policy's counts and role names only.
//! Listening, the guard and the page's shell are `diode-console`'s, as for the other consoles.

use crate::config::Config;
use crate::policy::Policy;
use crate::store::{Request, Store};
use anyhow::Result;
use askama::Template;
use diode_console::{utc, Page, Plan, View};
use diode_host::audit::AuditLog;
use serde_json::Value;
use std::time::Duration;

/// The console's port when `--listen` does not say.
pub const PORT: u16 = 8442;
/// Decisions and outcomes listed, newest first.
const SHOWN: usize = 100;

impl View for Snapshot {
    fn figures(&self) -> Value {
        serde_json::json!({
            "now": self.now,
            "open": self.open.len(),
            "decided": self.decided.len(),
            "outcomes": self.outcomes.len(),
            "audit_ok": self.audit_ok,
        })
    }
}

pub fn serve(cfg: Config, plan: Plan) -> Result<()> {
    let policy = Policy::from_config(&cfg)?;
    diode_console::run(
        plan,
        Page {
            title: "diode-chat console",
            heading: "diode-chat: approvals, low side",
            search: None,
        },
        move || Snapshot::read(&cfg, &policy),
        std::future::pending(),
    )
}

/// The live sections (`templates/console.html`), which the shell wraps and the script swaps in.
#[derive(Template)]
#[template(path = "console.html")]
pub struct Snapshot {
    pub now: String,
    pub store_error: Option<String>,
    pub open: Vec<Open>,
    pub decided: Vec<Decided>,
    pub outcomes: Vec<Outcome>,
    pub audit_ok: bool,
    pub audit: String,
}

pub struct Open {
    pub id: String,
    pub what: String,
    pub digest: String,
    pub requester: String,
    pub reason: String,
    pub created: String,
    pub deadline: String,
    pub votes: String,
    pub voters: Vec<String>,
    pub tier: String,
    pub next_tier: String,
    pub reminders: u32,
}

pub struct Decided {
    pub when: String,
    pub id: String,
    pub what: String,
    pub status: &'static str,
    pub by: String,
    pub envelope_id: String,
}

pub struct Outcome {
    pub when: String,
    /// accept, reject, consume, hook; or `refused` for an outcome the low side did not take.
    pub kind: String,
    pub request_id: String,
    pub envelope_id: String,
    /// The high side's sentence, or why the outcome was refused.
    pub summary: String,
    pub from: String,
}

fn words(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn what(r: &Request) -> String {
    format!("{} {} to {}", r.app, r.version, r.environment)
}

fn open_row(r: &Request, store: &Store, policy: &Policy, now: u64) -> Open {
    let env = policy.environments.get(&r.environment);
    let votes = store.votes(&r.id).unwrap_or_default();
    let needed = env.map_or_else(|| "?".into(), |e| e.approvals.to_string());
    let tiers = env.map_or(&[][..], |e| &e.escalation[..]);
    let tier = match (r.tier as usize).checked_sub(1).and_then(|i| tiers.get(i)) {
        Some(t) => format!(
            "tier {} of {} (notified {})",
            r.tier,
            tiers.len(),
            t.notify.join(", ")
        ),
        None if r.tier > 0 => format!("tier {}", r.tier),
        None => "none yet".into(),
    };
    let next_tier = tiers.get(r.tier as usize).map_or_else(String::new, |t| {
        let at = r.created_at + t.after;
        format!(
            "tier {} at {} (in {}): {}",
            r.tier + 1,
            utc(at),
            words(at.saturating_sub(now)),
            t.notify.join(", ")
        )
    });
    Open {
        id: r.id.clone(),
        what: what(r),
        digest: r.digest.clone(),
        requester: format!("{} via {}", r.requester_name, r.source),
        reason: r.reason.clone().unwrap_or_default(),
        created: utc(r.created_at),
        deadline: format!(
            "{} (in {})",
            utc(r.deadline_at),
            words(r.deadline_at.saturating_sub(now))
        ),
        votes: format!("{} of {needed}", votes.len()),
        voters: votes
            .iter()
            .map(|v| format!("{} ({}) at {}", v.name, v.roles.join(", "), utc(v.at)))
            .collect(),
        tier,
        next_tier,
        reminders: r.reminders,
    }
}

fn outcome(v: &Value) -> Option<Outcome> {
    let when = v["at"].as_u64().map(utc).unwrap_or_default();
    match v["event"].as_str()? {
        "outcome" => Some(Outcome {
            when,
            kind: text(v, "high_event"),
            request_id: text(v, "request_id"),
            envelope_id: text(v, "envelope_id"),
            summary: text(v, "summary"),
            from: format!("{} #{}", text(v, "receiver"), text(v, "high_seq")),
        }),
        "outcome_refused" => Some(Outcome {
            when,
            kind: "refused".into(),
            request_id: String::new(),
            envelope_id: String::new(),
            summary: format!("{}: {}", text(v, "reason"), text(v, "detail")),
            from: text(v, "file"),
        }),
        _ => None,
    }
}

impl Snapshot {
    pub fn read(cfg: &Config, policy: &Policy) -> Snapshot {
        let now = diode_host::unix_now();
        let mut s = Snapshot {
            now: utc(now),
            store_error: None,
            open: Vec::new(),
            decided: Vec::new(),
            outcomes: Vec::new(),
            audit_ok: false,
            audit: String::new(),
        };
        let rows = Store::open_read_only(&cfg.state).and_then(|store| {
            let open = store.pending()?;
            let open: Vec<Open> = open
                .iter()
                .map(|r| open_row(r, &store, policy, now))
                .collect();
            let decided = store
                .decided(SHOWN)?
                .iter()
                .map(|r| Decided {
                    when: r.decided_at.map(utc).unwrap_or_default(),
                    id: r.id.clone(),
                    what: what(r),
                    status: r.status.word(),
                    // who rejected; for an approval, who approved
                    by: r.decided_by.clone().unwrap_or_else(|| {
                        let votes = store.votes(&r.id).unwrap_or_default();
                        let names: Vec<&str> = votes.iter().map(|v| v.name.as_str()).collect();
                        names.join(", ")
                    }),
                    envelope_id: r.envelope_id.clone(),
                })
                .collect();
            Ok((open, decided))
        });
        match rows {
            Ok((open, decided)) => {
                s.open = open;
                s.decided = decided;
            }
            Err(e) => s.store_error = Some(format!("{e:#}")),
        }
        let records = diode_host::audit::records(&cfg.audit);
        s.outcomes = records
            .iter()
            .rev()
            .filter_map(outcome)
            .take(SHOWN)
            .collect();
        match AuditLog::new(&cfg.audit).verify() {
            Ok(n) => {
                s.audit_ok = true;
                s.audit = format!("verified: all {n} records chain up to the head");
            }
            Err(e) => s.audit = format!("{e:#}"),
        }
        s
    }
}
