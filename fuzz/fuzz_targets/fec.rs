//! Rebuilding a block's lost data shards: `fec::Decoder` solves for a few lost shards itself
//! (`fec::FEW`) and leaves more to reed-solomon-simd's decoder. For any block shape, shard size
//! (a multiple of 64 or not), content and set of shards present, both ways must give back the
//! encoded data byte for byte. Shards that do not belong together (a compromised sender's parity)
//! may rebuild to anything, but neither way may panic.
//!
//! Input: data shards, parity shards, shard size, then a bitmap of the shards present, then the
//! content (repeated to fill the block); with the top bit of the first byte set, the parity shards
//! present are overwritten with the content instead of encoded.
#![no_main]

use diode_proto::fec::{Decoder, Recovery, FEW};
use diode_proto::BlockEncoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [a, b, c, rest @ ..] = input else {
        return;
    };
    let (k, m, s) = (
        1 + *a as usize % 48,
        1 + *b as usize % 24,
        2 * (1 + *c as usize % 100),
    );
    let forged = a & 0x80 != 0;
    let (bitmap, content) = rest.split_at(rest.len().min((k + m).div_ceil(8)));
    let mut present: Vec<bool> = (0..k + m)
        .map(|i| {
            bitmap
                .get(i / 8)
                .is_none_or(|byte| byte & (1 << (i % 8)) != 0)
        })
        .collect();
    // a ready block: at least k shards present (the first absent ones are added back)
    let mut short = k.saturating_sub(present.iter().filter(|p| **p).count());
    for p in present.iter_mut().filter(|p| !**p) {
        if short == 0 {
            break;
        }
        *p = true;
        short -= 1;
    }
    let data: Vec<u8> = if content.is_empty() {
        vec![0x5a; k * s]
    } else {
        content.iter().copied().cycle().take(k * s).collect()
    };
    let mut parity = Vec::new();
    if BlockEncoder::new()
        .encode(&data, s, m, &mut parity)
        .is_err()
    {
        return;
    }
    if forged {
        for (i, byte) in parity.iter_mut().enumerate() {
            *byte ^= data[i % data.len()].rotate_left(3);
        }
    }
    // what is absent is garbage: it must not matter
    let mut buf = [&data[..], &parity[..]].concat();
    for (i, p) in present.iter().enumerate() {
        if !p {
            buf[i * s..(i + 1) * s].fill(0xee);
        }
    }
    let recovery = Recovery {
        data: k,
        parity: m,
        shard_size: s,
        present,
    };
    let mut solved = buf.clone();
    let r1 = recovery.rebuild(&mut solved, &mut Decoder::new(FEW));
    let mut decoded = buf;
    let r2 = recovery.rebuild(&mut decoded, &mut Decoder::new(0));
    if !forged {
        assert!(r1.is_ok() && r2.is_ok(), "{r1:?} {r2:?}");
        assert!(solved[..k * s] == data[..], "solved for: not the data");
        assert!(decoded[..k * s] == data[..], "the crate: not the data");
    }
});
