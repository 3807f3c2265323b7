//! The daemon (`diode-send` with no subcommand): watches the outbox, claims each file into the journal,
//! sends it (envelopes first, between the groups of a large file), repeats small objects and closing
//! metadata a while later, and takes replay requests queued by `diode-send replay`.

use crate::config::Config;
use crate::encoding::{self, describe, send_object, Encoder};
use crate::journal::Journal;
use crate::replay::resolve_replay;
use crate::transmit::Transmitter;
use crate::{open_link, outbox, requests};
use anyhow::{Context, Result};
use diode_proto::journal::format_id;
use diode_proto::object::{kind_for_name, ObjectKind};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub enum Job {
    /// A claimed object: describe (hash) it and send all passes.
    New {
        id: u64,
        name: String,
        path: PathBuf,
    },
    /// One more copy of an object's metadata (with its content hash), sent a while after the pass that
    /// computed the hash: the closing copies of that pass could all fall in one burst of loss.
    Meta { meta: diode_proto::ObjectMeta },
    /// A replay of a sent object, whole or some blocks, once.
    Replay {
        meta: diode_proto::ObjectMeta,
        path: PathBuf,
        blocks: Option<Vec<(u32, u32)>>,
    },
}

/// What comes in: files from the outbox (envelopes to their own queue, which always goes first) and
/// replay requests.
struct Intake<'a> {
    cfg: &'a Config,
    journal: &'a Journal,
    outbox: outbox::Outbox,
    urgent: VecDeque<Job>,
    bulk: VecDeque<Job>,
    /// Repeats of envelopes, each due at its time (see `ENVELOPE_REPEATS`).
    later: Vec<(Instant, Job)>,
}

/// After an envelope's pass, it is sent again this long after, once each: copies spread in time survive a
/// burst of loss (an overflowing receive buffer drops everything for a moment) that copies sent back to
/// back would not. The metadata of a file whose hash was computed during its pass is repeated the same
/// way.
pub const REPEATS: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(1500)];

impl Intake<'_> {
    fn poll(&mut self, wait: Duration) {
        for p in self.outbox.poll(wait) {
            match outbox::wire_name(&self.cfg.outbox, &p) {
                Some(name) if diode_proto::object::safe_name(&name).is_ok() => {
                    if let Some(why) = requests::envelope_only_refusal(self.cfg, &p, &name) {
                        requests::set_aside(self.cfg, &p, &name, &why);
                        self.outbox.forget(&p);
                        continue;
                    }
                    match self.journal.claim(&p, &name) {
                        Ok((id, path)) => {
                            let urgent = requests::is_urgent(&name);
                            let job = Job::New { id, name, path };
                            if urgent {
                                self.urgent.push_back(job);
                            } else {
                                self.bulk.push_back(job);
                            }
                        }
                        Err(e) => {
                            tracing::error!(file = %p.display(), error = %format!("{e:#}"), "cannot take file; left in the outbox")
                        }
                    }
                }
                _ => {
                    tracing::error!(file = %p.display(), "file name cannot travel (not UTF-8, or unsafe); left in the outbox")
                }
            }
            self.outbox.forget(&p);
        }
        for r in self.journal.take_replays() {
            match resolve_replay(self.journal, &r) {
                Ok(jobs) => {
                    for j in jobs.into_iter().rev() {
                        self.bulk.push_front(j);
                    }
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "replay request refused"),
            }
        }
    }

    /// Move repeats that are due to the urgent queue.
    fn due(&mut self) {
        let now = Instant::now();
        let (due, not): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.later = not;
        self.urgent.extend(due.into_iter().map(|(_, j)| j));
    }

    /// An object went out: schedule the repeats of an envelope, or of a large file's closing metadata.
    fn repeat(&mut self, meta: diode_proto::ObjectMeta, path: PathBuf) {
        let now = Instant::now();
        for d in REPEATS {
            let job = if requests::is_urgent(&meta.name) {
                Job::Replay {
                    meta: meta.clone(),
                    path: path.clone(),
                    blocks: None,
                }
            } else if meta.size > encoding::HASH_FIRST_MAX {
                Job::Meta { meta: meta.clone() }
            } else if d == REPEATS[1] && self.cfg.repeat_small && single_block(&meta) {
                // interleaving spreads a burst of loss over a file's blocks, but a file of one block
                // has nothing to spread it over: one burst can take all of it. One copy in time, later.
                Job::Replay {
                    meta: meta.clone(),
                    path: path.clone(),
                    blocks: None,
                }
            } else {
                continue;
            };
            tracing::debug!(in_ms = d.as_millis() as u64, "repeat scheduled");
            self.later.push((now + d, job));
        }
    }

    fn next(&mut self) -> Option<Job> {
        self.urgent.pop_front().or_else(|| self.bulk.pop_front())
    }
}

/// An object of one FEC block (up to 180 KB at the defaults).
fn single_block(meta: &diode_proto::ObjectMeta) -> bool {
    meta.geometry().is_ok_and(|g| g.block_count(meta.size) == 1)
}

pub fn daemon(cfg: &Config) -> Result<()> {
    let journal = Journal::open(cfg)?;
    let mut tx = open_link(cfg)?;
    let mut enc = Encoder::new(cfg.interleave);
    let mut urgent_enc = Encoder::new(cfg.interleave);
    let outbox = outbox::Outbox::watch(&cfg.outbox, Duration::from_secs(cfg.settle_secs))
        .with_context(|| format!("cannot watch {}", cfg.outbox.display()))?;
    let mut intake = Intake {
        cfg,
        journal: &journal,
        outbox,
        urgent: VecDeque::new(),
        bulk: VecDeque::new(),
        later: Vec::new(),
    };
    for e in journal.load()? {
        if e.sent.is_none() && !e.expired && e.path.exists() {
            tracing::info!(object = %format_id(e.id), name = %e.name, "resuming an object claimed before a restart");
            let job = Job::New {
                id: e.id,
                name: e.name.clone(),
                path: e.path,
            };
            if requests::is_urgent(&e.name) {
                intake.urgent.push_back(job);
            } else {
                intake.bulk.push_back(job);
            }
        }
    }
    tracing::info!(outbox = %cfg.outbox.display(), passes = cfg.passes, "watching the outbox");
    loop {
        let idle = intake.urgent.is_empty() && intake.bulk.is_empty();
        intake.poll(if idle {
            Duration::from_millis(if intake.later.is_empty() { 50 } else { 5 })
        } else {
            Duration::ZERO
        });
        intake.due();
        let Some(job) = intake.next() else {
            tx.idle();
            continue;
        };
        // between groups of a large object: take in new envelopes and send them at once
        let mut between = |tx: &mut Transmitter| {
            intake.poll(Duration::ZERO);
            intake.due();
            while let Some(job) = intake.urgent.pop_front() {
                if let Some((m, p)) = run_job(cfg, &journal, tx, &mut urgent_enc, job, &mut |_| {})
                {
                    intake.repeat(m, p);
                }
            }
        };
        if let Some((m, p)) = run_job(cfg, &journal, &mut tx, &mut enc, job, &mut between) {
            intake.repeat(m, p);
        }
    }
}

/// Send one job. Returns a new object's metadata and path, for its repeats.
fn run_job(
    cfg: &Config,
    journal: &Journal,
    tx: &mut Transmitter,
    enc: &mut Encoder,
    job: Job,
    between: &mut dyn FnMut(&mut Transmitter),
) -> Option<(diode_proto::ObjectMeta, PathBuf)> {
    let started = std::time::Instant::now();
    match job {
        Job::New { id, name, path } => {
            let kind = kind_for_name(&name);
            let passes = cfg.passes;
            let r = describe(&path, id, &name, kind, cfg).and_then(|mut meta| {
                send_object(
                    tx,
                    enc,
                    &path,
                    &mut meta,
                    passes,
                    None,
                    &mut |_| {},
                    between,
                )?;
                journal.record_sent(&meta)?;
                Ok(meta)
            });
            match &r {
                Ok(meta) => {
                    let secs = started.elapsed().as_secs_f64();
                    tracing::info!(object = %format_id(id), name = %name, bytes = meta.size, passes,
                        kind = if kind == ObjectKind::Envelope { "envelope" } else { "file" },
                        mb_per_s = format!("{:.1}", meta.size as f64 * passes as f64 / secs.max(1e-6) / 1e6), "sent");
                }
                Err(e) => match e
                    .chain()
                    .find_map(|c| c.downcast_ref::<encoding::Unsendable>())
                {
                    // never sendable: out of the sent area, so no restart takes it again
                    Some(why) => requests::set_aside(cfg, &path, &name, &why.0),
                    None => {
                        tracing::error!(object = %format_id(id), name = %name, error = %format!("{e:#}"),
                        "send failed; the object stays in the sent area and is tried again at the next start")
                    }
                },
            }
            if let Err(e) = journal.retain(cfg.retention_days * 86400, cfg.retention_gb << 30) {
                tracing::warn!(error = %format!("{e:#}"), "retention pass failed");
            }
            r.ok().map(|m| (m, path))
        }
        Job::Meta { meta } => {
            tracing::debug!(object = %format_id(meta.id), "metadata with the content hash, once more");
            tx.push(diode_proto::FrameKind::Meta, meta.id, 0, 0, &meta.encode());
            tx.flush();
            None
        }
        Job::Replay {
            mut meta,
            path,
            blocks,
        } => {
            let r = send_object(
                tx,
                enc,
                &path,
                &mut meta,
                1,
                blocks.as_deref(),
                &mut |_| {},
                between,
            );
            match r {
                Ok(()) => tracing::info!(object = %format_id(meta.id), name = %meta.name,
                    blocks = %blocks.as_deref().map(diode_proto::gap::format).unwrap_or_else(|| "all".into()), "replayed"),
                Err(e) => {
                    tracing::error!(object = %format_id(meta.id), error = %format!("{e:#}"), "replay failed")
                }
            }
            None
        }
    }
}
