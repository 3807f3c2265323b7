//! The receiver on a small real filesystem (an ext4 image mounted on a loop device, with no blocks
//! reserved for root, so "full" means full): what one metadata frame from a compromised low side can
//! make it reserve, what is left of a failed start, and what `status` says when the state filesystem is
//! full. Needs root (CI runs as root) for mount; `DIODE_SKIP_NETNS=1` skips these loudly, as it does
//! the emulated-diode tests.

use diode_proto::object::{ObjectKind, ObjectMeta};
use diode_proto::{FrameKind, PublicKey, Role, SenderSession};
use diode_tests::mount::Mount;
use diode_tests::*;
use std::fs;
use std::net::UdpSocket;
use std::time::Duration;

/// Say loudly that a disk test did not run, as the emulated-diode tests do.
fn skipped() -> bool {
    if std::env::var("DIODE_SKIP_NETNS").as_deref() == Ok("1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED disk test: DIODE_SKIP_NETNS=1, it did NOT run ***"
        );
        return true;
    }
    false
}

fn site_on_disk(mib: u64) -> Option<(Site, Mount)> {
    if skipped() {
        return None;
    }
    let site = Site::new_with(
        &[],
        &[
            ("inbox", "high/inbox".into()),
            ("state", "high/state".into()),
        ],
    );
    let disk = Mount::ext4(&site.path("disk.img"), &site.path("high"), mib);
    Some((site, disk))
}

/// Frames as a compromised low side makes them, with the real sender key.
fn session(site: &Site) -> (UdpSocket, SenderSession) {
    let key = site.sender_key();
    let rpub = PublicKey::from_text(
        &fs::read_to_string(site.path("keys/receiver.pub")).unwrap(),
        Role::Receiver,
    )
    .unwrap();
    let counter = diode_tests::envelopes::now() * 1_000_000;
    let s = SenderSession::start(&key, &rpub, counter, 0, &mut rand::rng()).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", site.port)).unwrap();
    sock.send(s.announce()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    (sock, s)
}

fn meta_frame(s: &mut SenderSession, id: u64, name: &str, size: u64) -> Vec<u8> {
    let m = ObjectMeta {
        id,
        name: name.into(),
        size,
        hash: [9; 32],
        kind: ObjectKind::File,
        shard_size: 1408,
        data_shards: 128,
        parity_shards: 24,
        mtime: 0,
    }
    .encode();
    s.seal_payload(FrameKind::Meta, id, 0, 0, &m).unwrap()
}

/// Issue 14, point 3. One metadata frame declaring 1 GiB, on a 256 MiB ext4 state disk: before, the
/// receiver `fallocate`d it, ext4 kept what the failed call allocated, and the disk stayed at 0 bytes
/// free across restarts. Now the reservation is only made where it fits, so the disk keeps its space;
/// and a data file left without its state (as the old code left it) is swept at the next start.
#[test]
fn one_metadata_frame_cannot_fill_the_disk_and_orphaned_partial_data_is_swept() {
    let Some((site, disk)) = site_on_disk(256) else {
        return;
    };
    let before = disk.free();
    let mut r = site.start("recv");
    let (sock, mut s) = session(&site);
    sock.send(&meta_frame(&mut s, 7, "huge.bin", 1 << 30))
        .unwrap();
    let o = wait_for("huge.bin started", Duration::from_secs(10), || {
        site.status_json()["objects"]
            .as_array()?
            .iter()
            .find(|o| o["name"] == "huge.bin")
            .cloned()
    });
    let after = disk.free();
    eprintln!("free {before} before, {after} after one frame declaring 1 GiB: {o}");
    assert!(
        after + (16 << 20) > before,
        "one frame took {} bytes of the disk",
        before - after
    );
    // the old code's leftover: a data file whose state never reached the disk, and a torn state write
    r.kill9();
    let partial = site.path("high/state/partial");
    let orphan = partial.join("0123456789abcdef-00000000000000aa.data");
    fs::write(&orphan, vec![1u8; 100 << 20]).unwrap();
    let torn = partial.join(".x.state.tmp4242");
    fs::write(&torn, b"half").unwrap();
    let full = disk.free();
    let r = site.start("recv");
    wait_for("the orphans swept", Duration::from_secs(10), || {
        (!orphan.exists() && !torn.exists()).then_some(())
    });
    assert!(
        r.log_text().contains("belonged to no object"),
        "{}",
        r.log_text()
    );
    assert!(
        disk.free() > full + (90 << 20),
        "the orphan's space did not come back"
    );
    // the receiver still takes a genuine file
    let (sock, mut s) = session(&site);
    let data = random_bytes(3000);
    let m = ObjectMeta {
        id: 8,
        name: "after.bin".into(),
        size: data.len() as u64,
        hash: *blake3::hash(&data).as_bytes(),
        kind: ObjectKind::File,
        shard_size: 1408,
        data_shards: 128,
        parity_shards: 24,
        mtime: 0,
    };
    let g = m.geometry().unwrap();
    let k = g.data_in(m.size, 0);
    let enc = m.encode();
    let f = s.seal_payload(FrameKind::Meta, 8, 0, 0, &enc).unwrap();
    sock.send(&f).unwrap();
    let mut padded = data.clone();
    padded.resize(k * 1408, 0);
    for i in 0..k {
        let shard = &padded[i * 1408..(i + 1) * 1408];
        let f = s
            .seal_payload(FrameKind::Shard, 8, 0, i as u16, shard)
            .unwrap();
        sock.send(&f).unwrap();
    }
    site.wait_inbox(&[("after.bin".into(), data)], Duration::from_secs(10))
        .unwrap();
}

/// Issue 14, point 7. With the state filesystem full the receiver cannot save its status; `status` used
/// to show the stale figures and ask "is it running?". Now it says the receiver runs, that the state
/// filesystem is full, and how old the figures are.
#[test]
fn status_on_a_full_state_disk_says_the_receiver_runs_and_the_disk_is_full() {
    let Some((site, disk)) = site_on_disk(32) else {
        return;
    };
    let _r = site.start("recv");
    wait_for("a first status", Duration::from_secs(10), || {
        site.status_json()["pid"].as_u64()
    });
    // fill it to the last block
    let mut filler = fs::File::create(site.path("high/filler")).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    let mut small = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &small).is_ok() {
        small.truncate(512);
    }
    drop(filler);
    eprintln!("free after filling: {}", disk.free());
    std::thread::sleep(Duration::from_secs(8));
    let out = site.recv_cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("is running but cannot save its status"),
        "{text}"
    );
    assert!(text.contains("is full"), "{text}");
    assert!(!text.contains("is it running?"), "{text}");
}
