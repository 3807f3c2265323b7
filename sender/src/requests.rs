//! The reverse link's side of the sender: `diode-send request` (a pipeline inside the air gap asks for a
//! deployment approval with a signed request envelope) and the envelope-only mode, in which the sender
//! carries nothing but signed envelopes of bounded size, so the outbound diode cannot carry data out.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use diode_host::atomic::write_atomic;
use diode_proto::envelope::{Artifact, SignedEnvelope, SignerRole};
use diode_proto::object::ENVELOPE_SUFFIX;
use diode_proto::outcome::{SignedOutcome, OUTCOME_SUFFIX};
use diode_proto::request::{Request, SignedRequest, REQUEST_SUFFIX};
use std::path::{Path, PathBuf};

/// Envelopes, requests and outcomes jump the queue and are repeated (see `REPEATS` in transmit.rs).
pub fn is_urgent(name: &str) -> bool {
    name.ends_with(ENVELOPE_SUFFIX)
        || name.ends_with(REQUEST_SUFFIX)
        || name.ends_with(OUTCOME_SUFFIX)
}

/// In envelope-only mode: why this file may not travel, or None if it may. Only a signed request,
/// approval envelope or high-side outcome, named as one, within `max_envelope_bytes`, whose JSON parses and has the right
/// shape. (Its signature is for the far side to judge, with its own trusted keys.)
pub fn envelope_only_refusal(cfg: &Config, path: &Path, name: &str) -> Option<String> {
    if !cfg.envelope_only {
        return None;
    }
    if !is_urgent(name) {
        return Some(format!(
            "not an envelope: envelope_only = true carries only *{REQUEST_SUFFIX}, *{OUTCOME_SUFFIX} and *{ENVELOPE_SUFFIX} files"
        ));
    }
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return Some(format!("cannot read it: {e}")),
    };
    if size > cfg.max_envelope_bytes as u64 {
        return Some(format!(
            "{size} bytes, more than max_envelope_bytes = {}",
            cfg.max_envelope_bytes
        ));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Some(format!("cannot read it: {e}")),
    };
    let parsed = if name.ends_with(REQUEST_SUFFIX) {
        SignedRequest::parse(&bytes).map(|_| ())
    } else if name.ends_with(OUTCOME_SUFFIX) {
        SignedOutcome::parse(&bytes).map(|_| ())
    } else {
        SignedEnvelope::parse(&bytes).and_then(|e| e.envelope.check_shape())
    };
    parsed
        .err()
        .map(|e| format!("not a well-formed envelope: {e}"))
}

/// Move a refused file (out of the outbox, or out of the sent area when it turned out unsendable) into
/// `state/refused/`, so it is neither sent, nor tried again, nor lost.
pub fn set_aside(cfg: &Config, path: &Path, name: &str, why: &str) {
    let dir = cfg.state.join("refused");
    let dest = dir.join(format!(
        "{}-{}",
        diode_host::unix_now(),
        name.replace('/', "_")
    ));
    let moved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::rename(path, &dest));
    match moved {
        Ok(()) => tracing::error!(file = %name, reason = %why, moved_to = %dest.display(),
            "refused: the file was not sent and is set aside, once"),
        Err(e) => tracing::error!(file = %name, reason = %why, error = %e,
            "refused: the file was not sent and could not be set aside"),
    }
}

/// What `diode-send request` is given.
#[derive(clap::Args)]
pub struct NewRequest {
    /// Artifact name, e.g. billing
    #[arg(long)]
    pub artifact: String,
    /// Artifact version, e.g. 1.4.2
    #[arg(long)]
    pub version: String,
    /// sha256: and 64 lowercase hex digits: the exact artifact to approve
    #[arg(long)]
    pub digest: String,
    /// Environment, as named in the low side's policy
    #[arg(long)]
    pub env: String,
    /// Why, shown to the approvers
    #[arg(long)]
    pub reason: String,
    /// Who asks (shown to the approvers)
    #[arg(long, default_value = "pipeline")]
    pub requester: String,
}

/// Sign a request with `pipeline_key` and put it in the outbox; returns its id and path.
pub fn write_request(cfg: &Config, new: NewRequest) -> Result<(String, PathBuf)> {
    let Some(key_path) = &cfg.pipeline_key else {
        bail!(
            "this send.toml has no pipeline_key: make one with `diode-send keygen --pipeline --dir DIR` \
             and set pipeline_key = \"DIR/pipeline.key\""
        );
    };
    let key = diode_host::keyfile::load_signing(key_path, SignerRole::Pipeline)?;
    let request = Request {
        id: hex::encode(rand::random::<[u8; 16]>()),
        artifact: Artifact {
            name: new.artifact,
            version: new.version,
            digest: new.digest,
        },
        environment: new.env,
        requester: new.requester,
        reason: new.reason,
        created_at: diode_host::unix_now(),
    };
    request
        .check_shape()
        .map_err(|e| anyhow::anyhow!("the request is not valid: {e}"))?;
    let signed = request.sign(&key);
    let path = cfg.outbox.join(signed.file_name());
    write_atomic(&path, signed.to_json().as_bytes(), 0o644)
        .with_context(|| format!("cannot write the request into {}", cfg.outbox.display()))?;
    Ok((signed.request.id, path))
}
