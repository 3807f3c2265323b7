//! The sender endpoint: what goes out and when (docs/protocol.md §9). Objects to send come in with
//! [`Endpoint::send`]; the driver asks for the next frame with [`Endpoint::poll_transmit`], which seals it
//! into the driver's buffer, and learns what happened from [`Endpoint::poll_event`]. The endpoint decides
//! everything between: the announce, heartbeat and rekey timers, the schedule of each pass (opening and
//! closing metadata, interleaved groups with their parity, metadata every 64 shards), the passes, urgent
//! objects (approval envelopes) going out at once ahead of a large file, replays of named blocks, the
//! repeats of envelopes and of late content hashes spread in time, and the content hash computed during a
//! large file's first pass.
//!
//! Sans-I/O: time is milliseconds of the driver's clock; content comes through the driver's [`Source`];
//! a new session (its counter persisted, its randomness) comes from the driver when asked
//! ([`Transmit::Rekey`]). `diode-send` drives it with files and a paced UDP or serial link;
//! `proto/tests/sim.rs` with content in memory and a simulated link.

use crate::fec::{BlockEncoder, FecError};
use crate::frame::{FrameKind, SEALED_HEADER_LEN, TAG_LEN};
use crate::hash::ContentHasher;
use crate::object::{encode_heartbeat, Heartbeat, ObjectMeta};
use crate::schedule::{self, GroupBlock, Out, Pass, Timers};
use crate::session::SenderSession;
use std::collections::VecDeque;

/// The longest frame the endpoint writes (the wire's bound).
pub const MAX_FRAME: usize = crate::frame::MAX_FRAME;

/// The sender's rules in numbers (send.toml).
#[derive(Debug, Clone)]
pub struct Config {
    /// Blocks per interleaving group.
    pub interleave: usize,
    pub announce_ms: u64,
    pub heartbeat_ms: u64,
    pub rekey_ms: u64,
    /// The link's rate, as heartbeats tell the receiver.
    pub rate_bps: u64,
    /// After an object went out: when (ms after) its repeats go, each once (envelopes whole, a content
    /// hash computed during the pass as metadata, a one-block file whole at the last one if
    /// `repeat_small`).
    pub repeats: Vec<u64>,
    pub repeat_small: bool,
    /// Leave shard frames unsealed ([`Transmit::Plain`]): the driver seals them with [`Endpoint::sealer`]
    /// on threads of its own. Off: every frame comes sealed.
    pub defer_seal: bool,
}

/// Where an object's content comes from.
pub trait Source {
    /// `len` bytes at `offset` of object `id`, lent without a copy where the driver can (a mapped file);
    /// None: read them with `read_at`.
    fn map(&mut self, id: u64, offset: u64, len: usize) -> Option<&[u8]>;
    /// Fill `buf` from `offset` of object `id`.
    fn read_at(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    /// A group of object `id` is about to be read (a lender may take its bytes back here).
    fn begin_group(&mut self, _id: u64) {}
    /// Compute the parity of a group's blocks, each lent whole (`map` gives its `len` bytes at
    /// `offset`), and fold their bytes into `hasher` in block order, on threads of the driver's: the
    /// same bytes `BlockEncoder::encode` and `ContentHasher::update` give on the endpoint's thread.
    /// Ok(false): not done (no threads, or bytes no longer lent); the endpoint then does it itself.
    fn encode_group(
        &mut self,
        _id: u64,
        _shard_size: usize,
        _blocks: &mut [BlockParity<'_>],
        _hasher: Option<&mut ContentHasher>,
    ) -> Result<bool, String> {
        Ok(false)
    }
}

/// One block of a group whose parity a driver computes (`Source::encode_group`).
pub struct BlockParity<'a> {
    /// Where the block's data starts in the object, and its length (whole shards).
    pub offset: u64,
    pub len: usize,
    pub parity_shards: usize,
    /// Filled with the parity shards back to back.
    pub parity: &'a mut Vec<u8>,
}

/// What a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A new object: all its passes.
    New,
    /// A replay (an admin's, or a repeat in time): the named blocks (or all) once.
    Replay,
    /// One more copy of the metadata, with the content hash.
    Meta,
}

/// An object to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub meta: ObjectMeta,
    pub kind: JobKind,
    pub passes: u32,
    /// The blocks to send (None: all).
    pub blocks: Option<Vec<(u32, u32)>>,
    /// Goes out at once, ahead of what is being sent (approval envelopes), and is repeated in time.
    pub urgent: bool,
}

impl Job {
    pub fn new(meta: ObjectMeta, passes: u32, urgent: bool) -> Self {
        Job {
            meta,
            kind: JobKind::New,
            passes,
            blocks: None,
            urgent,
        }
    }

    pub fn replay(meta: ObjectMeta, blocks: Option<Vec<(u32, u32)>>, urgent: bool) -> Self {
        Job {
            meta,
            kind: JobKind::Replay,
            passes: 1,
            blocks,
            urgent,
        }
    }
}

/// What `poll_transmit` asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// A frame of this many bytes is at the start of the buffer: send it.
    Frame(usize),
    /// With `Config::defer_seal`: a shard frame of this many bytes is at the start of the buffer, its
    /// header written and its payload in clear: seal it with the [`Endpoint::sealer`] of the current
    /// session (taken before any later `Rekey`), then send it in its turn.
    Plain(usize),
    /// Start a new session (persist its counter above every earlier one) and give it to `rekeyed`, or
    /// say `rekey_failed`.
    Rekey,
    /// Nothing to send before this time (ms), unless a job comes.
    Idle(u64),
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// A job went out whole; `meta` carries the content hash if this pass computed it.
    Sent { meta: ObjectMeta, kind: JobKind },
    /// A job was abandoned: its content could not be read, or its geometry is wrong.
    Failed {
        meta: ObjectMeta,
        kind: JobKind,
        why: String,
    },
    /// Data bytes of an object that went out (for progress bars).
    Progress { id: u64, bytes: u64 },
}

/// Where a job is in its passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Opening(usize),
    Groups,
    Closing(usize),
}

struct Sending {
    job: Job,
    meta_bytes: Vec<u8>,
    pass: Option<Pass>,
    passes_left: u32,
    step: Step,
    hasher: Option<ContentHasher>,
    /// This job computed the content hash (its closing metadata carried it first).
    hash_computed: bool,
    interleave: usize,
    group: Vec<GroupBlock>,
    /// Per block of the group: where its data starts in `data`, or None if the source lends it.
    starts: Vec<Option<usize>>,
    data: Vec<u8>,
    parity: Vec<Vec<u8>>,
    order: Vec<Out>,
    at: usize,
}

impl Sending {
    fn new(job: Job, interleave: usize) -> Result<Self, FecError> {
        let meta_only = job.kind == JobKind::Meta;
        let pass = if meta_only {
            None
        } else {
            Some(Pass::new(&job.meta, job.blocks.as_deref(), interleave)?)
        };
        let hasher = (!job.meta.hash_known() && job.blocks.is_none()).then(ContentHasher::new);
        Ok(Sending {
            meta_bytes: job.meta.encode(),
            passes_left: if meta_only { 0 } else { job.passes.max(1) },
            step: if meta_only {
                Step::Closing(1)
            } else {
                Step::Opening(schedule::OPENING_META)
            },
            job,
            pass,
            hasher,
            hash_computed: false,
            interleave,
            group: Vec::new(),
            starts: Vec::new(),
            data: Vec::new(),
            parity: Vec::new(),
            order: Vec::new(),
            at: 0,
        })
    }
}

/// What one step of a job produced.
enum Next {
    Meta,
    Shard {
        block: u64,
        shard: usize,
        slot: usize,
    },
    Done,
}

pub struct Endpoint {
    cfg: Config,
    session: SenderSession,
    timers: Timers,
    rekey_asked: bool,
    announce_now: bool,
    urgent: VecDeque<Job>,
    bulk: VecDeque<Job>,
    /// Repeats, each due at its time.
    later: Vec<(u64, Job)>,
    /// What is being sent: an urgent job on top of the one it interrupted.
    stack: Vec<Sending>,
    fec: BlockEncoder,
    events: VecDeque<Event>,
    objects_sent: u64,
}

impl Endpoint {
    /// `session` has just been started at `now`; its announce is the first frame out.
    pub fn new(cfg: Config, session: SenderSession, now: u64) -> Self {
        Endpoint {
            timers: Timers::new(now, cfg.announce_ms, cfg.heartbeat_ms, cfg.rekey_ms),
            cfg,
            session,
            rekey_asked: false,
            announce_now: true,
            urgent: VecDeque::new(),
            bulk: VecDeque::new(),
            later: Vec::new(),
            stack: Vec::new(),
            fec: BlockEncoder::new(),
            events: VecDeque::new(),
            objects_sent: 0,
        }
    }

    pub fn session(&self) -> &SenderSession {
        &self.session
    }

    /// What seals the current session's [`Transmit::Plain`] frames, on any thread.
    pub fn sealer(&self) -> crate::session::Sealer {
        self.session.sealer()
    }

    /// Queue a job: urgent ones go out at once, others after those queued before.
    pub fn send(&mut self, job: Job) {
        if job.urgent {
            self.urgent.push_back(job);
        } else {
            self.bulk.push_back(job);
        }
    }

    /// Queue a job ahead of the others that are not urgent (an admin's replay).
    pub fn send_next(&mut self, job: Job) {
        self.bulk.push_front(job);
    }

    /// Nothing queued, being sent or waiting to be repeated.
    pub fn is_idle(&self) -> bool {
        self.stack.is_empty()
            && self.urgent.is_empty()
            && self.bulk.is_empty()
            && self.later.is_empty()
    }

    /// Jobs not yet started (repeats not counted).
    pub fn queued(&self) -> usize {
        self.urgent.len() + self.bulk.len()
    }

    /// A job of object `id` is queued, being sent or waiting to be repeated (its content is still
    /// needed).
    pub fn needs(&self, id: u64) -> bool {
        self.stack.iter().any(|s| s.job.meta.id == id)
            || self
                .urgent
                .iter()
                .chain(&self.bulk)
                .any(|j| j.meta.id == id)
            || self.later.iter().any(|(_, j)| j.meta.id == id)
    }

    /// The object being sent, if any.
    pub fn current_object(&self) -> Option<u64> {
        self.stack.last().map(|s| s.job.meta.id)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The driver started a new session after `Transmit::Rekey`; its announce goes out next.
    pub fn rekeyed(&mut self, session: SenderSession, now: u64) {
        self.session = session;
        self.timers.rekeyed(now);
        self.rekey_asked = false;
        self.announce_now = true;
    }

    /// No new session could be started: keep the current one, ask again in a second.
    pub fn rekey_failed(&mut self, now: u64) {
        self.timers.rekey_retry(now, 1000);
        self.rekey_asked = false;
    }

    /// The next frame, sealed at the start of `buf` (at least `MAX_FRAME` bytes), or what else to do.
    pub fn poll_transmit(&mut self, now: u64, src: &mut dyn Source, buf: &mut [u8]) -> Transmit {
        let due = self.timers.due(now);
        if due.rekey && !self.rekey_asked {
            self.rekey_asked = true;
            return Transmit::Rekey;
        }
        if due.announce {
            self.announce_now = true;
        }
        if let Some(n) = self.announce(now, buf) {
            return Transmit::Frame(n);
        }
        if due.heartbeat {
            self.timers.heartbeat_sent(now);
            if let Some(n) = self.heartbeat(buf) {
                return Transmit::Frame(n);
            }
        }
        self.repeats_due(now);
        loop {
            // a job just started opens with the announce
            if let Some(n) = self.announce(now, buf) {
                return Transmit::Frame(n);
            }
            if !self.urgent.is_empty() && self.stack.last().is_none_or(|s| !s.job.urgent) {
                if let Some(job) = self.urgent.pop_front() {
                    self.start(job);
                }
                continue;
            }
            if self.stack.is_empty() {
                let Some(job) = self.bulk.pop_front() else {
                    let next = self.later.iter().map(|(t, _)| *t).min();
                    let wake = self.timers.next_deadline();
                    return Transmit::Idle(next.map_or(wake, |t| t.min(wake)));
                };
                self.start(job);
                continue;
            }
            match self.next(src) {
                Ok(Next::Done) => self.done(now),
                Ok(Next::Meta) => {
                    let Some(s) = self.stack.last() else { continue };
                    if let Some(n) = seal(
                        &mut self.session,
                        buf,
                        FrameKind::Meta,
                        s.job.meta.id,
                        0,
                        0,
                        &s.meta_bytes,
                    ) {
                        return Transmit::Frame(n);
                    }
                }
                Ok(Next::Shard { block, shard, slot }) => {
                    match self.shard(src, buf, block, shard, slot) {
                        Ok(Some(n)) if self.cfg.defer_seal => return Transmit::Plain(n),
                        Ok(Some(n)) => return Transmit::Frame(n),
                        Ok(None) => {}
                        Err(why) => self.abandon(why),
                    }
                }
                Err(why) => self.abandon(why),
            }
        }
    }

    /// The session's announce into `buf`, if one is due.
    fn announce(&mut self, now: u64, buf: &mut [u8]) -> Option<usize> {
        if !self.announce_now {
            return None;
        }
        self.announce_now = false;
        self.timers.announced(now);
        let a = self.session.announce();
        let slot = buf.get_mut(..a.len())?;
        slot.copy_from_slice(a);
        Some(a.len())
    }

    fn heartbeat(&mut self, buf: &mut [u8]) -> Option<usize> {
        let hb = Heartbeat {
            frames_sent: self.session.frames_sealed() + 1,
            objects_sent: self.objects_sent,
            current_object: self.current_object(),
            rate_bps: self.cfg.rate_bps,
            interval_ms: self.cfg.heartbeat_ms.min(u32::MAX as u64) as u32,
        };
        seal(
            &mut self.session,
            buf,
            FrameKind::Heartbeat,
            0,
            0,
            0,
            &encode_heartbeat(&hb),
        )
    }

    fn repeats_due(&mut self, now: u64) {
        if self.later.iter().all(|(t, _)| *t > now) {
            return;
        }
        let (due, not): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.later = not;
        for (_, mut job) in due {
            // a repeat goes out as soon as it is due, like an envelope
            job.urgent = true;
            self.urgent.push_back(job);
        }
    }

    fn start(&mut self, job: Job) {
        match Sending::new(job.clone(), self.cfg.interleave) {
            Ok(s) => {
                self.stack.push(s);
                // every job opens with the session's announce: a receiver that lost the last one (or
                // restarted since) can open the job's frames from the first, so a replay sent after a
                // quiet spell is whole on a clean link (one frame per job)
                self.announce_now = true;
            }
            Err(e) => self.events.push_back(Event::Failed {
                meta: job.meta,
                kind: job.kind,
                why: e.to_string(),
            }),
        }
    }

    /// The job on top could not go on.
    fn abandon(&mut self, why: String) {
        if let Some(s) = self.stack.pop() {
            self.events.push_back(Event::Failed {
                meta: s.job.meta,
                kind: s.job.kind,
                why,
            });
        }
    }

    /// The job on top went out whole: say so and schedule its repeats.
    fn done(&mut self, now: u64) {
        let Some(s) = self.stack.pop() else {
            return;
        };
        let job = s.job;
        if job.kind == JobKind::New {
            self.objects_sent += 1;
            let last = self.cfg.repeats.iter().copied().max();
            let single = job
                .meta
                .geometry()
                .is_ok_and(|g| g.block_count(job.meta.size) == 1);
            for &d in &self.cfg.repeats {
                let repeat = if job.urgent {
                    Job::replay(job.meta.clone(), None, true)
                } else if s.hash_computed {
                    Job {
                        kind: JobKind::Meta,
                        ..Job::replay(job.meta.clone(), None, true)
                    }
                } else if Some(d) == last && self.cfg.repeat_small && single {
                    // interleaving spreads a burst of loss over a file's blocks, but a file of one block
                    // has nothing to spread it over: one copy in time, later
                    Job::replay(job.meta.clone(), None, true)
                } else {
                    continue;
                };
                self.later.push((now + d, repeat));
            }
        }
        self.events.push_back(Event::Sent {
            meta: job.meta,
            kind: job.kind,
        });
    }

    /// What the job on top sends next.
    fn next(&mut self, src: &mut dyn Source) -> Result<Next, String> {
        let fec = &mut self.fec;
        let Some(s) = self.stack.last_mut() else {
            return Ok(Next::Done);
        };
        loop {
            match s.step {
                Step::Opening(n) => {
                    s.step = if n > 1 {
                        Step::Opening(n - 1)
                    } else {
                        Step::Groups
                    };
                    return Ok(Next::Meta);
                }
                Step::Closing(n) => {
                    if n == 0 && s.passes_left <= 1 {
                        return Ok(Next::Done);
                    }
                    if n == 0 {
                        s.passes_left -= 1;
                        s.pass = Some(
                            Pass::new(&s.job.meta, s.job.blocks.as_deref(), s.interleave)
                                .map_err(|e| e.to_string())?,
                        );
                        s.step = Step::Opening(schedule::OPENING_META);
                        continue;
                    }
                    s.step = Step::Closing(n - 1);
                    return Ok(Next::Meta);
                }
                Step::Groups => {
                    if let Some(out) = s.order.get(s.at).copied() {
                        s.at += 1;
                        return Ok(match out {
                            Out::Meta => Next::Meta,
                            Out::Shard { slot, block, shard } => Next::Shard { block, shard, slot },
                        });
                    }
                    let Some(pass) = s.pass.as_mut() else {
                        s.step = Step::Closing(schedule::CLOSING_META);
                        continue;
                    };
                    let Some(group) = pass.next_group() else {
                        // the pass is over: the hash it computed goes into the closing metadata
                        if let Some(h) = s.hasher.take() {
                            s.job.meta.hash = h.finalize();
                            if !s.job.meta.hash_known() {
                                return Err(
                                    "the content hash is all zeros; this cannot travel".into()
                                );
                            }
                            s.meta_bytes = s.job.meta.encode();
                            s.hash_computed = true;
                        }
                        s.step = Step::Closing(schedule::CLOSING_META);
                        continue;
                    };
                    load_group(s, group, src, fec)?;
                    let bytes: u64 = s.group.iter().map(|b| b.len as u64).sum();
                    self.events.push_back(Event::Progress {
                        id: s.job.meta.id,
                        bytes,
                    });
                }
            }
        }
    }

    /// Seal shard `shard` of the group's block at `slot` into `buf`.
    fn shard(
        &mut self,
        src: &mut dyn Source,
        buf: &mut [u8],
        block: u64,
        shard: usize,
        slot: usize,
    ) -> Result<Option<usize>, String> {
        let Some(s) = self.stack.last() else {
            return Ok(None);
        };
        let Some(g) = s.pass.as_ref().map(|p| *p.geometry()) else {
            return Ok(None);
        };
        let size = g.shard_size;
        let Some(b) = s.group.get(slot) else {
            return Ok(None);
        };
        let len = SEALED_HEADER_LEN + size + TAG_LEN;
        let Some(frame) = buf.get_mut(..len) else {
            return Err(format!("a frame of {len} bytes does not fit the buffer"));
        };
        let payload = &mut frame[SEALED_HEADER_LEN..SEALED_HEADER_LEN + size];
        let id = s.job.meta.id;
        if shard < b.data_shards {
            let at = shard * size;
            match s.starts.get(slot).copied().flatten() {
                Some(start) => payload.copy_from_slice(&s.data[start + at..start + at + size]),
                None => match src.map(id, b.offset + at as u64, size) {
                    Some(m) => payload.copy_from_slice(m),
                    // the lender took its bytes back (a writer opened the file): read them
                    None => src.read_at(id, b.offset + at as u64, payload)?,
                },
            }
        } else {
            let p = (shard - b.data_shards) * size;
            let Some(parity) = s.parity.get(slot).and_then(|v| v.get(p..p + size)) else {
                return Ok(None);
            };
            payload.copy_from_slice(parity);
        }
        let sealed = if self.cfg.defer_seal {
            self.session
                .prepare(FrameKind::Shard, id, block as u32, shard as u16, frame)
        } else {
            self.session
                .seal(FrameKind::Shard, id, block as u32, shard as u16, frame)
        };
        Ok(sealed.map(|_| len))
    }
}

/// Read the group's data (lent by the source where it can, else into `data`, each block padded to
/// whole shards), fold it into the content hash, compute its parity and its order of frames.
fn load_group(
    s: &mut Sending,
    group: Vec<GroupBlock>,
    src: &mut dyn Source,
    fec: &mut BlockEncoder,
) -> Result<(), String> {
    let Some(pass) = s.pass.as_mut() else {
        return Ok(());
    };
    let size = pass.geometry().shard_size;
    let id = s.job.meta.id;
    src.begin_group(id);
    s.starts.clear();
    s.parity.resize_with(group.len(), Vec::new);
    let mut end = 0;
    let mut all_lent = true;
    for b in &group {
        let whole = b.data_shards * size;
        let lent = b.len == whole && src.map(id, b.offset, whole).is_some();
        all_lent &= lent;
        if lent {
            s.starts.push(None);
        } else {
            let start = end;
            end += whole;
            if s.data.len() < end {
                s.data.resize(end, 0);
            }
            src.read_at(id, b.offset, &mut s.data[start..start + b.len])
                .map_err(|e| format!("the object's content changed or cannot be read: {e}"))?;
            s.data[start + b.len..end].fill(0);
            s.starts.push(Some(start));
        }
    }
    // every block lent: the driver may hash and encode the group on threads of its own
    let mut done = false;
    if all_lent && !group.is_empty() {
        let mut work: Vec<BlockParity> = group
            .iter()
            .zip(s.parity.iter_mut())
            .map(|(b, parity)| BlockParity {
                offset: b.offset,
                len: b.data_shards * size,
                parity_shards: b.parity_shards,
                parity,
            })
            .collect();
        done = src.encode_group(id, size, &mut work, s.hasher.as_mut())?;
    }
    for (i, b) in group.iter().enumerate().filter(|_| !done) {
        let whole = b.data_shards * size;
        let data: &[u8] = match s.starts[i] {
            Some(start) => &s.data[start..start + whole],
            None => match src.map(id, b.offset, whole) {
                Some(m) => m,
                None => return Err("the object's content was taken back while it was read".into()),
            },
        };
        if let Some(h) = s.hasher.as_mut() {
            h.update(&data[..b.len]);
        }
        fec.encode(data, size, b.parity_shards, &mut s.parity[i])
            .map_err(|e| e.to_string())?;
    }
    s.order = pass.frames(&group).collect();
    s.at = 0;
    s.group = group;
    Ok(())
}

/// Seal `payload` as a frame at the start of `buf`.
fn seal(
    session: &mut SenderSession,
    buf: &mut [u8],
    kind: FrameKind,
    object: u64,
    block: u32,
    shard: u16,
    payload: &[u8],
) -> Option<usize> {
    let len = SEALED_HEADER_LEN + payload.len() + TAG_LEN;
    let frame = buf.get_mut(..len)?;
    frame[SEALED_HEADER_LEN..SEALED_HEADER_LEN + payload.len()].copy_from_slice(payload);
    session.seal(kind, object, block, shard, frame).map(|_| len)
}

/// Seal a payload as the endpoint does (tests that hand-make a frame).
#[cfg(test)]
pub(crate) fn seal_for_test(
    session: &mut Endpoint,
    buf: &mut [u8],
    kind: FrameKind,
    object: u64,
    payload: &[u8],
) -> usize {
    seal(&mut session.session, buf, kind, object, 0, 0, payload).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{drain, object, sender, sender_config, sender_with, what, Memory};
    use std::collections::HashMap;

    /// A source that computes each group's parity on two threads of its own and hashes it meanwhile
    /// (as diode-send's `Files` does for a mapped file), or declines (`Ok(false)`): the frames, the
    /// closing metadata with the hash computed during the pass included, are byte for byte those of
    /// the endpoint doing it all itself. The last group, whose short block is not lent whole, is the
    /// endpoint's in any case.
    #[test]
    fn groups_encoded_by_the_driver_give_the_frames_the_endpoint_gives() {
        struct Threaded {
            mem: Memory,
            decline: bool,
            groups: usize,
        }
        impl Source for Threaded {
            fn map(&mut self, id: u64, offset: u64, len: usize) -> Option<&[u8]> {
                self.mem.map(id, offset, len)
            }
            fn read_at(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
                self.mem.read_at(id, offset, buf)
            }
            fn encode_group(
                &mut self,
                id: u64,
                shard_size: usize,
                blocks: &mut [BlockParity<'_>],
                hasher: Option<&mut ContentHasher>,
            ) -> Result<bool, String> {
                if self.decline {
                    return Ok(false);
                }
                let content = self.mem.0.get(&id).ok_or("no object")?;
                let data: Vec<&[u8]> = blocks
                    .iter()
                    .map(|b| &content[b.offset as usize..b.offset as usize + b.len])
                    .collect();
                assert!(
                    blocks.iter().all(|b| b.len % shard_size == 0),
                    "whole shards"
                );
                let half = blocks.len().div_ceil(2);
                std::thread::scope(|t| {
                    for (bs, ds) in blocks.chunks_mut(half).zip(data.chunks(half)) {
                        t.spawn(move || {
                            let mut enc = BlockEncoder::new();
                            for (b, d) in bs.iter_mut().zip(ds) {
                                enc.encode(d, shard_size, b.parity_shards, b.parity)
                                    .unwrap();
                            }
                        });
                    }
                    if let Some(h) = hasher {
                        data.iter().for_each(|d| h.update(d));
                    }
                });
                self.groups += 1;
                Ok(true)
            }
        }
        let run = |decline: bool| {
            let (big, c) = object(10, "big.bin", 60_000, true);
            let mut src = Threaded {
                mem: Memory(HashMap::from([(10, c)])),
                decline,
                groups: 0,
            };
            let mut ep = sender(7);
            ep.send(Job::new(big, 1, false));
            let mut buf = vec![0u8; MAX_FRAME];
            let mut out = Vec::new();
            loop {
                match ep.poll_transmit(0, &mut src, &mut buf) {
                    Transmit::Frame(n) => out.push(buf[..n].to_vec()),
                    Transmit::Plain(_) | Transmit::Rekey => panic!("sealed frames only here"),
                    Transmit::Idle(_) => break,
                }
            }
            (out, src.groups)
        };
        let (inline, none) = run(true);
        let (threaded, groups) = run(false);
        assert_eq!(none, 0);
        // 235 blocks in groups of 2: 117 whole groups lent, the last (one short block) not
        assert_eq!(groups, 117);
        assert!(inline.len() > 1000);
        assert!(inline == threaded, "the frames differ");
    }

    /// With `defer_seal`, shard frames come out prepared (header written, payload in clear) and the
    /// driver seals them on threads of its own: the frames are then, byte for byte, those the endpoint
    /// seals itself. A sealer of another session refuses a prepared frame (it would not open).
    #[test]
    fn frames_sealed_by_the_driver_are_the_frames_the_endpoint_seals() {
        let (big, c) = object(10, "big.bin", 60_000, true);
        let mut src = Memory(HashMap::from([(10, c)]));
        let mut inline = sender(7);
        inline.send(Job::new(big.clone(), 1, false));
        let expected = drain(&mut inline, &mut src, 0);

        let cfg = Config {
            defer_seal: true,
            ..sender_config()
        };
        let mut ep = sender_with(7, cfg);
        ep.send(Job::new(big, 1, false));
        let sealer = ep.sealer();
        let mut buf = vec![0u8; MAX_FRAME];
        let mut out: Vec<(Vec<u8>, bool)> = Vec::new();
        loop {
            match ep.poll_transmit(0, &mut src, &mut buf) {
                Transmit::Frame(n) => out.push((buf[..n].to_vec(), false)),
                Transmit::Plain(n) => out.push((buf[..n].to_vec(), true)),
                Transmit::Rekey => panic!("no rekey expected"),
                Transmit::Idle(_) => break,
            }
        }
        let plain = out.iter().filter(|(_, p)| *p).count();
        assert!(plain > 40, "the shards come unsealed ({plain})");
        let stranger = sender(8).sealer();
        let (f, _) = out.iter().find(|(_, p)| *p).expect("a prepared frame");
        assert!(
            !stranger.seal(&mut f.clone()),
            "another session's sealer refuses"
        );
        // sealed on two other threads, as diode-send's sealing threads do
        let half = out.len().div_ceil(2);
        std::thread::scope(|t| {
            for part in out.chunks_mut(half) {
                let sealer = sealer.clone();
                t.spawn(move || {
                    for (f, p) in part.iter_mut().filter(|(_, p)| *p) {
                        assert!(sealer.seal(f));
                        *p = false;
                    }
                });
            }
        });
        let got: Vec<Vec<u8>> = out.into_iter().map(|(f, _)| f).collect();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the same bytes on the wire");
    }

    /// An envelope queued while a large file goes out is sent at the next frame, whole (its announce,
    /// metadata and shards), before the file goes on.
    #[test]
    fn an_urgent_job_goes_out_ahead_of_a_large_file() {
        let (big, big_c) = object(10, "big.bin", 20_000, true);
        let (env, env_c) = object(11, "a.envelope", 300, false);
        let mut src = Memory(HashMap::from([(10, big_c), (11, env_c)]));
        let mut ep = sender(1);
        ep.send(Job::new(big, 1, false));
        let mut buf = vec![0u8; MAX_FRAME];
        for _ in 0..40 {
            assert!(matches!(
                ep.poll_transmit(0, &mut src, &mut buf),
                Transmit::Frame(_)
            ));
        }
        ep.send(Job::new(env, 1, true));
        let frames: Vec<_> = drain(&mut ep, &mut src, 0)
            .iter()
            .map(|f| what(f))
            .collect();
        let first_big = frames
            .iter()
            .position(|f| f.1 == 10)
            .expect("the file goes on");
        let last_env = frames
            .iter()
            .rposition(|f| f.1 == 11)
            .expect("the envelope went");
        assert!(
            last_env < first_big,
            "the envelope went out whole before the file went on"
        );
        assert_eq!(
            frames[0].0,
            FrameKind::Announce,
            "a job opens with the announce"
        );
        let sent: Vec<_> = std::iter::from_fn(|| ep.poll_event())
            .filter_map(|e| match e {
                Event::Sent { meta, .. } => Some(meta),
                _ => None,
            })
            .collect();
        assert_eq!(sent.iter().map(|m| m.id).collect::<Vec<_>>(), vec![11, 10]);
        // the file's hash was computed during its pass and went out with it
        assert!(sent[1].hash_known());
    }

    /// A replay sends the named blocks only, opened and closed by metadata.
    #[test]
    fn a_replay_sends_only_the_named_blocks() {
        let (m, c) = object(20, "f.bin", 5_000, false);
        let mut src = Memory(HashMap::from([(20, c)]));
        let mut ep = sender(1);
        ep.send(Job::replay(m, Some(vec![(2, 3), (9, 9)]), false));
        let frames: Vec<_> = drain(&mut ep, &mut src, 0)
            .iter()
            .map(|f| what(f))
            .collect();
        let blocks: std::collections::BTreeSet<u32> = frames
            .iter()
            .filter(|f| f.0 == FrameKind::Shard)
            .map(|f| f.2)
            .collect();
        assert_eq!(blocks, [2, 3, 9].into());
        let metas = frames.iter().filter(|f| f.0 == FrameKind::Meta).count();
        assert!(metas >= schedule::OPENING_META + schedule::CLOSING_META);
    }

    /// An envelope is sent again 300 ms and 1.5 s after it went out; a large file's metadata (with the
    /// hash computed during its pass) likewise; in between the endpoint is idle until the next one.
    #[test]
    fn repeats_go_out_later_in_time() {
        let (env, env_c) = object(30, "b.envelope", 100, false);
        let (big, big_c) = object(31, "big.bin", 4_000, true);
        let mut src = Memory(HashMap::from([(30, env_c), (31, big_c)]));
        let mut ep = sender(1);
        ep.send(Job::new(env, 1, true));
        ep.send(Job::new(big, 1, false));
        drain(&mut ep, &mut src, 0);
        let mut buf = vec![0u8; MAX_FRAME];
        assert_eq!(ep.poll_transmit(0, &mut src, &mut buf), Transmit::Idle(300));
        let at_300: Vec<_> = drain(&mut ep, &mut src, 300)
            .iter()
            .map(|f| what(f))
            .collect();
        assert!(
            at_300.iter().any(|f| f.1 == 30 && f.0 == FrameKind::Shard),
            "the envelope again"
        );
        let metas_31 = at_300.iter().filter(|f| f.1 == 31).collect::<Vec<_>>();
        assert!(!metas_31.is_empty() && metas_31.iter().all(|f| f.0 == FrameKind::Meta));
        assert!(!ep.is_idle(), "one more repeat each is due at 1.5 s");
        drain(&mut ep, &mut src, 1500);
        assert!(ep.is_idle());
    }

    /// The rekey timer asks the driver for a session; the new one is announced at once.
    #[test]
    fn a_rekey_is_asked_for_and_the_new_session_announced() {
        let mut ep = sender(1);
        let mut src = Memory(HashMap::new());
        let mut buf = vec![0u8; MAX_FRAME];
        drain(&mut ep, &mut src, 0);
        let rekey_at = crate::testkit::sender_config().rekey_ms;
        assert_eq!(
            ep.poll_transmit(rekey_at, &mut src, &mut buf),
            Transmit::Rekey
        );
        let (me, to) = crate::testkit::keys();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2);
        let fresh = SenderSession::start(&me, to.public(), 2, 1, &mut rng).unwrap();
        let announce = fresh.announce().to_vec();
        ep.rekeyed(fresh, rekey_at);
        let Transmit::Frame(n) = ep.poll_transmit(rekey_at, &mut src, &mut buf) else {
            panic!("the announce goes out");
        };
        assert_eq!(
            buf[..n],
            announce[..],
            "the new session's announce, at once"
        );
        assert_eq!(ep.session().counter(), 2);
    }
}
