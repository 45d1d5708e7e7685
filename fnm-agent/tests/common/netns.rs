//! Network namespaces joined by a veth pair, created by a test and always removed (Drop).
#![allow(dead_code)]

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces: `agent` (holds `veth_agent`, address .1) and `peer` (holds `veth_peer`, .2).
pub struct NetnsPair {
    /// Namespace where the agent runs.
    pub agent: String,
    /// Namespace that sends traffic.
    pub peer: String,
    /// veth end inside `agent`.
    pub veth_agent: String,
    /// veth end inside `peer`.
    pub veth_peer: String,
    /// IPv4 of the agent side.
    pub agent_v4: IpAddr,
    /// IPv4 of the peer side.
    pub peer_v4: IpAddr,
    /// IPv6 of the agent side.
    pub agent_v6: IpAddr,
    /// IPv6 of the peer side.
    pub peer_v6: IpAddr,
}

impl NetnsPair {
    /// Creates the pair with subnet index `net` (10.<net>.0.0/24, fd<net>::/64) and static
    /// neighbour entries, so no ARP/NDP traffic disturbs exact counts.
    pub fn new(net: u8) -> Self {
        let id = format!(
            "{}{}",
            std::process::id() % 100000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let p = Self {
            agent: format!("fnmA{id}"),
            peer: format!("fnmB{id}"),
            veth_agent: format!("fva{id}"),
            veth_peer: format!("fvb{id}"),
            agent_v4: format!("10.{net}.0.1").parse().unwrap(),
            peer_v4: format!("10.{net}.0.2").parse().unwrap(),
            agent_v6: format!("fd{net:02x}::1").parse().unwrap(),
            peer_v6: format!("fd{net:02x}::2").parse().unwrap(),
        };
        sh(&["ip", "netns", "add", &p.agent]);
        sh(&["ip", "netns", "add", &p.peer]);
        sh(&[
            "ip",
            "link",
            "add",
            &p.veth_agent,
            "netns",
            &p.agent,
            "type",
            "veth",
            "peer",
            "name",
            &p.veth_peer,
            "netns",
            &p.peer,
        ]);
        let mac_a = "02:00:00:00:00:0a";
        let mac_b = "02:00:00:00:00:0b";
        for (ns, dev, mac, v4, v6, other_v4, other_v6, other_mac) in [
            (
                &p.agent,
                &p.veth_agent,
                mac_a,
                p.agent_v4,
                p.agent_v6,
                p.peer_v4,
                p.peer_v6,
                mac_b,
            ),
            (
                &p.peer,
                &p.veth_peer,
                mac_b,
                p.peer_v4,
                p.peer_v6,
                p.agent_v4,
                p.agent_v6,
                mac_a,
            ),
        ] {
            let x = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", ns];
                full.extend_from_slice(args);
                sh(&full);
            };
            x(&["ip", "link", "set", "lo", "up"]);
            x(&["ip", "link", "set", dev, "address", mac]);
            x(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
            x(&[
                "ip",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            x(&["ip", "link", "set", dev, "up"]);
            x(&[
                "ip",
                "neigh",
                "replace",
                &other_v4.to_string(),
                "lladdr",
                other_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
            x(&[
                "ip",
                "neigh",
                "replace",
                &other_v6.to_string(),
                "lladdr",
                other_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
            x(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
        }
        p
    }

    /// Runs `f` on a thread that has joined namespace `ns`.
    pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// Runs a command inside namespace `ns`, returning stdout; panics on failure.
    pub fn exec(ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "`{}` in {ns} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair with them.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.agent])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.peer])
            .status();
    }
}

/// Sends `count` UDP datagrams of `payload` bytes from the current namespace to `to`.
pub fn send_udp(to: SocketAddr, count: usize, payload: usize) {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .unwrap();
    let s = UdpSocket::bind(bind).expect("bind sender");
    let buf = vec![0x5au8; payload];
    for _ in 0..count {
        s.send_to(&buf, to).expect("send");
    }
}

/// Sends `count` TCP SYNs (connect attempts to a closed port) to `to`.
pub fn send_syns(to: SocketAddr, count: usize) {
    for _ in 0..count {
        let _ = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(500));
    }
}

/// Sends `count` ICMP echo requests with `payload` bytes to an IPv4 address (raw socket).
pub fn send_icmp_echo(to: std::net::Ipv4Addr, count: u16, payload: usize) {
    // SAFETY: plain socket calls with valid arguments; the fd is closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        for seq in 0..count {
            let mut pkt = vec![8u8, 0, 0, 0, 0x12, 0x34];
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend(std::iter::repeat_n(0x61u8, payload));
            let sum = super::frames::checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
            let n = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(n as usize, pkt.len());
        }
        libc::close(fd);
    }
}
