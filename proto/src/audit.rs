//! Hash-chained audit records. Each record is one JSON line holding `seq` (1, 2, ...), `prev` (the hash of
//! the record before, 64 zeros for the first) and `hash` = SHA-256 over `prev`'s 32 bytes followed by the
//! record's canonical JSON without `hash` (keys sorted, no spaces). Editing a record breaks its hash,
//! removing or reordering records breaks `seq` and `prev`; removing records from the end is caught by the
//! head (count and last hash) kept beside the log. Both sides use this: `diode-chat` on the low side and
//! `diode-recv` on the high side.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub const GENESIS: [u8; 32] = [0; 32];

/// The head of a chain: how many records and the last hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub count: u64,
    pub hash: [u8; 32],
}

impl Default for Head {
    fn default() -> Self {
        Head {
            count: 0,
            hash: GENESIS,
        }
    }
}

impl Head {
    pub fn to_text(&self) -> String {
        format!("{} {}\n", self.count, hex::encode(self.hash))
    }

    pub fn from_text(t: &str) -> Option<Head> {
        let mut w = t.split_whitespace();
        let count = w.next()?.parse().ok()?;
        let hash = hex::decode(w.next()?).ok()?.try_into().ok()?;
        Some(Head { count, hash })
    }
}

fn digest(prev: &[u8; 32], body: &Map<String, Value>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(Value::Object(body.clone()).to_string().as_bytes());
    h.finalize().into()
}

/// Chain `fields` (an object; `seq`, `prev` and `hash` are set here) after `head`: returns the line
/// (without newline) and the new head.
pub fn chain(head: &Head, mut fields: Map<String, Value>) -> (String, Head) {
    fields.remove("hash");
    let seq = head.count + 1;
    fields.insert("seq".into(), Value::from(seq));
    fields.insert("prev".into(), Value::from(hex::encode(head.hash)));
    let hash = digest(&head.hash, &fields);
    fields.insert("hash".into(), Value::from(hex::encode(hash)));
    (Value::Object(fields).to_string(), Head { count: seq, hash })
}

/// Where one record sits in its chain: its sequence number, the hash of the record before it, its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
}

impl Link {
    /// Whether `self` comes right after `before` in one chain.
    pub fn follows(&self, before: &Link) -> bool {
        self.seq == before.seq.saturating_add(1) && self.prev == before.hash
    }
}

/// Check one record on its own (its hash covers its content and `prev`), without the records around
/// it: what a copy of some records of another side's log can be checked with. Err says what is wrong.
pub fn link(line: &str) -> Result<Link, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON record: {e}"))?;
    let Value::Object(mut fields) = v else {
        return Err("not a JSON object".into());
    };
    let hex32 = |v: Option<Value>, what: &str| -> Result<[u8; 32], String> {
        v.as_ref()
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(|| format!("no {what} of 64 hex digits"))
    };
    let hash = hex32(fields.remove("hash"), "hash")?;
    let prev = hex32(fields.get("prev").cloned(), "prev")?;
    let seq = fields
        .get("seq")
        .and_then(Value::as_u64)
        .filter(|s| *s >= 1)
        .ok_or("no sequence number")?;
    // not secret: plain comparison
    if digest(&prev, &fields) != hash {
        return Err("its content does not match its hash: the record was edited".into());
    }
    Ok(Link { seq, prev, hash })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("line {line}: {why}")]
    Broken { line: u64, why: String },
    #[error("the log ends after record {found}, but {expected} were written (records removed from the end)")]
    Truncated { found: u64, expected: u64 },
    #[error(
        "record {count}'s hash is not the one recorded in the head file (records up to it were replaced)"
    )]
    HeadMismatch { count: u64 },
}

/// Verify a whole log; `head` is what the writer recorded (None: no head file to compare with). The log
/// may run past the head (a record appended before the head was rewritten), but the record at the
/// head's count must carry the head's hash.
pub fn verify(text: &str, head: Option<&Head>) -> Result<Head, ChainError> {
    let mut cur = Head::default();
    if head.is_some_and(|h| h.count == 0 && h.hash != GENESIS) {
        return Err(ChainError::HeadMismatch { count: 0 });
    }
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let broken = |why: String| ChainError::Broken { line: n, why };
        let v: Value =
            serde_json::from_str(line).map_err(|e| broken(format!("not a JSON record: {e}")))?;
        let Value::Object(mut fields) = v else {
            return Err(broken("not a JSON object".into()));
        };
        let hash = fields
            .remove("hash")
            .and_then(|h| h.as_str().map(str::to_string))
            .ok_or_else(|| broken("no hash".into()))?;
        let seq = fields.get("seq").and_then(Value::as_u64);
        if seq != Some(n) {
            return Err(broken(format!(
                "sequence number {seq:?} where {n} belongs: a record was removed, inserted or moved"
            )));
        }
        if fields.get("prev").and_then(Value::as_str) != Some(hex::encode(cur.hash).as_str()) {
            return Err(broken(
                "does not follow the record before it: a record was removed, inserted or moved"
                    .into(),
            ));
        }
        let want = digest(&cur.hash, &fields);
        let got = hex::decode(&hash).ok().filter(|h| h.len() == 32);
        // not secret: plain comparison
        if got.as_deref() != Some(want.as_slice()) {
            return Err(broken(
                "its content does not match its hash: the record was edited".into(),
            ));
        }
        cur = Head {
            count: n,
            hash: want,
        };
        if head.is_some_and(|h| h.count == n && h.hash != want) {
            return Err(ChainError::HeadMismatch { count: n });
        }
    }
    if let Some(h) = head {
        if cur.count < h.count {
            return Err(ChainError::Truncated {
                found: cur.count,
                expected: h.count,
            });
        }
        if cur.count == h.count && cur.hash != h.hash {
            return Err(ChainError::HeadMismatch { count: h.count });
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> (String, Head) {
        let mut head = Head::default();
        let mut text = String::new();
        for i in 0..n {
            let mut m = Map::new();
            m.insert("event".into(), Value::from("accept"));
            m.insert("i".into(), Value::from(i));
            let (line, h) = chain(&head, m);
            text.push_str(&line);
            text.push('\n');
            head = h;
        }
        (text, head)
    }

    #[test]
    fn intact_passes_and_each_tampering_is_named() {
        let (text, head) = log(5);
        assert_eq!(verify(&text, Some(&head)), Ok(head));
        let lines: Vec<&str> = text.lines().collect();
        // edited
        let edited = text.replacen("\"i\":2", "\"i\":7", 1);
        assert!(matches!(
            verify(&edited, Some(&head)),
            Err(ChainError::Broken { line: 3, .. })
        ));
        // removed from the middle
        let removed = [lines[0], lines[1], lines[3], lines[4]].join("\n");
        assert!(matches!(
            verify(&removed, Some(&head)),
            Err(ChainError::Broken { line: 3, .. })
        ));
        // reordered
        let swapped = [lines[0], lines[2], lines[1], lines[3], lines[4]].join("\n");
        assert!(matches!(
            verify(&swapped, Some(&head)),
            Err(ChainError::Broken { line: 2, .. })
        ));
        // cut at the end
        let cut = lines[..4].join("\n");
        assert!(matches!(
            verify(&cut, Some(&head)),
            Err(ChainError::Truncated {
                found: 4,
                expected: 5
            })
        ));
    }

    #[test]
    fn one_record_is_checked_on_its_own_and_links_to_the_one_before() {
        let (text, _) = log(3);
        let links: Vec<Link> = text.lines().map(|l| link(l).unwrap()).collect();
        assert_eq!(links[0].prev, GENESIS);
        assert!(links[1].follows(&links[0]) && links[2].follows(&links[1]));
        assert!(!links[2].follows(&links[0]) && !links[0].follows(&links[2]));
        let line = text.lines().nth(1).unwrap();
        assert!(link(&line.replacen("\"i\":1", "\"i\":9", 1))
            .unwrap_err()
            .contains("edited"));
        assert!(link(&line.replacen("\"seq\":2", "\"seq\":3", 1)).is_err());
        assert!(link("{}").is_err() && link("[1]").is_err() && link("not json").is_err());
    }

    #[test]
    fn a_head_behind_the_log_must_match_the_record_at_its_count() {
        let (text, head) = log(3);
        let (_, at_one) = log(1);
        // a record appended before the head was rewritten: the log runs one past its head
        assert_eq!(verify(&text, Some(&at_one)), Ok(head));
        // a head whose count is behind but whose hash is another record's (found by fuzzing: the log had
        // been accepted as long as it was longer than the head)
        let forged = Head {
            count: 1,
            hash: head.hash,
        };
        assert_eq!(
            verify(&text, Some(&forged)),
            Err(ChainError::HeadMismatch { count: 1 })
        );
    }
}
