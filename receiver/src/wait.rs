//! `diode-recv approvals wait`: the high side's pipeline step that blocks until the answer to its request
//! (`diode-send request` on the reverse link) has come back through the forward diode as an envelope whose
//! `request_id` is the request's id. Exit codes are the pipeline's contract, see `Answer::code`.

use crate::approvals;
use crate::config::Config;
use anyhow::{bail, Result};
use diode_proto::envelope::{is_hex_id, Decision};
use std::time::{Duration, Instant};

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A valid approval (consumed now if asked): its envelope id.
    Approved(String),
    /// People rejected the request: who and the rule.
    Rejected(String),
    /// Nobody decided by the low side's deadline, or the approval's own validity ran out before use.
    Expired(String),
    /// The approval exists but was already used.
    Consumed(String),
    /// Nothing came back within --timeout.
    TimedOut,
}

impl Answer {
    pub fn code(&self) -> i32 {
        match self {
            Answer::Approved(_) => 0,
            Answer::Rejected(_) => 2,
            Answer::Expired(_) => 3,
            Answer::TimedOut => 4,
            Answer::Consumed(_) => 5,
        }
    }
}

/// Poll the accepted envelopes (re-verified each time, as `approvals list` does) for the answer.
pub fn wait(
    cfg: &Config,
    request: &str,
    timeout: Duration,
    consume: bool,
    by: Option<&str>,
) -> Result<Answer> {
    if !is_hex_id(request, 32) {
        bail!("--request must be the 32 lowercase hex digits `diode-send request` printed");
    }
    let end = Instant::now() + timeout;
    loop {
        let answers: Vec<approvals::Listed> = approvals::list(cfg)?
            .into_iter()
            .filter(|l| l.env.envelope.request_id == request)
            .collect();
        // a rejection wins over anything else for the same request: it only ever stops a deployment
        if let Some(l) = answers.iter().find(|l| l.state == "rejection") {
            let e = &l.env.envelope;
            return Ok(if e.approvers.is_empty() {
                Answer::Expired(format!("{} ({})", e.id, e.rule))
            } else {
                let who: Vec<String> = e
                    .approvers
                    .iter()
                    .map(|a| format!("{} ({})", a.name, a.role))
                    .collect();
                Answer::Rejected(format!("{} by {}", e.id, who.join(", ")))
            });
        }
        if let Some(l) = answers.iter().find(|l| l.state == "valid") {
            let e = &l.env.envelope;
            if e.decision == Decision::Approve {
                if !consume {
                    return Ok(Answer::Approved(e.id.clone()));
                }
                match approvals::consume(cfg, &e.artifact.digest, &e.environment, Some(&e.id), by)?
                {
                    Some(c) => return Ok(Answer::Approved(c.envelope.id)),
                    None => return Ok(Answer::Consumed(e.id.clone())),
                }
            }
        }
        if let Some(l) = answers.iter().find(|l| l.state == "consumed") {
            return Ok(Answer::Consumed(l.env.envelope.id.clone()));
        }
        if let Some(l) = answers.iter().find(|l| l.state == "expired") {
            return Ok(Answer::Expired(format!(
                "{} (the approval's validity ran out before it was used)",
                l.env.envelope.id
            )));
        }
        if Instant::now() >= end {
            return Ok(Answer::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
