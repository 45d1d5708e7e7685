//! systemd's `Type=notify`: READY when the agent serves, STOPPING when it shuts down, and
//! watchdog pings while the engine thread ticks. Outside systemd (no `NOTIFY_SOCKET`) every
//! call does nothing.

use std::time::Duration;

/// Tells systemd the agent is up (its listeners bound, its sources and data plane running).
pub fn ready() {
    #[cfg(target_os = "linux")]
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the agent is stopping (detaching XDP, saving state).
pub fn stopping() {
    #[cfg(target_os = "linux")]
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// A one-line status for `systemctl status`.
pub fn status(text: &str) {
    #[cfg(target_os = "linux")]
    notify(&[sd_notify::NotifyState::Status(text)]);
    #[cfg(not(target_os = "linux"))]
    let _ = text;
}

/// Keeps the watchdog from firing.
pub fn watchdog_ping() {
    #[cfg(target_os = "linux")]
    notify(&[sd_notify::NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half its timeout (`WatchdogSec=`), or `None` when systemd
/// runs no watchdog for us.
pub fn watchdog_interval() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(target_os = "linux")]
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Pings the watchdog every `every` while `ticks` (the engine's tick count) moves: an engine
/// stuck for the watchdog's timeout gets the agent restarted (`Restart=on-failure`).
pub async fn watchdog(every: Duration, ticks: impl Fn() -> u64) {
    let mut last = ticks();
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = ticks();
        if now != last {
            watchdog_ping();
            last = now;
        } else {
            tracing::warn!(
                "the engine has not ticked for {}: not pinging systemd's watchdog",
                humantime::format_duration(every)
            );
        }
    }
}
