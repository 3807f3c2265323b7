//! The receiver endpoint (`diode_proto::receiver::Endpoint`) as a compromised low side holding the
//! sender key drives it: a fresh endpoint per input, then a program of authenticated datagrams, each
//! sealed under the fixed session, and pauses. Records, one after another:
//!
//! - `op & 3 == 0`: a pause of `next byte × 100` ms, then the endpoint's once-a-second turn;
//! - `op & 3 == 1`: a Meta frame for object `op >> 2 & 3`: size (u16 LE), flags (bit 0 hash pending,
//!   bit 1 an envelope, bit 2 a wrong hash, bit 3 all objects at one path, bit 4 an older id);
//! - `op & 3 == 2`: a genuine shard of that object: block, shard (a byte each), computed from its content;
//! - `op & 3 == 3`: an arbitrary shard: block, shard, length, then that many payload bytes.
//!
//! The driver carries out the events as `receiver/src/receive.rs` does, on files in memory. What must
//! hold whatever comes: no panic; nothing is delivered whose bytes do not hash to its metadata's hash; a
//! delivered object with a genuine hash has exactly its genuine bytes; unfinished blocks in memory stay
//! within the bound (plus the 512 frames between checks).
#![no_main]

use diode_fuzz::{seal_frame, sender_session, session_table, NOW};
use diode_proto::hash::content_hash;
use diode_proto::object::{ObjectKind, ObjectMeta, HASH_PENDING};
use diode_proto::receiver::{self, Event, Persisted, Spill, VerifyError};
use diode_proto::reception::{Limits, ObjectKey};
use diode_proto::{BlockEncoder, FrameKind};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const SHARD: usize = 64;
const DATA: usize = 4;
const PARITY: usize = 2;
const MEMORY: usize = 2048;

#[derive(Default)]
struct Files(HashMap<ObjectKey, Vec<u8>>);

impl Spill for Files {
    fn write_at(&mut self, key: ObjectKey, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let f = self.0.get_mut(&key).ok_or("no file")?;
        let end = offset as usize + bytes.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }

    fn read_at(&mut self, key: ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let f = self.0.get(&key).ok_or("no file")?;
        let mut b = vec![0u8; len];
        let start = (offset as usize).min(f.len());
        let end = (offset as usize + len).min(f.len());
        b[..end - start].copy_from_slice(&f[start..end]);
        Ok(b)
    }
}

fn content(id: u64, size: usize) -> Vec<u8> {
    (0..size).map(|i| (i as u64 * 31 + id) as u8).collect()
}

fn id_of(idx: u8, older: bool) -> u64 {
    2000 + idx as u64 * 10 - if older { 5 } else { 0 }
}

fuzz_target!(|data: &[u8]| {
    let mut session = sender_session();
    let cfg = receiver::Config {
        stall_ms: 1000,
        expire_ms: 20_000,
        pending_ms: 2000,
        link_down_ms: 3000,
        memory_bytes: MEMORY,
        limits: Limits {
            max_objects: 3,
            max_bytes: 1 << 20,
        },
        pending_frames: 16,
        defer_decode: data.first().is_some_and(|b| b & 0x80 != 0),
    };
    // frames opened ahead of the endpoint by the session's opener, as diode-recv's opening threads do
    let open_ahead = data.first().is_some_and(|b| b & 0x40 != 0);
    let mut ep = receiver::Endpoint::new(cfg, session_table(), Persisted::default(), 0);
    let mut files = Files::default();
    let mut now = NOW * 1000;
    let mut announce = session.announce().to_vec();
    ep.handle_datagram(&mut announce, now, &mut files);
    // the metadata each object was last announced with (for its genuine shards)
    let mut metas: HashMap<u8, ObjectMeta> = HashMap::new();
    let mut enc = BlockEncoder::new();
    let mut rest = data;
    while let Some((&op, r)) = rest.split_first() {
        rest = r;
        let idx = op >> 2 & 3;
        let frame = match op & 3 {
            0 => {
                let Some((&t, r)) = rest.split_first() else {
                    break;
                };
                rest = r;
                now += t as u64 * 100;
                ep.handle_timeout(now, &mut files);
                None
            }
            1 => {
                let [a, b, flags, ..] = rest else {
                    break;
                };
                let (size, flags) = (u16::from_le_bytes([*a, *b]) as usize % 4000, *flags);
                rest = &rest[3..];
                let id = id_of(idx, flags & 16 != 0);
                let genuine = content_hash(&content(id, size));
                let meta = ObjectMeta {
                    id,
                    name: if flags & 8 != 0 {
                        "one/path.bin".into()
                    } else if flags & 2 != 0 {
                        format!("e{idx}.envelope")
                    } else {
                        format!("f{idx}.bin")
                    },
                    size: size as u64,
                    hash: match flags & 5 {
                        0 => genuine,
                        1 | 5 => HASH_PENDING,
                        _ => [0x5a; 32],
                    },
                    kind: if flags & 2 != 0 && flags & 8 == 0 {
                        ObjectKind::Envelope
                    } else {
                        ObjectKind::File
                    },
                    shard_size: SHARD as u32,
                    data_shards: DATA as u16,
                    parity_shards: PARITY as u16,
                    mtime: 0,
                };
                let f = seal_frame(&mut session, FrameKind::Meta, id, 0, 0, &meta.encode());
                metas.insert(idx, meta);
                Some(f)
            }
            2 => {
                let [block, shard, ..] = rest else {
                    break;
                };
                let (block, shard) = (*block as u32, *shard as usize % (DATA + PARITY));
                rest = &rest[2..];
                let Some(m) = metas.get(&idx) else {
                    continue;
                };
                let c = content(m.id, m.size as usize);
                let bb = SHARD * DATA;
                let start = (block as usize * bb).min(c.len());
                let mut blockdata = c[start..(start + bb).min(c.len())].to_vec();
                blockdata.resize(bb, 0);
                let payload = if shard < DATA {
                    blockdata[shard * SHARD..(shard + 1) * SHARD].to_vec()
                } else {
                    let mut parity = Vec::new();
                    if enc.encode(&blockdata, SHARD, PARITY, &mut parity).is_err() {
                        continue;
                    }
                    parity[(shard - DATA) * SHARD..(shard - DATA + 1) * SHARD].to_vec()
                };
                Some(seal_frame(
                    &mut session,
                    FrameKind::Shard,
                    m.id,
                    block,
                    shard as u16,
                    &payload,
                ))
            }
            _ => {
                let [block, shard, len, ..] = rest else {
                    break;
                };
                let (block, shard, len) = (*block as u32, *shard as u16, *len as usize);
                rest = &rest[3..];
                let take = len.min(rest.len());
                let payload = rest[..take].to_vec();
                rest = &rest[take..];
                let id = metas.get(&idx).map_or(id_of(idx, false), |m| m.id);
                Some(seal_frame(
                    &mut session,
                    FrameKind::Shard,
                    id,
                    block,
                    shard,
                    &payload,
                ))
            }
        };
        if let Some(mut f) = frame {
            now += 1;
            let opener = diode_proto::SealedHeader::parse(&f)
                .ok()
                .and_then(|h| ep.table().openers().remove(&h.session));
            match opener {
                Some(o) if open_ahead => {
                    if o.open(&mut f) {
                        ep.handle_opened(&mut f, now, &mut files);
                    } else {
                        ep.handle_noise(diode_proto::DropReason::BadSeal, 1);
                    }
                }
                _ => ep.handle_datagram(&mut f, now, &mut files),
            }
        }
        drive(&mut ep, &mut files, now);
        let cap = MEMORY + 520 * SHARD * (DATA + PARITY);
        assert!(
            ep.memory_bytes() <= cap,
            "{} bytes of blocks held",
            ep.memory_bytes()
        );
    }
});

/// Carry out the endpoint's events at once, as the receiver's driver does.
fn drive(ep: &mut receiver::Endpoint, files: &mut Files, now: u64) {
    while let Some(e) = ep.poll_event() {
        match e {
            Event::ObjectStarted { key, .. } => {
                files.0.insert(key, Vec::new());
            }
            Event::WriteBlock {
                key,
                block,
                offset,
                mut buf,
                start,
                len,
                recover,
            } => {
                let mut decoder = diode_proto::fec::Decoder::default();
                let r = match recover
                    .map(|r| r.rebuild(buf.get_mut(start..).unwrap_or_default(), &mut decoder))
                {
                    Some(Err(e)) => Err(format!("cannot rebuild: {e}")),
                    _ => match buf.get(start..start.saturating_add(len)) {
                        Some(data) => files.write_at(key, offset, data),
                        None => Err("the block's range is outside its buffer".into()),
                    },
                };
                ep.handle_written(key, block, buf, r, now);
            }
            Event::Verify {
                key, hash, size, ..
            } => {
                let mut f = files.0.get(&key).cloned().unwrap_or_default();
                f.resize(size as usize, 0);
                let r = if content_hash(&f) == hash {
                    Ok(())
                } else {
                    Err(VerifyError::Mismatch("hash".into()))
                };
                ep.handle_verified(key, r, now);
            }
            Event::Deliver { key, meta } => {
                let mut f = files.0.remove(&key).unwrap_or_default();
                f.resize(meta.size as usize, 0);
                assert_eq!(
                    content_hash(&f),
                    meta.hash,
                    "delivered bytes that do not hash to the metadata's hash"
                );
                if meta.hash == content_hash(&content(meta.id, meta.size as usize)) {
                    assert!(
                        f == content(meta.id, meta.size as usize),
                        "genuine hash, other bytes"
                    );
                }
                ep.handle_delivered(key, Ok(()), now);
            }
            Event::Reset { key, .. } => {
                if let Some(f) = files.0.get_mut(&key) {
                    f.clear();
                }
            }
            Event::Refused { key, .. } | Event::Expired { key, .. } => {
                files.0.remove(&key);
            }
            _ => {}
        }
    }
}
