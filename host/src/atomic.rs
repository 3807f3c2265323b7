//! Crash-safe file replacement: write a temporary file beside the target, fsync it, rename it over the
//! target, fsync the folder. A reader sees the old or the new content, never a mix.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{mpsc, Arc, OnceLock};

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Make a rename or create in `dir` durable. Best effort: some filesystems refuse to fsync folders.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Append one line and fsync: for journals and audit logs.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_data())
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// Start writing ranges of files back to disk on a thread of its own, so that a later `fsync` of a large
/// file finds little left to do, and the caller never waits for the disk (`sync_file_range` can block
/// while the device queue is full). Best effort: a request is dropped when the queue is full, and the
/// final `fsync` still decides.
pub fn start_writeback(f: &Arc<File>, offset: u64, len: u64) {
    type Request = (Arc<File>, u64, u64);
    static QUEUE: OnceLock<Option<mpsc::SyncSender<Request>>> = OnceLock::new();
    let q = QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Request>(64);
        std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for (f, offset, len) in rx {
                    use std::os::fd::AsRawFd;
                    // SAFETY: sync_file_range only reads its integer arguments; `f` is an open file
                    // kept alive by the Arc for the duration of the call.
                    unsafe {
                        libc::sync_file_range(
                            f.as_raw_fd(),
                            offset as libc::off64_t,
                            len as libc::off64_t,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                    }
                }
            })
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = q {
        let _ = tx.try_send((f.clone(), offset, len));
    }
}
