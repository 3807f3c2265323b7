//! The pipeline API, with `Authorization: Bearer <token>`: `POST /v1/requests` asks for a deployment,
//! `GET /v1/requests/{id}` tells how a request stands (state, votes, decision, envelope id, and the high
//! side's outcome once that comes back: null until then). A pipeline token can ask and look, never
//! approve or reject: no other route accepts it. It sees only requests of the environments it may
//! request for (others are answered 404, as unknown ones are). Tokens are compared in constant time,
//! all of them every time.

use crate::approval::{Effect, NewRequest, Requester, View};
use crate::secret::Secret;
use crate::server::App;
use crate::store::Status;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct Token {
    pub name: String,
    pub secret: Secret,
    /// Empty: every environment.
    pub environments: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    app: String,
    version: String,
    environment: String,
    digest: String,
    #[serde(default)]
    on_behalf_of: Option<String>,
    /// Why this deploy (a ticket or change number): optional here, at most `MAX_REASON_CHARS`.
    #[serde(default)]
    reason: Option<String>,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// Why a call to the pipeline API is answered 401.
enum Unauthorized {
    NoToken,
    UnknownToken,
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let message = match self {
            Unauthorized::NoToken => "send Authorization: Bearer <pipeline token>",
            Unauthorized::UnknownToken => "unknown token",
        };
        error(StatusCode::UNAUTHORIZED, "unauthorized", message.into())
    }
}

/// The pipeline token presented in `Authorization: Bearer`.
fn authorize<'a>(app: &'a App, headers: &HeaderMap) -> Result<&'a Token, Unauthorized> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(Unauthorized::NoToken)?;
    // Check every token (no early exit), so timing does not tell which one is closest.
    let mut found: Option<&Token> = None;
    for t in &app.tokens {
        if t.secret.matches(presented.as_bytes()) {
            found = Some(t);
        }
    }
    found.ok_or_else(|| {
        tracing::warn!("refused a pipeline request: unknown bearer token");
        Unauthorized::UnknownToken
    })
}

fn internal(e: anyhow::Error, what: &str) -> Response {
    tracing::error!("{e:#}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the adapter could not {what}; see its log"),
    )
}

pub async fn create(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = match authorize(&app, &headers) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "body must be JSON {{app, version, environment, digest, on_behalf_of?, reason?}}: {e}"
                ),
            )
        }
    };
    let who = Requester::Pipeline {
        token: token.name.clone(),
        scope: token.environments.clone(),
        on_behalf_of: b.on_behalf_of,
    };
    let new = NewRequest {
        app: b.app,
        version: b.version,
        environment: b.environment,
        digest: b.digest,
        reason: b.reason,
    };
    match app.engine.request(who, new) {
        Err(e) => internal(e, "record the request"),
        Ok(Err(r)) => {
            let status = match r {
                crate::approval::Refusal::TokenScope(..) => StatusCode::FORBIDDEN,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, r.code(), r.to_string())
        }
        Ok(Ok(req)) => {
            app.push(Effect::Post {
                request: req.id.clone(),
            });
            (
                StatusCode::CREATED,
                Json(json!({
                    "request_id": req.id,
                    "environment": req.environment,
                    "channel": req.channel,
                    "deadline_at": req.deadline_at,
                })),
            )
                .into_response()
        }
    }
}

/// `GET /v1/requests/{id}`: how a request stands, for a token whose environments include the
/// request's.
pub async fn status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let token = match authorize(&app, &headers) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let view = match app.engine.view(&id) {
        Ok(v) => v,
        Err(e) => return internal(e, "read the request"),
    };
    match view {
        Some(v)
            if token.environments.is_empty()
                || token.environments.contains(&v.request.environment) =>
        {
            Json(status_json(&v)).into_response()
        }
        // another environment's request is none of this token's business: as if unknown
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown_request",
            format!(
                "no request {id} in the environments of token {:?}",
                token.name
            ),
        ),
    }
}

/// The answer of `GET /v1/requests/{id}` (documented in docs/approvals.md, "Pipelines on the low side").
pub fn status_json(v: &View) -> Value {
    let r = &v.request;
    let decided = r.status != Status::Pending;
    let decision = match r.status {
        Status::Pending => Value::Null,
        Status::Approved => json!("approve"),
        Status::Rejected | Status::Expired => json!("reject"),
    };
    let votes: Vec<Value> = v
        .votes
        .iter()
        .map(|x| json!({"name": x.name, "roles": x.roles, "source": x.source, "at": x.at}))
        .collect();
    json!({
        "request_id": r.id,
        "app": r.app,
        "version": r.version,
        "environment": r.environment,
        "digest": r.digest,
        "requester": r.requester,
        // why, as the requester put it; null when none was given
        "reason": r.reason,
        "created_at": r.created_at,
        "deadline_at": r.deadline_at,
        "state": r.status.word(),
        "approvals_needed": v.approvals,
        "votes": votes,
        "decision": decision,
        "decided_at": r.decided_at,
        "decided_by": r.decided_by,
        // the envelope exists once the request is decided; its id was chosen when it was made
        "envelope_id": if decided { json!(r.envelope_id) } else { Value::Null },
        // what the high side did with the envelope, from its signed outcomes; null until one came back
        "outcome": outcome(&v.outcomes),
    })
}

/// The high side's outcomes of a request, for a pipeline: the state they add up to (`deployed` once a
/// pipeline there consumed the approval, else `refused` or `accepted`), the last hook run's result, and
/// each outcome in the order the high side recorded them.
fn outcome(all: &[crate::store::Returned]) -> Value {
    if all.is_empty() {
        return Value::Null;
    }
    let has = |w: &str| all.iter().any(|o| o.event == w);
    let state = if has("consume") {
        "deployed"
    } else if has("reject") {
        "refused"
    } else if has("accept") {
        "accepted"
    } else {
        "recorded"
    };
    let hook = all.iter().rev().find_map(|o| match o.event.as_str() {
        "hook" => Some("ok"),
        "hook_failed" => Some("failed"),
        _ => None,
    });
    let events: Vec<Value> = all
        .iter()
        .map(|o| {
            json!({"event": o.event, "summary": o.summary, "at": o.at, "receiver": o.receiver,
            "record": o.seq, "envelope_id": o.envelope_id})
        })
        .collect();
    json!({
        "state": state,
        "summary": all.last().map(|o| o.summary.clone()),
        "hook": hook,
        "events": events,
    })
}
