//! Object metadata (postcard `ObjectMeta`, checked by `ObjectMeta::decode`: safe name, size, FEC
//! geometry) and heartbeats, the two postcard payloads of sealed frames; then what the receiver builds
//! from accepted metadata (`Assembly::new`) and the inbox path of its name (`safe_name`).
#![no_main]

use diode_proto::object::{decode_heartbeat, encode_heartbeat, safe_name, Assembly, ObjectMeta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = ObjectMeta::decode(data) {
        // what decode accepted re-encodes to something that decodes to the same
        assert_eq!(ObjectMeta::decode(&meta.encode()).as_ref(), Ok(&meta));
        let parts = safe_name(&meta.name).unwrap_or_default();
        assert!(!parts.is_empty());
        assert!(parts
            .iter()
            .all(|p| !p.is_empty() && *p != ".." && *p != "." && !p.contains('/')));
        if let Ok(asm) = Assembly::new(meta) {
            assert!(asm.block_count() >= 1);
            let _ = asm.missing();
        }
    }
    if let Some(hb) = decode_heartbeat(data) {
        assert_eq!(decode_heartbeat(&encode_heartbeat(&hb)), Some(hb));
    }
});
