//! Slack's HTTP endpoints as `adapter/src/slack/http.rs` takes a request: the `v0` signature check on
//! the raw body (`signature::verify`, before anything is parsed), then the body as a slash-command form
//! and as an interactivity form whose `payload` is `block_actions` JSON (`fuzz_parse`).
//!
//! First byte, bit 0 set: the rest is a body the target signs with the fixed signing secret at the fixed
//! clock, as Slack would, so every body reaches the parsers. Clear: the rest is
//! `timestamp \n signature \n body`, as received.
#![no_main]

use diode_chat::slack::{http, signature};
use diode_fuzz::{fields, NOW, SLACK_SECRET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (ts, sig, body) = if mode & 1 == 1 {
        let ts = NOW.to_string();
        let sig = signature::sign(SLACK_SECRET, &ts, rest);
        (ts, sig, rest)
    } else {
        let Some(([ts, sig], body)) = fields::<2>(rest) else {
            return;
        };
        (
            String::from_utf8_lossy(ts).into_owned(),
            String::from_utf8_lossy(sig).into_owned(),
            body,
        )
    };
    let verdict = signature::verify(SLACK_SECRET, Some(&ts), Some(&sig), body, NOW);
    if mode & 1 == 1 {
        assert_eq!(verdict, Ok(()), "a body signed like Slack was refused");
    }
    if verdict.is_ok() {
        let _ = http::fuzz_parse(body);
    }
});
