//! The last hour of the daemon's figures, kept by the console in memory (status.json holds only the
//! present): frames per second and loss per sender for the charts, and each object's recent progress
//! for its rate and time left. Sampled every `SAMPLE_SECS` from status.json; lost when the console stops.

use crate::status::Status;
use std::collections::{BTreeMap, VecDeque};

pub const SAMPLE_SECS: u64 = 2;
/// One hour of samples.
const KEEP_SECS: u64 = 3600;
/// The window over which an object's rate is measured.
const RATE_SECS: u64 = 20;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at: u64,
    counter: u64,
    frames: u64,
    loss: f64,
}

#[derive(Default)]
pub struct History {
    links: BTreeMap<String, VecDeque<Sample>>,
    /// Per object id: (when, bytes done).
    objects: BTreeMap<String, VecDeque<(u64, f64)>>,
}

/// A chart's points in a 600 x 60 box, and the largest value it shows.
pub struct Chart {
    pub points: String,
    pub max: f64,
}

pub const CHART_W: f64 = 600.0;
pub const CHART_H: f64 = 60.0;

impl History {
    /// Record the figures of one status (written at `status.updated`); older ones beyond the hour go.
    pub fn record(&mut self, s: &Status) {
        let at = s.updated;
        let mut seen = std::collections::BTreeSet::new();
        for x in s.sessions.iter().filter(|x| seen.insert(x.sender.clone())) {
            let q = self.links.entry(x.sender.clone()).or_default();
            if q.back().is_some_and(|b| b.at >= at) {
                continue; // the same status read twice
            }
            q.push_back(Sample {
                at,
                counter: x.counter,
                frames: x.frames_received,
                loss: x.loss_percent,
            });
            while q.front().is_some_and(|f| f.at + KEEP_SECS < at) {
                q.pop_front();
            }
        }
        let live: std::collections::BTreeSet<&str> =
            s.objects.iter().map(|o| o.object.as_str()).collect();
        self.objects.retain(|k, _| live.contains(k.as_str()));
        for o in &s.objects {
            let q = self.objects.entry(o.object.clone()).or_default();
            if q.back().is_some_and(|b| b.0 >= at) {
                continue;
            }
            q.push_back((at, o.size as f64 * o.percent / 100.0));
            while q.front().is_some_and(|f| f.0 + RATE_SECS < at) {
                q.pop_front();
            }
        }
    }

    /// Bytes per second of an object over the last `RATE_SECS`, and the seconds left at that rate.
    pub fn rate(&self, object: &str, size: u64) -> Option<(f64, f64)> {
        let q = self.objects.get(object)?;
        let (first, last) = (q.front()?, q.back()?);
        let dt = last.0.checked_sub(first.0).filter(|d| *d > 0)? as f64;
        let rate = (last.1 - first.1) / dt;
        (rate > 0.0).then(|| (rate, (size as f64 - last.1).max(0.0) / rate))
    }

    /// Frames per second (within one session: a new session starts its count again) and loss percent
    /// of a sender over the hour before `now`.
    pub fn charts(&self, sender: &str, now: u64) -> Option<(Chart, Chart)> {
        let q = self.links.get(sender)?;
        let x = |at: u64| CHART_W * (at + KEEP_SECS).saturating_sub(now) as f64 / KEEP_SECS as f64;
        let mut fps = Vec::new();
        for (a, b) in q.iter().zip(q.iter().skip(1)) {
            if a.counter == b.counter && b.at > a.at {
                let v = b.frames.saturating_sub(a.frames) as f64 / (b.at - a.at) as f64;
                fps.push((x(b.at), v));
            }
        }
        let loss: Vec<(f64, f64)> = q.iter().map(|s| (x(s.at), s.loss)).collect();
        Some((chart(&fps), chart(&loss)))
    }
}

fn chart(points: &[(f64, f64)]) -> Chart {
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let scale = if max > 0.0 { CHART_H / max } else { 0.0 };
    let points = points
        .iter()
        .map(|(x, v)| format!("{x:.1},{:.1}", CHART_H - v * scale))
        .collect::<Vec<_>>()
        .join(" ");
    Chart { points, max }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ObjectStatus, SessionStatus};

    fn status(at: u64, counter: u64, frames: u64, loss: f64, done: f64) -> Status {
        Status {
            updated: at,
            sessions: vec![SessionStatus {
                sender: "aa".into(),
                counter,
                created_at: 0,
                link: "up".into(),
                last_seen_secs: 0.0,
                frames_expected: frames,
                frames_received: frames,
                loss_percent: loss,
            }],
            objects: vec![ObjectStatus {
                sender: "aa".into(),
                object: "01".into(),
                name: "f".into(),
                size: 1000,
                blocks: 10,
                blocks_done: 0,
                percent: done,
                state: "receiving".into(),
                missing: String::new(),
                error: None,
                replay: None,
            }],
            ..Status::default()
        }
    }

    #[test]
    fn rate_and_time_left_come_from_the_recent_progress() {
        let mut h = History::default();
        h.record(&status(100, 1, 0, 0.0, 10.0));
        assert_eq!(h.rate("01", 1000), None, "one sample has no rate");
        h.record(&status(110, 1, 0, 0.0, 30.0));
        // 200 bytes in 10 s: 20 B/s, 700 bytes left: 35 s
        assert_eq!(h.rate("01", 1000), Some((20.0, 35.0)));
        // the object gone from status: forgotten
        let mut s = status(112, 1, 0, 0.0, 0.0);
        s.objects.clear();
        h.record(&s);
        assert_eq!(h.rate("01", 1000), None);
    }

    #[test]
    fn charts_count_frames_per_second_within_a_session_and_keep_one_hour() {
        let mut h = History::default();
        h.record(&status(1000, 1, 0, 0.0, 0.0));
        h.record(&status(1010, 1, 500, 2.0, 0.0));
        // a new session counts from 0 again: no negative rate across it
        h.record(&status(1020, 2, 100, 4.0, 0.0));
        let Some((fps, loss)) = h.charts("aa", 1020) else {
            panic!("no chart")
        };
        assert_eq!(fps.max, 50.0);
        assert_eq!(fps.points, "598.3,0.0");
        assert_eq!(loss.max, 4.0);
        assert_eq!(loss.points, "596.7,60.0 598.3,30.0 600.0,0.0");
        // samples older than the hour are dropped
        h.record(&status(1000 + 3601 + 20, 2, 100, 0.0, 0.0));
        assert_eq!(h.links["aa"].len(), 1);
        assert!(h.charts("bb", 1020).is_none());
    }
}
