//! Calls to chat services that answer `429 Too Many Requests` with `Retry-After` (Slack's Web API,
//! the Bot Connector, the Microsoft identity platform, Workflows webhooks): wait as told, a bounded
//! number of times, then give up with an error the caller reports.

use anyhow::{bail, Context, Result};
use std::time::Duration;

/// Longest wait honoured from one Retry-After (a larger value is capped, then retried).
pub const MAX_RETRY_AFTER: u64 = 60;

/// Send the request `build` makes (built again for each attempt) until the answer is not 429.
/// `what` names the call in errors and logs; the URL is never in them unless `what` has it.
pub async fn send(
    build: impl Fn() -> reqwest::RequestBuilder,
    what: &str,
    max_retries: u32,
) -> Result<reqwest::Response> {
    let mut attempt = 0;
    loop {
        // Without the URL: a Workflows webhook URL carries its signature, a secret, and errors end up
        // in logs and the audit log. `what` says where, for URLs that may be shown.
        let resp = build()
            .send()
            .await
            .map_err(|e| e.without_url())
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

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_failed_call_does_not_show_the_url() {
        // nothing listens on port 9 of loopback: refused at once
        let url = "http://127.0.0.1:9/workflows/x/invoke?sig=the-secret-signature";
        let http = reqwest::Client::new();
        let e = super::send(|| http.post(url), "Teams workflow webhook", 0)
            .await
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("Teams workflow webhook"), "{text}");
        assert!(!text.contains("the-secret-signature"), "{text}");
    }
}
