//! Approval envelopes on the high side: verification with the high side's own rules, the registry of
//! envelope ids ever received, the `approvals/` and `quarantine/` folders, the hook, the audit log, and
//! the `approvals list|check|consume` and `audit verify` commands a deploy pipeline runs.
//!
//! Files under `state/approvals/`:
//! - `seen`: one envelope id per line, every envelope ever accepted (fsynced; an approval whose id cannot
//!   be recorded is withdrawn), so the same envelope is never accepted twice, across restarts;
//! - `consumed`: one id per line, fsynced, written under the audit lock so that of two racing `consume`
//!   calls exactly one wins;
//! - `audit.jsonl` (+ `.head`, `.lock`): the hash-chained audit log.

use crate::config::{ApprovalsConfig, Config};
use crate::hook_runner::HookRunner;
use anyhow::{bail, Context, Result};
use diode_host::atomic::write_atomic;
use diode_host::audit::AuditLog;
use diode_host::keyfile;
use diode_proto::envelope::{self, Decision, Reject, SignedEnvelope, SignerRole, VerifyingKey};
use serde_json::json;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Approvals {
    cfg: ApprovalsConfig,
    trusted: Vec<VerifyingKey>,
    audit: AuditLog,
    seen: HashSet<String>,
    dir: PathBuf,
    /// The helper that runs `[approvals] hook` outside the sandbox, when one is configured.
    hooks: Option<HookRunner>,
    /// Where the approval and audit metrics go (beside recv.toml's `metrics_file`), if anywhere.
    metrics: Option<PathBuf>,
    /// Signed outcomes back through the reverse link, when `[approvals.outcomes]` is set.
    outcomes: Option<crate::outcomes::Reporter>,
    /// Whether the last outcome report failed (said once per failure streak).
    outcomes_failing: bool,
}

fn registry(dir: &Path, name: &str) -> HashSet<String> {
    fs::read_to_string(dir.join(name))
        .map(|t| t.lines().map(|l| l.trim().to_string()).collect())
        .unwrap_or_default()
}

fn append_id(path: &Path, id: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|_| f.sync_data())
        .with_context(|| format!("cannot record in {}", path.display()))
}

pub fn state_dir(cfg: &Config) -> PathBuf {
    cfg.state.join("approvals")
}

pub fn audit_log(cfg: &Config) -> AuditLog {
    AuditLog::new(state_dir(cfg).join("audit.jsonl"))
}

fn load_keys(cfg: &ApprovalsConfig) -> Result<Vec<VerifyingKey>> {
    cfg.adapters
        .iter()
        .map(|p| keyfile::load_verifying(p, SignerRole::Adapter))
        .collect()
}

impl Approvals {
    pub fn open(cfg: &Config, hooks: Option<HookRunner>) -> Result<Option<Self>> {
        let Some(a) = cfg.approvals.clone() else {
            return Ok(None);
        };
        let dir = state_dir(cfg);
        for d in [&dir, &a.folder, &a.quarantine] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let trusted = load_keys(&a)?;
        for k in &trusted {
            tracing::info!(adapter = %k.id_hex(), "trusting approval envelopes signed by this adapter key");
        }
        let outcomes = a
            .outcomes
            .as_ref()
            .map(|o| crate::outcomes::Reporter::open(o, &dir))
            .transpose()?;
        let mut me = Approvals {
            outcomes,
            outcomes_failing: false,
            seen: registry(&dir, "seen"),
            audit: audit_log(cfg),
            trusted,
            cfg: a,
            dir,
            hooks,
            metrics: metrics_path(cfg),
        };
        me.save_metrics();
        me.report_outcomes();
        Ok(Some(me))
    }

    /// Send the audit records appended since the last look back to the low side as signed outcomes,
    /// if configured. A failure (a full outbox disk) is logged once per streak and tried again.
    pub fn report_outcomes(&mut self) {
        let Some(r) = self.outcomes.as_mut() else {
            return;
        };
        match r.report(&self.audit) {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(records = n, "outcomes written for the low side");
                }
                self.outcomes_failing = false;
            }
            Err(e) if !self.outcomes_failing => {
                self.outcomes_failing = true;
                tracing::error!(error = %format!("{e:#}"), "cannot write outcomes for the low side; trying again every second");
            }
            Err(_) => {}
        }
    }

    fn save_metrics(&self) {
        // best effort: a failure is logged, never fatal to reception
        if let Some(p) = &self.metrics {
            if let Err(e) = save_metrics(p, &self.audit) {
                tracing::warn!(error = %format!("{e:#}"), path = %p.display(), "cannot write the approval metrics");
            }
        }
    }

    /// `deliver`, then the metrics written again (an accepted or quarantined approval changes them).
    pub fn deliver(&mut self, bytes: &[u8], wire_name: &str) -> Result<PathBuf> {
        let r = self.deliver_one(bytes, wire_name);
        self.save_metrics();
        self.report_outcomes();
        r
    }

    /// An envelope object arrived whole and hash-verified: accept it into `approvals/` or refuse it into
    /// `quarantine/`, with an audit record either way. Returns where it went.
    fn deliver_one(&mut self, bytes: &[u8], wire_name: &str) -> Result<PathBuf> {
        let now = diode_host::unix_now();
        let parsed = SignedEnvelope::parse(bytes);
        let id = parsed
            .as_ref()
            .ok()
            .map(|e| e.envelope.id.clone())
            .filter(|id| envelope::is_hex_id(id, 32));
        let verdict = parsed.and_then(|e| {
            envelope::verify(&e, &self.trusted, &self.cfg.rules, now, self.cfg.skew_secs)?;
            if self.seen.contains(&e.envelope.id) {
                return Err(Reject::Replayed(e.envelope.id.clone()));
            }
            Ok(e)
        });
        match verdict {
            Ok(env) => {
                let e = &env.envelope;
                // the file first, then the registry: if the file cannot be written (a full disk) the
                // envelope stays receivable; if the registry cannot be written the file is withdrawn,
                // so no approval is ever visible without its id being registered
                // the carrier byte for byte as it was signed and sent (docs/approvals.md §6), final
                // newline included: a pipeline may hash or re-verify exactly what the adapter wrote
                let path = self.cfg.folder.join(format!("{}.json", e.id));
                write_atomic(&path, bytes, 0o644)?;
                if let Err(err) = append_id(&self.dir.join("seen"), &e.id) {
                    let _ = fs::remove_file(&path);
                    return Err(err);
                }
                self.seen.insert(e.id.clone());
                self.audit.append(
                    "accept",
                    json!({"id": e.id, "request_id": e.request_id, "decision": e.decision.to_string(),
                        "artifact": e.artifact.name, "version": e.artifact.version, "digest": e.artifact.digest,
                        "environment": e.environment, "signer": env.signer, "expires_at": e.expires_at,
                        "approvers": e.approvers.iter().map(|a| format!("{} ({}, {})", a.id, a.role, a.source)).collect::<Vec<_>>()}),
                )?;
                tracing::info!(id = %e.id, decision = %e.decision, artifact = %e.artifact.name, digest = %e.artifact.digest,
                    env = %e.environment, path = %path.display(), "approval envelope accepted");
                if let Some(h) = &self.hooks {
                    // run by the helper outside the sandbox; it never holds up reception
                    h.submit(&e.id, &String::from_utf8_lossy(bytes));
                }
                Ok(path)
            }
            Err(why) => {
                let stem = match &id {
                    Some(id) => format!("{id}-{}-{now}", why.code()),
                    None => format!(
                        "{}-{}-{now}",
                        hex::encode(&sha2_digest(bytes)[..8]),
                        why.code()
                    ),
                };
                let path = self.cfg.quarantine.join(format!("{stem}.json"));
                let report = json!({
                    "reason": why.code(), "detail": why.to_string(), "received_at": now, "wire_name": wire_name,
                    "envelope": String::from_utf8_lossy(bytes),
                });
                write_atomic(
                    &path,
                    serde_json::to_string_pretty(&report)?.as_bytes(),
                    0o644,
                )?;
                self.audit.append(
                    "reject",
                    json!({"id": id, "reason": why.code(), "detail": why.to_string(), "quarantine": path.display().to_string()}),
                )?;
                tracing::warn!(id = ?id, reason = why.code(), detail = %why, path = %path.display(), "approval envelope refused");
                Ok(path)
            }
        }
    }
}

/// The approval and audit metrics file: beside `metrics_file`, named after it (`diode_recv.prom` gives
/// `diode_recv_approvals.prom`), so node_exporter's textfile collector reads both.
pub fn metrics_path(cfg: &Config) -> Option<PathBuf> {
    let m = cfg.metrics_file.as_deref()?;
    let stem = m.file_stem()?.to_string_lossy();
    Some(m.with_file_name(format!("{stem}_approvals.prom")))
}

/// Write the approval and audit metrics.
pub fn save_metrics(path: &Path, audit: &AuditLog) -> Result<()> {
    write_atomic(
        path,
        metrics_text(audit, diode_host::unix_now()).as_bytes(),
        0o644,
    )
}

/// A label value from a record: a reason code is a lowercase word; anything else (a log edited by hand)
/// becomes `other`, so nothing in a label needs escaping.
fn label_word(v: Option<&str>) -> String {
    match v {
        Some(w)
            if !w.is_empty()
                && w.len() <= 40
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
        {
            w.to_string()
        }
        _ => "other".to_string(),
    }
}

/// Approvals by outcome and the audit chain's state, in Prometheus' text format. Counted from the audit
/// log itself, so the counters survive restarts and include what `approvals consume` and the hook runner
/// appended; the chain is verified against its head file at every write.
pub fn metrics_text(audit: &AuditLog, now: u64) -> String {
    use crate::status::write_metric;
    use std::collections::BTreeMap;
    let (mut accepted, mut consumed, mut quarantined) = (0u64, 0u64, 0u64);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let (mut hook_ok, mut hook_failed) = (0u64, 0u64);
    for r in diode_host::audit::records(audit.path()) {
        match r["event"].as_str() {
            Some("accept") => accepted += 1,
            Some("consume") => consumed += 1,
            Some("reject") => {
                quarantined += 1;
                *reasons.entry(label_word(r["reason"].as_str())).or_default() += 1;
            }
            Some("hook") if r["ok"] == json!(true) => hook_ok += 1,
            Some("hook") => hook_failed += 1,
            _ => {}
        }
    }
    let verified = audit.verify();
    let mut o = String::new();
    let one = |v: u64| vec![(String::new(), v as f64)];
    write_metric(
        &mut o,
        "approvals_total",
        "counter",
        "Approval envelopes by outcome, from the audit log: accepted into approvals/, consumed by a pipeline, quarantined.",
        &[
            ("{outcome=\"accepted\"}".into(), accepted as f64),
            ("{outcome=\"consumed\"}".into(), consumed as f64),
            ("{outcome=\"quarantined\"}".into(), quarantined as f64),
        ],
    );
    write_metric(
        &mut o,
        "approvals_quarantined_total",
        "counter",
        "Approval envelopes refused into quarantine/, by reason (docs/approvals.md).",
        &reasons
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v as f64))
            .collect::<Vec<_>>(),
    );
    write_metric(
        &mut o,
        "approval_hooks_total",
        "counter",
        "Runs of the approval hook, by result.",
        &[
            ("{result=\"ok\"}".into(), hook_ok as f64),
            ("{result=\"failed\"}".into(), hook_failed as f64),
        ],
    );
    write_metric(
        &mut o,
        "audit_chain_ok",
        "gauge",
        "1 if the high side's audit log verified against its hash chain and head at the last check, 0 if broken.",
        &one(u64::from(verified.is_ok())),
    );
    write_metric(
        &mut o,
        "audit_records",
        "gauge",
        "Records in the audit log that verified at the last check (0 when the chain is broken).",
        &one(*verified.as_ref().unwrap_or(&0)),
    );
    write_metric(
        &mut o,
        "audit_checked_timestamp_seconds",
        "gauge",
        "When the audit chain was last checked (Unix time): at start, at each envelope and each consume.",
        &one(now),
    );
    o
}

fn sha2_digest(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// Run the hook with the envelope on stdin, at most `timeout` per attempt, `retries` more times after a
/// failure (1 s, 2 s, 4 s ... apart); each attempt's outcome is audited. Runs in the hook runner.
pub(crate) fn run_hook(
    hook: &[String],
    json: &str,
    id: &str,
    timeout: Duration,
    retries: u32,
    audit: &AuditLog,
) {
    let Some((prog, args)) = hook.split_first() else {
        return;
    };
    for attempt in 0..=retries {
        let outcome = run_once(prog, args, json, timeout);
        let ok = outcome.is_ok();
        let detail = match &outcome {
            Ok(()) => "exit 0".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if let Err(e) = audit.append(
            "hook",
            json!({"id": id, "attempt": attempt + 1, "ok": ok, "detail": detail}),
        ) {
            tracing::error!(error = %format!("{e:#}"), "cannot audit the hook run");
        }
        if ok {
            tracing::info!(id, attempt = attempt + 1, "approval hook succeeded");
            return;
        }
        tracing::warn!(id, attempt = attempt + 1, detail = %detail, "approval hook failed");
        if attempt < retries {
            std::thread::sleep(Duration::from_secs(1 << attempt.min(6)));
        }
    }
    tracing::error!(
        id,
        "approval hook failed after all retries; the approval stays in approvals/"
    );
}

fn run_once(prog: &str, args: &[String], json: &str, timeout: Duration) -> Result<()> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {prog}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(json.as_bytes()); // a hook that does not read stdin is fine
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{prog} exited with {status}");
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{prog} did not finish within {} s and was killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One approval file as the commands see it, re-verified now.
pub struct Listed {
    pub env: SignedEnvelope,
    pub state: &'static str,
    pub detail: String,
}

/// Every file in `approvals/`, re-verified against the current keys and rules (a file edited on the high
/// side after acceptance shows as invalid), with its state: valid, consumed, expired, rejection, invalid.
pub fn list(cfg: &Config) -> Result<Vec<Listed>> {
    let a = cfg
        .approvals
        .as_ref()
        .context("this recv.toml has no [approvals] section")?;
    let trusted = load_keys(a)?;
    let consumed = registry(&state_dir(cfg), "consumed");
    let now = diode_host::unix_now();
    let mut out = Vec::new();
    let rd = match fs::read_dir(&a.folder) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", a.folder.display())),
    };
    for f in rd.flatten() {
        let p = f.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(bytes) = fs::read(&p) else { continue };
        let Ok(env) = SignedEnvelope::parse(&bytes) else {
            continue;
        };
        let (state, detail) = match envelope::verify(&env, &trusted, &a.rules, now, a.skew_secs) {
            Err(Reject::Expired { .. }) => ("expired", String::new()),
            Err(e) => ("invalid", e.to_string()),
            Ok(()) if env.envelope.decision == Decision::Reject => ("rejection", String::new()),
            Ok(()) if consumed.contains(&env.envelope.id) => ("consumed", String::new()),
            Ok(()) => ("valid", String::new()),
        };
        out.push(Listed { env, state, detail });
    }
    out.sort_by_key(|l| l.env.envelope.issued_at);
    Ok(out)
}

/// A valid, unconsumed approval for this digest and environment (the newest), if any.
pub fn find(
    cfg: &Config,
    artifact: &str,
    env: &str,
    id: Option<&str>,
) -> Result<Option<SignedEnvelope>> {
    if !envelope::digest_ok(artifact) {
        bail!("--artifact must be sha256: followed by 64 lowercase hex digits");
    }
    Ok(list(cfg)?
        .into_iter()
        .rev()
        .filter(|l| l.state == "valid")
        .map(|l| l.env)
        .find(|e| {
            e.envelope.artifact.digest == artifact
                && e.envelope.environment == env
                && id.is_none_or(|id| e.envelope.id == id)
        }))
}

/// Consume one approval exactly once: under the audit lock, find a valid unconsumed one, record it as
/// consumed (fsynced) and audit it, naming `by` (the pipeline; default the user running this). Of racing callers for one approval, exactly one gets it.
pub fn consume(
    cfg: &Config,
    artifact: &str,
    env: &str,
    id: Option<&str>,
    by: Option<&str>,
) -> Result<Option<SignedEnvelope>> {
    if let Some(b) = by {
        if b.is_empty()
            || b.len() > 64
            || b.chars()
                .any(|c| c.is_control() || diode_proto::object::invisible(c))
        {
            bail!("--by must be 1-64 printable characters (the pipeline's name, e.g. ci-runner-3)");
        }
    }
    let by = by.map(str::to_string).unwrap_or_else(|| {
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_default()
    });
    let audit = audit_log(cfg);
    let found = audit.locked(|| {
        let Some(found) = find(cfg, artifact, env, id)? else {
            return Ok(None);
        };
        let e = &found.envelope;
        append_id(&state_dir(cfg).join("consumed"), &e.id)?;
        audit.append_locked(
            "consume",
            json!({"id": e.id, "request_id": e.request_id, "digest": e.artifact.digest, "environment": e.environment,
                "by": by, "pid": std::process::id()}),
        )?;
        Ok(Some(found))
    })?;
    // the pipeline's user may not be allowed to write there (then the daemon's next write brings the
    // figures up to date): not worth a line on the pipeline's stderr
    if let (Some(p), Some(_)) = (metrics_path(cfg), &found) {
        if let Err(e) = save_metrics(&p, &audit) {
            tracing::debug!(error = %format!("{e:#}"), path = %p.display(), "cannot write the approval metrics");
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn metrics_count_the_audit_log_and_see_a_broken_chain() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = AuditLog::new(dir.path().join("audit.jsonl"));
        log.append("accept", json!({"id": "a"}))?;
        log.append("accept", json!({"id": "b"}))?;
        log.append("consume", json!({"id": "a"}))?;
        log.append("reject", json!({"id": "c", "reason": "expired"}))?;
        log.append("reject", json!({"id": "d", "reason": "Bad\"Label\n"}))?;
        log.append("hook", json!({"id": "b", "ok": false}))?;
        let t = metrics_text(&log, 1234);
        for (name, want) in [
            ("diode_recv_approvals_total{outcome=\"accepted\"}", 2.0),
            ("diode_recv_approvals_total{outcome=\"consumed\"}", 1.0),
            ("diode_recv_approvals_total{outcome=\"quarantined\"}", 2.0),
            (
                "diode_recv_approvals_quarantined_total{reason=\"expired\"}",
                1.0,
            ),
            // a reason that is not a plain word never reaches a label as it is
            (
                "diode_recv_approvals_quarantined_total{reason=\"other\"}",
                1.0,
            ),
            ("diode_recv_approval_hooks_total{result=\"failed\"}", 1.0),
            ("diode_recv_approval_hooks_total{result=\"ok\"}", 0.0),
            ("diode_recv_audit_chain_ok", 1.0),
            ("diode_recv_audit_records", 6.0),
            ("diode_recv_audit_checked_timestamp_seconds", 1234.0),
        ] {
            assert_eq!(sample(&t, name), Some(want), "{name} in:\n{t}");
        }
        // one record edited: the chain no longer verifies
        let text = fs::read_to_string(log.path())?;
        fs::write(log.path(), text.replacen("\"b\"", "\"x\"", 1))?;
        let t = metrics_text(&log, 1235);
        assert_eq!(sample(&t, "diode_recv_audit_chain_ok"), Some(0.0), "{t}");
        assert_eq!(sample(&t, "diode_recv_audit_records"), Some(0.0), "{t}");
        Ok(())
    }
}
