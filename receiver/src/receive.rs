//! The receive loop: datagrams in (GRO batches), frames authenticated by the session table, metadata
//! and shards handed to the object's assembly, finished blocks written, finished objects verified and
//! moved into the inbox. Once a second: persist state, judge link health, set aside stalled blocks,
//! expire abandoned objects, write the status file. It never sends.

use crate::approvals::Approvals;
use crate::config::Config;
use crate::hook_runner::HookRunner;
use crate::status::{self, LimitStatus, ObjectStatus, RefusedStatus, SessionStatus, Status};
use crate::store::{Partial, PublishError, Storage};
use crate::writer::{self, Done, FinishError, Job, Writer};
use anyhow::{Context, Result};
use diode_host::atomic::{append_line, write_atomic, Persister};
use diode_host::link::{serial::SerialRx, udp::UdpRx, FramesIn};
use diode_proto::envelope::MAX_ENVELOPE_BYTES;
use diode_proto::frame::{self, FrameKind, SEALED_HEADER_LEN, TAG_LEN};
use diode_proto::journal::format_id;
use diode_proto::object::{decode_heartbeat, ObjectKind, Step};
use diode_proto::reception::{
    judge_meta, worth_opening, EarlyShard, EarlyShards, Known, Limits, MetaVerdict, ObjectKey,
    Versions, Worth,
};
use diode_proto::session::{AnnounceOutcome, Opened};
use diode_proto::{DropReason, KeyId, SessionTable};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

type Key = ObjectKey;

/// Shards held while waiting for metadata: about 3 MiB at the default shard size.
const PENDING_MAX: usize = 2048;
/// Refused objects that status lists (the newest); all of them are in `state/refused.jsonl`.
const REFUSED_SHOWN: usize = 50;
/// The version of received.jsonl records whose object ids order versions (protocol 3: a sender's ids
/// only ever grow). Older records are not compared.
const ORDERED_IDS: u64 = 3;

struct Link {
    last: Instant,
    up: bool,
}

pub struct Receiver {
    cfg: Config,
    /// Saves progress, status and metrics off the receive loop (each save is an fsync).
    persist: Persister,
    /// Where partial objects live and how they are written.
    storage: Storage,
    /// Taken by `run`.
    rx: Option<Box<dyn FramesIn>>,
    table: SessionTable,
    objects: HashMap<Key, Partial>,
    completed: HashSet<Key>,
    refused: HashSet<Key>,
    /// The newest object delivered at each inbox path, by sender: an object of the same sender with a
    /// lower id is an older version (withheld and released late) and never replaces it.
    paths: Versions,
    refused_recent: VecDeque<RefusedStatus>,
    refused_total: u64,
    /// Per bound on partial objects: when it was last logged, and the refusals since (a flood of new
    /// objects logs one line per bound every 10 s, not one per object).
    limit_log: HashMap<DropReason, (Option<Instant>, u64)>,
    /// Authenticated shards that arrived before their object's metadata (its first copies were lost),
    /// kept until the metadata comes; bounded by `PENDING_MAX` frames in all.
    pending: EarlyShards,
    drops: BTreeMap<DropReason, u64>,
    drops_logged: BTreeMap<DropReason, u64>,
    decoder: diode_proto::fec::Decoder,
    start: Instant,
    /// The clock, read once per batch of received datagrams (not once per frame).
    clock: Instant,
    links: HashMap<KeyId, Link>,
    received_files: u64,
    received_bytes: u64,
    frames_since_check: u32,
    last_tick: Instant,
    last_drop_log: Instant,
    approvals: Option<Approvals>,
    writer: Writer,
}

fn senders_path(cfg: &Config) -> PathBuf {
    cfg.state.join("senders.json")
}

fn completed_path(cfg: &Config) -> PathBuf {
    cfg.state.join("received.jsonl")
}

fn refused_path(cfg: &Config) -> PathBuf {
    cfg.state.join("refused.jsonl")
}

/// How long a verified object whose move into the inbox failed (a full disk) waits before the next
/// attempt: 1 s, doubling up to 5 minutes, so a lasting failure is neither hammered nor forgotten.
fn retry_after(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
}

impl Receiver {
    pub fn new(cfg: Config, table: SessionTable, hooks: Option<HookRunner>) -> Result<Self> {
        let persist = Persister::spawn().context("cannot start the persist thread")?;
        let storage = Storage {
            dir: cfg.partial_dir(),
            persist: persist.clone(),
            direct_io: cfg.direct_io,
        };
        std::fs::create_dir_all(cfg.partial_dir())
            .with_context(|| format!("cannot create {}", cfg.partial_dir().display()))?;
        std::fs::create_dir_all(&cfg.inbox)
            .with_context(|| format!("cannot create {}", cfg.inbox.display()))?;
        let rx: Box<dyn FramesIn> = match cfg.serial_line()? {
            Some(line) => Box::new(SerialRx::open(&line)?),
            None => {
                let rx = UdpRx::bind(cfg.udp_listen()?, cfg.rcvbuf_mb << 20)?;
                if rx.recv_buffer_size() < (cfg.rcvbuf_mb << 20) {
                    tracing::warn!(
                        have = rx.recv_buffer_size(), want = cfg.rcvbuf_mb << 20,
                        "small UDP receive buffer: raise net.core.rmem_max (see hardware/README.md) or bursts will be lost"
                    );
                }
                Box::new(rx)
            }
        };
        let mut completed = HashSet::new();
        let mut paths = Versions::default();
        if let Ok(text) = std::fs::read_to_string(completed_path(&cfg)) {
            for line in text.lines().rev().take(100_000) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let (Some(s), Some(o)) = (v["sender"].as_str(), v["object"].as_str()) else {
                    continue;
                };
                let (Ok(s), Some(o)) = (hex::decode(s), diode_proto::journal::parse_id(o)) else {
                    continue;
                };
                if let Ok(s) = <[u8; 8]>::try_from(s.as_slice()) {
                    completed.insert((KeyId(s), o));
                    // newest first: the first record of a path is the version it holds
                    if let (Some(name), Some(ORDERED_IDS), None) =
                        (v["name"].as_str(), v["proto"].as_u64(), v["kind"].as_str())
                    {
                        paths.remember(name, (KeyId(s), o));
                    }
                }
            }
        }
        let mut objects = HashMap::new();
        for (path, bytes) in Partial::sweep_orphans(&storage.dir) {
            tracing::warn!(file = %path.display(), bytes, "removed partial data that belonged to no object (its state was never saved)");
        }
        for p in Partial::load_all(&storage) {
            tracing::info!(object = %format_id(p.asm.meta.id), name = %p.asm.meta.name,
                done = p.asm.done_count(), blocks = p.asm.block_count(), "resuming a partial object");
            objects.insert((p.sender, p.asm.meta.id), p);
        }
        let now = Instant::now();
        Ok(Receiver {
            rx: Some(rx),
            table,
            objects,
            completed,
            refused: HashSet::new(),
            paths,
            refused_recent: VecDeque::new(),
            refused_total: 0,
            limit_log: HashMap::new(),
            pending: EarlyShards::new(PENDING_MAX),
            drops: BTreeMap::new(),
            drops_logged: BTreeMap::new(),
            decoder: None,
            start: now,
            clock: now,
            links: HashMap::new(),
            received_files: 0,
            received_bytes: 0,
            frames_since_check: 0,
            last_tick: now,
            last_drop_log: now,
            approvals: Approvals::open(&cfg, hooks)?,
            storage,
            writer: Writer::spawn().context("cannot start the writer thread")?,
            persist,
            cfg,
        })
    }

    /// The UDP link socket before `run` takes it (none on a serial line), for the sandbox's probe.
    pub fn link(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.rx.as_ref().and_then(|r| r.socket())
    }

    pub fn load_highest(cfg: &Config) -> HashMap<KeyId, u64> {
        let Ok(text) = std::fs::read_to_string(senders_path(cfg)) else {
            return HashMap::new();
        };
        let m: BTreeMap<String, u64> = serde_json::from_str(&text).unwrap_or_default();
        m.into_iter()
            .filter_map(|(k, v)| {
                Some((
                    KeyId(<[u8; 8]>::try_from(hex::decode(k).ok()?.as_slice()).ok()?),
                    v,
                ))
            })
            .collect()
    }

    pub fn run(&mut self) -> Result<()> {
        let Some(mut rx) = self.rx.take() else {
            anyhow::bail!("the receive loop is already running");
        };
        tracing::info!(link = %self.cfg.link_name()?, inbox = %self.cfg.inbox.display(), "receiving");
        loop {
            self.clock = Instant::now();
            let mut fresh = true;
            let noise = rx.recv(&mut |f| {
                // the clock is read once per batch of datagrams (when the batch came), not once per frame
                if std::mem::take(&mut fresh) {
                    self.clock = Instant::now();
                }
                self.frame(f)
            })?;
            for (why, n) in noise {
                *self.drops.entry(why).or_default() += n;
            }
            self.drain_writer();
            if self.last_tick.elapsed() >= Duration::from_secs(1) {
                self.tick();
            }
        }
    }

    fn drop(&mut self, why: DropReason) {
        *self.drops.entry(why).or_default() += 1;
    }

    fn now_ms(&self) -> u64 {
        self.clock.saturating_duration_since(self.start).as_millis() as u64
    }

    fn frame(&mut self, f: &mut [u8]) {
        let now = self.now_ms();
        match frame::peek_kind(f) {
            Err(_) => self.drop(DropReason::Malformed),
            Ok(FrameKind::Announce) => match self.table.on_announce(f, now) {
                Ok(AnnounceOutcome::New { sender, counter }) => {
                    tracing::info!(sender = %sender, session = counter, "new session");
                    self.seen(sender);
                }
                Ok(AnnounceOutcome::Known) => {}
                Err(d) => self.drop(d),
            },
            Ok(_) => {
                let (objects, completed, refused) = (&self.objects, &self.completed, &self.refused);
                let early_room = self.pending.has_room();
                let mut no_room = false;
                let r = self.table.open(f, now, |h, sender| {
                    let key = (sender, h.object);
                    let known = match objects.get(&key) {
                        Some(p) => Known::InProgress(&p.asm),
                        None if completed.contains(&key) || refused.contains(&key) => Known::Done,
                        None => Known::Unknown,
                    };
                    let worth = worth_opening(h, known, early_room);
                    no_room = worth == Worth::SkipNoRoom;
                    worth == Worth::Open
                });
                match r {
                    Err(d) => self.drop(d),
                    Ok(Opened::Redundant) => {
                        if no_room {
                            self.drop(DropReason::ShardBeforeMeta);
                        }
                    }
                    Ok(Opened::Fresh(h, sender)) => {
                        self.seen(sender);
                        let payload = &f[SEALED_HEADER_LEN..f.len() - TAG_LEN];
                        match h.kind {
                            FrameKind::Meta => self.on_meta(sender, payload),
                            FrameKind::Shard => {
                                self.on_shard((sender, h.object), h.block, h.shard, payload)
                            }
                            FrameKind::Heartbeat => {
                                if decode_heartbeat(payload).is_none() {
                                    self.drop(DropReason::BadHeartbeat);
                                }
                            }
                            FrameKind::Announce => {}
                        }
                    }
                }
            }
        }
    }

    fn seen(&mut self, sender: KeyId) {
        let clock = self.clock;
        let l = self.links.entry(sender).or_insert(Link {
            last: clock,
            up: false,
        });
        l.last = clock;
        if !l.up {
            l.up = true;
            tracing::info!(sender = %sender, "link up: frames arriving");
        }
    }

    fn on_meta(&mut self, sender: KeyId, payload: &[u8]) {
        let objects = &self.objects;
        let meta = match judge_meta(payload, |id| {
            objects.get(&(sender, id)).map(|p| &p.asm.meta)
        }) {
            MetaVerdict::Start(m) => m,
            MetaVerdict::Refuse { id, why } => {
                self.take_pending((sender, id));
                if self.refused.insert((sender, id)) {
                    tracing::error!(sender = %sender, object = %format_id(id), error = %why, "refused an object: nothing is written");
                }
                self.drop(DropReason::RefusedObject);
                return;
            }
            MetaVerdict::Conflict => return self.drop(DropReason::MetaConflict),
            MetaVerdict::Repeat => return,
            MetaVerdict::HashArrived { id, hash } => {
                let key = (sender, id);
                if let Some(p) = self.objects.get_mut(&key) {
                    tracing::debug!(object = %format_id(key.1), "the content hash arrived");
                    p.asm.meta.hash = hash;
                    p.dirty = true;
                    if p.asm.is_complete() {
                        self.finish(key);
                    }
                }
                return;
            }
        };
        let key = (sender, meta.id);
        if let Some((limit, why)) = self.over_limit(meta.size) {
            self.take_pending(key);
            let clock = self.clock;
            let (last, since) = self.limit_log.entry(limit).or_insert((None, 0));
            *since += 1;
            if last.is_none_or(|t| clock.saturating_duration_since(t) >= Duration::from_secs(10)) {
                tracing::warn!(sender = %sender, object = %format_id(meta.id), name = %meta.name, bytes = meta.size,
                    limit = limit.name(), refused_since_last_line = *since,
                    "not starting an object: {why}; it can start once objects in progress finish or expire");
                *last = Some(clock);
                *since = 0;
            }
            self.drop(limit);
            return;
        }
        let (name, size) = (meta.name.clone(), meta.size);
        match Partial::create(&self.storage, sender, meta) {
            Ok(p) => {
                tracing::info!(object = %format_id(key.1), name = %name, bytes = size, blocks = p.asm.block_count(), "receiving");
                self.objects.insert(key, p);
                for (block, shard, bytes) in self.take_pending(key) {
                    self.on_shard(key, block, shard, &bytes);
                }
            }
            Err(e) => {
                self.drop(DropReason::CannotStore);
                tracing::error!(object = %format_id(key.1), name = %name, error = %format!("{e:#}"), "cannot start the object on disk");
            }
        }
    }

    /// Would one more object of `size` bytes pass the limits on partial objects (recv.toml
    /// `max_partial_objects`, `max_partial_mb`)? If not, the limit's name and what it says.
    fn over_limit(&self, size: u64) -> Option<(DropReason, String)> {
        let held: u64 = self.objects.values().map(|p| p.asm.meta.size).sum();
        self.limits().admit(self.objects.len(), held, size).err()
    }

    fn limits(&self) -> Limits {
        Limits {
            max_objects: self.cfg.max_partial_objects,
            max_bytes: (self.cfg.max_partial_mb as u64).saturating_mul(1 << 20),
        }
    }

    /// The shards held for `key` before its metadata, out of the pending buffer.
    fn take_pending(&mut self, key: Key) -> Vec<EarlyShard> {
        self.pending.take(key)
    }

    /// Let go of early shards whose metadata is overdue (recv.toml `pending_secs`), so they cannot fill
    /// the buffer for good: metadata is repeated every 64 shards (docs/protocol.md §9.1).
    fn age_pending(&mut self) {
        let now = self.now_ms();
        let n = self
            .pending
            .expire(now, self.cfg.pending_secs.saturating_mul(1000));
        if n > 0 {
            *self.drops.entry(DropReason::ShardBeforeMeta).or_default() += n;
            tracing::debug!(frames = n, "early shards let go: their metadata never came");
        }
    }

    fn on_shard(&mut self, key: Key, block: u32, shard: u16, payload: &[u8]) {
        let Some(p) = self.objects.get_mut(&key) else {
            if !self.completed.contains(&key) {
                let now = self.now_ms();
                self.pending.hold(key, block, shard, payload, now);
            }
            return;
        };
        p.last_frame = self.clock;
        loop {
            match p.asm.insert(block, shard, payload) {
                Err(_) => {
                    *self.drops.entry(DropReason::BadShard).or_default() += 1;
                    return;
                }
                Ok(Step::Restore(which)) => {
                    let shards = p.read_shards(block, &which).unwrap_or_default();
                    p.asm.restore(block, &shards);
                }
                Ok(Step::Ready) => break,
                Ok(_) => {
                    self.frames_since_check += 1;
                    if self.frames_since_check >= 512 {
                        self.frames_since_check = 0;
                        self.bound_memory();
                    }
                    return;
                }
            }
        }
        match p.asm.take_ready(block, &mut self.decoder) {
            Ok((offset, buf, len)) => {
                let geo = writer::Geometry {
                    size: p.asm.meta.size,
                    block_bytes: p.asm.geometry().block_bytes(),
                };
                let file = p.file();
                let direct = p.direct();
                let ok = self.writer.send(Job::Write {
                    key,
                    block,
                    offset,
                    buf,
                    len,
                    file,
                    direct,
                    geo,
                });
                if !ok {
                    tracing::error!("the writer thread is gone; restart diode-recv");
                }
            }
            Err(e) => {
                tracing::error!(object = %format_id(key.1), block, error = %e, "cannot decode a block; it stays missing");
                p.asm.discard(block);
            }
        }
    }

    /// Replies from the writer: blocks on disk (or not), objects verified (or not).
    fn drain_writer(&mut self) {
        while let Ok(done) = self.writer.done.try_recv() {
            match done {
                Done::Written {
                    key,
                    block,
                    buf,
                    result,
                } => {
                    let Some(p) = self.objects.get_mut(&key) else {
                        continue;
                    };
                    p.asm.written(block, result.is_ok(), buf);
                    match result {
                        Ok(()) => {
                            p.dirty = true;
                            p.last_progress = Instant::now();
                            if p.asm.is_complete() {
                                self.finish(key);
                            }
                        }
                        Err(msg) => {
                            if p.error.as_deref() != Some(msg.as_str()) {
                                tracing::error!(object = %format_id(key.1), name = %p.asm.meta.name, block, error = %msg,
                                    "cannot write a block; it stays missing (a gap) until a later pass or replay");
                            }
                            p.error = Some(msg);
                        }
                    }
                }
                Done::Finished { key, result } => self.finished(key, result),
            }
        }
    }

    /// All blocks are on disk: once the hash is known, have the writer verify it and sync the file.
    fn finish(&mut self, key: Key) {
        let Some(p) = self.objects.get_mut(&key) else {
            return;
        };
        if !p.asm.is_complete() || p.asm.writing_count() > 0 || p.finishing {
            return;
        }
        if !p.asm.meta.hash_known() {
            tracing::debug!(object = %format_id(key.1), "all blocks in; the content hash comes at the end of the pass");
            return;
        }
        if p.asm.meta.kind == ObjectKind::Envelope {
            return self.finish_envelope(key);
        }
        p.finishing = true;
        let job = Job::Finish {
            key,
            file: p.file(),
            hash: p.asm.meta.hash,
            size: p.asm.meta.size,
            block_bytes: p.asm.geometry().block_bytes(),
        };
        if !self.writer.send(job) {
            tracing::error!("the writer thread is gone; restart diode-recv");
        }
    }

    fn finished(&mut self, key: Key, result: Result<(), FinishError>) {
        let Some(p) = self.objects.get_mut(&key) else {
            return;
        };
        p.finishing = false;
        let name = p.asm.meta.name.clone();
        if result.is_ok() {
            // A newer object of this sender already holds the path: this one was withheld on the link and
            // released late (or replayed). It must never replace the newer one.
            if let Some(newer) = self.paths.newer_than(&name, key) {
                return self.refuse_object(
                    key,
                    "older_version",
                    format!(
                        "an older version of {name:?} than the one already delivered (object {}): frames withheld \
                         on the link and released late, or a replay of an old object; the newer file stays",
                        format_id(newer)
                    ),
                );
            }
        }
        let published = match result {
            Ok(()) => p.publish(&self.cfg.inbox),
            Err(FinishError::Mismatch(msg)) => {
                // the partial data is wrong: every block is missing again
                Err(PublishError::Failed(match p.reset() {
                    Ok(()) => anyhow::anyhow!("{msg}; the object was reset"),
                    Err(e) => e.context(format!("{msg}; resetting the object failed")),
                }))
            }
            Err(FinishError::Io(msg)) => Err(PublishError::Failed(anyhow::anyhow!("{msg}"))),
        };
        match published {
            Ok(dest) => {
                let m = p.asm.meta.clone();
                tracing::info!(object = %format_id(m.id), name = %m.name, bytes = m.size, blake3 = %m.hash_hex(),
                    path = %dest.display(), "received");
                let rec = serde_json::json!({
                    "sender": key.0.to_string(), "object": format_id(m.id), "name": m.name, "size": m.size,
                    "blake3": m.hash_hex(), "at": diode_host::unix_now(), "proto": ORDERED_IDS,
                });
                if let Err(e) = append_line(&completed_path(&self.cfg), &rec.to_string()) {
                    tracing::error!(error = %format!("{e:#}"), "cannot record the received file");
                }
                self.received_files += 1;
                self.received_bytes += m.size;
                self.completed.insert(key);
                self.objects.remove(&key);
                self.paths.delivered(&m.name, key);
            }
            Err(PublishError::Refused(msg)) => self.hold(key, msg),
            Err(PublishError::Failed(e)) => self.failed(key, format!("{e:#}")),
        }
    }

    /// A verified object the inbox (or the approvals configuration) cannot take as things stand: kept
    /// whole in `state/partial/`, said once in the log and in status, and not tried again until the
    /// receiver restarts (after the admin fixed what the message names). Expiry still applies.
    fn hold(&mut self, key: Key, msg: String) {
        let Some(p) = self.objects.get_mut(&key) else {
            return;
        };
        if p.held.is_none() {
            tracing::error!(object = %format_id(key.1), name = %p.asm.meta.name, error = %msg,
                "cannot deliver the object: held in state/partial/ until the cause is fixed and diode-recv restarted");
        }
        p.error = Some(format!("{msg} (held: fix this, then restart diode-recv)"));
        p.held = Some(msg);
    }

    /// A failure worth trying again (the disk, the filesystem): logged when it changes, retried after a
    /// growing pause.
    fn failed(&mut self, key: Key, msg: String) {
        let Some(p) = self.objects.get_mut(&key) else {
            return;
        };
        if p.error.as_deref() != Some(msg.as_str()) {
            tracing::error!(object = %format_id(key.1), name = %p.asm.meta.name, error = %msg,
                retry_secs = retry_after(p.failures).as_secs(), "cannot finish the object; trying again later");
        } else {
            tracing::debug!(object = %format_id(key.1), error = %msg, "cannot finish the object (again)");
        }
        p.retry_at = Some(Instant::now() + retry_after(p.failures));
        p.failures = p.failures.saturating_add(1);
        p.error = Some(msg);
    }

    /// Set an object aside for good: its data is removed, its frames are ignored from now on, and the
    /// reason is logged once, listed in status and appended to `state/refused.jsonl`.
    fn refuse_object(&mut self, key: Key, code: &'static str, reason: String) {
        let Some(p) = self.objects.remove(&key) else {
            return;
        };
        let m = p.asm.meta.clone();
        tracing::error!(sender = %key.0, object = %format_id(m.id), name = %m.name, reason = code, detail = %reason,
            "refused an object: nothing reached the inbox");
        let rec = serde_json::json!({
            "sender": key.0.to_string(), "object": format_id(m.id), "name": m.name, "size": m.size,
            "blake3": m.hash_hex(), "reason": code, "detail": reason, "at": diode_host::unix_now(),
        });
        if let Err(e) = append_line(&refused_path(&self.cfg), &rec.to_string()) {
            tracing::error!(error = %format!("{e:#}"), "cannot record the refused object");
        }
        if self.refused_recent.len() >= REFUSED_SHOWN {
            self.refused_recent.pop_front();
        }
        self.refused_recent.push_back(RefusedStatus {
            sender: key.0.to_string(),
            object: format_id(m.id),
            name: m.name,
            reason: code.to_string(),
            detail: reason,
            at: diode_host::unix_now(),
        });
        self.refused_total += 1;
        self.refused.insert(key);
        p.discard();
        self.writer.send(Job::Forget { key });
    }

    /// A whole, hash-verified envelope object: verified and published (or quarantined) by `Approvals`,
    /// never written to the inbox.
    fn finish_envelope(&mut self, key: Key) {
        let Some(p) = self.objects.get_mut(&key) else {
            return;
        };
        let m = p.asm.meta.clone();
        let content = match p.content(MAX_ENVELOPE_BYTES as u64) {
            Ok(c) => c,
            Err(e) => return self.failed(key, format!("cannot finish the envelope: {e:#}")),
        };
        let Some(approvals) = self.approvals.as_mut() else {
            return self.hold(
                key,
                "an approval envelope arrived but recv.toml has no [approvals] section (docs/approvals.md)".into(),
            );
        };
        let result = approvals.deliver(&content, &m.name);
        match result {
            Ok(path) => {
                let rec = serde_json::json!({
                    "sender": key.0.to_string(), "object": format_id(m.id), "name": m.name, "size": m.size,
                    "blake3": m.hash_hex(), "kind": "envelope", "path": path.display().to_string(),
                    "at": diode_host::unix_now(),
                });
                if let Err(e) = append_line(&completed_path(&self.cfg), &rec.to_string()) {
                    tracing::error!(error = %format!("{e:#}"), "cannot record the received envelope");
                }
                self.received_files += 1;
                self.received_bytes += m.size;
                self.completed.insert(key);
                if let Some(p) = self.objects.remove(&key) {
                    p.discard();
                }
            }
            // kept as a partial object, tried again after a pause
            Err(e) => self.failed(key, format!("cannot deliver the envelope: {e:#}")),
        }
    }

    /// Keep the blocks held in memory under `memory_mb`: set aside the oldest blocks of the object
    /// holding the most, writing their data shards to its partial file.
    fn bound_memory(&mut self) {
        let cap = self.cfg.memory_mb << 20;
        loop {
            let total: usize = self.objects.values().map(|p| p.asm.active_bytes()).sum();
            if total <= cap {
                return;
            }
            let Some(key) = self
                .objects
                .iter()
                .max_by_key(|(_, p)| p.asm.active_bytes())
                .map(|(k, _)| *k)
            else {
                return;
            };
            let Some(p) = self.objects.get_mut(&key) else {
                return;
            };
            let Some(&b) = p.asm.active_blocks().first() else {
                return;
            };
            set_aside(p, b);
        }
    }

    fn tick(&mut self) {
        self.last_tick = Instant::now();
        let stall = Duration::from_secs(self.cfg.stall_secs);
        for p in self.objects.values_mut() {
            if p.last_frame.elapsed() >= stall {
                for b in p.asm.active_blocks() {
                    set_aside(p, b);
                }
            }
            if p.dirty {
                if let Err(e) = p.persist() {
                    tracing::error!(object = %format_id(p.asm.meta.id), error = %format!("{e:#}"), "cannot save progress");
                }
            }
        }
        self.expire();
        self.age_pending();
        // complete objects not yet delivered (resumed after a restart, or a failed finish whose pause is
        // over): try again; held ones wait for a restart
        let now = Instant::now();
        let complete: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, p)| {
                p.asm.is_complete()
                    && !p.finishing
                    && p.held.is_none()
                    && p.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in complete {
            self.finish(key);
        }
        if self.table.take_dirty() {
            let m: BTreeMap<String, u64> = self
                .table
                .highest()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            match serde_json::to_vec(&m) {
                Ok(b) => self.persist.write(&senders_path(&self.cfg), b, 0o600),
                Err(e) => tracing::error!(error = %e, "cannot persist session counters"),
            }
        }
        let down = Duration::from_secs(self.cfg.link_down_secs);
        for (sender, l) in self.links.iter_mut() {
            if l.up && l.last.elapsed() >= down {
                l.up = false;
                tracing::warn!(sender = %sender, silent_secs = l.last.elapsed().as_secs(), "link down: no frames, not even heartbeats");
            }
        }
        if self.drops != self.drops_logged
            && self.last_drop_log.elapsed() >= Duration::from_secs(10)
        {
            self.last_drop_log = Instant::now();
            self.drops_logged = self.drops.clone();
            let text: Vec<String> = self
                .drops
                .iter()
                .map(|(k, v)| format!("{}={v}", k.name()))
                .collect();
            tracing::info!(drops = %text.join(" "), "dropped frames so far");
        }
        if let Err(e) = self.write_status() {
            tracing::warn!(error = %format!("{e:#}"), "cannot write status");
        }
    }

    fn expire(&mut self) {
        let limit = Duration::from_secs(self.cfg.expire_hours * 3600);
        let old: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, p)| p.last_progress.elapsed() >= limit)
            .map(|(k, _)| *k)
            .collect();
        for key in old {
            let Some(p) = self.objects.remove(&key) else {
                continue;
            };
            let m = &p.asm.meta;
            let report = serde_json::json!({
                "sender": key.0.to_string(), "object": format_id(m.id), "name": m.name, "size": m.size,
                "blocks": p.asm.block_count(), "missing": diode_proto::gap::format(&p.asm.missing()),
                "expired_at": diode_host::unix_now(),
            });
            let dir = self.cfg.state.join("expired");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{}-{}.json", key.0, format_id(m.id)));
            if let Err(e) = write_atomic(&path, report.to_string().as_bytes(), 0o644) {
                tracing::error!(error = %format!("{e:#}"), "cannot write the expiry report");
            }
            tracing::warn!(object = %format_id(m.id), name = %m.name, report = %path.display(), "incomplete object expired; nothing reached the inbox");
            p.discard();
            self.writer.send(Job::Forget { key });
        }
    }

    fn write_status(&self) -> Result<()> {
        let stall = Duration::from_secs(self.cfg.stall_secs);
        let mut sessions: Vec<SessionStatus> = self
            .table
            .sessions()
            .map(|s| {
                let link = self.links.get(&s.sender);
                let expected = s.expected();
                let got = s.frames + s.redundant;
                SessionStatus {
                    sender: s.sender.to_string(),
                    counter: s.counter,
                    created_at: s.created_at,
                    link: if link.is_some_and(|l| l.up) {
                        "up".into()
                    } else {
                        "down".into()
                    },
                    last_seen_secs: link.map(|l| l.last.elapsed().as_secs_f64()).unwrap_or(-1.0),
                    frames_expected: expected,
                    frames_received: got.min(expected),
                    loss_percent: if expected > 0 {
                        100.0 * (1.0 - got.min(expected) as f64 / expected as f64)
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.counter));
        let mut objects: Vec<ObjectStatus> = self
            .objects
            .iter()
            .map(|((sender, id), p)| {
                let missing = diode_proto::gap::format(&p.asm.missing());
                let stalled = p.last_frame.elapsed() >= stall;
                let all = p.asm.done_count() == 0;
                ObjectStatus {
                    sender: sender.to_string(),
                    object: format_id(*id),
                    name: p.asm.meta.name.clone(),
                    size: p.asm.meta.size,
                    blocks: p.asm.block_count(),
                    blocks_done: p.asm.done_count(),
                    percent: 100.0 * p.asm.done_count() as f64 / p.asm.block_count().max(1) as f64,
                    state: if stalled {
                        "incomplete".into()
                    } else {
                        "receiving".into()
                    },
                    missing: missing.clone(),
                    error: p.error.clone(),
                    replay: stalled.then(|| {
                        // all blocks in but the closing metadata (the hash) lost: any block brings it
                        let missing = if missing.is_empty() {
                            "0"
                        } else {
                            missing.as_str()
                        };
                        status::replay_line(&self.cfg.replay_config, *id, missing, all)
                    }),
                }
            })
            .collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        let s = Status {
            updated: diode_host::unix_now(),
            pid: std::process::id(),
            listen: self.cfg.link_name().unwrap_or_default(),
            sessions,
            drops: self
                .drops
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
            received_files: self.received_files,
            received_bytes: self.received_bytes,
            objects,
            refused: self.refused_recent.iter().rev().cloned().collect(),
            refused_total: self.refused_total,
            limits: LimitStatus {
                objects: self.objects.len(),
                max_objects: self.cfg.max_partial_objects,
                bytes: self.objects.values().map(|p| p.asm.meta.size).sum(),
                max_bytes: (self.cfg.max_partial_mb as u64).saturating_mul(1 << 20),
            },
            state_dir: self.cfg.state.display().to_string(),
        };
        if let Some(m) = &self.cfg.metrics_file {
            self.persist.write(m, s.prometheus().into_bytes(), 0o644);
        }
        self.persist.write(
            &self.cfg.status_path(),
            serde_json::to_vec_pretty(&s)?,
            0o644,
        );
        Ok(())
    }
}

/// Move an unfinished block out of memory: its data shards go to their place in the partial file.
fn set_aside(p: &mut Partial, block: u32) {
    let Some(shards) = p.asm.evict(block) else {
        return;
    };
    match p.write_shards(block, &shards) {
        Ok(()) => {
            p.asm
                .spilled(block, shards.iter().map(|(i, _)| *i).collect());
            p.dirty = true;
        }
        Err(e) => {
            let msg = format!("cannot set aside block {block}: {e}");
            if p.error.as_deref() != Some(msg.as_str()) {
                tracing::error!(object = %format_id(p.asm.meta.id), error = %msg, "shards lost; the block stays missing");
            }
            p.error = Some(msg);
        }
    }
}
