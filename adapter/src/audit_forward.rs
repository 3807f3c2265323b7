//! The audit log forwarded to the site's SIEM: every record, as an RFC 5424 syslog message, over TCP with
//! TLS (RFC 5425: octet-counting framing, `MSG-LEN SP SYSLOG-MSG`; the server's certificate checked
//! against the configured CA and name).
//!
//! At least once, with a persisted position (`<audit>.forwarded-syslog`, as the shipping's
//! `<audit>.shipped`, `audit_ship::Position`): the records after it are sent in batches on one
//! connection each; the batch counts as delivered only once the collector has read all of it, which it
//! shows by closing the connection after our TLS close_notify (it has then taken every byte before it).
//! Only then does the position move. A collector that is down, refuses the TLS handshake or drops the
//! connection leaves the position where it was, and the batch is sent again at the next look; a restart
//! of the adapter (a kill -9 included) resumes from the position. Records are sent twice only if the
//! adapter dies between the collector's close and the position's write.
//!
//! Message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [meta sequenceId="SEQ"] MSG`, facility 13 (log
//! audit), severity 5 (notice); TIMESTAMP is the record's `at`, MSGID its `event`, `meta`/`sequenceId`
//! (RFC 5424 §7.3.1) its `seq`, and MSG the record's JSON line unchanged, so the SIEM can check the hash
//! chain itself.

use crate::audit_ship::{appended, read_position, write_position};
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

/// The position file of the syslog forwarding, beside the log.
const FORWARDED: &str = ".forwarded-syslog";
/// Facility 13 (log audit) * 8 + severity 5 (notice).
const PRI: u8 = 13 * 8 + 5;
/// Records per connection: a long backlog moves in steps, each confirmed.
const BATCH: usize = 500;
/// Longest wait for a connection, a write, or the collector's close.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// `[audit_forwarding]` in adapter.toml.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Forwarding {
    /// RFC 5424 syslog over TLS (RFC 5425). None: not forwarded.
    pub syslog: Option<Syslog>,
}

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

/// RFC 5424 PRINTUSASCII, 1 to `max` characters.
fn header_field(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.bytes().all(|b| (33..=126).contains(&b))
}

impl Forwarding {
    /// Check the settings, and make `ca_file` absolute against the config's folder.
    pub fn check(&mut self, base: &Path) -> Result<()> {
        let Some(s) = &mut self.syslog else {
            return Ok(());
        };
        if s.ca_file.is_relative() {
            s.ca_file = base.join(&s.ca_file);
        }
        humantime::parse_duration(&s.every).with_context(|| {
            format!(
                "audit_forwarding.syslog.every = {:?} is not a duration",
                s.every
            )
        })?;
        if !header_field(&s.app_name, 48) {
            bail!(
                "audit_forwarding.syslog.app_name = {:?}: 1-48 printable ASCII characters, no spaces (RFC 5424)",
                s.app_name
            );
        }
        if let Some(h) = &s.hostname {
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
    log: PathBuf,
    pub every: Duration,
}

/// This machine's host name, or the NILVALUE.
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| header_field(h, 255))
        .unwrap_or_else(|| "-".into())
}

impl Collector {
    pub fn new(s: &Syslog, log: &Path) -> Result<Collector> {
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
            log: log.to_path_buf(),
            every: humantime::parse_duration(&s.every)?,
        })
    }

    /// Send everything after the position, batch by batch; Ok(records delivered now).
    pub fn forward(&self) -> Result<u64> {
        let mut sent = 0;
        loop {
            let pos = read_position(&self.log, FORWARDED)?;
            let Some(new) = appended(&self.log, &pos, Some(BATCH))? else {
                return Ok(sent);
            };
            let text = std::str::from_utf8(&new.bytes).context("the audit log is not UTF-8")?;
            let mut frames = Vec::with_capacity(new.bytes.len() * 2);
            for line in text.lines() {
                frames.extend(frame(&message(line, &self.hostname, &self.app_name)?));
            }
            self.deliver(&frames).with_context(|| {
                format!(
                    "records {}-{} not delivered to the syslog collector {}",
                    new.first, new.next.count, self.address
                )
            })?;
            write_position(&self.log, FORWARDED, &new.next)?;
            sent += new.next.count - pos.count;
        }
    }

    /// One connection: the frames, our close_notify, then wait for the collector to close its side.
    fn deliver(&self, frames: &[u8]) -> Result<()> {
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
