//! The serial link's byte stream (`diode_proto::stream::Deframer`): any bytes, cut into reads at
//! places the input chooses, must never panic or grow memory past one frame, and every frame it hands on
//! must be one whose CRC-32 matched; those frames then go to the session table as on UDP. Seeds are real
//! framed announces and sealed frames under the fixed keys.
#![no_main]

use diode_fuzz::{session_table, NOW};
use diode_proto::stream::Deframer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // the first byte chooses the read size, as a UART driver would cut the stream
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut d = Deframer::new();
    let mut table = session_table();
    let mut frames = 0u64;
    for chunk in stream.chunks(usize::from(cut).max(1)) {
        d.push(chunk, |f| {
            frames += 1;
            let _ = table.on_announce(f, NOW * 1000);
            let _ = table.open(f, NOW * 1000, |_, _| true);
        });
    }
    assert_eq!(d.stats.frames, frames);
});
