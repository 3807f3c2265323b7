//! Shared harness of the end-to-end tests: a temporary site with keys made by the real `keygen`
//! commands, configs derived from the example files (so those stay valid), and the real daemons started
//! as child processes that are killed when the test ends, however it ends. A site runs over loopback, or
//! across the emulated diode of `link` (the daemons then run in its two network namespaces).
//!
//! The binaries are taken from `DIODE_BIN_DIR`, or `target/release` of this workspace (`tests/run.sh`
//! builds them first).

pub mod chat;
pub mod console;
pub mod envelopes;
pub mod link;
pub mod mount;
pub mod serial;

use link::Link;
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

/// A free port on loopback, for UDP and TCP alike, below the kernel's ephemeral range. A port the OS
/// hands out is from that range, and once the test has closed its probe socket any outgoing socket may
/// be given it as its own: a daemon restarted on it then fails with "address in use" (seen in CI with
/// a collector restarted on its TCP port, taken meanwhile by the client retrying it, which can connect
/// to itself). Below the range only another test's pick can take it.
pub fn port() -> u16 {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low / 2, low);
    for _ in 0..1000 {
        let p = from + rand::random::<u16>() % (to - from);
        if UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port in {from}..{to}")
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Start `cmd`, its output in a new log file `<dir>/<name>.<random>.log`.
    pub fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> Daemon {
        let log = dir.join(format!("{name}.{:x}.log", rand::random::<u32>()));
        let f = fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Daemon { child, log }
    }

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
    /// Network namespaces of the sender and the receiver, when the site runs across an emulated diode.
    netns: Option<(String, String)>,
    inbox: PathBuf,
    recv_state: PathBuf,
}

fn set(table: &mut toml::Table, key: &str, v: impl Into<toml::Value>) {
    table.insert(key.to_string(), v.into());
}

impl Site {
    /// Keys and configs over loopback; `send_extra` are extra `key = value` overrides of send.toml.
    pub fn new(send_extra: &[(&str, toml::Value)]) -> Site {
        let port = port();
        let addr = format!("127.0.0.1:{port}");
        Site::build(port, &addr, &addr, None, send_extra, &[])
    }

    /// The same with overrides of recv.toml too.
    pub fn new_with(
        send_extra: &[(&str, toml::Value)],
        recv_extra: &[(&str, toml::Value)],
    ) -> Site {
        let port = port();
        let addr = format!("127.0.0.1:{port}");
        Site::build(port, &addr, &addr, None, send_extra, recv_extra)
    }

    /// Keys and configs for a serial link: the sender writes the tty `tx`, the receiver reads `rx` (the
    /// ends of a pty pair or of `hardware/serial-relay.py`), paced at `baud`. Overrides come last.
    pub fn serial(
        tx: &Path,
        rx: &Path,
        baud: u32,
        send_extra: &[(&str, toml::Value)],
        recv_extra: &[(&str, toml::Value)],
    ) -> Site {
        let line = |dev: &Path| -> Vec<(&str, toml::Value)> {
            vec![
                ("link", "serial".into()),
                ("device", dev.to_string_lossy().into_owned().into()),
                ("baud", i64::from(baud).into()),
            ]
        };
        let mut s = line(tx);
        s.push(("rate", format!("{baud}bit").into()));
        s.extend(send_extra.iter().cloned());
        let mut r = line(rx);
        r.extend(recv_extra.iter().cloned());
        Site::build(0, "127.0.0.1:9", "127.0.0.1:9", None, &s, &r)
    }

    /// Keys and configs across the emulated diode: the receiver listens on the far side of `link`, the
    /// daemons start in its namespaces. Overrides of send.toml and recv.toml come last, so they may also
    /// move `listen` or `target` (to put a relay in the path).
    pub fn across(
        link: &Link,
        send_extra: &[(&str, toml::Value)],
        recv_extra: &[(&str, toml::Value)],
    ) -> Site {
        let port = port();
        let addr = format!("{}:{port}", link.ip_r);
        let netns = Some((link.ns_s.clone(), link.ns_r.clone()));
        Site::build(port, &addr, &addr, netns, send_extra, recv_extra)
    }

    fn build(
        port: u16,
        listen: &str,
        target: &str,
        netns: Option<(String, String)>,
        send_extra: &[(&str, toml::Value)],
        recv_extra: &[(&str, toml::Value)],
    ) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let k = dir.path().join("keys");
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
        run_ok(
            Command::new(bin("diode-chat"))
                .args(["keygen", "--dir"])
                .arg(&k),
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut r: toml::Table =
            toml::from_str(&fs::read_to_string(root.join("receiver/recv.example.toml")).unwrap())
                .unwrap();
        set(&mut r, "listen", listen);
        for (key, v) in recv_extra {
            set(&mut r, key, v.clone());
        }
        let mut s: toml::Table =
            toml::from_str(&fs::read_to_string(root.join("sender/send.example.toml")).unwrap())
                .unwrap();
        set(&mut s, "target", target);
        set(&mut s, "rate", "2Gbit");
        set(&mut s, "settle_secs", 1);
        for (key, v) in send_extra {
            set(&mut s, key, v.clone());
        }
        // relative paths in the examples resolve against the config's folder: the site
        let at = |key: &str| {
            dir.path()
                .join(r[key].as_str().expect("a path in recv.toml"))
        };
        let (inbox, recv_state) = (at("inbox"), at("state"));
        fs::write(dir.path().join("recv.toml"), toml::to_string(&r).unwrap()).unwrap();
        fs::write(dir.path().join("send.toml"), toml::to_string(&s).unwrap()).unwrap();
        let site = Site {
            dir,
            port,
            netns,
            inbox,
            recv_state,
        };
        fs::create_dir_all(site.outbox()).unwrap();
        site
    }

    /// The sender's secret key, as a compromised low side holds it (tests that forge frames).
    pub fn sender_key(&self) -> diode_proto::SecretKey {
        let text = fs::read_to_string(self.path("keys/sender.key")).expect("keys/sender.key");
        diode_proto::SecretKey::from_text(&text, diode_proto::Role::Sender).expect("a sender key")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn inbox(&self) -> PathBuf {
        self.inbox.clone()
    }
    /// The receiver's `state` folder (partial objects, status.json, received.jsonl).
    pub fn recv_state(&self) -> PathBuf {
        self.recv_state.clone()
    }
    pub fn outbox(&self) -> PathBuf {
        self.path("outbox")
    }

    /// Start a daemon, "recv" or "send" (in its namespace across a link), and wait until it is ready:
    /// the receiver listening, the sender watching its outbox.
    pub fn start(&self, which: &str) -> Daemon {
        self.start_env(which, &[])
    }

    /// `start` with extra environment variables for the daemon.
    pub fn start_env(&self, which: &str, env: &[(&str, &str)]) -> Daemon {
        let (b, cfg, ready, ns) = if which == "recv" {
            (
                "diode-recv",
                "recv.toml",
                "receiving link=",
                self.netns.as_ref().map(|n| &n.1),
            )
        } else {
            (
                "diode-send",
                "send.toml",
                "watching the outbox",
                self.netns.as_ref().map(|n| &n.0),
            )
        };
        let log = self.path(&format!("{which}.{:x}.log", rand::random::<u32>()));
        let f = fs::File::create(&log).unwrap();
        let mut c = self.command_in(ns, b);
        let child = c
            .arg("--config")
            .arg(self.path(cfg))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut d = Daemon { child, log };
        let end = Instant::now() + Duration::from_secs(20);
        while !d.log_text().contains(ready) {
            assert!(d.alive(), "{b} exited at start: {}", d.log_text());
            assert!(
                Instant::now() < end,
                "{b} not ready after 20 s: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// One of the binaries, in network namespace `ns` if given. `ip netns exec` execs it in place: the
    /// child's pid is the binary's.
    fn command_in(&self, ns: Option<&String>, binary: &str) -> Command {
        match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin(binary));
                c
            }
            None => Command::new(bin(binary)),
        }
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
    /// with other bytes (partial or wrong). A file found whole is not read again.
    pub fn wait_inbox(&self, want: &[(String, Vec<u8>)], timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        let mut whole = vec![false; want.len()];
        loop {
            for ((name, bytes), whole) in want.iter().zip(whole.iter_mut()) {
                if *whole {
                    continue;
                }
                match fs::read(self.inbox().join(name)) {
                    Ok(b) if &b == bytes => *whole = true,
                    Ok(b) => {
                        return Err(format!(
                            "{name} visible with other bytes ({} vs {} bytes)",
                            b.len(),
                            bytes.len()
                        ))
                    }
                    Err(_) => {}
                }
            }
            let missing = whole.iter().filter(|w| !**w).count();
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

    /// Wait until the receiver reports a session with its link up: the sender's announce got through,
    /// so frames sent from now on can be opened.
    pub fn wait_session(&self, timeout: Duration) {
        wait_for(
            "the receiver to report a session with the link up",
            timeout,
            || {
                let s = self.status_json();
                s["sessions"]
                    .as_array()?
                    .iter()
                    .any(|x| x["link"] == "up")
                    .then_some(())
            },
        );
    }

    /// Run a `diode-send replay ...` line as printed by `diode-recv status`, on the sender's side. The
    /// receiver cannot know where the sender's config is, so the `--config` it names is replaced by the
    /// site's send.toml.
    pub fn run_replay_line(&self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() > 2 && words[0] == "diode-send" && words[1] == "replay",
            "not a replay line: {line:?}"
        );
        let mut args = Vec::new();
        let mut rest = words[2..].iter();
        while let Some(w) = rest.next() {
            match *w {
                "--config" => {
                    rest.next();
                }
                w if w.starts_with("--config=") => {}
                w => args.push(w),
            }
        }
        let mut c = self.command_in(self.netns.as_ref().map(|n| &n.0), "diode-send");
        c.arg("--config").arg(self.path("send.toml"));
        run_ok(c.arg("replay").args(&args))
    }
}

/// Poll `probe` every 50 ms until it gives a value; fail the test naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
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
