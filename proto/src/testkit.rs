//! What the endpoints' unit tests share: fixed keys, an object, a sender endpoint and a source in memory.
//! Test code only (compiled with the unit tests).
#![cfg(test)]

use crate::fec::Geometry;
use crate::frame::{peek_kind, FrameKind, SealedHeader};
use crate::hash::content_hash;
use crate::keys::SecretKey;
use crate::object::{ObjectKind, ObjectMeta, HASH_PENDING};
use crate::sender::{self, Source, Transmit, MAX_FRAME};
use crate::session::SenderSession;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;

pub fn keys() -> (SecretKey, SecretKey) {
    (
        SecretKey::from_seed(&[7; 32]),
        SecretKey::from_seed(&[9; 32]),
    )
}

/// `size` bytes of content and its metadata (hash left pending when `late_hash`).
pub fn object(id: u64, name: &str, size: usize, late_hash: bool) -> (ObjectMeta, Vec<u8>) {
    let content: Vec<u8> = (0..size).map(|i| (i * 7 + id as usize) as u8).collect();
    let g = Geometry::new(64, 4, 2).expect("a geometry");
    let meta = ObjectMeta {
        id,
        name: name.into(),
        size: size as u64,
        hash: if late_hash {
            HASH_PENDING
        } else {
            content_hash(&content)
        },
        kind: if name.ends_with(".envelope") {
            ObjectKind::Envelope
        } else {
            ObjectKind::File
        },
        shard_size: g.shard_size as u32,
        data_shards: g.data_shards as u16,
        parity_shards: g.parity_shards as u16,
        mtime: 0,
    };
    (meta, content)
}

pub struct Memory(pub HashMap<u64, Vec<u8>>);

impl Source for Memory {
    fn map(&mut self, id: u64, offset: u64, len: usize) -> Option<&[u8]> {
        self.0.get(&id)?.get(offset as usize..offset as usize + len)
    }

    fn read_at(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let c = self.0.get(&id).ok_or("no object")?;
        buf.copy_from_slice(
            c.get(offset as usize..offset as usize + buf.len())
                .ok_or("past the end")?,
        );
        Ok(())
    }
}

pub fn sender_config() -> sender::Config {
    sender::Config {
        interleave: 2,
        announce_ms: 1000,
        heartbeat_ms: 1000,
        rekey_ms: 3_600_000,
        rate_bps: 1_000_000,
        repeats: vec![300, 1500],
        repeat_small: false,
        defer_seal: false,
    }
}

pub fn sender(counter: u64) -> sender::Endpoint {
    sender_with(counter, sender_config())
}

/// A sender whose session is the same for the same counter.
pub fn sender_with(counter: u64, cfg: sender::Config) -> sender::Endpoint {
    let (s, r) = keys();
    let session = SenderSession::start(
        &s,
        r.public(),
        counter,
        1,
        &mut StdRng::seed_from_u64(counter),
    )
    .expect("a session");
    sender::Endpoint::new(cfg, session, 0)
}

/// What a frame is, from its clear header: kind, object, block, shard.
pub fn what(frame: &[u8]) -> (FrameKind, u64, u32, u16) {
    match peek_kind(frame) {
        Ok(FrameKind::Announce) => (FrameKind::Announce, 0, 0, 0),
        _ => {
            let h = SealedHeader::parse(frame).expect("a sealed header");
            (h.kind, h.object, h.block, h.shard)
        }
    }
}

/// Every frame the sender gives at `now` until it is idle.
pub fn drain(ep: &mut sender::Endpoint, src: &mut Memory, now: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        match ep.poll_transmit(now, src, &mut buf) {
            Transmit::Frame(n) => out.push(buf[..n].to_vec()),
            Transmit::Plain(n) => {
                let mut f = buf[..n].to_vec();
                assert!(ep.sealer().seal(&mut f), "a prepared frame seals");
                out.push(f);
            }
            Transmit::Rekey => panic!("no rekey expected"),
            Transmit::Idle(_) => return out,
        }
    }
}
