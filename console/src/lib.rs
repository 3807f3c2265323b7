//! What the suite's read-only web consoles share (`diode-recv console`, `diode-send console`,
//! `diode-chat console`; issue 17): how one listens (loopback with nothing more, any other address only
//! with TLS and sign-in, `listen`), the guard every request passes (security headers, the Host check,
//! HTTP Basic against Argon2id hashes: `guard`, `users`), and the page's shell, script and style (`page`).
//! Each console is a process of its own that reads what its daemon writes and changes nothing.
#![forbid(unsafe_code)]

mod guard;
mod listen;
mod page;
mod users;

pub use listen::{Command, ConsoleArgs, ConsoleCmd, Plan};
pub use page::{utc, Page, View};
pub use users::{passwd, Users};

use anyhow::{Context, Result};
use axum::Router;
use std::future::Future;
use std::time::Duration;

/// Run a console until Ctrl-C: `read` takes a snapshot of what its daemon wrote (off the runtime: it
/// reads files), which `page` serves at `/` and `/state.json`; `beside` runs alongside (a sampler), or
/// is `std::future::pending()`.
pub fn run<V, R, S>(plan: Plan, page: Page, read: R, beside: S) -> Result<()>
where
    V: View,
    R: Fn() -> V + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the console's runtime")?;
    rt.block_on(async move {
        tokio::spawn(beside);
        serve(plan, page::routes(page, read)).await
    })
}

/// Serve `routes` as `plan` says, behind the guard, with the shared script and style, until Ctrl-C.
async fn serve(plan: Plan, routes: Router) -> Result<()> {
    let secure = plan.secure;
    let app = guard::wrap(routes, secure.as_ref().map(|s| s.users.clone()));
    let listener = std::net::TcpListener::bind(plan.listen)
        .with_context(|| format!("cannot listen on {}", plan.listen))?;
    let at = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    match secure {
        None => {
            tracing::info!(url = %format!("http://{at}/"), "console listening (read-only, loopback)");
            axum::serve(tokio::net::TcpListener::from_std(listener)?, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .context("the console stopped")
        }
        Some(s) => {
            tracing::info!(url = %format!("https://{at}/"), users = s.users.len(),
                "console listening (read-only, TLS, sign-in required)");
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                h.graceful_shutdown(Some(Duration::from_secs(5)));
            });
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(s.tls);
            axum_server::tls_rustls::from_tcp_rustls(listener, tls)?
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .context("the console stopped")
        }
    }
}
