//! Sessions: HPKE (RFC 9180) in Auth mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
//! ChaCha20-Poly1305, one-way: the sender encapsulates to the receiver's static key with its own static key,
//! and announces the session with the encapsulated key, repeated so that a late receiver joins.
//!
//! From the HPKE context both ends export a 32-byte frame key (every sealed frame uses it directly with
//! ChaCha20-Poly1305, the nonce being the frame's sequence number) and an 8-byte session tag that names
//! the session in each frame header. The announce body carries a session counter that only ever grows;
//! the receiver refuses a new session whose counter is below the highest it has accepted from that sender,
//! so a recorded session cannot be played back later.
//!
//! The announce also carries that counter in clear and an HMAC-SHA256 under a key both ends derive from
//! their static keys alone (X25519 of the sender's and the receiver's static keys, then HKDF-SHA256):
//! the receiver checks it before anything else, so an announce forged without either static key costs
//! one HMAC and no key agreement, and can never take the place of a genuine one. Only announces made by
//! the sender reach the rate-limited HPKE step (docs/protocol.md §5).

use crate::frame::FrameKey;
use crate::frame::{self, FrameKind, SealedHeader, MAGIC, SEALED_HEADER_LEN, TAG_LEN, VERSION};
use crate::keys::{Kem, KeyId, PublicKey, SecretKey};
use hpke::{
    aead::ChaCha20Poly1305 as HpkeChaCha, kdf::HkdfSha256, Deserializable, OpModeR, OpModeS,
    Serializable,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

const INFO: &[u8] = b"diode-suite v1 session";
const EXPORT_FRAME_KEY: &[u8] = b"diode-suite v1 frame key";
const EXPORT_TAG: &[u8] = b"diode-suite v1 session tag";
const ANNOUNCE_KEY_SALT: &[u8] = b"diode-suite v3 announce key";
/// Bytes before the sealed announce body: prefix, sender id, receiver id, encapsulated key, body length.
pub const ANNOUNCE_HEADER_LEN: usize = 4 + 8 + 8 + 32 + 2;
/// Bytes after the sealed announce body: the session counter in clear, then the HMAC-SHA256 over every
/// byte before it.
pub const ANNOUNCE_TRAILER_LEN: usize = 8 + ANNOUNCE_MAC_LEN;
const ANNOUNCE_MAC_LEN: usize = 32;
/// Sessions kept per sender: the current one and a short overlap for frames still in flight after rekey.
const SESSIONS_PER_SENDER: usize = 3;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct AnnounceBody {
    counter: u64,
    created_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("HPKE setup failed: {0}")]
    Hpke(String),
}

struct Keys {
    aead: Arc<FrameKey>,
    tag: u64,
}

/// The key of the announce MAC for one sender and one receiver: HKDF-SHA256 over the X25519 of the two
/// static keys (each end computes it with its own secret and the other's public key), salted with the
/// protocol label and bound to both key ids. None if the agreement is not contributory (a low-order
/// public key), which no generated key is.
fn announce_key(
    me: &SecretKey,
    peer: &PublicKey,
    sender: KeyId,
    receiver: KeyId,
) -> Option<ring::hmac::Key> {
    let secret = x25519_dalek::StaticSecret::from(<[u8; 32]>::from(me.key.to_bytes()));
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer.as_bytes()));
    if !shared.was_contributory() {
        return None;
    }
    let mut info = [0u8; 16];
    info[..8].copy_from_slice(&sender.0);
    info[8..].copy_from_slice(&receiver.0);
    let info = [&info[..]];
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, ANNOUNCE_KEY_SALT)
        .extract(shared.as_bytes());
    let okm = prk.expand(&info, ring::hmac::HMAC_SHA256).ok()?;
    Some(ring::hmac::Key::from(okm))
}

fn export_keys<C>(export: C) -> Result<Keys, hpke::HpkeError>
where
    C: Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
{
    let mut key = [0u8; 32];
    export(EXPORT_FRAME_KEY, &mut key)?;
    let mut tag = [0u8; 8];
    export(EXPORT_TAG, &mut tag)?;
    Ok(Keys {
        aead: Arc::new(FrameKey::new(&key)),
        tag: u64::from_le_bytes(tag),
    })
}

/// The MAC a sender `me` puts after the announce bytes `signed` for the receiver `to` (docs/protocol.md
/// §4.1). Public so that tests and the fuzz targets can reach the steps after the MAC with bodies they
/// altered; it needs the sender's secret key, as any announce does.
pub fn announce_mac(me: &SecretKey, to: &PublicKey, signed: &[u8]) -> Option<[u8; 32]> {
    let key = announce_key(me, to, me.public.id(), to.id())?;
    let tag = ring::hmac::sign(&key, signed);
    tag.as_ref().try_into().ok()
}

/// The sending end of one session.
pub struct SenderSession {
    keys: Keys,
    next_seq: u64,
    announce: Vec<u8>,
    counter: u64,
}

impl SenderSession {
    pub fn start<R: rand_core::CryptoRng>(
        me: &SecretKey,
        to: &PublicKey,
        counter: u64,
        created_at: u64,
        rng: &mut R,
    ) -> Result<Self, SessionError> {
        let mode = OpModeS::<Kem>::Auth((me.key.clone(), me.public.key.clone()));
        let (enc, mut ctx) =
            hpke::setup_sender::<HpkeChaCha, HkdfSha256, Kem, _>(&mode, &to.key, INFO, rng)
                .map_err(|e| SessionError::Hpke(e.to_string()))?;
        let body = postcard::to_allocvec(&AnnounceBody {
            counter,
            created_at,
        })
        .map_err(|e| SessionError::Hpke(e.to_string()))?;
        let mut announce = Vec::with_capacity(
            ANNOUNCE_HEADER_LEN + body.len() + frame::TAG_LEN + ANNOUNCE_TRAILER_LEN,
        );
        announce.extend_from_slice(&MAGIC);
        announce.push(VERSION);
        announce.push(FrameKind::Announce as u8);
        announce.extend_from_slice(&me.public.id().0);
        announce.extend_from_slice(&to.id().0);
        announce.extend_from_slice(&enc.to_bytes());
        announce.extend_from_slice(&((body.len() + frame::TAG_LEN) as u16).to_le_bytes());
        let sealed = ctx
            .seal(&body, &announce)
            .map_err(|e| SessionError::Hpke(e.to_string()))?;
        announce.extend_from_slice(&sealed);
        announce.extend_from_slice(&counter.to_le_bytes());
        let mac = announce_mac(me, to, &announce).ok_or_else(|| {
            SessionError::Hpke("the receiver key is not a usable X25519 key".into())
        })?;
        announce.extend_from_slice(&mac);
        let keys =
            export_keys(|c, o| ctx.export(c, o)).map_err(|e| SessionError::Hpke(e.to_string()))?;
        Ok(SenderSession {
            keys,
            next_seq: 0,
            announce,
            counter,
        })
    }

    /// The announce frame, to be sent at the start and repeated every few seconds.
    pub fn announce(&self) -> &[u8] {
        &self.announce
    }

    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Frames sealed so far in this session (the next sequence number).
    pub fn frames_sealed(&self) -> u64 {
        self.next_seq
    }

    /// Seal `frame` in place: the payload sits at `frame[SEALED_HEADER_LEN..len - TAG_LEN]`; the header
    /// and tag are written here. Returns the sequence number used.
    pub fn seal(
        &mut self,
        kind: FrameKind,
        object: u64,
        block: u32,
        shard: u16,
        frame: &mut [u8],
    ) -> Option<u64> {
        let seq = self.next_seq;
        let header = SealedHeader {
            kind,
            session: self.keys.tag,
            seq,
            object,
            block,
            shard,
        };
        if !frame::seal(&self.keys.aead, &header, frame) {
            return None;
        }
        self.next_seq += 1;
        Some(seq)
    }

    /// Lay out `frame` as [`seal`](Self::seal) does, header and sequence number included, but leave the
    /// payload in clear and the tag unwritten: the driver seals it later, on any thread, with
    /// [`sealer`](Self::sealer) (docs/protocol.md §9.0). The drivers still send frames in the order of
    /// their sequence numbers. Returns the sequence number used.
    pub fn prepare(
        &mut self,
        kind: FrameKind,
        object: u64,
        block: u32,
        shard: u16,
        frame: &mut [u8],
    ) -> Option<u64> {
        if frame.len() < SEALED_HEADER_LEN + TAG_LEN {
            return None;
        }
        let seq = self.next_seq;
        let header = SealedHeader {
            kind,
            session: self.keys.tag,
            seq,
            object,
            block,
            shard,
        };
        let head =
            <&mut [u8; SEALED_HEADER_LEN]>::try_from(&mut frame[..SEALED_HEADER_LEN]).ok()?;
        header.write(head);
        self.next_seq += 1;
        Some(seq)
    }

    /// What seals this session's [`prepare`](Self::prepare)d frames, on any thread.
    pub fn sealer(&self) -> Sealer {
        SessionKey {
            key: Arc::clone(&self.keys.aead),
            session: self.keys.tag,
        }
    }

    /// A new sealed frame carrying `payload`: the one place that lays one out (docs/protocol.md §5.1:
    /// header, payload's ciphertext, tag), for callers that do not seal in a buffer of their own. None
    /// only if sealing fails, which no payload that fits a frame makes it do.
    pub fn seal_payload(
        &mut self,
        kind: FrameKind,
        object: u64,
        block: u32,
        shard: u16,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let mut frame = vec![0u8; SEALED_HEADER_LEN + payload.len() + TAG_LEN];
        frame[SEALED_HEADER_LEN..SEALED_HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.seal(kind, object, block, shard, &mut frame)?;
        Some(frame)
    }
}

/// One session's frame key, shared by the threads that seal or open its frames: the sender's sealing
/// threads seal what [`SenderSession::prepare`] laid out ([`SenderSession::sealer`]); the receiver's
/// opening threads open frames ahead of the endpoint ([`SessionTable::openers`]), which then takes them
/// with [`crate::receiver::Endpoint::handle_opened`] and still makes every decision. It seals and opens
/// only frames whose header names its session.
#[derive(Clone)]
pub struct SessionKey {
    key: Arc<FrameKey>,
    session: u64,
}

/// What seals a session's prepared frames.
pub type Sealer = SessionKey;
/// What opens a session's frames.
pub type Opener = SessionKey;

impl SessionKey {
    /// Seal a prepared frame in place (its header names the session and the sequence number, the
    /// nonce). False if the frame is too short or of another session: it must not go out.
    pub fn seal(&self, frame: &mut [u8]) -> bool {
        self.with_header(frame, frame::seal)
    }

    /// Authenticate and decrypt a sealed frame of this session in place. False if it is not a sealed
    /// frame of this session or does not authenticate (then its bytes are not to be used).
    pub fn open(&self, frame: &mut [u8]) -> bool {
        self.with_header(frame, frame::open)
    }

    fn with_header(
        &self,
        frame: &mut [u8],
        op: fn(&FrameKey, &SealedHeader, &mut [u8]) -> bool,
    ) -> bool {
        match SealedHeader::parse(frame) {
            Ok(h) if h.session == self.session => op(&self.key, &h, frame),
            _ => false,
        }
    }
}

/// Why the receiver dropped a frame. Each has a counter in the receiver's logs, status and metrics, under
/// its `name`. The first eight are decided here, by the session table; the others by the receiver's
/// reception of authenticated frames (docs/protocol.md §11.1) and, for the last three, by the serial
/// link's deframer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Wrong magic or version, unknown kind, bad length.
    Malformed,
    /// An announce addressed to another receiver key.
    OtherReceiver,
    /// An announce from a sender key that is not trusted here.
    UnknownSender,
    /// An announce whose MAC (the static-static key), HPKE setup or body failed to authenticate.
    BadAnnounce,
    /// A new session whose counter is below one already accepted from that sender (a replayed session).
    OldSession,
    /// Too many new genuine announces to verify in a short time (each costs a key agreement); only
    /// announces whose MAC holds get this far.
    RateLimited,
    /// A sealed frame for a session this receiver does not have (yet): dropped before any state.
    UnknownSession,
    /// A sealed frame that failed authentication: forged, altered, or under another key.
    BadSeal,
    /// A shard of an object with no metadata yet, when the buffer of early shards is full, or let go
    /// when its metadata did not come in time.
    ShardBeforeMeta,
    /// Metadata that does not decode or fails its checks (names, sizes, geometry, envelope size).
    RefusedObject,
    /// Metadata of a known object that differs from the first copy in more than a pending hash.
    MetaConflict,
    /// The object's files could not be created.
    CannotStore,
    /// A shard of the wrong length or outside its block.
    BadShard,
    /// A heartbeat whose payload does not decode.
    BadHeartbeat,
    /// A new object past the bound on objects in progress (`max_partial_objects`).
    MaxPartialObjects,
    /// A new object past the bound on declared bytes in progress (`max_partial_mb`).
    MaxPartialMb,
    /// Serial line: a frame whose CRC-32 does not match.
    SerialCrc,
    /// Serial line: bytes between delimiters that are not a COBS frame.
    SerialMalformed,
    /// Serial line: more bytes than any frame before a delimiter.
    SerialOversize,
}

impl DropReason {
    pub const ALL: [DropReason; 19] = [
        DropReason::Malformed,
        DropReason::OtherReceiver,
        DropReason::UnknownSender,
        DropReason::BadAnnounce,
        DropReason::OldSession,
        DropReason::RateLimited,
        DropReason::UnknownSession,
        DropReason::BadSeal,
        DropReason::ShardBeforeMeta,
        DropReason::RefusedObject,
        DropReason::MetaConflict,
        DropReason::CannotStore,
        DropReason::BadShard,
        DropReason::BadHeartbeat,
        DropReason::MaxPartialObjects,
        DropReason::MaxPartialMb,
        DropReason::SerialCrc,
        DropReason::SerialMalformed,
        DropReason::SerialOversize,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::OtherReceiver => "other_receiver",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::BadAnnounce => "bad_announce",
            DropReason::OldSession => "old_session",
            DropReason::RateLimited => "rate_limited",
            DropReason::UnknownSession => "unknown_session",
            DropReason::BadSeal => "bad_seal",
            DropReason::ShardBeforeMeta => "shard_before_meta",
            DropReason::RefusedObject => "refused_object",
            DropReason::MetaConflict => "meta_conflict",
            DropReason::CannotStore => "cannot_store",
            DropReason::BadShard => "bad_shard",
            DropReason::BadHeartbeat => "bad_heartbeat",
            DropReason::MaxPartialObjects => "max_partial_objects",
            DropReason::MaxPartialMb => "max_partial_mb",
            DropReason::SerialCrc => "serial_crc",
            DropReason::SerialMalformed => "serial_malformed",
            DropReason::SerialOversize => "serial_oversize",
        }
    }
}

/// One established session as the receiver sees it.
pub struct Established {
    keys: Keys,
    pub sender: KeyId,
    pub counter: u64,
    pub created_at: u64,
    /// Authenticated frames received in this session.
    pub frames: u64,
    /// Frames skipped unopened because they carried nothing new (a finished block).
    pub redundant: u64,
    pub first_seq: u64,
    pub max_seq: u64,
    pub last_seen_ms: u64,
}

impl Established {
    /// Frames the sender has sealed in this session as far as this receiver can tell.
    pub fn expected(&self) -> u64 {
        if self.frames == 0 {
            0
        } else {
            self.max_seq - self.first_seq + 1
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceOutcome {
    /// Already established (the periodic repeat): nothing to do.
    Known,
    /// A new session was established.
    New { sender: KeyId, counter: u64 },
}

/// What became of a sealed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Authenticated and decrypted in place; the payload is `frame[SEALED_HEADER_LEN..len-TAG_LEN]`.
    Fresh(SealedHeader, KeyId),
    /// Skipped before decryption because the filter said it carries nothing new.
    Redundant,
}

/// The receiver's view of all senders: trusted keys, established sessions, and the highest session
/// counter accepted from each sender (which the receiver persists).
pub struct SessionTable {
    me: SecretKey,
    /// Trusted senders: their public key and the key of their announces' MAC.
    trusted: HashMap<KeyId, (PublicKey, ring::hmac::Key)>,
    highest: HashMap<KeyId, u64>,
    sessions: crate::FastMap<u64, Established>,
    /// Announces already handled, by encapsulated key, so a repeat costs no key agreement.
    seen: HashMap<[u8; 32], Result<u64, DropReason>>,
    tokens: f64,
    tokens_at_ms: u64,
    dirty: bool,
    /// Changes whenever a session comes or goes (what `openers` gives changes with it).
    version: u64,
}

impl SessionTable {
    pub fn new(me: SecretKey, trusted: Vec<PublicKey>, highest: HashMap<KeyId, u64>) -> Self {
        let receiver = me.public.id();
        let trusted = trusted
            .into_iter()
            .filter_map(|k| {
                let mac = announce_key(&me, &k, k.id(), receiver)?;
                Some((k.id(), (k, mac)))
            })
            .collect();
        SessionTable {
            me,
            trusted,
            highest,
            sessions: Default::default(),
            seen: HashMap::new(),
            tokens: 8.0,
            tokens_at_ms: 0,
            dirty: false,
            version: 0,
        }
    }

    /// Highest accepted counter per sender; `take_dirty` says whether it changed since the last call.
    pub fn highest(&self) -> &HashMap<KeyId, u64> {
        &self.highest
    }

    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Established> {
        self.sessions.values()
    }

    /// Allow a key agreement? A token bucket: 8 at once, 4 a second after that.
    fn take_token(&mut self, now_ms: u64) -> bool {
        let dt = now_ms.saturating_sub(self.tokens_at_ms) as f64 / 1000.0;
        self.tokens_at_ms = now_ms;
        self.tokens = (self.tokens + dt * 4.0).min(8.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn on_announce(
        &mut self,
        frame: &[u8],
        now_ms: u64,
    ) -> Result<AnnounceOutcome, DropReason> {
        if frame::peek_kind(frame) != Ok(FrameKind::Announce) || frame.len() < ANNOUNCE_HEADER_LEN {
            return Err(DropReason::Malformed);
        }
        let body_len = u16::from_le_bytes([frame[52], frame[53]]) as usize;
        if frame.len() != ANNOUNCE_HEADER_LEN + body_len + ANNOUNCE_TRAILER_LEN {
            return Err(DropReason::Malformed);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&frame[12..20]);
        if KeyId(id) != self.me.public.id() {
            return Err(DropReason::OtherReceiver);
        }
        id.copy_from_slice(&frame[4..12]);
        let sender = KeyId(id);
        let Some((sender_pk, mac_key)) = self.trusted.get(&sender) else {
            return Err(DropReason::UnknownSender);
        };
        // The cheap check first: without the sender's or the receiver's static secret nobody can make
        // this MAC, so a forged announce ends here, having cost one HMAC (ring's verify compares in
        // constant time) and taken nothing a genuine announce needs.
        let (signed, mac) = frame.split_at(frame.len() - ANNOUNCE_MAC_LEN);
        if ring::hmac::verify(mac_key, signed, mac).is_err() {
            return Err(DropReason::BadAnnounce);
        }
        let sender_pk = sender_pk.clone();
        let at = ANNOUNCE_HEADER_LEN + body_len;
        let mut clear_counter = [0u8; 8];
        clear_counter.copy_from_slice(&frame[at..at + 8]);
        let clear_counter = u64::from_le_bytes(clear_counter);
        if self
            .highest
            .get(&sender)
            .is_some_and(|h| clear_counter < *h)
        {
            return Err(DropReason::OldSession);
        }
        let mut enc_bytes = [0u8; 32];
        enc_bytes.copy_from_slice(&frame[20..52]);
        if let Some(r) = self.seen.get(&enc_bytes) {
            return match r {
                Ok(tag) if self.sessions.contains_key(tag) => Ok(AnnounceOutcome::Known),
                Ok(_) => Err(DropReason::OldSession), // established once, since replaced
                Err(d) => Err(*d),
            };
        }
        if !self.take_token(now_ms) {
            return Err(DropReason::RateLimited);
        }
        let result = self.establish(frame, sender, &sender_pk, &enc_bytes, clear_counter, now_ms);
        // Only announces whose MAC held get here: every outcome is the sender's own and is remembered.
        if self.seen.len() >= 4096 {
            self.seen.clear();
        }
        self.seen.insert(enc_bytes, result.map(|(tag, _)| tag));
        result.map(|(_, counter)| AnnounceOutcome::New { sender, counter })
    }

    fn establish(
        &mut self,
        frame: &[u8],
        sender: KeyId,
        sender_pk: &PublicKey,
        enc_bytes: &[u8; 32],
        clear_counter: u64,
        now_ms: u64,
    ) -> Result<(u64, u64), DropReason> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc_bytes)
            .map_err(|_| DropReason::BadAnnounce)?;
        let mode = OpModeR::<Kem>::Auth(sender_pk.key.clone());
        let mut ctx =
            hpke::setup_receiver::<HpkeChaCha, HkdfSha256, Kem>(&mode, &self.me.key, &enc, INFO)
                .map_err(|_| DropReason::BadAnnounce)?;
        let sealed_body = &frame[ANNOUNCE_HEADER_LEN..frame.len() - ANNOUNCE_TRAILER_LEN];
        let body = ctx
            .open(sealed_body, &frame[..ANNOUNCE_HEADER_LEN])
            .map_err(|_| DropReason::BadAnnounce)?;
        let body: AnnounceBody =
            postcard::from_bytes(&body).map_err(|_| DropReason::BadAnnounce)?;
        if body.counter != clear_counter {
            return Err(DropReason::BadAnnounce);
        }
        let highest = self.highest.get(&sender).copied().unwrap_or(0);
        if body.counter < highest {
            return Err(DropReason::OldSession);
        }
        let keys = export_keys(|c, o| ctx.export(c, o)).map_err(|_| DropReason::BadAnnounce)?;
        let tag = keys.tag;
        if body.counter > highest || !self.highest.contains_key(&sender) {
            self.highest.insert(sender, body.counter);
            self.dirty = true;
        }
        self.version += 1;
        self.sessions.insert(
            tag,
            Established {
                keys,
                sender,
                counter: body.counter,
                created_at: body.created_at,
                frames: 0,
                redundant: 0,
                first_seq: 0,
                max_seq: 0,
                last_seen_ms: now_ms,
            },
        );
        // keep only the newest few sessions of this sender
        let mut mine: Vec<(u64, u64)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.sender == sender)
            .map(|(t, s)| (s.counter, *t))
            .collect();
        if mine.len() > SESSIONS_PER_SENDER {
            mine.sort_unstable();
            for (_, t) in &mine[..mine.len() - SESSIONS_PER_SENDER] {
                self.sessions.remove(t);
            }
        }
        Ok((tag, body.counter))
    }

    /// Changes whenever a session comes or goes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// An opener for each session, by the tag that sealed frames carry (for threads that open frames
    /// before the endpoint sees them).
    pub fn openers(&self) -> HashMap<u64, Opener> {
        self.sessions
            .iter()
            .map(|(tag, s)| {
                let o = SessionKey {
                    key: Arc::clone(&s.keys.aead),
                    session: *tag,
                };
                (*tag, o)
            })
            .collect()
    }

    /// Authenticate a sealed frame in place. `wanted` sees the (not yet authenticated) header and
    /// says whether the frame could carry anything new; if not, it is skipped without decryption.
    pub fn open(
        &mut self,
        frame: &mut [u8],
        now_ms: u64,
        wanted: impl FnOnce(&SealedHeader, KeyId) -> bool,
    ) -> Result<Opened, DropReason> {
        self.admit(frame, now_ms, wanted, true)
    }

    /// A frame an [`Opener`] of its session has already authenticated and decrypted: counted as
    /// [`open`](Self::open) counts it. `wanted` as there (the work of opening is done, but a frame that
    /// can carry nothing new is still set aside).
    pub fn opened(
        &mut self,
        frame: &mut [u8],
        now_ms: u64,
        wanted: impl FnOnce(&SealedHeader, KeyId) -> bool,
    ) -> Result<Opened, DropReason> {
        self.admit(frame, now_ms, wanted, false)
    }

    /// The session a sealed frame names, whether it is wanted, and (`decrypt`) its opening here.
    fn admit(
        &mut self,
        frame: &mut [u8],
        now_ms: u64,
        wanted: impl FnOnce(&SealedHeader, KeyId) -> bool,
        decrypt: bool,
    ) -> Result<Opened, DropReason> {
        let header = SealedHeader::parse(frame).map_err(|_| DropReason::Malformed)?;
        let Some(s) = self.sessions.get_mut(&header.session) else {
            return Err(DropReason::UnknownSession);
        };
        if !wanted(&header, s.sender) {
            s.redundant += 1;
            return Ok(Opened::Redundant);
        }
        if decrypt && !frame::open(&s.keys.aead, &header, frame) {
            return Err(DropReason::BadSeal);
        }
        s.count(header.seq, now_ms);
        Ok(Opened::Fresh(header, s.sender))
    }
}

impl Established {
    /// One more authenticated frame of this session.
    fn count(&mut self, seq: u64, now_ms: u64) {
        if self.frames == 0 || seq < self.first_seq {
            self.first_seq = seq;
        }
        self.max_seq = self.max_seq.max(seq);
        self.frames += 1;
        self.last_seen_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn pair(seed: u8) -> (SecretKey, SecretKey) {
        (
            SecretKey::from_seed(&[seed; 32]),
            SecretKey::from_seed(&[seed + 100; 32]),
        )
    }

    fn shard_frame(s: &mut SenderSession, body: &[u8]) -> Vec<u8> {
        s.seal_payload(FrameKind::Shard, 1, 0, 0, body).unwrap()
    }

    #[test]
    fn announce_then_frames_open() {
        let mut rng = StdRng::seed_from_u64(1);
        let (snd, rcv) = pair(1);
        let mut s = SenderSession::start(&snd, rcv.public(), 10, 99, &mut rng).unwrap();
        let mut t = SessionTable::new(rcv.clone(), vec![snd.public().clone()], HashMap::new());
        let mut f = shard_frame(&mut s, b"hello");
        // before the announce: unknown session, no state
        assert_eq!(
            t.open(&mut f.clone(), 0, |_, _| true),
            Err(DropReason::UnknownSession)
        );
        assert_eq!(
            t.on_announce(s.announce(), 0),
            Ok(AnnounceOutcome::New {
                sender: snd.public().id(),
                counter: 10
            })
        );
        assert_eq!(t.on_announce(s.announce(), 1), Ok(AnnounceOutcome::Known));
        assert!(matches!(
            t.open(&mut f, 0, |_, _| true),
            Ok(Opened::Fresh(..))
        ));
        assert_eq!(&f[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 5], b"hello");
        assert_eq!(t.highest().get(&snd.public().id()), Some(&10));
    }

    /// A frame opened on another thread by the session's opener is counted by the table as one it
    /// opened itself; a tampered frame does not open, nor does a frame of another session.
    #[test]
    fn frames_opened_ahead_are_the_table_s_frames() {
        let mut rng = StdRng::seed_from_u64(4);
        let (snd, rcv) = pair(4);
        let mut s = SenderSession::start(&snd, rcv.public(), 10, 99, &mut rng).unwrap();
        let mut other = SenderSession::start(&snd, rcv.public(), 11, 99, &mut rng).unwrap();
        let mut t = SessionTable::new(rcv.clone(), vec![snd.public().clone()], HashMap::new());
        let v0 = t.version();
        assert!(t.openers().is_empty());
        t.on_announce(s.announce(), 0).unwrap();
        assert_ne!(t.version(), v0, "a new session changes the version");
        let openers = t.openers();
        let opener = openers.values().next().unwrap().clone();
        let mut f = shard_frame(&mut s, b"hello");
        let mut tampered = shard_frame(&mut s, b"world");
        tampered[SEALED_HEADER_LEN] ^= 1;
        let mut foreign = shard_frame(&mut other, b"other");
        let (ok, bad, alien) = std::thread::scope(|sc| {
            sc.spawn(|| {
                (
                    opener.open(&mut f),
                    opener.open(&mut tampered),
                    opener.open(&mut foreign),
                )
            })
            .join()
            .unwrap()
        });
        assert!(ok && !bad && !alien);
        assert_eq!(&f[SEALED_HEADER_LEN..SEALED_HEADER_LEN + 5], b"hello");
        assert!(
            matches!(t.opened(&mut f, 5, |_, _| true), Ok(Opened::Fresh(h, who)) if h.seq == 0 && who == snd.public().id())
        );
        assert_eq!(t.opened(&mut f, 5, |_, _| false), Ok(Opened::Redundant));
        assert_eq!(
            t.opened(&mut foreign, 5, |_, _| true),
            Err(DropReason::UnknownSession)
        );
    }

    #[test]
    fn foreign_keys_and_old_sessions_are_refused() {
        let mut rng = StdRng::seed_from_u64(2);
        let (snd, rcv) = pair(2);
        let (stranger, other_rcv) = pair(3);
        let mut t = SessionTable::new(rcv.clone(), vec![snd.public().clone()], HashMap::new());
        let s = SenderSession::start(&stranger, rcv.public(), 5, 0, &mut rng).unwrap();
        assert_eq!(
            t.on_announce(s.announce(), 0),
            Err(DropReason::UnknownSender)
        );
        let s = SenderSession::start(&snd, other_rcv.public(), 5, 0, &mut rng).unwrap();
        assert_eq!(
            t.on_announce(s.announce(), 0),
            Err(DropReason::OtherReceiver)
        );
        // an old recorded session after a newer one: refused
        let old = SenderSession::start(&snd, rcv.public(), 5, 0, &mut rng).unwrap();
        let new = SenderSession::start(&snd, rcv.public(), 6, 0, &mut rng).unwrap();
        assert!(t.on_announce(new.announce(), 0).is_ok());
        assert_eq!(
            t.on_announce(old.announce(), 0),
            Err(DropReason::OldSession)
        );
        // the persisted counter survives a restart of the receiver
        let mut t2 = SessionTable::new(rcv, vec![snd.public().clone()], t.highest().clone());
        assert_eq!(
            t2.on_announce(old.announce(), 0),
            Err(DropReason::OldSession)
        );
        // a frame of one session does not open under another session's key (replayed across sessions)
        let mut s2 = SenderSession::start(&snd, rcv_pub(&t), 7, 0, &mut rng).unwrap();
        assert!(t.on_announce(s2.announce(), 0).is_ok());
        let mut f = shard_frame(&mut s2, b"x");
        f[4..12].copy_from_slice(&new.keys.tag.to_le_bytes());
        assert_eq!(t.open(&mut f, 0, |_, _| true), Err(DropReason::BadSeal));
    }

    /// Every drop reason has its own name, and docs/protocol.md §11.1 lists each one in its table (the
    /// spec follows the code).
    #[test]
    fn every_drop_reason_is_named_once_and_documented() {
        let names: std::collections::BTreeSet<&str> =
            DropReason::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        let spec =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
                .unwrap();
        for n in names {
            assert!(
                spec.contains(&format!("| `{n}` |")),
                "{n} is not in docs/protocol.md §11.1"
            );
        }
    }

    /// An announce as an attacker on the low-side network makes it: the right key ids in clear (they
    /// are public), a random encapsulated key, body, counter and MAC.
    fn forged(genuine: &[u8], rng: &mut StdRng) -> Vec<u8> {
        use rand::RngCore;
        let mut f = genuine.to_vec();
        rng.fill_bytes(&mut f[20..52]);
        rng.fill_bytes(&mut f[ANNOUNCE_HEADER_LEN..]);
        f
    }

    /// Issue 14, point 1: forged announces used to take the shared rate limit's tokens (a key agreement
    /// each), so a flood kept a restarted receiver, or one meeting a rekey, from joining. Now they end
    /// at the MAC: 100,000 of them in the same millisecond, between every repeat of the genuine
    /// announce, and the genuine one is still established at its first arrival, before and after a
    /// rekey and across a receiver restart.
    #[test]
    fn forged_announces_cost_no_key_agreement_and_never_lock_out_the_genuine_one() {
        let mut rng = StdRng::seed_from_u64(14);
        let (snd, rcv) = pair(14);
        let s1 = SenderSession::start(&snd, rcv.public(), 100, 0, &mut rng).unwrap();
        let mut t = SessionTable::new(rcv.clone(), vec![snd.public().clone()], HashMap::new());
        for i in 0..50_000 {
            let f = forged(s1.announce(), &mut rng);
            assert_eq!(
                t.on_announce(&f, 0),
                Err(DropReason::BadAnnounce),
                "forgery {i}"
            );
        }
        assert_eq!(t.tokens, 8.0, "a forged announce took a token");
        assert_eq!(
            t.on_announce(s1.announce(), 0),
            Ok(AnnounceOutcome::New {
                sender: snd.public().id(),
                counter: 100
            })
        );
        // a rekey in the middle of the flood
        let s2 = SenderSession::start(&snd, rcv.public(), 101, 0, &mut rng).unwrap();
        for _ in 0..50_000 {
            let f = forged(s2.announce(), &mut rng);
            assert_eq!(t.on_announce(&f, 1), Err(DropReason::BadAnnounce));
        }
        assert!(matches!(
            t.on_announce(s2.announce(), 1),
            Ok(AnnounceOutcome::New { counter: 101, .. })
        ));
        // a restarted receiver (the persisted counters, nothing else) joins the current session at once
        let mut t2 = SessionTable::new(rcv, vec![snd.public().clone()], t.highest().clone());
        for _ in 0..1000 {
            let f = forged(s2.announce(), &mut rng);
            assert_eq!(t2.on_announce(&f, 0), Err(DropReason::BadAnnounce));
        }
        assert!(matches!(
            t2.on_announce(s2.announce(), 0),
            Ok(AnnounceOutcome::New { counter: 101, .. })
        ));
    }

    /// A genuine announce with its clear counter changed fails the MAC; recorded announces of older
    /// sessions are refused on the clear counter without a key agreement, so replaying them cannot
    /// drain the rate limit either.
    #[test]
    fn replayed_old_announces_are_refused_on_the_clear_counter_without_a_token() {
        let mut rng = StdRng::seed_from_u64(15);
        let (snd, rcv) = pair(15);
        let olds: Vec<SenderSession> = (1..=20)
            .map(|c| SenderSession::start(&snd, rcv.public(), c, 0, &mut rng).unwrap())
            .collect();
        let now = SenderSession::start(&snd, rcv.public(), 50, 0, &mut rng).unwrap();
        let mut t = SessionTable::new(rcv.clone(), vec![snd.public().clone()], HashMap::new());
        assert!(t.on_announce(now.announce(), 0).is_ok());
        let tokens = t.tokens;
        for _ in 0..100 {
            for o in &olds {
                assert_eq!(t.on_announce(o.announce(), 0), Err(DropReason::OldSession));
            }
        }
        assert_eq!(t.tokens, tokens);
        // the clear counter raised to pass as new: the MAC no longer holds
        let mut raised = olds[0].announce().to_vec();
        let at = raised.len() - ANNOUNCE_TRAILER_LEN;
        raised[at..at + 8].copy_from_slice(&99u64.to_le_bytes());
        assert_eq!(t.on_announce(&raised, 0), Err(DropReason::BadAnnounce));
        let later = SenderSession::start(&snd, rcv.public(), 51, 0, &mut rng).unwrap();
        assert!(matches!(
            t.on_announce(later.announce(), 0),
            Ok(AnnounceOutcome::New { counter: 51, .. })
        ));
    }

    fn rcv_pub(t: &SessionTable) -> &PublicKey {
        t.me.public()
    }

    #[test]
    fn altered_announce_is_refused() {
        let mut rng = StdRng::seed_from_u64(3);
        let (snd, rcv) = pair(4);
        let s = SenderSession::start(&snd, rcv.public(), 5, 0, &mut rng).unwrap();
        for i in 0..s.announce().len() {
            let mut t = SessionTable::new(rcv.clone(), vec![snd.public().clone()], HashMap::new());
            let mut a = s.announce().to_vec();
            a[i] ^= 0x40;
            assert!(
                t.on_announce(&a, 0).is_err(),
                "byte {i} altered was accepted"
            );
        }
    }
}
