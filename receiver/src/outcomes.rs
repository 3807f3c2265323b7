//! Outcomes back to the low side (`[approvals.outcomes]`): each record of the approvals audit log —
//! accepted, refused, consumed, each hook run — is signed with the outcome key
//! (`diode_proto::outcome`) and written as `<hash>.outcome` into the reverse link's outbox, in order,
//! whoever appended it (the daemon, `approvals consume`, the hook runner). The daemon looks once a
//! second: one read of the head file when nothing is new.
//!
//! `state/approvals/outcomes.sent` holds the sequence number of the last record written out. A crash
//! between writing a file and noting it writes the same file again (same record, same name): the low
//! side takes each record once. A record that cannot travel (longer than an outcome may carry, or with
//! a field the low side would refuse) is skipped with an `outcome_skipped` record naming it, which
//! itself travels: the low side sees the gap and why.

use crate::config::OutcomesConfig;
use anyhow::{Context, Result};
use diode_host::atomic::write_atomic;
use diode_host::audit::AuditLog;
use diode_host::keyfile;
use diode_proto::envelope::{SignerRole, SigningKey};
use diode_proto::outcome::{Outcome, MAX_OUTCOME_BYTES};
use serde_json::json;
use std::fs;
use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Records written out per look, so that a long backlog (outcomes turned on over an old log) neither
/// holds up reception nor floods the reverse link's outbox at once.
const BATCH: usize = 64;

pub struct Reporter {
    outbox: PathBuf,
    key: SigningKey,
    name: String,
    position: PathBuf,
    sent: u64,
    /// The record after `sent` starts at this byte of the log (seq, offset), once a look has read there.
    resume: Option<(u64, u64)>,
}

impl Reporter {
    /// `dir` is the approvals state folder (`state/approvals`).
    pub fn open(cfg: &OutcomesConfig, dir: &Path) -> Result<Reporter> {
        let key = keyfile::load_signing(&cfg.key, SignerRole::Outcome)?;
        fs::create_dir_all(&cfg.outbox)
            .with_context(|| format!("cannot create {}", cfg.outbox.display()))?;
        let position = dir.join("outcomes.sent");
        let sent = match fs::read_to_string(&position) {
            Ok(t) => t.trim().parse().with_context(|| {
                format!("{} is damaged: not a record number", position.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", position.display())),
        };
        tracing::info!(key = %key.public().id_hex(), outbox = %cfg.outbox.display(), after = sent,
            "sending a signed outcome for every approvals audit record back through the reverse link");
        Ok(Reporter {
            outbox: cfg.outbox.clone(),
            key,
            name: cfg.name.clone(),
            position,
            sent,
            resume: None,
        })
    }

    /// Write out the records appended since the last look (at most `BATCH`). Returns how many.
    pub fn report(&mut self, audit: &AuditLog) -> Result<usize> {
        let head = audit.head()?;
        if head.count <= self.sent {
            return Ok(0);
        }
        let mut f = match fs::File::open(audit.path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", audit.path().display()))
            }
        };
        // where the next record starts, when known from the last look: the log is only appended to, so
        // a look reads what is new, not the whole log again
        let (mut seq, mut offset) = match self.resume {
            Some((s, o)) if s == self.sent => (s, o),
            _ => (0, 0),
        };
        f.seek(SeekFrom::Start(offset))
            .with_context(|| format!("cannot read {}", audit.path().display()))?;
        let mut reader = std::io::BufReader::new(f);
        let mut written = 0;
        let mut skipped = Vec::new();
        let mut line = String::new();
        while written + skipped.len() < BATCH {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .with_context(|| format!("cannot read {}", audit.path().display()))?;
            if n == 0 || !line.ends_with('\n') {
                break; // the end, or a record still being written
            }
            offset += n as u64;
            seq += 1;
            if seq <= self.sent {
                continue;
            }
            let line = line.trim_end_matches('\n').to_string();
            let signed = Outcome {
                receiver: self.name.clone(),
                record: line,
            }
            .sign(&self.key);
            let mut text = signed.to_json();
            text.push('\n');
            match signed.file_name() {
                Ok(_) if text.len() > MAX_OUTCOME_BYTES => skipped.push((
                    seq,
                    format!(
                        "{} bytes as an outcome, more than {MAX_OUTCOME_BYTES}",
                        text.len()
                    ),
                )),
                Ok(name) => {
                    write_atomic(&self.outbox.join(&name), text.as_bytes(), 0o644)?;
                    written += 1;
                }
                Err(why) => skipped.push((seq, why.to_string())),
            }
            self.sent = seq;
            self.resume = Some((seq, offset));
            write_atomic(&self.position, format!("{seq}\n").as_bytes(), 0o644)?;
        }
        for (seq, why) in skipped {
            tracing::error!(record = seq, why = %why, "an audit record cannot travel as an outcome; the low side is told which and why");
            audit.append("outcome_skipped", json!({"record": seq, "why": why}))?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diode_proto::outcome::{Event, SignedOutcome};

    #[test]
    fn every_record_goes_out_once_signed_in_order_and_one_that_cannot_travel_is_named() -> Result<()>
    {
        let dir = tempfile::tempdir()?;
        let keys = dir.path().join("keys");
        keyfile::generate_signing(&keys, SignerRole::Outcome)?;
        let public = keyfile::load_verifying(&keys.join("outcome.pub"), SignerRole::Outcome)?;
        let cfg = OutcomesConfig {
            outbox: dir.path().join("outbox"),
            key: keys.join("outcome.key"),
            name: "high-1".into(),
        };
        let audit = AuditLog::new(dir.path().join("audit.jsonl"));
        let id = "ab".repeat(16);
        audit.append(
            "accept",
            json!({"id": id, "request_id": "cd".repeat(16), "decision": "approve"}),
        )?;
        audit.append("consume", json!({"id": id, "by": "ci-runner-3"}))?;
        // a hook's detail that the low side would refuse to show (a bidi override)
        audit.append(
            "hook",
            json!({"id": id, "ok": false, "detail": "exit \u{202e}1"}),
        )?;
        let mut r = Reporter::open(&cfg, dir.path())?;
        assert_eq!(r.report(&audit)?, 2);
        // the skip is itself a record, sent at the next look; nothing is sent twice
        assert_eq!(r.report(&audit)?, 1);
        assert_eq!(r.report(&audit)?, 0);
        let mut got: Vec<_> = fs::read_dir(&cfg.outbox)?
            .map(|e| -> Result<_> {
                let o = SignedOutcome::parse(&fs::read(e?.path())?)?;
                Ok(o.verify(std::slice::from_ref(&public))?)
            })
            .collect::<Result<_>>()?;
        got.sort_by_key(|f| f.link.seq);
        let seqs: Vec<u64> = got.iter().map(|f| f.link.seq).collect();
        assert_eq!(seqs, [1, 2, 4]);
        assert_eq!(got[1].event, Event::Consumed);
        assert_eq!(got[1].by.as_deref(), Some("ci-runner-3"));
        assert_eq!(got[2].event, Event::Other("outcome_skipped".into()));
        assert!(got[1].link.follows(&got[0].link));
        // a restart carries on after the last record noted
        audit.append(
            "consume",
            json!({"id": "ef".repeat(16), "by": "ci-runner-4"}),
        )?;
        let mut again = Reporter::open(&cfg, dir.path())?;
        assert_eq!(again.report(&audit)?, 1);
        assert_eq!(fs::read_dir(&cfg.outbox)?.count(), 4);
        Ok(())
    }
}
