//! The App Home tab: what waits for the viewer. Published (`views.publish`) when they open the tab
//! (`app_home_opened`, Events API over HTTP or Socket Mode) and again for everyone concerned whenever a
//! request changes: a vote lands, a request is made from the form. Two lists: requests waiting for the
//! viewer's vote (they may approve in that environment, did not ask for it, have not voted yet), each
//! with Approve / Reject (the same buttons as the channel message), and the viewer's own open requests
//! with the votes so far and the deadline.

use super::blocks::{button, esc, mrkdwn, when, APPROVE, REJECT};
use crate::approval::Engine;
use crate::policy::Source;
use crate::server::App;
use serde_json::{json, Value};

/// The Home view for Slack user `user_id`.
pub fn view(engine: &Engine, user_id: &str) -> anyhow::Result<Value> {
    let crate::inbox::Inbox { waiting, mine } = crate::inbox::of(engine, Source::Slack, user_id)?;
    let header = |t: &str| json!({"type": "header", "text": {"type": "plain_text", "text": t}});
    let mut blocks = vec![header(&format!(
        "Waiting for your vote ({})",
        waiting.len()
    ))];
    if waiting.is_empty() {
        blocks.push(
            json!({"type": "context", "elements": [mrkdwn("Nothing waits for you.".into())]}),
        );
    }
    for v in &waiting {
        let r = &v.request;
        blocks.push(json!({"type": "section", "text": mrkdwn(format!(
            "*{} {}* to *{}*, asked by {}\n`{}`{}\nApprovals {} of {}: {}. Deadline {}",
            r.app, r.version, r.environment, r.requester_name, r.digest, reason_line(r),
            v.votes.len(), v.approvals, v.approvals_text(), when(r.deadline_at)))}));
        let confirm = format!(
            "{} {} to *{}*, digest `{}`",
            r.app, r.version, r.environment, r.digest
        );
        blocks.push(
            json!({"type": "actions", "block_id": format!("home-{}", r.id), "elements": [
                button(APPROVE, "Approve", "primary", &r.id, &confirm),
                button(REJECT, "Reject", "danger", &r.id, &confirm),
            ]}),
        );
    }
    blocks.push(json!({"type": "divider"}));
    blocks.push(header(&format!("Your open requests ({})", mine.len())));
    if mine.is_empty() {
        blocks.push(
            json!({"type": "context", "elements": [mrkdwn("You have no open requests.".into())]}),
        );
    }
    for v in &mine {
        let r = &v.request;
        blocks.push(json!({"type": "section", "text": mrkdwn(format!(
            "*{} {}* to *{}*: approvals {} of {} ({}). Deadline {}{}",
            r.app, r.version, r.environment, v.votes.len(), v.approvals, v.approvals_text(),
            when(r.deadline_at), reason_line(r)))}));
    }
    Ok(json!({"type": "home", "blocks": blocks}))
}

/// The request's reason on a line of its own, escaped for mrkdwn (nothing when it has none).
fn reason_line(r: &crate::store::Request) -> String {
    r.reason
        .as_deref()
        .map(|t| format!("\n_Reason:_ {}", esc(t)))
        .unwrap_or_default()
}

/// The Slack users a change to `request` concerns: those who may vote on it and who asked for it.
pub fn concerned(engine: &Engine, request: &str) -> Vec<String> {
    let Ok(Some(v)) = engine.view(request) else {
        return Vec::new();
    };
    let policy = engine.policy();
    let mut users: Vec<String> = policy
        .environments
        .get(&v.request.environment)
        .map(|env| {
            policy
                .eligible(env)
                .filter_map(|p| p.slack.clone())
                .collect()
        })
        .unwrap_or_default();
    if v.request.source == "slack" {
        users.push(v.request.requester.clone());
    }
    users.sort();
    users.dedup();
    users
}

/// Publish the Home view of each of `users`, in the background.
pub fn publish(app: &App, users: Vec<String>) {
    let Some(api) = app.slack.as_ref().map(|s| s.api.clone()) else {
        return;
    };
    let views: Vec<(String, Value)> = users
        .into_iter()
        .filter_map(|u| match view(&app.engine, &u) {
            Ok(v) => Some((u, v)),
            Err(e) => {
                tracing::error!("cannot build the App Home of {u}: {e:#}");
                None
            }
        })
        .collect();
    if views.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (user, view) in views {
            if let Err(e) = api
                .call("views.publish", &json!({"user_id": user, "view": view}))
                .await
            {
                tracing::warn!("cannot publish the App Home of {user}: {e:#}");
            }
        }
    });
}
