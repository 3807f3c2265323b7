//! Links behind one seam: a link is a way to move sealed frames one way. The sender holds its side as
//! `FramesOut` (it never reads), the receiver its side as `FramesIn` (it never writes); each kind of link
//! is one file here (`udp`: datagrams, GSO and GRO batching and their splitting; `serial`: a tty with the
//! byte-stream framing of `diode_proto::stream`) plus its lines in the configs. Protocol logic stays in
//! proto: a link only moves bytes.

pub mod serial;
pub mod udp;

use anyhow::Result;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// `link` in both configs: the UDP link (default) or a serial line.
#[derive(serde::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    #[default]
    Udp,
    Serial,
}

/// The sender's side of a link.
pub trait FramesOut {
    fn kind(&self) -> LinkKind;
    /// Send `contents`, frames of `segment` bytes back to back (the last may be shorter), in one go.
    fn send(&mut self, contents: &[u8], segment: usize) -> io::Result<()>;
    /// What the link spends on one frame of `len` bytes, in bytes at the pacer's 8 bits each (headers,
    /// framing, start and stop bits): what the pacer counts.
    fn paced_bytes(&self, len: usize) -> usize;
    /// Frames one `send` may carry.
    fn max_segments(&self) -> usize;
    /// The descriptor the sandbox's filter refuses reads on.
    fn raw_fd(&self) -> RawFd;
    /// For logs: the target address or `serial:DEVICE@BAUD`.
    fn describe(&self) -> String;
}

/// What the link itself threw away since the last call (line noise on a serial line), by reason; the
/// receiver counts these with its other drop reasons.
pub type Noise = Vec<(diode_proto::DropReason, u64)>;

/// The receiver's side of a link.
pub trait FramesIn {
    /// Wait a short while (at most about 100 ms) for frames and hand each to `on_frame`, one frame per
    /// call, however the link batched them.
    fn recv(&mut self, on_frame: &mut dyn FnMut(&mut [u8])) -> Result<Noise>;
    /// The socket, where the link is one (the sandbox's probe of it).
    fn socket(&self) -> Option<BorrowedFd<'_>>;
}
