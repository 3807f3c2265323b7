//! Slack Socket Mode: an outbound WebSocket, so the low side needs no inbound port.
//!
//! `apps.connections.open` (app-level token as bearer, on the configured API base) gives a `wss://`
//! URL; the adapter connects to it, waits for `hello`, then takes envelopes (`events_api`,
//! `slash_commands`, `interactive`). Each one is fed to the same code the HTTP endpoints use and then
//! acknowledged with `{"envelope_id": ...}` (a slash command's answer rides in the ack's `payload`).
//! There is no request signature in Socket Mode: the TLS connection opened with the app token is the
//! trust. A `disconnect` message makes the adapter open a fresh connection at once; a failure (no URL,
//! connection refused or dropped, nothing heard for [`IDLE`]) makes it retry with a doubling backoff
//! up to [`MAX_BACKOFF`]. Envelopes already handled (Slack retries one that was not acknowledged in
//! time, with the same envelope id and `retry_attempt` > 0; an Events API retry has the same
//! `event_id`) are acknowledged again and not re-run: each is taken once through the engine's
//! persisted delivery log (`Engine::once`) under its envelope id, its payload's `trigger_id` and its
//! `event_id`, so a retry after a restart is caught too.

use super::api::SlackApi;
use super::http::{run_command, run_interaction, trigger_key, Command, Payload};
use crate::server::App;
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// First wait after a failed connection; doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A connection that hears nothing (not even a ping) for this long is dropped and opened again.
const IDLE: Duration = Duration::from_secs(120);
/// How a connection ended without an error.
enum End {
    /// Slack asked us to reconnect (`disconnect`): open a new connection at once.
    Disconnect,
}

/// Run Socket Mode for as long as the adapter runs.
pub async fn run(app: Arc<App>, api: SlackApi) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match session(&app, &api, &mut backoff).await {
            Ok(End::Disconnect) => {
                tracing::info!("Socket Mode: Slack asked for a new connection");
            }
            Err(e) => {
                tracing::warn!("Socket Mode: {e:#}; connecting again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn session(app: &App, api: &SlackApi, backoff: &mut Duration) -> Result<End> {
    let open = api.call("apps.connections.open", &json!({})).await?;
    let url = open
        .get("url")
        .and_then(Value::as_str)
        .context("apps.connections.open answered without url")?;
    if !(url.starts_with("wss://") || url.starts_with("ws://")) {
        bail!("apps.connections.open gave {url:?}, not a WebSocket URL");
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("cannot connect the Socket Mode WebSocket")?;
    tracing::info!("Socket Mode: connected");
    loop {
        let msg = match tokio::time::timeout(IDLE, ws.next()).await {
            Err(_) => bail!("nothing heard for {IDLE:?}"),
            Ok(None) => bail!("the connection was closed"),
            Ok(Some(m)) => m.context("the connection failed")?,
        };
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Close(c) => bail!("Slack closed the connection ({c:?})"),
            // pings are answered by tungstenite itself
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            tracing::warn!("Socket Mode: a message that is not JSON was ignored");
            continue;
        };
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "hello" => {
                *backoff = FIRST_BACKOFF;
                tracing::info!("Socket Mode: hello");
            }
            "disconnect" => {
                let _ = ws.close(None).await;
                return Ok(End::Disconnect);
            }
            kind @ ("events_api" | "slash_commands" | "interactive") => {
                let Some(id) = v.get("envelope_id").and_then(Value::as_str) else {
                    tracing::warn!(
                        "Socket Mode: a {kind} envelope without envelope_id was ignored"
                    );
                    continue;
                };
                let payload = v.get("payload").unwrap_or(&Value::Null);
                let retry = v.get("retry_attempt").and_then(Value::as_u64).unwrap_or(0);
                let ack = match app
                    .engine
                    .once(&delivery(id, payload), || handle(app, kind, payload))
                {
                    Ok(Some(Some(p))) => json!({"envelope_id": id, "payload": p}),
                    Ok(Some(None)) => json!({"envelope_id": id}),
                    Ok(None) => {
                        tracing::info!(
                            "Socket Mode: envelope {id} (retry {retry}) already handled"
                        );
                        json!({"envelope_id": id})
                    }
                    // not acknowledged: Slack sends it again, and it is tried again
                    Err(e) => {
                        tracing::error!("Socket Mode: envelope {id}: {e:#}");
                        continue;
                    }
                };
                ws.send(Message::text(ack.to_string()))
                    .await
                    .context("cannot send an acknowledgement")?;
            }
            other => tracing::debug!("Socket Mode: message of type {other:?} ignored"),
        }
    }
}

/// The ids an envelope is taken under: its envelope id, and its payload's trigger_id (slash commands,
/// clicks) and event_id (Events API), which Slack keeps when it sends the same thing again.
fn delivery(envelope_id: &str, payload: &Value) -> Vec<String> {
    let field = |k: &str| {
        payload
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let mut ids = vec![format!("slack-envelope:{envelope_id}")];
    ids.extend(field("trigger_id").map(trigger_key));
    ids.extend(field("event_id").map(|e| format!("slack-event:{e}")));
    ids
}

/// One envelope's payload through the HTTP endpoints' code; `Some` is the answer to put in the ack.
fn handle(app: &App, kind: &str, payload: &Value) -> Result<Option<Value>> {
    match kind {
        "slash_commands" => match serde_json::from_value::<Command>(payload.clone()) {
            Ok(cmd) => run_command(app, cmd).map(Some),
            Err(e) => {
                tracing::warn!("Socket Mode: a slash command payload was not understood: {e}");
                Ok(None)
            }
        },
        "interactive" => match serde_json::from_value::<Payload>(payload.clone()) {
            Ok(p) => run_interaction(app, p),
            Err(e) => {
                tracing::warn!("Socket Mode: an interactive payload was not understood: {e}");
                Ok(None)
            }
        },
        // app_home_opened publishes the viewer's Home; other events are acknowledged so Slack does
        // not resend them
        "events_api" => {
            super::http::run_event(app, payload);
            Ok(None)
        }
        _ => Ok(None),
    }
}
