//! Approval envelopes: who approved which artifact for which environment, until when, signed with Ed25519
//! by the low side's chat adapter, and checked on the high side against rules the high side owns.
//!
//! On disk and on the wire an envelope is one JSON document:
//! `{"envelope": {...}, "signer": "<key id>", "signature": "<128 hex>"}`. The signature covers the
//! **canonical encoding**: `DOMAIN` followed by the postcard encoding of the `Envelope` struct (fields in
//! declaration order, integers as varints, strings length-prefixed). The JSON is only a carrier: the
//! verifier parses it (unknown fields refused), re-encodes the struct canonically and checks the
//! signature over those bytes, so whitespace, key order or number spelling in the JSON cannot matter and
//! cannot smuggle anything past the signature.

use crate::keys::{key_line, parse_key_line, parse_secret_line, secret_line, LineError};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Signed bytes start with this, so an envelope signature can never be taken for any other signature.
pub const DOMAIN: &[u8] = b"diode approval envelope v1\0";
/// Largest envelope file accepted (a real one is about 1 KiB).
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
const MAX_TEXT: usize = 256;
const MAX_APPROVERS: usize = 64;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Reject,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        })
    }
}

/// What is approved.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub version: String,
    /// `sha256:` followed by 64 lowercase hex digits.
    pub digest: String,
}

/// One person's decision.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    /// Stable id from the chat source (a Slack or Teams user id, or `cli:<name>` for break-glass).
    pub id: String,
    pub name: String,
    pub role: String,
    /// `slack`, `teams` or `cli`.
    pub source: String,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// 32 lowercase hex digits, random; the high side accepts each id once, ever.
    pub id: String,
    pub request_id: String,
    pub decision: Decision,
    pub artifact: Artifact,
    pub environment: String,
    pub approvers: Vec<Approver>,
    pub requester: String,
    /// The low-side policy rule that was satisfied (for the audit trail; the high side applies its own).
    pub rule: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedEnvelope {
    pub envelope: Envelope,
    /// Key id (16 hex digits) of the signing key.
    pub signer: String,
    /// Ed25519 signature, 128 hex digits.
    pub signature: String,
}

/// Why an envelope was refused. `code()` is the stable word used in audit records and quarantine files.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum Reject {
    #[error("not an envelope: {0}")]
    Malformed(String),
    #[error("signed by key {0}, which is not trusted here")]
    UnknownKey(String),
    #[error("the signature does not match the content")]
    BadSignature,
    #[error("expired at {expires_at}, now {now}")]
    Expired { expires_at: u64, now: u64 },
    #[error("issued at {issued_at}, in the future (now {now}, allowed skew {skew} s)")]
    Future { issued_at: u64, now: u64, skew: u64 },
    #[error("environment {0:?} has no rule here")]
    UnknownEnvironment(String),
    #[error("the high side's rule for {env:?} is not met: {why}")]
    Rule { env: String, why: String },
    #[error("envelope {0} was already received")]
    Replayed(String),
}

impl Reject {
    pub fn code(&self) -> &'static str {
        match self {
            Reject::Malformed(_) => "malformed",
            Reject::UnknownKey(_) => "unknown_key",
            Reject::BadSignature => "bad_signature",
            Reject::Expired { .. } => "expired",
            Reject::Future { .. } => "future",
            Reject::UnknownEnvironment(_) => "unknown_environment",
            Reject::Rule { .. } => "rule_not_met",
            Reject::Replayed(_) => "replayed",
        }
    }
}

fn text_ok(s: &str, what: &str, allow_empty: bool) -> Result<(), Reject> {
    if (!allow_empty && s.is_empty()) || s.len() > MAX_TEXT || s.chars().any(|c| c.is_control()) {
        return Err(Reject::Malformed(format!(
            "{what} must be 1-{MAX_TEXT} printable characters"
        )));
    }
    Ok(())
}

pub fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:` + 64 lowercase hex digits.
pub fn digest_ok(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| is_hex_id(h, 64))
}

impl Envelope {
    /// The bytes the signature covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = DOMAIN.to_vec();
        // postcard cannot fail on this type except by allocation failure
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Shape checks that need no key and no clock: ids, lengths, digest form, approver list.
    pub fn check_shape(&self) -> Result<(), Reject> {
        if !is_hex_id(&self.id, 32) {
            return Err(Reject::Malformed(
                "id must be 32 lowercase hex digits".into(),
            ));
        }
        text_ok(&self.request_id, "request_id", false)?;
        text_ok(&self.artifact.name, "artifact name", false)?;
        text_ok(&self.artifact.version, "artifact version", false)?;
        if !digest_ok(&self.artifact.digest) {
            return Err(Reject::Malformed(
                "artifact digest must be sha256: and 64 lowercase hex digits".into(),
            ));
        }
        text_ok(&self.environment, "environment", false)?;
        text_ok(&self.requester, "requester", false)?;
        text_ok(&self.rule, "rule", true)?;
        if self.approvers.len() > MAX_APPROVERS {
            return Err(Reject::Malformed("too many approvers".into()));
        }
        for a in &self.approvers {
            text_ok(&a.id, "approver id", false)?;
            text_ok(&a.name, "approver name", false)?;
            text_ok(&a.role, "approver role", false)?;
            text_ok(&a.source, "approver source", false)?;
        }
        if self.decision == Decision::Approve && self.approvers.is_empty() {
            return Err(Reject::Malformed("an approval names no approver".into()));
        }
        if self.expires_at <= self.issued_at {
            return Err(Reject::Malformed(
                "expires_at is not after issued_at".into(),
            ));
        }
        Ok(())
    }

    /// Sign with the adapter's key.
    pub fn sign(self, key: &SigningKey) -> SignedEnvelope {
        let sig = key.key.sign(&self.canonical());
        SignedEnvelope {
            signer: key.public().id_hex(),
            signature: hex::encode(sig.to_bytes()),
            envelope: self,
        }
    }
}

impl SignedEnvelope {
    pub fn parse(bytes: &[u8]) -> Result<Self, Reject> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Reject::Malformed(format!(
                "{} bytes, more than {MAX_ENVELOPE_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| Reject::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Check the signature against the trusted keys (by key id; the comparison of the signature itself
    /// is ed25519-dalek's `verify_strict`, which refuses malleable and small-order forms).
    pub fn verify_signature(&self, trusted: &[VerifyingKey]) -> Result<(), Reject> {
        self.envelope.check_shape()?;
        check_signature(
            trusted,
            &self.signer,
            &self.signature,
            &self.envelope.canonical(),
        )
    }
}

/// The signer (a key id, 16 hex digits) among `trusted`, and its Ed25519 signature (128 hex digits) over
/// `msg`, checked with `verify_strict`: what every signed document here (envelope, request, outcome) ends
/// its checks with.
pub fn check_signature(
    trusted: &[VerifyingKey],
    signer: &str,
    signature: &str,
    msg: &[u8],
) -> Result<(), Reject> {
    let key = trusted
        .iter()
        .find(|k| k.id_hex() == signer)
        .ok_or_else(|| Reject::UnknownKey(signer.to_string()))?;
    let raw = hex::decode(signature).map_err(|_| Reject::BadSignature)?;
    let raw: [u8; 64] = raw.try_into().map_err(|_| Reject::BadSignature)?;
    if !key.verify_bytes(msg, &raw) {
        return Err(Reject::BadSignature);
    }
    Ok(())
}

/// What the high side requires of an approval for one environment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Distinct approvers needed.
    pub min_approvals: u32,
    /// Each of these roles must be held by at least one approver.
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Longest allowed `expires_at - issued_at`, seconds.
    pub max_validity_secs: u64,
}

/// The high side's checks, in the order the issue gives (all but the registry of consumed ids, which
/// the receiver keeps): signature, time, environment, rule.
pub fn verify(
    env: &SignedEnvelope,
    trusted: &[VerifyingKey],
    rules: &BTreeMap<String, Rule>,
    now: u64,
    skew: u64,
) -> Result<(), Reject> {
    env.verify_signature(trusted)?;
    let e = &env.envelope;
    if e.issued_at > now.saturating_add(skew) {
        return Err(Reject::Future {
            issued_at: e.issued_at,
            now,
            skew,
        });
    }
    if e.expires_at <= now {
        return Err(Reject::Expired {
            expires_at: e.expires_at,
            now,
        });
    }
    let rule = rules
        .get(&e.environment)
        .ok_or_else(|| Reject::UnknownEnvironment(e.environment.clone()))?;
    let fail = |why: String| Reject::Rule {
        env: e.environment.clone(),
        why,
    };
    if e.expires_at - e.issued_at > rule.max_validity_secs {
        return Err(fail(format!(
            "valid for {} s, at most {} s allowed",
            e.expires_at - e.issued_at,
            rule.max_validity_secs
        )));
    }
    if e.decision == Decision::Reject {
        return Ok(()); // a rejection needs no quorum: it only ever stops a deployment
    }
    let people: BTreeSet<&str> = e.approvers.iter().map(|a| a.id.as_str()).collect();
    if people.contains(e.requester.as_str()) {
        return Err(fail(format!(
            "the requester {} approved their own request",
            e.requester
        )));
    }
    if (people.len() as u64) < rule.min_approvals as u64 {
        return Err(fail(format!(
            "{} distinct approver(s), {} required",
            people.len(),
            rule.min_approvals
        )));
    }
    for role in &rule.required_roles {
        if !e.approvers.iter().any(|a| &a.role == role) {
            return Err(fail(format!("no approver with role {role:?}")));
        }
    }
    Ok(())
}

/// Which kind of signing key: written into the key files so one cannot stand in for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignerRole {
    /// The chat adapter on the low side: signs approval envelopes.
    Adapter,
    /// A pipeline inside the air gap: signs deployment requests.
    Pipeline,
    /// The high side's receiver: signs the outcomes it sends back (`crate::outcome`).
    Outcome,
}

impl SignerRole {
    pub fn word(self) -> &'static str {
        match self {
            SignerRole::Adapter => "adapter",
            SignerRole::Pipeline => "pipeline",
            SignerRole::Outcome => "outcome",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningKeyError {
    #[error("not a diode {0} key file (expected `diode {0} key ...`)")]
    Format(&'static str),
    #[error("this is a {found} key, but a {expected} key is needed here")]
    WrongRole {
        found: String,
        expected: &'static str,
    },
    #[error("key digits are not 64 hex digits")]
    Digits,
    #[error("check digits do not match the key: it was mistyped or damaged")]
    Check,
    #[error("not a valid Ed25519 public key")]
    Invalid,
}

#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    key: ed25519_dalek::VerifyingKey,
}

impl SigningKeyError {
    fn from_line(e: LineError, role: SignerRole) -> Self {
        match e {
            LineError::Format => SigningKeyError::Format(role.word()),
            LineError::WrongRole(found) => SigningKeyError::WrongRole {
                found,
                expected: role.word(),
            },
            LineError::Digits => SigningKeyError::Digits,
            LineError::Check => SigningKeyError::Check,
        }
    }
}

impl SigningKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    pub fn public(&self) -> VerifyingKey {
        VerifyingKey {
            key: self.key.verifying_key(),
        }
    }

    pub fn to_text(&self, role: SignerRole) -> String {
        secret_line(role.word(), &self.key.to_bytes())
    }

    pub fn from_text(text: &str, role: SignerRole) -> Result<Self, SigningKeyError> {
        let seed = parse_secret_line(text, role.word())
            .map_err(|e| SigningKeyError::from_line(e, role))?;
        Ok(Self::from_seed(&seed))
    }

    /// Sign arbitrary bytes (callers add their own domain prefix).
    pub fn sign_bytes(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    // Never print secret material, even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public().id_hex())
    }
}

impl VerifyingKey {
    /// 16 hex digits: SHA-256 of the key, truncated; what `signer` names.
    pub fn id_hex(&self) -> String {
        hex::encode(&Sha256::digest(self.key.as_bytes())[..8])
    }

    pub fn to_text(&self, role: SignerRole) -> String {
        key_line(role.word(), self.key.as_bytes())
    }

    pub fn from_text(text: &str, role: SignerRole) -> Result<Self, SigningKeyError> {
        let bytes =
            parse_key_line(text, role.word()).map_err(|e| SigningKeyError::from_line(e, role))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SigningKeyError::Invalid)?;
        Ok(VerifyingKey { key })
    }

    /// Verify a signature over `msg` (strict: no malleable or small-order forms).
    pub fn verify_bytes(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.key
            .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.id_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(now: u64) -> Envelope {
        Envelope {
            id: "0123456789abcdef0123456789abcdef".into(),
            request_id: "req-1".into(),
            decision: Decision::Approve,
            artifact: Artifact {
                name: "billing".into(),
                version: "1.4.2".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
            },
            environment: "prod".into(),
            approvers: vec![
                Approver {
                    id: "U1".into(),
                    name: "Ada".into(),
                    role: "release-manager".into(),
                    source: "slack".into(),
                    at: now,
                },
                Approver {
                    id: "U2".into(),
                    name: "Bob".into(),
                    role: "security".into(),
                    source: "teams".into(),
                    at: now,
                },
            ],
            requester: "U9".into(),
            rule: "prod: 2 of release-manager+security".into(),
            issued_at: now,
            expires_at: now + 3600,
        }
    }

    fn rules() -> BTreeMap<String, Rule> {
        let mut m = BTreeMap::new();
        m.insert(
            "prod".into(),
            Rule {
                min_approvals: 2,
                required_roles: vec!["release-manager".into(), "security".into()],
                max_validity_secs: 7200,
            },
        );
        m
    }

    #[test]
    fn sign_verify_and_every_reason() {
        let now = 1_800_000_000;
        let k = SigningKey::from_seed(&[3; 32]);
        let trusted = vec![k.public()];
        let s = sample(now).sign(&k);
        let json = s.to_json();
        let back = SignedEnvelope::parse(json.as_bytes()).unwrap();
        assert_eq!(verify(&back, &trusted, &rules(), now, 60), Ok(()));

        let code =
            |e: &SignedEnvelope, now| verify(e, &trusted, &rules(), now, 60).unwrap_err().code();
        // unknown key
        let other = SigningKey::from_seed(&[4; 32]);
        assert_eq!(code(&sample(now).sign(&other), now), "unknown_key");
        // one changed field after signing
        let mut t = s.clone();
        t.envelope.environment = "prod ".into();
        assert_eq!(code(&t, now), "bad_signature");
        let mut t = s.clone();
        t.envelope.expires_at += 1;
        assert_eq!(code(&t, now), "bad_signature");
        assert_eq!(code(&s, now + 3600), "expired");
        assert_eq!(code(&s, now - 61), "future");
        let mut e = sample(now);
        e.environment = "staging".into();
        assert_eq!(code(&e.sign(&k), now), "unknown_environment");
        let mut e = sample(now);
        e.approvers.pop();
        assert_eq!(code(&e.sign(&k), now), "rule_not_met");
        let mut e = sample(now);
        e.approvers[1].role = "developer".into();
        e.approvers.push(Approver {
            id: "U3".into(),
            ..e.approvers[0].clone()
        });
        assert_eq!(code(&e.sign(&k), now), "rule_not_met");
        let mut e = sample(now);
        e.requester = "U1".into();
        assert_eq!(code(&e.sign(&k), now), "rule_not_met");
        let mut e = sample(now);
        e.expires_at = now + 7201;
        assert_eq!(code(&e.sign(&k), now), "rule_not_met");
        // two votes by one person are one approver
        let mut e = sample(now);
        e.approvers[1].id = "U1".into();
        assert_eq!(code(&e.sign(&k), now), "rule_not_met");
        // unknown JSON fields are refused, not ignored
        let extra = json.replacen("\"signer\"", "\"note\": 1, \"signer\"", 1);
        assert_eq!(
            SignedEnvelope::parse(extra.as_bytes()).unwrap_err().code(),
            "malformed"
        );
    }

    #[test]
    fn every_single_byte_flip_of_the_file_is_refused() {
        let now = 1_800_000_000;
        let k = SigningKey::from_seed(&[3; 32]);
        let trusted = vec![k.public()];
        let json = sample(now).sign(&k).to_json().into_bytes();
        for i in 0..json.len() {
            let mut b = json.clone();
            b[i] ^= 0x01;
            if let Ok(e) = SignedEnvelope::parse(&b) {
                // a flip that still parses must either be refused or leave the signed content unchanged
                if verify(&e, &trusted, &rules(), now, 60).is_ok() {
                    assert_eq!(
                        e.envelope,
                        sample(now),
                        "byte {i} changed what was approved"
                    );
                }
            }
        }
    }

    #[test]
    fn key_text_round_trip() {
        let k = SigningKey::from_seed(&[9; 32]);
        let t = k.public().to_text(SignerRole::Adapter);
        assert_eq!(
            VerifyingKey::from_text(&t, SignerRole::Adapter).unwrap(),
            k.public()
        );
        assert!(matches!(
            VerifyingKey::from_text(&t, SignerRole::Pipeline),
            Err(SigningKeyError::WrongRole { .. })
        ));
        let s =
            SigningKey::from_text(&k.to_text(SignerRole::Adapter), SignerRole::Adapter).unwrap();
        assert_eq!(s.public(), k.public());
        assert!(!format!("{s:?}").contains(&hex::encode([9u8; 32])));
    }
}
