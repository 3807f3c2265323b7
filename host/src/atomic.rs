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
    // a write that fails (a full disk) leaves no temporary file behind to hold the space
    if let Err(e) = f.write_all(bytes).and_then(|_| f.sync_all()) {
        drop(f);
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    drop(f);
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()));
    }
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

/// Write `bufs` back to back at `offset` of `file` with as few `pwritev` calls as it takes (one, for
/// direct I/O of a few page-aligned blocks: one request to the device instead of one per block).
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .take(libc::UIO_MAXIOV as usize)
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let off = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: every iovec points into a slice of `bufs`, borrowed (and so alive and unmoved) for the
    // whole call; pwritev only reads through them, at most `iov_len` bytes each; `file` is open.
    let n = unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            iov.as_ptr(),
            iov.len() as libc::c_int,
            off,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut done = n as usize;
    if done >= total {
        return Ok(());
    }
    // a short write (or more buffers than one call takes): the rest one buffer at a time
    let mut at = offset;
    for b in bufs {
        if done >= b.len() {
            done -= b.len();
        } else {
            file.write_all_at(&b[done..], at + done as u64)?;
            done = 0;
        }
        at += b.len() as u64;
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the filesystem holding `file` (statvfs's `f_bavail`),
/// or None where the filesystem does not say.
pub fn free_space(file: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: fstatvfs writes one statvfs into the buffer we own, on a descriptor this process owns
    let r = unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: fstatvfs returned 0, so it filled the structure
    let st = unsafe { st.assume_init() };
    // both are u64 on the 64-bit targets the suite ships for (deny.toml)
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The same for the filesystem holding the folder `dir`.
pub fn free_space_at(dir: &Path) -> Option<u64> {
    File::open(dir).ok().as_ref().and_then(free_space)
}

/// Reserve the object's space (unwritten extents: no data written, a full disk is known now), or at
/// least set its length where the filesystem cannot reserve. Reserves only when the filesystem has room
/// for the whole size and `keep_free` bytes more: an object declared larger than the free space is
/// written sparse, block by block, and a full disk shows as missing blocks instead of a disk filled by
/// one metadata frame. A reservation that fails gives back whatever it took (on ext4 a failed
/// `fallocate` keeps the extents it allocated). Returns whether the space is reserved.
pub fn preallocate(file: &File, size: u64, keep_free: u64) -> bool {
    use std::os::fd::AsRawFd;
    let room = free_space(file).is_some_and(|free| free >= size.saturating_add(keep_free));
    if room {
        let len = libc::off_t::try_from(size).unwrap_or(libc::off_t::MAX);
        // SAFETY: fallocate on a descriptor this process owns, with no pointers
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if r == 0 {
            return true;
        }
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "cannot reserve the object's space; releasing what was taken");
    } else {
        tracing::debug!(
            bytes = size,
            "not enough free space to reserve the object; writing it sparse"
        );
    }
    // truncating to 0 frees every extent the failed reservation kept; then the length, sparse
    let _ = file.set_len(0);
    let _ = file.set_len(size);
    false
}

/// Writes small state files (progress, status, metrics) on a thread of its own, so that the fsync each
/// one needs never stops a loop that must keep up with the link: on a disk busy with a large file one
/// fsync waits for a journal commit, tens to hundreds of milliseconds. The latest bytes for a path win;
/// `remove_now` drops a queued write of the path, so a removed file is never written back.
#[derive(Clone)]
pub struct Persister {
    shared: std::sync::Arc<(std::sync::Mutex<PersistQueue>, std::sync::Condvar)>,
}

#[derive(Default)]
struct PersistQueue {
    ops: std::collections::BTreeMap<std::path::PathBuf, (Vec<u8>, u32)>,
    /// The path the thread is writing now.
    current: Option<std::path::PathBuf>,
}

impl Persister {
    pub fn spawn() -> std::io::Result<Persister> {
        let p = Persister {
            shared: Default::default(),
        };
        let q = p.clone();
        std::thread::Builder::new()
            .name("persist".into())
            .spawn(move || q.run())?;
        Ok(p)
    }

    /// Queue `bytes` to replace `path` atomically (with `mode`); returns at once.
    pub fn write(&self, path: &Path, bytes: Vec<u8>, mode: u32) {
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
        q.ops.insert(path.to_path_buf(), (bytes, mode));
        cv.notify_all();
    }

    /// Remove `path` now: a write of it still queued is dropped, one under way is waited for.
    pub fn remove_now(&self, path: &Path) -> std::io::Result<()> {
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
        q.ops.remove(path);
        while q.current.as_deref() == Some(path) {
            q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn run(self) {
        let (m, cv) = &*self.shared;
        loop {
            let (path, (bytes, mode)) = {
                let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
                q.current = None;
                cv.notify_all();
                let next = loop {
                    if let Some(next) = q.ops.pop_first() {
                        break next;
                    }
                    q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
                };
                q.current = Some(next.0.clone());
                next
            };
            if let Err(e) = write_atomic(&path, &bytes, mode) {
                tracing::error!(error = %format!("{e:#}"), "cannot save state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers land back to back at the offset, in one call or (past what one call takes: 1024
    /// buffers) the rest one at a time; bytes before the offset are left alone.
    #[test]
    fn vectored_writes_land_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let parts: Vec<Vec<u8>> = (0..1500u32)
            .map(|i| vec![(i % 251) as u8; 1 + (i as usize % 5)])
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        write_all_vectored_at(&f, &refs, 10).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..10], &[7u8; 10]);
        assert_eq!(&got[10..], &parts.concat()[..]);
    }
}
