//! `diode-recv console` against the state of a real transfer over 127.0.0.1: the real sender sends
//! through a relay that drops every frame of one block of one file, so the receiver reports it
//! incomplete; a file named with `<script>` crosses whole; an approval is accepted and one is refused as
//! expired. The console, a process of its own, is fetched over HTTP: the page and `state.json` show the
//! link up, the gap and its exact replay line, the received files, the approvals and the audit chain, with
//! the security headers, every value escaped and no key material; after the printed replay line is run
//! the object moves to the received files; a non-loopback address is refused at start.

use diode_tests::envelopes::drop_accepted_and_expired;
use diode_tests::{random_bytes, wait_for, Daemon, Site};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A UDP relay that forwards every datagram, except Shard frames of block `block` while `dropping`
/// (frame header: kind at byte 3, block at bytes 28..32 little-endian; docs/protocol.md).
struct Relay {
    dropping: Arc<AtomicBool>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    fn start(sock: UdpSocket, to: SocketAddr, block: u32) -> Relay {
        let dropping = Arc::new(AtomicBool::new(true));
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (d, n) = (dropping.clone(), dropped.clone());
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((len, _)) = sock.recv_from(&mut buf) {
                let f = &buf[..len];
                let drop = d.load(Ordering::SeqCst)
                    && len >= 32
                    && f[3] == 2
                    && u32::from_le_bytes([f[28], f[29], f[30], f[31]]) == block;
                if drop {
                    n.fetch_add(1, Ordering::SeqCst);
                } else {
                    let _ = out.send_to(f, to);
                }
            }
        });
        Relay { dropping, dropped }
    }
}

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One HTTP/1.1 GET over a plain TCP socket (the test's own client: nothing shared with the console).
fn get(at: SocketAddr, path: &str, host: &str) -> Answer {
    request(at, "GET", path, host, None)
}

/// One HTTP/1.1 request, with a JSON body if given; the connection closes after the answer.
fn request(at: SocketAddr, method: &str, path: &str, host: &str, json: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = json.unwrap_or("");
    let kind = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{kind}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let raw = read_answer(&mut s);
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// An answer's bytes: up to its Content-Length when it has one (chromedriver says `Connection: close`
/// but keeps the connection open), else to the end.
fn read_answer(s: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if let Some(len) = len {
                if raw.len() >= end + 4 + len {
                    raw.truncate(end + 4 + len);
                    return raw;
                }
            }
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return raw;
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = b.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        b = &rest[n + 2..];
    }
}

/// Whether `text` holds `raw` with `<` and `>` escaped, as named or as numeric character references.
fn has_escaped(text: &str, raw: &str) -> bool {
    let named = raw.replace('<', "&lt;").replace('>', "&gt;");
    let numeric = raw.replace('<', "&#60;").replace('>', "&#62;");
    text.contains(&named) || text.contains(&numeric)
}

fn assert_secure(a: &Answer, what: &str) {
    let h = |k: &str| a.headers.get(k).map(String::as_str).unwrap_or("");
    assert!(
        h("content-security-policy").contains("default-src 'self'")
            && h("content-security-policy").contains("frame-ancestors 'none'")
            && !h("content-security-policy").contains("unsafe-inline"),
        "{what}: CSP {:?}",
        h("content-security-policy")
    );
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
}

fn start_console(site: &Site) -> (Daemon, SocketAddr) {
    let mut c = site.recv_cmd();
    c.args(["console", "--listen", "127.0.0.1:0"]);
    let mut d = Daemon::spawn(&mut c, site.dir.path(), "console");
    let at = wait_for("the console to listen", Duration::from_secs(20), || {
        assert!(d.alive(), "the console exited: {}", d.log_text());
        let log = d.log_text();
        let url = log.split("url=http://").nth(1)?;
        url.split('/').next()?.parse::<SocketAddr>().ok()
    });
    (d, at)
}

/// The state the console is shown against: a real transfer through the relay, with a file named in
/// markup received, an approval accepted, one quarantined as expired, and `gappy.bin` incomplete with
/// block 1 missing; and the console serving it.
struct Scenario {
    site: Site,
    relay: Relay,
    ok_id: String,
    evil: &'static str,
    big: Vec<(String, Vec<u8>)>,
    replay: String,
    _daemons: Vec<Daemon>,
    at: SocketAddr,
}

impl Scenario {
    fn new() -> Scenario {
        let relay_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay_sock.local_addr().unwrap();
        // paced so that the relay's one thread and socket buffer lose nothing of their own
        let site = Site::new_with(
            &[
                ("target", relay_addr.to_string().into()),
                ("rate", "40Mbit".into()),
            ],
            &[],
        );
        let relay = Relay::start(
            relay_sock,
            format!("127.0.0.1:{}", site.port).parse().unwrap(),
            1,
        );
        let r = site.start("recv");
        let s = site.start("send");
        // a one-block file (the relay drops block 1 only) whose name is markup
        let evil = "<script>alert(1)<b>x.txt";
        let small = vec![(evil.to_string(), b"not markup".to_vec())];
        site.drop_in(evil, &small[0].1);
        site.wait_inbox(&small, Duration::from_secs(20)).unwrap();
        // an approval accepted, one refused because it expired before it arrived
        let ok = drop_accepted_and_expired(&site, 0x31);
        // four blocks of 128 x 1408 bytes: block 1 never arrives
        let big = vec![("gappy.bin".to_string(), random_bytes(3 * 128 * 1408 + 5000))];
        site.drop_in("gappy.bin", &big[0].1);
        let o = wait_for(
            "gappy.bin reported incomplete",
            Duration::from_secs(30),
            || {
                let s = site.status_json();
                s["objects"]
                    .as_array()?
                    .iter()
                    .find(|o| o["name"] == "gappy.bin" && o["state"] == "incomplete")
                    .cloned()
            },
        );
        // the block the relay dropped, as the receiver reports it
        assert_eq!(o["missing"], "1", "{o}");
        let replay = o["replay"].as_str().expect("a replay line").to_string();
        assert!(relay.dropped.load(Ordering::SeqCst) > 0);
        wait_for("both envelopes handled", Duration::from_secs(20), || {
            let q = fs::read_dir(site.path("quarantine")).ok()?.count();
            (q == 1 && site.path(&format!("approvals/{}.json", ok.id)).exists()).then_some(())
        });
        let (console, at) = start_console(&site);
        Scenario {
            site,
            relay,
            ok_id: ok.id,
            evil,
            big,
            replay,
            _daemons: vec![r, s, console],
            at,
        }
    }

    /// Run the printed replay line on the low side with the loss gone; the file arrives whole.
    fn replay(&self) {
        self.relay.dropping.store(false, Ordering::SeqCst);
        let said = self.site.run_replay_line(&self.replay);
        self.site
            .wait_inbox(&self.big, Duration::from_secs(30))
            .unwrap_or_else(|e| {
                panic!("{e} after the replay ({said}): {}", self.site.status_json())
            });
    }
}

#[test]
fn the_console_shows_a_real_transfer_escaped_and_secured_and_follows_the_replay() {
    let sc = Scenario::new();
    let (site, at, evil, replay) = (&sc.site, sc.at, sc.evil, sc.replay.clone());
    let (missing, first) = ("1", 1);
    let host = at.to_string();
    let page = get(at, "/", &host);
    assert_eq!(page.status, 200, "{}", page.body);
    assert_secure(&page, "the page");
    let b = &page.body;
    // the name is text, not markup; the only script is the console's own file
    assert!(has_escaped(b, evil), "escaped name missing:\n{b}");
    assert!(
        !b.contains("<script>alert"),
        "raw markup from a file name:\n{b}"
    );
    assert_eq!(b.matches("<script").count(), 1, "{b}");
    assert!(b.contains("<script src=\"/console.js\" defer></script>"));
    assert!(
        !b.contains(" onclick") && !b.contains(" style="),
        "inline script or style:\n{b}"
    );
    // the link, the gap map and the replay line with its copy button
    assert!(b.contains("<span class=\"good\">UP</span>"), "{b}");
    assert!(b.contains("gappy.bin"), "{b}");
    assert!(
        b.contains(&format!("<rect class=\"gap\" x=\"{first}\" y=\"0\"")),
        "no gap drawn at block {first}:\n{b}"
    );
    assert!(
        b.contains(&format!("<span class=\"mono missing\">{missing}</span>")),
        "{b}"
    );
    assert!(
        b.contains(&format!("<code class=\"replay-line\">{replay}</code>")),
        "{b}"
    );
    assert!(b.contains(&format!("data-copy=\"{replay}\"")), "{b}");
    // approvals: the valid one, and the expired one in quarantine with its reason in words
    assert!(
        b.contains(&sc.ok_id) && b.contains("<strong>valid</strong>"),
        "{b}"
    );
    assert!(
        b.contains("it had already expired when it arrived: expired at"),
        "{b}"
    );
    assert!(
        b.contains("verified: all 2 records chain up to the head"),
        "{b}"
    );
    // no key material: not a line of any secret key file
    for k in ["keys/receiver.key", "keys/adapter.key", "keys/sender.key"] {
        for line in fs::read_to_string(site.path(k)).unwrap().lines() {
            let line = line.trim();
            if line.len() >= 16 && !line.starts_with('#') {
                assert!(!b.contains(line), "{k} leaked into the page");
            }
        }
    }

    let js = get(at, "/console.js", &host);
    assert_eq!(js.status, 200);
    assert!(js.headers["content-type"].starts_with("text/javascript"));
    assert!(js.body.contains("state.json"));

    let state = get(at, "/state.json", &host);
    assert_eq!(state.status, 200);
    assert_secure(&state, "state.json");
    assert!(state.headers["content-type"].starts_with("application/json"));
    let j: serde_json::Value = serde_json::from_str(&state.body).unwrap();
    assert_eq!(
        (j["links_up"].as_u64(), j["incomplete"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    let html = j["html"].as_str().unwrap();
    assert!(
        has_escaped(html, evil) && !html.contains("<script"),
        "{html}"
    );
    assert!(html.contains(&replay), "{html}");

    // a page in the operator's browser under another name (DNS rebinding) gets nothing
    let foreign = get(at, "/state.json", "evil.example");
    assert_eq!(foreign.status, 421);
    assert!(!foreign.body.contains("gappy"));
    assert_secure(&foreign, "a refused request");

    // the replay line as printed, run on the low side with the loss gone: the object is received
    sc.replay();
    let j = wait_for(
        "the console to show gappy.bin received",
        Duration::from_secs(20),
        || {
            let j: serde_json::Value =
                serde_json::from_str(&get(at, "/state.json", &host).body).ok()?;
            (j["incomplete"] == 0
                && j["html"]
                    .as_str()?
                    .contains("<td class=\"name\">gappy.bin</td>"))
            .then_some(j)
        },
    );
    assert!(!j["html"].as_str().unwrap().contains("replay-line"));
    // the console's own history of the last hour: a frames/s line with points, a loss line
    let fps = wait_for(
        "a frames/s chart with points",
        Duration::from_secs(10),
        || {
            let j: serde_json::Value =
                serde_json::from_str(&get(at, "/state.json", &host).body).ok()?;
            let html = j["html"].as_str()?.to_string();
            assert!(html.contains("<svg class=\"chart loss\""), "{html}");
            let points = html
                .split("class=\"chart fps\"")
                .nth(1)?
                .split("points=\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_string();
            (!points.is_empty()).then_some(points)
        },
    );
    assert!(
        fps.split(' ')
            .all(|p| p.split(',').all(|n| n.parse::<f64>().is_ok())),
        "{fps}"
    );
    println!("console at {at}: gap at block 1 shown, replayed with `{replay}`, then received");
}

/// A W3C WebDriver session on chromedriver (Debian's `chromium` and `chromium-driver`, which tests/run.sh
/// installs), spoken over the test's own HTTP client: no WebDriver crate needed for five commands.
struct Browser {
    driver: Daemon,
    at: SocketAddr,
    session: String,
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

impl Browser {
    fn start(dir: &std::path::Path) -> Browser {
        assert!(
            on_path("chromedriver") && on_path("chromium"),
            "chromium and chromedriver are not installed: `apt-get install chromium chromium-driver` \
             (tests/run.sh installs them as root)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut c = std::process::Command::new("chromedriver");
        c.arg(format!("--port={port}"));
        let driver = Daemon::spawn(&mut c, dir, "chromedriver");
        let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("chromedriver to be ready", Duration::from_secs(20), || {
            TcpStream::connect(at).ok()?;
            let v: serde_json::Value =
                serde_json::from_str(&get(at, "/status", "localhost").body).ok()?;
            (v["value"]["ready"] == true).then_some(())
        });
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // root in a container: Chromium's own sandbox needs user namespaces it may not get
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1700", "--no-first-run"]
            }
        }}});
        let mut b = Browser {
            driver,
            at,
            session: String::new(),
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        b
    }

    /// A WebDriver command; returns the answer's `value`.
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let path = if self.session.is_empty() {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let body = body.map(|b| b.to_string());
        let a = request(self.at, method, &path, "localhost", body.as_deref());
        let v: serde_json::Value = serde_json::from_str(&a.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", a.body));
        assert!(
            a.status == 200,
            "{method} {path}: {} {v}\n{}",
            a.status,
            self.driver.log_text()
        );
        v["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let e = self.call(
            "POST",
            "/element",
            Some(serde_json::json!({"using": "css selector", "value": css})),
        );
        e.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(serde_json::json!({ "text": text })),
        );
    }

    fn text_of(&self, css: &str) -> String {
        let id = self.element(css);
        self.call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&self, to: &std::path::Path) {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ =
                std::panic::catch_unwind(|| request(self.at, "DELETE", &path, "localhost", None));
        }
    }
}

/// The page in a real headless Chromium: its own script runs under the CSP (the live marker turns to
/// "live"), the text a person reads shows the link up, the gap and the replay line, the file name with
/// `<script>` as text (and no alert opened: the markup never ran), the expired approval's reason and the
/// audit chain; after the replay, the page moves the object to the received files with no reload.
/// Screenshots of both states go to docs/console/.
#[test]
fn the_console_in_a_real_headless_chromium() {
    let sc = Scenario::new();
    let browser = Browser::start(sc.site.dir.path());
    let url = format!("http://{}/", sc.at);
    browser.call("POST", "/url", Some(serde_json::json!({ "url": url })));
    // console.js ran (a CSP that blocked it, or a script error, would leave "loaded")
    wait_for(
        "console.js to update the page",
        Duration::from_secs(20),
        || browser.text_of("#conn").starts_with("live, ").then_some(()),
    );
    let text = browser.text_of("body");
    for want in [
        "UP",
        "gappy.bin",
        "Missing blocks: 1",
        sc.replay.as_str(),
        sc.evil,
        "expired",
        "it had already expired when it arrived",
        "verified: all 2 records chain up to the head",
    ] {
        assert!(
            text.contains(want),
            "the page does not show {want:?}:\n{text}"
        );
    }
    // no alert is open: the file name's markup was never run
    let r = request(
        browser.at,
        "GET",
        &format!("/session/{}/alert/text", browser.session),
        "localhost",
        None,
    );
    assert_eq!(r.status, 404, "an alert is open: {}", r.body);
    assert!(r.body.contains("no such alert"), "{}", r.body);
    // screenshots into target/ (a test run leaves the checkout as it found it); into docs/console/, where
    // the README links them, with DIODE_UPDATE_SCREENSHOTS=1
    let docs = if std::env::var("DIODE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
    };
    std::fs::create_dir_all(&docs).unwrap();
    browser.screenshot(&docs.join("incomplete.png"));

    sc.replay();
    // the page follows by itself (polling), no reload
    let text = wait_for(
        "the page to show gappy.bin received",
        Duration::from_secs(20),
        || {
            let t = browser.text_of("#live");
            (t.contains("None: nothing waits for a replay") && !t.contains("On the low side run"))
                .then_some(t)
        },
    );
    let received = browser.text_of("#received");
    assert!(received.contains("gappy.bin"), "{received}\n{text}");
    browser.screenshot(&docs.join("received.png"));
    // the search box keeps the rows whose name or hash matches, across the page's own updates
    browser.type_into("#search", "GAPPY");
    let shown = wait_for("the search to filter", Duration::from_secs(10), || {
        let t = browser.text_of("#received");
        (!t.contains("ok.envelope")).then_some(t)
    });
    assert!(shown.contains("gappy.bin"), "{shown}");
    std::thread::sleep(Duration::from_millis(2500)); // one more poll: the filter holds
    let shown = browser.text_of("#received");
    assert!(
        shown.contains("gappy.bin") && !shown.contains("ok.envelope"),
        "{shown}"
    );
    println!(
        "chromium rendered the console; screenshots in {}",
        docs.display()
    );
}

#[test]
fn the_console_refuses_to_listen_beyond_loopback() {
    let site = Site::new(&[]);
    for addr in ["0.0.0.0:8440", "[::]:0", "192.0.2.10:8440"] {
        let out = site
            .recv_cmd()
            .args(["console", "--listen", addr])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{addr}: {err}");
        assert!(
            err.contains("refusing to listen on") && err.contains("no TLS and no authentication"),
            "{addr}: {err}"
        );
    }
}
