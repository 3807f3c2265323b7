//! Framing for byte-stream links (a one-way serial line). A UDP datagram delimits a frame for free; a byte
//! stream does not, and a UART loses, flips and invents bytes. Each sealed frame is therefore followed by
//! its CRC-32 (IEEE, little-endian), the whole COBS-encoded (which removes every zero byte) and ended by
//! one zero byte. A receiver that starts mid-stream, or sees garbage, a dropped byte or line noise, loses
//! at most the frame it is in and is back in step at the next zero. The CRC catches line noise cheaply and
//! tells it apart from forgery (which the frame's own Poly1305 tag catches); FEC above repairs the loss.
//!
//! Sans-I/O: `encode` appends bytes to a buffer, `Deframer::push` takes whatever bytes a read returned.

use crate::frame::MAX_FRAME;

/// The CRC-32 that follows each frame.
pub const CRC_LEN: usize = 4;

/// Bytes on the line for a frame of `len` bytes: COBS adds one byte per 254 (and one), then the CRC and
/// the delimiter.
pub fn wire_len(len: usize) -> usize {
    cobs::max_encoding_length(len + CRC_LEN) + 1
}

/// Append `frame`, framed for the line, to `out`.
pub fn encode(frame: &[u8], out: &mut Vec<u8>) {
    let mut raw = Vec::with_capacity(frame.len() + CRC_LEN);
    raw.extend_from_slice(frame);
    raw.extend_from_slice(&crc32fast::hash(frame).to_le_bytes());
    let start = out.len();
    out.resize(start + cobs::max_encoding_length(raw.len()), 0);
    let n = cobs::encode(&raw, &mut out[start..]);
    out.truncate(start + n);
    out.push(0);
}

/// What the deframer threw away, by reason. A frame that passes reaches the session table, which
/// authenticates it as it would a datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeframeStats {
    /// Frames that passed COBS and CRC.
    pub frames: u64,
    /// Bytes before the first delimiter (the receiver joined mid-frame): expected, not an error.
    pub sync_bytes: u64,
    /// Delimited runs whose CRC did not match (noise, a lost or inserted byte).
    pub bad_crc: u64,
    /// Delimited runs that are not valid COBS or too short to hold a CRC.
    pub malformed: u64,
    /// Runs longer than any frame (a lost delimiter joined two frames, or garbage): dropped unread.
    pub oversize: u64,
}

/// Turns a byte stream back into frames. Memory is bounded: one frame's worth of bytes.
pub struct Deframer {
    buf: Vec<u8>,
    limit: usize,
    synced: bool,
    overflow: bool,
    pub stats: DeframeStats,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    pub fn new() -> Self {
        let limit = wire_len(MAX_FRAME);
        Deframer {
            buf: Vec::with_capacity(limit),
            limit,
            synced: false,
            overflow: false,
            stats: DeframeStats::default(),
        }
    }

    /// Feed bytes as they came off the line; `on_frame` gets each frame that passes its CRC, with the CRC
    /// removed (the slice may be decrypted in place).
    pub fn push(&mut self, bytes: &[u8], mut on_frame: impl FnMut(&mut [u8])) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == 0) else {
                self.take(rest);
                return;
            };
            self.take(&rest[..end]);
            rest = &rest[end + 1..];
            self.delimit(&mut on_frame);
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.buf.len() + bytes.len() > self.limit {
            self.overflow = true;
            self.buf.clear();
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn delimit(&mut self, on_frame: &mut impl FnMut(&mut [u8])) {
        let overflow = std::mem::take(&mut self.overflow);
        if !self.synced {
            // whatever came before the first delimiter is the tail of a frame we did not see begin
            self.synced = true;
            self.stats.sync_bytes += self.buf.len() as u64;
            self.buf.clear();
            return;
        }
        if overflow {
            self.stats.oversize += 1;
            return;
        }
        if self.buf.is_empty() {
            return; // back-to-back delimiters (the sender starts with one): nothing lost
        }
        match cobs::decode_in_place(&mut self.buf) {
            Ok(n) if n > CRC_LEN => {
                let (frame, crc) = self.buf[..n].split_at_mut(n - CRC_LEN);
                let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                if crc32fast::hash(frame) == want {
                    self.stats.frames += 1;
                    on_frame(frame);
                } else {
                    self.stats.bad_crc += 1;
                }
            }
            _ => self.stats.malformed += 1,
        }
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn frames(seed: u64, n: usize) -> Vec<Vec<u8>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let len = rng.random_range(1..2000);
                // plenty of zeros and 0xff runs: the bytes COBS must handle
                (0..len)
                    .map(|_| match rng.random_range(0..4) {
                        0 => 0,
                        1 => 0xff,
                        _ => rng.random(),
                    })
                    .collect()
            })
            .collect()
    }

    fn line(fs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0];
        for f in fs {
            encode(f, &mut out);
        }
        out
    }

    fn deframe(d: &mut Deframer, bytes: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for c in bytes.chunks(chunk.max(1)) {
            d.push(c, |f| got.push(f.to_vec()));
        }
        got
    }

    #[test]
    fn frames_cross_in_any_chunking_and_carry_no_zero_inside() {
        let fs = frames(1, 200);
        let wire = line(&fs);
        let zeros = wire.iter().filter(|&&b| b == 0).count();
        assert_eq!(zeros, fs.len() + 1, "only delimiters are zero");
        for chunk in [1, 7, 4096, wire.len()] {
            let mut d = Deframer::new();
            assert_eq!(deframe(&mut d, &wire, chunk), fs, "chunk {chunk}");
            assert_eq!(d.stats.frames, 200);
            assert_eq!(d.stats.bad_crc + d.stats.malformed + d.stats.oversize, 0);
        }
        let total: usize = fs.iter().map(|f| wire_len(f.len())).sum();
        assert!(wire.len() <= total + 1);
    }

    #[test]
    fn joining_mid_stream_loses_only_the_frame_in_progress() {
        let fs = frames(2, 50);
        let wire = line(&fs);
        // start 5 bytes into frame 11: it is lost, frame 12 on arrive
        let start = line(&fs[..11]).len() + 5;
        let mut d = Deframer::new();
        let got = deframe(&mut d, &wire[start..], 64);
        assert_eq!(got, fs[12..].to_vec());
        assert!(d.stats.sync_bytes > 0);
        assert_eq!(d.stats.bad_crc + d.stats.malformed, 0);
    }

    #[test]
    fn a_dropped_flipped_or_inserted_byte_costs_one_frame_and_never_yields_wrong_bytes() {
        let fs = frames(3, 300);
        let wire = line(&fs);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for round in 0..200 {
            let mut w = wire.clone();
            let at = rng.random_range(1..w.len());
            match round % 3 {
                0 => {
                    w.remove(at);
                }
                1 => w[at] ^= 1 << rng.random_range(0..8),
                _ => w.insert(at, rng.random()),
            }
            let mut d = Deframer::new();
            let got = deframe(&mut d, &w, 333);
            // every frame that comes out is one that went in, in order, and at most two are lost
            let mut it = fs.iter();
            for g in &got {
                assert!(
                    it.any(|f| f == g),
                    "round {round}: a frame came out that never went in"
                );
            }
            assert!(
                got.len() + 2 >= fs.len(),
                "round {round}: lost {}",
                fs.len() - got.len()
            );
        }
    }

    #[test]
    fn garbage_is_bounded_and_the_next_frame_still_arrives() {
        let mut d = Deframer::new();
        let mut wire = vec![0u8];
        wire.extend(std::iter::repeat_n(0x55u8, 50_000)); // no delimiter for 50 kB
        wire.push(0);
        encode(b"after the noise", &mut wire);
        let got = deframe(&mut d, &wire, 1000);
        assert_eq!(got, vec![b"after the noise".to_vec()]);
        assert_eq!(d.stats.oversize, 1);
        assert!(d.buf.capacity() <= wire_len(MAX_FRAME) * 2);
    }
}
