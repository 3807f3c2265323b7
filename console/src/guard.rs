//! What every request to a console passes. Without sign-in (loopback): its Host must name loopback, or
//! a DNS-rebinding page in the operator's browser could read the console under a name of its own. With
//! sign-in (TLS): its HTTP Basic credentials must check against the users file, which also stops a
//! rebinding page (the browser holds no credentials for its name). Every answer carries the security
//! headers: a CSP with no inline script or style, no framing, no sniffing, no caching, no referrer; and
//! HSTS over TLS.

use crate::users::Users;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use std::sync::Arc;

const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

struct Gate {
    users: Option<Arc<Users>>,
    /// Argon2id checks at once (each takes ~19 MiB and tens of ms): a flood of wrong passwords queues
    /// here instead of taking the machine's memory.
    checks: tokio::sync::Semaphore,
}

/// The console's routes, with the shared script and style, behind the guard.
pub(crate) fn wrap(routes: Router, users: Option<Arc<Users>>) -> Router {
    let gate = Arc::new(Gate {
        users,
        checks: tokio::sync::Semaphore::new(2),
    });
    routes
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn_with_state(gate, guard))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
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

/// The name and password of an `Authorization: Basic` header (RFC 7617).
fn credentials(req: &Request) -> Option<(String, Vec<u8>)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let name = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((name, raw[colon + 1..].to_vec()))
}

async fn signed_in(gate: &Gate, users: &Arc<Users>, creds: Option<(String, Vec<u8>)>) -> bool {
    let Some((name, password)) = creds else {
        return false;
    };
    let Ok(_turn) = gate.checks.acquire().await else {
        return false;
    };
    let users = users.clone();
    // the name as given, quoted and cut short (it comes from anyone who can reach the port); never the password
    let shown: String = name.chars().take(64).collect();
    let ok = tokio::task::spawn_blocking(move || users.check(&name, &password))
        .await
        .unwrap_or(false);
    if !ok {
        tracing::warn!(user = ?shown, "console sign-in refused: unknown user or wrong password");
    }
    ok
}

async fn guard(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let mut res = match &gate.users {
        None => {
            let host_ok = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(loopback_host);
            if host_ok {
                next.run(req).await
            } else {
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    "this console answers to localhost only\n",
                )
                    .into_response()
            }
        }
        Some(users) => {
            // read before the wait: a request's body is not Sync
            let creds = credentials(&req);
            if signed_in(&gate, users, creds).await {
                next.run(req).await
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        "Basic realm=\"diode console\", charset=\"UTF-8\"",
                    )],
                    "sign in to see this console\n",
                )
                    .into_response()
            }
        }
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
    if gate.users.is_some() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn basic_credentials_are_read_as_rfc_7617_says() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // "ada:pass:word" — the password may hold colons, the name may not
        let c = credentials(&req("Basic YWRhOnBhc3M6d29yZA=="));
        assert_eq!(c, Some(("ada".into(), b"pass:word".to_vec())));
        assert_eq!(
            credentials(&req("basic YWRhOnBhc3M6d29yZA==")).map(|c| c.0),
            Some("ada".into())
        );
        assert_eq!(credentials(&req("Bearer YWRhOnBhc3M6d29yZA==")), None);
        assert_eq!(credentials(&req("Basic !!!")), None);
        assert_eq!(credentials(&req("Basic YWRh")), None); // "ada": no colon
    }
}
