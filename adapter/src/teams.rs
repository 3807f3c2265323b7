//! Microsoft Teams outgoing webhook: `POST /teams/webhook`.
//!
//! Teams signs each message it sends to an outgoing webhook: `Authorization: HMAC <base64>`, the
//! base64 HMAC-SHA256 of the raw body keyed with the base64-decoded security token Teams gave when the
//! webhook was created. The adapter checks it (constant-time) on the raw bytes before parsing anything,
//! then refuses an activity whose `timestamp` is more than five minutes from now either way, or whose
//! `id` it has already taken (replay). The message text (`@Deploy request <app> <version> <env>
//! <digest>`, the mention stripped) is a deployment request by the Teams user (`from.aadObjectId`, else
//! `from.id`) and goes to the same engine as a Slack slash command; the answer is a message activity.
//!
//! Activity ids are taken once through the engine's delivery log (`Engine::once`, kept in the SQLite
//! state for twice the window and a minute), so a replay after a restart is refused by its id too.

use crate::approval::{Actor, Effect, NewRequest, Requester};
use crate::policy::Source;
use crate::server::App;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use std::sync::Arc;

/// Five minutes either way, as for Slack.
pub const WINDOW_SECS: u64 = 300;

const USAGE: &str = "Usage: @Deploy request <app> <version> <environment> <sha256:digest> [reason]";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no Authorization: HMAC header")]
    Missing,
    #[error("Authorization is not HMAC <base64>")]
    Malformed,
    #[error("the HMAC does not match: wrong security token or altered body")]
    Mismatch,
    #[error("the body is not a Teams activity")]
    NotActivity,
    #[error("the activity timestamp is not RFC 3339")]
    BadTimestamp,
    #[error("the activity is {0} s from now, more than {WINDOW_SECS} s: stale or replayed")]
    OutsideWindow(u64),
    #[error("activity {0} was already taken: replayed")]
    Replayed(String),
}

/// The outgoing webhook's key (the security token, base64-decoded).
pub struct Webhook {
    key: Vec<u8>,
}

impl Webhook {
    /// `token`: the security token as Teams shows it (base64).
    pub fn new(token: &str) -> anyhow::Result<Webhook> {
        let key = B64
            .decode(token.trim())
            .map_err(|_| anyhow::anyhow!("teams.webhook_token is not base64"))?;
        if key.is_empty() {
            anyhow::bail!("teams.webhook_token is empty");
        }
        Ok(Webhook { key })
    }

    /// Check the HMAC on the raw body (constant-time).
    pub fn verify_hmac(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<(), WebhookError> {
        let h = authorization.ok_or(WebhookError::Missing)?;
        let b64 = h
            .strip_prefix("HMAC ")
            .ok_or(WebhookError::Malformed)?
            .trim();
        let given = B64.decode(b64).map_err(|_| WebhookError::Malformed)?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(body);
        m.verify_slice(&given).map_err(|_| WebhookError::Mismatch)
    }

    /// HMAC, then (only then parsing) the timestamp window. The replay guard (the id) is the caller's,
    /// against the persisted delivery ids (`Engine::once`).
    pub fn verify(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<Activity, WebhookError> {
        self.verify_hmac(authorization, body)?;
        let a: Activity = serde_json::from_slice(body).map_err(|_| WebhookError::NotActivity)?;
        let t = humantime::parse_rfc3339(&a.timestamp).map_err(|_| WebhookError::BadTimestamp)?;
        let t = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| WebhookError::BadTimestamp)?
            .as_secs();
        let off = now.abs_diff(t);
        if off > WINDOW_SECS {
            return Err(WebhookError::OutsideWindow(off));
        }
        Ok(a)
    }
}

#[derive(Deserialize, Debug)]
pub struct Activity {
    pub id: String,
    pub timestamp: String,
    #[serde(default)]
    pub text: String,
    pub from: From,
    #[serde(default)]
    pub conversation: Option<Conversation>,
}

#[derive(Deserialize, Debug)]
pub struct From {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "aadObjectId")]
    pub aad_object_id: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct Conversation {
    pub id: String,
}

/// The Teams user id the policy knows: the AAD object id when a person has it, else `from.id`.
fn teams_user(app: &App, from: &From) -> String {
    match &from.aad_object_id {
        Some(aad) if app.engine.policy().by_user(Source::Teams, aad).is_some() => aad.clone(),
        _ => from.id.clone(),
    }
}

fn reply(text: String) -> Response {
    Json(json!({"type": "message", "text": text})).into_response()
}

/// Text without the `<at>...</at>` mention of the webhook.
pub fn strip_mentions(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("<at>") {
        out.push_str(&rest[..i]);
        match rest[i..].find("</at>") {
            Some(j) => rest = &rest[i + j + 5..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn refused(e: WebhookError) -> Response {
    tracing::warn!("refused a request to /teams/webhook: {e}");
    (StatusCode::UNAUTHORIZED, format!("refused: {e}")).into_response()
}

pub async fn webhook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(hook) = app.teams_webhook.as_ref() else {
        return (StatusCode::NOT_FOUND, "the Teams webhook is not configured").into_response();
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let a = match hook.verify(auth, &body, app.engine.now()) {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    let id = a.id.clone();
    match app
        .engine
        .once(&[format!("teams:{id}")], || answer(&app, a))
    {
        Ok(Some(r)) => r,
        Ok(None) => refused(WebhookError::Replayed(id)),
        Err(e) => {
            tracing::error!("{e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the adapter could not record this; see its log",
            )
                .into_response()
        }
    }
}

/// The answer to an activity taken: a request, or the usage. Err: the adapter failed.
fn answer(app: &App, a: Activity) -> anyhow::Result<Response> {
    let text = strip_mentions(&a.text).replace("&nbsp;", " ");
    let words: Vec<&str> = text.split_whitespace().collect();
    let user = teams_user(app, &a.from);
    if words == ["pending"] {
        return Ok(reply(pending_text(app, &user)?));
    }
    if words.is_empty() || words == ["request"] {
        return Ok(form_reply(app, &user));
    }
    // `request <app> <version> <env> <digest> [reason words...]`
    let [verb, app_name, version, env, digest, ref reason @ ..] = words[..] else {
        return Ok(reply(USAGE.into()));
    };
    if verb != "request" {
        return Ok(reply(USAGE.into()));
    }
    let who = Requester::Chat(Actor {
        source: Source::Teams,
        user_id: user,
        name: a.from.name,
        channel: a.conversation.map(|c| c.id),
    });
    let new = NewRequest {
        app: app_name.into(),
        version: version.into(),
        environment: env.into(),
        digest: digest.into(),
        reason: (!reason.is_empty()).then(|| reason.join(" ")),
    };
    Ok(match app.engine.request(who, new)? {
        Err(refusal) => reply(format!("Request refused: {refusal}.")),
        Ok(req) => {
            app.push(Effect::Post {
                request: req.id.clone(),
            });
            reply(format!(
                "Request {} for {} {} to {} posted for approval.",
                req.id, req.app, req.version, req.environment
            ))
        }
    })
}

/// `@Deploy pending`: what waits for the person's vote and their own open requests, as text.
fn pending_text(app: &App, user: &str) -> anyhow::Result<String> {
    let inbox = crate::inbox::of(&app.engine, Source::Teams, user)?;
    let line = |v: &crate::approval::View| {
        let r = &v.request;
        let reason = r
            .reason
            .as_deref()
            // one line per entry: the reason's own line breaks become spaces
            .map(|t| {
                format!(
                    "; reason: {}",
                    t.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            })
            .unwrap_or_default();
        format!(
            "- {} {} to {} (request {}), asked by {}: approvals {} of {} ({}), deadline {}{reason}",
            r.app,
            r.version,
            r.environment,
            r.id,
            r.requester_name,
            v.votes.len(),
            v.approvals,
            v.approvals_text(),
            crate::approval::rfc3339(r.deadline_at)
        )
    };
    let mut out = format!("Waiting for your vote ({}):\n", inbox.waiting.len());
    for v in &inbox.waiting {
        out.push_str(&line(v));
        out.push('\n');
    }
    out.push_str(&format!("Your open requests ({}):\n", inbox.mine.len()));
    for v in &inbox.mine {
        out.push_str(&line(v));
        out.push('\n');
    }
    Ok(out)
}

/// `@Deploy request` alone: a card form (Adaptive Card inputs, submitted with Action.Execute to the
/// bot endpoint, `/teams/messages`, verb `request`) with the environments the person may request in.
fn form_reply(app: &App, user: &str) -> Response {
    let policy = app.engine.policy();
    let envs: Vec<String> = match policy.by_user(Source::Teams, user) {
        Some(p) => policy
            .environments
            .values()
            .filter(|e| e.requesters.is_empty() || p.roles.iter().any(|r| e.requesters.contains(r)))
            .map(|e| e.name.clone())
            .collect(),
        None => Vec::new(),
    };
    if envs.is_empty() {
        return reply("You may not request deployments here (you are not in the approval policy, or your roles request nowhere).".into());
    }
    Json(json!({
        "type": "message",
        "text": "Request a deployment",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": crate::teams_cards::request_form(&envs),
        }]
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_stripped() {
        assert_eq!(
            strip_mentions("<at>Deploy</at> request a 1 prod sha256:x"),
            " request a 1 prod sha256:x"
        );
    }
}
