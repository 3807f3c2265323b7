//! The chat adapter end to end, all real binaries over loopback: `diode-chat serve` takes a Slack slash
//! command and button clicks (signed as Slack signs them), posts to a local server that speaks Slack's
//! Web API wire format, is killed with SIGKILL after the first approval and started again, completes the
//! 2-of-3 rule with the vote it kept, and writes the signed envelope into the outbox, from where
//! `diode-send` carries it to `diode-recv`, which verifies it against the high side's own rules and
//! publishes it in approvals/. The adapter's audit log follows the same way, in segments that the high
//! side verifies as one chain.
//!
//! HTTP here is plain std sockets on purpose: the test shares no HTTP code with the adapter.

use diode_tests::{bin, wait_for, Daemon, Site};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SIGNING_SECRET: &str = "e2e-signing-secret-91ab";
const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104), written out so that the test does not share the adapter's implementation.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
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

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Read one HTTP/1.1 message from `r`: (first line, body).
fn read_message(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
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
    Some((first.trim_end().to_string(), body))
}

/// A local server speaking Slack's Web API: records (method, JSON body), answers ok with a ts.
#[derive(Clone, Default)]
struct FakeSlack {
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeSlack {
    fn start() -> (FakeSlack, String) {
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

    fn calls(&self, method: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn wait(&self, method: &str, n: usize) -> Vec<Value> {
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
fn slack_post(addr: &str, path: &str, body: &str) -> u16 {
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
    let mut r = BufReader::new(s);
    let (first, _) = read_message(&mut r).expect("an HTTP answer");
    first
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn click(addr: &str, user: &str, action: &str, request: &str) {
    let payload = json!({
        "type": "block_actions",
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

fn secret(dir: &Path, name: &str, value: &str) {
    let p = dir.join("secrets").join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, value).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Start `diode-chat serve` and wait for the address it listens on.
fn start_chat(site: &Site) -> (Daemon, String) {
    let log = site.path(&format!("chat.{:x}.log", rand::random::<u32>()));
    let f = fs::File::create(&log).unwrap();
    let child = Command::new(bin("diode-chat"))
        .arg("--config")
        .arg(site.path("adapter.toml"))
        .arg("serve")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon { child, log };
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

#[test]
fn chat_approval_survives_a_kill_and_is_accepted_by_the_real_receiver() {
    let site = Site::new(&[]);
    let (slack, api) = FakeSlack::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cfg: toml::Table =
        toml::from_str(&fs::read_to_string(root.join("adapter/adapter.example.toml")).unwrap())
            .unwrap();
    cfg.insert("outbox".into(), site.outbox().display().to_string().into());
    cfg["http"]["listen"] = "127.0.0.1:0".into();
    cfg["http"]["tick"] = "200ms".into();
    cfg["slack"]["api_base"] = api.into();
    cfg["slack"]["signing_secret"] = "file:secrets/slack-signing-secret".into();
    fs::write(site.path("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    secret(site.dir.path(), "slack-bot-token", "xoxb-e2e");
    secret(site.dir.path(), "slack-signing-secret", SIGNING_SECRET);
    // the example config also enables the Teams endpoints, whose webhook token is a secret file too
    secret(
        site.dir.path(),
        "teams-webhook-token",
        "dGVhbXMtZTJlLXRva2Vu",
    );
    secret(site.dir.path(), "pipeline-ci.token", "e2e-ci-token");

    let _recv = site.start("recv");
    let _send = site.start("send");
    let (mut chat, addr) = start_chat(&site);

    let text = format!("request billing 1.4.2 prod {DIGEST}");
    let cmd = form(&[
        ("user_id", "U0DAN"),
        ("user_name", "dan"),
        ("channel_id", "C0DEV"),
        ("command", "/deploy"),
        ("text", &text),
    ]);
    assert_eq!(slack_post(&addr, "/slack/commands", &cmd), 200);
    let post = slack.wait("chat.postMessage", 1).remove(0);
    let id = post["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .map(|b| b["elements"][0]["value"].as_str().unwrap().to_string())
        .expect("Approve button");
    click(&addr, "U0ADA", "approve", &id);
    slack.wait("chat.update", 1);

    // killed mid-flow, started again: Ada's vote is still there, Cat's completes the rule
    chat.kill9();
    let (_chat, addr) = start_chat(&site);
    click(&addr, "U0ADA", "approve", &id);
    slack.wait("chat.postEphemeral", 1);
    click(&addr, "U0CAT", "approve", &id);
    let done = wait_for("the approved message", Duration::from_secs(20), || {
        slack
            .calls("chat.update")
            .into_iter()
            .find(|c| c.to_string().contains("Approved"))
    });
    let envelope_id = done
        .to_string()
        .split('`')
        .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("envelope id in the message")
        .to_string();

    // across the diode: the receiver verifies it with its own rules and publishes it
    let accepted = site.path(&format!("approvals/{envelope_id}.json"));
    wait_for(
        "the approval on the high side",
        Duration::from_secs(30),
        || accepted.exists().then_some(()),
    );
    let v: Value = serde_json::from_slice(&fs::read(&accepted).unwrap()).unwrap();
    assert!(v.to_string().contains(&id), "{v}");
    let out = site
        .recv_cmd()
        .args(["approvals", "check", "--artifact", DIGEST, "--env", "prod"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), envelope_id);

    // the adapter's audit log crossed the diode too: its segments in the receiver's inbox hold every
    // record the low side has, and the chain verifies across them on the high side
    let chat_cmd = || {
        let mut c = Command::new(bin("diode-chat"));
        c.arg("--config").arg(site.path("adapter.toml"));
        c
    };
    // the high side has no adapter.toml: the segments are all it needs
    let high_verify = |dir: &Path| {
        Command::new(bin("diode-chat"))
            .args(["audit", "verify", "--segments"])
            .arg(dir)
            .current_dir(site.inbox())
            .output()
    };
    let segments = site.inbox().join("audit");
    let verified = wait_for(
        "the audit segments on the high side",
        Duration::from_secs(30),
        || {
            let low = String::from_utf8(chat_cmd().args(["audit", "verify"]).output().ok()?.stdout)
                .ok()?;
            let n: u64 = low
                .strip_prefix("ok: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let o = high_verify(&segments).ok()?;
            let high = String::from_utf8_lossy(&o.stdout).into_owned();
            high.starts_with(&format!("ok: {n} records of diode-chat"))
                .then_some(high)
        },
    );
    println!("high side: {}", verified.trim());
    let mut names: Vec<String> = fs::read_dir(&segments)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("segments in the receiver's inbox: {names:?}");
    let all: String = names
        .iter()
        .map(|n| fs::read_to_string(segments.join(n)).unwrap())
        .collect();
    assert!(all.contains(&envelope_id) && all.contains("\"event\":\"vote\""));

    // an operator copies the segments and someone edits one vote: the verifier names file and line
    let copy = site.path("audit-copy");
    fs::create_dir(&copy).unwrap();
    for n in &names {
        fs::copy(segments.join(n), copy.join(n)).unwrap();
    }
    let (file, line) = names
        .iter()
        .find_map(|n| {
            let t = fs::read_to_string(copy.join(n)).unwrap();
            t.lines()
                .position(|l| l.contains("\"event\":\"vote\"") && l.contains("U0CAT"))
                .map(|i| (n.clone(), i + 1))
        })
        .expect("Cat's vote in a segment");
    let t = fs::read_to_string(copy.join(&file)).unwrap();
    fs::write(copy.join(&file), t.replacen("U0CAT", "U0EVE", 1)).unwrap();
    let o = high_verify(&copy).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{file} line {line} ")) && err.contains("the record was edited"),
        "{err}"
    );
    println!("tampered copy: {}", err.trim());
}
