//! A UDP socket inside a namespace that counts the datagrams reaching it: what the kernel let
//! through, as a victim's application sees it.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How long a count must stay still before it is taken as settled.
pub const QUIET: Duration = Duration::from_millis(400);

/// Counts datagrams to one address; stops on drop.
pub struct UdpCounter {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl UdpCounter {
    /// Binds `bind` inside namespace `ns` and starts counting.
    pub fn start(ns: &str, bind: SocketAddr) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let sock = UdpSocket::bind(bind).expect("bind the counting socket");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if sock.recv_from(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        rx.recv().expect("counting socket bound");
        Self { count, stop }
    }

    /// Datagrams received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` datagrams were received in all (for at most `timeout`) and
    /// returns the count: ends as soon as they are there.
    pub fn wait_for(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        while self.count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.count()
    }

    /// The count once it stayed unchanged for [`QUIET`] (for "nothing more arrives").
    pub fn settled(&self) -> u64 {
        let mut last = self.count();
        let mut still_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        while still_since.elapsed() < QUIET && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.count();
            if now != last {
                last = now;
                still_since = Instant::now();
            }
        }
        last
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
