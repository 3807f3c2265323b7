//! What the console tests share: the test's own HTTP/1.1 client (plain std sockets: nothing shared with
//! the consoles), checks of escaping and of the security headers, and a W3C WebDriver session on a real
//! headless Chromium (chromedriver), for `tests/console.rs` and `tests/console_low.rs`.

use crate::{wait_for, Daemon};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Start a console (`cmd`, logging into `dir`) and wait for the address it logs; `scheme` is `http` or
/// `https`.
pub fn start(cmd: &mut Command, dir: &Path, scheme: &str) -> (Daemon, SocketAddr) {
    let mut d = Daemon::spawn(cmd, dir, "console");
    let at = wait_for("the console to listen", Duration::from_secs(20), || {
        assert!(d.alive(), "the console exited: {}", d.log_text());
        let log = d.log_text();
        let url = log.split(&format!("url={scheme}://")).nth(1)?;
        url.split('/').next()?.parse::<SocketAddr>().ok()
    });
    (d, at)
}

/// Where screenshots go: target/console-screenshots (a test run leaves the checkout as it found it), or
/// docs/console/, where the README links them, with DIODE_UPDATE_SCREENSHOTS=1.
pub fn screenshot_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = if std::env::var("DIODE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        root.join("docs/console")
    } else {
        root.join("target/console-screenshots")
    };
    fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// One HTTP/1.1 GET over a plain TCP socket (the test's own client: nothing shared with the console).
pub fn get(at: SocketAddr, path: &str, host: &str) -> Answer {
    request(at, "GET", path, host, None)
}

/// One HTTP/1.1 request, with a JSON body if given; the connection closes after the answer.
pub fn request(at: SocketAddr, method: &str, path: &str, host: &str, json: Option<&str>) -> Answer {
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
pub fn has_escaped(text: &str, raw: &str) -> bool {
    let named = raw.replace('<', "&lt;").replace('>', "&gt;");
    let numeric = raw.replace('<', "&#60;").replace('>', "&#62;");
    text.contains(&named) || text.contains(&numeric)
}

pub fn assert_secure(a: &Answer, what: &str) {
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

/// A W3C WebDriver session on chromedriver (Debian's `chromium` and `chromium-driver`, which tests/run.sh
/// installs), spoken over the test's own HTTP client: no WebDriver crate needed for five commands.
pub struct Browser {
    pub driver: Daemon,
    pub at: SocketAddr,
    pub session: String,
}

pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

impl Browser {
    pub fn start(dir: &std::path::Path) -> Browser {
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
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
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

    pub fn element(&self, css: &str) -> String {
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

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(serde_json::json!({ "text": text })),
        );
    }

    /// The rendered text of the first element `css` selects, read in one script call: the page
    /// re-renders every 2 s, so an element found by one WebDriver call may be gone ("stale element
    /// reference") by the next.
    pub fn text_of(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({
                "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                "args": [css],
            })),
        );
        match v.as_str() {
            Some(t) => t.to_string(),
            None => panic!("no element {css}: {v}"),
        }
    }

    /// The value a script returns, run in the page by the driver (WebDriver's own channel, not the
    /// page's: the CSP does not apply to it). For reading what is rendered in one consistent look.
    pub fn eval(&self, js: &str) -> serde_json::Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": js, "args": [] })),
        )
    }

    /// A browser on the console at `at`, once the console's own script has run under its CSP (a CSP that
    /// blocked it, or a script error, would leave the marker at "loaded").
    pub fn open(dir: &Path, at: SocketAddr) -> Browser {
        let b = Browser::start(dir);
        let url = format!("http://{at}/");
        b.call("POST", "/url", Some(serde_json::json!({ "url": url })));
        wait_for(
            "console.js to update the page",
            Duration::from_secs(20),
            || b.text_of("#conn").starts_with("live, ").then_some(()),
        );
        b
    }

    /// The text a person reads holds each of `want`; returns it.
    pub fn assert_shows(&self, want: &[&str]) -> String {
        let text = self.text_of("body");
        for w in want {
            assert!(text.contains(w), "the page does not show {w:?}:\n{text}");
        }
        text
    }

    /// No alert is open: markup in the page's values never ran.
    pub fn assert_no_alert(&self) {
        let path = format!("/session/{}/alert/text", self.session);
        let r = request(self.at, "GET", &path, "localhost", None);
        assert_eq!(r.status, 404, "an alert is open: {}", r.body);
        assert!(r.body.contains("no such alert"), "{}", r.body);
    }

    pub fn screenshot(&self, to: &std::path::Path) {
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
