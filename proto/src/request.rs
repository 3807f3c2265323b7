//! Deployment request envelopes: what a pipeline inside the air gap sends out through the reverse diode to
//! ask for an approval. Signed with Ed25519 by a pipeline key the low side trusts (the same key format as
//! the adapter's, role `pipeline`), over `REQUEST_DOMAIN` + the postcard encoding of the request, so a
//! request can never be taken for an approval or the other way round. The approval that comes back
//! through the forward diode names the request's id as its `request_id` and the same digest.
//!
//! On the wire (and on disk) a request is the JSON of `SignedRequest`, in a file `<id>.request`.

use crate::envelope::{
    check_signature, digest_ok, is_hex_id, Artifact, Reject, SigningKey, VerifyingKey,
};
use serde::{Deserialize, Serialize};

/// Domain separation for request signatures.
pub const REQUEST_DOMAIN: &[u8] = b"diode deployment request v1\0";
/// File name suffix of a request.
pub const REQUEST_SUFFIX: &str = ".request";
/// Largest request file: a request is a few hundred bytes; this bounds what the reverse link carries.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
const MAX_TEXT: usize = 256;
const MAX_REASON: usize = 1024;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// 32 lowercase hex digits, chosen by the requester; the approval's `request_id`.
    pub id: String,
    pub artifact: Artifact,
    pub environment: String,
    /// Who asks (the pipeline's name, a person's id).
    pub requester: String,
    pub reason: String,
    /// Unix seconds.
    pub created_at: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    pub request: Request,
    /// Key id (16 hex digits) of the pipeline key.
    pub signer: String,
    /// Ed25519 signature, 128 hex digits.
    pub signature: String,
}

fn text(s: &str, what: &str, max: usize) -> Result<(), Reject> {
    if s.is_empty() || s.len() > max || s.chars().any(|c| c.is_control()) {
        return Err(Reject::Malformed(format!(
            "{what} must be 1-{max} printable characters"
        )));
    }
    Ok(())
}

impl Request {
    /// The bytes the signature covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = REQUEST_DOMAIN.to_vec();
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    pub fn check_shape(&self) -> Result<(), Reject> {
        if !is_hex_id(&self.id, 32) {
            return Err(Reject::Malformed(
                "request id must be 32 lowercase hex digits".into(),
            ));
        }
        text(&self.artifact.name, "artifact name", MAX_TEXT)?;
        text(&self.artifact.version, "artifact version", MAX_TEXT)?;
        if !digest_ok(&self.artifact.digest) {
            return Err(Reject::Malformed(
                "artifact digest must be sha256: and 64 lowercase hex digits".into(),
            ));
        }
        text(&self.environment, "environment", MAX_TEXT)?;
        text(&self.requester, "requester", MAX_TEXT)?;
        text(&self.reason, "reason", MAX_REASON)?;
        Ok(())
    }

    pub fn sign(self, key: &SigningKey) -> SignedRequest {
        SignedRequest {
            signer: key.public().id_hex(),
            signature: hex::encode(key.sign_bytes(&self.canonical())),
            request: self,
        }
    }
}

impl SignedRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, Reject> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(Reject::Malformed(format!(
                "{} bytes, more than {MAX_REQUEST_BYTES}",
                bytes.len()
            )));
        }
        let r: SignedRequest =
            serde_json::from_slice(bytes).map_err(|e| Reject::Malformed(e.to_string()))?;
        r.request.check_shape()?;
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The file name it travels under.
    pub fn file_name(&self) -> String {
        format!("{}{REQUEST_SUFFIX}", self.request.id)
    }

    /// Check shape, signer and signature (verify_strict), then age: a request created more than `skew`
    /// seconds in the future, or more than `max_age` seconds ago, is refused.
    pub fn verify(
        &self,
        trusted: &[VerifyingKey],
        now: u64,
        skew: u64,
        max_age: u64,
    ) -> Result<(), Reject> {
        self.request.check_shape()?;
        check_signature(
            trusted,
            &self.signer,
            &self.signature,
            &self.request.canonical(),
        )?;
        let created = self.request.created_at;
        if created > now.saturating_add(skew) {
            return Err(Reject::Future {
                issued_at: created,
                now,
                skew,
            });
        }
        if now > created.saturating_add(max_age) {
            return Err(Reject::Expired {
                expires_at: created.saturating_add(max_age),
                now,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed(&[seed; 32])
    }

    fn request() -> Request {
        Request {
            id: "0123456789abcdef0123456789abcdef".into(),
            artifact: Artifact {
                name: "billing".into(),
                version: "1.4.2".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
            },
            environment: "prod".into(),
            requester: "pipeline:release".into(),
            reason: "quarterly release".into(),
            created_at: 1_000_000,
        }
    }

    #[test]
    fn a_signed_request_verifies_and_every_alteration_is_refused() {
        let k = key(1);
        let s = request().sign(&k);
        let json = s.to_json();
        let back = SignedRequest::parse(json.as_bytes()).unwrap();
        assert_eq!(back, s);
        back.verify(&[k.public()], 1_000_010, 120, 86400).unwrap();
        // any one byte of the JSON changed: refused (bad JSON, bad shape or bad signature), never accepted
        let bytes = json.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] = if b[i] == b'1' { b'2' } else { b'1' };
            if b == bytes {
                continue;
            }
            if let Ok(r) = SignedRequest::parse(&b) {
                assert!(
                    r.verify(&[k.public()], 1_000_010, 120, 86400).is_err() || r == s,
                    "byte {i} changed and still verified"
                );
            }
        }
        assert_eq!(
            s.verify(&[key(2).public()], 1_000_010, 120, 86400)
                .unwrap_err()
                .code(),
            "unknown_key"
        );
        assert_eq!(
            s.verify(&[k.public()], 1_000_000 + 86401, 120, 86400)
                .unwrap_err()
                .code(),
            "expired"
        );
        assert_eq!(
            s.verify(&[k.public()], 1_000_000 - 121, 120, 86400)
                .unwrap_err()
                .code(),
            "future"
        );
    }

    #[test]
    fn a_request_signature_is_not_an_approval_signature() {
        // the same key signing the same fields in an approval must not verify as a request: the domains
        // differ
        let k = key(3);
        let s = request().sign(&k);
        let e = Envelope {
            id: s.request.id.clone(),
            request_id: s.request.id.clone(),
            decision: crate::envelope::Decision::Approve,
            artifact: s.request.artifact.clone(),
            environment: "prod".into(),
            approvers: vec![],
            requester: "x".into(),
            rule: String::new(),
            issued_at: 1,
            expires_at: 2,
        };
        let raw: [u8; 64] = hex::decode(&s.signature).unwrap().try_into().unwrap();
        assert!(!k.public().verify_bytes(&e.canonical(), &raw));
    }

    #[test]
    fn oversize_and_malformed_requests_are_refused_unparsed() {
        assert_eq!(
            SignedRequest::parse(&vec![b' '; MAX_REQUEST_BYTES + 1])
                .unwrap_err()
                .code(),
            "malformed"
        );
        let mut r = request();
        r.artifact.digest = "md5:abc".into();
        let k = key(4);
        let json = r.sign(&k).to_json();
        assert_eq!(
            SignedRequest::parse(json.as_bytes()).unwrap_err().code(),
            "malformed"
        );
    }
}
