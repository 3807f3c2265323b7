//! The receive loop: the driver of the receiver endpoint (`diode_proto::receiver::Endpoint`, where every
//! decision of reception is made). It moves datagrams (GRO batches) and the time into the endpoint and
//! carries out what the endpoint asks: create an object's files, have the writer thread write blocks and
//! verify finished objects, move them into the inbox or hand envelopes to the approvals, save progress and
//! counters, record refusals and expiries. Once a second it writes the status file. It never sends.

use crate::approvals::Approvals;
use crate::config::Config;
use crate::hook_runner::HookRunner;
use crate::opening::Ahead;
use crate::status::{self, LimitStatus, ObjectStatus, RefusedStatus, SessionStatus, Status};
use crate::store::{Partial, PublishError, Storage};
use crate::writer::{self, Done, Job, Writer};
use anyhow::{Context, Result};
use diode_host::atomic::{append_line, write_atomic, Persister};
use diode_host::link::{serial::SerialRx, udp::UdpRxSet, FramesIn, LinkKind};
use diode_proto::envelope::MAX_ENVELOPE_BYTES;
use diode_proto::journal::format_id;
use diode_proto::object::{ObjectKind, ObjectMeta};
use diode_proto::receiver::{DeliverError, Endpoint, Event, Persisted, Spill};
use diode_proto::reception::{Limits, ObjectKey};
use diode_proto::{DropReason, KeyId, SessionTable};
use std::collections::{BTreeMap, HashMap, VecDeque};
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

pub struct Receiver {
    cfg: Config,
    /// Saves progress, status and metrics off the receive loop (each save is an fsync).
    persist: Persister,
    /// Where partial objects live and how they are written.
    storage: Storage,
    /// Taken by `run`.
    rx: Option<Box<dyn FramesIn + Send>>,
    ep: Endpoint,
    /// The files of each object in progress.
    files: HashMap<Key, Partial>,
    start: Instant,
    refused_recent: VecDeque<RefusedStatus>,
    refused_total: u64,
    /// Per bound on partial objects: when it was last logged, and the refusals since (a flood of new
    /// objects logs one line per bound every 10 s, not one per object).
    limit_log: HashMap<DropReason, (Option<Instant>, u64)>,
    drops_logged: BTreeMap<DropReason, u64>,
    last_drop_log: Instant,
    last_status: Instant,
    /// What the kernel dropped at the link's socket.
    kernel: crate::status::KernelDrops,
    /// Frames taken from each of the link's sockets (several UDP ports).
    sockets: Vec<(String, u64)>,
    received_files: u64,
    received_bytes: u64,
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

/// The endpoint's spill: set-aside shards go to the object's partial data file.
struct Files<'a>(&'a HashMap<Key, Partial>);

impl Spill for Files<'_> {
    fn write_at(&mut self, key: Key, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let p = self.0.get(&key).ok_or("the object has no storage")?;
        p.write_at(offset, bytes).map_err(|e| e.to_string())
    }

    fn read_at(&mut self, key: Key, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let p = self.0.get(&key).ok_or("the object has no storage")?;
        p.read_at(offset, len).map_err(|e| e.to_string())
    }
}

/// The objects delivered before (received.jsonl, newest first): none is received twice, and the files
/// among them whose ids order versions keep older versions out of their path.
fn delivered_before(cfg: &Config) -> Vec<(Key, Option<String>)> {
    records(&completed_path(cfg))
        .filter_map(|v| {
            let name = match (v["name"].as_str(), v["proto"].as_u64(), v["kind"].as_str()) {
                (Some(name), Some(ORDERED_IDS), None) => Some(name.to_string()),
                _ => None,
            };
            Some((record_key(&v)?, name))
        })
        .collect()
}

/// The objects refused before (refused.jsonl): their frames stay ignored after a restart.
fn refused_before(cfg: &Config) -> Vec<Key> {
    records(&refused_path(cfg))
        .filter_map(|v| record_key(&v))
        .collect()
}

/// The last 100,000 records of a JSONL file, newest first (unreadable lines skipped).
fn records(path: &std::path::Path) -> impl Iterator<Item = serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .rev()
        .take(100_000)
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    lines.into_iter()
}

/// The object a record names (`sender`, `object`).
fn record_key(v: &serde_json::Value) -> Option<Key> {
    let s = hex::decode(v["sender"].as_str()?).ok()?;
    let o = diode_proto::journal::parse_id(v["object"].as_str()?)?;
    Some((KeyId(<[u8; 8]>::try_from(s.as_slice()).ok()?), o))
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
        let rx: Box<dyn FramesIn + Send> = match cfg.serial_line()? {
            Some(line) => Box::new(SerialRx::open(&line)?),
            None => {
                let rx = UdpRxSet::bind(&cfg.udp_listens()?, cfg.rcvbuf_mb << 20)?;
                if rx.recv_buffer_size() < (cfg.rcvbuf_mb << 20) {
                    tracing::warn!(
                        have = rx.recv_buffer_size(), want = cfg.rcvbuf_mb << 20,
                        "small UDP receive buffer: raise net.core.rmem_max (see hardware/README.md) or bursts will be lost"
                    );
                }
                Box::new(rx)
            }
        };
        for (path, bytes) in Partial::sweep_orphans(&storage.dir) {
            tracing::warn!(file = %path.display(), bytes, "removed partial data that belonged to no object (its state was never saved)");
        }
        let mut files = HashMap::new();
        let mut partials = Vec::new();
        for (p, asm) in Partial::load_all(&storage) {
            tracing::info!(object = %format_id(p.meta.id), name = %p.meta.name,
                done = asm.done_count(), blocks = asm.block_count(), "resuming a partial object");
            partials.push((p.sender, asm));
            files.insert((p.sender, p.meta.id), p);
        }
        let persisted = Persisted {
            partials,
            delivered: delivered_before(&cfg),
            refused: refused_before(&cfg),
        };
        // "auto" leaves the cores the daemon's thread, the link thread and the writer keep busy at speed
        let decoders = match cfg.line.link {
            LinkKind::Udp => cfg.decode_threads.count(3),
            LinkKind::Serial => 0,
        };
        if decoders > 0 {
            tracing::info!(
                decoding_threads = decoders,
                "blocks with lost shards are rebuilt on threads beside the writer"
            );
        }
        let rules = diode_proto::receiver::Config {
            stall_ms: cfg.stall_secs.saturating_mul(1000),
            expire_ms: cfg.expire_hours.saturating_mul(3_600_000),
            pending_ms: cfg.pending_secs.saturating_mul(1000),
            link_down_ms: cfg.link_down_secs.saturating_mul(1000),
            memory_bytes: cfg.memory_mb << 20,
            limits: Limits {
                max_objects: cfg.max_partial_objects,
                max_bytes: (cfg.max_partial_mb as u64).saturating_mul(1 << 20),
            },
            pending_frames: PENDING_MAX,
            // Reed-Solomon decoding on the writer thread, when asked (recv.example.toml says when it pays),
            // or on the decoding threads beside it
            defer_decode: cfg.decode_on_writer || decoders > 0,
        };
        let now = Instant::now();
        Ok(Receiver {
            rx: Some(rx),
            ep: Endpoint::new(rules, table, persisted, 0),
            files,
            start: now,
            refused_recent: VecDeque::new(),
            refused_total: 0,
            limit_log: HashMap::new(),
            drops_logged: BTreeMap::new(),
            last_drop_log: now,
            last_status: now,
            kernel: Default::default(),
            sockets: Vec::new(),
            received_files: 0,
            received_bytes: 0,
            approvals: Approvals::open(&cfg, hooks)?,
            storage,
            writer: Writer::spawn(decoders).context("cannot start the writer thread")?,
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

    /// Milliseconds on the receiver's clock (the endpoint's time).
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn run(&mut self) -> Result<()> {
        let Some(rx) = self.rx.take() else {
            anyhow::bail!("the receive loop is already running");
        };
        // opening on threads pays over a fast UDP link; a serial line is slow enough for one
        let threads = match self.cfg.line.link {
            // "auto" leaves a core to the daemon's thread and one to the link thread, each kept busy at
            // speed: on 2 cores, opening on a third thread measured slower (benches/scaling.sh)
            LinkKind::Udp => self.cfg.open_threads.count(2),
            LinkKind::Serial => 0,
        };
        tracing::info!(link = %self.cfg.link_name()?, inbox = %self.cfg.inbox.display(), opening_threads = threads, "receiving");
        if threads == 0 {
            return self.run_here(rx);
        }
        let mut pool = crate::opening::Pool::start(rx, threads, self.ep.table())?;
        let mut counters = crate::opening::Counters::default();
        loop {
            if let Some(mut b) = pool.next(self.link_wait())? {
                // the clock is read once per batch of datagrams (when the batch came), not once per frame
                let t = self.now_ms();
                b.for_each(|f, ahead| {
                    match ahead {
                        Ahead::Raw => self.ep.handle_datagram(f, t, &mut Files(&self.files)),
                        Ahead::Opened => self.ep.handle_opened(f, t, &mut Files(&self.files)),
                        Ahead::BadSeal => self.ep.handle_noise(DropReason::BadSeal, 1),
                    }
                    self.events();
                });
                for (why, n) in b.noise.drain(..) {
                    self.ep.handle_noise(why, n);
                }
                if let Some(c) = b.counters.take() {
                    counters = c;
                }
                pool.done(b);
                pool.publish(self.ep.table());
            }
            self.housekeeping(|| (counters.kernel_drops, counters.per_socket.clone()));
        }
    }

    /// The receive loop on this one thread: frames are opened by the endpoint.
    fn run_here(&mut self, mut rx: Box<dyn FramesIn + Send>) -> Result<()> {
        loop {
            rx.set_wait(self.link_wait());
            let mut now = None;
            let noise = rx.recv(&mut |f| {
                // the clock is read once per batch of datagrams (when the batch came), not once per frame
                let t = *now.get_or_insert_with(|| self.now_ms());
                self.ep.handle_datagram(f, t, &mut Files(&self.files));
                self.events();
            })?;
            for (why, n) in noise {
                self.ep.handle_noise(why, n);
            }
            self.housekeeping(|| (rx.kernel_drops(), rx.per_socket()));
        }
    }

    /// How long to wait for frames before looking at the writer's replies and the timers: briefly
    /// while the writer has replies to come (`Writer::busy`), else the link's default.
    fn link_wait(&self) -> Duration {
        if self.writer.busy() {
            Duration::from_millis(2)
        } else {
            diode_host::link::LINK_WAIT
        }
    }

    /// Between batches of frames: the writer's replies, the endpoint's timers, and once a second the
    /// link's counters (`counters`: the kernel's drops, frames per socket), status and outcomes.
    fn housekeeping(&mut self, counters: impl FnOnce() -> (Option<u32>, Vec<(String, u64)>)) {
        self.drain_writer();
        let t = self.now_ms();
        if t >= self.ep.poll_timeout() {
            self.ep.handle_timeout(t, &mut Files(&self.files));
            self.events();
        }
        if self.last_status.elapsed() >= Duration::from_secs(1) {
            self.last_status = Instant::now();
            let (kernel_drops, sockets) = counters();
            self.sockets = sockets;
            if let Some(c) = kernel_drops {
                let was = self.kernel.overloaded();
                let new = self.kernel.note(c);
                if new > 0 && !was {
                    // said when it starts, not every second; status and metrics carry the figures
                    tracing::warn!(dropped = new, "{}", self.kernel.advice());
                }
            }
            self.log_drops();
            if let Err(e) = self.write_status() {
                tracing::warn!(error = %format!("{e:#}"), "cannot write status");
            }
            // records appended by `approvals consume` and the hook runner go back too
            if let Some(a) = self.approvals.as_mut() {
                a.report_outcomes();
            }
        }
    }

    /// Replies from the writer: blocks on disk (or not), objects verified (or not).
    fn drain_writer(&mut self) {
        while let Some(done) = self.writer.try_done() {
            let now = self.now_ms();
            match done {
                Done::Written {
                    key,
                    block,
                    buf,
                    result,
                } => self.ep.handle_written(key, block, buf, result, now),
                Done::Finished { key, result } => self.ep.handle_verified(key, result, now),
            }
            self.events();
        }
    }

    /// Carry out what the endpoint asks, in order.
    fn events(&mut self) {
        while let Some(e) = self.ep.poll_event() {
            self.event(e);
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::SessionJoined { sender, counter } => {
                tracing::info!(sender = %sender, session = counter, "new session")
            }
            Event::LinkUp { sender } => {
                tracing::info!(sender = %sender, "link up: frames arriving")
            }
            Event::LinkDown { sender, silent_ms } => {
                tracing::warn!(sender = %sender, silent_secs = silent_ms / 1000, "link down: no frames, not even heartbeats")
            }
            Event::ObjectStarted { key, meta, blocks } => {
                match Partial::create(&self.storage, key.0, &meta) {
                    Ok(p) => {
                        tracing::info!(object = %format_id(key.1), name = %meta.name, bytes = meta.size, blocks, "receiving");
                        self.files.insert(key, p);
                    }
                    Err(e) => {
                        tracing::error!(object = %format_id(key.1), name = %meta.name, error = %format!("{e:#}"), "cannot start the object on disk");
                        self.ep.handle_start_failed(key);
                    }
                }
            }
            Event::MetaRefused { key, why } => {
                tracing::error!(sender = %key.0, object = %format_id(key.1), error = %why, "refused an object: nothing is written")
            }
            Event::NotStarted {
                key,
                meta,
                limit,
                why,
            } => {
                let clock = Instant::now();
                let (last, since) = self.limit_log.entry(limit).or_insert((None, 0));
                *since += 1;
                if last.is_none_or(|t| clock.duration_since(t) >= Duration::from_secs(10)) {
                    tracing::warn!(sender = %key.0, object = %format_id(meta.id), name = %meta.name, bytes = meta.size,
                        limit = limit.name(), refused_since_last_line = *since,
                        "not starting an object: {why}; it can start once objects in progress finish or expire");
                    *last = Some(clock);
                    *since = 0;
                }
            }
            Event::WriteBlock {
                key,
                block,
                offset,
                buf,
                start,
                len,
                recover,
            } => {
                let Some(p) = self.files.get(&key) else {
                    let now = self.now_ms();
                    return self.ep.handle_written(
                        key,
                        block,
                        buf,
                        Err("the object has no storage".into()),
                        now,
                    );
                };
                let job = Job::Write {
                    key,
                    block,
                    offset,
                    buf,
                    start,
                    len,
                    recover,
                    file: p.file(),
                    direct: p.direct(),
                    geo: writer::Geometry {
                        size: p.meta.size,
                        block_bytes: block_bytes(&p.meta),
                    },
                };
                if !self.writer.send(job) {
                    tracing::error!("the writer thread is gone; restart diode-recv");
                }
            }
            Event::BlockLost { key, block, why } => {
                tracing::error!(object = %format_id(key.1), block, error = %why, "a block could not be kept; it stays missing")
            }
            Event::Verify {
                key,
                hash,
                size,
                block_bytes,
            } => {
                let Some(p) = self.files.get(&key) else {
                    return;
                };
                let job = Job::Finish {
                    key,
                    file: p.file(),
                    hash,
                    size,
                    block_bytes,
                };
                if !self.writer.send(job) {
                    tracing::error!("the writer thread is gone; restart diode-recv");
                }
            }
            Event::Deliver { key, meta } => {
                let result = self.deliver(key, meta);
                let now = self.now_ms();
                self.ep.handle_delivered(key, result, now);
            }
            Event::Reset { key, why } => {
                if let Some(p) = self.files.get(&key) {
                    if let Err(e) = p.reset() {
                        tracing::error!(object = %format_id(key.1), error = %e, "cannot empty the object's data");
                    }
                }
                self.writer.send(Job::Forget { key });
                tracing::debug!(object = %format_id(key.1), error = %why, "object reset");
            }
            Event::SaveProgress { key, state } => {
                if let Some(p) = self.files.get(&key) {
                    p.save(&state);
                }
            }
            Event::SaveCounters { highest } => {
                let m: BTreeMap<String, u64> =
                    highest.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                match serde_json::to_vec(&m) {
                    Ok(b) => self.persist.write(&senders_path(&self.cfg), b, 0o600),
                    Err(e) => tracing::error!(error = %e, "cannot persist session counters"),
                }
            }
            Event::Refused {
                key,
                meta,
                code,
                reason,
            } => self.refused(key, meta, code, reason),
            Event::Expired {
                key,
                meta,
                blocks,
                missing,
            } => self.expired(key, meta, blocks, &missing),
            Event::Held { key, name, why } => {
                tracing::error!(object = %format_id(key.1), name = %name, error = %why,
                    "cannot deliver the object: held in state/partial/ until the cause is fixed and diode-recv restarted")
            }
            Event::Failed {
                key,
                name,
                why,
                retry_ms,
                again,
            } => {
                if again {
                    tracing::debug!(object = %format_id(key.1), error = %why, "cannot finish the object (again)");
                } else {
                    tracing::error!(object = %format_id(key.1), name = %name, error = %why,
                        retry_secs = retry_ms / 1000, "cannot finish the object; trying again later");
                }
            }
            Event::WriteFailed {
                key,
                name,
                block,
                why,
                again,
            } => {
                if !again {
                    tracing::error!(object = %format_id(key.1), name = %name, block, error = %why,
                        "cannot write a block; it stays missing (a gap) until a later pass or replay");
                }
            }
        }
    }

    /// A verified object: a file moved into the inbox, an envelope verified and published (or
    /// quarantined) by `Approvals`.
    fn deliver(&mut self, key: Key, meta: ObjectMeta) -> Result<(), DeliverError> {
        let Some(p) = self.files.get_mut(&key) else {
            return Err(DeliverError::Failed("the object has no storage".into()));
        };
        // the hash may have come after the storage was made
        p.meta = meta.clone();
        let rec = serde_json::json!({
            "sender": key.0.to_string(), "object": format_id(meta.id), "name": meta.name, "size": meta.size,
            "blake3": meta.hash_hex(), "at": diode_host::unix_now(),
        });
        let rec = match meta.kind {
            ObjectKind::File => {
                let dest = p.publish(&self.cfg.inbox).map_err(|e| match e {
                    PublishError::Refused(msg) => DeliverError::Held(msg),
                    PublishError::Failed(e) => DeliverError::Failed(format!("{e:#}")),
                })?;
                tracing::info!(object = %format_id(meta.id), name = %meta.name, bytes = meta.size,
                    blake3 = %meta.hash_hex(), path = %dest.display(), "received");
                with(rec, [("proto", serde_json::json!(ORDERED_IDS))])
            }
            ObjectKind::Envelope => {
                let content = p.content(MAX_ENVELOPE_BYTES as u64).map_err(|e| {
                    DeliverError::Failed(format!("cannot finish the envelope: {e:#}"))
                })?;
                let Some(approvals) = self.approvals.as_mut() else {
                    return Err(DeliverError::Held(
                        "an approval envelope arrived but recv.toml has no [approvals] section (docs/approvals.md)"
                            .into(),
                    ));
                };
                let path = approvals.deliver(&content, &meta.name).map_err(|e| {
                    DeliverError::Failed(format!("cannot deliver the envelope: {e:#}"))
                })?;
                with(
                    rec,
                    [
                        ("kind", serde_json::json!("envelope")),
                        ("path", serde_json::json!(path.display().to_string())),
                    ],
                )
            }
        };
        if let Err(e) = append_line(&completed_path(&self.cfg), &rec.to_string()) {
            tracing::error!(error = %format!("{e:#}"), "cannot record the received file");
        }
        self.received_files += 1;
        self.received_bytes += meta.size;
        if let Some(p) = self.files.remove(&key) {
            // a published file is already gone from here; an envelope's copy is removed
            p.discard();
        }
        self.writer.send(Job::Forget { key });
        Ok(())
    }

    /// Set aside for good: the data is removed, and the reason logged once, listed in status and
    /// appended to `state/refused.jsonl`.
    fn refused(&mut self, key: Key, m: ObjectMeta, code: &'static str, reason: String) {
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
        if let Some(p) = self.files.remove(&key) {
            p.discard();
        }
        self.writer.send(Job::Forget { key });
    }

    fn expired(&mut self, key: Key, m: ObjectMeta, blocks: u64, missing: &[(u32, u32)]) {
        let report = serde_json::json!({
            "sender": key.0.to_string(), "object": format_id(m.id), "name": m.name, "size": m.size,
            "blocks": blocks, "missing": diode_proto::gap::format(missing),
            "expired_at": diode_host::unix_now(),
        });
        let dir = self.cfg.state.join("expired");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}-{}.json", key.0, format_id(m.id)));
        if let Err(e) = write_atomic(&path, report.to_string().as_bytes(), 0o644) {
            tracing::error!(error = %format!("{e:#}"), "cannot write the expiry report");
        }
        tracing::warn!(object = %format_id(m.id), name = %m.name, report = %path.display(), "incomplete object expired; nothing reached the inbox");
        if let Some(p) = self.files.remove(&key) {
            p.discard();
        }
        self.writer.send(Job::Forget { key });
    }

    fn log_drops(&mut self) {
        let drops = self.ep.drops();
        if *drops != self.drops_logged && self.last_drop_log.elapsed() >= Duration::from_secs(10) {
            self.last_drop_log = Instant::now();
            self.drops_logged = drops.clone();
            let text: Vec<String> = drops
                .iter()
                .map(|(k, v)| format!("{}={v}", k.name()))
                .collect();
            tracing::info!(drops = %text.join(" "), "dropped frames so far");
        }
    }

    fn write_status(&self) -> Result<()> {
        let now = self.now_ms();
        let rules = self.ep.config();
        let mut sessions: Vec<SessionStatus> = self
            .ep
            .table()
            .sessions()
            .map(|s| {
                let link = self.ep.link(s.sender);
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
                    last_seen_secs: link
                        .map(|l| now.saturating_sub(l.last) as f64 / 1000.0)
                        .unwrap_or(-1.0),
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
            .ep
            .objects()
            .map(|((sender, id), o)| {
                let missing = diode_proto::gap::format(&o.asm.missing());
                let stalled = o.stalled(now, rules.stall_ms);
                let all = o.asm.done_count() == 0;
                ObjectStatus {
                    sender: sender.to_string(),
                    object: format_id(*id),
                    name: o.asm.meta.name.clone(),
                    size: o.asm.meta.size,
                    blocks: o.asm.block_count(),
                    blocks_done: o.asm.done_count(),
                    percent: 100.0 * o.asm.done_count() as f64 / o.asm.block_count().max(1) as f64,
                    state: if stalled {
                        "incomplete".into()
                    } else {
                        "receiving".into()
                    },
                    missing: missing.clone(),
                    error: o.error.clone(),
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
                .ep
                .drops()
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
            received_files: self.received_files,
            received_bytes: self.received_bytes,
            objects,
            refused: self.refused_recent.iter().rev().cloned().collect(),
            refused_total: self.refused_total,
            limits: LimitStatus {
                objects: self.ep.objects().count(),
                max_objects: rules.limits.max_objects,
                bytes: self.ep.bytes_in_progress(),
                max_bytes: rules.limits.max_bytes,
            },
            state_dir: self.cfg.state.display().to_string(),
            kernel: self.kernel.clone(),
            sockets: if self.sockets.len() > 1 {
                self.sockets.iter().cloned().collect()
            } else {
                Default::default()
            },
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

/// The bytes of data in each block of the object.
fn block_bytes(meta: &ObjectMeta) -> u64 {
    meta.geometry().map(|g| g.block_bytes()).unwrap_or(1)
}

/// A JSON record with more fields.
fn with<const N: usize>(
    mut rec: serde_json::Value,
    more: [(&str, serde_json::Value); N],
) -> serde_json::Value {
    for (k, v) in more {
        rec[k] = v;
    }
    rec
}
