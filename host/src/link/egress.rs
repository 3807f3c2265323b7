//! Where a UDP link's frames leave this host, and whether a GSO batch is cut into datagrams before the
//! wire. A batch (one system call for up to 64 equal frames) is worth sending only where something
//! segments it: a physical NIC does (in hardware with UDP segmentation offload, or the kernel does it in
//! software just before the driver); a virtual device (veth, bridge, tun) that advertises
//! `tx-udp-segmentation` passes the batch on whole, so the far side of an emulated diode, or a software
//! bridge in front of a real one, sees one 64 KB packet: lost or kept as a whole, which turns independent
//! frame loss into bursts of 44 frames. Such a device segments before it when the feature is off
//! (`ethtool -K <dev> tx-udp-segmentation off`), and then batching is safe again.
//!
//! The egress device is the interface holding the local address the kernel picks for the target (a
//! UDP `connect`, which sends nothing, then `getsockname`); its features come from the ethtool ioctl
//! (`ETHTOOL_GSTRINGS` for the feature's bit, `ETHTOOL_GFEATURES` for its state).

use anyhow::{bail, Context, Result};
use std::ffi::CStr;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Whether, and why, frames to the target may be batched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// The interface the frames leave by ("lo" towards loopback).
    pub device: String,
    /// A GSO batch reaches the wire (or the receiver, on loopback) as separate datagrams.
    pub splits: bool,
    /// Why, in words, for the log.
    pub why: String,
}

/// Look at the way to `target`.
pub fn egress(target: SocketAddr, bind: Option<SocketAddr>) -> Result<Egress> {
    if target.ip().is_loopback() {
        return Ok(Egress {
            device: "lo".into(),
            splits: true,
            why: "loopback: the receiver's GRO takes the batch apart".into(),
        });
    }
    let local = bind.unwrap_or(if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    });
    let probe = UdpSocket::bind(local).with_context(|| format!("cannot bind {local}"))?;
    // connect on UDP sends nothing: it only asks the kernel for the route and the source address
    probe
        .connect(target)
        .with_context(|| format!("no route to {target}"))?;
    let source = probe.local_addr()?.ip();
    let device = interface_of(source)?.with_context(|| {
        format!("no interface holds {source}, the source address towards {target}")
    })?;
    let sys = Path::new("/sys/class/net").join(&device);
    if sys.join("device").exists() {
        return Ok(Egress {
            splits: true,
            why: format!(
                "{device} is a physical NIC: it segments GSO batches in hardware, or the kernel does before its driver"
            ),
            device,
        });
    }
    match feature_active(&probe, &device, "tx-udp-segmentation") {
        Ok(false) => Ok(Egress {
            splits: true,
            why: format!(
                "{device} is a virtual device with tx-udp-segmentation off: the kernel segments batches before it"
            ),
            device,
        }),
        Ok(true) => Ok(Egress {
            splits: false,
            why: format!(
                "{device} is a virtual device that passes GSO batches on whole (tx-udp-segmentation on): \
                 one datagram per send, so a loss downstream stays one frame; `ethtool -K {device} \
                 tx-udp-segmentation off` makes it segment"
            ),
            device,
        }),
        Err(e) => Ok(Egress {
            splits: false,
            why: format!(
                "{device} is a virtual device whose features cannot be read ({e:#}): one datagram per send"
            ),
            device,
        }),
    }
}

/// The name of the interface that holds `addr`.
fn interface_of(addr: IpAddr) -> Result<Option<String>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a pointer to a list it allocated into `list`, which we free below with
    // freeifaddrs exactly once; nothing from the list is kept past that.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let node = unsafe { &*cur };
        cur = node.ifa_next;
        if node.ifa_addr.is_null() || node.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is; each is read
        // with its own type only.
        let ip = unsafe {
            match i32::from((*node.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(node.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()))
                }
                libc::AF_INET6 => {
                    let a = &*(node.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(a.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if ip == Some(addr) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            found = Some(
                unsafe { CStr::from_ptr(node.ifa_name) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    // SAFETY: `list` came from getifaddrs above and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// One SIOCETHTOOL call on `dev` with `buf` as the command (its first word is the command number).
fn ethtool(sock: &UdpSocket, dev: &str, buf: &mut [u32]) -> Result<()> {
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = dev.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        bail!("interface name {dev:?} too long");
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
    // SAFETY: SIOCETHTOOL reads the command from `buf` and writes at most the size the command's own
    // fields declare, which the callers size `buf` for; `ifr` and `buf` outlive the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCETHTOOL");
    }
    Ok(())
}

/// Whether the feature named `feature` (as `ethtool -k` names it) is active on `dev`.
fn feature_active(sock: &UdpSocket, dev: &str, feature: &str) -> Result<bool> {
    // how many feature names: struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[1] }
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ethtool(sock, dev, &mut info)?;
    let count = info[4] as usize;
    if info[2] & (1 << ETH_SS_FEATURES) == 0 || count == 0 || count > 4096 {
        bail!("no feature names");
    }
    // the names: struct ethtool_gstrings { cmd, string_set, len, u8 data[len * 32] }
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool(sock, dev, &mut strings)?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let bit = bytes
        .chunks(ETH_GSTRING_LEN)
        .position(|n| n.split(|b| *b == 0).next() == Some(feature.as_bytes()))
        .with_context(|| format!("{dev} has no feature {feature}"))?;
    // the state: struct ethtool_gfeatures { cmd, size, { available, requested, active, never_changed }[size] }
    let blocks = count.div_ceil(32);
    let mut features = vec![0u32; 2 + 4 * blocks];
    features[..2].copy_from_slice(&[ETHTOOL_GFEATURES, blocks as u32]);
    ethtool(sock, dev, &mut features)?;
    let active = features[2 + 4 * (bit / 32) + 2];
    Ok(active & (1 << (bit % 32)) != 0)
}
