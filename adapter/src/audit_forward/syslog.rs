//! The syslog target of `audit_forward`: each record an RFC 5424 message over TCP with TLS (RFC 5425:
//! octet-counting framing, `MSG-LEN SP SYSLOG-MSG`; the server's certificate checked against the
//! configured CA and name). A batch is sent on one connection; it counts as delivered once the
//! collector has closed the connection after our TLS close_notify (it has then read every byte before
//! it), not when our writes return (they only reach the kernel).
//!
//! Message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [meta sequenceId="SEQ"] MSG`, facility 13 (log
//! audit), severity 5 (notice); TIMESTAMP is the record's `at`, MSGID its `event`, `meta`/`sequenceId`
//! (RFC 5424 §7.3.1) its `seq`, and MSG the record's JSON line unchanged, so the SIEM can check the hash
//! chain itself.

use super::{header_field, local_hostname, Target};
use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Facility 13 (log audit) * 8 + severity 5 (notice).
const PRI: u8 = 13 * 8 + 5;
/// Longest wait for a connection, a write, or the collector's close.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Syslog {
    /// The collector, `host:port` (6514 is syslog over TLS's port).
    pub address: String,
    /// The name the collector's certificate must carry; default: the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of the CA certificate(s) the collector's certificate must chain to (relative to the
    /// config file).
    pub ca_file: PathBuf,
    /// HOSTNAME of each message; default: this machine's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// APP-NAME of each message.
    #[serde(default = "d_app_name")]
    pub app_name: String,
    /// How often the log is looked at for new records (humantime).
    #[serde(default = "d_every")]
    pub every: String,
}

fn d_app_name() -> String {
    "diode-chat".into()
}
fn d_every() -> String {
    "1s".into()
}

impl Syslog {
    /// Check the settings, and make `ca_file` absolute against the config's folder.
    pub fn check(&mut self, base: &Path) -> Result<()> {
        if self.ca_file.is_relative() {
            self.ca_file = base.join(&self.ca_file);
        }
        humantime::parse_duration(&self.every).with_context(|| {
            format!(
                "audit_forwarding.syslog.every = {:?} is not a duration",
                self.every
            )
        })?;
        if !header_field(&self.app_name, 48) {
            bail!(
                "audit_forwarding.syslog.app_name = {:?}: 1-48 printable ASCII characters, no spaces (RFC 5424)",
                self.app_name
            );
        }
        if let Some(h) = &self.hostname {
            if !header_field(h, 255) {
                bail!("audit_forwarding.syslog.hostname = {h:?}: 1-255 printable ASCII characters, no spaces (RFC 5424)");
            }
        }
        Ok(())
    }
}

/// A syslog collector reached over TLS.
pub struct Collector {
    address: String,
    name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    hostname: String,
    app_name: String,
}

impl Collector {
    pub fn new(s: &Syslog) -> Result<Collector> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&s.ca_file)
            .with_context(|| format!("cannot read the CA file {}", s.ca_file.display()))?;
        for c in certs {
            let c = c.with_context(|| format!("{} is not PEM", s.ca_file.display()))?;
            roots.add(c).with_context(|| {
                format!("a certificate in {} is not usable", s.ca_file.display())
            })?;
        }
        if roots.is_empty() {
            bail!("{} holds no CA certificate", s.ca_file.display());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = match &s.server_name {
            Some(n) => n.clone(),
            None => s
                .address
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .with_context(|| {
                    format!(
                        "audit_forwarding.syslog.address = {:?} is not host:port",
                        s.address
                    )
                })?,
        };
        let name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host:?} is not a server name for TLS"))?;
        Ok(Collector {
            address: s.address.clone(),
            name,
            tls: Arc::new(tls),
            hostname: s.hostname.clone().unwrap_or_else(local_hostname),
            app_name: s.app_name.clone(),
        })
    }

    /// One connection: the frames, our close_notify, then wait for the collector to close its side.
    fn send(&self, frames: &[u8]) -> Result<()> {
        let addr = self
            .address
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.address))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.address))?;
        let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("cannot connect to {addr}"))?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), self.name.clone())
            .context("cannot start TLS")?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(frames)
            .and_then(|()| tls.flush())
            .context("TLS handshake or write failed")?;
        tls.conn.send_close_notify();
        tls.flush().context("cannot send close_notify")?;
        tls.sock
            .shutdown(Shutdown::Write)
            .context("cannot close our side")?;
        // the collector closes once it has read up to our close: then it has taken every frame
        let mut buf = [0u8; 1024];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                // a close without its own close_notify is still a close (TCP FIN), not a reset
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => {
                    return Err(e).context("the collector did not close the connection cleanly")
                }
            }
        }
    }
}

impl Target for Collector {
    fn position_suffix(&self) -> &'static str {
        ".forwarded-syslog"
    }

    fn describe(&self) -> String {
        format!("the syslog collector {}", self.address)
    }

    fn deliver(&self, records: &[&str]) -> Result<()> {
        let mut frames = Vec::new();
        for line in records {
            frames.extend(frame(&message(line, &self.hostname, &self.app_name)?));
        }
        self.send(&frames)
    }
}

/// RFC 5425 §4.3 octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}

/// The RFC 5424 message of one audit record (its JSON line).
pub fn message(line: &str, hostname: &str, app_name: &str) -> Result<Vec<u8>> {
    let v: Value = serde_json::from_str(line).context("an audit record that is not JSON")?;
    let at = v.get("at").and_then(Value::as_u64);
    let timestamp = at.map_or_else(|| "-".to_string(), crate::approval::rfc3339);
    let event = v.get("event").and_then(Value::as_str).unwrap_or("");
    let msgid = if header_field(event, 32) { event } else { "-" };
    // sequenceId is 1..2147483647 (RFC 5424 §7.3.1); the record's own seq is in MSG in any case
    let sd = match v.get("seq").and_then(Value::as_u64) {
        Some(seq @ 1..=2_147_483_647) => {
            format!("[meta sequenceId=\"{seq}\"]")
        }
        _ => "-".into(),
    };
    Ok(format!("<{PRI}>1 {timestamp} {hostname} {app_name} - {msgid} {sd} {line}").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_one_rfc5424_message_in_an_octet_counted_frame() {
        let line = r#"{"at":1764892800,"event":"vote","hash":"ab","prev":"cd","request_id":"req-1","seq":7}"#;
        let msg = message(line, "low-1", "diode-chat").unwrap();
        let want = format!(
            "<109>1 2025-12-05T00:00:00Z low-1 diode-chat - vote [meta sequenceId=\"7\"] {line}"
        );
        assert_eq!(String::from_utf8(msg.clone()).unwrap(), want);
        let framed = frame(&msg);
        assert_eq!(framed, format!("{} {want}", want.len()).into_bytes());
        // a record without the fields keeps the NILVALUEs
        let bare = message(r#"{"x":1}"#, "h", "a").unwrap();
        assert_eq!(bare, b"<109>1 - h a - - - {\"x\":1}".to_vec());
        assert!(message("not json", "h", "a").is_err());
    }
}
