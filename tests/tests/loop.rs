//! The full request loop through two emulated one-way links (network namespaces, nftables; one link each
//! way, each asserting that not one packet went the wrong way), all real binaries:
//!
//!   high side: `diode-send request` -> reverse diode-send (envelope_only) ==reverse link==>
//!   low side:  reverse diode-recv inbox -> diode-chat (verifies the pipeline's signature, posts to a
//!              local Slack-format server, people click) -> forward outbox -> forward diode-send
//!              ==forward link==> high side: diode-recv verifies the approval; `approvals wait` returns;
//!   and back: diode-recv signs each approvals audit record as an outcome into the reverse outbox
//!              ==reverse link==> diode-chat verifies it and updates the request's Slack message.
//!
//! Four requests: one approved by two people (wait exits 0 and consumes it as ci-runner-3: the message
//! says "Deployed to prod ... by ci-runner-3"), one the high side refuses (its rule for staging is
//! stricter: the message says why), one rejected (exit 2), one nobody answers (the low side's deadline
//! passes: exit 3). A forged outcome sent across the reverse link is quarantined and never shown; the
//! high side's audit log comes back whole, and `diode-chat audit verify` checks it.

use diode_proto::audit::{chain, Head};
use diode_proto::envelope::SigningKey;
use diode_proto::outcome::Outcome;
use diode_tests::chat::{click, secret, start_chat_with, FakeSlack, SIGNING_SECRET};
use diode_tests::envelopes::digest;
use diode_tests::link::Link;
use diode_tests::{run_ok, wait_for, Site};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn request(reverse: &Site, env: &str, seed: u8) -> String {
    run_ok(reverse.send_cmd().args([
        "request",
        "--artifact",
        "billing",
        "--version",
        &format!("1.{seed}.0"),
        "--digest",
        &digest(seed),
        "--env",
        env,
        "--reason",
        "release train",
        "--requester",
        "pipeline:release",
    ]))
    .trim()
    .to_string()
}

fn wait(forward: &Site, id: &str) -> Child {
    forward
        .recv_cmd()
        .args([
            "approvals",
            "wait",
            "--request",
            id,
            "--timeout",
            "90s",
            "--consume",
            "--by",
            "ci-runner-3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The Slack message that shows request `id` (the Approve button's value is the adapter's request key).
fn posted(slack: &FakeSlack, id: &str) -> String {
    let post: Value = wait_for(
        "the request in the Slack channel",
        Duration::from_secs(40),
        || {
            slack
                .calls("chat.postMessage")
                .into_iter()
                .find(|c| c.to_string().contains(id))
        },
    );
    post["blocks"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["type"] == "actions"))
        .and_then(|b| b["elements"][0]["value"].as_str())
        .expect("an Approve button")
        .to_string()
}

/// The text of the newest chat.update of the message whose buttons carried `key`, once it holds `needle`.
fn updated(slack: &FakeSlack, key: &str, needle: &str) -> String {
    wait_for(
        &format!("the Slack message to say {needle:?}"),
        Duration::from_secs(40),
        || {
            slack
                .calls("chat.update")
                .into_iter()
                .rev()
                .map(|c| c.to_string())
                .find(|c| c.contains(key) && c.contains(needle))
        },
    )
}

#[test]
fn a_request_from_inside_the_air_gap_comes_back_approved_rejected_or_expired_and_the_outcome_returns(
) {
    let Some(fwd) = Link::up("lpfwd", 0.0) else {
        return;
    };
    let Some(rev) = Link::up("lprev", 0.0) else {
        return;
    };
    // forward: low side sender -> high side receiver; reverse: high side sender -> low side receiver
    let forward = Site::across(&fwd, &[], &[]);
    let reverse = Site::across(
        &rev,
        &[
            ("envelope_only", true.into()),
            ("pipeline_key", "keys/pipeline.key".into()),
            ("rate", "50Mbit".into()),
        ],
        &[],
    );
    run_ok(
        Command::new(diode_tests::bin("diode-send"))
            .args(["keygen", "--pipeline", "--dir"])
            .arg(reverse.path("keys")),
    );
    // the high side signs its outcomes with a key of its own, into the reverse link's outbox; its rule
    // for staging asks for two approvers where the low side's asks for one
    run_ok(
        Command::new(diode_tests::bin("diode-recv"))
            .args(["keygen", "--outcome", "--dir"])
            .arg(forward.path("keys")),
    );
    let recv_toml = forward.path("recv.toml");
    let mut r: toml::Table = toml::from_str(&fs::read_to_string(&recv_toml).unwrap()).unwrap();
    let mut outcomes = toml::Table::new();
    outcomes.insert(
        "outbox".into(),
        reverse.outbox().display().to_string().into(),
    );
    outcomes.insert("key".into(), "keys/outcome.key".into());
    outcomes.insert("name".into(), "high-1".into());
    r["approvals"]
        .as_table_mut()
        .unwrap()
        .insert("outcomes".into(), outcomes.into());
    r["approvals"]["rules"]["staging"]["min_approvals"] = 2.into();
    fs::write(&recv_toml, toml::to_string(&r).unwrap()).unwrap();
    let _fr = forward.start("recv");
    let _fs = forward.start("send");
    let _rr = reverse.start("recv");
    let _rs = reverse.start("send");

    // the low side's adapter: signs with the key the forward receiver trusts, writes into the forward
    // outbox, reads requests from the reverse receiver's inbox
    let (slack, api) = FakeSlack::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cfg: toml::Table =
        toml::from_str(&fs::read_to_string(root.join("adapter/adapter.example.toml")).unwrap())
            .unwrap();
    let low = forward.dir.path();
    cfg.insert(
        "key".into(),
        forward
            .path("keys/adapter.key")
            .display()
            .to_string()
            .into(),
    );
    cfg.insert(
        "outbox".into(),
        forward.outbox().display().to_string().into(),
    );
    cfg["http"]["listen"] = "127.0.0.1:0".into();
    cfg["http"]["tick"] = "200ms".into();
    cfg["slack"]["api_base"] = api.clone().into();
    cfg["slack"]["signing_secret"] = "file:secrets/slack-signing-secret".into();
    // prod's cards also go to a Teams channel through a workflow (posted to the same local server)
    cfg["environments"]["prod"].as_table_mut().unwrap().insert(
        "teams_workflow_url".into(),
        "file:secrets/teams-workflow-url".into(),
    );
    cfg["environments"]["staging"]["deadline"] = "6s".into();
    cfg["environments"]["staging"]["remind_every"] = "3s".into();
    let mut reverse_cfg = toml::Table::new();
    reverse_cfg.insert("inbox".into(), reverse.inbox().display().to_string().into());
    reverse_cfg.insert(
        "pipeline_keys".into(),
        vec![reverse.path("keys/pipeline.pub").display().to_string()].into(),
    );
    reverse_cfg.insert(
        "outcome_keys".into(),
        vec![forward.path("keys/outcome.pub").display().to_string()].into(),
    );
    cfg.insert("reverse".into(), reverse_cfg.into());
    fs::write(low.join("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    secret(
        low,
        "teams-workflow-url",
        &format!("{api}/teams-workflow/prod"),
    );
    secret(low, "slack-bot-token", "xoxb-loop");
    secret(low, "slack-signing-secret", SIGNING_SECRET);
    secret(low, "teams-webhook-token", "dGVhbXMtbG9vcC10b2tlbg==");
    secret(low, "pipeline-ci.token", "loop-ci-token");
    let (_chat, addr) = start_chat_with(&low.join("adapter.toml"), low);
    forward.wait_session(Duration::from_secs(20));
    reverse.wait_session(Duration::from_secs(20));

    // 1. approved by two people: `approvals wait` exits 0 with the envelope id, and consumes it
    let id = request(&reverse, "prod", 0xa1);
    let waiter = wait(&forward, &id);
    let key = posted(&slack, &id);
    click(&addr, "U0ADA", "approve", &key);
    click(&addr, "U0BOB", "approve", &key);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "approved request");
    let envelope_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let accepted: Value = serde_json::from_slice(
        &fs::read(forward.path(&format!("approvals/{envelope_id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(accepted["envelope"]["request_id"], id.as_str());
    assert_eq!(
        accepted["envelope"]["artifact"]["digest"],
        digest(0xa1).as_str()
    );
    println!("request {id}: approved by two, envelope {envelope_id} consumed by `approvals wait`");
    // the outcome comes back across the reverse link: the message says deployed, by whom, with what
    let text = updated(&slack, &id, "Deployed to prod");
    assert!(
        text.contains("by ci-runner-3")
            && text.contains(&format!("with approval {}", &envelope_id[..8])),
        "{text}"
    );
    let card = wait_for(
        "the Teams card saying deployed",
        Duration::from_secs(40),
        || {
            slack
                .calls("teams-workflow/prod")
                .into_iter()
                .map(|c| c.to_string())
                .find(|c| c.contains(&id) && c.contains("Deployed to prod"))
        },
    );
    assert!(
        card.contains("AdaptiveCard") && card.contains("by ci-runner-3"),
        "{card}"
    );
    println!(
        "request {id}: the Slack message and the Teams card now say it was deployed by ci-runner-3"
    );

    // 1b. approved on the low side, refused by the high side's stricter rule: the message says why
    let id = request(&reverse, "staging", 0xa4);
    let key = posted(&slack, &id);
    click(&addr, "U0ADA", "approve", &key);
    let text = updated(&slack, &id, "Refused on high-1: rule not met");
    assert!(text.contains("2 required"), "{text}");
    println!("request {id}: refused on the high side, the message says: rule not met (1 approver, 2 required)");

    // 2. rejected: exit 2
    let id = request(&reverse, "prod", 0xa2);
    let waiter = wait(&forward, &id);
    let key = posted(&slack, &id);
    click(&addr, "U0BOB", "reject", &key);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "rejected request");
    println!("request {id}: rejected, `approvals wait` exit 2");

    // 3. nobody answers: the low side's deadline rejects it, exit 3
    let id = request(&reverse, "staging", 0xa3);
    let waiter = wait(&forward, &id);
    posted(&slack, &id);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "expired request");
    println!("request {id}: unanswered, expired at the deadline, `approvals wait` exit 3");

    // a forged outcome (a record of a log nobody keeps, signed by a key the low side does not trust)
    // crosses the reverse link like any outcome: quarantined, audited, never shown
    let stranger = SigningKey::from_seed(&[0x66; 32]);
    let mut fields = serde_json::Map::new();
    fields.insert("event".into(), "consume".into());
    fields.insert("at".into(), 1u64.into());
    fields.insert("by".into(), "forger-666".into());
    let (line, _) = chain(&Head::default(), fields);
    let forged = Outcome {
        receiver: "high-1".into(),
        record: line,
    }
    .sign(&stranger);
    let name = forged.file_name().unwrap();
    fs::write(reverse.outbox().join(&name), forged.to_json()).unwrap();
    let quarantine = low.join("state/reverse/quarantine");
    wait_for(
        "the forged outcome in quarantine",
        Duration::from_secs(40),
        || {
            quarantine
                .join(format!("{name}.unknown_key"))
                .exists()
                .then_some(())
        },
    );
    assert!(slack
        .calls("chat.update")
        .iter()
        .all(|c| !c.to_string().contains("forger-666")));
    println!(
        "a forged outcome crossed the reverse link: quarantined as {name}.unknown_key, never shown"
    );

    // both audit logs tell the same story: every record of the high side's log came back, verified
    let high_log = forward.path("state/approvals/audit.jsonl");
    let low_log = low.join("state/audit.jsonl");
    let returned = |path: &Path| -> Vec<String> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "outcome")
            .filter_map(|v| v["record"].as_str().map(str::to_string))
            .collect()
    };
    let high: Vec<String> = wait_for(
        "every high-side record back",
        Duration::from_secs(40),
        || {
            let high: Vec<String> = fs::read_to_string(&high_log)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            let mut low = returned(&low_log);
            low.sort();
            let mut want = high.clone();
            want.sort();
            (low == want).then_some(high)
        },
    );
    let verify = run_ok(
        Command::new(diode_tests::bin("diode-chat"))
            .arg("--config")
            .arg(low.join("adapter.toml"))
            .args(["audit", "verify"]),
    );
    assert!(
        verify.contains(&format!(
            "ok: {} of high-1's records returned (1-{})",
            high.len(),
            high.len()
        )) && verify.contains("none missing"),
        "{verify}"
    );
    println!(
        "{} high-side records came back; diode-chat audit verify: {}",
        high.len(),
        verify.trim()
    );

    fwd.assert_one_way();
    rev.assert_one_way();
    println!(
        "REVERSE PACKETS: forward link {}, reverse link {}",
        fwd.reverse_packets(),
        rev.reverse_packets()
    );
}
