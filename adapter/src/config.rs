//! `adapter.toml`: every key is documented in `adapter/adapter.example.toml`, which the tests load.
//! Relative paths are relative to the config file, as in the sender's `send.toml`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
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
    /// SQLite database of pending requests, votes and timers (`diode-chat serve`).
    #[serde(default = "d_state")]
    pub state: PathBuf,
    /// The folder of this config file, for relative paths in secrets (set by `load`).
    #[serde(skip)]
    pub base: PathBuf,
    #[serde(default)]
    pub http: Http,
    pub slack: Option<Slack>,
    pub teams: Option<Teams>,
    #[serde(default)]
    pub pipeline: Pipeline,
    /// Signed requests from pipelines inside the air gap, through the reverse diode (`reverse`).
    pub reverse: Option<Reverse>,
    /// The audit log's journey through the diode (`audit_ship`).
    #[serde(default)]
    pub audit_shipping: crate::audit_ship::Shipping,
    /// The audit log forwarded to the site's SIEM (`audit_forward`).
    #[serde(default)]
    pub audit_forwarding: crate::audit_forward::Forwarding,
    /// How many refusals of people outside the policy are audited one by one (`refusal_limit`).
    #[serde(default)]
    pub stranger_refusals: crate::refusal_limit::Config,
    /// The people who may request, approve or reject, by a short key (e.g. `ada`).
    #[serde(default)]
    pub people: BTreeMap<String, PersonConfig>,
    /// The approval rule of each environment, by name (e.g. `prod`).
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Http {
    #[serde(default = "d_listen")]
    pub listen: String,
    /// How often deadlines, reminders and escalations are checked.
    #[serde(default = "d_tick")]
    pub tick: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: d_listen(),
            tick: d_tick(),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Slack {
    #[serde(default = "d_api_base")]
    pub api_base: String,
    /// `file:PATH` or `env:NAME`.
    pub bot_token: String,
    /// `file:PATH` or `env:NAME`; without it the HTTP endpoints for Slack are off.
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// App-level token (xapp-...) for Socket Mode, `file:PATH` or `env:NAME`; with it the adapter
    /// connects out to Slack and needs no inbound port.
    #[serde(default)]
    pub app_token: Option<String>,
    /// How many times a call answered with 429 is tried again (after Retry-After).
    #[serde(default = "d_retries")]
    pub max_retries: u32,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Teams {
    /// The outgoing webhook's security token (base64, as Teams shows it), `file:PATH` or `env:NAME`.
    pub webhook_token: String,
    /// The bot's Microsoft app id: the audience its Bot Framework tokens must carry.
    #[serde(default)]
    pub app_id: Option<String>,
    /// JWKS file with the Bot Framework's signing keys (relative to the config file).
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// Or the URL of the JWKS (fetched, cached, fetched again for an unknown kid at most once a minute).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The bot's client secret, `file:PATH` or `env:NAME`: with it, requests are posted as Adaptive
    /// Cards through the Bot Connector to each environment's `teams_conversation`.
    #[serde(default)]
    pub app_password: Option<String>,
    /// OAuth 2.0 token endpoint for the client-credentials grant.
    #[serde(default = "d_token_url")]
    pub token_url: String,
    /// Scope asked for in the token request.
    #[serde(default = "d_token_scope")]
    pub token_scope: String,
    /// The Bot Connector's base URL for the tenant's region (an activity's `serviceUrl`).
    #[serde(default = "d_service_url")]
    pub service_url: String,
    /// How many times a call answered with 429 is tried again (after Retry-After).
    #[serde(default = "d_retries")]
    pub max_retries: u32,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    #[serde(default)]
    pub tokens: Vec<PipelineToken>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Reverse {
    /// The reverse receiver's inbox, where `<id>.request` files arrive (in subfolders too).
    pub inbox: PathBuf,
    /// `pipeline.pub` files of the pipeline keys whose requests are taken.
    pub pipeline_keys: Vec<PathBuf>,
    /// `outcome.pub` files of the high sides whose outcomes are taken (`diode-recv keygen --outcome`);
    /// two while rotating. Empty: every outcome is refused into quarantine.
    #[serde(default)]
    pub outcome_keys: Vec<PathBuf>,
    /// Oldest request taken, from its created_at (humantime).
    #[serde(default = "d_max_age")]
    pub max_age: String,
    /// How far in the future a request's created_at may be (clocks disagree).
    #[serde(default = "d_skew")]
    pub skew: String,
    /// Where taken request files are moved.
    #[serde(default = "d_processed")]
    pub processed: PathBuf,
    /// Where refused request files are moved, with the reason in their name.
    #[serde(default = "d_quarantine")]
    pub quarantine: PathBuf,
    /// How often the inbox is looked at.
    #[serde(default = "d_poll")]
    pub poll: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PipelineToken {
    pub name: String,
    /// `file:PATH` or `env:NAME`.
    pub token: String,
    /// Environments this token may request for; empty: all.
    #[serde(default)]
    pub environments: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PersonConfig {
    pub name: String,
    pub slack: Option<String>,
    pub teams: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    pub channel: String,
    /// Roles whose members may request; empty: anyone in `[people]`.
    #[serde(default)]
    pub requesters: Vec<String>,
    /// Roles whose members may approve (the M of N-of-M are the people holding one of them).
    pub approvers: Vec<String>,
    /// N: distinct approvals needed.
    pub approvals: u32,
    /// Each of these roles must be held by a distinct approver.
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Roles whose members may reject.
    pub rejecters: Vec<String>,
    pub deadline: String,
    pub remind_every: String,
    #[serde(default)]
    pub escalation: Vec<EscalationConfig>,
    /// How long a signed approval is valid once the rule is met.
    #[serde(default = "d_validity")]
    pub validity: String,
    /// Teams channel (conversation id) where the Bot Connector posts this environment's cards.
    #[serde(default)]
    pub teams_conversation: Option<String>,
    /// Workflows (Power Automate) webhook URL that posts this environment's cards, `file:PATH` or
    /// `env:NAME` (the URL carries its own signature, so it is a secret).
    #[serde(default)]
    pub teams_workflow_url: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    pub after: String,
    pub notify: Vec<String>,
}

fn d_state() -> PathBuf {
    "state/chat.sqlite".into()
}
fn d_max_age() -> String {
    "1h".into()
}
fn d_skew() -> String {
    "2m".into()
}
fn d_processed() -> PathBuf {
    "state/reverse/processed".into()
}
fn d_quarantine() -> PathBuf {
    "state/reverse/quarantine".into()
}
fn d_poll() -> String {
    "1s".into()
}
fn d_listen() -> String {
    "127.0.0.1:8080".into()
}
fn d_tick() -> String {
    "5s".into()
}
fn d_api_base() -> String {
    "https://slack.com/api".into()
}
fn d_token_url() -> String {
    "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token".into()
}
fn d_token_scope() -> String {
    "https://api.botframework.com/.default".into()
}
fn d_service_url() -> String {
    "https://smba.trafficmanager.net/teams/".into()
}
fn d_retries() -> u32 {
    3
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
        for p in [&mut c.key, &mut c.outbox, &mut c.audit, &mut c.state] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(r) = &mut c.reverse {
            let paths = [&mut r.inbox, &mut r.processed, &mut r.quarantine];
            let keys = r.pipeline_keys.iter_mut().chain(r.outcome_keys.iter_mut());
            for p in paths.into_iter().chain(keys) {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            for (k, v) in [
                ("max_age", &r.max_age),
                ("skew", &r.skew),
                ("poll", &r.poll),
            ] {
                humantime::parse_duration(v).with_context(|| {
                    format!(
                        "reverse.{k} = {v:?} in {} is not a duration",
                        path.display()
                    )
                })?;
            }
        }
        parse_validity(&c.default_validity)
            .with_context(|| format!("default_validity in {}", path.display()))?;
        c.audit_shipping
            .check()
            .with_context(|| format!("config {}", path.display()))?;
        c.audit_forwarding
            .check(&base)
            .with_context(|| format!("config {}", path.display()))?;
        c.stranger_refusals
            .interval_secs()
            .with_context(|| format!("config {}", path.display()))?;
        c.base = base;
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
