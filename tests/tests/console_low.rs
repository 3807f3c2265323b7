//! The low side's consoles, `diode-send console` and `diode-chat console`, each a process of its own
//! reading what its real daemon wrote, fetched over HTTP and shown in a real headless Chromium:
//! - the sender's: a large file being sent at a rate, a file named in markup waiting behind it, then
//!   (the daemon stopped) a file queued in the outbox and a replay request pending, with the journal;
//! - the adapter's: a prod request open with one vote of two, its deadline and the escalation tier it
//!   reached, a staging request decided, and the high side's outcomes appended to its audit log as they
//!   arrive (through `diode_host::audit::AuditLog`, as the reverse path writes them), one of them with
//!   markup in its summary.
//!
//! Every value is escaped (the markup is shown as text, no alert opens), the security headers are on
//! every answer, and no secret of the configs reaches a page. Screenshots: `console::screenshot_dir()`.

use diode_tests::chat::{
    adapter_config, click, form, request_id_of, slack_post, start_chat, trigger_id, FakeSlack,
    DIGEST, PIPELINE_TOKEN, SIGNING_SECRET,
};
use diode_tests::console::{self, assert_secure, get, has_escaped, Browser};
use diode_tests::{random_bytes, run_ok, wait_for, Site};
use serde_json::{json, Value};
use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

fn state(at: SocketAddr) -> Option<Value> {
    let a = get(at, "/state.json", &at.to_string());
    (a.status == 200).then(|| serde_json::from_str(&a.body).ok())?
}

fn html_of(j: &Value) -> String {
    j["html"].as_str().unwrap_or_default().to_string()
}

/// The page's headers, escaping and single script; and that no line of a secret file is in it.
fn check_page(at: SocketAddr, raw: &str, secrets: &[&str]) -> String {
    let page = get(at, "/", &at.to_string());
    assert_eq!(page.status, 200, "{}", page.body);
    assert_secure(&page, "the page");
    let b = page.body;
    assert!(has_escaped(&b, raw), "{raw} not escaped:\n{b}");
    assert_eq!(b.matches("<script").count(), 1, "{b}");
    assert!(
        b.contains("<script src=\"/console.js\" defer></script>"),
        "{b}"
    );
    assert!(!b.contains(" onclick") && !b.contains(" style="), "{b}");
    for s in secrets {
        assert!(!b.contains(s), "a secret reached the page: {s}");
    }
    let foreign = get(at, "/state.json", "evil.example");
    assert_eq!(foreign.status, 421, "{}", foreign.body);
    b
}

#[test]
fn the_sender_console_shows_the_rate_the_queue_the_journal_and_pending_replays() {
    // paced slowly: the large file is still on the link while the page is looked at
    let site = Site::new(&[("rate", "4Mbit".into())]);
    let mut send = site.start("send");
    site.drop_in("first.bin", &random_bytes(20_000));
    let first = wait_for("first.bin in the journal", Duration::from_secs(30), || {
        let out = run_ok(site.send_cmd().arg("journal"));
        out.lines()
            .find(|l| l.ends_with(" first.bin") && l.contains(" kept "))
            .and_then(|l| l.split_whitespace().next())
            .map(String::from)
    });
    site.drop_in("big.bin", &random_bytes(12_000_000));
    let evil = "<script>alert(1)<b>x.txt";
    wait_for("big.bin on the link", Duration::from_secs(30), || {
        let s: Value =
            serde_json::from_str(&fs::read_to_string(site.path("state/sending.json")).ok()?)
                .ok()?;
        s["sending"]
            .as_array()?
            .iter()
            .any(|o| o["name"] == "big.bin")
            .then_some(())
    });
    site.drop_in(evil, b"markup, not a script");

    let (_console, at) = console::start(
        site.send_cmd().args(["console", "--listen", "127.0.0.1:0"]),
        site.dir.path(),
        "http",
    );
    // the daemon's figures: big.bin sent at a rate; the file with markup claimed, waiting behind it
    let j = wait_for(
        "the rate, big.bin and the waiting file",
        Duration::from_secs(30),
        || {
            let j = state(at)?;
            let html = html_of(&j);
            let rate = html
                .split("id=\"rate\">")
                .nth(1)?
                .split('<')
                .next()?
                .to_string();
            // the file with markup claimed from the outbox into the journal, not yet sent
            let claimed = html
                .split("<section id=\"journal\">")
                .nth(1)?
                .split("</tr>")
                .find(|row| has_escaped(row, evil))?
                .contains("<td>queued</td>");
            // ... and handed to the endpoint behind big.bin, or waiting in the daemon
            let jobs = j["sending"].as_u64()? + j["waiting"].as_u64()?;
            (j["running"] == true
                && jobs == 2
                && j["outbox"] == 0
                && html.contains("big.bin")
                && !rate.starts_with("0.00 MB/s")
                && claimed)
                .then_some(j)
        },
    );
    let html = html_of(&j);
    assert!(html.contains("paced at 4 Mbit/s"), "{html}");

    // the daemon stopped: a file waits in the outbox, a replay request waits for the daemon
    send.kill9();
    site.drop_in("later.txt", b"waits in the outbox");
    let said = run_ok(site.send_cmd().args(["replay", "--object", &first]));
    assert!(said.contains("replay queued"), "{said}");
    let j = wait_for(
        "the outbox and the pending replay",
        Duration::from_secs(20),
        || {
            let j = state(at)?;
            (j["outbox"] == 1 && j["replays"] == 1).then_some(j)
        },
    );
    let html = html_of(&j);
    assert!(html.contains("<td class=\"name\">later.txt</td>"), "{html}");
    assert!(
        html.contains(&format!("object {first}, whole</td><td>first.bin</td>")),
        "{html}"
    );
    let key = fs::read_to_string(site.path("keys/sender.key")).unwrap();
    let secrets: Vec<&str> = key
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with('#'))
        .collect();
    check_page(at, evil, &secrets);

    let browser = Browser::open(site.dir.path(), at);
    browser.assert_shows(&[
        "big.bin",
        "later.txt",
        evil,
        "first.bin",
        &format!("object {first}, whole"),
        "paced at 4 Mbit/s",
    ]);
    browser.assert_no_alert();
    browser.screenshot(&console::screenshot_dir().join("send.png"));
    // the search box keeps the journal's rows whose name or id matches
    browser.type_into("#search", "FIRST");
    let shown = wait_for("the search to filter", Duration::from_secs(10), || {
        let t = browser.text_of("#journal");
        (!t.contains("big.bin")).then_some(t)
    });
    assert!(shown.contains("first.bin"), "{shown}");
}

/// The audit log's path from adapter.toml (relative to it).
fn audit_path(site: &Site) -> std::path::PathBuf {
    let cfg: toml::Table =
        toml::from_str(&fs::read_to_string(site.path("adapter.toml")).unwrap()).unwrap();
    site.path(cfg["audit"].as_str().unwrap())
}

#[test]
fn the_adapter_console_shows_votes_deadlines_tiers_decisions_and_outcomes() {
    let site = Site::new(&[]);
    let (slack, api) = FakeSlack::start();
    let mut cfg = adapter_config(site.dir.path(), &site.outbox(), &api);
    // the first escalation tier one second after the request, so the test sees it reached
    cfg["environments"]["prod"]["escalation"][0]["after"] = "1s".into();
    fs::write(site.path("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let (_chat, addr) = start_chat(&site);
    let slash = |text: &str| {
        let cmd = form(&[
            ("user_id", "U0DAN"),
            ("user_name", "dan"),
            ("channel_id", "C0DEV"),
            ("command", "/deploy"),
            ("text", text),
            ("trigger_id", &trigger_id()),
        ]);
        assert_eq!(slack_post(&addr, "/slack/commands", &cmd), 200);
    };
    slash(&format!("request billing 1.4.2 prod {DIGEST}"));
    let prod = request_id_of(&slack.wait("chat.postMessage", 1).remove(0));
    click(&addr, "U0ADA", "approve", &prod);
    slack.wait("chat.update", 1);
    slash(&format!("request billing 1.4.3 staging {DIGEST}"));
    let staging = request_id_of(&slack.wait("chat.postMessage", 2).remove(1));
    click(&addr, "U0ADA", "approve", &staging);

    let (_console, at) = console::start(
        std::process::Command::new(diode_tests::bin("diode-chat"))
            .arg("--config")
            .arg(site.path("adapter.toml"))
            .args(["console", "--listen", "127.0.0.1:0"]),
        site.dir.path(),
        "http",
    );
    let j = wait_for(
        "the open request at tier 1 and the decision",
        Duration::from_secs(30),
        || {
            let j = state(at)?;
            let html = html_of(&j);
            (j["open"] == 1 && j["decided"] == 1 && html.contains("tier 1 of 2")).then_some(j)
        },
    );
    let html = html_of(&j);
    assert!(
        html.contains("<strong>billing 1.4.2 to prod</strong>"),
        "{html}"
    );
    assert!(
        html.contains(
            "<strong class=\"votes\">1 of 2</strong><br>Ada Lovelace (release-manager) at "
        ),
        "{html}"
    );
    assert!(
        html.contains("tier 1 of 2 (notified release-manager)"),
        "{html}"
    );
    assert!(html.contains("next: tier 2 at "), "{html}");
    // the deadline: 4 h from the request (adapter.example.toml)
    assert!(
        html.contains(" (in 3h 59m") || html.contains(" (in 4h"),
        "{html}"
    );
    assert!(html.contains(&prod) && html.contains(&staging), "{html}");
    assert!(
        html.contains("<td><strong>approved</strong></td><td>billing 1.4.3 to staging</td><td>Ada Lovelace</td>"),
        "{html}"
    );
    assert!(
        html.contains("No outcome has come back from the high side."),
        "{html}"
    );

    // the high side's outcomes, as the reverse path audits them
    let summary =
        "Deployed to prod at 14:02 UTC by ci-runner-3 with approval 2754 <script>alert(2)</script>";
    let log = diode_host::audit::AuditLog::new(audit_path(&site));
    log.append(
        "outcome",
        json!({"receiver": "high-1", "high_seq": 7, "high_event": "consume", "envelope_id": "2754aa",
               "request_id": staging, "summary": summary}),
    )
    .unwrap();
    log.append(
        "outcome_refused",
        json!({"file": "outcome-9.envelope", "reason": "bad_signature", "detail": "not signed by the receiver's key"}),
    )
    .unwrap();
    let j = wait_for("the outcomes", Duration::from_secs(20), || {
        let j = state(at)?;
        (j["outcomes"] == 2).then_some(j)
    });
    let html = html_of(&j);
    assert!(
        has_escaped(&html, summary) && !html.contains("<script>alert(2)"),
        "{html}"
    );
    assert!(html.contains("<td><strong>consume</strong></td>"), "{html}");
    assert!(
        html.contains("bad_signature: not signed by the receiver&#39;s key")
            || html.contains("bad_signature: not signed by the receiver&#x27;s key"),
        "{html}"
    );
    assert_eq!(j["audit_ok"], true, "{j}");
    // no secret of adapter.toml's files, nor the adapter's key
    let key = fs::read_to_string(site.path("keys/adapter.key")).unwrap();
    let mut secrets: Vec<&str> = key
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with('#'))
        .collect();
    secrets.extend([
        SIGNING_SECRET,
        PIPELINE_TOKEN,
        "xoxb-e2e",
        "dGVhbXMtZTJlLXRva2Vu",
    ]);
    check_page(at, "<script>alert(2)</script>", &secrets);

    let browser = Browser::open(site.dir.path(), at);
    browser.assert_shows(&[
        "billing 1.4.2 to prod",
        "1 of 2",
        "Ada Lovelace (release-manager)",
        "tier 1 of 2",
        "approved",
        summary,
        "bad_signature",
    ]);
    browser.assert_no_alert();
    browser.screenshot(&console::screenshot_dir().join("chat.png"));
}
