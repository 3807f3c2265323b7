//! `diode-recv console`: a read-only web page for the operator, in a process of its own (the daemon stays
//! sandboxed and never listens: ARCHITECTURE.md decision 10). It reads what the daemon writes
//! (`console/view.rs`), renders it with compile-time-checked, auto-escaping templates
//! (`receiver/templates/console.html`), and a small script of its own (`console/console.js`, no inline
//! script: the CSP is `default-src 'self'`) polls `state.json` every 2 s for the same sections.
//!
//! It binds loopback only: it has no TLS and no authentication, so any other address is refused at start;
//! reach it from elsewhere through an SSH tunnel. Requests whose Host is not a loopback name are refused
//! too (a DNS-rebinding page in the operator's browser could otherwise read it).

mod history;
mod view;

use crate::config::Config;
use anyhow::{bail, Context, Result};
use askama::Template;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use history::History;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use view::Snapshot;

const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The whole page.
#[derive(Template)]
#[template(path = "console.html")]
struct Page<'a> {
    s: &'a Snapshot,
}

/// The live sections alone, which the script swaps in.
#[derive(Template)]
#[template(path = "console.html", block = "live")]
struct Live<'a> {
    s: &'a Snapshot,
}

/// Refuse what the console cannot serve safely: anything but a loopback address.
pub fn check_listen(addr: &SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr}: the console has no TLS and no authentication, so it serves \
             loopback only (127.0.0.1 or ::1); from another host use an SSH tunnel, e.g. \
             `ssh -L 8440:127.0.0.1:8440 <high-side host>`"
        );
    }
    Ok(())
}

pub fn serve(cfg: Config, listen: SocketAddr) -> Result<()> {
    check_listen(&listen)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the console's runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let at = listener.local_addr()?;
        tracing::info!(url = %format!("http://{at}/"), "console listening (read-only)");
        let console = Arc::new(Console {
            cfg,
            history: Mutex::new(History::default()),
        });
        tokio::spawn(sample(console.clone()));
        axum::serve(listener, router(console))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the console stopped")
    })
}

/// What every request reads: the config and the history the sampler keeps.
struct Console {
    cfg: Config,
    history: Mutex<History>,
}

/// Every `SAMPLE_SECS`, the daemon's figures into the history (for the charts and rates), whether or
/// not a page is open.
async fn sample(c: Arc<Console>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(history::SAMPLE_SECS));
    loop {
        tick.tick().await;
        let c = c.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(s) = view::read_status(&c.cfg) {
                c.history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(&s);
            }
        })
        .await;
    }
}

fn router(cfg: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/state.json", get(state))
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn(guard))
        .with_state(cfg)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Why a page could not be served (its details are logged, never shown).
enum Failure {
    Read,
    Render,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let what = match self {
            Failure::Read => "cannot read the state\n",
            Failure::Render => "cannot render the page\n",
        };
        (StatusCode::INTERNAL_SERVER_ERROR, what).into_response()
    }
}

/// The snapshot is read off the runtime's thread: it verifies the audit chain and lists files.
async fn snapshot(c: Arc<Console>) -> Result<Snapshot, Failure> {
    tokio::task::spawn_blocking(move || Snapshot::read(&c.cfg, &c.history))
        .await
        .map_err(|_| Failure::Read)
}

fn rendered(r: askama::Result<String>) -> Result<String, Failure> {
    r.map_err(|e| {
        tracing::error!(error = %e, "cannot render the console page");
        Failure::Render
    })
}

async fn page(State(cfg): State<Arc<Console>>) -> Result<Response, Failure> {
    let s = snapshot(cfg).await?;
    let html = rendered(Page { s: &s }.render())?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

async fn state(State(cfg): State<Arc<Console>>) -> Result<Response, Failure> {
    let s = snapshot(cfg).await?;
    let html = rendered(Live { s: &s }.render())?;
    Ok(Json(serde_json::json!({
        "now": s.now,
        "links_up": s.links.iter().filter(|l| l.up).count(),
        "links": s.links.len(),
        "receiving": s.receiving.len(),
        "incomplete": s.incomplete.len(),
        "audit_ok": s.audit.ok,
        "html": html,
    }))
    .into_response())
}

/// Whether a Host header names this machine's loopback (with or without a port).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuse foreign Host names; add the security headers to every answer.
async fn guard(req: Request, next: Next) -> Response {
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(loopback_host);
    let mut res = if host_ok {
        next.run(req).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers to localhost only\n",
        )
            .into_response()
    };
    let h = res.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_served() {
        for ok in ["127.0.0.1:8440", "[::1]:8440", "127.0.0.2:1"] {
            assert!(check_listen(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8440", "[::]:8440", "192.0.2.7:80"] {
            let e = check_listen(&bad.parse().unwrap());
            assert!(
                e.is_err_and(|e| e.to_string().contains("no TLS and no authentication")),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_names_other_than_loopback_are_refused() {
        for ok in [
            "127.0.0.1:8440",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8440",
            "127.0.0.1",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8440",
            "10.0.0.1:8440",
            "[2001:db8::1]:80",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
