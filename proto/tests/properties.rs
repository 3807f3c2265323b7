//! Property tests of the whole sans-I/O pipeline, driven through the real endpoints: the sender endpoint
//! (`proto::sender`) sends one object (an HPKE session announced to a `SessionTable`, FEC blocks,
//! interleaved and sealed frames, then a heartbeat), and the receiver endpoint (`proto::receiver`) takes
//! what survives, with a driver that carries out its events at once on a buffer standing in for the
//! partial file.
//!
//! The properties: loss within the parity budget rebuilds the exact bytes; loss beyond it leaves exactly
//! those blocks missing and never yields wrong bytes; any altered or truncated frame is refused; sessions
//! to other receivers or from untrusted senders open nothing; blocks set aside during stalls and restored
//! still rebuild; gap ranges round-trip; hostile names are refused.

use diode_proto::fec::Geometry;
use diode_proto::frame::{peek_kind, FrameKind, SealedHeader, SEALED_HEADER_LEN, TAG_LEN};
use diode_proto::object::{self, Assembly, ObjectKind, ObjectMeta};
use diode_proto::reception::ObjectKey;
use diode_proto::session::{AnnounceOutcome, DropReason, Opened, SenderSession, SessionTable};
use diode_proto::{gap, SecretKey};
use diode_proto::{receiver, sender};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::{index, SliceRandom};
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{BTreeSet, HashMap, HashSet};

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

/// The object's content, lent to the sender endpoint.
struct Content(Vec<u8>);

impl sender::Source for Content {
    fn map(&mut self, _: u64, offset: u64, len: usize) -> Option<&[u8]> {
        self.0.get(offset as usize..offset as usize + len)
    }

    fn read_at(&mut self, _: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let part = self.0.get(offset as usize..offset as usize + buf.len());
        buf.copy_from_slice(part.ok_or("past the end")?);
        Ok(())
    }
}

/// One pass of the object as the sender endpoint (`proto::sender`) sends it, then a heartbeat. Each frame
/// is recorded with what it carries (its payload as the genuine receiver opens it).
fn send(spec: &Spec) -> Sent {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut content = vec![0u8; spec.size as usize];
    rng.fill_bytes(&mut content);
    let (sender, receiver) = keys(spec.seed);
    let counter = spec.seed % 1000;
    let session =
        SenderSession::start(&sender, receiver.public(), counter, 1_700_000_000, &mut rng)
            .expect("HPKE setup");
    assert_eq!(session.counter(), counter);
    let announce = session.announce().to_vec();
    let meta = meta_for(spec, &content);
    let g = meta.geometry().expect("valid geometry");
    assert_eq!(g, spec.geometry);
    let cfg = sender::Config {
        interleave: spec.group,
        announce_ms: 1 << 40,
        heartbeat_ms: 1000,
        rekey_ms: 1 << 40,
        rate_bps: 1_000_000_000,
        repeats: Vec::new(),
        repeat_small: false,
        defer_seal: false,
    };
    let mut ep = sender::Endpoint::new(cfg, session, 0);
    ep.send(sender::Job::new(meta.clone(), 1, false));
    let mut src = Content(content.clone());
    let mut buf = vec![0u8; sender::MAX_FRAME];
    let mut sealed = Vec::new();
    for now in [0, 1000] {
        while let sender::Transmit::Frame(n) = ep.poll_transmit(now, &mut src, &mut buf) {
            let f = buf[..n].to_vec();
            if peek_kind(&f) == Ok(FrameKind::Announce) {
                assert_eq!(f, announce, "the session's one announce");
            } else {
                sealed.push(f);
            }
        }
    }
    // what each frame carries, as the receiver opens it
    let mut table = SessionTable::new(
        receiver.clone(),
        vec![sender.public().clone()],
        HashMap::new(),
    );
    assert!(table.on_announce(&announce, 0).is_ok());
    let frames = sealed
        .into_iter()
        .enumerate()
        .map(|(seq, frame)| {
            let h = SealedHeader::parse(&frame).expect("a sealed header");
            assert_eq!(h.seq, seq as u64, "sequence numbers are consecutive");
            let mut open = frame.clone();
            assert!(matches!(
                table.open(&mut open, 0, |_, _| true),
                Ok(Opened::Fresh(..))
            ));
            Tx {
                kind: h.kind,
                block: h.block,
                shard: h.shard,
                payload: open[SEALED_HEADER_LEN..open.len() - TAG_LEN].to_vec(),
                frame,
            }
        })
        .collect::<Vec<_>>();
    assert_eq!(frames.last().map(|t| t.kind), Some(FrameKind::Heartbeat));
    Sent {
        content,
        meta,
        geometry: g,
        announce,
        frames,
        sender,
        receiver,
    }
}

// ---------------------------------------------------------------------------------------------------
// The receiving side
// ---------------------------------------------------------------------------------------------------

/// The partial file in memory, as the receiver endpoint's `Spill` and its driver's writes see it.
#[derive(Default)]
struct Disk {
    out: Vec<u8>,
    /// Shards set aside and read back.
    spilled: usize,
    restored: usize,
}

impl receiver::Spill for Disk {
    fn write_at(&mut self, _: ObjectKey, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let end = offset as usize + bytes.len();
        if self.out.len() < end {
            self.out.resize(end, 0);
        }
        self.out[offset as usize..end].copy_from_slice(bytes);
        self.spilled += 1;
        Ok(())
    }

    fn read_at(&mut self, _: ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len];
        let start = (offset as usize).min(self.out.len());
        let end = (offset as usize + len).min(self.out.len());
        b[..end - start].copy_from_slice(&self.out[start..end]);
        self.restored += 1;
        Ok(b)
    }
}

/// The real receiver endpoint for one sender and one object, and a driver that carries out its events
/// at once (`receiver/src/receive.rs` does them on a writer thread).
struct Rx {
    ep: receiver::Endpoint,
    key: ObjectKey,
    disk: Disk,
    /// Blocks written, in order.
    finished: Vec<u32>,
    /// The object, once delivered (verified against its hash).
    delivered: Option<ObjectMeta>,
    now: u64,
    /// The driver's Reed-Solomon decoder: this endpoint leaves decoding to its driver, as diode-recv's does.
    decoder: diode_proto::fec::Decoder,
}

/// How long without frames before the receiver sets an object's blocks aside (`stall_secs`).
const STALL_MS: u64 = 1000;

impl Rx {
    fn new(sent: &Sent) -> Self {
        let table = SessionTable::new(
            sent.receiver.clone(),
            vec![sent.sender.public().clone()],
            HashMap::new(),
        );
        let cfg = receiver::Config {
            stall_ms: STALL_MS,
            expire_ms: 1 << 40,
            pending_ms: 1 << 40,
            link_down_ms: 1 << 40,
            memory_bytes: 1 << 30,
            limits: diode_proto::reception::Limits {
                max_objects: 10,
                max_bytes: 1 << 50,
            },
            pending_frames: 1 << 20,
            defer_decode: true,
        };
        Rx {
            ep: receiver::Endpoint::new(cfg, table, receiver::Persisted::default(), 0),
            key: (sent.sender.public().id(), sent.meta.id),
            disk: Disk::default(),
            finished: Vec::new(),
            delivered: None,
            now: 0,
            decoder: diode_proto::fec::Decoder::default(),
        }
    }

    /// The object while it is in progress.
    fn asm(&self) -> Option<&Assembly> {
        self.ep.object(self.key).map(|o| &o.asm)
    }

    /// No frame for `stall_secs`: the endpoint sets aside every block in progress.
    fn stall(&mut self) {
        self.now += STALL_MS + receiver::TICK_MS;
        self.ep.handle_timeout(self.now, &mut self.disk);
        self.events();
    }

    fn events(&mut self) {
        while let Some(e) = self.ep.poll_event() {
            match e {
                receiver::Event::ObjectStarted { meta, .. } => {
                    self.disk.out = vec![0u8; meta.size as usize];
                }
                receiver::Event::WriteBlock {
                    key,
                    block,
                    offset,
                    mut buf,
                    start,
                    len,
                    recover,
                } => {
                    if let Some(r) = recover {
                        r.rebuild(&mut buf[start..], &mut self.decoder).unwrap();
                    }
                    let off = offset as usize;
                    self.disk.out[off..off + len].copy_from_slice(&buf[start..start + len]);
                    self.finished.push(block);
                    self.ep.handle_written(key, block, buf, Ok(()), self.now);
                }
                receiver::Event::Verify {
                    key, hash, size, ..
                } => {
                    // the writer sets the file to its size (set-aside padding may lie past it)
                    self.disk.out.resize(size as usize, 0);
                    let ok = *blake3::hash(&self.disk.out).as_bytes() == hash;
                    let r = if ok {
                        Ok(())
                    } else {
                        Err(receiver::VerifyError::Mismatch("hash".into()))
                    };
                    self.ep.handle_verified(key, r, self.now);
                }
                receiver::Event::Deliver { key, meta } => {
                    assert!(self.delivered.is_none(), "delivered twice");
                    self.delivered = Some(meta);
                    self.ep.handle_delivered(key, Ok(()), self.now);
                }
                receiver::Event::Reset { .. } => panic!("an authentic object was reset"),
                _ => {}
            }
        }
    }
}

/// Feed frames to the receiver endpoint, calling `hook` before each frame with the frame about to arrive
/// (for stalls that set blocks aside). Authentic frames are never dropped.
fn deliver(
    rx: &mut Rx,
    frames: &[(Option<&Tx>, &[u8])],
    mut hook: impl FnMut(&mut Rx, Option<&Tx>),
) {
    for (i, &(tx, f)) in frames.iter().enumerate() {
        hook(rx, tx);
        rx.now += 1;
        let mut f = f.to_vec();
        rx.ep.handle_datagram(&mut f, rx.now, &mut rx.disk);
        assert!(
            rx.ep.drops().is_empty(),
            "authentic frame {i} dropped: {:?}",
            rx.ep.drops()
        );
        rx.events();
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

        prop_assert!(rx.asm().is_none(), "incomplete; missing {:?} (data shards lost: {})",
            rx.asm().map(|a| a.missing()), data_lost);
        prop_assert_eq!(rx.delivered.as_ref(), Some(&sent.meta), "delivered, verified against its hash");
        let mut finished = rx.finished.clone();
        finished.sort_unstable();
        prop_assert_eq!(finished, (0..g.block_count(size) as u32).collect::<Vec<_>>(),
            "each block finished exactly once");
        prop_assert!(rx.disk.out == sent.content, "rebuilt bytes differ (data shards lost: {})", data_lost);
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

        prop_assert!(rx.delivered.is_none());
        let asm = rx.asm().expect("metadata arrived");
        prop_assert!(!asm.is_complete());
        prop_assert_eq!(asm.done_count(), shape.len() as u64 - doomed.len() as u64);
        prop_assert_eq!(asm.missing(), gap::ranges(doomed.iter().copied()));
        for b in 0..shape.len() as u32 {
            let r = block_range(&g, size, b);
            if doomed.contains(&b) {
                prop_assert!(!asm.is_done(b), "block {} done with too few shards", b);
                prop_assert!(!rx.finished.contains(&b));
            } else {
                prop_assert!(asm.is_done(b), "block {} within budget not done", b);
                prop_assert!(rx.disk.out[r.clone()] == sent.content[r], "block {} has wrong bytes", b);
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

    /// (e) Blocks set aside mid-way (the link stalls for `stall_secs`: the endpoint writes the data shards
    /// of every block in progress to the partial file through its `Spill`) and brought back on their
    /// next shard (read back zero-padded) rebuild the exact bytes. Parity shards held when a block is
    /// set aside are dropped (only data shards are kept), so with loss within the parity budget a block
    /// may then end short: a reference model of the shards held says which blocks must finish, and
    /// exactly those do. Without loss every block finishes.
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
            if rx.asm().is_some() && rng.random_bool(evict_rate) {
                rx.stall();
                evictions += 1;
                for (b, h) in held.iter_mut().enumerate() {
                    if !finished[b] {
                        let k = shape[b].0;
                        h.retain(|&s| s < k);
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
        if finished.iter().all(|f| *f) {
            prop_assert!(rx.disk.out == sent.content, "rebuilt bytes differ after {} stalls", evictions);
            prop_assert_eq!(rx.delivered.as_ref(), Some(&sent.meta));
        } else {
            let asm = rx.asm().expect("metadata arrived");
            for (b, &fin) in finished.iter().enumerate() {
                let b = b as u32;
                prop_assert_eq!(asm.is_done(b), fin, "block {} after {} stalls", b, evictions);
                if fin {
                    let r = block_range(&g, size, b);
                    prop_assert!(rx.disk.out[r.clone()] == sent.content[r], "block {} has wrong bytes", b);
                }
            }
            let unfinished = (0..shape.len() as u32).filter(|&b| !finished[b as usize]);
            prop_assert_eq!(asm.missing(), gap::ranges(unfinished));
            prop_assert!(lossy, "incomplete without loss: missing {:?}", asm.missing());
            // what the state says is on disk is: the data shards of each block set aside
            let s = g.shard_size;
            for (b, on_disk) in asm.state().spilled {
                let base = asm.block_offset(b) as usize;
                for i in on_disk {
                    let at = base + i as usize * s;
                    let want: Vec<u8> = (at..at + s).map(|p| sent.content.get(p).copied().unwrap_or(0)).collect();
                    prop_assert!(rx.disk.out.get(at..at + s) == Some(&want[..]) || at >= sent.content.len(),
                        "set-aside shard {} of block {} differs on disk", i, b);
                }
            }
        }
        if evictions > 0 && rx.disk.spilled > 0 && finished.iter().all(|f| *f) {
            prop_assert!(rx.disk.restored > 0 || rx.finished.len() == shape.len());
        }
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
