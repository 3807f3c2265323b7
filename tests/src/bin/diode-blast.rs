//! A stand-in sender for benchmarks (`benches/scaling.sh`): the cheapest producer of real frames. It
//! encodes and seals one object of random bytes into memory first (with the sender endpoint of
//! `diode_proto`), then sends the announce and every frame from memory over UDP, in GSO batches, paced
//! at `--rate`: what it spends while sending is system calls, so the receiver can be measured on its own.
//!
//! Usage: diode-blast --key sender.key --receiver receiver.pub --target 127.0.0.1:47990 --mb 1024
//!        --rate 5Gbit [--mtu 1500]
//!
//! `diode-blast --sink 127.0.0.1:47991` is the stand-in receiver: it takes datagrams off a socket (GRO
//! batches, as diode-recv does) and discards them, until it is killed.

use diode_host::keyfile::{load_public, load_secret};
use diode_host::link::{udp::UdpRx, udp::UdpTx, FramesIn, FramesOut};
use diode_host::pace::{parse_rate, Pacer};
use diode_proto::frame::shard_size_for_mtu;
use diode_proto::object::{ObjectKind, ObjectMeta};
use diode_proto::sender::{self, Job, Source, Transmit, MAX_FRAME};
use diode_proto::{Role, SenderSession};
use rand::RngCore;
use std::path::PathBuf;
use std::time::Instant;

struct Memory(Vec<u8>);

impl Source for Memory {
    fn map(&mut self, _id: u64, offset: u64, len: usize) -> Option<&[u8]> {
        self.0.get(offset as usize..offset as usize + len)
    }
    fn read_at(&mut self, _id: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let src = self
            .0
            .get(offset as usize..offset as usize + buf.len())
            .ok_or("past the end")?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn sink(addr: &str) -> Result<(), String> {
    let addr = addr.parse().map_err(|e| format!("--sink: {e}"))?;
    let mut rx = UdpRx::bind(addr, 8 << 20).map_err(|e| format!("{e:#}"))?;
    // each burst (datagrams less than 50 ms apart) is reported once it ends: what the sender managed
    // while it had frames to send, without its pauses (the wait for the receiver before the first
    // frame, the repeats of a late content hash 0.3 and 1.5 s after the pass). The link waits 10 ms at
    // a time, so a gap is seen: with 150 ms and the link's 100 ms wait, the frames the sender sends
    // ~100 ms apart after a pass joined the pass's burst and stretched it (to 2.000 s, whatever the pass)
    rx.set_wait(std::time::Duration::from_millis(10));
    let mut burst: Option<(Instant, Instant, u64, u64)> = None;
    loop {
        let mut got = (0u64, 0u64);
        rx.recv(&mut |f| {
            got.0 += 1;
            got.1 += f.len() as u64;
        })
        .map_err(|e| format!("{e:#}"))?;
        let now = Instant::now();
        if got.0 > 0 {
            let b = burst.get_or_insert((now, now, 0, 0));
            b.1 = now;
            b.2 += got.0;
            b.3 += got.1;
        } else if let Some((first, last, n, bytes)) = burst {
            if now.duration_since(last).as_millis() >= 50 {
                let secs = last.duration_since(first).as_secs_f64();
                println!("sink: burst of {n} datagrams, {bytes} bytes in {secs:.3} s");
                burst = None;
            }
        }
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(addr) = arg(&args, "--sink") {
        return sink(&addr);
    }
    let need = |n: &str| arg(&args, n).ok_or(format!("{n} is required (see the source's usage)"));
    let me =
        load_secret(&PathBuf::from(need("--key")?), Role::Sender).map_err(|e| e.to_string())?;
    let to = load_public(&PathBuf::from(need("--receiver")?), Role::Receiver)
        .map_err(|e| e.to_string())?;
    let target = need("--target")?
        .parse()
        .map_err(|e| format!("--target: {e}"))?;
    let mb: usize = need("--mb")?.parse().map_err(|e| format!("--mb: {e}"))?;
    let rate = parse_rate(&need("--rate")?)?;
    let mtu: usize =
        arg(&args, "--mtu").map_or(Ok(1500), |m| m.parse().map_err(|e| format!("--mtu: {e}")))?;
    let shard = shard_size_for_mtu(mtu).ok_or("--mtu too small")?;

    let mut content = vec![0u8; mb << 20];
    rand::rng().fill_bytes(&mut content);
    let counter = diode_host::unix_micros();
    let session = SenderSession::start(&me, &to, counter, diode_host::unix_now(), &mut rand::rng())
        .map_err(|e| e.to_string())?;
    let meta = ObjectMeta {
        id: counter,
        name: "blast.bin".into(),
        size: content.len() as u64,
        hash: diode_proto::hash::content_hash(&content),
        kind: ObjectKind::File,
        shard_size: shard as u32,
        data_shards: 128,
        parity_shards: 24,
        mtime: 0,
    };
    let cfg = sender::Config {
        interleave: 32,
        announce_ms: 1 << 40,
        heartbeat_ms: 1 << 40,
        rekey_ms: 1 << 40,
        rate_bps: rate,
        repeats: Vec::new(),
        repeat_small: false,
        defer_seal: false,
    };
    let mut ep = sender::Endpoint::new(cfg, session, 0);
    ep.send(Job::new(meta, 1, false));
    let mut src = Memory(content);
    // every frame, back to back, and where each starts
    let t0 = Instant::now();
    let mut arena: Vec<u8> = Vec::with_capacity((mb << 20) / 128 * 160 + (64 << 20));
    let mut frames: Vec<(usize, usize)> = Vec::new();
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        match ep.poll_transmit(0, &mut src, &mut buf) {
            Transmit::Frame(n) | Transmit::Plain(n) => {
                frames.push((arena.len(), n));
                arena.extend_from_slice(&buf[..n]);
            }
            Transmit::Rekey => return Err("no rekey expected".into()),
            Transmit::Idle(_) => break,
        }
    }
    drop(src);
    eprintln!(
        "blast: {} frames ({} MB) encoded and sealed in {:.1} s",
        frames.len(),
        arena.len() / 1_000_000,
        t0.elapsed().as_secs_f64()
    );
    let tx = UdpTx::new(vec![target], None, 8 << 20).map_err(|e| format!("{e:#}"))?;
    let max = tx.max_segments();
    let mut pacer = Pacer::new(rate);
    let t1 = Instant::now();
    let mut i = 0;
    while i < frames.len() {
        let (start, seg) = frames[i];
        let mut j = i + 1;
        while j < frames.len() && j - i < max.min(65000 / seg) && frames[j].1 == seg {
            j += 1;
        }
        let end = frames[j - 1].0 + seg;
        pacer.wait(tx.paced_bytes(seg) * (j - i));
        if let Err(e) = tx.send(&arena[start..end], seg) {
            eprintln!("blast: send failed: {e}");
        }
        if i == 0 {
            // the announce first, and a moment for the receiver to set up the session
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        i = j;
    }
    let secs = t1.elapsed().as_secs_f64();
    eprintln!(
        "blast: sent in {secs:.2} s ({:.0} MB/s on the wire)",
        arena.len() as f64 / secs / 1e6
    );
    Ok(())
}
