//! What `diode-recv status` shows: written by the daemon to `state/status.json` every second and read
//! by the command, so an admin can look without touching the running process.

use diode_proto::journal::format_id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Status {
    pub updated: u64,
    pub pid: u32,
    pub listen: String,
    pub sessions: Vec<SessionStatus>,
    pub drops: BTreeMap<String, u64>,
    pub received_files: u64,
    pub received_bytes: u64,
    pub objects: Vec<ObjectStatus>,
    /// The newest objects refused for good since start (each also in state/refused.jsonl).
    #[serde(default)]
    pub refused: Vec<RefusedStatus>,
    #[serde(default)]
    pub refused_total: u64,
    #[serde(default)]
    pub limits: LimitStatus,
    /// Where the receiver keeps its state (so `status` can say why the figures are stale).
    #[serde(default)]
    pub state_dir: String,
    /// What the kernel dropped at the link's socket because the receiver fell behind.
    #[serde(default)]
    pub kernel: KernelDrops,
    /// Frames taken from each listening address since start, when the link uses several ports.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sockets: BTreeMap<String, u64>,
}

/// Datagrams the kernel dropped at the link's socket (its receive queue was full: the receiver did not
/// keep up), counted from the socket's 32-bit drop counter, read once a second.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct KernelDrops {
    /// Since the receiver started.
    pub total: u64,
    /// In the last `WINDOW` seconds; more than 0 means overloaded now.
    pub last_minute: u64,
    #[serde(skip)]
    last: Option<u32>,
    #[serde(skip)]
    window: std::collections::VecDeque<u64>,
}

impl KernelDrops {
    /// Seconds (status ticks) the recent count covers.
    pub const WINDOW: usize = 60;

    /// One reading of the socket's counter, once a second. Returns the drops since the last reading.
    pub fn note(&mut self, counter: u32) -> u64 {
        // the first reading is the baseline: drops before this process opened the socket are not its own
        let new = self.last.map_or(0, |l| u64::from(counter.wrapping_sub(l)));
        self.last = Some(counter);
        self.total += new;
        self.window.push_back(new);
        while self.window.len() > Self::WINDOW {
            self.window.pop_front();
        }
        self.last_minute = self.window.iter().sum();
        new
    }

    pub fn overloaded(&self) -> bool {
        self.last_minute > 0
    }

    /// What to tell the admin.
    pub fn advice(&self) -> String {
        format!(
            "receiver overloaded: {} frames (or GRO batches) dropped by the kernel in the last minute, {} since start: \
             its socket queue overflowed. Lower the sender's `rate`, raise `rcvbuf_mb`, or give the receiver a faster disk or CPU",
            self.last_minute, self.total
        )
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RefusedStatus {
    pub sender: String,
    pub object: String,
    pub name: String,
    /// A fixed word: `older_version`.
    pub reason: String,
    pub detail: String,
    pub at: u64,
}

/// How close the objects in progress are to recv.toml's bounds.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct LimitStatus {
    pub objects: usize,
    pub max_objects: usize,
    pub bytes: u64,
    pub max_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SessionStatus {
    pub sender: String,
    pub counter: u64,
    pub created_at: u64,
    pub link: String,
    pub last_seen_secs: f64,
    pub frames_expected: u64,
    pub frames_received: u64,
    pub loss_percent: f64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ObjectStatus {
    pub sender: String,
    pub object: String,
    pub name: String,
    pub size: u64,
    pub blocks: u64,
    pub blocks_done: u64,
    pub percent: f64,
    /// "receiving" while frames arrive, "incomplete" once they stopped with blocks missing.
    pub state: String,
    pub missing: String,
    pub error: Option<String>,
    pub replay: Option<String>,
}

impl Status {
    /// The same figures in Prometheus' text exposition format, for node_exporter's textfile collector
    /// (`metrics_file` in recv.toml). Label values are hex key ids and fixed reason words: nothing to
    /// escape.
    pub fn prometheus(&self) -> String {
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            write_metric(&mut o, name, kind, help, &rows)
        };
        metric(
            "updated_timestamp_seconds",
            "gauge",
            "When the receiver last wrote these figures (Unix time); stale means it is not running.",
            vec![(String::new(), self.updated as f64)],
        );
        metric(
            "received_files_total",
            "counter",
            "Files published in the inbox since the receiver started.",
            vec![(String::new(), self.received_files as f64)],
        );
        metric(
            "received_bytes_total",
            "counter",
            "Bytes of files published in the inbox since the receiver started.",
            vec![(String::new(), self.received_bytes as f64)],
        );
        metric(
            "kernel_dropped_total",
            "counter",
            "Datagrams (or GRO batches) the kernel dropped at the link's socket since start because the receiver fell behind (its queue was full).",
            vec![(String::new(), self.kernel.total as f64)],
        );
        metric(
            "overloaded",
            "gauge",
            "1 when the kernel dropped datagrams at the link's socket within the last minute: the receiver does not keep up.",
            vec![(String::new(), f64::from(u8::from(self.kernel.overloaded())))],
        );
        metric(
            "dropped_frames_total",
            "counter",
            "Frames dropped before use, by reason (docs/protocol.md 11.1).",
            self.drops
                .iter()
                .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v as f64))
                .collect(),
        );
        // one row per sender: its newest session (sessions are sorted newest first)
        let mut seen = std::collections::BTreeSet::new();
        let newest: Vec<&SessionStatus> = self
            .sessions
            .iter()
            .filter(|s| seen.insert(s.sender.clone()))
            .collect();
        let per_sender = |f: &dyn Fn(&SessionStatus) -> f64| -> Vec<(String, f64)> {
            newest
                .iter()
                .map(|s| (format!("{{sender=\"{}\"}}", s.sender), f(s)))
                .collect()
        };
        metric(
            "link_up",
            "gauge",
            "1 while frames or heartbeats arrive from the sender, 0 when the link is down.",
            per_sender(&|s| f64::from(u8::from(s.link == "up"))),
        );
        metric(
            "link_last_seen_seconds",
            "gauge",
            "Seconds since the last frame from the sender.",
            per_sender(&|s| s.last_seen_secs),
        );
        metric(
            "link_loss_percent",
            "gauge",
            "Frames lost on the link in the current session, percent.",
            per_sender(&|s| s.loss_percent),
        );
        metric(
            "link_frames_expected_total",
            "counter",
            "Frames the sender sent in its current session (from sequence numbers); starts again at each new session.",
            per_sender(&|s| s.frames_expected as f64),
        );
        metric(
            "link_frames_received_total",
            "counter",
            "Frames received in the sender's current session; starts again at each new session.",
            per_sender(&|s| s.frames_received as f64),
        );
        let count = |state: &str| self.objects.iter().filter(|o| o.state == state).count() as f64;
        metric(
            "objects",
            "gauge",
            "Objects being received, and incomplete ones (frames stopped with blocks missing: see status for the replay line).",
            vec![
                ("{state=\"receiving\"}".into(), count("receiving")),
                ("{state=\"incomplete\"}".into(), count("incomplete")),
            ],
        );
        metric(
            "refused_objects_total",
            "counter",
            "Objects refused for good since the receiver started (state/refused.jsonl has each with its reason).",
            vec![(String::new(), self.refused_total as f64)],
        );
        metric(
            "partial_bytes",
            "gauge",
            "Bytes of objects in progress on disk (state/partial/), against max_partial_mb.",
            vec![(String::new(), self.limits.bytes as f64)],
        );
        o
    }
}

/// One metric `diode_recv_<name>` in Prometheus' text format: its HELP and TYPE lines, then a sample per
/// row (`{labels}` already formatted, or empty). Labels must hold no `"`, `\\` or newline.
pub fn write_metric(o: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, f64)]) {
    use std::fmt::Write;
    let _ = writeln!(
        o,
        "# HELP diode_recv_{name} {help}\n# TYPE diode_recv_{name} {kind}"
    );
    for (labels, v) in rows {
        let _ = writeln!(o, "diode_recv_{name}{labels} {v}");
    }
}

pub fn replay_line(replay_config: &str, id: u64, missing: &str, all: bool) -> String {
    if all {
        format!(
            "diode-send replay --config {replay_config} --object {}",
            format_id(id)
        )
    } else {
        format!(
            "diode-send replay --config {replay_config} --object {} --blocks {missing}",
            format_id(id)
        )
    }
}

/// Why the figures are old, in words: whether the process still runs, and whether its state
/// filesystem has room to write them.
pub fn staleness(s: &Status, age: u64, running: bool, free: Option<u64>) -> String {
    let when = format!("the figures below are {age} s old");
    match (running, free) {
        (true, Some(f)) if f < 1 << 20 => format!(
            "diode-recv (pid {}) is running but cannot save its status: the state filesystem ({}) is full, \
             {f} bytes free; {when}. Free space there (state/partial/ holds unfinished objects)",
            s.pid, s.state_dir
        ),
        (true, _) => format!(
            "diode-recv (pid {}) is running but has not saved its status for {age} s ({}): see its log; {when}",
            s.pid, s.state_dir
        ),
        (false, _) => format!(
            "diode-recv is not running (pid {} has exited); {when}",
            s.pid
        ),
    }
}

pub fn print(s: &Status, now: u64, running: bool, free: Option<u64>) {
    let age = now.saturating_sub(s.updated);
    if age > 5 {
        println!("WARNING: {}", staleness(s, age, running, free));
    }
    println!(
        "listening on {}; {} file(s), {} bytes received since start",
        s.listen, s.received_files, s.received_bytes
    );
    if s.kernel.overloaded() {
        println!("WARNING: {}", s.kernel.advice());
    } else if s.kernel.total > 0 {
        println!(
            "kernel drops at the socket: {} since start, none in the last minute",
            s.kernel.total
        );
    }
    if !s.sockets.is_empty() {
        let per: Vec<String> = s.sockets.iter().map(|(a, n)| format!("{a}={n}")).collect();
        println!("frames per port: {}", per.join(" "));
    }
    if s.sessions.is_empty() {
        println!("sessions: none yet (waiting for a sender's announce)");
    }
    for x in &s.sessions {
        println!(
            "session {} from sender {}: link {}, last frame {:.1} s ago, frames {}/{} ({:.2}% lost)",
            x.counter, x.sender, x.link, x.last_seen_secs, x.frames_received, x.frames_expected, x.loss_percent
        );
    }
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if !drops.is_empty() {
        println!("dropped frames: {}", drops.join(" "));
    }
    if s.objects.is_empty() {
        println!("objects: nothing in progress or incomplete");
    }
    let l = &s.limits;
    if l.max_objects > 0
        && (l.objects * 10 >= l.max_objects * 8 || l.bytes / 10 >= l.max_bytes / 10 * 8)
    {
        println!(
            "WARNING: objects in progress near their bounds: {} of max_partial_objects {}, {} of {} bytes (max_partial_mb)",
            l.objects, l.max_objects, l.bytes, l.max_bytes
        );
    }
    if s.refused_total > 0 {
        println!(
            "refused objects since start: {} (state/refused.jsonl has them all)",
            s.refused_total
        );
    }
    for r in &s.refused {
        println!(
            "REFUSED {} (object {}, sender {}): {}: {}",
            r.name, r.object, r.sender, r.reason, r.detail
        );
    }
    for o in &s.objects {
        println!(
            "{} {} ({} bytes, object {}): {:.1}% ({}/{} blocks)",
            o.state.to_uppercase(),
            o.name,
            o.size,
            o.object,
            o.percent,
            o.blocks_done,
            o.blocks
        );
        if let Some(e) = &o.error {
            println!("    error: {e}");
        }
        if o.state != "receiving" {
            println!("    missing blocks {}", o.missing);
        }
        if let Some(r) = &o.replay {
            println!("    on the low side run: {r}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sender: &str, counter: u64, link: &str, expected: u64, got: u64) -> SessionStatus {
        SessionStatus {
            sender: sender.into(),
            counter,
            created_at: 0,
            link: link.into(),
            last_seen_secs: 0.5,
            frames_expected: expected,
            frames_received: got,
            loss_percent: 100.0 * (1.0 - got as f64 / expected as f64),
        }
    }

    #[test]
    fn prometheus_has_one_row_per_sender_and_the_new_counters() {
        let s = Status {
            // newest session first: the older one of sender aa must not give a second row
            sessions: vec![
                session("aa", 7, "up", 1000, 990),
                session("aa", 6, "down", 50, 10),
                session("bb", 3, "down", 200, 200),
            ],
            refused_total: 2,
            limits: LimitStatus {
                bytes: 4096,
                ..LimitStatus::default()
            },
            ..Status::default()
        };
        let t = s.prometheus();
        for line in [
            "# TYPE diode_recv_link_frames_expected_total counter\n",
            "diode_recv_link_frames_expected_total{sender=\"aa\"} 1000\n",
            "diode_recv_link_frames_received_total{sender=\"aa\"} 990\n",
            "diode_recv_link_frames_received_total{sender=\"bb\"} 200\n",
            "diode_recv_link_up{sender=\"aa\"} 1\n",
            "diode_recv_link_up{sender=\"bb\"} 0\n",
            "# TYPE diode_recv_refused_objects_total counter\n",
            "diode_recv_refused_objects_total 2\n",
            "diode_recv_partial_bytes 4096\n",
        ] {
            assert!(t.contains(line), "missing {line:?} in:\n{t}");
        }
        assert_eq!(t.matches("diode_recv_link_up{sender=\"aa\"}").count(), 1);
        assert!(!t.contains(" 50\n"), "the older session leaked into:\n{t}");
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::KernelDrops;

    #[test]
    fn kernel_drops_count_from_a_baseline_across_a_wrap_and_age_out_of_the_minute() {
        let mut k = KernelDrops::default();
        assert_eq!(
            k.note(1000),
            0,
            "drops before the first reading are not ours"
        );
        assert!(!k.overloaded());
        assert_eq!(k.note(1010), 10);
        assert_eq!(k.note(u32::MAX - 4), u64::from(u32::MAX - 4 - 1010));
        assert_eq!(k.note(5), 10, "the 32-bit counter wrapped");
        assert!(k.overloaded());
        assert_eq!(k.total, 10 + u64::from(u32::MAX - 4 - 1010) + 10);
        for _ in 0..KernelDrops::WINDOW {
            k.note(5);
        }
        assert!(!k.overloaded(), "a quiet minute clears it: {k:?}");
        assert_eq!(k.last_minute, 0);
        assert!(k.total > 0);
        assert!(k.advice().contains("dropped by the kernel"));
    }
}
