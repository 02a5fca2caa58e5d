//! How `fetch` and `recover` stop when asked to (systemd's or Kubernetes' SIGTERM, Ctrl-C):
//! the first signal suspends — every transfer ends with its files and journal kept and the
//! peer told `Suspend`, nothing new starts, no Kafka fallback — and the command exits with
//! [`SUSPENDED`]; a rerun resumes. A second signal exits at once: what is on disk stays
//! (journals are saved every second), the kernel drops the directory locks, and the rerun
//! adopts it all the same.

/// Exit code of a command stopped by a signal with its work kept for a rerun (EX_TEMPFAIL:
/// "try again later").
pub const SUSPENDED: u8 = 75;

/// Returns on the next SIGTERM or SIGINT.
pub async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(_) = async { term.as_mut()?.recv().await } => {}
    }
}

/// Calls `suspend` on the first SIGTERM or SIGINT; exits the process on the second.
pub async fn suspend_on_signal(what: &'static str, suspend: impl FnOnce()) {
    signalled().await;
    eprintln!("quicstrap: suspending the {what}: what arrived is kept for a rerun (signal again to exit at once)");
    suspend();
    signalled().await;
    eprintln!("quicstrap: exiting at once; what is on disk is kept for a rerun");
    std::process::exit(i32::from(SUSPENDED));
}

/// Aborts a background task (a metrics listener, a signal watcher) when dropped, so it ends
/// with the command that started it.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
