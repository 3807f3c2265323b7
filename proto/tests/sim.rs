//! The deterministic simulator: the real sender endpoint (`diode_proto::sender`) → a simulated one-way
//! channel → the real receiver endpoint (`diode_proto::receiver`), on a virtual clock, with seeded faults.
//! Each scenario draws from its seed a geometry, a few objects (envelopes among them, large ones whose
//! hash the sender computes during the pass) and a set of faults:
//!
//! loss, loss bursts longer than an interleaving group, reordering, duplication, corrupted datagrams,
//! foreign datagrams (noise and an untrusted sender's session), floods of forged and replayed announces,
//! an older version of a file withheld on the link and released after the newer one, a queue limit with
//! a receiver that stalls, a slow disk, a full disk, the receiver or the sender crashing and restarting
//! from what it persisted, rekeys mid-object, a receiver that joins late, a memory bound small enough to
//! set blocks aside, the bound on objects in progress, and expiry.
//!
//! Every scenario asserts: no wrong byte is ever published; while faults last, every block the receiver
//! counts as done holds exactly the sent bytes (so its gap report names exactly what is missing); the
//! admin's replay of what the gap report names (or of the whole object where the receiver does not know
//! it) over a clean link completes it; in the end each object is delivered exactly once, byte-exact, and
//! the older version withheld on the link is refused, never published; memory and the early-shard buffer
//! stay within their bounds.
//!
//! `cargo test --release -p diode-proto --test sim` runs 2,000 scenarios (CI) and ends with the line
//! `simulated N scenarios (K fault kinds), F failed`. `SIM_SCENARIOS=100000` runs more; a failing scenario
//! prints its seed, and `SIM_SEED=<seed>` runs that one alone.

use diode_proto::fec::Geometry;
use diode_proto::frame::SealedHeader;
use diode_proto::hash::content_hash;
use diode_proto::object::{Assembly, AssemblyState, ObjectKind, ObjectMeta, HASH_PENDING};
use diode_proto::receiver::{self, Persisted, Spill, VerifyError};
use diode_proto::reception::{Limits, ObjectKey};
use diode_proto::sender::{self, Job, JobKind, Source, Transmit, MAX_FRAME};
use diode_proto::session::Opener;
use diode_proto::{DropReason, FrameKind, KeyId, SecretKey, SenderSession, SessionTable};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::io::Write;

const SCENARIOS: u64 = 2000;
/// The simulated link's rate: an object of 40 kB takes about 0.1 s a pass.
const RATE_BPS: u64 = 4_000_000;
/// Virtual time a phase may take at most (µs) before the scenario fails as stuck.
const PHASE_MAX_US: u64 = 600_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fault {
    Loss,
    Burst,
    Reorder,
    Duplicate,
    Corrupt,
    Foreign,
    ForgedAnnounces,
    Withhold,
    QueueLimit,
    SlowDisk,
    FullDisk,
    ReceiverCrash,
    SenderCrash,
    Rekey,
    LateJoin,
    SmallMemory,
    Limits,
    Expiry,
}

const ALL: [Fault; 18] = [
    Fault::Loss,
    Fault::Burst,
    Fault::Reorder,
    Fault::Duplicate,
    Fault::Corrupt,
    Fault::Foreign,
    Fault::ForgedAnnounces,
    Fault::Withhold,
    Fault::QueueLimit,
    Fault::SlowDisk,
    Fault::FullDisk,
    Fault::ReceiverCrash,
    Fault::SenderCrash,
    Fault::Rekey,
    Fault::LateJoin,
    Fault::SmallMemory,
    Fault::Limits,
    Fault::Expiry,
];

/// One object of a scenario: what the sender is given, and its bytes.
#[derive(Clone)]
struct Obj {
    meta: ObjectMeta,
    content: Vec<u8>,
    urgent: bool,
}

struct Scenario {
    seed: u64,
    faults: BTreeSet<Fault>,
    objects: Vec<Obj>,
    /// The older version, withheld on the link until the newer one is delivered (Withhold).
    withheld: Option<u64>,
    interleave: usize,
    passes: u32,
    loss: f64,
}

impl Scenario {
    fn has(&self, f: Fault) -> bool {
        self.faults.contains(&f)
    }

    /// Scenario `n` of a run from `seed`: fault `n mod K` always, the others at random.
    fn new(seed: u64, must: Option<Fault>) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut faults: BTreeSet<Fault> = ALL
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.2))
            .collect();
        faults.extend(must);
        let g = loop {
            let half = rng.random_range(16..=128usize);
            let d = rng.random_range(1..=12usize);
            let p = rng.random_range(0..=6usize);
            if let Ok(g) = Geometry::new(half * 2, d, p) {
                break g;
            }
        };
        let count = rng.random_range(1..=4usize);
        let base = 1_000_000 + (seed % 1000) * 10_000;
        let mut objects = Vec::new();
        for i in 0..count {
            let size = match rng.random_range(0..10u32) {
                0 => 0,
                1 => g.block_bytes() * rng.random_range(1..=4u64),
                2 => g.block_bytes() * rng.random_range(1..=4u64) + 1,
                3..=6 => rng.random_range(1..=4096u64),
                _ => rng.random_range(4097..=40_000u64),
            };
            let urgent = size <= 2048 && rng.random_bool(0.3);
            objects.push(object(
                &mut rng,
                base + i as u64 * 7,
                format!("dir/f{i}.bin"),
                size,
                g,
                urgent,
            ));
        }
        let mut withheld = None;
        if faults.contains(&Fault::Withhold) {
            let size = rng.random_range(1..=8000u64);
            let older = object(
                &mut rng,
                base + 500,
                "dir/versioned.bin".into(),
                size,
                g,
                false,
            );
            let size = rng.random_range(1..=8000u64);
            let newer = object(
                &mut rng,
                base + 600,
                "dir/versioned.bin".into(),
                size,
                g,
                false,
            );
            withheld = Some(older.meta.id);
            objects.push(older);
            objects.push(newer);
        }
        Scenario {
            seed,
            interleave: rng.random_range(1..=4),
            passes: rng.random_range(1..=2),
            loss: rng.random_range(0.01..0.15),
            faults,
            objects,
            withheld,
        }
    }
}

/// An object's bytes and metadata; a large one leaves its hash to the sender's pass.
fn object(rng: &mut StdRng, id: u64, name: String, size: u64, g: Geometry, urgent: bool) -> Obj {
    let mut content = vec![0u8; size as usize];
    rng.fill_bytes(&mut content);
    let meta = ObjectMeta {
        id,
        name: if urgent {
            format!("{name}.envelope")
        } else {
            name
        },
        size,
        hash: if size > 2048 {
            HASH_PENDING
        } else {
            content_hash(&content)
        },
        kind: if urgent {
            ObjectKind::Envelope
        } else {
            ObjectKind::File
        },
        shard_size: g.shard_size as u32,
        data_shards: g.data_shards as u16,
        parity_shards: g.parity_shards as u16,
        mtime: 0,
    };
    Obj {
        meta,
        content,
        urgent,
    }
}

// ---------------------------------------------------------------------------------------------------
// The sending side
// ---------------------------------------------------------------------------------------------------

/// The objects' content, lent to the sender endpoint (`lend`) or copied out of it.
struct Contents {
    by_id: HashMap<u64, Vec<u8>>,
    lend: bool,
}

impl Source for Contents {
    fn map(&mut self, id: u64, offset: u64, len: usize) -> Option<&[u8]> {
        let c = self.by_id.get(&id).filter(|_| self.lend)?;
        c.get(offset as usize..offset as usize + len)
    }

    fn read_at(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let c = self.by_id.get(&id).ok_or("no such object")?;
        let part = c
            .get(offset as usize..offset as usize + buf.len())
            .ok_or("read past the end")?;
        buf.copy_from_slice(part);
        Ok(())
    }
}

struct SimSender {
    ep: sender::Endpoint,
    key: SecretKey,
    to: diode_proto::PublicKey,
    counter: u64,
    rng: StdRng,
    next_us: u64,
    /// Objects the sender finished (their metadata with the hash).
    sent: HashMap<u64, ObjectMeta>,
    /// Every announce it sent (for replaying old ones).
    announces: Vec<Vec<u8>>,
}

impl SimSender {
    fn start(
        sc: &Scenario,
        key: SecretKey,
        to: diode_proto::PublicKey,
        counter: u64,
        now_us: u64,
        rng: StdRng,
    ) -> Self {
        let mut rng = rng;
        let session = SenderSession::start(&key, &to, counter, 1_800_000_000, &mut rng)
            .expect("a session starts");
        let announces = vec![session.announce().to_vec()];
        let cfg = sender::Config {
            interleave: sc.interleave,
            announce_ms: 200,
            heartbeat_ms: 500,
            // a new session every 0.7 s: several within an object at this rate, and within the receiver's
            // rate of new sessions (4 a second)
            rekey_ms: if sc.has(Fault::Rekey) { 700 } else { 3_600_000 },
            rate_bps: RATE_BPS,
            repeats: vec![300, 1500],
            repeat_small: true,
            // both ways of sealing: in the endpoint, or left to the driver (as diode-send does)
            defer_seal: rng.random_bool(0.5),
        };
        SimSender {
            ep: sender::Endpoint::new(cfg, session, now_us / 1000),
            key,
            to,
            counter,
            rng,
            next_us: now_us,
            sent: HashMap::new(),
            announces,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Channel {
    inflight: BinaryHeap<Reverse<(u64, u64, Vec<u8>)>>,
    seq: u64,
    withheld: Vec<Vec<u8>>,
    burst_left: u32,
    dropped: u64,
}

impl Channel {
    fn put(&mut self, at_us: u64, frame: Vec<u8>) {
        self.seq += 1;
        self.inflight.push(Reverse((at_us, self.seq, frame)));
    }

    fn next_arrival(&self) -> Option<u64> {
        self.inflight.peek().map(|Reverse((t, _, _))| *t)
    }
}

// ---------------------------------------------------------------------------------------------------
// The receiving side: the driver a `diode-recv` is, with a disk in memory
// ---------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Disk {
    files: HashMap<ObjectKey, Vec<u8>>,
    full: bool,
}

impl Spill for Disk {
    fn write_at(&mut self, key: ObjectKey, offset: u64, bytes: &[u8]) -> Result<(), String> {
        if self.full {
            return Err("No space left on device".into());
        }
        let f = self.files.get_mut(&key).ok_or("no such file")?;
        write(f, offset, bytes);
        Ok(())
    }

    fn read_at(&mut self, key: ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let f = self.files.get(&key).ok_or("no such file")?;
        let mut b = vec![0u8; len];
        let start = (offset as usize).min(f.len());
        let end = (offset as usize + len).min(f.len());
        b[..end - start].copy_from_slice(&f[start..end]);
        Ok(b)
    }
}

fn write(f: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if f.len() < end {
        f.resize(end, 0);
    }
    f[offset as usize..end].copy_from_slice(bytes);
}

enum Pending {
    Written(ObjectKey, u32, Vec<u8>, Result<(), String>),
    Verified(ObjectKey, Result<(), VerifyError>),
}

struct SimReceiver {
    ep: receiver::Endpoint,
    disk: Disk,
    /// Disk work in progress: done at its time.
    pending: Vec<(u64, Pending)>,
    /// What survives a crash: saved partial states, counters, delivered objects.
    saved: HashMap<ObjectKey, AssemblyState>,
    counters: HashMap<KeyId, u64>,
    delivered: Vec<(ObjectKey, Option<String>)>,
    refused: Vec<ObjectKey>,
    down_until: u64,
    /// The driver's Reed-Solomon decoder, for blocks the endpoint left undecoded.
    decoder: diode_proto::fec::Decoder,
    /// Open sealed frames ahead of the endpoint, as diode-recv's opening threads do, with openers
    /// taken from the session table after the frame before (so the first frames of a new session
    /// find none and go to the endpoint unopened, as they can on those threads).
    open_ahead: bool,
    openers: (u64, HashMap<u64, Opener>),
}

/// What the scenario saw, to judge it.
#[derive(Default)]
struct Seen {
    delivered: HashMap<u64, u32>,
    refused: HashMap<u64, &'static str>,
    failures: Vec<String>,
}

struct World<'a> {
    sc: &'a Scenario,
    rng: StdRng,
    now: u64,
    snd: SimSender,
    src: Contents,
    ch: Channel,
    rx: SimReceiver,
    rcv_key: SecretKey,
    rcv_cfg: receiver::Config,
    seen: Seen,
    by_id: HashMap<u64, Obj>,
    /// Fault switches (phase 2 turns them off).
    faulty: bool,
    join_us: u64,
    full_disk: (u64, u64),
    crash_rx_at: Option<u64>,
    crash_tx_at: Option<u64>,
    next_noise_us: u64,
    stall: (u64, u64),
    foreign: SenderSession,
    buf: Vec<u8>,
}

impl World<'_> {
    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    fn fault(&self, f: Fault) -> bool {
        self.faulty && self.sc.has(f)
    }

    /// The sender's next frame, into the channel with the channel's faults.
    fn sender_step(&mut self) {
        let now = self.now_ms();
        match self.snd.ep.poll_transmit(now, &mut self.src, &mut self.buf) {
            Transmit::Plain(n) => {
                // sealed as diode-send's sealing threads do, with the session's sealer
                let mut frame = self.buf[..n].to_vec();
                if !self.snd.ep.sealer().seal(&mut frame) {
                    self.seen
                        .failures
                        .push("a prepared frame could not be sealed".to_string());
                }
                self.snd.next_us = self.now + n as u64 * 8 * 1_000_000 / RATE_BPS;
                self.transmit(frame);
            }
            Transmit::Frame(n) => {
                let frame = self.buf[..n].to_vec();
                if diode_proto::frame::peek_kind(&frame) == Ok(FrameKind::Announce) {
                    self.snd.announces.push(frame.clone());
                }
                self.snd.next_us = self.now + n as u64 * 8 * 1_000_000 / RATE_BPS;
                self.transmit(frame);
            }
            Transmit::Rekey => {
                self.snd.counter += 1;
                match SenderSession::start(
                    &self.snd.key,
                    &self.snd.to,
                    self.snd.counter,
                    1_800_000_000,
                    &mut self.snd.rng,
                ) {
                    Ok(s) => self.snd.ep.rekeyed(s, now),
                    Err(_) => self.snd.ep.rekey_failed(now),
                }
            }
            Transmit::Idle(until) => {
                self.snd.next_us = (until * 1000).max(self.now + 1000);
            }
        }
        while let Some(e) = self.snd.ep.poll_event() {
            match e {
                sender::Event::Sent {
                    meta,
                    kind: JobKind::New,
                } => {
                    if meta.hash != content_hash(&self.by_id[&meta.id].content) {
                        self.seen
                            .failures
                            .push(format!("the sender's hash of object {} is wrong", meta.id));
                    }
                    self.snd.sent.insert(meta.id, meta);
                }
                sender::Event::Failed { meta, why, .. } => self
                    .seen
                    .failures
                    .push(format!("the sender failed object {}: {why}", meta.id)),
                _ => {}
            }
        }
    }

    fn transmit(&mut self, mut frame: Vec<u8>) {
        {
            let kind = diode_proto::frame::peek_kind(&frame);
            let header = SealedHeader::parse(&frame);
            if let (Some(w), Ok(FrameKind::Meta | FrameKind::Shard), Ok(h)) =
                (self.sc.withheld, kind, header)
            {
                if h.object == w && self.withholding() {
                    self.ch.withheld.push(frame);
                    return;
                }
            }
        }
        if self.fault(Fault::Loss) && self.rng.random_bool(self.sc.loss) {
            return;
        }
        if self.fault(Fault::Burst) {
            if self.ch.burst_left == 0 && self.rng.random_bool(0.002) {
                self.ch.burst_left = self.rng.random_range(50..400);
            }
            if self.ch.burst_left > 0 {
                self.ch.burst_left -= 1;
                return;
            }
        }
        if self.fault(Fault::QueueLimit) && self.ch.inflight.len() >= 64 {
            self.ch.dropped += 1;
            return;
        }
        if self.fault(Fault::Corrupt) && self.rng.random_bool(0.02) {
            let i = self.rng.random_range(0..frame.len());
            frame[i] ^= 1 << self.rng.random_range(0..8);
        }
        let mut at = self.now + 200;
        if self.fault(Fault::Reorder) {
            at += self.rng.random_range(0..3000);
        }
        if self.fault(Fault::Duplicate) && self.rng.random_bool(0.05) {
            let later = at + self.rng.random_range(0..5000);
            self.ch.put(later, frame.clone());
        }
        self.ch.put(at, frame);
    }

    /// The older version is held back until the newer one is delivered.
    fn withholding(&self) -> bool {
        let Some(w) = self.sc.withheld else {
            return false;
        };
        let newer = self
            .sc
            .objects
            .iter()
            .find(|o| o.meta.name == self.by_id[&w].meta.name && o.meta.id != w);
        newer.is_some_and(|n| !self.seen.delivered.contains_key(&n.meta.id))
    }

    fn release_withheld(&mut self) {
        for f in std::mem::take(&mut self.ch.withheld) {
            let at = self.now + 200;
            self.ch.put(at, f);
        }
    }

    /// Datagrams that never came from our sender.
    fn noise(&mut self) {
        if self.fault(Fault::ForgedAnnounces) {
            let genuine = self.snd.announces.last().cloned().unwrap_or_default();
            let mut f = genuine.clone();
            if f.len() > 60 {
                match self.rng.random_range(0..3) {
                    // another encapsulated key under the genuine ids and MAC
                    0 => self.rng.fill_bytes(&mut f[20..52]),
                    // a higher counter in clear
                    1 => {
                        let at = f.len() - 40;
                        f[at] = f[at].wrapping_add(1);
                    }
                    // a recorded announce of an earlier session
                    _ => {
                        let i = self.rng.random_range(0..self.snd.announces.len());
                        f = self.snd.announces[i].clone();
                    }
                }
            }
            let at = self.now + 100;
            self.ch.put(at, f);
        }
        if self.fault(Fault::Foreign) {
            let f = match self.rng.random_range(0..3) {
                0 => {
                    let mut b = vec![0u8; self.rng.random_range(0..1500)];
                    self.rng.fill_bytes(&mut b);
                    b
                }
                1 => self.foreign.announce().to_vec(),
                _ => self
                    .foreign
                    .seal_payload(FrameKind::Shard, 7, 0, 0, &[1; 64])
                    .unwrap_or_default(),
            };
            let at = self.now + 100;
            self.ch.put(at, f);
        }
        self.next_noise_us = self.now + 1000;
    }

    /// Datagrams that arrived by now, into the receiver (unless it is down, stalled or not yet there).
    fn deliver_arrived(&mut self) {
        while self.ch.next_arrival().is_some_and(|t| t <= self.now) {
            let Some(Reverse((_, _, mut f))) = self.ch.inflight.pop() else {
                break;
            };
            if self.now < self.rx.down_until
                || (self.fault(Fault::LateJoin) && self.now < self.join_us)
            {
                continue;
            }
            let now = self.now_ms();
            let opener = SealedHeader::parse(&f)
                .ok()
                .and_then(|h| self.rx.openers.1.get(&h.session));
            match opener {
                Some(o) if self.rx.open_ahead => {
                    if o.open(&mut f) {
                        self.rx.ep.handle_opened(&mut f, now, &mut self.rx.disk);
                    } else {
                        self.rx.ep.handle_noise(DropReason::BadSeal, 1);
                    }
                }
                _ => self.rx.ep.handle_datagram(&mut f, now, &mut self.rx.disk),
            }
            let v = self.rx.ep.table().version();
            if self.rx.open_ahead && v != self.rx.openers.0 {
                self.rx.openers = (v, self.rx.ep.table().openers());
            }
            self.check_bounds();
            self.receiver_events();
        }
    }

    fn check_bounds(&mut self) {
        let shard = self
            .sc
            .objects
            .first()
            .map_or(0, |o| o.meta.shard_size as usize);
        let per_block = self.sc.objects.first().map_or(0, |o| {
            (o.meta.data_shards + o.meta.parity_shards) as usize + 8
        });
        let cap = self.rcv_cfg.memory_bytes + (512 + per_block) * shard;
        let used = self.rx.ep.memory_bytes();
        if used > cap {
            self.seen.failures.push(format!(
                "{used} bytes of blocks in memory, above the bound of {cap}"
            ));
        }
        if self.rx.ep.early_frames() > self.rcv_cfg.pending_frames {
            self.seen
                .failures
                .push("the early-shard buffer grew past its bound".into());
        }
    }

    /// What the receiver endpoint asks, carried out as `receiver/src/receive.rs` does, on the disk in
    /// memory.
    fn receiver_events(&mut self) {
        let now_us = self.now;
        let delay = if self.fault(Fault::SlowDisk) {
            self.rng.random_range(1000..40_000)
        } else {
            0
        };
        while let Some(e) = self.rx.ep.poll_event() {
            match e {
                receiver::Event::ObjectStarted { key, meta, .. } => {
                    if self.rx.disk.full {
                        self.rx.ep.handle_start_failed(key);
                        continue;
                    }
                    self.rx.disk.files.insert(key, Vec::new());
                    if let Ok(a) = Assembly::new(meta) {
                        self.rx.saved.insert(key, a.state());
                    }
                }
                receiver::Event::WriteBlock {
                    key,
                    block,
                    offset,
                    mut buf,
                    start,
                    len,
                    recover,
                } => {
                    // the decoding the endpoint left to its driver (defer_decode), as the writer does
                    let rebuilt = match recover {
                        Some(r) => r
                            .rebuild(&mut buf[start..], &mut self.rx.decoder)
                            .map_err(|e| format!("cannot rebuild the block: {e}")),
                        None => Ok(()),
                    };
                    let result = if let Err(e) = rebuilt {
                        Err(e)
                    } else if self.rx.disk.full {
                        Err("No space left on device".to_string())
                    } else if let Some(f) = self.rx.disk.files.get_mut(&key) {
                        write(f, offset, &buf[start..start + len]);
                        Ok(())
                    } else {
                        Err("no such file".into())
                    };
                    self.rx
                        .pending
                        .push((now_us + delay, Pending::Written(key, block, buf, result)));
                }
                receiver::Event::Verify {
                    key, hash, size, ..
                } => {
                    let f = self.rx.disk.files.get(&key).cloned().unwrap_or_default();
                    let mut data = f;
                    data.resize(size as usize, 0);
                    let r = if content_hash(&data) == hash {
                        Ok(())
                    } else {
                        Err(VerifyError::Mismatch("content hash mismatch".into()))
                    };
                    self.rx
                        .pending
                        .push((now_us + delay, Pending::Verified(key, r)));
                }
                receiver::Event::Deliver { key, meta } => {
                    let mut data = self.rx.disk.files.remove(&key).unwrap_or_default();
                    data.resize(meta.size as usize, 0);
                    let want = self.by_id.get(&key.1).map(|o| &o.content);
                    if want != Some(&data) {
                        self.seen
                            .failures
                            .push(format!("object {} published with wrong bytes", key.1));
                    }
                    *self.seen.delivered.entry(key.1).or_default() += 1;
                    self.rx.saved.remove(&key);
                    let name = (meta.kind == ObjectKind::File).then(|| meta.name.clone());
                    self.rx.delivered.push((key, name));
                    let now = self.now_ms();
                    self.rx.ep.handle_delivered(key, Ok(()), now);
                }
                receiver::Event::Reset { key, .. } => {
                    if let Some(f) = self.rx.disk.files.get_mut(&key) {
                        f.clear();
                    }
                }
                receiver::Event::SaveProgress { key, state } => {
                    self.rx.saved.insert(key, state);
                }
                receiver::Event::SaveCounters { highest } => {
                    self.rx.counters = highest.into_iter().collect();
                }
                receiver::Event::Refused { key, code, .. } => {
                    self.seen.refused.insert(key.1, code);
                    self.rx.refused.push(key);
                    self.rx.disk.files.remove(&key);
                    self.rx.saved.remove(&key);
                }
                receiver::Event::Expired { key, .. } => {
                    self.rx.disk.files.remove(&key);
                    self.rx.saved.remove(&key);
                }
                receiver::Event::MetaRefused { key, why } => self
                    .seen
                    .failures
                    .push(format!("metadata of object {} refused: {why}", key.1)),
                _ => {}
            }
        }
    }

    fn disk_done(&mut self) {
        let now_us = self.now;
        let (done, not): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rx.pending)
            .into_iter()
            .partition(|(t, _)| *t <= now_us);
        self.rx.pending = not;
        let now = self.now_ms();
        for (_, p) in done {
            match p {
                Pending::Written(key, block, buf, r) => {
                    self.rx.ep.handle_written(key, block, buf, r, now)
                }
                Pending::Verified(key, r) => self.rx.ep.handle_verified(key, r, now),
            }
            self.receiver_events();
        }
    }

    /// A receiver crash: memory and disk work in flight are lost; a new endpoint is built from what was
    /// persisted (partial states, counters, delivered objects) and the data on disk.
    fn crash_receiver(&mut self) {
        self.rx.pending.clear();
        let partials = self
            .rx
            .saved
            .iter()
            .filter_map(|(k, st)| Some((k.0, Assembly::from_state(st.clone()).ok()?)))
            .collect();
        let persisted = Persisted {
            partials,
            delivered: self.rx.delivered.iter().rev().cloned().collect(),
            refused: self.rx.refused.clone(),
        };
        let table = SessionTable::new(
            self.rcv_key.clone(),
            vec![self.snd.key.public().clone()],
            self.rx.counters.clone(),
        );
        self.rx.ep = receiver::Endpoint::new(self.rcv_cfg.clone(), table, persisted, self.now_ms());
        self.rx.openers = (0, HashMap::new());
        self.rx.down_until = self.now + 50_000;
    }

    /// A sender crash: a new session with a higher counter; objects not yet sent whole are sent again
    /// (the journal keeps them), under the same ids.
    fn crash_sender(&mut self) {
        let rng = StdRng::seed_from_u64(self.rng.next_u64());
        let counter = self.snd.counter + 1;
        let mut s = SimSender::start(
            self.sc,
            self.snd.key.clone(),
            self.snd.to.clone(),
            counter,
            self.now,
            rng,
        );
        s.sent = std::mem::take(&mut self.snd.sent);
        s.announces = std::mem::take(&mut self.snd.announces);
        for o in &self.sc.objects {
            if !s.sent.contains_key(&o.meta.id) {
                s.ep.send(Job::new(o.meta.clone(), self.sc.passes, o.urgent));
            }
        }
        self.snd = s;
    }

    fn step(&mut self) {
        if self.faulty {
            if self.crash_rx_at.is_some_and(|t| t <= self.now) {
                self.crash_rx_at = None;
                self.crash_receiver();
            }
            if self.crash_tx_at.is_some_and(|t| t <= self.now) {
                self.crash_tx_at = None;
                self.crash_sender();
            }
            self.rx.disk.full = self.fault(Fault::FullDisk)
                && (self.full_disk.0..self.full_disk.1).contains(&self.now);
            if self.next_noise_us <= self.now {
                self.noise();
            }
        } else {
            self.rx.disk.full = false;
        }
        if !self.ch.withheld.is_empty() && !self.withholding() {
            self.release_withheld();
        }
        if self.snd.next_us <= self.now {
            self.sender_step();
        }
        let stalled = self.fault(Fault::QueueLimit)
            && (self.stall.0..self.stall.1).contains(&(self.now % 200_000));
        if !stalled {
            self.deliver_arrived();
        }
        self.disk_done();
        let now = self.now_ms();
        if now >= self.rx.ep.poll_timeout() {
            self.rx.ep.handle_timeout(now, &mut self.rx.disk);
            self.receiver_events();
        }
        // the next moment anything happens
        let mut next = self.snd.next_us.min(self.rx.ep.poll_timeout() * 1000);
        if let Some(t) = self.ch.next_arrival() {
            next = next.min(t);
        }
        if let Some(t) = self.rx.pending.iter().map(|(t, _)| *t).min() {
            next = next.min(t);
        }
        if self.faulty && (self.sc.has(Fault::ForgedAnnounces) || self.sc.has(Fault::Foreign)) {
            next = next.min(self.next_noise_us);
        }
        self.now = next.max(self.now + 1);
    }

    /// Run until nothing is left to send, in flight, or being written (or the virtual time runs out).
    fn settle(&mut self) -> Result<(), String> {
        let until = self.now + PHASE_MAX_US;
        loop {
            self.step();
            let quiet =
                self.snd.ep.is_idle() && self.ch.inflight.is_empty() && self.rx.pending.is_empty();
            // (the older version stays withheld until the newer one is delivered, in a later phase if
            // need be)
            if quiet {
                return Ok(());
            }
            if self.now > until {
                return Err("the link never went quiet".into());
            }
        }
    }

    fn run_for(&mut self, us: u64) {
        let until = self.now + us;
        while self.now < until {
            self.step();
        }
    }
}

/// Run one scenario; Err says what went wrong.
fn run(sc: &Scenario) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(sc.seed ^ 0x5eed);
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    let mut c = [0u8; 32];
    rng.fill_bytes(&mut a);
    rng.fill_bytes(&mut b);
    rng.fill_bytes(&mut c);
    let (snd_key, rcv_key, stranger) = (
        SecretKey::from_seed(&a),
        SecretKey::from_seed(&b),
        SecretKey::from_seed(&c),
    );
    let rcv_cfg = receiver::Config {
        stall_ms: 1000,
        expire_ms: if sc.has(Fault::Expiry) {
            2500
        } else {
            3_600_000
        },
        pending_ms: 2000,
        link_down_ms: 3000,
        memory_bytes: if sc.has(Fault::SmallMemory) {
            4096
        } else {
            64 << 20
        },
        limits: Limits {
            max_objects: if sc.has(Fault::Limits) {
                rng.random_range(1..=2)
            } else {
                4096
            },
            max_bytes: 1 << 40,
        },
        pending_frames: if sc.has(Fault::SmallMemory) { 16 } else { 2048 },
        // both ways of decoding: in the endpoint, or left to the driver (as diode-recv does)
        defer_decode: rng.random_bool(0.5),
    };
    let table = SessionTable::new(
        rcv_key.clone(),
        vec![snd_key.public().clone()],
        HashMap::new(),
    );
    let mut srng = StdRng::seed_from_u64(rng.next_u64());
    let foreign = SenderSession::start(&stranger, rcv_key.public(), 5, 1_800_000_000, &mut srng)
        .map_err(|e| e.to_string())?;
    let snd = SimSender::start(
        sc,
        snd_key,
        rcv_key.public().clone(),
        1000,
        0,
        StdRng::seed_from_u64(rng.next_u64()),
    );
    let by_id: HashMap<u64, Obj> = sc.objects.iter().map(|o| (o.meta.id, o.clone())).collect();
    let mut w = World {
        sc,
        now: 0,
        snd,
        src: Contents {
            by_id: sc
                .objects
                .iter()
                .map(|o| (o.meta.id, o.content.clone()))
                .collect(),
            lend: rng.random_bool(0.5),
        },
        ch: Channel::default(),
        rx: SimReceiver {
            ep: receiver::Endpoint::new(rcv_cfg.clone(), table, Persisted::default(), 0),
            disk: Disk::default(),
            pending: Vec::new(),
            saved: HashMap::new(),
            counters: HashMap::new(),
            delivered: Vec::new(),
            refused: Vec::new(),
            down_until: 0,
            // solving for few lost shards (the default) or the crate's decoder always
            decoder: diode_proto::fec::Decoder::new(if rng.random_bool(0.5) {
                diode_proto::fec::FEW
            } else {
                0
            }),
            open_ahead: rng.random_bool(0.5),
            openers: (0, HashMap::new()),
        },
        rcv_key,
        rcv_cfg,
        seen: Seen::default(),
        by_id,
        faulty: true,
        join_us: rng.random_range(0..150_000),
        full_disk: {
            let a = rng.random_range(0..100_000);
            (a, a + rng.random_range(10_000..200_000))
        },
        crash_rx_at: sc
            .has(Fault::ReceiverCrash)
            .then(|| rng.random_range(1_000..150_000)),
        crash_tx_at: sc
            .has(Fault::SenderCrash)
            .then(|| rng.random_range(1_000..150_000)),
        next_noise_us: 0,
        stall: {
            let a = rng.random_range(0..150_000);
            (a, a + 30_000)
        },
        foreign,
        buf: vec![0u8; MAX_FRAME],
        rng,
    };
    for o in &sc.objects {
        w.snd.ep.send(Job::new(o.meta.clone(), sc.passes, o.urgent));
    }
    // Phase 1: everything sent once over the faulty link.
    w.settle()?;
    // Long enough without frames that every unfinished object is reported incomplete (and, with
    // Expiry, expired).
    let wait = (w.rcv_cfg.stall_ms.max(if sc.has(Fault::Expiry) {
        w.rcv_cfg.expire_ms
    } else {
        0
    }) + 2000)
        * 1000;
    w.run_for(wait);
    w.faulty = false;
    check_done_blocks(&mut w);
    if !w.seen.failures.is_empty() {
        return Err(w.seen.failures.join("; "));
    }
    // Phase 2: the admin replays what the gap report names, over a clean link, until all is in.
    let mut incomplete_at_report: Vec<u64> = Vec::new();
    for round in 0..4 {
        let mut replays = 0;
        for o in &sc.objects {
            let id = o.meta.id;
            if w.seen.delivered.contains_key(&id) || w.seen.refused.contains_key(&id) {
                continue;
            }
            // the older version is replayed (as an attacker would release it) only once the newer
            // one is in: before, it would rightly arrive first
            if Some(id) == sc.withheld && w.withholding() {
                continue;
            }
            let meta = w
                .snd
                .sent
                .get(&id)
                .cloned()
                .unwrap_or_else(|| o.meta.clone());
            let key = (w.snd.key.public().id(), id);
            let blocks = w.rx.ep.object(key).map(|r| {
                let missing = r.asm.missing();
                // every block in but the closing metadata (the hash) lost: any block brings it
                if missing.is_empty() {
                    vec![(0, 0)]
                } else {
                    missing
                }
            });
            if round == 0 && blocks.is_some() {
                incomplete_at_report.push(id);
            }
            w.snd.ep.send_next(Job::replay(meta, blocks, false));
            replays += 1;
        }
        if replays == 0 {
            break;
        }
        w.snd.next_us = w.now;
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("round {round} at {} us: {replays} replays; drops {:?}; link {:?}; delivered {:?} refused {:?} withholding {}", w.now, w.rx.ep.drops(), w.rx.ep.link(w.snd.key.public().id()).map(|l| (l.last, l.up)), w.seen.delivered, w.seen.refused, w.withholding());
            for (k, o) in w.rx.ep.objects() {
                eprintln!(
                    "  {} missing {:?} hash {}",
                    k.1,
                    o.asm.missing(),
                    o.asm.meta.hash_known()
                );
            }
        }
        w.settle()?;
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!(
                "after round {round} at {} us: drops {:?}",
                w.now,
                w.rx.ep.drops()
            );
            for (k, o) in w.rx.ep.objects() {
                eprintln!(
                    "  {} missing {:?} hash {}",
                    k.1,
                    o.asm.missing(),
                    o.asm.meta.hash_known()
                );
            }
        }
        w.run_for(2_000_000);
        if round == 0 {
            for id in &incomplete_at_report {
                if !w.seen.delivered.contains_key(id) && !w.seen.refused.contains_key(id) {
                    let key = (w.snd.key.public().id(), *id);
                    let state = w.rx.ep.object(key).map(|r| {
                        format!(
                            "missing {:?}, hash known {}, error {:?}",
                            r.asm.missing(),
                            r.asm.meta.hash_known(),
                            r.error
                        )
                    });
                    return Err(format!(
                        "object {id}: replaying the blocks its gap report named did not complete it ({state:?}; drops {:?})",
                        w.rx.ep.drops()
                    ));
                }
            }
        }
    }
    if !w.seen.failures.is_empty() {
        return Err(w.seen.failures.join("; "));
    }
    for o in &sc.objects {
        let id = o.meta.id;
        let n = w.seen.delivered.get(&id).copied().unwrap_or(0);
        if Some(id) == sc.withheld {
            if n != 0 {
                return Err(format!(
                    "the older version {id}, withheld and released late, was published"
                ));
            }
            if w.seen.refused.get(&id) != Some(&"older_version") {
                return Err(format!(
                    "the older version {id} was not refused as older_version"
                ));
            }
        } else if n != 1 {
            return Err(format!(
                "object {id} ({} bytes) delivered {n} times",
                o.content.len()
            ));
        }
    }
    Ok(())
}

/// While faults lasted: every block the receiver counts as done holds exactly the sent bytes.
fn check_done_blocks(w: &mut World) {
    let sender = w.snd.key.public().id();
    for o in &w.sc.objects {
        let key = (sender, o.meta.id);
        let Some(r) = w.rx.ep.object(key) else {
            continue;
        };
        let g = r.asm.geometry();
        let data = w.rx.disk.files.get(&key).cloned().unwrap_or_default();
        for b in 0..r.asm.block_count() as u32 {
            if !r.asm.is_done(b) || r.asm.writing_count() > 0 {
                continue;
            }
            let off = r.asm.block_offset(b) as usize;
            let len = g.block_len(o.meta.size, b as u64) as usize;
            let got = data.get(off..off + len);
            if got != o.content.get(off..off + len) {
                w.seen.failures.push(format!(
                    "object {}: block {b} counted done but its bytes differ",
                    o.meta.id
                ));
            }
        }
    }
}

#[test]
fn simulated_scenarios_deliver_exactly_once_or_name_the_gap() {
    let one: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    let n: u64 = std::env::var("SIM_SCENARIOS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SCENARIOS);
    let seeds: Vec<(u64, Option<Fault>)> = match one {
        Some(s) => vec![(s, None)],
        None => (0..n)
            .map(|i| (0x51_0000 + i, Some(ALL[(i % ALL.len() as u64) as usize])))
            .collect(),
    };
    let mut failed = Vec::new();
    let mut kinds: BTreeSet<Fault> = BTreeSet::new();
    let mut example: BTreeMap<Fault, u64> = BTreeMap::new();
    for (seed, must) in &seeds {
        let sc = Scenario::new(*seed, *must);
        kinds.extend(sc.faults.iter().copied());
        for f in &sc.faults {
            example.entry(*f).or_insert(*seed);
        }
        if let Err(why) = run(&sc) {
            let _ = writeln!(
                std::io::stderr(),
                "scenario seed {seed} failed (faults {:?}): {why}\n  rerun: SIM_SEED={seed} cargo test --release -p diode-proto --test sim",
                sc.faults
            );
            failed.push(*seed);
        }
    }
    // written past the test harness's capture, so the summary is in every run's output
    let _ = writeln!(
        std::io::stderr(),
        "simulated {} scenarios ({} fault kinds), {} failed",
        seeds.len(),
        kinds.len(),
        failed.len()
    );
    if one.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "one seed of each fault kind: {example:?}"
        );
        assert_eq!(kinds.len(), ALL.len(), "every fault kind ran");
    }
    assert!(failed.is_empty(), "failed seeds: {failed:?}");
}
