//! The low side's end of the reverse diode: signed requests from pipelines inside the air gap arrive as
//! `<id>.request` files (`diode_proto::request`) in the reverse receiver's inbox, in subfolders too.
//! Each is read (never more than `MAX_REQUEST_BYTES` + 1 bytes), handed to the engine, which verifies,
//! audits and records it (`Engine::request_signed`), and moved out of the inbox: to `processed` when
//! taken or a repeat, to `quarantine` as `<file>.<reason code>` when refused. Only a taken request is
//! ever posted.

use crate::approval::{Engine, PipelineKeys, Taken};
use crate::config;
use anyhow::{bail, Context, Result};
use diode_host::keyfile;
use diode_proto::envelope::SignerRole;
use diode_proto::request::{MAX_REQUEST_BYTES, REQUEST_SUFFIX};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct Inbox {
    inbox: PathBuf,
    processed: PathBuf,
    quarantine: PathBuf,
    trust: PipelineKeys,
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
        })
    }

    /// One look at the inbox: every request file in it is taken or refused and moved out. Returns the
    /// ids of the requests taken now (to be posted). An error of the adapter's own (audit log, database)
    /// stops the look and leaves the file where it is, for the next one.
    pub fn scan(&self, engine: &Engine) -> Result<Vec<String>> {
        let mut files = Vec::new();
        self.find(&self.inbox, &mut files);
        files.sort();
        let mut taken = Vec::new();
        for path in files {
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
                continue;
            };
            let bytes = match read_bounded(&path) {
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
                    taken.push(req.id);
                }
                Ok(Taken::Repeat(id)) => {
                    tracing::debug!("request {id} again in {}: already taken", path.display());
                    if self.processed.join(&name).exists() {
                        if let Err(e) = fs::remove_file(&path) {
                            tracing::error!("cannot remove {}: {e}", path.display());
                        }
                    } else {
                        self.move_out(&path, &self.processed, &name);
                    }
                }
                Err(r) => {
                    tracing::warn!("refused {}: {r}", path.display());
                    self.move_out(&path, &self.quarantine, &format!("{name}.{}", r.code()));
                }
            }
        }
        Ok(taken)
    }

    /// Request files under `dir`, depth first; hidden entries (a receiver's files in the making) and
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
                Ok(t) if t.is_file() && path.to_string_lossy().ends_with(REQUEST_SUFFIX) => {
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

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_REQUEST_BYTES as u64 + 1)
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
