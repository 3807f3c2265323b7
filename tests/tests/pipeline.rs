//! A low-side pipeline's view of the approval path, real binaries over real HTTP: `diode-chat request`
//! asks `diode-chat serve` for a deployment; `GET /v1/requests/{id}` tells how it stands to the same
//! bearer tokens that may ask (and nothing to a token of other environments); `diode-chat request
//! --wait` ends with the exit codes of `diode-recv approvals wait`: 0 and the envelope id when approved
//! in Slack, 2 rejected, 3 expired at the deadline, 4 no decision in time, 1 refused.

use diode_tests::chat::{
    adapter_config, api_get, click, request_id_of, secret, start_chat, FakeSlack, DIGEST,
    PIPELINE_TOKEN,
};
use diode_tests::{bin, port, Site};
use serde_json::Value;
use std::fs;
use std::process::{Child, Command, Output, Stdio};

/// `diode-chat request` against the adapter at `addr`, with the token in `secrets/<token_file>`.
fn request_cmd(site: &Site, addr: &str, token_file: &str) -> Command {
    let mut c = Command::new(bin("diode-chat"));
    c.current_dir(site.dir.path())
        .args(["request", "--url", &format!("http://{addr}")])
        .args(["--token", &format!("file:secrets/{token_file}")]);
    c
}

fn ask<'a>(c: &'a mut Command, app: &str, version: &str, env: &str) -> &'a mut Command {
    c.args([
        "--app",
        app,
        "--version",
        version,
        "--env",
        env,
        "--digest",
        DIGEST,
    ])
}

fn spawn(c: &mut Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn show(what: &str, o: &Output) {
    println!(
        "{what}: exit {:?}, stdout {:?}, stderr {:?}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn a_pipeline_asks_looks_and_waits_with_the_exit_codes_of_approvals_wait() {
    let site = Site::new(&[]);
    let (slack, api) = FakeSlack::start();
    let mut cfg = adapter_config(site.dir.path(), &site.outbox(), &api);
    // an environment whose deadline comes within the test, and a token that may only ask for it
    let mut qa = cfg["environments"]["staging"].clone();
    qa["channel"] = "C0QA".into();
    qa["deadline"] = "3s".into();
    qa["remind_every"] = "2s".into();
    cfg["environments"]
        .as_table_mut()
        .unwrap()
        .insert("qa".into(), qa);
    let mut qa_token = toml::Table::new();
    qa_token.insert("name".into(), "qa-bot".into());
    qa_token.insert("token".into(), "file:secrets/pipeline-qa.token".into());
    qa_token.insert("environments".into(), vec!["qa"].into());
    cfg["pipeline"]["tokens"]
        .as_array_mut()
        .unwrap()
        .push(qa_token.into());
    secret(site.dir.path(), "pipeline-qa.token", "e2e-qa-token");
    fs::write(site.path("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let (_chat, addr) = start_chat(&site);

    // 1. asked, not waited for: the request id on stdout, and the request pending (with its reason)
    let o = ask(
        &mut request_cmd(&site, &addr, "pipeline-ci.token"),
        "billing",
        "1.4.2",
        "staging",
    )
    .args(["--reason", "CHG-9001 nightly train"])
    .output()
    .unwrap();
    show("ask", &o);
    assert!(o.status.success());
    let first = text(&o.stdout);
    assert!(first.starts_with("req-"), "{first}");
    let path = format!("/v1/requests/{first}");
    let (code, v) = api_get(&addr, &path, Some(PIPELINE_TOKEN));
    assert_eq!(code, 200, "{v}");
    println!("GET {path}: {v}");
    assert_eq!(v["request_id"], first.as_str());
    assert_eq!(
        (&v["state"], &v["app"], &v["environment"]),
        (&"pending".into(), &"billing".into(), &"staging".into())
    );
    assert_eq!(v["reason"], "CHG-9001 nightly train", "{v}");
    assert_eq!(v["votes"], Value::Array(vec![]));
    assert_eq!(v["approvals_needed"], 1);
    for k in ["decision", "envelope_id", "outcome"] {
        assert_eq!(v[k], Value::Null, "{k} before the decision");
    }
    // the same through the client
    let o = request_cmd(&site, &addr, "pipeline-ci.token")
        .args(["--id", &first])
        .output()
        .unwrap();
    assert!(o.status.success());
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown, v);

    // only the tokens that may ask for its environment see it
    assert_eq!(api_get(&addr, &path, None).0, 401);
    assert_eq!(api_get(&addr, &path, Some("not-a-token")).0, 401);
    let (code, v) = api_get(&addr, &path, Some("e2e-qa-token"));
    assert_eq!((code, &v["error"]), (404, &"unknown_request".into()), "{v}");
    let (code, _) = api_get(
        &addr,
        "/v1/requests/req-0000000000000000",
        Some(PIPELINE_TOKEN),
    );
    assert_eq!(code, 404);

    // 2. asked and waited for; approved in Slack: exit 0, the envelope id on stdout and in the outbox
    let waiting = spawn(
        ask(
            &mut request_cmd(&site, &addr, "pipeline-ci.token"),
            "billing",
            "1.4.3",
            "staging",
        )
        .args(["--wait", "--timeout", "60s", "--poll", "200ms"]),
    );
    let second = request_id_of(&slack.wait("chat.postMessage", 2)[1]);
    assert_ne!(second, first);
    click(&addr, "U0ADA", "approve", &second);
    let o = waiting.wait_with_output().unwrap();
    show("approved", &o);
    assert_eq!(o.status.code(), Some(0));
    let envelope = text(&o.stdout);
    assert!(text(&o.stderr).contains(&second), "the request id is said");
    assert!(
        site.outbox().join(format!("{envelope}.envelope")).exists(),
        "envelope {envelope} in the outbox"
    );
    let (_, v) = api_get(
        &addr,
        &format!("/v1/requests/{second}"),
        Some(PIPELINE_TOKEN),
    );
    println!("after the approval: {v}");
    assert_eq!(
        (&v["state"], &v["decision"], &v["envelope_id"]),
        (
            &"approved".into(),
            &"approve".into(),
            &envelope.as_str().into()
        )
    );
    assert_eq!(v["votes"][0]["name"], "Ada Lovelace");
    assert_eq!(v["outcome"], Value::Null);

    // 3. a request made before, waited for by id; rejected: exit 2
    let waiting = spawn(request_cmd(&site, &addr, "pipeline-ci.token").args([
        "--id",
        &first,
        "--wait",
        "--timeout",
        "60s",
        "--poll",
        "200ms",
    ]));
    click(&addr, "U0BOB", "reject", &first);
    let o = waiting.wait_with_output().unwrap();
    show("rejected", &o);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("rejected by Bob Kahn"));
    let (_, v) = api_get(&addr, &path, Some(PIPELINE_TOKEN));
    assert_eq!(
        (&v["state"], &v["decision"], &v["decided_by"]),
        (&"rejected".into(), &"reject".into(), &"Bob Kahn".into())
    );

    // 4. nobody decides by the deadline: exit 3
    let o = ask(
        &mut request_cmd(&site, &addr, "pipeline-qa.token"),
        "billing",
        "1.4.4",
        "qa",
    )
    .args(["--wait", "--timeout", "60s", "--poll", "200ms"])
    .output()
    .unwrap();
    show("expired", &o);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o.stderr).contains("expired"));

    // 5. no decision within --timeout: exit 4, the request still pending
    let o = ask(
        &mut request_cmd(&site, &addr, "pipeline-ci.token"),
        "billing",
        "1.4.5",
        "staging",
    )
    .args(["--wait", "--timeout", "1s", "--poll", "200ms"])
    .output()
    .unwrap();
    show("timed out", &o);
    assert_eq!(o.status.code(), Some(4));

    // 6. refused: a token asking outside its environments, exit 1 with the adapter's reason
    let o = ask(
        &mut request_cmd(&site, &addr, "pipeline-qa.token"),
        "billing",
        "1.4.6",
        "staging",
    )
    .arg("--wait")
    .output()
    .unwrap();
    show("refused", &o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("token_scope"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_wait_outlives_a_restart_of_the_adapter() {
    let site = Site::new(&[]);
    let (slack, api) = FakeSlack::start();
    let mut cfg = adapter_config(site.dir.path(), &site.outbox(), &api);
    // a fixed address, so that the adapter started again is where the waiting client looks
    cfg["http"]["listen"] = format!("127.0.0.1:{}", port()).into();
    fs::write(site.path("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let (mut chat, addr) = start_chat(&site);
    let waiting = spawn(
        ask(
            &mut request_cmd(&site, &addr, "pipeline-ci.token"),
            "billing",
            "2.0.0",
            "staging",
        )
        .args(["--wait", "--timeout", "60s", "--poll", "200ms"]),
    );
    let id = request_id_of(&slack.wait("chat.postMessage", 1)[0]);
    // the adapter dies while the client waits, and comes back on the same address
    chat.kill9();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (_chat, again) = start_chat(&site);
    assert_eq!(again, addr);
    click(&addr, "U0ADA", "approve", &id);
    let o = waiting.wait_with_output().unwrap();
    show("across a restart", &o);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("trying again until the timeout"),
        "the client saw the adapter gone: {}",
        text(&o.stderr)
    );
    let envelope = text(&o.stdout);
    assert!(site.outbox().join(format!("{envelope}.envelope")).exists());
}
