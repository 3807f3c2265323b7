//! Serial lines for the tests: a plain pty pair from `socat`, or `hardware/serial-relay.py`, which runs
//! a one-way line between two pty pairs at a set speed with seeded byte loss, bit flips and insertions.
//! Both are stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running line: the sender's end `tx` and the receiver's end `rx`.
pub struct Line {
    child: Child,
    pub tx: PathBuf,
    pub rx: PathBuf,
    stats: Option<PathBuf>,
}

impl Line {
    /// `socat` joining two ptys, raw, as fast as they go.
    pub fn socat(dir: &Path) -> Line {
        let (tx, rx) = (dir.join("tty-tx"), dir.join("tty-rx"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", tx.display()))
            .arg(format!("pty,raw,echo=0,link={}", rx.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (tests/run.sh installs it)");
        let end = Instant::now() + Duration::from_secs(10);
        while !(tx.exists() && rx.exists()) {
            assert!(Instant::now() < end, "socat made no ptys in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Line {
            child,
            tx,
            rx,
            stats: None,
        }
    }

    /// The relay with `args` (see hardware/serial-relay.py: --baud, --drop, --flip, --insert, --seed).
    pub fn relay(dir: &Path, args: &[&str]) -> Line {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware/serial-relay.py");
        let stats = dir.join("relay-stats.json");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(dir)
            .arg("--stats")
            .arg(&stats)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("relay stdout"))
            .read_line(&mut first)
            .expect("relay ready line");
        let v: serde_json::Value = serde_json::from_str(&first).expect("relay prints its ptys");
        Line {
            child,
            tx: PathBuf::from(v["tx"].as_str().expect("tx")),
            rx: PathBuf::from(v["rx"].as_str().expect("rx")),
            stats: Some(stats),
        }
    }

    /// Stop the relay and return its counters (bytes in and out, dropped, flipped, inserted, discarded).
    pub fn stop(&mut self) -> serde_json::Value {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        self.stats
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
