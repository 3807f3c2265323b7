//! Asking from a form in Slack (issue 16, point 2): the real `diode-chat serve` against a local server
//! that speaks Slack's Web API. `/deploy` with no arguments and the global shortcut open a modal through
//! `views.open` with the trigger_id Slack gave, listing only the environments the person may request in;
//! a submission with a bad digest or missing fields is answered with `response_action: errors` naming
//! each field (the modal stays open with what was typed); one the policy refuses names why; a good one
//! is posted for approval like a typed request. Someone outside the policy gets no form. The form's
//! reason is required and bounded (none, or one too long, is refused beside it alone); a good one
//! reaches the message (escaped for mrkdwn), the App Home, `GET /v1/requests/{id}` and the audit record.

use diode_tests::chat::{
    adapter_config, api_get, click, form, request_id_of, slack_post_answer, start_chat, trigger_id,
    FakeSlack, DIGEST, PIPELINE_TOKEN,
};
use diode_tests::Site;
use serde_json::{json, Value};
use std::fs;

fn command(user: &str, text: &str, trigger: &str) -> String {
    form(&[
        ("user_id", user),
        ("user_name", &user.to_lowercase()),
        ("channel_id", "C0DEV"),
        ("command", "/deploy"),
        ("text", text),
        ("trigger_id", trigger),
    ])
}

fn submission(
    user: &str,
    env: &str,
    app: &str,
    version: &str,
    digest: &str,
    reason: &str,
) -> String {
    let text = |v: &str| json!({"type": "plain_text_input", "value": v});
    let payload = json!({
        "type": "view_submission",
        "trigger_id": trigger_id(),
        "user": {"id": user, "username": user.to_lowercase()},
        "view": {
            "id": "V0FORM",
            "callback_id": "deploy_request",
            "state": {"values": {
                "environment": {"value": {"type": "static_select", "selected_option": {"value": env}}},
                "app": {"value": text(app)},
                "version": {"value": text(version)},
                "digest": {"value": text(digest)},
                "reason": {"value": text(reason)},
            }}
        }
    });
    form(&[("payload", &payload.to_string())])
}

fn options(view_open: &Value) -> Vec<String> {
    view_open["view"]["blocks"][0]["element"]["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_request_form_opens_refuses_in_place_and_posts_a_good_request() {
    let site = Site::new(&[]);
    let (slack, api) = FakeSlack::start();
    let cfg = adapter_config(site.dir.path(), &site.outbox(), &api);
    fs::write(site.path("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let (_chat, addr) = start_chat(&site);

    // /deploy alone: the form, with Dan's environments (a developer requests in prod and staging)
    let t = trigger_id();
    let (code, answer) = slack_post_answer(&addr, "/slack/commands", &command("U0DAN", "", &t));
    assert_eq!(code, 200);
    assert_eq!(answer["response_type"], "ephemeral", "{answer}");
    let opened = slack.wait("views.open", 1).remove(0);
    assert_eq!(
        opened["trigger_id"],
        t.as_str(),
        "the trigger_id Slack gave"
    );
    assert_eq!(opened["view"]["callback_id"], "deploy_request");
    assert_eq!(options(&opened), ["prod", "staging"]);
    // the reason: a multiline text the form requires (not `optional`), bounded
    let reason_block = &opened["view"]["blocks"][4];
    assert_eq!(reason_block["block_id"], "reason", "{opened}");
    assert_eq!(reason_block["element"]["multiline"], true);
    assert_eq!(reason_block["element"]["max_length"], 500);
    assert!(reason_block.get("optional").is_none());

    // Eve (on-call) may request only where no requester role is set: staging
    let (code, _) = slack_post_answer(
        &addr,
        "/slack/commands",
        &command("U0EVE", "", &trigger_id()),
    );
    assert_eq!(code, 200);
    assert_eq!(options(&slack.wait("views.open", 2)[1]), ["staging"]);

    // someone outside the policy: told so, no form
    let (_, answer) = slack_post_answer(
        &addr,
        "/slack/commands",
        &command("U0ZED", "", &trigger_id()),
    );
    assert!(
        answer["text"].as_str().unwrap().contains("may not request"),
        "{answer}"
    );

    // the global shortcut opens the same form
    let shortcut = json!({"type": "shortcut", "callback_id": "deploy_request", "trigger_id": trigger_id(),
        "user": {"id": "U0DAN", "username": "dan"}});
    let (code, _) = slack_post_answer(
        &addr,
        "/slack/interactions",
        &form(&[("payload", &shortcut.to_string())]),
    );
    assert_eq!(code, 200);
    let after_shortcut = slack.wait("views.open", 3);
    assert_eq!(after_shortcut.len(), 3, "the stranger got no form");

    // a bad digest and no version: errors beside those fields, nothing posted
    let (code, answer) = slack_post_answer(
        &addr,
        "/slack/interactions",
        &submission("U0DAN", "prod", "billing", "", "sha256:abc", "CHG-1"),
    );
    assert_eq!(code, 200);
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert!(
        answer["errors"]["digest"]
            .as_str()
            .unwrap()
            .contains("64 lowercase hex"),
        "{answer}"
    );
    assert!(answer["errors"]["version"].is_string(), "{answer}");
    assert!(
        answer["errors"].get("app").is_none() && answer["errors"].get("reason").is_none(),
        "the app and the reason were fine: {answer}"
    );

    // no reason, then one too long: refused beside the reason alone; an `errors` answer leaves the
    // modal open with everything typed in it (no view is sent back to replace it)
    for (reason, says) in [
        (" \u{200b} ", "Say why"),
        (&*"x".repeat(501), "501 characters"),
    ] {
        let (code, answer) = slack_post_answer(
            &addr,
            "/slack/interactions",
            &submission("U0DAN", "prod", "billing", "1.4.2", DIGEST, reason),
        );
        assert_eq!(code, 200);
        assert_eq!(answer["response_action"], "errors", "{answer}");
        let errors = answer["errors"].as_object().unwrap();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["reason"], "{answer}");
        assert!(
            errors["reason"].as_str().unwrap().contains(says),
            "{answer}"
        );
        assert!(answer.get("view").is_none(), "{answer}");
        println!("reason {:?}...: {answer}", &reason[..reason.len().min(8)]);
    }

    // Eve asks for prod through a crafted submission: the policy refuses, beside the environment
    let (_, answer) = slack_post_answer(
        &addr,
        "/slack/interactions",
        &submission("U0EVE", "prod", "billing", "1.4.2", DIGEST, "CHG-2"),
    );
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert!(
        answer["errors"]["environment"]
            .as_str()
            .unwrap()
            .contains("Refused"),
        "{answer}"
    );
    assert!(
        slack.calls("chat.postMessage").is_empty(),
        "nothing posted for refused forms"
    );

    // a good one: the modal closes (an empty answer) and the request is posted for approval
    // (its reason mentions the channel: escaped, so that Slack does not notify it)
    let (code, answer) = slack_post_answer(
        &addr,
        "/slack/interactions",
        &submission(
            "U0DAN",
            "prod",
            "billing",
            "1.4.2",
            DIGEST,
            "CHG-4711 <!channel> quarterly fix\u{202e}",
        ),
    );
    assert_eq!((code, answer), (200, Value::Null));
    let post = slack.wait("chat.postMessage", 1).remove(0);
    assert_eq!(post["channel"], "C0PROD");
    assert!(post.to_string().contains("billing"), "{post}");
    assert!(
        !request_id_of(&post).is_empty(),
        "Approve and Reject buttons for it"
    );
    let shown = "CHG-4711 &lt;!channel&gt; quarterly fix";
    assert!(
        post.to_string().contains(&format!("*Reason*\\n{shown}")),
        "{post}"
    );
    assert!(!post.to_string().contains("<!channel>"), "{post}");
    // stored as typed (less the bidi override), told to a pipeline that asks, and audited
    let (code, asked) = api_get(
        &addr,
        &format!("/v1/requests/{}", request_id_of(&post)),
        Some(PIPELINE_TOKEN),
    );
    assert_eq!(code, 200, "{asked}");
    assert_eq!(
        asked["reason"], "CHG-4711 <!channel> quarterly fix",
        "{asked}"
    );
    println!(
        "GET /v1/requests/{}: reason {}",
        asked["request_id"], asked["reason"]
    );
    let audit = fs::read_to_string(site.path("state/audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"event\":\"request\"")
            && l.contains("\"reason\":\"CHG-4711 <!channel> quarterly fix\"")),
        "{audit}"
    );

    // App Home: Slack checks the events URL, then Ada (a release manager) opens her Home: the request
    // waits for her vote, with its buttons
    let check = json!({"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"});
    let (code, answer) = slack_post_answer(&addr, "/slack/events", &check.to_string());
    assert_eq!(
        (code, answer["challenge"].clone()),
        (200, check["challenge"].clone())
    );
    let id = request_id_of(&post);
    let opened = |event_id: &str, user: &str| {
        json!({"type": "event_callback", "event_id": event_id, "event_time": 1,
            "event": {"type": "app_home_opened", "user": user, "tab": "home"}})
        .to_string()
    };
    let homes = |user: &str| -> Vec<Value> {
        slack
            .calls("views.publish")
            .into_iter()
            .filter(|c| c["user_id"] == user)
            .collect()
    };
    assert_eq!(
        slack_post_answer(&addr, "/slack/events", &opened("Ev01ADA", "U0ADA")).0,
        200
    );
    // (her Home was published once when the request was made: it waits for her; once more now)
    let home = diode_tests::wait_for("Ada's Home", std::time::Duration::from_secs(20), || {
        let mut h = homes("U0ADA");
        (h.len() >= 2).then(|| h.pop()).flatten()
    });
    assert_eq!(home["view"]["type"], "home");
    let text = home.to_string();
    assert!(
        text.contains("Waiting for your vote (1)") && text.contains(&id),
        "{text}"
    );
    assert!(text.contains(&format!("_Reason:_ {shown}")), "{text}");
    let before = homes("U0ADA").len();
    // the same event again (Slack retries): taken once
    assert_eq!(
        slack_post_answer(&addr, "/slack/events", &opened("Ev01ADA", "U0ADA")).0,
        200
    );

    // Ada approves: the Homes of those concerned are published again; hers waits for nothing now and
    // Dan's shows his request with one approval of two
    click(&addr, "U0ADA", "approve", &id);
    let ada = diode_tests::wait_for(
        "Ada's Home after her vote",
        std::time::Duration::from_secs(20),
        || {
            homes("U0ADA")
                .into_iter()
                .find(|h| h.to_string().contains("Waiting for your vote (0)"))
        },
    );
    assert!(
        !ada.to_string().contains(&format!("\"value\":\"{id}\"")),
        "no buttons left for her"
    );
    let dan = diode_tests::wait_for(
        "Dan's Home after the vote",
        std::time::Duration::from_secs(20),
        || {
            homes("U0DAN")
                .into_iter()
                .find(|h| h.to_string().contains("approvals 1 of 2"))
        },
    );
    assert!(dan.to_string().contains("Your open requests (1)"), "{dan}");
    assert_eq!(
        homes("U0ADA").len(),
        before + 1,
        "the vote published her Home once more, the repeated event did not"
    );

    // the typed form still works, with and without a reason after the digest
    let text = format!("request billing 1.4.3 staging {DIGEST}");
    let (code, _) = slack_post_answer(
        &addr,
        "/slack/commands",
        &command("U0DAN", &text, &trigger_id()),
    );
    assert_eq!(code, 200);
    let typed = slack.wait("chat.postMessage", 2).remove(1);
    assert!(!typed.to_string().contains("*Reason*"), "{typed}");
    let text = format!("request billing 1.4.4 staging {DIGEST} hotfix for  INC-42");
    let (code, _) = slack_post_answer(
        &addr,
        "/slack/commands",
        &command("U0DAN", &text, &trigger_id()),
    );
    assert_eq!(code, 200);
    let typed = slack.wait("chat.postMessage", 3).remove(2);
    assert!(
        typed.to_string().contains("*Reason*\\nhotfix for INC-42"),
        "{typed}"
    );
}
