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
//! time, with the same envelope id and `retry_attempt` > 0) are acknowledged again and not re-run.

use super::api::SlackApi;
use super::http::{run_command, run_interaction, Command, Payload};
use crate::server::App;
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// First wait after a failed connection; doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A connection that hears nothing (not even a ping) for this long is dropped and opened again.
const IDLE: Duration = Duration::from_secs(120);
/// How many handled envelope ids (and event ids) are remembered for deduplication.
const REMEMBER: usize = 4096;

/// Ids already handled, oldest forgotten first.
pub struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl Seen {
    pub fn new(cap: usize) -> Seen {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// How a connection ended without an error.
enum End {
    /// Slack asked us to reconnect (`disconnect`): open a new connection at once.
    Disconnect,
}

/// Run Socket Mode for as long as the adapter runs.
pub async fn run(app: Arc<App>, api: SlackApi) {
    let mut seen = Seen::new(REMEMBER);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match session(&app, &api, &mut seen, &mut backoff).await {
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

async fn session(
    app: &App,
    api: &SlackApi,
    seen: &mut Seen,
    backoff: &mut Duration,
) -> Result<End> {
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
                let event_id = v
                    .pointer("/payload/event_id")
                    .and_then(Value::as_str)
                    .map(|e| format!("event:{e}"));
                let retry = v.get("retry_attempt").and_then(Value::as_u64).unwrap_or(0);
                let duplicate = seen.contains(id)
                    || (retry > 0 && event_id.as_deref().is_some_and(|e| seen.contains(e)));
                let ack = if duplicate {
                    tracing::info!("Socket Mode: envelope {id} (retry {retry}) already handled");
                    json!({"envelope_id": id})
                } else {
                    let answer = handle(app, kind, v.get("payload").unwrap_or(&Value::Null));
                    match answer {
                        // not acknowledged: Slack sends it again, and it is tried again
                        Err(e) => {
                            tracing::error!("Socket Mode: envelope {id}: {e:#}");
                            continue;
                        }
                        Ok(payload) => {
                            seen.insert(id);
                            if let Some(e) = &event_id {
                                seen.insert(e);
                            }
                            match payload {
                                Some(p) => json!({"envelope_id": id, "payload": p}),
                                None => json!({"envelope_id": id}),
                            }
                        }
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
            Ok(p) => run_interaction(app, p).map(|()| None),
            Err(e) => {
                tracing::warn!("Socket Mode: an interactive payload was not understood: {e}");
                Ok(None)
            }
        },
        // the adapter subscribes to no events; they are acknowledged so Slack does not resend them
        _ => Ok(None),
    }
}
