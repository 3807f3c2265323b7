//! The audit log crosses the diode: records not yet shipped are written into the sender's outbox as an
//! append-only segment `<folder>/<name>-<first seq>-<last seq>.jsonl` (the log's own lines, unchanged),
//! atomically (hidden temporary + rename, as envelopes are), and the shipped position (count, byte
//! offset, last hash) is kept in `<audit>.shipped` so that each record is shipped once, after a restart
//! too. On the high side the segments land in the receiver's inbox under the same relative path, and
//! `diode-chat audit verify --segments DIR` checks the chain across them (`diode_proto::audit`).
//!
//! A crash between writing a segment and recording the position ships the same records again under
//! the same name with the same bytes; the verifier takes an identical duplicate once.

use anyhow::{bail, Context, Result};
use diode_host::audit::AuditLog;
use diode_proto::audit::{self, ChainError, GENESIS};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// `[audit_shipping]` in adapter.toml.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Shipping {
    #[serde(default = "d_enabled")]
    pub enabled: bool,
    /// Folder under the outbox (and so under the receiver's inbox) that takes the segments.
    #[serde(default = "d_folder")]
    pub folder: PathBuf,
    /// First part of each segment's name: distinct per adapter when several share one sender.
    #[serde(default = "d_name")]
    pub name: String,
    /// How often `serve` looks for new records (humantime).
    #[serde(default = "d_every")]
    pub every: String,
}

impl Default for Shipping {
    fn default() -> Self {
        Shipping {
            enabled: d_enabled(),
            folder: d_folder(),
            name: d_name(),
            every: d_every(),
        }
    }
}

fn d_enabled() -> bool {
    true
}
fn d_folder() -> PathBuf {
    "audit".into()
}
fn d_name() -> String {
    "diode-chat".into()
}
fn d_every() -> String {
    "1s".into()
}

impl Shipping {
    /// Refuse names that would escape the outbox or confuse the segment parser.
    pub fn check(&self) -> Result<()> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !self.name.starts_with('-');
        if !ok_name {
            bail!(
                "audit_shipping.name = {:?}: use 1-64 letters, digits, '-' or '_'",
                self.name
            );
        }
        let f = &self.folder;
        if f.is_absolute()
            || f.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || f.to_string_lossy().split('/').any(|p| p.starts_with('.'))
        {
            bail!(
                "audit_shipping.folder = {:?} must be a plain relative folder inside the outbox",
                f.display()
            );
        }
        humantime::parse_duration(&self.every).with_context(|| {
            format!("audit_shipping.every = {:?} is not a duration", self.every)
        })?;
        Ok(())
    }
}

/// How far a reader of the log (the shipping here, the forwarding of `audit_forward`) has taken it:
/// records, bytes, and the last record's hash. Kept in a file beside the log, `<log><suffix>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub count: u64,
    pub offset: u64,
    pub hash: [u8; 32],
}

/// The position file of the shipping.
const SHIPPED: &str = ".shipped";

fn position_path(log: &Path, suffix: &str) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The position kept in `<log><suffix>`; the log's start if there is none yet.
pub fn read_position(log: &Path, suffix: &str) -> Result<Position> {
    let p = position_path(log, suffix);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Position {
                count: 0,
                offset: 0,
                hash: GENESIS,
            })
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    let mut w = text.split_whitespace();
    let parsed = (|| {
        Some(Position {
            count: w.next()?.parse().ok()?,
            offset: w.next()?.parse().ok()?,
            hash: hex::decode(w.next()?).ok()?.try_into().ok()?,
        })
    })();
    parsed.with_context(|| {
        format!(
            "{} is damaged: it should hold \"<records taken> <byte offset> <last hash>\"",
            p.display()
        )
    })
}

/// Keep `pos` in `<log><suffix>` (atomically, durably).
pub fn write_position(log: &Path, suffix: &str, pos: &Position) -> Result<()> {
    diode_host::atomic::write_atomic(
        &position_path(log, suffix),
        format!("{} {} {}\n", pos.count, pos.offset, hex::encode(pos.hash)).as_bytes(),
        0o644,
    )
}

/// Whole records appended to the log after a position.
pub struct Appended {
    /// The log's lines, unchanged, each with its newline.
    pub bytes: Vec<u8>,
    /// The first record's number.
    pub first: u64,
    /// The position after the last one.
    pub next: Position,
}

/// The records after `pos` in the log at `path`, at most `max` of them (None: all), checked to continue
/// the chain from `pos` (the full chain is `audit verify`'s job). None: nothing new.
pub fn appended(path: &Path, pos: &Position, max: Option<usize>) -> Result<Option<Appended>> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let len = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len < pos.offset {
        bail!(
            "audit log {} is shorter ({len} bytes) than the {} bytes already taken: it was cut or replaced",
            path.display(),
            pos.offset
        );
    }
    if len == pos.offset {
        return Ok(None);
    }
    let mut rest = Vec::new();
    f.seek(SeekFrom::Start(pos.offset))
        .and_then(|_| f.read_to_end(&mut rest))
        .with_context(|| format!("cannot read {}", path.display()))?;
    // whole lines only (a line is written with its newline in one write), and at most `max`
    let ends = rest.iter().enumerate().filter(|(_, &b)| b == b'\n');
    let Some((end, _)) = ends.take(max.unwrap_or(usize::MAX)).last() else {
        return Ok(None);
    };
    rest.truncate(end + 1);
    let text = std::str::from_utf8(&rest)
        .with_context(|| format!("audit log {} is not UTF-8", path.display()))?;
    let mut expect_seq = pos.count + 1;
    let mut prev = hex::encode(pos.hash);
    let mut last_hash = pos.hash;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "audit log {} record {expect_seq} is not JSON: run `diode-chat audit verify`",
                path.display()
            )
        })?;
        let seq = v.get("seq").and_then(Value::as_u64);
        let p = v.get("prev").and_then(Value::as_str);
        let h = v
            .get("hash")
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        match (seq, p, h) {
            (Some(s), Some(p), Some(h)) if s == expect_seq && p == prev => {
                prev = hex::encode(h);
                last_hash = h;
                expect_seq += 1;
            }
            _ => bail!(
                "audit log {} does not continue from record {} that was taken last: run `diode-chat audit verify`",
                path.display(),
                pos.count
            ),
        }
    }
    let next = Position {
        count: expect_seq - 1,
        offset: pos.offset + rest.len() as u64,
        hash: last_hash,
    };
    Ok(Some(Appended {
        bytes: rest,
        first: pos.count + 1,
        next,
    }))
}

/// Ship the records appended since the last call. Ok(Some(segment path)) when a segment was written.
pub fn ship(log: &AuditLog, outbox: &Path, cfg: &Shipping) -> Result<Option<PathBuf>> {
    if !cfg.enabled {
        return Ok(None);
    }
    // Under the log's lock: appends are whole lines, and a concurrent `diode-chat sign` does not ship
    // the same records at the same time.
    log.locked(|| ship_locked(log.path(), outbox, cfg))
}

fn ship_locked(path: &Path, outbox: &Path, cfg: &Shipping) -> Result<Option<PathBuf>> {
    let pos = read_position(path, SHIPPED)?;
    let Some(new) = appended(path, &pos, None)? else {
        return Ok(None);
    };
    let dir = outbox.join(&cfg.folder);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let seg = dir.join(format!(
        "{}-{:010}-{:010}.jsonl",
        cfg.name, new.first, new.next.count
    ));
    diode_host::atomic::write_atomic(&seg, &new.bytes, 0o644)?;
    write_position(path, SHIPPED, &new.next)?;
    Ok(Some(seg))
}

/// A segment file by its name: `<name>-<first>-<last>.jsonl`.
fn parse_segment_name(file: &str) -> Option<(String, u64, u64)> {
    let stem = file.strip_suffix(".jsonl")?;
    let mut parts = stem.rsplitn(3, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let name = parts.next()?.to_string();
    (!name.is_empty() && first >= 1 && first <= last).then_some((name, first, last))
}

/// What `verify_segments` found for one adapter (segment name).
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub records: u64,
    pub segments: usize,
}

/// Verify every chain of segments in `dir` (one per segment name): contiguous from record 1, each
/// segment holding exactly the records its name says, and the hash chain unbroken across them. An
/// error names the file and line.
pub fn verify_segments(dir: &Path) -> Result<Vec<Chain>> {
    let mut by_name: BTreeMap<String, Vec<(u64, u64, PathBuf)>> = BTreeMap::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some((name, first, last)) = parse_segment_name(&file) {
            by_name
                .entry(name)
                .or_default()
                .push((first, last, e.path()));
        }
    }
    if by_name.is_empty() {
        bail!(
            "no audit segments (<name>-<first>-<last>.jsonl) in {}",
            dir.display()
        );
    }
    let mut out = Vec::new();
    for (name, mut segs) in by_name {
        segs.sort();
        // (file, its first line's record number, the first record taken from it) for naming a line
        let mut spans: Vec<(PathBuf, u64, u64)> = Vec::new();
        let mut text = String::new();
        let mut next = 1u64;
        for (first, last, path) in &segs {
            if *last < next {
                // delivered twice (a crash before the shipped position was saved): records read already
                continue;
            }
            if *first > next {
                bail!(
                    "records {next}-{} of {name} are missing: no segment holds them yet (not arrived, or removed); next is {}",
                    first - 1,
                    path.display()
                );
            }
            let body = fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let lines: Vec<&str> = body.lines().collect();
            if lines.len() as u64 != last - first + 1 {
                bail!(
                    "{} holds {} records, its name says {} ({first}-{last}): cut or padded",
                    path.display(),
                    lines.len(),
                    last - first + 1
                );
            }
            // A segment that starts inside what was read (shipped again after a crash, with more
            // records): take its new records only; the chain check catches a beginning that differs,
            // since its first new record must follow the record already read.
            let skip = (next - first) as usize;
            spans.push((path.clone(), *first, next));
            for l in &lines[skip..] {
                text.push_str(l);
                text.push('\n');
            }
            next = last + 1;
        }
        match audit::verify(&text, None) {
            Ok(h) => out.push(Chain {
                name,
                records: h.count,
                segments: spans.len(),
            }),
            Err(ChainError::Broken { line, why }) => {
                let (file, first) = spans
                    .iter()
                    .rev()
                    .find(|(_, _, taken)| *taken <= line)
                    .map(|(p, f, _)| (p.display().to_string(), *f))
                    .unwrap_or_else(|| (dir.display().to_string(), 1));
                bail!("{file} line {} (record {line}): {why}", line - first + 1);
            }
            Err(e) => bail!("{}: {e}", dir.display()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn segment_names_parse() {
        assert_eq!(
            parse_segment_name("diode-chat-0000000001-0000000007.jsonl"),
            Some(("diode-chat".into(), 1, 7))
        );
        assert_eq!(parse_segment_name("x-7-1.jsonl"), None);
        assert_eq!(parse_segment_name("x-0-1.jsonl"), None);
        assert_eq!(parse_segment_name("-1-2.jsonl"), None);
        assert_eq!(parse_segment_name("notes.txt"), None);
    }

    #[test]
    fn shipped_in_segments_verified_across_them_and_an_edit_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::new(tmp.path().join("state/audit.jsonl"));
        let outbox = tmp.path().join("outbox");
        fs::create_dir(&outbox).unwrap();
        let cfg = Shipping::default();
        assert_eq!(ship(&log, &outbox, &cfg).unwrap(), None);
        for i in 0..3 {
            log.append("vote", json!({"i": i})).unwrap();
        }
        let s1 = ship(&log, &outbox, &cfg).unwrap().unwrap();
        assert!(s1.ends_with("audit/diode-chat-0000000001-0000000003.jsonl"));
        assert_eq!(ship(&log, &outbox, &cfg).unwrap(), None);
        log.append("emit", json!({"i": 3})).unwrap();
        let s2 = ship(&log, &outbox, &cfg).unwrap().unwrap();
        assert!(s2.ends_with("diode-chat-0000000004-0000000004.jsonl"));
        let dir = outbox.join("audit");
        let chains = verify_segments(&dir).unwrap();
        assert_eq!(
            chains,
            vec![Chain {
                name: "diode-chat".into(),
                records: 4,
                segments: 2
            }]
        );
        // an edit in the second line of the first segment is named by file and line
        let t = fs::read_to_string(&s1).unwrap();
        fs::write(&s1, t.replacen("\"i\":1", "\"i\":9", 1)).unwrap();
        let e = verify_segments(&dir).unwrap_err().to_string();
        assert!(
            e.contains("diode-chat-0000000001-0000000003.jsonl line 2 (record 2)"),
            "{e}"
        );
        fs::write(&s1, &t).unwrap();
        // shipped again after a crash with more records (1-4 beside 1-3 and 4-4): taken once
        let again = dir.join("diode-chat-0000000001-0000000004.jsonl");
        let both = format!("{t}{}", fs::read_to_string(&s2).unwrap());
        fs::write(&again, both).unwrap();
        assert_eq!(verify_segments(&dir).unwrap()[0].records, 4);
        fs::remove_file(&again).unwrap();
        // a missing segment is named as missing records
        fs::rename(&s1, tmp.path().join("away")).unwrap();
        let e = verify_segments(&dir).unwrap_err().to_string();
        assert!(e.contains("records 1-3 of diode-chat are missing"), "{e}");
    }
}
