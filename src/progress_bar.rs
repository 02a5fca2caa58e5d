//! A terminal progress bar over a fetch's [`Progress`]: what a person watching a fetch (the
//! command line's, the demo's) sees on stderr, drawn from the counters the fetch keeps anyway;
//! and the timer loop such views share ([`Redraw`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quicstrap::client::Progress;

/// A view redrawn on a timer until finished: the loop under [`ProgressBar`] and the command
/// line's recovery view. [`Redraw::finish`] stops it and waits for its last call.
pub struct Redraw {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Redraw {
    /// Calls `draw(false)` every `every`, and `draw(true)` once when finished (to clear), on
    /// a task of its own. Dropped unfinished, it makes the last call in the background.
    pub fn spawn(every: Duration, mut draw: impl FnMut(bool) + Send + 'static) -> Self {
        let (stop, mut rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                draw(false);
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
            draw(true);
        });
        Self { stop, task }
    }

    /// Stops redrawing and waits until the last call is made, so whatever is printed next is
    /// not drawn over.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A bar being drawn; [`ProgressBar::finish`] clears it. Dropped unfinished, it clears itself
/// in the background.
pub struct ProgressBar(Redraw);

impl ProgressBar {
    /// Starts redrawing the bar from `progress` every 100 ms: the attempt, bytes of the
    /// partition received so far, the rate, and the time left at that rate (a 10 GB partition
    /// takes minutes; whoever watches wants to know how many).
    pub fn spawn(progress: Arc<Progress>) -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} attempt {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self(Redraw::spawn(Duration::from_millis(100), move |last| {
            if last {
                bar.finish_and_clear();
                return;
            }
            bar.set_length(progress.total.load(Ordering::Relaxed));
            // What a resume kept counts as received: the bar shows the partition on disk.
            bar.set_position(
                progress.received.load(Ordering::Relaxed)
                    + progress.resumed.load(Ordering::Relaxed),
            );
            bar.set_message(progress.attempts.load(Ordering::Relaxed).to_string());
        }))
    }

    /// Clears the bar and waits until it is gone, so whatever is printed next is not drawn
    /// over.
    pub async fn finish(self) {
        self.0.finish().await;
    }
}
