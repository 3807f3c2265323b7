//! `diode-recv console` against the state of a real transfer over 127.0.0.1: the real sender sends
//! through a relay that drops every frame of one block of one file, so the receiver reports it
//! incomplete; a file named with `<script>` crosses whole; an approval is accepted and one is refused as
//! expired. The console, a process of its own, is fetched over HTTP: the page and `state.json` show the
//! link up, the gap and its exact replay line, the received files, the approvals and the audit chain, with
//! the security headers, every value escaped and no key material; after the printed replay line is run
//! the object moves to the received files. (Where a console may listen, and its TLS and sign-in:
//! `console_access.rs`; the low side's consoles: `console_low.rs`.)

use diode_tests::console::{self, assert_secure, get, has_escaped, Browser};
use diode_tests::envelopes::drop_accepted_and_expired;
use diode_tests::{random_bytes, wait_for, Daemon, Site};
use std::fs;
use std::net::{SocketAddr, UdpSocket};
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

fn start_console(site: &Site) -> (Daemon, SocketAddr) {
    let mut c = site.recv_cmd();
    c.args(["console", "--listen", "127.0.0.1:0"]);
    console::start(&mut c, site.dir.path(), "http")
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

/// The page in a real headless Chromium: its own script runs under the CSP (the live marker turns to
/// "live"), the text a person reads shows the link up, the gap and the replay line, the file name with
/// `<script>` as text (and no alert opened: the markup never ran), the expired approval's reason and the
/// audit chain; after the replay, the page moves the object to the received files with no reload.
/// Screenshots of both states go to docs/console/.
#[test]
fn the_console_in_a_real_headless_chromium() {
    let sc = Scenario::new();
    let browser = Browser::open(sc.site.dir.path(), sc.at);
    browser.assert_shows(&[
        "UP",
        "gappy.bin",
        "Missing blocks: 1",
        sc.replay.as_str(),
        sc.evil,
        "expired",
        "it had already expired when it arrived",
        "verified: all 2 records chain up to the head",
    ]);
    // no alert is open: the file name's markup was never run
    browser.assert_no_alert();
    let docs = console::screenshot_dir();
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
