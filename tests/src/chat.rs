//! The chat side of the end-to-end tests: a local server speaking Slack's Web API wire format, requests
//! signed as Slack signs them, and `diode-chat serve` started and waited for. HTTP here is plain std
//! sockets on purpose: the tests share no HTTP code with the adapter.

use crate::{bin, wait_for, Daemon, Site};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SIGNING_SECRET: &str = "e2e-signing-secret-91ab";
pub const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104), written out so that the test does not share the adapter's implementation.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Read one HTTP/1.1 message from `r`: (first line, body).
pub fn read_message(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    read_http(r).map(|(first, _, body)| (first, body))
}

/// Read one HTTP/1.1 message from `r`: (first line, headers with lowercase names, body).
#[allow(clippy::type_complexity)]
pub fn read_http(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((first.trim_end().to_string(), headers, body))
}

/// A local server speaking Slack's Web API: records (method, JSON body), answers ok with a ts.
#[derive(Clone, Default)]
pub struct FakeSlack {
    pub calls: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeSlack {
    pub fn start() -> (FakeSlack, String) {
        let s = FakeSlack::default();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api", l.local_addr().unwrap());
        let calls = s.calls.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let calls = calls.clone();
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    // keep-alive: serve requests until the client closes
                    while let Some((first, body)) = read_message(&mut r) {
                        let method = first
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or("")
                            .trim_start_matches("/api/")
                            .to_string();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let n = {
                            let mut c = calls.lock().unwrap();
                            c.push((method.clone(), v.clone()));
                            c.len()
                        };
                        let ts = if method == "chat.update" {
                            v["ts"].clone()
                        } else {
                            json!(format!("1700000000.{n:06}"))
                        };
                        let out =
                            json!({"ok": true, "channel": v["channel"], "ts": ts}).to_string();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}",
                            out.len()
                        );
                        if w.write_all(resp.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (s, url)
    }

    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn wait(&self, method: &str, n: usize) -> Vec<Value> {
        wait_for(
            &format!("{n} {method} call(s)"),
            Duration::from_secs(20),
            || {
                let c = self.calls(method);
                (c.len() >= n).then_some(c)
            },
        )
    }
}

/// POST a form to the adapter, signed as Slack signs it; returns the status code.
pub fn slack_post(addr: &str, path: &str, body: &str) -> u16 {
    slack_post_answer(addr, path, body).0
}

/// POST a form to the adapter, signed as Slack signs it; returns the status code and the JSON answer
/// (Null when the body is empty or not JSON).
pub fn slack_post_answer(addr: &str, path: &str, body: &str) -> (u16, Value) {
    let ts = now().to_string();
    let sig = format!(
        "v0={}",
        hex(&hmac_sha256(
            SIGNING_SECRET.as_bytes(),
            format!("v0:{ts}:{body}").as_bytes()
        ))
    );
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         x-slack-request-timestamp: {ts}\r\nx-slack-signature: {sig}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (code, body) = answer(s);
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The status code and body of the one HTTP answer on `s`.
fn answer(s: TcpStream) -> (u16, Vec<u8>) {
    let mut r = BufReader::new(s);
    let (first, body) = read_message(&mut r).expect("an HTTP answer");
    let code = first
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body)
}

/// GET `path` from the adapter's pipeline API, with `Authorization: Bearer <token>` if given: the
/// status code and the JSON answer (Null if it is not JSON).
pub fn api_get(addr: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n"
    )
    .unwrap();
    let (code, body) = answer(s);
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The request id behind the Approve button of a posted request message.
pub fn request_id_of(post: &Value) -> String {
    post["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .map(|b| b["elements"][0]["value"].as_str().unwrap().to_string())
        .expect("Approve button")
}

/// A trigger id as Slack makes them: unique per invocation.
pub fn trigger_id() -> String {
    format!(
        "{}.{}.{:032x}",
        now(),
        rand::random::<u32>(),
        rand::random::<u128>()
    )
}

pub fn click(addr: &str, user: &str, action: &str, request: &str) {
    let payload = json!({
        "type": "block_actions",
        // every delivery Slack makes carries a fresh trigger_id (the adapter takes each delivery once)
        "trigger_id": trigger_id(),
        "user": {"id": user, "username": user.to_lowercase()},
        "channel": {"id": "C0PROD"},
        "actions": [{"action_id": action, "block_id": "decision", "value": request, "type": "button"}]
    })
    .to_string();
    assert_eq!(
        slack_post(addr, "/slack/interactions", &form(&[("payload", &payload)])),
        200
    );
}

/// `diode-chat --config <config> sign` (break-glass) of `digest` to prod, approved by two people.
pub fn break_glass(config: &Path, digest: &str) -> Command {
    let mut c = Command::new(bin("diode-chat"));
    c.arg("--config").arg(config).arg("sign");
    c.args(["--artifact", "billing", "--version", "1.4.2"])
        .args(["--digest", digest, "--env", "prod"])
        .args(["--approver", "U1:Ada:release-manager"])
        .args(["--approver", "U2:Bob:security"])
        .args(["--requester", "U9", "--reason", "chat is down"]);
    c
}

/// The pipeline token of `[[pipeline.tokens]]` "ci" in `adapter_config`.
pub const PIPELINE_TOKEN: &str = "e2e-ci-token";

/// `adapter/adapter.example.toml` made to run in `dir` (its key, keys/adapter.key, is the site's):
/// envelopes into `outbox`, HTTP on a free loopback port, a 200 ms tick, Slack's Web API at `api` and
/// the signing secret `slack_post` signs with; the secrets the example names are written under
/// `dir/secrets`. The caller adjusts it and writes it.
pub fn adapter_config(dir: &Path, outbox: &Path, api: &str) -> toml::Table {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cfg: toml::Table =
        toml::from_str(&fs::read_to_string(root.join("adapter/adapter.example.toml")).unwrap())
            .unwrap();
    cfg.insert("outbox".into(), outbox.display().to_string().into());
    cfg["http"]["listen"] = "127.0.0.1:0".into();
    cfg["http"]["tick"] = "200ms".into();
    cfg["slack"]["api_base"] = api.into();
    cfg["slack"]["signing_secret"] = "file:secrets/slack-signing-secret".into();
    secret(dir, "slack-bot-token", "xoxb-e2e");
    secret(dir, "slack-signing-secret", SIGNING_SECRET);
    // the example config also enables the Teams endpoints, whose webhook token is a secret file too
    secret(dir, "teams-webhook-token", "dGVhbXMtZTJlLXRva2Vu");
    secret(dir, "pipeline-ci.token", PIPELINE_TOKEN);
    cfg
}

pub fn secret(dir: &Path, name: &str, value: &str) {
    let p = dir.join("secrets").join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, value).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Start `diode-chat serve` and wait for the address it listens on.
pub fn start_chat(site: &Site) -> (Daemon, String) {
    start_chat_with(&site.path("adapter.toml"), site.dir.path())
}

/// Start `diode-chat serve` with `config`, logging into `log_dir`, and wait for its address.
pub fn start_chat_with(config: &Path, log_dir: &Path) -> (Daemon, String) {
    let mut d = Daemon::spawn(
        Command::new(bin("diode-chat"))
            .arg("--config")
            .arg(config)
            .arg("serve"),
        log_dir,
        "chat",
    );
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = d.log_text();
        if let Some(rest) = text.split("diode-chat listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_string();
            return (d, addr);
        }
        assert!(d.alive(), "diode-chat exited at start: {text}");
        assert!(Instant::now() < end, "diode-chat not ready: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
