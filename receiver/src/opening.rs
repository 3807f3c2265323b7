//! Opening frames on threads (`open_threads` in recv.toml, by default one fewer than the cores, over UDP):
//! a link thread takes datagrams off the sockets a batch at a time (one receive call: up to a few GRO
//! batches) and hands the batches to the opening threads in turn; each opens the sealed frames of its
//! batch with the openers of the sessions the endpoint has (`diode_proto::session::Opener`); the daemon's
//! thread takes the batches back in the same turn, so the endpoint sees every frame in the order it came,
//! and decides everything as before. A frame whose session had no opener yet (the first frames after an
//! announce) goes to the endpoint unopened and is opened there. At most `2 × threads + 2` batches exist:
//! when the daemon's thread falls behind, the link thread waits, the socket's queue fills and the kernel's
//! drops say so in status and metrics, as without threads.

use anyhow::{Context, Result};
use diode_host::link::{FramesIn, Noise};
use diode_proto::frame::SealedHeader;
use diode_proto::session::Opener;
use diode_proto::SessionTable;
use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What an opening thread made of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ahead {
    /// Not opened: an announce, a malformed datagram, or a session with no opener yet.
    Raw,
    /// Authenticated and decrypted in place by its session's opener.
    Opened,
    /// Under a known session, it did not authenticate: forged or altered.
    BadSeal,
}

/// The link's counters, taken about once a second on the link thread.
#[derive(Clone, Default)]
pub struct Counters {
    pub kernel_drops: Option<u32>,
    pub per_socket: Vec<(String, u64)>,
}

/// Datagrams off the link, back to back in `buf`.
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    frames: Vec<(usize, usize, Ahead)>,
    pub noise: Noise,
    pub counters: Option<Counters>,
    /// The link failed: the daemon stops with this.
    pub error: Option<String>,
}

impl Batch {
    fn reset(&mut self) {
        self.buf.clear();
        self.frames.clear();
        self.noise.clear();
        self.counters = None;
        self.error = None;
    }

    /// Each datagram with what the opening thread made of it, in the order they came.
    pub fn for_each(&mut self, mut f: impl FnMut(&mut [u8], Ahead)) {
        let Batch { buf, frames, .. } = self;
        for &(at, len, ahead) in frames.iter() {
            if let Some(d) = buf.get_mut(at..at + len) {
                f(d, ahead);
            }
        }
    }

    fn open(&mut self, openers: &HashMap<u64, Opener>) {
        let Batch { buf, frames, .. } = self;
        for (at, len, ahead) in frames.iter_mut() {
            let Some(d) = buf.get_mut(*at..*at + *len) else {
                continue;
            };
            // an announce or a malformed datagram does not parse as a sealed header: the endpoint's
            let Ok(h) = SealedHeader::parse(d) else {
                continue;
            };
            if let Some(o) = openers.get(&h.session) {
                *ahead = if o.open(d) {
                    Ahead::Opened
                } else {
                    Ahead::BadSeal
                };
            }
        }
    }
}

type Shared = Arc<RwLock<Arc<HashMap<u64, Opener>>>>;

pub struct Pool {
    results: Vec<Receiver<Batch>>,
    turn: usize,
    free: SyncSender<Batch>,
    openers: Shared,
    published: u64,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn start(
        mut rx: Box<dyn FramesIn + Send>,
        threads: usize,
        table: &SessionTable,
    ) -> Result<Self> {
        let depth = 2 * threads + 2;
        let (free, free_rx) = sync_channel::<Batch>(depth);
        for _ in 0..depth {
            free.send(Batch::default())
                .map_err(|_| anyhow::anyhow!("the batch pool could not be filled"))?;
        }
        let openers: Shared = Arc::new(RwLock::new(Arc::new(table.openers())));
        let mut to_openers = Vec::new();
        let mut results = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads {
            let (tx, in_rx) = sync_channel::<Batch>(depth);
            let (back, out) = sync_channel::<Batch>(depth);
            to_openers.push(tx);
            results.push(out);
            let shared = Arc::clone(&openers);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("open-{i}"))
                    .spawn(move || {
                        for mut b in in_rx {
                            let map = match shared.read() {
                                Ok(m) => Arc::clone(&m),
                                Err(p) => Arc::clone(&p.into_inner()),
                            };
                            b.open(&map);
                            if back.send(b).is_err() {
                                break;
                            }
                        }
                    })
                    .context("cannot start an opening thread")?,
            );
        }
        handles.push(
            std::thread::Builder::new()
                .name("link".into())
                .spawn(move || {
                    let mut last_counters: Option<Instant> = None;
                    for turn in (0..to_openers.len()).cycle() {
                        let Ok(mut b) = free_rx.recv() else { return };
                        b.reset();
                        loop {
                            let Batch { buf, frames, .. } = &mut b;
                            match rx.recv(&mut |f| {
                                frames.push((buf.len(), f.len(), Ahead::Raw));
                                buf.extend_from_slice(f);
                            }) {
                                Ok(noise) => b.noise.extend(noise),
                                Err(e) => b.error = Some(format!("{e:#}")),
                            }
                            if last_counters.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                                last_counters = Some(Instant::now());
                                b.counters = Some(Counters {
                                    kernel_drops: rx.kernel_drops(),
                                    per_socket: rx.per_socket(),
                                });
                            }
                            if !b.frames.is_empty()
                                || !b.noise.is_empty()
                                || b.counters.is_some()
                                || b.error.is_some()
                            {
                                break;
                            }
                        }
                        let failed = b.error.is_some();
                        if to_openers[turn].send(b).is_err() || failed {
                            return;
                        }
                    }
                })
                .context("cannot start the link thread")?,
        );
        Ok(Pool {
            results,
            turn: 0,
            free,
            openers,
            published: table.version(),
            threads: handles,
        })
    }

    /// The next batch in the order the link gave them, waiting at most `wait`. Err if the link
    /// failed or its threads stopped.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Batch>> {
        let n = self.results.len().max(1);
        let Some(r) = self.results.get(self.turn % n) else {
            anyhow::bail!("no opening thread");
        };
        match r.recv_timeout(wait) {
            Ok(b) => {
                self.turn = self.turn.wrapping_add(1);
                if let Some(e) = &b.error {
                    anyhow::bail!("the link failed: {e}");
                }
                Ok(Some(b))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the link's threads have stopped")
            }
        }
    }

    /// A batch the endpoint is done with, back to the link thread.
    pub fn done(&mut self, b: Batch) {
        let _ = self.free.send(b);
    }

    /// Give the opening threads the openers of the sessions the endpoint has now, if they changed.
    pub fn publish(&mut self, table: &SessionTable) {
        if table.version() == self.published {
            return;
        }
        self.published = table.version();
        let fresh = Arc::new(table.openers());
        match self.openers.write() {
            Ok(mut m) => *m = fresh,
            Err(p) => {
                let mut m = p.into_inner();
                *m = fresh;
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // the threads end when their channels close; the link thread may be waiting on its socket
        // (at most about 100 ms) and is not waited for
        self.results.clear();
        for t in self.threads.drain(..) {
            if !t.is_finished() {
                continue;
            }
            let _ = t.join();
        }
    }
}
