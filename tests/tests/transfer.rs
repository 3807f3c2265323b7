//! The real daemons over 127.0.0.1: sizes from 0 bytes to 20 MiB, a nested tree, a late receiver,
//! a restarted receiver, the one-shot `diode-send file`, and key handling.

use diode_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn small_large_and_empty_files_arrive_byte_exact() {
    let site = Site::new(&[]);
    let _r = site.start("recv");
    let _s = site.start("send");
    let want = vec![
        ("empty.bin".to_string(), Vec::new()),
        ("one.bin".to_string(), vec![b'x']),
        ("big.bin".to_string(), random_bytes(20 << 20)),
    ];
    for (n, b) in &want {
        site.drop_in(n, b);
    }
    site.wait_inbox(&want, Duration::from_secs(60)).unwrap();
    assert_eq!(
        site.inbox_files(),
        vec!["big.bin", "empty.bin", "one.bin"],
        "stray or partial files in the inbox"
    );
    // the sender keeps what it sent for replay, and the journal names it
    let journal = run_ok(site.send_cmd().arg("journal"));
    assert!(
        journal.contains("big.bin") && journal.contains("kept"),
        "{journal}"
    );
    assert!(
        fs::read_dir(site.outbox()).unwrap().next().is_none(),
        "outbox not emptied"
    );
}

#[test]
fn a_tree_of_500_files_keeps_its_folders() {
    let site = Site::new(&[]);
    let _r = site.start("recv");
    let _s = site.start("send");
    let stage = site.path("tree");
    let mut want = Vec::new();
    for i in 0..500usize {
        let rel = format!("tree/d{}/e{}/f{i}.dat", i % 7, i % 3);
        let bytes = random_bytes(i * 37);
        let p = site.path(&rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &bytes).unwrap();
        want.push((rel, bytes));
    }
    fs::rename(&stage, site.outbox().join("tree")).unwrap(); // a whole folder moved in at once
    site.wait_inbox(&want, Duration::from_secs(60)).unwrap();
    assert_eq!(site.inbox_files().len(), 500);
}

#[test]
fn a_receiver_started_late_or_restarted_joins_the_running_sender() {
    let site = Site::new(&[]);
    let _s = site.start("send");
    std::thread::sleep(Duration::from_secs(3));
    let mut r = site.start("recv");
    std::thread::sleep(Duration::from_millis(1500)); // one announce interval and a bit
    let a = vec![("late.bin".to_string(), random_bytes(3_000_000))];
    site.drop_in(&a[0].0, &a[0].1);
    site.wait_inbox(&a, Duration::from_secs(30)).unwrap();
    assert!(r.log_text().contains("new session"));
    // restart the receiver: it joins the same session again from the repeated announce
    r.kill9();
    let _r2 = site.start("recv");
    std::thread::sleep(Duration::from_millis(1500));
    let b = vec![("after-restart.bin".to_string(), random_bytes(1_000_000))];
    site.drop_in(&b[0].0, &b[0].1);
    site.wait_inbox(&b, Duration::from_secs(30)).unwrap();
}

#[test]
fn one_shot_file_command_sends_a_folder_and_exits() {
    let site = Site::new(&[]);
    let _r = site.start("recv");
    let src = site.path("src/reports");
    fs::create_dir_all(src.join("q3")).unwrap();
    let a = random_bytes(2_000_000);
    let b = random_bytes(10);
    fs::write(src.join("q3/a.pdf"), &a).unwrap();
    fs::write(src.join("b.txt"), &b).unwrap();
    let out = run_ok(site.send_cmd().arg("file").arg(&src));
    assert!(out.contains("sent 2 file(s)"), "{out}");
    site.wait_inbox(
        &[("reports/q3/a.pdf".into(), a), ("reports/b.txt".into(), b)],
        Duration::from_secs(20),
    )
    .unwrap();
    // the originals are not moved: `file` never takes ownership of what it was pointed at
    assert!(src.join("b.txt").exists());
}

#[test]
fn keys_are_private_and_misuse_is_explained() {
    let site = Site::new(&[]);
    let k = site.path("keys");
    for f in ["sender.key", "receiver.key"] {
        assert_eq!(
            fs::metadata(k.join(f)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
    }
    for f in ["sender.pub", "receiver.pub"] {
        let t = fs::read_to_string(k.join(f)).unwrap();
        assert_eq!(t.lines().count(), 1);
        assert!(
            t.trim_end()
                .chars()
                .all(|c| c.is_ascii_graphic() || c == ' '),
            "{t}"
        );
    }
    // keygen never overwrites a secret key
    let out = site
        .send_cmd()
        .args(["keygen", "--dir"])
        .arg(&k)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // a key readable by others is refused with the fix in the message
    fs::set_permissions(k.join("receiver.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = site.recv_cmd().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    // a sender key where the receiver's public key belongs is named as such
    fs::copy(k.join("sender.pub"), k.join("receiver.pub")).unwrap();
    let out = site
        .send_cmd()
        .args(["file", "/etc/hostname"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sender key"), "{err}");
}

/// The sender reads a large file through a map of the page cache under a read lease. Tried: truncating
/// that file (in the sender's sent area) while it is being sent. Must survive: the sender (no SIGBUS: the
/// truncation waits until the sender has given the lease up, well under the kernel's 45 s), a clear error
/// naming the file, nothing partial in the inbox, and the next file arriving whole.
#[test]
fn a_large_file_truncated_while_it_is_sent_is_an_error_not_a_crash() {
    let site = Site::new(&[("rate", "150Mbit".into())]);
    let _r = site.start("recv");
    let mut s = site.start("send");
    let big = random_bytes(48 << 20); // about 3 s at 150 Mbit/s
    site.drop_in("big.bin", &big);
    // the sender claims it into its sent area (state/objects/<id>) and starts sending
    let claimed = wait_for("the big file claimed", Duration::from_secs(20), || {
        let objects = site.path("send-state/objects");
        let objects = if objects.exists() {
            objects
        } else {
            find_dir(site.dir.path(), "objects")?
        };
        fs::read_dir(objects)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| fs::metadata(p).map(|m| m.len()).ok() == Some(big.len() as u64))
    });
    std::thread::sleep(Duration::from_millis(800)); // mid-file
    let t = std::time::Instant::now();
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&claimed)
        .expect("truncate the file being sent");
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the truncation waited {waited:?}: the sender did not give its lease up"
    );
    eprintln!("truncation waited {waited:?} for the sender's lease");
    let log = wait_for("the sender's error", Duration::from_secs(20), || {
        let l = s.log_text();
        l.contains("send failed").then_some(l)
    });
    assert!(log.contains("changed or shrank"), "{log}");
    assert!(s.alive(), "the sender died: {log}");
    let after = vec![("after.bin".to_string(), random_bytes(300_000))];
    site.drop_in("after.bin", &after[0].1);
    site.wait_inbox(&after, Duration::from_secs(30)).unwrap();
    assert_eq!(
        site.inbox_files(),
        vec!["after.bin"],
        "a partial big.bin reached the inbox"
    );
    assert!(s.alive());
}

fn find_dir(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(f) = find_dir(&p, name) {
                return Some(f);
            }
        }
    }
    None
}
