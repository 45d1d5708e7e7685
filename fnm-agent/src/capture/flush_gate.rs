//! Hand-over of a capture thread's buffered records on request.
//!
//! The capture thread coalesces packets into records and hands them to the accounting in
//! batches. The accounting closes a rate slot at every poll; what matters for detection is
//! that a slot's packets are in before it closes, not how often they are handed over. So the
//! agent's poll thread asks for a hand-over just before each tick ([`FlushGate::request`]),
//! the capture thread wakes (the gate's file descriptor becomes readable), flushes and
//! confirms ([`FlushGate::complete`]), and the tick follows. A batch then spans a whole poll
//! slot instead of a fixed 100 ms: a flood of a few thousand 5-tuples costs the accounting a
//! few thousand records per slot, and the records of a slot still count in that slot.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Errors creating a [`FlushGate`].
#[derive(Debug, thiserror::Error)]
#[error("creating the capture flush pipe: {0}")]
pub struct FlushGateError(#[from] std::io::Error);

/// What [`FlushGate::ask`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The polling capture thread holds no records: nothing to wait for.
    Nothing,
    /// No capture loop polls the gate: the request is served at its next flush point.
    Unattached,
    /// Request number: wait for it with [`FlushGate::wait_served`].
    Request(u64),
}

/// A request/confirm channel between a thread that needs buffered records now (the poll
/// thread) and the capture thread that holds them (see the module doc).
#[derive(Debug)]
pub struct FlushGate {
    /// Number of the latest request.
    requested: AtomicU64,
    /// Number of the latest request served.
    completed: Mutex<u64>,
    served: Condvar,
    /// Set once a capture loop polls [`FlushGate::fd`]: only then is a request waited for.
    attached: AtomicBool,
    /// Whether the capture thread holds records (as of its last flush point): a request to a
    /// thread that holds none returns at once, so an idle capture thread is not woken.
    holding: AtomicBool,
    /// Read end (polled by the capture thread) and write end of a non-blocking pipe.
    read: OwnedFd,
    write: OwnedFd,
}

impl FlushGate {
    /// A gate with its wake-up pipe.
    pub fn new() -> Result<Self, FlushGateError> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe() to fill.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: pipe() succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            set_nonblocking_cloexec(fd.as_raw_fd())?;
        }
        Ok(Self {
            requested: AtomicU64::new(0),
            completed: Mutex::new(0),
            served: Condvar::new(),
            attached: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            read,
            write,
        })
    }

    /// The descriptor a capture loop polls for readability; calling this marks the gate as
    /// attached, so [`FlushGate::request`] waits for the capture thread from then on.
    pub fn fd(&self) -> RawFd {
        self.attached.store(true, Ordering::Release);
        self.read.as_raw_fd()
    }

    /// Marks the gate as no longer polled (the capture loop ended): requests stop waiting.
    pub fn detach(&self) {
        self.attached.store(false, Ordering::Release);
    }

    /// Asks the capture thread to hand over its records and waits until it has, at most
    /// `timeout`; true when it confirmed in time. Returns at once: true (and asks nothing) when
    /// the polling capture thread holds no records, false while no capture loop polls the gate
    /// (the request is then served at the capture thread's next flush point).
    pub fn request(&self, timeout: Duration) -> bool {
        match self.ask() {
            Asked::Nothing => true,
            Asked::Unattached => false,
            Asked::Request(wanted) => self.wait_served(wanted, Instant::now() + timeout),
        }
    }

    /// The first half of [`FlushGate::request`]: asks without waiting (so several capture
    /// threads can be asked at once, then waited for).
    pub fn ask(&self) -> Asked {
        let attached = self.attached.load(Ordering::Acquire);
        if attached && !self.holding.load(Ordering::Acquire) {
            return Asked::Nothing;
        }
        let wanted = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        if !attached {
            return Asked::Unattached;
        }
        self.wake();
        Asked::Request(wanted)
    }

    /// The second half of [`FlushGate::request`]: waits until request `wanted` is served, at
    /// most until `deadline`; true when it was.
    pub fn wait_served(&self, wanted: u64, deadline: Instant) -> bool {
        let mut completed = self.completed.lock().unwrap_or_else(|e| e.into_inner());
        while *completed < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            completed = self
                .served
                .wait_timeout(completed, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Wakes the capture thread's poll without asking for anything (e.g. to see a stop flag).
    pub fn wake(&self) {
        let byte = 1u8;
        // SAFETY: writes one byte from a valid buffer to our own pipe. A full pipe (EAGAIN)
        // already holds a wake-up, which is all a byte means.
        unsafe { libc::write(self.write.as_raw_fd(), (&byte as *const u8).cast(), 1) };
    }

    /// Tells requesters whether the capture thread holds records now (it calls this at every
    /// flush point).
    pub fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Release);
    }

    /// The latest request not yet served, if any (the capture thread asks this, cheaply, at
    /// every flush point).
    pub fn pending(&self) -> Option<u64> {
        let requested = self.requested.load(Ordering::Acquire);
        let completed = *self.completed.lock().unwrap_or_else(|e| e.into_inner());
        (requested > completed).then_some(requested)
    }

    /// Confirms that everything captured before request `request` was handed over.
    pub fn complete(&self, request: u64) {
        let mut completed = self.completed.lock().unwrap_or_else(|e| e.into_inner());
        if request > *completed {
            *completed = request;
        }
        self.served.notify_all();
    }

    /// Empties the wake-up pipe (the capture thread calls this when the descriptor polled
    /// readable).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a valid buffer of `buf.len()` bytes from our own pipe.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < buf.len() as isize {
                break;
            }
        }
    }
}

fn set_nonblocking_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with flag arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_unattached_gate_does_not_wait() {
        let gate = FlushGate::new().expect("pipe");
        let started = Instant::now();
        assert!(!gate.request(Duration::from_secs(5)));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(gate.pending(), Some(1));
    }

    #[test]
    fn a_request_waits_for_the_capture_thread_to_serve_it() {
        let gate = Arc::new(FlushGate::new().expect("pipe"));
        let fd = gate.fd();
        gate.set_holding(true);
        let server = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&mut pfd, 1, 5_000) };
                assert_eq!(ready, 1, "the request must wake the poller");
                gate.drain();
                let request = gate.pending().expect("a request is pending");
                gate.complete(request);
            })
        };
        assert!(gate.request(Duration::from_secs(5)), "served in time");
        server.join().expect("server thread");
        assert_eq!(gate.pending(), None);
    }

    #[test]
    fn a_request_to_a_thread_holding_nothing_returns_at_once() {
        let gate = FlushGate::new().expect("pipe");
        let fd = gate.fd();
        let started = Instant::now();
        assert!(gate.request(Duration::from_secs(5)), "nothing to wait for");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(gate.pending(), None, "nothing asked of the capture thread");
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, 0) },
            0,
            "the poller was not woken"
        );
    }

    #[test]
    fn an_unserved_request_times_out() {
        let gate = FlushGate::new().expect("pipe");
        let _ = gate.fd();
        gate.set_holding(true);
        assert!(!gate.request(Duration::from_millis(20)));
        assert_eq!(gate.pending(), Some(1));
        gate.complete(1);
        assert_eq!(gate.pending(), None);
    }
}
