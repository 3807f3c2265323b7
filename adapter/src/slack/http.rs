//! Slack's HTTP endpoints: `/slack/commands` (the `/deploy` slash command) and `/slack/interactions`
//! (button clicks, `block_actions` form-encoded as `payload=`). Every request's signature is checked on
//! the raw body before anything in it is parsed; a request that fails is answered 401 and logged.
//!
//! A signed request can be sent again, unchanged, for as long as its timestamp is in the window. Each
//! delivery is therefore taken once (`Engine::once`, persisted, so across restarts too) under its
//! `trigger_id`, which Slack makes anew for every slash command and every click; a copy is answered 200
//! (what Slack expects for a delivery it already made) and has no effect.

use super::blocks::{APPROVE, REJECT};
use super::signature;
use crate::approval::{Actor, NewRequest, Requester};
use crate::policy::Source;
use crate::server::App;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use diode_proto::envelope::Decision;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

const USAGE: &str =
    "Usage: /deploy (a form), or /deploy request <app> <version> <environment> <sha256:digest> [reason]";

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("{e:#}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the adapter could not record this; see its log",
    )
        .into_response()
}

/// The signature check every Slack endpoint starts with.
fn verified(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Result<Signed, (StatusCode, String)> {
    let Some(slack) = app.slack.as_ref() else {
        return Err((StatusCode::NOT_FOUND, "Slack is not configured".into()));
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let Some(secret) = slack.signing_secret.as_ref() else {
        return Err((
            StatusCode::NOT_FOUND,
            "Slack over HTTP is not configured (no slack.signing_secret)".into(),
        ));
    };
    let sig = h("x-slack-signature");
    signature::verify(
        secret.expose(),
        h("x-slack-request-timestamp"),
        sig,
        body,
        app.engine.now(),
    )
    .map_err(|e| {
        tracing::warn!("refused a request to {path}: {e}");
        (StatusCode::UNAUTHORIZED, format!("refused: {e}"))
    })?;
    Ok(Signed {
        signature: sig.unwrap_or_default().to_string(),
    })
}

/// A request whose signature was checked.
struct Signed {
    signature: String,
}

impl Signed {
    /// The id a delivery is taken under: its trigger_id; for one without (Slack always sends it), the
    /// signature, which only a copy of the same signed bytes carries.
    fn delivery(&self, trigger_id: Option<&str>) -> Vec<String> {
        vec![match trigger_id {
            Some(t) if !t.is_empty() => trigger_key(t),
            _ => format!("slack-signature:{}", self.signature),
        }]
    }
}

/// The delivery id of a slash command or click, by its trigger_id (HTTP and Socket Mode alike).
pub(crate) fn trigger_key(trigger_id: &str) -> String {
    format!("slack-trigger:{trigger_id}")
}

fn already_taken(path: &str, ids: &[String]) {
    tracing::warn!("{path}: delivery {ids:?} was already taken: answered 200, not run again");
}

#[derive(Deserialize)]
pub(crate) struct Command {
    user_id: String,
    #[serde(default)]
    user_name: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    trigger_id: Option<String>,
}

pub async fn command(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/slack/commands";
    let signed = match verified(&app, &headers, &body, PATH) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Ok(cmd) = serde_urlencoded::from_bytes::<Command>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a slash command form").into_response();
    };
    let ids = signed.delivery(cmd.trigger_id.as_deref());
    match app.engine.once(&ids, || run_command(&app, cmd)) {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => {
            already_taken(PATH, &ids);
            Json(json!({"response_type": "ephemeral",
                        "text": "This command was already received; it was not run again."}))
            .into_response()
        }
        Err(e) => internal(e),
    }
}

/// A slash command, whichever way it came (HTTP form or Socket Mode envelope): the ephemeral answer.
pub(crate) fn run_command(app: &App, cmd: Command) -> anyhow::Result<serde_json::Value> {
    let eph = |text: String| json!({"response_type": "ephemeral", "text": text});
    let words: Vec<&str> = cmd.text.split_whitespace().collect();
    // `/deploy` alone (or `/deploy request`): the form
    if words.is_empty() || words == ["request"] {
        return Ok(match cmd.trigger_id.as_deref() {
            Some(t) if !t.is_empty() => super::form::open(app, t, &cmd.user_id),
            _ => eph(USAGE.into()),
        });
    }
    // `request <app> <version> <env> <digest> [reason words...]`
    let [verb, app_name, version, env, digest, ref reason @ ..] = words[..] else {
        return Ok(eph(USAGE.into()));
    };
    if verb != "request" {
        return Ok(eph(USAGE.into()));
    }
    let who = Requester::Chat(Actor {
        source: Source::Slack,
        user_id: cmd.user_id,
        name: cmd.user_name,
        channel: Some(cmd.channel_id),
    });
    let new = NewRequest {
        app: app_name.into(),
        version: version.into(),
        environment: env.into(),
        digest: digest.into(),
        reason: (!reason.is_empty()).then(|| reason.join(" ")),
    };
    match app.engine.request(who, new) {
        Err(e) => Err(e),
        Ok(Err(refusal)) => Ok(eph(format!("Request refused: {refusal}."))),
        Ok(Ok(req)) => {
            app.push(crate::approval::Effect::Post {
                request: req.id.clone(),
            });
            super::home::publish(app, super::home::concerned(&app.engine, &req.id));
            Ok(eph(format!(
                "Request {} for {} {} to {} posted in <#{}> for approval.",
                req.id, req.app, req.version, req.environment, req.channel
            )))
        }
    }
}

#[derive(Deserialize)]
struct Form {
    payload: String,
}

#[derive(Deserialize)]
pub(crate) struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: User,
    #[serde(default)]
    channel: Option<Channel>,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    trigger_id: Option<String>,
    /// A global shortcut's id.
    #[serde(default)]
    callback_id: Option<String>,
    /// A submitted modal.
    #[serde(default)]
    view: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct Channel {
    id: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

pub async fn interaction(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/slack/interactions";
    let signed = match verified(&app, &headers, &body, PATH) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Form>(&body) else {
        return (StatusCode::BAD_REQUEST, "no payload field").into_response();
    };
    let Ok(p) = serde_json::from_str::<Payload>(&form.payload) else {
        return (StatusCode::BAD_REQUEST, "payload is not an interaction").into_response();
    };
    let ids = signed.delivery(p.trigger_id.as_deref());
    match app.engine.once(&ids, || run_interaction(&app, p)) {
        Ok(Some(Some(answer))) => Json(answer).into_response(),
        Ok(Some(None)) => StatusCode::OK.into_response(),
        Ok(None) => {
            already_taken(PATH, &ids);
            StatusCode::OK.into_response()
        }
        Err(e) => internal(e),
    }
}

/// An interaction, whichever way it came (HTTP form or Socket Mode envelope): each Approve/Reject button
/// click (`block_actions`) goes to the engine, its effects to the chat queue; the global shortcut opens
/// the request form, and the form's submission makes the request. `Some` is the answer Slack shows (the
/// form's errors).
pub(crate) fn run_interaction(app: &App, p: Payload) -> anyhow::Result<Option<serde_json::Value>> {
    let actor = |p: &Payload| Actor {
        source: Source::Slack,
        name: if p.user.username.is_empty() {
            p.user.name.clone()
        } else {
            p.user.username.clone()
        },
        user_id: p.user.id.clone(),
        channel: p.channel.as_ref().map(|c| c.id.clone()),
    };
    match p.kind.as_str() {
        "shortcut" if p.callback_id.as_deref() == Some(super::form::CALLBACK) => {
            if let Some(t) = p.trigger_id.as_deref() {
                super::form::open(app, t, &p.user.id);
            }
            return Ok(None);
        }
        "view_submission" => {
            let Some(view) = p.view.as_ref() else {
                return Ok(None);
            };
            if view["callback_id"] != super::form::CALLBACK {
                return Ok(None);
            }
            return super::form::submit(app, actor(&p), view);
        }
        "block_actions" => {}
        _ => return Ok(None),
    }
    let actor = actor(&p);
    for a in &p.actions {
        let decision = match a.action_id.as_str() {
            APPROVE => Decision::Approve,
            REJECT => Decision::Reject,
            _ => continue,
        };
        match app.engine.act(&a.value, &actor, decision) {
            Err(e) => return Err(e),
            Ok(out) => out.effects.into_iter().for_each(|e| app.push(e)),
        }
        // everyone's App Home that shows this request
        super::home::publish(app, super::home::concerned(&app.engine, &a.value));
    }
    Ok(None)
}

/// `/slack/events` (the Events API over HTTP): the URL check Slack makes when the Request URL is
/// entered, then events, each taken once under its event_id (Slack retries a delivery it thinks failed).
pub async fn event(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "/slack/events";
    let signed = match verified(&app, &headers, &body, PATH) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not an Events API body").into_response();
    };
    if v["type"] == "url_verification" {
        return Json(json!({"challenge": v["challenge"]})).into_response();
    }
    let ids = match v["event_id"].as_str() {
        Some(e) if !e.is_empty() => vec![format!("slack-event:{e}")],
        _ => signed.delivery(None),
    };
    match app.engine.once(&ids, || {
        run_event(&app, &v);
        Ok(())
    }) {
        Ok(Some(())) => StatusCode::OK.into_response(),
        Ok(None) => {
            already_taken(PATH, &ids);
            StatusCode::OK.into_response()
        }
        Err(e) => internal(e),
    }
}

/// An Events API callback, whichever way it came: `app_home_opened` publishes the viewer's Home.
pub(crate) fn run_event(app: &App, callback: &serde_json::Value) {
    let e = &callback["event"];
    if e["type"] == "app_home_opened" && e["tab"] != "messages" {
        if let Some(user) = e["user"].as_str() {
            super::home::publish(app, vec![user.to_string()]);
        }
    }
}

/// The two endpoints' body parsers, for the fuzz target `fuzz/fuzz_targets/slack.rs`: does `body` decode
/// as a slash-command form, and as an interactivity form whose `payload` is an interaction?
#[doc(hidden)]
pub fn fuzz_parse(body: &[u8]) -> (bool, bool) {
    let command = serde_urlencoded::from_bytes::<Command>(body).is_ok();
    let interaction = serde_urlencoded::from_bytes::<Form>(body)
        .is_ok_and(|f| serde_json::from_str::<Payload>(&f.payload).is_ok());
    (command, interaction)
}
