//! `diode-recv console`: a read-only web page for the operator, in a process of its own (the daemon stays
//! sandboxed and never listens: ARCHITECTURE.md decision 10). It reads what the daemon writes
//! (`console/view.rs`) and renders it with compile-time-checked, auto-escaping templates
//! (`receiver/templates/console.html`) inside what every console shares (`diode-console`: listening on
//! loopback, or beyond it with TLS and sign-in; security headers; the Host check; the shell and the
//! script that polls `state.json` every 2 s for the same sections).

mod history;
mod view;

use crate::config::Config;
use anyhow::Result;
use diode_console::{Page, Plan, View};
use history::History;
use std::sync::{Arc, Mutex};
use view::Snapshot;

/// The console's port when `--listen` does not say.
pub const PORT: u16 = 8440;

impl View for Snapshot {
    fn figures(&self) -> serde_json::Value {
        serde_json::json!({
            "now": self.now,
            "links_up": self.links.iter().filter(|l| l.up).count(),
            "links": self.links.len(),
            "receiving": self.receiving.len(),
            "incomplete": self.incomplete.len(),
            "audit_ok": self.audit.ok,
        })
    }
}

pub fn serve(cfg: Config, plan: Plan) -> Result<()> {
    let console = Arc::new(Console {
        cfg,
        history: Mutex::new(History::default()),
    });
    let c = console.clone();
    diode_console::run(
        plan,
        Page {
            title: "diode-recv console",
            heading: "diode-recv: high side",
            search: Some("Search received files by name or hash:"),
        },
        move || Snapshot::read(&c.cfg, &c.history),
        sample(console),
    )
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
