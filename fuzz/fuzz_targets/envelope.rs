//! Approval envelopes as the high side receives them (`SignedEnvelope::parse`, JSON with unknown fields
//! refused) and checks them (`envelope::verify`: shape, key id, Ed25519 `verify_strict`, time, the
//! environment's rule), against the fixed adapter key, rules and clock.
//!
//! First byte, bit 0 set: before checking, the target signs what parsed with the trusted key, as a
//! compromised adapter could, so the checks past the signature (time, rule) see fuzzed content too.
#![no_main]

use diode_fuzz::{adapter_key, rules, trusted_adapters, NOW};
use diode_proto::envelope::{verify, Reject, SignedEnvelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let Ok(mut env) = SignedEnvelope::parse(bytes) else {
        return;
    };
    // what parsed prints as JSON that parses to the same envelope
    assert_eq!(
        SignedEnvelope::parse(env.to_json().as_bytes()).as_ref(),
        Ok(&env)
    );
    if mode & 1 == 1 {
        env = env.envelope.sign(&adapter_key());
    }
    let trusted = trusted_adapters();
    let verdict = verify(&env, &trusted, &rules(), NOW, 120);
    if mode & 1 == 1 {
        // signed by the trusted key: never refused for the key or the signature
        assert!(!matches!(
            verdict,
            Err(Reject::UnknownKey(_)) | Err(Reject::BadSignature)
        ));
    }
    if verdict.is_ok() {
        assert!(env.envelope.check_shape().is_ok());
        assert!(env.envelope.expires_at > NOW);
    }
});
