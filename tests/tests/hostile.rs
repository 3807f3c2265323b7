//! Bad input on the wire, against the real receiver: garbage, truncated and altered frames, announces from
//! unknown keys, and a compromised low side (holding the real sender key) sending hostile names. What must
//! survive: nothing is written outside the inbox or for a refused name, every drop is counted by reason,
//! and the receiver keeps receiving good files afterwards.

use diode_proto::frame::{SEALED_HEADER_LEN, TAG_LEN};
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
        let mut f = vec![0u8; SEALED_HEADER_LEN + payload.len() + TAG_LEN];
        f[SEALED_HEADER_LEN..SEALED_HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.session
            .seal(kind, object, block, shard, &mut f)
            .unwrap();
        f
    }

    /// Send a whole object of one block under `name` (no name checks: that is the point).
    fn object(&mut self, id: u64, name: &str, data: &[u8]) {
        let s = 1408;
        let meta = ObjectMeta {
            id,
            name: name.to_string(),
            size: data.len() as u64,
            hash: *blake3::hash(data).as_bytes(),
            kind: ObjectKind::File,
            shard_size: s as u32,
            data_shards: 128,
            parity_shards: 24,
            mtime: 0,
        };
        let m = meta.encode();
        let f = self.sealed(FrameKind::Meta, id, 0, 0, &m);
        self.raw(&f);
        let g = meta.geometry().unwrap();
        let k = g.data_in(meta.size, 0);
        let mut padded = data.to_vec();
        padded.resize(k * s, 0);
        let mut parity = Vec::new();
        BlockEncoder::new()
            .encode(&padded, s, g.parity_for(k), &mut parity)
            .unwrap();
        for (_, i) in interleave(&[k + g.parity_for(k)]) {
            let p = if i < k {
                &padded[i * s..(i + 1) * s]
            } else {
                &parity[(i - k) * s..(i - k + 1) * s]
            };
            let f = self.sealed(FrameKind::Shard, id, 0, i as u16, p);
            self.raw(&f);
        }
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
    let site = Site::new(&[]);
    let _r = site.start("recv");
    let sender_key = SecretKey::from_text(
        &fs::read_to_string(site.path("keys/sender.key")).unwrap(),
        Role::Sender,
    )
    .unwrap();
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
    let key = SecretKey::from_text(
        &fs::read_to_string(site.path("keys/sender.key")).unwrap(),
        Role::Sender,
    )
    .unwrap();
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
