//! The install kits of `packaging/slack` and `packaging/teams` against the code and the published
//! schemas: the Slack manifests grant exactly the OAuth scopes the Web API methods in `adapter/src` need
//! (a table from Slack's method reference, below) and point at the routes the adapter serves; the Teams
//! manifest, and the one inside the package `build-package.sh` makes, pass Microsoft's JSON schema
//! (vendored in `packaging/teams/schema/`, so this runs offline) and carry icons of the sizes Teams asks.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Which token a Web API method is called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// The bot token (xoxb-): its scopes are the manifest's `oauth_config.scopes.bot`.
    Bot,
    /// The app-level token (xapp-): its scopes are given when the token is made, not in a manifest.
    App,
}

/// Slack Web API methods and the scopes each needs, from each method's page in Slack's reference
/// (https://api.slack.com/methods/<method>, "Required scopes"). A method the adapter calls must be here.
const METHODS: &[(&str, Token, &[&str])] = &[
    ("chat.postMessage", Token::Bot, &["chat:write"]),
    ("chat.update", Token::Bot, &["chat:write"]),
    ("chat.postEphemeral", Token::Bot, &["chat:write"]),
    ("apps.connections.open", Token::App, &["connections:write"]),
    // no scope: a view is opened or published with the bot token alone
    ("views.open", Token::Bot, &[]),
    ("views.update", Token::Bot, &[]),
    ("views.publish", Token::Bot, &[]),
];

/// Method families of Slack's Web API: a string literal `<family>.<name>` in the adapter's code is
/// taken for a method call unless listed in NOT_METHODS.
const FAMILIES: &[&str] = &[
    "admin",
    "api",
    "apps",
    "assistant",
    "auth",
    "bookmarks",
    "bots",
    "calls",
    "canvases",
    "chat",
    "conversations",
    "dialog",
    "dnd",
    "emoji",
    "files",
    "functions",
    "migration",
    "oauth",
    "openid",
    "pins",
    "reactions",
    "reminders",
    "rtm",
    "search",
    "stars",
    "team",
    "usergroups",
    "users",
    "views",
    "workflows",
];

/// Literals of that shape in adapter/src that are not Web API methods.
const NOT_METHODS: &[&str] = &["chat.sqlite"];

/// Every Rust file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The contents of the string literals in `src` (no escapes or raw strings needed for method names).
fn literals(src: &str) -> Vec<&str> {
    src.split('"').skip(1).step_by(2).collect()
}

fn is_method_shaped(s: &str) -> bool {
    let mut parts = s.split('.');
    let family = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    FAMILIES.contains(&family)
        && !rest.is_empty()
        && rest.len() <= 2
        && rest.iter().all(|p| {
            p.starts_with(|c: char| c.is_ascii_lowercase())
                && p.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

/// The Slack Web API methods named in the adapter's code.
fn methods_in_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("adapter/src"), &mut files);
    let mut found = BTreeSet::new();
    for f in files {
        let src = fs::read_to_string(&f).unwrap();
        for lit in literals(&src) {
            if is_method_shaped(lit) && !NOT_METHODS.contains(&lit) {
                found.insert(lit.to_string());
            }
        }
    }
    found
}

/// The routes the adapter serves (`.route("<path>", ...)` in server.rs).
fn routes() -> BTreeSet<String> {
    let src = fs::read_to_string(root().join("adapter/src/server.rs")).unwrap();
    src.split(".route(\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect()
}

fn slack_manifest_text(name: &str) -> String {
    fs::read_to_string(root().join("packaging/slack").join(name)).unwrap()
}

fn strings(y: &Yaml) -> BTreeSet<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The path of an https URL in a manifest.
fn url_path(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url} is not https"))?;
    Ok(format!(
        "/{}",
        rest.split_once('/').map(|(_, p)| p).unwrap_or("")
    ))
}

/// `Err(message)` unless `cond`.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// What one Slack manifest (`text`, named `name`) grants and declares, checked against the code that
/// calls `used`.
fn check_slack_manifest(
    name: &str,
    text: &str,
    socket_mode: bool,
    used: &BTreeSet<String>,
) -> Result<Yaml, String> {
    let mut docs =
        YamlLoader::load_from_str(text).map_err(|e| format!("{name} is not YAML: {e}"))?;
    check!(docs.len() == 1, "{name}: one YAML document");
    let m = docs.remove(0);
    let granted = strings(&m["oauth_config"]["scopes"]["bot"]);
    let commands = m["features"]["slash_commands"]
        .as_vec()
        .cloned()
        .unwrap_or_default();
    // every bot-token method the code calls needs only scopes granted here
    let mut needed = BTreeSet::new();
    for method in used {
        let Some((_, token, scopes)) = METHODS.iter().find(|(m, ..)| m == method) else {
            return Err(format!(
                "the adapter calls Slack's {method}, which tests/tests/packaging.rs does not know: \
                 add it to METHODS with the scopes Slack's reference gives, and to the manifests"
            ));
        };
        if *token == Token::Bot {
            for s in *scopes {
                check!(
                    granted.contains(*s),
                    "{name}: {method} needs {s}, which the manifest does not grant ({granted:?})"
                );
                needed.insert(s.to_string());
            }
        }
    }
    // and nothing more: a slash command needs `commands`, the rest comes from the methods
    if !commands.is_empty() {
        needed.insert("commands".into());
    }
    check!(
        granted == needed,
        "{name}: the bot scopes must be exactly those the adapter needs: {granted:?} granted, {needed:?} needed"
    );
    check!(
        m["oauth_config"]["scopes"]["user"].is_badvalue(),
        "{name}: the adapter never acts as a user"
    );

    // the /deploy command and the buttons, over HTTP or over the socket
    check!(commands.len() == 1, "{name}: one slash command");
    check!(
        commands[0]["command"].as_str() == Some("/deploy"),
        "{name}: the command is /deploy"
    );
    check!(
        m["settings"]["interactivity"]["is_enabled"].as_bool() == Some(true),
        "{name}: interactivity (the buttons) is enabled"
    );
    check!(
        m["settings"]["socket_mode_enabled"].as_bool() == Some(socket_mode),
        "{name}: socket_mode_enabled is {socket_mode}"
    );
    check!(
        m["settings"]["token_rotation_enabled"].as_bool() == Some(false),
        "{name}: token rotation is off (the adapter does not refresh its bot token)"
    );
    let served = routes();
    for (what, url) in [
        ("slash command", &commands[0]["url"]),
        (
            "interactivity",
            &m["settings"]["interactivity"]["request_url"],
        ),
    ] {
        match (socket_mode, url.as_str()) {
            (true, None) => {}
            (true, Some(u)) => {
                return Err(format!(
                    "{name}: a {what} URL ({u}) in the Socket Mode manifest"
                ))
            }
            (false, None) => return Err(format!("{name}: no {what} URL")),
            (false, Some(u)) => {
                let p = url_path(u)?;
                check!(
                    served.contains(&p),
                    "{name}: the {what} URL {u} is not a route the adapter serves ({served:?})"
                );
            }
        }
    }
    // declared only when the code handles them
    let src = all_adapter_source();
    check!(
        m["features"]["shortcuts"].is_badvalue() != src.contains("\"shortcut\""),
        "{name}: shortcuts must be declared exactly when the adapter handles them"
    );
    check!(
        (m["features"]["app_home"]["home_tab_enabled"].as_bool() == Some(true))
            == used.contains("views.publish"),
        "{name}: the App Home tab must be enabled exactly when the adapter publishes it"
    );
    // bot events: exactly those the adapter's Slack code handles, and over HTTP to a route it serves
    let mut slack_files = Vec::new();
    rust_files(&root().join("adapter/src/slack"), &mut slack_files);
    let slack_src: String = slack_files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .collect();
    let handled: Vec<String> = [
        "app_home_opened",
        "app_mention",
        "message",
        "member_joined_channel",
    ]
    .into_iter()
    .filter(|e| slack_src.contains(&format!("\"{e}\"")))
    .map(String::from)
    .collect();
    let subs = &m["settings"]["event_subscriptions"];
    let declared: Vec<String> = subs["bot_events"]
        .as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    check!(
        declared == handled,
        "{name}: the bot events must be exactly those the adapter handles ({handled:?}), not {declared:?}"
    );
    if !handled.is_empty() {
        match (socket_mode, subs["request_url"].as_str()) {
            (true, None) => {}
            (true, Some(u)) => {
                return Err(format!(
                    "{name}: an events URL ({u}) in the Socket Mode manifest"
                ))
            }
            (false, None) => return Err(format!("{name}: no events URL")),
            (false, Some(u)) => {
                let p = url_path(u)?;
                check!(
                    served.contains(&p),
                    "{name}: the events URL {u} is not a route the adapter serves ({served:?})"
                );
            }
        }
    }
    Ok(m)
}

fn all_adapter_source() -> String {
    let mut files = Vec::new();
    rust_files(&root().join("adapter/src"), &mut files);
    files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .collect()
}

#[test]
fn slack_manifests_grant_exactly_the_scopes_the_code_uses() {
    let used = methods_in_code();
    // the scanner finds the calls (a scanner that found none would prove nothing)
    assert!(used.contains("chat.postMessage"), "{used:?}");
    println!("Slack methods in adapter/src: {used:?}");
    let check = |name: &str, socket| {
        check_slack_manifest(name, &slack_manifest_text(name), socket, &used)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let http = check("manifest.yaml", false);
    let socket = check("manifest-socket-mode.yaml", true);
    assert_eq!(
        http["oauth_config"], socket["oauth_config"],
        "both variants grant the same"
    );
    assert_eq!(
        http["features"]["slash_commands"][0]["usage_hint"],
        socket["features"]["slash_commands"][0]["usage_hint"]
    );
    // the app-level token's scope cannot be in a manifest: the install guide must name it
    let guide = fs::read_to_string(root().join("docs/install-slack.md")).unwrap();
    for method in &used {
        if let Some((_, Token::App, scopes)) = METHODS.iter().find(|(m, ..)| m == method) {
            for s in *scopes {
                assert!(
                    guide.contains(s),
                    "docs/install-slack.md must say the app-level token needs {s} ({method})"
                );
            }
        }
    }
}

#[test]
fn the_slack_check_refuses_a_manifest_that_asks_too_little_too_much_or_elsewhere() {
    let used = methods_in_code();
    let text = slack_manifest_text("manifest.yaml");
    for (label, edited, expect) in [
        (
            "missing",
            text.replacen("      - chat:write\n", "", 1),
            "needs chat:write",
        ),
        (
            "extra",
            text.replacen(
                "      - commands\n",
                "      - commands\n      - channels:history\n",
                1,
            ),
            "exactly those the adapter needs",
        ),
        (
            "wrong route",
            text.replacen(
                "example.org/slack/interactions",
                "example.org/slack/actions",
                1,
            ),
            "not a route the adapter serves",
        ),
        (
            "events",
            text.replacen("- app_home_opened", "- app_mention", 1),
            "bot events must be exactly",
        ),
    ] {
        assert_ne!(edited, text, "{label}: the edit applied");
        let e = check_slack_manifest("edited", &edited, false, &used)
            .err()
            .unwrap_or_else(|| panic!("{label}: the edited manifest passed"));
        assert!(e.contains(expect), "{label}: {e}");
    }
    // a method the table does not know is refused too
    let mut more = used.clone();
    more.insert("reactions.add".into());
    let e = check_slack_manifest("manifest.yaml", &text, false, &more).unwrap_err();
    assert!(e.contains("reactions.add"), "{e}");
}

fn teams_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_slice(
        &fs::read(root().join("packaging/teams/schema/MicrosoftTeams.schema.json")).unwrap(),
    )
    .unwrap();
    jsonschema::draft4::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the vendored schema compiles")
}

fn schema_errors(v: &jsonschema::Validator, m: &Value) -> Vec<String> {
    v.iter_errors(m).map(|e| e.to_string()).collect()
}

/// Width, height and colour type of a PNG (its IHDR chunk, which the format puts first).
fn png_header(bytes: &[u8]) -> (u32, u32, u8) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20), bytes[25])
}

fn check_icons(color: &[u8], outline: &[u8]) {
    let (w, h, _) = png_header(color);
    assert_eq!((w, h), (192, 192), "the color icon is 192x192");
    let (w, h, kind) = png_header(outline);
    assert_eq!((w, h), (32, 32), "the outline icon is 32x32");
    assert_eq!(kind, 6, "the outline icon has an alpha channel (RGBA)");
}

#[test]
fn teams_manifest_passes_the_published_schema_and_its_package_builds() {
    let dir = root().join("packaging/teams");
    let v = teams_validator();
    let manifest: Value = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap())
        .expect("manifest.json is JSON");
    assert_eq!(schema_errors(&v, &manifest), Vec::<String>::new());
    // the schema named in the manifest is the one vendored
    let version = manifest["manifestVersion"].as_str().unwrap();
    assert!(manifest["$schema"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/v{version}/MicrosoftTeams.schema.json")));
    // the validator refuses what Teams refuses (a validator that passes everything would prove nothing)
    let mut bad = manifest.clone();
    bad["bots"][0]["botId"] = "not-a-guid".into();
    assert!(
        !schema_errors(&v, &bad).is_empty(),
        "a bot id that is no GUID"
    );
    let mut bad = manifest.clone();
    bad.as_object_mut().unwrap().remove("icons");
    assert!(!schema_errors(&v, &bad).is_empty(), "no icons");
    // cards go to channels (teams_conversation): the bot is installed in teams
    let scopes = &manifest["bots"][0]["scopes"];
    assert!(
        scopes.as_array().unwrap().contains(&"team".into()),
        "{scopes}"
    );
    // only what the adapter implements: a bot that takes card clicks (teams_bot.rs), no typed bot
    // commands (requests are typed to the outgoing webhook, which is no part of a package), no tabs or
    // message extensions, no permissions on the user's data
    assert!(manifest["bots"][0].get("commandLists").is_none());
    for k in [
        "staticTabs",
        "configurableTabs",
        "composeExtensions",
        "permissions",
        "webApplicationInfo",
    ] {
        assert!(manifest.get(k).is_none(), "{k} in manifest.json");
    }
    let icon = |k: &str| fs::read(dir.join(manifest["icons"][k].as_str().unwrap())).unwrap();
    check_icons(&icon("color"), &icon("outline"));

    // the package, with an admin's ids
    let tmp = tempfile::tempdir().unwrap();
    let zip = tmp.path().join("diode-chat-teams.zip");
    let bot = "3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    let out = Command::new("bash")
        .arg(dir.join("build-package.sh"))
        .args(["--bot-id", bot, "--developer-name", "Example Ops"])
        .args([
            "--website",
            "https://ops.example.net/deploy",
            "--version",
            "1.2.3",
        ])
        .arg("--out")
        .arg(&zip)
        .output()
        .expect("bash runs build-package.sh");
    assert!(
        out.status.success(),
        "build-package.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new("unzip").arg("-Z1").arg(&zip).output().unwrap();
    let mut names: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(names, ["color.png", "manifest.json", "outline.png"]);
    let member = |n: &str| {
        let o = Command::new("unzip")
            .arg("-p")
            .arg(&zip)
            .arg(n)
            .output()
            .unwrap();
        assert!(o.status.success());
        o.stdout
    };
    let built: Value = serde_json::from_slice(&member("manifest.json")).unwrap();
    assert_eq!(schema_errors(&v, &built), Vec::<String>::new());
    assert_eq!(built["id"], bot);
    assert_eq!(built["bots"][0]["botId"], bot);
    assert_eq!(built["version"], "1.2.3");
    assert_eq!(built["developer"]["name"], "Example Ops");
    assert_eq!(
        built["developer"]["privacyUrl"],
        "https://ops.example.net/deploy"
    );
    assert_eq!(member("color.png"), icon("color"));
    check_icons(&member("color.png"), &member("outline.png"));

    // a bot id that is not a GUID is refused before anything is written
    let refused = tmp.path().join("refused.zip");
    let out = Command::new("bash")
        .arg(dir.join("build-package.sh"))
        .args(["--bot-id", "my-bot", "--out"])
        .arg(&refused)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GUID"));
    assert!(!refused.exists());
}
