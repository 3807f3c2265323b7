//! The sender's schedule of one pass over an object (docs/protocol.md §9.1): which frame goes out when.
//! Three metadata frames open the pass; then the blocks, a group of `interleave` neighbouring blocks at a
//! time, each group's shards (data, then its parity) in `object::interleave` order so that a burst of
//! loss is spread over the whole group, with one more metadata frame after every `META_EVERY` shards (so
//! a receiver that joins mid-object learns what it receives); three metadata frames close the pass (they
//! carry the content hash when the sender computed it during the pass).
//!
//! Sans-I/O: the driver reads each group's data and computes parity; this only says what to send in
//! which order, so the sender and the tests that stand in for it send exactly the same frames.

use crate::fec::{FecError, Geometry};
use crate::object::{interleave, ObjectMeta};

/// Metadata frames before the first shard of a pass.
pub const OPENING_META: usize = 3;
/// Metadata frames after the last shard of a pass (one copy must survive the loss; with the hash).
pub const CLOSING_META: usize = 3;
/// A metadata frame goes out after this many shard frames.
pub const META_EVERY: usize = 64;

/// One block of a group, as the driver must prepare it: `len` bytes of data from offset `offset`,
/// padded with zeros to `data_shards` whole shards, and `parity_shards` parity shards computed over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBlock {
    pub block: u64,
    pub offset: u64,
    pub len: usize,
    pub data_shards: usize,
    pub parity_shards: usize,
}

/// What goes out next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// The object's metadata frame.
    Meta,
    /// Shard `shard` of the group's block at `slot`: a data shard when `shard < data_shards`, else
    /// parity shard `shard - data_shards`.
    Shard {
        slot: usize,
        block: u64,
        shard: usize,
    },
}

/// One pass over an object, or over the blocks an admin asked to replay.
#[derive(Debug, Clone)]
pub struct Pass {
    geometry: Geometry,
    size: u64,
    blocks: Vec<u64>,
    interleave: usize,
    next: usize,
    since_meta: usize,
}

impl Pass {
    /// All blocks of `meta` (`blocks` None), or the named ranges of them (those past the end are left
    /// out), in groups of `interleave` blocks.
    pub fn new(
        meta: &ObjectMeta,
        blocks: Option<&[(u32, u32)]>,
        interleave: usize,
    ) -> Result<Pass, FecError> {
        let geometry = meta.geometry()?;
        let count = geometry.block_count(meta.size);
        let blocks = match blocks {
            None => (0..count).collect(),
            Some(r) => r
                .iter()
                .flat_map(|(a, b)| u64::from(*a)..=u64::from(*b))
                .filter(|b| *b < count)
                .collect(),
        };
        Ok(Pass {
            geometry,
            size: meta.size,
            blocks,
            interleave: interleave.max(1),
            next: 0,
            since_meta: 0,
        })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The blocks of the next group, or None when the pass has sent them all.
    pub fn next_group(&mut self) -> Option<Vec<GroupBlock>> {
        let group = self
            .blocks
            .get(self.next..)?
            .chunks(self.interleave)
            .next()?;
        self.next += group.len();
        let g = &self.geometry;
        Some(
            group
                .iter()
                .map(|&b| {
                    let k = g.data_in(self.size, b);
                    GroupBlock {
                        block: b,
                        offset: b * g.block_bytes(),
                        len: g.block_len(self.size, b) as usize,
                        data_shards: k,
                        parity_shards: g.parity_for(k),
                    }
                })
                .collect(),
        )
    }

    /// The frames of `group` in the order they go out, a metadata frame after every `META_EVERY`
    /// shards (counted across groups).
    pub fn frames<'a>(&'a mut self, group: &'a [GroupBlock]) -> impl Iterator<Item = Out> + 'a {
        let totals: Vec<usize> = group
            .iter()
            .map(|b| b.data_shards + b.parity_shards)
            .collect();
        let order: Vec<(usize, usize)> = interleave(&totals).collect();
        order.into_iter().flat_map(move |(slot, shard)| {
            let shard_out = Out::Shard {
                slot,
                block: group[slot].block,
                shard,
            };
            self.since_meta += 1;
            let meta = (self.since_meta >= META_EVERY).then(|| {
                self.since_meta = 0;
                Out::Meta
            });
            std::iter::once(shard_out).chain(meta)
        })
    }
}

/// When the sender's periodic frames are due (docs/protocol.md §9.2): a new session every `rekey_ms`
/// after the current one started, the announce every `announce_ms`, a heartbeat every `heartbeat_ms`.
/// Time is milliseconds of the driver's clock; the driver asks between batches and says what it sent.
#[derive(Debug, Clone)]
pub struct Timers {
    announce_ms: u64,
    heartbeat_ms: u64,
    rekey_ms: u64,
    session_started: u64,
    last_announce: u64,
    last_heartbeat: u64,
}

/// What is due now, in the order to do it: a rekey (whose new session's announce follows at once), the
/// announce, a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    pub rekey: bool,
    pub announce: bool,
    pub heartbeat: bool,
}

impl Timers {
    /// A session started (and was announced) at `now`.
    pub fn new(now: u64, announce_ms: u64, heartbeat_ms: u64, rekey_ms: u64) -> Self {
        Timers {
            announce_ms: announce_ms.max(1),
            heartbeat_ms: heartbeat_ms.max(1),
            rekey_ms: rekey_ms.max(1),
            session_started: now,
            last_announce: now,
            last_heartbeat: now,
        }
    }

    pub fn due(&self, now: u64) -> Due {
        Due {
            rekey: now.saturating_sub(self.session_started) >= self.rekey_ms,
            announce: now.saturating_sub(self.last_announce) >= self.announce_ms,
            heartbeat: now.saturating_sub(self.last_heartbeat) >= self.heartbeat_ms,
        }
    }

    /// A new session started at `now` (a failed rekey is not reported, and is due again at once).
    pub fn rekeyed(&mut self, now: u64) {
        self.session_started = now;
    }

    /// A rekey that could not be done is due again `retry_ms` after `now`.
    pub fn rekey_retry(&mut self, now: u64, retry_ms: u64) {
        self.session_started = (now + retry_ms).saturating_sub(self.rekey_ms);
    }

    pub fn announced(&mut self, now: u64) {
        self.last_announce = now;
    }

    pub fn heartbeat_sent(&mut self, now: u64) {
        self.last_heartbeat = now;
    }

    /// When the next of them falls due: how long an idle driver may wait.
    pub fn next_deadline(&self) -> u64 {
        (self.session_started + self.rekey_ms)
            .min(self.last_announce + self.announce_ms)
            .min(self.last_heartbeat + self.heartbeat_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectKind;

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta {
            id: 1,
            name: "x".into(),
            size,
            hash: [1; 32],
            kind: ObjectKind::File,
            shard_size: 1000,
            data_shards: 10,
            parity_shards: 4,
            mtime: 0,
        }
    }

    /// Every shard of every block exactly once, groups of `interleave` blocks in order, shards of a
    /// group interleaved, and a metadata frame after every 64th shard across group boundaries.
    #[test]
    fn a_pass_sends_every_shard_once_interleaved_with_metadata_every_64() {
        let m = meta(95_500); // 10 blocks of 10 000 bytes; the last has 5 500 (6 data shards)
        let mut pass = Pass::new(&m, None, 4).unwrap();
        let mut seen = Vec::new();
        let mut since = 0;
        let mut groups = 0;
        while let Some(group) = pass.next_group() {
            groups += 1;
            assert!(group.len() <= 4);
            let first = group[0].block;
            let mut out = Vec::new();
            for o in pass.frames(&group) {
                match o {
                    Out::Meta => {
                        assert_eq!(since, META_EVERY);
                        since = 0;
                    }
                    Out::Shard { block, shard, .. } => {
                        since += 1;
                        out.push((block, shard));
                    }
                }
            }
            // interleaved: shard 0 of every block of the group first
            assert!(out[..group.len()].iter().all(|(_, s)| *s == 0));
            assert!(out
                .iter()
                .all(|(b, _)| *b >= first && *b < first + group.len() as u64));
            seen.extend(out);
        }
        assert_eq!(groups, 3);
        let last = pass.geometry().data_in(m.size, 9);
        assert_eq!(last, 6);
        let expected: usize = 9 * (10 + 4) + last + pass.geometry().parity_for(last);
        assert_eq!(seen.len(), expected);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), expected, "a shard went out twice");
    }

    /// Announces every second, heartbeats every 2 s, a rekey after 10 s whose announce resets the
    /// announce timer; a failed rekey stays due.
    #[test]
    fn timers_say_what_is_due_and_when_next() {
        let mut t = Timers::new(0, 1000, 2000, 10_000);
        assert_eq!(t.due(999), Due::default());
        assert_eq!(t.next_deadline(), 1000);
        assert_eq!(
            t.due(1000),
            Due {
                announce: true,
                ..Due::default()
            }
        );
        t.announced(1000);
        assert!(t.due(2000).heartbeat && t.due(2000).announce);
        t.announced(2000);
        t.heartbeat_sent(2000);
        assert_eq!(t.next_deadline(), 3000);
        assert!(t.due(10_000).rekey);
        assert!(t.due(10_500).rekey, "a rekey not done stays due");
        t.rekeyed(10_500);
        t.announced(10_500);
        assert!(!t.due(10_600).rekey);
        t.heartbeat_sent(10_500);
        assert_eq!(t.next_deadline(), 11_500);
    }

    /// A replay names blocks; those past the end are left out.
    #[test]
    fn a_replay_sends_only_the_named_blocks() {
        let m = meta(95_500);
        let mut pass = Pass::new(&m, Some(&[(2, 3), (9, 40)]), 32).unwrap();
        let group = pass.next_group().unwrap();
        let blocks: Vec<u64> = group.iter().map(|b| b.block).collect();
        assert_eq!(blocks, vec![2, 3, 9]);
        assert_eq!(group[2].len, 5_500);
        assert!(pass.next_group().is_none());
    }
}
