//! Not a fuzz target: run once, it writes the seed corpora into `fuzz/seeds/<target>/` from real protocol
//! objects made by the real code under the fixed keys of `diode_fuzz`: announces and sealed frames of the
//! fixed session, object metadata, signed envelopes, a partial object's state file, an audit log, journal
//! lines, and Slack and Teams requests signed as Slack and Teams sign them. Deterministic: running it again
//! writes the same bytes. `cargo fuzz run seeds -- -runs=1` (or the built binary with `-runs=1`). It is a
//! libFuzzer binary only so that it reuses the instrumented build instead of needing one of its own.
#![no_main]

use diode_fuzz::*;
use diode_proto::audit::{self, Head};
use diode_proto::envelope::{Approver, Artifact, Decision, Envelope};
use diode_proto::fec::BlockEncoder;
use diode_proto::journal::JournalRecord;
use diode_proto::object::{encode_heartbeat, Assembly, Heartbeat, ObjectKind};
use diode_proto::session::SenderSession;
use diode_proto::{FrameKind, SecretKey};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::fs;
use std::path::Path;

static ONCE: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|_data: &[u8]| ONCE.call_once(write_all));

fn write_all() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    frames(&root.join("frame"));
    announces(&root.join("announce"));
    metas(&root.join("object_meta"));
    envelopes(&root.join("envelope"));
    outcomes(&root.join("outcome"));
    state_files(&root.join("state_files"));
    serial(&root.join("serial"));
    endpoint(&root.join("endpoint"));
    #[cfg(feature = "chat")]
    slack(&root.join("slack"));
    #[cfg(feature = "chat")]
    teams(&root.join("teams"));
    println!("seeds written under {}", root.display());
}

/// The endpoint target's programs (records as `fuzz_targets/endpoint.rs` reads them): an object's
/// metadata and all its genuine shards (it is delivered); the same with the hash pending until a
/// closing metadata; one with a block lost and a pause (it stalls, blocks are set aside); two versions at
/// one path, the older after the newer (refused).
fn endpoint(dir: &Path) {
    let meta = |idx: u8, size: u16, flags: u8| {
        let mut v = vec![1 | idx << 2];
        v.extend_from_slice(&size.to_le_bytes());
        v.push(flags);
        v
    };
    let shards = |idx: u8, blocks: u8, skip: Option<u8>| {
        let mut v = Vec::new();
        for b in 0..blocks {
            for s in 0..6u8 {
                if Some(b) != skip || s < 2 {
                    v.extend_from_slice(&[2 | idx << 2, b, s]);
                }
            }
        }
        v
    };
    let whole = [meta(0, 1000, 0), shards(0, 4, None)].concat();
    put(dir, "whole", &whole);
    let late = [meta(1, 3000, 1), shards(1, 12, None), meta(1, 3000, 0)].concat();
    put(dir, "late-hash", &late);
    let stalled = [meta(2, 2000, 0), shards(2, 8, Some(3)), vec![0, 30, 0, 30]].concat();
    put(dir, "stalled", &stalled);
    let versions = [
        meta(0, 500, 8),
        shards(0, 2, None),
        meta(0, 500, 8 | 16),
        shards(0, 2, None),
    ]
    .concat();
    put(dir, "versions", &versions);
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    if let Err(e) = fs::create_dir_all(dir).and_then(|_| fs::write(dir.join(name), bytes)) {
        panic!("cannot write {}: {e}", dir.join(name).display());
    }
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

/// The frame target's seed in sealed mode: kind selector, object, block, shard, payload.
fn sealed_mode(kind: u8, object: u64, block: u32, shard: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![1u8, kind];
    v.extend_from_slice(&object.to_le_bytes());
    v.extend_from_slice(&block.to_le_bytes());
    v.extend_from_slice(&shard.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The serial target's seed: a read size, then a line as the sender writes it: a delimiter, the
/// announce and a sealed metadata frame, each COBS-framed with its CRC-32.
fn serial(dir: &Path) {
    let mut s = sender_session();
    let meta = small_meta();
    let mut line = vec![0u8];
    diode_proto::stream::encode(s.announce(), &mut line);
    let f = seal_frame(&mut s, FrameKind::Meta, meta.id, 0, 0, &meta.encode());
    diode_proto::stream::encode(&f, &mut line);
    for cut in [1u8, 64, 255] {
        put(dir, &format!("line-cut-{cut}"), &with_mode(cut, &line));
    }
}

fn frames(dir: &Path) {
    let mut s = sender_session();
    let meta = small_meta();
    let g = match meta.geometry() {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    };
    // the real shards of the last block (8 data shards) of a 100 000-byte object
    let content: Vec<u8> = (0..meta.size).map(|i| (i * 7 % 251) as u8).collect();
    let b = g.block_count(meta.size) - 1;
    let start = (b * g.block_bytes()) as usize;
    let data = &content[start..];
    let k = g.data_in(meta.size, b);
    let p = g.parity_for(k);
    let mut padded = data.to_vec();
    padded.resize(k * g.shard_size, 0);
    let mut enc = BlockEncoder::new();
    let mut parity = Vec::new();
    if let Err(e) = enc.encode(&padded, g.shard_size, p, &mut parity) {
        panic!("{e}");
    }
    put(dir, "raw-announce", &with_mode(0, s.announce()));
    let f = seal_frame(&mut s, FrameKind::Meta, meta.id, 0, 0, &meta.encode());
    put(dir, "raw-meta", &with_mode(0, &f));
    put(
        dir,
        "sealed-meta",
        &sealed_mode(1, meta.id, 0, 0, &meta.encode()),
    );
    let hb = encode_heartbeat(&Heartbeat {
        frames_sent: 100,
        objects_sent: 3,
        current_object: Some(meta.id),
        rate_bps: 100_000_000,
        interval_ms: 1000,
    });
    let f = seal_frame(&mut s, FrameKind::Heartbeat, 0, 0, 0, &hb);
    put(dir, "raw-heartbeat", &with_mode(0, &f));
    put(dir, "sealed-heartbeat", &sealed_mode(2, 0, 0, 0, &hb));
    for i in [0usize, k - 1] {
        let shard = &padded[i * g.shard_size..(i + 1) * g.shard_size];
        let f = seal_frame(&mut s, FrameKind::Shard, meta.id, b as u32, i as u16, shard);
        put(dir, &format!("raw-shard-{i}"), &with_mode(0, &f));
        put(
            dir,
            &format!("sealed-shard-{i}"),
            &sealed_mode(0, meta.id, b as u32, i as u16, shard),
        );
    }
    let shard = &parity[..g.shard_size];
    let f = seal_frame(&mut s, FrameKind::Shard, meta.id, b as u32, k as u16, shard);
    put(dir, "raw-parity-0", &with_mode(0, &f));
    put(
        dir,
        "sealed-parity-0",
        &sealed_mode(0, meta.id, b as u32, k as u16, shard),
    );
}

fn announces(dir: &Path) {
    let mut rng = StdRng::seed_from_u64(7);
    put(dir, "fixed-session", sender_session().announce());
    let start = |from: &SecretKey, to: &SecretKey, counter: u64, rng: &mut StdRng| {
        match SenderSession::start(from, to.public(), counter, NOW, rng) {
            Ok(s) => s.announce().to_vec(),
            Err(e) => panic!("{e}"),
        }
    };
    put(
        dir,
        "counter-0",
        &start(&sender_key(), &receiver_key(), 0, &mut rng),
    );
    put(
        dir,
        "counter-max",
        &start(&sender_key(), &receiver_key(), u64::MAX, &mut rng),
    );
    let stranger = SecretKey::from_seed(&[0x99; 32]);
    put(
        dir,
        "unknown-sender",
        &start(&stranger, &receiver_key(), 9, &mut rng),
    );
    put(
        dir,
        "other-receiver",
        &start(&sender_key(), &stranger, 9, &mut rng),
    );
}

fn metas(dir: &Path) {
    let m = small_meta();
    put(dir, "file", &m.encode());
    let mut e = small_meta();
    e.name = "5f2b7c3e9d1a4b6c8e0f2a4c6e8b0d1f.envelope".into();
    e.kind = ObjectKind::Envelope;
    e.size = 1900;
    put(dir, "envelope", &e.encode());
    let mut z = small_meta();
    z.size = 0;
    z.name = "empty".into();
    put(dir, "empty-file", &z.encode());
    put(
        dir,
        "heartbeat",
        &encode_heartbeat(&Heartbeat {
            frames_sent: 1,
            objects_sent: 0,
            current_object: None,
            rate_bps: 1_000_000,
            interval_ms: 500,
        }),
    );
}

fn envelope(decision: Decision, env: &str, issued: u64, valid: u64) -> Envelope {
    let approver = |id: &str, name: &str, role: &str| Approver {
        id: id.into(),
        name: name.into(),
        role: role.into(),
        source: "slack".into(),
        at: issued,
    };
    Envelope {
        id: "5f2b7c3e9d1a4b6c8e0f2a4c6e8b0d1f".into(),
        request_id: "r-20270115-0001".into(),
        decision,
        artifact: Artifact {
            name: "billing".into(),
            version: "1.4.2".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
        },
        environment: env.into(),
        approvers: vec![
            approver("U1", "Ada Lovelace", "release-manager"),
            approver("U2", "Bob Kahn", "security"),
        ],
        requester: "U9".into(),
        rule: "2 of release-manager, security".into(),
        issued_at: issued,
        expires_at: issued + valid,
    }
}

fn envelopes(dir: &Path) {
    let k = adapter_key();
    let ok = envelope(Decision::Approve, "prod", NOW - 10, 3600)
        .sign(&k)
        .to_json();
    put(dir, "approve-prod", &with_mode(0, ok.as_bytes()));
    put(dir, "approve-prod-resign", &with_mode(1, ok.as_bytes()));
    let rej = envelope(Decision::Reject, "staging", NOW - 10, 600)
        .sign(&k)
        .to_json();
    put(dir, "reject-staging", &with_mode(0, rej.as_bytes()));
    let old = envelope(Decision::Approve, "prod", NOW - 7200, 3600)
        .sign(&k)
        .to_json();
    put(dir, "expired", &with_mode(1, old.as_bytes()));
}

/// Outcomes as the high side writes them: each record of a short approvals audit log, signed.
fn outcomes(dir: &Path) {
    use diode_proto::audit::{chain, Head};
    use diode_proto::outcome::Outcome;
    let id = "5f2b7c3e9d1a4b6c8e0f2a4c6e8b0d1f";
    let records = [
        serde_json::json!({"event": "accept", "at": NOW, "id": id, "request_id": "req-0123456789abcdef",
            "decision": "approve", "environment": "prod", "approvers": ["ada (release-manager, slack)"]}),
        serde_json::json!({"event": "reject", "at": NOW, "id": id, "reason": "expired",
            "detail": "expired at 1, now 2", "quarantine": "/var/lib/diode/quarantine/x.json"}),
        serde_json::json!({"event": "consume", "at": NOW, "id": id, "request_id": "req-0123456789abcdef",
            "environment": "prod", "by": "ci-runner-3", "pid": 4242}),
        serde_json::json!({"event": "hook", "at": NOW, "id": id, "attempt": 2, "ok": false,
            "detail": "deploy-notify exited with exit status: 1"}),
    ];
    let mut head = Head::default();
    for (i, r) in records.into_iter().enumerate() {
        let serde_json::Value::Object(m) = r else {
            continue;
        };
        let (line, h) = chain(&head, m);
        head = h;
        let o = Outcome {
            receiver: "high-1".into(),
            record: line,
        }
        .sign(&outcome_key())
        .to_json();
        put(
            dir,
            &format!("record-{}", i + 1),
            &with_mode((i % 2) as u8, o.as_bytes()),
        );
    }
}

fn state_files(dir: &Path) {
    let mut asm = match Assembly::new(small_meta()) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    asm.mark_done(0);
    let shard = vec![7u8; 1408];
    let _ = asm.insert(
        1,
        3,
        &shard,
        &mut diode_proto::object::Buffers::new(1 << 20),
    );
    let _ = asm.evict(1);
    asm.spilled(1, vec![3]);
    let mut state = vec![0u8, 1];
    match postcard::to_allocvec(&(sender_key().public().id().0, asm.state())) {
        Ok(b) => state.extend(b),
        Err(e) => panic!("{e}"),
    }
    put(dir, "partial-state", &state);

    let mut head = Head::default();
    let mut log = String::new();
    for (i, what) in ["accepted", "hook_ok", "consumed"].iter().enumerate() {
        let mut fields = serde_json::Map::new();
        fields.insert("event".into(), (*what).into());
        fields.insert("id".into(), "5f2b7c3e9d1a4b6c8e0f2a4c6e8b0d1f".into());
        fields.insert("at".into(), (NOW + i as u64).into());
        let (line, h) = audit::chain(&head, fields);
        log.push_str(&line);
        log.push('\n');
        head = h;
    }
    let mut audit_seed = vec![1u8];
    audit_seed.extend(head.to_text().as_bytes());
    audit_seed.extend(log.as_bytes());
    put(dir, "audit-log", &audit_seed);

    let senders = format!("{{\"{}\": 7}}", sender_key().public().id());
    put(dir, "senders-json", &with_mode(2, senders.as_bytes()));
    put(dir, "gap-list", &with_mode(2, b"17-19,40"));

    let records = [
        JournalRecord::Claimed {
            id: "0123456789abcdef".into(),
            name: "reports/q3.pdf".into(),
            path: "/var/lib/diode-send/objects/0123456789abcdef".into(),
            at: NOW,
        },
        JournalRecord::Sent {
            id: "0123456789abcdef".into(),
            name: "reports/q3.pdf".into(),
            size: 100_000,
            blake3: "42".repeat(32),
            blocks: 3,
            shard_size: 1408,
            data_shards: 32,
            parity_shards: 8,
            mtime: NOW - 60,
            at: NOW + 2,
        },
        JournalRecord::Expired {
            id: "0123456789abcdef".into(),
            at: NOW + 86_400,
        },
    ];
    for (i, r) in records.iter().enumerate() {
        let line = serde_json::to_string(r).unwrap_or_default();
        put(dir, &format!("journal-{i}"), &with_mode(3, line.as_bytes()));
    }
}

#[cfg(feature = "chat")]
fn slack(dir: &Path) {
    let digest = format!("sha256%3A{}", "ab".repeat(32));
    let command = format!(
        "token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001&team_domain=example&channel_id=C2147483705\
         &channel_name=deploys&user_id=U2147483697&user_name=ada&command=%2Fdeploy\
         &text=request+billing+1.4.2+prod+{digest}&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1234%2F5678\
         &trigger_id=13345224609.738474920.8088930838d88f008e0"
    );
    put(dir, "command", &with_mode(1, command.as_bytes()));
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": "U2147483697", "username": "ada", "name": "ada"},
        "channel": {"id": "C2147483705"},
        "actions": [{"action_id": "approve", "value": "r-20270115-0001", "type": "button"}]
    });
    let form = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap_or_default();
    put(dir, "interaction", &with_mode(1, form.as_bytes()));
    // as received: timestamp, signature and body
    let ts = NOW.to_string();
    let sig = diode_chat::slack::signature::sign(SLACK_SECRET, &ts, command.as_bytes());
    put(
        dir,
        "command-as-received",
        &with_mode(0, format!("{ts}\n{sig}\n{command}").as_bytes()),
    );
}

#[cfg(feature = "chat")]
fn teams(dir: &Path) {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    let activity = serde_json::json!({
        "type": "message", "id": "1485983408511", "timestamp": "2027-01-15T08:00:00.000Z",
        "channelId": "msteams", "serviceUrl": SERVICE_URL,
        "from": {"id": "29:1XJKJMvc5GBtc2JwZq0oj8tHZmzrQgFmB39ATiQWA85gQtHieVkKilBZ9XHoq9j7Zaqt7CZ-NJWi7me2kHTL3Bw",
                 "name": "Ada Lovelace", "aadObjectId": "00000000-0000-0000-0000-00000000ada0"},
        "conversation": {"id": "19:prod@thread.skype"},
        "text": format!("<at>Deploy</at> request billing 1.4.2 prod sha256:{}", "ab".repeat(32)),
    })
    .to_string();
    put(dir, "webhook-activity", &with_mode(2, activity.as_bytes()));
    let key = B64.decode(TEAMS_TOKEN).unwrap_or_default();
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
    m.update(activity.as_bytes());
    let auth = format!("HMAC {}", B64.encode(m.finalize().into_bytes()));
    put(
        dir,
        "webhook-as-received",
        &with_mode(0, format!("{auth}\n{activity}").as_bytes()),
    );
    let der = include_bytes!("../../adapter/tests/teams-test-key.der");
    let key = jsonwebtoken::EncodingKey::from_rsa_der(der);
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("test-key-1".into());
    let claims = serde_json::json!({
        "iss": "https://api.botframework.com", "aud": BOT_APP_ID, "exp": NOW + 3600, "nbf": NOW - 60,
        "serviceUrl": SERVICE_URL,
    });
    let jwt = match jsonwebtoken::encode(&h, &claims, &key) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    put(
        dir,
        "bot-token",
        &with_mode(1, format!("Bearer {jwt}\n{SERVICE_URL}").as_bytes()),
    );
}
