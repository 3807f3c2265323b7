//! Session announces (`SessionTable::on_announce`): length checks, key ids, the HPKE (RFC 9180) Auth-mode
//! setup and the sealed body, on a fresh table each run (so a finding replays alone). Seeds are real
//! announces under the fixed keys; the fixed sender is trusted. Each input is tried twice: as it is (the
//! MAC, protocol 3's first check, refuses almost every mutation), and with its last 32 bytes replaced by
//! the MAC the fixed sender would put there, so altered bodies, counters and encapsulated keys reach the
//! HPKE setup and the body checks behind it.
#![no_main]

use diode_fuzz::{receiver_key, sender_key, session_table, NOW};
use diode_proto::session::{announce_mac, AnnounceOutcome, ANNOUNCE_TRAILER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= ANNOUNCE_TRAILER_LEN {
        let mut signed = data.to_vec();
        let at = signed.len() - 32;
        if let Some(mac) = announce_mac(&sender_key(), receiver_key().public(), &signed[..at]) {
            signed[at..].copy_from_slice(&mac);
            check(&signed);
        }
    }
});

fn check(data: &[u8]) {
    let mut table = session_table();
    let first = table.on_announce(data, NOW * 1000);
    // the periodic repeat of an accepted announce is recognised without a second key agreement
    if let Ok(AnnounceOutcome::New { .. }) = first {
        assert_eq!(
            table.on_announce(data, NOW * 1000 + 1),
            Ok(AnnounceOutcome::Known)
        );
    }
}
