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

pub fn print(s: &Status, now: u64) {
    let age = now.saturating_sub(s.updated);
    if age > 5 {
        println!("WARNING: diode-recv has not updated its status for {age} s: is it running? (pid was {})", s.pid);
    }
    println!(
        "listening on {}; {} file(s), {} bytes received since start",
        s.listen, s.received_files, s.received_bytes
    );
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
