//! Microsoft Teams, both ways in:
//! - bit 0 of the first byte clear: the outgoing webhook (`teams::Webhook::verify`): `Authorization:
//!   HMAC` on the raw body, then the activity JSON, its RFC 3339 timestamp and the window (the replay
//!   guard is the engine's delivery log, not the webhook's), then the message text without mentions (`strip_mentions`). Bit 1 set: the target computes
//!   the HMAC over the body with the fixed token, so every body reaches the parser; clear: the rest is
//!   `authorization \n body`.
//! - bit 0 set: the bot endpoint's bearer token (`teams_bot::Bot::validate`: JWT header, RS256 only, key
//!   by kid from the test JWKS, issuer, audience, expiry, serviceUrl claim); the rest is
//!   `authorization \n serviceUrl`, and the activity JSON parse the endpoint does first.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use diode_chat::teams::{strip_mentions, Webhook};
use diode_chat::teams_bot::Bot;
use diode_fuzz::{fields, jwks_file, BOT_APP_ID, NOW, TEAMS_TOKEN};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use std::sync::LazyLock;

/// Runs the bot's (async) token check to completion: a future left unpolled checks nothing.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("a runtime for the bot's check: {e}"),
    }
});

static BOT: LazyLock<Bot> = LazyLock::new(|| match Bot::load(BOT_APP_ID, &jwks_file()) {
    Ok(b) => b,
    Err(e) => panic!("the test JWKS must load: {e:#}"),
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let Some(([auth], service_url)) = fields::<1>(rest) else {
            return;
        };
        let auth = String::from_utf8_lossy(auth);
        let service_url = String::from_utf8_lossy(service_url);
        let _ = RT.block_on(BOT.validate(Some(&auth), &service_url, NOW));
        let _ = serde_json::from_slice::<serde_json::Value>(rest);
        return;
    }
    // a fresh webhook each run, so that no finding depends on earlier inputs
    let hook = match Webhook::new(TEAMS_TOKEN) {
        Ok(h) => h,
        Err(e) => panic!("the fixed token must load: {e:#}"),
    };
    let (auth, body) = if mode & 2 == 2 {
        let key = B64.decode(TEAMS_TOKEN).unwrap_or_default();
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
        m.update(rest);
        (
            format!("HMAC {}", B64.encode(m.finalize().into_bytes())),
            rest,
        )
    } else {
        let Some(([auth], body)) = fields::<1>(rest) else {
            return;
        };
        (String::from_utf8_lossy(auth).into_owned(), body)
    };
    let verdict = hook.verify(Some(&auth), body, NOW);
    if mode & 2 == 2 {
        assert!(
            hook.verify_hmac(Some(&auth), body).is_ok(),
            "a body signed like Teams was refused"
        );
    }
    if let Ok(activity) = verdict {
        let _ = strip_mentions(&activity.text);
        // the verdict depends on the bytes alone (replays are refused later, by the activity id in the
        // engine's persisted delivery log, `Engine::once`: adapter/src/store.rs's tests)
        assert!(hook.verify(Some(&auth), body, NOW).is_ok());
    }
});
