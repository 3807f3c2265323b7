//! The HTTP target of `audit_forward`: Splunk's HTTP Event Collector format (also taken by Elastic's and
//! other collectors' HEC inputs). A batch is one `POST` to the event endpoint with `Authorization: Splunk
//! <token>` and a body of event objects one after another, each `{"time", "host", "source",
//! "sourcetype", "index"?, "event"}` with the audit record (its JSON, unchanged) as `event` and its `at`
//! as `time`. The batch counts as delivered when the collector answers 200 with `"code": 0`.

use super::{header_field, local_hostname, Target};
use crate::secret::Secret;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Hec {
    /// The collector's event endpoint, e.g. https://splunk.example.org:8088/services/collector/event.
    pub url: String,
    /// The HEC token: `file:PATH` (mode 0600, relative to the config file) or `env:NAME`.
    pub token: String,
    /// PEM file of CA certificate(s) trusted besides the public ones (relative to the config file).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The index the events go to; default: the token's default index.
    #[serde(default)]
    pub index: Option<String>,
    /// `source` of each event.
    #[serde(default = "d_source")]
    pub source: String,
    /// `sourcetype` of each event.
    #[serde(default = "d_sourcetype")]
    pub sourcetype: String,
    /// `host` of each event; default: this machine's host name.
    #[serde(default)]
    pub host: Option<String>,
    /// How often the log is looked at for new records (humantime).
    #[serde(default = "d_every")]
    pub every: String,
}

fn d_source() -> String {
    "diode-chat".into()
}
fn d_sourcetype() -> String {
    "_json".into()
}
fn d_every() -> String {
    "1s".into()
}

impl Hec {
    /// Check the settings; `ca_file` and a `file:` token become absolute against the config's folder.
    pub fn check(&mut self, base: &Path) -> Result<()> {
        let url = reqwest::Url::parse(&self.url)
            .with_context(|| format!("audit_forwarding.hec.url = {:?} is not a URL", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("audit_forwarding.hec.url = {url}: http or https");
        }
        if let Some(p) = self.token.strip_prefix("file:") {
            self.token = format!("file:{}", base.join(p).display());
        }
        if let Some(ca) = &mut self.ca_file {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        if let Some(h) = &self.host {
            if !header_field(h, 255) {
                bail!("audit_forwarding.hec.host = {h:?}: 1-255 printable ASCII characters, no spaces");
            }
        }
        Ok(())
    }
}

pub struct Collector {
    http: reqwest::Client,
    url: reqwest::Url,
    token: Secret,
    index: Option<String>,
    source: String,
    sourcetype: String,
    host: String,
}

impl Collector {
    pub fn new(h: &Hec) -> Result<Collector> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(20));
        if let Some(ca) = &h.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not PEM", ca.display()))?;
            if certs.is_empty() {
                bail!("{} holds no CA certificate", ca.display());
            }
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        Ok(Collector {
            http: http.build().context("cannot set up the HTTP client")?,
            url: reqwest::Url::parse(&h.url)
                .with_context(|| format!("audit_forwarding.hec.url = {:?}", h.url))?,
            token: Secret::load(&h.token, Path::new("/"), "audit_forwarding.hec.token")?,
            index: h.index.clone(),
            source: h.source.clone(),
            sourcetype: h.sourcetype.clone(),
            host: h.host.clone().unwrap_or_else(local_hostname),
        })
    }

    /// The body of one batch: an event object per record, one after another.
    pub fn body(&self, records: &[&str]) -> Result<String> {
        let mut body = String::new();
        for line in records {
            let record: Value =
                serde_json::from_str(line).context("an audit record that is not JSON")?;
            let mut e = json!({
                "time": record.get("at").cloned().unwrap_or(Value::Null),
                "host": self.host,
                "source": self.source,
                "sourcetype": self.sourcetype,
                "event": record,
            });
            if let Some(i) = &self.index {
                e["index"] = json!(i);
            }
            body.push_str(&e.to_string());
            body.push('\n');
        }
        Ok(body)
    }

    async fn post(&self, body: String) -> Result<()> {
        let resp = self
            .http
            .post(self.url.clone())
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Splunk {}", self.token.expose_str()),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .context("no answer")?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let code = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_i64));
        if status != reqwest::StatusCode::OK || code != Some(0) {
            bail!("the collector answered {status}: {}", text.trim());
        }
        Ok(())
    }
}

impl Target for Collector {
    fn position_suffix(&self) -> &'static str {
        ".forwarded-hec"
    }

    fn describe(&self) -> String {
        format!("the HTTP collector {}", self.url)
    }

    /// Runs on a blocking thread of the adapter's runtime (`server::forward_audit`).
    fn deliver(&self, records: &[&str]) -> Result<()> {
        let body = self.body(records)?;
        tokio::runtime::Handle::try_current()
            .context("no async runtime to send from")?
            .block_on(self.post(body))
    }
}
