//! The serial link: the same sealed frames as over UDP, framed for a byte stream by
//! `diode_proto::stream` (COBS + CRC-32, zero delimiters), on a tty opened raw through `serialport`.
//! The sender's line is never read; the receiver's is never written.

use anyhow::{bail, Context, Result};
use diode_proto::stream::{encode, wire_len, Deframer};
use serialport::{DataBits, FlowControl, Parity, StopBits, TTYPort};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::LinkKind;
use super::{FramesIn, FramesOut, Noise};
use diode_proto::DropReason;

/// A serial line as configured (`device`, `baud`, `data_bits`, `parity`, `stop_bits`).
#[derive(Clone, Debug)]
pub struct Line {
    pub device: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: StopBits,
}

impl Line {
    /// Check the configured keys. Frames are binary, so only 8 data bits can carry them.
    pub fn new(
        device: Option<&Path>,
        baud: Option<u32>,
        data_bits: u8,
        parity: &str,
        stop_bits: u8,
    ) -> Result<Line> {
        let Some(device) = device else {
            bail!("link = \"serial\" needs device = \"/dev/tty...\" (the serial port)");
        };
        let Some(baud) = baud else {
            bail!("link = \"serial\" needs baud = (the line's speed, e.g. 115200)");
        };
        if !(300..=20_000_000).contains(&baud) {
            bail!("baud = {baud}: use 300 to 20000000");
        }
        if data_bits != 8 {
            bail!("data_bits = {data_bits}: frames are binary and need 8 data bits per character");
        }
        let parity = match parity {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            p => bail!("parity = {p:?}: use \"none\", \"even\" or \"odd\""),
        };
        let stop_bits = match stop_bits {
            1 => StopBits::One,
            2 => StopBits::Two,
            s => bail!("stop_bits = {s}: use 1 or 2"),
        };
        Ok(Line {
            device: device.to_path_buf(),
            baud,
            parity,
            stop_bits,
        })
    }

    /// Bits on the wire per byte: start, 8 data, parity if any, stop.
    pub fn bits_per_byte(&self) -> u32 {
        let parity = u32::from(self.parity != Parity::None);
        let stop = if self.stop_bits == StopBits::Two {
            2
        } else {
            1
        };
        1 + 8 + parity + stop
    }

    /// What the pacer must count for a frame of `len` bytes, in its unit of 8 bits: the framed length on
    /// the line times the bits each byte really takes.
    pub fn paced_bytes(&self, len: usize) -> usize {
        (wire_len(len) * self.bits_per_byte() as usize).div_ceil(8)
    }

    pub fn describe(&self) -> String {
        format!("serial:{}@{}", self.device.display(), self.baud)
    }

    fn open(&self, timeout: Duration) -> Result<TTYPort> {
        let path = self.device.to_string_lossy();
        serialport::new(path, self.baud)
            .data_bits(DataBits::Eight)
            .parity(self.parity)
            .stop_bits(self.stop_bits)
            .flow_control(FlowControl::None)
            .timeout(timeout)
            .open_native()
            .with_context(|| format!("cannot open the serial port {}", self.device.display()))
    }
}

pub struct SerialTx {
    port: TTYPort,
    buf: Vec<u8>,
    line: Line,
}

impl SerialTx {
    /// Open the line for sending. A leading delimiter ends whatever the receiver may have half-read.
    pub fn open(line: &Line) -> Result<SerialTx> {
        let mut port = line.open(Duration::from_secs(2))?;
        port.write_all(&[0]).with_context(|| {
            format!("cannot write to the serial port {}", line.device.display())
        })?;
        Ok(SerialTx {
            port,
            buf: Vec::with_capacity(16 << 10),
            line: line.clone(),
        })
    }

    /// Send `contents` as frames of `segment` bytes (the last may be shorter), each framed for the line.
    /// A line that does not drain within the timeout returns an error (the frames are lost; the receiver
    /// resynchronises at the next delimiter).
    pub fn send(&mut self, contents: &[u8], segment: usize) -> io::Result<()> {
        self.buf.clear();
        for f in contents.chunks(segment.max(1)) {
            encode(f, &mut self.buf);
        }
        self.port.write_all(&self.buf)
    }
}

impl FramesOut for SerialTx {
    fn kind(&self) -> LinkKind {
        LinkKind::Serial
    }
    fn send(&mut self, contents: &[u8], segment: usize) -> io::Result<()> {
        SerialTx::send(self, contents, segment)
    }
    fn paced_bytes(&self, len: usize) -> usize {
        self.line.paced_bytes(len)
    }
    /// One frame at a time: each is paced on its own, so an urgent frame never waits behind a batch
    /// that takes a second to cross the line.
    fn max_segments(&self) -> usize {
        1
    }
    /// The tty, for the sandbox's filter on it.
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.port)
    }
    fn describe(&self) -> String {
        self.line.describe()
    }
}

pub struct SerialRx {
    line: Line,
    port: Option<TTYPort>,
    buf: Vec<u8>,
    pub deframer: Deframer,
    /// How long a read waits (`FramesIn::set_wait`).
    wait: Duration,
}

impl SerialRx {
    pub fn open(line: &Line) -> Result<SerialRx> {
        let port = line.open(super::LINK_WAIT)?;
        Ok(SerialRx {
            line: line.clone(),
            port: Some(port),
            buf: vec![0u8; 16 << 10],
            deframer: Deframer::new(),
            wait: super::LINK_WAIT,
        })
    }

    /// Read what the line has (waiting at most `LINK_WAIT`, or what `set_wait` said) and hand each complete frame to `on_frame`. A port
    /// that fails (an unplugged USB adapter) is reopened, once a second, until it is back.
    pub fn recv(&mut self, on_frame: impl FnMut(&mut [u8])) -> Result<()> {
        let Some(port) = self.port.as_mut() else {
            std::thread::sleep(Duration::from_secs(1));
            match self.line.open(self.wait) {
                Ok(p) => {
                    tracing::info!(device = %self.line.device.display(), "serial port open again");
                    self.port = Some(p);
                    // what was half-read before the failure cannot be joined to what follows
                    self.deframer = Deframer::new();
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "serial port still unavailable")
                }
            }
            return Ok(());
        };
        match port.read(&mut self.buf) {
            Ok(0) => Ok(()),
            Ok(n) => {
                self.deframer.push(&self.buf[..n], on_frame);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => {
                tracing::warn!(device = %self.line.device.display(), error = %e,
                    "reading the serial port failed; reopening it");
                self.port = None;
                Ok(())
            }
        }
    }

    pub fn device(&self) -> &Path {
        &self.line.device
    }
}

impl FramesIn for SerialRx {
    fn set_wait(&mut self, wait: Duration) {
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_secs(1));
        if wait == self.wait {
            return;
        }
        self.wait = wait;
        if let Some(p) = self.port.as_mut() {
            if let Err(e) = serialport::SerialPort::set_timeout(p, wait) {
                tracing::debug!(error = %e, "cannot change the serial port's read timeout");
            }
        }
    }
    fn recv(&mut self, on_frame: &mut dyn FnMut(&mut [u8])) -> Result<Noise> {
        SerialRx::recv(self, on_frame)?;
        // line noise is counted with the other drop reasons
        let st = std::mem::take(&mut self.deframer.stats);
        Ok([
            (DropReason::SerialCrc, st.bad_crc),
            (DropReason::SerialMalformed, st.malformed),
            (DropReason::SerialOversize, st.oversize),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect())
    }
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// Check that a pace fits the line: the pacer counts 8 bits per byte, the line spends `bits_per_byte`.
pub fn check_rate(line: &Line, rate_bps: u64) -> Result<()> {
    if rate_bps > u64::from(line.baud) {
        bail!(
            "rate = {rate_bps} bit/s is more than the serial line carries (baud = {}): anything faster is lost \
             (a UART buffer fills silently); leave rate out to pace at the line's speed, or set it at or below {}bit",
            line.baud,
            line.baud
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `set_wait` sets the port's read timeout (kept within 1 ms..1 s), and frames still come through
    /// after it: over a real pty pair from socat (tests/run.sh installs it).
    #[test]
    fn set_wait_sets_the_serial_read_timeout_and_frames_still_come() {
        let dir = tempfile::tempdir().unwrap();
        let (tx_path, rx_path) = (dir.path().join("tx"), dir.path().join("rx"));
        let mut socat = std::process::Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", tx_path.display()))
            .arg(format!("pty,raw,echo=0,link={}", rx_path.display()))
            .spawn()
            .expect("socat (tests/run.sh installs it)");
        for _ in 0..500 {
            if tx_path.exists() && rx_path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let line = |p: &Path| Line {
            device: p.to_path_buf(),
            baud: 115_200,
            parity: Parity::None,
            stop_bits: StopBits::One,
        };
        let mut rx = SerialRx::open(&line(&rx_path)).unwrap();
        let timeout = |rx: &SerialRx| rx.port.as_ref().map(serialport::SerialPort::timeout);
        assert_eq!(timeout(&rx), Some(super::super::LINK_WAIT));
        FramesIn::set_wait(&mut rx, Duration::from_millis(2));
        assert_eq!(timeout(&rx), Some(Duration::from_millis(2)));
        FramesIn::set_wait(&mut rx, Duration::ZERO);
        assert_eq!(timeout(&rx), Some(Duration::from_millis(1)));
        let mut tx = SerialTx::open(&line(&tx_path)).unwrap();
        tx.send(b"a frame", 64).unwrap();
        let mut got = Vec::new();
        for _ in 0..2000 {
            FramesIn::recv(&mut rx, &mut |f| got.push(f.to_vec())).unwrap();
            if !got.is_empty() {
                break;
            }
        }
        let _ = socat.kill();
        let _ = socat.wait();
        assert_eq!(got, vec![b"a frame".to_vec()]);
    }
}
