//! The sender's journal record: one JSON line per event, appended and fsynced, so that after a crash
//! the sender knows what it claimed from the outbox and what it finished, and an admin can match ids
//! against the receiver's gap report.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JournalRecord {
    /// The file was taken from the outbox into the sent area (`objects/<id>`), before it is sent.
    /// `path` is where the bytes live: the sent area for the daemon, the original file for `diode-send file`.
    Claimed {
        id: String,
        name: String,
        path: String,
        at: u64,
    },
    /// Every pass of the object is out.
    /// The geometry is kept so a replay rebuilds exactly the frames the receiver is missing.
    Sent {
        id: String,
        name: String,
        size: u64,
        /// BLAKE3 of the content, 64 hex digits
        blake3: String,
        blocks: u64,
        shard_size: u32,
        data_shards: u16,
        parity_shards: u16,
        mtime: u64,
        at: u64,
    },
    /// Removed from the sent area by retention.
    Expired { id: String, at: u64 },
}

/// The id of a sender's next object. Ids only ever grow, so they order the versions of a file: a
/// receiver never lets an object replace one of the same sender with a higher id at the same path (an
/// older version withheld on the link and released late). Seeded from the clock (microseconds, shifted
/// left by 8 with `random` in the low byte, so two processes of one sender do not collide), and above
/// the last id the sender issued if the clock went back. Stays below 2^63, as ids always have.
pub fn next_object_id(last: u64, unix_micros: u64, random: u8) -> u64 {
    let from_clock = (unix_micros.min(u64::MAX >> 9) << 8) | random as u64;
    from_clock.max(last.saturating_add(1)).max(1)
}

/// Object ids are printed as 16 hex digits everywhere.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_id(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() || t.len() > 16 {
        return None;
    }
    u64::from_str_radix(t, 16).ok()
}
