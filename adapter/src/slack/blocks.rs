//! The Block Kit message of a request: what is asked (artifact, digest, environment, requester), the
//! rule, the deadline, who has approved so far, and Approve / Reject buttons with a confirmation
//! dialog while it is pending. Once decided, the buttons are gone and the message says who decided and
//! which envelope carries the decision.

use crate::approval::{rfc3339, View};
use crate::store::{Returned, Status};
use serde_json::{json, Value};

pub const APPROVE: &str = "approve";
pub const REJECT: &str = "reject";

/// Text from outside (a requester's reason, a high side's outcome) made safe for mrkdwn: Slack reads
/// `<...>` as links and mentions (`<!channel>`) and `&` as the start of an entity, and asks that these
/// three be escaped.
pub(crate) fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The emoji for a high side's event word.
fn outcome_emoji(o: &Returned) -> &'static str {
    match o.event.as_str() {
        "accept" => ":inbox_tray:",
        "consume" => ":rocket:",
        "reject" => ":x:",
        "hook" => ":gear:",
        "hook_failed" => ":warning:",
        _ => ":memo:",
    }
}

pub(crate) fn mrkdwn(t: String) -> Value {
    json!({"type": "mrkdwn", "text": t})
}

pub(crate) fn button(
    action: &str,
    label: &str,
    style: &str,
    request: &str,
    confirm: &str,
) -> Value {
    json!({
        "type": "button",
        "action_id": action,
        "text": {"type": "plain_text", "text": label},
        "style": style,
        "value": request,
        "confirm": {
            "title": {"type": "plain_text", "text": format!("{label} this deployment?")},
            "text": {"type": "mrkdwn", "text": confirm},
            "confirm": {"type": "plain_text", "text": label},
            "deny": {"type": "plain_text", "text": "Cancel"}
        }
    })
}

/// Slack's date formatting with a plain fallback.
pub(crate) fn when(t: u64) -> String {
    format!(
        "<!date^{t}^{{date_short_pretty}} {{time}} UTC|{}>",
        rfc3339(t)
    )
}

/// (fallback text, blocks)
pub fn render(v: &View) -> (String, Vec<Value>) {
    let r = &v.request;
    let title = format!(
        "Deployment request: {} {} to {}",
        r.app, r.version, r.environment
    );
    let requester = if r.source == "slack" {
        format!("<@{}>", r.requester)
    } else {
        format!("{} ({}) via {}", r.requester_name, r.requester, r.source)
    };
    let approvals = v.approvals_text();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title}}),
        json!({"type": "section", "fields": [
            mrkdwn(format!("*Artifact*\n{} {}", r.app, r.version)),
            mrkdwn(format!("*Environment*\n{}", r.environment)),
            mrkdwn(format!("*Requested by*\n{requester}")),
            mrkdwn(format!("*Deadline*\n{}", when(r.deadline_at))),
        ]}),
        json!({"type": "section", "text": mrkdwn(format!("*Digest*\n`{}`", r.digest))}),
    ];
    if let Some(reason) = &r.reason {
        blocks
            .push(json!({"type": "section", "text": mrkdwn(format!("*Reason*\n{}", esc(reason)))}));
    }
    blocks.extend([
        json!({"type": "section", "text": mrkdwn(format!("*Rule*\n{}", v.rule))}),
        json!({"type": "section", "text": mrkdwn(format!(
            "*Approvals* ({} of {})\n{approvals}", v.votes.len(), v.approvals))}),
    ]);
    let status = match r.status {
        Status::Pending => {
            let confirm = format!(
                "{} {} to *{}*, digest `{}`",
                r.app, r.version, r.environment, r.digest
            );
            blocks.push(json!({"type": "actions", "block_id": "decision", "elements": [
                button(APPROVE, "Approve", "primary", &r.id, &confirm),
                button(REJECT, "Reject", "danger", &r.id, &confirm),
            ]}));
            "pending".to_string()
        }
        Status::Approved => format!(
            ":white_check_mark: *Approved* by {approvals}. Envelope `{}` sent to the high side.",
            r.envelope_id
        ),
        Status::Rejected => format!(
            ":no_entry: *Rejected* by {}. Envelope `{}` sent to the high side.",
            r.decided_by.as_deref().unwrap_or("?"),
            r.envelope_id
        ),
        Status::Expired => format!(
            ":hourglass: *Rejected*: no decision by the deadline. Envelope `{}` sent to the high side.",
            r.envelope_id
        ),
    };
    if r.status != Status::Pending {
        blocks.push(json!({"type": "section", "text": mrkdwn(status.clone())}));
    }
    if !v.outcomes.is_empty() {
        let lines: Vec<String> = v
            .outcomes
            .iter()
            .map(|o| format!("{} {}", outcome_emoji(o), esc(&o.summary)))
            .collect();
        blocks.push(json!({"type": "section", "block_id": "outcomes",
            "text": mrkdwn(format!("*On the high side*\n{}", lines.join("\n")))}));
    }
    blocks.push(json!({"type": "context", "elements": [mrkdwn(format!("request `{}`", r.id))]}));
    let last = v
        .outcomes
        .last()
        .map(|o| format!(": {}", o.summary))
        .unwrap_or_default();
    (format!("{title} ({}){last}", r.status.word()), blocks)
}
