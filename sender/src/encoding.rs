//! Objects on disk as the sender endpoint sees them: `describe` measures a file into the metadata it
//! travels under; `Files` lends the endpoint (`diode_proto::sender`) their content, group by group, which
//! it encodes into metadata and interleaved, FEC-coded shard frames.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use diode_proto::envelope::MAX_ENVELOPE_BYTES;
use diode_proto::object::{ObjectKind, ObjectMeta, HASH_PENDING};
use diode_proto::sender::Source;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Files up to this size are hashed before their first frame, so every metadata frame carries the hash.
pub const HASH_FIRST_MAX: u64 = 1 << 20;

/// Measure a file, giving it the id and wire name it will travel under. The content hash of a large file
/// is left pending: the first pass computes it as it reads the file (one read instead of two, and the
/// first frame leaves at once) and sends it in the metadata frames at the end of the pass.
pub fn describe(
    path: &Path,
    id: u64,
    name: &str,
    kind: ObjectKind,
    cfg: &Config,
) -> Result<ObjectMeta> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let md = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let size = md.len();
    let mut hash = HASH_PENDING;
    if size <= HASH_FIRST_MAX {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.len() as u64 != size {
            bail!("{} changed size while being read", path.display());
        }
        if kind == ObjectKind::Envelope && bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Unsendable(format!(
                "{} bytes: an envelope may have at most {MAX_ENVELOPE_BYTES}",
                bytes.len()
            ))
            .into());
        }
        hash = diode_proto::hash::content_hash(&bytes);
    } else if kind == ObjectKind::Envelope {
        return Err(Unsendable(format!("{size} bytes: too large to be an envelope")).into());
    }
    let g = cfg.geometry_for(size)?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let meta = ObjectMeta {
        id,
        name: name.to_string(),
        size,
        hash,
        kind,
        shard_size: g.shard_size as u32,
        data_shards: g.data_shards as u16,
        parity_shards: g.parity_shards as u16,
        mtime: mtime.unwrap_or(0),
    };
    meta.check().map_err(|e| Unsendable(e.to_string()))?;
    Ok(meta)
}

/// What the file is makes it impossible to send (an oversize envelope, metadata the receiver would
/// refuse): trying again cannot help, so the object is set aside once instead of at every start.
#[derive(Debug)]
pub struct Unsendable(pub String);

impl std::fmt::Display for Unsendable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsendable {}

/// The content of the objects being sent, for the endpoint (`diode_proto::sender::Source`): each
/// object's file, opened when its job is queued and closed when the endpoint no longer needs it. On a
/// fast link a large file is lent through a map under a read lease (no copy); when someone opens it for
/// writing the lease breaks, the map is dropped (the writer goes on) and the rest is read with pread.
#[derive(Default)]
pub struct Files {
    open: HashMap<u64, Open>,
    /// Lend through maps (a fast UDP link: a group's frames are out well within the 45 s a writer
    /// waits for the lease to break).
    map: bool,
}

struct Open {
    file: File,
    map: Option<diode_host::mapped::Mapped>,
}

impl Files {
    pub fn new(map: bool) -> Self {
        Files {
            open: HashMap::new(),
            map,
        }
    }

    /// Open object `id`'s file, which must still have the size its metadata says.
    pub fn add(&mut self, id: u64, path: &Path, size: u64) -> Result<()> {
        if self.open.contains_key(&id) {
            return Ok(());
        }
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        if file.metadata()?.len() != size {
            bail!("{} changed size since it was queued", path.display());
        }
        let map = self
            .map
            .then(|| diode_host::mapped::Mapped::open(&file, size))
            .flatten();
        self.open.insert(id, Open { file, map });
        Ok(())
    }

    /// Close the files of the objects `needed` no longer names.
    pub fn close_unneeded(&mut self, needed: impl Fn(u64) -> bool) {
        self.open.retain(|id, _| needed(*id));
    }
}

impl Source for Files {
    fn map(&mut self, id: u64, offset: u64, len: usize) -> Option<&[u8]> {
        self.open.get(&id)?.map.as_ref()?.bytes(offset, len)
    }

    fn read_at(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let o = self.open.get(&id).ok_or("the object's file is not open")?;
        o.file
            .read_exact_at(buf, offset)
            .map_err(|e| format!("the object's file changed or shrank while being sent: {e}"))
    }

    fn begin_group(&mut self, id: u64) {
        if let Some(o) = self.open.get_mut(&id) {
            if o.map.as_ref().is_some_and(|m| !m.held()) {
                tracing::info!(object = %diode_proto::journal::format_id(id),
                    "someone opened the file for writing: reading it instead of mapping it");
                o.map = None; // gives the lease up: the writer goes on
            }
        }
    }
}
