//! Rules of the receiver's reception of authenticated frames that need no disk (docs/protocol.md §11):
//! the buffer of shards that came before their object's metadata, the order of versions at an inbox path,
//! and the bounds on objects in progress. Time comes in as milliseconds from the caller's clock. These are
//! the first parts of the receiver endpoint to live here (docs/ARCHITECTURE-NOTES.md §4).

use crate::keys::KeyId;
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
    held: HashMap<ObjectKey, (u64, Vec<EarlyShard>)>,
}

impl EarlyShards {
    pub fn new(max_frames: usize) -> Self {
        EarlyShards {
            max: max_frames,
            frames: 0,
            held: HashMap::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
