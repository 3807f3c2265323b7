//! The Grafana dashboard (`packaging/grafana/diode.json`) and the Prometheus alert rules
//! (`packaging/prometheus/diode-rules.yml`) against what the real receiver writes:
//! - `promtool check rules` and `promtool test rules` (the alerts' unit tests) pass; promtool comes from
//!   Debian's `prometheus` package, which tests/run.sh installs: without it these tests fail, never skip;
//! - every metric the dashboard and the rules name, and every `label="value"` they select on, is in the
//!   textfiles of a receiver that carried a file and two approval envelopes (one accepted and consumed,
//!   one refused as expired), and `promtool check metrics` finds nothing wrong in those files.

use diode_tests::envelopes::{digest, drop_accepted_and_expired};
use diode_tests::{random_bytes, wait_for, Site};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// promtool, or the test fails saying how to get it.
fn promtool() -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("promtool").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "promtool is not installed: `apt-get install prometheus` (tests/run.sh installs it as root)"
    );
    Command::new("promtool")
}

fn run(c: &mut Command) -> String {
    let out = c.output().expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{c:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = root().join("packaging/prometheus");
    let text = run(promtool()
        .args(["check", "rules", "diode-rules.yml"])
        .current_dir(&dir));
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
    let text = run(promtool()
        .args(["test", "rules", "diode-rules.test.yml"])
        .current_dir(&dir));
    assert!(text.contains("SUCCESS"), "{text}");
    // every alert of the rules has a unit test
    let rules = fs::read_to_string(dir.join("diode-rules.yml")).unwrap();
    let tests = fs::read_to_string(dir.join("diode-rules.test.yml")).unwrap();
    for l in rules.lines() {
        if let Some(name) = l.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "alert {name} has no unit test in diode-rules.test.yml"
            );
        }
    }
}

/// A metric selector in an expression: the name and its `label="value"` matchers.
type Selector = (String, Vec<(String, String)>);

/// Every `diode_recv_*` name in a PromQL expression, with the equality matchers in braces after it.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("diode_recv_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut matchers = Vec::new();
        if let Some(body) = tail[end..].strip_prefix('{') {
            let body = &body[..body.find('}').expect("closing brace")];
            for m in body.split(',') {
                // only `label="value"`: regex and negative matchers select nothing fixed
                if let Some((k, v)) = m.split_once('=') {
                    let (k, v) = (k.trim(), v.trim());
                    if !k.ends_with('!') && v.starts_with('"') {
                        matchers.push((k.to_string(), v.trim_matches('"').to_string()));
                    }
                }
            }
        }
        out.push((name, matchers));
        rest = &tail[end..];
    }
    out
}

/// The expressions of the rules file (each rule's `expr`) and of the dashboard (panel targets and
/// template queries).
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules = fs::read_to_string(root().join("packaging/prometheus/diode-rules.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&rules).expect("diode-rules.yml is YAML");
    for g in docs[0]["groups"].as_vec().expect("groups") {
        for r in g["rules"].as_vec().expect("rules") {
            let what = format!("rule {}", r["alert"].as_str().unwrap_or("?"));
            out.push((what, r["expr"].as_str().expect("expr").to_string()));
        }
    }
    let dash: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(root().join("packaging/grafana/diode.json")).unwrap(),
    )
    .expect("diode.json is JSON");
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let what = format!("panel {:?}", p["title"]);
            out.push((what, t["expr"].as_str().expect("expr").to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        let what = format!("variable {}", v["name"]);
        out.push((
            what,
            v["definition"].as_str().expect("definition").to_string(),
        ));
    }
    out
}

/// Names declared (`# TYPE`) in a textfile, and its samples by name: the label text of each.
fn exported(text: &str, names: &mut BTreeSet<String>, samples: &mut BTreeMap<String, Vec<String>>) {
    for l in text.lines() {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            names.insert(t.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') && !l.is_empty() {
            let name_end = l.find(['{', ' ']).unwrap();
            let labels = l[name_end..].split(' ').next().unwrap_or("").to_string();
            samples
                .entry(l[..name_end].to_string())
                .or_default()
                .push(labels);
        }
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn every_metric_the_dashboard_and_rules_name_is_one_the_receiver_writes() {
    let site = Site::new_with(&[], &[("metrics_file", "metrics/diode_recv.prom".into())]);
    fs::create_dir_all(site.path("metrics")).unwrap();
    let _r = site.start("recv");
    let _s = site.start("send");
    let want = vec![("watched.bin".to_string(), random_bytes(300_000))];
    site.drop_in(&want[0].0, &want[0].1);
    site.wait_inbox(&want, Duration::from_secs(30)).unwrap();
    // one approval accepted (and consumed below), one refused because it expired before it arrived
    drop_accepted_and_expired(&site, 0x21);

    let prom = site.path("metrics/diode_recv.prom");
    let approvals = site.path("metrics/diode_recv_approvals.prom");
    // the file and both envelopes (an envelope counts as a received object, accepted or not)
    let main_text = wait_for(
        "the file and the envelopes counted in the receiver's metrics",
        Duration::from_secs(20),
        || {
            let t = fs::read_to_string(&prom).ok()?;
            (sample(&t, "diode_recv_received_files_total") == Some(3.0)).then_some(t)
        },
    );
    wait_for(
        "both envelopes counted in the approval metrics",
        Duration::from_secs(20),
        || {
            let t = fs::read_to_string(&approvals).ok()?;
            (sample(&t, "diode_recv_approvals_total{outcome=\"accepted\"}") == Some(1.0)
                && sample(&t, "diode_recv_approvals_total{outcome=\"quarantined\"}") == Some(1.0))
            .then_some(())
        },
    );
    let out = site
        .recv_cmd()
        .args([
            "approvals",
            "consume",
            "--artifact",
            &digest(0x21),
            "--env",
            "prod",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let appr_text = fs::read_to_string(&approvals).unwrap();
    for (series, want) in [
        ("diode_recv_approvals_total{outcome=\"consumed\"}", 1.0),
        (
            "diode_recv_approvals_quarantined_total{reason=\"expired\"}",
            1.0,
        ),
        ("diode_recv_audit_chain_ok", 1.0),
        ("diode_recv_audit_records", 3.0),
    ] {
        assert_eq!(
            sample(&appr_text, series),
            Some(want),
            "{series} in:\n{appr_text}"
        );
    }

    // both files pass promtool's own checks of the exposition format
    for text in [&main_text, &appr_text] {
        let mut c = promtool()
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let (mut names, mut samples) = (BTreeSet::new(), BTreeMap::new());
    exported(&main_text, &mut names, &mut samples);
    exported(&appr_text, &mut names, &mut samples);
    let mut used = BTreeSet::new();
    for (what, expr) in expressions() {
        for (name, matchers) in selectors(&expr) {
            assert!(
                names.contains(&name),
                "{what} names {name}, which the receiver does not write ({expr}); it writes {names:?}"
            );
            for (k, v) in matchers {
                let pair = format!("{k}=\"{v}\"");
                assert!(
                    samples
                        .get(&name)
                        .into_iter()
                        .flatten()
                        .any(|l| l.contains(&pair)),
                    "{what} selects {name}{{{pair}}}, which the receiver never writes ({expr})"
                );
            }
            used.insert(name);
        }
    }
    // the scan found the metrics (a broken scan would pass vacuously)
    for n in [
        "diode_recv_link_up",
        "diode_recv_link_loss_percent",
        "diode_recv_received_bytes_total",
        "diode_recv_objects",
        "diode_recv_approvals_total",
        "diode_recv_dropped_frames_total",
        "diode_recv_audit_chain_ok",
    ] {
        assert!(
            used.contains(n),
            "{n} is not used by the dashboard or the rules: {used:?}"
        );
    }
    println!(
        "{} metrics named by the dashboard and rules, all written: {used:?}",
        used.len()
    );
}

#[test]
fn the_metric_name_check_catches_a_name_the_receiver_does_not_write() {
    // the scanner behind the check above, on an expression with a name that does not exist
    let s = selectors(
        "increase(diode_recv_approvals_total{outcome=\"quarantined\", instance=~\"$i\"}[5m]) \
         and diode_recv_no_such_metric > 0",
    );
    assert_eq!(
        s,
        vec![
            (
                "diode_recv_approvals_total".to_string(),
                vec![("outcome".to_string(), "quarantined".to_string())]
            ),
            ("diode_recv_no_such_metric".to_string(), vec![]),
        ]
    );
}
