//! The emulated diode of `hardware/diode-link.sh`, driven from the tests: two network namespaces joined
//! by a veth pair, random loss and exact drops in nftables, a rate limit, and the counter of every packet
//! the receiver side tries to send back. The shell library stays the one place that builds the link;
//! this only calls its functions. A `Link` is torn down when dropped, also when the test panics.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to 1 to skip the emulated-diode tests knowingly (each says so loudly); without it they fail when
/// they cannot build a link, so CI never passes by skipping them.
pub const SKIP_VAR: &str = "DIODE_SKIP_NETNS";

pub struct Link {
    /// The `DIODE_NS` prefix: namespaces `<prefix>-s` and `<prefix>-r`.
    pub prefix: String,
    pub ns_s: String,
    pub ns_r: String,
    pub ip_s: String,
    pub ip_r: String,
    /// `DIODE_LINK_STATE_DIR`: kept away from /run so the host is left as it was.
    state: tempfile::TempDir,
}

fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware/diode-link.sh")
}

fn is_root() -> bool {
    // /proc/self belongs to the effective user of the process reading it
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl Link {
    /// Build a link for the test `tag` (a few letters, unique among the tests) with `loss_pct` % random
    /// loss. Returns None, after saying so loudly, only when `DIODE_SKIP_NETNS=1`; otherwise a link that
    /// cannot be built fails the test with the reason.
    pub fn up(tag: &str, loss_pct: f64) -> Option<Link> {
        Link::up_mtu(tag, loss_pct, 1500)
    }

    /// `up` with the veth pair's MTU set to `mtu` (9000: jumbo frames).
    pub fn up_mtu(tag: &str, loss_pct: f64, mtu: u32) -> Option<Link> {
        if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
            // straight to the process's stderr: the test harness captures eprintln! of passing tests
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED emulated-diode test {tag}: {SKIP_VAR}=1, it did NOT run ***"
            );
            return None;
        }
        assert!(
            is_root(),
            "the emulated-diode test {tag} needs root (network namespaces, nftables, tc): run it as \
             root as CI does, or set {SKIP_VAR}=1 to skip it knowingly"
        );
        assert!(
            tag.len() <= 5 && tag.chars().all(|c| c.is_ascii_lowercase()),
            "tag {tag:?}: up to 5 lowercase letters (interface names have 15 characters)"
        );
        // unique per test and per run: a link left over by a killed run has another pid in its name
        let prefix = format!("dt{tag}{}", std::process::id() % 100_000);
        let mut link = Link {
            prefix,
            ns_s: String::new(),
            ns_r: String::new(),
            ip_s: String::new(),
            ip_r: String::new(),
            state: tempfile::tempdir().expect("temp dir"),
        };
        let names = link
            .sh(&format!(
                "DIODE_MTU={mtu}; link_up {loss_pct} >&2 || exit 1\n\
                 echo \"$DIODE_NS_S $DIODE_NS_R $DIODE_IP_S $DIODE_IP_R\""
            ))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot build the emulated diode (network namespaces {}-s/-r): {e}\n\
                     it needs root, iproute2, nftables and a kernel with the netdev egress hook \
                     (5.16+); set {SKIP_VAR}=1 to skip these tests knowingly",
                    link.prefix
                )
            });
        let v: Vec<&str> = names.split_whitespace().collect();
        assert_eq!(v.len(), 4, "link_up printed {names:?}");
        (link.ns_s, link.ns_r, link.ip_s, link.ip_r) =
            (v[0].into(), v[1].into(), v[2].into(), v[3].into());
        eprintln!(
            "link {}: {} {} ==> {} {}, {loss_pct}% loss",
            link.prefix, link.ns_s, link.ip_s, link.ns_r, link.ip_r
        );
        Some(link)
    }

    /// Run `script` after sourcing the library for this link; its stdout, or why it failed.
    fn sh(&self, script: &str) -> Result<String, String> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(". \"$DIODE_LINK_LIB\" || exit 1\n{script}"))
            .env("DIODE_LINK_LIB", library())
            .env("DIODE_NS", &self.prefix)
            .env("DIODE_LINK_STATE_DIR", self.state.path())
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`{script}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn run(&self, script: &str) -> String {
        self.sh(script)
            .unwrap_or_else(|e| panic!("link {}: {e}", self.prefix))
    }

    /// Whether the sender's veth cuts GSO batches into datagrams before the link, as a NIC does (the
    /// default of `up`), or passes them on whole (a veth's own default).
    pub fn segment(&self, on: bool) {
        self.run(&format!("link_segment {}", if on { "on" } else { "off" }));
    }

    /// Random loss from now on, percent; clears any `drop` rule.
    pub fn loss(&self, pct: f64) {
        self.run(&format!("link_loss {pct}"));
    }

    /// Also drop every arriving frame matching an nftables expression (see `link_drop`).
    pub fn drop_matching(&self, nft_match: &str) {
        self.run(&format!("link_drop {nft_match}"));
    }

    /// Line rate of the link (tc tbf on the sender's veth), tc units: "206mbit".
    pub fn rate(&self, rate: &str) {
        self.run(&format!("link_rate {rate}"));
    }

    fn counter(&self, function: &str) -> u64 {
        let text = self.run(function);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{function} printed {text:?}"))
    }

    /// Packets the receiver side tried to send towards the sender (all dropped): must stay 0.
    pub fn reverse_packets(&self) -> u64 {
        self.counter("link_reverse_packets")
    }
    /// IP bytes that reached the receiver's veth, counted before any loss.
    pub fn fwd_bytes(&self) -> u64 {
        self.counter("link_fwd_bytes")
    }
    pub fn fwd_packets(&self) -> u64 {
        self.counter("link_fwd_packets")
    }
    /// Frames dropped by the loss and drop rules.
    pub fn lost_packets(&self) -> u64 {
        self.counter("link_lost_packets")
    }

    /// Frames the rate limit dropped (tbf queue overflow): the line, not the test's loss, losing frames.
    pub fn line_drops(&self) -> u64 {
        let text = self.run("tc -n \"$DIODE_NS_S\" -s qdisc show dev \"$DIODE_IF_S\"");
        text.split_whitespace()
            .skip_while(|w| w.trim_start_matches('(') != "dropped")
            .nth(1)
            .and_then(|n| n.trim_end_matches(',').parse().ok())
            .unwrap_or(0)
    }

    /// A command that runs `program` on the sender's side.
    pub fn exec_s(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_s]).arg(program);
        c
    }
    /// A command that runs `program` on the receiver's side.
    pub fn exec_r(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_r]).arg(program);
        c
    }

    /// The evidence every emulated-diode test ends with: print the link's counters, and assert that not
    /// one packet left the receiver's side towards the sender.
    pub fn assert_one_way(&self) {
        let reverse = self.reverse_packets();
        eprintln!(
            "link {}: {} frames / {} bytes forwarded, {} dropped by the loss rules, {} by the rate \
             limit, REVERSE PACKETS: {reverse}",
            self.prefix,
            self.fwd_packets(),
            self.fwd_bytes(),
            self.lost_packets(),
            self.line_drops()
        );
        assert_eq!(
            reverse, 0,
            "{reverse} packet(s) left the receiver's side towards the sender: the diode was not one-way"
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(n) = self.sh("link_reverse_packets") {
                eprintln!(
                    "link {}: reverse packets at failure: {}",
                    self.prefix,
                    n.trim()
                );
            }
        }
        // link_down stops whatever still runs inside the namespaces and deletes them
        if let Err(e) = self.sh("link_down") {
            eprintln!(
                "link {}: teardown failed, remove namespaces {}-s/-r by hand: {e}",
                self.prefix, self.prefix
            );
        }
    }
}
