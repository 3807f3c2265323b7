//! `diode-chat serve`: the HTTP endpoints (Slack, pipelines), the clock that drives reminders,
//! escalations and deadlines, and the one task that carries out chat effects in order (so that a
//! message is never overwritten by an older rendering of itself).

use crate::approval::{Effect, Engine};
use crate::clock::Clock;
use crate::config::Config;
use crate::pipeline::{self, Token};
use crate::policy::{Policy, Source};
use crate::secret::Secret;
use crate::slack::api::SlackApi;
use crate::slack::{blocks, http as slack_http};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use axum::routing::{get, post};
use axum::Router;
use diode_host::audit::AuditLog;
use diode_host::keyfile;
use diode_proto::envelope::SignerRole;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub struct SlackSide {
    pub api: SlackApi,
    /// None: the HTTP endpoints for Slack answer 404 (Socket Mode only).
    pub signing_secret: Option<Secret>,
}

pub struct App {
    pub engine: Arc<Engine>,
    pub slack: Option<SlackSide>,
    pub teams_webhook: Option<crate::teams::Webhook>,
    pub teams_bot: Option<crate::teams_bot::Bot>,
    pub teams_cards: Option<crate::teams_cards::Cards>,
    pub tokens: Vec<Token>,
    effects: mpsc::UnboundedSender<Effect>,
}

impl App {
    pub fn push(&self, e: Effect) {
        // The receiver lives as long as the server; if it is gone we are shutting down, and the
        // next start re-posts whatever is out of step (tick looks for it).
        let _ = self.effects.send(e);
    }
}

/// A running adapter.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Run the clock once now (tests call this after moving a manual clock).
    pub fn tick(&self) -> Result<()> {
        for e in timers(&self.app)? {
            self.app.push(e);
        }
        Ok(())
    }

    /// Stop at once, as a crash would: nothing is flushed beyond what is already on disk.
    pub fn abort(self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Wait until the server stops (it does not, unless a task fails).
    pub async fn wait(mut self) -> Result<()> {
        if let Some(t) = self.tasks.pop() {
            t.await.context("the HTTP server stopped")?;
        }
        Ok(())
    }
}

pub async fn start(cfg: &Config, clock: Arc<dyn Clock>) -> Result<Running> {
    let policy = Policy::from_config(cfg)?;
    if policy.environments.is_empty() {
        bail!("no [environments.*] in the config: nothing could be approved");
    }
    let key = keyfile::load_signing(&cfg.key, SignerRole::Adapter)?;
    let store = Store::open(&cfg.state)?;
    let tick = humantime::parse_duration(&cfg.http.tick)
        .with_context(|| format!("http.tick = {:?} is not a duration", cfg.http.tick))?;
    let slack = match &cfg.slack {
        None => None,
        Some(s) => Some(SlackSide {
            api: SlackApi::new(
                &s.api_base,
                Secret::load(&s.bot_token, &cfg.base, "slack.bot_token")?,
                s.max_retries,
            )?,
            signing_secret: s
                .signing_secret
                .as_ref()
                .map(|v| Secret::load(v, &cfg.base, "slack.signing_secret"))
                .transpose()?,
        }),
    };
    let socket = match &cfg.slack {
        Some(s) => match &s.app_token {
            Some(t) => Some(SlackApi::new(
                &s.api_base,
                Secret::load(t, &cfg.base, "slack.app_token")?,
                s.max_retries,
            )?),
            None if s.signing_secret.is_none() => {
                bail!("[slack] needs signing_secret (HTTP), app_token (Socket Mode) or both")
            }
            None => None,
        },
        None => None,
    };
    let teams_webhook = match &cfg.teams {
        None => None,
        Some(t) => {
            let token = Secret::load(&t.webhook_token, &cfg.base, "teams.webhook_token")?;
            Some(crate::teams::Webhook::new(token.expose_str())?)
        }
    };
    let teams_bot = match cfg
        .teams
        .as_ref()
        .map(|t| (&t.app_id, &t.jwks_file, &t.jwks_url))
    {
        Some((Some(_), Some(_), Some(_))) => {
            bail!("[teams] has both jwks_file and jwks_url: keep one")
        }
        Some((Some(id), Some(jwks), None)) => {
            Some(crate::teams_bot::Bot::load(id, &cfg.base.join(jwks))?)
        }
        Some((Some(id), None, Some(url))) => {
            Some(crate::teams_bot::Bot::from_url(id, url, clock.now()).await?)
        }
        Some((_, None, None)) | None => None,
        Some(_) => bail!(
            "[teams] needs app_id with jwks_file or jwks_url for the bot endpoint (POST /teams/messages)"
        ),
    };
    let teams_cards = crate::teams_cards::Cards::from_config(cfg)?;
    let reverse = match &cfg.reverse {
        Some(r) => Some((
            crate::reverse::Inbox::from_config(r)?,
            humantime::parse_duration(&r.poll)
                .with_context(|| format!("reverse.poll = {:?} is not a duration", r.poll))?,
        )),
        None => None,
    };
    let mut tokens = Vec::new();
    for t in &cfg.pipeline.tokens {
        tokens.push(Token {
            name: t.name.clone(),
            secret: Secret::load(&t.token, &cfg.base, &format!("pipeline token {}", t.name))?,
            environments: t.environments.clone(),
        });
    }
    let engine = Arc::new(Engine::new(
        policy,
        store,
        AuditLog::new(&cfg.audit),
        key,
        cfg.outbox.clone(),
        clock,
        crate::refusal_limit::RefusalLimit::from_config(&cfg.stranger_refusals)?,
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Arc::new(App {
        engine,
        slack,
        teams_webhook,
        teams_bot,
        teams_cards,
        tokens,
        effects: tx,
    });
    let router = Router::new()
        .route("/slack/commands", post(slack_http::command))
        .route("/slack/interactions", post(slack_http::interaction))
        .route("/slack/events", post(slack_http::event))
        .route("/teams/webhook", post(crate::teams::webhook))
        .route("/teams/messages", post(crate::teams_bot::messages))
        .route("/v1/requests", post(pipeline::create))
        .route("/v1/requests/{id}", get(pipeline::status))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", cfg.http.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");

    let exec = tokio::spawn(carry_out(app.clone(), rx));
    let ticker = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick.max(Duration::from_millis(10)));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match timers(&app) {
                    Ok(effects) => effects.into_iter().for_each(|e| app.push(e)),
                    Err(e) => tracing::error!("timers: {e:#}"),
                }
            }
        })
    };
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("HTTP server: {e}");
        }
    });
    let mut tasks = vec![exec, ticker];
    if cfg.audit_shipping.enabled {
        tasks.push(tokio::spawn(ship_audit(cfg.clone())));
    }
    for f in cfg.audit_forwarding.forwarders(&cfg.audit)? {
        tasks.push(tokio::spawn(forward_audit(f)));
    }
    if let Some((inbox, every)) = reverse {
        tasks.push(tokio::spawn(watch_reverse(app.clone(), inbox, every)));
    }
    if let Some(api) = socket {
        tasks.push(tokio::spawn(crate::slack::socket::run(app.clone(), api)));
    }
    // the HTTP server stays last: `wait` waits for it
    tasks.push(server);
    Ok(Running { addr, app, tasks })
}

/// What the clock brings: reminders, escalations and deadlines from the engine, and an Update for each
/// request whose Teams card is out of step.
fn timers(app: &App) -> Result<Vec<Effect>> {
    let mut effects = app.engine.tick()?;
    if let Some(cards) = &app.teams_cards {
        for id in cards.out_of_step(&app.engine)? {
            let e = Effect::Update { request: id };
            if !effects.contains(&e) {
                effects.push(e);
            }
        }
    }
    Ok(effects)
}

/// Ship the audit log's new records through the diode: at start (anything not shipped before a
/// stop), then whenever records were appended. Looking is one `stat` of the log.
async fn ship_audit(cfg: Config) {
    let every = humantime::parse_duration(&cfg.audit_shipping.every)
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let c = cfg.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::audit_ship::ship(&AuditLog::new(&c.audit), &c.outbox, &c.audit_shipping)
        })
        .await;
        match r {
            Ok(Ok(Some(seg))) => {
                failing = false;
                tracing::info!("audit records shipped in {}", seg.display());
            }
            Ok(Ok(None)) => failing = false,
            // said once per failure streak, not every second
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::error!("audit shipping: {e:#}");
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!("audit shipping: {e}"),
        }
    }
}

/// Forward the audit log's new records to one SIEM target: at start (anything not delivered before a
/// stop), then every `f.every`; a target that is down is tried again each time.
async fn forward_audit(f: crate::audit_forward::Forwarder) {
    let f = Arc::new(f);
    let mut tick = tokio::time::interval(f.every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let c = f.clone();
        match tokio::task::spawn_blocking(move || c.forward()).await {
            Ok(Ok(n)) => {
                if failing || n > 0 {
                    tracing::info!("audit records forwarded to {}: {n}", f.describe());
                }
                failing = false;
            }
            // said once per failure streak
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::error!("audit forwarding: {e:#}");
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!("audit forwarding: {e}"),
        }
    }
}

/// Look at the reverse receiver's inbox every `every`; post each request taken, update each request
/// an outcome came back for.
async fn watch_reverse(app: Arc<App>, inbox: crate::reverse::Inbox, every: Duration) {
    let inbox = Arc::new(inbox);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let (engine, inbox) = (app.engine.clone(), inbox.clone());
        match tokio::task::spawn_blocking(move || inbox.scan(&engine)).await {
            Ok(Ok(effects)) => {
                failing = false;
                for e in effects {
                    app.push(e);
                }
            }
            // said once per failure streak
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::error!("reverse inbox: {e:#}");
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!("reverse inbox: {e}"),
        }
    }
}

async fn carry_out(app: Arc<App>, mut rx: mpsc::UnboundedReceiver<Effect>) {
    while let Some(e) = rx.recv().await {
        let request = match &e {
            Effect::Post { request }
            | Effect::Update { request }
            | Effect::Thread { request, .. } => Some(request.clone()),
            Effect::Ephemeral { .. } => None,
        };
        let card = matches!(e, Effect::Post { .. } | Effect::Update { .. });
        if let (Effect::Thread { text, notify, .. }, Some(cards), Some(id)) =
            (&e, &app.teams_cards, &request)
        {
            // said once: a failed reply is recorded, not retried (the next reminder follows)
            if let Err(err) = cards.thread(&app.engine, id, text, notify).await {
                tracing::warn!("Teams: {err:#}");
                app.engine.chat_failed("teams", Some(id), &err);
            }
        }
        if let Err(err) = effect(&app, e).await {
            tracing::warn!("chat: {err:#}");
            app.engine.chat_failed("slack", request.as_deref(), &err);
        }
        if let (true, Some(cards), Some(id)) = (card, &app.teams_cards, &request) {
            if let Err(err) = cards.sync(&app.engine, id).await {
                tracing::warn!("Teams: {err:#}");
                // the next tick finds the card out of step and tries again
                app.engine.chat_failed("teams", Some(id), &err);
            }
        }
    }
}

async fn effect(app: &App, e: Effect) -> Result<()> {
    let Some(slack) = app.slack.as_ref() else {
        return Ok(());
    };
    let engine = &app.engine;
    match e {
        Effect::Post { request } | Effect::Update { request } => {
            let Some(v) = engine.view(&request)? else {
                return Ok(());
            };
            let (text, blocks) = blocks::render(&v);
            let r = &v.request;
            match &r.ts {
                None => {
                    let ans = slack
                        .api
                        .call(
                            "chat.postMessage",
                            &json!({"channel": r.channel, "text": text, "blocks": blocks}),
                        )
                        .await?;
                    let ts = ans
                        .get("ts")
                        .and_then(|t| t.as_str())
                        .context("chat.postMessage answered without ts")?;
                    engine.set_posted(&r.id, ts)?;
                }
                Some(_) if !r.dirty => return Ok(()),
                Some(ts) => {
                    slack
                        .api
                        .call(
                            "chat.update",
                            &json!({"channel": r.channel, "ts": ts, "text": text, "blocks": blocks}),
                        )
                        .await?;
                }
            }
            engine.mark_clean(&v)
        }
        Effect::Thread {
            request,
            text,
            notify,
        } => {
            let Some(v) = engine.view(&request)? else {
                return Ok(());
            };
            let mentions: Vec<String> = notify
                .iter()
                .filter_map(|k| engine.policy().people.get(k))
                .filter_map(|p| p.slack.as_ref().map(|id| format!("<@{id}>")))
                .collect();
            let text = if mentions.is_empty() {
                text
            } else {
                format!("{} {text}", mentions.join(" "))
            };
            let mut body = json!({"channel": v.request.channel, "text": text});
            if let Some(ts) = &v.request.ts {
                body["thread_ts"] = json!(ts);
            }
            slack.api.call("chat.postMessage", &body).await?;
            Ok(())
        }
        Effect::Ephemeral {
            source,
            channel,
            user,
            text,
        } => {
            if source != Source::Slack {
                return Ok(());
            }
            slack
                .api
                .call(
                    "chat.postEphemeral",
                    &json!({"channel": channel, "user": user, "text": text}),
                )
                .await?;
            Ok(())
        }
    }
}
