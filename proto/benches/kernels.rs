//! The per-block kernels of the data path, on one full block of the default geometry (128 data + 24
//! parity shards of 1408 bytes, what a 1500-byte MTU gives). Throughput is counted in object data bytes
//! (128 x 1408 = 180 224 per block), so the figures read directly as goodput.
//!
//! - `seal+fec_encode`: `BlockEncoder::encode` plus copying each of the 152 shards into a frame batch
//!   and sealing it with `SenderSession::seal`, as the sender's encoder and transmitter do.
//! - `open+fec_decode/no_loss`: all 152 frames offered to `SessionTable::open` with the receiver's
//!   `Assembly::wants` filter and the opened shards to `Assembly::insert` until `finish_block`; the
//!   data shards complete the block, so no decoding, and the 24 parity frames are skipped unopened.
//! - `open+fec_decode/2_data_lost`, `/10_data_lost`: the same with 2 or 10 data shards lost, so as
//!   many parity shards are opened and the block is rebuilt (2 lost is about what 1 % per-datagram loss
//!   leaves; both are solved for, being at most `fec::FEW`).
//! - `rebuild/<solver>/<e>_lost`: `Recovery::rebuild` alone (what the receiver's writer or decoding
//!   threads run) on a block that lost `e` data shards, by solving for them (`few`, the receiver's
//!   default up to `fec::FEW` lost) or by reed-solomon-simd's decoder (`crate`, `Decoder::new(0)`).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use diode_proto::frame::{FrameKind, SEALED_HEADER_LEN, TAG_LEN};
use diode_proto::object::{Assembly, ObjectKind, ObjectMeta, Step};
use diode_proto::session::{Opened, SenderSession, SessionTable};
use diode_proto::{BlockEncoder, Geometry, SecretKey};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::hint::black_box;

const SHARD: usize = 1408;
const DATA: usize = 128;
const PARITY: usize = 24;
const SHARDS: usize = DATA + PARITY;
const FRAME: usize = SEALED_HEADER_LEN + SHARD + TAG_LEN;
const OBJECT: u64 = 0x0123_4567_89ab_cdef;

struct Setup {
    data: Vec<u8>,
    meta: ObjectMeta,
    session: SenderSession,
    table: SessionTable,
}

fn setup() -> Setup {
    let mut rng = StdRng::seed_from_u64(42);
    let mut data = vec![0u8; DATA * SHARD];
    rng.fill_bytes(&mut data);
    let sender = SecretKey::from_seed(&[1; 32]);
    let receiver = SecretKey::from_seed(&[2; 32]);
    let session = SenderSession::start(&sender, receiver.public(), 1, 0, &mut rng).unwrap();
    let mut table = SessionTable::new(receiver, vec![sender.public().clone()], HashMap::new());
    table.on_announce(session.announce(), 0).unwrap();
    let g = Geometry::new(SHARD, DATA, PARITY).unwrap();
    assert_eq!(g.parity_for(DATA), PARITY);
    let meta = ObjectMeta {
        id: OBJECT,
        name: "bench/block.bin".into(),
        size: data.len() as u64,
        hash: *blake3::hash(&data).as_bytes(),
        kind: ObjectKind::File,
        shard_size: SHARD as u32,
        data_shards: DATA as u16,
        parity_shards: PARITY as u16,
        mtime: 0,
    };
    Setup {
        data,
        meta,
        session,
        table,
    }
}

/// Encode the block and seal all its frames into `batch` (152 frames back to back).
fn seal_block(
    enc: &mut BlockEncoder,
    session: &mut SenderSession,
    data: &[u8],
    parity: &mut Vec<u8>,
    batch: &mut [u8],
) {
    enc.encode(data, SHARD, PARITY, parity).unwrap();
    for (i, frame) in batch.chunks_exact_mut(FRAME).enumerate() {
        let payload = if i < DATA {
            &data[i * SHARD..(i + 1) * SHARD]
        } else {
            &parity[(i - DATA) * SHARD..(i - DATA + 1) * SHARD]
        };
        frame[SEALED_HEADER_LEN..SEALED_HEADER_LEN + SHARD].copy_from_slice(payload);
        session
            .seal(FrameKind::Shard, OBJECT, 0, i as u16, frame)
            .unwrap();
    }
}

fn kernels(c: &mut Criterion) {
    let Setup {
        data,
        meta,
        mut session,
        mut table,
    } = setup();
    let mut enc = BlockEncoder::new();
    let mut parity = Vec::new();
    let mut batch = vec![0u8; SHARDS * FRAME];

    let mut g = c.benchmark_group("kernels");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("seal+fec_encode", |b| {
        b.iter(|| {
            seal_block(&mut enc, &mut session, &data, &mut parity, &mut batch);
            black_box(&batch);
        })
    });

    // one sealed block, kept pristine: each iteration opens (decrypts in place) a fresh copy
    let mut sealed = vec![0u8; SHARDS * FRAME];
    seal_block(&mut enc, &mut session, &data, &mut parity, &mut sealed);
    // the receiver's decoder, reused across blocks as the receiver does
    let mut decoder = diode_proto::fec::Decoder::default();
    for (name, lost) in [
        ("open+fec_decode/no_loss", vec![]),
        // ten data shards spread over the block
        ("open+fec_decode/2_data_lost", vec![17, 90]),
        (
            "open+fec_decode/10_data_lost",
            (0..10).map(|i| i * 13 + 5).collect::<Vec<usize>>(),
        ),
    ] {
        let mut check = None;
        let mut buffers = diode_proto::object::Buffers::new(64 << 20);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || (sealed.clone(), Assembly::new(meta.clone()).unwrap()),
                |(frames, asm)| {
                    let mut opened = 0usize;
                    for (i, f) in frames.chunks_exact_mut(FRAME).enumerate() {
                        if lost.contains(&i) {
                            continue;
                        }
                        let asm_ref = &*asm;
                        let r = table
                            .open(f, 1, |h, _| asm_ref.wants(h.block, h.shard))
                            .unwrap();
                        let Opened::Fresh(h, _) = r else {
                            continue;
                        };
                        opened += 1;
                        let payload = &f[SEALED_HEADER_LEN..FRAME - TAG_LEN];
                        if asm.insert(h.block, h.shard, payload, &mut buffers).unwrap()
                            == Step::Ready
                        {
                            let (_, block) = asm.finish_block(h.block, &mut decoder).unwrap();
                            black_box(block);
                            if check.is_none() {
                                check = Some(block == &data[..]);
                            }
                            asm.mark_done(h.block);
                        }
                    }
                    assert!(asm.is_complete());
                    assert_eq!(opened, DATA, "only the shards needed are opened");
                },
                BatchSize::LargeInput,
            )
        });
        // None: filtered out of this run
        assert_ne!(
            check,
            Some(false),
            "{name}: the block was not rebuilt exactly"
        );
    }
    g.finish();
}

fn rebuild(c: &mut Criterion) {
    use diode_proto::fec::{Decoder, Recovery, FEW};
    let mut rng = StdRng::seed_from_u64(7);
    let mut data = vec![0u8; DATA * SHARD];
    rng.fill_bytes(&mut data);
    let mut parity = Vec::new();
    BlockEncoder::new()
        .encode(&data, SHARD, PARITY, &mut parity)
        .unwrap();
    let mut g = c.benchmark_group("rebuild");
    g.throughput(Throughput::Bytes((DATA * SHARD) as u64));
    for e in [1, 2, 4, 8, 16, 24] {
        // data shards lost spread over the block, as per-datagram loss leaves them
        let lost: Vec<usize> = (0..e).map(|i| i * DATA / e + 3).collect();
        let present: Vec<bool> = (0..SHARDS)
            .map(|i| if i < DATA { !lost.contains(&i) } else { true })
            .collect();
        let recovery = Recovery {
            data: DATA,
            parity: PARITY,
            shard_size: SHARD,
            present,
        };
        for (solver, max_few) in [("few", FEW), ("crate", 0)] {
            if solver == "few" && e > FEW {
                continue;
            }
            let mut buf = [&data[..], &parity[..]].concat();
            for &i in &lost {
                buf[i * SHARD..(i + 1) * SHARD].fill(0);
            }
            let mut dec = Decoder::new(max_few);
            recovery.rebuild(&mut buf, &mut dec).unwrap();
            assert!(
                buf[..DATA * SHARD] == data[..],
                "{solver}/{e}: not rebuilt exactly"
            );
            g.bench_function(format!("{solver}/{e}_lost"), |b| {
                b.iter(|| recovery.rebuild(black_box(&mut buf), &mut dec).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, kernels, rebuild);
criterion_main!(benches);
