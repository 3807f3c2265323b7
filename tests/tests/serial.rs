//! The serial link end to end: the real `diode-send` and `diode-recv` with `link = "serial"` on real
//! pseudo-terminals, from `socat` (a clean line) or `hardware/serial-relay.py` (a one-way line between two
//! pty pairs that drops, flips and inserts bytes at a seeded rate). What is tried, and what must survive:
//! - files of every size and an approval envelope cross byte-exact;
//! - line noise: every file that arrives is byte-exact (FEC repairs the lost frames), and a file that
//!   loses too much is reported incomplete with its missing blocks, never published;
//! - a receiver started mid-stream, and one killed and restarted, finds the frame boundaries again and
//!   receives what is sent next; the file it joined in the middle of is named with a replay line that
//!   completes it;
//! - a pace above the line, or a line the frames cannot cross, is refused at start.

use diode_proto::envelope::{SignerRole, SigningKey};
use diode_tests::envelopes::{digest, good};
use diode_tests::serial::Line;
use diode_tests::{random_bytes, wait_for, Site};
use std::fs;
use std::time::Duration;

/// Overrides of send.toml or recv.toml.
type Extra<'a> = &'a [(&'a str, toml::Value)];

/// A fast line for the functional tests (ptys do not enforce a speed; the sender paces to this).
const FAST: u32 = 2_000_000;

fn files(sizes: &[(&str, usize)]) -> Vec<(String, Vec<u8>)> {
    sizes
        .iter()
        .map(|(n, s)| (n.to_string(), random_bytes(*s)))
        .collect()
}

fn drop_all(site: &Site, want: &[(String, Vec<u8>)]) {
    for (n, b) in want {
        site.drop_in(n, b);
    }
}

/// A signed approval envelope for the prod rule of recv.example.toml; returns its id.
fn drop_envelope(site: &Site, seed: u8) -> String {
    let text = fs::read_to_string(site.path("keys/adapter.key")).unwrap();
    let key = SigningKey::from_text(&text, SignerRole::Adapter).unwrap();
    let e = good(&digest(seed));
    let id = e.id.clone();
    site.drop_in(&format!("{id}.envelope"), e.sign(&key).to_json().as_bytes());
    id
}

fn wait_approval(site: &Site, id: &str) {
    let p = site.path(&format!("approvals/{id}.json"));
    wait_for(
        "the envelope in approvals/",
        Duration::from_secs(30),
        || p.exists().then_some(()),
    );
}

#[test]
fn files_and_an_envelope_cross_a_socat_pty_pair_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let line = Line::socat(dir.path());
    let site = Site::serial(&line.tx, &line.rx, FAST, &[], &[]);
    let _r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let want = files(&[
        ("empty", 0),
        ("one", 1),
        ("nested/deeper/64k.bin", 64 << 10),
        ("half-mib.bin", 512 << 10),
    ]);
    drop_all(&site, &want);
    let id = drop_envelope(&site, 0x51);
    site.wait_inbox(&want, Duration::from_secs(60)).unwrap();
    wait_approval(&site, &id);
    let status = site.status_json();
    assert!(
        status["listen"]
            .as_str()
            .unwrap_or("")
            .starts_with("serial:"),
        "status names the serial link: {status}"
    );
    println!(
        "socat pty pair: 4 files and envelope {id} crossed; drops {}",
        status["drops"]
    );
}

#[test]
fn a_noisy_line_delivers_byte_exact_or_reports_the_gap_never_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    // about one fault per 20 kB: one frame in ~14 lost, well within the default parity
    let mut line = Line::relay(
        dir.path(),
        &[
            "--drop", "2e-5", "--flip", "2e-5", "--insert", "1e-5", "--seed", "7",
        ],
    );
    // a noisy line: the operator raises parity from the serial default of 8 to 24
    let site = Site::serial(
        &line.tx,
        &line.rx,
        FAST,
        &[("parity_shards", 24.into())],
        &[],
    );
    let mut r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let mut sizes: Vec<(String, usize)> = (0..6)
        .map(|i| (format!("noisy/big-{i}.bin"), 128 << 10))
        .collect();
    sizes.extend((0..10).map(|i| (format!("noisy/small-{i}.txt"), 100 + i * 700)));
    let sizes: Vec<(&str, usize)> = sizes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let want = files(&sizes);
    drop_all(&site, &want);
    let id = drop_envelope(&site, 0x52);
    site.wait_inbox(&want, Duration::from_secs(90)).unwrap();
    wait_approval(&site, &id);
    let drops = site.status_json()["drops"].clone();
    let stats = line.stop();
    println!("noisy line: relay {stats}; receiver drops {drops}");
    let faults = stats["dropped"].as_u64().unwrap()
        + stats["flipped"].as_u64().unwrap()
        + stats["inserted"].as_u64().unwrap();
    assert!(
        faults >= 20,
        "the relay must really have damaged the line: {stats}"
    );
    assert!(
        drops["serial_crc"].as_u64().unwrap_or(0) + drops["serial_malformed"].as_u64().unwrap_or(0)
            > 0,
        "damaged frames are counted by reason: {drops}"
    );
    r.kill9();

    // now a line too noisy for the parity: what cannot be rebuilt is reported, never published
    let dir2 = tempfile::tempdir().unwrap();
    let line2 = Line::relay(dir2.path(), &["--flip", "1.5e-4", "--seed", "8"]);
    let site2 = Site::serial(&line2.tx, &line2.rx, FAST, &[], &[]);
    let _r2 = site2.start("recv");
    let _s2 = site2.start("send");
    site2.wait_session(Duration::from_secs(20));
    let big = random_bytes(1 << 20);
    site2.drop_in("too-noisy.bin", &big);
    let missing = wait_for(
        "the damaged file to be reported incomplete",
        Duration::from_secs(60),
        || {
            let s = site2.status_json();
            s["objects"].as_array()?.iter().find_map(|o| {
                (o["name"] == "too-noisy.bin" && o["state"] == "incomplete")
                    .then(|| o["missing"].as_str().unwrap_or("").to_string())
            })
        },
    );
    assert!(!missing.is_empty());
    match fs::read(site2.inbox().join("too-noisy.bin")) {
        Err(_) => {
            println!("too noisy: reported incomplete, missing blocks {missing}, not published")
        }
        Ok(b) => assert_eq!(b, big, "a published file must be byte-exact"),
    }
}

#[test]
fn a_receiver_started_mid_stream_and_restarted_resynchronises() {
    let dir = tempfile::tempdir().unwrap();
    let line = Line::relay(dir.path(), &[]);
    let site = Site::serial(&line.tx, &line.rx, FAST, &[], &[]);
    let _s = site.start("send");
    // the sender is busy with a 1 MiB file (about 6 s on this line) when the receiver comes up
    let first = random_bytes(1 << 20);
    site.drop_in("joined-mid-file.bin", &first);
    std::thread::sleep(Duration::from_millis(2500));
    let mut r = site.start("recv");
    site.wait_session(Duration::from_secs(10));
    let want = files(&[("after-join-1", 3000), ("after-join-2", 70_000)]);
    drop_all(&site, &want);
    site.wait_inbox(&want, Duration::from_secs(60)).unwrap();
    // the file it joined in the middle of is named, with the line that completes it
    let replay = wait_for(
        "the half-seen file with a replay line",
        Duration::from_secs(30),
        || {
            let s = site.status_json();
            s["objects"].as_array()?.iter().find_map(|o| {
                (o["name"] == "joined-mid-file.bin" && o["state"] == "incomplete")
                    .then(|| o["replay"].as_str().map(str::to_string))
                    .flatten()
            })
        },
    );
    println!("joined mid-file; status says: {replay}");
    site.run_replay_line(&replay);
    site.wait_inbox(
        &[("joined-mid-file.bin".to_string(), first)],
        Duration::from_secs(60),
    )
    .unwrap();

    // killed mid-frame and restarted: it finds the boundaries again
    let during = random_bytes(200_000);
    site.drop_in("during-restart.bin", &during);
    std::thread::sleep(Duration::from_millis(300));
    r.kill9();
    let _r2 = site.start("recv");
    let want = files(&[("after-restart-1", 10), ("after-restart-2", 90_000)]);
    drop_all(&site, &want);
    site.wait_inbox(&want, Duration::from_secs(60)).unwrap();
    println!("restarted receiver resynchronised and received the next files");
}

#[test]
fn a_pace_above_the_line_and_a_line_frames_cannot_cross_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tty = dir.path().join("no-such-tty");
    let cases: [(Extra, bool, &str); 4] = [
        (
            &[("rate", "230400bit".into())],
            true,
            "more than the serial line carries",
        ),
        (&[("data_bits", 7.into())], true, "need 8 data bits"),
        (&[("parity", "mark".into())], true, "parity = \"mark\""),
        (&[("stop_bits", 3.into())], false, "stop_bits = 3"),
    ];
    for (extra, sender, want) in cases {
        let (s, r): (Extra, Extra) = if sender { (extra, &[]) } else { (&[], extra) };
        let site = Site::serial(&tty, &tty, 115_200, s, r);
        let mut c = if sender {
            site.send_cmd()
        } else {
            site.recv_cmd()
        };
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} must be refused");
        assert!(
            err.contains(want),
            "{extra:?}: error should say {want:?}: {err}"
        );
        println!("refused {extra:?}: {}", err.lines().last().unwrap_or(""));
    }
    // and a port that does not exist is named
    let site = Site::serial(&tty, &tty, 115_200, &[], &[]);
    let out = site.send_cmd().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no-such-tty"),
        "{err}"
    );
}
