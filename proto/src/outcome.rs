//! Outcomes: what the high side did with each approval envelope, sent back to the low side through the
//! reverse diode (the one that carries requests) so that the chat message can say "deployed" or
//! "refused: expired". An outcome is one record of the high side's hash-chained audit log (`accept`,
//! `reject`, `consume`, `hook`: `crate::audit`), exactly as written there, signed with Ed25519 by the
//! high side's outcome key (role `outcome`, a key of its own: the receiver's link key never signs
//! anything) over `OUTCOME_DOMAIN` + the postcard encoding of the outcome. Because every record of the
//! log travels and each carries its place in the chain (`seq`, `prev`, `hash`), the low side can check
//! that the copy it holds is the high side's log, record for record, with no gap and no edit.
//!
//! On the wire (and on disk) an outcome is the JSON of `SignedOutcome`, in a file `<hash>.outcome`
//! (the first 32 hex digits of the record's hash).

use crate::audit::{self, Link};
use crate::envelope::{check_signature, is_hex_id, Reject, SigningKey, VerifyingKey};
use crate::object::invisible;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Domain separation for outcome signatures: an outcome is never taken for a request or an approval.
pub const OUTCOME_DOMAIN: &[u8] = b"diode high-side outcome v1\0";
/// File name suffix of an outcome.
pub const OUTCOME_SUFFIX: &str = ".outcome";
/// Largest outcome file; like a request, it bounds what the reverse link carries.
pub const MAX_OUTCOME_BYTES: usize = 16 * 1024;
/// Largest audit record an outcome carries.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
const MAX_NAME: usize = 64;
const MAX_TEXT: usize = 512;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// The high side's name (`[approvals.outcomes] name` in its recv.toml): the low side keeps one copy
    /// of the chain per name.
    pub receiver: String,
    /// One record of the high side's audit log, one JSON line, as written there.
    pub record: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedOutcome {
    pub outcome: Outcome,
    /// Key id (16 hex digits) of the outcome key.
    pub signer: String,
    /// Ed25519 signature, 128 hex digits.
    pub signature: String,
}

/// What happened on the high side, by the record's `event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The envelope verified and was put in `approvals/` (an approval, or a rejection, by `decision`).
    Accepted,
    /// The envelope was refused into quarantine; `reason` is the code (docs/approvals.md).
    Refused,
    /// A pipeline consumed the approval to deploy.
    Consumed,
    /// The approval hook ran (`ok`, `attempt`, `detail`).
    Hook,
    /// An event this version does not know (a newer high side): kept and shown as its word.
    Other(String),
}

impl Event {
    pub fn word(&self) -> &str {
        match self {
            Event::Accepted => "accept",
            Event::Refused => "reject",
            Event::Consumed => "consume",
            Event::Hook => "hook",
            Event::Other(w) => w,
        }
    }
}

/// The facts of an outcome's record, checked for shape (every text bounded and printable, ids hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub link: Link,
    pub event: Event,
    /// When the high side wrote the record (its clock, Unix seconds).
    pub at: u64,
    /// The approval envelope's id (absent for a refused file that was not an envelope at all).
    pub envelope_id: Option<String>,
    pub request_id: Option<String>,
    /// `approve` or `reject`, for an accepted envelope.
    pub decision: Option<String>,
    pub environment: Option<String>,
    /// The reason code of a refusal.
    pub reason: Option<String>,
    /// A refusal's or a hook run's detail.
    pub detail: Option<String>,
    /// Who consumed it (the pipeline's name, or the user running it).
    pub by: Option<String>,
    /// A hook run: whether it succeeded, and which attempt it was.
    pub ok: Option<bool>,
    pub attempt: Option<u64>,
}

/// Non-empty, at most `max` bytes, nothing that hides or reorders what is shown.
fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(|c| c.is_control() || invisible(c))
}

fn malformed(why: impl Into<String>) -> Reject {
    Reject::Malformed(why.into())
}

impl Outcome {
    /// The bytes the signature covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = OUTCOME_DOMAIN.to_vec();
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    pub fn sign(self, key: &SigningKey) -> SignedOutcome {
        SignedOutcome {
            signer: key.public().id_hex(),
            signature: hex::encode(key.sign_bytes(&self.canonical())),
            outcome: self,
        }
    }

    /// Check the shape and read the record: a record of an audit chain whose hash matches its content,
    /// with an event word, a time, and every field the low side shows bounded and printable.
    pub fn facts(&self) -> Result<Facts, Reject> {
        if !printable(&self.receiver, MAX_NAME) {
            return Err(malformed(format!(
                "receiver name must be 1-{MAX_NAME} printable characters"
            )));
        }
        if self.record.len() > MAX_RECORD_BYTES || self.record.contains('\n') {
            return Err(malformed(format!(
                "the record must be one line of at most {MAX_RECORD_BYTES} bytes"
            )));
        }
        let link = audit::link(&self.record).map_err(|e| malformed(format!("record: {e}")))?;
        let v: Value =
            serde_json::from_str(&self.record).map_err(|e| malformed(format!("record: {e}")))?;
        let text = |k: &str, max: usize| -> Result<Option<String>, Reject> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if printable(s, max) => Ok(Some(s.clone())),
                Some(_) => Err(malformed(format!(
                    "record field {k} must be 1-{max} printable characters"
                ))),
            }
        };
        let id = |k: &str| -> Result<Option<String>, Reject> {
            let s = text(k, 32)?;
            if s.as_deref().is_some_and(|s| !is_hex_id(s, 32)) {
                return Err(malformed(format!(
                    "record field {k} must be 32 lowercase hex digits"
                )));
            }
            Ok(s)
        };
        let word = text("event", 40)?
            .filter(|w| w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .ok_or_else(|| malformed("record has no event word"))?;
        let event = match word.as_str() {
            "accept" => Event::Accepted,
            "reject" => Event::Refused,
            "consume" => Event::Consumed,
            "hook" => Event::Hook,
            _ => Event::Other(word),
        };
        let reason = text("reason", 40)?;
        if reason
            .as_deref()
            .is_some_and(|r| !r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(malformed("record field reason must be a code word"));
        }
        Ok(Facts {
            link,
            event,
            at: v
                .get("at")
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed("record has no time"))?,
            envelope_id: id("id")?,
            // the envelope's request_id: any short printable text (the adapter's `req-…`, a pipeline's hex id)
            request_id: text("request_id", 256)?,
            decision: text("decision", 16)?,
            environment: text("environment", 256)?,
            reason,
            detail: text("detail", MAX_TEXT)?,
            by: text("by", 256)?,
            ok: v.get("ok").and_then(Value::as_bool),
            attempt: v.get("attempt").and_then(Value::as_u64),
        })
    }
}

impl SignedOutcome {
    /// Parse and check the shape (not the signature).
    pub fn parse(bytes: &[u8]) -> Result<Self, Reject> {
        if bytes.len() > MAX_OUTCOME_BYTES {
            return Err(malformed(format!(
                "{} bytes, more than {MAX_OUTCOME_BYTES}",
                bytes.len()
            )));
        }
        let o: SignedOutcome =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        o.outcome.facts()?;
        Ok(o)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The file name it travels under: the first 32 hex digits of the record's hash (the same record
    /// always has the same name, so writing it twice makes one file).
    pub fn file_name(&self) -> Result<String, Reject> {
        let f = self.outcome.facts()?;
        Ok(format!(
            "{}{OUTCOME_SUFFIX}",
            &hex::encode(f.link.hash)[..32]
        ))
    }

    /// Check shape, signer and signature (verify_strict). Returns the record's facts.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<Facts, Reject> {
        let facts = self.outcome.facts()?;
        check_signature(
            trusted,
            &self.signer,
            &self.signature,
            &self.outcome.canonical(),
        )?;
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{chain, Head};
    use serde_json::{json, Map};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed(&[seed; 32])
    }

    fn record(head: &Head, fields: Value) -> (String, Head) {
        let Value::Object(m) = fields else {
            return chain(head, Map::new());
        };
        chain(head, m)
    }

    fn consumed() -> Outcome {
        let (line, _) = record(
            &Head::default(),
            json!({"event": "consume", "at": 1_700_000_000u64, "id": "ab".repeat(16),
                "request_id": "cd".repeat(16), "environment": "prod", "by": "ci-runner-3", "pid": 4242}),
        );
        Outcome {
            receiver: "high-1".into(),
            record: line,
        }
    }

    #[test]
    fn a_signed_outcome_verifies_and_every_alteration_is_refused() {
        let k = key(7);
        let s = consumed().sign(&k);
        let json = s.to_json();
        let back = SignedOutcome::parse(json.as_bytes()).unwrap();
        assert_eq!(back, s);
        let f = back.verify(&[k.public()]).unwrap();
        assert_eq!(f.event, Event::Consumed);
        assert_eq!(f.by.as_deref(), Some("ci-runner-3"));
        assert_eq!(f.envelope_id, Some("ab".repeat(16)));
        assert_eq!(f.link.seq, 1);
        assert!(s.file_name().unwrap().ends_with(".outcome"));
        // any one byte of the JSON changed: refused (bad JSON, bad shape or bad signature), never accepted
        let bytes = json.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] = if b[i] == b'1' { b'2' } else { b'1' };
            if b == bytes {
                continue;
            }
            if let Ok(r) = SignedOutcome::parse(&b) {
                assert!(
                    r.verify(&[k.public()]).is_err() || r == s,
                    "byte {i} changed and still verified"
                );
            }
        }
        // another key, a request key's signature over the same bytes: refused
        assert_eq!(
            s.verify(&[key(8).public()]).unwrap_err().code(),
            "unknown_key"
        );
        let mut forged = s.clone();
        forged.signer = key(8).public().id_hex();
        forged.signature =
            hex::encode(key(8).sign_bytes(&s.outcome.canonical()[OUTCOME_DOMAIN.len()..]));
        assert_eq!(
            forged.verify(&[key(8).public()]).unwrap_err().code(),
            "bad_signature"
        );
    }

    #[test]
    fn a_record_edited_before_signing_or_out_of_shape_is_refused() {
        let k = key(7);
        // the high side's own log edited, then signed: the record's hash no longer matches
        let mut o = consumed();
        o.record = o.record.replace("ci-runner-3", "ci-runner-4");
        assert!(o.clone().sign(&k).verify(&[k.public()]).is_err());
        // a control character in a shown field (a bidi override), a bad id, an oversize record
        for fields in [
            json!({"event": "consume", "at": 1, "by": "ci\u{202e}3"}),
            json!({"event": "consume", "at": 1, "id": "not-hex"}),
            json!({"event": "reject", "at": 1, "reason": "Expired!"}),
            json!({"event": "Consume", "at": 1}),
            json!({"event": "consume"}),
            json!({"event": "hook", "at": 1, "detail": "x".repeat(MAX_RECORD_BYTES)}),
        ] {
            let (line, _) = record(&Head::default(), fields.clone());
            let o = Outcome {
                receiver: "high-1".into(),
                record: line,
            };
            assert!(o.facts().is_err(), "{fields} was taken");
        }
        let o = Outcome {
            receiver: "high\n1".into(),
            ..consumed()
        };
        assert!(o.facts().is_err());
    }
}
