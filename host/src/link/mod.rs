//! Links behind one seam: a link is a way to move sealed frames one way. The sender holds its side as
//! `FramesOut` (it never reads), the receiver its side as `FramesIn` (it never writes); each kind of link
//! is one file here (`udp`: datagrams, GSO and GRO batching and their splitting; `serial`: a tty with the
//! byte-stream framing of `diode_proto::stream`) plus its lines in the configs. Protocol logic stays in
//! proto: a link only moves bytes.

pub mod egress;
pub mod serial;
pub mod udp;

use anyhow::{Context, Result};
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

/// `link` in both configs: the UDP link (default) or a serial line.
#[derive(serde::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    #[default]
    Udp,
    Serial,
}

/// The keys of the link that both configs share (send.toml and recv.toml take them alike): which link,
/// and for a serial line its device and settings. The address keys differ by side (`target`/`bind` and
/// `listen`) and stay in each binary's config. A new kind of link adds its keys here and a file beside
/// `udp.rs` and `serial.rs`.
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    #[serde(default)]
    pub link: LinkKind,
    pub device: Option<PathBuf>,
    pub baud: Option<u32>,
    #[serde(default = "d_data_bits")]
    pub data_bits: u8,
    #[serde(default = "d_parity")]
    pub parity: String,
    #[serde(default = "d_stop_bits")]
    pub stop_bits: u8,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            link: LinkKind::Udp,
            device: None,
            baud: None,
            data_bits: d_data_bits(),
            parity: d_parity(),
            stop_bits: d_stop_bits(),
        }
    }
}

fn d_data_bits() -> u8 {
    8
}
fn d_parity() -> String {
    "none".into()
}
fn d_stop_bits() -> u8 {
    1
}

impl LinkConfig {
    const KEYS: [&'static str; 6] = ["link", "device", "baud", "data_bits", "parity", "stop_bits"];

    /// Read a config file: the link's keys into a `LinkConfig`, the rest into the binary's own `T` (which
    /// refuses keys it does not know). Relative paths are taken from the config file's folder by the
    /// caller (`resolve`).
    pub fn split<T: serde::de::DeserializeOwned>(
        text: &str,
        path: &Path,
    ) -> Result<(LinkConfig, T)> {
        let invalid = || format!("config {} is not valid", path.display());
        let mut rest: toml::Table = toml::from_str(text).with_context(invalid)?;
        let mut keys = toml::Table::new();
        for k in Self::KEYS {
            if let Some(v) = rest.remove(k) {
                keys.insert(k.to_string(), v);
            }
        }
        let link: LinkConfig = keys.try_into().with_context(invalid)?;
        let own: T = rest.try_into().with_context(invalid)?;
        Ok((link, own))
    }

    /// A relative `device` is taken from `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        if let Some(d) = self.device.as_mut() {
            if d.is_relative() {
                *d = base.join(&*d);
            }
        }
    }

    /// The serial line, when `link = "serial"`.
    pub fn serial_line(&self) -> Result<Option<serial::Line>> {
        if self.link != LinkKind::Serial {
            return Ok(None);
        }
        serial::Line::new(
            self.device.as_deref(),
            self.baud,
            self.data_bits,
            &self.parity,
            self.stop_bits,
        )
        .map(Some)
    }
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
/// How long a link's `recv` waits for frames before it returns empty-handed, by default.
pub const LINK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

pub trait FramesIn {
    /// Wait a short while (at most about 100 ms) for frames and hand each to `on_frame`, one frame per
    /// call, however the link batched them.
    fn recv(&mut self, on_frame: &mut dyn FnMut(&mut [u8])) -> Result<Noise>;
    /// How long `recv` waits when no frame comes (`LINK_WAIT` unless set): the receive loop shortens
    /// it while replies of its own are due (the writer's), so that finishing an object does not wait
    /// out the link's silence after its last frame. Kept within 1 ms..1 s.
    fn set_wait(&mut self, _wait: std::time::Duration) {}
    /// The socket, where the link is one (the sandbox's probe of it).
    fn socket(&self) -> Option<BorrowedFd<'_>>;
    /// How many datagrams (or GRO batches) the kernel has dropped at this link's socket since it was
    /// opened because its receive queue was full: the receiver fell behind. A 32-bit counter that
    /// wraps; None where the link has no such counter (a serial line).
    fn kernel_drops(&self) -> Option<u32> {
        None
    }
    /// Frames taken from each of the link's sockets since start, by listening address, where the link
    /// has several (UDP on several ports); empty otherwise.
    fn per_socket(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// `first` and the next `n - 1` ports of the same address; `n` from 1 to 64, the last port at most 65535.
pub fn consecutive_ports(first: std::net::SocketAddr, n: u16) -> Result<Vec<std::net::SocketAddr>> {
    if !(1..=64).contains(&n) || u32::from(first.port()) + u32::from(n) - 1 > 65535 {
        anyhow::bail!(
            "ports = {n} from port {}: use 1 to 64 ports, the last at most 65535",
            first.port()
        );
    }
    Ok((0..n)
        .map(|i| std::net::SocketAddr::new(first.ip(), first.port() + i))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Own {
        listen: String,
    }

    /// The link's keys go to `LinkConfig`, the rest to the binary's own struct; an unknown key is still
    /// refused by name, and a relative device is taken from the config's folder.
    #[test]
    fn one_link_section_for_both_configs() {
        let text = "listen = \"x\"\nlink = \"serial\"\ndevice = \"tty0\"\nbaud = 115200\n";
        let (mut link, own) =
            LinkConfig::split::<Own>(text, Path::new("/etc/d/recv.toml")).unwrap();
        assert_eq!(own.listen, "x");
        assert_eq!(link.link, LinkKind::Serial);
        link.resolve(Path::new("/etc/d"));
        assert_eq!(link.device.as_deref(), Some(Path::new("/etc/d/tty0")));
        assert_eq!(link.serial_line().unwrap().unwrap().baud, 115200);
        let err = LinkConfig::split::<Own>("listen = \"x\"\nlistne = 1\n", Path::new("r.toml"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("listne"), "{err:#}");
        let err =
            LinkConfig::split::<Own>("listen = \"x\"\nlink = \"pigeon\"\n", Path::new("r.toml"))
                .unwrap_err();
        assert!(format!("{err:#}").contains("pigeon"), "{err:#}");
    }
}
