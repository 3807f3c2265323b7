//! The high side's half of the request loop, through the real binaries over 127.0.0.1:
//! - `diode-send request` signs a request with the pipeline key and puts it in the reverse sender's
//!   outbox; it crosses byte-exact;
//! - that sender runs `envelope_only = true`: a plain file, a file named like an envelope that is not
//!   one, and an oversize envelope are refused, set aside in state/refused/ (never sent, never lost), and
//!   `diode-send file` refuses them too;
//! - `diode-recv approvals wait --request ID` answers with the pipeline's exit codes: 4 when nothing came
//!   back in time, 0 (and the envelope id) when the approval for that request id arrives, 5 when it was
//!   already used, 2 for a rejection by people, 3 for an expiry (a rejection with no one named).

use diode_proto::envelope::{Decision, SignerRole, SigningKey};
use diode_proto::request::SignedRequest;
use diode_tests::envelopes::{approver, digest, good};
use diode_tests::{run_ok, wait_for, Site};
use std::fs;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_request_crosses_and_the_envelope_only_sender_refuses_everything_else() {
    let site = Site::new(&[
        ("envelope_only", true.into()),
        ("pipeline_key", "keys/pipeline.key".into()),
    ]);
    run_ok(
        Command::new(diode_tests::bin("diode-send"))
            .args(["keygen", "--pipeline", "--dir"])
            .arg(site.path("keys")),
    );
    let _r = site.start("recv");
    let _s = site.start("send");
    let d = digest(0x61);
    let out = run_ok(site.send_cmd().args([
        "request",
        "--artifact",
        "billing",
        "--version",
        "1.4.2",
        "--digest",
        &d,
        "--env",
        "prod",
        "--reason",
        "quarterly release",
        "--requester",
        "pipeline:release",
    ]));
    let id = out.trim().to_string();
    assert_eq!(id.len(), 32, "prints the request id alone: {out:?}");
    // refused: a plain file, a fake envelope, an oversize envelope
    site.drop_in("secrets.csv", b"account,balance\n1,100\n");
    site.drop_in("fake.request", b"this is data, not a request");
    let mut big = String::from("{\"padding\":\"");
    big.push_str(&"x".repeat(20_000));
    big.push_str("\"}");
    site.drop_in("huge.envelope", big.as_bytes());
    let name = format!("{id}.request");
    let got = wait_for("the request in the inbox", Duration::from_secs(20), || {
        fs::read(site.inbox().join(&name)).ok()
    });
    let signed = SignedRequest::parse(&got).unwrap();
    let key = fs::read_to_string(site.path("keys/pipeline.pub")).unwrap();
    let key = diode_proto::envelope::VerifyingKey::from_text(&key, SignerRole::Pipeline).unwrap();
    signed
        .verify(&[key], diode_tests::envelopes::now(), 120, 3600)
        .unwrap();
    assert_eq!(signed.request.artifact.digest, d);
    let refused = wait_for("three files set aside", Duration::from_secs(20), || {
        let n: Vec<String> = fs::read_dir(site.path("state/refused"))
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        (n.len() == 3).then_some(n)
    });
    println!("request {id} crossed; refused and set aside: {refused:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        site.inbox_files(),
        vec![name.clone()],
        "nothing but the request crossed"
    );
    // the one-shot command refuses the same way
    let plain = site.path("plain.txt");
    fs::write(&plain, b"data").unwrap();
    let out = site.send_cmd().arg("file").arg(&plain).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not an envelope"),
        "{err}"
    );
}

fn wait_code(site: &Site, request: &str, extra: &[&str]) -> (i32, String, String) {
    let out = site
        .recv_cmd()
        .args(["approvals", "wait", "--request", request])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn approvals_wait_answers_each_outcome_with_its_exit_code() {
    let site = Site::new(&[]);
    let key = SigningKey::from_text(
        &fs::read_to_string(site.path("keys/adapter.key")).unwrap(),
        SignerRole::Adapter,
    )
    .unwrap();
    let _r = site.start("recv");
    let _s = site.start("send");
    let request = "00112233445566778899aabbccddeeff";
    // nothing yet: times out with 4
    let (code, _, err) = wait_code(&site, request, &["--timeout", "1s"]);
    assert_eq!(code, 4, "{err}");
    // the approval for this request arrives while we wait
    let mut e = good(&digest(0x71));
    e.request_id = request.into();
    let env_id = e.id.clone();
    let json = e.sign(&key).to_json();
    let waiter = {
        let mut c = site.recv_cmd();
        c.args([
            "approvals",
            "wait",
            "--request",
            request,
            "--timeout",
            "30s",
            "--consume",
        ]);
        c.spawn().unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    site.drop_in(&format!("{env_id}.envelope"), json.as_bytes());
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // used once: the next wait says so
    let (code, _, err) = wait_code(&site, request, &["--timeout", "5s"]);
    assert_eq!(code, 5, "{err}");
    println!("approved and consumed {env_id}; waiting again: {err}");

    // rejected by a person: 2; expired (rejected by the deadline, no one named): 3
    for (seed, people, want) in [(0x72u8, true, 2), (0x73, false, 3)] {
        let req = format!("{seed:02x}").repeat(16);
        let mut e = good(&digest(seed));
        e.request_id = req.clone();
        e.decision = Decision::Reject;
        e.approvers = if people {
            vec![approver("U2", "security")]
        } else {
            vec![]
        };
        e.rule = "prod: no decision by the deadline".into();
        let id = e.id.clone();
        site.drop_in(&format!("{id}.envelope"), e.sign(&key).to_json().as_bytes());
        let (code, _, err) = wait_code(&site, &req, &["--timeout", "30s"]);
        assert_eq!(code, want, "{err}");
        println!("exit {code}: {err}");
    }
    // a malformed request id is an error (1), not a wait
    assert_eq!(wait_code(&site, "../etc", &["--timeout", "1s"]).0, 1);
}
