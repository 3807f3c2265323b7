//! Known-answer vectors of wire protocol version 3 (docs/protocol.md), in the manner of age's test kit:
//! fixed keys, a fixed RNG seed and fixed counters give fixed bytes, so a refactor of the sending or
//! receiving code proves here that it changed nothing on the wire, and another implementation has bytes
//! to check itself against.
//!
//! `vectors/protocol-v3.txt` holds one vector a line, `name hex`, after `#` comments. The test rebuilds
//! every vector with the real code (`SenderSession::start(..).announce()`, `ObjectMeta::encode`,
//! `BlockEncoder`, `object::interleave`, `Geometry::parity_for`, `object::encode_heartbeat`,
//! `stream::encode`), compares it with the file byte for byte, and then has a receiver open the file's
//! frames: the announce establishes the session, every sealed frame opens fresh with the expected header
//! and payload, and the block rebuilds from a mix of data and parity shards.
//!
//! To (re)write the file after a deliberate change of the wire format (with a new protocol version):
//!
//! ```text
//! DIODE_WRITE_VECTORS=1 cargo test -p diode-proto --release --test vectors
//! ```
//!
//! then review the diff of `vectors/protocol-v3.txt` and say in the commit why the bytes changed.
//! The announce also depends on `rand::rngs::StdRng` (the HPKE ephemeral key is drawn from it); rand does
//! not promise that algorithm across versions, so a rand upgrade that changes only `announce` and what is
//! sealed under its keys is no change of the protocol.

use diode_proto::frame::{FrameKind, SealedHeader, SEALED_HEADER_LEN, TAG_LEN, VERSION};
use diode_proto::object::{
    decode_heartbeat, encode_heartbeat, interleave, Assembly, Buffers, Heartbeat, ObjectKind,
    ObjectMeta, Step,
};
use diode_proto::session::{AnnounceOutcome, Opened, SenderSession, SessionTable};
use diode_proto::stream::{self, Deframer};
use diode_proto::{BlockEncoder, SecretKey};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::PathBuf;

const FILE: &str = "protocol-v3.txt";
const RNG_SEED: u64 = 0xD10D_0003;
const COUNTER: u64 = 1_800_000_000_000_000;
const CREATED_AT: u64 = 1_800_000_000;
const OBJECT_ID: u64 = 0x1b2c_3d4e_5f60_7181;
/// A small object: one block of 4 data shards of 64 bytes (the last one padded), which the short-block
/// rule gives 4 parity shards though the full-block geometry is 8 + 4.
const SIZE: usize = 200;

fn sender_key() -> SecretKey {
    SecretKey::from_seed(&[0x11; 32])
}

fn receiver_key() -> SecretKey {
    SecretKey::from_seed(&[0x22; 32])
}

fn content() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 + 3) as u8).collect()
}

fn meta() -> ObjectMeta {
    let c = content();
    ObjectMeta {
        id: OBJECT_ID,
        name: "reports/q3.pdf".into(),
        size: c.len() as u64,
        hash: *blake3::hash(&c).as_bytes(),
        kind: ObjectKind::File,
        shard_size: 64,
        data_shards: 8,
        parity_shards: 4,
        mtime: CREATED_AT - 60,
    }
}

fn heartbeat(frames_sent: u64) -> Heartbeat {
    Heartbeat {
        frames_sent,
        objects_sent: 1,
        current_object: Some(OBJECT_ID),
        rate_bps: 1_000_000_000,
        interval_ms: 1000,
    }
}

/// One sealed frame and what the receiver must find in it.
struct Expected {
    name: String,
    kind: FrameKind,
    block: u32,
    shard: u16,
    payload: Vec<u8>,
}

/// Every vector in file order, and the sealed frames' expectations.
fn build() -> (Vec<(String, Vec<u8>)>, Vec<Expected>) {
    let (snd, rcv) = (sender_key(), receiver_key());
    let mut rng = StdRng::seed_from_u64(RNG_SEED);
    let mut s = SenderSession::start(&snd, rcv.public(), COUNTER, CREATED_AT, &mut rng)
        .expect("HPKE setup under fixed keys");
    let mut out = vec![
        (
            "sender.public".to_string(),
            snd.public().as_bytes().to_vec(),
        ),
        ("receiver.public".into(), rcv.public().as_bytes().to_vec()),
        ("announce".into(), s.announce().to_vec()),
    ];
    let mut sealed = Vec::new();
    let mut push = |out: &mut Vec<(String, Vec<u8>)>, e: Expected, frame: Vec<u8>| {
        out.push((e.name.clone(), frame));
        sealed.push(e);
    };

    let meta = meta();
    let meta_bytes = meta.encode();
    out.push(("meta.payload".into(), meta_bytes.clone()));
    let f = s
        .seal_payload(FrameKind::Meta, meta.id, 0, 0, &meta_bytes)
        .expect("a frame of this payload seals");
    let e = Expected {
        name: "meta".into(),
        kind: FrameKind::Meta,
        block: 0,
        shard: 0,
        payload: meta_bytes,
    };
    push(&mut out, e, f);

    // the one block, as `sender/src/encoding.rs` cuts and orders it (properties.rs `send`)
    let g = meta.geometry().expect("valid geometry");
    assert_eq!(g.block_count(meta.size), 1);
    let k = g.data_in(meta.size, 0);
    let m = g.parity_for(k);
    assert_eq!((k, m), (4, 4), "the short-block rule");
    let ss = g.shard_size;
    let mut data = content();
    data.resize(k * ss, 0);
    let mut parity = Vec::new();
    BlockEncoder::new()
        .encode(&data, ss, m, &mut parity)
        .expect("encode");
    for (_, shard) in interleave(&[k + m]) {
        let payload = if shard < k {
            &data[shard * ss..(shard + 1) * ss]
        } else {
            &parity[(shard - k) * ss..(shard - k + 1) * ss]
        };
        let f = s
            .seal_payload(FrameKind::Shard, meta.id, 0, shard as u16, payload)
            .expect("a frame of this payload seals");
        let e = Expected {
            name: format!("shard.0.{shard}"),
            kind: FrameKind::Shard,
            block: 0,
            shard: shard as u16,
            payload: payload.to_vec(),
        };
        push(&mut out, e, f);
    }

    let hb = encode_heartbeat(&heartbeat(s.frames_sealed() + 1));
    out.push(("heartbeat.payload".into(), hb.clone()));
    let f = s
        .seal_payload(FrameKind::Heartbeat, 0, 0, 0, &hb)
        .expect("a frame of this payload seals");
    let mut line = Vec::new();
    stream::encode(&f, &mut line);
    let e = Expected {
        name: "heartbeat".into(),
        kind: FrameKind::Heartbeat,
        block: 0,
        shard: 0,
        payload: hb,
    };
    push(&mut out, e, f);
    out.push(("serial.heartbeat".into(), line));
    (out, sealed)
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(FILE)
}

const HEADER: &str = "\
# Known-answer vectors of the diode suite wire protocol, version 3 (docs/protocol.md).
# Written by proto/tests/vectors.rs (DIODE_WRITE_VECTORS=1 cargo test -p diode-proto --release --test vectors);
# checked byte for byte by the same test. One vector a line: name, one space, lowercase hex.
#
# sender secret: SecretKey::from_seed([0x11; 32]); receiver secret: SecretKey::from_seed([0x22; 32])
# announce: SenderSession::start(sender, receiver public, counter 1800000000000000, created_at 1800000000,
#   StdRng::seed_from_u64(0xD10D0003)); every sealed frame below is of that session, seq 0, 1, 2, ...
# object: id 1b2c3d4e5f607181, \"reports/q3.pdf\", 200 bytes (byte i = 7i + 3 mod 256), BLAKE3 hash, File,
#   shard_size 64, data_shards 8, parity_shards 4, mtime 1799999940: one block of 4 data + 4 parity shards
# meta.payload: ObjectMeta::encode; meta: it sealed as a Meta frame (seq 0)
# shard.0.<i>: shard i of block 0 (0-3 data, the last zero-padded; 4-7 parity), seq 1 + i
# heartbeat.payload: encode_heartbeat(frames_sent 10, objects_sent 1, current_object Some(id),
#   rate_bps 1000000000, interval_ms 1000); heartbeat: it sealed (seq 9)
# serial.heartbeat: the heartbeat frame framed for a serial line (COBS of frame + CRC-32 LE, then 00)
";

fn render(vectors: &[(String, Vec<u8>)]) -> String {
    let mut s = HEADER.to_string();
    for (name, bytes) in vectors {
        s.push_str(&format!("{name} {}\n", hex::encode(bytes)));
    }
    s
}

fn parse(text: &str) -> Vec<(String, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, hex) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("{FILE}: not `name hex`: {l:.60}"));
            let bytes = hex::decode(hex).unwrap_or_else(|e| panic!("{FILE}: {name}: {e}"));
            (name.to_string(), bytes)
        })
        .collect()
}

#[test]
fn wire_vectors_of_protocol_3_are_unchanged_and_open() {
    let (built, sealed) = build();
    let file = if std::env::var_os("DIODE_WRITE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(path(), render(&built)).expect("write the vectors file");
        eprintln!("wrote {}", path().display());
        built.clone()
    } else {
        let text = std::fs::read_to_string(path()).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (DIODE_WRITE_VECTORS=1 writes it)",
                path().display()
            )
        });
        parse(&text)
    };

    // byte for byte, in order, every name once
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&file), names(&built), "the vectors named in {FILE}");
    for ((name, want), (_, got)) in file.iter().zip(&built) {
        if let Some(i) = (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i)) {
            panic!(
                "{name}: the code now makes other bytes than {FILE} ({} bytes there, {} now; first \
                 difference at byte {i}): a change on the wire needs a new protocol version",
                want.len(),
                got.len()
            );
        }
    }
    let get = |name: &str| -> Vec<u8> {
        file.iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no vector {name}"))
    };

    // the frames as stated: version 3, the announce's length from its layout
    let announce = get("announce");
    assert_eq!(announce[2], VERSION);
    assert_eq!(VERSION, 3);
    // 54-byte header, postcard body (an 8-byte and a 5-byte varint) and its tag, 40-byte trailer
    assert_eq!(announce.len(), 54 + (8 + 5 + 16) + 40, "announce length");
    assert_eq!(ObjectMeta::decode(&get("meta.payload")), Ok(meta()));
    assert_eq!(
        decode_heartbeat(&get("heartbeat.payload")),
        Some(heartbeat(10))
    );

    // the receiver's side: the file's announce establishes the session ...
    let (snd, rcv) = (sender_key(), receiver_key());
    let mut table = SessionTable::new(rcv, vec![snd.public().clone()], HashMap::new());
    assert_eq!(
        table.on_announce(&announce, 0),
        Ok(AnnounceOutcome::New {
            sender: snd.public().id(),
            counter: COUNTER
        })
    );
    assert_eq!(
        table.sessions().next().map(|s| s.created_at),
        Some(CREATED_AT)
    );
    // ... and each of its sealed frames opens fresh, in sequence, with the header and payload it was
    // sealed with
    let mut asm = Assembly::new(meta()).expect("valid metadata");
    let mut ready = false;
    for (seq, e) in sealed.iter().enumerate() {
        let mut f = get(&e.name);
        let opened = table.open(&mut f, 1, |_, _| true);
        let Ok(Opened::Fresh(h, who)) = opened else {
            panic!("{}: {opened:?}", e.name);
        };
        assert_eq!(who, snd.public().id());
        let object = if e.kind == FrameKind::Heartbeat {
            0
        } else {
            OBJECT_ID
        };
        assert_eq!(
            (h.kind, h.seq, h.object, h.block, h.shard),
            (e.kind, seq as u64, object, e.block, e.shard),
            "{}: header",
            e.name
        );
        assert_eq!(h, SealedHeader::parse(&get(&e.name)).expect("header"));
        let payload = &f[SEALED_HEADER_LEN..f.len() - TAG_LEN];
        assert_eq!(payload, &e.payload[..], "{}: payload", e.name);
        // the block from data shards 1 and 3 and parity shards 4 and 6: Reed-Solomon has to rebuild
        if e.kind == FrameKind::Shard && [1, 3, 4, 6].contains(&e.shard) {
            let step = asm
                .insert(0, e.shard, payload, &mut Buffers::new(1 << 20))
                .expect("a shard of the block");
            ready = step == Step::Ready;
        }
    }
    assert!(ready, "four of the eight shards make the block ready");
    let (offset, bytes) = asm
        .finish_block(0, &mut Default::default())
        .expect("decode");
    assert_eq!((offset, bytes), (0, &content()[..]));

    // the serial line gives the heartbeat frame back (a sender starts the line with a delimiter)
    let mut frames = Vec::new();
    let mut d = Deframer::new();
    d.push(&[0], |_| {});
    d.push(&get("serial.heartbeat"), |f| frames.push(f.to_vec()));
    assert_eq!(frames, vec![get("heartbeat")]);
}
