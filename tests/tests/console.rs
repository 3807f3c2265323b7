//! `diode-recv console` against the state of a real transfer over the emulated one-way link of
//! `hardware/diode-link.sh` (tests/src/link.rs): the sender in one network namespace, the receiver in
//! another, a veth pair between them whose receiver side drops every packet going back. nftables on the
//! link drops every frame of one block of one file, so the receiver reports it incomplete; a file named
//! with `<script>` crosses whole; an approval is accepted and one is refused as expired; a large file
//! crosses paced, slowly enough to be seen in progress. The console, a process of its own on the host's
//! loopback (it only reads what the receiver writes), is fetched over HTTP and shown in a real headless
//! Chromium: the link up, its loss at 0 and then rising, the object in progress with its progress bar,
//! the gap and its exact replay line, the received files, the approvals and the audit chain, with the
//! security headers, every value escaped and no key material; after the printed replay line is run the
//! object moves to the received files. (Where a console may listen, and its TLS and sign-in:
//! `console_access.rs`; the low side's consoles: `console_low.rs`.)
//!
//! Needs root for the link, as tests/netns.rs: without it each test fails with the reason, unless
//! `DIODE_SKIP_NETNS=1`, which skips them loudly. The tests run one at a time.

use diode_tests::console::{self, assert_secure, get, has_escaped, Browser};
use diode_tests::envelopes::drop_accepted_and_expired;
use diode_tests::link::Link;
use diode_tests::{random_bytes, wait_for, Daemon, Site};
use std::fs;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sender's pace: a 64 MB file takes about 16 s, time for the page to poll it several times.
const PACE: &str = "40Mbit";
/// The line rate above the pace, so that the link itself loses nothing.
const LINE: &str = "125mbit";

fn start_console(site: &Site) -> (Daemon, SocketAddr) {
    let mut c = site.recv_cmd();
    c.args(["console", "--listen", "127.0.0.1:0"]);
    console::start(&mut c, site.dir.path(), "http")
}

/// The receiver's status entry for the object called `name` in state `state`.
fn object(site: &Site, name: &str, state: &str) -> Option<serde_json::Value> {
    site.status_json()["objects"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name && o["state"] == state)
        .cloned()
}

/// The state the console is shown against: the link, both daemons in their namespaces, a file named
/// in markup received, an approval accepted and one quarantined as expired; and the console serving it.
/// Nothing has been lost yet.
struct Scenario {
    // dropped last: the daemons stop before the namespaces go
    _daemons: Vec<Daemon>,
    site: Site,
    link: Link,
    ok_id: String,
    evil: &'static str,
    big: Vec<(String, Vec<u8>)>,
    replay: String,
    at: SocketAddr,
}

impl Scenario {
    /// None only when the emulated-diode tests are skipped knowingly (`DIODE_SKIP_NETNS=1`).
    fn new(tag: &str) -> Option<Scenario> {
        let link = Link::up(tag, 0.0)?;
        link.rate(LINE);
        let site = Site::across(&link, &[("rate", PACE.into())], &[]);
        let r = site.start("recv");
        let s = site.start("send");
        site.wait_session(Duration::from_secs(10));
        // a one-block file whose name is markup
        let evil = "<script>alert(1)<b>x.txt";
        let small = vec![(evil.to_string(), b"not markup".to_vec())];
        site.drop_in(evil, &small[0].1);
        site.wait_inbox(&small, Duration::from_secs(20)).unwrap();
        // an approval accepted, one refused because it expired before it arrived
        let ok = drop_accepted_and_expired(&site, 0x31);
        wait_for("both envelopes handled", Duration::from_secs(20), || {
            let q = fs::read_dir(site.path("quarantine")).ok()?.count();
            (q == 1 && site.path(&format!("approvals/{}.json", ok.id)).exists()).then_some(())
        });
        let (console, at) = start_console(&site);
        Some(Scenario {
            _daemons: vec![console, s, r],
            site,
            link,
            ok_id: ok.id,
            evil,
            big: Vec::new(),
            replay: String::new(),
            at,
        })
    }

    /// A 64 MB file into the outbox, sent at the pace; returns it (name, bytes), to wait for.
    fn send_paced(&self) -> Vec<(String, Vec<u8>)> {
        let want = vec![("paced.bin".to_string(), random_bytes(64 << 20))];
        self.site.drop_in(&want[0].0, &want[0].1);
        want
    }

    /// The loss: the link drops every Shard frame of block 1 (raw nftables matches on the clear frame
    /// header: magic, kind at byte 3, block at 28..32 little-endian; docs/protocol.md), then
    /// `gappy.bin`, four blocks, crosses it; the receiver reports it incomplete with block 1 missing.
    fn lose_a_block(&mut self) {
        let site = &self.site;
        let block1 = format!("0x{:08x}", u32::from_be_bytes(1u32.to_le_bytes()));
        self.link.drop_matching(&format!(
            "udp dport {} @th,64,16 0xd10d @th,88,8 2 @th,288,32 {block1}",
            site.port
        ));
        // four blocks of 128 x 1408 bytes: block 1 never arrives
        self.big = vec![("gappy.bin".to_string(), random_bytes(3 * 128 * 1408 + 5000))];
        site.drop_in("gappy.bin", &self.big[0].1);
        let o = wait_for(
            "gappy.bin reported incomplete",
            Duration::from_secs(30),
            || object(site, "gappy.bin", "incomplete"),
        );
        // the block the link dropped, as the receiver reports it
        assert_eq!(o["missing"], "1", "{o}");
        self.replay = o["replay"].as_str().expect("a replay line").to_string();
        let lost = self.link.lost_packets();
        assert!(lost > 0, "the link dropped nothing");
        println!(
            "link {}: dropped {lost} frames of block 1 of gappy.bin; receiver: {o}",
            self.link.prefix
        );
    }

    /// Run the printed replay line on the low side with the loss gone; the file arrives whole.
    fn replay(&self) {
        self.link.loss(0.0); // clears the drop rule
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
    let _one = one_at_a_time();
    let Some(mut sc) = Scenario::new("conh") else {
        return;
    };
    sc.lose_a_block();
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
    sc.link.assert_one_way();
}

/// The loss figure of the session in the page's link table ("0.00 %"), as rendered.
fn shown_loss(b: &Browser) -> Option<f64> {
    let v = b.eval(
        "const c = document.querySelector('#links tbody tr td:nth-child(4)'); \
         return c ? c.innerText : null;",
    );
    v.as_str()?.trim().strip_suffix('%')?.trim().parse().ok()
}

/// The rows of the page's "Objects in progress" table, as rendered: (text, progress bar value).
fn shown_in_progress(b: &Browser) -> Vec<(String, Option<f64>)> {
    let v = b.eval(
        "return [...document.querySelectorAll('#receiving tbody tr')].map(r => { \
           const p = r.querySelector('progress'); \
           return [r.innerText, p ? p.value : null]; });",
    );
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| (r[0].as_str().unwrap_or("").to_string(), r[1].as_f64()))
        .collect()
}

/// The page in a real headless Chromium, following a real transfer over the emulated one-way link: its
/// own script runs under the CSP (the live marker turns to "live"); the link is shown up with 0 % loss;
/// while a 64 MB file crosses at the pace, the page shows it in progress with a progress bar, its rate
/// and time left; then the link loses every frame of one block of `gappy.bin`, and the page shows the
/// loss above 0, the gap and the replay line, the file name with `<script>` as text (and no alert
/// opened: the markup never ran), the expired approval's reason and the audit chain; after the replay,
/// the page moves the object to the received files with no reload. Screenshots go to docs/console/.
#[test]
fn the_console_in_a_real_headless_chromium() {
    let _one = one_at_a_time();
    let Some(mut sc) = Scenario::new("conb") else {
        return;
    };
    let browser = Browser::open(sc.site.dir.path(), sc.at);
    let docs = console::screenshot_dir();
    // the link up, nothing lost yet
    let before = wait_for("the page to show the link", Duration::from_secs(20), || {
        shown_loss(&browser)
    });
    browser.assert_shows(&["UP"]);
    assert_eq!(before, 0.0, "loss before any frame was dropped");
    println!("page before the loss: link UP, loss (session) {before:.2} %");

    // a large file at the pace: the page shows it in progress, with its bar, rate and time left
    let paced = sc.send_paced();
    let (row, bar) = wait_for(
        "the page to show paced.bin in progress with a progress bar, rate and time left",
        Duration::from_secs(30),
        || {
            shown_in_progress(&browser)
                .into_iter()
                .find(|(t, v)| {
                    t.contains("paced.bin") && v.is_some_and(|v| v > 0.0) && t.contains(" left")
                })
                .map(|(t, v)| (t, v.unwrap_or_default()))
        },
    );
    println!(
        "page in progress: {:?}, progress bar {bar}/1000",
        row.replace(['\t', '\n'], " | ")
    );
    browser.screenshot(&docs.join("progress.png"));
    sc.site.wait_inbox(&paced, Duration::from_secs(60)).unwrap();
    wait_for(
        "the page to show paced.bin received",
        Duration::from_secs(20),
        || {
            (browser.text_of("#received").contains("paced.bin")
                && shown_in_progress(&browser).is_empty())
            .then_some(())
        },
    );

    // the loss: the page shows it rising, the gap map and the replay line
    sc.lose_a_block();
    let after = wait_for(
        "the page to show the loss above 0 and gappy.bin incomplete",
        Duration::from_secs(20),
        || {
            let loss = shown_loss(&browser)?;
            (loss > before && browser.text_of("#incomplete").contains("gappy.bin")).then_some(loss)
        },
    );
    println!("page after the loss: loss (session) {after:.2} % (was {before:.2} %)");
    let text = browser.assert_shows(&[
        "UP",
        "gappy.bin",
        "Missing blocks: 1",
        sc.replay.as_str(),
        sc.evil,
        "expired",
        "it had already expired when it arrived",
        "verified: all 2 records chain up to the head",
    ]);
    let gaps = browser.eval(
        "return [...document.querySelectorAll('#incomplete svg.gapmap rect.gap')] \
           .map(r => r.getAttribute('x') + '+' + r.getAttribute('width'));",
    );
    assert_eq!(gaps, serde_json::json!(["1+1"]), "the gap map");
    let replay_shown = browser.text_of("#incomplete code.replay-line");
    assert_eq!(replay_shown, sc.replay);
    println!("page gap map: gap rects {gaps}, replay line shown: {replay_shown}");
    let name_shown = text.lines().find(|l| l.contains(sc.evil)).unwrap_or("");
    println!("page shows the name as text: {name_shown:?}");
    let expired = text
        .lines()
        .find(|l| l.contains("already expired when it arrived"))
        .unwrap_or("");
    println!("page shows the refused approval: {expired:?}");
    // no alert is open: the file name's markup was never run
    browser.assert_no_alert();
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
    let row = received
        .lines()
        .find(|l| l.contains("gappy.bin"))
        .unwrap_or("");
    println!("page after the replay: no incomplete object; received: {row:?}");
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
    sc.link.assert_one_way();
}
