//! The chat adapter over real HTTP on loopback: a local server that speaks Slack's Web API wire format
//! (records every chat.postMessage / chat.update / chat.postEphemeral and answers `{"ok":true,"ts":..}`),
//! and a client that signs requests exactly as Slack does (v0 HMAC-SHA256 of `v0:ts:body`) and sends
//! slash commands and `block_actions` clicks form-encoded as Slack sends them. The adapter runs from
//! `adapter.example.toml` with a clock the test moves; decisions are checked down to the signed
//! envelope in the outbox, verified by `diode_proto::envelope::verify`, and the audit chain.

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use diode_chat::clock::ManualClock;
use diode_chat::config::Config;
use diode_chat::server::{self, Running};
use diode_host::audit::AuditLog;
use diode_proto::envelope::{
    self, Artifact, Decision, Rule, SignedEnvelope, SignerRole, SigningKey, VerifyingKey,
};
use diode_proto::outcome::Outcome;
use diode_proto::request::{Request, SignedRequest, MAX_REQUEST_BYTES};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T0: u64 = 1_800_000_000;
const SIGNING_SECRET: &str = "test-signing-secret-4f1c";
const BOT_TOKEN: &str = "xoxb-test-bot-token";
const APP_TOKEN: &str = "xapp-test-app-token";
/// base64 of the 32-byte key "teams-outgoing-webhook-key-32byt"
const TEAMS_TOKEN: &str = "dGVhbXMtb3V0Z29pbmctd2ViaG9vay1rZXktMzJieXQ=";
const CI_TOKEN: &str = "ci-token-7d2e9b";
const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

// ---- the fake Slack Web API ------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Call {
    method: String,
    body: Value,
    auth: String,
    at: Instant,
}

#[derive(Clone, Default)]
struct FakeSlack {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Answer this many of the next calls with 429 + Retry-After: 1.
    throttle: Arc<AtomicU32>,
    next_ts: Arc<AtomicU32>,
    /// What apps.connections.open answers (the local Socket Mode server's URL).
    ws_url: Arc<Mutex<String>>,
}

async fn web_api(
    State(s): State<FakeSlack>,
    UrlPath(method): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    s.calls.lock().unwrap().push(Call {
        method: method.clone(),
        body: body.clone(),
        auth,
        at: Instant::now(),
    });
    // the throttle answers the next chat.* calls 429 (the App Home's views.publish go their own way)
    if method.starts_with("chat.")
        && s.throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    if method == "apps.connections.open" {
        let url = s.ws_url.lock().unwrap().clone();
        return Json(json!({"ok": true, "url": url})).into_response();
    }
    // a message's ts: chat.update keeps it, a post gets the next; views.* answer a view, no ts
    let ts = match method.as_str() {
        "chat.update" => body["ts"].clone(),
        m if m.starts_with("views.") => Value::Null,
        _ => json!(format!(
            "1800000000.{:06}",
            s.next_ts.fetch_add(1, Ordering::SeqCst) + 1
        )),
    };
    Json(json!({"ok": true, "channel": body["channel"], "ts": ts})).into_response()
}

impl FakeSlack {
    async fn start() -> (FakeSlack, String) {
        let s = FakeSlack::default();
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::post(web_api))
            .with_state(s.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (s, url)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Wait until `probe` finds what it wants in the calls so far.
    async fn wait<T>(&self, what: &str, probe: impl Fn(&[Call]) -> Option<T>) -> T {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(t) = probe(&self.calls()) {
                return t;
            }
            if Instant::now() > end {
                panic!("timed out waiting for {what}; calls: {:#?}", self.calls());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait for a chat.update whose body contains `needle`.
    async fn update_with(&self, needle: &str) -> Call {
        self.wait(&format!("a chat.update with {needle:?}"), |c| {
            c.iter()
                .find(|c| c.method == "chat.update" && text_of(c).contains(needle))
                .cloned()
        })
        .await
    }

    async fn wait_count(&self, method: &str, n: usize) -> Vec<Call> {
        self.wait(&format!("{n} {method} call(s)"), |c| {
            let v: Vec<Call> = c.iter().filter(|c| c.method == method).cloned().collect();
            (v.len() >= n).then_some(v)
        })
        .await
    }
}

// ---- a low side built from adapter.example.toml ----------------------------------------------------

struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    clock: Arc<ManualClock>,
    slack: FakeSlack,
    adapter: Option<Running>,
    http: reqwest::Client,
}

fn secret_file(dir: &Path, name: &str, value: &str) {
    let p = dir.join("secrets").join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, value).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
}

impl Site {
    async fn new() -> Site {
        Site::with(|_| {}).await
    }

    /// A site whose adapter.toml is the example with `edit` applied on top of the test's own changes.
    async fn with(edit: impl FnOnce(&mut toml::Table)) -> Site {
        Site::with_secrets(edit, &[]).await
    }

    /// As `with`, and these extra files under secrets/ (name, content).
    async fn with_secrets(edit: impl FnOnce(&mut toml::Table), secrets: &[(&str, &str)]) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (slack, api) = FakeSlack::start().await;
        let example =
            fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/adapter.example.toml"))
                .unwrap();
        let mut cfg: toml::Table = toml::from_str(&example).unwrap();
        cfg["http"]["listen"] = "127.0.0.1:0".into();
        // the test runs the clock itself
        cfg["http"]["tick"] = "1h".into();
        cfg["slack"]["api_base"] = api.into();
        cfg["slack"]["signing_secret"] = "file:secrets/slack-signing-secret".into();
        edit(&mut cfg);
        fs::write(dir.join("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
        secret_file(&dir, "slack-bot-token", BOT_TOKEN);
        secret_file(&dir, "slack-signing-secret", SIGNING_SECRET);
        secret_file(&dir, "slack-app-token", APP_TOKEN);
        secret_file(&dir, "teams-webhook-token", TEAMS_TOKEN);
        secret_file(&dir, "pipeline-ci.token", &format!("{CI_TOKEN}\n"));
        for (name, value) in secrets {
            secret_file(&dir, name, value);
        }
        fs::create_dir(dir.join("outbox")).unwrap();
        diode_host::keyfile::generate_signing(&dir.join("keys"), SignerRole::Adapter).unwrap();
        let mut site = Site {
            _tmp: tmp,
            dir,
            clock: Arc::new(ManualClock::new(T0)),
            slack,
            adapter: None,
            http: reqwest::Client::new(),
        };
        site.start().await;
        site
    }

    async fn start(&mut self) {
        let cfg = Config::load(&self.dir.join("adapter.toml")).unwrap();
        self.adapter = Some(server::start(&cfg, self.clock.clone()).await.unwrap());
    }

    /// Kill the adapter as a crash would (its tasks stop where they are), then start it again.
    async fn restart(&mut self) {
        if let Some(a) = self.adapter.take() {
            a.abort();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.start().await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.adapter.as_ref().unwrap().addr)
    }

    fn tick(&self) {
        self.adapter.as_ref().unwrap().tick().unwrap();
    }

    /// POST `body` signed the way Slack signs: HMAC-SHA256 over `v0:<timestamp>:<body>`.
    async fn slack_post(&self, path: &str, body: String) -> reqwest::Response {
        let ts = self.clock.now_secs().to_string();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let sig = format!("v0={}", hex(&mac.finalize().into_bytes()));
        self.http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// `/deploy <text>` typed by `user`.
    async fn command(&self, user: &str, text: &str) -> Value {
        let r = self
            .slack_post("/slack/commands", command_body(user, text, &trigger_id()))
            .await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// A click on a button of the request's message, as a block_actions payload.
    async fn click(&self, user: &str, action: &str, request: &str) -> StatusCode {
        let body = click_body(user, action, request, &trigger_id());
        let r = self.slack_post("/slack/interactions", body).await;
        StatusCode::from_u16(r.status().as_u16()).unwrap()
    }

    /// POST an activity to the bot endpoint with a bearer token, as the Bot Connector does.
    async fn bot_post(&self, token: String, activity: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/teams/messages"))
            .bearer_auth(token)
            .json(activity)
            .send()
            .await
            .unwrap()
    }

    async fn pipeline(&self, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/v1/requests"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    fn envelopes(&self) -> Vec<SignedEnvelope> {
        let mut v: Vec<SignedEnvelope> = fs::read_dir(self.dir.join("outbox"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "envelope"))
            .map(|e| SignedEnvelope::parse(&fs::read(e.path()).unwrap()).unwrap())
            .collect();
        v.sort_by_key(|e| e.envelope.issued_at);
        v
    }

    /// Check an envelope as the high side does, under its rule for prod.
    fn high_side_verify(&self, e: &SignedEnvelope, now: u64) {
        envelope::verify(e, &[self.adapter_pub()], &high_side_rules(), now, 60).unwrap();
    }

    fn adapter_pub(&self) -> VerifyingKey {
        diode_host::keyfile::load_verifying(&self.dir.join("keys/adapter.pub"), SignerRole::Adapter)
            .unwrap()
    }

    fn audit(&self) -> Vec<Value> {
        let path = self.dir.join("state/audit.jsonl");
        AuditLog::new(&path).verify().unwrap();
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The audit log's event names, in order.
    fn event_names(&self) -> Vec<String> {
        self.audit()
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_string())
            .collect()
    }

    fn refusals(&self) -> Vec<String> {
        self.audit()
            .iter()
            .filter(|r| r["event"] == "refused")
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .collect()
    }
}

/// A fresh trigger_id, as Slack makes one for every slash command and every click.
fn trigger_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("{n}.47445629121.{n:032x}")
}

/// The form Slack posts for `/deploy <text>` typed by `user`.
fn command_body(user: &str, text: &str, trigger_id: &str) -> String {
    serde_urlencoded::to_string([
        ("token", "deprecated-verification-token"),
        ("team_id", "T0TEAM"),
        ("channel_id", "C0DEV"),
        ("user_id", user),
        ("user_name", &user.to_lowercase()),
        ("command", "/deploy"),
        ("text", text),
        (
            "response_url",
            "https://hooks.slack.com/commands/T0TEAM/1/x",
        ),
        ("trigger_id", trigger_id),
    ])
    .unwrap()
}

/// The form Slack posts for a click on a button of the request's message (a block_actions payload).
fn click_body(user: &str, action: &str, request: &str, trigger_id: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP",
        "team": {"id": "T0TEAM", "domain": "test"},
        "channel": {"id": "C0PROD", "name": "prod-deploys"},
        "container": {"type": "message", "message_ts": "1800000000.000001", "channel_id": "C0PROD"},
        "trigger_id": trigger_id,
        "response_url": "https://hooks.slack.com/actions/T0TEAM/1/x",
        "actions": [{
            "action_id": action, "block_id": "decision", "value": request,
            "type": "button", "action_ts": "1800000000.1"
        }]
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

trait Now {
    fn now_secs(&self) -> u64;
}

impl Now for ManualClock {
    fn now_secs(&self) -> u64 {
        diode_chat::clock::Clock::now(self)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The high side's rule for prod, as recv.example.toml has it.
fn high_side_rules() -> BTreeMap<String, Rule> {
    let mut m = BTreeMap::new();
    m.insert(
        "prod".to_string(),
        Rule {
            min_approvals: 2,
            required_roles: vec!["release-manager".into(), "security".into()],
            max_validity_secs: 3600,
        },
    );
    m
}

fn request_id_of(post: &Call) -> String {
    let blocks = post.body["blocks"].as_array().unwrap();
    let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
    actions["elements"][0]["value"]
        .as_str()
        .unwrap()
        .to_string()
}

fn has_buttons(c: &Call) -> bool {
    c.body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["type"] == "actions")
}

fn text_of(c: &Call) -> String {
    c.body.to_string()
}

// ---- the flows --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_command_then_two_of_three_approve_with_every_refusal() {
    let site = Site::new().await;
    let answer = site
        .command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(answer["text"]
        .as_str()
        .unwrap()
        .contains("posted in <#C0PROD>"));

    // the request is posted in prod's channel with the bot token, digest, requester, rule, deadline
    let post = site.slack.wait_count("chat.postMessage", 1).await.remove(0);
    assert_eq!(post.auth, format!("Bearer {BOT_TOKEN}"));
    assert_eq!(post.body["channel"], "C0PROD");
    let text = text_of(&post);
    for want in [
        DIGEST,
        "<@U0DAN>",
        "2 approval(s) from release-manager, security",
        "2027-01-15T12:00:00Z",
    ] {
        assert!(text.contains(want), "message lacks {want}: {text}");
    }
    assert!(has_buttons(&post));
    let confirm = &post.body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()["elements"][0]["confirm"];
    assert_eq!(confirm["confirm"]["text"], "Approve");
    let id = request_id_of(&post);

    // the requester cannot approve; an on-call member holds no approver role; a stranger is not a member
    assert_eq!(site.click("U0DAN", "approve", &id).await, StatusCode::OK);
    assert_eq!(site.click("U0EVE", "approve", &id).await, StatusCode::OK);
    assert_eq!(site.click("U0NOBODY", "approve", &id).await, StatusCode::OK);
    let eph = site.slack.wait_count("chat.postEphemeral", 3).await;
    assert_eq!(eph[0].body["user"], "U0DAN");
    assert!(text_of(&eph[0]).contains("own request"));
    assert!(text_of(&eph[1]).contains("may not approve in prod"));
    assert!(text_of(&eph[2]).contains("not in the approval policy"));

    // Ada approves, then clicks again: counted once
    site.click("U0ADA", "approve", &id).await;
    site.click("U0ADA", "approve", &id).await;
    let eph = site.slack.wait_count("chat.postEphemeral", 4).await;
    assert!(text_of(&eph[3]).contains("already approved"));
    assert_eq!(
        site.refusals(),
        [
            "self_approval",
            "not_approver",
            "not_member",
            "already_voted"
        ]
    );
    assert!(
        site.envelopes().is_empty(),
        "one approval must not be enough"
    );
    let upd = site.slack.wait_count("chat.update", 1).await;
    assert!(text_of(&upd[0]).contains("(1 of 2)"));
    assert!(has_buttons(&upd[0]));

    // Bob (security) completes the rule: release-manager + security, 2 of the 3 eligible
    site.click("U0BOB", "approve", &id).await;
    let last = site
        .slack
        .wait("the message to show the approval", |c| {
            c.iter()
                .rfind(|c| c.method == "chat.update" && !has_buttons(c))
                .cloned()
        })
        .await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let e = &envs[0];
    assert_eq!(e.envelope.decision, Decision::Approve);
    assert_eq!(e.envelope.request_id, id);
    assert_eq!(e.envelope.requester, "U0DAN");
    assert_eq!(e.envelope.artifact.digest, DIGEST);
    let who: Vec<(&str, &str)> = e
        .envelope
        .approvers
        .iter()
        .map(|a| (a.id.as_str(), a.role.as_str()))
        .collect();
    assert_eq!(who, [("U0ADA", "release-manager"), ("U0BOB", "security")]);
    let t = text_of(&last);
    assert!(t.contains("Approved") && t.contains(&e.envelope.id), "{t}");
    assert!(t.contains("Ada Lovelace") && t.contains("Bob Kahn"));
    envelope::verify(e, &[site.adapter_pub()], &high_side_rules(), T0 + 10, 60).unwrap();

    // a click after the decision changes nothing
    site.click("U0CAT", "approve", &id).await;
    site.slack.wait_count("chat.postEphemeral", 5).await;
    assert_eq!(site.envelopes().len(), 1);

    let events: Vec<String> = site
        .audit()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .filter(|e| e != "refused")
        .collect();
    assert_eq!(events, ["request", "vote", "vote", "emit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_requests_but_never_approves_and_a_rejection_is_an_envelope() {
    let site = Site::new().await;
    let body = json!({"app": "billing", "version": "2.0.0", "environment": "prod",
                      "digest": DIGEST, "on_behalf_of": "ada"});
    assert_eq!(site.pipeline("wrong-token", body.clone()).await.0, 401);
    let (status, ans) = site.pipeline(CI_TOKEN, json!({"app": "billing"})).await;
    assert_eq!(status, 400, "{ans}");
    let (status, ans) = site
        .pipeline(
            CI_TOKEN,
            json!({"app": "billing", "version": "2.0.0", "environment": "dev", "digest": DIGEST}),
        )
        .await;
    assert_eq!((status, ans["error"].as_str()), (403, Some("token_scope")));
    let (status, ans) = site.pipeline(CI_TOKEN, body).await;
    assert_eq!(status, 201, "{ans}");
    let id = ans["request_id"].as_str().unwrap().to_string();
    let post = site.slack.wait_count("chat.postMessage", 1).await.remove(0);
    assert_eq!(request_id_of(&post), id);
    assert!(text_of(&post).contains("pipeline"));

    // the bearer token is worth nothing on the click endpoint
    let r = site
        .http
        .post(site.url("/slack/interactions"))
        .bearer_auth(CI_TOKEN)
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Ada is who the pipeline acted for: her approval is self-approval
    site.click("U0ADA", "approve", &id).await;
    let eph = site.slack.wait_count("chat.postEphemeral", 1).await;
    assert!(text_of(&eph[0]).contains("own request"));
    // a developer may not reject in prod; Bob (security) may
    site.click("U0DAN", "reject", &id).await;
    site.slack.wait_count("chat.postEphemeral", 2).await;
    assert!(site.envelopes().is_empty());
    site.click("U0BOB", "reject", &id).await;
    let upd = site
        .slack
        .wait("the rejection in the message", |c| {
            c.iter()
                .find(|c| c.method == "chat.update" && text_of(c).contains("Rejected"))
                .cloned()
        })
        .await;
    assert!(!has_buttons(&upd));
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let e = &envs[0];
    assert_eq!(e.envelope.decision, Decision::Reject);
    assert_eq!(e.envelope.requester, "ada");
    assert_eq!(e.envelope.approvers[0].id, "U0BOB");
    assert!(text_of(&upd).contains(&e.envelope.id));
    assert!(
        text_of(&upd).contains("Rejected* by Bob Kahn"),
        "{}",
        text_of(&upd)
    );
    envelope::verify(e, &[site.adapter_pub()], &high_side_rules(), T0 + 10, 60).unwrap();
    assert_eq!(
        site.refusals(),
        ["token_scope", "self_approval", "not_rejecter"]
    );
    // a reason is optional here, and bounded: one too long is refused, nothing made
    let long = json!({"app": "billing", "version": "2.0.1", "environment": "prod",
                      "digest": DIGEST, "reason": "x".repeat(501)});
    let (status, ans) = site.pipeline(CI_TOKEN, long).await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (422, Some("bad_request")),
        "{ans}"
    );
    println!("over-long reason from the API: {status} {ans}");
    assert_eq!(site.events("request").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_reminds_escalates_in_order_then_rejects() {
    let site = Site::new().await;
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    let post = site.slack.wait_count("chat.postMessage", 1).await.remove(0);
    let id = request_id_of(&post);
    site.click("U0ADA", "approve", &id).await;
    site.slack.wait_count("chat.update", 1).await;

    // prod: reminders every hour, tier 1 (release-manager) at 2 h, tier 2 (on-call) at 3 h, deadline 4 h
    let hour = 3600;
    let mut threads = 0;
    for (at, posts) in [
        (hour - 1, 0),
        (hour, 1),
        (2 * hour, 2),
        (3 * hour, 2),
        (4 * hour - 1, 0),
    ] {
        site.clock.set(T0 + at);
        site.tick();
        threads += posts;
        site.slack.wait_count("chat.postMessage", 1 + threads).await;
    }
    // nothing more arrives for the quiet ticks
    tokio::time::sleep(Duration::from_millis(200)).await;
    let replies: Vec<String> = site.slack.of("chat.postMessage")[1..]
        .iter()
        .map(|c| {
            assert_eq!(c.body["thread_ts"], post_ts(&site));
            c.body["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(replies.len(), 5, "{replies:#?}");
    assert!(replies[0].starts_with("Reminder 1:"));
    assert!(
        replies[1].starts_with("<@U0ADA> <@U0CAT> Escalation tier 1"),
        "{}",
        replies[1]
    );
    assert!(replies[2].starts_with("Reminder 2:"));
    assert!(
        replies[3].starts_with("<@U0EVE> Escalation tier 2"),
        "{}",
        replies[3]
    );
    assert!(replies[4].starts_with("Reminder 3:"));
    assert!(site.envelopes().is_empty());

    // the final deadline: rejected, never approved
    site.clock.set(T0 + 4 * hour);
    site.tick();
    let upd = site
        .slack
        .wait("the expiry in the message", |c| {
            c.iter()
                .find(|c| {
                    c.method == "chat.update" && text_of(c).contains("no decision by the deadline")
                })
                .cloned()
        })
        .await;
    assert!(!has_buttons(&upd));
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0].envelope.decision, Decision::Reject);
    assert!(envs[0]
        .envelope
        .rule
        .contains("no decision by the deadline"));
    envelope::verify(
        &envs[0],
        &[site.adapter_pub()],
        &high_side_rules(),
        T0 + 4 * hour,
        60,
    )
    .unwrap();
    // a late click changes nothing
    site.click("U0BOB", "approve", &id).await;
    assert_eq!(site.refusals(), ["closed"]);

    let events = site.event_names();
    assert_eq!(
        events,
        [
            "request",
            "vote",
            "reminder",
            "escalation",
            "reminder",
            "escalation",
            "reminder",
            "expired",
            "emit",
            "refused"
        ]
    );
}

/// The first message's ts, as the fake Slack numbers them.
fn post_ts(_site: &Site) -> Value {
    json!("1800000000.000001")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_flow_and_restarted_keeps_votes_and_timers() {
    let mut site = Site::new().await;
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    let id = request_id_of(&site.slack.wait_count("chat.postMessage", 1).await[0]);
    site.click("U0ADA", "approve", &id).await;
    site.slack.wait_count("chat.update", 1).await;
    site.clock.set(T0 + 3600);
    site.tick();
    site.slack.wait_count("chat.postMessage", 2).await;

    site.restart().await;
    // the reminder already sent is not sent again, Ada's vote still counts
    site.tick();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(site.slack.of("chat.postMessage").len(), 2);
    site.click("U0ADA", "approve", &id).await;
    site.slack.wait_count("chat.postEphemeral", 1).await;
    site.click("U0CAT", "approve", &id).await;
    site.slack.update_with("Approved").await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let who: Vec<&str> = envs[0]
        .envelope
        .approvers
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(who, ["U0ADA", "U0CAT"]);
    // Cat holds both roles: she is counted as security, the role still missing
    assert_eq!(envs[0].envelope.approvers[1].role, "security");
    envelope::verify(
        &envs[0],
        &[site.adapter_pub()],
        &high_side_rules(),
        T0 + 3700,
        60,
    )
    .unwrap();
    assert_eq!(site.refusals(), ["already_voted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_stale_future_and_tampered_requests_are_refused_before_parsing() {
    let site = Site::new().await;
    let body = serde_urlencoded::to_string([
        ("user_id", "U0DAN"),
        ("channel_id", "C0DEV"),
        ("text", &format!("request billing 1.4.2 prod {DIGEST}")),
    ])
    .unwrap();
    let sign = |ts: u64, body: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        format!("v0={}", hex(&mac.finalize().into_bytes()))
    };
    let send = |ts: Option<String>, sig: Option<String>, body: String| {
        let mut r = site.http.post(site.url("/slack/commands")).body(body);
        if let Some(ts) = ts {
            r = r.header("x-slack-request-timestamp", ts);
        }
        if let Some(sig) = sig {
            r = r.header("x-slack-signature", sig);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let now = T0;
    assert_eq!(send(None, None, body.clone()).await, 401);
    assert_eq!(send(Some(now.to_string()), None, body.clone()).await, 401);
    assert_eq!(send(None, Some(sign(now, &body)), body.clone()).await, 401);
    // stale and future by more than 5 minutes, though correctly signed
    for ts in [now - 301, now + 301] {
        assert_eq!(
            send(Some(ts.to_string()), Some(sign(ts, &body)), body.clone()).await,
            401
        );
    }
    // tampered: signed for another environment
    let tampered = body.replace("prod", "staging");
    assert_eq!(
        send(Some(now.to_string()), Some(sign(now, &body)), tampered).await,
        401
    );
    // garbage that would be a 400 if it were parsed first is a 401
    assert_eq!(
        send(Some(now.to_string()), Some("v0=00".into()), "%%%".into()).await,
        401
    );
    // the same request properly signed goes through, at the edge of the window
    assert_eq!(
        send(
            Some((now - 300).to_string()),
            Some(sign(now - 300, &body)),
            body.clone()
        )
        .await,
        200
    );
    site.slack.wait_count("chat.postMessage", 1).await;
    let requests = site
        .audit()
        .iter()
        .filter(|r| r["event"] == "request")
        .count();
    assert_eq!(requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_command_or_click_delivered_twice_is_taken_once_even_after_a_restart() {
    let mut site = Site::new().await;
    // the same signed bytes (same timestamp: the clock does not move) sent twice: one request
    let command = command_body(
        "U0DAN",
        &format!("request billing 1.4.2 prod {DIGEST}"),
        &trigger_id(),
    );
    let first = site.slack_post("/slack/commands", command.clone()).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert!(first["text"]
        .as_str()
        .unwrap()
        .contains("posted in <#C0PROD>"));
    let again = site.slack_post("/slack/commands", command.clone()).await;
    assert_eq!(
        again.status(),
        200,
        "Slack expects 200 for a delivery made before"
    );
    let again: Value = again.json().await.unwrap();
    assert!(
        again["text"].as_str().unwrap().contains("already received"),
        "{again}"
    );
    let id = request_id_of(&site.slack.wait_count("chat.postMessage", 1).await[0]);
    assert_eq!(site.events("request").len(), 1);

    // Ada's click, delivered twice: one vote, and no "already voted" refusal or message for the copy
    let click = click_body("U0ADA", "approve", &id, &trigger_id());
    for _ in 0..2 {
        let r = site.slack_post("/slack/interactions", click.clone()).await;
        assert_eq!(r.status(), 200);
    }
    site.slack.wait_count("chat.update", 1).await;
    assert_eq!(site.events("vote").len(), 1);

    // killed and started again, still inside the signature window: both copies are known
    site.restart().await;
    let r = site.slack_post("/slack/commands", command.clone()).await;
    assert_eq!(r.status(), 200);
    let r = site.slack_post("/slack/interactions", click.clone()).await;
    assert_eq!(r.status(), 200);
    // the same command typed again is a new delivery (new trigger_id): a second request
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    site.slack.wait_count("chat.postMessage", 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(site.events("request").len(), 2);
    assert_eq!(site.events("vote").len(), 1);
    assert!(site.refusals().is_empty(), "{:?}", site.refusals());
    assert!(site.slack.of("chat.postEphemeral").is_empty());
    println!(
        "after a restart: {} request(s), {} vote(s), {} refusal(s)",
        site.events("request").len(),
        site.events("vote").len(),
        site.refusals().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_commands_from_a_stranger_make_two_audit_records_and_an_approvers_actions_all_theirs(
) {
    // [stranger_refusals] as adapter.example.toml has it: one in full per person per 10 minutes
    let site = Site::new().await;
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    let id = request_id_of(&site.slack.wait_count("chat.postMessage", 1).await[0]);
    let of_nobody = |site: &Site| -> Vec<Value> {
        site.audit()
            .into_iter()
            .filter(|r| r["who"]["user"] == "U0NOBODY")
            .collect()
    };

    // someone in the workspace but not in [people]: requests to prod, to an environment that does not
    // exist, and clicks on the request; every one is answered with its refusal
    for i in 0..1000 {
        let env = if i % 2 == 0 { "prod" } else { "nowhere" };
        let answer = site
            .command(
                "U0NOBODY",
                &format!("request billing 1.4.{i} {env} {DIGEST}"),
            )
            .await;
        let text = answer["text"].as_str().unwrap();
        assert!(text.starts_with("Request refused"), "{text}");
    }
    for _ in 0..20 {
        assert_eq!(site.click("U0NOBODY", "approve", &id).await, StatusCode::OK);
    }
    site.slack.wait_count("chat.postEphemeral", 20).await;
    let records = of_nobody(&site);
    assert_eq!(records.len(), 1, "one refusal in full per interval");
    assert_eq!(records[0]["event"], "refused");
    assert_eq!(records[0]["reason"], "not_member");

    // Eve (in the policy, no approver role) is refused twice: both recorded; Ada and Bob approve
    site.click("U0EVE", "approve", &id).await;
    site.click("U0EVE", "approve", &id).await;
    site.click("U0ADA", "approve", &id).await;
    site.click("U0BOB", "approve", &id).await;
    site.slack.update_with("Approved").await;

    // the interval ends: the next tick writes one summary of the rest
    site.clock.advance(600);
    site.tick();
    let records = of_nobody(&site);
    assert_eq!(records.len(), 2, "{records:#?}");
    let summary = &records[1];
    assert_eq!(summary["event"], "refusals_suppressed");
    assert_eq!(summary["count"], 1019, "{summary}");
    assert_eq!(summary["from"], T0);
    assert_eq!(summary["until"], T0 + 600);
    println!("{}", summary["message"]);

    let others: Vec<String> = site
        .audit()
        .iter()
        .filter(|r| r["who"]["user"] != "U0NOBODY")
        .map(|r| match r["reason"].as_str() {
            Some(reason) => format!("refused:{reason}"),
            None => r["event"].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(
        others,
        [
            "request",
            "refused:not_approver",
            "refused:not_approver",
            "vote",
            "vote",
            "emit"
        ]
    );

    // the next interval starts with one in full again
    site.command("U0NOBODY", &format!("request billing 9.9.9 prod {DIGEST}"))
        .await;
    assert_eq!(of_nobody(&site).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_calls_wait_for_retry_after() {
    let site = Site::new().await;
    site.slack.throttle.store(1, Ordering::SeqCst);
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    let posts = site.slack.wait_count("chat.postMessage", 2).await;
    let waited = posts[1].at.duration_since(posts[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    assert_eq!(posts[0].body, posts[1].body);
    // the message was posted once the limit lifted: the request is live
    let id = request_id_of(&posts[1]);
    site.click("U0ADA", "approve", &id).await;
    site.slack.wait_count("chat.update", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_written_before_a_crash_is_not_signed_twice() {
    let site = Site::new().await;
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    let id = request_id_of(&site.slack.wait_count("chat.postMessage", 1).await[0]);
    site.click("U0ADA", "approve", &id).await;
    // as if the adapter had died between writing the rejection envelope and committing its status
    let engine = &site.adapter.as_ref().unwrap().app.engine;
    let view = engine.view(&id).unwrap().unwrap();
    let key =
        diode_host::keyfile::load_signing(&site.dir.join("keys/adapter.key"), SignerRole::Adapter)
            .unwrap();
    let earlier = envelope::Envelope {
        id: view.request.envelope_id.clone(),
        request_id: id.clone(),
        decision: Decision::Reject,
        artifact: envelope::Artifact {
            name: "billing".into(),
            version: "1.4.2".into(),
            digest: DIGEST.into(),
        },
        environment: "prod".into(),
        approvers: vec![envelope::Approver {
            id: "U0BOB".into(),
            name: "Bob Kahn".into(),
            role: "security".into(),
            source: "slack".into(),
            at: T0,
        }],
        requester: "U0DAN".into(),
        rule: "prod: rejected by Bob Kahn".into(),
        issued_at: T0,
        expires_at: T0 + 3600,
    }
    .sign(&key);
    let file = site
        .dir
        .join(format!("outbox/{}.envelope", view.request.envelope_id));
    fs::write(&file, earlier.to_json()).unwrap();
    site.click("U0CAT", "approve", &id).await;
    site.slack
        .wait("the recovered rejection in the message", |c| {
            c.iter()
                .find(|c| c.method == "chat.update" && text_of(c).contains("Rejected* by Bob Kahn"))
                .cloned()
        })
        .await;
    assert_eq!(
        site.envelopes(),
        [earlier],
        "the file that was there stands"
    );
    assert!(site.audit().iter().any(|r| r["event"] == "recovered"));
}

// ---- Socket Mode ------------------------------------------------------------------------------------

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A local server speaking Socket Mode's wire format: every connection the adapter opens is handed to
/// the test, which sends hello, envelopes and disconnect and reads the acknowledgements.
async fn socket_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<Ws>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/link/?ticket=t-1", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = tx.send(ws);
            }
        }
    });
    (url, rx)
}

async fn ws_send(ws: &mut Ws, v: Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
        .await
        .unwrap();
}

/// The next text message from the adapter, as JSON.
async fn ws_recv(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("no acknowledgement within 15 s")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn hello() -> Value {
    json!({"type": "hello", "num_connections": 1,
           "debug_info": {"host": "applink-test", "approximate_connection_time": 18060},
           "connection_info": {"app_id": "A0APP"}})
}

fn click_envelope(id: &str, retry: u64, user: &str, request: &str) -> Value {
    json!({
        "envelope_id": id,
        "type": "interactive",
        "accepts_response_payload": false,
        "retry_attempt": retry,
        "retry_reason": if retry > 0 { "timeout" } else { "" },
        "payload": {
            "type": "block_actions",
            "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0TEAM"},
            "api_app_id": "A0APP",
            "channel": {"id": "C0PROD", "name": "prod-deploys"},
            "actions": [{"action_id": "approve", "block_id": "decision", "value": request,
                         "type": "button", "action_ts": "1800000000.1"}]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_two_of_three_with_retry_deduplicated_and_reconnect() {
    let (ws_url, mut conns) = socket_server().await;
    let site = Site::with(|cfg| {
        let slack = cfg["slack"].as_table_mut().unwrap();
        slack.insert("app_token".into(), "file:secrets/slack-app-token".into());
        // Socket Mode only: no signing secret, so the HTTP endpoints for Slack are off
        slack.remove("signing_secret");
    })
    .await;
    *site.slack.ws_url.lock().unwrap() = ws_url;

    // with no signing secret, nothing is taken over HTTP from "Slack"
    let r = site
        .slack_post("/slack/commands", "user_id=U0DAN&text=x".into())
        .await;
    assert_eq!(r.status(), 404);

    let mut ws = conns.recv().await.unwrap();
    let open = site.slack.wait_count("apps.connections.open", 1).await;
    assert_eq!(open[0].auth, format!("Bearer {APP_TOKEN}"));
    ws_send(&mut ws, hello()).await;

    // the slash command; its answer rides in the ack
    ws_send(
        &mut ws,
        json!({"envelope_id": "env-cmd", "type": "slash_commands", "accepts_response_payload": true,
               "retry_attempt": 0, "retry_reason": "",
               "payload": {"token": "x", "team_id": "T0TEAM", "channel_id": "C0DEV", "user_id": "U0DAN",
                           "user_name": "dan", "command": "/deploy",
                           "text": format!("request billing 1.4.2 prod {DIGEST}")}}),
    )
    .await;
    let ack = ws_recv(&mut ws).await;
    assert_eq!(ack["envelope_id"], "env-cmd");
    assert!(ack["payload"]["text"]
        .as_str()
        .unwrap()
        .contains("posted in <#C0PROD>"));
    let post = site.slack.wait_count("chat.postMessage", 1).await.remove(0);
    assert_eq!(post.auth, format!("Bearer {BOT_TOKEN}"));
    let id = request_id_of(&post);

    // an events_api envelope is acknowledged (and otherwise ignored)
    ws_send(
        &mut ws,
        json!({"envelope_id": "env-ev", "type": "events_api", "accepts_response_payload": false,
               "retry_attempt": 0, "retry_reason": "",
               "payload": {"event_id": "Ev01", "type": "event_callback", "event": {"type": "app_mention"}}}),
    )
    .await;
    assert_eq!(ws_recv(&mut ws).await, json!({"envelope_id": "env-ev"}));

    // Ada approves; Slack retries the same envelope: acknowledged again, counted once
    ws_send(&mut ws, click_envelope("env-ada", 0, "U0ADA", &id)).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"envelope_id": "env-ada"}));
    ws_send(&mut ws, click_envelope("env-ada", 1, "U0ADA", &id)).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"envelope_id": "env-ada"}));
    let upd = site.slack.wait_count("chat.update", 1).await;
    assert!(text_of(&upd[0]).contains("(1 of 2)"));
    assert!(site.envelopes().is_empty());

    // Slack asks for a new connection: the adapter opens one and carries on there. (Counted from here:
    // the adapter may have asked once before the test server had its WebSocket URL, and retried.)
    let opened = site.slack.of("apps.connections.open").len();
    ws_send(
        &mut ws,
        json!({"type": "disconnect", "reason": "refresh_requested",
               "debug_info": {"host": "applink-test"}}),
    )
    .await;
    let mut ws2 = tokio::time::timeout(Duration::from_secs(15), conns.recv())
        .await
        .expect("the adapter did not reconnect")
        .unwrap();
    assert_eq!(site.slack.of("apps.connections.open").len(), opened + 1);
    ws_send(&mut ws2, hello()).await;
    // the retry of an envelope handled on the old connection is still a duplicate
    ws_send(&mut ws2, click_envelope("env-ada", 2, "U0ADA", &id)).await;
    assert_eq!(ws_recv(&mut ws2).await, json!({"envelope_id": "env-ada"}));
    ws_send(&mut ws2, click_envelope("env-bob", 0, "U0BOB", &id)).await;
    assert_eq!(ws_recv(&mut ws2).await, json!({"envelope_id": "env-bob"}));

    let last = site
        .slack
        .wait("the message to show the approval", |c| {
            c.iter()
                .rfind(|c| c.method == "chat.update" && !has_buttons(c))
                .cloned()
        })
        .await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let e = &envs[0];
    assert_eq!(e.envelope.decision, Decision::Approve);
    assert_eq!(e.envelope.request_id, id);
    let who: Vec<&str> = e.envelope.approvers.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(who, ["U0ADA", "U0BOB"]);
    assert!(text_of(&last).contains(&e.envelope.id));
    envelope::verify(e, &[site.adapter_pub()], &high_side_rules(), T0 + 10, 60).unwrap();

    // the duplicates never reached the engine: no "already voted" refusal, no ephemeral message
    assert!(site.refusals().is_empty(), "{:?}", site.refusals());
    assert!(site.slack.of("chat.postEphemeral").is_empty());
    let events = site.event_names();
    assert_eq!(events, ["request", "vote", "vote", "emit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_mode_envelope_retried_after_a_restart_is_handled_once() {
    let (ws_url, mut conns) = socket_server().await;
    let mut site = Site::with(|cfg| {
        let slack = cfg["slack"].as_table_mut().unwrap();
        slack.insert("app_token".into(), "file:secrets/slack-app-token".into());
        slack.remove("signing_secret");
    })
    .await;
    *site.slack.ws_url.lock().unwrap() = ws_url;
    let mut ws = conns.recv().await.unwrap();
    ws_send(&mut ws, hello()).await;
    let command = json!({"envelope_id": "env-cmd", "type": "slash_commands",
        "accepts_response_payload": true, "retry_attempt": 0, "retry_reason": "",
        "payload": {"team_id": "T0TEAM", "channel_id": "C0DEV", "user_id": "U0DAN",
                    "user_name": "dan", "command": "/deploy", "trigger_id": "13345224609.738474920.8088930838d88f008e0",
                    "text": format!("request billing 1.4.2 prod {DIGEST}")}});
    ws_send(&mut ws, command.clone()).await;
    assert_eq!(ws_recv(&mut ws).await["envelope_id"], "env-cmd");
    let id = request_id_of(&site.slack.wait_count("chat.postMessage", 1).await[0]);
    ws_send(&mut ws, click_envelope("env-ada", 0, "U0ADA", &id)).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"envelope_id": "env-ada"}));

    // the adapter is killed before Slack saw the acks, and Slack retries both on the new connection
    site.restart().await;
    let mut ws = tokio::time::timeout(Duration::from_secs(15), conns.recv())
        .await
        .expect("the adapter did not connect again")
        .unwrap();
    ws_send(&mut ws, hello()).await;
    let mut retried = command.clone();
    retried["retry_attempt"] = 1.into();
    retried["retry_reason"] = "timeout".into();
    ws_send(&mut ws, retried).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"envelope_id": "env-cmd"}));
    ws_send(&mut ws, click_envelope("env-ada", 1, "U0ADA", &id)).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"envelope_id": "env-ada"}));
    // an Events API retry: a new envelope, the same event_id
    for (env, retry) in [("env-ev-1", 0), ("env-ev-2", 1)] {
        ws_send(
            &mut ws,
            json!({"envelope_id": env, "type": "events_api", "accepts_response_payload": false,
                   "retry_attempt": retry, "retry_reason": "",
                   "payload": {"event_id": "Ev02", "type": "event_callback", "event": {"type": "app_mention"}}}),
        )
        .await;
        assert_eq!(ws_recv(&mut ws).await, json!({"envelope_id": env}));
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(site.slack.of("chat.postMessage").len(), 1);
    let events = site.event_names();
    assert_eq!(
        events,
        ["request", "vote"],
        "the retries must not run again"
    );
}

// ---- Teams outgoing webhook ---------------------------------------------------------------------------

/// An outgoing-webhook message activity as Teams sends it.
fn teams_activity(id: &str, at: u64, from: &str, text: &str) -> String {
    let ts = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_secs(at));
    json!({
        "type": "message",
        "id": id,
        "timestamp": ts.to_string(),
        "localTimestamp": ts.to_string(),
        "serviceUrl": "https://smba.trafficmanager.net/amer/",
        "channelId": "msteams",
        "from": {"id": from, "name": "Ada Lovelace", "aadObjectId": "00000000-0000-0000-0000-00000000ada0"},
        "conversation": {"isGroup": true, "id": "19:prod@thread.skype;messageid=1", "name": null},
        "recipient": null,
        "textFormat": "plain",
        "text": text,
        "entities": [],
        "channelData": {"teamsChannelId": "19:prod@thread.skype", "teamsTeamId": "19:team@thread.skype"}
    })
    .to_string()
}

fn teams_hmac(key_b64: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(key_b64).unwrap()).unwrap();
    mac.update(body);
    format!("HMAC {}", b64.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_webhook_hmac_accepted_then_tampered_wrong_key_stale_and_replayed_refused_even_after_a_restart(
) {
    let mut site = Site::new().await;
    let now = site.clock.now_secs();
    let post = |body: String, auth: Option<String>| {
        let mut r = site
            .http
            .post(site.url("/teams/webhook"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let text = format!("<at>Deploy</at> request billing 1.4.2 prod {DIGEST}");

    // a correctly signed request from Ada (teams id 29:ada): taken, posted for approval
    let body = teams_activity("act-1", now - 2, "29:ada", &text);
    let r = post(body.clone(), Some(teams_hmac(TEAMS_TOKEN, body.as_bytes())))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["type"], "message");
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("posted for approval"),
        "{answer}"
    );
    let posted = site.slack.wait_count("chat.postMessage", 1).await;
    assert!(text_of(&posted[0]).contains(DIGEST));

    // the same activity again: replayed
    let r = post(body.clone(), Some(teams_hmac(TEAMS_TOKEN, body.as_bytes())))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("already taken"));

    // tampered body (signature of another body), wrong key, no header, not HMAC: refused
    let body2 = teams_activity("act-2", now, "29:ada", &text);
    let other = teams_activity("act-2", now, "29:dan", &text);
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMzI=";
    for (auth, why) in [
        (
            Some(teams_hmac(TEAMS_TOKEN, other.as_bytes())),
            "does not match",
        ),
        (
            Some(teams_hmac(wrong_key, body2.as_bytes())),
            "does not match",
        ),
        (None, "no Authorization"),
        (Some("Bearer abc".to_string()), "not HMAC"),
    ] {
        let r = post(body2.clone(), auth).await.unwrap();
        assert_eq!(r.status(), 401);
        let t = r.text().await.unwrap();
        assert!(t.contains(why), "{t} lacks {why}");
    }

    // correctly signed but stale or from the future: refused
    for at in [now - 301, now + 301] {
        let b = teams_activity(&format!("act-at-{at}"), at, "29:ada", &text);
        let r = post(b.clone(), Some(teams_hmac(TEAMS_TOKEN, b.as_bytes())))
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("stale or replayed"));
    }

    // the refused requests recorded nothing; act-2, signed right, is still taken
    let r = post(
        body2.clone(),
        Some(teams_hmac(TEAMS_TOKEN, body2.as_bytes())),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let requests = site
        .audit()
        .iter()
        .filter(|r| r["event"] == "request")
        .count();
    assert_eq!(requests, 2);

    // the adapter is killed and started again; act-1, still inside its 5-minute window, is replayed:
    // the id taken before the restart is remembered (SQLite), so it is refused by its id
    site.restart().await;
    let r = site
        .http
        .post(site.url("/teams/webhook"))
        .header("content-type", "application/json")
        .header("authorization", teams_hmac(TEAMS_TOKEN, body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let t = r.text().await.unwrap();
    assert!(t.contains("act-1 was already taken"), "{t}");
    println!("after a restart, the replay is refused: {t}");
    let requests = site
        .audit()
        .iter()
        .filter(|r| r["event"] == "request")
        .count();
    assert_eq!(requests, 2);
}

// ---- Teams bot: Adaptive Card clicks with a Bot Framework JWT --------------------------------------

const BOT_APP_ID: &str = "8f0c5f3a-0000-4000-8000-00000000b07a";
const SERVICE_URL: &str = "https://smba.trafficmanager.net/amer/";

/// A Bot Framework token signed with the test key under kid test-key-1, endorsed for msteams (its
/// public half is tests/teams-test-jwks.json).
fn bot_jwt(aud: &str, exp: u64, service_url: &str) -> String {
    bot_jwt_by("test-key-1", aud, exp, service_url)
}

/// The same, naming key `kid` of the test JWKS: test-key-webchat is the same RSA key published as
/// endorsed for webchat and directline only, test-key-bare with no endorsements.
fn bot_jwt_by(kid: &str, aud: &str, exp: u64, service_url: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!("teams-test-key.der"));
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.into());
    let claims = json!({
        "iss": "https://api.botframework.com", "aud": aud, "exp": exp, "nbf": exp - 3600,
        "serviceUrl": service_url,
    });
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

fn execute_activity(from: &str, verb: &str, request: &str, service_url: &str) -> Value {
    json!({
        "type": "invoke", "name": "adaptiveCard/action", "id": "f:inv-1",
        "channelId": "msteams", "serviceUrl": service_url,
        "from": {"id": from, "name": "Ada Lovelace", "aadObjectId": "00000000-0000-0000-0000-00000000ada0"},
        "conversation": {"id": "19:prod@thread.skype"},
        "recipient": {"id": format!("28:{BOT_APP_ID}")},
        "value": {"action": {"type": "Action.Execute", "verb": verb, "data": {"request": request}},
                  "trigger": "manual"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_action_execute_with_bot_jwt_votes_and_bad_tokens_are_refused() {
    let (site, id) = bot_site_with_a_request().await;
    let now = site.clock.now_secs();
    let good = execute_activity("29:ada", "approve", &id, SERVICE_URL);

    // refused: wrong audience, expired, bad signature, serviceUrl of another host, no token
    let ok = bot_jwt(BOT_APP_ID, now + 600, SERVICE_URL);
    let other = bot_jwt(BOT_APP_ID, now + 600, "https://evil.example/");
    let parts: Vec<&str> = ok.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    for (token, why) in [
        (
            bot_jwt("some-other-bot", now + 600, SERVICE_URL),
            "InvalidAudience",
        ),
        (bot_jwt(BOT_APP_ID, now - 600, SERVICE_URL), "expired"),
        (forged, "InvalidSignature"),
        (other, "serviceUrl"),
        ("not-a-jwt".to_string(), "not a JWT"),
    ] {
        let r = site.bot_post(token, &good).await;
        assert_eq!(r.status(), 401);
        let t = r.text().await.unwrap();
        assert!(t.contains(why), "{t} lacks {why}");
    }
    assert!(site.audit().iter().all(|r| r["event"] != "vote"));

    // Ada approves from Teams (Action.Execute): the invoke response says it is recorded
    let r = site.bot_post(ok.clone(), &good).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["statusCode"], 200);
    assert_eq!(v["value"], "Recorded.");
    // Dan (the requester) cannot approve from Teams either
    let dan = execute_activity("29:dan", "approve", &id, SERVICE_URL);
    let r = site.bot_post(ok.clone(), &dan).await;
    let v: Value = r.json().await.unwrap();
    assert!(v["value"].as_str().unwrap().starts_with("Refused"), "{v}");

    // Bob completes it from Slack: one person, one vote, whichever chat
    site.click("U0BOB", "approve", &id).await;
    site.slack
        .wait("the approval", |c| {
            c.iter()
                .rfind(|c| c.method == "chat.update" && !has_buttons(c))
                .cloned()
        })
        .await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let who: Vec<&str> = envs[0]
        .envelope
        .approvers
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(who.len(), 2);
    site.high_side_verify(&envs[0], T0 + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_vote_needs_the_msteams_channel_and_a_key_endorsed_for_it() {
    let (site, id) = bot_site_with_a_request().await;
    let now = site.clock.now_secs();
    let teams = execute_activity("29:ada", "approve", &id, SERVICE_URL);
    let on = |channel: Option<&str>| {
        let mut a = teams.clone();
        match channel {
            Some(c) => a["channelId"] = c.into(),
            None => {
                a.as_object_mut().unwrap().remove("channelId");
            }
        }
        a
    };
    let endorsed = bot_jwt(BOT_APP_ID, now + 600, SERVICE_URL);

    // Web Chat or Direct Line of the same bot, whose client says it is Ada: a valid token of the bot,
    // but not a Teams activity. No channel at all: the same.
    for channel in [Some("webchat"), Some("directline"), Some("MSTeams"), None] {
        let r = site.bot_post(endorsed.clone(), &on(channel)).await;
        assert_eq!(r.status(), 403, "{channel:?}");
        let t = r.text().await.unwrap();
        assert!(t.contains("only Teams activities may vote"), "{t}");
    }
    // an msteams activity under a token whose key is not endorsed for msteams, or for nothing
    for (kid, endorsements) in [
        ("test-key-webchat", r#"["webchat", "directline"]"#),
        ("test-key-bare", "[]"),
    ] {
        let token = bot_jwt_by(kid, BOT_APP_ID, now + 600, SERVICE_URL);
        let r = site.bot_post(token, &teams).await;
        assert_eq!(r.status(), 403, "{kid}");
        let t = r.text().await.unwrap();
        let want = format!(
            "signing key {kid} is not endorsed for channel \"msteams\" (its endorsements: {endorsements})"
        );
        assert!(t.contains(&want), "{t}");
        println!("{kid}: {t}");
    }
    assert!(
        site.audit().iter().all(|r| r["event"] != "vote"),
        "a refused activity must never be a vote"
    );

    // the Teams activity under the key endorsed for msteams is Ada's vote
    let r = site.bot_post(endorsed, &teams).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["value"], "Recorded.");
    let votes = site.events("vote");
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0]["person"], "ada");
}

fn submit_activity(from: &str, action: &str, request: &str) -> Value {
    json!({
        "type": "message", "id": "f:sub-1", "channelId": "msteams", "serviceUrl": SERVICE_URL,
        "from": {"id": from, "name": "Ada Lovelace", "aadObjectId": "00000000-0000-0000-0000-00000000ada0"},
        "conversation": {"id": "19:prod@thread.skype"},
        "recipient": {"id": format!("28:{BOT_APP_ID}")},
        "text": "",
        "value": {"action": action, "request": request}
    })
}

fn bot_site_edit(cfg: &mut toml::Table) {
    let t = cfg["teams"].as_table_mut().unwrap();
    t.insert("app_id".into(), BOT_APP_ID.into());
    t.insert(
        "jwks_file".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/teams-test-jwks.json").into(),
    );
}

/// A site with the Teams bot endpoint on and Dan's request for billing 1.4.2 to prod posted; its id.
async fn bot_site_with_a_request() -> (Site, String) {
    let site = Site::with(bot_site_edit).await;
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    let id = request_id_of(&site.slack.wait_count("chat.postMessage", 1).await[0]);
    (site, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_action_submit_click_votes_and_an_unsigned_one_is_refused() {
    let (site, id) = bot_site_with_a_request().await;
    let now = site.clock.now_secs();
    let submit = submit_activity("29:ada", "approve", &id);

    // an Action.Submit without a valid token: refused before it is read, nothing counted
    let forged = bot_jwt("some-other-bot", now + 600, SERVICE_URL);
    let r = site.bot_post(forged, &submit).await;
    assert_eq!(r.status(), 401);
    assert!(site.audit().iter().all(|r| r["event"] != "vote"));

    // Ada's Action.Submit (a message activity whose value carries action and request): counted
    let r = site
        .bot_post(bot_jwt(BOT_APP_ID, now + 600, SERVICE_URL), &submit)
        .await;
    assert_eq!(r.status(), 200);
    let votes = site.events("vote");
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0]["person"], "ada");
    assert_eq!(votes[0]["who"]["source"], "teams", "{}", votes[0]);
    println!("Action.Submit vote: {}", votes[0]);

    // Bob completes it from Slack; the envelope names Ada as a Teams approver
    site.click("U0BOB", "approve", &id).await;
    site.slack
        .wait("the approval", |c| {
            c.iter()
                .rfind(|c| c.method == "chat.update" && !has_buttons(c))
                .cloned()
        })
        .await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let ada = envs[0]
        .envelope
        .approvers
        .iter()
        .find(|a| a.name == "Ada Lovelace")
        .expect("Ada approved");
    assert_eq!(ada.source, "teams");
}

// ---- a local server speaking the Bot Connector, the identity platform's token endpoint, a Workflows
// ---- webhook and a JWKS URL -------------------------------------------------------------------------

const TEAMS_APP_PASSWORD: &str = "teams-app-password-s3cr3t";
const TEAMS_ACCESS_TOKEN: &str = "teams-access-token-1";
const PROD_CONVERSATION: &str = "19:prod0123456789abcdef@thread.tacv2";

#[derive(Clone, Debug)]
struct TeamsCall {
    method: String,
    path: String,
    auth: String,
    body: Value,
    at: Instant,
}

#[derive(Clone, Default)]
struct FakeTeams {
    calls: Arc<Mutex<Vec<TeamsCall>>>,
    /// Answer this many of the next activity POSTs with 429 + Retry-After: 1.
    throttle: Arc<AtomicU32>,
    next_id: Arc<AtomicU32>,
    jwks: Arc<Mutex<Value>>,
    /// Answer every Bot Connector call with 503.
    down: Arc<std::sync::atomic::AtomicBool>,
}

async fn fake_teams(
    State(s): State<FakeTeams>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let path = uri.path().to_string();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parsed = if ctype.starts_with("application/x-www-form-urlencoded") {
        let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap();
        json!(form)
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    s.calls.lock().unwrap().push(TeamsCall {
        method: method.to_string(),
        path: path.clone(),
        auth: auth.clone(),
        body: parsed.clone(),
        at: Instant::now(),
    });
    if path == "/keys" {
        return Json(s.jwks.lock().unwrap().clone()).into_response();
    }
    if path == "/oauth2/v2.0/token" {
        let f = &parsed;
        let ok = ctype.starts_with("application/x-www-form-urlencoded")
            && f["grant_type"] == "client_credentials"
            && f["client_id"] == BOT_APP_ID
            && f["client_secret"] == TEAMS_APP_PASSWORD
            && f["scope"] == "https://api.botframework.com/.default";
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_client"})),
            )
                .into_response();
        }
        return Json(
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                           "access_token": TEAMS_ACCESS_TOKEN}),
        )
        .into_response();
    }
    if path.starts_with("/workflows/") {
        return StatusCode::ACCEPTED.into_response();
    }
    // the Bot Connector: a bearer token from the token endpoint, a message with an Adaptive Card
    if auth != format!("Bearer {TEAMS_ACCESS_TOKEN}") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    // a reply in a card's thread: a text message
    if path.contains(";messageid=") {
        if method != axum::http::Method::POST
            || parsed["type"] != "message"
            || !parsed["text"].is_string()
        {
            return StatusCode::BAD_REQUEST.into_response();
        }
        let n = s.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        return Json(json!({"id": format!("1:reply-{n}")})).into_response();
    }
    let card_ok = parsed["type"] == "message"
        && parsed["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
        && parsed["attachments"][0]["content"]["type"] == "AdaptiveCard";
    if !card_ok || !ctype.starts_with("application/json") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if method == axum::http::Method::POST && path.ends_with("/activities") {
        if s.throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        }
        let n = s.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        return Json(json!({"id": format!("1:activity-{n}")})).into_response();
    }
    if method == axum::http::Method::PUT {
        let id = path.rsplit('/').next().unwrap_or("").to_string();
        return Json(json!({"id": id})).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

impl FakeTeams {
    async fn start() -> (FakeTeams, String) {
        let s = FakeTeams::default();
        let app = axum::Router::new()
            .fallback(fake_teams)
            .with_state(s.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (s, url)
    }

    fn calls(&self) -> Vec<TeamsCall> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.calls().iter().filter(|c| c.path == path).count()
    }

    async fn wait<T>(&self, what: &str, probe: impl Fn(&[TeamsCall]) -> Option<T>) -> T {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(t) = probe(&self.calls()) {
                return t;
            }
            if Instant::now() > end {
                panic!("timed out waiting for {what}; calls: {:#?}", self.calls());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every Action.Execute in a card, wherever it is (the buttons sit behind a confirmation card).
fn executes(v: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    match v {
        Value::Object(m) => {
            if m.get("type") == Some(&json!("Action.Execute")) {
                out.push(v.clone());
            }
            m.values().for_each(|x| out.extend(executes(x)));
        }
        Value::Array(a) => a.iter().for_each(|x| out.extend(executes(x))),
        _ => {}
    }
    out
}

/// A Teams server and a site whose prod environment posts cards through the Bot Connector (to it)
/// and a Workflows webhook (on it too).
async fn cards_site() -> (FakeTeams, Site) {
    cards_site_with(|_| {}).await
}

/// As `cards_site`, with `more` applied to adapter.toml too.
async fn cards_site_with(
    more: impl FnOnce(&mut toml::Table) + Send + 'static,
) -> (FakeTeams, Site) {
    let (teams, base) = FakeTeams::start().await;
    let workflow = format!("{base}/workflows/prod/triggers/manual/paths/invoke?sig=wf-secret-sig");
    let site = Site::with_secrets(
        move |cfg| {
            bot_site_edit(cfg);
            let t = cfg["teams"].as_table_mut().unwrap();
            t.insert(
                "app_password".into(),
                "file:secrets/teams-app-password".into(),
            );
            t.insert(
                "token_url".into(),
                format!("{base}/oauth2/v2.0/token").into(),
            );
            t.insert("service_url".into(), format!("{base}/amer/").into());
            let prod = cfg["environments"]["prod"].as_table_mut().unwrap();
            prod.insert("teams_conversation".into(), PROD_CONVERSATION.into());
            prod.insert(
                "teams_workflow_url".into(),
                "file:secrets/teams-workflow-url".into(),
            );
            more(cfg);
        },
        &[
            ("teams-app-password", TEAMS_APP_PASSWORD),
            ("teams-workflow-url", &workflow),
        ],
    )
    .await;
    (teams, site)
}

async fn pipeline_request(site: &Site) {
    let (code, v) = site
        .pipeline(
            CI_TOKEN,
            json!({"app": "billing", "version": "1.4.2", "environment": "prod", "digest": DIGEST,
                   "on_behalf_of": "dan"}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_teams_did_not_take_is_posted_on_the_next_tick_and_never_twice_after_a_restart() {
    let (teams, mut site) = cards_site().await;
    teams.down.store(true, Ordering::SeqCst);
    let activities = format!("/amer/v3/conversations/{PROD_CONVERSATION}/activities");
    let posts = |teams: &FakeTeams| {
        teams
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path == activities)
            .count()
    };
    pipeline_request(&site).await;
    let end = Instant::now() + Duration::from_secs(15);
    while !site
        .audit()
        .iter()
        .any(|r| r["event"] == "chat_failed" && r["what"] == "teams")
    {
        assert!(Instant::now() < end, "the failure is not audited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // tried and refused with 503 (a background tick may already have tried again: still down)
    let failed = posts(&teams);
    assert!(failed >= 1, "tried, refused with 503");
    // the workflow's card does not wait for the bot's
    assert!(teams
        .calls()
        .iter()
        .any(|c| c.path.starts_with("/workflows/")));

    // Teams is back: the next tick finds the card out of step and posts it
    teams.down.store(false, Ordering::SeqCst);
    site.tick();
    teams
        .wait("the card posted by the tick", |c| {
            c.iter()
                .filter(|c| c.method == "POST" && c.path == activities)
                .nth(failed)
                .cloned()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let posted = posts(&teams);

    // killed and started again: the card is remembered, nothing is posted twice
    site.restart().await;
    site.tick();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(posts(&teams), posted, "posted once only");
    println!(
        "Teams card posted by the tick after a 503: {} POSTs in all, none after the restart",
        posts(&teams)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_cards_posted_through_the_bot_connector_and_a_workflow_and_updated_on_decision() {
    let (teams, site) = cards_site().await;
    teams.throttle.store(1, Ordering::SeqCst);

    // a pipeline request: posted to Teams as a card with Approve / Reject (after one 429)
    pipeline_request(&site).await;
    let activities = format!("/amer/v3/conversations/{PROD_CONVERSATION}/activities");
    let posts = teams
        .wait("the card, posted after the 429", |c| {
            let p: Vec<TeamsCall> = c
                .iter()
                .filter(|c| c.method == "POST" && c.path == activities)
                .cloned()
                .collect();
            (p.len() >= 2).then_some(p)
        })
        .await;
    assert!(
        posts[1].at - posts[0].at >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured"
    );
    let card = &posts[1].body["attachments"][0]["content"];
    assert_eq!(card["version"], "1.4");
    let buttons = executes(card);
    let verbs: Vec<&str> = buttons
        .iter()
        .map(|b| b["verb"].as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["approve", "reject"]);
    let id = buttons[0]["data"]["request"].as_str().unwrap().to_string();
    assert!(card.to_string().contains(DIGEST));
    assert_eq!(posts[1].auth, format!("Bearer {TEAMS_ACCESS_TOKEN}"));
    let wf = teams
        .wait("the workflow card", |c| {
            c.iter()
                .find(|c| c.path.starts_with("/workflows/"))
                .cloned()
        })
        .await;
    assert_eq!(wf.method, "POST");
    assert_eq!(wf.body["type"], "message");
    assert_eq!(
        wf.body["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert!(wf.body["attachments"][0]["content"]
        .to_string()
        .contains(&id));
    assert!(
        executes(&wf.body).is_empty(),
        "a workflow card has no buttons"
    );

    // Ada approves with the card's Action.Execute: the card is replaced in place (PUT), 1 of 2
    let now = site.clock.now_secs();
    let act = buttons[0].clone();
    let invoke = execute_activity("29:ada", act["verb"].as_str().unwrap(), &id, SERVICE_URL);
    let r = site
        .bot_post(bot_jwt(BOT_APP_ID, now + 600, SERVICE_URL), &invoke)
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["value"], "Recorded.");
    let put_path = format!("{activities}/1:activity-1");
    let put = teams
        .wait("the card updated with Ada's vote", |c| {
            c.iter().find(|c| c.method == "PUT").cloned()
        })
        .await;
    assert_eq!(put.path, put_path);
    assert_eq!(put.body["id"], "1:activity-1");
    let text = put.body.to_string();
    assert!(
        text.contains("1 of 2") && text.contains("Ada Lovelace"),
        "{text}"
    );
    assert_eq!(executes(&put.body).len(), 2, "still pending: buttons stay");

    // two hours on: the reminders and the escalation are replies under the card, the escalation
    // mentioning Ada (release-manager, the one of tier 1 with a Teams id) as Teams mentions are made
    site.clock.advance(2 * 3600 + 1);
    site.tick();
    let thread = activities.replace("/activities", ";messageid=1:activity-1/activities");
    let replies = teams
        .wait("the escalation under the card", |c| {
            let r: Vec<TeamsCall> = c.iter().filter(|c| c.path == thread).cloned().collect();
            r.iter()
                .any(|c| {
                    c.body["text"]
                        .as_str()
                        .unwrap_or("")
                        .contains("Escalation tier 1")
                })
                .then_some(r)
        })
        .await;
    let esc = replies
        .iter()
        .find(|c| {
            c.body["text"]
                .as_str()
                .unwrap()
                .contains("Escalation tier 1")
        })
        .unwrap();
    assert!(esc.body["text"]
        .as_str()
        .unwrap()
        .starts_with("<at>Ada Lovelace</at> "));
    assert_eq!(
        esc.body["entities"],
        json!([{"type": "mention", "text": "<at>Ada Lovelace</at>",
                "mentioned": {"id": "29:ada", "name": "Ada Lovelace"}}])
    );
    assert!(
        replies
            .iter()
            .any(|c| c.body["text"].as_str().unwrap().starts_with("Reminder ")),
        "{replies:#?}"
    );
    println!("Teams escalation reply: {}", esc.body["text"]);

    // Bob completes it from Slack: the card loses its buttons and names approvers and envelope
    site.click("U0BOB", "approve", &id).await;
    let done = teams
        .wait("the decided card", |c| {
            c.iter()
                .filter(|c| c.method == "PUT")
                .find(|c| c.body.to_string().contains("Approved by"))
                .cloned()
        })
        .await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let text = done.body["attachments"][0]["content"].to_string();
    assert!(executes(&done.body).is_empty(), "buttons removed: {text}");
    assert!(text.contains(&envs[0].envelope.id), "{text}");
    assert!(
        text.contains("Ada Lovelace") && text.contains("Bob Kahn"),
        "{text}"
    );
    println!(
        "Teams card after the decision: {}",
        done.body["attachments"][0]["content"]["body"][2]["text"]
    );
    let wf2 = teams
        .wait("the workflow's decided card", |c| {
            let w: Vec<TeamsCall> = c
                .iter()
                .filter(|c| c.path.starts_with("/workflows/"))
                .cloned()
                .collect();
            (w.len() >= 2).then_some(w)
        })
        .await;
    assert!(wf2[1].body.to_string().contains("Approved by"));
    // one token for all of it (cached), asked with the client-credentials grant
    assert_eq!(teams.count("/oauth2/v2.0/token"), 1);
    // exactly one card posted; no more workflow posts than the two states
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        teams
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path == activities)
            .count(),
        2,
        "one 429 and one post"
    );
    assert_eq!(
        teams
            .calls()
            .iter()
            .filter(|c| c.path.starts_with("/workflows/"))
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_jwks_by_url_is_cached_and_fetched_again_for_a_new_kid_at_most_once_a_minute() {
    let (teams, base) = FakeTeams::start().await;
    let jwks: Value = serde_json::from_str(include_str!("teams-test-jwks.json")).unwrap();
    *teams.jwks.lock().unwrap() = jwks.clone();
    let b = base.clone();
    let site = Site::with(move |cfg| {
        let t = cfg["teams"].as_table_mut().unwrap();
        t.insert("app_id".into(), BOT_APP_ID.into());
        t.insert("jwks_url".into(), format!("{b}/keys").into());
    })
    .await;
    assert_eq!(teams.count("/keys"), 1, "fetched at start");
    site.command("U0DAN", &format!("request billing 1.4.2 prod {DIGEST}"))
        .await;
    let id = request_id_of(&site.slack.wait_count("chat.postMessage", 1).await[0]);
    let token = |kid: &str, now: u64| bot_jwt_by(kid, BOT_APP_ID, now + 600, SERVICE_URL);
    let site = &site;
    let send = |t: String, who: &str| {
        let activity = execute_activity(who, "approve", &id, SERVICE_URL);
        async move { site.bot_post(t, &activity).await }
    };
    let now = site.clock.now_secs();

    // a known kid: from the cache, no fetch
    let r = send(token("test-key-1", now), "29:ada").await;
    assert_eq!(r.status(), 200);
    assert_eq!(teams.count("/keys"), 1);

    // the keys rotate: the same key now published as test-key-2
    let mut rotated = jwks.clone();
    rotated["keys"][0]["kid"] = "test-key-2".into();
    *teams.jwks.lock().unwrap() = rotated;
    // an unknown kid within a minute of the last fetch: no fetch, refused
    let r = send(token("test-key-2", now), "29:ada").await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("not in the JWKS"));
    assert_eq!(teams.count("/keys"), 1, "at most once a minute");

    // a minute later (adapter clock): the unknown kid makes one fetch, and the token is taken
    site.clock.advance(61);
    let now = site.clock.now_secs();
    let r = send(token("test-key-2", now), "29:ada").await;
    assert_eq!(r.status(), 200);
    assert_eq!(teams.count("/keys"), 2);
    // a forged kid right after: refused without another fetch
    let r = send(token("made-up-kid", now), "29:ada").await;
    assert_eq!(r.status(), 401);
    assert_eq!(teams.count("/keys"), 2);
    println!(
        "JWKS fetches: {} (start, one after the rotation)",
        teams.count("/keys")
    );
}

// ---- requests from inside the air gap, through the reverse diode ---------------------------------------

/// The high side of the loop: a pipeline key pair made by `keygen --pipeline`'s function, in a folder of
/// its own, and the signed request files a pipeline would send out.
struct Pipeline {
    _keys: tempfile::TempDir,
    key: SigningKey,
    public: PathBuf,
}

impl Pipeline {
    fn new() -> Pipeline {
        let keys = tempfile::tempdir().unwrap();
        let (k, p) =
            diode_host::keyfile::generate_signing(keys.path(), SignerRole::Pipeline).unwrap();
        assert_eq!(k.file_name().unwrap(), "pipeline.key");
        assert_eq!(
            fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // loaded the way `diode-send request` loads it
        let key =
            SigningKey::from_text(&fs::read_to_string(&k).unwrap(), SignerRole::Pipeline).unwrap();
        Pipeline {
            _keys: keys,
            key,
            public: p,
        }
    }

    fn request(&self, id: &str, env: &str, created_at: u64) -> SignedRequest {
        Request {
            id: id.into(),
            artifact: Artifact {
                name: "billing".into(),
                version: "3.1.0".into(),
                digest: DIGEST.into(),
            },
            environment: env.into(),
            requester: "release".into(),
            reason: "quarterly release from the build farm".into(),
            created_at,
        }
        .sign(&self.key)
    }
}

/// The `[reverse]` block of adapter.example.toml, uncommented, so that the documented keys are the
/// ones tested.
fn example_reverse() -> toml::Table {
    let example =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/adapter.example.toml")).unwrap();
    let block: String = example
        .lines()
        .skip_while(|l| *l != "# [reverse]")
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
        .map(|l| format!("{l}\n"))
        .collect();
    let t: toml::Table = toml::from_str(&block).unwrap();
    for k in [
        "inbox",
        "pipeline_keys",
        "outcome_keys",
        "max_age",
        "skew",
        "processed",
        "quarantine",
        "poll",
    ] {
        assert!(t.contains_key(k), "{k} is not documented in [reverse]");
    }
    t
}

async fn reverse_site(pipeline: &Pipeline) -> Site {
    reverse_site_trusting(pipeline, None).await
}

/// As `reverse_site`, trusting outcomes signed by the key of `outcome_pub` (none: outcome_keys = []).
async fn reverse_site_trusting(pipeline: &Pipeline, outcome_pub: Option<&Path>) -> Site {
    let public = pipeline.public.to_str().unwrap().to_string();
    let outcome: Vec<toml::Value> = outcome_pub
        .map(|p| p.to_str().unwrap().to_string().into())
        .into_iter()
        .collect();
    Site::with(move |cfg| {
        let mut r = example_reverse();
        r["pipeline_keys"] = toml::Value::Array(vec![public.into()]);
        r["outcome_keys"] = toml::Value::Array(outcome);
        r["poll"] = "20ms".into();
        cfg.insert("reverse".into(), r.into());
    })
    .await
}

impl Site {
    /// A file arriving in the reverse receiver's inbox (under `sub`), complete at once as a receiver
    /// writes it: a hidden temporary file, then a rename.
    fn arrive(&self, sub: &str, name: &str, bytes: &[u8]) {
        let dir = self.dir.join("reverse-inbox").join(sub);
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        fs::rename(tmp, dir.join(name)).unwrap();
    }

    fn inbox_files(&self) -> usize {
        fn count(d: &Path) -> usize {
            fs::read_dir(d).map_or(0, |r| {
                r.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        count(&self.dir.join("reverse-inbox"))
    }

    fn names_in(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir.join(sub))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn until(&self, what: &str, done: impl Fn(&Site) -> bool) {
        let end = Instant::now() + Duration::from_secs(15);
        while !done(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

const RID: &str = "5f0c2a9e7b3d41c8a6e0f1b2c3d4e5f6";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_inside_the_air_gap_is_posted_and_its_approval_carries_its_id_and_digest() {
    let pipeline = Pipeline::new();
    let site = reverse_site(&pipeline).await;
    let signed = pipeline.request(RID, "prod", T0 - 30);
    site.arrive(
        "reverse/2027",
        &signed.file_name(),
        signed.to_json().as_bytes(),
    );

    let post = site.slack.wait_count("chat.postMessage", 1).await.remove(0);
    assert_eq!(post.body["channel"], "C0PROD");
    assert_eq!(request_id_of(&post), RID, "posted under the high side's id");
    let text = text_of(&post);
    for want in [
        DIGEST,
        "pipeline:release",
        "via reverse diode",
        "quarterly release from the build farm",
        "2 approval(s) from release-manager, security",
    ] {
        assert!(text.contains(want), "message lacks {want}: {text}");
    }
    println!("posted: {}", post.body["text"]);
    site.until("the file to leave the inbox", |s| s.inbox_files() == 0)
        .await;
    assert_eq!(
        site.names_in("state/reverse/processed"),
        [signed.file_name()]
    );

    site.click("U0ADA", "approve", RID).await;
    site.click("U0BOB", "approve", RID).await;
    site.slack.update_with("Approved").await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let e = &envs[0].envelope;
    assert_eq!(e.decision, Decision::Approve);
    assert_eq!(e.request_id, RID);
    assert_eq!(e.artifact.digest, DIGEST);
    assert_eq!(
        (e.artifact.name.as_str(), e.artifact.version.as_str()),
        ("billing", "3.1.0")
    );
    assert_eq!(e.requester, "pipeline:release");
    println!(
        "envelope {} request_id {} digest {} requester {}",
        e.id, e.request_id, e.artifact.digest, e.requester
    );
    site.high_side_verify(&envs[0], T0 + 10);
    let req = &site.events("request")[0];
    assert_eq!(
        (&req["request_id"], &req["via"], &req["signer"]),
        (
            &json!(RID),
            &json!("reverse"),
            &json!(signed.signer.as_str())
        )
    );
    assert!(site.refusals().is_empty(), "{:?}", site.refusals());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_taken_once_even_after_a_restart() {
    let pipeline = Pipeline::new();
    let mut site = reverse_site(&pipeline).await;
    let signed = pipeline.request(RID, "prod", T0);
    let (name, json) = (signed.file_name(), signed.to_json());
    site.arrive("", &name, json.as_bytes());
    site.slack.wait_count("chat.postMessage", 1).await;
    site.until("the file to leave the inbox", |s| s.inbox_files() == 0)
        .await;
    // the reverse link sends it again, in another folder, then once more after a restart of the
    // adapter, and again once it is old
    site.arrive("again", &name, json.as_bytes());
    site.until("the repeat to leave the inbox", |s| s.inbox_files() == 0)
        .await;
    site.restart().await;
    site.arrive("", &name, json.as_bytes());
    site.until("the repeat to leave the inbox", |s| s.inbox_files() == 0)
        .await;
    site.clock.set(T0 + 2 * 3600 - 1);
    site.arrive("late", &name, json.as_bytes());
    site.until("the late repeat to leave the inbox", |s| {
        s.inbox_files() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let posts: Vec<Call> = site
        .slack
        .of("chat.postMessage")
        .into_iter()
        .filter(has_buttons)
        .collect();
    assert_eq!(posts.len(), 1, "posted once");
    assert_eq!(site.events("request").len(), 1, "taken once");
    assert!(site.refusals().is_empty(), "{:?}", site.refusals());
    assert_eq!(site.names_in("state/reverse/processed"), [name.as_str()]);
    println!(
        "4 arrivals of {name}: {} post, {} request record",
        posts.len(),
        site.events("request").len()
    );

    // the same id with another artifact is no repeat: refused, and the first request stands
    let mut other = pipeline.request(RID, "prod", T0 + 2 * 3600 - 10).request;
    other.artifact.version = "6.6.6".into();
    let other = other.sign(&pipeline.key);
    site.arrive("", &other.file_name(), other.to_json().as_bytes());
    site.until("the conflict to be refused", |s| {
        s.refusals() == ["conflicting_request"]
    })
    .await;
    assert_eq!(site.slack.of("chat.postMessage").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_altered_byte_expired_and_malformed_requests_are_refused_audited_and_never_posted(
) {
    let pipeline = Pipeline::new();
    let site = reverse_site(&pipeline).await;
    let stranger = SigningKey::from_seed(&[9; 32]);
    let id = |n: u8| format!("{:032x}", n);

    // signed by a key not in pipeline_keys
    let unknown = pipeline.request(&id(1), "prod", T0).request.sign(&stranger);
    // one byte of the reason altered after signing
    let good = pipeline.request(&id(2), "prod", T0);
    let altered = good
        .to_json()
        .replace("build farm", "build farn")
        .into_bytes();
    assert_ne!(altered, good.to_json().into_bytes());
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            unknown.file_name(),
            unknown.to_json().into_bytes(),
            "unknown_key",
        ),
        (good.file_name(), altered, "bad_signature"),
        {
            let s = pipeline.request(&id(3), "prod", T0 - 3601);
            (s.file_name(), s.to_json().into_bytes(), "expired")
        },
        {
            let s = pipeline.request(&id(4), "prod", T0 + 600);
            (s.file_name(), s.to_json().into_bytes(), "future")
        },
        {
            let s = pipeline.request(&id(5), "moon", T0);
            (
                s.file_name(),
                s.to_json().into_bytes(),
                "unknown_environment",
            )
        },
        (
            format!("{}.request", id(6)),
            b"{\"request\": 1}".to_vec(),
            "malformed",
        ),
        (
            format!("{}.request", id(7)),
            vec![b' '; MAX_REQUEST_BYTES + 1],
            "malformed",
        ),
    ];
    for (name, bytes, _) in &cases {
        site.arrive("in", name, bytes);
    }
    site.until("every file to be refused", |s| {
        s.names_in("state/reverse/quarantine").len() == cases.len()
    })
    .await;
    let mut want: Vec<String> = cases
        .iter()
        .map(|(name, _, code)| format!("{name}.{code}"))
        .collect();
    want.sort();
    assert_eq!(site.names_in("state/reverse/quarantine"), want);
    assert_eq!(site.inbox_files(), 0);
    let mut codes = site.refusals();
    codes.sort();
    let mut expected: Vec<String> = cases.iter().map(|c| c.2.to_string()).collect();
    expected.sort();
    assert_eq!(codes, expected);
    for r in site.events("refused") {
        println!("refused: {} {}", r["reason"], r["message"]);
    }
    // the refusal of the unknown key names the request and the key
    let r = site
        .events("refused")
        .into_iter()
        .find(|r| r["reason"] == "unknown_key")
        .unwrap();
    assert_eq!(r["request_id"], json!(id(1)));
    assert_eq!(r["who"]["signer"], json!(stranger.public().id_hex()));

    // none was posted or recorded as a request; the genuine one (same id as the altered) still is
    assert!(site.slack.calls().is_empty(), "{:#?}", site.slack.calls());
    assert!(site.events("request").is_empty());
    site.arrive("in", &good.file_name(), good.to_json().as_bytes());
    let post = site.slack.wait_count("chat.postMessage", 1).await.remove(0);
    assert_eq!(request_id_of(&post), id(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_from_inside_is_rejected_at_the_deadline_under_its_id() {
    let pipeline = Pipeline::new();
    let site = reverse_site(&pipeline).await;
    let signed = pipeline.request(RID, "prod", T0);
    site.arrive("", &signed.file_name(), signed.to_json().as_bytes());
    site.slack.wait_count("chat.postMessage", 1).await;
    // Cat approves: one of two
    site.click("U0CAT", "approve", RID).await;
    site.slack.wait_count("chat.update", 1).await;
    site.clock.set(T0 + 4 * 3600);
    site.tick();
    site.slack.update_with("no decision by the deadline").await;
    let envs = site.envelopes();
    assert_eq!(envs.len(), 1);
    let e = &envs[0].envelope;
    assert_eq!(
        (
            e.decision,
            e.request_id.as_str(),
            e.artifact.digest.as_str()
        ),
        (Decision::Reject, RID, DIGEST)
    );
    println!("expired: {} request_id {}", e.decision, e.request_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_named_as_the_requester_of_a_signed_request_may_not_approve_it() {
    let pipeline = Pipeline::new();
    let site = reverse_site(&pipeline).await;
    let mut r = pipeline.request(RID, "prod", T0).request;
    r.requester = "ada".into();
    let signed = r.sign(&pipeline.key);
    site.arrive("", &signed.file_name(), signed.to_json().as_bytes());
    let post = site.slack.wait_count("chat.postMessage", 1).await.remove(0);
    assert!(
        text_of(&post).contains("Ada Lovelace"),
        "{}",
        text_of(&post)
    );
    site.click("U0ADA", "approve", RID).await;
    let eph = site.slack.wait_count("chat.postEphemeral", 1).await;
    assert!(text_of(&eph[0]).contains("own request"));
    assert_eq!(site.refusals(), ["self_approval"]);
    assert!(site.envelopes().is_empty());
}

/// Issue 16, point 2 in Teams: `@Deploy pending` answers with the person's inbox (what waits for their
/// vote, their own open requests); `@Deploy request` alone answers with a card form, whose submission
/// (Action.Execute, verb `request`, through the bot with its JWT) makes the request, refuses a bad
/// digest in the invoke response, and is taken once however often the Bot Connector retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_pending_lists_the_inbox_and_the_card_form_makes_a_request() {
    let (site, id) = bot_site_with_a_request().await;
    let now = site.clock.now_secs();
    let webhook = |body: String| {
        site.http
            .post(site.url("/teams/webhook"))
            .header("content-type", "application/json")
            .header("authorization", teams_hmac(TEAMS_TOKEN, body.as_bytes()))
            .body(body)
            .send()
    };
    // Ada (a release manager) asks what waits for her: Dan's request to prod
    let body = teams_activity("act-pending", now - 1, "29:ada", "<at>Deploy</at> pending");
    let answer: Value = webhook(body).await.unwrap().json().await.unwrap();
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.contains("Waiting for your vote (1)") && text.contains(&id),
        "{text}"
    );
    assert!(text.contains("Your open requests (0)"), "{text}");

    // `@Deploy request` alone: the card form, with the environments she may request in
    let body = teams_activity("act-form", now - 1, "29:ada", "<at>Deploy</at> request");
    let answer: Value = webhook(body).await.unwrap().json().await.unwrap();
    let card = &answer["attachments"][0]["content"];
    assert_eq!(card["actions"][0]["type"], "Action.Execute");
    assert_eq!(card["actions"][0]["verb"], "request");
    let choices = card["body"][1]["choices"].to_string();
    assert!(
        choices.contains("prod") && choices.contains("staging"),
        "{choices}"
    );

    // the form submitted through the bot: a bad digest is refused in the invoke response
    let jwt = bot_jwt(BOT_APP_ID, now + 600, SERVICE_URL);
    let submit = |activity: &str, digest: &str, reason: &str| {
        json!({
            "type": "invoke", "name": "adaptiveCard/action", "id": activity,
            "channelId": "msteams", "serviceUrl": SERVICE_URL,
            "from": {"id": "29:ada", "name": "Ada Lovelace", "aadObjectId": "00000000-0000-0000-0000-00000000ada0"},
            "conversation": {"id": "19:prod@thread.skype"},
            "recipient": {"id": format!("28:{BOT_APP_ID}")},
            "value": {"action": {"type": "Action.Execute", "verb": "request",
                "data": {"environment": "staging", "app": "web", "version": "2.0", "digest": digest,
                         "reason": reason}},
                "trigger": "manual"}
        })
    };
    let r = site
        .bot_post(jwt.clone(), &submit("f:form-bad", "sha256:abc", "CHG-1"))
        .await;
    let v: Value = r.json().await.unwrap();
    assert!(
        v["value"].as_str().unwrap().starts_with("Request refused"),
        "{v}"
    );
    // the card's reason field: required (a crafted submission without one is refused), and bounded
    let form_reason = &card["body"][5];
    assert_eq!(
        (
            &form_reason["id"],
            &form_reason["isRequired"],
            &form_reason["maxLength"]
        ),
        (&json!("reason"), &json!(true), &json!(500)),
        "{card}"
    );
    let v: Value = site
        .bot_post(jwt.clone(), &submit("f:form-blank", DIGEST, " \u{200b} "))
        .await
        .json()
        .await
        .unwrap();
    assert!(v["value"].as_str().unwrap().contains("say why"), "{v}");
    let v: Value = site
        .bot_post(
            jwt.clone(),
            &submit("f:form-long", DIGEST, &"x".repeat(501)),
        )
        .await
        .json()
        .await
        .unwrap();
    let said = v["value"].as_str().unwrap();
    assert!(
        said.starts_with("Request refused") && said.contains("501 characters"),
        "{v}"
    );
    println!("over-long reason from the Teams card: {said}");
    assert_eq!(site.events("request").len(), 1, "only Dan's request so far");

    // a good one: made and posted; the same activity again is not taken twice. Its reason, with a
    // bidi override and a line break, is kept without the override
    let good = submit(
        "f:form-good",
        DIGEST,
        "CHG-4711: \u{202e}rollout\nof the new web tier",
    );
    let v: Value = site
        .bot_post(jwt.clone(), &good)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        v["value"].as_str().unwrap().contains("posted for approval"),
        "{v}"
    );
    let v: Value = site.bot_post(jwt, &good).await.json().await.unwrap();
    assert!(
        v["value"].as_str().unwrap().contains("already received"),
        "{v}"
    );
    let requests = site.events("request");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1]["who"]["source"], "teams", "{}", requests[1]);
    let reason = "CHG-4711: rollout\nof the new web tier";
    assert_eq!(requests[1]["reason"], reason, "audited: {}", requests[1]);
    assert!(
        requests[0].get("reason").is_none(),
        "Dan typed none: {}",
        requests[0]
    );
    // stored, shown in the Slack message of the request, and told to a pipeline asking about it
    let rid = requests[1]["request_id"].as_str().unwrap().to_string();
    let post = site.slack.wait_count("chat.postMessage", 2).await.remove(1);
    assert_eq!(request_id_of(&post), rid);
    assert!(
        post.body
            .to_string()
            .contains("*Reason*\\nCHG-4711: rollout\\nof the new web tier"),
        "{}",
        post.body
    );
    let v: Value = site
        .http
        .get(site.url(&format!("/v1/requests/{rid}")))
        .bearer_auth(CI_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["reason"], reason, "{v}");
    println!("GET /v1/requests/{rid}: reason {}", v["reason"]);

    // and her inbox now lists her own request
    let body = teams_activity(
        "act-pending-2",
        now - 1,
        "29:ada",
        "<at>Deploy</at> pending",
    );
    let answer: Value = webhook(body).await.unwrap().json().await.unwrap();
    let text = answer["text"].as_str().unwrap();
    assert!(text.contains("Your open requests (1)"), "{answer}");
    assert!(
        text.contains("reason: CHG-4711: rollout of the new web tier"),
        "{answer}"
    );
    println!("@Deploy pending: {text}");
}

// ---- outcomes from the high side, through the reverse diode ----------------------------------------------

/// The high side's end: its approvals audit log (the same `AuditLog` diode-recv appends to) and its
/// outcome key, from `keygen --outcome`'s function; each record signed as `[approvals.outcomes]` does.
struct HighSide {
    dir: tempfile::TempDir,
    key: SigningKey,
    public: PathBuf,
    log: AuditLog,
}

impl HighSide {
    fn new() -> HighSide {
        let dir = tempfile::tempdir().unwrap();
        let (k, p) =
            diode_host::keyfile::generate_signing(&dir.path().join("keys"), SignerRole::Outcome)
                .unwrap();
        let key =
            SigningKey::from_text(&fs::read_to_string(&k).unwrap(), SignerRole::Outcome).unwrap();
        let log = AuditLog::new(dir.path().join("audit.jsonl"));
        HighSide {
            dir,
            key,
            public: p,
            log,
        }
    }

    /// Append a record to the high side's log and return it as the signed outcome file (name, bytes).
    fn record(&self, event: &str, fields: Value) -> (String, Vec<u8>) {
        self.log.append(event, fields).unwrap();
        let line = fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        self.sign(&line, &self.key)
    }

    fn sign(&self, line: &str, key: &SigningKey) -> (String, Vec<u8>) {
        let s = Outcome {
            receiver: "high-1".into(),
            record: line.to_string(),
        }
        .sign(key);
        // a record that does not match its hash has no name of its own: the forger picks one
        let name = s
            .file_name()
            .unwrap_or_else(|_| format!("{:032x}.outcome", line.len()));
        (name, s.to_json().into_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_from_the_high_side_show_on_the_message_and_forged_ones_are_quarantined_never_shown(
) {
    let pipeline = Pipeline::new();
    let high = HighSide::new();
    let site = reverse_site_trusting(&pipeline, Some(&high.public)).await;
    let signed = pipeline.request(RID, "prod", T0 - 30);
    site.arrive("", &signed.file_name(), signed.to_json().as_bytes());
    site.slack.wait_count("chat.postMessage", 1).await;
    site.click("U0ADA", "approve", RID).await;
    site.click("U0BOB", "approve", RID).await;
    site.slack.update_with("Approved").await;
    let env_id = site.envelopes()[0].envelope.id.clone();

    // what the high side did: accepted, consumed by a pipeline, the hook ran; each record comes back
    let accepted = high.record(
        "accept",
        json!({"id": env_id, "request_id": RID, "decision": "approve", "environment": "prod"}),
    );
    site.arrive("", &accepted.0, &accepted.1);
    let update = site.slack.update_with("Approval accepted on high-1").await;
    println!("after accept: {}", update.body["text"]);
    let consumed = high.record(
        "consume",
        json!({"id": env_id, "request_id": RID, "environment": "prod", "by": "ci-runner-3", "pid": 77}),
    );
    let hook = high.record(
        "hook",
        json!({"id": env_id, "attempt": 1, "ok": true, "detail": "exit 0"}),
    );
    site.arrive("", &consumed.0, &consumed.1);
    site.arrive("", &hook.0, &hook.1);
    let update = site
        .slack
        .update_with("Deploy hook succeeded on high-1")
        .await;
    let text = text_of(&update);
    for want in [
        "On the high side",
        "Approval accepted on high-1",
        &format!("by ci-runner-3 with approval {}…", &env_id[..8]),
        "Deployed to prod at ",
        "Deploy hook succeeded on high-1",
    ] {
        assert!(text.contains(want), "the message lacks {want:?}: {text}");
    }
    println!("message now: {}", update.body["text"]);
    site.until("the outcome files to leave the inbox", |s| {
        s.inbox_files() == 0
    })
    .await;
    // taken in the order they came (the reverse link may reorder): sorted here by the high side's seq
    let mut outcomes = site.events("outcome");
    outcomes.sort_by_key(|o| o["high_seq"].as_u64());
    assert_eq!(outcomes.len(), 3);
    assert_eq!(
        outcomes
            .iter()
            .map(|o| o["high_seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(outcomes[1]["request_id"], RID);
    assert_eq!(outcomes[1]["high_event"], "consume");

    // a pipeline asking how its request stands sees the outcome
    let r = site
        .http
        .get(site.url(&format!("/v1/requests/{RID}")))
        .bearer_auth(CI_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["state"], "deployed", "{v}");
    assert_eq!(v["outcome"]["hook"], "ok", "{v}");
    assert_eq!(v["outcome"]["events"].as_array().unwrap().len(), 3, "{v}");

    // the same record again (the reverse link repeats): taken once
    site.arrive("again", &consumed.0, &consumed.1);
    site.until("the repeat to leave the inbox", |s| s.inbox_files() == 0)
        .await;
    assert_eq!(site.events("outcome").len(), 3);

    // forged: a well-formed record signed by a key the low side does not trust; a record edited after
    // signing (its hash no longer matches); the receiver's name changed after signing (the signature
    // no longer matches); a second, different record 2 signed with the real key (a rewritten
    // high-side log); garbage
    let stranger = SigningKey::from_seed(&[9; 32]);
    let other = HighSide::new();
    other.record("accept", json!({"id": env_id, "decision": "approve"}));
    other.record(
        "consume",
        json!({"id": env_id, "request_id": RID, "environment": "prod", "by": "ci-runner-666"}),
    );
    let line2 = fs::read_to_string(other.log.path())
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let forged = (
        format!("{:032x}.outcome", 6),
        high.sign(&line2, &stranger).1,
    );
    let tampered = |from: &str, to: &str, n: u32| {
        let text = String::from_utf8(consumed.1.clone()).unwrap();
        assert!(text.contains(from));
        (
            format!("{n:032x}.outcome"),
            text.replace(from, to).into_bytes(),
        )
    };
    let edited = tampered("ci-runner-3", "ci-runner-666", 7);
    let renamed = tampered("\"high-1\"", "\"ci-runner-666\"", 8);
    let rewritten = high.sign(&line2, &high.key);
    let garbage = (format!("{:032x}.outcome", 9), b"{\"outcome\": 1}".to_vec());
    for (name, bytes) in [&forged, &edited, &renamed, &rewritten, &garbage] {
        site.arrive("", name, bytes);
    }
    site.until("the forged outcomes to be refused", |s| {
        s.events("outcome_refused").len() == 5
    })
    .await;
    let mut reasons: Vec<String> = site
        .events("outcome_refused")
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_signature",
            "conflicting_outcome",
            "malformed",
            "malformed",
            "unknown_key"
        ]
    );
    site.until("the forged files to leave the inbox", |s| {
        s.inbox_files() == 0
    })
    .await;
    let quarantined = site.names_in("state/reverse/quarantine");
    assert_eq!(quarantined.len(), 5, "{quarantined:?}");
    assert!(
        quarantined.contains(&format!("{}.unknown_key", forged.0)),
        "{quarantined:?}"
    );
    site.tick();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in site.slack.calls() {
        assert!(
            !c.body.to_string().contains("ci-runner-666"),
            "a forged outcome reached Slack: {}",
            c.body
        );
    }
    assert_eq!(site.events("outcome").len(), 3, "nothing forged was taken");

    // `audit verify` checks the records that came back: an intact copy passes
    let copies = diode_chat::returned::verify_copies(
        diode_host::audit::records(&site.dir.join("state/audit.jsonl")),
        &[VerifyingKey::from_text(
            &fs::read_to_string(&high.public).unwrap(),
            SignerRole::Outcome,
        )
        .unwrap()],
    )
    .unwrap();
    assert_eq!(copies.len(), 1);
    let c = &copies[0];
    assert_eq!(
        (
            c.receiver.as_str(),
            c.records,
            c.first,
            c.last,
            c.signatures_checked
        ),
        ("high-1", 3, 1, 3, 3)
    );
    assert!(c.gaps.is_empty());
    // and both logs tell the same story: the high side's records, byte for byte, are in ours
    let theirs = fs::read_to_string(high.log.path()).unwrap();
    let ours: Vec<String> = outcomes
        .iter()
        .map(|o| o["record"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(theirs.lines().collect::<Vec<_>>(), ours);
    assert!(high.dir.path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_teams_card_shows_the_deployment_when_its_outcome_comes_back() {
    let high = HighSide::new();
    let public = high.public.to_str().unwrap().to_string();
    let pipeline = Pipeline::new();
    let pipeline_pub = pipeline.public.to_str().unwrap().to_string();
    let (teams, site) = cards_site_with(move |cfg| {
        let mut r = example_reverse();
        r["pipeline_keys"] = toml::Value::Array(vec![pipeline_pub.into()]);
        r["outcome_keys"] = toml::Value::Array(vec![public.into()]);
        r["poll"] = "20ms".into();
        cfg.insert("reverse".into(), r.into());
    })
    .await;
    pipeline_request(&site).await;
    let activities = format!("/amer/v3/conversations/{PROD_CONVERSATION}/activities");
    let post = teams
        .wait("the card", |c| {
            c.iter()
                .find(|c| c.method == "POST" && c.path == activities)
                .cloned()
        })
        .await;
    let id = executes(&post.body["attachments"][0]["content"])[0]["data"]["request"]
        .as_str()
        .unwrap()
        .to_string();
    site.click("U0ADA", "approve", &id).await;
    site.click("U0BOB", "approve", &id).await;
    let has = |needle: &'static str| {
        move |c: &[TeamsCall]| {
            c.iter()
                .rev()
                .find(|c| c.method == "PUT" && c.body.to_string().contains(needle))
                .cloned()
        }
    };
    teams
        .wait("the card saying approved", has("Approved by"))
        .await;
    let env_id = site.envelopes()[0].envelope.id.clone();
    let consumed = high.record(
        "consume",
        json!({"id": env_id, "request_id": id, "environment": "prod", "by": "ci-runner-3"}),
    );
    site.arrive("", &consumed.0, &consumed.1);
    site.until("the outcome to be taken", |s| {
        !s.events("outcome").is_empty()
    })
    .await;
    let put = teams
        .wait("the card saying deployed", has("Deployed to prod"))
        .await;
    let text = put.body.to_string();
    assert!(
        text.contains("On the high side") && text.contains("by ci-runner-3"),
        "{text}"
    );
    assert!(executes(&put.body).is_empty(), "decided: no buttons");
    // the workflow's channel gets one more card: deployed
    let wf = teams
        .wait("the workflow's deployed card", |c| {
            c.iter()
                .find(|c| {
                    c.path.starts_with("/workflows/")
                        && c.body.to_string().contains("Deployed to prod")
                })
                .cloned()
        })
        .await;
    assert!(executes(&wf.body).is_empty());
    println!("card after the outcome: {}", &text[..text.len().min(400)]);
}
