//! Slack's Web API, the three methods the adapter uses: `chat.postMessage`, `chat.update` and
//! `chat.postEphemeral` (JSON bodies, bot token as bearer). The base URL is configurable so tests can
//! point it at a local server. A 429 answer is retried after its `Retry-After`, a bounded number of
//! times.

use crate::secret::Secret;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::time::Duration;

#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    base: String,
    token: Secret,
    max_retries: u32,
}

impl SlackApi {
    pub fn new(base: &str, token: Secret, max_retries: u32) -> Result<SlackApi> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(SlackApi {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            max_retries,
        })
    }

    /// Call `method` with a JSON body; returns Slack's answer when `ok` is true.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Value> {
        let url = format!("{}/{method}", self.base);
        let resp = crate::rate_limit::send(
            || {
                self.http
                    .post(&url)
                    .bearer_auth(self.token.expose_str())
                    .json(body)
            },
            &format!("Slack {method} ({url})"),
            self.max_retries,
        )
        .await?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("Slack {method}: answer ({status}) is not JSON"))?;
        if v.get("ok") != Some(&Value::Bool(true)) {
            let err = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error given");
            return Err(anyhow!("Slack {method} failed ({status}): {err}"));
        }
        Ok(v)
    }
}
