//! The encoding stage: an object on disk becomes metadata frames and interleaved, FEC-coded shard frames.
//! Reads the file block group by block group (memory does not grow with the file), computes parity with
//! `diode_proto::BlockEncoder`, and hands each shard to the transmitter in `object::interleave` order.

use crate::config::Config;
use crate::transmit::Transmitter;
use anyhow::{bail, Context, Result};
use diode_proto::envelope::MAX_ENVELOPE_BYTES;
use diode_proto::object::{ObjectKind, ObjectMeta, HASH_PENDING};
use diode_proto::schedule::{self, Out, Pass};
use diode_proto::{BlockEncoder, FrameKind};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Within a group of blocks, urgent objects are looked for at most this often.
const BETWEEN_EVERY: Duration = Duration::from_millis(20);

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

pub struct Encoder {
    fec: BlockEncoder,
    data: Vec<u8>,
    parity: Vec<Vec<u8>>,
    pub interleave: usize,
}

impl Encoder {
    pub fn new(interleave: usize) -> Self {
        Encoder {
            fec: BlockEncoder::new(),
            data: Vec::new(),
            parity: Vec::new(),
            interleave,
        }
    }

    /// Send `blocks` (all when None) of the object once. `progress` gets data bytes as they go out.
    /// A whole pass of an object whose hash is pending computes it and fills it in.
    pub fn send_pass(
        &mut self,
        tx: &mut Transmitter,
        file: &File,
        meta: &mut ObjectMeta,
        blocks: Option<&[(u32, u32)]>,
        progress: &mut dyn FnMut(u64),
        between: &mut dyn FnMut(&mut Transmitter),
    ) -> Result<()> {
        let mut pass = Pass::new(meta, blocks, self.interleave)?;
        let s = pass.geometry().shard_size;
        let meta_bytes = meta.encode();
        let mut hasher =
            (!meta.hash_known() && blocks.is_none()).then(diode_proto::hash::ContentHasher::new);
        for _ in 0..schedule::OPENING_META {
            tx.push(FrameKind::Meta, meta.id, 0, 0, &meta_bytes);
        }
        let mut sent = 0usize;
        let mut last_between = Instant::now();
        // large files are read through a map under a read lease (no copy); `map.bytes` says when the
        // lease is breaking, and from then on blocks are read into `data` as before. Only on a fast link:
        // a group's frames must be out well within the 45 s a writer waits for the lease to break
        let fast = tx.fast_link();
        let mut map = fast
            .then(|| diode_host::mapped::Mapped::open(file, meta.size))
            .flatten();
        while let Some(group) = pass.next_group() {
            if map.as_ref().is_some_and(|m| !m.held()) {
                tracing::info!(object = %diode_proto::journal::format_id(meta.id),
                    "someone opened the file for writing: reading it instead of mapping it");
                map = None; // gives the lease up: the writer goes on
            }
            // the group's data, each block padded to whole shards: a whole block straight from the map,
            // the rest read into `data` (a short last block is padded with zeros)
            let mut sources: Vec<Option<&[u8]>> = Vec::with_capacity(group.len());
            let mut starts = Vec::with_capacity(group.len());
            let mut end = 0;
            for b in &group {
                let (len, k) = (b.len, b.data_shards);
                let mapped = map
                    .as_ref()
                    .filter(|_| len == k * s)
                    .and_then(|m| m.bytes(b.offset, len));
                starts.push(end);
                sources.push(mapped);
                if mapped.is_some() {
                    continue;
                }
                let start = end;
                end = start + k * s;
                // the buffer only grows; the read fills the block and only its padding is zeroed
                if self.data.len() < end {
                    self.data.resize(end, 0);
                }
                file.read_exact_at(&mut self.data[start..start + len], b.offset)
                    .context("the object's file changed or shrank while being sent")?;
                self.data[start + len..end].fill(0);
            }
            let data = &self.data;
            let block_data = |i: usize| -> &[u8] {
                match sources[i] {
                    Some(m) => m,
                    None => &data[starts[i]..starts[i] + group[i].data_shards * s],
                }
            };
            if let Some(h) = hasher.as_mut() {
                for (i, b) in group.iter().enumerate() {
                    h.update(&block_data(i)[..b.len]);
                }
            }
            self.parity.resize_with(group.len(), Vec::new);
            for (i, b) in group.iter().enumerate() {
                self.fec
                    .encode(block_data(i), s, b.parity_shards, &mut self.parity[i])?;
            }
            for out in pass.frames(&group) {
                let (slot, block, shard) = match out {
                    Out::Meta => {
                        tx.push(FrameKind::Meta, meta.id, 0, 0, &meta_bytes);
                        continue;
                    }
                    Out::Shard { slot, block, shard } => (slot, block, shard),
                };
                let k = group[slot].data_shards;
                let payload = if shard < k {
                    &block_data(slot)[shard * s..(shard + 1) * s]
                } else {
                    &self.parity[slot][(shard - k) * s..(shard - k + 1) * s]
                };
                tx.push(
                    FrameKind::Shard,
                    meta.id,
                    block as u32,
                    shard as u16,
                    payload,
                );
                sent += 1;
                // on a slow line a group takes minutes (a frame alone 0.1 s at 115200 baud): look for
                // urgent objects every 20 ms within it (on a fast link the clock is read every 8th frame)
                if (!fast || sent.is_multiple_of(8)) && last_between.elapsed() >= BETWEEN_EVERY {
                    between(tx);
                    last_between = Instant::now();
                }
            }
            progress(group.iter().map(|b| b.len as u64).sum());
            // urgent small objects (approval envelopes) go out here, not after the whole file
            between(tx);
            last_between = Instant::now();
        }
        if let Some(h) = hasher {
            meta.hash = h.finalize();
            if !meta.hash_known() {
                bail!("the content hash is all zeros; this cannot travel"); // 2^-256
            }
        }
        // the closing metadata (with the hash) three times: one copy must survive the loss
        let meta_bytes = meta.encode();
        for _ in 0..schedule::CLOSING_META {
            tx.push(FrameKind::Meta, meta.id, 0, 0, &meta_bytes);
        }
        tx.flush();
        Ok(())
    }
}

/// Send an object `passes` times (or the given blocks of it).
#[allow(clippy::too_many_arguments)] // the two hooks are what the daemon and `file` differ in
pub fn send_object(
    tx: &mut Transmitter,
    enc: &mut Encoder,
    path: &Path,
    meta: &mut ObjectMeta,
    passes: u32,
    blocks: Option<&[(u32, u32)]>,
    progress: &mut dyn FnMut(u64),
    between: &mut dyn FnMut(&mut Transmitter),
) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if file.metadata()?.len() != meta.size {
        bail!("{} changed size since it was queued", path.display());
    }
    tx.current_object = Some(meta.id);
    for _ in 0..passes {
        enc.send_pass(tx, &file, meta, blocks, progress, between)?;
    }
    tx.current_object = None;
    tx.objects_sent += 1;
    Ok(())
}
