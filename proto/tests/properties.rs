//! Property tests of the whole sans-I/O pipeline, built exactly as `diode-send` and `diode-recv` use it:
//! an HPKE session announced to a `SessionTable`, objects cut into FEC blocks by `BlockEncoder`, every
//! shard and metadata frame sealed by `SenderSession::seal` in `object::interleave` order, and on the
//! receiving side `SessionTable::open` feeding an `Assembly` that writes finished blocks into a buffer
//! standing in for the partial file.
//!
//! The properties: loss within the parity budget rebuilds the exact bytes; loss beyond it leaves exactly
//! those blocks missing and never yields wrong bytes; any altered or truncated frame is refused; sessions
//! to other receivers or from untrusted senders open nothing; blocks set aside and restored mid-way
//! still rebuild; gap ranges round-trip; hostile names are refused.

use diode_proto::fec::Geometry;
use diode_proto::frame::{peek_kind, FrameKind, SealedHeader, SEALED_HEADER_LEN, TAG_LEN};
use diode_proto::object::{
    self, decode_heartbeat, encode_heartbeat, Assembly, Heartbeat, ObjectKind, ObjectMeta, Step,
};
use diode_proto::reception::{judge_meta, worth_opening, Known, MetaVerdict, Worth};
use diode_proto::schedule::{self, Out, Pass};
use diode_proto::session::{AnnounceOutcome, DropReason, Opened, SenderSession, SessionTable};
use diode_proto::{gap, BlockEncoder, KeyId, SecretKey};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::{index, SliceRandom};
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Bound on blocks per generated object, so tiny geometries do not turn 3 MiB into 10^5 blocks.
const MAX_BLOCKS: u64 = 48;
const MAX_SIZE: u64 = 3 << 20;

// ---------------------------------------------------------------------------------------------------
// The sending side
// ---------------------------------------------------------------------------------------------------

/// One frame as it leaves the sender, with what it carries (for choosing losses).
#[derive(Clone)]
struct Tx {
    kind: FrameKind,
    block: u32,
    shard: u16,
    /// The plaintext payload, to check what the receiver opens.
    payload: Vec<u8>,
    frame: Vec<u8>,
}

/// Everything one case sends: the object, its frames, and the keys at both ends.
struct Sent {
    content: Vec<u8>,
    meta: ObjectMeta,
    geometry: Geometry,
    announce: Vec<u8>,
    frames: Vec<Tx>,
    sender: SecretKey,
    receiver: SecretKey,
}

/// The object a case sends.
#[derive(Clone, Debug)]
struct Spec {
    geometry: Geometry,
    size: u64,
    /// Seeds the content, the keys and the HPKE randomness.
    seed: u64,
    /// Blocks per interleaved group (the sender's `interleave` setting).
    group: usize,
}

fn seal_frame(
    s: &mut SenderSession,
    kind: FrameKind,
    object: u64,
    block: u32,
    shard: u16,
    payload: &[u8],
) -> Tx {
    let before = s.frames_sealed();
    let frame = s
        .seal_payload(kind, object, block, shard, payload)
        .expect("a frame of this payload seals");
    let seq = SealedHeader::parse(&frame).expect("a sealed header").seq;
    assert_eq!(seq, before, "sequence numbers are consecutive");
    assert_eq!(s.frames_sealed(), before + 1);
    Tx {
        kind,
        block,
        shard,
        payload: payload.to_vec(),
        frame,
    }
}

fn keys(seed: u64) -> (SecretKey, SecretKey) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b65_7973);
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut a);
    rng.fill_bytes(&mut b);
    (SecretKey::from_seed(&a), SecretKey::from_seed(&b))
}

fn meta_for(spec: &Spec, content: &[u8]) -> ObjectMeta {
    let g = spec.geometry;
    ObjectMeta {
        id: spec.seed.rotate_left(17) | 1,
        name: format!("inbox/dir {}/object-{:x}.bin", spec.group, spec.seed),
        size: content.len() as u64,
        hash: *blake3::hash(content).as_bytes(),
        // envelopes only as large as a sender sends them (larger ones are refused on both sides)
        kind: if spec.seed & 1 == 0 || content.len() > diode_proto::envelope::MAX_ENVELOPE_BYTES {
            ObjectKind::File
        } else {
            ObjectKind::Envelope
        },
        shard_size: g.shard_size as u32,
        data_shards: g.data_shards as u16,
        parity_shards: g.parity_shards as u16,
        mtime: spec.seed >> 20,
    }
}

/// Encode and seal one object in the sender's schedule (`proto::schedule::Pass`, which
/// `sender/src/encoding.rs` follows), then a heartbeat.
fn send(spec: &Spec) -> Sent {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut content = vec![0u8; spec.size as usize];
    rng.fill_bytes(&mut content);
    let (sender, receiver) = keys(spec.seed);
    let counter = spec.seed % 1000;
    let mut session =
        SenderSession::start(&sender, receiver.public(), counter, 1_700_000_000, &mut rng)
            .expect("HPKE setup");
    assert_eq!(session.counter(), counter);
    let meta = meta_for(spec, &content);
    let g = meta.geometry().expect("valid geometry");
    assert_eq!(g, spec.geometry);
    let meta_bytes = meta.encode();
    let s = g.shard_size;

    // the sender's own schedule (proto::schedule), so the frames here are the frames it sends
    let mut frames = Vec::new();
    let meta_frame = |session: &mut SenderSession| {
        seal_frame(session, FrameKind::Meta, meta.id, 0, 0, &meta_bytes)
    };
    for _ in 0..schedule::OPENING_META {
        frames.push(meta_frame(&mut session));
    }
    let mut enc = BlockEncoder::new();
    let mut pass = Pass::new(&meta, None, spec.group).expect("valid geometry");
    while let Some(group) = pass.next_group() {
        let mut data = Vec::new();
        let mut starts = Vec::new();
        for b in &group {
            let start = data.len();
            data.resize(start + b.data_shards * s, 0);
            let from = b.offset as usize;
            data[start..start + b.len].copy_from_slice(&content[from..from + b.len]);
            starts.push(start);
        }
        let mut parity = vec![Vec::new(); group.len()];
        for (i, b) in group.iter().enumerate() {
            let (k, m) = (b.data_shards, b.parity_shards);
            enc.encode(&data[starts[i]..starts[i] + k * s], s, m, &mut parity[i])
                .expect("encode");
            assert_eq!(parity[i].len(), m * s);
        }
        for out in pass.frames(&group) {
            let Out::Shard { slot, block, shard } = out else {
                frames.push(meta_frame(&mut session));
                continue;
            };
            let k = group[slot].data_shards;
            let payload = if shard < k {
                &data[starts[slot] + shard * s..starts[slot] + (shard + 1) * s]
            } else {
                &parity[slot][(shard - k) * s..(shard - k + 1) * s]
            };
            frames.push(seal_frame(
                &mut session,
                FrameKind::Shard,
                meta.id,
                block as u32,
                shard as u16,
                payload,
            ));
        }
    }
    for _ in 0..schedule::CLOSING_META {
        frames.push(meta_frame(&mut session));
    }
    let hb = encode_heartbeat(&Heartbeat {
        frames_sent: session.frames_sealed() + 1,
        objects_sent: 1,
        current_object: Some(meta.id),
        rate_bps: 1_000_000_000,
        interval_ms: 1000,
    });
    frames.push(seal_frame(&mut session, FrameKind::Heartbeat, 0, 0, 0, &hb));
    Sent {
        content,
        meta,
        geometry: g,
        announce: session.announce().to_vec(),
        frames,
        sender,
        receiver,
    }
}

// ---------------------------------------------------------------------------------------------------
// The receiving side
// ---------------------------------------------------------------------------------------------------

/// The receiver's state for one sender and one object; `out` stands in for the partial file.
struct Rx {
    table: SessionTable,
    sender: KeyId,
    asm: Option<Assembly>,
    out: Vec<u8>,
    /// Data shards set aside "on disk" (written into `out`), per block, as `spilled` was told.
    on_disk: BTreeMap<u32, Vec<usize>>,
    /// Spills with at least one shard on disk, and restores performed.
    spills: usize,
    restores: usize,
    /// Blocks finished, in order.
    finished: Vec<u32>,
    redundant: usize,
    heartbeats: usize,
    now: u64,
}

impl Rx {
    fn new(sent: &Sent) -> Self {
        Rx {
            table: SessionTable::new(
                sent.receiver.clone(),
                vec![sent.sender.public().clone()],
                HashMap::new(),
            ),
            sender: sent.sender.public().id(),
            asm: None,
            out: Vec::new(),
            on_disk: BTreeMap::new(),
            spills: 0,
            restores: 0,
            finished: Vec::new(),
            redundant: 0,
            heartbeats: 0,
            now: 0,
        }
    }

    fn asm(&self) -> &Assembly {
        self.asm.as_ref().expect("metadata arrived")
    }

    /// Place `bytes` of shard `i` of block `b` in the partial file (the tail shard is cut at the
    /// object's end, as a file of the object's size holds it).
    fn write_shard(&mut self, b: u32, i: usize, bytes: &[u8]) {
        let asm = self.asm.as_ref().expect("metadata arrived");
        let s = asm.geometry().shard_size;
        let off = (asm.block_offset(b) + (i * s) as u64) as usize;
        let end = (off + s).min(self.out.len());
        if off < end {
            self.out[off..end].copy_from_slice(&bytes[..end - off]);
        }
    }

    /// Read shard `i` of block `b` back from the partial file, zero-padded past the object's end.
    fn read_shard(&self, b: u32, i: usize) -> Vec<u8> {
        let asm = self.asm();
        let s = asm.geometry().shard_size;
        let off = (asm.block_offset(b) + (i * s) as u64) as usize;
        let mut v = vec![0u8; s];
        let end = (off + s).min(self.out.len());
        if off < end {
            v[..end - off].copy_from_slice(&self.out[off..end]);
        }
        v
    }

    /// Set block `b` aside as `bound_memory` does: its data shards go to the partial file.
    fn evict(&mut self, b: u32) {
        let k = {
            let asm = self.asm();
            asm.geometry().data_in(asm.meta.size, b as u64)
        };
        let Some(shards) = self.asm.as_mut().and_then(|a| a.evict(b)) else {
            return;
        };
        let mut idx = Vec::new();
        for (i, bytes) in &shards {
            assert!(
                *i < k,
                "evict returned parity shard {i} of block {b} (k = {k})"
            );
            assert!(!idx.contains(i));
            self.write_shard(b, *i, bytes);
            idx.push(*i);
        }
        if !idx.is_empty() {
            self.spills += 1;
            self.on_disk.insert(b, idx.clone());
        }
        self.asm.as_mut().unwrap().spilled(b, idx);
        assert!(
            !self.asm().active_blocks().contains(&b),
            "evicted block still active"
        );
    }
}

/// Feed frames to the receiver as `receiver/src/receive.rs` does, calling `hook` before each frame
/// with the frame about to arrive (for setting blocks aside). Authentic frames are never refused.
fn deliver(
    rx: &mut Rx,
    frames: &[(Option<&Tx>, &[u8])],
    mut hook: impl FnMut(&mut Rx, Option<&Tx>),
) {
    // named only through inference: reed-solomon-simd is not a dependency of this test crate
    let mut decoder = None;
    for (i, &(tx, f)) in frames.iter().enumerate() {
        hook(rx, tx);
        rx.now += 1;
        let mut f = f.to_vec();
        match peek_kind(&f).expect("authentic frame parses") {
            FrameKind::Announce => match rx.table.on_announce(&f, rx.now) {
                Ok(AnnounceOutcome::New { sender, .. }) => assert_eq!(sender, rx.sender),
                Ok(AnnounceOutcome::Known) => {}
                Err(d) => panic!("authentic announce refused: {d:?}"),
            },
            _ => {
                // the receiver's own rule for which frames are worth opening (proto::reception)
                let asm = &rx.asm;
                let r = rx.table.open(&mut f, rx.now, |h, _| {
                    let known = match asm {
                        Some(a) => Known::InProgress(a),
                        None => Known::Unknown,
                    };
                    worth_opening(h, known, false) == Worth::Open
                });
                let h = match r {
                    Ok(Opened::Fresh(h, sender)) => {
                        assert_eq!(sender, rx.sender);
                        h
                    }
                    Ok(Opened::Redundant) => {
                        rx.redundant += 1;
                        continue;
                    }
                    Err(d) => panic!("authentic frame {i} refused: {d:?}"),
                };
                let payload = &f[SEALED_HEADER_LEN..f.len() - TAG_LEN];
                match h.kind {
                    FrameKind::Meta => {
                        match judge_meta(payload, |_| rx.asm.as_ref().map(|a| &a.meta)) {
                            MetaVerdict::Start(meta) => {
                                rx.out = vec![0u8; meta.size as usize];
                                rx.asm = Some(Assembly::new(meta).expect("metadata accepted"));
                            }
                            MetaVerdict::HashArrived { hash, .. } => {
                                if let Some(a) = rx.asm.as_mut() {
                                    a.meta.hash = hash;
                                }
                            }
                            MetaVerdict::Repeat => {}
                            v => panic!("authentic metadata judged {v:?}"),
                        }
                    }
                    FrameKind::Heartbeat => {
                        decode_heartbeat(payload).expect("heartbeat decodes");
                        rx.heartbeats += 1;
                    }
                    FrameKind::Shard => {
                        let (block, shard) = (h.block, h.shard);
                        let mut rounds = 0;
                        loop {
                            rounds += 1;
                            assert!(rounds <= 2, "Restore asked twice for one shard");
                            let asm = rx.asm.as_mut().expect("shards only after metadata");
                            match asm.insert(block, shard, payload).expect("authentic shard") {
                                Step::Restore(which) => {
                                    let expected = rx.on_disk.remove(&block);
                                    assert_eq!(
                                        Some(&which),
                                        expected.as_ref(),
                                        "Restore names other shards than were set aside"
                                    );
                                    let shards: Vec<(usize, Vec<u8>)> = which
                                        .iter()
                                        .map(|&i| (i, rx.read_shard(block, i)))
                                        .collect();
                                    rx.asm.as_mut().unwrap().restore(block, &shards);
                                    rx.restores += 1;
                                }
                                Step::Ready => {
                                    let (off, data) =
                                        asm.finish_block(block, &mut decoder).expect("decode");
                                    let off = off as usize;
                                    rx.out[off..off + data.len()].copy_from_slice(data);
                                    asm.mark_done(block);
                                    assert!(asm.is_done(block));
                                    rx.finished.push(block);
                                    break;
                                }
                                Step::Stored | Step::Nothing => break,
                            }
                        }
                    }
                    FrameKind::Announce => unreachable!("announces are not sealed frames"),
                }
            }
        }
    }
}

/// What goes on the wire: the announce (first, and repeated once mid-way as the sender does every
/// few seconds), then `frames`; each with the frame it is, if it is not an announce.
fn wire<'a>(sent: &'a Sent, frames: &[&'a Tx]) -> Vec<(Option<&'a Tx>, &'a [u8])> {
    let mut v = vec![(None, &sent.announce[..])];
    for (i, t) in frames.iter().enumerate() {
        if i == frames.len() / 2 {
            v.push((None, &sent.announce[..]));
        }
        v.push((Some(*t), &t.frame[..]));
    }
    v
}

// ---------------------------------------------------------------------------------------------------
// Strategies and loss patterns
// ---------------------------------------------------------------------------------------------------

fn geometry() -> impl Strategy<Value = Geometry> {
    (32usize..=704, 1usize..=64, 0usize..=16)
        .prop_map(|(half, d, p)| Geometry::new(half * 2, d, p).expect("valid geometry"))
}

/// An object of 0 B to ~3 MiB, with sizes on and around block and shard boundaries well represented.
/// Large objects are a small share of the cases: in a debug build the pipeline moves only a few MB/s.
fn spec() -> impl Strategy<Value = Spec> {
    (geometry(), any::<u64>(), 1usize..=8).prop_flat_map(|(g, seed, group)| {
        let bb = g.block_bytes();
        let s = g.shard_size as u64;
        let cap = (bb * MAX_BLOCKS).min(MAX_SIZE);
        let mid = cap.min(128 << 10);
        let size = prop_oneof![
            1 => Just(0u64),
            8 => 1..=cap.min(16 << 10),
            5 => 1..=cap.min(64 << 10),
            // one byte short of, exactly on, or one byte past a block boundary
            4 => (1..=(mid / bb).max(1), 0u64..3)
                .prop_map(move |(n, d)| (n * bb + d).saturating_sub(1).min(cap)),
            // and the same around a shard boundary
            2 => (0..=(mid / s).max(1), 0u64..3)
                .prop_map(move |(n, d)| (n * s + d).saturating_sub(1).min(cap)),
            1 => 1..=cap,
        ];
        size.prop_map(move |size| Spec {
            geometry: g,
            size,
            seed,
            group,
        })
    })
}

/// A small object, for the tests that look at individual frames.
fn small_spec() -> impl Strategy<Value = Spec> {
    (
        (32usize..=96, 1usize..=8, 0usize..=6),
        0u64..=4096,
        any::<u64>(),
        1usize..=4,
    )
        .prop_map(|((half, d, p), size, seed, group)| Spec {
            geometry: Geometry::new(half * 2, d, p).unwrap(),
            size,
            seed,
            group,
        })
}

/// Shards (k data + m parity) of every block.
fn shape(g: &Geometry, size: u64) -> Vec<(usize, usize)> {
    (0..g.block_count(size))
        .map(|b| {
            let k = g.data_in(size, b);
            (k, g.parity_for(k))
        })
        .collect()
}

/// Lose `count` random shards of block `b` of `n`.
fn lose(lost: &mut HashSet<(u32, u16)>, rng: &mut StdRng, b: usize, n: usize, count: usize) {
    for s in index::sample(rng, n, count) {
        lost.insert((b as u32, s as u16));
    }
}

/// Shard frames and Meta frames that survive: all Meta frames but the first may be lost too.
fn survivors<'a>(sent: &'a Sent, lost: &HashSet<(u32, u16)>, rng: &mut StdRng) -> Vec<&'a Tx> {
    let mut first_meta = true;
    sent.frames
        .iter()
        .filter(|t| match t.kind {
            FrameKind::Shard => !lost.contains(&(t.block, t.shard)),
            FrameKind::Meta => std::mem::take(&mut first_meta) || rng.random_bool(0.5),
            _ => true,
        })
        .collect()
}

fn block_range(g: &Geometry, size: u64, b: u32) -> std::ops::Range<usize> {
    let start = (b as u64 * g.block_bytes()) as usize;
    start..start + g.block_len(size, b as u64) as usize
}

// ---------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (a) Every block losing at most its parity count (`parity_for(data_in)`) of shards — in any
    /// pattern, possibly exactly the budget, with lost Meta frames and optionally reordered delivery —
    /// rebuilds the original bytes exactly, every block is finished exactly once, and the object is
    /// complete with the announced SHA-256.
    #[test]
    fn loss_within_parity_budget_rebuilds_exactly(
        spec in spec(),
        loss_seed in any::<u64>(),
        exact_budget in any::<bool>(),
        reorder in any::<bool>(),
    ) {
        let sent = send(&spec);
        let g = sent.geometry;
        let size = sent.meta.size;
        let mut rng = StdRng::seed_from_u64(loss_seed);
        let mut lost = HashSet::new();
        let mut data_lost = 0;
        for (b, &(k, m)) in shape(&g, size).iter().enumerate() {
            let count = if exact_budget { m } else { rng.random_range(0..=m) };
            lose(&mut lost, &mut rng, b, k + m, count);
            data_lost += (0..k).filter(|&s| lost.contains(&(b as u32, s as u16))).count();
        }
        let mut frames = survivors(&sent, &lost, &mut rng);
        if reorder {
            // the first Meta frame stays first: shards before any metadata are dropped by design
            frames[1..].shuffle(&mut rng);
        }
        let mut rx = Rx::new(&sent);
        deliver(&mut rx, &wire(&sent, &frames), |_, _| {});

        let asm = rx.asm.as_ref().expect("metadata arrived");
        prop_assert_eq!(&asm.meta, &sent.meta);
        prop_assert!(asm.is_complete(), "incomplete; missing {:?} (data shards lost: {})",
            asm.missing(), data_lost);
        prop_assert_eq!(asm.done_count(), g.block_count(size));
        prop_assert!(asm.missing().is_empty());
        prop_assert!(asm.active_blocks().is_empty());
        let mut finished = rx.finished.clone();
        finished.sort_unstable();
        prop_assert_eq!(finished, (0..g.block_count(size) as u32).collect::<Vec<_>>(),
            "each block finished exactly once");
        prop_assert!(rx.out == sent.content, "rebuilt bytes differ (data shards lost: {})", data_lost);
        prop_assert_eq!(*blake3::hash(&rx.out).as_bytes(), sent.meta.hash);
        prop_assert_eq!(rx.heartbeats, 1);
    }

    /// (b) When at least one block loses more than its parity budget, exactly those blocks stay
    /// unfinished: `missing()` names them, `finish_block` refuses them, and every other block is
    /// finished with exactly the original bytes.
    #[test]
    fn loss_beyond_budget_leaves_exactly_those_blocks_missing(
        spec in spec(),
        loss_seed in any::<u64>(),
        doom_share in 0.0f64..1.0,
    ) {
        let sent = send(&spec);
        let g = sent.geometry;
        let size = sent.meta.size;
        let shape = shape(&g, size);
        let mut rng = StdRng::seed_from_u64(loss_seed);
        let mut doomed: BTreeSet<u32> = (0..shape.len() as u32)
            .filter(|_| rng.random_bool(doom_share))
            .collect();
        if doomed.is_empty() {
            doomed.insert(rng.random_range(0..shape.len() as u32));
        }
        let mut lost = HashSet::new();
        for (b, &(k, m)) in shape.iter().enumerate() {
            let count = if doomed.contains(&(b as u32)) {
                rng.random_range(m + 1..=k + m)
            } else {
                rng.random_range(0..=m)
            };
            lose(&mut lost, &mut rng, b, k + m, count);
        }
        let frames = survivors(&sent, &lost, &mut rng);
        let mut rx = Rx::new(&sent);
        deliver(&mut rx, &wire(&sent, &frames), |_, _| {});

        let asm = rx.asm.as_mut().expect("metadata arrived");
        prop_assert!(!asm.is_complete());
        prop_assert_eq!(asm.done_count(), shape.len() as u64 - doomed.len() as u64);
        prop_assert_eq!(asm.missing(), gap::ranges(doomed.iter().copied()));
        for b in 0..shape.len() as u32 {
            let r = block_range(&g, size, b);
            if doomed.contains(&b) {
                prop_assert!(!asm.is_done(b), "block {} done with too few shards", b);
                prop_assert!(!rx.finished.contains(&b));
                let mut decoder = None;
                prop_assert!(asm.finish_block(b, &mut decoder).is_err(),
                    "block {} decodes with fewer than k shards", b);
            } else {
                prop_assert!(asm.is_done(b), "block {} within budget not done", b);
                prop_assert!(rx.out[r.clone()] == sent.content[r], "block {} has wrong bytes", b);
            }
        }
    }

    /// (c) Any single bit flip anywhere in a sealed frame, any truncation and any extension is refused
    /// by `SessionTable::open` — with the specific reason the header position implies — while the
    /// untouched frames open to exactly their payload. Sealing hides the payload; an altered announce
    /// establishes no session.
    #[test]
    fn altered_or_truncated_frames_are_refused(
        spec in small_spec(),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 32),
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 8),
        header_frame in any::<prop::sample::Index>(),
        announce_flip in any::<prop::sample::Index>(),
        announce_cut in any::<prop::sample::Index>(),
    ) {
        let sent = send(&spec);
        let mut table = SessionTable::new(
            sent.receiver.clone(), vec![sent.sender.public().clone()], HashMap::new());
        // an altered or truncated announce is refused and opens no frame; nor does such a damaged
        // copy arriving first lock out the genuine announce (the announce cache keeps no failures)
        let mut a = sent.announce.clone();
        let bit = announce_flip.index(a.len() * 8);
        a[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(table.on_announce(&a, 0).is_err(), "announce with bit {} flipped accepted", bit);
        let cut = announce_cut.index(sent.announce.len());
        prop_assert!(table.on_announce(&sent.announce[..cut], 0).is_err());
        let mut f = sent.frames[0].frame.clone();
        prop_assert_eq!(table.open(&mut f, 0, |_, _| true), Err(DropReason::UnknownSession));
        let established = table.on_announce(&sent.announce, 0);
        prop_assert!(matches!(established, Ok(AnnounceOutcome::New { .. })),
            "genuine announce after a damaged copy (bit {}): {:?}", bit, established);

        // sealing hides the payload, and no two frames share a keystream (a nonce reused)
        let mut keystreams = HashSet::new();
        for t in &sent.frames {
            if t.payload.len() >= 16 {
                let ct = &t.frame[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 16];
                prop_assert!(ct != &t.payload[..16], "payload travels in the clear");
                let ks: Vec<u8> = ct.iter().zip(&t.payload).map(|(c, p)| c ^ p).collect();
                prop_assert!(keystreams.insert(ks), "two frames sealed under one nonce");
            }
        }
        // every bit of one frame's header (where parsing decides), and random bits of any frame
        let whole = header_frame.get(&sent.frames);
        let flips = (0..SEALED_HEADER_LEN * 8)
            .map(|bit| (whole, bit))
            .chain(picks.iter().map(|(fi, bi)| {
                let t = fi.get(&sent.frames);
                (t, bi.index(t.frame.len() * 8))
            }));
        for (t, bit) in flips {
            let mut f = t.frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            let r = table.open(&mut f, 1, |_, _| true);
            let byte = bit / 8;
            let expected = match byte {
                0..=2 => DropReason::Malformed,
                3 => match f[3] {
                    2..=4 => DropReason::BadSeal, // another sealed kind: the header is authenticated
                    _ => DropReason::Malformed,
                },
                4..=11 => DropReason::UnknownSession,
                _ => DropReason::BadSeal,
            };
            prop_assert_eq!(r, Err(expected), "flip of bit {} (byte {}) of a {:?} frame", bit, byte, t.kind);
        }
        for (fi, ci) in cuts {
            let t = fi.get(&sent.frames);
            let cut = ci.index(t.frame.len());
            let mut f = t.frame[..cut].to_vec();
            let expected = if cut < SEALED_HEADER_LEN + TAG_LEN { DropReason::Malformed } else { DropReason::BadSeal };
            prop_assert_eq!(table.open(&mut f, 1, |_, _| true), Err(expected),
                "truncation to {} of {} bytes", cut, t.frame.len());
            let mut f = t.frame.clone();
            f.extend_from_slice(&t.frame[..1 + cut % 32]);
            prop_assert_eq!(table.open(&mut f, 1, |_, _| true), Err(DropReason::BadSeal), "extended frame");
        }
        // the untouched frames still open, to exactly what was sealed
        for t in &sent.frames {
            let mut f = t.frame.clone();
            match table.open(&mut f, 2, |_, _| true) {
                Ok(Opened::Fresh(h, sender)) => {
                    prop_assert_eq!(sender, sent.sender.public().id());
                    prop_assert_eq!((h.kind, h.block, h.shard), (t.kind, t.block, t.shard));
                    prop_assert_eq!(h, SealedHeader::parse(&t.frame).unwrap());
                    prop_assert!(f[SEALED_HEADER_LEN..f.len() - TAG_LEN] == t.payload[..]);
                }
                other => {
                    return Err(TestCaseError::fail(format!("authentic frame not opened: {other:?}")))
                }
            }
        }
    }
}

proptest! {
    // every case costs several X25519 operations, which are slow in a debug build
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// (d) Sessions sealed to another receiver's key, or started by an untrusted sender key (also one
    /// claiming a trusted sender's id, or an announce re-addressed to this receiver), are refused at
    /// the announce, and their sealed frames open nothing: `UnknownSession`, or `BadSeal` when their
    /// session tag is rewritten to that of a real session.
    #[test]
    fn foreign_sessions_open_nothing(
        spec in small_spec(),
        counter in 0u64..1000,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let sent = send(&spec);
        let me = &sent.receiver;
        let trusted = &sent.sender;
        let (stranger, other_rcv) = keys(spec.seed.wrapping_add(1));
        prop_assume!(stranger.public().as_bytes() != trusted.public().as_bytes());
        prop_assume!(other_rcv.public().as_bytes() != me.public().as_bytes());
        let mut rng = StdRng::seed_from_u64(spec.seed ^ 0xd1);
        let mut table = SessionTable::new(me.clone(), vec![trusted.public().clone()], HashMap::new());
        prop_assert!(table.on_announce(&sent.announce, 0).is_ok());
        let real_tag = SealedHeader::parse(&sent.frames[0].frame).unwrap().session;

        let foreign = [
            (SenderSession::start(trusted, other_rcv.public(), counter + 1, 0, &mut rng).unwrap(), DropReason::OtherReceiver, None),
            (SenderSession::start(&stranger, me.public(), counter + 1, 0, &mut rng).unwrap(), DropReason::UnknownSender, None),
            // a stranger claiming the trusted sender's id: HPKE Auth mode catches it
            (SenderSession::start(&stranger, me.public(), counter + 1, 0, &mut rng).unwrap(), DropReason::BadAnnounce,
                Some((4usize, trusted.public().id()))),
            // a session to another receiver, re-addressed to this one
            (SenderSession::start(trusted, other_rcv.public(), counter + 1, 0, &mut rng).unwrap(), DropReason::BadAnnounce,
                Some((12usize, me.public().id()))),
        ];
        for (i, (mut s, why, rewrite)) in foreign.into_iter().enumerate() {
            let mut a = s.announce().to_vec();
            if let Some((at, id)) = rewrite {
                a[at..at + 8].copy_from_slice(&id.0);
            }
            prop_assert_eq!(table.on_announce(&a, 1 + i as u64), Err(why), "foreign session {}", i);
            for kind in [FrameKind::Shard, FrameKind::Meta, FrameKind::Heartbeat] {
                let t = seal_frame(&mut s, kind, sent.meta.id, 0, 0, &payload);
                let mut f = t.frame.clone();
                prop_assert_eq!(table.open(&mut f, 2, |_, _| true), Err(DropReason::UnknownSession));
                // pretending to belong to the real session does not help
                let mut f = t.frame.clone();
                f[4..12].copy_from_slice(&real_tag.to_le_bytes());
                prop_assert_eq!(table.open(&mut f, 2, |_, _| true), Err(DropReason::BadSeal));
            }
        }
        // the real session was not disturbed
        prop_assert_eq!(table.sessions().count(), 1);
        let mut f = sent.frames[0].frame.clone();
        let opened = table.open(&mut f, 3, |_, _| true);
        prop_assert!(matches!(opened, Ok(Opened::Fresh(..))), "{:?}", opened);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (e) Blocks set aside mid-way (`evict`, data shards written to the partial file, `spilled`) and
    /// brought back on their next shard (`Step::Restore` names exactly the shards on disk, `restore`
    /// reads them back zero-padded) rebuild the exact bytes. With reordering, parity shards are held
    /// when a block is set aside and are dropped (only data shards are kept), and with loss within the
    /// parity budget a block may then end short: a reference model of the shards held says which
    /// blocks must finish, and exactly those do. Without loss every block finishes.
    #[test]
    fn spilled_blocks_restore_and_rebuild(
        spec in spec(),
        seed in any::<u64>(),
        evict_rate in 0.005f64..0.2,
        reorder in any::<bool>(),
        lossy in any::<bool>(),
    ) {
        let sent = send(&spec);
        let g = sent.geometry;
        let size = sent.meta.size;
        let shape = shape(&g, size);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut lost = HashSet::new();
        if lossy {
            for (b, &(k, m)) in shape.iter().enumerate() {
                let count = rng.random_range(0..=m);
                lose(&mut lost, &mut rng, b, k + m, count);
            }
        }
        let mut frames = survivors(&sent, &lost, &mut rng);
        if reorder {
            frames[1..].shuffle(&mut rng);
        }
        // the model: shards of each block held in memory or on disk, and blocks that must be finished
        let mut held: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); shape.len()];
        let mut finished = vec![false; shape.len()];
        let mut evictions = 0usize;
        let mut rx = Rx::new(&sent);
        deliver(&mut rx, &wire(&sent, &frames), |rx, next| {
            if rx.asm.is_some() && rng.random_bool(evict_rate) {
                for b in rx.asm().active_blocks() {
                    if rng.random_bool(0.7) {
                        rx.evict(b);
                        evictions += 1;
                        let k = shape[b as usize].0;
                        held[b as usize].retain(|&s| s < k);
                    }
                }
            }
            if let Some(t) = next.filter(|t| t.kind == FrameKind::Shard) {
                let b = t.block as usize;
                if !finished[b] {
                    held[b].insert(t.shard as usize);
                    finished[b] = held[b].len() >= shape[b].0;
                }
            }
        });
        let asm = rx.asm.as_ref().expect("metadata arrived");
        for (b, &fin) in finished.iter().enumerate() {
            let b = b as u32;
            prop_assert_eq!(asm.is_done(b), fin, "block {} after {} evictions", b, evictions);
            if fin {
                let r = block_range(&g, size, b);
                prop_assert!(rx.out[r.clone()] == sent.content[r], "block {} has wrong bytes", b);
            }
        }
        let unfinished = (0..shape.len() as u32).filter(|&b| !finished[b as usize]);
        prop_assert_eq!(asm.missing(), gap::ranges(unfinished));
        if !lossy {
            prop_assert!(asm.is_complete(), "incomplete without loss: missing {:?}", asm.missing());
        }
        if asm.is_complete() {
            prop_assert!(rx.out == sent.content, "rebuilt bytes differ after {} spills", rx.spills);
        }
        // every spill is restored once, unless no shard of that block came after it
        let state = asm.state();
        prop_assert_eq!(rx.restores + state.spilled.len(), rx.spills);
        let on_disk: Vec<(u32, Vec<u32>)> = rx.on_disk.iter()
            .map(|(b, v)| (*b, v.iter().map(|&i| i as u32).collect()))
            .collect();
        prop_assert_eq!(state.spilled, on_disk);
    }

    /// Block sets print as ranges and parse back to the same ranges, which cover exactly the set.
    /// (Non-empty sets: no ranges format as "", which `parse` refuses; the receiver only formats the
    /// gaps of unfinished objects.)
    #[test]
    fn gap_ranges_round_trip(
        blocks in proptest::collection::btree_set(
            prop_oneof![0u32..64, 0u32..5000, any::<u32>(), (u32::MAX - 64)..=u32::MAX], 1..200),
    ) {
        let r = gap::ranges(blocks.iter().copied());
        for w in r.windows(2) {
            prop_assert!(w[0].1 < u32::MAX && w[0].1 + 1 < w[1].0, "ranges not maximal: {:?}", w);
        }
        let text = gap::format(&r);
        let back = gap::parse(&text);
        prop_assert_eq!(back.as_ref(), Ok(&r), "{:?}", text);
        let expanded: BTreeSet<u32> = r.iter().flat_map(|&(a, b)| a..=b).collect();
        prop_assert_eq!(expanded, blocks);
    }

    /// `safe_name` never accepts a name with a `..` component, a leading `/` or a NUL, and what it
    /// accepts splits into non-empty components that rebuild the name.
    #[test]
    fn safe_name_refuses_escapes(
        parts in proptest::collection::vec("[a-zA-Z0-9 ._\\-]{1,12}", 1..6),
        at in any::<prop::sample::Index>(),
        noise in "[a-z./\\x00]{0,16}",
        how in 0u8..4,
    ) {
        let mut parts: Vec<String> = parts;
        let name = match how {
            0 => { let i = at.index(parts.len() + 1); parts.insert(i, "..".into()); parts.join("/") }
            1 => format!("/{}", parts.join("/")),
            2 => { let mut n = parts.join("/"); let i = at.index(n.len() + 1); n.insert(i, '\0'); n }
            _ => format!("{}/{}", parts.join("/"), noise),
        };
        let hostile = name.split('/').any(|c| c == "..") || name.starts_with('/') || name.contains('\0');
        if how < 3 {
            prop_assert!(hostile);
        }
        if let Ok(comps) = object::safe_name(&name) {
            prop_assert!(!hostile, "hostile name {:?} accepted", name);
            prop_assert_eq!(comps.join("/"), name.clone());
            for c in comps {
                prop_assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
            }
        }
        // the same refusal holds for metadata from the wire
        if hostile {
            let mut meta = meta_for(&Spec { geometry: Geometry::new(64, 1, 0).unwrap(), size: 0, seed: 1, group: 1 }, b"");
            meta.name = name.clone();
            prop_assert!(ObjectMeta::decode(&meta.encode()).is_err());
            prop_assert!(Assembly::new(meta).is_err());
        }
    }
}
