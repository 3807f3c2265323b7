//! Outcomes as the low side takes them from the reverse diode (`SignedOutcome::parse`: JSON with unknown
//! fields refused, 16 KiB; the record inside checked on its own with `audit::link` and every shown field
//! bounded and printable) and checks them (`SignedOutcome::verify` against the fixed outcome key).
//!
//! First byte, bit 0 set: before checking, the target signs what parsed with the trusted key, as a
//! compromised high side could, so what lies past the signature sees fuzzed content too.
#![no_main]

use diode_fuzz::outcome_key;
use diode_proto::envelope::Reject;
use diode_proto::outcome::SignedOutcome;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let Ok(mut o) = SignedOutcome::parse(bytes) else {
        return;
    };
    // what parsed prints as JSON that parses to the same outcome, under a name of its own record
    assert_eq!(
        SignedOutcome::parse(o.to_json().as_bytes()).as_ref(),
        Ok(&o)
    );
    assert!(o.file_name().is_ok());
    if mode & 1 == 1 {
        o = o.outcome.sign(&outcome_key());
    }
    let verdict = o.verify(&[outcome_key().public()]);
    if mode & 1 == 1 {
        // signed by the trusted key: never refused for the key or the signature
        assert!(!matches!(
            verdict,
            Err(Reject::UnknownKey(_)) | Err(Reject::BadSignature)
        ));
    }
    if let Ok(f) = verdict {
        // what the low side shows has no control or format character
        for t in [&f.by, &f.detail, &f.environment, &f.reason, &f.request_id] {
            assert!(t.as_deref().is_none_or(|t| !t
                .chars()
                .any(|c| c.is_control() || diode_proto::object::invisible(c))));
        }
        assert!(f.link.seq >= 1);
    }
});
