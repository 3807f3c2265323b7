//! Fixed keys, secrets and clocks shared by the fuzz targets and by `examples/make-seeds.rs`, so that the
//! seed corpora (real frames, signed envelopes, signed chat payloads) are made under the very keys the
//! targets trust, and a fuzzer mutating a seed starts from input that passes authentication.
//!
//! Nothing here is a real key: every secret is derived from a constant.

use diode_proto::envelope::{Rule, SigningKey, VerifyingKey};
use diode_proto::object::{ObjectKind, ObjectMeta};
use diode_proto::session::{SenderSession, SessionTable};
use diode_proto::{FrameKind, SecretKey};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// The clock every target runs at (2027-01-15), in seconds.
pub const NOW: u64 = 1_800_000_000;

pub fn sender_key() -> SecretKey {
    SecretKey::from_seed(&[0x51; 32])
}

pub fn receiver_key() -> SecretKey {
    SecretKey::from_seed(&[0x52; 32])
}

pub fn adapter_key() -> SigningKey {
    SigningKey::from_seed(&[0x53; 32])
}

/// The high side's outcome key the `outcome` target trusts.
pub fn outcome_key() -> SigningKey {
    SigningKey::from_seed(&[0x0c; 32])
}

pub fn trusted_adapters() -> Vec<VerifyingKey> {
    vec![adapter_key().public()]
}

/// The high side's rules the envelope target checks against (those of `receiver/recv.example.toml`).
pub fn rules() -> BTreeMap<String, Rule> {
    let mut r = BTreeMap::new();
    r.insert(
        "prod".to_string(),
        Rule {
            min_approvals: 2,
            required_roles: vec!["security".into()],
            max_validity_secs: 86_400,
        },
    );
    r.insert(
        "staging".to_string(),
        Rule {
            min_approvals: 1,
            required_roles: vec![],
            max_validity_secs: 7 * 86_400,
        },
    );
    r
}

/// The sender's session under the fixed keys (counter 7, deterministic randomness): the same session,
/// and so the same frame key and session tag, in every run.
pub fn sender_session() -> SenderSession {
    let mut rng = StdRng::seed_from_u64(0xD10D);
    match SenderSession::start(&sender_key(), receiver_key().public(), 7, NOW, &mut rng) {
        Ok(s) => s,
        Err(e) => panic!("a session under the fixed keys must start: {e}"),
    }
}

/// A sealed frame of `payload` under `s` (`SenderSession::seal_payload`, which cannot fail on the
/// payloads the targets seal: a failure is a finding).
pub fn seal_frame(
    s: &mut SenderSession,
    kind: FrameKind,
    object: u64,
    block: u32,
    shard: u16,
    payload: &[u8],
) -> Vec<u8> {
    match s.seal_payload(kind, object, block, shard, payload) {
        Some(f) => f,
        None => panic!("sealing a payload of {} bytes failed", payload.len()),
    }
}

/// A receiver's session table that trusts the fixed sender, with nothing established yet.
pub fn session_table() -> SessionTable {
    SessionTable::new(
        receiver_key(),
        vec![sender_key().public().clone()],
        HashMap::new(),
    )
}

/// Metadata of a small file, as a sender announces it (1408-byte shards, 32 data + 8 parity).
pub fn small_meta() -> ObjectMeta {
    ObjectMeta {
        id: 0x0123_4567_89ab_cdef,
        name: "reports/q3.pdf".into(),
        size: 100_000,
        hash: [0x42; 32],
        kind: ObjectKind::File,
        shard_size: 1408,
        data_shards: 32,
        parity_shards: 8,
        mtime: NOW - 60,
    }
}

/// Slack's signing secret for the slack target.
pub const SLACK_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
/// The Teams outgoing webhook's security token (base64, as Teams shows it).
pub const TEAMS_TOKEN: &str = "ZnV6emluZyB0ZWFtcyB3ZWJob29rIHRva2VuIDAwMDA=";
/// The Bot Framework app id and service URL of the adapter's tests.
pub const BOT_APP_ID: &str = "8f0c5f3a-0000-4000-8000-00000000b07a";
pub const SERVICE_URL: &str = "https://smba.trafficmanager.net/amer/";
/// The public half of the adapter tests' Teams bot key (`adapter/tests/teams-test-jwks.json`).
pub const TEST_JWKS: &str = include_str!("../../adapter/tests/teams-test-jwks.json");

/// Write the test JWKS where `Bot::load` can read it (once per process).
pub fn jwks_file() -> PathBuf {
    let p = std::env::temp_dir().join(format!("diode-fuzz-jwks-{}.json", std::process::id()));
    if !p.exists() {
        if let Err(e) = std::fs::write(&p, TEST_JWKS) {
            panic!("cannot write {}: {e}", p.display());
        }
    }
    p
}

/// Split `data` at the first `n` newlines: the fields of a structured seed (headers, then a body).
pub fn fields<const N: usize>(data: &[u8]) -> Option<([&[u8]; N], &[u8])> {
    let mut out = [&data[..0]; N];
    let mut rest = data;
    for f in out.iter_mut() {
        let i = rest.iter().position(|&b| b == b'\n')?;
        *f = &rest[..i];
        rest = &rest[i + 1..];
    }
    Some((out, rest))
}
