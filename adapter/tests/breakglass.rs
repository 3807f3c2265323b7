//! The real `diode-chat` binary on a real folder built from `adapter.example.toml`: keygen, break-glass
//! signing into an outbox, refusals that leave nothing behind, and the audit log.

use diode_proto::envelope::{self, Rule, SignedEnvelope, SignerRole, SigningKey, VerifyingKey};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn chat(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diode-chat"))
        .current_dir(dir)
        .args(args)
        .env("USER", "tester")
        .env_remove("SUDO_USER")
        .output()
        .expect("run diode-chat")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A low side as the example config describes it: keys/, outbox/, and the config beside them.
struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Site {
    fn new() -> Site {
        Site::with_config(|c| c)
    }

    fn with_config(edit: impl FnOnce(String) -> String) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let example =
            fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/adapter.example.toml"))
                .unwrap();
        fs::write(dir.join("adapter.toml"), edit(example)).unwrap();
        fs::create_dir(dir.join("outbox")).unwrap();
        let o = chat(&dir, &["keygen", "--dir", "keys"]);
        assert!(o.status.success(), "{}", err(&o));
        Site { _tmp: tmp, dir }
    }

    /// `diode-chat sign` with a valid set of flags; a flag in `extra` replaces the default one.
    fn sign(&self, extra: &[&str]) -> Output {
        let defaults: &[(&str, &str)] = &[
            ("--artifact", "billing"),
            ("--version", "1.4.2"),
            ("--digest", DIGEST),
            ("--env", "prod"),
            ("--requester", "u9"),
            ("--reason", "Slack outage INC-42"),
            ("--approver", "u1:Ada Lovelace:release-manager"),
            ("--approver", "u2:Bob:security"),
        ];
        let mut args = vec!["sign", "--config", "adapter.toml"];
        for (flag, value) in defaults {
            if !extra.contains(flag) {
                args.extend([*flag, *value]);
            }
        }
        args.extend(extra);
        chat(&self.dir, &args)
    }

    /// Every entry of the outbox, hidden ones included, but the folder of shipped audit segments.
    fn outbox(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir.join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "audit")
            .collect();
        v.sort();
        v
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.dir.join("state/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn public(&self) -> VerifyingKey {
        let t = fs::read_to_string(self.dir.join("keys/adapter.pub")).unwrap();
        VerifyingKey::from_text(&t, SignerRole::Adapter).unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn prod_rule() -> BTreeMap<String, Rule> {
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

/// The envelope id printed on the `envelope <id>` line.
fn printed_id(o: &Output) -> String {
    out(o)
        .lines()
        .find_map(|l| l.strip_prefix("envelope "))
        .expect("an envelope line")
        .to_string()
}

#[test]
fn keygen_writes_a_private_key_and_a_one_line_public_key_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let o = chat(tmp.path(), &["keygen", "--dir", "k"]);
    assert!(o.status.success(), "{}", err(&o));
    let key = tmp.path().join("k/adapter.key");
    let public = tmp.path().join("k/adapter.pub");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public_mode = fs::metadata(&public).unwrap().permissions().mode();
    assert!(
        public_mode & 0o400 != 0 && public_mode & 0o022 == 0,
        "{public_mode:o}"
    );
    let line = fs::read_to_string(&public).unwrap();
    assert_eq!(line.lines().count(), 1);
    assert!(line
        .trim_end()
        .chars()
        .all(|c| c.is_ascii_graphic() || c == ' '));
    VerifyingKey::from_text(&line, SignerRole::Adapter).unwrap();
    // the public line is printed, with where it must go
    assert!(out(&o).contains(line.trim_end()), "{}", out(&o));
    assert!(out(&o).contains("recv.toml"), "{}", out(&o));

    let before = fs::read(&key).unwrap();
    let o = chat(tmp.path(), &["keygen", "--dir", "k"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("already exists"), "{}", err(&o));
    assert_eq!(fs::read(&key).unwrap(), before);
}

#[test]
fn keygen_pipeline_writes_a_pipeline_key_pair_beside_the_adapter_one() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(chat(tmp.path(), &["keygen", "--dir", "k"]).status.success());
    let o = chat(tmp.path(), &["keygen", "--pipeline", "--dir", "k"]);
    assert!(o.status.success(), "{}", err(&o));
    println!("{}", out(&o));
    let key = tmp.path().join("k/pipeline.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // as `diode-send request` loads it; a pipeline key is never an adapter key
    let text = fs::read_to_string(&key).unwrap();
    let sk = SigningKey::from_text(&text, SignerRole::Pipeline).unwrap();
    assert!(SigningKey::from_text(&text, SignerRole::Adapter).is_err());
    let public = fs::read_to_string(tmp.path().join("k/pipeline.pub")).unwrap();
    assert_eq!(
        VerifyingKey::from_text(&public, SignerRole::Pipeline)
            .unwrap()
            .id_hex(),
        sk.public().id_hex()
    );
    assert!(out(&o).contains("pipeline_keys"), "{}", out(&o));
    let again = chat(tmp.path(), &["keygen", "--pipeline", "--dir", "k"]);
    assert!(err(&again).contains("already exists"), "{}", err(&again));
    assert_eq!(fs::read_to_string(&key).unwrap(), text);
}

#[test]
fn sign_writes_exactly_one_envelope_that_the_high_side_accepts() {
    let site = Site::new();
    let o = site.sign(&["--request-id", "CHG-1001"]);
    assert!(o.status.success(), "{}", err(&o));
    let id = printed_id(&o);
    let name = format!("{id}.envelope");
    assert_eq!(
        site.outbox(),
        vec![name.clone()],
        "one file, no temporaries"
    );
    let path = site.dir.join("outbox").join(&name);
    assert!(out(&o).contains(&path.display().to_string()), "{}", out(&o));
    // its audit record follows it across the diode: one segment holding record 1, the emit
    let segs: Vec<String> = fs::read_dir(site.dir.join("outbox/audit"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(segs, vec!["diode-chat-0000000001-0000000001.jsonl"]);
    let seg = fs::read_to_string(site.dir.join("outbox/audit").join(&segs[0])).unwrap();
    assert!(
        seg.contains("\"event\":\"emit\"") && seg.contains(&id),
        "{seg}"
    );

    let signed = SignedEnvelope::parse(&fs::read(&path).unwrap()).unwrap();
    envelope::verify(&signed, &[site.public()], &prod_rule(), now(), 60).unwrap();
    let e = &signed.envelope;
    assert_eq!(e.id, id);
    assert!(envelope::is_hex_id(&e.id, 32));
    assert_eq!(e.request_id, "CHG-1001");
    assert_eq!(e.artifact.digest, DIGEST);
    assert_eq!(
        (e.artifact.name.as_str(), e.artifact.version.as_str()),
        ("billing", "1.4.2")
    );
    assert_eq!(e.rule, "break-glass: Slack outage INC-42");
    assert_eq!(
        e.expires_at - e.issued_at,
        3600,
        "default_validity of the example"
    );
    assert_eq!(e.approvers.len(), 2);
    assert_eq!(e.approvers[0].name, "Ada Lovelace");
    assert!(e.approvers.iter().all(|a| a.source == "cli"));
    // a key the high side does not trust is refused there
    let stranger = tempfile::tempdir().unwrap();
    assert!(chat(stranger.path(), &["keygen", "--dir", "."])
        .status
        .success());
    let other = VerifyingKey::from_text(
        &fs::read_to_string(stranger.path().join("adapter.pub")).unwrap(),
        SignerRole::Adapter,
    )
    .unwrap();
    assert_eq!(
        envelope::verify(&signed, &[other], &prod_rule(), now(), 60)
            .unwrap_err()
            .code(),
        "unknown_key"
    );
}

#[test]
fn valid_flag_request_id_and_reject() {
    let site = Site::new();
    let o = site.sign(&["--valid", "30m", "--reject"]);
    assert!(o.status.success(), "{}", err(&o));
    let id = printed_id(&o);
    let signed =
        SignedEnvelope::parse(&fs::read(site.dir.join(format!("outbox/{id}.envelope"))).unwrap())
            .unwrap();
    let e = &signed.envelope;
    assert_eq!(e.expires_at - e.issued_at, 1800);
    assert_eq!(e.decision, envelope::Decision::Reject);
    assert!(!e.request_id.is_empty(), "a request id is generated");
    envelope::verify(&signed, &[site.public()], &prod_rule(), now(), 60).unwrap();

    let o = site.sign(&["--valid", "soon"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("--valid"), "{}", err(&o));
    assert_eq!(site.outbox().len(), 1);
}

#[test]
fn refusals_are_clear_and_leave_nothing_behind() {
    let site = Site::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--approver",
                "u9:Mallory:release-manager",
                "--approver",
                "u2:Bob:security",
            ],
            "own request",
        ),
        (&["--digest", "sha256:1234"], "--digest"),
        (&["--digest", &DIGEST.to_uppercase()], "--digest"),
        (&["--digest", &DIGEST[7..]], "--digest"),
        (
            &[
                "--approver",
                "u1:Ada:release-manager",
                "--approver",
                "u1:Ada:security",
            ],
            "named twice",
        ),
        (&["--approver", "u1-Ada-release-manager"], "id:name:role"),
        (&["--env", "pro\u{7}d"], "environment"),
    ];
    for (args, why) in cases {
        let o = site.sign(args);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err(&o).contains(why), "{args:?}: {}", err(&o));
        assert!(
            site.outbox().is_empty(),
            "{args:?} left {:?}",
            site.outbox()
        );
        assert!(
            site.audit_lines().is_empty(),
            "{args:?} was audited as emitted"
        );
    }
}

#[test]
fn a_key_others_can_read_or_a_missing_outbox_is_refused() {
    let site = Site::new();
    let key = site.dir.join("keys/adapter.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let o = site.sign(&[]);
    assert!(!o.status.success());
    assert!(err(&o).contains("chmod 600"), "{}", err(&o));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    fs::remove_dir(site.dir.join("outbox")).unwrap();
    let o = site.sign(&[]);
    assert!(!o.status.success());
    assert!(err(&o).contains("outbox"), "{}", err(&o));
    assert!(site.audit_lines().is_empty());
}

#[test]
fn when_the_audit_log_cannot_be_written_nothing_is_emitted() {
    let site = Site::with_config(|c| c.replace("\"state/audit.jsonl\"", "\"blocked/audit.jsonl\""));
    fs::write(
        site.dir.join("blocked"),
        "a file where the audit folder should be",
    )
    .unwrap();
    let o = site.sign(&[]);
    assert!(!o.status.success());
    assert!(err(&o).contains("nothing was emitted"), "{}", err(&o));
    assert!(site.outbox().is_empty(), "{:?}", site.outbox());
}

#[test]
fn audit_log_has_one_record_per_envelope_and_verify_names_an_edited_record() {
    let site = Site::new();
    let verify = || chat(&site.dir, &["audit", "verify", "--config", "adapter.toml"]);
    let o = verify();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "ok: 0 records");

    let mut ids = Vec::new();
    for extra in [&[][..], &["--reject"][..], &["--request-id", "CHG-7"][..]] {
        let o = site.sign(extra);
        assert!(o.status.success(), "{}", err(&o));
        ids.push(printed_id(&o));
    }
    let records = site.audit_lines();
    assert_eq!(records.len(), 3);
    for (r, id) in records.iter().zip(&ids) {
        assert_eq!(r["event"], "emit");
        assert_eq!(r["id"], id.as_str());
        assert_eq!(r["environment"], "prod");
        assert_eq!(r["artifact"]["digest"], DIGEST);
        assert_eq!(r["requester"], "u9");
        assert_eq!(r["reason"], "Slack outage INC-42");
        assert_eq!(r["operator"], "tester");
        assert_eq!(r["approvers"][1]["id"], "u2");
        assert!(r["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(site.dir.join(format!("outbox/{id}.envelope")).is_file());
    }
    assert_eq!(records[1]["decision"], "reject");
    assert_eq!(records[2]["request_id"], "CHG-7");
    let o = verify();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "ok: 3 records");

    // one byte of record 2 edited: "u9" -> "u8" in its requester
    let log = site.dir.join("state/audit.jsonl");
    let text = fs::read_to_string(&log).unwrap();
    let start = text.lines().next().unwrap().len() + 1;
    let at =
        start + text[start..].find("\"requester\":\"u9\"").unwrap() + "\"requester\":\"u".len();
    let mut bytes = text.into_bytes();
    bytes[at] = b'8';
    fs::write(&log, bytes).unwrap();
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("line 2"), "{}", err(&o));
    assert!(err(&o).contains("edited"), "{}", err(&o));
}
