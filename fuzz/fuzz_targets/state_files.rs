//! The high side's persisted state, read back after a restart from files an attacker with write access
//! to `state/` (or a torn write) may have changed:
//! - bit 0..1 of the first byte = 0: a partial object's state file, `state/partial/*.state`: version byte,
//!   then postcard `([u8; 8], AssemblyState)` (`object::decode_partial_state`), into `Assembly::from_state`, as
//!   `receiver/src/store.rs` (`Partial::load`) reads it;
//! - = 1: a hash-chained audit log (`state/approvals/audit.jsonl`, the adapter's audit) and its head,
//!   `audit::verify` and `Head::from_text`; the rest is `head line \n log`;
//! - = 2: the session counters per sender (`state/senders.json`), as `load_highest` reads them, and a
//!   gap list as `diode-send replay --blocks` takes it (`gap::parse`);
//! - = 3: a line of the sender's journal (`JournalRecord`, JSON).
#![no_main]

use diode_proto::audit::{self, Head};
use diode_proto::journal::JournalRecord;
use diode_proto::object::{decode_partial_state, encode_partial_state, Assembly};
use diode_proto::{gap, KeyId};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode & 3 {
        0 => partial_state(rest),
        1 => audit_log(rest),
        2 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(m) = serde_json::from_str::<BTreeMap<String, u64>>(&text) {
                let _: Vec<(KeyId, u64)> = m
                    .into_iter()
                    .filter_map(|(k, v)| {
                        Some((
                            KeyId(<[u8; 8]>::try_from(hex::decode(k).ok()?.as_slice()).ok()?),
                            v,
                        ))
                    })
                    .collect();
            }
            if let Ok(r) = gap::parse(&text) {
                assert!(r.iter().all(|(a, b)| a <= b));
                assert_eq!(gap::parse(&gap::format(&r)).ok(), Some(r));
            }
        }
        _ => {
            if let Ok(r) = serde_json::from_slice::<JournalRecord>(rest) {
                let again = serde_json::to_string(&r).unwrap_or_default();
                assert_eq!(serde_json::from_str::<JournalRecord>(&again).ok(), Some(r));
            }
        }
    }
});

fn partial_state(bytes: &[u8]) {
    let Ok((sender, st)) = decode_partial_state(bytes) else {
        return;
    };
    if let Ok(asm) = Assembly::from_state(st) {
        // what was restored persists again as a state that restores to the same
        let again = asm.state();
        let bytes = encode_partial_state(sender, &again);
        if let Ok((s2, st2)) = decode_partial_state(&bytes) {
            assert_eq!(s2, sender);
            if let Ok(asm2) = Assembly::from_state(st2) {
                assert_eq!(asm2.state(), again);
                assert_eq!(asm2.done_count(), asm.done_count());
            }
        }
    }
}

fn audit_log(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (head, log) = text.split_once('\n').unwrap_or((&text, ""));
    let head = Head::from_text(head);
    if let Some(h) = head {
        assert_eq!(Head::from_text(&h.to_text()), Some(h));
    }
    if let Ok(end) = audit::verify(log, head.as_ref()) {
        if let Some(h) = head {
            // a log that verifies against a head reaches it, and its first `count` records end at it
            assert!(end.count >= h.count);
            let upto = usize::try_from(h.count).unwrap_or(usize::MAX);
            let prefix: String = log.lines().take(upto).flat_map(|l| [l, "\n"]).collect();
            assert_eq!(audit::verify(&prefix, None), Ok(h));
        }
    }
}
