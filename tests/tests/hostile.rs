//! Bad input on the wire, against the real receiver: garbage, truncated and altered frames, announces from
//! unknown keys, and a compromised low side (holding the real sender key) sending hostile names. What must
//! survive: nothing is written outside the inbox or for a refused name, every drop is counted by reason,
//! and the receiver keeps receiving good files afterwards.

use diode_proto::object::{interleave, ObjectKind, ObjectMeta};
use diode_proto::{BlockEncoder, FrameKind, PublicKey, Role, SecretKey, SenderSession};
use diode_tests::*;
use std::fs;
use std::net::UdpSocket;
use std::time::Duration;

/// A low-side impostor or a compromised sender: builds frames with the proto crate directly.
struct Wire {
    sock: UdpSocket,
    session: SenderSession,
}

impl Wire {
    fn new(site: &Site, key: &SecretKey) -> Wire {
        let rpub = PublicKey::from_text(
            &fs::read_to_string(site.path("keys/receiver.pub")).unwrap(),
            Role::Receiver,
        )
        .unwrap();
        let counter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let session = SenderSession::start(key, &rpub, counter, 0, &mut rand::rng()).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(("127.0.0.1", site.port)).unwrap();
        Wire { sock, session }
    }

    fn raw(&self, b: &[u8]) {
        self.sock.send(b).unwrap();
        std::thread::sleep(Duration::from_micros(50));
    }

    fn announce(&self) {
        self.raw(self.session.announce());
    }

    fn sealed(
        &mut self,
        kind: FrameKind,
        object: u64,
        block: u32,
        shard: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        self.session
            .seal_payload(kind, object, block, shard, payload)
            .unwrap()
    }

    /// Send a whole object of one block under `name` (no name checks: that is the point).
    fn object(&mut self, id: u64, name: &str, data: &[u8]) {
        self.object_of(ObjectKind::File, id, name, data)
    }

    fn object_of(&mut self, kind: ObjectKind, id: u64, name: &str, data: &[u8]) {
        let (meta, shards) = self.frames_of(kind, id, name, data);
        self.raw(&meta);
        for f in shards {
            self.raw(&f);
        }
    }

    /// The metadata frame and the shard frames (one block) of an object.
    fn frames_of(
        &mut self,
        kind: ObjectKind,
        id: u64,
        name: &str,
        data: &[u8],
    ) -> (Vec<u8>, Vec<Vec<u8>>) {
        let s = 1408;
        let meta = ObjectMeta {
            id,
            name: name.to_string(),
            size: data.len() as u64,
            hash: *blake3::hash(data).as_bytes(),
            kind,
            shard_size: s as u32,
            data_shards: 128,
            parity_shards: 24,
            mtime: 0,
        };
        let m = meta.encode();
        let meta_frame = self.sealed(FrameKind::Meta, id, 0, 0, &m);
        let g = meta.geometry().unwrap();
        let k = g.data_in(meta.size, 0);
        let mut padded = data.to_vec();
        padded.resize(k * s, 0);
        let mut parity = Vec::new();
        BlockEncoder::new()
            .encode(&padded, s, g.parity_for(k), &mut parity)
            .unwrap();
        let mut shards = Vec::new();
        for (_, i) in interleave(&[k + g.parity_for(k)]) {
            let p = if i < k {
                &padded[i * s..(i + 1) * s]
            } else {
                &parity[(i - k) * s..(i - k + 1) * s]
            };
            shards.push(self.sealed(FrameKind::Shard, id, 0, i as u16, p));
        }
        (meta_frame, shards)
    }
}

fn drops(site: &Site) -> serde_json::Value {
    site.status_json()["drops"].clone()
}

fn wait_status() {
    std::thread::sleep(Duration::from_millis(1300)); // the status file is written once a second
}

#[test]
fn garbage_forgeries_and_foreign_keys_are_dropped_and_counted() {
    garbage_forgeries_and_foreign_keys(0);
}

/// The same when the receiver opens frames on 2 threads ahead of the endpoint (`open_threads`): a
/// forged or altered frame under a known session fails on those threads and counts as bad_seal.
#[test]
fn garbage_and_forgeries_opened_on_threads_are_dropped_and_counted() {
    garbage_forgeries_and_foreign_keys(2);
}

fn garbage_forgeries_and_foreign_keys(open_threads: i64) {
    let site = Site::new_with(&[], &[("open_threads", open_threads.into())]);
    let _r = site.start("recv");
    let sender_key = site.sender_key();
    let mut good = Wire::new(&site, &sender_key);
    good.announce();
    // a stranger's key: its announce is refused, so its frames find no session
    let stranger = SecretKey::from_seed(&[42; 32]);
    let mut bad = Wire::new(&site, &stranger);
    bad.announce();
    let f = bad.sealed(FrameKind::Shard, 1, 0, 0, &[0u8; 1408]);
    bad.raw(&f);
    // garbage and truncations
    good.raw(b"");
    good.raw(b"hello diode");
    good.raw(&random_bytes(1460));
    let f = good.sealed(FrameKind::Shard, 5, 0, 0, &[7u8; 1408]);
    good.raw(&f[..f.len() / 2]);
    // every single-bit flip of one genuine frame (a sample of positions across header, body and tag)
    let f = good.sealed(FrameKind::Meta, 9, 0, 0, b"not even metadata");
    for bit in (0..f.len() * 8).step_by(7) {
        let mut g = f.clone();
        g[bit / 8] ^= 1 << (bit % 8);
        good.raw(&g);
    }
    wait_status();
    let d = drops(&site);
    assert!(d["unknown_sender"].as_u64().unwrap_or(0) >= 1, "{d}");
    assert!(d["unknown_session"].as_u64().unwrap_or(0) >= 1, "{d}");
    assert!(d["malformed"].as_u64().unwrap_or(0) >= 3, "{d}");
    assert!(d["bad_seal"].as_u64().unwrap_or(0) >= 20, "{d}");
    assert!(site.inbox_files().is_empty());
    // and the receiver still takes a genuine object afterwards
    let data = random_bytes(5000);
    good.object(77, "after-garbage.bin", &data);
    site.wait_inbox(
        &[("after-garbage.bin".into(), data)],
        Duration::from_secs(10),
    )
    .unwrap();
}

#[test]
fn hostile_names_from_a_compromised_sender_are_refused() {
    let site = Site::new(&[]);
    let mut r = site.start("recv");
    let key = site.sender_key();
    let mut w = Wire::new(&site, &key);
    w.announce();
    std::thread::sleep(Duration::from_millis(100));
    let hostile = [
        "../escape.txt",
        "/tmp/abs.txt",
        "a/../../up.txt",
        "CON",
        "dir/aux.log",
        "nul\0byte",
        "a//b",
        "./dot",
    ];
    for (i, name) in hostile.iter().enumerate() {
        w.object(1000 + i as u64, name, b"owned");
    }
    // a symbolic link planted in the inbox is not followed
    fs::create_dir_all(site.inbox()).unwrap();
    let outside = site.path("outside");
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, site.inbox().join("link")).unwrap();
    w.object(2000, "link/through.txt", b"owned");
    let ok = random_bytes(3000);
    w.object(3000, "fine/name.txt", &ok);
    site.wait_inbox(&[("fine/name.txt".into(), ok)], Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        site.inbox_files(),
        vec!["fine/name.txt"],
        "a hostile name was written"
    );
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "written through a symbolic link"
    );
    assert!(
        !site.path("escape.txt").exists()
            && !site.dir.path().parent().unwrap().join("up.txt").exists()
    );
    let log = r.log_text();
    assert!(
        log.matches("refused an object").count() >= hostile.len(),
        "{log}"
    );
    assert!(log.contains("link") && log.contains("refusing"), "{log}");
    assert!(r.alive());
}

/// Issue 14, point 1. An attacker on the low-side network floods announces carrying the right key ids
/// (they travel in clear) with random encapsulated keys, bodies and MACs, from one thread without a
/// pause, while the real sender rekeys (every 10 s) and the receiver is killed and restarted. Before, each
/// forgery took a token of the announce rate limit and the genuine announce was starved: the file sent
/// after a rekey never arrived while the flood lasted. What must hold now: every file arrives within a
/// few announce periods, the forgeries are counted as bad announces, and none was rate-limited.
#[test]
fn a_flood_of_forged_announces_across_a_rekey_and_a_restart_delays_no_file() {
    let site = Site::new(&[("rekey_secs", 10.into()), ("gso", "off".into())]);
    let mut r = site.start("recv");
    let _s = site.start("send");
    site.wait_session(Duration::from_secs(10));
    let key = site.sender_key();
    let template = Wire::new(&site, &key).session.announce().to_vec();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let port = site.port;
        std::thread::spawn(move || {
            use rand::RngCore;
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.connect(("127.0.0.1", port)).unwrap();
            let mut rng = rand::rng();
            let mut f = template;
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rng.fill_bytes(&mut f[20..52]);
                rng.fill_bytes(&mut f[diode_proto::session::ANNOUNCE_HEADER_LEN..]);
                if sock.send(&f).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let arrive = |name: &str| {
        let data = random_bytes(200_000);
        let t = std::time::Instant::now();
        site.drop_in(name, &data);
        if let Err(e) = site.wait_inbox(&[(name.to_string(), data)], Duration::from_secs(15)) {
            panic!(
                "{name} under the flood: {e}\nstatus: {}",
                site.status_json()
            );
        }
        eprintln!(
            "{name} arrived {:.1} s after it was dropped in",
            t.elapsed().as_secs_f64()
        );
    };
    arrive("before-rekey.bin");
    let old_pid = site.status_json()["pid"].as_u64().unwrap_or(0) as u32;
    let first = site.status_json()["sessions"][0]["counter"].as_u64();
    // the sender rekeys (every 10 s at the least): the receiver must join the new session in the flood
    wait_for(
        "a rekey joined under the flood",
        Duration::from_secs(20),
        || {
            let now = site.status_json()["sessions"][0]["counter"].as_u64();
            (now != first).then_some(())
        },
    );
    arrive("after-rekey.bin");
    r.kill9();
    let mut r = site.start("recv");
    // the restarted receiver joins the current session at its next announce, in the flood; a file sent
    // before it joined would be a gap for replay whatever the flood, so the file waits for the join
    let t = std::time::Instant::now();
    wait_for(
        "the restarted receiver to join under the flood",
        Duration::from_secs(10),
        || {
            let s = site.status_json();
            let joined = s["pid"].as_u64().is_some_and(|p| p != u64::from(old_pid))
                && s["sessions"].as_array().is_some_and(|x| !x.is_empty());
            joined.then_some(())
        },
    );
    eprintln!(
        "the restarted receiver joined {:.1} s after it started",
        t.elapsed().as_secs_f64()
    );
    let restarted =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| arrive("after-restart.bin")));
    if let Err(e) = restarted {
        eprintln!("receiver after restart: {}", r.log_text());
        std::panic::resume_unwind(e);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    wait_status();
    let d = drops(&site);
    eprintln!("forged announces sent: {sent}; receiver drops since its restart: {d}");
    assert!(
        d["bad_announce"].as_u64().unwrap_or(0) > 1000,
        "the flood did not reach the receiver: {d}"
    );
    assert_eq!(d["rate_limited"].as_u64().unwrap_or(0), 0, "{d}");
    assert!(r.alive());
}

/// A UDP relay between the real sender and the real receiver that withholds every frame of the first
/// object it sees (its id is in the clear header, bytes 20..28) until told to release them.
/// The object withheld, whether the relay still withholds, and the frames it holds.
type Held = (Option<u64>, bool, Vec<Vec<u8>>);

struct Withholding {
    held: std::sync::Arc<std::sync::Mutex<Held>>,
    addr: std::net::SocketAddr,
}

impl Withholding {
    fn start(to: u16) -> Withholding {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let held = std::sync::Arc::new(std::sync::Mutex::new((None, true, Vec::new())));
        let h = held.clone();
        std::thread::spawn(move || {
            let out = UdpSocket::bind("127.0.0.1:0").unwrap();
            out.connect(("127.0.0.1", to)).unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok(n) = sock.recv(&mut buf) else { return };
                let f = &buf[..n];
                let mut st = h.lock().unwrap();
                // sealed shard (2) or metadata (3) frames name their object in clear
                if n >= 28 && (f[3] == 2 || f[3] == 3) && st.1 {
                    let id = u64::from_le_bytes(f[20..28].try_into().unwrap());
                    if st.0.is_none() {
                        st.0 = Some(id);
                    }
                    if st.0 == Some(id) {
                        st.2.push(f.to_vec());
                        continue;
                    }
                }
                drop(st);
                let _ = out.send(f);
            }
        });
        Withholding { held, addr }
    }

    /// Stop withholding and send what was held, in its order.
    fn release(&self, to: u16) -> usize {
        let mut st = self.held.lock().unwrap();
        st.1 = false;
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        out.connect(("127.0.0.1", to)).unwrap();
        for f in &st.2 {
            out.send(f).unwrap();
            std::thread::sleep(Duration::from_micros(20));
        }
        st.2.len()
    }
}

/// Issue 14, point 2. Whoever sits on the link withholds every frame of version 3 of `app.bin`, lets
/// version 4 through, then releases version 3 in the same session. Before, version 3 replaced version
/// 4 in the inbox. What must hold: the inbox keeps version 4, the receiver logs the refusal with its
/// reason and lists it in status, and the old version's data is gone from state/partial/.
#[test]
fn an_older_version_withheld_and_released_late_never_replaces_the_newer_one() {
    let port = port();
    let relay = Withholding::start(port);
    let site = Site::new_with(
        // paced so the relay's one thread and socket buffer lose nothing
        &[
            ("target", relay.addr.to_string().into()),
            ("gso", "off".into()),
            ("rate", "20Mbit".into()),
        ],
        &[("listen", format!("127.0.0.1:{port}").into())],
    );
    let mut r = site.start("recv");
    let _s = site.start("send");
    let v3 = random_bytes(300_000);
    let v4 = random_bytes(250_000);
    site.drop_in("app.bin", &v3);
    // version 3 is sent (its passes and repeats), all of it withheld
    std::thread::sleep(Duration::from_secs(4));
    assert!(site.inbox_files().is_empty(), "version 3 was not withheld");
    site.drop_in("app.bin", &v4);
    if let Err(e) = site.wait_inbox(&[("app.bin".into(), v4.clone())], Duration::from_secs(15)) {
        panic!(
            "{e}\nreceiver: {}\nstatus: {}",
            r.log_text(),
            site.status_json()
        );
    }
    let held = relay.release(port);
    eprintln!("released {held} withheld frames of version 3");
    assert!(held > 200, "too few frames withheld: {held}");
    let refused = wait_for("the refusal in status", Duration::from_secs(15), || {
        site.status_json()["refused"]
            .as_array()?
            .iter()
            .find(|x| x["name"] == "app.bin")
            .cloned()
    });
    eprintln!("status: {refused}");
    assert_eq!(refused["reason"], "older_version");
    assert_eq!(
        fs::read(site.inbox().join("app.bin")).unwrap(),
        v4,
        "version 3 replaced version 4"
    );
    let log = r.log_text();
    assert!(
        log.contains("refused an object") && log.contains("older_version"),
        "{log}"
    );
    let partial: Vec<_> = fs::read_dir(site.recv_state().join("partial"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        partial.is_empty(),
        "the old version is still held: {partial:?}"
    );
    assert!(fs::read_to_string(site.recv_state().join("refused.jsonl"))
        .unwrap()
        .contains("older_version"));
    assert!(r.alive());
}

/// Issue 14, point 4. A compromised low side (with the sender key) sends metadata of 3,000 distinct
/// objects and one of 100 MiB, against max_partial_objects = 50 and max_partial_mb = 64. Before, every
/// one became a data and a state file, kept for 168 h. What must hold: at most 50 objects in
/// state/partial/, the rest counted by the bound's name, a log line that names each bound and its value
/// (a handful of lines, not one per object), and the receiver still running.
#[test]
fn partial_objects_are_bounded_by_count_and_bytes() {
    let site = Site::new_with(
        &[],
        &[
            ("max_partial_objects", 50.into()),
            ("max_partial_mb", 64.into()),
        ],
    );
    let mut r = site.start("recv");
    let key = site.sender_key();
    let mut w = Wire::new(&site, &key);
    w.announce();
    std::thread::sleep(Duration::from_millis(200));
    let meta = |id: u64, size: u64| ObjectMeta {
        id,
        name: format!("flood/{id}.bin"),
        size,
        hash: [7; 32],
        kind: ObjectKind::File,
        shard_size: 1408,
        data_shards: 128,
        parity_shards: 24,
        mtime: 0,
    };
    let big = w.sealed(FrameKind::Meta, 1, 0, 0, &meta(1, 100 << 20).encode());
    w.raw(&big);
    for id in 10..3010 {
        let f = w.sealed(FrameKind::Meta, id, 0, 0, &meta(id, 10_000).encode());
        w.raw(&f);
    }
    wait_status();
    wait_status();
    let s = site.status_json();
    eprintln!("limits {} drops {}", s["limits"], s["drops"]);
    assert_eq!(s["limits"]["objects"], 50, "{}", s["limits"]);
    let files = fs::read_dir(site.recv_state().join("partial"))
        .unwrap()
        .count();
    assert!(files <= 100, "{files} files in state/partial/");
    assert!(
        s["drops"]["max_partial_objects"].as_u64().unwrap_or(0) >= 2900,
        "{}",
        s["drops"]
    );
    assert_eq!(s["drops"]["max_partial_mb"], 1, "{}", s["drops"]);
    let log = r.log_text();
    assert!(
        log.contains("max_partial_objects = 50") && log.contains("max_partial_mb = 64"),
        "{log}"
    );
    assert!(log.matches("not starting an object").count() <= 4, "{log}");
    assert!(r.alive());
}

/// Issue 14, point 5. An envelope reaching a receiver with no [approvals] section used to log an ERROR
/// every second (and re-hash the object) for up to 168 h; so did an object whose path the inbox refuses
/// (a symbolic link). Now each is said once and held until the admin fixes it and restarts.
#[test]
fn an_envelope_with_no_approvals_configured_is_held_and_said_once() {
    let site = Site::new(&[]);
    let cfg = site.path("recv.toml");
    let mut t: toml::Table = toml::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    t.remove("approvals");
    fs::write(&cfg, toml::to_string(&t).unwrap()).unwrap();
    let r = site.start("recv");
    let key = site.sender_key();
    let mut w = Wire::new(&site, &key);
    w.announce();
    std::thread::sleep(Duration::from_millis(100));
    w.object_of(
        ObjectKind::Envelope,
        5,
        "approval.envelope",
        br#"{"not":"checked here"}"#,
    );
    // a symbolic link in the inbox where a file would go
    fs::create_dir_all(site.inbox()).unwrap();
    std::os::unix::fs::symlink("/tmp", site.inbox().join("linked")).unwrap();
    w.object(6, "linked/file.txt", b"data");
    std::thread::sleep(Duration::from_millis(4500));
    let log = r.log_text();
    let said = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(said("no [approvals] section"), 1, "{log}");
    assert_eq!(said("refusing to write"), 1, "{log}");
    let s = site.status_json();
    let errors: Vec<String> = s["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["error"].as_str().unwrap_or("").to_string())
        .collect();
    eprintln!("status errors: {errors:?}");
    assert_eq!(
        errors.iter().filter(|e| e.contains("held")).count(),
        2,
        "{s}"
    );
}

/// Issue 14, point 6: names with Unicode format characters (a right-to-left override makes
/// `invoice<U+202E>fdp.exe` list as `invoiceexe.pdf`) are refused like any unsafe name.
#[test]
fn names_with_bidi_and_invisible_format_characters_are_refused() {
    let site = Site::new(&[]);
    let r = site.start("recv");
    let key = site.sender_key();
    let mut w = Wire::new(&site, &key);
    w.announce();
    std::thread::sleep(Duration::from_millis(100));
    for (i, name) in [
        "invoice\u{202E}fdp.exe",
        "a\u{2066}b\u{2069}.txt",
        "zero\u{200B}width.txt",
    ]
    .iter()
    .enumerate()
    {
        w.object(100 + i as u64, name, b"owned");
    }
    let ok = random_bytes(1000);
    w.object(200, "Übersicht/日本語.txt", &ok);
    site.wait_inbox(
        &[("Übersicht/日本語.txt".into(), ok)],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(site.inbox_files(), vec!["Übersicht/日本語.txt"]);
    assert!(
        r.log_text()
            .matches("invisible Unicode format character")
            .count()
            >= 3
    );
}

/// Issue 14, point 8. An oversize `*.envelope` in a sender's outbox used to be refused at every start,
/// forever, from `state/objects/`. Now it is set aside once in `state/refused/` with its reason, and a
/// restarted sender does not take it again; the next file still goes through.
#[test]
fn an_unsendable_object_is_set_aside_once_and_not_retried_at_every_start() {
    let site = Site::new(&[]);
    let _r = site.start("recv");
    let mut s = site.start("send");
    let big = format!("{{\"padding\":\"{}\"}}", "x".repeat(80_000));
    site.drop_in("huge.envelope", big.as_bytes());
    let aside = wait_for("the envelope set aside", Duration::from_secs(20), || {
        fs::read_dir(site.path("state/refused"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("huge.envelope"))
    });
    assert_eq!(fs::read(&aside).unwrap(), big.as_bytes());
    let log = s.log_text();
    assert!(
        log.contains("set aside") && log.contains("may have at most"),
        "{log}"
    );
    let in_objects = fs::read_dir(site.path("state/objects"))
        .unwrap()
        .flatten()
        .filter(|e| fs::metadata(e.path()).is_ok_and(|m| m.len() == big.len() as u64))
        .count();
    assert_eq!(in_objects, 0, "the envelope is still in the sent area");
    s.kill9();
    let s = site.start("send");
    let ok = random_bytes(5000);
    site.drop_in("next.bin", &ok);
    site.wait_inbox(&[("next.bin".into(), ok)], Duration::from_secs(15))
        .unwrap();
    let log = s.log_text();
    assert!(
        !log.contains("huge.envelope"),
        "taken again after a restart: {log}"
    );
}

/// Shards that arrive before their object's metadata are held (2048 frames at most) until it comes.
/// Those of objects whose metadata never came used to stay until a restart, and once the buffer was full
/// every early shard was dropped. A compromised low side sends 2,100 shards of 20 objects that never get
/// metadata; after `pending_secs` they are let go, and an object whose metadata comes after its shards
/// still arrives.
#[test]
fn early_shards_whose_metadata_never_comes_are_let_go() {
    let site = Site::new_with(&[], &[("pending_secs", 2.into())]);
    let _r = site.start("recv");
    let mut w = Wire::new(&site, &site.sender_key());
    w.announce();
    std::thread::sleep(Duration::from_millis(100));
    for id in 0..20u64 {
        for i in 0..105u16 {
            let f = w.sealed(FrameKind::Shard, 9000 + id, 0, i, &[id as u8; 1408]);
            w.raw(&f);
        }
    }
    std::thread::sleep(Duration::from_secs(4));
    let data = random_bytes(50_000);
    let (meta, shards) = w.frames_of(ObjectKind::File, 500, "late-meta.bin", &data);
    for f in &shards {
        w.raw(f);
    }
    w.raw(&meta);
    if let Err(e) = site.wait_inbox(&[("late-meta.bin".into(), data)], Duration::from_secs(10)) {
        panic!("{e}\nstatus: {}", site.status_json());
    }
    assert!(drops(&site)["shard_before_meta"].as_u64().unwrap_or(0) >= 2048);
}
