//! `diode-send`: the low side. Watches an outbox and sends each complete file as sealed, FEC-coded,
//! paced frames over a one-way link; keeps a journal and a sent area for replay. See `--help`.

mod config;
mod encoding;
mod journal;
mod outbox;
mod requests;
mod transmit;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use config::Config;
use diode_host::keyfile;
use diode_proto::envelope::SignerRole;
use diode_proto::journal::{format_id, parse_id};
use diode_proto::object::{kind_for_name, ObjectKind};
use diode_proto::Role;
use encoding::{describe, send_object, Encoder};
use journal::{replayable, Journal, ReplayRequest};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use transmit::Transmitter;

const DEFAULT_CONFIG: &str = "/etc/diode/send.toml";

#[derive(Parser)]
#[command(
    name = "diode-send",
    version,
    about = "Send files one way across a data diode"
)]
struct Cli {
    /// Configuration file (every key is documented in send.example.toml)
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new sender key pair: DIR/sender.key (mode 0600) and DIR/sender.pub (give it to the high side)
    ///
    /// With --pipeline: a pipeline signing key pair instead, DIR/pipeline.key (0600) and DIR/pipeline.pub,
    /// for `diode-send request` on the high side (pipeline.pub goes to the low side's diode-chat).
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        pipeline: bool,
    },
    /// Ask for a deployment approval from inside the air gap: write a request envelope, signed with
    /// `pipeline_key`, into the outbox (of the reverse link's sender) and print its id. Wait for the
    /// answer with `diode-recv approvals wait --request ID`.
    Request(requests::NewRequest),
    /// Send files or folders once, with a progress bar, and exit when the last frame is out
    File {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Send a journaled object again, whole or some blocks, or everything sent since a moment.
    /// The running daemon picks the request up; it is kept until one runs.
    Replay {
        /// Object id as printed by `diode-recv status` or `diode-send journal`
        #[arg(long, conflicts_with = "since")]
        object: Option<String>,
        /// Blocks to send, e.g. 17-19,40 (default: the whole object)
        #[arg(long, requires = "object")]
        blocks: Option<String>,
        /// Re-send every object sent after this time: RFC 3339 (2026-11-24T10:00:00Z) or an age (2h)
        #[arg(long)]
        since: Option<String>,
    },
    /// List the objects the journal holds, with ids to match against the receiver's gap report
    Journal,
}

fn main() {
    diode_host::init_logs();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("diode-send: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Some(Cmd::Keygen {
            dir,
            pipeline: true,
        }) => {
            let (k, p) = keyfile::generate_signing(&dir, SignerRole::Pipeline)?;
            println!(
                "wrote {} (secret, mode 0600) and {}",
                k.display(),
                p.display()
            );
            println!(
                "set pipeline_key = \"{}\" in the reverse link's send.toml; copy {} to the low side and list it in diode-chat's [reverse] pipeline_keys",
                k.display(),
                p.display()
            );
            Ok(())
        }
        Some(Cmd::Request(new)) => {
            let cfg = Config::load(&cli.config)?;
            let (id, path) = requests::write_request(&cfg, new)?;
            eprintln!(
                "request {id} written to {}; wait for the answer with: diode-recv approvals wait --request {id}",
                path.display()
            );
            println!("{id}");
            Ok(())
        }
        Some(Cmd::Keygen {
            dir,
            pipeline: false,
        }) => {
            let (k, p) = keyfile::generate(&dir, Role::Sender)?;
            println!(
                "wrote {} (secret, mode 0600) and {}",
                k.display(),
                p.display()
            );
            println!(
                "copy {} to the high side and list it under `senders` in recv.toml",
                p.display()
            );
            Ok(())
        }
        Some(Cmd::File { paths }) => send_files(&Config::load(&cli.config)?, &paths),
        Some(Cmd::Replay {
            object,
            blocks,
            since,
        }) => replay(&Config::load(&cli.config)?, object, blocks, since),
        Some(Cmd::Journal) => list_journal(&Config::load(&cli.config)?),
        None => daemon(&Config::load(&cli.config)?),
    }
}

fn open_link(cfg: &Config) -> Result<Transmitter> {
    let me = keyfile::load_secret(&cfg.key, Role::Sender)?;
    let receiver = keyfile::load_public(&cfg.receiver, Role::Receiver)?;
    std::fs::create_dir_all(&cfg.state)
        .with_context(|| format!("cannot create {}", cfg.state.display()))?;
    Transmitter::new(cfg, me, receiver)
}

enum Job {
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
const REPEATS: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(1500)];

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

fn daemon(cfg: &Config) -> Result<()> {
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

fn resolve_replay(journal: &Journal, r: &ReplayRequest) -> Result<Vec<Job>> {
    let entries = journal.load()?;
    if let Some(obj) = &r.object {
        let id = parse_id(obj)
            .with_context(|| format!("{obj:?} is not an object id (16 hex digits)"))?;
        let e = entries
            .iter()
            .find(|e| e.id == id)
            .with_context(|| format!("object {obj} is not in the journal"))?;
        let meta = replayable(e)?;
        let blocks = r
            .blocks
            .as_deref()
            .map(diode_proto::gap::parse)
            .transpose()?;
        return Ok(vec![Job::Replay {
            meta,
            path: e.path.clone(),
            blocks,
        }]);
    }
    let since = r.since.unwrap_or(0);
    Ok(entries
        .iter()
        .filter(|e| e.sent_at.is_some_and(|t| t >= since))
        .filter_map(|e| {
            replayable(e).ok().map(|meta| Job::Replay {
                meta,
                path: e.path.clone(),
                blocks: None,
            })
        })
        .collect())
}

fn replay(
    cfg: &Config,
    object: Option<String>,
    blocks: Option<String>,
    since: Option<String>,
) -> Result<()> {
    let journal = Journal::open(cfg)?;
    let req = match (&object, &since) {
        (Some(o), _) => {
            // check now, so the admin hears about a typo at once and not in the daemon's log
            let id = parse_id(o)
                .with_context(|| format!("{o:?} is not an object id (16 hex digits)"))?;
            let entries = journal.load()?;
            let e = entries
                .iter()
                .find(|e| e.id == id)
                .with_context(|| format!("object {o} is not in the journal"))?;
            replayable(e)?;
            if let Some(b) = &blocks {
                diode_proto::gap::parse(b)?;
            }
            ReplayRequest {
                object: Some(format_id(id)),
                blocks,
                since: None,
            }
        }
        (None, Some(s)) => ReplayRequest {
            object: None,
            blocks: None,
            since: Some(parse_since(s)?),
        },
        (None, None) => {
            bail!("say what to replay: --object ID [--blocks 17-19,40], or --since TIME")
        }
    };
    let p = journal.queue_replay(&req)?;
    println!(
        "replay queued ({}); the running diode-send sends it next",
        p.display()
    );
    Ok(())
}

fn parse_since(s: &str) -> Result<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(diode_host::unix_now().saturating_sub(d.as_secs()));
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    bail!("--since {s:?}: use RFC 3339 like 2026-11-24T10:00:00Z, an age like 2h, or Unix seconds")
}

fn list_journal(cfg: &Config) -> Result<()> {
    let journal = Journal::open(cfg)?;
    let entries = journal.load()?;
    if entries.is_empty() {
        println!("the journal is empty");
        return Ok(());
    }
    println!(
        "{:<16}  {:<20}  {:>12}  {:>6}  {:<8}  name",
        "object", "sent (UTC)", "bytes", "blocks", "state"
    );
    for e in entries {
        let (when, bytes, blocks) = match &e.sent {
            Some(m) => (
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(e.sent_at.unwrap_or(0)),
                )
                .to_string(),
                m.size.to_string(),
                m.geometry()
                    .map(|g| g.block_count(m.size).to_string())
                    .unwrap_or_default(),
            ),
            None => (format!("queued {}", e.claimed_at), "-".into(), "-".into()),
        };
        let state = if e.expired {
            "expired"
        } else if e.sent.is_none() {
            "queued"
        } else if e.path.exists() {
            "kept"
        } else {
            "gone"
        };
        println!(
            "{:<16}  {:<20}  {:>12}  {:>6}  {:<8}  {}",
            format_id(e.id),
            when,
            bytes,
            blocks,
            state,
            e.name
        );
    }
    Ok(())
}

/// `diode-send file`: each path once (folders recursively, named from the folder down), then exit.
fn send_files(cfg: &Config, paths: &[PathBuf]) -> Result<()> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for p in paths {
        let p = std::fs::canonicalize(p).with_context(|| format!("cannot find {}", p.display()))?;
        let base = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut found = Vec::new();
        if p.is_dir() {
            collect(&p, &mut found)?;
        } else {
            found.push(p.clone());
        }
        found.sort();
        for f in found {
            let name = outbox::wire_name(&base, &f)
                .with_context(|| format!("{} has a name that is not UTF-8", f.display()))?;
            diode_proto::object::safe_name(&name)?;
            if let Some(why) = requests::envelope_only_refusal(cfg, &f, &name) {
                bail!("{} refused: {why}", f.display());
            }
            files.push((f, name));
        }
    }
    let journal = Journal::open(cfg)?;
    let mut tx = open_link(cfg)?;
    let mut enc = Encoder::new(cfg.interleave);
    let total: u64 = files
        .iter()
        .map(|(f, _)| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum::<u64>()
        * cfg.passes as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let mut deferred = Vec::new();
    // a receiver needs the announce before the first frame is of use to it: give it a moment
    std::thread::sleep(Duration::from_millis(200));
    for (path, name) in &files {
        bar.set_message(name.clone());
        let id = journal.new_id()?;
        journal.append(&diode_proto::journal::JournalRecord::Claimed {
            id: format_id(id),
            name: name.clone(),
            path: path.to_string_lossy().into_owned(),
            at: diode_host::unix_now(),
        })?;
        let mut meta = describe(path, id, name, kind_for_name(name), cfg)
            .with_context(|| format!("cannot send {}", path.display()))?;
        send_object(
            &mut tx,
            &mut enc,
            path,
            &mut meta,
            cfg.passes,
            None,
            &mut |n| bar.inc(n),
            &mut |_| {},
        )?;
        journal.record_sent(&meta)?;
        if meta.size > encoding::HASH_FIRST_MAX {
            deferred.push(meta);
        }
    }
    // the hash of a large file travelled only in its pass's closing metadata: repeat it, spread in time
    let mut waited = Duration::ZERO;
    for d in REPEATS {
        if deferred.is_empty() {
            break;
        }
        std::thread::sleep(d - waited);
        waited = d;
        for m in &deferred {
            tx.push(diode_proto::FrameKind::Meta, m.id, 0, 0, &m.encode());
        }
        tx.flush();
    }
    bar.finish_with_message("done");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sent {} file(s), {} bytes in {:.2} s ({:.1} MB/s)",
        files.len(),
        total,
        secs,
        total as f64 / secs.max(1e-6) / 1e6
    );
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            collect(&e.path(), out)?;
        } else if e.file_type()?.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}
