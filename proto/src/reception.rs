//! Rules of the receiver's reception of authenticated frames that need no disk (docs/protocol.md §11):
//! the buffer of shards that came before their object's metadata, the order of versions at an inbox path,
//! and the bounds on objects in progress. Time comes in as milliseconds from the caller's clock. These are
//! the first parts of the receiver endpoint to live here (docs/ARCHITECTURE-NOTES.md §4).

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::frame::{FrameKind, SealedHeader};
use crate::keys::KeyId;
use crate::object::{Assembly, ObjectKind, ObjectMeta};
use crate::session::DropReason;
use std::collections::HashMap;

/// An object as the receiver names it: the sender's key id and the sender's object id.
pub type ObjectKey = (KeyId, u64);

/// A shard that came before its object's metadata: block, shard index, payload.
pub type EarlyShard = (u32, u16, Vec<u8>);

/// Shards held for objects whose metadata has not come yet (its first copies lost), bounded by a number
/// of frames over all objects; those of an object whose metadata does not come in time are let go.
#[derive(Debug)]
pub struct EarlyShards {
    max: usize,
    frames: usize,
    held: crate::FastMap<ObjectKey, (u64, Vec<EarlyShard>)>,
}

impl EarlyShards {
    pub fn new(max_frames: usize) -> Self {
        EarlyShards {
            max: max_frames,
            frames: 0,
            held: Default::default(),
        }
    }

    /// Room for one more? (Asked before a shard is even opened: a full buffer skips it unopened.)
    pub fn has_room(&self) -> bool {
        self.frames < self.max
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Hold a shard for `key`; false (nothing held) when the buffer is full.
    pub fn hold(
        &mut self,
        key: ObjectKey,
        block: u32,
        shard: u16,
        payload: &[u8],
        now_ms: u64,
    ) -> bool {
        if !self.has_room() {
            return false;
        }
        self.held
            .entry(key)
            .or_insert_with(|| (now_ms, Vec::new()))
            .1
            .push((block, shard, payload.to_vec()));
        self.frames += 1;
        true
    }

    /// The shards held for `key`, out of the buffer (its metadata came, or was refused).
    pub fn take(&mut self, key: ObjectKey) -> Vec<EarlyShard> {
        let early = self.held.remove(&key).map(|(_, e)| e).unwrap_or_default();
        self.frames -= early.len();
        early
    }

    /// Let go of the shards of every object whose first shard came `age_ms` or more before `now_ms`;
    /// returns how many frames were let go.
    pub fn expire(&mut self, now_ms: u64, age_ms: u64) -> u64 {
        let old: Vec<ObjectKey> = self
            .held
            .iter()
            .filter(|(_, (first, _))| now_ms.saturating_sub(*first) >= age_ms)
            .map(|(k, _)| *k)
            .collect();
        old.into_iter().map(|k| self.take(k).len() as u64).sum()
    }
}

/// The newest object delivered at each inbox path, by sender. A sender's object ids only grow
/// (`journal::next_object_id`), so an object of the same sender with a lower id is an older version.
#[derive(Debug, Default)]
pub struct Versions {
    newest: HashMap<String, ObjectKey>,
}

impl Versions {
    /// Record a delivery (at start, from `received.jsonl`, newest first: only the first record of a
    /// path counts).
    pub fn remember(&mut self, name: &str, key: ObjectKey) {
        self.newest.entry(name.to_string()).or_insert(key);
    }

    /// A delivery now: it holds the path from here on.
    pub fn delivered(&mut self, name: &str, key: ObjectKey) {
        self.newest.insert(name.to_string(), key);
    }

    /// The id of the newer object of the same sender that already holds `name`, if `key` is older.
    pub fn newer_than(&self, name: &str, key: ObjectKey) -> Option<u64> {
        self.newest
            .get(name)
            .filter(|k| k.0 == key.0 && k.1 > key.1)
            .map(|k| k.1)
    }
}

/// Bounds on the objects in progress (recv.toml `max_partial_objects`, `max_partial_mb`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_objects: usize,
    pub max_bytes: u64,
}

impl Limits {
    /// May one more object of `size` declared bytes start, with `objects` in progress holding `bytes`?
    /// If not, the bound's drop reason and what it says, for the log.
    pub fn admit(&self, objects: usize, bytes: u64, size: u64) -> Result<(), (DropReason, String)> {
        if objects >= self.max_objects {
            return Err((
                DropReason::MaxPartialObjects,
                format!(
                    "{objects} objects in progress, max_partial_objects = {}",
                    self.max_objects
                ),
            ));
        }
        if bytes.saturating_add(size) > self.max_bytes {
            return Err((
                DropReason::MaxPartialMb,
                format!(
                    "{bytes} bytes in progress + {size} would pass max_partial_mb = {}",
                    self.max_bytes >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// What the receiver knows of the object a sealed frame names, when it decides whether to open it.
#[derive(Clone, Copy)]
pub enum Known<'a> {
    /// Being received.
    InProgress(&'a Assembly),
    /// Delivered or refused: nothing of it is wanted.
    Done,
    /// No metadata yet.
    Unknown,
}

/// Whether a sealed frame could carry anything new, judged on its header before it is opened
/// (docs/protocol.md §11.2): a frame that cannot is skipped without decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worth {
    Open,
    /// Nothing new (a finished block, a metadata copy without news, a done object).
    Skip,
    /// A shard of an object with no metadata yet, with no room to hold it (`shard_before_meta`).
    SkipNoRoom,
}

pub fn worth_opening(h: &SealedHeader, known: Known<'_>, early_room: bool) -> Worth {
    let yes = |b: bool| if b { Worth::Open } else { Worth::Skip };
    match (h.kind, known) {
        (FrameKind::Shard, Known::InProgress(a)) => yes(a.wants(h.block, h.shard)),
        (FrameKind::Shard, Known::Unknown) if early_room => Worth::Open,
        (FrameKind::Shard, Known::Unknown) => Worth::SkipNoRoom,
        // later metadata is wanted only while the content hash is still to come
        (FrameKind::Meta, Known::InProgress(a)) => yes(!a.meta.hash_known()),
        (FrameKind::Meta, Known::Unknown) => Worth::Open,
        (FrameKind::Shard | FrameKind::Meta, Known::Done) => Worth::Skip,
        (FrameKind::Heartbeat | FrameKind::Announce, _) => Worth::Open,
    }
}

/// What an authenticated metadata frame means for its object (docs/protocol.md §11.3, §11.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaVerdict {
    /// A new object to start.
    Start(ObjectMeta),
    /// The metadata fails its checks (or does not decode: `id` is then what could be read of it, or 0):
    /// the object is refused and nothing is written.
    Refuse { id: u64, why: String },
    /// A copy that differs from the object's metadata in more than a pending hash (`meta_conflict`).
    Conflict,
    /// The content hash object `id` was waiting for.
    HashArrived { id: u64, hash: [u8; 32] },
    /// Nothing new.
    Repeat,
}

/// `known` gives the metadata of the object in progress under an id, if there is one.
pub fn judge_meta<'a>(
    payload: &[u8],
    known: impl FnOnce(u64) -> Option<&'a ObjectMeta>,
) -> MetaVerdict {
    let meta = match ObjectMeta::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            // the object id leads the metadata; if even it does not decode there is nothing to name
            let id = postcard::from_bytes::<u64>(payload).unwrap_or(0);
            return MetaVerdict::Refuse {
                id,
                why: e.to_string(),
            };
        }
    };
    if meta.kind == ObjectKind::Envelope && meta.size > MAX_ENVELOPE_BYTES as u64 {
        return MetaVerdict::Refuse {
            id: meta.id,
            why: format!(
                "an envelope of {} bytes: at most {MAX_ENVELOPE_BYTES}",
                meta.size
            ),
        };
    }
    match known(meta.id) {
        None => MetaVerdict::Start(meta),
        // a copy from before the hash was known, arriving late, is the same object
        Some(k) if !(k.same_object(&meta) || meta.same_object(k)) => MetaVerdict::Conflict,
        Some(k) if meta.hash_known() && !k.hash_known() => MetaVerdict::HashArrived {
            id: meta.id,
            hash: meta.hash,
        },
        Some(_) => MetaVerdict::Repeat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::HASH_PENDING;

    fn meta(id: u64, hash: [u8; 32]) -> ObjectMeta {
        ObjectMeta {
            id,
            name: "a.bin".into(),
            size: 300_000,
            hash,
            kind: ObjectKind::File,
            shard_size: 1408,
            data_shards: 128,
            parity_shards: 24,
            mtime: 7,
        }
    }

    /// The first copy starts the object; a copy with the hash it waited for brings it (a late hash);
    /// a copy that differs in anything else is a conflict; a repeat is nothing; bad metadata and an
    /// oversize envelope are refused with the id they carry.
    #[test]
    fn metadata_starts_brings_a_late_hash_conflicts_or_is_refused() {
        let pending = meta(9, HASH_PENDING);
        assert_eq!(
            judge_meta(&pending.encode(), |_| None),
            MetaVerdict::Start(pending.clone())
        );
        let hashed = meta(9, [5; 32]);
        assert_eq!(
            judge_meta(&hashed.encode(), |_| Some(&pending)),
            MetaVerdict::HashArrived {
                id: 9,
                hash: [5; 32]
            }
        );
        assert_eq!(
            judge_meta(&hashed.encode(), |_| Some(&hashed)),
            MetaVerdict::Repeat
        );
        assert_eq!(
            judge_meta(&pending.encode(), |_| Some(&hashed)),
            MetaVerdict::Repeat
        );
        let mut other = hashed.clone();
        other.size += 1;
        assert_eq!(
            judge_meta(&other.encode(), |_| Some(&hashed)),
            MetaVerdict::Conflict
        );
        let mut other_hash = hashed.clone();
        other_hash.hash = [6; 32];
        assert_eq!(
            judge_meta(&other_hash.encode(), |_| Some(&hashed)),
            MetaVerdict::Conflict
        );
        let mut bad = hashed.clone();
        bad.name = "../up".into();
        assert!(matches!(
            judge_meta(&bad.encode(), |_| None),
            MetaVerdict::Refuse { id: 9, .. }
        ));
        let mut env = hashed.clone();
        env.kind = ObjectKind::Envelope;
        assert!(matches!(
            judge_meta(&env.encode(), |_| None),
            MetaVerdict::Refuse { id: 9, .. }
        ));
        assert!(matches!(
            judge_meta(b"", |_| None),
            MetaVerdict::Refuse { id: 0, .. }
        ));
    }

    /// Frames that cannot bring anything new are skipped before decryption.
    #[test]
    fn only_frames_that_can_bring_something_new_are_opened() {
        let h = |kind, block, shard| SealedHeader {
            kind,
            session: 1,
            seq: 1,
            object: 9,
            block,
            shard,
        };
        let mut a = Assembly::new(meta(9, HASH_PENDING)).unwrap();
        assert_eq!(
            worth_opening(&h(FrameKind::Shard, 0, 0), Known::InProgress(&a), false),
            Worth::Open
        );
        assert_eq!(
            worth_opening(&h(FrameKind::Shard, 7, 0), Known::InProgress(&a), true),
            Worth::Skip
        );
        assert_eq!(
            worth_opening(&h(FrameKind::Meta, 0, 0), Known::InProgress(&a), true),
            Worth::Open
        );
        a.meta.hash = [1; 32];
        assert_eq!(
            worth_opening(&h(FrameKind::Meta, 0, 0), Known::InProgress(&a), true),
            Worth::Skip
        );
        assert_eq!(
            worth_opening(&h(FrameKind::Shard, 0, 0), Known::Unknown, true),
            Worth::Open
        );
        assert_eq!(
            worth_opening(&h(FrameKind::Shard, 0, 0), Known::Unknown, false),
            Worth::SkipNoRoom
        );
        assert_eq!(
            worth_opening(&h(FrameKind::Meta, 0, 0), Known::Done, true),
            Worth::Skip
        );
        assert_eq!(
            worth_opening(&h(FrameKind::Heartbeat, 0, 0), Known::Done, true),
            Worth::Open
        );
    }

    const A: KeyId = KeyId([1; 8]);
    const B: KeyId = KeyId([2; 8]);

    /// The buffer holds at most its bound over all objects, gives an object's shards back once, and
    /// lets go of those whose metadata did not come in time (so it cannot stay full).
    #[test]
    fn early_shards_are_bounded_given_back_once_and_let_go_when_overdue() {
        let mut e = EarlyShards::new(5);
        for i in 0..4 {
            assert!(e.hold((A, 1), 0, i, b"x", 1_000));
        }
        assert!(e.hold((A, 2), 0, 0, b"y", 20_000));
        assert!(!e.has_room());
        assert!(!e.hold((A, 3), 0, 0, b"z", 20_000), "held past the bound");
        assert_eq!(e.take((A, 1)).len(), 4);
        assert!(e.take((A, 1)).is_empty());
        assert_eq!(e.frames(), 1);
        assert!(e.hold((B, 1), 0, 0, b"w", 25_000));
        // object (A, 2) came at 20 s: at 50 s, with an age of 30 s, it goes; (B, 1) stays
        assert_eq!(e.expire(50_000, 30_000), 1);
        assert_eq!(e.frames(), 1);
        assert_eq!(e.take((B, 1)), vec![(0, 0, b"w".to_vec())]);
    }

    /// An older object of the same sender never replaces the newer one at a path; other senders and
    /// newer objects do.
    #[test]
    fn an_older_version_is_refused_and_only_by_the_same_sender() {
        let mut v = Versions::default();
        // at start, newest record first
        v.remember("app.bin", (A, 40));
        v.remember("app.bin", (A, 30));
        assert_eq!(v.newer_than("app.bin", (A, 35)), Some(40));
        assert_eq!(v.newer_than("app.bin", (A, 41)), None);
        assert_eq!(v.newer_than("app.bin", (B, 1)), None);
        assert_eq!(v.newer_than("other.bin", (A, 1)), None);
        v.delivered("app.bin", (A, 50));
        assert_eq!(v.newer_than("app.bin", (A, 45)), Some(50));
    }

    #[test]
    fn limits_name_the_bound_that_was_hit() {
        let l = Limits {
            max_objects: 2,
            max_bytes: 64 << 20,
        };
        assert!(l.admit(1, 10, 20).is_ok());
        let (why, text) = l.admit(2, 0, 1).unwrap_err();
        assert_eq!(why, DropReason::MaxPartialObjects);
        assert!(text.contains("max_partial_objects = 2"), "{text}");
        let (why, text) = l.admit(0, 60 << 20, 5 << 20).unwrap_err();
        assert_eq!(why, DropReason::MaxPartialMb);
        assert!(text.contains("max_partial_mb = 64"), "{text}");
    }
}
