//! Requests posted to Microsoft Teams as Adaptive Cards, and kept showing the true state.
//!
//! - Bot Connector (Bot Framework REST API, Connector service): `POST {serviceUrl}/v3/conversations/
//!   {conversationId}/activities` with a message activity whose attachment has contentType
//!   `application/vnd.microsoft.card.adaptive`; the answer's `id` is the activity, later replaced with
//!   `PUT .../activities/{activityId}` when the state changes. Each call carries `Authorization: Bearer`
//!   with a token from the OAuth 2.0 client-credentials grant (app id + client secret, scope
//!   `https://api.botframework.com/.default`), cached until shortly before it expires. While pending,
//!   the card has Approve / Reject, each behind a confirmation (Action.ShowCard) holding the
//!   `Action.Execute` (verb approve|reject, data.request) that `teams_bot` receives.
//! - Workflows (Power Automate) webhook: `POST` of `{"type":"message","attachments":[<the card>]}`. A
//!   workflow's card cannot be updated and its buttons would reach the Flow bot, not this adapter, so
//!   a workflow gets a card without buttons when the request is made and another when it is decided.
//!
//! 429 answers are retried after Retry-After (`rate_limit`). What each card last showed is kept in
//! SQLite, so a restart neither posts twice nor misses an update: each tick, a card that does not show
//! its request's state (a call failed, or the adapter stopped in between) is brought up to date.

use crate::approval::{rfc3339, Engine, View};
use crate::config::Config;
use crate::secret::Secret;
use crate::store::Status;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const CARD_TYPE: &str = "application/vnd.microsoft.card.adaptive";
/// Cards of requests decided longer ago than this are no longer brought up to date.
const CATCH_UP_SECS: u64 = 24 * 3600;
/// Longest token life believed from the token endpoint.
const MAX_TOKEN_LIFE_SECS: u64 = 24 * 3600;
/// A cached token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// Where an environment's cards go.
#[derive(Debug, Default)]
struct Target {
    conversation: Option<String>,
    workflow: Option<Secret>,
}

struct Connector {
    service_url: reqwest::Url,
    token_url: String,
    scope: String,
    app_id: String,
    password: Secret,
    token: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

pub struct Cards {
    http: reqwest::Client,
    max_retries: u32,
    connector: Option<Connector>,
    targets: BTreeMap<String, Target>,
}

impl Cards {
    /// None when no environment names a Teams conversation or workflow.
    pub fn from_config(cfg: &Config) -> Result<Option<Cards>> {
        let mut targets = BTreeMap::new();
        for (name, e) in &cfg.environments {
            let t = Target {
                conversation: e.teams_conversation.clone(),
                workflow: e
                    .teams_workflow_url
                    .as_ref()
                    .map(|w| {
                        Secret::load(
                            w,
                            &cfg.base,
                            &format!("environments.{name}.teams_workflow_url"),
                        )
                    })
                    .transpose()?,
            };
            if t.conversation.is_some() || t.workflow.is_some() {
                targets.insert(name.clone(), t);
            }
        }
        if targets.is_empty() {
            return Ok(None);
        }
        let teams = cfg.teams.as_ref();
        let wants_connector = targets.values().any(|t| t.conversation.is_some());
        let connector = match teams {
            Some(t) if wants_connector => {
                let (Some(app_id), Some(pw)) = (&t.app_id, &t.app_password) else {
                    bail!("environments.*.teams_conversation needs [teams] app_id and app_password (the Bot Connector posts the cards)");
                };
                let mut service_url = reqwest::Url::parse(&t.service_url).with_context(|| {
                    format!("teams.service_url = {:?} is not a URL", t.service_url)
                })?;
                if !service_url.path().ends_with('/') {
                    let p = format!("{}/", service_url.path());
                    service_url.set_path(&p);
                }
                Some(Connector {
                    service_url,
                    token_url: t.token_url.clone(),
                    scope: t.token_scope.clone(),
                    app_id: app_id.clone(),
                    password: Secret::load(pw, &cfg.base, "teams.app_password")?,
                    token: tokio::sync::Mutex::new(None),
                })
            }
            None if wants_connector => {
                bail!("environments.*.teams_conversation needs a [teams] table with app_id and app_password")
            }
            _ => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Some(Cards {
            http,
            max_retries: teams.map(|t| t.max_retries).unwrap_or(3),
            connector,
            targets,
        }))
    }

    /// Requests whose Teams cards do not show their state (a call failed, or the adapter stopped
    /// between a change and its card): the ticker sends an Update for each.
    pub fn out_of_step(&self, engine: &Engine) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for v in engine.recent(CATCH_UP_SECS)? {
            let Some(t) = self.targets.get(&v.request.environment) else {
                continue;
            };
            let mut lagging = false;
            if t.conversation.is_some() && self.connector.is_some() {
                let shown = engine.teams_card(&v.request.id, "bot")?.map(|c| c.1);
                lagging |= shown.as_deref() != Some(bot_shows(&v).as_str());
            }
            if t.workflow.is_some() {
                let shown = engine.teams_card(&v.request.id, "workflow")?.map(|c| c.1);
                lagging |= shown.as_deref() != Some(workflow_shows(&v).as_str());
            }
            if lagging {
                out.push(v.request.id.clone());
            }
        }
        Ok(out)
    }

    /// Bring the request's Teams cards up to date (post, or update in place). The bot's card and the
    /// workflow's are tried independently; the first failure is returned.
    pub async fn sync(&self, engine: &Engine, request: &str) -> Result<()> {
        let Some(v) = engine.view(request)? else {
            return Ok(());
        };
        let Some(target) = self.targets.get(&v.request.environment) else {
            return Ok(());
        };
        let bot = match (&target.conversation, &self.connector) {
            (Some(conv), Some(c)) => self.sync_bot(engine, &v, c, conv).await,
            _ => Ok(()),
        };
        let workflow = match &target.workflow {
            Some(url) => self.sync_workflow(engine, &v, url).await,
            None => Ok(()),
        };
        bot.and(workflow)
    }

    async fn sync_bot(&self, engine: &Engine, v: &View, c: &Connector, conv: &str) -> Result<()> {
        let request = &v.request.id;
        let shown = bot_shows(v);
        let card = engine.teams_card(request, "bot")?;
        if card.as_ref().map(|(_, s)| s) == Some(&shown) {
            return Ok(());
        }
        let activity = message(render(v, true));
        let id = match card.and_then(|(id, _)| id) {
            None => Some(self.post_activity(c, conv, &activity).await?),
            Some(id) => {
                self.put_activity(c, conv, &id, &activity).await?;
                None
            }
        };
        engine.set_teams_card(request, "bot", id.as_deref(), &shown)
    }

    /// One card when asked, one when decided, one when deployed or refused on the high side.
    async fn sync_workflow(&self, engine: &Engine, v: &View, url: &Secret) -> Result<()> {
        let request = &v.request.id;
        let shown = workflow_shows(v);
        let card = engine.teams_card(request, "workflow")?;
        if card.as_ref().map(|(_, s)| s) == Some(&shown) {
            return Ok(());
        }
        let activity = message(render(v, false));
        let resp = crate::rate_limit::send(
            || self.http.post(url.expose_str()).json(&activity),
            "Teams workflow webhook",
            self.max_retries,
        )
        .await?;
        let status = resp.status();
        if !status.is_success() {
            // the URL is a secret: never in the message
            bail!("the Teams workflow webhook answered {status}");
        }
        engine.set_teams_card(request, "workflow", None, &shown)
    }

    /// A reminder or escalation as a reply under the request's card (the Bot Connector addresses a
    /// channel thread as `{conversationId};messageid={activityId}`), with a Teams mention of each
    /// person in `notify` who has a Teams id. Nothing before the card is posted, nor for a workflow.
    pub async fn thread(
        &self,
        engine: &Engine,
        request: &str,
        text: &str,
        notify: &[String],
    ) -> Result<()> {
        let Some(v) = engine.view(request)? else {
            return Ok(());
        };
        let Some(conv) = self
            .targets
            .get(&v.request.environment)
            .and_then(|t| t.conversation.as_ref())
        else {
            return Ok(());
        };
        let (Some(c), Some((Some(activity), _))) =
            (&self.connector, engine.teams_card(request, "bot")?)
        else {
            return Ok(());
        };
        let mut mentions = Vec::new();
        let mut tags = Vec::new();
        for p in notify.iter().filter_map(|k| engine.policy().people.get(k)) {
            if let Some(id) = &p.teams {
                let tag = format!("<at>{}</at>", p.name);
                mentions.push(json!({"type": "mention", "text": tag,
                                     "mentioned": {"id": id, "name": p.name}}));
                tags.push(tag);
            }
        }
        let text = if tags.is_empty() {
            text.to_string()
        } else {
            format!("{} {text}", tags.join(" "))
        };
        let reply = json!({"type": "message", "text": text, "entities": mentions});
        let url = Self::activities_url(c, &format!("{conv};messageid={activity}"))?;
        self.call(c, reqwest::Method::POST, url, &reply).await?;
        Ok(())
    }

    /// A bearer token for the Bot Connector, from the cache or the token endpoint.
    async fn token(&self, c: &Connector) -> Result<Secret> {
        let mut cached = c.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", c.app_id.as_str()),
            ("client_secret", c.password.expose_str()),
            ("scope", c.scope.as_str()),
        ];
        let resp = crate::rate_limit::send(
            || self.http.post(&c.token_url).form(&form),
            &format!("Teams token endpoint {}", c.token_url),
            self.max_retries,
        )
        .await?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("the token endpoint's answer ({status}) is not JSON"))?;
        if !status.is_success() {
            let err = v.get("error").and_then(Value::as_str).unwrap_or("?");
            bail!("the token endpoint refused the bot's credentials ({status}): {err}");
        }
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .context("the token endpoint answered without access_token")?;
        // from the wire: bounded (tokens live about an hour), so the sum cannot overflow
        let life = v
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(MAX_TOKEN_LIFE_SECS);
        let until = Instant::now() + Duration::from_secs(life).saturating_sub(TOKEN_MARGIN);
        let t = Secret::from_bytes(token.as_bytes());
        *cached = Some((t.clone(), until));
        Ok(t)
    }

    fn activities_url(c: &Connector, conversation: &str) -> Result<reqwest::Url> {
        let mut u = c.service_url.clone();
        u.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("teams.service_url cannot take a path"))?
            .pop_if_empty()
            .extend(["v3", "conversations", conversation, "activities"]);
        Ok(u)
    }

    async fn call(
        &self,
        c: &Connector,
        method: reqwest::Method,
        url: reqwest::Url,
        activity: &Value,
    ) -> Result<Value> {
        let token = self.token(c).await?;
        let what = format!("Bot Connector {method} {url}");
        let resp = crate::rate_limit::send(
            || {
                self.http
                    .request(method.clone(), url.clone())
                    .bearer_auth(token.expose_str())
                    .json(activity)
            },
            &what,
            self.max_retries,
        )
        .await?;
        let status = resp.status();
        if status.as_u16() == 401 {
            // a token revoked early: fetch a new one next time
            *c.token.lock().await = None;
        }
        if !status.is_success() {
            bail!("{what} answered {status}");
        }
        let text = resp.text().await.unwrap_or_default();
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post_activity(&self, c: &Connector, conv: &str, activity: &Value) -> Result<String> {
        let url = Self::activities_url(c, conv)?;
        let v = self.call(c, reqwest::Method::POST, url, activity).await?;
        v.get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .context("the Bot Connector answered without the activity id")
    }

    async fn put_activity(
        &self,
        c: &Connector,
        conv: &str,
        id: &str,
        activity: &Value,
    ) -> Result<()> {
        let mut url = Self::activities_url(c, conv)?;
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("teams.service_url cannot take a path"))?
            .push(id);
        let mut a = activity.clone();
        a["id"] = json!(id);
        self.call(c, reqwest::Method::PUT, url, &a).await?;
        Ok(())
    }
}

/// What a bot card shows, as remembered: it changes with every vote and the decision.
fn bot_shows(v: &View) -> String {
    format!(
        "{}:{}:{}",
        v.request.status.word(),
        v.votes.len(),
        v.outcomes.len()
    )
}

/// What a workflow's card (posted anew each time: a workflow cannot update one) shows: one when asked,
/// one when decided, one when the high side deployed or refused it.
fn workflow_shows(v: &View) -> String {
    let last = v
        .outcomes
        .iter()
        .rev()
        .find_map(|o| match o.event.as_str() {
            "consume" => Some(":deployed"),
            "reject" => Some(":refused"),
            _ => None,
        })
        .unwrap_or_default();
    format!("{}{last}", v.request.status.word())
}

/// A message activity carrying one Adaptive Card.
fn message(card: Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{"contentType": CARD_TYPE, "contentUrl": null, "content": card}]
    })
}

fn confirm_then(verb: &str, title: &str, style: &str, v: &View) -> Value {
    let r = &v.request;
    json!({
        "type": "Action.ShowCard",
        "title": title,
        "card": {
            "type": "AdaptiveCard",
            "body": [{"type": "TextBlock", "wrap": true, "text": format!(
                "{title} {} {} to {}, digest {}?", r.app, r.version, r.environment, r.digest)}],
            "actions": [{
                "type": "Action.Execute", "title": format!("Yes, {}", title.to_lowercase()),
                "verb": verb, "style": style, "data": {"request": r.id}
            }]
        }
    })
}

/// The Adaptive Card (1.4, for Action.Execute) of a request; `buttons` only for the bot's cards.
pub fn render(v: &View, buttons: bool) -> Value {
    let r = &v.request;
    let approvals = v.approvals_text();
    let requester = format!("{} ({}) via {}", r.requester_name, r.requester, r.source);
    let fact = |t: &str, v: String| json!({"title": t, "value": v});
    let mut body = vec![
        json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
               "text": format!("Deployment request: {} {} to {}", r.app, r.version, r.environment)}),
        json!({"type": "FactSet", "facts": [
            fact("Artifact", format!("{} {}", r.app, r.version)),
            fact("Environment", r.environment.clone()),
            fact("Requested by", requester),
            fact("Deadline", rfc3339(r.deadline_at)),
            fact("Digest", r.digest.clone()),
            fact("Rule", v.rule.clone()),
            fact("Approvals", format!("{} of {}: {approvals}", v.votes.len(), v.approvals)),
            fact("Request", r.id.clone()),
        ]}),
    ];
    if let Some(reason) = &r.reason {
        // the requester's own words: TextRuns of a RichTextBlock take no markdown (a TextBlock would
        // turn `[text](url)` into a link on the card)
        body.push(json!({"type": "RichTextBlock", "inlines": [
            {"type": "TextRun", "text": "Reason: ", "weight": "Bolder"},
            {"type": "TextRun", "text": reason},
        ]}));
    }
    let status = match r.status {
        Status::Pending => None,
        Status::Approved => Some(format!(
            "Approved by {approvals}. Envelope {} sent to the high side.",
            r.envelope_id
        )),
        Status::Rejected => Some(format!(
            "Rejected by {}. Envelope {} sent to the high side.",
            r.decided_by.as_deref().unwrap_or("?"),
            r.envelope_id
        )),
        Status::Expired => Some(format!(
            "Rejected: no decision by the deadline. Envelope {} sent to the high side.",
            r.envelope_id
        )),
    };
    if let Some(s) = status {
        body.push(json!({"type": "TextBlock", "wrap": true, "weight": "Bolder", "text": s}));
    }
    if !v.outcomes.is_empty() {
        body.push(
            json!({"type": "TextBlock", "wrap": true, "weight": "Bolder", "spacing": "Medium",
            "text": "On the high side"}),
        );
        for o in &v.outcomes {
            let color = match o.event.as_str() {
                "consume" => "Good",
                "reject" => "Attention",
                "hook_failed" => "Warning",
                _ => "Default",
            };
            body.push(
                json!({"type": "TextBlock", "wrap": true, "spacing": "None", "color": color,
                "text": o.summary}),
            );
        }
    }
    let mut card = json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": body,
    });
    if r.status == Status::Pending {
        if buttons {
            card["actions"] = json!([
                confirm_then("approve", "Approve", "positive", v),
                confirm_then("reject", "Reject", "destructive", v),
            ]);
        } else if let Some(b) = card["body"].as_array_mut() {
            b.push(json!({"type": "TextBlock", "wrap": true, "isSubtle": true,
                "text": "Approve or reject where the adapter's buttons are (the Teams bot or Slack)."}));
        }
    }
    card
}

/// The request form (Adaptive Card 1.4): the environment among those the person may request in, the
/// application, the version, the digest and the reason (required in the form, at most
/// `MAX_REASON_CHARS`), submitted with Action.Execute (verb `request`) to the bot.
pub fn request_form(envs: &[String]) -> Value {
    let choices: Vec<Value> = envs
        .iter()
        .map(|e| json!({"title": e, "value": e}))
        .collect();
    let text = |id: &str, label: &str, placeholder: &str| {
        json!({"type": "Input.Text", "id": id, "label": label, "placeholder": placeholder,
               "isRequired": true, "errorMessage": format!("{label} is needed")})
    };
    json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": "Request a deployment"},
            {"type": "Input.ChoiceSet", "id": "environment", "label": "Environment", "isRequired": true,
             "errorMessage": "Choose an environment", "choices": choices},
            text("app", "Application", "billing"),
            text("version", "Version", "1.4.2"),
            {"type": "Input.Text", "id": "digest", "label": "Artifact digest",
             "placeholder": "sha256: and 64 hex digits", "isRequired": true,
             "regex": "^sha256:[0-9a-f]{64}$",
             "errorMessage": "sha256: followed by 64 lowercase hex digits"},
            {"type": "Input.Text", "id": "reason", "label": "Reason",
             "placeholder": "Why this deploy: a ticket or change number, or a sentence",
             "isMultiline": true, "isRequired": true,
             "maxLength": crate::approval::MAX_REASON_CHARS,
             "errorMessage": "Say why: a ticket or change number will do"},
        ],
        "actions": [{"type": "Action.Execute", "title": "Request", "verb": "request"}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Request, Status};

    /// A reason is shown as the requester wrote it: in a TextRun, which Teams does not read as
    /// markdown, so a reason written as a link or with emphasis is text on the card, not a link.
    #[test]
    fn a_reason_is_text_on_the_card_never_markdown() {
        let reason = "[urgent fix](https://evil.example/x) **now**";
        let v = View {
            request: Request {
                id: "req-1".into(),
                app: "web".into(),
                version: "2.0".into(),
                environment: "prod".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                requester: "29:ada".into(),
                requester_person: Some("ada".into()),
                requester_name: "Ada".into(),
                source: "teams".into(),
                created_at: 0,
                deadline_at: 3600,
                status: Status::Pending,
                envelope_id: "e".repeat(32),
                decided_at: None,
                decided_by: None,
                reminders: 0,
                tier: 0,
                channel: "19:prod".into(),
                ts: None,
                dirty: false,
                reason: Some(reason.into()),
            },
            votes: Vec::new(),
            rule: "1 of release-manager".into(),
            approvals: 1,
            outcomes: Vec::new(),
        };
        let card = render(&v, true);
        let text = card.to_string();
        let runs: Vec<&Value> = card["body"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "RichTextBlock")
            .collect();
        assert_eq!(runs.len(), 1, "{card}");
        assert_eq!(runs[0]["inlines"][1]["text"], reason);
        // nowhere in a TextBlock or a fact, where markdown would apply
        let in_markdown = card["body"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] != "RichTextBlock" && b.to_string().contains("evil.example"));
        assert!(!in_markdown, "{text}");
    }
}
