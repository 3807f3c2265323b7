//! Objects on disk as the sender endpoint sees them: `describe` measures a file into the metadata it
//! travels under; `Files` lends the endpoint (`diode_proto::sender`) their content, group by group, which
//! it encodes into metadata and interleaved, FEC-coded shard frames.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use diode_proto::envelope::MAX_ENVELOPE_BYTES;
use diode_proto::hash::ContentHasher;
use diode_proto::object::{ObjectKind, ObjectMeta, HASH_PENDING};
use diode_proto::sender::{BlockParity, Source};
use diode_proto::BlockEncoder;
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
    /// Threads that compute a mapped group's parity while the daemon's thread hashes it
    /// (`encode_group`); 0: the endpoint does both on the daemon's thread.
    threads: usize,
    /// One Reed-Solomon encoder per such thread, kept between groups (its tables).
    encoders: Vec<BlockEncoder>,
}

struct Open {
    file: File,
    map: Option<diode_host::mapped::Mapped>,
}

impl Files {
    /// `threads`: how many threads compute parity beside the daemon's (`seal_threads`; only for
    /// mapped files).
    pub fn new(map: bool, threads: usize) -> Self {
        Files {
            open: HashMap::new(),
            map,
            threads: if map { threads } else { 0 },
            encoders: Vec::new(),
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

    /// The group's parity on `threads` scoped threads (each a share of the blocks), while this thread
    /// folds the group into the content hash: on a machine with cores to spare, the daemon's thread
    /// then mostly copies shards into frames. Nothing is hashed unless every block is mapped.
    fn encode_group(
        &mut self,
        id: u64,
        shard_size: usize,
        blocks: &mut [BlockParity<'_>],
        hasher: Option<&mut ContentHasher>,
    ) -> Result<bool, String> {
        let Files {
            open,
            threads,
            encoders,
            ..
        } = self;
        if *threads == 0 || blocks.len() < 2 {
            return Ok(false);
        }
        let Some(map) = open.get(&id).and_then(|o| o.map.as_ref()) else {
            return Ok(false);
        };
        let mut data = Vec::with_capacity(blocks.len());
        for b in blocks.iter() {
            match map.bytes(b.offset, b.len) {
                Some(d) => data.push(d),
                None => return Ok(false),
            }
        }
        encoders.resize_with(*threads, BlockEncoder::new);
        let per = blocks.len().div_ceil(*threads);
        std::thread::scope(|sc| {
            let workers: Vec<_> = blocks
                .chunks_mut(per)
                .zip(data.chunks(per))
                .zip(encoders.iter_mut())
                .map(|((bs, ds), enc)| {
                    sc.spawn(move || {
                        for (b, d) in bs.iter_mut().zip(ds) {
                            enc.encode(d, shard_size, b.parity_shards, b.parity)
                                .map_err(|e| e.to_string())?;
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            if let Some(h) = hasher {
                for d in &data {
                    h.update(d);
                }
            }
            for w in workers {
                w.join()
                    .map_err(|_| "a parity thread failed".to_string())??;
            }
            Ok(true)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapped file's group, encoded on two threads while this one hashes it, gives the parity and
    /// the hash that one thread gives block by block; a file that is not mapped, or no threads, is
    /// declined (`Ok(false)`) with nothing hashed, and the endpoint does it itself.
    #[test]
    fn a_mapped_group_is_encoded_on_threads_as_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        // 8.3 MiB: files from `MAP_MIN` (8 MiB) up are mapped
        let (shard, k, m, blocks) = (1408usize, 128usize, 24usize, 48usize);
        let size = (shard * k * blocks) as u64;
        let content: Vec<u8> = (0..size as usize)
            .map(|i| (i * 31 + i / 977) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        let run = |threads: usize, map: bool| {
            let mut files = Files::new(map, threads);
            files.add(1, &path, size).unwrap();
            let mut parity = vec![Vec::new(); blocks];
            let mut work: Vec<BlockParity> = parity
                .iter_mut()
                .enumerate()
                .map(|(i, p)| BlockParity {
                    offset: (i * shard * k) as u64,
                    len: shard * k,
                    parity_shards: m,
                    parity: p,
                })
                .collect();
            let mut h = ContentHasher::new();
            let done = files
                .encode_group(1, shard, &mut work, Some(&mut h))
                .unwrap();
            (done, parity, h.finalize())
        };
        let mut enc = BlockEncoder::new();
        let want: Vec<Vec<u8>> = content
            .chunks(shard * k)
            .map(|d| {
                let mut p = Vec::new();
                enc.encode(d, shard, m, &mut p).unwrap();
                p
            })
            .collect();
        let (done, parity, hash) = run(2, true);
        assert!(
            done,
            "a mapped file with threads is encoded here (is the lease refused?)"
        );
        assert!(parity == want, "parity differs");
        assert_eq!(hash, diode_proto::hash::content_hash(&content));
        let empty = ContentHasher::new().finalize();
        for (threads, map) in [(0, true), (2, false)] {
            let (done, parity, hash) = run(threads, map);
            assert!(!done);
            assert!(parity.iter().all(Vec::is_empty));
            assert_eq!(hash, empty, "nothing hashed when declined");
        }
    }
}
