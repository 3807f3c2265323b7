//! Forward error correction: systematic Reed-Solomon erasure coding per block (`reed-solomon-simd`,
//! O(n log n)). A block is up to `k` data shards plus parity shards; any `k` of them rebuild the data, and
//! since the code is systematic a block whose data shards all arrived needs no decoding at all.
//!
//! Rebuilding a block that lost a few data shards (what per-datagram loss of a percent or two leaves:
//! 1-3 of 128) does not take the crate's decoder, whose cost is the same for one shard lost as for all
//! (a transform over every shard of the block: ~0.27 ms for a 128+24 block of 1408-byte shards here).
//! The code is linear over GF(2^16), position by position, so each parity shard is a fixed combination
//! of the data shards, `p_r = sum_i c[r][i] * d_i`; with `e` data shards lost and `e` parity shards
//! present, subtracting what the present data contribute leaves `e` equations in the `e` unknowns,
//! solved with the inverse of an `e` x `e` matrix of those coefficients. That is about `e` multiply-adds
//! of each present shard, in the crate's own SIMD field arithmetic (`engine::Engine::mul`): 11 µs for one
//! data shard lost at 128+24 (25x faster than the crate), 17 µs for two, 166 µs for 16. The coefficients are read off one encoding by the crate itself
//! (data shard `i` the unit at symbol `i`, zero elsewhere), so this follows the crate's code exactly;
//! the tests check it against the crate's decoder byte for byte. More than `FEW` lost, or a matrix that
//! will not invert (an MDS code has none), and the crate decodes.
//!
//! Short blocks (the tail of an object, or small objects) get parity in proportion, but never fewer than
//! `MIN_PARITY`, so a one-shard approval envelope still survives the loss of a few frames.

use reed_solomon_simd::engine::{tables, DefaultEngine, Engine, GfElement, GF_MODULUS};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Most lost data shards a block is rebuilt from by solving for them (see the module's text); beyond
/// this the crate's decoder is as fast or faster at 128+24 shards (`cargo bench -p diode-proto --bench
/// kernels -- rebuild`: solving 16 lost takes 166 µs, the crate 271 µs whatever is lost).
pub const FEW: usize = 16;

/// What rebuilding blocks keeps between them: the crate's decoder (its tables) and, for few lost
/// shards, the parity coefficients of the block shapes seen. The receiver holds one per thread that
/// rebuilds and lends it to `Assembly::take_ready` or `Recovery::rebuild`.
pub struct Decoder {
    rs: Option<ReedSolomonDecoder>,
    few: Option<Few>,
    /// Most lost data shards solved for (`FEW`; 0: the crate's decoder always).
    max_few: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(FEW)
    }
}

impl Decoder {
    /// A decoder that solves for up to `max_few` lost data shards itself (0: never).
    pub fn new(max_few: usize) -> Self {
        Decoder {
            rs: None,
            few: None,
            max_few,
        }
    }
}

/// Parity coefficients kept per block shape; a few shapes (full blocks, an object's tail) recur.
const SHAPES_KEPT: usize = 8;
/// Largest block solved for: finding the coefficients encodes `k` shards of `2k` bytes and keeps
/// `k * m` of them, so a block shape a compromised sender may declare (up to 32768 + 32768 shards)
/// would cost gigabytes. Bounded here to 2 MiB of encoding and 512 KiB of coefficients per shape (the
/// default 128 + 24 needs 32 KiB and 6 KiB); larger blocks go to the crate's decoder.
const FEW_MAX_DATA: usize = 1024;
const FEW_MAX_COEFFICIENTS: usize = 1 << 18;

/// A block shape (data, parity shards) and its parity coefficients.
type Shape = ((usize, usize), Vec<GfElement>);

/// The few-lost-shards solver's state: the SIMD engine, coefficients per shape, work buffers.
struct Few {
    engine: DefaultEngine,
    /// (data, parity) -> `c[r * data + i]`, the coefficient of data shard `i` in parity shard `r`;
    /// most recently used last.
    shapes: Vec<Shape>,
    /// `e` accumulators, then one shard being multiplied, in the crate's 64-byte chunk layout.
    work: Vec<[u8; 64]>,
}

pub const MIN_PARITY: usize = 4;
/// reed-solomon-simd allows at most 32768 original and 32768 recovery shards per block.
pub const MAX_SHARDS: usize = 32768;

/// The FEC shape of an object: shard size and data/parity shards per full block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub shard_size: usize,
    pub data_shards: usize,
    pub parity_shards: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FecError {
    #[error("shard size {0} must be even and between 64 and 8960 bytes")]
    ShardSize(usize),
    #[error("data shards per block must be 1..=32768 and parity shards 0..=32768 (got {0}+{1})")]
    Shape(usize, usize),
    #[error("block cannot be decoded: {0}")]
    Decode(String),
}

impl Geometry {
    pub fn new(
        shard_size: usize,
        data_shards: usize,
        parity_shards: usize,
    ) -> Result<Self, FecError> {
        if !shard_size.is_multiple_of(2) || !(64..=8960).contains(&shard_size) {
            return Err(FecError::ShardSize(shard_size));
        }
        if !(1..=MAX_SHARDS).contains(&data_shards) || parity_shards > MAX_SHARDS {
            return Err(FecError::Shape(data_shards, parity_shards));
        }
        Ok(Geometry {
            shard_size,
            data_shards,
            parity_shards,
        })
    }

    /// Bytes of object data in one full block.
    pub fn block_bytes(&self) -> u64 {
        (self.shard_size * self.data_shards) as u64
    }

    /// Blocks for an object of `size` bytes (an empty object still has one block of one zero shard).
    pub fn block_count(&self, size: u64) -> u64 {
        size.div_ceil(self.block_bytes()).max(1)
    }

    /// Data bytes of block `b` (0 for the single block of an empty object).
    pub fn block_len(&self, size: u64, b: u64) -> u64 {
        size.saturating_sub(b * self.block_bytes())
            .min(self.block_bytes())
    }

    /// Data shards of block `b`.
    pub fn data_in(&self, size: u64, b: u64) -> usize {
        (self.block_len(size, b).div_ceil(self.shard_size as u64) as usize).max(1)
    }

    /// Parity shards of a block with `data` data shards: in proportion for full blocks, but a short
    /// block (a small object, the tail of a large one) gets as many as it has data shards, up to the
    /// full `parity_shards`, and never fewer than `MIN_PARITY`: proportional parity made a 21-shard
    /// block 0.7 % likely to be lost at 5 % loss, against 2e-7 for a full block (measured on the
    /// emulated diode: 5 of 600 such files lost).
    pub fn parity_for(&self, data: usize) -> usize {
        if self.parity_shards == 0 {
            return 0;
        }
        let p = self.parity_shards;
        let proportional = (p * data).div_ceil(self.data_shards);
        proportional
            .max(p.min(data))
            .max(MIN_PARITY.min(p))
            .min(MAX_SHARDS)
    }
}

/// Computes parity shards; keeps the encoder's work buffers between blocks.
pub struct BlockEncoder {
    rs: Option<ReedSolomonEncoder>,
}

impl Default for BlockEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockEncoder {
    pub fn new() -> Self {
        BlockEncoder { rs: None }
    }

    /// `data` holds the block's data shards back to back (the last padded with zeros to a whole shard);
    /// `parity` is resized to hold the parity shards back to back.
    pub fn encode(
        &mut self,
        data: &[u8],
        shard_size: usize,
        parity_count: usize,
        parity: &mut Vec<u8>,
    ) -> Result<(), FecError> {
        parity.clear();
        if parity_count == 0 {
            return Ok(());
        }
        let k = data.len() / shard_size;
        let err = |e: reed_solomon_simd::Error| FecError::Decode(e.to_string());
        let rs = match self.rs.as_mut() {
            Some(rs) => {
                rs.reset(k, parity_count, shard_size).map_err(err)?;
                rs
            }
            None => self
                .rs
                .insert(ReedSolomonEncoder::new(k, parity_count, shard_size).map_err(err)?),
        };
        for shard in data.chunks_exact(shard_size) {
            rs.add_original_shard(shard).map_err(err)?;
        }
        let result = rs.encode().map_err(err)?;
        parity.reserve(parity_count * shard_size);
        for p in result.recovery_iter() {
            parity.extend_from_slice(p);
        }
        Ok(())
    }
}

/// Where in memory a large block's shards start: on a boundary of this many bytes (a page), so that a
/// driver can write the block's data with direct I/O straight from the buffer, without copying it to
/// an aligned one first.
pub const DATA_ALIGN: usize = 4096;
/// Blocks of at least this many bytes are aligned (at most 1/16 more memory for the room it takes);
/// smaller ones start at 0 with no room added (a sender choosing tiny blocks must not make the
/// receiver hold a page for each).
pub const ALIGN_FROM: usize = 16 * DATA_ALIGN;

/// Shards of one block as they arrive, in one buffer (data shards, then parity shards), from
/// `buf[start]`, the first `DATA_ALIGN`-aligned address in it.
pub struct BlockAssembly {
    data: usize,
    parity: usize,
    shard_size: usize,
    buf: Vec<u8>,
    start: usize,
    present: Vec<bool>,
    count: usize,
    data_count: usize,
}

impl BlockAssembly {
    pub fn new(data: usize, parity: usize, shard_size: usize) -> Self {
        Self::with_buffer(data, parity, shard_size, Vec::new())
    }

    /// Like `new`, reusing `buf`'s allocation (its content does not matter: every shard slot is written
    /// before it is read).
    pub fn with_buffer(data: usize, parity: usize, shard_size: usize, mut buf: Vec<u8>) -> Self {
        let bytes = (data + parity) * shard_size;
        let need = Self::buffer_bytes(data, parity, shard_size);
        // room to start on an aligned address; the allocation does not move after this
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let start = if need > bytes {
            buf.as_ptr().align_offset(DATA_ALIGN).min(DATA_ALIGN)
        } else {
            0
        };
        BlockAssembly {
            data,
            parity,
            shard_size,
            buf,
            start,
            present: vec![false; data + parity],
            count: 0,
            data_count: 0,
        }
    }

    pub fn shards(&self) -> usize {
        self.data + self.parity
    }

    /// Bytes a buffer for a block of this shape needs: its shards, and room to align them for a block
    /// of at least `ALIGN_FROM` bytes.
    pub fn buffer_bytes(data: usize, parity: usize, shard_size: usize) -> usize {
        let bytes = (data + parity) * shard_size;
        if bytes >= ALIGN_FROM {
            bytes + DATA_ALIGN
        } else {
            bytes
        }
    }

    /// Bytes of memory the block holds (its buffer's capacity: what a memory bound must count).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    pub fn has(&self, shard: usize) -> bool {
        self.present.get(shard).copied().unwrap_or(true)
    }

    /// Store one shard; false if it was already there or is out of range.
    pub fn insert(&mut self, shard: usize, bytes: &[u8]) -> bool {
        if shard >= self.shards() || self.present[shard] || bytes.len() != self.shard_size {
            return false;
        }
        let at = self.start + shard * self.shard_size;
        self.buf[at..at + self.shard_size].copy_from_slice(bytes);
        self.present[shard] = true;
        self.count += 1;
        if shard < self.data {
            self.data_count += 1;
        }
        true
    }

    /// Give the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Enough shards to rebuild the data?
    pub fn ready(&self) -> bool {
        self.count >= self.data
    }

    /// Indices and bytes of the shards present (for spilling a block to disk).
    pub fn present(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.present
            .iter()
            .enumerate()
            .filter(|(_, p)| **p)
            .map(|(i, _)| {
                let at = self.start + i * self.shard_size;
                (i, &self.buf[at..at + self.shard_size])
            })
    }

    /// Rebuild missing data shards if needed and return the data shards back to back.
    pub fn decode(&mut self, decoder: &mut Decoder) -> Result<&[u8], FecError> {
        self.check_ready()?;
        if self.data_count < self.data {
            self.recovery()
                .rebuild(&mut self.buf[self.start..], decoder)?;
            for p in &mut self.present[..self.data] {
                *p = true;
            }
            self.data_count = self.data;
        }
        Ok(&self.buf[self.start..self.start + self.data * self.shard_size])
    }

    /// Where the shards start in the buffer (`into_buffer`, `into_parts`).
    pub fn start(&self) -> usize {
        self.start
    }

    /// Bytes of the data shards back to back (the block's data, padded to whole shards).
    pub fn data_len(&self) -> usize {
        self.data * self.shard_size
    }

    fn check_ready(&self) -> Result<(), FecError> {
        if !self.ready() {
            return Err(FecError::Decode(format!(
                "{} of {} shards",
                self.count, self.data
            )));
        }
        Ok(())
    }

    fn recovery(&self) -> Recovery {
        Recovery {
            data: self.data,
            parity: self.parity,
            shard_size: self.shard_size,
            present: self.present.clone(),
        }
    }

    /// A ready block's buffer (shards at their places from `start()`: data, then parity) and, when data
    /// shards are missing, what rebuilding them needs: the decoding is left to whoever holds the buffer
    /// (the receiver's writer thread), so that it does not hold up the thread that takes frames.
    pub fn into_parts(self) -> Result<(Vec<u8>, Option<Recovery>), FecError> {
        self.check_ready()?;
        let recovery = (self.data_count < self.data).then(|| self.recovery());
        Ok((self.buf, recovery))
    }
}

/// What rebuilding a block's missing data shards needs besides its buffer: the shape and which shards
/// are present. `BlockAssembly::into_parts` makes it; `rebuild` runs the Reed-Solomon decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub data: usize,
    pub parity: usize,
    pub shard_size: usize,
    pub present: Vec<bool>,
}

impl Recovery {
    /// Write the missing data shards into `buf` (laid out as `BlockAssembly` holds it). At least `data`
    /// shards must be present.
    pub fn rebuild(&self, buf: &mut [u8], decoder: &mut Decoder) -> Result<(), FecError> {
        let s = self.shard_size;
        let shards = self.data + self.parity;
        if self.present.len() != shards || buf.len() < shards * s {
            return Err(FecError::Decode("a block of another shape".into()));
        }
        if !s.is_multiple_of(2) {
            return Err(FecError::ShardSize(s));
        }
        let lost = self.present[..self.data].iter().filter(|p| !**p).count();
        if lost == 0 {
            return Ok(());
        }
        if lost <= decoder.max_few
            && self.data <= FEW_MAX_DATA
            && self.data * self.parity <= FEW_MAX_COEFFICIENTS
        {
            let few = decoder.few.get_or_insert_with(|| Few {
                engine: DefaultEngine::new(),
                shapes: Vec::new(),
                work: Vec::new(),
            });
            if few.rebuild(self, buf)? {
                return Ok(());
            }
        }
        let err = |e: reed_solomon_simd::Error| FecError::Decode(e.to_string());
        let rs = match decoder.rs.as_mut() {
            Some(rs) => {
                rs.reset(self.data, self.parity, s).map_err(err)?;
                rs
            }
            None => decoder
                .rs
                .insert(ReedSolomonDecoder::new(self.data, self.parity, s).map_err(err)?),
        };
        for (i, _) in self.present.iter().enumerate().filter(|(_, p)| **p) {
            let shard = &buf[i * s..(i + 1) * s];
            if i < self.data {
                rs.add_original_shard(i, shard).map_err(err)?;
            } else {
                rs.add_recovery_shard(i - self.data, shard).map_err(err)?;
            }
        }
        let result = rs.decode().map_err(err)?;
        for (i, shard) in result.restored_original_iter() {
            if i < self.data {
                buf[i * s..(i + 1) * s].copy_from_slice(shard);
            }
        }
        Ok(())
    }
}

impl Few {
    /// Rebuild the lost data shards of `r`'s block in `buf` by solving for them; false (nothing
    /// written) where that cannot be done and the crate's decoder must.
    fn rebuild(&mut self, r: &Recovery, buf: &mut [u8]) -> Result<bool, FecError> {
        let (k, s) = (r.data, r.shard_size);
        let lost: Vec<usize> = (0..k).filter(|&i| !r.present[i]).collect();
        let e = lost.len();
        let rows: Vec<usize> = (0..r.parity)
            .filter(|&p| r.present[k + p])
            .take(e)
            .collect();
        if rows.len() < e {
            return Ok(false);
        }
        let t = tables::get_exp_log();
        let Few {
            engine,
            shapes,
            work,
        } = self;
        let coef = coefficients(shapes, k, r.parity)?;
        // the e x e system: parity row rows[a], unknown lost[b]
        let m: Vec<GfElement> = rows
            .iter()
            .flat_map(|&p| lost.iter().map(move |&i| coef[p * k + i]))
            .collect();
        let Some(inv) = invert(m, e, t) else {
            return Ok(false);
        };
        let chunks = s.div_ceil(64);
        work.clear();
        work.resize((e + 1) * chunks, [0; 64]);
        let (acc, tmp) = work.split_at_mut(e * chunks);
        // acc[a] = parity rows[a] minus what the present data shards put in it
        for (a, &p) in rows.iter().enumerate() {
            load(&mut acc[a * chunks..(a + 1) * chunks], shard(buf, k + p, s));
        }
        for i in (0..k).filter(|&i| r.present[i]) {
            for (a, &p) in rows.iter().enumerate() {
                let c = coef[p * k + i];
                if c != 0 {
                    load(tmp, shard(buf, i, s));
                    engine.mul(tmp, t.log[c as usize]);
                    xor(&mut acc[a * chunks..(a + 1) * chunks], tmp);
                }
            }
        }
        // lost[b] = sum over a of inv[b][a] * acc[a]
        let mut out = vec![[0u8; 64]; chunks];
        for (b, &i) in lost.iter().enumerate() {
            out.fill([0; 64]);
            for a in 0..e {
                let c = inv[b * e + a];
                if c != 0 {
                    tmp.copy_from_slice(&acc[a * chunks..(a + 1) * chunks]);
                    engine.mul(tmp, t.log[c as usize]);
                    xor(&mut out, tmp);
                }
            }
            store(&out, &mut buf[i * s..(i + 1) * s]);
        }
        Ok(true)
    }
}

/// The parity coefficients of a block of `k` data and `m` parity shards, `c[r * k + i]`: one
/// encoding by the crate in which data shard `i` is the field's unit at symbol `i` and zero
/// elsewhere, so that symbol `i` of parity shard `r` is `c[r][i]`.
fn coefficients(shapes: &mut Vec<Shape>, k: usize, m: usize) -> Result<&[GfElement], FecError> {
    match shapes.iter().position(|(shape, _)| *shape == (k, m)) {
        Some(at) => {
            let kept = shapes.remove(at);
            shapes.push(kept);
        }
        None => {
            let err = |e: reed_solomon_simd::Error| FecError::Decode(e.to_string());
            let one = tables::get_exp_log().exp[0];
            let size = k.div_ceil(32) * 64;
            let mut enc = ReedSolomonEncoder::new(k, m, size).map_err(err)?;
            let mut unit = vec![0u8; size];
            for i in 0..k {
                unit.fill(0);
                let at = i / 32 * 64 + i % 32;
                unit[at] = one as u8;
                unit[at + 32] = (one >> 8) as u8;
                enc.add_original_shard(&unit).map_err(err)?;
            }
            let encoded = enc.encode().map_err(err)?;
            let mut coef = vec![0; m * k];
            for (r, p) in encoded.recovery_iter().enumerate() {
                for i in 0..k {
                    let at = i / 32 * 64 + i % 32;
                    coef[r * k + i] = GfElement::from(p[at]) | GfElement::from(p[at + 32]) << 8;
                }
            }
            if shapes.len() >= SHAPES_KEPT {
                shapes.remove(0);
            }
            shapes.push(((k, m), coef));
        }
    }
    Ok(shapes.last().map_or(&[][..], |(_, c)| &c[..]))
}

fn shard(buf: &[u8], i: usize, s: usize) -> &[u8] {
    &buf[i * s..(i + 1) * s]
}

/// A shard into the crate's layout: whole 64-byte chunks as they are (32 low bytes, then the 32 high
/// bytes of the same symbols); a tail of `t` bytes as its first `t/2` bytes low, the rest high.
fn load(dst: &mut [[u8; 64]], shard: &[u8]) {
    let whole = shard.len() / 64;
    dst[..whole]
        .as_flattened_mut()
        .copy_from_slice(&shard[..whole * 64]);
    let tail = &shard[whole * 64..];
    if !tail.is_empty() {
        let (lo, hi) = tail.split_at(tail.len() / 2);
        let last = &mut dst[whole];
        *last = [0; 64];
        last[..lo.len()].copy_from_slice(lo);
        last[32..32 + hi.len()].copy_from_slice(hi);
    }
}

/// The inverse of `load`.
fn store(src: &[[u8; 64]], shard: &mut [u8]) {
    let whole = shard.len() / 64;
    let (head, tail) = shard.split_at_mut(whole * 64);
    head.copy_from_slice(src[..whole].as_flattened());
    if !tail.is_empty() {
        let half = tail.len() / 2;
        let last = &src[whole];
        tail[..half].copy_from_slice(&last[..half]);
        tail[half..].copy_from_slice(&last[32..32 + half]);
    }
}

fn xor(acc: &mut [[u8; 64]], x: &[[u8; 64]]) {
    for (a, b) in acc.as_flattened_mut().iter_mut().zip(x.as_flattened()) {
        *a ^= b;
    }
}

/// `a * b` in the crate's field.
fn gf_mul(a: GfElement, b: GfElement, t: &tables::ExpLog) -> GfElement {
    if b == 0 {
        0
    } else {
        tables::mul(a, t.log[b as usize], &t.exp, &t.log)
    }
}

/// The inverse of the `n` x `n` matrix `m` (row-major) over the crate's field, by Gauss-Jordan
/// elimination; None if it is singular.
fn invert(mut m: Vec<GfElement>, n: usize, t: &tables::ExpLog) -> Option<Vec<GfElement>> {
    let one = t.exp[0];
    let mut inv = vec![0; n * n];
    for i in 0..n {
        inv[i * n + i] = one;
    }
    for col in 0..n {
        let pivot = (col..n).find(|&r| m[r * n + col] != 0)?;
        for j in 0..n {
            m.swap(col * n + j, pivot * n + j);
            inv.swap(col * n + j, pivot * n + j);
        }
        // scale the pivot row to 1: multiply by the pivot's inverse
        let p = m[col * n + col];
        let p_inv = t.exp[(GF_MODULUS - t.log[p as usize]) as usize];
        for j in 0..n {
            m[col * n + j] = gf_mul(m[col * n + j], p_inv, t);
            inv[col * n + j] = gf_mul(inv[col * n + j], p_inv, t);
        }
        for r in (0..n).filter(|&r| r != col) {
            let f = m[r * n + col];
            if f != 0 {
                for j in 0..n {
                    m[r * n + j] ^= gf_mul(m[col * n + j], f, t);
                    inv[r * n + j] ^= gf_mul(inv[col * n + j], f, t);
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_small_and_large_objects() {
        let g = Geometry::new(1408, 128, 24).unwrap();
        assert_eq!(g.block_count(0), 1);
        assert_eq!(g.data_in(0, 0), 1);
        assert_eq!(g.block_count(1), 1);
        assert_eq!(g.parity_for(1), 4);
        assert_eq!(g.parity_for(128), 24);
        assert_eq!(g.parity_for(21), 21);
        assert_eq!(g.parity_for(86), 24);
        assert_eq!(g.block_count(1408 * 128 + 1), 2);
        assert_eq!(g.data_in(1408 * 128 + 1, 1), 1);
        assert!(Geometry::new(1407, 128, 24).is_err());
    }

    /// A large block's shards start page-aligned in memory, in a fresh buffer and in a recycled one of
    /// any size or alignment, and what comes out is the shards as they went in. A small block starts
    /// at 0 in a buffer of exactly its shards (no page of room per block), and what a block holds is
    /// its buffer's capacity, room included.
    #[test]
    fn a_block_s_data_starts_page_aligned_in_any_buffer() {
        let (s, k, m) = (1408, 48, 8);
        assert!((k + m) * s >= ALIGN_FROM);
        let data: Vec<u8> = (0..k * s).map(|i| (i * 31 % 253) as u8).collect();
        for given in [
            Vec::new(),
            vec![7u8; 10],
            vec![1u8; 3 * s + 4097],
            vec![0u8; 90 * s],
        ] {
            let mut b = BlockAssembly::with_buffer(k, m, s, given);
            for i in 0..k {
                b.insert(i, &data[i * s..(i + 1) * s]);
            }
            let start = b.start();
            assert!(b.allocated() >= (k + m) * s + start);
            assert_eq!(b.decode(&mut Decoder::default()).unwrap(), &data[..]);
            let (buf, recovery) = b.into_parts().unwrap();
            assert!(recovery.is_none());
            assert_eq!(buf[start..].as_ptr() as usize % DATA_ALIGN, 0);
            assert_eq!(&buf[start..start + k * s], &data[..]);
        }
        let small = BlockAssembly::with_buffer(2, 0, 64, Vec::new());
        assert_eq!((small.start(), small.allocated()), (0, 128));
    }

    #[test]
    fn rebuilds_from_any_k_shards() {
        let s = 64;
        let data: Vec<u8> = (0..10 * s).map(|i| (i * 7 % 251) as u8).collect();
        let mut parity = Vec::new();
        BlockEncoder::new()
            .encode(&data, s, 4, &mut parity)
            .unwrap();
        let mut b = BlockAssembly::new(10, 4, s);
        // lose data shards 0, 3, 5, 9: exactly the parity budget
        for i in [1, 2, 4, 6, 7, 8] {
            b.insert(i, &data[i * s..(i + 1) * s]);
        }
        assert!(!b.ready());
        for p in 0..4 {
            b.insert(10 + p, &parity[p * s..(p + 1) * s]);
        }
        let mut dec = Decoder::default();
        assert_eq!(b.decode(&mut dec).unwrap(), &data[..]);
    }

    /// A block of `k` data shards of `s` bytes and `m` parity shards, with the data shards in `lost`
    /// and all parity shards but `parity_kept` of them withheld; decoded with `dec`, which must give
    /// back the data byte for byte.
    fn lose_and_rebuild(
        k: usize,
        m: usize,
        s: usize,
        lost: &[usize],
        parity_kept: &[usize],
        dec: &mut Decoder,
        rng: &mut impl rand::Rng,
    ) {
        let data: Vec<u8> = (0..k * s).map(|_| rng.random()).collect();
        let mut parity = Vec::new();
        BlockEncoder::new()
            .encode(&data, s, m, &mut parity)
            .unwrap();
        let mut b = BlockAssembly::new(k, m, s);
        for i in (0..k).filter(|i| !lost.contains(i)) {
            b.insert(i, &data[i * s..(i + 1) * s]);
        }
        for &p in parity_kept {
            b.insert(k + p, &parity[p * s..(p + 1) * s]);
        }
        let got = b.decode(dec).unwrap();
        assert!(
            got == &data[..],
            "{k}+{m} shards of {s} bytes, data {lost:?} lost, parity {parity_kept:?} kept"
        );
    }

    #[test]
    fn few_lost_shards_are_solved_for_byte_exact_without_the_crate_s_decoder() {
        use rand::seq::SliceRandom;
        use rand::Rng;
        let mut rng = rand::rng();
        // full blocks at MTU 1500 and 9000, a shard size with a tail that is not a whole 64-byte chunk
        // (1000, 130, 66), a one-shard envelope, a short tail block
        for (k, m, s) in [
            (128, 24, 1408),
            (128, 24, 1000),
            (128, 24, 8832),
            (86, 24, 130),
            (21, 21, 66),
            (1, 4, 1408),
            (10, 4, 64),
            // fewer data than parity shards: the crate encodes these another way (its low rate)
            (2, 4, 1408),
            (5, 9, 130),
            (32, 24, 1408),
        ] {
            for e in 1..=FEW.min(m).min(k) {
                for _ in 0..3 {
                    let mut idx: Vec<usize> = (0..k).collect();
                    idx.shuffle(&mut rng);
                    let lost = &idx[..e];
                    let mut par: Vec<usize> = (0..m).collect();
                    par.shuffle(&mut rng);
                    // exactly enough parity, or more than enough
                    let kept = &par[..rng.random_range(e..=m)];
                    let mut dec = Decoder::default();
                    lose_and_rebuild(k, m, s, lost, kept, &mut dec, &mut rng);
                    assert!(dec.rs.is_none(), "solved for, not decoded by the crate");
                }
            }
        }
    }

    #[test]
    fn more_lost_shards_than_few_go_to_the_crate_s_decoder() {
        let mut rng = rand::rng();
        let lost: Vec<usize> = (0..FEW + 1).map(|i| i * 7).collect();
        let kept: Vec<usize> = (0..24).collect();
        let mut dec = Decoder::default();
        lose_and_rebuild(128, 24, 1408, &lost, &kept, &mut dec, &mut rng);
        assert!(dec.rs.is_some());
        // a block too large to solve for (its coefficients would cost too much memory) goes to the crate
        let mut large = Decoder::default();
        lose_and_rebuild(FEW_MAX_DATA + 1, 4, 64, &[9], &[1], &mut large, &mut rng);
        assert!(large.rs.is_some() && large.few.is_none());
        // and a decoder told never to solve decodes the few case the crate's way, to the same bytes
        let mut crate_only = Decoder::new(0);
        lose_and_rebuild(128, 24, 1408, &[5], &[3], &mut crate_only, &mut rng);
        assert!(crate_only.rs.is_some());
    }

    #[test]
    fn the_field_inverse_is_the_inverse() {
        let t = tables::get_exp_log();
        let one = t.exp[0];
        // a 3 x 3 matrix of parity coefficients (an MDS code's: invertible), times its inverse
        let mut shapes = Vec::new();
        let c = coefficients(&mut shapes, 128, 24).unwrap().to_vec();
        let c = &c;
        let (rows, cols) = ([0usize, 5, 23], [1usize, 64, 127]);
        let m: Vec<GfElement> = rows
            .iter()
            .flat_map(|&r| cols.iter().map(move |&i| c[r * 128 + i]))
            .collect();
        let inv = invert(m.clone(), 3, t).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let x = (0..3).fold(0, |acc, l| acc ^ gf_mul(m[i * 3 + l], inv[l * 3 + j], t));
                assert_eq!(x, if i == j { one } else { 0 });
            }
        }
        assert!(invert(vec![0; 4], 2, t).is_none(), "singular");
    }
}
