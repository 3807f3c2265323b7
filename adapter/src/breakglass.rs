//! Break-glass: an envelope built from command-line flags, for a pipeline or for when chat is down.
//! The people are named on the command line (source `cli`), the rule records the reason, and the same
//! refusals as in chat apply before anything is signed: no self-approval, no one counted twice.

use anyhow::{anyhow, bail, Result};
use diode_proto::envelope::{digest_ok, Approver, Artifact, Decision, Envelope};
use std::collections::BTreeSet;
use std::time::Duration;

/// What the operator asked for, as given on the command line.
pub struct Request {
    pub artifact: String,
    pub version: String,
    pub digest: String,
    pub environment: String,
    /// Each `id:name:role`.
    pub approvers: Vec<String>,
    pub requester: String,
    pub reason: String,
    pub request_id: Option<String>,
    pub valid: Duration,
    pub decision: Decision,
}

/// `id:name:role` -> an approver from source `cli`, deciding at `now`.
pub fn parse_approver(s: &str, now: u64) -> Result<Approver> {
    let parts: Vec<&str> = s.split(':').map(str::trim).collect();
    let [id, name, role] = parts[..] else {
        bail!("--approver {s:?}: use id:name:role, e.g. \"u123:Ada Lovelace:release-manager\" (no ':' inside the parts)");
    };
    if id.is_empty() || name.is_empty() || role.is_empty() {
        bail!("--approver {s:?}: id, name and role must all be given (id:name:role)");
    }
    Ok(Approver {
        id: id.to_string(),
        name: name.to_string(),
        role: role.to_string(),
        source: "cli".into(),
        at: now,
    })
}

/// Build the envelope, unsigned. `id` and `fresh_request_id` are random values passed in (the latter is
/// used only when the request names none), so that this stays a pure function of its inputs.
pub fn build(req: &Request, now: u64, id: String, fresh_request_id: String) -> Result<Envelope> {
    if !digest_ok(&req.digest) {
        bail!(
            "--digest {:?}: must be \"sha256:\" followed by 64 lowercase hex digits (as `sha256sum` prints them)",
            req.digest
        );
    }
    if req.reason.trim().is_empty() {
        bail!("--reason is empty: say why the approval bypasses chat (it is signed and audited)");
    }
    let approvers = req
        .approvers
        .iter()
        .map(|a| parse_approver(a, now))
        .collect::<Result<Vec<_>>>()?;
    let mut seen = BTreeSet::new();
    for a in &approvers {
        if !seen.insert(a.id.as_str()) {
            bail!(
                "approver {:?} is named twice: each person counts once",
                a.id
            );
        }
    }
    if req.decision == Decision::Approve && seen.contains(req.requester.trim()) {
        bail!(
            "requester {:?} is also an approver: nobody may approve their own request",
            req.requester.trim()
        );
    }
    let expires_at = now
        .checked_add(req.valid.as_secs())
        .ok_or_else(|| anyhow!("validity {:?} is out of range", req.valid))?;
    let env = Envelope {
        id,
        request_id: req.request_id.clone().unwrap_or(fresh_request_id),
        decision: req.decision,
        artifact: Artifact {
            name: req.artifact.clone(),
            version: req.version.clone(),
            digest: req.digest.clone(),
        },
        environment: req.environment.clone(),
        approvers,
        requester: req.requester.trim().to_string(),
        rule: format!("break-glass: {}", req.reason.trim()),
        issued_at: now,
        expires_at,
    };
    env.check_shape().map_err(|e| {
        anyhow!("refusing to sign: {e} (the rule is \"break-glass: \" followed by --reason)")
    })?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            artifact: "billing".into(),
            version: "1.4.2".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            environment: "prod".into(),
            approvers: vec!["u1:Ada:release-manager".into(), "u2:Bob:security".into()],
            requester: "u9".into(),
            reason: "chat is down".into(),
            request_id: None,
            valid: Duration::from_secs(3600),
            decision: Decision::Approve,
        }
    }

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn build_it(r: &Request) -> Result<Envelope> {
        build(r, 1_800_000_000, ID.into(), "fresh".into())
    }

    #[test]
    fn builds_what_was_asked() {
        let e = build_it(&request()).unwrap();
        assert_eq!(e.id, ID);
        assert_eq!(e.request_id, "fresh");
        assert_eq!(e.rule, "break-glass: chat is down");
        assert_eq!(e.expires_at - e.issued_at, 3600);
        assert_eq!(e.approvers[1].role, "security");
        assert!(e
            .approvers
            .iter()
            .all(|a| a.source == "cli" && a.at == e.issued_at));
        let mut r = request();
        r.request_id = Some("CHG-7".into());
        assert_eq!(build_it(&r).unwrap().request_id, "CHG-7");
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |r: &Request| format!("{:#}", build_it(r).unwrap_err());
        let mut r = request();
        r.requester = "u2".into();
        assert!(err(&r).contains("own request"));
        // a requester may still record a rejection of their own request
        r.decision = Decision::Reject;
        assert!(build_it(&r).is_ok());
        let mut r = request();
        r.approvers.push("u1:Ada again:security".into());
        assert!(err(&r).contains("named twice"));
        let mut r = request();
        r.digest = format!("sha256:{}", "AB".repeat(32));
        assert!(err(&r).contains("--digest"));
        let mut r = request();
        r.approvers = vec!["u1:Ada".into()];
        assert!(err(&r).contains("id:name:role"));
        let mut r = request();
        r.approvers = vec!["u1::security".into()];
        assert!(err(&r).contains("must all be given"));
        let mut r = request();
        r.reason = " ".into();
        assert!(err(&r).contains("--reason"));
        let mut r = request();
        r.reason = "x".repeat(300);
        assert!(err(&r).contains("refusing to sign"));
    }
}
