//! Shared harness of the end-to-end tests: a temporary site with keys made by the real `keygen`
//! commands, configs derived from the example files (so those stay valid), and the real daemons started
//! as child processes that are killed when the test ends, however it ends.
//!
//! The binaries are taken from `DIODE_BIN_DIR`, or `target/release` of this workspace (`tests/run.sh`
//! builds them first).

use std::fs;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("DIODE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --release --bins` (tests/run.sh does)",
        p.display()
    );
    p
}

/// A free UDP port on loopback (the OS picks it; the socket is closed again before use).
pub fn port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Site {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

fn set(table: &mut toml::Table, key: &str, v: impl Into<toml::Value>) {
    table.insert(key.to_string(), v.into());
}

impl Site {
    /// Keys and configs; `send_extra` are extra `key = value` overrides of send.toml.
    pub fn new(send_extra: &[(&str, toml::Value)]) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = port();
        let site = Site { dir, port };
        let k = site.path("keys");
        run_ok(
            Command::new(bin("diode-recv"))
                .args(["keygen", "--dir"])
                .arg(&k),
        );
        run_ok(
            Command::new(bin("diode-send"))
                .args(["keygen", "--dir"])
                .arg(&k),
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut r: toml::Table =
            toml::from_str(&fs::read_to_string(root.join("receiver/recv.example.toml")).unwrap())
                .unwrap();
        set(&mut r, "listen", format!("127.0.0.1:{port}"));
        let mut s: toml::Table =
            toml::from_str(&fs::read_to_string(root.join("sender/send.example.toml")).unwrap())
                .unwrap();
        set(&mut s, "target", format!("127.0.0.1:{port}"));
        set(&mut s, "rate", "2Gbit");
        set(&mut s, "settle_secs", 1);
        for (key, v) in send_extra {
            set(&mut s, key, v.clone());
        }
        // relative paths in the examples resolve against the config's folder: the site
        fs::write(site.path("recv.toml"), toml::to_string(&r).unwrap()).unwrap();
        fs::write(site.path("send.toml"), toml::to_string(&s).unwrap()).unwrap();
        fs::create_dir_all(site.outbox()).unwrap();
        site
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn inbox(&self) -> PathBuf {
        self.path("inbox")
    }
    pub fn outbox(&self) -> PathBuf {
        self.path("outbox")
    }

    pub fn start(&self, which: &str) -> Daemon {
        let (b, cfg) = if which == "recv" {
            ("diode-recv", "recv.toml")
        } else {
            ("diode-send", "send.toml")
        };
        let log = self.path(&format!("{which}.{:x}.log", rand::random::<u32>()));
        let f = fs::File::create(&log).unwrap();
        let child = Command::new(bin(b))
            .arg("--config")
            .arg(self.path(cfg))
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut d = Daemon { child, log };
        assert!(d.alive(), "{b} exited at start: {}", d.log_text());
        d
    }

    pub fn recv_cmd(&self) -> Command {
        let mut c = Command::new(bin("diode-recv"));
        c.arg("--config").arg(self.path("recv.toml"));
        c
    }
    pub fn send_cmd(&self) -> Command {
        let mut c = Command::new(bin("diode-send"));
        c.arg("--config").arg(self.path("send.toml"));
        c
    }

    /// Move a file into the outbox atomically, as a user would (write elsewhere, then rename).
    pub fn drop_in(&self, rel: &str, data: &[u8]) {
        let stage = self.path(&format!("stage-{}", rand::random::<u64>()));
        fs::write(&stage, data).unwrap();
        let dest = self.outbox().join(rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::rename(&stage, &dest).unwrap();
    }

    /// Wait until every (name, bytes) is in the inbox byte-exact. Fails at once if a file shows up
    /// with other bytes (partial or wrong).
    pub fn wait_inbox(&self, want: &[(String, Vec<u8>)], timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        loop {
            let mut missing = 0;
            for (name, bytes) in want {
                match fs::read(self.inbox().join(name)) {
                    Ok(b) if &b == bytes => {}
                    Ok(b) => {
                        return Err(format!(
                            "{name} visible with other bytes ({} vs {} bytes)",
                            b.len(),
                            bytes.len()
                        ))
                    }
                    Err(_) => missing += 1,
                }
            }
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "{missing} of {} files missing after {timeout:?}",
                    want.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every file under the inbox, relative, sorted.
    pub fn inbox_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.inbox(), &self.inbox(), &mut out);
        out.sort();
        out
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.recv_cmd().args(["status", "--json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

pub fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::Rng::fill(&mut rand::rng(), &mut v[..]);
    v
}
