//! Outcomes from the high side (`diode_proto::outcome`): each is one record of the high side's approvals
//! audit log — accepted, refused with its reason, consumed by a pipeline, a hook run — signed with the
//! high side's outcome key and carried back through the reverse diode. Here each is verified against
//! `[reverse] outcome_keys`, taken once by its place in the high side's chain (receiver name and `seq`),
//! audited (`outcome`, with the record and its signature, so `audit verify` can check them again and
//! check that the copies form the high side's chain), kept with its request, and shown on the request's
//! Slack message and Teams card. One that fails is audited (`outcome_refused`) and never shown.

use crate::approval::{rfc3339, Engine};
use crate::store::Returned;
use anyhow::Result;
use diode_proto::envelope::{Reject, VerifyingKey};
use diode_proto::outcome::{Event, Facts, SignedOutcome};
use serde_json::{Map, Value};

/// Why an outcome was not taken. `code()` is the word in the audit record and the quarantined file's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(Reject),
    #[error("record {seq} of {receiver} came before with other content: the high side's log was rewritten, or this one is forged")]
    Conflict { receiver: String, seq: u64 },
}

impl Refused {
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Invalid(r) => r.code(),
            Refused::Conflict { .. } => "conflicting_outcome",
        }
    }
}

/// An outcome that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// New: the request whose message now shows it, if it is one of ours.
    New(Option<String>),
    /// The same record again (the reverse link repeats small objects): nothing happens.
    Repeat,
}

/// "2026-12-05 14:02 UTC"
fn minute(t: u64) -> String {
    let s = rfc3339(t);
    match (s.get(..10), s.get(11..16)) {
        (Some(d), Some(m)) => format!("{d} {m} UTC"),
        _ => s,
    }
}

/// The first digits of an id, as people quote it.
fn short(id: &str) -> String {
    format!("{}…", id.get(..8).unwrap_or(id))
}

/// One sentence for people: what the high side did, when, and by whom.
pub fn summary(f: &Facts, receiver: &str, environment: Option<&str>) -> String {
    let when = minute(f.at);
    let env = f
        .environment
        .as_deref()
        .or(environment)
        .unwrap_or("its environment");
    let approval = f
        .envelope_id
        .as_deref()
        .map(|id| format!(" with approval {}", short(id)))
        .unwrap_or_default();
    match &f.event {
        Event::Accepted if f.decision.as_deref() == Some("reject") => {
            format!("Rejection recorded on {receiver} at {when}")
        }
        Event::Accepted => format!("Approval accepted on {receiver} at {when}, ready to deploy"),
        Event::Refused => {
            let reason = f.reason.as_deref().unwrap_or("refused").replace('_', " ");
            match &f.detail {
                Some(d) => format!("Refused on {receiver}: {reason} ({d}), at {when}"),
                None => format!("Refused on {receiver}: {reason}, at {when}"),
            }
        }
        Event::Consumed => format!(
            "Deployed to {env} at {when} by {}{approval}",
            f.by.as_deref().unwrap_or("a pipeline")
        ),
        Event::Hook => {
            let attempt = f
                .attempt
                .map(|a| format!(" (attempt {a})"))
                .unwrap_or_default();
            if f.ok == Some(true) {
                format!("Deploy hook succeeded on {receiver} at {when}{attempt}")
            } else {
                let detail = f
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                format!("Deploy hook failed on {receiver} at {when}{attempt}{detail}")
            }
        }
        Event::Other(w) => format!("{} recorded on {receiver} at {when}", w.replace('_', " ")),
    }
}

impl Engine {
    /// An outcome file from the reverse receiver's inbox (at most `MAX_OUTCOME_BYTES` + 1 bytes of it),
    /// named `file` there. Outer error: the adapter failed (audit log, database), and the file is left
    /// for the next look; inner: refused and audited.
    pub fn outcome_signed(
        &self,
        bytes: &[u8],
        trusted: &[VerifyingKey],
        file: &str,
    ) -> Result<Result<Taken, Refused>> {
        let parsed = SignedOutcome::parse(bytes).map_err(Refused::Invalid);
        let verified = parsed.and_then(|s| {
            let f = s.verify(trusted).map_err(Refused::Invalid)?;
            Ok((s, f))
        });
        let (s, f) = match verified {
            Ok(v) => v,
            Err(why) => return self.outcome_refused(file, None, why),
        };
        let receiver = s.outcome.receiver.clone();
        let hash = hex::encode(f.link.hash);
        match self.store().outcome_hash(&receiver, f.link.seq)? {
            Some(h) if h == hash => return Ok(Ok(Taken::Repeat)),
            Some(_) => {
                let why = Refused::Conflict {
                    receiver: receiver.clone(),
                    seq: f.link.seq,
                };
                return self.outcome_refused(file, Some(&s), why);
            }
            None => {}
        }
        let request = {
            let store = self.store();
            match (&f.envelope_id, &f.request_id) {
                (Some(e), _) => store.request_by_envelope(e)?,
                (None, Some(r)) => store.get(r)?.map(|r| r.id),
                (None, None) => None,
            }
        };
        let environment = match &request {
            Some(id) => self.store().get(id)?.map(|r| r.environment),
            None => None,
        };
        let returned = Returned {
            receiver: receiver.clone(),
            seq: f.link.seq,
            hash: hash.clone(),
            event: match (&f.event, f.ok) {
                (Event::Hook, Some(true)) => "hook".to_string(),
                (Event::Hook, _) => "hook_failed".to_string(),
                (e, _) => e.word().to_string(),
            },
            envelope_id: f.envelope_id.clone(),
            request_id: request.clone(),
            at: f.at,
            summary: summary(&f, &receiver, environment.as_deref()),
            received_at: self.now(),
        };
        // kept first, then audited: if the audit record cannot be written it is taken back out, so the
        // file is looked at again and nothing is shown that the audit log does not hold
        self.store().add_outcome(&returned)?;
        let mut a = Map::new();
        let mut put = |k: &str, v: Value| a.insert(k.into(), v);
        put("receiver", receiver.clone().into());
        put("high_seq", f.link.seq.into());
        put("high_event", returned.event.clone().into());
        put("high_at", f.at.into());
        put("envelope_id", f.envelope_id.clone().into());
        put("request_id", request.clone().into());
        put("summary", returned.summary.clone().into());
        put("file", file.into());
        put("record", s.outcome.record.clone().into());
        put("signer", s.signer.clone().into());
        put("signature", s.signature.clone().into());
        if let Err(e) = self.audit("outcome", a) {
            if let Err(r) = self.store().remove_outcome(&receiver, f.link.seq) {
                tracing::error!(
                    "cannot take outcome {receiver}#{} back out: {r:#}",
                    f.link.seq
                );
            }
            return Err(e);
        }
        tracing::info!(receiver = %receiver, record = f.link.seq, event = %returned.event,
            request = ?request, summary = %returned.summary, "outcome from the high side");
        Ok(Ok(Taken::New(request)))
    }

    fn outcome_refused(
        &self,
        file: &str,
        s: Option<&SignedOutcome>,
        why: Refused,
    ) -> Result<Result<Taken, Refused>> {
        let mut a = Map::new();
        a.insert("file".into(), file.into());
        a.insert("reason".into(), why.code().into());
        a.insert("detail".into(), why.to_string().into());
        if let Some(s) = s {
            a.insert("receiver".into(), s.outcome.receiver.clone().into());
            a.insert("signer".into(), s.signer.clone().into());
        }
        self.audit("outcome_refused", a)?;
        tracing::warn!(file, reason = why.code(), detail = %why, "outcome refused: quarantined, not shown");
        Ok(Err(why))
    }
}

/// What `audit verify` found of one high side's records among the outcomes in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub receiver: String,
    /// Records held, and the lowest and highest sequence numbers among them.
    pub records: u64,
    pub first: u64,
    pub last: u64,
    /// Ranges of the high side's records not (yet) come back, between `first` and `last`.
    pub gaps: Vec<(u64, u64)>,
    /// Records whose signature was checked again now; the others were signed by a key no longer in
    /// `outcome_keys` (rotated away), and were checked when they were taken.
    pub signatures_checked: u64,
}

/// Check the high side's records that came back, from the `outcome` records of our audit log (whose
/// own chain the caller has verified): each record's signature again (where its key is still trusted),
/// each record's hash against its content, and that the records of each high side link up into its
/// chain wherever they are consecutive. Err names the first record that does not hold.
pub fn verify_copies(
    records: impl IntoIterator<Item = Value>,
    trusted: &[VerifyingKey],
) -> Result<Vec<Copy>> {
    use std::collections::BTreeMap;
    let mut chains: BTreeMap<String, BTreeMap<u64, diode_proto::audit::Link>> = BTreeMap::new();
    let mut checked: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        if r["event"] != "outcome" {
            continue;
        }
        let ours = r["seq"].as_u64().unwrap_or(0);
        let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let signed = SignedOutcome {
            outcome: diode_proto::outcome::Outcome {
                receiver: text("receiver"),
                record: text("record"),
            },
            signer: text("signer"),
            signature: text("signature"),
        };
        let facts = if trusted.iter().any(|k| k.id_hex() == signed.signer) {
            *checked.entry(signed.outcome.receiver.clone()).or_default() += 1;
            signed.verify(trusted)
        } else {
            signed.outcome.facts()
        }
        .map_err(|e| {
            anyhow::anyhow!(
                "audit record {ours}: the high side's record it holds does not verify: {e}"
            )
        })?;
        let chain = chains.entry(signed.outcome.receiver.clone()).or_default();
        if let Some(before) = chain.insert(facts.link.seq, facts.link) {
            if before != facts.link {
                anyhow::bail!(
                    "audit record {ours}: record {} of {} is held twice with different content",
                    facts.link.seq,
                    signed.outcome.receiver
                );
            }
        }
    }
    let mut out = Vec::new();
    for (receiver, chain) in chains {
        let mut gaps = Vec::new();
        let mut prev: Option<&diode_proto::audit::Link> = None;
        for l in chain.values() {
            if let Some(p) = prev {
                if l.seq == p.seq + 1 && !l.follows(p) {
                    anyhow::bail!(
                        "record {} of {receiver} does not follow record {}: the copies are not one chain",
                        l.seq,
                        p.seq
                    );
                }
                if l.seq > p.seq + 1 {
                    gaps.push((p.seq + 1, l.seq - 1));
                }
            }
            prev = Some(l);
        }
        let first = chain.keys().next().copied().unwrap_or(0);
        let last = chain.keys().next_back().copied().unwrap_or(0);
        out.push(Copy {
            signatures_checked: checked.get(&receiver).copied().unwrap_or(0),
            receiver,
            records: chain.len() as u64,
            first,
            last,
            gaps,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diode_proto::audit::{chain, Head};
    use diode_proto::envelope::SigningKey;
    use diode_proto::outcome::Outcome;
    use serde_json::json;

    /// Our audit records holding the high side's records `lines`, signed by `key`.
    fn held(lines: &[String], key: &SigningKey) -> Vec<Value> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let s = Outcome {
                    receiver: "high-1".into(),
                    record: l.clone(),
                }
                .sign(key);
                json!({"event": "outcome", "seq": i + 10, "receiver": "high-1", "record": l,
                    "signer": s.signer, "signature": s.signature})
            })
            .collect()
    }

    fn high_log(n: u64, by: &str) -> Vec<String> {
        let mut head = Head::default();
        (0..n)
            .map(|i| {
                let mut m = serde_json::Map::new();
                m.insert("event".into(), "consume".into());
                m.insert("at".into(), (1_000 + i).into());
                m.insert("by".into(), by.into());
                let (line, h) = chain(&head, m);
                head = h;
                line
            })
            .collect()
    }

    #[test]
    fn copies_are_checked_for_signature_link_and_gaps() {
        let k = SigningKey::from_seed(&[3; 32]);
        let lines = high_log(5, "ci");
        let all = held(&lines, &k);
        let c = verify_copies(all.clone(), &[k.public()]).unwrap();
        assert_eq!((c[0].records, c[0].first, c[0].last), (5, 1, 5));
        assert!(c[0].gaps.is_empty());
        // records 2 and 3 not come back: a gap, not an error
        let partial = [&all[..1], &all[3..]].concat();
        let c = verify_copies(partial, &[k.public()]).unwrap();
        assert_eq!(c[0].gaps, [(2, 3)]);
        // a record from another log with the next number: the copies are not one chain
        let other = high_log(5, "someone-else");
        let mixed = [held(&lines[..2], &k), held(&other[2..3], &k)].concat();
        assert!(verify_copies(mixed, &[k.public()])
            .unwrap_err()
            .to_string()
            .contains("does not follow"));
        // a signature that no longer matches (our log's copy edited, and its chain redone)
        let mut bad = all.clone();
        bad[1]["record"] = lines[1].replace("\"ci\"", "\"ic\"").into();
        assert!(verify_copies(bad, &[k.public()]).is_err());
        // a key rotated away: hashes and links are still checked, the signature was checked when taken
        let c = verify_copies(all, &[]).unwrap();
        assert_eq!(c[0].signatures_checked, 0);
    }
}
