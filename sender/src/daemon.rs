//! The daemon (`diode-send` with no subcommand): watches the outbox, claims each file into the journal,
//! hands it to the sender endpoint (envelopes at once: the endpoint sends them ahead of a large file; the
//! endpoint also repeats them, and late content hashes, a while later), and takes replay requests queued
//! by `diode-send replay`.

use crate::config::Config;
use crate::encoding::{self, describe, Files};
use crate::journal::Journal;
use crate::replay::resolve_replay;
use crate::status::Status;
use crate::transmit::{Transmitter, PUMP_MAX};
use crate::{open_link, outbox, requests};
use anyhow::{Context, Result};
use diode_proto::journal::format_id;
use diode_proto::object::{kind_for_name, ObjectKind};
use diode_proto::sender::{self, JobKind};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub enum Job {
    /// A claimed object: describe (hash) it and send all passes.
    New {
        id: u64,
        name: String,
        path: PathBuf,
    },
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
}

impl Intake<'_> {
    fn poll(&mut self, wait: Duration) {
        for p in self.outbox.poll(wait) {
            match outbox::wire_name(self.outbox.root(), &p) {
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
}

pub fn daemon(cfg: &Config) -> Result<()> {
    let journal = Journal::open(cfg)?;
    let mut tx = open_link(cfg)?;
    let mut files = Files::new(tx.fast_link(), tx.sealing_threads());
    let mut status = Status::new(cfg, cfg.rate_bps()?)?;
    let outbox = outbox::Outbox::watch(&cfg.outbox, Duration::from_secs(cfg.settle_secs))
        .with_context(|| format!("cannot watch {}", cfg.outbox.display()))?;
    let mut intake = Intake {
        cfg,
        journal: &journal,
        outbox,
        urgent: VecDeque::new(),
        bulk: VecDeque::new(),
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
    let mut started: HashMap<u64, Instant> = HashMap::new();
    let mut idle_for = Duration::ZERO;
    loop {
        // nothing to send: wait on the outbox (at most 50 ms, less when the endpoint is due sooner)
        intake.poll(idle_for.min(Duration::from_millis(50)));
        // envelopes (and an admin's replays of them) go to the endpoint at once; it sends them ahead
        // of the file in progress
        while let Some(job) = intake.urgent.pop_front() {
            queue(cfg, &mut tx, &mut files, &mut started, &mut status, job);
        }
        // one bulk job waits in the endpoint at a time: each file is opened when its turn is near
        while tx.ep.queued() == 0 {
            let Some(job) = intake.bulk.pop_front() else {
                break;
            };
            queue(cfg, &mut tx, &mut files, &mut started, &mut status, job);
        }
        idle_for = match tx.pump(&mut files, PUMP_MAX) {
            Some(wait) if intake.bulk.is_empty() => wait,
            _ => Duration::ZERO,
        };
        while let Some(e) = tx.ep.poll_event() {
            done(cfg, &journal, &mut started, &mut status, e);
        }
        status.tick(
            intake.urgent.len() + intake.bulk.len(),
            tx.frames_sent(),
            tx.line_bytes(),
        );
        files.close_unneeded(|id| tx.ep.needs(id));
    }
}

/// Hand a job to the endpoint: a new object is described (measured, hashed if small) and its file
/// opened; one that can never be sent is set aside.
fn queue(
    cfg: &Config,
    tx: &mut Transmitter,
    files: &mut Files,
    started: &mut HashMap<u64, Instant>,
    status: &mut Status,
    job: Job,
) {
    match job {
        Job::New { id, name, path } => {
            let kind = kind_for_name(&name);
            let urgent = requests::is_urgent(&name);
            let r = describe(&path, id, &name, kind, cfg).and_then(|meta| {
                files.add(id, &path, meta.size)?;
                Ok(meta)
            });
            match r {
                Ok(meta) => {
                    started.insert(id, Instant::now());
                    status.started(id, &name, meta.size, cfg.passes, false);
                    tx.ep.send(sender::Job::new(meta, cfg.passes, urgent));
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
        }
        Job::Replay { meta, path, blocks } => {
            if let Err(e) = files.add(meta.id, &path, meta.size) {
                tracing::error!(object = %format_id(meta.id), error = %format!("{e:#}"), "replay failed");
                return;
            }
            status.started(meta.id, &meta.name, meta.size, 1, true);
            let urgent = requests::is_urgent(&meta.name);
            let job = sender::Job::replay(meta, blocks, urgent);
            if urgent {
                tx.ep.send(job);
            } else {
                tx.ep.send_next(job);
            }
        }
    }
}

/// What the endpoint says went out (or could not).
fn done(
    cfg: &Config,
    journal: &Journal,
    started: &mut HashMap<u64, Instant>,
    status: &mut Status,
    e: sender::Event,
) {
    match &e {
        sender::Event::Sent { meta, kind } | sender::Event::Failed { meta, kind, .. }
            if *kind != JobKind::Meta =>
        {
            status.finished(meta.id)
        }
        sender::Event::Progress { id, bytes } => status.progress(*id, *bytes),
        _ => {}
    }
    match e {
        sender::Event::Sent { meta, kind } => match kind {
            JobKind::New => {
                if let Err(e) = journal.record_sent(&meta) {
                    tracing::error!(object = %format_id(meta.id), error = %format!("{e:#}"), "cannot record the sent object in the journal");
                }
                let secs = started
                    .remove(&meta.id)
                    .map_or(0.0, |t| t.elapsed().as_secs_f64());
                tracing::info!(object = %format_id(meta.id), name = %meta.name, bytes = meta.size, passes = cfg.passes,
                    kind = if meta.kind == ObjectKind::Envelope { "envelope" } else { "file" },
                    mb_per_s = format!("{:.1}", meta.size as f64 * cfg.passes as f64 / secs.max(1e-6) / 1e6), "sent");
                if let Err(e) = journal.retain(cfg.retention_days * 86400, cfg.retention_gb << 30) {
                    tracing::warn!(error = %format!("{e:#}"), "retention pass failed");
                }
            }
            JobKind::Replay => {
                tracing::info!(object = %format_id(meta.id), name = %meta.name, "replayed")
            }
            JobKind::Meta => {
                tracing::debug!(object = %format_id(meta.id), "metadata with the content hash, once more")
            }
        },
        sender::Event::Failed { meta, kind, why } => {
            started.remove(&meta.id);
            if kind == JobKind::New {
                tracing::error!(object = %format_id(meta.id), name = %meta.name, error = %why,
                    "send failed; the object stays in the sent area and is tried again at the next start")
            } else {
                tracing::error!(object = %format_id(meta.id), error = %why, "replay failed")
            }
        }
        sender::Event::Progress { .. } => {}
    }
}
