//! Calls to chat services that answer `429 Too Many Requests` with `Retry-After` (Slack's Web API,
//! the Bot Connector, the Microsoft identity platform, Workflows webhooks): wait as told, a bounded
//! number of times, then give up with an error the caller reports.

use anyhow::{bail, Context, Result};
use std::time::Duration;

/// Longest wait honoured from one Retry-After (a larger value is capped, then retried).
pub const MAX_RETRY_AFTER: u64 = 60;

/// Send the request `build` makes (built again for each attempt) until the answer is not 429.
/// `what` names the call in errors and logs.
pub async fn send(
    build: impl Fn() -> reqwest::RequestBuilder,
    what: &str,
    max_retries: u32,
) -> Result<reqwest::Response> {
    let mut attempt = 0;
    loop {
        let resp = build()
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach the service"))?;
        if resp.status().as_u16() != 429 {
            return Ok(resp);
        }
        let wait = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .min(MAX_RETRY_AFTER);
        if attempt >= max_retries {
            bail!("{what}: still rate limited after {attempt} retries");
        }
        attempt += 1;
        tracing::warn!("{what}: rate limited, retrying in {wait} s");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}
