//! The chat adapter end to end, all real binaries over loopback: `diode-chat serve` takes a Slack slash
//! command and button clicks (signed as Slack signs them), posts to a local server that speaks Slack's
//! Web API wire format, is killed with SIGKILL after the first approval and started again, completes the
//! 2-of-3 rule with the vote it kept, and writes the signed envelope into the outbox, from where
//! `diode-send` carries it to `diode-recv`, which verifies it against the high side's own rules and
//! publishes it in approvals/. The adapter's audit log follows the same way, in segments that the high
//! side verifies as one chain.

use diode_tests::chat::{
    adapter_config, click, form, request_id_of, slack_post, start_chat, trigger_id, FakeSlack,
    DIGEST,
};
use diode_tests::{bin, wait_for, Site};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn chat_approval_survives_a_kill_and_is_accepted_by_the_real_receiver() {
    let site = Site::new(&[]);
    let (slack, api) = FakeSlack::start();
    let cfg = adapter_config(site.dir.path(), &site.outbox(), &api);
    fs::write(site.path("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();

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
        ("trigger_id", &trigger_id()),
    ]);
    assert_eq!(slack_post(&addr, "/slack/commands", &cmd), 200);
    let post = slack.wait("chat.postMessage", 1).remove(0);
    let id = request_id_of(&post);
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
