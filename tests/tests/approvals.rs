//! Approval envelopes end to end, through the real binaries over 127.0.0.1: `diode-chat sign`
//! (break-glass) writes a signed envelope into the sender's outbox, `diode-send` carries it as an object
//! of kind envelope, `diode-recv` verifies it against the high side's own rules and publishes it in
//! `approvals/` or quarantines it with the reason; `diode-recv approvals check|consume` and
//! `audit verify` are what a deploy pipeline and an auditor run.

use diode_proto::envelope::{SignerRole, SigningKey};
use diode_tests::envelopes::{approver, digest, good, now};
use diode_tests::{wait_for, Site};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

struct Env {
    site: Site,
    key: SigningKey,
}

impl Env {
    fn new() -> Env {
        let site = Site::new(&[]);
        let text = fs::read_to_string(site.path("keys/adapter.key")).unwrap();
        let key = SigningKey::from_text(&text, SignerRole::Adapter).unwrap();
        fs::write(
            site.path("adapter.toml"),
            format!(
                "key = \"keys/adapter.key\"\noutbox = \"{}\"\naudit = \"chat-audit.jsonl\"\n",
                site.outbox().display()
            ),
        )
        .unwrap();
        Env { site, key }
    }

    fn drop_envelope(&self, name: &str, json: &str) {
        self.site
            .drop_in(&format!("{name}.envelope"), json.as_bytes());
    }

    fn approval_file(&self, id: &str) -> PathBuf {
        self.site.path(&format!("approvals/{id}.json"))
    }

    /// Wait for a quarantine file whose name starts with `prefix` and carries `reason`.
    fn wait_quarantined(&self, prefix: &str, reason: &str) -> serde_json::Value {
        let dir = self.site.path("quarantine");
        wait_for(
            &format!("{prefix} to be quarantined for {reason}"),
            Duration::from_secs(20),
            || {
                for e in fs::read_dir(&dir).ok()?.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with(prefix) && n.contains(reason) {
                        let v: serde_json::Value =
                            serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                        return Some(v);
                    }
                }
                None
            },
        )
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.site.path("state/approvals/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn approvals(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .site
            .recv_cmd()
            .arg("approvals")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }
}

/// A break-glass approval crosses the real binaries and is accepted exactly once: published in
/// approvals/, audited, `check` finds it, `consume` uses it once, after which neither finds it.
#[test]
fn a_valid_approval_is_accepted_checked_and_consumed_once() {
    let env = Env::new();
    let _r = env.site.start("recv");
    let _s = env.site.start("send");
    let d = digest(0x11);
    let out = diode_tests::chat::break_glass(&env.site.path("adapter.toml"), &d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let id = printed
        .split_whitespace()
        .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no envelope id in {printed:?}"))
        .to_string();
    wait_for(
        "the approval in approvals/",
        Duration::from_secs(20),
        || env.approval_file(&id).exists().then_some(()),
    );
    // approvals/<id>.json is the carrier as diode-chat signed and wrote it (docs/approvals.md): the same
    // bytes, its final newline included, not a re-serialisation
    let published = fs::read_to_string(env.approval_file(&id)).unwrap();
    let signed = diode_proto::envelope::SignedEnvelope::parse(published.as_bytes()).unwrap();
    assert_eq!(
        published,
        format!("{}\n", signed.to_json()),
        "approvals/{id}.json differs from the signed carrier"
    );
    // (the signer's audit segment, shipped right after the envelope, is a file like any other:
    // docs/approvals.md, "The low side's log on the high side")
    let landed: Vec<String> = env
        .site
        .inbox_files()
        .into_iter()
        .filter(|f| !f.starts_with("audit/"))
        .collect();
    assert!(
        landed.is_empty(),
        "an envelope must never land in the inbox: {landed:?}"
    );

    let (code, stdout, _) = env.approvals(&["check", "--artifact", &d, "--env", "prod"]);
    assert_eq!((code, stdout.as_str()), (0, id.as_str()));
    // another digest or environment has no approval
    assert_eq!(
        env.approvals(&["check", "--artifact", &digest(0x12), "--env", "prod"])
            .0,
        1
    );
    assert_eq!(
        env.approvals(&["check", "--artifact", &d, "--env", "staging"])
            .0,
        1
    );
    let (code, stdout, _) = env.approvals(&["consume", "--artifact", &d, "--env", "prod"]);
    assert_eq!((code, stdout.as_str()), (0, id.as_str()));
    let (code, _, stderr) = env.approvals(&["check", "--artifact", &d, "--env", "prod"]);
    assert_eq!(code, 1, "a consumed approval must not pass check");
    assert!(stderr.contains("no valid, unconsumed approval"), "{stderr}");
    assert_eq!(
        env.approvals(&["consume", "--artifact", &d, "--env", "prod"])
            .0,
        1
    );
    let (_, list, _) = env.approvals(&["list"]);
    assert!(list.contains(&id) && list.contains("consumed"), "{list}");

    let events: Vec<String> = env
        .audit()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["accept", "consume"]);
    let ok = env
        .site
        .recv_cmd()
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok: 2 records"));
}

/// Every way an envelope can be wrong is refused by the high side, each with its own reason in the
/// quarantine file and the audit log: bad signature, unknown key, one flipped byte, expired, issued in the
/// future, unknown environment, too few approvers, wrong roles, a self-approval, validity longer than the
/// high side allows, the same envelope twice, and the same envelope after a receiver restart. Nothing
/// refused appears in approvals/.
#[test]
fn every_bad_envelope_is_refused_with_its_reason() {
    let env = Env::new();
    let mut r = env.site.start("recv");
    let _s = env.site.start("send");
    let k = &env.key;
    let mut cases: Vec<(String, String, &str)> = Vec::new(); // (envelope id, json, reason)

    let e = good(&digest(1));
    let mut s = e.clone().sign(k);
    let last = s.signature.pop().unwrap();
    s.signature.push(if last == '0' { '1' } else { '0' });
    cases.push((e.id, s.to_json(), "bad_signature"));

    let e = good(&digest(2));
    let stranger = SigningKey::from_seed(&rand::random::<[u8; 32]>());
    cases.push((e.id.clone(), e.sign(&stranger).to_json(), "unknown_key"));

    // one byte flipped in what was approved: the digest's last hex digit
    let e = good(&digest(3));
    let json = e.clone().sign(k).to_json();
    let flipped = json.replacen(
        &digest(3),
        &format!("{}2", &digest(3)[..digest(3).len() - 1]),
        1,
    );
    assert_ne!(json, flipped);
    cases.push((e.id, flipped, "bad_signature"));

    let mut e = good(&digest(4));
    e.issued_at = now() - 7200;
    e.expires_at = now() - 60;
    cases.push((e.id.clone(), e.sign(k).to_json(), "expired"));

    let mut e = good(&digest(5));
    e.issued_at = now() + 3600;
    e.expires_at = now() + 7200;
    cases.push((e.id.clone(), e.sign(k).to_json(), "future"));

    let mut e = good(&digest(6));
    e.environment = "moon".into();
    cases.push((e.id.clone(), e.sign(k).to_json(), "unknown_environment"));

    let mut e = good(&digest(7));
    e.approvers.truncate(1);
    cases.push((e.id.clone(), e.sign(k).to_json(), "rule_not_met"));

    let mut e = good(&digest(8));
    e.approvers = vec![
        approver("U1", "release-manager"),
        approver("U3", "release-manager"),
    ];
    cases.push((e.id.clone(), e.sign(k).to_json(), "rule_not_met"));

    let mut e = good(&digest(9));
    e.requester = "U1".into();
    cases.push((e.id.clone(), e.sign(k).to_json(), "rule_not_met"));

    let mut e = good(&digest(10));
    e.expires_at = e.issued_at + 86400 * 30; // the low side may allow a month; prod here allows a day
    cases.push((e.id.clone(), e.sign(k).to_json(), "rule_not_met"));

    for (i, (id, json, _)) in cases.iter().enumerate() {
        env.drop_envelope(&format!("case{i}-{id}"), json);
    }
    for (id, _, reason) in &cases {
        let q = env.wait_quarantined(id, reason);
        assert_eq!(q["reason"], *reason, "{q}");
        assert!(
            !env.approval_file(id).exists(),
            "{id} ({reason}) must not be in approvals/"
        );
    }

    // the same valid envelope twice: accepted once, then refused as replayed
    let valid = good(&digest(20)).sign(k);
    let id = valid.envelope.id.clone();
    env.drop_envelope("first", &valid.to_json());
    wait_for("the valid envelope", Duration::from_secs(20), || {
        env.approval_file(&id).exists().then_some(())
    });
    env.drop_envelope("again", &valid.to_json());
    env.wait_quarantined(&id, "replayed");

    // and after a restart of the receiver (the registry of ids is on disk)
    r.kill9();
    let _r2 = env.site.start("recv");
    env.site.wait_session(Duration::from_secs(20));
    env.drop_envelope("after-restart", &valid.to_json());
    wait_for("the second replay refusal", Duration::from_secs(20), || {
        let n = fs::read_dir(env.site.path("quarantine"))
            .ok()?
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&id) && n.contains("replayed")
            })
            .count();
        (n >= 2).then_some(())
    });
    // only the first copy of the valid envelope was ever accepted
    let audit = env.audit();
    let accepts: Vec<_> = audit.iter().filter(|r| r["event"] == "accept").collect();
    assert_eq!(accepts.len(), 1, "{audit:?}");
    assert_eq!(accepts[0]["id"], id.as_str());
    for (id, _, reason) in &cases {
        assert!(
            audit.iter().any(|r| r["event"] == "reject"
                && r["id"] == id.as_str()
                && r["reason"] == *reason),
            "no audit record refusing {id} for {reason}"
        );
    }
    let replays = audit
        .iter()
        .filter(|r| r["event"] == "reject" && r["reason"] == "replayed")
        .count();
    assert_eq!(replays, 2);
    println!(
        "refused {} bad envelopes and 2 replays, each with its reason",
        cases.len()
    );
}

/// Eight `consume` calls race for one approval: exactly one gets it. Then the audit log verifies, and after
/// one byte of one record is edited, `audit verify` fails naming that record.
#[test]
fn racing_consumers_get_one_approval_once_and_the_audit_chain_catches_an_edit() {
    let env = Env::new();
    let _r = env.site.start("recv");
    let _s = env.site.start("send");
    let d = digest(0x33);
    let e = good(&d).sign(&env.key);
    let id = e.envelope.id.clone();
    env.drop_envelope("race", &e.to_json());
    wait_for("the approval", Duration::from_secs(20), || {
        env.approval_file(&id).exists().then_some(())
    });

    let children: Vec<_> = (0..8)
        .map(|_| {
            env.site
                .recv_cmd()
                .args(["approvals", "consume", "--artifact", &d, "--env", "prod"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let wins = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .filter(|o| o.status.success())
        .inspect(|o| assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), id))
        .count();
    assert_eq!(wins, 1, "exactly one consumer must win");
    let consumes = env
        .audit()
        .iter()
        .filter(|r| r["event"] == "consume")
        .count();
    assert_eq!(consumes, 1);

    let verify = || {
        env.site
            .recv_cmd()
            .args(["audit", "verify"])
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // edit one byte of the first record (the accept): the digest it names
    let path = env.site.path("state/approvals/audit.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replacen(&d[..20], &format!("{}4", &d[..19]), 1);
    assert_ne!(text, edited);
    fs::write(&path, edited).unwrap();
    let bad = verify();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(err.contains("line 1") && err.contains("edited"), "{err}");
    println!("audit verify after an edit: {}", err.trim());
}

/// The hook runs with the accepted envelope on stdin, apart from reception: a first attempt that hangs is
/// killed at the time limit, the retry succeeds, and both attempts are in the audit log.
#[test]
fn the_hook_gets_the_envelope_is_bounded_in_time_retried_and_audited() {
    let env = Env::new();
    let (marker, out) = (
        env.site.path("hook-ran-once"),
        env.site.path("hook-stdin.json"),
    );
    let script = format!(
        "if [ -e '{m}' ]; then cat > '{o}'; else touch '{m}'; sleep 30; fi",
        m = marker.display(),
        o = out.display()
    );
    let path = env.site.path("recv.toml");
    let mut cfg: toml::Table = toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let a = cfg["approvals"].as_table_mut().unwrap();
    a.insert(
        "hook".into(),
        toml::Value::from(vec!["sh", "-c", script.as_str()]),
    );
    a.insert("hook_timeout_secs".into(), 1.into());
    a.insert("hook_retries".into(), 2.into());
    fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let _r = env.site.start("recv");
    let _s = env.site.start("send");
    let e = good(&digest(0x44)).sign(&env.key);
    env.drop_envelope("hooked", &e.to_json());
    let got = wait_for("the hook's second attempt", Duration::from_secs(30), || {
        let b = fs::read(&out).ok()?;
        (!b.is_empty()).then_some(b)
    });
    let seen = diode_proto::envelope::SignedEnvelope::parse(&got).unwrap();
    assert_eq!(seen, e, "the hook must get the accepted envelope on stdin");
    let hooks = wait_for(
        "both hook attempts audited",
        Duration::from_secs(10),
        || {
            let h: Vec<_> = env
                .audit()
                .into_iter()
                .filter(|r| r["event"] == "hook")
                .collect();
            (h.len() == 2).then_some(h)
        },
    );
    assert_eq!(hooks[0]["ok"], false);
    assert!(
        hooks[0]["detail"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1 s"),
        "{}",
        hooks[0]
    );
    assert_eq!(hooks[1]["ok"], true);
    assert_eq!(hooks[1]["attempt"], 2);
}
