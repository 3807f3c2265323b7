//! Approval envelopes for the tests, built and signed the way the adapter does.

use diode_proto::envelope::{Approver, Artifact, Decision, Envelope};

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn digest(seed: u8) -> String {
    format!("sha256:{}", hex(&[seed; 32]))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn fresh_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

pub fn approver(id: &str, role: &str) -> Approver {
    Approver {
        id: id.into(),
        name: format!("person {id}"),
        role: role.into(),
        source: "slack".into(),
        at: now(),
    }
}

/// An envelope that satisfies recv.example.toml's prod rule (2 approvers, release-manager + security).
pub fn good(d: &str) -> Envelope {
    Envelope {
        id: fresh_id(),
        request_id: format!("req-{}", fresh_id()),
        decision: Decision::Approve,
        artifact: Artifact {
            name: "billing".into(),
            version: "1.4.2".into(),
            digest: d.into(),
        },
        environment: "prod".into(),
        approvers: vec![
            approver("U1", "release-manager"),
            approver("U2", "security"),
        ],
        requester: "U9".into(),
        rule: "prod: 2 of release-manager+security".into(),
        issued_at: now(),
        expires_at: now() + 3600,
    }
}

/// Drop into the site's outbox one approval that the receiver accepts and one that expired before it
/// was sent (refused as `expired`), both signed by the site's adapter key; returns the good one.
pub fn drop_accepted_and_expired(site: &crate::Site, seed: u8) -> Envelope {
    let text = std::fs::read_to_string(site.path("keys/adapter.key")).expect("keys/adapter.key");
    let key = diode_proto::envelope::SigningKey::from_text(
        &text,
        diode_proto::envelope::SignerRole::Adapter,
    )
    .expect("an adapter key");
    let ok = good(&digest(seed));
    site.drop_in("ok.envelope", ok.clone().sign(&key).to_json().as_bytes());
    let mut old = good(&digest(seed.wrapping_add(1)));
    old.issued_at = now() - 7200;
    old.expires_at = now() - 60;
    site.drop_in("old.envelope", old.sign(&key).to_json().as_bytes());
    ok
}
