//! The real daemons across an emulated one-way link (`hardware/diode-link.sh`): the receiver in one
//! network namespace, the sender in another, a veth pair between them whose receiver side drops and
//! counts every packet going back. Random loss in nftables, burst loss through `hardware/relay.py`, exact
//! drops of chosen frames, daemons killed with SIGKILL, a receiver disk that fills up. Every test ends by
//! printing the link's counters and asserting that not one packet left the receiver towards the sender.
//!
//! Needs root (CI runs as root); without it each test fails with the reason, unless
//! `DIODE_SKIP_NETNS=1`, which skips them loudly. The tests run one at a time whatever the test
//! threads, since they share two cores and a late frame is a lost frame.

use diode_tests::link::Link;
use diode_tests::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sender's pace, and the line rate of the link above it. tbf on the veth keeps the line from ever
/// running faster than a real one would; the margin above the pace absorbs the pacer catching up after
/// the sender was scheduled out for a few milliseconds, so the link itself loses nothing.
const PACE: &str = "200Mbit";
const LINE: &str = "250mbit";

/// Named files of random bytes.
fn files(prefix: &str, sizes: impl IntoIterator<Item = usize>) -> Vec<(String, Vec<u8>)> {
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, n)| (format!("{prefix}{i:03}.bin"), random_bytes(n)))
        .collect()
}

/// The receiver's status entry for the object called `name`, if it has one.
fn object(site: &Site, name: &str) -> Option<serde_json::Value> {
    site.status_json()["objects"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
        .cloned()
}

/// What the receiver reports about the link and the objects it has not finished: printed when a test
/// fails or ends, so a failure says which blocks were missing and how much the link lost.
fn receiver_view(site: &Site) -> String {
    let s = site.status_json();
    let mut out = String::new();
    for x in s["sessions"].as_array().into_iter().flatten() {
        out += &format!(
            "receiver: session {} frames {}/{} ({}% lost)\n",
            x["counter"], x["frames_received"], x["frames_expected"], x["loss_percent"]
        );
    }
    out += &format!("receiver: drops {}\n", s["drops"]);
    for o in s["objects"].as_array().into_iter().flatten() {
        out += &format!(
            "receiver: {} {} {}/{} blocks, missing {}, error {}\n",
            o["state"], o["name"], o["blocks_done"], o["blocks"], o["missing"], o["error"]
        );
    }
    out
}

/// Wait for files in the inbox; on failure, say what the receiver saw.
fn expect_inbox(site: &Site, want: &[(String, Vec<u8>)], timeout: Duration) {
    if let Err(e) = site.wait_inbox(want, timeout) {
        panic!("{e}\n{}", receiver_view(site));
    }
}

/// Rows of `diode-send journal`: (object id, blocks, state, name).
fn journal(site: &Site) -> Vec<(String, String, String, String)> {
    let text = run_ok(site.send_cmd().arg("journal"));
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let n = w.len();
            (n >= 6).then(|| {
                (
                    w[0].to_string(),
                    w[n - 3].to_string(),
                    w[n - 2].to_string(),
                    w[n - 1].to_string(),
                )
            })
        })
        .collect()
}

/// Wait until the sender has journaled `n` objects as sent (all their passes are out).
fn wait_sent(site: &Site, n: usize, timeout: Duration) {
    wait_for(
        &format!("the sender to finish {n} object(s)"),
        timeout,
        || (journal(site).iter().filter(|r| r.2 == "kept").count() >= n).then_some(()),
    );
}

/// Names in the receiver's record of delivered files, with how often each was delivered.
fn deliveries(site: &Site) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    let text = fs::read_to_string(site.recv_state().join("received.jsonl")).unwrap_or_default();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("received.jsonl line");
        *m.entry(v["name"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

/// The end of every test: nothing left unfinished at the receiver, what it saw, the link's counters,
/// and zero packets back.
fn evidence(link: &Link, site: &Site) {
    // status.json is rewritten every second: wait for the one written after the last delivery
    wait_for(
        "the receiver to report no object in progress",
        Duration::from_secs(5),
        || {
            site.status_json()["objects"]
                .as_array()
                .is_some_and(|o| o.is_empty())
                .then_some(())
        },
    );
    eprint!("{}", receiver_view(site));
    link.assert_one_way();
}

/// Looks at the inbox every 10 ms from a thread until finished: every entry must be one of the expected
/// files at its full size. The receiver renames only whole, verified files into the inbox, so anything
/// else seen there, however briefly, is a partial file or a stray.
struct InboxWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl InboxWatch {
    fn start(inbox: PathBuf, expect: BTreeMap<String, u64>) -> InboxWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                for e in fs::read_dir(&inbox).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // a folder or an unreadable entry counts as no size
                    let len = e
                        .metadata()
                        .ok()
                        .and_then(|m| m.is_file().then_some(m.len()));
                    if len.is_none() || expect.get(&name) != len.as_ref() {
                        let what = format!("{name} ({len:?} bytes)");
                        if !seen.contains(&what) {
                            seen.push(what);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        InboxWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop watching; every entry that was not a whole expected file.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("inbox watch"))
            .unwrap_or_default()
    }
}

impl Drop for InboxWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// hardware/relay.py running on the receiver's side; stopped (and its counts written) when dropped.
struct Relay {
    child: Child,
    stats: PathBuf,
}

impl Relay {
    fn start(link: &Link, listen: &str, target: &str, args: &[&str], dir: &Path) -> Relay {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware/relay.py");
        let stats = dir.join("relay.json");
        let child = link
            .exec_r("python3")
            .arg(script)
            .args(["--listen", listen, "--target", target, "--stats"])
            .arg(&stats)
            .args(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("relay.log")).unwrap())
            .spawn()
            .expect("python3 hardware/relay.py");
        let mut r = Relay { child, stats };
        // it writes its counts a second after it has bound its socket
        wait_for("relay.py to start", Duration::from_secs(10), || {
            assert!(
                matches!(r.child.try_wait(), Ok(None)),
                "relay.py exited: {}",
                fs::read_to_string(dir.join("relay.log")).unwrap_or_default()
            );
            r.stats.exists().then_some(())
        });
        r
    }

    /// Stop it and read its final counts.
    fn stop(mut self) -> serde_json::Value {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        serde_json::from_slice(&fs::read(&self.stats).unwrap()).unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 5% random loss, independent per frame (nftables), with the default FEC (128 data + 24 parity shards)
/// and the default single pass: 200 files from 1 byte to 1 MiB, sizes evenly spaced on a log scale, so
/// single short blocks, files of several full blocks and tails of every length are all among them. All
/// must arrive byte-exact, and nothing else may appear in the inbox.
///
/// Caveat, a property of the protocol and not of this test: a short block (a small file, or the tail of
/// any file) gets proportional parity with a floor of 4 shards, which at 5% loss fails far more often
/// than a full block (k = 21 data shards: 0.7% against 2e-7). Over these 200 sizes about 0.06 files are
/// expected to be lost per run, so this test fails in roughly one run in 18 until short blocks get more
/// parity (docs/protocol.md section 8.3).
#[test]
fn five_percent_loss_200_mixed_files_arrive_byte_exact() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("loss", 5.0) else {
        return;
    };
    link.rate(LINE);
    let site = Site::across(&link, &[("rate", PACE.into())], &[]);
    let _r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let sizes = (0..200).map(|i| 2f64.powf(20.0 * i as f64 / 199.0).round() as usize);
    let want = files("mixed", sizes);
    for (n, b) in &want {
        site.drop_in(n, b);
    }
    expect_inbox(&site, &want, Duration::from_secs(90));
    assert_eq!(site.inbox_files().len(), 200, "stray files in the inbox");
    evidence(&link, &site);
}

/// Burst loss through hardware/relay.py on the receiver's side (Gilbert-Elliott, 3% mean loss in bursts
/// of 30 frames on average, fixed seed, printed; `DIODE_RELAY_SEED` replays another). Topology: the
/// sender sends across the veth to the relay at the receiver's address; the relay forwards over the
/// receiver namespace's loopback to the receiver, so nothing it sends can touch the link and the
/// reverse counter still covers every packet the receiver side emits. Default FEC, one pass, frames of
/// 32 neighbouring blocks interleaved: every file must arrive byte-exact, and the relay must have dropped
/// at least one burst longer than two blocks' parity (48 frames), which without interleaving would have
/// cost a block wherever it fell.
///
/// Why 32 and not the default 8: with 8, a group spans 1216 frames, and under this loss model the
/// bursts that land in one group add up to more than 8 x 24 parity frames in about 0.6% of groups, so a
/// run of this size loses a block about one time in four (seed 1 does). With 32 (4864 frames a group)
/// a simulation of the same model lost no block in 45 000 groups.
#[test]
fn burst_loss_is_spread_by_interleaving_and_all_files_arrive() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("burst", 0.0) else {
        return;
    };
    // python relays ~30 000 frames/s on a loaded core: stay well below
    link.rate("125mbit");
    let seed = std::env::var("DIODE_RELAY_SEED").unwrap_or_else(|_| "1".into());
    eprintln!("relay seed {seed} (DIODE_RELAY_SEED={seed} replays this loss pattern)");
    let (relay_port, recv_port) = (port(), port());
    let site = Site::across(
        &link,
        &[
            ("rate", "100Mbit".into()),
            ("interleave", 32.into()),
            ("target", format!("{}:{relay_port}", link.ip_r).into()),
        ],
        &[("listen", format!("127.0.0.1:{recv_port}").into())],
    );
    let relay = Relay::start(
        &link,
        &format!("{}:{relay_port}", link.ip_r),
        &format!("127.0.0.1:{recv_port}"),
        &["--loss", "3", "--burst", "30", "--seed", &seed],
        site.dir.path(),
    );
    let _r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let mut sizes: Vec<usize> = (0..12).map(|i| (3 << 20) + i * 70_001).collect();
    sizes.extend((0..24).map(|i| 1000 + i * 40_009));
    let want = files("burst", sizes);
    for (n, b) in &want {
        site.drop_in(n, b);
    }
    if let Err(e) = site.wait_inbox(&want, Duration::from_secs(90)) {
        let counts = fs::read_to_string(&relay.stats).unwrap_or_default();
        panic!("{e}\n{}relay: {counts}", receiver_view(&site));
    }
    assert_eq!(
        site.inbox_files().len(),
        want.len(),
        "stray files in the inbox"
    );
    let st = relay.stop();
    eprintln!(
        "relay: received {} dropped {} in {} bursts (mean {:.1}, longest {}), seed {}",
        st["received"],
        st["dropped"],
        st["loss_bursts"],
        st["dropped"].as_f64().unwrap_or(0.0) / st["loss_bursts"].as_f64().unwrap_or(1.0),
        st["max_burst"],
        st["seed"]
    );
    assert!(
        st["max_burst"].as_u64().unwrap_or(0) > 48,
        "no loss burst longer than 48 frames: this run did not test interleaving ({st})"
    );
    assert_eq!(st["looped"], 0, "the relay saw datagrams from its target");
    evidence(&link, &site);
}

/// 30% random loss (nftables) with `passes = 3`: each pass alone loses far more than the parity, but
/// the receiver keeps every shard across passes, so a shard is missing only if all three copies were
/// lost (2.7%). Files from 1 KB to 4 MB: all must arrive byte-exact.
#[test]
fn thirty_percent_loss_with_three_passes_delivers_every_file() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("heavy", 30.0) else {
        return;
    };
    link.rate(LINE);
    let site = Site::across(&link, &[("rate", PACE.into()), ("passes", 3.into())], &[]);
    let _r = site.start("recv");
    let _s = site.start("send");
    // the announce itself crosses the 30% loss: wait until one got through
    site.wait_session(Duration::from_secs(15));
    let want = files("heavy", (0..24).map(|i| 1000 + i * i * 7_333));
    for (n, b) in &want {
        site.drop_in(n, b);
    }
    expect_inbox(&site, &want, Duration::from_secs(90));
    assert_eq!(
        site.inbox_files().len(),
        want.len(),
        "stray files in the inbox"
    );
    evidence(&link, &site);
}

/// `kill -9` of the receiver a third of the way into the first of two passes of a 300 MiB file, then a
/// restart. What must survive: the blocks it had saved (the restarted receiver resumes the partial
/// object, it does not start over), and the second pass completes the file byte-exact. The inbox is
/// watched every 10 ms from the file's first frame to the end of the second pass: it never shows a
/// partial file or anything else, and the file is delivered exactly once.
#[test]
fn receiver_killed_mid_300mib_file_resumes_and_never_shows_a_partial() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("rkill", 0.0) else {
        return;
    };
    link.rate(LINE);
    let site = Site::across(&link, &[("rate", PACE.into()), ("passes", 2.into())], &[]);
    let mut r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let size = 300usize << 20;
    let data = random_bytes(size);
    let digest = Sha256::digest(&data);
    let watch = InboxWatch::start(
        site.inbox(),
        BTreeMap::from([("big.bin".to_string(), size as u64)]),
    );
    site.drop_in("big.bin", &data);
    drop(data);
    let done = wait_for(
        "a third of big.bin at the receiver",
        Duration::from_secs(120),
        || {
            let o = object(&site, "big.bin")?;
            let (done, blocks) = (o["blocks_done"].as_u64()?, o["blocks"].as_u64()?);
            (done * 3 >= blocks).then_some((done, blocks))
        },
    );
    r.kill9();
    eprintln!("receiver killed with {}/{} blocks done", done.0, done.1);
    let r2 = site.start("recv");
    let resumed = r2
        .log_text()
        .lines()
        .find(|l| l.contains("resuming a partial object"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "the restarted receiver did not resume big.bin: {}",
                r2.log_text()
            )
        });
    let saved: u64 = resumed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("done=")?.parse().ok())
        .expect("done= in the resume line");
    assert!(saved > 0, "nothing saved before the kill: {resumed}");
    eprintln!("restarted receiver resumed {saved} saved blocks");
    let path = site.inbox().join("big.bin");
    wait_for("big.bin in the inbox", Duration::from_secs(120), || {
        path.exists().then_some(())
    });
    let got = Sha256::digest(fs::read(&path).unwrap());
    assert_eq!(got, digest, "big.bin arrived with other bytes");
    // the rest of the second pass must not deliver it again
    wait_sent(&site, 1, Duration::from_secs(120));
    let strays = watch.finish();
    assert!(
        strays.is_empty(),
        "the inbox showed partial or stray files: {strays:?}"
    );
    assert_eq!(site.inbox_files(), vec!["big.bin"]);
    assert_eq!(
        deliveries(&site),
        BTreeMap::from([("big.bin".to_string(), 1)]),
        "delivered other than once"
    );
    evidence(&link, &site);
}

/// `kill -9` of the sender while it sends a batch of files (after a third of their bytes crossed the
/// link, with objects still claimed but unsent in its journal), more files dropped into the outbox
/// while it is down, then a restart. What must survive: every file, whether it was sent, half-sent,
/// claimed and waiting, or still in the outbox, arrives byte-exact, each delivered exactly once.
#[test]
fn sender_killed_mid_batch_loses_no_file() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("skill", 0.0) else {
        return;
    };
    link.rate(LINE);
    let site = Site::across(&link, &[("rate", PACE.into())], &[]);
    let _r = site.start("recv");
    let mut s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let mut sizes: Vec<usize> = (0..16).map(|i| 65_536 + i * 60_000).collect();
    sizes.extend([12 << 20, 9 << 20, 12 << 20, 7 << 20]);
    let before = files("before", sizes);
    let total: usize = before.iter().map(|(_, b)| b.len()).sum();
    let base = link.fwd_bytes();
    for (n, b) in &before {
        site.drop_in(n, b);
    }
    wait_for(
        "a third of the batch on the link",
        Duration::from_secs(60),
        || (link.fwd_bytes() - base >= total as u64 / 3).then_some(()),
    );
    s.kill9();
    let queued = journal(&site).iter().filter(|r| r.2 == "queued").count();
    let arrived = site.inbox_files().len();
    eprintln!(
        "sender killed: {arrived} of {} files delivered, {queued} claimed but unsent",
        before.len()
    );
    assert!(
        queued > 0 && arrived < before.len(),
        "the kill did not interrupt the batch (too late?): {arrived} delivered, {queued} unsent"
    );
    let during = files("during", (0..8).map(|i| 10_000 + i * 150_000));
    for (n, b) in &during {
        site.drop_in(n, b);
    }
    let _s2 = site.start("send");
    let all: Vec<(String, Vec<u8>)> = before.into_iter().chain(during).collect();
    expect_inbox(&site, &all, Duration::from_secs(90));
    let mut names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(site.inbox_files(), names, "stray files in the inbox");
    let twice: Vec<_> = deliveries(&site)
        .into_iter()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    evidence(&link, &site);
}

/// The receiver's inbox and state on a small tmpfs that fills up in the middle of a 24 MiB file sent
/// once. What must hold: a clear "No space left on device" error in the receiver's log, no file (whole
/// or partial) in the inbox, and once space is freed the object is reported incomplete with its missing
/// blocks and a replay line; running that line completes the file byte-exact.
#[test]
fn receiver_disk_full_leaves_a_gap_that_replay_fills() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("full", 0.0) else {
        return;
    };
    link.rate(LINE);
    let site = Site::across(
        &link,
        &[("rate", PACE.into())],
        &[
            ("inbox", "high/inbox".into()),
            ("state", "high/state".into()),
        ],
    );
    let disk = diode_tests::mount::Mount::tmpfs(&site.path("high"), "48m");
    let r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    // leave 8 MiB free: a third of the file
    let filler = site.path("high/filler");
    let fill = disk.free() - (8 << 20);
    fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    let size = 24usize << 20;
    let want = vec![("full.bin".to_string(), random_bytes(size))];
    let watch = InboxWatch::start(
        site.inbox(),
        BTreeMap::from([("full.bin".to_string(), size as u64)]),
    );
    site.drop_in(&want[0].0, &want[0].1);
    wait_sent(&site, 1, Duration::from_secs(60));
    wait_for(
        "the receiver to log that its disk is full",
        Duration::from_secs(20),
        || {
            r.log_text()
                .contains("No space left on device")
                .then_some(())
        },
    );
    let line = r
        .log_text()
        .lines()
        .find(|l| l.contains("cannot write a block"))
        .unwrap_or_default()
        .to_string();
    eprintln!("receiver log: {line}");
    assert!(
        line.contains("No space left on device") && line.contains("full.bin"),
        "the error does not say what failed and why: {line}"
    );
    assert!(
        site.inbox_files().is_empty(),
        "something reached the inbox of a full disk"
    );
    fs::remove_file(&filler).unwrap();
    // with room again the receiver can write its status: the object is a gap, with a replay line
    let o = wait_for(
        "full.bin reported incomplete with a replay line",
        Duration::from_secs(20),
        || {
            let o = object(&site, "full.bin")?;
            (o["state"] == "incomplete" && o["replay"].is_string()).then_some(o)
        },
    );
    eprintln!("gap report: {o}");
    let (done, blocks) = (
        o["blocks_done"].as_u64().unwrap(),
        o["blocks"].as_u64().unwrap(),
    );
    assert!(done < blocks, "no block missing: {o}");
    assert!(
        o["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "the report does not say why: {o}"
    );
    let queued = site.run_replay_line(o["replay"].as_str().unwrap());
    eprintln!("{}", queued.trim());
    expect_inbox(&site, &want, Duration::from_secs(60));
    let strays = watch.finish();
    assert!(
        strays.is_empty(),
        "the inbox showed partial or stray files: {strays:?}"
    );
    assert_eq!(site.inbox_files(), vec!["full.bin"]);
    evidence(&link, &site);
}

/// Raw nftables matches on the clear frame header (kind at byte 3, block at 28..32 and shard at 32..34,
/// little-endian: docs/protocol.md) drop chosen frames of a file sent once, exactly and nothing else:
/// every frame of blocks 3, 17, 18, 19 and 40, 25 frames of block 9 (one more than its 24 parity
/// shards: lost) and 24 of block 11 (exactly its parity: must be rebuilt). The link's own drop counter
/// must equal that frame count, the gap report must name exactly blocks 3,9,17-19,40 and nothing else,
/// with the object id the sender's journal holds, and running the printed replay line (with the drops
/// lifted) must complete the file byte-exact.
#[test]
fn gap_report_names_exactly_the_dropped_blocks_and_its_replay_line_completes_the_file() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("gap", 0.0) else {
        return;
    };
    link.rate("125mbit");
    let site = Site::across(&link, &[("rate", "100Mbit".into())], &[]);
    let _r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    // frames of this site's receiver, with the protocol's magic, of kind Shard
    let shard = format!("udp dport {} @th,64,16 0xd10d @th,88,8 2", site.port);
    let block = |b: u32| format!("0x{:08x}", u32::from_be_bytes(b.to_le_bytes()));
    let shards = |r: std::ops::RangeInclusive<u16>| {
        r.map(|s| format!("0x{:04x}", u16::from_be_bytes(s.to_le_bytes())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let whole: Vec<String> = [3, 17, 18, 19, 40].into_iter().map(block).collect();
    link.drop_matching(&format!("{shard} @th,288,32 {{ {} }}", whole.join(", ")));
    link.drop_matching(&format!(
        "{shard} @th,288,32 {} @th,320,16 {{ {} }}",
        block(9),
        shards(0..=24)
    ));
    link.drop_matching(&format!(
        "{shard} @th,288,32 {} @th,320,16 {{ {} }}",
        block(11),
        shards(100..=123)
    ));
    // 50 full blocks of 128 x 1408 bytes and a short one: 51 blocks, block 40 full (152 frames)
    let size = 50 * 128 * 1408 + 5000;
    let want = vec![("cut.bin".to_string(), random_bytes(size))];
    site.drop_in(&want[0].0, &want[0].1);
    wait_sent(&site, 1, Duration::from_secs(60));
    let o = wait_for(
        "cut.bin reported incomplete",
        Duration::from_secs(20),
        || {
            let o = object(&site, "cut.bin")?;
            (o["state"] == "incomplete").then_some(o)
        },
    );
    eprintln!("gap report: {o}");
    assert_eq!(
        link.line_drops(),
        0,
        "the sender burst above the line's rate: the emulated line's queue dropped frames"
    );
    // the report comes after the object fell silent: every frame of the pass has crossed the link
    let expected_drops = 5 * (128 + 24) + 25 + 24;
    assert_eq!(
        link.lost_packets(),
        expected_drops,
        "the link did not drop exactly the chosen frames"
    );
    let row = journal(&site)
        .into_iter()
        .find(|r| r.3 == "cut.bin")
        .expect("cut.bin in the journal");
    assert_eq!(o["object"], row.0.as_str(), "ids differ: {o} / {row:?}");
    assert_eq!(row.1, "51", "block count in the journal: {row:?}");
    assert_eq!(o["blocks"], 51);
    assert_eq!(o["missing"], "3,9,17-19,40", "wrong gap: {o}");
    assert_eq!(o["blocks_done"], 51 - 6);
    let line = o["replay"].as_str().expect("a replay line").to_string();
    assert!(
        line.ends_with(&format!("--object {} --blocks 3,9,17-19,40", row.0)),
        "{line}"
    );
    assert!(
        site.inbox_files().is_empty(),
        "a file with gaps reached the inbox"
    );
    // lift the drops, then do what the report says
    link.loss(0.0);
    eprintln!("running: {line}");
    site.run_replay_line(&line);
    let t = Instant::now();
    expect_inbox(&site, &want, Duration::from_secs(30));
    eprintln!(
        "completed by the replay in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(site.inbox_files(), vec!["cut.bin"]);
    assert_eq!(
        link.lost_packets(),
        expected_drops,
        "frames dropped after the drops were lifted"
    );
    evidence(&link, &site);
}

/// `gso = "auto"` (the default) batches frames into GSO sends where the egress device cuts a batch into
/// datagrams before the link (here the sender's veth with `tx-udp-segmentation off`, as hardware/ sets
/// it up to behave like a NIC), and sends one datagram per call where a batch would cross whole (the
/// veth's own default). Either way every packet that reaches the receiver's side is one frame (the
/// link's counters: bytes per packet), so loss on the link stays per datagram.
#[test]
fn gso_auto_batches_only_where_the_egress_device_cuts_batches_into_datagrams() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("gso", 0.0) else {
        return;
    };
    let site = Site::across(&link, &[("rate", "1Gbit".into())], &[]);
    let _r = site.start("recv");
    let mut s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let said = |s: &diode_tests::Daemon, what: &str| {
        wait_for(what, Duration::from_secs(10), || {
            let log = s.log_text();
            log.lines()
                .find(|l| l.contains("gso = \"auto\""))
                .map(str::to_string)
        })
    };
    let line = said(&s, "the sender's GSO decision");
    assert!(
        line.contains("batching=true") && line.contains("tx-udp-segmentation off"),
        "{line}"
    );
    println!("segmenting veth: {line}");
    let per_packet = |bytes: u64, packets: u64| bytes / packets.max(1);
    let (b0, p0) = (link.fwd_bytes(), link.fwd_packets());
    let one = files("gso-a", [8 << 20]);
    site.drop_in(&one[0].0, &one[0].1);
    expect_inbox(&site, &one, Duration::from_secs(60));
    let (b1, p1) = (link.fwd_bytes(), link.fwd_packets());
    let size = per_packet(b1 - b0, p1 - p0);
    assert!(
        size <= 1500,
        "{size} bytes per packet on the link: batches crossed whole"
    );
    println!(
        "batched sends: {} packets of {size} bytes on average crossed the link",
        p1 - p0
    );

    // the veth as it comes (passes a GSO batch on whole): the sender, started again, sends one by one
    link.segment(false);
    s.kill9();
    let s = site.start("send");
    let line = said(&s, "the sender's GSO decision on the whole-batch veth");
    assert!(
        line.contains("batching=false") && line.contains("passes GSO batches on whole"),
        "{line}"
    );
    println!("whole-batch veth: {line}");
    let two = files("gso-b", [8 << 20]);
    site.drop_in(&two[0].0, &two[0].1);
    expect_inbox(
        &site,
        &[one[0].clone(), two[0].clone()],
        Duration::from_secs(60),
    );
    let (b2, p2) = (link.fwd_bytes(), link.fwd_packets());
    let size = per_packet(b2 - b1, p2 - p1);
    assert!(size <= 1500, "{size} bytes per packet on the link");
    println!(
        "single sends: {} packets of {size} bytes on average crossed the link",
        p2 - p1
    );
    link.assert_one_way();
}

/// Jumbo frames end to end: the link's MTU and the sender's `mtu` at 9000, so each frame carries an
/// 8896-byte shard (one datagram of at most 9000 bytes on the link, batched by GSO and split again by
/// the kernel), through 1 % per-datagram loss; every file arrives byte-exact.
#[test]
fn jumbo_frames_at_mtu_9000_cross_with_loss_byte_exact() {
    let _one = one_at_a_time();
    let Some(link) = Link::up_mtu("jumbo", 1.0, 9000) else {
        return;
    };
    let site = Site::across(
        &link,
        &[("rate", "1Gbit".into()), ("mtu", 9000.into())],
        &[],
    );
    let _r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let want = files("jumbo", [1, 8896, 100_000, 3 << 20, 24 << 20]);
    for (n, b) in &want {
        site.drop_in(n, b);
    }
    expect_inbox(&site, &want, Duration::from_secs(90));
    let per_packet = link.fwd_bytes() / link.fwd_packets().max(1);
    assert!(
        per_packet > 8000 && per_packet <= 9000,
        "{per_packet} bytes per packet: not jumbo frames, or batches crossed whole"
    );
    println!(
        "{} files byte-exact at MTU 9000 through 1% loss: {} packets, {per_packet} bytes each on average, {} lost on the link",
        want.len(),
        link.fwd_packets(),
        link.lost_packets()
    );
    link.assert_one_way();
}

/// Several ports: the sender sends each batch to the next of 4 ports and the receiver listens on all 4,
/// so that a NIC's receive-side scaling spreads the frames over queues and cores (and blocks with lost
/// shards are rebuilt on the receiver's writer thread: `decode_on_writer`). Through 1 % loss every
/// file arrives byte-exact, and every port carried its share (the receiver counts frames per socket).
#[test]
fn four_ports_share_the_frames_and_every_file_arrives() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("ports", 1.0) else {
        return;
    };
    let site = Site::across(
        &link,
        &[("rate", "1Gbit".into()), ("ports", 4.into())],
        // and the receiver decodes on its writer thread (decode_on_writer), so that path crosses loss too
        &[("ports", 4.into()), ("decode_on_writer", true.into())],
    );
    let _r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let want = files("ports", [1, 70_000, 5 << 20, 20 << 20]);
    for (n, b) in &want {
        site.drop_in(n, b);
    }
    expect_inbox(&site, &want, Duration::from_secs(90));
    // the files' data alone is over 18,000 frames: wait for a status written after them
    let status = wait_for("frames counted per port", Duration::from_secs(5), || {
        let s = site.status_json();
        let per = s["sockets"].as_object()?;
        let total: u64 = per.values().filter_map(|v| v.as_u64()).sum();
        (per.len() == 4 && total > 18_000).then_some(s)
    });
    let per: Vec<u64> = status["sockets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let total: u64 = per.iter().sum();
    for n in &per {
        assert!(
            *n * 8 > total,
            "a port carried {n} of {total} frames: not spread ({per:?})"
        );
    }
    let text = run_ok(site.recv_cmd().arg("status"));
    assert!(text.contains("frames per port:"), "{text}");
    println!("4 files byte-exact through 1% loss over 4 ports; frames per port {per:?}");
    link.assert_one_way();
}

/// Sealing and opening on worker threads (issue 18): the sender seals on 2 threads (`seal_threads`)
/// and the receiver opens on 2 (`open_threads`), over the emulated one-way link with 1 % per-datagram
/// loss, with a rekey every 10 s so that frames prepared under one session are sealed with its key while
/// the next begins, and blocks with lost shards are rebuilt on 2 threads beside the writer
/// (`decode_threads`). Every file arrives byte-exact, no frame fails to open (a frame sealed with the wrong
/// key, or sent in clear, would count as bad_seal), and both logs say the threads ran.
#[test]
fn sealing_and_opening_on_threads_through_loss_every_file_arrives() {
    let _one = one_at_a_time();
    let Some(link) = Link::up("thrds", 1.0) else {
        return;
    };
    let site = Site::across(
        &link,
        &[
            ("rate", "1Gbit".into()),
            ("seal_threads", 2.into()),
            ("rekey_secs", 10.into()),
        ],
        // and blocks with lost shards rebuilt on 2 threads beside the writer
        &[("open_threads", 2.into()), ("decode_threads", 2.into())],
    );
    let recv = site.start("recv");
    let send = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let mut want = files("threads", [1, 70_000, 5 << 20, 30 << 20]);
    for (n, b) in &want {
        site.drop_in(n, b);
    }
    expect_inbox(&site, &want, Duration::from_secs(90));
    // after the rekey: a file under the next session, sealed and opened on the threads too
    wait_for("a rekey", Duration::from_secs(20), || {
        send.log_text()
            .contains("rekeyed: new session")
            .then_some(())
    });
    let late = files("threads-late", [3 << 20]);
    for (n, b) in &late {
        site.drop_in(n, b);
    }
    want.extend(late);
    expect_inbox(&site, &want, Duration::from_secs(60));
    let status = site.status_json();
    let bad = status["drops"]["bad_seal"].as_u64().unwrap_or(0);
    assert_eq!(bad, 0, "frames that did not open: {status}");
    let (s, r) = (send.log_text(), recv.log_text());
    assert!(s.contains("sealing_threads=2"), "{s}");
    assert!(r.contains("opening_threads=2"), "{r}");
    assert!(r.contains("decoding_threads=2"), "{r}");
    println!(
        "{} files byte-exact through 1% loss and a rekey, sealed on 2 threads, opened on 2, rebuilt on 2; {} of {} packets lost on the link; bad_seal 0",
        want.len(),
        link.lost_packets(),
        link.fwd_packets()
    );
    link.assert_one_way();
}
