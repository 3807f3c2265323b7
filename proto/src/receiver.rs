//! The receiver endpoint: the whole of reception as a state machine (docs/protocol.md §11). Datagrams,
//! the time and the results of disk work go in through `handle_*`; what the driver must do comes out of
//! `poll_event` (start an object's storage, write a block, verify a finished object, deliver it, save
//! progress, record a refusal or an expiry). No sockets, files, threads or clocks: time is milliseconds on
//! the driver's monotonic clock, and the few disk reads and writes the reassembly needs at once (setting
//! aside an unfinished block to bound memory, bringing it back) go through the driver's [`Spill`].
//!
//! `diode-recv` (`receiver/src/receive.rs`) drives it with a UDP or serial link, a writer thread and
//! files; `proto/tests/sim.rs` drives it with a simulated link, disk and crashes on a virtual clock. A
//! restart is [`Endpoint::new`] with what the driver persisted ([`Persisted`]).

use crate::frame::{self, FrameKind, SealedHeader, SEALED_HEADER_LEN, TAG_LEN};
use crate::keys::KeyId;
use crate::object::{decode_heartbeat, Assembly, AssemblyState, ObjectKind, ObjectMeta, Step};
use crate::reception::{
    judge_meta, worth_opening, EarlyShards, Known, Limits, MetaVerdict, ObjectKey, Versions, Worth,
};
use crate::session::{AnnounceOutcome, DropReason, Opened, SessionTable};
use std::collections::{BTreeMap, VecDeque};

/// How often `handle_timeout` does its round (persist, stall, expiry, retries, link health).
pub const TICK_MS: u64 = 1000;
/// Frames between two checks of the memory bound.
const MEMORY_CHECK_EVERY: u32 = 512;

/// The receiver's rules in numbers (recv.toml).
#[derive(Debug, Clone)]
pub struct Config {
    /// No frame of an object for this long: its unfinished blocks are set aside and it is reported
    /// incomplete, with its gaps (`stall_secs`).
    pub stall_ms: u64,
    /// No progress for this long: the object is abandoned with an expiry report (`expire_hours`).
    pub expire_ms: u64,
    /// Early shards whose metadata has not come within this are let go (`pending_secs`).
    pub pending_ms: u64,
    /// No frame of a sender for this long: its link is down (`link_down_secs`).
    pub link_down_ms: u64,
    /// Unfinished blocks held in memory at most, over all objects (`memory_mb`).
    pub memory_bytes: usize,
    /// Objects in progress at most, by count and declared bytes.
    pub limits: Limits,
    /// Shards held before their metadata at most, over all objects.
    pub pending_frames: usize,
    /// Leave the Reed-Solomon decoding of a block with missing data shards to the driver
    /// (`Event::WriteBlock::recover`), which can run it on another thread than the one that takes
    /// frames; otherwise the endpoint decodes before it hands the block out.
    pub defer_decode: bool,
}

/// The few disk operations the reassembly needs at once: an unfinished block's data shards set aside to
/// the object's partial data (`write_at`) and read back when its shards come again (`read_at`).
pub trait Spill {
    fn write_at(&mut self, key: ObjectKey, offset: u64, bytes: &[u8]) -> Result<(), String>;
    /// `len` bytes at `offset`; what lies past the end of the data reads as zeros.
    fn read_at(&mut self, key: ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>, String>;
}

/// An object in progress.
pub struct Object {
    pub asm: Assembly,
    /// When its last frame came (ms).
    pub last_frame: u64,
    /// When a block of it was last written (ms): expiry counts from here.
    pub last_progress: u64,
    /// Its progress changed since it was last saved.
    dirty: bool,
    /// Handed to the driver to verify or deliver; nothing more is asked until it answers.
    finishing: bool,
    /// A verified object the inbox cannot take as things stand: not tried again until a restart.
    pub held: Option<String>,
    retry_at: Option<u64>,
    failures: u32,
    /// The last error that concerns it, as status shows it.
    pub error: Option<String>,
}

impl Object {
    fn new(asm: Assembly, now: u64, dirty: bool) -> Self {
        Object {
            asm,
            last_frame: now,
            last_progress: now,
            dirty,
            finishing: false,
            held: None,
            retry_at: None,
            failures: 0,
            error: None,
        }
    }

    /// No frame for `stall_ms`: incomplete, its gaps worth a replay.
    pub fn stalled(&self, now: u64, stall_ms: u64) -> bool {
        now.saturating_sub(self.last_frame) >= stall_ms
    }
}

/// A sender's link as frames show it.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub last: u64,
    pub up: bool,
}

/// What the driver must do or know, in the order it happened.
#[derive(Debug)]
pub enum Event {
    SessionJoined {
        sender: KeyId,
        counter: u64,
    },
    LinkUp {
        sender: KeyId,
    },
    LinkDown {
        sender: KeyId,
        silent_ms: u64,
    },
    /// Create the object's storage. A failure comes back through `handle_start_failed`.
    ObjectStarted {
        key: ObjectKey,
        meta: ObjectMeta,
        blocks: u64,
    },
    /// Metadata refused as it came (unsafe name, bad geometry, an oversize envelope): nothing stored.
    MetaRefused {
        key: ObjectKey,
        why: String,
    },
    /// An object not started: a bound on objects in progress (`limit` names it) is reached.
    NotStarted {
        key: ObjectKey,
        meta: ObjectMeta,
        limit: DropReason,
        why: String,
    },
    /// A block is whole: write `buf[start..start + len]` at `offset` of the object's data, then
    /// `handle_written` (with the whole `buf`, for reuse). `buf[start]` is on a page boundary in memory
    /// (`fec::DATA_ALIGN`), so the data can go out with direct I/O as it is. With `recover` (only when
    /// `Config::defer_decode`), first rebuild the missing data shards in `buf[start..]` with
    /// `Recovery::rebuild`; if that fails, answer `handle_written` with the error.
    WriteBlock {
        key: ObjectKey,
        block: u32,
        offset: u64,
        buf: Vec<u8>,
        start: usize,
        len: usize,
        recover: Option<crate::fec::Recovery>,
    },
    /// A block could not be kept (decoding failed, or setting it aside failed); it stays missing.
    BlockLost {
        key: ObjectKey,
        block: u32,
        why: String,
    },
    /// Every block is written and the content hash is known: hash the data against `hash`, make it
    /// durable, then `handle_verified`.
    Verify {
        key: ObjectKey,
        hash: [u8; 32],
        size: u64,
        block_bytes: u64,
    },
    /// Verified (and not an older version of a delivered file): publish it (a file into the inbox, an
    /// envelope to the approvals), then `handle_delivered`.
    Deliver {
        key: ObjectKey,
        meta: ObjectMeta,
    },
    /// The data did not match its hash: every block is missing again; empty the object's data.
    Reset {
        key: ObjectKey,
        why: String,
    },
    /// Save the object's progress (what a restart restores).
    SaveProgress {
        key: ObjectKey,
        state: AssemblyState,
    },
    /// Save the highest session counter of each sender (what a restart restores).
    SaveCounters {
        highest: BTreeMap<KeyId, u64>,
    },
    /// Set aside for good: remove its storage and record why. Its frames are ignored from now on.
    Refused {
        key: ObjectKey,
        meta: ObjectMeta,
        code: &'static str,
        reason: String,
    },
    /// No progress for `expire_ms`: remove its storage and report what was missing.
    Expired {
        key: ObjectKey,
        meta: ObjectMeta,
        blocks: u64,
        missing: Vec<(u32, u32)>,
    },
    /// Cannot be delivered as things stand; said once. Kept until a restart.
    Held {
        key: ObjectKey,
        name: String,
        why: String,
    },
    /// Finishing failed; tried again after `retry_ms`. `again`: the same error as last time.
    Failed {
        key: ObjectKey,
        name: String,
        why: String,
        retry_ms: u64,
        again: bool,
    },
    /// A block could not be written; it stays missing. `again`: the same error as last time.
    WriteFailed {
        key: ObjectKey,
        name: String,
        block: u32,
        why: String,
        again: bool,
    },
}

/// Why verifying a finished object failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The data is not what the hash says: it is received again.
    Mismatch(String),
    /// The disk: tried again later.
    Io(String),
}

/// Why delivering a verified object failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// The inbox (or the approvals configuration) cannot take it as things stand: held until a restart.
    Held(String),
    /// Worth trying again (a full disk).
    Failed(String),
}

/// What a restart restores: the partial objects the driver saved and the objects delivered before,
/// newest first, with the inbox path of the files among them whose ids order versions.
#[derive(Default)]
pub struct Persisted {
    pub partials: Vec<(KeyId, Assembly)>,
    pub delivered: Vec<(ObjectKey, Option<String>)>,
    /// Objects refused for good before (their frames stay ignored).
    pub refused: Vec<ObjectKey>,
}

/// How long a failed finish waits before the next attempt: 1 s doubling up to 5 minutes.
pub fn retry_after_ms(failures: u32) -> u64 {
    (1000u64 << failures.min(8)).min(300_000)
}

pub struct Endpoint {
    cfg: Config,
    table: SessionTable,
    objects: crate::FastMap<ObjectKey, Object>,
    completed: crate::FastSet<ObjectKey>,
    refused: crate::FastSet<ObjectKey>,
    paths: Versions,
    pending: EarlyShards,
    drops: BTreeMap<DropReason, u64>,
    decoder: crate::fec::Decoder,
    /// Buffers of written blocks for the next ones, all objects together: a quarter of
    /// `Config::memory_bytes` at most (12 MiB at the default 48: ~55 blocks of the default geometry).
    buffers: crate::object::Buffers,
    links: crate::FastMap<KeyId, Link>,
    events: VecDeque<Event>,
    frames_since_check: u32,
    next_tick: u64,
}

impl Endpoint {
    pub fn new(cfg: Config, table: SessionTable, persisted: Persisted, now: u64) -> Self {
        let mut completed = crate::FastSet::default();
        let mut paths = Versions::default();
        for (key, name) in persisted.delivered {
            completed.insert(key);
            if let Some(name) = name {
                paths.remember(&name, key);
            }
        }
        let objects = persisted
            .partials
            .into_iter()
            .map(|(sender, asm)| ((sender, asm.meta.id), Object::new(asm, now, false)))
            .collect();
        let buffers = crate::object::Buffers::new(cfg.memory_bytes / 4);
        Endpoint {
            pending: EarlyShards::new(cfg.pending_frames),
            cfg,
            table,
            objects,
            completed,
            refused: persisted.refused.into_iter().collect(),
            paths,
            drops: BTreeMap::new(),
            decoder: crate::fec::Decoder::default(),
            buffers,
            links: Default::default(),
            events: VecDeque::new(),
            frames_since_check: 0,
            next_tick: now,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Object)> {
        self.objects.iter()
    }

    pub fn object(&self, key: ObjectKey) -> Option<&Object> {
        self.objects.get(&key)
    }

    pub fn links(&self) -> impl Iterator<Item = (&KeyId, &Link)> {
        self.links.iter()
    }

    pub fn link(&self, sender: KeyId) -> Option<Link> {
        self.links.get(&sender).copied()
    }

    /// Frames dropped so far, by reason.
    pub fn drops(&self) -> &BTreeMap<DropReason, u64> {
        &self.drops
    }

    pub fn is_delivered(&self, key: ObjectKey) -> bool {
        self.completed.contains(&key)
    }

    pub fn is_refused(&self, key: ObjectKey) -> bool {
        self.refused.contains(&key)
    }

    /// Bytes of unfinished blocks held in memory, over all objects.
    pub fn memory_bytes(&self) -> usize {
        self.objects.values().map(|o| o.asm.active_bytes()).sum()
    }

    /// Shards held before their metadata.
    pub fn early_frames(&self) -> usize {
        self.pending.frames()
    }

    /// Declared bytes of the objects in progress.
    pub fn bytes_in_progress(&self) -> u64 {
        self.objects.values().map(|o| o.asm.meta.size).sum()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> u64 {
        self.next_tick
    }

    fn drop(&mut self, why: DropReason) {
        *self.drops.entry(why).or_default() += 1;
    }

    /// Datagrams the link itself refused (serial noise, truncated reads), counted with the others.
    pub fn handle_noise(&mut self, why: DropReason, n: u64) {
        *self.drops.entry(why).or_default() += n;
    }

    /// One datagram off the link (opened in place).
    pub fn handle_datagram(&mut self, f: &mut [u8], now: u64, spill: &mut dyn Spill) {
        match frame::peek_kind(f) {
            Err(_) => self.drop(DropReason::Malformed),
            Ok(FrameKind::Announce) => match self.table.on_announce(f, now) {
                Ok(AnnounceOutcome::New { sender, counter }) => {
                    self.events
                        .push_back(Event::SessionJoined { sender, counter });
                    self.seen(sender, now);
                }
                Ok(AnnounceOutcome::Known) => {}
                Err(d) => self.drop(d),
            },
            Ok(_) => self.sealed(f, now, spill, false),
        }
    }

    /// A sealed frame that an [`Opener`](crate::session::Opener) of the session its header names has
    /// already authenticated and decrypted in place, on a thread of the driver's (`Opener::open` returned
    /// true): handled as [`handle_datagram`](Self::handle_datagram) handles that frame, without opening
    /// it again. A frame the opener refused goes to `handle_noise(DropReason::BadSeal, 1)`; one whose
    /// session had no opener yet, to `handle_datagram`.
    pub fn handle_opened(&mut self, f: &mut [u8], now: u64, spill: &mut dyn Spill) {
        self.sealed(f, now, spill, true)
    }

    fn sealed(&mut self, f: &mut [u8], now: u64, spill: &mut dyn Spill, opened: bool) {
        let (objects, completed, refused) = (&self.objects, &self.completed, &self.refused);
        let early_room = self.pending.has_room();
        let mut no_room = false;
        let wanted = |h: &SealedHeader, sender: KeyId| {
            let key = (sender, h.object);
            let known = match objects.get(&key) {
                Some(o) => Known::InProgress(&o.asm),
                None if completed.contains(&key) || refused.contains(&key) => Known::Done,
                None => Known::Unknown,
            };
            let worth = worth_opening(h, known, early_room);
            no_room = worth == Worth::SkipNoRoom;
            worth == Worth::Open
        };
        let r = if opened {
            self.table.opened(f, now, wanted)
        } else {
            self.table.open(f, now, wanted)
        };
        match r {
            Err(d) => self.drop(d),
            Ok(Opened::Redundant) => {
                if no_room {
                    self.drop(DropReason::ShardBeforeMeta);
                }
            }
            Ok(Opened::Fresh(h, sender)) => {
                self.seen(sender, now);
                let payload = &f[SEALED_HEADER_LEN..f.len() - TAG_LEN];
                match h.kind {
                    FrameKind::Meta => self.on_meta(sender, payload, now, spill),
                    FrameKind::Shard => {
                        self.on_shard((sender, h.object), h.block, h.shard, payload, now, spill)
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

    fn seen(&mut self, sender: KeyId, now: u64) {
        let l = self.links.entry(sender).or_insert(Link {
            last: now,
            up: false,
        });
        l.last = now;
        if !l.up {
            l.up = true;
            self.events.push_back(Event::LinkUp { sender });
        }
    }

    fn on_meta(&mut self, sender: KeyId, payload: &[u8], now: u64, spill: &mut dyn Spill) {
        let objects = &self.objects;
        let meta = match judge_meta(payload, |id| {
            objects.get(&(sender, id)).map(|o| &o.asm.meta)
        }) {
            MetaVerdict::Start(m) => m,
            MetaVerdict::Refuse { id, why } => {
                let key = (sender, id);
                self.pending.take(key);
                if self.refused.insert(key) {
                    self.events.push_back(Event::MetaRefused { key, why });
                }
                return self.drop(DropReason::RefusedObject);
            }
            MetaVerdict::Conflict => return self.drop(DropReason::MetaConflict),
            MetaVerdict::Repeat => return,
            MetaVerdict::HashArrived { id, hash } => {
                let key = (sender, id);
                if let Some(o) = self.objects.get_mut(&key) {
                    o.asm.meta.hash = hash;
                    o.dirty = true;
                    self.finish(key);
                }
                return;
            }
        };
        let key = (sender, meta.id);
        // an older version of a file already delivered (withheld on the link and released late, or an
        // old object replayed) is refused at its first metadata: it never takes a slot or a byte of disk
        if meta.kind == ObjectKind::File {
            if let Some(newer) = self.paths.newer_than(&meta.name, key) {
                self.pending.take(key);
                self.refused.insert(key);
                self.events.push_back(Event::Refused {
                    key,
                    code: "older_version",
                    reason: older_version(&meta.name, newer),
                    meta,
                });
                return self.drop(DropReason::RefusedObject);
            }
        }
        if let Err((limit, why)) =
            self.cfg
                .limits
                .admit(self.objects.len(), self.bytes_in_progress(), meta.size)
        {
            self.pending.take(key);
            self.events.push_back(Event::NotStarted {
                key,
                meta,
                limit,
                why,
            });
            return self.drop(limit);
        }
        let asm = match Assembly::new(meta.clone()) {
            Ok(a) => a,
            // judge_meta checked the metadata; this cannot refuse it, but if it does, it is refused
            Err(e) => {
                self.refused.insert(key);
                self.events.push_back(Event::MetaRefused {
                    key,
                    why: e.to_string(),
                });
                return self.drop(DropReason::RefusedObject);
            }
        };
        self.events.push_back(Event::ObjectStarted {
            key,
            meta,
            blocks: asm.block_count(),
        });
        self.objects.insert(key, Object::new(asm, now, true));
        for (block, shard, bytes) in self.pending.take(key) {
            self.on_shard(key, block, shard, &bytes, now, spill);
        }
    }

    /// The driver could not create the object's storage: it is forgotten (its metadata, repeated, tries
    /// again).
    pub fn handle_start_failed(&mut self, key: ObjectKey) {
        if self.objects.remove(&key).is_some() {
            self.drop(DropReason::CannotStore);
        }
    }

    fn on_shard(
        &mut self,
        key: ObjectKey,
        block: u32,
        shard: u16,
        payload: &[u8],
        now: u64,
        spill: &mut dyn Spill,
    ) {
        let Some(o) = self.objects.get_mut(&key) else {
            if !self.completed.contains(&key) {
                self.pending.hold(key, block, shard, payload, now);
            }
            return;
        };
        o.last_frame = now;
        loop {
            match o.asm.insert(block, shard, payload, &mut self.buffers) {
                Err(_) => return self.drop(DropReason::BadShard),
                Ok(Step::Restore(which)) => {
                    let base = o.asm.block_offset(block);
                    let s = o.asm.geometry().shard_size;
                    let shards: Vec<(usize, Vec<u8>)> = which
                        .iter()
                        .filter_map(|&i| {
                            spill
                                .read_at(key, base + (i * s) as u64, s)
                                .ok()
                                .map(|b| (i, b))
                        })
                        .collect();
                    o.asm.restore(block, &shards, &mut self.buffers);
                }
                Ok(Step::Ready) => break,
                Ok(_) => {
                    self.frames_since_check += 1;
                    if self.frames_since_check >= MEMORY_CHECK_EVERY {
                        self.frames_since_check = 0;
                        self.bound_memory(spill);
                    }
                    return;
                }
            }
        }
        let taken = if self.cfg.defer_decode {
            o.asm.take_ready_undecoded(block)
        } else {
            o.asm.take_ready(block, &mut self.decoder)
        };
        match taken {
            Ok(t) => self.events.push_back(Event::WriteBlock {
                key,
                block,
                offset: t.offset,
                buf: t.buf,
                start: t.start,
                len: t.len,
                recover: t.recover,
            }),
            Err(e) => {
                o.asm.discard(block);
                self.events.push_back(Event::BlockLost {
                    key,
                    block,
                    why: format!("cannot decode: {e}"),
                });
            }
        }
    }

    /// The driver wrote a block (or could not).
    pub fn handle_written(
        &mut self,
        key: ObjectKey,
        block: u32,
        buf: Vec<u8>,
        result: Result<(), String>,
        now: u64,
    ) {
        let Some(o) = self.objects.get_mut(&key) else {
            return;
        };
        o.asm.written(block, result.is_ok());
        self.buffers.give(buf);
        match result {
            Ok(()) => {
                o.dirty = true;
                o.last_progress = now;
                self.finish(key);
            }
            Err(why) => {
                let again = o.error.as_deref() == Some(why.as_str());
                o.error = Some(why.clone());
                self.events.push_back(Event::WriteFailed {
                    key,
                    name: o.asm.meta.name.clone(),
                    block,
                    why,
                    again,
                });
            }
        }
    }

    /// All blocks written and the hash known: ask the driver to verify.
    fn finish(&mut self, key: ObjectKey) {
        let Some(o) = self.objects.get_mut(&key) else {
            return;
        };
        if !o.asm.is_complete()
            || o.asm.writing_count() > 0
            || o.finishing
            || !o.asm.meta.hash_known()
        {
            return;
        }
        o.finishing = true;
        self.events.push_back(Event::Verify {
            key,
            hash: o.asm.meta.hash,
            size: o.asm.meta.size,
            block_bytes: o.asm.geometry().block_bytes(),
        });
    }

    /// The driver hashed the finished object against its metadata.
    pub fn handle_verified(&mut self, key: ObjectKey, result: Result<(), VerifyError>, now: u64) {
        let Some(o) = self.objects.get_mut(&key) else {
            return;
        };
        o.finishing = false;
        match result {
            Ok(()) => {
                let meta = o.asm.meta.clone();
                // A newer object of this sender already holds the path: this one was withheld on the
                // link and released late (or replayed). It never replaces the newer one.
                if meta.kind == ObjectKind::File {
                    if let Some(newer) = self.paths.newer_than(&meta.name, key) {
                        let reason = older_version(&meta.name, newer);
                        return self.refuse(key, "older_version", reason);
                    }
                }
                o.finishing = true;
                self.events.push_back(Event::Deliver { key, meta });
            }
            Err(VerifyError::Mismatch(why)) => {
                // the data is wrong: every block is missing again
                if let Ok(fresh) = Assembly::new(o.asm.meta.clone()) {
                    o.asm = fresh;
                }
                o.dirty = true;
                let why = format!("{why}; the object was reset");
                self.events.push_back(Event::Reset {
                    key,
                    why: why.clone(),
                });
                self.failed(key, why, now);
            }
            Err(VerifyError::Io(why)) => self.failed(key, why, now),
        }
    }

    /// The driver published the object (or could not).
    pub fn handle_delivered(&mut self, key: ObjectKey, result: Result<(), DeliverError>, now: u64) {
        let Some(o) = self.objects.get_mut(&key) else {
            return;
        };
        o.finishing = false;
        match result {
            Ok(()) => {
                if o.asm.meta.kind == ObjectKind::File {
                    self.paths.delivered(&o.asm.meta.name, key);
                }
                self.completed.insert(key);
                self.objects.remove(&key);
            }
            Err(DeliverError::Held(why)) => {
                if o.held.is_none() {
                    self.events.push_back(Event::Held {
                        key,
                        name: o.asm.meta.name.clone(),
                        why: why.clone(),
                    });
                }
                o.error = Some(format!("{why} (held: fix this, then restart diode-recv)"));
                o.held = Some(why);
            }
            Err(DeliverError::Failed(why)) => self.failed(key, why, now),
        }
    }

    fn failed(&mut self, key: ObjectKey, why: String, now: u64) {
        let Some(o) = self.objects.get_mut(&key) else {
            return;
        };
        let retry_ms = retry_after_ms(o.failures);
        let again = o.error.as_deref() == Some(why.as_str());
        o.retry_at = Some(now + retry_ms);
        o.failures = o.failures.saturating_add(1);
        o.error = Some(why.clone());
        self.events.push_back(Event::Failed {
            key,
            name: o.asm.meta.name.clone(),
            why,
            retry_ms,
            again,
        });
    }

    fn refuse(&mut self, key: ObjectKey, code: &'static str, reason: String) {
        let Some(o) = self.objects.remove(&key) else {
            return;
        };
        self.refused.insert(key);
        self.events.push_back(Event::Refused {
            key,
            meta: o.asm.meta,
            code,
            reason,
        });
    }

    /// Keep unfinished blocks in memory under `memory_bytes`: set aside the oldest blocks of the object
    /// holding the most.
    fn bound_memory(&mut self, spill: &mut dyn Spill) {
        while self.memory_bytes() > self.cfg.memory_bytes {
            let Some(key) = self
                .objects
                .iter()
                .max_by_key(|(_, o)| o.asm.active_bytes())
                .map(|(k, _)| *k)
            else {
                return;
            };
            let Some(o) = self.objects.get_mut(&key) else {
                return;
            };
            let Some(&b) = o.asm.active_blocks().first() else {
                return;
            };
            if let Some(e) = set_aside(key, o, b, spill) {
                self.events.push_back(e);
            }
        }
    }

    /// The once-a-second round: set aside stalled blocks, save progress, expire abandoned objects, let go
    /// of overdue early shards, try again what is due, save the counters, judge the links.
    pub fn handle_timeout(&mut self, now: u64, spill: &mut dyn Spill) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK_MS;
        let mut keys: Vec<ObjectKey> = self.objects.keys().copied().collect();
        keys.sort_unstable();
        for key in &keys {
            let Some(o) = self.objects.get_mut(key) else {
                continue;
            };
            if o.stalled(now, self.cfg.stall_ms) {
                for b in o.asm.active_blocks() {
                    if let Some(e) = set_aside(*key, o, b, spill) {
                        self.events.push_back(e);
                    }
                }
            }
            if o.dirty {
                o.dirty = false;
                self.events.push_back(Event::SaveProgress {
                    key: *key,
                    state: o.asm.state(),
                });
            }
        }
        for key in &keys {
            let Some(o) = self.objects.get(key) else {
                continue;
            };
            if now.saturating_sub(o.last_progress) >= self.cfg.expire_ms && !o.finishing {
                if let Some(o) = self.objects.remove(key) {
                    self.events.push_back(Event::Expired {
                        key: *key,
                        blocks: o.asm.block_count(),
                        missing: o.asm.missing(),
                        meta: o.asm.meta,
                    });
                }
            }
        }
        let n = self.pending.expire(now, self.cfg.pending_ms);
        if n > 0 {
            *self.drops.entry(DropReason::ShardBeforeMeta).or_default() += n;
        }
        // complete objects not yet delivered (restored after a restart, or a failed finish whose pause
        // is over): try again; held ones wait for a restart
        for key in &keys {
            let due = self.objects.get(key).is_some_and(|o| {
                o.held.is_none() && o.retry_at.is_none_or(|t| t <= now) && o.asm.is_complete()
            });
            if due {
                self.finish(*key);
            }
        }
        if self.table.take_dirty() {
            let highest = self.table.highest().iter().map(|(k, v)| (*k, *v)).collect();
            self.events.push_back(Event::SaveCounters { highest });
        }
        for (sender, l) in self.links.iter_mut() {
            let silent_ms = now.saturating_sub(l.last);
            if l.up && silent_ms >= self.cfg.link_down_ms {
                l.up = false;
                self.events.push_back(Event::LinkDown {
                    sender: *sender,
                    silent_ms,
                });
            }
        }
    }
}

/// Why an older version is refused.
fn older_version(name: &str, newer: u64) -> String {
    format!(
        "an older version of {name:?} than the one already delivered (object {}): frames withheld on the \
         link and released late, or a replay of an old object; the newer file stays",
        crate::journal::format_id(newer)
    )
}

/// Move an unfinished block out of memory: its data shards go to their place in the partial data. A
/// failure loses them (the block stays missing) and is returned as an event.
fn set_aside(key: ObjectKey, o: &mut Object, block: u32, spill: &mut dyn Spill) -> Option<Event> {
    let shards = o.asm.evict(block)?;
    let base = o.asm.block_offset(block);
    let s = o.asm.geometry().shard_size as u64;
    let written = shards
        .iter()
        .try_for_each(|(i, bytes)| spill.write_at(key, base + *i as u64 * s, bytes));
    match written {
        Ok(()) => {
            o.asm
                .spilled(block, shards.iter().map(|(i, _)| *i).collect());
            o.dirty = true;
            None
        }
        Err(e) => {
            let why = format!("cannot set aside block {block}: {e}");
            let again = o.error.as_deref() == Some(why.as_str());
            o.error = Some(why.clone());
            (!again).then_some(Event::BlockLost { key, block, why })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameKind;
    use crate::hash::content_hash;
    use crate::sender::Job;
    use crate::testkit::{drain, keys, object, sender, what, Memory};
    use std::collections::HashMap;

    #[derive(Default)]
    struct NoDisk;

    impl Spill for NoDisk {
        fn write_at(&mut self, _: ObjectKey, _: u64, _: &[u8]) -> Result<(), String> {
            Err("no disk".into())
        }
        fn read_at(&mut self, _: ObjectKey, _: u64, len: usize) -> Result<Vec<u8>, String> {
            Ok(vec![0; len])
        }
    }

    fn config() -> Config {
        Config {
            stall_ms: 1000,
            expire_ms: 10_000,
            pending_ms: 2000,
            link_down_ms: 3000,
            memory_bytes: 64 << 20,
            limits: Limits {
                max_objects: 100,
                max_bytes: 1 << 40,
            },
            pending_frames: 8,
            defer_decode: false,
        }
    }

    fn endpoint(highest: u64, persisted: Persisted) -> (Endpoint, KeyId) {
        let (s, r) = keys();
        let sender = s.public().id();
        let highest = if highest > 0 {
            HashMap::from([(sender, highest)])
        } else {
            HashMap::new()
        };
        let table = SessionTable::new(r, vec![s.public().clone()], highest);
        (Endpoint::new(config(), table, persisted, 0), sender)
    }

    /// The frames of one object as the sender endpoint sends them (session counter 5).
    fn frames_of(
        id: u64,
        name: &str,
        size: usize,
        late_hash: bool,
    ) -> (Vec<Vec<u8>>, ObjectMeta, Vec<u8>) {
        let (m, c) = object(id, name, size, late_hash);
        let mut src = Memory(HashMap::from([(id, c.clone())]));
        let mut ep = sender(5);
        ep.send(Job::new(m.clone(), 1, false));
        (drain(&mut ep, &mut src, 0), m, c)
    }

    fn events(ep: &mut Endpoint) -> Vec<Event> {
        std::iter::from_fn(|| ep.poll_event()).collect()
    }

    /// Blocks are written as they finish; the hash computed during the pass arrives in the closing
    /// metadata, and only then is the object verified, against that hash.
    #[test]
    fn a_late_hash_is_waited_for_then_verified() {
        let (frames, m, c) = frames_of(1, "late.bin", 3000, true);
        let (mut ep, sender) = endpoint(0, Persisted::default());
        let closing = frames.len() - crate::schedule::CLOSING_META;
        let mut written = 0;
        for (i, mut f) in frames.into_iter().enumerate() {
            ep.handle_datagram(&mut f, 1, &mut NoDisk);
            for e in events(&mut ep) {
                match e {
                    Event::WriteBlock {
                        key, block, buf, ..
                    } => {
                        written += 1;
                        ep.handle_written(key, block, buf, Ok(()), 1);
                    }
                    Event::Verify { hash, .. } => {
                        assert!(i >= closing, "verified before the hash came");
                        assert_eq!(hash, content_hash(&c));
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(written, m.geometry().unwrap().block_count(3000));
        let o = ep.object((sender, 1)).expect("in progress until delivered");
        assert!(o.asm.is_complete() && o.asm.meta.hash_known());
    }

    /// An announce of a session older than the counter restored after a restart is refused; metadata
    /// that contradicts what an object started with is dropped as a conflict.
    #[test]
    fn an_older_session_and_a_metadata_conflict_are_dropped() {
        let (frames, ..) = frames_of(2, "a.bin", 500, false);
        let (mut ep, _) = endpoint(6, Persisted::default());
        ep.handle_datagram(&mut frames[0].clone(), 0, &mut NoDisk);
        assert_eq!(ep.drops().get(&DropReason::OldSession), Some(&1));

        let (mut ep, sender) = endpoint(0, Persisted::default());
        let mut s = crate::testkit::sender(5);
        let mut src = Memory(HashMap::new());
        for mut f in drain(&mut s, &mut src, 0) {
            ep.handle_datagram(&mut f, 0, &mut NoDisk);
        }
        // (metadata of an object in progress is opened while its hash is still to come)
        let (m, _) = object(2, "a.bin", 500, true);
        let other = ObjectMeta {
            size: 501,
            ..m.clone()
        };
        let mut sess = s;
        let mut buf = vec![0u8; crate::sender::MAX_FRAME];
        for meta in [&m, &other] {
            let n = crate::sender::seal_for_test(
                &mut sess,
                &mut buf,
                FrameKind::Meta,
                meta.id,
                &meta.encode(),
            );
            ep.handle_datagram(&mut buf[..n], 0, &mut NoDisk);
        }
        assert!(ep.object((sender, 2)).is_some());
        assert_eq!(ep.drops().get(&DropReason::MetaConflict), Some(&1));
    }

    /// Shards whose metadata was lost are held up to the bound, counted when refused for room, and let
    /// go when the metadata does not come in time.
    #[test]
    fn early_shards_are_bounded_and_let_go() {
        let (frames, ..) = frames_of(3, "b.bin", 3000, false);
        let (mut ep, _) = endpoint(0, Persisted::default());
        for mut f in frames.into_iter().filter(|f| what(f).0 != FrameKind::Meta) {
            ep.handle_datagram(&mut f, 0, &mut NoDisk);
            assert!(ep.early_frames() <= 8);
        }
        assert_eq!(ep.early_frames(), 8);
        assert!(ep.drops()[&DropReason::ShardBeforeMeta] > 0);
        ep.handle_timeout(2000, &mut NoDisk);
        assert_eq!(ep.early_frames(), 0);
    }

    /// An object that stops making progress is abandoned after `expire_ms` with the exact blocks it
    /// lacked.
    #[test]
    fn expiry_reports_exactly_the_missing_blocks() {
        let (frames, ..) = frames_of(4, "c.bin", 3000, false);
        let (mut ep, sender) = endpoint(0, Persisted::default());
        // block 1's shards all lost
        for mut f in frames
            .into_iter()
            .filter(|f| !(what(f).0 == FrameKind::Shard && what(f).2 == 1))
        {
            ep.handle_datagram(&mut f, 0, &mut NoDisk);
            for e in events(&mut ep) {
                if let Event::WriteBlock {
                    key, block, buf, ..
                } = e
                {
                    ep.handle_written(key, block, buf, Ok(()), 0);
                }
            }
        }
        ep.handle_timeout(9_999, &mut NoDisk);
        assert!(ep.object((sender, 4)).is_some());
        ep.handle_timeout(10_000 + TICK_MS, &mut NoDisk);
        let expired: Vec<_> = events(&mut ep)
            .into_iter()
            .filter_map(|e| match e {
                Event::Expired { missing, .. } => Some(missing),
                _ => None,
            })
            .collect();
        assert_eq!(expired, vec![vec![(1, 1)]]);
        assert!(ep.object((sender, 4)).is_none());
    }

    /// A file older than the version already delivered at its path (restored after a restart) is
    /// refused at its first metadata: no storage, no slot.
    #[test]
    fn an_older_version_is_refused_at_its_metadata() {
        let (frames, ..) = frames_of(5, "d.bin", 500, false);
        let (s, _) = keys();
        let newer = (s.public().id(), 9);
        let (mut ep, sender) = endpoint(
            0,
            Persisted {
                delivered: vec![(newer, Some("d.bin".into()))],
                ..Persisted::default()
            },
        );
        for mut f in frames {
            ep.handle_datagram(&mut f, 0, &mut NoDisk);
        }
        let ev = events(&mut ep);
        assert!(!ev.iter().any(|e| matches!(e, Event::ObjectStarted { .. })));
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Refused {
                code: "older_version",
                ..
            }
        )));
        assert!(ep.is_refused((sender, 5)));
    }
}
