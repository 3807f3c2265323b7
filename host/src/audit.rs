//! The audit log on disk: hash-chained JSON lines (`diode_proto::audit`), appended under an exclusive lock
//! (several processes append: the daemon and `approvals consume` callers), fsynced, with the head (count
//! and last hash) kept in `<log>.head` so that records cut from the end are noticed too.

use anyhow::{Context, Result};
use diode_proto::audit::{self, Head};
use serde_json::{Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct AuditLog {
    path: PathBuf,
}

fn head_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

fn lock_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl AuditLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AuditLog { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hold the log's lock while `f` runs (for callers that must read-check-write atomically across
    /// processes, such as consuming an approval).
    pub fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(&self.path))
            .with_context(|| format!("cannot open the lock of {}", self.path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.path.display()))?;
        let r = f();
        let _ = lock.unlock();
        r
    }

    /// Append one record (`event` plus fields); `at` is added. Takes the lock itself.
    pub fn append(&self, event: &str, fields: Value) -> Result<()> {
        self.locked(|| self.append_locked(event, fields))
    }

    /// Append while the caller holds `locked`.
    pub fn append_locked(&self, event: &str, fields: Value) -> Result<()> {
        let mut m = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        m.insert("event".into(), Value::from(event));
        m.insert("at".into(), Value::from(crate::unix_now()));
        let head = self.head()?;
        let (line, new) = audit::chain(&head, m);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open audit log {}", self.path.display()))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| f.sync_data())
            .with_context(|| format!("cannot write audit log {}", self.path.display()))?;
        crate::atomic::write_atomic(&head_path(&self.path), new.to_text().as_bytes(), 0o644)
    }

    /// The head: from the head file, or (first use, or a log from before heads) from the log itself.
    pub fn head(&self) -> Result<Head> {
        if let Ok(t) = fs::read_to_string(head_path(&self.path)) {
            if let Some(h) = Head::from_text(&t) {
                return Ok(h);
            }
        }
        match fs::read_to_string(&self.path) {
            Ok(text) => audit::verify(&text, None)
                .with_context(|| format!("audit log {} is damaged", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Head::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Check the whole log against its head file. Ok(number of records).
    pub fn verify(&self) -> Result<u64> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        let head = fs::read_to_string(head_path(&self.path))
            .ok()
            .and_then(|t| Head::from_text(&t));
        let h = audit::verify(&text, head.as_ref())
            .with_context(|| format!("audit log {} does not verify", self.path.display()))?;
        Ok(h.count)
    }
}

/// Records of a log, newest last (for listing). Unparseable lines are skipped.
pub fn records(path: &Path) -> Vec<Value> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    use std::io::BufRead;
    std::io::BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}
