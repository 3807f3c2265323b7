//! The full request loop through two emulated one-way links (network namespaces, nftables; one link each
//! way, each asserting that not one packet went the wrong way), all real binaries:
//!
//!   high side: `diode-send request` -> reverse diode-send (envelope_only) ==reverse link==>
//!   low side:  reverse diode-recv inbox -> diode-chat (verifies the pipeline's signature, posts to a
//!              local Slack-format server, people click) -> forward outbox -> forward diode-send
//!              ==forward link==> high side: diode-recv verifies the approval; `approvals wait` returns.
//!
//! Three requests: one approved by two people (wait exits 0 and consumes it), one rejected (exit 2), one
//! nobody answers (the low side's deadline passes: exit 3).

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

#[test]
fn a_request_from_inside_the_air_gap_comes_back_approved_rejected_or_expired() {
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
    cfg["slack"]["api_base"] = api.into();
    cfg["slack"]["signing_secret"] = "file:secrets/slack-signing-secret".into();
    cfg["environments"]["staging"]["deadline"] = "6s".into();
    cfg["environments"]["staging"]["remind_every"] = "3s".into();
    let mut reverse_cfg = toml::Table::new();
    reverse_cfg.insert("inbox".into(), reverse.inbox().display().to_string().into());
    reverse_cfg.insert(
        "pipeline_keys".into(),
        vec![reverse.path("keys/pipeline.pub").display().to_string()].into(),
    );
    cfg.insert("reverse".into(), reverse_cfg.into());
    fs::write(low.join("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
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

    fwd.assert_one_way();
    rev.assert_one_way();
    println!(
        "REVERSE PACKETS: forward link {}, reverse link {}",
        fwd.reverse_packets(),
        rev.reverse_packets()
    );
}
