//! One-way enforced by the kernel: the sandboxed receiver is refused (EPERM) when it tries to send, from
//! a new socket or on its link socket, and (EACCES) when it writes outside its folders; the sender is
//! refused when it tries to receive on its link. Each probe is the daemon's test-only
//! `DIODE_TEST_SANDBOX_PROBE`, run right after the sandbox is installed; the same probes with
//! `sandbox = false` succeed, so the refusals are the sandbox's doing.

use diode_tests::*;
use std::fs;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

/// A loopback socket that counts what reaches it.
fn listener() -> (UdpSocket, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let a = s.local_addr().unwrap().to_string();
    (s, a)
}

fn got_datagram(s: &UdpSocket) -> bool {
    let mut b = [0u8; 64];
    s.recv_from(&mut b).is_ok()
}

/// The probe lines of a daemon's log, once `n` are there.
fn probe_lines(d: &Daemon, n: usize) -> Vec<String> {
    wait_for("the sandbox probes", Duration::from_secs(10), || {
        let lines: Vec<String> = d
            .log_text()
            .lines()
            .filter(|l| l.contains("sandbox probe"))
            .map(str::to_string)
            .collect();
        (lines.len() >= n).then_some(lines)
    })
}

fn set_key(site: &Site, file: &str, key: &str, v: toml::Value) {
    let path = site.path(file);
    let mut cfg: toml::Table = toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    cfg.insert(key.into(), v);
    fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
}

/// Start the receiver with both probes (a send to a loopback listener, a file beside the site's folders)
/// and return it, the listener, the file and the probe lines (printed).
fn probe_receiver(site: &Site) -> (Daemon, UdpSocket, PathBuf, Vec<String>) {
    let (ear, addr) = listener();
    let outside = site.path("outside.txt");
    let probe = format!("send={addr},write={}", outside.display());
    let r = site.start_env("recv", &[("DIODE_TEST_SANDBOX_PROBE", &probe)]);
    let lines = probe_lines(&r, 3);
    for l in &lines {
        println!("{l}");
    }
    (r, ear, outside, lines)
}

#[test]
fn the_sandboxed_receiver_cannot_send_nor_write_outside_its_folders_and_still_receives() {
    let site = Site::new(&[]);
    let (r, ear, outside, lines) = probe_receiver(&site);
    let log = r.log_text();
    for l in log.lines().filter(|l| l.contains("sandbox:")) {
        println!("{l}");
    }
    assert!(
        log.contains("seccomp filter on every thread"),
        "no seccomp: {log}"
    );
    let sends: Vec<_> = lines.iter().filter(|l| l.contains("send ")).collect();
    assert_eq!(sends.len(), 2, "{lines:?}");
    for l in sends {
        assert!(
            l.contains("refused: Operation not permitted (os error 1)"),
            "a send was not refused by the kernel: {l}"
        );
    }
    assert!(
        !got_datagram(&ear),
        "a datagram left the sandboxed receiver"
    );
    let write = lines.iter().find(|l| l.contains("write outside")).unwrap();
    if log.contains("landlock not") || log.contains("NOT enforced") {
        eprintln!("this kernel has no Landlock; the write check is skipped: {write}");
    } else {
        assert!(
            write.contains("refused: Permission denied (os error 13)"),
            "a write outside the allowed folders was not refused: {write}"
        );
        assert!(!outside.exists());
    }
    // and the sandbox does not get in the way of reception
    let _s = site.start("send");
    let want = vec![("a/b.bin".to_string(), random_bytes(300_000))];
    site.drop_in(&want[0].0, &want[0].1);
    site.wait_inbox(&want, Duration::from_secs(30)).unwrap();
}

#[test]
fn without_the_sandbox_the_same_probes_succeed() {
    let site = Site::new(&[]);
    set_key(&site, "recv.toml", "sandbox", false.into());
    let (_r, ear, outside, lines) = probe_receiver(&site);
    for l in &lines {
        assert!(l.contains("ALLOWED"), "{l}");
    }
    assert!(
        got_datagram(&ear),
        "the control probe's datagram never came"
    );
    assert!(outside.exists());
}

#[test]
fn the_sender_cannot_receive_on_its_link() {
    let site = Site::new(&[]);
    let s = site.start_env("send", &[("DIODE_TEST_SANDBOX_PROBE", "recv")]);
    let l = &probe_lines(&s, 1)[0];
    println!("{l}");
    assert!(
        l.contains("refused: Operation not permitted (os error 1)"),
        "the sender could receive on its link: {l}"
    );
    drop(s);
    // control: unsandboxed, the same receive only finds nothing waiting
    set_key(&site, "send.toml", "sandbox", false.into());
    let s = site.start_env("send", &[("DIODE_TEST_SANDBOX_PROBE", "recv")]);
    let l = &probe_lines(&s, 1)[0];
    println!("{l}");
    assert!(l.contains("os error 11"), "{l}");
}
