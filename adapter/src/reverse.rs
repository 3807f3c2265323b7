//! The low side's end of the reverse diode: signed requests from pipelines inside the air gap arrive as
//! `<id>.request` files (`diode_proto::request`), and the high side's signed outcomes as `<hash>.outcome`
//! files (`diode_proto::outcome`, `crate::returned`), in the reverse receiver's inbox, in subfolders too.
//! Each is read (never more than its kind's largest size + 1 bytes), handed to the engine, which
//! verifies, audits and records it (`Engine::request_signed`, `Engine::outcome_signed`), and moved out
//! of the inbox: to `processed` when taken or a repeat, to `quarantine` as `<file>.<reason code>` when
//! refused. Only a taken request is ever posted, only a taken outcome ever shown.

use crate::approval::{Effect, Engine, PipelineKeys, Taken};
use crate::config;
use crate::returned;
use anyhow::{bail, Context, Result};
use diode_host::keyfile;
use diode_proto::envelope::{SignerRole, VerifyingKey};
use diode_proto::outcome::{MAX_OUTCOME_BYTES, OUTCOME_SUFFIX};
use diode_proto::request::{MAX_REQUEST_BYTES, REQUEST_SUFFIX};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct Inbox {
    inbox: PathBuf,
    processed: PathBuf,
    quarantine: PathBuf,
    trust: PipelineKeys,
    /// The high sides' outcome keys.
    outcome_keys: Vec<VerifyingKey>,
}

fn secs(what: &str, v: &str) -> Result<u64> {
    Ok(humantime::parse_duration(v)
        .with_context(|| format!("reverse.{what} = {v:?} is not a duration"))?
        .as_secs())
}

impl Inbox {
    pub fn from_config(r: &config::Reverse) -> Result<Inbox> {
        if r.pipeline_keys.is_empty() {
            bail!("[reverse] pipeline_keys is empty: every request would be refused; list the pipeline.pub of each pipeline");
        }
        let keys = r
            .pipeline_keys
            .iter()
            .map(|p| keyfile::load_verifying(p, SignerRole::Pipeline))
            .collect::<Result<Vec<_>>>()?;
        let outcome_keys = r
            .outcome_keys
            .iter()
            .map(|p| keyfile::load_verifying(p, SignerRole::Outcome))
            .collect::<Result<Vec<_>>>()?;
        if outcome_keys.is_empty() {
            tracing::warn!("[reverse] outcome_keys is empty: outcomes from the high side are refused into quarantine (list its outcome.pub to see deployments come back)");
        }
        for d in [&r.processed, &r.quarantine] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(Inbox {
            inbox: r.inbox.clone(),
            processed: r.processed.clone(),
            quarantine: r.quarantine.clone(),
            trust: PipelineKeys {
                keys,
                skew: secs("skew", &r.skew)?,
                max_age: secs("max_age", &r.max_age)?,
            },
            outcome_keys,
        })
    }

    /// One look at the inbox: every request and outcome file in it is taken or refused and moved out.
    /// Returns what chat must show: a Post for each request taken now, an Update for each request an
    /// outcome was taken for. An error of the adapter's own (audit log, database) stops the look and
    /// leaves the file where it is, for the next one.
    pub fn scan(&self, engine: &Engine) -> Result<Vec<Effect>> {
        let mut files = Vec::new();
        self.find(&self.inbox, &mut files);
        files.sort();
        let mut taken = Vec::new();
        for path in files {
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
                continue;
            };
            if name.ends_with(OUTCOME_SUFFIX) {
                let bytes = match read_bounded(&path, MAX_OUTCOME_BYTES) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("reverse inbox: cannot read {}: {e}", path.display());
                        continue;
                    }
                };
                match engine.outcome_signed(&bytes, &self.outcome_keys, &name)? {
                    Ok(t) => {
                        if let returned::Taken::New(Some(request)) = t {
                            let e = Effect::Update { request };
                            if !taken.contains(&e) {
                                taken.push(e);
                            }
                        }
                        self.processed_or_removed(&path, &name);
                    }
                    Err(r) => {
                        self.move_out(&path, &self.quarantine, &format!("{name}.{}", r.code()))
                    }
                }
                continue;
            }
            let bytes = match read_bounded(&path, MAX_REQUEST_BYTES) {
                Ok(b) => b,
                Err(e) => {
                    // gone meanwhile, or unreadable: looked at again next time
                    tracing::warn!("reverse inbox: cannot read {}: {e}", path.display());
                    continue;
                }
            };
            match engine.request_signed(&bytes, &self.trust)? {
                Ok(Taken::New(req)) => {
                    tracing::info!("request {} taken from {}", req.id, path.display());
                    self.move_out(&path, &self.processed, &name);
                    taken.push(Effect::Post { request: req.id });
                }
                Ok(Taken::Repeat(id)) => {
                    tracing::debug!("request {id} again in {}: already taken", path.display());
                    self.processed_or_removed(&path, &name);
                }
                Err(r) => {
                    tracing::warn!("refused {}: {r}", path.display());
                    self.move_out(&path, &self.quarantine, &format!("{name}.{}", r.code()));
                }
            }
        }
        Ok(taken)
    }

    /// A file taken before (a repeat) is removed if `processed` holds it already, else moved there.
    fn processed_or_removed(&self, path: &Path, name: &str) {
        if self.processed.join(name).exists() {
            if let Err(e) = fs::remove_file(path) {
                tracing::error!("cannot remove {}: {e}", path.display());
            }
        } else {
            self.move_out(path, &self.processed, name);
        }
    }

    /// Request and outcome files under `dir`, depth first; hidden entries (a receiver's files in the making) and
    /// the adapter's own folders are left alone, and symbolic links are not followed.
    fn find(&self, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let hidden = e.file_name().to_str().is_none_or(|n| n.starts_with('.'));
            if hidden || path == self.processed || path == self.quarantine {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => self.find(&path, out),
                Ok(t)
                    if t.is_file()
                        && [REQUEST_SUFFIX, OUTCOME_SUFFIX]
                            .iter()
                            .any(|s| path.to_string_lossy().ends_with(s)) =>
                {
                    out.push(path)
                }
                _ => {}
            }
        }
    }

    /// Move a file out of the inbox into `dir` as `name` (or `name.1`, … if taken). If it cannot be
    /// moved it is removed, so that it is not taken or refused again on every look.
    fn move_out(&self, from: &Path, dir: &Path, name: &str) {
        let to = free_name(dir, name);
        let moved = fs::rename(from, &to).or_else(|_| {
            // another file system
            fs::copy(from, &to).and_then(|_| fs::remove_file(from))
        });
        if let Err(e) = moved {
            tracing::error!(
                "cannot move {} to {}: {e}; removing it",
                from.display(),
                to.display()
            );
            if let Err(e) = fs::remove_file(from) {
                tracing::error!("cannot remove {}: {e}", from.display());
            }
        }
    }
}

fn read_bounded(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `dir/name`, or `dir/name.1`, `.2`, … if taken.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..10_000)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}
