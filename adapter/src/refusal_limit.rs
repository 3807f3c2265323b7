//! How many refusals of people who are not in the policy reach the audit log. The log crosses the
//! diode, and anyone in the workspace can type `/deploy` or click a button: so each such person gets
//! `full_records` records in full per `interval`, and one summary record per interval for the rest
//! ("N more refusals of slack user U… not recorded one by one"). People in the policy are always
//! recorded in full. A state machine with no I/O: the engine feeds it refusals and time, and writes
//! the records it is told to.

use crate::policy::Source;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[stranger_refusals]` in adapter.toml.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Refusals of one person recorded in full per interval; the rest are counted.
    #[serde(default = "d_full_records")]
    pub full_records: u32,
    /// The interval (humantime), counted from the person's first refusal in it.
    #[serde(default = "d_interval")]
    pub interval: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            full_records: d_full_records(),
            interval: d_interval(),
        }
    }
}

fn d_full_records() -> u32 {
    1
}
fn d_interval() -> String {
    "10m".into()
}

impl Config {
    /// The interval in seconds; at least one.
    pub fn interval_secs(&self) -> Result<u64> {
        let d = humantime::parse_duration(&self.interval).with_context(|| {
            format!(
                "stranger_refusals.interval = {:?} is not a duration",
                self.interval
            )
        })?;
        if d.as_secs() < 1 {
            bail!(
                "stranger_refusals.interval = {:?} is shorter than a second",
                self.interval
            );
        }
        Ok(d.as_secs())
    }
}

/// Someone outside the policy, where they acted.
pub type Stranger = (Source, String);

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the audit log in full.
    Record,
    /// Count it into the interval's summary.
    Count,
}

/// The refusals of one person that were counted, not recorded, in one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub who: Stranger,
    pub count: u64,
    /// The interval: from its first refusal, for `interval` seconds.
    pub from: u64,
    pub until: u64,
}

#[derive(Debug)]
struct Window {
    start: u64,
    recorded: u32,
    counted: u64,
}

#[derive(Debug)]
pub struct RefusalLimit {
    full_records: u32,
    interval: u64,
    open: BTreeMap<Stranger, Window>,
}

impl RefusalLimit {
    pub fn new(full_records: u32, interval: u64) -> RefusalLimit {
        RefusalLimit {
            full_records,
            interval: interval.max(1),
            open: BTreeMap::new(),
        }
    }

    pub fn from_config(c: &Config) -> Result<RefusalLimit> {
        Ok(RefusalLimit::new(c.full_records, c.interval_secs()?))
    }

    /// A refusal of `who` at `now`: what to do with it, after the summary of their interval that
    /// ended before it, if one is owed.
    pub fn refusal(&mut self, who: &Stranger, now: u64) -> (Option<Summary>, Verdict) {
        let ended = match self.open.get(who) {
            Some(w) if now >= w.start.saturating_add(self.interval) => self.close(who),
            _ => None,
        };
        let w = self.open.entry(who.clone()).or_insert(Window {
            start: now,
            recorded: 0,
            counted: 0,
        });
        let verdict = if w.recorded < self.full_records {
            w.recorded += 1;
            Verdict::Record
        } else {
            w.counted += 1;
            Verdict::Count
        };
        (ended, verdict)
    }

    /// The summaries of the intervals ended by `now` that counted anything; every ended interval is
    /// forgotten, so that the state holds only people refused within the last interval.
    pub fn due(&mut self, now: u64) -> Vec<Summary> {
        let ended: Vec<Stranger> = self
            .open
            .iter()
            .filter(|(_, w)| now >= w.start.saturating_add(self.interval))
            .map(|(k, _)| k.clone())
            .collect();
        ended.iter().filter_map(|k| self.close(k)).collect()
    }

    fn close(&mut self, who: &Stranger) -> Option<Summary> {
        let w = self.open.remove(who)?;
        (w.counted > 0).then(|| Summary {
            who: who.clone(),
            count: w.counted,
            from: w.start,
            until: w.start.saturating_add(self.interval),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Stranger {
        (Source::Slack, "U0NOBODY".into())
    }

    #[test]
    fn one_in_full_then_counted_then_one_summary_per_interval() {
        let mut l = RefusalLimit::new(1, 600);
        let who = nobody();
        assert_eq!(l.refusal(&who, 1000), (None, Verdict::Record));
        for t in 1001..1100 {
            assert_eq!(l.refusal(&who, t), (None, Verdict::Count));
        }
        // another person has their own interval
        let other = (Source::Teams, "29:x".to_string());
        assert_eq!(l.refusal(&other, 1100), (None, Verdict::Record));
        assert_eq!(l.due(1599), vec![]);
        let s = Summary {
            who: who.clone(),
            count: 99,
            from: 1000,
            until: 1600,
        };
        assert_eq!(l.due(1600), vec![s.clone()]);
        assert_eq!(l.due(1600), vec![], "a summary is owed once");
        // the next refusal opens a new interval, recorded in full again
        assert_eq!(l.refusal(&who, 1700), (None, Verdict::Record));
        assert_eq!(l.refusal(&who, 1701), (None, Verdict::Count));
        // an interval that ends without a tick is summarised by the refusal that comes after it
        let (ended, v) = l.refusal(&who, 2300);
        assert_eq!(v, Verdict::Record);
        assert_eq!(ended.map(|s| (s.count, s.from)), Some((1, 1700)));
        // the other person counted nothing: no summary, and forgotten
        assert_eq!(l.due(2300), vec![]);
        assert_eq!(l.open.len(), 1);
    }

    #[test]
    fn defaults_and_a_bad_interval() {
        let c = Config::default();
        assert_eq!((c.full_records, c.interval_secs().unwrap()), (1, 600));
        let bad = Config {
            full_records: 1,
            interval: "soon".into(),
        };
        let e = bad.interval_secs().unwrap_err().to_string();
        assert!(e.contains("stranger_refusals.interval"), "{e}");
    }
}
