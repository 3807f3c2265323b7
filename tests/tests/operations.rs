//! What an operator relies on, through the real binaries over 127.0.0.1:
//! - key rotation without downtime: the receiver trusts the old and the new sender key at once, the sender
//!   moves to its new key with no receiver restart and nothing is lost; once the old key is removed, its
//!   frames are dropped as `unknown_sender`; two trusted adapter keys both sign accepted approvals;
//! - metrics for node_exporter's textfile collector on the high side;
//! - a receiver that falls behind says so: the kernel's drops at its socket in status, log and metrics.

use diode_proto::envelope::{SignerRole, SigningKey};
use diode_tests::envelopes::{digest, good};
use diode_tests::{random_bytes, run_ok, wait_for, Site};
use std::fs;
use std::process::Command;
use std::time::Duration;

fn edit(path: &std::path::Path, f: impl FnOnce(&mut toml::Table)) {
    let mut t: toml::Table = toml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    f(&mut t);
    fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

#[test]
fn keys_rotate_without_downtime_and_the_old_key_is_refused_once_removed() {
    let site = Site::new(&[]);
    let new_keys = site.path("keys-new");
    run_ok(
        Command::new(diode_tests::bin("diode-send"))
            .args(["keygen", "--dir"])
            .arg(&new_keys),
    );
    run_ok(
        Command::new(diode_tests::bin("diode-chat"))
            .args(["keygen", "--dir"])
            .arg(&new_keys),
    );
    // step 1 of a rotation: the high side trusts both keys
    edit(&site.path("recv.toml"), |t| {
        t.insert(
            "senders".into(),
            vec!["keys/sender.pub", "keys-new/sender.pub"].into(),
        );
        t["approvals"]["adapters"] = vec!["keys/adapter.pub", "keys-new/adapter.pub"].into();
    });
    let _r = site.start("recv");
    let mut s = site.start("send");
    let before = vec![("before-rotation.bin".to_string(), random_bytes(300_000))];
    site.drop_in(&before[0].0, &before[0].1);
    site.wait_inbox(&before, Duration::from_secs(20)).unwrap();

    // step 2: the low side moves to its new key (a sender restart; the receiver keeps running)
    s.kill9();
    edit(&site.path("send.toml"), |t| {
        t.insert("key".into(), "keys-new/sender.key".into());
    });
    let _s = site.start("send");
    let after = vec![("after-rotation.bin".to_string(), random_bytes(300_000))];
    site.drop_in(&after[0].0, &after[0].1);
    site.wait_inbox(&after, Duration::from_secs(30)).unwrap();
    // and both adapter keys sign approvals the receiver accepts
    for (i, dir) in ["keys", "keys-new"].iter().enumerate() {
        let text = fs::read_to_string(site.path(&format!("{dir}/adapter.key"))).unwrap();
        let key = SigningKey::from_text(&text, SignerRole::Adapter).unwrap();
        let e = good(&digest(0x90 + i as u8));
        let id = e.id.clone();
        site.drop_in(&format!("{id}.envelope"), e.sign(&key).to_json().as_bytes());
        let p = site.path(&format!("approvals/{id}.json"));
        wait_for(
            "an approval under each adapter key",
            Duration::from_secs(20),
            || p.exists().then_some(()),
        );
    }
    println!("rotated: files before and after arrived with no receiver restart; approvals under both adapter keys accepted");

    // step 3: the old keys are removed; a sender still using the old key gets nowhere
    drop(_s);
    drop(_r);
    edit(&site.path("recv.toml"), |t| {
        t.insert("senders".into(), vec!["keys-new/sender.pub"].into());
    });
    edit(&site.path("send.toml"), |t| {
        t.insert("key".into(), "keys/sender.key".into());
    });
    let _r = site.start("recv");
    let _s = site.start("send");
    site.drop_in("from-the-old-key.bin", b"must not arrive");
    let drops = wait_for(
        "the old key's frames dropped as unknown_sender",
        Duration::from_secs(20),
        || {
            let d = site.status_json()["drops"]["unknown_sender"].as_u64()?;
            (d > 0).then_some(d)
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!site.inbox().join("from-the-old-key.bin").exists());
    println!("old key removed: {drops} frames dropped as unknown_sender, nothing published");
}

#[test]
fn the_receiver_writes_metrics_for_node_exporter() {
    let site = Site::new(&[]);
    edit(&site.path("recv.toml"), |t| {
        t.insert("metrics_file".into(), "metrics/diode_recv.prom".into());
    });
    fs::create_dir_all(site.path("metrics")).unwrap();
    let _r = site.start("recv");
    let _s = site.start("send");
    let want = vec![("counted.bin".to_string(), random_bytes(123_456))];
    site.drop_in(&want[0].0, &want[0].1);
    site.wait_inbox(&want, Duration::from_secs(20)).unwrap();
    let text = wait_for(
        "the metrics after the file",
        Duration::from_secs(10),
        || {
            let t = fs::read_to_string(site.path("metrics/diode_recv.prom")).ok()?;
            t.contains("diode_recv_received_files_total 1\n")
                .then_some(t)
        },
    );
    for line in [
        "# TYPE diode_recv_received_files_total counter",
        "diode_recv_received_bytes_total 123456\n",
        "# TYPE diode_recv_link_up gauge",
        "diode_recv_objects{state=\"incomplete\"} 0\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let up = text
        .lines()
        .find(|l| l.starts_with("diode_recv_link_up{sender=\""))
        .expect("a link_up row per sender");
    assert!(up.ends_with(" 1"), "{up}");
    // every sample line is `name{labels} value` with a number, as the textfile collector requires
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "not a sample: {l}");
    }
    println!("{up}");
}

#[test]
fn a_receiver_that_falls_behind_says_so_in_status_log_and_metrics() {
    // a small socket buffer, and the receiver stopped (SIGSTOP) while 20,000 datagrams arrive: the
    // kernel must drop most of them, as it does when a real receiver cannot keep up with the link
    let site = Site::new(&[]);
    edit(&site.path("recv.toml"), |t| {
        t.insert("rcvbuf_mb".into(), 1.into());
        t.insert("metrics_file".into(), "metrics/diode_recv.prom".into());
    });
    fs::create_dir_all(site.path("metrics")).unwrap();
    let r = site.start("recv");
    wait_for("the first status", Duration::from_secs(10), || {
        (site.status_json()["updated"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let before = site.status_json();
    assert_eq!(before["kernel"]["total"], 0, "{before}");
    let pid = r.child.id().to_string();
    run_ok(Command::new("kill").args(["-STOP", &pid]));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk = vec![0x5au8; 1400];
    let mut sent = 0;
    for _ in 0..20_000 {
        if sock.send_to(&junk, ("127.0.0.1", site.port)).is_ok() {
            sent += 1;
        }
    }
    run_ok(Command::new("kill").args(["-CONT", &pid]));
    let status = wait_for("the drops in status", Duration::from_secs(15), || {
        let s = site.status_json();
        (s["kernel"]["total"].as_u64().unwrap_or(0) > 0).then_some(s)
    });
    let total = status["kernel"]["total"].as_u64().unwrap();
    assert!(total <= sent, "{total} dropped of {sent} sent");
    assert!(status["kernel"]["last_minute"].as_u64().unwrap() > 0);
    let text = run_ok(site.recv_cmd().arg("status"));
    assert!(
        text.contains("WARNING: receiver overloaded:") && text.contains("rcvbuf_mb"),
        "{text}"
    );
    let metrics = wait_for("the metrics", Duration::from_secs(5), || {
        let t = fs::read_to_string(site.path("metrics/diode_recv.prom")).ok()?;
        t.contains("diode_recv_overloaded 1\n").then_some(t)
    });
    assert!(
        metrics.contains(&format!("diode_recv_kernel_dropped_total {total}\n")),
        "{metrics}"
    );
    assert!(
        r.log_text().contains("receiver overloaded"),
        "{}",
        r.log_text()
    );
    println!(
        "{sent} datagrams sent while the receiver was stopped: {total} dropped by the kernel; status says: {}",
        text.lines().find(|l| l.contains("overloaded")).unwrap_or("")
    );
}
