//! The notify script, called as FastNetMon calls it so existing scripts keep working:
//! `SCRIPT <ip> <incoming|outgoing> <pps> <ban|unban>`, with the report on stdin for `ban`.
//!
//! Calls go through a bounded queue and at most `parallel` run at once, each without a shell and
//! with a timeout: a storm of attacks cannot fork a storm of processes, and a hung script cannot
//! block detection. Failures, timeouts and dropped calls are counted.

use serde::Serialize;
use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{io::AsyncWriteExt, sync::mpsc, sync::Semaphore};

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
}

/// What happened to script calls.
#[derive(Debug, Default, Serialize)]
pub struct ScriptStats {
    /// Calls that exited 0.
    pub succeeded: AtomicU64,
    /// Calls that exited non-zero or could not start.
    pub failed: AtomicU64,
    /// Calls killed at the timeout.
    pub timed_out: AtomicU64,
    /// Calls dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// Queue and workers of the notify script.
#[derive(Clone)]
pub struct ScriptRunner {
    tx: mpsc::Sender<ScriptCall>,
    /// Counters.
    pub stats: Arc<ScriptStats>,
}

impl ScriptRunner {
    /// Starts the runner on the current tokio runtime.
    pub fn start(path: PathBuf, timeout: Duration, parallel: usize, queue: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<ScriptCall>(queue.max(1));
        let stats = Arc::new(ScriptStats::default());
        let permits = Arc::new(Semaphore::new(parallel.max(1)));
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (path, st) = (path.clone(), st.clone());
                tokio::spawn(async move {
                    run_one(&path, &call, timeout, &st).await;
                    drop(permit);
                });
            }
        });
        Self { tx, stats }
    }

    /// Queues a call; false (and counted) when the queue is full.
    pub fn submit(&self, call: ScriptCall) -> bool {
        match self.tx.try_send(call) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("notify script queue full: call dropped");
                false
            }
        }
    }
}

async fn run_one(path: &PathBuf, call: &ScriptCall, timeout: Duration, stats: &ScriptStats) {
    let mut cmd = tokio::process::Command::new(path);
    cmd.arg(call.ip.to_string())
        .arg(call.direction)
        .arg(call.pps.to_string())
        .arg(call.action)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("notify script {}: cannot start: {e}", path.display());
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let text = call.stdin.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(out)) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "notify script {} {} {} failed ({}): {}",
                path.display(),
                call.ip,
                call.action,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Err(e)) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("notify script {}: {e}", path.display());
        }
        Err(_) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "notify script {} timed out after {timeout:?}; killed",
                path.display()
            );
        }
    }
}
