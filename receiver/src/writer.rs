//! The writer thread: finished blocks are written at their offset and folded into the object's running
//! content hash (BLAKE3) here, off the socket thread, so that a slow disk or a page-cache stall never stops reception
//! (the socket buffer would overflow) and the two cores share the work. When an object is complete the
//! writer finishes its hash, compares it and makes the file durable; the receive loop then renames it.
//!
//! Jobs are handled in order, so an object's `Finish` comes after all its writes. Replies go back on a
//! channel the receive loop drains.

use diode_host::atomic::start_writeback;
use diode_proto::KeyId;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

pub type Key = (KeyId, u64);

/// Blocks queued for the writer at most (about 7 MB at the default geometry): when the disk is slower
/// than the link, the receive loop waits here rather than buffering without bound.
const QUEUE: usize = 40;
/// Start write-back after this many bytes of one object.
const WRITEBACK_EVERY: u64 = 16 << 20;
/// Bytes of blocks written ahead of their objects' running hashes that the writer keeps in memory, all
/// objects together, until the hash reaches them. Beyond it they are read back from the file when their
/// turn comes, which costs far more: the file is written with O_DIRECT, so the read goes to the disk,
/// and its read-ahead fills pages of the parts not yet written with zeros that the next direct writes
/// then invalidate (measured at 1 % loss, where blocks missing a shard finish after their neighbours:
/// ~37 % of the receiver's CPU). At 1 % loss a block waits for its parity at most an interleaving pass,
/// ~32 blocks of 176 KiB (5.6 MiB) at the default geometry.
const AHEAD_BYTES: usize = 32 << 20;
/// How far ahead of its object's running hash a block may be and still be kept: two interleaving passes
/// at the default. A block further ahead would wait longer than loss makes blocks wait (after a restart
/// the hash starts again at 0 and the blocks written before never come again: what `finish` reads back
/// anyway), and would hold memory that other objects' blocks use better.
const AHEAD_BLOCKS: u32 = 64;

pub struct Geometry {
    pub size: u64,
    pub block_bytes: u64,
}

pub enum Job {
    Write {
        key: Key,
        block: u32,
        offset: u64,
        /// The block's data is `buf[start..start + len]` (page-aligned in memory where the endpoint
        /// placed it: written through O_DIRECT from here, with no copy).
        buf: Vec<u8>,
        start: usize,
        len: usize,
        /// Data shards to rebuild first (Reed-Solomon), off the receive thread: the endpoint leaves it here.
        recover: Option<diode_proto::fec::Recovery>,
        file: Arc<File>,
        /// The same file with O_DIRECT (large objects): whole pages are written through it.
        direct: Option<Arc<File>>,
        geo: Geometry,
    },
    /// All blocks are written: hash what the running hash has not covered, compare, fsync.
    Finish {
        key: Key,
        file: Arc<File>,
        hash: [u8; 32],
        size: u64,
        block_bytes: u64,
    },
    /// The object was reset or removed: drop its running hash.
    Forget { key: Key },
}

pub enum Done {
    Written {
        key: Key,
        block: u32,
        buf: Vec<u8>,
        result: Result<(), String>,
    },
    /// Hash matched and the file is on disk (Ok), or why not.
    Finished {
        key: Key,
        result: Result<(), FinishError>,
    },
}

pub use diode_proto::receiver::VerifyError as FinishError;

#[derive(Default)]
struct Running {
    hasher: diode_proto::hash::ContentHasher,
    /// Blocks 0..hashed are in the hasher.
    hashed: u32,
    /// Blocks written past `hashed`, waiting for their turn: their data while within `AHEAD_BYTES`,
    /// None where they are to be read back.
    ahead: BTreeMap<u32, Option<Vec<u8>>>,
    unflushed: u64,
    flushed_to: u64,
    /// O_DIRECT failed on this object: the page cache from here on.
    no_direct: bool,
}

/// Page alignment for O_DIRECT: file offsets, lengths and memory addresses are multiples of it.
const PAGE: u64 = 4096;

/// A page-aligned scratch buffer, reused for every O_DIRECT write (the block buffers are not aligned).
#[derive(Default)]
struct Aligned {
    buf: Vec<u8>,
}

impl Aligned {
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < len + PAGE as usize {
            self.buf = vec![0u8; len + PAGE as usize];
        }
        let off = self.buf.as_ptr().align_offset(PAGE as usize);
        &mut self.buf[off..off + len]
    }
}

pub struct Writer {
    tx: SyncSender<Job>,
    done: Receiver<Done>,
    /// Jobs sent that have a reply to come (`Write`, `Finish`).
    outstanding: usize,
}

impl Writer {
    /// The writer thread, with `decoders` more threads that rebuild blocks (Reed-Solomon) beside it:
    /// a run of queued blocks that need rebuilding is rebuilt on all of them at once, then written in
    /// order. 0: the writer rebuilds them itself, one after the other.
    pub fn spawn(decoders: usize) -> std::io::Result<Writer> {
        let (tx, jobs) = mpsc::sync_channel::<Job>(QUEUE);
        let (done_tx, done) = mpsc::channel::<Done>();
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || run(jobs, done_tx, decoders))?;
        Ok(Writer {
            tx,
            done,
            outstanding: 0,
        })
    }

    /// Queue a job (waits while the queue is full). False if the writer thread is gone.
    pub fn send(&mut self, job: Job) -> bool {
        let replies = !matches!(job, Job::Forget { .. });
        let sent = self.tx.send(job).is_ok();
        if sent && replies {
            self.outstanding += 1;
        }
        sent
    }

    /// A reply, if one has come. A writer thread that is gone owes nothing any more (the receive loop
    /// must not keep waking every 2 ms for replies that cannot come).
    pub fn try_done(&mut self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(d) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                Some(d)
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                self.outstanding = 0;
                None
            }
            Err(mpsc::TryRecvError::Empty) => None,
        }
    }

    /// Replies are still to come: the receive loop then waits on the link only briefly, so that the
    /// last blocks of an object and its verification are taken up as soon as the writer is done, not
    /// after the link's 100 ms of silence each (which made the end of every object 0.2-0.4 s late).
    pub fn busy(&self) -> bool {
        self.outstanding > 0
    }
}

fn needs_rebuild(job: &Job) -> bool {
    matches!(
        job,
        Job::Write {
            recover: Some(_),
            ..
        }
    )
}

/// Rebuild the blocks of `batch` (each a `Write` with `recover`) on `decoders.len()` threads at once,
/// this one among them; each result in the batch's order.
fn rebuild_all(
    batch: &mut [Job],
    decoders: &mut [diode_proto::fec::Decoder],
) -> Vec<Result<(), String>> {
    let per = batch.len().div_ceil(decoders.len().max(1)).max(1);
    let mut results: Vec<Result<(), String>> = Vec::with_capacity(batch.len());
    std::thread::scope(|sc| {
        let mut parts = batch.chunks_mut(per).zip(decoders.iter_mut());
        let mine = parts.next();
        let others: Vec<_> = parts
            .map(|(part, dec)| sc.spawn(move || rebuild_part(part, dec)))
            .collect();
        if let Some((part, dec)) = mine {
            results.extend(rebuild_part(part, dec));
        }
        for h in others {
            match h.join() {
                Ok(r) => results.extend(r),
                Err(_) => results.push(Err("a decoding thread failed".into())),
            }
        }
    });
    results.resize_with(batch.len(), || Err("not rebuilt".into()));
    results
}

fn rebuild_part(
    part: &mut [Job],
    decoder: &mut diode_proto::fec::Decoder,
) -> Vec<Result<(), String>> {
    part.iter_mut()
        .map(|job| match job {
            Job::Write {
                block,
                buf,
                start,
                recover,
                ..
            } => match recover.take() {
                Some(rc) => rc
                    .rebuild(buf.get_mut(*start..).unwrap_or_default(), decoder)
                    .map_err(|e| format!("cannot rebuild block {block}: {e}")),
                None => Ok(()),
            },
            _ => Ok(()),
        })
        .collect()
}

fn run(jobs: Receiver<Job>, done: mpsc::Sender<Done>, decoders: usize) {
    run_with(jobs, done, decoders, AHEAD_BYTES)
}

/// `run`, keeping at most `ahead_bytes` of blocks written ahead of their hashes in memory.
fn run_with(jobs: Receiver<Job>, done: mpsc::Sender<Done>, decoders: usize, ahead_bytes: usize) {
    let mut running: HashMap<Key, Running> = HashMap::new();
    // bytes of blocks kept in `Running::ahead`, all objects together (at most AHEAD_BYTES)
    let mut kept = 0usize;
    let mut aligned = Aligned::default();
    // one decoder for the writer and one per decoding thread, each kept between blocks
    let mut decoder: Vec<diode_proto::fec::Decoder> =
        (0..=decoders).map(|_| Default::default()).collect();
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        // whole pages of one object back to back, each page-aligned in its buffer: the run of them that
        // is queued goes to the disk in one vectored write (one request to the device, not one per
        // block); if that write fails, each block is written on its own below, as any other
        let mut batch = vec![job];
        if batch
            .first()
            .is_some_and(|j| direct_whole_pages(j, &running))
        {
            while batch.len() < RUN_BLOCKS {
                match jobs.try_recv() {
                    Ok(j)
                        if batch.last().is_some_and(|p| continues(p, &j))
                            && direct_whole_pages(&j, &running) =>
                    {
                        batch.push(j)
                    }
                    Ok(j) => {
                        next = Some(j);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if batch.len() > 1 && write_run(&batch) {
                for job in batch {
                    if let Job::Write {
                        key,
                        block,
                        offset,
                        buf,
                        start,
                        len,
                        file,
                        geo,
                        ..
                    } = job
                    {
                        let r = running.entry(key).or_default();
                        let data = buf.get(start..start + len).unwrap_or_default();
                        let result = account(
                            r,
                            (&mut kept, ahead_bytes),
                            &file,
                            block,
                            offset,
                            data,
                            &geo,
                            0,
                        )
                        .map_err(|e| e.to_string());
                        let reply = Done::Written {
                            key,
                            block,
                            buf,
                            result,
                        };
                        if done.send(reply).is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
        }
        // blocks to rebuild, with threads to rebuild them: take the run of them that is queued, up to
        // two per thread, rebuild them all at once, then write them in order as they came
        if decoders > 0 && batch.len() == 1 && batch.first().is_some_and(needs_rebuild) {
            while batch.len() < 2 * (decoders + 1) {
                match jobs.try_recv() {
                    Ok(j) if needs_rebuild(&j) => batch.push(j),
                    Ok(j) => {
                        next = Some(j);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let rebuilt: Vec<Option<Result<(), String>>> =
            if batch.len() > 1 && needs_rebuild(&batch[0]) {
                rebuild_all(&mut batch, &mut decoder)
                    .into_iter()
                    .map(Some)
                    .collect()
            } else {
                batch.iter().map(|_| None).collect()
            };
        for (job, rebuilt) in batch.into_iter().zip(rebuilt) {
            let reply = match job {
                Job::Write {
                    key,
                    block,
                    offset,
                    mut buf,
                    start,
                    len,
                    recover,
                    file,
                    direct,
                    geo,
                } => {
                    let rebuilt = match (rebuilt, &recover) {
                        (Some(r), _) => r,
                        (None, Some(rc)) => match decoder.first_mut() {
                            Some(d) => rc
                                .rebuild(buf.get_mut(start..).unwrap_or_default(), d)
                                .map_err(|e| format!("cannot rebuild block {block}: {e}")),
                            None => Err("no decoder".into()),
                        },
                        (None, None) => Ok(()),
                    };
                    let result = rebuilt.and_then(|()| {
                        let r = running.entry(key).or_default();
                        let data = buf.get(start..).unwrap_or_default();
                        let data = &data[..len.min(data.len())];
                        let direct = direct.as_deref().map(|d| (d, &mut aligned));
                        write_block(
                            r,
                            (&mut kept, ahead_bytes),
                            &file,
                            direct,
                            block,
                            offset,
                            data,
                            &geo,
                        )
                        .map_err(|e| e.to_string())
                    });
                    Done::Written {
                        key,
                        block,
                        buf,
                        result,
                    }
                }
                Job::Finish {
                    key,
                    file,
                    hash,
                    size,
                    block_bytes,
                } => {
                    let r = running.remove(&key).unwrap_or_default();
                    kept = kept.saturating_sub(r.kept());
                    Done::Finished {
                        key,
                        result: finish(r, &file, hash, size, block_bytes),
                    }
                }
                Job::Forget { key } => {
                    if let Some(r) = running.remove(&key) {
                        kept = kept.saturating_sub(r.kept());
                    }
                    continue;
                }
            };
            if done.send(reply).is_err() {
                return;
            }
        }
    }
}

/// Write `data` at `offset`: the whole pages inside it through O_DIRECT when there is a direct handle
/// (straight from `data` when they lie page-aligned in memory, as the endpoint places blocks; else
/// through the aligned scratch buffer), the partial pages at its edges (shared with the neighbouring
/// blocks) through the page cache.
fn write_data(
    r: &mut Running,
    file: &File,
    direct: Option<(&File, &mut Aligned)>,
    offset: u64,
    data: &[u8],
) -> std::io::Result<u64> {
    let end = offset + data.len() as u64;
    let (a0, a1) = (offset.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
    let Some((dfile, scratch)) = direct.filter(|_| !r.no_direct && a1 > a0) else {
        file.write_all_at(data, offset)?;
        return Ok(data.len() as u64);
    };
    let mid = &data[(a0 - offset) as usize..(a1 - offset) as usize];
    let page: &[u8] = if (mid.as_ptr() as usize).is_multiple_of(PAGE as usize) {
        mid
    } else {
        let page = scratch.get(mid.len());
        page.copy_from_slice(mid);
        page
    };
    if let Err(e) = dfile.write_all_at(page, a0) {
        // EINVAL: this filesystem takes O_DIRECT at open but not these writes; anything else (a full
        // disk) is an error like any other write's
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        tracing::info!(error = %e, "O_DIRECT refused; this object goes through the page cache");
        r.no_direct = true;
        file.write_all_at(data, offset)?;
        return Ok(data.len() as u64);
    }
    file.write_all_at(&data[..(a0 - offset) as usize], offset)?;
    file.write_all_at(&data[(a1 - offset) as usize..], a1)?;
    Ok(data.len() as u64 - mid.len() as u64)
}

impl Running {
    /// Bytes this object keeps in `ahead`.
    fn kept(&self) -> usize {
        self.ahead.values().flatten().map(Vec::len).sum()
    }
}

/// Runs of blocks written with one vectored write (tests look at it).
#[cfg(test)]
static RUNS_WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Most blocks written by one vectored write (about 1.4 MB at the default geometry).
const RUN_BLOCKS: usize = 8;

/// A block to write that is whole pages at a page-aligned offset, page-aligned in its buffer, with a
/// direct handle and nothing to rebuild: it can go to the disk with its neighbours in one write.
fn direct_whole_pages(job: &Job, running: &HashMap<Key, Running>) -> bool {
    let page = PAGE as usize;
    match job {
        Job::Write {
            key,
            offset,
            buf,
            start,
            len,
            recover: None,
            direct: Some(_),
            ..
        } => {
            offset.is_multiple_of(PAGE)
                && len.is_multiple_of(page)
                && *len > 0
                && buf
                    .get(*start..start.saturating_add(*len))
                    .is_some_and(|d| (d.as_ptr() as usize).is_multiple_of(page))
                && !running.get(key).is_some_and(|r| r.no_direct)
        }
        _ => false,
    }
}

/// `next` is the block right after `prev` in the same file.
fn continues(prev: &Job, next: &Job) -> bool {
    match (prev, next) {
        (
            Job::Write {
                key: k1,
                offset: o1,
                len: l1,
                direct: Some(d1),
                ..
            },
            Job::Write {
                key: k2,
                offset: o2,
                direct: Some(d2),
                ..
            },
        ) => k1 == k2 && Arc::ptr_eq(d1, d2) && o1.checked_add(*l1 as u64) == Some(*o2),
        _ => false,
    }
}

/// Write a run of `direct_whole_pages` blocks, each `continues` the one before, with one `pwritev`
/// on the direct handle. False if that failed (each is then written on its own, with its own error).
fn write_run(run: &[Job]) -> bool {
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(run.len());
    let mut target = None;
    for job in run {
        if let Job::Write {
            offset,
            buf,
            start,
            len,
            direct: Some(d),
            ..
        } = job
        {
            target.get_or_insert((Arc::clone(d), *offset));
            match buf.get(*start..start.saturating_add(*len)) {
                Some(data) => bufs.push(data),
                None => return false,
            }
        }
    }
    match target {
        Some((d, offset)) if bufs.len() == run.len() => {
            let ok = diode_host::atomic::write_all_vectored_at(&d, &bufs, offset).is_ok();
            #[cfg(test)]
            if ok {
                RUNS_WRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            ok
        }
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn write_block(
    r: &mut Running,
    kept: (&mut usize, usize),
    file: &Arc<File>,
    direct: Option<(&File, &mut Aligned)>,
    block: u32,
    offset: u64,
    data: &[u8],
    geo: &Geometry,
) -> std::io::Result<()> {
    let buffered = write_data(r, file, direct, offset, data)?;
    account(r, kept, file, block, offset, data, geo, buffered)
}

/// After a block is written: fold it (and the blocks finished ahead that follow) into the running hash
/// or keep it ahead, and start write-back of what went through the page cache (`buffered` bytes).
#[allow(clippy::too_many_arguments)]
fn account(
    r: &mut Running,
    (kept, ahead_bytes): (&mut usize, usize),
    file: &Arc<File>,
    block: u32,
    offset: u64,
    data: &[u8],
    geo: &Geometry,
    buffered: u64,
) -> std::io::Result<()> {
    if block == r.hashed {
        r.hasher.update(data);
        r.hashed += 1;
        // blocks finished early follow: from memory, or read back where they were not kept
        while let Some(early) = r.ahead.remove(&r.hashed) {
            match early {
                Some(b) => {
                    r.hasher.update(&b);
                    *kept = kept.saturating_sub(b.len());
                }
                None => {
                    let off = r.hashed as u64 * geo.block_bytes;
                    let len = geo.block_bytes.min(geo.size.saturating_sub(off)) as usize;
                    let mut b = vec![0u8; len];
                    file.read_exact_at(&mut b, off)?;
                    r.hasher.update(&b);
                }
            }
            r.hashed += 1;
        }
    } else if block > r.hashed && !r.ahead.contains_key(&block) {
        let keep = *kept + data.len() <= ahead_bytes && block - r.hashed <= AHEAD_BLOCKS;
        if keep {
            *kept += data.len();
        }
        r.ahead.insert(block, keep.then(|| data.to_vec()));
    }
    // keep dirty pages few: the fsync before the rename then has little left to write
    r.unflushed += buffered;
    if r.unflushed >= WRITEBACK_EVERY {
        let end = offset + data.len() as u64;
        let start = r.flushed_to.min(offset);
        start_writeback(file, start, end.saturating_sub(start));
        r.flushed_to = end;
        r.unflushed = 0;
    }
    Ok(())
}

fn finish(
    r: Running,
    file: &File,
    want: [u8; 32],
    size: u64,
    block_bytes: u64,
) -> Result<(), FinishError> {
    let io = |e: std::io::Error| FinishError::Io(e.to_string());
    file.set_len(size).map_err(io)?;
    let mut h = r.hasher;
    // after a restart the running hash starts at 0: whatever it does not cover is read back
    let mut pos = (r.hashed as u64 * block_bytes).min(size);
    let mut buf = vec![0u8; 1 << 20];
    while pos < size {
        let n = buf.len().min((size - pos) as usize);
        file.read_exact_at(&mut buf[..n], pos).map_err(io)?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    let got: [u8; 32] = h.finalize();
    if got != want {
        return Err(FinishError::Mismatch(format!(
            "content hash mismatch ({} instead of {})",
            hex::encode(got),
            hex::encode(want)
        )));
    }
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diode_proto::fec::Recovery;

    /// Blocks that are whole pages, page-aligned in their buffers and back to back in one object go to
    /// the disk a run at a time through the O_DIRECT handle (one vectored write for up to 8); a block
    /// misaligned in its buffer breaks the run and is written on its own, through the scratch copy.
    /// The file is byte-exact and its hash checks either way.
    #[test]
    fn queued_neighbouring_blocks_go_to_the_disk_in_one_write() {
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::Ordering;
        let under = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&under).unwrap();
        let dir = tempfile::tempdir_in(under).unwrap();
        let path = dir.path().join("object.data");
        let file = Arc::new(File::create(&path).unwrap());
        let direct = Arc::new(
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .expect("the target folder's filesystem takes O_DIRECT (ext4)"),
        );
        let block_bytes = 2 * PAGE as usize;
        let blocks = 20;
        let content: Vec<u8> = (0..blocks * block_bytes)
            .map(|i| (i * 17 + i / 4099) as u8)
            .collect();
        let key = (KeyId([4; 8]), 2);
        let (tx, jobs) = mpsc::sync_channel::<Job>(blocks + 1);
        for b in 0..blocks {
            let part = &content[b * block_bytes..(b + 1) * block_bytes];
            let mut buf = vec![0u8; block_bytes + 2 * PAGE as usize];
            // page-aligned, but block 13 one byte off
            let start = buf.as_ptr().align_offset(PAGE as usize) + usize::from(b == 13);
            buf[start..start + block_bytes].copy_from_slice(part);
            tx.send(Job::Write {
                key,
                block: b as u32,
                offset: (b * block_bytes) as u64,
                buf,
                start,
                len: block_bytes,
                recover: None,
                file: Arc::clone(&file),
                direct: Some(Arc::clone(&direct)),
                geo: Geometry {
                    size: content.len() as u64,
                    block_bytes: block_bytes as u64,
                },
            })
            .unwrap();
        }
        tx.send(Job::Finish {
            key,
            file: Arc::clone(&file),
            hash: diode_proto::hash::content_hash(&content),
            size: content.len() as u64,
            block_bytes: block_bytes as u64,
        })
        .unwrap();
        drop(tx);
        let before = RUNS_WRITTEN.load(Ordering::Relaxed);
        let (done_tx, done) = mpsc::channel();
        run(jobs, done_tx, 0);
        let replies: Vec<Done> = done.into_iter().collect();
        assert_eq!(replies.len(), blocks + 1);
        assert!(all_ok(&replies), "every block written, the hash checks");
        assert_eq!(std::fs::read(&path).unwrap(), content);
        // 0-7, 8-12 (13 is misaligned), 14-19: three runs (other tests may add theirs meanwhile)
        assert!(RUNS_WRITTEN.load(Ordering::Relaxed) - before >= 3);
    }

    /// The writer counts the replies it owes: busy from a `Write` or `Finish` until its reply is taken,
    /// never for a `Forget` (which has none), so the receive loop waits on the link briefly exactly
    /// while a reply is due.
    #[test]
    fn the_writer_is_busy_while_replies_are_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.data");
        let file = Arc::new(File::create(&path).unwrap());
        let key = (KeyId([3; 8]), 1);
        let mut w = Writer::spawn(0).unwrap();
        assert!(!w.busy());
        assert!(w.send(Job::Forget { key }));
        assert!(!w.busy(), "a Forget has no reply");
        let content = vec![5u8; 4096];
        assert!(w.send(Job::Write {
            key,
            block: 0,
            offset: 0,
            buf: content.clone(),
            start: 0,
            len: content.len(),
            recover: None,
            file: Arc::clone(&file),
            direct: None,
            geo: Geometry {
                size: 4096,
                block_bytes: 4096,
            },
        }));
        assert!(w.send(Job::Finish {
            key,
            file: Arc::clone(&file),
            hash: diode_proto::hash::content_hash(&content),
            size: 4096,
            block_bytes: 4096,
        }));
        assert!(w.busy());
        let mut replies = 0;
        let t = std::time::Instant::now();
        while w.busy() && t.elapsed() < std::time::Duration::from_secs(10) {
            if w.try_done().is_some() {
                replies += 1;
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert_eq!(replies, 2);
        assert!(!w.busy());
        assert!(w.try_done().is_none());
        // a writer thread that is gone (its end of the replies dropped) owes nothing any more
        let (tx, _jobs) = mpsc::sync_channel::<Job>(1);
        let (done_tx, done) = mpsc::channel::<Done>();
        let mut gone = Writer {
            tx,
            done,
            outstanding: 3,
        };
        assert!(gone.busy());
        drop(done_tx);
        assert!(gone.try_done().is_none());
        assert!(!gone.busy());
    }

    /// A block whose data lies page-aligned in memory (as the endpoint places it) goes to the O_DIRECT
    /// handle as it is: the aligned scratch buffer is never filled. Data at any other address is copied
    /// there first. Both land byte-exact, with the partial pages at the edges through the page cache.
    /// (On the checkout's filesystem, which takes O_DIRECT: ext4 here and in CI; tmpfs would refuse it
    /// at open, and the test says so rather than pass.)
    #[test]
    fn page_aligned_blocks_go_to_o_direct_without_a_copy() {
        use std::os::unix::fs::OpenOptionsExt;
        // beside the checkout (ext4), not in /tmp, which may be a tmpfs
        let under = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&under).unwrap();
        let dir = tempfile::tempdir_in(under).unwrap();
        let path = dir.path().join("object.data");
        let file = File::create(&path).unwrap();
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("the target folder's filesystem takes O_DIRECT (ext4); this test needs it");
        let content: Vec<u8> = (0..5 * PAGE as usize + 300)
            .map(|i| (i * 13 + i / 4093) as u8)
            .collect();
        let mut r = Running::default();
        // aligned: one page of room, the data starting on a page boundary of the buffer
        let mut buf = vec![0u8; content.len() + PAGE as usize];
        let at = buf.as_ptr().align_offset(PAGE as usize);
        buf[at..at + content.len()].copy_from_slice(&content);
        let mut scratch = Aligned::default();
        let buffered = write_data(
            &mut r,
            &file,
            Some((&direct, &mut scratch)),
            0,
            &buf[at..at + content.len()],
        )
        .unwrap();
        assert!(scratch.buf.is_empty(), "the aligned block was copied");
        assert_eq!(
            buffered, 300,
            "only the tail page went through the page cache"
        );
        assert!(!r.no_direct);
        // misaligned by one byte: copied to the scratch buffer, written there from
        let second = 8 * PAGE;
        let data = &buf[at + 1..at + 1 + content.len() - 1];
        write_data(&mut r, &file, Some((&direct, &mut scratch)), second, data).unwrap();
        assert!(
            !scratch.buf.is_empty(),
            "a misaligned block needs the scratch copy"
        );
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..content.len()], &content[..]);
        assert_eq!(&on_disk[second as usize..], data);
    }

    /// Six blocks, each missing two of its four data shards, queued before the writer looks: with two
    /// decoding threads they are rebuilt together (the writer and the two threads each take two), then
    /// written in order; the file is byte-exact and its hash checks. A block whose shards cannot rebuild
    /// it (too few present) fails alone, with the reason, and the others are still written.
    #[test]
    fn blocks_rebuilt_on_decoding_threads_are_written_byte_exact() {
        let (shard, data, parity, blocks) = (64usize, 4usize, 4usize, 6usize);
        let block_bytes = (shard * data) as u64;
        let content: Vec<u8> = (0..blocks * shard * data)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.data");
        let file = Arc::new(File::create(&path).unwrap());
        let key = (KeyId([1; 8]), 9);
        let (tx, jobs) = mpsc::sync_channel::<Job>(64);
        let mut enc = diode_proto::BlockEncoder::new();
        for b in 0..blocks + 1 {
            // one more block, the sixth again, with too few shards to rebuild
            let (i, bad) = if b == blocks {
                (blocks - 1, true)
            } else {
                (b, false)
            };
            let part = &content[i * shard * data..(i + 1) * shard * data];
            let mut par = Vec::new();
            enc.encode(part, shard, parity, &mut par).unwrap();
            // the shards start 100 bytes into the buffer, as the endpoint may place them
            let lead = 100;
            let mut buf = [&[0xEE; 100][..], part, &par[..]].concat();
            let mut present = vec![true; data + parity];
            let lost: &[usize] = if bad { &[0, 1, 2, 4, 5] } else { &[0, 2] };
            for &l in lost {
                buf[lead + l * shard..lead + (l + 1) * shard].fill(0);
                present[l] = false;
            }
            tx.send(Job::Write {
                key,
                block: i as u32,
                offset: i as u64 * block_bytes,
                buf,
                start: lead,
                len: shard * data,
                recover: Some(Recovery {
                    data,
                    parity,
                    shard_size: shard,
                    present,
                }),
                file: Arc::clone(&file),
                direct: None,
                geo: Geometry {
                    size: content.len() as u64,
                    block_bytes,
                },
            })
            .unwrap();
        }
        tx.send(Job::Finish {
            key,
            file: Arc::clone(&file),
            hash: diode_proto::hash::content_hash(&content),
            size: content.len() as u64,
            block_bytes,
        })
        .unwrap();
        drop(tx);
        let (done_tx, done) = mpsc::channel();
        run(jobs, done_tx, 2);
        let replies: Vec<Done> = done.into_iter().collect();
        let written: Vec<(u32, bool)> = replies
            .iter()
            .filter_map(|d| match d {
                Done::Written { block, result, .. } => Some((*block, result.is_ok())),
                _ => None,
            })
            .collect();
        assert_eq!(
            written,
            vec![
                (0, true),
                (1, true),
                (2, true),
                (3, true),
                (4, true),
                (5, true),
                (5, false)
            ]
        );
        let failed = replies.iter().find_map(|d| match d {
            Done::Written { result: Err(e), .. } => Some(e.clone()),
            _ => None,
        });
        assert!(failed.is_some_and(|e| e.contains("cannot rebuild block 5")));
        assert!(replies
            .iter()
            .any(|d| matches!(d, Done::Finished { result: Ok(()), .. })));
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }

    /// Four blocks written last to first, each finishing before the one the running hash waits for
    /// (what loss does: a block missing a shard waits for its parity while its neighbours finish).
    /// Returns the replies.
    fn write_backwards(file: File, content: &[u8], block_bytes: usize, ahead: usize) -> Vec<Done> {
        let file = Arc::new(file);
        let key = (KeyId([2; 8]), 3);
        // every job queued before the writer runs (on this thread)
        let (tx, jobs) = mpsc::sync_channel::<Job>(content.len() / block_bytes + 1);
        for b in (0..content.len() / block_bytes).rev() {
            let part = &content[b * block_bytes..(b + 1) * block_bytes];
            tx.send(Job::Write {
                key,
                block: b as u32,
                offset: (b * block_bytes) as u64,
                buf: part.to_vec(),
                start: 0,
                len: block_bytes,
                recover: None,
                file: Arc::clone(&file),
                direct: None,
                geo: Geometry {
                    size: content.len() as u64,
                    block_bytes: block_bytes as u64,
                },
            })
            .unwrap();
        }
        tx.send(Job::Finish {
            key,
            file: Arc::clone(&file),
            hash: diode_proto::hash::content_hash(content),
            size: content.len() as u64,
            block_bytes: block_bytes as u64,
        })
        .unwrap();
        drop(tx);
        let (done_tx, done) = mpsc::channel();
        run_with(jobs, done_tx, 0, ahead);
        done.into_iter().collect()
    }

    fn all_ok(replies: &[Done]) -> bool {
        replies.iter().all(|d| match d {
            Done::Written { result, .. } => result.is_ok(),
            Done::Finished { result, .. } => result.is_ok(),
        })
    }

    /// Blocks that finish ahead of the running hash are hashed from memory when its turn comes, not
    /// read back: the file here is opened write-only, so any read of it would fail the write.
    #[test]
    fn blocks_finished_out_of_order_are_hashed_from_memory_not_read_back() {
        let content: Vec<u8> = (0..4 * 4096).map(|i| (i * 13 + i / 255) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.data");
        let write_only = File::create(&path).unwrap();
        let replies = write_backwards(write_only, &content, 4096, AHEAD_BYTES);
        assert!(all_ok(&replies), "a block was read back");
        assert_eq!(std::fs::read(&path).unwrap(), content);

        // blocks further ahead than AHEAD_BLOCKS are not kept: read back, which fails here
        let many: Vec<u8> = (0..(AHEAD_BLOCKS as usize + 6) * 64)
            .map(|i| (i * 7) as u8)
            .collect();
        let _ = std::fs::remove_file(&path);
        let replies = write_backwards(File::create(&path).unwrap(), &many, 64, AHEAD_BYTES);
        assert!(!all_ok(&replies));
        let fits = &many[..(AHEAD_BLOCKS as usize + 1) * 64];
        let _ = std::fs::remove_file(&path);
        let replies = write_backwards(File::create(&path).unwrap(), fits, 64, AHEAD_BYTES);
        assert!(all_ok(&replies), "within the window every block is kept");

        // the same with room for one block only: the others are read back from the file, and
        // through a write-only handle that fails, saying so
        let _ = std::fs::remove_file(&path);
        let replies = write_backwards(File::create(&path).unwrap(), &content, 4096, 4096);
        assert!(!all_ok(&replies));
        // with a handle that reads, the blocks read back give the same hash
        let _ = std::fs::remove_file(&path);
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let replies = write_backwards(rw, &content, 4096, 4096);
        assert!(all_ok(&replies));
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }
}
