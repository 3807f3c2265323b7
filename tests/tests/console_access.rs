//! Where a console may listen, the same for all three (`diode-recv console`, `diode-send console`,
//! `diode-chat console`): beyond loopback only with TLS and sign-in, refused at start otherwise with what
//! to configure. With a self-signed certificate (made here with rcgen) and a users file written by
//! `console passwd`, a console listening on every address answers an HTTPS client that trusts that
//! certificate with 401 and a Basic challenge without credentials or with a wrong password, and with the
//! page (and HSTS) with the right one. A users file that others can read is refused like a key file.

use diode_tests::chat::adapter_config;
use diode_tests::console;
use diode_tests::{bin, wait_for, Site};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery staple";

/// The three consoles' commands, each with its config.
fn consoles(site: &Site) -> Vec<(&'static str, Command)> {
    let cfg = adapter_config(site.dir.path(), &site.outbox(), "http://127.0.0.1:9");
    fs::write(site.path("adapter.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let mut chat = Command::new(bin("diode-chat"));
    chat.arg("--config").arg(site.path("adapter.toml"));
    vec![
        ("diode-recv", site.recv_cmd()),
        ("diode-send", site.send_cmd()),
        ("diode-chat", chat),
    ]
}

#[test]
fn a_console_refuses_to_listen_beyond_loopback_without_tls_and_sign_in() {
    let site = Site::new(&[]);
    for (name, mut c) in consoles(&site) {
        for addr in ["0.0.0.0:8440", "[::]:0", "192.0.2.10:8440"] {
            let out = Command::new(c.get_program())
                .args(c.get_args())
                .args(["console", "--listen", addr])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} {addr}: {err}");
            assert!(
                err.contains(&format!("refusing to listen on {addr}"))
                    && err.contains("needs TLS and authentication")
                    && err.contains("--tls-cert")
                    && err.contains(&format!("{name} console passwd")),
                "{name} {addr}: {err}"
            );
        }
        // sign-in alone (passwords in clear) is refused too, even on loopback
        let out = c
            .args(["console", "--listen", "127.0.0.1:0", "--users"])
            .arg(site.path("nobody"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("go together"), "{name}: {err}");
    }
}

#[test]
fn beyond_loopback_a_console_serves_https_to_people_who_sign_in() {
    let site = Site::new(&[]);
    // a self-signed certificate for localhost, and its key (mode 0600, as key files must be)
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    fs::write(site.path("console.crt"), &cert_pem).unwrap();
    fs::write(site.path("console.key"), ck.signing_key.serialize_pem()).unwrap();
    fs::set_permissions(site.path("console.key"), fs::Permissions::from_mode(0o600)).unwrap();
    // the users file, by `console passwd` with the password on standard input
    let users = site.path("console.users");
    let mut p = site
        .send_cmd()
        .args(["console", "passwd", "--users"])
        .arg(&users)
        .args(["--user", "ada"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(p.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = fs::read_to_string(&users).unwrap();
    assert!(
        text.starts_with("ada:$argon2id$") && !text.contains(PASSWORD),
        "{text}"
    );

    let client = |at: std::net::SocketAddr| {
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
            .resolve("localhost", at)
            .build()
            .unwrap()
    };
    for (name, mut c) in consoles(&site) {
        c.args(["console", "--listen", "0.0.0.0:0", "--tls-cert"])
            .arg(site.path("console.crt"))
            .arg("--tls-key")
            .arg(site.path("console.key"))
            .arg("--users")
            .arg(&users);
        let (console_d, at) = console::start(&mut c, site.dir.path(), "https");
        assert!(at.ip().is_unspecified(), "{name} listens on {at}");
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], at.port()));
        let http = client(at);
        let url = format!("https://localhost:{}/state.json", at.port());
        let none = http.get(&url).send().unwrap();
        assert_eq!(none.status(), 401, "{name}");
        let challenge = none.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{name}: {challenge}");
        assert!(
            none.headers().contains_key("strict-transport-security"),
            "{name}"
        );
        assert!(none.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        let signed = |path: &str, user: &str, password: &str| {
            http.get(format!("https://localhost:{}{path}", at.port()))
                .basic_auth(user, Some(password))
                .send()
                .unwrap()
        };
        let wrong = signed("/state.json", "ada", "not the password");
        assert_eq!(wrong.status(), 401, "{name}");
        assert_eq!(
            signed("/state.json", "eve", PASSWORD).status(),
            401,
            "{name}"
        );
        let ok = signed("/state.json", "ada", PASSWORD);
        assert_eq!(ok.status(), 200, "{name}");
        assert!(ok.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age="));
        let j: serde_json::Value = ok.json().unwrap();
        assert!(
            j["html"].as_str().is_some_and(|h| !h.is_empty()),
            "{name}: {j}"
        );
        let page = signed("/", "ada", PASSWORD);
        assert_eq!(page.status(), 200, "{name}");
        assert!(page
            .text()
            .unwrap()
            .contains(&format!("<title>{name} console</title>")));
        // a refused sign-in is logged with the name given, never the password
        let log = wait_for(
            "the refused sign-ins in the log",
            Duration::from_secs(5),
            || {
                let log = console_d.log_text();
                log.contains("user=\"eve\"").then_some(log)
            },
        );
        assert!(
            log.contains("console sign-in refused") && log.contains("user=\"ada\""),
            "{log}"
        );
        assert!(
            !log.contains("not the password") && !log.contains(PASSWORD),
            "{log}"
        );
        println!("{name} console: 401 without or with a wrong password (logged, without it), 200 signed in, over TLS");
    }

    // a users file that others can read is refused at start, as a key file is
    fs::set_permissions(&users, fs::Permissions::from_mode(0o644)).unwrap();
    let out = site
        .send_cmd()
        .args(["console", "--listen", "0.0.0.0:0", "--tls-cert"])
        .arg(site.path("console.crt"))
        .arg("--tls-key")
        .arg(site.path("console.key"))
        .arg("--users")
        .arg(&users)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("readable by others") && err.contains("chmod 600"),
        "{err}"
    );
}
