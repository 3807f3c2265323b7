//! Session announces (`SessionTable::on_announce`): length checks, key ids, the HPKE (RFC 9180) Auth-mode
//! setup and the sealed body, on a fresh table each run (so a finding replays alone). Seeds are real
//! announces under the fixed keys; the fixed sender is trusted.
#![no_main]

use diode_fuzz::{session_table, NOW};
use diode_proto::session::AnnounceOutcome;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut table = session_table();
    let first = table.on_announce(data, NOW * 1000);
    // the periodic repeat of an accepted announce is recognised without a second key agreement
    if let Ok(AnnounceOutcome::New { .. }) = first {
        assert_eq!(
            table.on_announce(data, NOW * 1000 + 1),
            Ok(AnnounceOutcome::Known)
        );
    }
});
