//! The transmit stage: the driver of the sender endpoint (`diode_proto::sender::Endpoint`, which decides
//! what goes out and when). It owns the link (a UDP socket or a serial line), takes each frame the
//! endpoint seals into a batch (GSO over UDP), paces batches to the configured rate counting what the link
//! really spends on each (IP and UDP headers; framing, start and stop bits on a serial line), and starts
//! a new session (its counter persisted) when the endpoint asks for a rekey. It never reads from the link.

use crate::config::Config;
use anyhow::{Context, Result};
use diode_host::link::{serial::SerialTx, udp::UdpTx, FramesOut, LinkKind};
use diode_host::pace::Pacer;
use diode_proto::sender::{Endpoint, Source, Transmit, MAX_FRAME};
use diode_proto::{PublicKey, SecretKey, SenderSession};
use std::path::PathBuf;
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
    tx: Box<dyn FramesOut>,
    me: SecretKey,
    receiver: PublicKey,
    counter_file: PathBuf,
    /// What goes out and when (`diode_proto::sender::Endpoint`).
    pub ep: Endpoint,
    /// The driver's clock: milliseconds since this instant are the endpoint's time.
    start: Instant,
    pacer: Pacer,
    /// Frames waiting for one send: `batch[..batch_len]` (the buffer only grows, so it is never cleared
    /// or zeroed: every byte of a frame is written before it is sent).
    batch: Vec<u8>,
    batch_len: usize,
    batch_frames: usize,
    segment: usize,
    max_segments: usize,
    rate_bps: u64,
    send_errors: u64,
    /// Frames and bytes handed to the link since start (for `sending.json`).
    pub frames_sent: u64,
    pub line_bytes: u64,
}

/// How long `pump` sends before it returns, so the daemon looks at its outbox (and urgent envelopes
/// start) at least this often.
pub const PUMP_MAX: Duration = Duration::from_millis(20);

impl Transmitter {
    pub fn new(cfg: &Config, me: SecretKey, receiver: PublicKey) -> Result<Self> {
        let rate_bps = cfg.rate_bps()?;
        let tx: Box<dyn FramesOut> = match cfg.serial_line()? {
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
        forbid_receiving(cfg, tx.as_ref())?;
        let counter_file = cfg.state.join("session.counter");
        let session = start_session(&me, &receiver, &counter_file)?;
        let counter = session.counter();
        let rules = diode_proto::sender::Config {
            interleave: cfg.interleave,
            announce_ms: (cfg.announce_secs.clamp(0.05, 60.0) * 1000.0) as u64,
            heartbeat_ms: (cfg.heartbeat_secs.clamp(0.05, 60.0) * 1000.0) as u64,
            rekey_ms: cfg.rekey_secs.max(10) * 1000,
            rate_bps,
            repeats: REPEATS.iter().map(|d| d.as_millis() as u64).collect(),
            repeat_small: cfg.repeat_small,
        };
        let mut t = Transmitter {
            tx,
            me,
            receiver,
            counter_file,
            ep: Endpoint::new(rules, session, 0),
            start: Instant::now(),
            pacer: Pacer::new(rate_bps),
            batch: Vec::with_capacity(64 * 9000),
            batch_len: 0,
            batch_frames: 0,
            frames_sent: 0,
            line_bytes: 0,
            segment: 0,
            max_segments,
            rate_bps,
            send_errors: 0,
        };
        tracing::info!(
            link = %link_name, rate_bps, gso_segments = max_segments,
            session = counter, "session started"
        );
        // the announce goes out now, before anything else
        t.pump(&mut crate::encoding::Files::default(), Duration::ZERO);
        Ok(t)
    }

    /// A UDP link paced at 100 Mbit/s or more: a group of blocks is out in about half a second.
    pub fn fast_link(&self) -> bool {
        self.tx.kind() == LinkKind::Udp && self.rate_bps >= 100_000_000
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
            let start = self.batch_len;
            if self.batch.len() < start + MAX_FRAME {
                self.batch.resize(start + MAX_FRAME, 0);
            }
            match self
                .ep
                .poll_transmit(now, src, &mut self.batch[start..start + MAX_FRAME])
            {
                Transmit::Frame(len) => self.queued(start, len),
                Transmit::Rekey => {
                    self.flush();
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
                    self.flush();
                    return Some(Duration::from_millis(until.saturating_sub(now)));
                }
            }
            n += 1;
            // the clock is read every 8th frame
            if n.is_multiple_of(8) {
                now = self.now_ms();
                if t0.elapsed() >= budget {
                    self.flush();
                    return None;
                }
            }
        }
    }

    /// A frame of `len` bytes was sealed at `batch[start..]`: batch it (frames of one length per send).
    fn queued(&mut self, start: usize, len: usize) {
        if self.batch_frames > 0 && len != self.segment {
            // a frame of another length: send what is batched, then the new frame starts the batch
            self.flush();
            self.batch.copy_within(start..start + len, 0);
        }
        self.batch_len += len;
        self.segment = len;
        self.batch_frames += 1;
        // one GSO send carries at most 64 KiB of UDP payload
        if self.batch_frames >= self.max_segments.min(65000 / len).max(1) {
            self.flush();
        }
    }

    /// Send what is batched, paced.
    fn flush(&mut self) {
        if self.batch_frames > 0 {
            // a batch holds frames of one length (`queued` flushes when it changes)
            self.pacer
                .wait(self.tx.paced_bytes(self.segment) * self.batch_frames);
            match self.tx.send(&self.batch[..self.batch_len], self.segment) {
                Ok(()) => {
                    self.frames_sent += self.batch_frames as u64;
                    self.line_bytes += self.batch_len as u64;
                }
                Err(e) => self.send_error(e),
            }
        }
        self.batch_len = 0;
        self.batch_frames = 0;
    }

    fn send_error(&mut self, e: std::io::Error) {
        self.send_errors += 1;
        if self.send_errors.is_power_of_two() {
            tracing::warn!(error = %e, count = self.send_errors, "send on the link failed (frames lost; FEC and passes cover it)");
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
