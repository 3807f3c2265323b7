//! Crash-safe, bounded storage of objects being received. Each object has a partial data file and a
//! state file (postcard `AssemblyState`: metadata, finished blocks, data shards of set-aside blocks) in
//! `state/partial/`. Finished blocks are written at their offset; when all are in and the SHA-256 over the
//! whole file matches, the file is renamed into the inbox, so the inbox only ever shows whole files.

use anyhow::{bail, Context, Result};
use diode_host::atomic::{sync_dir, Persister};
use diode_proto::journal::format_id;
use diode_proto::object::{
    decode_partial_state, encode_partial_state, safe_name, Assembly, AssemblyState, ObjectMeta,
};
use diode_proto::KeyId;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Objects at least this large are written with O_DIRECT where `direct_io` allows it.
pub const DIRECT_MIN: u64 = 8 << 20;

/// What every partial object of one receiver shares: where state is saved from, and how data is written.
#[derive(Clone)]
pub struct Storage {
    /// The folder of partial objects (`state/partial/`).
    pub dir: PathBuf,
    /// The persist thread: progress is saved through it, off the receive loop.
    pub persist: Persister,
    /// `direct_io` from recv.toml: large objects written with O_DIRECT.
    pub direct_io: bool,
}

/// A second, write-only handle with O_DIRECT; None where the filesystem refuses it (tmpfs), which
/// leaves the object to the page cache as before.
fn open_direct(path: &Path) -> Option<Arc<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no O_DIRECT here; writing through the page cache");
            None
        }
    }
}

pub struct Partial {
    pub sender: KeyId,
    /// The object's metadata as it was when its storage was created (the reception itself is the
    /// endpoint's: `diode_proto::receiver`).
    pub meta: ObjectMeta,
    file: Arc<File>,
    /// The same file opened with O_DIRECT (large objects, where the filesystem allows it).
    direct: Option<Arc<File>>,
    data_path: PathBuf,
    state_path: PathBuf,
    persist: Persister,
}

fn stem(sender: KeyId, id: u64) -> String {
    format!("{sender}-{}", format_id(id))
}

/// Free space a reservation leaves on the state filesystem, so progress and status can still be saved.
const KEEP_FREE: u64 = 64 << 20;

impl Partial {
    /// A new object on disk: its data file and its first state. Whatever fails on the way is removed
    /// again, so no data file is ever left without the state file that `load_all` and expiry know it by.
    pub fn create(storage: &Storage, sender: KeyId, meta: &ObjectMeta) -> Result<Self> {
        let first = Assembly::new(meta.clone())?.state();
        let id = meta.id;
        let dir = &storage.dir;
        Self::open(storage, sender, meta.clone(), Some(&first)).inspect_err(|_| {
            let s = stem(sender, id);
            let _ = fs::remove_file(dir.join(format!("{s}.data")));
            let _ = fs::remove_file(dir.join(format!("{s}.state")));
        })
    }

    /// At start, before anything is loaded: remove data files that have no state file (an object whose
    /// first state never reached the disk, as after a crash or a full disk) and temporary files of
    /// interrupted state writes. They belong to no object, so nothing would ever expire them.
    pub fn sweep_orphans(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut removed = Vec::new();
        let Ok(rd) = fs::read_dir(dir) else {
            return removed;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let orphan = if let Some(stem) = name.strip_suffix(".data") {
                !dir.join(format!("{stem}.state")).exists()
            } else {
                name.starts_with('.') && name.contains(".tmp")
            };
            if orphan {
                let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                if fs::remove_file(&p).is_ok() {
                    removed.push((p, bytes));
                }
            }
        }
        removed
    }

    /// Open the object's files; `first`: a new object, whose data starts empty and whose first state is
    /// saved at once.
    fn open(
        storage: &Storage,
        sender: KeyId,
        meta: ObjectMeta,
        first: Option<&AssemblyState>,
    ) -> Result<Self> {
        let dir = &storage.dir;
        let s = stem(sender, meta.id);
        let data_path = dir.join(format!("{s}.data"));
        let state_path = dir.join(format!("{s}.state"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(first.is_some())
            .open(&data_path)
            .with_context(|| format!("cannot open {}", data_path.display()))
            .map(Arc::new)?;
        let direct = (meta.size >= DIRECT_MIN && storage.direct_io)
            .then(|| open_direct(&data_path))
            .flatten();
        if first.is_some() && direct.is_some() {
            // O_DIRECT writes past the end of a file are slow on ext4 (each one extends it under the
            // inode lock and the journal): give the file its whole size first, where the disk has room
            diode_host::atomic::preallocate(&file, meta.size, KEEP_FREE);
        }
        let p = Partial {
            sender,
            meta,
            file,
            direct,
            data_path,
            state_path,
            persist: storage.persist.clone(),
        };
        if let Some(state) = first {
            p.save(state);
        }
        Ok(p)
    }

    /// Every partial object found in the folder (after a restart). Unreadable ones are reported and
    /// skipped.
    pub fn load_all(storage: &Storage) -> Vec<(Partial, Assembly)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&storage.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "state") {
                continue;
            }
            match Self::load(storage, &p) {
                Ok(part) => out.push(part),
                Err(err) => {
                    tracing::error!(file = %p.display(), error = %format!("{err:#}"), "unreadable partial object state; it will be received again from scratch")
                }
            }
        }
        out
    }

    fn load(storage: &Storage, state_path: &Path) -> Result<(Partial, Assembly)> {
        let bytes = fs::read(state_path)?;
        let (sender, st) = decode_partial_state(&bytes)?;
        let asm = Assembly::from_state(st)?;
        let p = Self::open(storage, sender, asm.meta.clone(), None)?;
        Ok((p, asm))
    }

    /// Save progress through the persist thread (the receive loop must not wait for an fsync). A data
    /// file whose first state never reached the disk is swept at the next start (`sweep_orphans`).
    pub fn save(&self, state: &AssemblyState) {
        let bytes = encode_partial_state(self.sender, state);
        self.persist.write(&self.state_path, bytes, 0o600);
    }

    fn remove_state(&self) {
        let _ = self.persist.remove_now(&self.state_path);
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn direct(&self) -> Option<Arc<File>> {
        self.direct.clone()
    }

    /// Every block was lost again (the data did not match its hash): the data starts empty.
    pub fn reset(&self) -> std::io::Result<()> {
        self.file.set_len(0)
    }

    /// Read `len` bytes at `offset`; what lies past the end of the data reads as zeros.
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        let n = read_upto(&self.file, &mut b, offset)?;
        b[n..].fill(0);
        Ok(b)
    }

    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// The content of a finished small object (an envelope), read whole and checked once more against
    /// its hash: what is handed on is exactly what was verified.
    pub fn content(&self, max: u64) -> Result<Vec<u8>> {
        let size = self.meta.size;
        if size > max {
            bail!("{size} bytes, more than {max}");
        }
        let mut buf = vec![0u8; size as usize];
        self.file.read_exact_at(&mut buf, 0)?;
        if diode_proto::hash::content_hash(&buf) != self.meta.hash {
            bail!("its content no longer matches its hash");
        }
        Ok(buf)
    }

    /// The writer has verified the hash and made the data durable: move the file into the inbox. A
    /// name the inbox refuses (through a symbolic link, over a folder) is `Refused`: trying again cannot
    /// help until the admin changes the inbox.
    pub fn publish(&mut self, inbox: &Path) -> Result<PathBuf, PublishError> {
        let meta = self.meta.clone();
        let dest =
            inbox_path(inbox, &meta.name).map_err(|e| PublishError::Refused(format!("{e:#}")))?;
        self.move_to(&dest).map_err(PublishError::Failed)?;
        self.remove_state();
        Ok(dest)
    }

    fn move_to(&mut self, dest: &Path) -> Result<()> {
        let meta = &self.meta;
        let dest = dest.to_path_buf();
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if let Err(e) = fs::rename(&self.data_path, &dest) {
            if e.raw_os_error() != Some(18) {
                return Err(e).with_context(|| {
                    format!("cannot move the finished file to {}", dest.display())
                });
            }
            // EXDEV: state and inbox on different filesystems: copy beside the target, then rename;
            // a copy that fails (a full inbox) leaves nothing behind
            let tmp = dest.with_file_name(format!(".{}.diode-part", meta.id));
            let copied = fs::copy(&self.data_path, &tmp)
                .and_then(|_| File::open(&tmp)?.sync_all())
                .and_then(|_| fs::rename(&tmp, &dest));
            if let Err(e) = copied {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| {
                    format!("cannot copy the finished file to {}", dest.display())
                });
            }
            let _ = fs::remove_file(&self.data_path);
        }
        if let Some(parent) = dest.parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    /// Give up on the object (expired): remove its data, keep nothing but the caller's report.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.data_path);
        self.remove_state();
    }
}

/// Why a verified object did not reach the inbox.
#[derive(Debug)]
pub enum PublishError {
    /// The inbox refuses it where it would go; it is held until the admin acts (log, status).
    Refused(String),
    /// The disk or the filesystem failed; tried again later.
    Failed(anyhow::Error),
}

fn read_upto(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            r => n += r,
        }
    }
    Ok(n)
}

/// Where a wire name lands: only below the inbox, never through a symbolic link.
pub fn inbox_path(inbox: &Path, name: &str) -> Result<PathBuf> {
    let parts = safe_name(name)?;
    let mut p = inbox.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        p.push(part);
        if let Ok(md) = fs::symlink_metadata(&p) {
            let last = i + 1 == parts.len();
            if md.file_type().is_symlink() || (!last && !md.is_dir()) || (last && md.is_dir()) {
                bail!(
                    "{} is a link or not a folder: refusing to write {name:?} through it",
                    p.display()
                );
            }
        }
    }
    Ok(p)
}
