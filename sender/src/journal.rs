//! The journal and the sent area: every object the daemon takes from the outbox is first recorded
//! (`Claimed`), then moved into `state/objects/<id>`, sent, and recorded again (`Sent`) with what a replay
//! needs. After a crash, claimed-but-unsent objects are sent again; nothing is deleted unsent. Retention
//! (age and total size) removes the oldest sent objects. Replay requests are files in `state/replay/`, so
//! the running daemon picks them up without a restart.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use diode_host::atomic::{append_line, sync_dir, write_atomic};
use diode_proto::journal::{format_id, next_object_id, parse_id, JournalRecord};
use diode_proto::object::{kind_for_name, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub struct Journal {
    path: PathBuf,
    objects: PathBuf,
    replay: PathBuf,
    /// The last object id issued (read from the journal at the first claim).
    last_id: std::sync::Mutex<Option<u64>>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub name: String,
    pub path: PathBuf,
    pub claimed_at: u64,
    pub sent: Option<ObjectMeta>,
    pub sent_at: Option<u64>,
    pub expired: bool,
}

impl Entry {
    /// Where the object stands, in one word: `queued` (claimed, not yet sent), `kept` (sent, its copy
    /// kept for replay), `gone` (sent, its copy removed), `expired` (removed by retention).
    pub fn state(&self) -> &'static str {
        if self.expired {
            "expired"
        } else if self.sent.is_none() {
            "queued"
        } else if self.path.exists() {
            "kept"
        } else {
            "gone"
        }
    }

    /// The object's block count, once sent.
    pub fn blocks(&self) -> Option<u64> {
        let m = self.sent.as_ref()?;
        m.geometry().ok().map(|g| g.block_count(m.size))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ReplayRequest {
    pub object: Option<String>,
    pub blocks: Option<String>,
    pub since: Option<u64>,
}

impl Journal {
    /// The journal's files, creating nothing (`diode-send console` only reads them).
    pub fn at(cfg: &Config) -> Self {
        Journal {
            path: cfg.journal_path(),
            objects: cfg.objects_dir(),
            replay: cfg.replay_dir(),
            last_id: std::sync::Mutex::new(None),
        }
    }

    pub fn open(cfg: &Config) -> Result<Self> {
        let j = Journal::at(cfg);
        for d in [&cfg.state, &j.objects, &j.replay] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(j)
    }

    pub fn append(&self, rec: &JournalRecord) -> Result<()> {
        let line = serde_json::to_string(rec)?;
        append_line(&self.path, &line)
    }

    /// All objects in the journal, oldest first. A torn last line (a crash mid-append) is skipped.
    pub fn load(&self) -> Result<Vec<Entry>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        let mut by_id: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut order = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let rec: JournalRecord = match serde_json::from_str(line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(line = n + 1, error = %e, journal = %self.path.display(), "skipping an unreadable journal line");
                    continue;
                }
            };
            match rec {
                JournalRecord::Claimed { id, name, path, at } => {
                    let Some(id) = parse_id(&id) else { continue };
                    order.push(id);
                    by_id.insert(
                        id,
                        Entry {
                            id,
                            name,
                            path: PathBuf::from(path),
                            claimed_at: at,
                            sent: None,
                            sent_at: None,
                            expired: false,
                        },
                    );
                }
                JournalRecord::Sent {
                    id,
                    name,
                    size,
                    blake3,
                    shard_size,
                    data_shards,
                    parity_shards,
                    mtime,
                    at,
                    ..
                } => {
                    let Some(e) = parse_id(&id).and_then(|i| by_id.get_mut(&i)) else {
                        continue;
                    };
                    let mut h = [0u8; 32];
                    if hex_into(&blake3, &mut h).is_none() {
                        continue;
                    }
                    e.sent = Some(ObjectMeta {
                        id: e.id,
                        kind: kind_for_name(&name),
                        name,
                        size,
                        hash: h,
                        shard_size,
                        data_shards,
                        parity_shards,
                        mtime,
                    });
                    e.sent_at = Some(at);
                }
                JournalRecord::Expired { id, .. } => {
                    if let Some(e) = parse_id(&id).and_then(|i| by_id.get_mut(&i)) {
                        e.expired = true;
                    }
                }
            }
        }
        Ok(order
            .into_iter()
            .filter_map(|id| by_id.remove(&id))
            .collect())
    }

    /// Take a file out of the outbox into the sent area. The claim is journaled before the move, so a
    /// crash in between leaves the file in the outbox (taken again) and never loses it.
    /// A new object id, above every id this journal holds (`diode_proto::journal::next_object_id`).
    pub fn new_id(&self) -> Result<u64> {
        let mut last = self.last_id.lock().unwrap_or_else(|e| e.into_inner());
        let before = match *last {
            Some(l) => l,
            None => self.load()?.iter().map(|e| e.id).max().unwrap_or(0),
        };
        let id = next_object_id(before, diode_host::unix_micros(), rand::random());
        *last = Some(id);
        Ok(id)
    }

    pub fn claim(&self, src: &Path, name: &str) -> Result<(u64, PathBuf)> {
        let id = self.new_id()?;
        let dest = self.objects.join(format_id(id));
        self.append(&JournalRecord::Claimed {
            id: format_id(id),
            name: name.to_string(),
            path: dest.to_string_lossy().into_owned(),
            at: diode_host::unix_now(),
        })?;
        if let Err(e) = fs::rename(src, &dest) {
            if e.raw_os_error() != Some(18) {
                return Err(e).with_context(|| {
                    format!("cannot move {} into {}", src.display(), dest.display())
                });
            }
            // EXDEV: the outbox is on another filesystem; copy, make it durable, then remove
            fs::copy(src, &dest)
                .with_context(|| format!("cannot copy {} into the sent area", src.display()))?;
            fs::File::open(&dest).and_then(|f| f.sync_all())?;
            fs::remove_file(src)
                .with_context(|| format!("cannot remove {} after copying it", src.display()))?;
        }
        sync_dir(&self.objects);
        Ok((id, dest))
    }

    pub fn record_sent(&self, meta: &ObjectMeta) -> Result<()> {
        let g = meta.geometry()?;
        self.append(&JournalRecord::Sent {
            id: format_id(meta.id),
            name: meta.name.clone(),
            size: meta.size,
            blake3: meta.hash_hex(),
            blocks: g.block_count(meta.size),
            shard_size: meta.shard_size,
            data_shards: meta.data_shards,
            parity_shards: meta.parity_shards,
            mtime: meta.mtime,
            at: diode_host::unix_now(),
        })
    }

    /// Remove sent objects older than `max_age_secs`, then the oldest while the sent area is over
    /// `max_bytes`. Only files inside the sent area are ever removed.
    pub fn retain(&self, max_age_secs: u64, max_bytes: u64) -> Result<()> {
        let now = diode_host::unix_now();
        let mut kept: Vec<(Entry, u64)> = Vec::new();
        for e in self.load()? {
            if e.expired || e.sent.is_none() || !e.path.starts_with(&self.objects) {
                continue;
            }
            let Ok(md) = fs::metadata(&e.path) else {
                continue;
            };
            kept.push((e, md.len()));
        }
        let mut total: u64 = kept.iter().map(|(_, l)| *l).sum();
        for (e, len) in kept {
            let old = now.saturating_sub(e.sent_at.unwrap_or(now)) > max_age_secs;
            if (old || total > max_bytes) && fs::remove_file(&e.path).is_ok() {
                total = total.saturating_sub(len);
                self.append(&JournalRecord::Expired {
                    id: format_id(e.id),
                    at: now,
                })?;
                tracing::info!(object = %format_id(e.id), name = %e.name, "retention: removed from the sent area");
            }
        }
        Ok(())
    }

    pub fn queue_replay(&self, req: &ReplayRequest) -> Result<PathBuf> {
        let p = self
            .replay
            .join(format!("{}.json", diode_host::unix_micros()));
        write_atomic(&p, serde_json::to_string(req)?.as_bytes(), 0o644)?;
        Ok(p)
    }

    /// Replay requests waiting, oldest first (their files are named by the time they were queued),
    /// each with its file; one that cannot be read says why.
    pub fn pending_replays(&self) -> Vec<(PathBuf, Result<ReplayRequest, String>)> {
        let Ok(rd) = fs::read_dir(&self.replay) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|f| {
                let r = fs::read_to_string(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
                (f, r)
            })
            .collect()
    }

    /// Replay requests waiting, oldest first; each is removed as it is taken.
    pub fn take_replays(&self) -> Vec<ReplayRequest> {
        let mut out = Vec::new();
        for (f, r) in self.pending_replays() {
            match r {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "ignoring an unreadable replay request")
                }
            }
            let _ = fs::remove_file(&f);
        }
        out
    }
}

fn hex_into(text: &str, out: &mut [u8; 32]) -> Option<()> {
    if text.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(())
}

/// Check that a journal entry can be replayed, with a message the admin can act on if not.
pub fn replayable(e: &Entry) -> Result<ObjectMeta> {
    let id = format_id(e.id);
    let Some(meta) = e.sent.clone() else {
        bail!(
            "object {id} ({}) has not finished its first send yet; it is still queued",
            e.name
        );
    };
    if e.expired {
        bail!(
            "object {id} ({}) was removed from the sent area by retention; send the file again",
            e.name
        );
    }
    match fs::metadata(&e.path) {
        Ok(md) if md.len() == meta.size => Ok(meta),
        Ok(_) => bail!(
            "object {id}: {} changed since it was sent; send it again as a new file",
            e.path.display()
        ),
        Err(_) => bail!(
            "object {id}: {} is gone; send the file again",
            e.path.display()
        ),
    }
}
