//! The notify script, called as FastNetMon calls it so existing scripts keep working:
//! `SCRIPT <ip> <incoming|outgoing> <pps> <ban|unban>`, with the report on stdin for `ban`.
//!
//! Calls go through a bounded queue and at most `parallel` run at once, each without a shell and
//! with a timeout: a storm of attacks cannot fork a storm of processes, and a hung script cannot
//! block detection. Failures, timeouts and dropped calls are counted.
//!
//! # Sandboxing
//!
//! The script is the operator's, but it runs during an attack, on input shaped by the attacker,
//! and whatever it does must not take the agent down with it:
//!
//! * **Bounded output.** stdout and stderr are both read to the end, so a chatty script never
//!   blocks on a full pipe, but only the first [`OUTPUT_CAP`] bytes of each are kept (a script
//!   that wrote 1 GiB to stderr used to cost 2 GiB of agent memory). A truncated stream is
//!   logged with its full byte count and counted in [`ScriptStats::output_truncated`]. Logged
//!   output is escaped, so it cannot forge log lines.
//! * **Process group.** The script leads a process group of its own, and the group (the script
//!   and every child it started without leaving the group) lives at most `timeout`: at the
//!   timeout the whole group gets SIGKILL, not only the script. The group is signalled while
//!   the script (its leader) is not yet reaped, or after checking that the group still has a
//!   member, so the group id cannot have been reused by an unrelated process. A script that
//!   exits in time with children still running is a success; the children get the rest of the
//!   timeout and are then killed ([`ScriptStats::leftovers_killed`]): at most `parallel` groups
//!   exist at any time. Work meant to outlive the call must leave the group (`setsid`), and is
//!   then the script's responsibility.
//! * **No wait on inherited pipes.** Once the group is gone, the output pipes are read for at
//!   most [`PIPE_GRACE`] more; a process outside the group that still holds them (it called
//!   `setsid`) cannot keep the call, and its parallel slot, open. The stdin writer is dropped
//!   with the call, so a script that does not read its report cannot hold it either.

use serde::Serialize;
use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    sync::Semaphore,
    time::Instant,
};

/// Bytes of stdout and of stderr kept per call; the rest is read and discarded.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// How long the output pipes are still read once the script's process group is gone (or
/// killed): long enough for the last bytes in the pipe, short enough that a process outside the
/// group holding the pipe cannot block the runner.
pub const PIPE_GRACE: Duration = Duration::from_millis(500);
/// How often the runner looks whether children a script left behind have exited.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// Read size of the output pipes.
const READ_CHUNK: usize = 16 * 1024;

/// One call of the script.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    /// The host.
    pub ip: std::net::IpAddr,
    /// `incoming` or `outgoing`.
    pub direction: &'static str,
    /// Attack packets/s.
    pub pps: u64,
    /// `ban` or `unban`.
    pub action: &'static str,
    /// Text written to stdin.
    pub stdin: String,
    /// Environment variables set for the script besides the agent's own (`FNM_ATTACK_ID`).
    pub env: Vec<(&'static str, String)>,
}

/// What happened to script calls.
#[derive(Debug, Default, Serialize)]
pub struct ScriptStats {
    /// Calls that exited 0.
    pub succeeded: AtomicU64,
    /// Calls that exited non-zero or could not start.
    pub failed: AtomicU64,
    /// Calls killed at the timeout (the script's whole process group).
    pub timed_out: AtomicU64,
    /// Calls dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Calls whose script exited in time but left processes in its group that were still
    /// running at the timeout, and were killed then.
    pub leftovers_killed: AtomicU64,
    /// Calls whose stdout or stderr was longer than [`OUTPUT_CAP`] (the rest was discarded).
    pub output_truncated: AtomicU64,
}

/// Queue and workers of the notify script.
#[derive(Clone)]
pub struct ScriptRunner {
    tx: mpsc::Sender<(ScriptCall, Option<Reply>)>,
    /// Counters.
    pub stats: Arc<ScriptStats>,
}

/// Where the outcome of a watched call goes: `Ok` when it exited 0, else what went wrong.
type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

impl ScriptRunner {
    /// Starts the runner on the current tokio runtime.
    pub fn start(path: PathBuf, timeout: Duration, parallel: usize, queue: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ScriptCall, Option<Reply>)>(queue.max(1));
        let stats = Arc::new(ScriptStats::default());
        let permits = Arc::new(Semaphore::new(parallel.max(1)));
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some((call, reply)) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (path, st) = (path.clone(), st.clone());
                tokio::spawn(async move {
                    let result = run_one(&path, &call, timeout, &st).await;
                    drop(permit);
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                });
            }
        });
        Self { tx, stats }
    }

    /// Queues a call; false (and counted) when the queue is full.
    pub fn submit(&self, call: ScriptCall) -> bool {
        self.queue(call, None)
    }

    /// Queues a call and returns where its outcome will arrive; `None` (and counted) when the
    /// queue is full.
    pub fn submit_watched(
        &self,
        call: ScriptCall,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(call, Some(tx)).then_some(rx)
    }

    fn queue(&self, call: ScriptCall, reply: Option<Reply>) -> bool {
        match self.tx.try_send((call, reply)) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("notify script queue full: call dropped");
                false
            }
        }
    }
}

/// The first [`OUTPUT_CAP`] bytes of one output stream, and how many bytes it had in all.
#[derive(Debug, Default)]
struct CappedOutput {
    kept: Vec<u8>,
    total: u64,
}

impl CappedOutput {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = OUTPUT_CAP.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    /// The kept text, trimmed and escaped to one line, with a note when truncated.
    fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.kept);
        let mut out = String::new();
        for c in text.trim().chars() {
            if c.is_control() {
                let _ = write!(out, "{}", c.escape_debug());
            } else {
                out.push(c);
            }
        }
        if self.truncated() {
            let _ = write!(
                out,
                " [truncated: {} bytes, first {} kept]",
                self.total,
                self.kept.len()
            );
        }
        out
    }
}

/// Reads a pipe to its end into `into`, keeping at most [`OUTPUT_CAP`] bytes.
async fn read_capped(mut pipe: impl AsyncRead + Unpin, into: Arc<Mutex<CappedOutput>>) {
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lock(&into).push(&buffer[..n]),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// True while the process group `pgid` has a member (zombies included); a group whose
/// members the agent may not signal counts as alive.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    if unsafe { libc::kill(-pgid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends SIGKILL to the process group `pgid`. The caller makes sure the group id is still the
/// script's: its leader is not reaped yet, or the group was just seen alive.
fn kill_group(pgid: i32) -> std::io::Result<()> {
    // SAFETY: plain kill(2) on the script's own process group.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Kills the script's group if the call is dropped (agent shutdown) before the script was
/// reaped: its unreaped leader keeps the group id from being reused.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = kill_group(self.pgid);
        }
    }
}

/// How the script itself ended.
enum Outcome {
    Exited(ExitStatus),
    TimedOut,
    WaitFailed(std::io::Error),
}

async fn run_one(
    path: &PathBuf,
    call: &ScriptCall,
    timeout: Duration,
    stats: &ScriptStats,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut cmd = tokio::process::Command::new(path);
    cmd.arg(call.ip.to_string())
        .arg(call.direction)
        .arg(call.pps.to_string())
        .arg(call.action)
        .envs(call.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("notify script {}: cannot start: {e}", path.display());
            return Err(format!("cannot start {}: {e}", path.display()));
        }
    };
    // The script leads its own group: the group id is its pid (known until it is reaped).
    let Some(pgid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!("notify script {}: no process id", path.display());
        return Err("no process id".into());
    };
    let mut guard = GroupGuard { pgid, armed: true };

    let stdin_writer = child.stdin.take().map(|mut stdin| {
        let text = call.stdin.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        })
    });
    let stdout = Arc::new(Mutex::new(CappedOutput::default()));
    let stderr = Arc::new(Mutex::new(CappedOutput::default()));
    let mut readers = Vec::with_capacity(2);
    if let Some(pipe) = child.stdout.take() {
        readers.push(tokio::spawn(read_capped(pipe, stdout.clone())));
    }
    if let Some(pipe) = child.stderr.take() {
        readers.push(tokio::spawn(read_capped(pipe, stderr.clone())));
    }

    let outcome = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => Outcome::Exited(status),
        Ok(Err(e)) => Outcome::WaitFailed(e),
        Err(_) => Outcome::TimedOut,
    };
    let mut leftovers_killed = false;
    match outcome {
        Outcome::Exited(_) => {
            // The leader is reaped; children it left in the group get the rest of the timeout.
            guard.armed = false;
            while group_alive(pgid) {
                if Instant::now() >= deadline {
                    if let Err(e) = kill_group(pgid) {
                        tracing::warn!(
                            "notify script {}: killing process group {pgid}: {e}",
                            path.display()
                        );
                    }
                    leftovers_killed = true;
                    break;
                }
                tokio::time::sleep(
                    GROUP_POLL.min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
            }
        }
        Outcome::TimedOut | Outcome::WaitFailed(_) => {
            // The leader is not reaped yet, so `pgid` is still the script's group.
            if let Err(e) = kill_group(pgid) {
                tracing::warn!(
                    "notify script {}: killing process group {pgid}: {e}",
                    path.display()
                );
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            guard.armed = false;
        }
    }

    // Everything in the group is gone: the pipes close unless a process outside it holds them.
    let grace = Instant::now() + PIPE_GRACE;
    let mut abandoned = false;
    for mut reader in readers {
        if tokio::time::timeout_at(grace, &mut reader).await.is_err() {
            reader.abort();
            abandoned = true;
        }
    }
    if let Some(writer) = stdin_writer {
        writer.abort();
    }
    if abandoned {
        tracing::warn!(
            "notify script {}: its output is still held open by a process outside its process \
             group (started with setsid?); no longer read",
            path.display()
        );
    }

    let (stdout, stderr) = (lock(&stdout), lock(&stderr));
    if stdout.truncated() || stderr.truncated() {
        stats.output_truncated.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "notify script {} {} {}: output truncated (stdout {} bytes, stderr {} bytes; first \
             {OUTPUT_CAP} bytes of each kept)",
            path.display(),
            call.ip,
            call.action,
            stdout.total,
            stderr.total
        );
    }
    if leftovers_killed {
        stats.leftovers_killed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "notify script {} {} {}: processes it started were still running at the timeout \
             ({}); process group {pgid} killed",
            path.display(),
            call.ip,
            call.action,
            humantime::format_duration(timeout)
        );
    }
    match outcome {
        Outcome::Exited(status) if status.success() => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "notify script {} {} {} succeeded; stdout: {}; stderr: {}",
                path.display(),
                call.ip,
                call.action,
                stdout.describe(),
                stderr.describe()
            );
            Ok(())
        }
        Outcome::Exited(status) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "notify script {} {} {} failed ({status}): {}",
                path.display(),
                call.ip,
                call.action,
                stderr.describe()
            );
            Err(format!("exited with {status}: {}", stderr.describe()))
        }
        Outcome::WaitFailed(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "notify script {}: waiting for it: {e}; process group {pgid} killed",
                path.display()
            );
            Err(format!("waiting for it: {e}"))
        }
        Outcome::TimedOut => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "notify script {} {} {} timed out after {}; process group {pgid} \
                 killed; stderr: {}",
                path.display(),
                call.ip,
                call.action,
                humantime::format_duration(timeout),
                stderr.describe()
            );
            Err(format!("timed out after {} s", timeout.as_secs_f64()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_output_keeps_the_head_and_counts_everything() {
        let mut output = CappedOutput::default();
        output.push(b"line \"one\"\n\x1b[31mred\n");
        assert!(!output.truncated());
        assert_eq!(output.describe(), "line \"one\"\\n\\u{1b}[31mred");
        for _ in 0..100 {
            output.push(&[b'x'; 1000]);
        }
        assert_eq!(output.kept.len(), OUTPUT_CAP);
        assert_eq!(output.total, 100_000 + 20);
        assert!(output.truncated());
        assert!(output.describe().ends_with(&format!(
            "[truncated: 100020 bytes, first {OUTPUT_CAP} kept]"
        )));
    }
}
