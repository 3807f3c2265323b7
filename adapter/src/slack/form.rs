//! The request form: `/deploy` with no arguments and the global shortcut "Request a deployment" open a
//! modal (`views.open`, within the 3 s a trigger_id lives) with the environments the person may request
//! in as a select, app, version and digest as text, and the reason (why this deploy: a ticket or change
//! number, a sentence) as a multiline text the form requires: reviewers decide on it, and a person
//! filling a form can always say why (the API and the typed command leave it optional). Its submission (`view_submission`) is checked
//! here and by the engine; what is wrong is shown beside its field (`response_action: errors`), so the
//! person keeps what they typed; a request that passes is posted for approval like a typed one.

use crate::approval::{clean_reason, Actor, NewRequest, Requester, MAX_REASON_CHARS};
use crate::policy::{Policy, Source};
use crate::server::App;
use serde_json::{json, Map, Value};

/// The modal's callback id, and the global shortcut's.
pub const CALLBACK: &str = "deploy_request";

/// The environments `user_id` may request deployments to (none if they are not in `[people]`).
pub fn requestable(policy: &Policy, user_id: &str) -> Vec<String> {
    let Some(p) = policy.by_user(Source::Slack, user_id) else {
        return Vec::new();
    };
    policy
        .environments
        .values()
        .filter(|e| e.requesters.is_empty() || p.roles.iter().any(|r| e.requesters.contains(r)))
        .map(|e| e.name.clone())
        .collect()
}

fn text(t: &str) -> Value {
    json!({"type": "plain_text", "text": t})
}

fn input(block: &str, label: &str, hint: Option<&str>, element: Value) -> Value {
    let mut b =
        json!({"type": "input", "block_id": block, "label": text(label), "element": element});
    if let Some(h) = hint {
        b["hint"] = text(h);
    }
    b
}

/// The modal (Block Kit) for a person who may request in `envs` (at least one).
pub fn view(envs: &[String]) -> Value {
    let options: Vec<Value> = envs
        .iter()
        .map(|e| json!({"text": text(e), "value": e}))
        .collect();
    let plain =
        |max: u32| json!({"type": "plain_text_input", "action_id": "value", "max_length": max});
    json!({
        "type": "modal",
        "callback_id": CALLBACK,
        "title": text("Request a deployment"),
        "submit": text("Request"),
        "close": text("Cancel"),
        "blocks": [
            input("environment", "Environment", None,
                json!({"type": "static_select", "action_id": "value", "options": options})),
            input("app", "Application", None, plain(100)),
            input("version", "Version", None, plain(100)),
            input("digest", "Artifact digest", Some("sha256: followed by the 64 hex digits of the artifact"),
                plain(71)),
            input("reason", "Reason", Some("Why this deploy: a ticket or change number, or a sentence"),
                json!({"type": "plain_text_input", "action_id": "value", "multiline": true,
                       "max_length": MAX_REASON_CHARS})),
        ]
    })
}

/// What the person entered, by block: a select's chosen value or a text input's value.
fn field(view: &Value, block: &str) -> String {
    let v = &view["state"]["values"][block]["value"];
    v["selected_option"]["value"]
        .as_str()
        .or_else(|| v["value"].as_str())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The digest rule of envelopes themselves (`sha256:` and 64 lowercase hex digits).
fn is_digest(d: &str) -> bool {
    diode_proto::envelope::digest_ok(d)
}

/// A submitted form: the request made (None: Slack closes the modal), or the errors to show in it.
pub fn submit(app: &App, actor: Actor, view: &Value) -> anyhow::Result<Option<Value>> {
    let new = NewRequest {
        environment: field(view, "environment"),
        app: field(view, "app"),
        version: field(view, "version"),
        digest: field(view, "digest"),
        reason: Some(field(view, "reason")),
    };
    let mut errors = Map::new();
    if new.environment.is_empty() {
        errors.insert("environment".into(), json!("Choose an environment."));
    }
    if new.app.is_empty() {
        errors.insert("app".into(), json!("Name the application."));
    }
    if new.version.is_empty() {
        errors.insert("version".into(), json!("Give the version."));
    }
    if !is_digest(&new.digest) {
        errors.insert(
            "digest".into(),
            json!(
                "Expected sha256: followed by 64 lowercase hex digits (as sha256sum prints them)."
            ),
        );
    }
    match clean_reason(new.reason.as_deref(), MAX_REASON_CHARS) {
        Ok(Some(_)) => {}
        Ok(None) => {
            errors.insert(
                "reason".into(),
                json!("Say why: a ticket or change number will do."),
            );
        }
        Err(r) => {
            errors.insert("reason".into(), json!(format!("Too long: {r}.")));
        }
    }
    if !errors.is_empty() {
        return Ok(Some(json!({"response_action": "errors", "errors": errors})));
    }
    match app.engine.request(Requester::Chat(actor), new)? {
        Ok(req) => {
            super::home::publish(app, super::home::concerned(&app.engine, &req.id));
            app.push(crate::approval::Effect::Post { request: req.id });
            Ok(None)
        }
        // refused by the policy or the request's content: shown beside the environment, the field the
        // policy is about, in the engine's own words
        Err(refusal) => Ok(Some(json!({
            "response_action": "errors",
            "errors": {"environment": format!("Refused: {refusal}.")},
        }))),
    }
}

/// Open the form for `user_id` with `trigger_id` (the call is made in the background: Slack waits for
/// the answer to the command or shortcut first). Returns what to tell the person at once.
pub fn open(app: &App, trigger_id: &str, user_id: &str) -> Value {
    let envs = requestable(app.engine.policy(), user_id);
    if envs.is_empty() {
        return json!({"response_type": "ephemeral",
            "text": "You may not request deployments here (you are not in the approval policy, or your roles request nowhere)."});
    }
    let Some(api) = app.slack.as_ref().map(|s| s.api.clone()) else {
        return json!({"response_type": "ephemeral", "text": "Slack is not configured."});
    };
    let body = json!({"trigger_id": trigger_id, "view": view(&envs)});
    tokio::spawn(async move {
        if let Err(e) = api.call("views.open", &body).await {
            tracing::error!("cannot open the request form: {e:#}");
        }
    });
    json!({"response_type": "ephemeral", "text": "Opening the request form..."})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_sha256_and_64_hex_digits() {
        assert!(is_digest(&format!("sha256:{}", "ab".repeat(32))));
        assert!(!is_digest(&format!("sha256:{}", "ab".repeat(31))));
        assert!(!is_digest(&format!("sha512:{}", "ab".repeat(32))));
        assert!(!is_digest(&format!("sha256:{}", "zz".repeat(32))));
        assert!(
            !is_digest(&format!("sha256:{}", "AB".repeat(32))),
            "lowercase, as envelopes carry it"
        );
    }

    #[test]
    fn the_form_reads_selects_and_text_inputs() {
        let v = json!({"state": {"values": {
            "environment": {"value": {"type": "static_select", "selected_option": {"value": "prod"}}},
            "app": {"value": {"type": "plain_text_input", "value": " web "}},
        }}});
        assert_eq!(field(&v, "environment"), "prod");
        assert_eq!(field(&v, "app"), "web");
        assert_eq!(field(&v, "digest"), "");
        let m = view(&["prod".into(), "staging".into()]);
        assert_eq!(m["callback_id"], CALLBACK);
        assert_eq!(m["blocks"][0]["element"]["options"][1]["value"], "staging");
        let reason = &m["blocks"][4];
        assert_eq!(reason["block_id"], "reason");
        assert_eq!(reason["element"]["multiline"], true);
        assert_eq!(reason["element"]["max_length"], MAX_REASON_CHARS);
        assert!(reason.get("optional").is_none(), "required in the form");
    }
}
