//! The transmit stage: the driver of the sender endpoint (`diode_proto::sender::Endpoint`, which decides
//! what goes out and when). It owns the link (a UDP socket or a serial line), takes each frame the
//! endpoint gives into a batch (GSO over UDP), paces batches to the configured rate counting what the link
//! really spends on each (IP and UDP headers; framing, start and stop bits on a serial line), and starts
//! a new session (its counter persisted) when the endpoint asks for a rekey. It never reads from the link.
//!
//! Over UDP, with `seal_threads` above 0 (by default one fewer than the cores), the endpoint leaves shard
//! frames unsealed and the sealing runs on threads: the frames gathered over about 2 ms go to the
//! sealing threads in turn, and one sending thread takes them back in the same turn, so they reach the
//! link in the endpoint's order, paced there. Otherwise all of it runs on the daemon's thread.

use crate::config::Config;
use anyhow::{Context, Result};
use diode_host::link::{serial::SerialTx, udp::UdpTx, FramesOut, LinkKind};
use diode_host::pace::Pacer;
use diode_proto::sender::{Endpoint, Source, Transmit, MAX_FRAME};
use diode_proto::session::Sealer;
use diode_proto::{PublicKey, SecretKey, SenderSession};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// After an object goes out, its repeats (an envelope whole, a content hash computed during the pass
/// as metadata, a one-block file whole at the last) go this long after, once each: copies spread in time
/// survive a burst of loss (an overflowing receive buffer drops everything for a moment) that copies sent
/// back to back would not.
pub const REPEATS: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(1500)];

/// The link is only ever written: from here on the kernel refuses, on every thread, recvfrom, recvmsg
/// and recvmmsg on any socket and read(2) and its variants on the link's descriptor (EPERM). Reading
/// files, inotify and the journal are unaffected. `sandbox = false` in send.toml skips it (debugging).
fn forbid_receiving(cfg: &Config, link: &dyn FramesOut) -> Result<()> {
    let fd = link.raw_fd();
    if cfg.sandbox {
        let refused = diode_host::sandbox::forbid_receiving(fd)?;
        tracing::info!(refused = %refused, "sandbox: seccomp filter on every thread: receiving on the link is refused (EPERM)");
    } else {
        tracing::warn!("sandbox = false: the kernel does not stop this process reading its link; for debugging only");
    }
    if std::env::var("DIODE_TEST_SANDBOX_PROBE").as_deref() == Ok("recv") {
        let result = match diode_host::sandbox::probe_receive(fd) {
            Ok(n) => format!("ALLOWED ({n} bytes)"),
            Err(e) => format!("refused: {e}"),
        };
        tracing::warn!(probe = "receive on the link", result = %result, "sandbox probe");
    }
    Ok(())
}

pub struct Transmitter {
    kind: LinkKind,
    me: SecretKey,
    receiver: PublicKey,
    counter_file: PathBuf,
    /// What goes out and when (`diode_proto::sender::Endpoint`).
    pub ep: Endpoint,
    /// The driver's clock: milliseconds since this instant are the endpoint's time.
    start: Instant,
    /// The frames being gathered for the link.
    chunk: Chunk,
    /// The send being batched in `chunk`: frames of one length from `open_start`.
    open_start: usize,
    open_segment: usize,
    open_frames: usize,
    max_segments: usize,
    /// A chunk goes to the sealing threads once it holds this many bytes.
    chunk_bytes: usize,
    rate_bps: u64,
    /// Where chunks go: sealed, paced and sent here, or by threads.
    out: Output,
    stats: Arc<Stats>,
}

/// Frames handed to the link since start (for `sending.json`), counted by whichever thread sends.
#[derive(Default)]
pub struct Stats {
    frames: AtomicU64,
    line_bytes: AtomicU64,
}

/// Frames on their way to the link: a run of sends, each of frames of one length back to back in `buf`
/// (one GSO send), some of them prepared by the endpoint and still to be sealed. `buf` only grows and is
/// reused, never cleared: every byte of a frame is written before it is sent.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    sends: Vec<Run>,
    /// (start, length) of the frames to seal before they go, with `sealer`.
    plain: Vec<(usize, usize)>,
    sealer: Option<Sealer>,
}

#[derive(Clone, Copy)]
struct Run {
    start: usize,
    end: usize,
    segment: usize,
    frames: usize,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            buf: Vec::with_capacity(64 * 9000),
            len: 0,
            sends: Vec::new(),
            plain: Vec::new(),
            sealer: None,
        }
    }

    fn reset(&mut self) {
        self.len = 0;
        self.sends.clear();
        self.plain.clear();
        self.sealer = None;
    }

    /// Seal the prepared frames in place. A frame that will not seal (not of the sealer's session: a
    /// bug, never wire data) must not leave in clear: the whole chunk is then dropped, as a loss.
    fn seal(&mut self) {
        if self.plain.is_empty() {
            return;
        }
        let ok = match &self.sealer {
            Some(sealer) => self.plain.iter().all(|&(at, len)| {
                self.buf
                    .get_mut(at..at + len)
                    .is_some_and(|f| sealer.seal(f))
            }),
            None => false,
        };
        if !ok {
            tracing::error!(
                frames = self.plain.len(),
                "prepared frames could not be sealed: dropped, never sent in clear"
            );
            self.sends.clear();
        }
    }
}

/// The link's end of the pipeline: paces each send and hands it to the link.
struct Wire {
    tx: Box<dyn FramesOut + Send>,
    pacer: Pacer,
    send_errors: u64,
    stats: Arc<Stats>,
}

impl Wire {
    fn send(&mut self, c: &Chunk) {
        for r in &c.sends {
            self.pacer.wait(self.tx.paced_bytes(r.segment) * r.frames);
            match self.tx.send(&c.buf[r.start..r.end], r.segment) {
                Ok(()) => {
                    self.stats
                        .frames
                        .fetch_add(r.frames as u64, Ordering::Relaxed);
                    self.stats
                        .line_bytes
                        .fetch_add((r.end - r.start) as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.send_errors += 1;
                    if self.send_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = self.send_errors, "send on the link failed (frames lost; FEC and passes cover it)");
                    }
                }
            }
        }
    }
}

enum Output {
    /// Sealed (all but announces came sealed), paced and sent on the daemon's thread.
    Here(Wire),
    /// Chunks go round the sealing threads in turn; one thread takes them back in the same turn, paces
    /// and sends them, and returns the emptied chunk. At most `depth` chunks exist, so memory is
    /// bounded and the endpoint runs at most that far ahead of the wire.
    Threads(Pool),
}

struct Pool {
    to_sealers: Vec<SyncSender<Chunk>>,
    next: usize,
    free: Receiver<Chunk>,
    threads: Vec<JoinHandle<()>>,
    broken: u64,
}

impl Pool {
    fn start(wire: Wire, sealers: usize, depth: usize) -> Result<Self> {
        let (free_tx, free) = sync_channel(depth);
        for _ in 0..depth {
            // the channel holds `depth`: these never wait
            free_tx
                .send(Chunk::new())
                .map_err(|_| anyhow::anyhow!("the chunk pool could not be filled"))?;
        }
        let mut to_sealers = Vec::new();
        let mut sealed = Vec::new();
        let mut threads = Vec::new();
        for i in 0..sealers {
            let (tx, rx) = sync_channel::<Chunk>(depth);
            let (back, out) = sync_channel::<Chunk>(depth);
            to_sealers.push(tx);
            sealed.push(out);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("seal-{i}"))
                    .spawn(move || {
                        for mut c in rx {
                            c.seal();
                            if back.send(c).is_err() {
                                break;
                            }
                        }
                    })
                    .context("cannot start a sealing thread")?,
            );
        }
        let mut wire = wire;
        threads.push(
            std::thread::Builder::new()
                .name("send".into())
                .spawn(move || {
                    // in the order the chunks were handed out: round the sealers
                    for turn in (0..sealed.len()).cycle() {
                        let Ok(mut c) = sealed[turn].recv() else {
                            break;
                        };
                        wire.send(&c);
                        c.reset();
                        let _ = free_tx.send(c);
                    }
                })
                .context("cannot start the sending thread")?,
        );
        Ok(Pool {
            to_sealers,
            next: 0,
            free,
            threads,
            broken: 0,
        })
    }

    /// Hand `c` on (its prepared frames sealed with `sealer`) and return an empty chunk, waiting while
    /// every chunk is on its way.
    fn submit(&mut self, c: &mut Chunk) {
        let fresh = self.free.recv().unwrap_or_else(|_| {
            self.broke("the sending thread has stopped");
            Chunk::new()
        });
        let full = std::mem::replace(c, fresh);
        let n = self.to_sealers.len();
        if let Some(t) = self.to_sealers.get(self.next % n.max(1)) {
            if t.send(full).is_err() {
                self.broke("a sealing thread has stopped");
            }
        }
        self.next = self.next.wrapping_add(1);
    }

    fn broke(&mut self, why: &str) {
        self.broken += 1;
        if self.broken.is_power_of_two() {
            tracing::error!(count = self.broken, "{why}: frames lost");
        }
    }
}

impl Drop for Pool {
    /// What was handed on still goes out: the sealers finish, the sending thread sends what they
    /// sealed, then each stops.
    fn drop(&mut self) {
        self.to_sealers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How long `pump` sends before it returns, so the daemon looks at its outbox (and urgent envelopes
/// start) at least this often.
pub const PUMP_MAX: Duration = Duration::from_millis(20);

impl Transmitter {
    pub fn new(cfg: &Config, me: SecretKey, receiver: PublicKey) -> Result<Self> {
        let rate_bps = cfg.rate_bps()?;
        let tx: Box<dyn FramesOut + Send> = match cfg.serial_line()? {
            Some(line) => Box::new(SerialTx::open(&line)?),
            None => Box::new(UdpTx::new(cfg.udp_targets()?, cfg.bind, 8 << 20)?),
        };
        let max_segments = match (cfg.line.link, cfg.gso_setting()?) {
            (LinkKind::Serial, _) => tx.max_segments(),
            (LinkKind::Udp, Some(false)) => 1,
            (LinkKind::Udp, Some(true)) => tx.max_segments(),
            (LinkKind::Udp, None) => {
                let e = diode_host::link::egress::egress(cfg.udp_target()?, cfg.bind)?;
                tracing::info!(device = %e.device, batching = e.splits, "gso = \"auto\": {}", e.why);
                if e.splits {
                    tx.max_segments()
                } else {
                    1
                }
            }
        };
        // a batch leaves at the NIC's speed: at most about a millisecond of the paced rate in one, so that
        // a slower diode behind a faster NIC, or its buffer, sees no burst larger than that
        let frame_bits = 8 * tx.paced_bytes(
            cfg.geometry()?.shard_size
                + diode_proto::frame::SEALED_HEADER_LEN
                + diode_proto::frame::TAG_LEN,
        ) as u64;
        let max_segments = max_segments.min((rate_bps / 1000 / frame_bits.max(1)).max(1) as usize);
        let link_name = tx.describe();
        let kind = tx.kind();
        forbid_receiving(cfg, tx.as_ref())?;
        let counter_file = cfg.state.join("session.counter");
        let session = start_session(&me, &receiver, &counter_file)?;
        let counter = session.counter();
        // sealing on threads of its own pays over a fast UDP link; a serial line is slow enough for one
        let sealers = match kind {
            // "auto" leaves a core to the daemon's thread (reading, hashing, FEC) and one to the sending
            // thread (its system calls), each kept busy at speed: none on 2 cores, where both daemons
            // sharing them (benches/loopback.sh) measured slower with one (README, Performance)
            LinkKind::Udp => cfg.seal_threads.count(2),
            LinkKind::Serial => 0,
        };
        let rules = diode_proto::sender::Config {
            interleave: cfg.interleave,
            announce_ms: (cfg.announce_secs.clamp(0.05, 60.0) * 1000.0) as u64,
            heartbeat_ms: (cfg.heartbeat_secs.clamp(0.05, 60.0) * 1000.0) as u64,
            rekey_ms: cfg.rekey_secs.max(10) * 1000,
            rate_bps,
            repeats: REPEATS.iter().map(|d| d.as_millis() as u64).collect(),
            repeat_small: cfg.repeat_small,
            defer_seal: sealers > 0,
        };
        let stats = Arc::new(Stats::default());
        let wire = Wire {
            tx,
            pacer: Pacer::new(rate_bps),
            send_errors: 0,
            stats: Arc::clone(&stats),
        };
        // a chunk is about 2 ms of the paced rate (at least a frame, at most 256 KiB), and at most
        // 2 per sealing thread + 2 exist: the endpoint is never more than a few ms ahead of the wire
        let chunk_bytes = ((rate_bps / 8 / 500) as usize).clamp(MAX_FRAME, 256 << 10);
        let out = match sealers {
            0 => Output::Here(wire),
            n => Output::Threads(Pool::start(wire, n, 2 * n + 2)?),
        };
        let mut t = Transmitter {
            kind,
            me,
            receiver,
            counter_file,
            ep: Endpoint::new(rules, session, 0),
            start: Instant::now(),
            chunk: Chunk::new(),
            open_start: 0,
            open_segment: 0,
            open_frames: 0,
            max_segments,
            chunk_bytes,
            rate_bps,
            out,
            stats,
        };
        tracing::info!(
            link = %link_name, rate_bps, gso_segments = max_segments,
            sealing_threads = sealers, session = counter, "session started"
        );
        // the announce goes out now, before anything else
        t.pump(&mut crate::encoding::Files::default(), Duration::ZERO);
        Ok(t)
    }

    /// Threads sealing frames (`seal_threads`, 0 over serial).
    pub fn sealing_threads(&self) -> usize {
        match &self.out {
            Output::Here(_) => 0,
            Output::Threads(pool) => pool.to_sealers.len(),
        }
    }

    /// A UDP link paced at 100 Mbit/s or more: a group of blocks is out in about half a second.
    pub fn fast_link(&self) -> bool {
        self.kind == LinkKind::Udp && self.rate_bps >= 100_000_000
    }

    /// Frames and bytes handed to the link since start.
    pub fn frames_sent(&self) -> u64 {
        self.stats.frames.load(Ordering::Relaxed)
    }

    pub fn line_bytes(&self) -> u64 {
        self.stats.line_bytes.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Send what the endpoint has, paced and batched, for about `budget` (at least one frame is looked
    /// for). Returns when the endpoint is next due if it has nothing to send (idle), else None.
    pub fn pump(&mut self, src: &mut dyn Source, budget: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut now = self.now_ms();
        let mut n = 0u32;
        loop {
            let start = self.chunk.len;
            if self.chunk.buf.len() < start + MAX_FRAME {
                self.chunk.buf.resize(start + MAX_FRAME, 0);
            }
            match self
                .ep
                .poll_transmit(now, src, &mut self.chunk.buf[start..start + MAX_FRAME])
            {
                Transmit::Frame(len) => self.queued(start, len, false),
                Transmit::Plain(len) => self.queued(start, len, true),
                Transmit::Rekey => {
                    // what was prepared under this session is sealed with its key
                    self.submit();
                    match start_session(&self.me, &self.receiver, &self.counter_file) {
                        Ok(s) => {
                            tracing::info!(session = s.counter(), "rekeyed: new session");
                            self.ep.rekeyed(s, now);
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "rekey failed; keeping the current session");
                            self.ep.rekey_failed(now);
                        }
                    }
                }
                Transmit::Idle(until) => {
                    self.submit();
                    return Some(Duration::from_millis(until.saturating_sub(now)));
                }
            }
            n += 1;
            // the clock is read every 8th frame
            if n.is_multiple_of(8) {
                now = self.now_ms();
                if t0.elapsed() >= budget {
                    self.submit();
                    return None;
                }
            }
        }
    }

    /// A frame of `len` bytes was written at `chunk.buf[start..]` (sealed, or prepared if `plain`):
    /// batch it (frames of one length per send).
    fn queued(&mut self, start: usize, len: usize, plain: bool) {
        if self.open_frames > 0 && len != self.open_segment {
            // a frame of another length starts a send of its own
            self.close_send();
        }
        if self.open_frames == 0 {
            self.open_start = start;
            self.open_segment = len;
        }
        self.chunk.len = start + len;
        self.open_frames += 1;
        if plain {
            self.chunk.plain.push((start, len));
        }
        // one GSO send carries at most 64 KiB of UDP payload
        if self.open_frames >= self.max_segments.min(65000 / len).max(1) {
            self.close_send();
            if matches!(self.out, Output::Here(_)) || self.chunk.len >= self.chunk_bytes {
                self.submit();
            }
        }
    }

    fn close_send(&mut self) {
        if self.open_frames > 0 {
            self.chunk.sends.push(Run {
                start: self.open_start,
                end: self.chunk.len,
                segment: self.open_segment,
                frames: self.open_frames,
            });
        }
        self.open_frames = 0;
    }

    /// Send what is gathered: here (paced), or to the sealing threads.
    fn submit(&mut self) {
        self.close_send();
        if self.chunk.sends.is_empty() {
            self.chunk.reset();
            return;
        }
        if !self.chunk.plain.is_empty() {
            self.chunk.sealer = Some(self.ep.sealer());
        }
        match &mut self.out {
            Output::Here(wire) => {
                self.chunk.seal();
                wire.send(&self.chunk);
                self.chunk.reset();
            }
            Output::Threads(pool) => pool.submit(&mut self.chunk),
        }
    }
}

/// A new session whose counter is above every earlier one: the persisted counter plus one, or the clock
/// in microseconds if that is larger (so a reinstalled sender with no state still moves forward).
fn start_session(
    me: &SecretKey,
    receiver: &PublicKey,
    counter_file: &PathBuf,
) -> Result<SenderSession> {
    let old: u64 = std::fs::read_to_string(counter_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let counter = (old + 1).max(diode_host::unix_micros());
    diode_host::atomic::write_atomic(counter_file, format!("{counter}\n").as_bytes(), 0o644)
        .context("cannot persist the session counter")?;
    let mut rng = rand::rng();
    SenderSession::start(me, receiver, counter, diode_host::unix_now(), &mut rng)
        .context("cannot start a session")
}
