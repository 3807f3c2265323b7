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
    let mut s = TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
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

#[test]
fn the_console_shows_a_real_transfer_escaped_and_secured_and_follows_the_replay() {
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
    let _r = site.start("recv");
    let _s = site.start("send");

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
    let missing = o["missing"].as_str().unwrap().to_string();
    assert_eq!(missing, "1", "{o}");
    let first = 1;
    let replay = o["replay"].as_str().expect("a replay line").to_string();
    assert!(relay.dropped.load(Ordering::SeqCst) > 0);
    wait_for("both envelopes handled", Duration::from_secs(20), || {
        let q = fs::read_dir(site.path("quarantine")).ok()?.count();
        (q == 1 && site.path(&format!("approvals/{}.json", ok.id)).exists()).then_some(())
    });

    let (_console, at) = start_console(&site);
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
        b.contains(&ok.id) && b.contains("<strong>valid</strong>"),
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
    relay.dropping.store(false, Ordering::SeqCst);
    let said = site.run_replay_line(&replay);
    site.wait_inbox(&big, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e} after the replay ({said}): {}", site.status_json()));
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
    println!("console at {at}: gap at block 1 shown, replayed with `{replay}`, then received");
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
