//! Emitting a signed envelope: record it in the audit log, then write it into the sender's outbox as
//! `<id>.envelope`, atomically (a hidden temporary beside it, fsynced, then renamed; the sender never
//! takes hidden files). The audit record comes first so that no envelope ever exists without one: if
//! the audit write fails, nothing is emitted. Break-glass uses this now, the chat adapter will too.

use anyhow::{bail, Context, Result};
use diode_host::audit::AuditLog;
use diode_proto::envelope::{SignedEnvelope, MAX_ENVELOPE_BYTES};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Write `signed` into `outbox` after recording it in `audit` with `extra` fields (how it was made,
/// by whom, why). Returns the path of the envelope file.
pub fn emit(
    outbox: &Path,
    audit: &AuditLog,
    signed: &SignedEnvelope,
    extra: Map<String, Value>,
) -> Result<PathBuf> {
    if !outbox.is_dir() {
        bail!(
            "outbox {} is not a folder: point `outbox` in the config at the sender's outbox (diode-send's `outbox`)",
            outbox.display()
        );
    }
    let e = &signed.envelope;
    let path = outbox.join(format!("{}.envelope", e.id));
    if path.exists() {
        bail!("{} already exists: not overwriting it", path.display());
    }
    let mut text = signed.to_json();
    text.push('\n');
    // The high side parses exactly this: check here that it will, rather than learn it across the gap.
    if text.len() > MAX_ENVELOPE_BYTES
        || SignedEnvelope::parse(text.as_bytes()).as_ref() != Ok(signed)
    {
        bail!(
            "envelope {} does not encode to a file the high side accepts ({} bytes)",
            e.id,
            text.len()
        );
    }

    let mut fields = Map::new();
    let mut put = |k: &str, v: Value| fields.insert(k.into(), v);
    put("id", e.id.clone().into());
    put("request_id", e.request_id.clone().into());
    put("decision", e.decision.to_string().into());
    put("artifact", serde_json::to_value(&e.artifact)?);
    put("environment", e.environment.clone().into());
    put("approvers", serde_json::to_value(&e.approvers)?);
    put("requester", e.requester.clone().into());
    put("rule", e.rule.clone().into());
    put("issued_at", e.issued_at.into());
    put("expires_at", e.expires_at.into());
    put("signer", signed.signer.clone().into());
    put("file", path.display().to_string().into());
    fields.extend(extra);
    audit
        .append("emit", Value::Object(fields))
        .with_context(|| {
            format!(
                "cannot record envelope {} in the audit log {}: nothing was emitted",
                e.id,
                audit.path().display()
            )
        })?;

    if let Err(err) = diode_host::atomic::write_atomic(&path, text.as_bytes(), 0o644) {
        // Keep the log honest: the emit record above now stands for a file that never appeared.
        let _ = audit.append(
            "emit_failed",
            json!({ "id": e.id, "error": format!("{err:#}") }),
        );
        return Err(err).with_context(|| {
            format!(
                "envelope {} is recorded in the audit log but could not be written to the outbox",
                e.id
            )
        });
    }
    Ok(path)
}
