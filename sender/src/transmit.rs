//! The transmit stage: owns the session and the link (a UDP socket or a serial line), seals frames into
//! batches (GSO over UDP), paces them to the configured rate counting what the link really spends on each
//! (IP and UDP headers; framing, start and stop bits on a serial line), and slips in the periodic
//! announce and heartbeat frames and the scheduled rekey. It never reads from the link.

use crate::config::Config;
use anyhow::{Context, Result};
use diode_host::link::{serial::SerialTx, udp::UdpTx, FramesOut, LinkKind};
use diode_host::pace::Pacer;
use diode_proto::frame::{SEALED_HEADER_LEN, TAG_LEN};
use diode_proto::object::Heartbeat;
use diode_proto::schedule::Timers;
use diode_proto::{FrameKind, PublicKey, SecretKey, SenderSession};
use std::path::PathBuf;
use std::time::Instant;

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
    tx: Box<dyn FramesOut>,
    me: SecretKey,
    receiver: PublicKey,
    counter_file: PathBuf,
    session: SenderSession,
    /// The driver's clock: milliseconds since this instant are what the timers count.
    start: Instant,
    /// When the announce, heartbeat and rekey are due (`proto::schedule::Timers`).
    timers: Timers,
    heartbeat_ms: u64,
    pacer: Pacer,
    /// Frames waiting for one send: `batch[..batch_len]` (the buffer only grows, so it is never cleared
    /// or zeroed: every byte of a frame is written before it is sent).
    batch: Vec<u8>,
    batch_len: usize,
    batch_frames: usize,
    segment: usize,
    max_segments: usize,
    rate_bps: u64,
    pub objects_sent: u64,
    pub current_object: Option<u64>,
    send_errors: u64,
}

impl Transmitter {
    pub fn new(cfg: &Config, me: SecretKey, receiver: PublicKey) -> Result<Self> {
        let rate_bps = cfg.rate_bps()?;
        let tx: Box<dyn FramesOut> = match cfg.serial_line()? {
            Some(line) => Box::new(SerialTx::open(&line)?),
            None => Box::new(UdpTx::new(cfg.udp_target()?, cfg.bind, 8 << 20)?),
        };
        let max_segments = if cfg.link == LinkKind::Udp && !cfg.use_gso()? {
            1
        } else {
            tx.max_segments()
        };
        let link_name = tx.describe();
        forbid_receiving(cfg, tx.as_ref())?;
        let counter_file = cfg.state.join("session.counter");
        let session = start_session(&me, &receiver, &counter_file)?;
        let now = Instant::now();
        let heartbeat_ms = (cfg.heartbeat_secs.clamp(0.05, 60.0) * 1000.0) as u64;
        let mut t = Transmitter {
            tx,
            me,
            receiver,
            counter_file,
            session,
            start: now,
            timers: Timers::new(
                0,
                (cfg.announce_secs.clamp(0.05, 60.0) * 1000.0) as u64,
                heartbeat_ms,
                cfg.rekey_secs.max(10) * 1000,
            ),
            heartbeat_ms,
            pacer: Pacer::new(rate_bps),
            batch: Vec::with_capacity(64 * 9000),
            batch_len: 0,
            batch_frames: 0,
            segment: 0,
            max_segments,
            rate_bps,
            objects_sent: 0,
            current_object: None,
            send_errors: 0,
        };
        t.announce();
        tracing::info!(
            link = %link_name, rate_bps, gso_segments = max_segments,
            session = t.session.counter(), "session started"
        );
        Ok(t)
    }

    /// Queue one sealed frame carrying `payload`.
    /// A UDP link paced at 100 Mbit/s or more: a group of blocks is out in about half a second.
    pub fn fast_link(&self) -> bool {
        self.tx.kind() == LinkKind::Udp && self.rate_bps >= 100_000_000
    }

    pub fn push(&mut self, kind: FrameKind, object: u64, block: u32, shard: u16, payload: &[u8]) {
        let len = SEALED_HEADER_LEN + payload.len() + TAG_LEN;
        if self.batch_frames > 0 && len != self.segment {
            self.flush();
        }
        let start = self.batch_len;
        if self.batch.len() < start + len {
            self.batch.resize(start + len, 0);
        }
        self.batch[start + SEALED_HEADER_LEN..start + SEALED_HEADER_LEN + payload.len()]
            .copy_from_slice(payload);
        if self
            .session
            .seal(
                kind,
                object,
                block,
                shard,
                &mut self.batch[start..start + len],
            )
            .is_none()
        {
            return;
        }
        self.batch_len = start + len;
        self.segment = len;
        self.batch_frames += 1;
        // one GSO send carries at most 64 KiB of UDP payload
        if self.batch_frames >= self.max_segments.min(65000 / len).max(1) {
            self.flush();
        }
    }

    /// Send what is batched, paced, then any announce, heartbeat or rekey that is due.
    pub fn flush(&mut self) {
        if self.batch_frames > 0 {
            // a batch holds frames of one length (`push` flushes when it changes)
            self.pacer
                .wait(self.tx.paced_bytes(self.segment) * self.batch_frames);
            if let Err(e) = self.tx.send(&self.batch[..self.batch_len], self.segment) {
                self.send_error(e);
            }
            self.batch_len = 0;
            self.batch_frames = 0;
        }
        self.tick();
    }

    fn send_error(&mut self, e: std::io::Error) {
        self.send_errors += 1;
        if self.send_errors.is_power_of_two() {
            tracing::warn!(error = %e, count = self.send_errors, "send on the link failed (frames lost; FEC and passes cover it)");
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn tick(&mut self) {
        let now = self.now_ms();
        let due = self.timers.due(now);
        if due.rekey {
            match start_session(&self.me, &self.receiver, &self.counter_file) {
                Ok(s) => {
                    self.session = s;
                    self.timers.rekeyed(now);
                    tracing::info!(session = self.session.counter(), "rekeyed: new session");
                    self.announce();
                }
                Err(e) => tracing::error!(error = %e, "rekey failed; keeping the current session"),
            }
        }
        if self.timers.due(now).announce {
            self.announce();
        }
        if due.heartbeat {
            self.heartbeat();
        }
    }

    fn announce(&mut self) {
        let a = self.session.announce().to_vec();
        self.pacer.wait(self.tx.paced_bytes(a.len()));
        if let Err(e) = self.tx.send(&a, a.len()) {
            self.send_error(e);
        }
        let now = self.now_ms();
        self.timers.announced(now);
    }

    fn heartbeat(&mut self) {
        let now = self.now_ms();
        self.timers.heartbeat_sent(now);
        let hb = Heartbeat {
            frames_sent: self.session.frames_sealed() + 1,
            objects_sent: self.objects_sent,
            current_object: self.current_object,
            rate_bps: self.rate_bps,
            interval_ms: self.heartbeat_ms as u32,
        };
        let body = diode_proto::object::encode_heartbeat(&hb);
        if let Some(f) = self
            .session
            .seal_payload(FrameKind::Heartbeat, 0, 0, 0, &body)
        {
            self.pacer.wait(self.tx.paced_bytes(f.len()));
            if let Err(e) = self.tx.send(&f, f.len()) {
                self.send_error(e);
            }
        }
    }

    /// Nothing to send: keep announces and heartbeats going.
    pub fn idle(&mut self) {
        self.flush();
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
