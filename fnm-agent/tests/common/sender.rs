//! A paced `sendmmsg` loop, shared by the ingest benchmarks.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Sends `buffers` round-robin on the connected (or bound) socket `fd` at `rate` per second
/// for `duration`, at most `batch` per `sendmmsg` call; returns how many were sent and the
/// achieved rate.
pub fn send_paced(
    fd: RawFd,
    buffers: &[Vec<u8>],
    rate: f64,
    duration: Duration,
    batch: usize,
) -> (u64, f64) {
    assert!(!buffers.is_empty() && batch > 0, "nothing to send");
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data.
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let want = ((due - sent) as usize).min(batch);
        for header in headers.iter_mut().take(want) {
            header.msg_hdr.msg_iov = &mut iovecs[next];
            header.msg_hdr.msg_iovlen = 1;
            next = (next + 1) % iovecs.len();
        }
        // SAFETY: the headers point at iovecs over buffers that outlive the call.
        let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), want as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    (sent, sent as f64 / start.elapsed().as_secs_f64())
}
