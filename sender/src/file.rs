//! `diode-send file`: send files or folders once, in the foreground, with a progress bar, and exit.

use crate::config::Config;
use crate::encoding::{describe, Files};
use crate::journal::Journal;
use crate::transmit::PUMP_MAX;
use crate::{open_link, outbox, requests};
use anyhow::{bail, Context, Result};
use diode_proto::journal::format_id;
use diode_proto::object::kind_for_name;
use diode_proto::sender::{Event, Job, JobKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `diode-send file`: each path once (folders recursively, named from the folder down), then exit.
pub fn send_files(cfg: &Config, paths: &[PathBuf]) -> Result<()> {
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
    let mut src = Files::new(tx.fast_link(), tx.sealing_threads());
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
    // a receiver needs the announce before the first frame is of use to it: give it a moment
    std::thread::sleep(Duration::from_millis(200));
    let mut names = std::collections::HashMap::new();
    let mut next = files.iter();
    // one object waits in the endpoint at a time; the endpoint repeats what it repeats (an envelope,
    // a content hash computed during the pass) a while after, and is idle once those are out
    loop {
        if tx.ep.queued() == 0 {
            if let Some((path, name)) = next.next() {
                let id = journal.new_id()?;
                journal.append(&diode_proto::journal::JournalRecord::Claimed {
                    id: format_id(id),
                    name: name.clone(),
                    path: path.to_string_lossy().into_owned(),
                    at: diode_host::unix_now(),
                })?;
                let meta = describe(path, id, name, kind_for_name(name), cfg)
                    .with_context(|| format!("cannot send {}", path.display()))?;
                src.add(id, path, meta.size)?;
                names.insert(id, name.clone());
                tx.ep
                    .send(Job::new(meta, cfg.passes, requests::is_urgent(name)));
            }
        }
        let idle = tx.pump(&mut src, PUMP_MAX);
        while let Some(e) = tx.ep.poll_event() {
            match e {
                Event::Progress { id, bytes } => {
                    if let Some(n) = names.get(&id) {
                        bar.set_message(n.clone());
                    }
                    bar.inc(bytes)
                }
                Event::Sent {
                    meta,
                    kind: JobKind::New,
                } => journal.record_sent(&meta)?,
                Event::Sent { .. } => {}
                Event::Failed { meta, why, .. } => bail!("cannot send {}: {why}", meta.name),
            }
        }
        src.close_unneeded(|id| tx.ep.needs(id));
        if let Some(wait) = idle {
            if tx.ep.is_idle() && next.len() == 0 {
                break;
            }
            std::thread::sleep(wait.min(Duration::from_millis(20)));
        }
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
