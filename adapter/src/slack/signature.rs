//! Slack request signatures, version `v0` ("Verifying requests from Slack",
//! https://api.slack.com/authentication/verifying-requests-from-slack): `X-Slack-Signature` is `v0=`
//! and the hex HMAC-SHA256, keyed with the app's signing secret, of `v0:<X-Slack-Request-Timestamp>:<raw
//! body>`. The timestamp must be within five minutes of now, either way. Checked on the raw bytes before
//! anything is parsed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const WINDOW_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Slack-Request-Timestamp header")]
    MissingTimestamp,
    #[error("no X-Slack-Signature header")]
    MissingSignature,
    #[error("X-Slack-Request-Timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the request is {0} s from now, more than {WINDOW_SECS} s: stale or replayed")]
    OutsideWindow(u64),
    #[error("X-Slack-Signature is not v0=<64 hex digits>")]
    Malformed,
    #[error("the signature does not match: wrong signing secret or altered body")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    m
}

/// The header value Slack would send (for tests and for clients that sign like Slack).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Verify a request: the two header values as received (None when absent), the raw body and now.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), SignatureError> {
    let ts_text = timestamp.ok_or(SignatureError::MissingTimestamp)?;
    let sig = signature.ok_or(SignatureError::MissingSignature)?;
    let ts: u64 = ts_text
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let off = now.abs_diff(ts);
    if off > WINDOW_SECS {
        return Err(SignatureError::OutsideWindow(off));
    }
    let digits = sig.strip_prefix("v0=").ok_or(SignatureError::Malformed)?;
    let raw = hex::decode(digits).map_err(|_| SignatureError::Malformed)?;
    if raw.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    // verify_slice compares in constant time.
    mac(secret, ts_text, body)
        .verify_slice(&raw)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example in Slack's "Verifying requests from Slack"
    // (https://api.slack.com/authentication/verifying-requests-from-slack, also docs.slack.dev):
    // signing secret, X-Slack-Request-Timestamp, the slash-command body and the X-Slack-Signature it
    // gives. Quoted as published; the secret is Slack's documentation placeholder.
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const NOW: u64 = 1531420618;

    fn check(
        ts: Option<&str>,
        sig: Option<&str>,
        body: &str,
        now: u64,
    ) -> Result<(), SignatureError> {
        verify(SECRET.as_bytes(), ts, sig, body.as_bytes(), now)
    }

    #[test]
    fn slacks_documented_example() {
        assert_eq!(sign(SECRET.as_bytes(), TS, BODY.as_bytes()), SIG);
        assert_eq!(check(Some(TS), Some(SIG), BODY, NOW), Ok(()));
    }

    #[test]
    fn refusals() {
        let tampered = BODY.replace("roadrunner", "coyote");
        assert_eq!(
            check(Some(TS), Some(SIG), &tampered, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another secret", Some(TS), Some(SIG), BODY.as_bytes(), NOW),
            Err(SignatureError::Mismatch)
        );
        // five minutes either way is fine, a second more is not
        assert_eq!(check(Some(TS), Some(SIG), BODY, NOW + 300), Ok(()));
        assert_eq!(check(Some(TS), Some(SIG), BODY, NOW - 300), Ok(()));
        assert_eq!(
            check(Some(TS), Some(SIG), BODY, NOW + 301),
            Err(SignatureError::OutsideWindow(301))
        );
        assert_eq!(
            check(Some(TS), Some(SIG), BODY, NOW - 301),
            Err(SignatureError::OutsideWindow(301))
        );
        assert_eq!(
            check(None, Some(SIG), BODY, NOW),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            check(Some(TS), None, BODY, NOW),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            check(Some("soon"), Some(SIG), BODY, NOW),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            check(Some(TS), Some(&SIG[3..]), BODY, NOW),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            check(Some(TS), Some("v0=abcd"), BODY, NOW),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            check(Some(TS), Some(&SIG.replace("v0=", "v1=")), BODY, NOW),
            Err(SignatureError::Malformed)
        );
        // the timestamp is signed: moving it breaks the signature even inside the window
        assert_eq!(
            check(Some("1531420619"), Some(SIG), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
    }
}
