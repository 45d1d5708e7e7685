//! The collectors' UDP receive path: sockets with a large receive buffer and `SO_REUSEPORT`,
//! batched receives (`recvmmsg` on Linux, `recvfrom` with `MSG_DONTWAIT` elsewhere), and the
//! kernel's per-socket drop counter (Linux: the `drops` column of `/proc/net/udp{,6}`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

/// Largest UDP payload; every receive buffer has this size so no datagram is ever truncated.
pub const MAX_DATAGRAM: usize = 65_536;
/// Distance between two datagrams' buffers: [`MAX_DATAGRAM`] plus an odd number of cache
/// lines, so that the datagrams of one batch (a kilobyte or so each) do not all start in the
/// same L1 and L2 cache set, as they did at a stride of exactly 64 KiB.
const SLOT_STRIDE: usize = MAX_DATAGRAM + 5 * 64;
/// How long a blocked receive waits before the worker checks whether it must stop.
pub const RECEIVE_POLL: Duration = Duration::from_millis(100);

/// A bound collector socket.
#[derive(Debug)]
pub struct BoundSocket {
    /// The socket.
    pub socket: UdpSocket,
    /// The address it is bound to (port 0 resolved).
    pub local: SocketAddr,
    /// The receive buffer the kernel granted, in bytes (as `SO_RCVBUF` reports it).
    pub receive_buffer_bytes: usize,
    /// The socket's inode (Linux; 0 elsewhere), to find its drop counter.
    pub inode: u64,
}

/// Binds a UDP socket to `addr` with `SO_REUSEPORT` (when `reuse_port`) and a receive buffer of
/// `receive_buffer_bytes` (Linux: `SO_RCVBUFFORCE` first, which ignores `net.core.rmem_max` when
/// the process has CAP_NET_ADMIN, then `SO_RCVBUF`). Reads time out after [`RECEIVE_POLL`].
pub fn bind(
    addr: SocketAddr,
    reuse_port: bool,
    receive_buffer_bytes: usize,
) -> io::Result<BoundSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` also receives IPv4 exporters when the system allows it; best effort.
        let _ = socket.set_only_v6(false);
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    set_receive_buffer(&socket, receive_buffer_bytes);
    socket.set_read_timeout(Some(RECEIVE_POLL))?;
    socket.bind(&addr.into())?;
    let receive_buffer_bytes = socket.recv_buffer_size().unwrap_or(0);
    let socket: UdpSocket = socket.into();
    let local = socket.local_addr()?;
    let inode = socket_inode(&socket);
    Ok(BoundSocket {
        socket,
        local,
        receive_buffer_bytes,
        inode,
    })
}

fn set_receive_buffer(socket: &Socket, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads exactly size_of::<c_int>() bytes from a valid pointer.
        let forced = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if forced == 0 {
            return;
        }
    }
    if let Err(error) = socket.set_recv_buffer_size(bytes) {
        tracing::warn!("setting SO_RCVBUF to {bytes}: {error}");
    }
}

#[cfg(target_os = "linux")]
fn socket_inode(socket: &UdpSocket) -> u64 {
    // SAFETY: fstat writes into a zeroed stat struct we own; the fd is valid for the call.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(socket.as_raw_fd(), &mut stat) == 0 {
            stat.st_ino
        } else {
            0
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn socket_inode(_socket: &UdpSocket) -> u64 {
    0
}

/// Kernel drop counters of the sockets with these inodes (Linux: `/proc/net/udp` and
/// `/proc/net/udp6`, last column). Sockets not found are absent from the result.
#[cfg(target_os = "linux")]
pub fn socket_drops(inodes: &[u64]) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    if inodes.is_empty() {
        return found;
    }
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            found.extend(parse_proc_udp_drops(&text, inodes));
        }
    }
    found
}

/// Kernel drop counters: not available on this system (always empty).
#[cfg(not(target_os = "linux"))]
pub fn socket_drops(_inodes: &[u64]) -> Vec<(u64, u64)> {
    Vec::new()
}

/// Parses the `(inode, drops)` of the wanted inodes out of `/proc/net/udp` text.
pub fn parse_proc_udp_drops(text: &str, inodes: &[u64]) -> Vec<(u64, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let drops: u64 = fields.get(12)?.parse().ok()?;
            inodes.contains(&inode).then_some((inode, drops))
        })
        .collect()
}

/// Receives datagrams in batches into buffers it owns.
pub struct BatchReceiver {
    socket: UdpSocket,
    buffers: Vec<u8>,
    lengths: Vec<usize>,
    sources: Vec<Option<SocketAddr>>,
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    /// `recvmmsg`'s message headers and buffer descriptors, kept between calls (pointed
    /// again at `buffers` and `names` before each call).
    #[cfg(target_os = "linux")]
    headers: Vec<libc::mmsghdr>,
    #[cfg(target_os = "linux")]
    iovecs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `headers` and `iovecs` only ever point into `buffers` and
// `names`, heap memory owned by the same value, and are set again before every use.
#[cfg(target_os = "linux")]
unsafe impl Send for BatchReceiver {}

impl BatchReceiver {
    /// A receiver of up to `batch` datagrams per call (at least 1).
    pub fn new(socket: UdpSocket, batch: usize) -> Self {
        let batch = batch.max(1);
        Self {
            socket,
            buffers: vec![0; batch * SLOT_STRIDE],
            lengths: vec![0; batch],
            sources: vec![None; batch],
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            names: vec![unsafe { std::mem::zeroed() }; batch],
            #[cfg(target_os = "linux")]
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            headers: vec![unsafe { std::mem::zeroed() }; batch],
            #[cfg(target_os = "linux")]
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                batch
            ],
        }
    }

    /// How long [`BatchReceiver::receive`] waits for a first datagram from now on.
    pub fn set_wait(&self, wait: Duration) -> io::Result<()> {
        self.socket.set_read_timeout(Some(wait))
    }

    /// Datagram `index` of the last batch and its sender (`None` when the kernel gave no
    /// usable address).
    pub fn datagram(&self, index: usize) -> (&[u8], Option<SocketAddr>) {
        let start = index * SLOT_STRIDE;
        (
            &self.buffers[start..start + self.lengths[index].min(MAX_DATAGRAM)],
            self.sources[index],
        )
    }

    /// Waits up to [`RECEIVE_POLL`] (or what [`BatchReceiver::set_wait`] set) for a datagram
    /// and takes every datagram already queued, up
    /// to the batch size. Returns how many were received; a timeout is `Ok(0)`.
    pub fn receive(&mut self) -> io::Result<usize> {
        match self.receive_inner() {
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(target_os = "linux")]
    fn receive_inner(&mut self) -> io::Result<usize> {
        let batch = self.lengths.len();
        for (((header, iovec), name), chunk) in self
            .headers
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .zip(self.names.iter_mut())
            .zip(self.buffers.chunks_exact_mut(SLOT_STRIDE))
        {
            *iovec = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        let headers = &mut self.headers;
        // SAFETY: every header points at a buffer, iovec and address we own and that outlive
        // the call; the kernel writes at most the lengths given.
        let received = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                headers.as_mut_ptr(),
                batch as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        for (i, header) in headers.iter().take(received).enumerate() {
            self.lengths[i] = header.msg_len as usize;
            self.sources[i] = sockaddr_to_std(&self.names[i], header.msg_hdr.msg_namelen);
        }
        Ok(received)
    }

    #[cfg(not(target_os = "linux"))]
    fn receive_inner(&mut self) -> io::Result<usize> {
        let batch = self.lengths.len();
        let mut received = 0;
        while received < batch {
            let flags = if received == 0 { 0 } else { libc::MSG_DONTWAIT };
            let start = received * SLOT_STRIDE;
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: the buffer slice and the address are ours and large enough.
            let n = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    self.buffers[start..].as_mut_ptr().cast(),
                    MAX_DATAGRAM,
                    flags,
                    (&mut name as *mut libc::sockaddr_storage).cast(),
                    &mut name_len,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if received > 0 {
                    break;
                }
                return Err(error);
            }
            self.lengths[received] = n as usize;
            self.sources[received] = sockaddr_to_std(&name, name_len);
            received += 1;
        }
        Ok(received)
    }
}

/// Converts a kernel socket address to a std one (IPv4-mapped IPv6 senders become IPv4).
fn sockaddr_to_std(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let v4: &libc::sockaddr_in =
                unsafe { &*(name as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is large enough.
            let v6: &libc::sockaddr_in6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            let port = u16::from_be(v6.sin6_port);
            Some(match ip.to_canonical() {
                IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                IpAddr::V6(_) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, v6.sin6_scope_id)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_drops_of_wanted_inodes_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 0100007F:0807 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
            2: 0100007F:0808 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 5\n";
        assert_eq!(parse_proc_udp_drops(text, &[4242]), vec![(4242, 17)]);
        assert!(parse_proc_udp_drops("garbage\nline with few fields", &[1]).is_empty());
    }

    #[test]
    fn receives_a_batch_and_reports_senders() {
        let bound = bind("127.0.0.1:0".parse().unwrap(), true, 1 << 20).expect("bind");
        assert!(bound.receive_buffer_bytes > 0);
        let sender = UdpSocket::bind("127.0.0.1:0").expect("sender");
        for i in 0..5u8 {
            sender.send_to(&[i; 10], bound.local).expect("send");
        }
        let mut receiver = BatchReceiver::new(bound.socket, 8);
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let n = receiver.receive().expect("receive");
            assert!(n > 0, "timed out");
            for i in 0..n {
                let (bytes, from) = receiver.datagram(i);
                assert_eq!(from, Some(sender.local_addr().unwrap()));
                seen.push(bytes.to_vec());
            }
        }
        assert_eq!(seen, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
        assert_eq!(receiver.receive().expect("timeout is not an error"), 0);
        #[cfg(target_os = "linux")]
        assert!(bound.inode > 0);
    }
}
