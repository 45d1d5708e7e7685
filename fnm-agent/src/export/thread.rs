//! A sink's thread and how it is stopped: the stop request carries how long the sink may
//! still spend delivering what it holds.

use std::{thread::JoinHandle, time::Duration};

/// A running sink thread.
pub struct SinkThread {
    stop: crossbeam_channel::Sender<Duration>,
    handle: Option<JoinHandle<()>>,
}

impl SinkThread {
    /// Runs `body` on a thread named `name`; `body` polls its receiver and, once a flush
    /// timeout arrives (or the sender is gone), delivers within it and returns.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(crossbeam_channel::Receiver<Duration>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(stop_rx))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Asks the thread to deliver what it holds within `timeout`, and waits for it.
    pub fn stop(mut self, timeout: Duration) {
        self.finish(timeout);
    }

    fn finish(&mut self, timeout: Duration) {
        let _ = self.stop.try_send(timeout);
        if let Some(t) = self.handle.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SinkThread {
    fn drop(&mut self) {
        self.finish(Duration::ZERO);
    }
}

/// What a sink loop's stop receiver says: `Some(timeout)` once asked to stop.
pub fn stop_requested(rx: &crossbeam_channel::Receiver<Duration>) -> Option<Duration> {
    match rx.try_recv() {
        Ok(timeout) => Some(timeout),
        Err(crossbeam_channel::TryRecvError::Empty) => None,
        Err(crossbeam_channel::TryRecvError::Disconnected) => Some(Duration::ZERO),
    }
}
