//! Microsoft Teams bot endpoint (`POST /teams/messages`) for Adaptive Card button clicks: an `invoke`
//! activity named `adaptiveCard/action` (Action.Execute, `value.action.verb` = approve|reject,
//! `value.action.data.request` = the request id) or a `message` activity with a `value` (Action.Submit,
//! `value.action` and `value.request`).
//!
//! Before anything in the activity is acted on, the Bot Framework JWT in `Authorization: Bearer` is
//! validated with `jsonwebtoken`: RS256 only, signature against the key of its `kid` from the
//! configured JWKS file, issuer `https://api.botframework.com`, audience the configured app id, expiry
//! (against the adapter's clock, 5 minutes leeway), and the `serviceUrl` claim equal to the activity's
//! `serviceUrl`. The Teams user (`from.aadObjectId` if a person has it, else `from.id`) is matched
//! against the policy and the click goes through the engine as a Slack click does. Action.Execute is
//! answered with an invoke response carrying the outcome as a message.

use crate::approval::Actor;
use crate::policy::Source;
use crate::server::App;
use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use diode_proto::envelope::Decision;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

pub const ISSUER: &str = "https://api.botframework.com";
const LEEWAY_SECS: u64 = 300;

pub struct Bot {
    app_id: String,
    keys: JwkSet,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default, rename = "serviceUrl", alias = "serviceurl")]
    service_url: Option<String>,
}

impl Bot {
    pub fn load(app_id: &str, jwks: &Path) -> Result<Bot> {
        let text = std::fs::read_to_string(jwks)
            .with_context(|| format!("cannot read the JWKS {}", jwks.display()))?;
        let keys: JwkSet = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JWKS", jwks.display()))?;
        if keys.keys.is_empty() {
            bail!("{} holds no keys", jwks.display());
        }
        Ok(Bot {
            app_id: app_id.to_string(),
            keys,
        })
    }

    /// Validate the bearer token for an activity from `service_url`, at `now`.
    pub fn validate(&self, authorization: Option<&str>, service_url: &str, now: u64) -> Result<()> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .context("no Authorization: Bearer token")?
            .trim();
        let header = jsonwebtoken::decode_header(token).context("the token is not a JWT")?;
        if header.alg != Algorithm::RS256 {
            bail!("the token is signed with {:?}, not RS256", header.alg);
        }
        let kid = header.kid.context("the token names no key (kid)")?;
        let jwk = self
            .keys
            .find(&kid)
            .with_context(|| format!("key {kid} is not in the JWKS"))?;
        let key = DecodingKey::from_jwk(jwk).context("the JWKS key is not usable")?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[&self.app_id]);
        // expiry is checked below against the adapter's clock
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &v).context("the token is refused")?;
        let c = data.claims;
        if now > c.exp + LEEWAY_SECS {
            bail!("the token expired at {}", c.exp);
        }
        if c.nbf.is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
            bail!("the token is not valid yet");
        }
        match c.service_url {
            Some(s) if s == service_url => Ok(()),
            Some(s) => {
                bail!("the token is for serviceUrl {s}, the activity comes from {service_url}")
            }
            None => bail!("the token has no serviceUrl claim"),
        }
    }
}

fn invoke_response(text: &str) -> Response {
    Json(json!({
        "statusCode": 200,
        "type": "application/vnd.microsoft.activity.message",
        "value": text,
    }))
    .into_response()
}

pub async fn messages(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(bot) = app.teams_bot.as_ref() else {
        return (StatusCode::NOT_FOUND, "the Teams bot is not configured").into_response();
    };
    let Ok(a) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not an activity").into_response();
    };
    let service_url = a.get("serviceUrl").and_then(Value::as_str).unwrap_or("");
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err(e) = bot.validate(auth, service_url, app.engine.now()) {
        tracing::warn!("refused a request to /teams/messages: {e:#}");
        return (StatusCode::UNAUTHORIZED, format!("refused: {e:#}")).into_response();
    }
    let kind = a.get("type").and_then(Value::as_str).unwrap_or("");
    let name = a.get("name").and_then(Value::as_str).unwrap_or("");
    let (execute, verb, request) = if kind == "invoke" && name == "adaptiveCard/action" {
        let act = a.pointer("/value/action").unwrap_or(&Value::Null);
        (
            true,
            act.get("verb").and_then(Value::as_str),
            act.pointer("/data/request").and_then(Value::as_str),
        )
    } else if kind == "message" && a.get("value").is_some() {
        (
            false,
            a.pointer("/value/action").and_then(Value::as_str),
            a.pointer("/value/request").and_then(Value::as_str),
        )
    } else {
        return StatusCode::OK.into_response();
    };
    let decision = match verb {
        Some("approve") => Decision::Approve,
        Some("reject") => Decision::Reject,
        _ => return (StatusCode::BAD_REQUEST, "unknown action").into_response(),
    };
    let Some(request) = request else {
        return (StatusCode::BAD_REQUEST, "no request id in the card data").into_response();
    };
    let from_id = a.pointer("/from/id").and_then(Value::as_str).unwrap_or("");
    let aad = a.pointer("/from/aadObjectId").and_then(Value::as_str);
    let user_id = match aad {
        Some(x) if app.engine.policy().by_user(Source::Teams, x).is_some() => x,
        _ => from_id,
    };
    let actor = Actor {
        source: Source::Teams,
        user_id: user_id.to_string(),
        name: a
            .pointer("/from/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        channel: a
            .pointer("/conversation/id")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let out = match app.engine.act(request, &actor, decision) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("{e:#}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the adapter could not record this",
            )
                .into_response();
        }
    };
    let text = match &out.refusal {
        Some(r) => format!("Refused: {r}"),
        None => "Recorded.".to_string(),
    };
    out.effects.into_iter().for_each(|e| app.push(e));
    if execute {
        invoke_response(&text)
    } else {
        StatusCode::OK.into_response()
    }
}
