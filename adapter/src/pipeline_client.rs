//! `diode-chat request`: a low-side pipeline's client of the adapter's pipeline API (`pipeline`). It asks
//! for a deployment with `POST /v1/requests` and, asked to wait, polls `GET /v1/requests/{id}` until the
//! request is decided. A wait ends with the exit codes of `diode-recv approvals wait` on the high side
//! (`Answer::code`), so a pipeline reads both the same way.

use crate::secret::Secret;
use anyhow::{anyhow, bail, Context, Result};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

/// What a pipeline asks for (the body of `POST /v1/requests`).
#[derive(Debug, Clone)]
pub struct Ask {
    pub app: String,
    pub version: String,
    pub environment: String,
    pub digest: String,
    pub on_behalf_of: Option<String>,
    /// Why this deploy (a ticket or change number); sent only when given.
    pub reason: Option<String>,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Approved: the envelope that carries the approval to the high side.
    Approved(String),
    /// People rejected it: who.
    Rejected(String),
    /// Nobody decided by the deadline (the adapter sent a rejection).
    Expired(String),
    /// No decision within the wait's timeout.
    TimedOut,
}

impl Answer {
    /// The exit codes of `diode-recv approvals wait` (0 approved, 2 rejected, 3 expired, 4 no answer in
    /// time; 1 is an error). Its 5, "the approval was already used", is the high side's to know.
    pub fn code(&self) -> i32 {
        match self {
            Answer::Approved(_) => 0,
            Answer::Rejected(_) => 2,
            Answer::Expired(_) => 3,
            Answer::TimedOut => 4,
        }
    }
}

/// Why a call failed: worth trying again (the adapter unreachable or failing), or not (refused).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0:#}")]
    Transient(anyhow::Error),
    #[error("{0:#}")]
    Refused(anyhow::Error),
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Secret,
}

impl Client {
    /// `base`: the adapter's address, e.g. `http://127.0.0.1:8080` (its `[http] listen`, or the proxy in
    /// front of it).
    pub fn new(base: &str, token: Secret) -> Result<Client> {
        let base = Url::parse(base).with_context(|| format!("--url {base:?} is not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("--url {base} must be an http:// or https:// address");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client { http, base, token })
    }

    /// `<base>/v1/requests[/<id>]`, the id encoded as one path segment.
    fn url(&self, id: Option<&str>) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("{} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(["v1", "requests"])
            .extend(id);
        Ok(url)
    }

    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, CallError> {
        let resp = req
            .bearer_auth(self.token.expose_str())
            .send()
            .await
            .map_err(|e| CallError::Transient(anyhow!(e).context(format!("{what}: no answer"))))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let said = match (body["error"].as_str(), body["message"].as_str()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            _ => "no explanation given".into(),
        };
        let e = anyhow!("{what}: the adapter answered {status}: {said}");
        Err(
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                CallError::Transient(e)
            } else {
                CallError::Refused(e)
            },
        )
    }

    /// Ask for a deployment; the adapter's answer (`request_id`, `environment`, `channel`, `deadline_at`).
    pub async fn create(&self, ask: &Ask) -> Result<Value> {
        let mut body = json!({
            "app": ask.app,
            "version": ask.version,
            "environment": ask.environment,
            "digest": ask.digest,
            "on_behalf_of": ask.on_behalf_of,
        });
        if let Some(reason) = &ask.reason {
            body["reason"] = json!(reason);
        }
        let req = self.http.post(self.url(None)?).json(&body);
        Ok(self.call(req, "POST /v1/requests").await?)
    }

    /// How request `id` stands (`pipeline::status_json`).
    pub async fn status(&self, id: &str) -> Result<Value, CallError> {
        let url = self.url(Some(id)).map_err(CallError::Refused)?;
        self.call(self.http.get(url), &format!("GET /v1/requests/{id}"))
            .await
    }

    /// Poll request `id` every `poll` until it is decided or `timeout` has passed. An adapter that is
    /// unreachable or failing meanwhile (a restart) is tried again, and said once; a refusal ends the
    /// wait with an error.
    pub async fn wait(&self, id: &str, timeout: Duration, poll: Duration) -> Result<Answer> {
        let end = Instant::now() + timeout;
        let mut failing = false;
        loop {
            match self.status(id).await {
                Ok(v) => {
                    failing = false;
                    if let Some(a) = decided(&v)? {
                        return Ok(a);
                    }
                }
                Err(CallError::Refused(e)) => return Err(e),
                Err(CallError::Transient(e)) if !failing => {
                    failing = true;
                    eprintln!("diode-chat: {e:#}; trying again until the timeout");
                }
                Err(CallError::Transient(_)) => {}
            }
            let now = Instant::now();
            if now >= end {
                return Ok(Answer::TimedOut);
            }
            tokio::time::sleep(poll.min(end - now)).await;
        }
    }
}

/// The answer a status shows, if the request is decided.
fn decided(v: &Value) -> Result<Option<Answer>> {
    let envelope = v["envelope_id"].as_str().unwrap_or("?").to_string();
    Ok(match v["state"].as_str() {
        Some("pending") => None,
        Some("approved") => Some(Answer::Approved(envelope)),
        Some("rejected") => Some(Answer::Rejected(format!(
            "by {} (envelope {envelope})",
            v["decided_by"].as_str().unwrap_or("?")
        ))),
        Some("expired") => Some(Answer::Expired(format!(
            "no decision by the deadline (envelope {envelope})"
        ))),
        other => bail!("the adapter answered a state this client does not know: {other:?}"),
    })
}
