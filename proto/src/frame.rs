//! The wire header: every datagram (or serial frame) starts with magic, version and kind. Fixed
//! little-endian layout, parsed in this one place; `docs/protocol.md` has the byte-by-byte table.
//!
//! Sealed frames (shards, object metadata, heartbeats) carry a 36-byte header that is the AEAD's
//! associated data, then the ChaCha20-Poly1305 ciphertext of the payload and its 16-byte tag. The nonce
//! is the frame's sequence number, unique within a session.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

pub const MAGIC: [u8; 2] = [0xD1, 0x0D];
/// 3 since announces carry a clear session counter and a MAC under the static-static key (version 2 had
/// neither; version 1 carried SHA-256 where 2 carries BLAKE3): a receiver of one version drops the
/// other's frames as malformed.
pub const VERSION: u8 = 3;
pub const SEALED_HEADER_LEN: usize = 36;
pub const TAG_LEN: usize = 16;
/// IPv4 + UDP headers, for turning an MTU into a datagram budget.
pub const IP_UDP_OVERHEAD: usize = 28;
/// Largest frame any link carries (a jumbo frame's datagram); larger input is refused unparsed.
pub const MAX_FRAME: usize = 9000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Session announce: HPKE encapsulated key plus a sealed body (see `session`).
    Announce = 1,
    /// One FEC shard of one block of one object.
    Shard = 2,
    /// Object metadata (postcard `ObjectMeta`), repeated through the object's frames.
    Meta = 3,
    /// Sender liveness and counters (postcard `Heartbeat`).
    Heartbeat = 4,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => FrameKind::Announce,
            2 => FrameKind::Shard,
            3 => FrameKind::Meta,
            4 => FrameKind::Heartbeat,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame too short")]
    Short,
    #[error("frame too long")]
    Long,
    #[error("bad magic")]
    Magic,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
}

/// Kind of a raw frame, checking magic, version and size bounds.
pub fn peek_kind(frame: &[u8]) -> Result<FrameKind, ParseError> {
    if frame.len() > MAX_FRAME {
        return Err(ParseError::Long);
    }
    if frame.len() < 4 {
        return Err(ParseError::Short);
    }
    if frame[..2] != MAGIC {
        return Err(ParseError::Magic);
    }
    if frame[2] != VERSION {
        return Err(ParseError::Version(frame[2]));
    }
    FrameKind::from_u8(frame[3]).ok_or(ParseError::Kind(frame[3]))
}

/// The associated-data header of a sealed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    pub kind: FrameKind,
    /// Names the session (8 bytes exported from the HPKE context), so the receiver finds the key.
    pub session: u64,
    /// Frame number within the session: the AEAD nonce, and how the receiver counts loss.
    pub seq: u64,
    pub object: u64,
    pub block: u32,
    pub shard: u16,
}

impl SealedHeader {
    pub fn write(&self, out: &mut [u8; SEALED_HEADER_LEN]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.kind as u8;
        out[4..12].copy_from_slice(&self.session.to_le_bytes());
        out[12..20].copy_from_slice(&self.seq.to_le_bytes());
        out[20..28].copy_from_slice(&self.object.to_le_bytes());
        out[28..32].copy_from_slice(&self.block.to_le_bytes());
        out[32..34].copy_from_slice(&self.shard.to_le_bytes());
        out[34..36].copy_from_slice(&[0, 0]);
    }

    /// Parse the header of a sealed frame (one that is not an announce).
    pub fn parse(frame: &[u8]) -> Result<Self, ParseError> {
        let kind = peek_kind(frame)?;
        if kind == FrameKind::Announce {
            return Err(ParseError::Kind(kind as u8));
        }
        if frame.len() < SEALED_HEADER_LEN + TAG_LEN {
            return Err(ParseError::Short);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Ok(SealedHeader {
            kind,
            session: u64_at(4),
            seq: u64_at(12),
            object: u64_at(20),
            block: u32::from_le_bytes([frame[28], frame[29], frame[30], frame[31]]),
            shard: u16::from_le_bytes([frame[32], frame[33]]),
        })
    }
}

/// The frame AEAD: ChaCha20-Poly1305 (RFC 8439) under the session's frame key. The implementation is
/// `ring`'s (BoringSSL's assembly), about twice as fast here as the RustCrypto crate that HPKE uses for
/// the announce; the bytes on the wire are the same (a test seals with one and opens with the other).
/// `benches/aead.sh` measures it against `aws-lc-rs` and OpenSSL at our frame sizes (README, Performance,
/// "Frame AEAD"): `aws-lc-rs` is level with it, OpenSSL faster only on jumbo frames.
pub struct FrameKey(LessSafeKey);

impl FrameKey {
    pub fn new(key: &[u8; 32]) -> Self {
        // a 32-byte key is the only length ChaCha20-Poly1305 takes, and the only one this accepts
        match UnboundKey::new(&CHACHA20_POLY1305, key) {
            Ok(k) => FrameKey(LessSafeKey::new(k)),
            Err(_) => unreachable!("ChaCha20-Poly1305 takes a 32-byte key"),
        }
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&seq.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seal in place: `frame` is header + payload + room for the tag; writes the header and the tag.
/// Returns false only if the buffer is too short for a header and a tag (a caller bug, not wire data).
pub(crate) fn seal(key: &FrameKey, header: &SealedHeader, frame: &mut [u8]) -> bool {
    let n = frame.len();
    if n < SEALED_HEADER_LEN + TAG_LEN {
        return false;
    }
    let (head, rest) = frame.split_at_mut(SEALED_HEADER_LEN);
    let Ok(head) = <&mut [u8; SEALED_HEADER_LEN]>::try_from(head) else {
        return false;
    };
    header.write(head);
    let (payload, tag_out) = rest.split_at_mut(rest.len() - TAG_LEN);
    match key
        .0
        .seal_in_place_separate_tag(nonce(header.seq), Aad::from(&head[..]), payload)
    {
        Ok(tag) => {
            tag_out.copy_from_slice(tag.as_ref());
            true
        }
        Err(_) => false,
    }
}

/// Authenticate and decrypt in place; on success the payload is `frame[SEALED_HEADER_LEN..len-TAG_LEN]`.
/// The tag is compared in constant time (inside `ring`).
pub(crate) fn open(key: &FrameKey, header: &SealedHeader, frame: &mut [u8]) -> bool {
    let n = frame.len();
    if n < SEALED_HEADER_LEN + TAG_LEN {
        return false;
    }
    let (head, rest) = frame.split_at_mut(SEALED_HEADER_LEN);
    key.0
        .open_in_place(nonce(header.seq), Aad::from(&head[..]), rest)
        .is_ok()
}

/// Shard size that fits one datagram of the given MTU: what is left after IP/UDP, the sealed header
/// and the tag, rounded down to a multiple of 64 (Reed-Solomon SIMD works on even sizes; 64 keeps
/// its vector loops whole).
pub fn shard_size_for_mtu(mtu: usize) -> Option<usize> {
    let room = mtu.checked_sub(IP_UDP_OVERHEAD + SEALED_HEADER_LEN + TAG_LEN)?;
    let s = room & !63;
    (s >= 64).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit, Tag};

    #[test]
    fn header_round_trip_and_default_shard() {
        let h = SealedHeader {
            kind: FrameKind::Shard,
            session: 1,
            seq: 2,
            object: 3,
            block: 4,
            shard: 5,
        };
        let mut b = [0u8; SEALED_HEADER_LEN + TAG_LEN];
        let mut head = [0u8; SEALED_HEADER_LEN];
        h.write(&mut head);
        b[..SEALED_HEADER_LEN].copy_from_slice(&head);
        assert_eq!(SealedHeader::parse(&b).unwrap(), h);
        assert_eq!(shard_size_for_mtu(1500), Some(1408));
        assert_eq!(shard_size_for_mtu(100), None);
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let aead = FrameKey::new(&[9u8; 32]);
        let h = SealedHeader {
            kind: FrameKind::Shard,
            session: 1,
            seq: 2,
            object: 3,
            block: 4,
            shard: 5,
        };
        let mut frame = vec![0u8; SEALED_HEADER_LEN + 40 + TAG_LEN];
        frame[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 40].fill(0xAB);
        assert!(seal(&aead, &h, &mut frame));
        for bit in 0..frame.len() * 8 {
            let mut f = frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            let ok = match SealedHeader::parse(&f) {
                Ok(h2) => open(&aead, &h2, &mut f),
                Err(_) => false,
            };
            assert!(!ok, "flip of bit {bit} was accepted");
        }
        let mut f = frame.clone();
        assert!(open(&aead, &h, &mut f));
        assert!(f[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 40]
            .iter()
            .all(|&b| b == 0xAB));
    }

    /// The wire does not depend on which implementation sealed: ring's frames open with the RustCrypto
    /// ChaCha20-Poly1305 and the other way round, for payloads of every length up to a jumbo frame.
    #[test]
    fn ring_and_rustcrypto_seal_the_same_bytes() {
        let key = [0x42u8; 32];
        let ours = FrameKey::new(&key);
        let theirs = ChaCha20Poly1305::new(&key.into());
        for (i, len) in [0usize, 1, 15, 16, 17, 63, 64, 65, 1408, 8900]
            .into_iter()
            .enumerate()
        {
            let h = SealedHeader {
                kind: FrameKind::Shard,
                session: 7,
                seq: 1000 + i as u64,
                object: 3,
                block: 4,
                shard: 5,
            };
            let mut frame = vec![0u8; SEALED_HEADER_LEN + len + TAG_LEN];
            for (j, b) in frame[SEALED_HEADER_LEN..SEALED_HEADER_LEN + len]
                .iter_mut()
                .enumerate()
            {
                *b = (j * 31 + i) as u8;
            }
            let plain = frame.clone();
            assert!(seal(&ours, &h, &mut frame));
            // the same frame sealed by RustCrypto is byte for byte the same
            let mut other = plain.clone();
            h.write((&mut other[..SEALED_HEADER_LEN]).try_into().unwrap());
            let (head, rest) = other.split_at_mut(SEALED_HEADER_LEN);
            let (payload, tag_out) = rest.split_at_mut(len);
            let tag = theirs
                .encrypt_in_place_detached(&nonce_rc(h.seq), head, payload)
                .unwrap();
            tag_out.copy_from_slice(&tag);
            assert_eq!(frame, other, "length {len}");
            // and RustCrypto opens ours
            let (head, rest) = other.split_at_mut(SEALED_HEADER_LEN);
            let (payload, tag) = rest.split_at_mut(len);
            let tag = Tag::clone_from_slice(tag);
            theirs
                .decrypt_in_place_detached(&nonce_rc(h.seq), head, payload, &tag)
                .unwrap();
            assert_eq!(
                &other[SEALED_HEADER_LEN..SEALED_HEADER_LEN + len],
                &plain[SEALED_HEADER_LEN..SEALED_HEADER_LEN + len]
            );
            // a wrong sequence number (nonce) is refused
            let mut f = frame.clone();
            let mut h2 = h;
            h2.seq += 1;
            assert!(!open(&ours, &h2, &mut f));
        }
    }

    fn nonce_rc(seq: u64) -> chacha20poly1305::Nonce {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&seq.to_le_bytes());
        n.into()
    }
}
