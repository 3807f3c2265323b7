//! The page every console serves: a shell (this crate's `templates/shell.html`: the script and style
//! by reference, no inline code) around the console's own live sections, which its template renders and
//! escapes (`View`); and `state.json`, the same sections for the script to swap in every 2 s, with
//! the console's figures.

use askama::Template;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// A console's snapshot of what its daemon wrote; as a template (the console's own, in its crate's
/// `templates/console.html`), its live sections, escaped.
pub trait View: Template + Send + 'static {
    /// Figures for `state.json` besides the sections (for scripts and tests): an object, with `now`.
    fn figures(&self) -> serde_json::Value;
}

/// What the shell says around a console's sections.
pub struct Page {
    pub title: &'static str,
    pub heading: &'static str,
    /// The label of a search box over the rows marked `data-search`, if the page has one.
    pub search: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "shell.html")]
struct Shell<'a> {
    title: &'a str,
    heading: &'a str,
    live: &'a str,
    search: Option<&'a str>,
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

fn rendered(r: askama::Result<String>) -> Result<String, Failure> {
    r.map_err(|e| {
        tracing::error!(error = %e, "cannot render the console page");
        Failure::Render
    })
}

struct Console<R> {
    page: Page,
    read: R,
}

pub(crate) fn routes<V, R>(page: Page, read: R) -> Router
where
    V: View,
    R: Fn() -> V + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(whole::<V, R>))
        .route("/state.json", get(state::<V, R>))
        .with_state(Arc::new(Console { page, read }))
}

/// A snapshot, read off the runtime's thread (it lists folders and reads files), and its sections.
async fn snapshot<V, R>(c: &Arc<Console<R>>) -> Result<(V, String), Failure>
where
    V: View,
    R: Fn() -> V + Send + Sync + 'static,
{
    let c = c.clone();
    let v = tokio::task::spawn_blocking(move || (c.read)())
        .await
        .map_err(|_| Failure::Read)?;
    let live = rendered(v.render())?;
    Ok((v, live))
}

async fn whole<V, R>(State(c): State<Arc<Console<R>>>) -> Result<Response, Failure>
where
    V: View,
    R: Fn() -> V + Send + Sync + 'static,
{
    let (_, live) = snapshot(&c).await?;
    let page = rendered(
        Shell {
            title: c.page.title,
            heading: c.page.heading,
            live: &live,
            search: c.page.search,
        }
        .render(),
    )?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

async fn state<V, R>(State(c): State<Arc<Console<R>>>) -> Result<Response, Failure>
where
    V: View,
    R: Fn() -> V + Send + Sync + 'static,
{
    let (v, live) = snapshot(&c).await?;
    let mut fields = v.figures();
    if let Some(m) = fields.as_object_mut() {
        m.insert("html".into(), live.into());
    }
    Ok(Json(fields).into_response())
}

/// Unix seconds as `2026-12-05T02:56:36Z`.
pub fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_is_rfc3339() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_796_439_396), "2026-12-05T02:56:36Z");
    }
}
