//! Objects: what travels is a file or an approval envelope, described by `ObjectMeta` (postcard, carried
//! in Meta frames repeated through the object so that losing any frame never loses the metadata) and
//! cut into FEC blocks. `Assembly` is the receiver's state for one object: which blocks are finished, the
//! blocks being collected, and which data shards of set-aside blocks are already on disk.
//!
//! Names from the wire are untrusted: `safe_name` turns one into path components that cannot leave the
//! inbox (no absolute paths, `..`, NUL, control characters or device names).

use crate::fec::{BlockAssembly, FecError, Geometry};
use crate::keys::KeyId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

pub const MAX_NAME: usize = 1024;
/// Largest object accepted: 16 TiB.
pub const MAX_SIZE: u64 = 1 << 44;
/// Most blocks an object may have: the receiver keeps a flag per block, so this bounds that memory
/// (8 MiB) and the per-tick walk over it. At the default geometry (180 KiB a block) it is 1.4 TiB.
pub const MAX_BLOCKS: u64 = 1 << 23;
/// Most bytes one block may span, data and parity (the receiver allocates a block's buffer when its first
/// shard arrives): 16 MiB, against 214 KiB at the default 128 + 24 shards of 1408 bytes and 1.4 MiB for
/// jumbo frames.
pub const MAX_BLOCK_BYTES: u64 = 16 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    File,
    Envelope,
}

/// Files named `*.envelope` in a sender's outbox are approval envelopes: they travel as
/// `ObjectKind::Envelope`, ahead of bulk files, and the receiver verifies them instead of writing them to
/// its inbox.
pub const ENVELOPE_SUFFIX: &str = ".envelope";

/// A character that changes how text reads without being seen: Unicode format characters (category Cf:
/// bidi overrides, embeddings and isolates, directional marks, zero-width joiners and spaces, the BOM,
/// soft hyphen, ...) and the line and paragraph separators.
pub fn invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

pub fn kind_for_name(name: &str) -> ObjectKind {
    if name.ends_with(ENVELOPE_SUFFIX) {
        ObjectKind::Envelope
    } else {
        ObjectKind::File
    }
}

/// `ObjectMeta::hash` of an object whose hash the sender has not finished computing.
pub const HASH_PENDING: [u8; 32] = [0; 32];

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Chosen by the sender, recorded in its journal; what replay lines name.
    pub id: u64,
    /// Relative path with `/` separators.
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the whole content, or all zeros (`HASH_PENDING`) in the metadata frames of a first
    /// pass: the sender hashes the file while it sends it and puts the hash in the metadata frames at
    /// the end of the pass (and in every later one). A receiver renames nothing into the inbox before it
    /// knows the hash and the content matches it.
    pub hash: [u8; 32],
    pub kind: ObjectKind,
    pub shard_size: u32,
    pub data_shards: u16,
    pub parity_shards: u16,
    /// Modification time at the sender, seconds since the epoch.
    pub mtime: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("metadata does not decode")]
    Decode,
    #[error("unsafe name {0:?}: {1}")]
    Name(String, &'static str),
    #[error("object of {0} bytes is larger than allowed")]
    Size(u64),
    #[error("{0} blocks: at most {MAX_BLOCKS} (the shards are too small for the size)")]
    Blocks(u64),
    #[error("blocks of {0} bytes: at most {MAX_BLOCK_BYTES}")]
    BlockBytes(u64),
    #[error(transparent)]
    Fec(#[from] FecError),
}

impl ObjectMeta {
    pub fn encode(&self) -> Vec<u8> {
        // postcard cannot fail on this type except by allocation failure
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Parse metadata from the wire: everything the rest of the code relies on is checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        let meta: ObjectMeta = postcard::from_bytes(bytes).map_err(|_| MetaError::Decode)?;
        meta.check()?;
        Ok(meta)
    }

    pub fn check(&self) -> Result<(), MetaError> {
        safe_name(&self.name)?;
        if self.size > MAX_SIZE {
            return Err(MetaError::Size(self.size));
        }
        let g = self.geometry()?;
        // bounds on what one authenticated metadata frame can make the receiver allocate (found by the
        // object_meta fuzz target: 64 x (2^32 - 1) bytes in 64-byte shards asked for a 4 GiB flag vector)
        let blocks = g.block_count(self.size);
        if blocks > MAX_BLOCKS {
            return Err(MetaError::Blocks(blocks));
        }
        let block_bytes = ((g.data_shards + g.parity_shards) * g.shard_size) as u64;
        if block_bytes > MAX_BLOCK_BYTES {
            return Err(MetaError::BlockBytes(block_bytes));
        }
        Ok(())
    }

    pub fn geometry(&self) -> Result<Geometry, FecError> {
        Geometry::new(
            self.shard_size as usize,
            self.data_shards as usize,
            self.parity_shards as usize,
        )
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn hash_known(&self) -> bool {
        self.hash != HASH_PENDING
    }

    /// The same object, perhaps with a hash where this one has none yet?
    pub fn same_object(&self, other: &ObjectMeta) -> bool {
        let mut a = self.clone();
        a.hash = other.hash;
        a == *other && (!self.hash_known() || self.hash == other.hash)
    }
}

const DEVICE_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Split an untrusted name into components that are safe to join under the inbox.
pub fn safe_name(name: &str) -> Result<Vec<&str>, MetaError> {
    let bad = |why| Err(MetaError::Name(name.chars().take(200).collect(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME {
        return bad("too long");
    }
    if name.starts_with('/') || name.starts_with('\\') || name.get(1..2) == Some(":") {
        return bad("absolute path");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("NUL or control character");
    }
    // Format characters (Unicode category Cf: the bidi overrides, embeddings and isolates U+202A-U+202E
    // and U+2066-U+2069, the marks U+200E/U+200F/U+061C, zero-width joiners and spaces, the BOM, soft
    // hyphen, ...) and the line and paragraph separators change how a name reads without being seen:
    // `invoice<U+202E>fdp.exe` lists as `invoiceexe.pdf`.
    if name.chars().any(invisible) {
        return bad("invisible Unicode format character (bidi control, zero-width or separator)");
    }
    if name.contains('\\') {
        return bad("backslash");
    }
    let parts: Vec<&str> = name.split('/').collect();
    for p in &parts {
        if p.is_empty() || *p == "." {
            return bad("empty or `.` component");
        }
        if *p == ".." {
            return bad("`..` component");
        }
        if p.len() > 255 {
            return bad("component longer than 255 bytes");
        }
        let stem = p.split('.').next().unwrap_or(p).trim_end();
        if DEVICE_NAMES.iter().any(|d| d.eq_ignore_ascii_case(stem)) {
            return bad("device name");
        }
    }
    Ok(parts)
}

/// Order in which a group of neighbouring blocks is sent: shard 0 of every block, then shard 1 of every
/// block, and so on, so that a burst of lost frames is spread over the whole group.
pub fn interleave(shards_per_block: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let max = shards_per_block.iter().copied().max().unwrap_or(0);
    (0..max).flat_map(move |s| {
        shards_per_block
            .iter()
            .enumerate()
            .filter(move |(_, n)| s < **n)
            .map(move |(b, _)| (b, s))
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("block {0} does not exist in this object")]
    Block(u32),
    #[error("shard {1} does not exist in block {0}")]
    Shard(u32, u16),
    #[error("shard of {0} bytes, expected {1}")]
    Length(usize, usize),
}

/// What the receiver must do after a shard was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing new (duplicate or finished block).
    Nothing,
    /// Stored; the block is still short of shards.
    Stored,
    /// The block can be decoded now: call `finish_block`.
    Ready,
    /// The block was set aside earlier with these data shards on disk: read them back with `restore`,
    /// then offer the shard again.
    Restore(Vec<usize>),
}

/// The receiver's state for one object.
pub struct Assembly {
    pub meta: ObjectMeta,
    geometry: Geometry,
    blocks: u64,
    done: Vec<bool>,
    done_count: u64,
    active: BTreeMap<u32, BlockAssembly>,
    /// Blocks set aside unfinished: the data shards already written at their place in the partial file.
    spilled: BTreeMap<u32, Vec<usize>>,
    /// Blocks decoded and handed to a writer, not yet confirmed on disk: neither collecting nor done.
    writing: BTreeSet<u32>,
}

/// Buffers of written blocks, reused for the next blocks of any object (a block buffer is ~210 KiB at
/// the default geometry: allocating and zeroing one per block was ~4 % of the receiver). One pool for
/// all objects, bounded in bytes: a pool per object kept up to 16 buffers for every object in
/// progress, which nothing bounded (4096 objects of a compromised sender: gigabytes).
pub struct Buffers {
    free: Vec<Vec<u8>>,
    bytes: usize,
    max_bytes: usize,
}

impl Buffers {
    /// A pool holding at most `max_bytes` of buffers (their capacity).
    pub fn new(max_bytes: usize) -> Self {
        Buffers {
            free: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// A buffer to reuse for `need` bytes: one holding at least that and at most twice it (a block
    /// holds its buffer's whole capacity, so a far larger one would be memory spent on little), or an
    /// empty one.
    pub fn take(&mut self, need: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| b.capacity() >= need && b.capacity() <= need.saturating_mul(2);
        match self.free.iter().position(fits) {
            Some(i) => {
                let b = self.free.swap_remove(i);
                self.bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    /// Keep `buf` for reuse if there is room; else it is freed.
    pub fn give(&mut self, buf: Vec<u8>) {
        if self.bytes + buf.capacity() <= self.max_bytes {
            self.bytes += buf.capacity();
            self.free.push(buf);
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A ready block taken out for writing (`Assembly::take_ready`, `take_ready_undecoded`).
pub struct Taken {
    /// Where the block goes in the object.
    pub offset: u64,
    /// The block's data is `buf[start..start + len]`; `start` is page-aligned in memory
    /// (`fec::DATA_ALIGN`), for direct I/O straight from the buffer.
    pub buf: Vec<u8>,
    pub start: usize,
    pub len: usize,
    /// What rebuilding the missing data shards in `buf[start..]` needs (`take_ready_undecoded` only).
    pub recover: Option<crate::fec::Recovery>,
}

/// What of an `Assembly` is persisted, so that a restarted receiver loses nothing it had.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AssemblyState {
    pub meta: ObjectMeta,
    pub done: Vec<u32>,
    pub spilled: Vec<(u32, Vec<u32>)>,
}

/// Version byte of the receiver's saved state of a partial object (docs/protocol.md §13.2).
pub const PARTIAL_STATE_VERSION: u8 = 1;

/// Why a saved partial state cannot be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("empty state file")]
    Empty,
    #[error("state file version {0} is not {PARTIAL_STATE_VERSION}")]
    Version(u8),
    #[error("state file does not decode")]
    Decode,
}

/// The bytes the receiver saves for a partial object: the version byte, then postcard of
/// `(sender key id, AssemblyState)`. Written here only, read back by `decode_partial_state`.
pub fn encode_partial_state(sender: KeyId, state: &AssemblyState) -> Vec<u8> {
    let mut bytes = vec![PARTIAL_STATE_VERSION];
    // postcard cannot fail on this type except by allocation failure
    bytes.extend(postcard::to_allocvec(&(sender.0, state)).unwrap_or_default());
    bytes
}

pub fn decode_partial_state(bytes: &[u8]) -> Result<(KeyId, AssemblyState), StateError> {
    let (&v, rest) = bytes.split_first().ok_or(StateError::Empty)?;
    if v != PARTIAL_STATE_VERSION {
        return Err(StateError::Version(v));
    }
    let (sender, st): ([u8; 8], AssemblyState) =
        postcard::from_bytes(rest).map_err(|_| StateError::Decode)?;
    Ok((KeyId(sender), st))
}

impl Assembly {
    pub fn new(meta: ObjectMeta) -> Result<Self, MetaError> {
        meta.check()?;
        let geometry = meta.geometry()?;
        let blocks = geometry.block_count(meta.size);
        Ok(Assembly {
            meta,
            geometry,
            blocks,
            done: vec![false; blocks as usize],
            done_count: 0,
            active: BTreeMap::new(),
            spilled: BTreeMap::new(),
            writing: BTreeSet::new(),
        })
    }

    pub fn from_state(state: AssemblyState) -> Result<Self, MetaError> {
        let mut a = Assembly::new(state.meta)?;
        for b in state.done {
            if let Some(d) = a.done.get_mut(b as usize) {
                if !*d {
                    *d = true;
                    a.done_count += 1;
                }
            }
        }
        for (b, shards) in state.spilled {
            if (b as u64) < a.blocks && !a.done[b as usize] {
                let k = a.geometry.data_in(a.meta.size, b as u64);
                a.spilled.insert(
                    b,
                    shards
                        .into_iter()
                        .map(|s| s as usize)
                        .filter(|s| *s < k)
                        .collect(),
                );
            }
        }
        Ok(a)
    }

    pub fn state(&self) -> AssemblyState {
        AssemblyState {
            meta: self.meta.clone(),
            done: (0..self.blocks as u32)
                .filter(|b| self.done[*b as usize])
                .collect(),
            spilled: self
                .spilled
                .iter()
                .map(|(b, v)| (*b, v.iter().map(|s| *s as u32).collect()))
                .collect(),
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn block_count(&self) -> u64 {
        self.blocks
    }

    pub fn done_count(&self) -> u64 {
        self.done_count
    }

    pub fn is_complete(&self) -> bool {
        self.done_count == self.blocks
    }

    pub fn is_done(&self, block: u32) -> bool {
        self.done.get(block as usize).copied().unwrap_or(true)
    }

    /// Could this shard add anything? Cheap, for skipping decryption of redundant frames.
    pub fn wants(&self, block: u32, shard: u16) -> bool {
        if self.is_done(block) || self.writing.contains(&block) {
            return false;
        }
        match self.active.get(&block) {
            Some(b) => !b.has(shard as usize),
            None => true,
        }
    }

    /// Offset of block `b` in the object.
    pub fn block_offset(&self, block: u32) -> u64 {
        block as u64 * self.geometry.block_bytes()
    }

    fn new_block(&mut self, block: u32, buffers: &mut Buffers) -> BlockAssembly {
        let k = self.geometry.data_in(self.meta.size, block as u64);
        let (m, s) = (self.geometry.parity_for(k), self.geometry.shard_size);
        BlockAssembly::with_buffer(k, m, s, buffers.take(BlockAssembly::buffer_bytes(k, m, s)))
    }

    /// Store a shard; a block it starts takes its buffer from `buffers`.
    pub fn insert(
        &mut self,
        block: u32,
        shard: u16,
        bytes: &[u8],
        buffers: &mut Buffers,
    ) -> Result<Step, ShardError> {
        if block as u64 >= self.blocks {
            return Err(ShardError::Block(block));
        }
        if bytes.len() != self.geometry.shard_size {
            return Err(ShardError::Length(bytes.len(), self.geometry.shard_size));
        }
        if self.done[block as usize] || self.writing.contains(&block) {
            return Ok(Step::Nothing);
        }
        if !self.active.contains_key(&block) {
            if let Some(on_disk) = self.spilled.get(&block) {
                return Ok(Step::Restore(on_disk.clone()));
            }
            let nb = self.new_block(block, buffers);
            if shard as usize >= nb.shards() {
                return Err(ShardError::Shard(block, shard));
            }
            self.active.insert(block, nb);
        }
        let Some(b) = self.active.get_mut(&block) else {
            return Ok(Step::Nothing);
        };
        if shard as usize >= b.shards() {
            return Err(ShardError::Shard(block, shard));
        }
        if !b.insert(shard as usize, bytes) {
            return Ok(Step::Nothing);
        }
        Ok(if b.ready() { Step::Ready } else { Step::Stored })
    }

    /// Bring back a set-aside block: `shards` are its data shards read from the partial file.
    pub fn restore(&mut self, block: u32, shards: &[(usize, Vec<u8>)], buffers: &mut Buffers) {
        let Some(_) = self.spilled.remove(&block) else {
            return;
        };
        let mut nb = self.new_block(block, buffers);
        for (i, bytes) in shards {
            nb.insert(*i, bytes);
        }
        self.active.insert(block, nb);
    }

    /// Decode a ready block; returns its offset and data (trimmed to the object's size). Call
    /// `mark_done` once the data is written.
    pub fn finish_block(
        &mut self,
        block: u32,
        decoder: &mut crate::fec::Decoder,
    ) -> Result<(u64, &[u8]), FecError> {
        let len = self.geometry.block_len(self.meta.size, block as u64) as usize;
        let offset = self.block_offset(block);
        let b = self
            .active
            .get_mut(&block)
            .ok_or_else(|| FecError::Decode(format!("block {block} not active")))?;
        let data = b.decode(decoder)?;
        Ok((offset, &data[..len.min(data.len())]))
    }

    /// Decode a ready block and take it out for writing. Until `written` is called the block accepts
    /// no shards and is not done.
    pub fn take_ready(
        &mut self,
        block: u32,
        decoder: &mut crate::fec::Decoder,
    ) -> Result<Taken, FecError> {
        let len = self.geometry.block_len(self.meta.size, block as u64) as usize;
        let offset = self.block_offset(block);
        let b = self
            .active
            .get_mut(&block)
            .ok_or_else(|| FecError::Decode(format!("block {block} not active")))?;
        let data_len = b.decode(decoder)?.len();
        let Some(b) = self.active.remove(&block) else {
            return Err(FecError::Decode(format!("block {block} not active")));
        };
        self.writing.insert(block);
        let start = b.start();
        Ok(Taken {
            offset,
            buf: b.into_buffer(),
            start,
            len: len.min(data_len),
            recover: None,
        })
    }

    /// As `take_ready`, with the decoding left to the caller: `recover` says what rebuilding the
    /// missing data shards needs (None when all are there); `len` counts the data once rebuilt.
    pub fn take_ready_undecoded(&mut self, block: u32) -> Result<Taken, FecError> {
        let len = self.geometry.block_len(self.meta.size, block as u64) as usize;
        let offset = self.block_offset(block);
        let Some(b) = self.active.remove(&block) else {
            return Err(FecError::Decode(format!("block {block} not active")));
        };
        if !b.ready() {
            self.active.insert(block, b);
            return Err(FecError::Decode(format!("block {block} is not ready")));
        }
        let data_len = b.data_len();
        let start = b.start();
        let (buf, recovery) = b.into_parts()?;
        self.writing.insert(block);
        Ok(Taken {
            offset,
            buf,
            start,
            len: len.min(data_len),
            recover: recovery,
        })
    }

    /// The writer is done with a block taken by `take_ready`: on success it is done; on failure it is
    /// missing again (a later pass or replay brings it). Its buffer is the caller's (`Buffers::give`).
    pub fn written(&mut self, block: u32, ok: bool) {
        if !self.writing.remove(&block) {
            return;
        }
        if ok {
            self.mark_done(block);
        }
    }

    /// Blocks handed to the writer and not yet confirmed.
    pub fn writing_count(&self) -> usize {
        self.writing.len()
    }

    pub fn mark_done(&mut self, block: u32) {
        self.active.remove(&block);
        self.spilled.remove(&block);
        if let Some(d) = self.done.get_mut(block as usize) {
            if !*d {
                *d = true;
                self.done_count += 1;
            }
        }
    }

    /// Blocks being collected, in order.
    pub fn active_blocks(&self) -> Vec<u32> {
        self.active.keys().copied().collect()
    }

    pub fn active_bytes(&self) -> usize {
        // what the blocks' buffers hold, not what their shards need: a reused buffer or the room to align
        // one is memory too
        self.active.values().map(BlockAssembly::allocated).sum()
    }

    /// Set an unfinished block aside to bound memory: returns its data shards present, which the caller
    /// writes at `block_offset + i * shard_size` in the partial file before calling `spilled`.
    pub fn evict(&mut self, block: u32) -> Option<Vec<(usize, Vec<u8>)>> {
        let b = self.active.remove(&block)?;
        let k = self.geometry.data_in(self.meta.size, block as u64);
        let shards = b
            .present()
            .filter(|(i, _)| *i < k)
            .map(|(i, s)| (i, s.to_vec()))
            .collect();
        Some(shards)
    }

    /// Record that these data shards of an evicted block are on disk (an empty list forgets the block).
    pub fn spilled(&mut self, block: u32, on_disk: Vec<usize>) {
        if !on_disk.is_empty() {
            self.spilled.insert(block, on_disk);
        }
    }

    /// Drop an active block entirely (its shards could not be kept, e.g. the disk is full).
    pub fn discard(&mut self, block: u32) {
        self.active.remove(&block);
    }

    /// Blocks not finished, as inclusive ranges.
    pub fn missing(&self) -> Vec<(u32, u32)> {
        crate::gap::ranges(
            self.done
                .iter()
                .enumerate()
                .filter(|(_, d)| !**d)
                .map(|(i, _)| i as u32),
        )
    }
}

/// Sender counters carried in heartbeat frames, so the receiver can judge the link while it is idle.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// Frames sealed so far in this session, this heartbeat included.
    pub frames_sent: u64,
    /// Objects finished (all passes) since the sender started.
    pub objects_sent: u64,
    /// Object being sent now, if any.
    pub current_object: Option<u64>,
    /// The configured pace, bits per second.
    pub rate_bps: u64,
    /// Seconds between heartbeats, so the receiver knows when silence means the link is down.
    pub interval_ms: u32,
}

pub fn encode_heartbeat(hb: &Heartbeat) -> Vec<u8> {
    postcard::to_allocvec(hb).unwrap_or_default()
}

pub fn decode_heartbeat(bytes: &[u8]) -> Option<Heartbeat> {
    postcard::from_bytes(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared pool of block buffers never holds more than its bound in bytes, however many are
    /// given back (a compromised sender's thousands of objects each finishing blocks), and a buffer
    /// given back is the one the next block takes (no new allocation).
    #[test]
    fn block_buffers_are_reused_and_the_pool_stays_within_its_bytes() {
        let mut pool = Buffers::new(1 << 20);
        for _ in 0..10_000 {
            pool.give(vec![0u8; 200 << 10]);
            assert!(pool.bytes() <= 1 << 20);
        }
        assert_eq!(pool.free.len(), 5);
        let b = pool.take(150 << 10);
        assert!(b.capacity() >= 200 << 10);
        assert_eq!(pool.free.len(), 4);
        // the buffer given back is the one taken next
        let mut one = Buffers::new(1 << 20);
        one.give(b);
        let at = one.free[0].as_ptr();
        let again = one.take(200 << 10);
        assert_eq!(again.as_ptr(), at);
        // neither a buffer too small nor one more than twice the need is handed out
        assert_eq!(pool.take(300 << 10).capacity(), 0);
        assert_eq!(pool.take(90 << 10).capacity(), 0);
        let mut empty = Buffers::new(0);
        empty.give(vec![1u8; 10]);
        assert_eq!((empty.bytes(), empty.take(10).capacity()), (0, 0));
        // an assembly's block built in a reused buffer holds what was inserted, not the old content
        // 64-byte shards, 4 + 2: one block of 3 data shards
        let (m, _) = crate::testkit::object(1, "f", 3 * 64, false);
        let g = m.geometry().unwrap();
        let need = BlockAssembly::buffer_bytes(3, g.parity_for(3), 64);
        let mut a = Assembly::new(m).unwrap();
        let mut pool = Buffers::new(1 << 20);
        pool.give(vec![0u8; 100 * need]);
        pool.give(vec![0xAB; need]);
        for i in 0..3u16 {
            a.insert(0, i, &[i as u8; 64], &mut pool).unwrap();
        }
        assert_eq!(
            pool.bytes(),
            100 * need,
            "the block took the buffer of its size, not the big one"
        );
        assert_eq!(a.active_bytes(), need);
        let t = a.take_ready(0, &mut Default::default()).unwrap();
        let (buf, start, len) = (t.buf, t.start, t.len);
        assert_eq!(len, 3 * 64);
        let want: Vec<u8> = (0..3u8).flat_map(|i| [i; 64]).collect();
        assert_eq!(&buf[start..start + len], &want[..]);
    }

    /// A sender choosing the smallest blocks (two 64-byte shards, no parity) and sending one shard of
    /// each: every open block holds exactly its 128 bytes (no page of room to align it), and the
    /// memory the receiver's bound counts (`active_bytes`) is what the buffers hold.
    #[test]
    fn tiny_blocks_hold_no_page_each_and_are_counted_as_held() {
        let m = ObjectMeta {
            size: 128 * 10_000,
            data_shards: 2,
            parity_shards: 0,
            ..crate::testkit::object(2, "tiny", 0, false).0
        };
        let mut a = Assembly::new(m).unwrap();
        let mut pool = Buffers::new(1 << 20);
        for b in 0..10_000u32 {
            a.insert(b, 0, &[1u8; 64], &mut pool).unwrap();
        }
        assert_eq!(a.active_blocks().len(), 10_000);
        assert_eq!(a.active_bytes(), 10_000 * 128);
    }

    #[test]
    fn hostile_names_are_refused() {
        for n in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "nul\0byte",
            "C:evil",
            "CON",
            "dir/aux.txt",
            "lpt1",
            "back\\slash",
            "new\nline",
            "invoice\u{202E}fdp.exe",
            "a/\u{2066}b\u{2069}",
            "zero\u{200B}width",
            "rtl\u{200F}mark",
            "\u{FEFF}bom",
            "soft\u{AD}hyphen",
            "line\u{2028}sep",
        ] {
            assert!(safe_name(n).is_err(), "{n:?} accepted");
        }
        assert_eq!(safe_name("a/b c/d.txt").unwrap(), vec!["a", "b c", "d.txt"]);
        assert!(safe_name("..foo/bar..").is_ok());
        // scripts and marks people use in names stay accepted
        assert!(safe_name("Bericht-Übersicht/日本語 ملف.pdf").is_ok());
    }

    #[test]
    fn interleaving_spreads_blocks() {
        let order: Vec<_> = interleave(&[3, 1, 2]).collect();
        assert_eq!(order, vec![(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]);
    }

    #[test]
    fn metadata_that_would_make_the_receiver_allocate_gigabytes_is_refused() {
        // the fuzzer's finding: 64 x (2^32 - 1) bytes in 64-byte shards, one data shard a block
        let m = ObjectMeta {
            id: 1,
            name: "big.bin".into(),
            size: 64 * (u32::MAX as u64),
            hash: [1; 32],
            kind: ObjectKind::File,
            shard_size: 64,
            data_shards: 1,
            parity_shards: 0,
            mtime: 0,
        };
        assert!(matches!(m.check(), Err(MetaError::Blocks(_))));
        assert!(matches!(
            ObjectMeta::decode(&m.encode()),
            Err(MetaError::Blocks(_))
        ));
        // 32768 + 32768 shards of 8960 bytes: 560 MiB for one block
        let huge = ObjectMeta {
            size: 1 << 20,
            shard_size: 8960,
            data_shards: 32768,
            parity_shards: 32768,
            ..m.clone()
        };
        assert!(matches!(huge.check(), Err(MetaError::BlockBytes(_))));
        // the defaults and jumbo frames pass, up to a terabyte
        let ok = ObjectMeta {
            size: 1 << 40,
            shard_size: 1408,
            data_shards: 128,
            parity_shards: 24,
            ..m
        };
        assert_eq!(ok.check(), Ok(()));
    }
}
