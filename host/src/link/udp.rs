//! The UDP link. Sending batches equal-sized frames into one GSO send (one system call for up to 64
//! datagrams); receiving uses GRO, so one call returns many datagrams of one stride. Both through
//! `quinn-udp`, which falls back to one datagram per call where the kernel lacks the offloads.
//! The sender's socket is never read; the receiver's is never written.

use anyhow::{Context, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use super::{FramesIn, FramesOut, LinkKind, Noise, LINK_WAIT};
use diode_proto::frame::IP_UDP_OVERHEAD;

pub struct UdpTx {
    sock: UdpSocket,
    state: UdpSocketState,
    /// The receiver's ports: each send goes to the next (several ports let a NIC's receive-side
    /// scaling put the frames on several queues and cores).
    targets: Vec<SocketAddr>,
    first: SocketAddr,
    next: std::cell::Cell<usize>,
}

impl UdpTx {
    /// A socket sending to `targets` in turn, one send (a frame or a GSO batch) each.
    pub fn new(targets: Vec<SocketAddr>, bind: Option<SocketAddr>, sndbuf: usize) -> Result<Self> {
        let Some(&target) = targets.first() else {
            anyhow::bail!("no UDP target");
        };
        let local = bind.unwrap_or_else(|| {
            if target.is_ipv4() {
                "0.0.0.0:0".parse().unwrap_or(target)
            } else {
                "[::]:0".parse().unwrap_or(target)
            }
        });
        let sock = Socket::new(
            Domain::for_address(target),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        sock.bind(&local.into())
            .with_context(|| format!("cannot bind {local}"))?;
        let _ = sock.set_send_buffer_size(sndbuf);
        let sock: UdpSocket = sock.into();
        let state = UdpSocketState::new((&sock).into()).context("cannot set up the UDP socket")?;
        Ok(UdpTx {
            sock,
            state,
            targets,
            first: target,
            next: std::cell::Cell::new(0),
        })
    }

    /// How many equal-sized datagrams one `send` may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().clamp(1, 64)
    }

    /// Send `contents` as datagrams of `segment` bytes (the last may be shorter). A full socket buffer is
    /// waited out; other errors are returned (the caller logs them and carries on: the link is lossy).
    pub fn send(&self, contents: &[u8], segment: usize) -> io::Result<()> {
        let i = self.next.get();
        self.next.set((i + 1) % self.targets.len().max(1));
        let t = Transmit {
            destination: self.targets.get(i).copied().unwrap_or(self.first),
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        loop {
            match self.state.try_send((&self.sock).into(), &t) {
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(105) =>
                {
                    std::thread::sleep(Duration::from_micros(200)); // ENOBUFS: the queue is full
                }
                r => return r,
            }
        }
    }
}

/// The socket, for the sandbox's filter on it.
impl std::os::fd::AsRawFd for UdpTx {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock)
    }
}

pub struct UdpRx {
    sock: UdpSocket,
    state: UdpSocketState,
    /// GRO batches land here: 8 buffers of `RX_BUF`, reused.
    bufs: Vec<Vec<u8>>,
    meta: [RecvMeta; 8],
    /// The socket's read timeout (`FramesIn::set_wait`).
    wait: Duration,
}

/// Space for one GRO batch: 64 datagrams of up to 1500 bytes fit twice over.
pub const RX_BUF: usize = 1 << 16;

impl UdpRx {
    pub fn bind(listen: SocketAddr, rcvbuf: usize) -> Result<Self> {
        let sock = Socket::new(
            Domain::for_address(listen),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        let _ = sock.set_reuse_address(true);
        sock.bind(&listen.into())
            .with_context(|| format!("cannot listen on {listen}"))?;
        let sock: UdpSocket = sock.into();
        let state = UdpSocketState::new((&sock).into()).context("cannot set up the UDP socket")?;
        // ask for a large buffer; as root, force past net.core.rmem_max
        if state.set_recv_buffer_size((&sock).into(), rcvbuf).is_err()
            || state.recv_buffer_size((&sock).into()).unwrap_or(0) < rcvbuf
        {
            force_rcvbuf(&sock, rcvbuf);
        }
        // quinn-udp makes the socket non-blocking; the receive loop wants to sleep in the kernel
        // until a datagram comes (or 100 ms pass, for its timers), not spin a core away
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(LINK_WAIT))?;
        Ok(UdpRx {
            sock,
            state,
            bufs: (0..8).map(|_| vec![0u8; RX_BUF]).collect(),
            meta: [RecvMeta::default(); 8],
            wait: LINK_WAIT,
        })
    }

    pub fn recv_buffer_size(&self) -> usize {
        self.state
            .recv_buffer_size((&self.sock).into())
            .unwrap_or(0)
    }
}

/// The receiver's sockets when the link uses several ports: one `recv` waits on all of them (poll) and
/// takes what each has, counting frames per socket so that status shows how they spread.
pub struct UdpRxSet {
    socks: Vec<UdpRx>,
    names: Vec<String>,
    frames: Vec<u64>,
    /// How long `poll` waits (`FramesIn::set_wait`).
    wait: Duration,
}

impl UdpRxSet {
    /// Bind every address in `listen` (one socket each, `rcvbuf` bytes of buffer each).
    pub fn bind(listen: &[SocketAddr], rcvbuf: usize) -> Result<Self> {
        let mut socks = Vec::new();
        for a in listen {
            let rx = UdpRx::bind(*a, rcvbuf)?;
            if listen.len() > 1 {
                // waited on with poll: each socket is read until it has nothing more
                rx.sock.set_nonblocking(true)?;
            }
            socks.push(rx);
        }
        if socks.is_empty() {
            anyhow::bail!("no UDP address to listen on");
        }
        Ok(UdpRxSet {
            wait: LINK_WAIT,
            frames: vec![0; socks.len()],
            names: listen.iter().map(|a| a.to_string()).collect(),
            socks,
        })
    }

    pub fn recv_buffer_size(&self) -> usize {
        self.socks
            .iter()
            .map(UdpRx::recv_buffer_size)
            .min()
            .unwrap_or(0)
    }
}

impl FramesIn for UdpRxSet {
    fn recv(&mut self, on_frame: &mut dyn FnMut(&mut [u8])) -> Result<Noise> {
        if let ([one], [count]) = (self.socks.as_mut_slice(), self.frames.as_mut_slice()) {
            return one.recv(&mut |f| {
                *count += 1;
                on_frame(f)
            });
        }
        let mut fds: Vec<libc::pollfd> = self
            .socks
            .iter()
            .map(|s| libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&s.sock),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll reads and writes exactly `fds.len()` pollfd entries of the vector, which lives
        // across the call; the sockets the fds name are owned by `self.socks`.
        let ms = self.wait.as_millis().clamp(1, 1000) as libc::c_int;
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(e).context("poll on the link's sockets failed");
        }
        let mut noise = Vec::new();
        for ((s, fd), count) in self.socks.iter_mut().zip(&fds).zip(self.frames.iter_mut()) {
            if fd.revents & libc::POLLIN != 0 {
                noise.extend(s.recv(&mut |f| {
                    *count += 1;
                    on_frame(f)
                })?);
            }
        }
        Ok(noise)
    }
    fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
        if let [one] = self.socks.as_mut_slice() {
            one.set_wait(wait);
        }
    }
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.socks
            .first()
            .map(|s| std::os::fd::AsFd::as_fd(&s.sock))
    }
    fn kernel_drops(&self) -> Option<u32> {
        self.socks
            .iter()
            .map(|s| s.kernel_drops())
            .try_fold(0u32, |sum, d| d.map(|d| sum.wrapping_add(d)))
    }
    fn per_socket(&self) -> Vec<(String, u64)> {
        self.names
            .iter()
            .cloned()
            .zip(self.frames.iter().copied())
            .collect()
    }
}

/// The socket, for the sandbox's probe of it.
impl std::os::fd::AsFd for UdpRx {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.sock)
    }
}

impl FramesIn for UdpRx {
    /// One system call for up to 8 GRO batches; each batch is cut at the kernel's stride into its
    /// datagrams (socket drop counters count batches, so frames are counted by the receiver itself).
    fn recv(&mut self, on_frame: &mut dyn FnMut(&mut [u8])) -> Result<Noise> {
        let n = {
            let mut slices: Vec<IoSliceMut> =
                self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match self
                .state
                .recv((&self.sock).into(), &mut slices, &mut self.meta)
            {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    0
                }
                Err(e) => return Err(e).context("receive on the link failed"),
            }
        };
        for (buf, m) in self.bufs.iter_mut().zip(self.meta.iter()).take(n) {
            let stride = m.stride.max(1);
            for f in buf[..m.len.min(RX_BUF)].chunks_mut(stride) {
                on_frame(f);
            }
        }
        Ok(Vec::new())
    }
    fn set_wait(&mut self, wait: Duration) {
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_secs(1));
        if wait != self.wait && self.sock.set_read_timeout(Some(wait)).is_ok() {
            self.wait = wait;
        }
    }
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(&self.sock))
    }
    fn kernel_drops(&self) -> Option<u32> {
        socket_drops(&self.sock)
    }
}

/// SO_MEMINFO's drop counter of a socket (`sk_drops`: what the kernel could not queue for it).
fn socket_drops(sock: &UdpSocket) -> Option<u32> {
    use std::os::fd::AsRawFd;
    const SO_MEMINFO: libc::c_int = 55;
    let mut v = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (the size of `v`, which lives across the call) and
    // stores the length written in `len`; the socket is borrowed for the call. socket2 has no wrapper
    // for SO_MEMINFO.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            v.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let i = libc::SK_MEMINFO_DROPS as usize;
    (r == 0 && len as usize >= (i + 1) * 4).then(|| v[i])
}

impl FramesOut for UdpTx {
    fn kind(&self) -> LinkKind {
        LinkKind::Udp
    }
    fn send(&mut self, contents: &[u8], segment: usize) -> io::Result<()> {
        UdpTx::send(self, contents, segment)
    }
    fn paced_bytes(&self, len: usize) -> usize {
        len + IP_UDP_OVERHEAD
    }
    fn max_segments(&self) -> usize {
        UdpTx::max_segments(self)
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock)
    }
    fn describe(&self) -> String {
        match self.targets.as_slice() {
            [one] => one.to_string(),
            [first, .., last] => format!("{first} (ports {}-{})", first.port(), last.port()),
            [] => String::new(),
        }
    }
}

/// SO_RCVBUFFORCE goes past net.core.rmem_max when the process has CAP_NET_ADMIN (the appliance runs the
/// receiver with it, or raises rmem_max: see hardware/README.md). Failure leaves the smaller buffer.
fn force_rcvbuf(sock: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt reads exactly size_of::<c_int>() bytes from a valid pointer to `v`, on a
    // socket this function borrows; socket2 has no wrapper for SO_RCVBUFFORCE.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `set_wait` changes how long `recv` blocks (the socket's read timeout, kept within 1 ms..1 s),
    /// and frames still come through after it: one socket and a set of two.
    #[test]
    fn set_wait_shortens_the_wait_and_frames_still_come() {
        let mut rx = UdpRx::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert_eq!(rx.sock.read_timeout().unwrap(), Some(LINK_WAIT));
        // the kernel keeps the timeout in scheduler ticks (4 ms at 250 Hz): a few ms, not 100
        let short = |rx: &UdpRx| {
            rx.sock
                .read_timeout()
                .unwrap()
                .is_some_and(|t| t <= Duration::from_millis(10))
        };
        rx.set_wait(Duration::from_millis(2));
        assert!(short(&rx), "{:?}", rx.sock.read_timeout());
        // zero would mean "block forever" to the socket: kept at 1 ms at least
        rx.set_wait(Duration::ZERO);
        assert!(short(&rx), "{:?}", rx.sock.read_timeout());
        let to = rx.sock.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"frame", to).unwrap();
        let mut got = Vec::new();
        for _ in 0..1000 {
            rx.recv(&mut |f| got.push(f.to_vec())).unwrap();
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got, vec![b"frame".to_vec()]);
        rx.set_wait(LINK_WAIT);
        assert_eq!(rx.sock.read_timeout().unwrap(), Some(LINK_WAIT));

        let mut set = UdpRxSet::bind(
            &[
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
            ],
            1 << 20,
        )
        .unwrap();
        set.set_wait(Duration::from_millis(2));
        assert_eq!(set.wait, Duration::from_millis(2));
        tx.send_to(b"second", set.socks[1].sock.local_addr().unwrap())
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..1000 {
            set.recv(&mut |f| got.push(f.to_vec())).unwrap();
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got, vec![b"second".to_vec()]);
    }
}
