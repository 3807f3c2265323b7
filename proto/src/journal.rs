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
