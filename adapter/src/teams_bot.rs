//! Microsoft Teams bot endpoint (`POST /teams/messages`) for Adaptive Card button clicks: an `invoke`
//! activity named `adaptiveCard/action` (Action.Execute, `value.action.verb` = approve|reject,
//! `value.action.data.request` = the request id) or a `message` activity with a `value` (Action.Submit,
//! `value.action` and `value.request`).
//!
//! Before anything in the activity is acted on, the Bot Framework JWT in `Authorization: Bearer` is
//! validated as "Authentication with the Bot Connector API" (Bot Service docs, "Connector to your
//! bot") requires, with `jsonwebtoken`: RS256 only, signature against the key of its `kid` from the
//! configured JWKS file or URL (cached; fetched again for an unknown `kid`, at most once a
//! minute), issuer `https://api.botframework.com`, audience the configured app id, expiry and
//! not-before (against the adapter's clock, 5 minutes leeway), the `serviceUrl` claim equal to the
//! activity's `serviceUrl` (401 otherwise); then the activity's `channelId` must be `msteams` and the
//! signing key's `endorsements` must include it (403 otherwise). The same bot answers Web Chat and
//! Direct Line, whose clients choose `from.id` themselves: only the channel id, set by the Bot
//! Connector and vouched for by the key's endorsement, says that Teams named the user. The Teams user
//! (`from.aadObjectId` if a person has it, else `from.id`) is matched against the policy and the click
//! goes through the engine as a Slack click does. Action.Execute is answered with an invoke response
//! carrying the outcome as a message.

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
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

pub const ISSUER: &str = "https://api.botframework.com";
/// The one channel whose activities may vote: Teams names the user, Web Chat's and Direct Line's
/// clients name themselves.
pub const CHANNEL: &str = "msteams";
const LEEWAY_SECS: u64 = 300;

/// Where the Bot Framework's signing keys come from.
enum KeySource {
    File,
    /// Fetched at start, again when a token names a key not in the cache (at most once a minute of
    /// the adapter's clock, so forged kids cannot make the adapter hammer the URL) or when the cache is
    /// a day old.
    Url {
        url: String,
        http: reqwest::Client,
    },
}

/// A signing key as the Bot Framework's JWKS publishes it: the JWK and, beside it, the channels the
/// key is endorsed for (a field of its own that `Jwk` does not keep).
struct BotKey {
    jwk: Jwk,
    endorsements: Vec<String>,
}

#[derive(Deserialize)]
struct Endorsed {
    #[serde(default)]
    endorsements: Vec<String>,
}

#[derive(Deserialize)]
struct KeySet {
    keys: Vec<Value>,
}

fn find<'a>(keys: &'a [BotKey], kid: &str) -> Option<&'a BotKey> {
    keys.iter()
        .find(|k| k.jwk.common.key_id.as_deref() == Some(kid))
}

struct KeyCache {
    keys: Vec<BotKey>,
    /// Adapter clock time of the last fetch (tried, whether or not it worked).
    fetched_at: Option<u64>,
}

pub struct Bot {
    app_id: String,
    source: KeySource,
    cache: tokio::sync::Mutex<KeyCache>,
}

/// Shortest time between two fetches of the JWKS URL.
pub const JWKS_MIN_REFRESH_SECS: u64 = 60;
/// Age after which the JWKS is fetched again even if every kid is known.
pub const JWKS_MAX_AGE_SECS: u64 = 24 * 3600;

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default, rename = "serviceUrl", alias = "serviceurl")]
    service_url: Option<String>,
}

fn parse_jwks(text: &str, from: &str) -> Result<Vec<BotKey>> {
    let set: KeySet =
        serde_json::from_str(text).with_context(|| format!("{from} is not a JWKS"))?;
    if set.keys.is_empty() {
        bail!("{from} holds no keys");
    }
    set.keys
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let jwk = Jwk::deserialize(v)
                .with_context(|| format!("{from}: key {} is not a JWK", i + 1))?;
            let Endorsed { endorsements } = Endorsed::deserialize(v).with_context(|| {
                format!(
                    "{from}: key {}: endorsements is not a list of channel ids",
                    i + 1
                )
            })?;
            Ok(BotKey { jwk, endorsements })
        })
        .collect()
}

/// What a valid token proves: the key that signed it and the channels that key may vouch for.
#[derive(Debug)]
pub struct Verified {
    kid: String,
    endorsements: Vec<String>,
}

/// Why an activity with a valid token is still not acted on (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("the activity's channelId is {0:?}, not {CHANNEL:?}: only Teams activities may vote")]
    Channel(String),
    #[error("signing key {kid} is not endorsed for channel {channel:?} (its endorsements: {endorsements:?})")]
    NotEndorsed {
        kid: String,
        channel: String,
        endorsements: Vec<String>,
    },
}

impl Verified {
    /// May an activity of channel `channel_id` be acted on? Only a Teams one, under a key endorsed for
    /// Teams.
    pub fn admit(&self, channel_id: &str) -> Result<(), Forbidden> {
        if channel_id != CHANNEL {
            return Err(Forbidden::Channel(channel_id.to_string()));
        }
        if !self.endorsements.iter().any(|e| e == channel_id) {
            return Err(Forbidden::NotEndorsed {
                kid: self.kid.clone(),
                channel: channel_id.to_string(),
                endorsements: self.endorsements.clone(),
            });
        }
        Ok(())
    }
}

impl Bot {
    pub fn load(app_id: &str, jwks: &Path) -> Result<Bot> {
        let text = std::fs::read_to_string(jwks)
            .with_context(|| format!("cannot read the JWKS {}", jwks.display()))?;
        let keys = parse_jwks(&text, &jwks.display().to_string())?;
        Ok(Bot {
            app_id: app_id.to_string(),
            source: KeySource::File,
            cache: tokio::sync::Mutex::new(KeyCache {
                keys,
                fetched_at: None,
            }),
        })
    }

    /// Keys from `url`, fetched now (a failure is logged, and the fetch is tried again when a token
    /// arrives: Slack keeps working while the key URL is unreachable).
    pub async fn from_url(app_id: &str, url: &str, now: u64) -> Result<Bot> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .context("cannot set up the HTTP client")?;
        let bot = Bot {
            app_id: app_id.to_string(),
            source: KeySource::Url {
                url: url.to_string(),
                http,
            },
            cache: tokio::sync::Mutex::new(KeyCache {
                keys: Vec::new(),
                fetched_at: None,
            }),
        };
        {
            let mut cache = bot.cache.lock().await;
            bot.refresh(&mut cache, now).await;
        }
        Ok(bot)
    }

    async fn refresh(&self, cache: &mut KeyCache, now: u64) {
        let KeySource::Url { url, http } = &self.source else {
            return;
        };
        cache.fetched_at = Some(now);
        let got = async {
            let resp = http
                .get(url)
                .send()
                .await
                .with_context(|| format!("cannot fetch the JWKS from {url}"))?;
            let status = resp.status();
            if !status.is_success() {
                bail!("the JWKS URL {url} answered {status}");
            }
            let text = resp
                .text()
                .await
                .with_context(|| format!("cannot read the JWKS from {url}"))?;
            parse_jwks(&text, url)
        }
        .await;
        match got {
            Ok(keys) => {
                tracing::info!("{} Bot Framework key(s) fetched from {url}", keys.len());
                cache.keys = keys;
            }
            Err(e) => tracing::error!("{e:#}"),
        }
    }

    /// The key `kid` and the channels it is endorsed for, refreshing the cache from the URL when it
    /// lacks the key (rate-limited) or is old.
    async fn key(&self, kid: &str, now: u64) -> Result<(DecodingKey, Vec<String>)> {
        let mut cache = self.cache.lock().await;
        if matches!(self.source, KeySource::Url { .. }) {
            let since = cache.fetched_at.map(|t| now.saturating_sub(t));
            let may_fetch = since.is_none_or(|s| s >= JWKS_MIN_REFRESH_SECS);
            let stale = since.is_none_or(|s| s >= JWKS_MAX_AGE_SECS);
            if may_fetch && (stale || find(&cache.keys, kid).is_none()) {
                self.refresh(&mut cache, now).await;
            }
        }
        let key =
            find(&cache.keys, kid).with_context(|| format!("key {kid} is not in the JWKS"))?;
        let decoding = DecodingKey::from_jwk(&key.jwk).context("the JWKS key is not usable")?;
        Ok((decoding, key.endorsements.clone()))
    }

    /// Validate the bearer token for an activity from `service_url`, at `now`; what the channel
    /// may do is `Verified::admit`'s to say.
    pub async fn validate(
        &self,
        authorization: Option<&str>,
        service_url: &str,
        now: u64,
    ) -> Result<Verified> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .context("no Authorization: Bearer token")?
            .trim();
        let header = jsonwebtoken::decode_header(token).context("the token is not a JWT")?;
        if header.alg != Algorithm::RS256 {
            bail!("the token is signed with {:?}, not RS256", header.alg);
        }
        let kid = header.kid.context("the token names no key (kid)")?;
        let (key, endorsements) = self.key(&kid, now).await?;
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
        if now > c.exp.saturating_add(LEEWAY_SECS) {
            bail!("the token expired at {}", c.exp);
        }
        if c.nbf
            .is_some_and(|nbf| now.saturating_add(LEEWAY_SECS) < nbf)
        {
            bail!("the token is not valid yet");
        }
        match c.service_url {
            Some(s) if s == service_url => Ok(Verified { kid, endorsements }),
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
    let channel_id = a.get("channelId").and_then(Value::as_str).unwrap_or("");
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let verified = match bot.validate(auth, service_url, app.engine.now()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("refused a request to /teams/messages: {e:#}");
            return (StatusCode::UNAUTHORIZED, format!("refused: {e:#}")).into_response();
        }
    };
    if let Err(e) = verified.admit(channel_id) {
        tracing::warn!("refused a request to /teams/messages: {e}");
        return (StatusCode::FORBIDDEN, format!("refused: {e}")).into_response();
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
    if execute && verb == Some("request") {
        let data = a.pointer("/value/action/data").unwrap_or(&Value::Null);
        // the Bot Connector retries an invoke it thinks failed: a form is taken once, by activity id
        let Some(id) = a
            .get("id")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty())
        else {
            return (StatusCode::BAD_REQUEST, "an activity without an id").into_response();
        };
        return match app.engine.once(&[format!("teams-activity:{id}")], || {
            Ok(request_from_card(&app, &a, data))
        }) {
            Ok(Some(r)) => r,
            Ok(None) => invoke_response("This form was already received; it was not taken again."),
            Err(e) => {
                tracing::error!("{e:#}");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        };
    }
    let decision = match verb {
        Some("approve") => Decision::Approve,
        Some("reject") => Decision::Reject,
        _ => return (StatusCode::BAD_REQUEST, "unknown action").into_response(),
    };
    let Some(request) = request else {
        return (StatusCode::BAD_REQUEST, "no request id in the card data").into_response();
    };
    let actor = teams_actor(&app, &a);
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

/// The person acting in an activity: its Teams user, display name and conversation.
fn teams_actor(app: &App, a: &Value) -> Actor {
    let text = |p: &str| a.pointer(p).and_then(Value::as_str);
    Actor {
        source: Source::Teams,
        user_id: teams_user(app, a),
        name: text("/from/name").unwrap_or("").to_string(),
        channel: text("/conversation/id").map(str::to_string),
    }
}

/// The Teams user an activity comes from: `from.aadObjectId` if a person has it, else `from.id`.
fn teams_user(app: &App, a: &Value) -> String {
    let from_id = a.pointer("/from/id").and_then(Value::as_str).unwrap_or("");
    let aad = a.pointer("/from/aadObjectId").and_then(Value::as_str);
    match aad {
        Some(x) if app.engine.policy().by_user(Source::Teams, x).is_some() => x.to_string(),
        _ => from_id.to_string(),
    }
}

/// The card form submitted (Action.Execute, verb `request`): the request made as a typed one would be,
/// answered in the invoke response.
fn request_from_card(app: &App, a: &Value, data: &Value) -> Response {
    let field = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let new = crate::approval::NewRequest {
        environment: field("environment"),
        app: field("app"),
        version: field("version"),
        digest: field("digest"),
        reason: Some(field("reason")),
    };
    // the form asks for a reason (`isRequired`); a submission without one is refused like the card
    // would have refused it
    let max = crate::approval::MAX_REASON_CHARS;
    if matches!(
        crate::approval::clean_reason(new.reason.as_deref(), max),
        Ok(None)
    ) {
        return invoke_response("Request refused: say why (a ticket or change number will do).");
    }
    let actor = teams_actor(app, a);
    match app
        .engine
        .request(crate::approval::Requester::Chat(actor), new)
    {
        Err(e) => {
            tracing::error!("{e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the adapter could not record this",
            )
                .into_response()
        }
        Ok(Err(refusal)) => invoke_response(&format!("Request refused: {refusal}.")),
        Ok(Ok(req)) => {
            app.push(crate::approval::Effect::Post {
                request: req.id.clone(),
            });
            invoke_response(&format!(
                "Request {} for {} {} to {} posted for approval.",
                req.id, req.app, req.version, req.environment
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endorsements_are_read_beside_each_key_and_only_msteams_is_admitted() {
        let jwks = include_str!("../tests/teams-test-jwks.json");
        let keys = parse_jwks(jwks, "test JWKS").unwrap();
        let verified = |kid: &str| Verified {
            kid: kid.into(),
            endorsements: find(&keys, kid).unwrap().endorsements.clone(),
        };
        assert_eq!(verified("test-key-1").admit("msteams"), Ok(()));
        assert_eq!(
            verified("test-key-1").admit("webchat"),
            Err(Forbidden::Channel("webchat".into()))
        );
        assert_eq!(
            verified("test-key-webchat").admit("msteams"),
            Err(Forbidden::NotEndorsed {
                kid: "test-key-webchat".into(),
                channel: "msteams".into(),
                endorsements: vec!["webchat".into(), "directline".into()],
            })
        );
        assert!(verified("test-key-bare").endorsements.is_empty());
        let bad = jwks.replacen(r#"["msteams"]"#, r#""msteams""#, 1);
        let e = format!("{:#}", parse_jwks(&bad, "test JWKS").err().unwrap());
        assert!(
            e.contains("test JWKS: key 1: endorsements is not a list of channel ids"),
            "{e}"
        );
    }
}
