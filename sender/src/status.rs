//! `state/sending.json`: what the daemon is doing, for `diode-send console` (which reads it and what the
//! daemon writes anyway): the objects in the endpoint with the bytes of each read and encoded so far, the
//! jobs waiting behind them, and the frames and bytes handed to the link, since start and per second over
//! the last interval. Written at most once a second, off the send loop (`Persister`), so a slow disk
//! never stalls the link.

use crate::config::Config;
use anyhow::{Context, Result};
use diode_host::atomic::Persister;
use diode_proto::journal::format_id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct StatusFile {
    /// Unix seconds of this write.
    pub updated: u64,
    pub pid: u32,
    /// The pace, bits per second on the link (frames with their overhead).
    pub pace_bps: u64,
    /// Frames and their bytes handed to the link since the daemon started (every kind of frame).
    pub frames: u64,
    pub line_bytes: u64,
    /// The same per second, over the last write interval.
    pub frames_per_sec: f64,
    pub line_bytes_per_sec: f64,
    /// Jobs the daemon holds that are not yet in the endpoint (files and replays).
    pub waiting: usize,
    /// Objects in the endpoint, in the order they were handed to it.
    pub sending: Vec<InFlight>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InFlight {
    pub object: String,
    pub name: String,
    pub size: u64,
    /// Data bytes of it read and encoded into frames so far, a group of blocks at a time (all passes:
    /// up to `size * passes`).
    pub sent: u64,
    pub passes: u32,
    pub replay: bool,
}

pub struct Status {
    path: PathBuf,
    persist: Persister,
    file: StatusFile,
    /// In-flight objects by id, with a sequence number to keep their order.
    by_id: BTreeMap<u64, (u64, InFlight)>,
    next_seq: u64,
    last_write: Option<(Instant, u64, u64)>,
}

const EVERY: Duration = Duration::from_secs(1);

impl Status {
    pub fn new(cfg: &Config, pace_bps: u64) -> Result<Status> {
        Ok(Status {
            path: cfg.status_path(),
            persist: Persister::spawn().context("cannot start the persist thread")?,
            file: StatusFile {
                pid: std::process::id(),
                pace_bps,
                ..Default::default()
            },
            by_id: BTreeMap::new(),
            next_seq: 0,
            last_write: None,
        })
    }

    pub fn started(&mut self, id: u64, name: &str, size: u64, passes: u32, replay: bool) {
        self.next_seq += 1;
        let f = InFlight {
            object: format_id(id),
            name: name.to_string(),
            size,
            sent: 0,
            passes,
            replay,
        };
        self.by_id.insert(id, (self.next_seq, f));
    }

    pub fn progress(&mut self, id: u64, bytes: u64) {
        if let Some((_, f)) = self.by_id.get_mut(&id) {
            f.sent += bytes;
        }
    }

    pub fn finished(&mut self, id: u64) {
        self.by_id.remove(&id);
    }

    /// Write the file if a second has passed since the last write; `frames` and `line_bytes` are the
    /// transmitter's counts since start.
    pub fn tick(&mut self, waiting: usize, frames: u64, line_bytes: u64) {
        let now = Instant::now();
        match self.last_write {
            Some((at, _, _)) if now.duration_since(at) < EVERY => return,
            Some((at, f, b)) => {
                let secs = now.duration_since(at).as_secs_f64();
                self.file.frames_per_sec = frames.saturating_sub(f) as f64 / secs;
                self.file.line_bytes_per_sec = line_bytes.saturating_sub(b) as f64 / secs;
            }
            None => {}
        }
        self.last_write = Some((now, frames, line_bytes));
        self.file.updated = diode_host::unix_now();
        self.file.frames = frames;
        self.file.line_bytes = line_bytes;
        self.file.waiting = waiting;
        let mut sending: Vec<&(u64, InFlight)> = self.by_id.values().collect();
        sending.sort_by_key(|(seq, _)| *seq);
        self.file.sending = sending.into_iter().map(|(_, f)| f.clone()).collect();
        match serde_json::to_vec_pretty(&self.file) {
            Ok(bytes) => self.persist.write(&self.path, bytes, 0o644),
            Err(e) => tracing::warn!(error = %e, "cannot encode sending.json"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dir: &std::path::Path) -> Status {
        Status {
            path: dir.join("sending.json"),
            persist: Persister::spawn().unwrap(),
            file: StatusFile::default(),
            by_id: BTreeMap::new(),
            next_seq: 0,
            last_write: None,
        }
    }

    fn written(p: &std::path::Path) -> StatusFile {
        // the persist thread writes soon after the tick
        for _ in 0..200 {
            if let Some(f) = std::fs::read_to_string(p)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                return f;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} was not written", p.display());
    }

    #[test]
    fn objects_in_flight_in_order_with_their_bytes_and_the_rate_on_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = status(dir.path());
        s.started(7, "b.bin", 100, 2, false);
        s.started(3, "a.bin", 50, 1, true);
        s.progress(7, 60);
        s.progress(9, 1000); // not in flight: ignored
        s.tick(4, 10, 14_000);
        let f = written(&dir.path().join("sending.json"));
        let names: Vec<(&str, u64, bool)> = f
            .sending
            .iter()
            .map(|o| (o.name.as_str(), o.sent, o.replay))
            .collect();
        assert_eq!(names, [("b.bin", 60, false), ("a.bin", 0, true)]);
        assert_eq!((f.waiting, f.frames, f.line_bytes), (4, 10, 14_000));
        assert_eq!(f.line_bytes_per_sec, 0.0, "no rate before an interval");
        // within the second nothing is written; after it, the rate over the interval
        s.finished(7);
        s.tick(0, 20, 28_000);
        s.last_write = s
            .last_write
            .map(|(_, f, b)| (Instant::now() - EVERY * 2, f, b));
        std::fs::remove_file(dir.path().join("sending.json")).unwrap();
        s.tick(0, 30, 42_000);
        let f = written(&dir.path().join("sending.json"));
        assert_eq!(f.sending.len(), 1);
        assert!(
            (f.line_bytes_per_sec - 14_000.0).abs() < 1_000.0,
            "{}",
            f.line_bytes_per_sec
        );
        assert!(
            (f.frames_per_sec - 10.0).abs() < 1.0,
            "{}",
            f.frames_per_sec
        );
    }
}
