//! The watched outbox: a file is ready once it is complete: closed after writing, or moved in (a folder
//! moved in brings all its files). A periodic scan catches what events missed (files present at start,
//! events lost on overflow) and takes a file only once its size and time have been still for `settle`.
//! Hidden files (a leading `.`) are writers' temporaries and are never taken.

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

pub struct Outbox {
    root: PathBuf,
    events: Receiver<notify::Result<Event>>,
    _watcher: notify::RecommendedWatcher,
    /// Size and time of files seen by the scan, and since when they have been unchanged.
    still: HashMap<PathBuf, (u64, SystemTime, Instant)>,
    ready: Vec<PathBuf>,
    handed: HashSet<PathBuf>,
    last_scan: Option<Instant>,
    settle: Duration,
}

impl Outbox {
    pub fn watch(root: &Path, settle: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        // events name files by the absolute path the watch was given; the scan by `root` as it is. One
        // absolute, canonical form for both: with an outbox given as a relative path (`outbox = "out"`
        // and a relative --config), events' paths were not under `root`, looked hidden, and a file
        // moved in waited for the scan and `settle` (3.5 s instead of at once).
        let root = &std::fs::canonicalize(root)?;
        let (txe, events) = channel();
        let mut w = notify::recommended_watcher(move |e| {
            let _ = txe.send(e);
        })?;
        w.watch(root, RecursiveMode::Recursive)?;
        Ok(Outbox {
            root: root.to_path_buf(),
            events,
            _watcher: w,
            still: HashMap::new(),
            ready: Vec::new(),
            handed: HashSet::new(),
            last_scan: None,
            settle,
        })
    }

    /// The outbox as watched (absolute, canonical): the paths `poll` returns are under it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Wait up to `timeout` for files to become ready; returns them (each once).
    pub fn poll(&mut self, timeout: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(e)) => self.on_event(e),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "outbox watch error; the periodic scan covers it")
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !self.ready.is_empty() {
                // take everything that is already queued, without waiting longer
                while let Ok(Ok(e)) = self.events.try_recv() {
                    self.on_event(e);
                }
                break;
            }
        }
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.scan();
        }
        let out: Vec<PathBuf> = std::mem::take(&mut self.ready)
            .into_iter()
            .filter(|p| self.handed.insert(p.clone()))
            .collect();
        out
    }

    /// A handed-out path has been dealt with (moved away, or refused and left): it may be taken again
    /// only if it reappears.
    pub fn forget(&mut self, p: &Path) {
        self.handed.remove(p);
        self.still.remove(p);
    }

    fn on_event(&mut self, e: Event) {
        match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in e.paths {
                    self.mark(p);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for p in e.paths {
                    self.mark_tree(p);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let Some(p) = e.paths.into_iter().nth(1) {
                    self.mark_tree(p);
                }
            }
            EventKind::Create(CreateKind::Folder) => {
                // files written into a new folder before the watch reached it get no events: the scan
                // picks them up once they are still
            }
            _ => {}
        }
    }

    fn mark(&mut self, p: PathBuf) {
        if p.is_file() && !hidden(&self.root, &p) && !self.ready.contains(&p) {
            self.ready.push(p);
        }
    }

    fn mark_tree(&mut self, p: PathBuf) {
        if p.is_dir() {
            let mut files = Vec::new();
            walk(&p, &mut files);
            files.sort();
            for f in files {
                self.mark(f);
            }
        } else {
            self.mark(p);
        }
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let mut files = Vec::new();
        walk(&self.root, &mut files);
        files.sort();
        let now = Instant::now();
        let mut seen = HashMap::new();
        for f in files {
            if hidden(&self.root, &f) || self.handed.contains(&f) || self.ready.contains(&f) {
                continue;
            }
            let Ok(md) = std::fs::metadata(&f) else {
                continue;
            };
            let key = (md.len(), md.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            let since = match self.still.get(&f) {
                Some((l, m, since)) if (*l, *m) == key => *since,
                _ => now,
            };
            let age = key.1.elapsed().unwrap_or_default();
            if now.duration_since(since) >= self.settle
                || (age >= self.settle && self.last_scan_was_first(&f))
            {
                self.ready.push(f.clone());
            }
            seen.insert(f, (key.0, key.1, since));
        }
        self.still = seen;
    }

    /// At start-up a file already untouched for `settle` needs no second look.
    fn last_scan_was_first(&self, f: &Path) -> bool {
        !self.still.contains_key(f)
    }
}

fn hidden(root: &Path, p: &Path) -> bool {
    p.strip_prefix(root)
        .map(|rel| {
            rel.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
        .unwrap_or(true)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

/// The wire name of `p`: its path below `root` with `/` separators.
pub fn wire_name(root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wait up to 2 s (well under `settle`) for the outbox to hand out something.
    fn taken_within_2s(o: &mut Outbox) -> Vec<PathBuf> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            let got = o.poll(Duration::from_millis(50));
            if !got.is_empty() {
                return got;
            }
        }
        Vec::new()
    }

    /// A file moved into the outbox, or written and closed there, is taken at once, by its event, not
    /// after the scan and `settle` (60 s here): with the outbox given absolute and given relative to
    /// the working folder (a relative --config), and through a symlink. Names are under `root()`.
    #[test]
    fn a_file_moved_or_written_in_is_taken_at_once_however_the_outbox_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        std::fs::create_dir_all(base.join("real")).unwrap();
        // the tests of this crate run in one process: change the working folder only here
        std::env::set_current_dir(&base).unwrap();
        for (i, given) in [
            base.join("abs"),
            PathBuf::from("rel"),
            PathBuf::from("link"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut o = Outbox::watch(&given, Duration::from_secs(60)).unwrap();
            let root = o.root().to_path_buf();
            assert!(root.is_absolute(), "{}", root.display());
            // written just now (a fresh mtime, so the scan alone would wait `settle`), then moved in
            let staged = base.join(format!("staged-{i}.bin"));
            std::fs::write(&staged, b"moved in").unwrap();
            std::fs::rename(&staged, given.join("moved.bin")).unwrap();
            let got = taken_within_2s(&mut o);
            assert_eq!(
                got,
                vec![root.join("moved.bin")],
                "outbox given as {}",
                given.display()
            );
            assert_eq!(wire_name(o.root(), &got[0]).as_deref(), Some("moved.bin"));
            // written in place and closed
            std::fs::write(given.join("written.bin"), b"written").unwrap();
            let got = taken_within_2s(&mut o);
            assert_eq!(
                got,
                vec![root.join("written.bin")],
                "outbox given as {}",
                given.display()
            );
        }
    }
}
