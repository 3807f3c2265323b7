//! The pipeline API: `POST /v1/requests` with `Authorization: Bearer <token>`. A pipeline token can
//! ask for a deployment, never approve or reject one: no other route accepts it. Tokens are compared
//! in constant time, all of them every time.

use crate::approval::{Effect, NewRequest, Requester};
use crate::secret::Secret;
use crate::server::App;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
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
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

pub async fn create(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <pipeline token>".into(),
        );
    };
    // Check every token (no early exit), so timing does not tell which one is closest.
    let mut found: Option<&Token> = None;
    for t in &app.tokens {
        if t.secret.matches(presented.as_bytes()) {
            found = Some(t);
        }
    }
    let Some(token) = found else {
        tracing::warn!("refused a pipeline request: unknown bearer token");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown token".into(),
        );
    };
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "body must be JSON {{app, version, environment, digest, on_behalf_of?}}: {e}"
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
    };
    match app.engine.request(who, new) {
        Err(e) => {
            tracing::error!("{e:#}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the adapter could not record the request; see its log".into(),
            )
        }
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
