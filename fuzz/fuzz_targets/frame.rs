//! Every datagram the receiver takes off the link: the header parse (`peek_kind`,
//! `SealedHeader::parse`), the session lookup and AEAD open (`SessionTable::open`), and what the receiver
//! does with an authenticated payload (object metadata, heartbeat, a shard into an object's assembly and
//! the Reed-Solomon decode of its block).
//!
//! First byte, bit 0 clear: the rest is a raw frame off the wire, opened under the fixed session (seeds
//! are real frames of that session, so mutations of them reach the MAC check and past it).
//! Bit 0 set: the rest is `kind, object (8), block (4), shard (2), payload`, which the target seals under
//! the sender's session first, as a compromised low side holding the sender key could; it must open
//! to the same payload, which then goes where the receiver sends it.
#![no_main]

use diode_fuzz::{seal_frame, sender_session, session_table, small_meta, NOW};
use diode_proto::frame::{peek_kind, MAX_FRAME, SEALED_HEADER_LEN, TAG_LEN};
use diode_proto::object::{decode_heartbeat, Assembly, ObjectMeta, Step};
use diode_proto::session::{Opened, SenderSession, SessionTable};
use diode_proto::{FrameKind, SealedHeader};
use libfuzzer_sys::fuzz_target;
use std::sync::{LazyLock, Mutex};

struct Link {
    sender: SenderSession,
    table: SessionTable,
}

static LINK: LazyLock<Mutex<Link>> = LazyLock::new(|| {
    let sender = sender_session();
    let mut table = session_table();
    if let Err(d) = table.on_announce(sender.announce(), NOW * 1000) {
        panic!("the fixed session's announce must be accepted: {d:?}");
    }
    Mutex::new(Link { sender, table })
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut link = LINK.lock().unwrap_or_else(|p| p.into_inner());
    if mode & 1 == 0 {
        raw(&mut link, rest);
    } else {
        sealed(&mut link, rest);
    }
});

fn raw(link: &mut Link, bytes: &[u8]) {
    let kind = peek_kind(bytes);
    let header = SealedHeader::parse(bytes);
    if let Ok(h) = header {
        assert_eq!(kind, Ok(h.kind));
        let mut out = [0u8; SEALED_HEADER_LEN];
        h.write(&mut out);
        // bytes 34..36 are reserved: written as zero, not read, covered by the MAC
        assert_eq!(out[..34], bytes[..34], "header does not round-trip");
    }
    let mut frame = bytes.to_vec();
    if let Ok(Opened::Fresh(h, _)) = link.table.open(&mut frame, NOW * 1000, |_, _| true) {
        assert!(header.is_ok());
        let payload = &frame[SEALED_HEADER_LEN..frame.len() - TAG_LEN];
        after_open(h, payload);
    }
}

fn sealed(link: &mut Link, bytes: &[u8]) {
    if bytes.len() < 15 {
        return;
    }
    let kind = match bytes[0] % 3 {
        0 => FrameKind::Shard,
        1 => FrameKind::Meta,
        _ => FrameKind::Heartbeat,
    };
    let object = u64::from_le_bytes(bytes[1..9].try_into().unwrap_or_default());
    let block = u32::from_le_bytes(bytes[9..13].try_into().unwrap_or_default());
    let shard = u16::from_le_bytes(bytes[13..15].try_into().unwrap_or_default());
    let payload = &bytes[15..bytes
        .len()
        .min(15 + MAX_FRAME - SEALED_HEADER_LEN - TAG_LEN)];
    let mut frame = seal_frame(&mut link.sender, kind, object, block, shard, payload);
    match link.table.open(&mut frame, NOW * 1000, |_, _| true) {
        Ok(Opened::Fresh(h, _)) => {
            assert_eq!(
                (h.kind, h.object, h.block, h.shard),
                (kind, object, block, shard)
            );
            let opened = &frame[SEALED_HEADER_LEN..frame.len() - TAG_LEN];
            assert_eq!(opened, payload, "open did not give back the sealed payload");
            after_open(h, opened);
        }
        other => panic!("a frame sealed under the session did not open: {other:?}"),
    }
}

/// What `receiver/src/receive.rs` does with an authenticated payload.
fn after_open(h: SealedHeader, payload: &[u8]) {
    match h.kind {
        FrameKind::Meta => {
            if let Ok(meta) = ObjectMeta::decode(payload) {
                let _ = Assembly::new(meta);
            }
        }
        FrameKind::Heartbeat => {
            let _ = decode_heartbeat(payload);
        }
        FrameKind::Shard => shard(h.block, h.shard, payload),
        FrameKind::Announce => {}
    }
}

/// Insert the shard into a small object's assembly, fill the rest of its block from the same bytes
/// until the block is ready, and decode it.
fn shard(block: u32, shard: u16, payload: &[u8]) {
    let Ok(mut asm) = Assembly::new(small_meta()) else {
        return;
    };
    let mut buffers = diode_proto::object::Buffers::new(1 << 20);
    match asm.insert(block, shard, payload, &mut buffers) {
        Ok(Step::Stored) | Ok(Step::Ready) => {}
        _ => return,
    }
    let mut i: u16 = 0;
    while !matches!(
        asm.insert(block, i, payload, &mut buffers),
        Ok(Step::Ready) | Err(_)
    ) {
        i = i.wrapping_add(1);
        if i == 0 {
            return;
        }
    }
    let mut decoder = diode_proto::fec::Decoder::default();
    if let Ok(t) = asm.take_ready(block, &mut decoder) {
        let (buf, start, len) = (t.buf, t.start, t.len);
        assert!(start + len <= buf.len());
        // large blocks start page-aligned; small ones at 0
        assert!(
            start == 0
                || (buf[start..].as_ptr() as usize).is_multiple_of(diode_proto::fec::DATA_ALIGN)
        );
        asm.written(block, true);
        buffers.give(buf);
        assert!(asm.is_done(block));
    }
}
