//! A node's lifecycle: a fetch stopped the way systemd or Kubernetes stops it (SIGTERM, or
//! SIGKILL after the grace), run as PID 1 in its own PID namespace the way a container runs
//! it, then rerun: the rerun resumes what had arrived. And what a stopped fetch kept never
//! outlives its use: a partition then found present, or built another way, leaves no temp dir.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::*;
use quicstrap::client::resume::JOURNAL_FILE;

/// ~40 MB in ten SSTs.
const RECORDS: u64 = 40_000;

fn source(partition: u32) -> (tempfile::TempDir, quicstrap::PartitionId, u64) {
    seeded_1k(partition, RECORDS)
}

/// A server writing at 5 MB/s, so a test can act mid-transfer.
async fn slow_server(src: &Path) -> quicstrap::Server {
    server_at(src, 5_000_000, |_| {}).await
}

/// `quicstrap fetch --json` of `id` from `server` into `dst`, as PID 1 of a new PID namespace
/// (with its own /proc), the way a container runs it.
fn fetch_as_pid_1(server: &quicstrap::Server, id: &quicstrap::PartitionId, dst: &Path) -> Child {
    let mut fetch = testkit::fetch_command_in(None, dst, &id.store, id.version, id.partition);
    fetch
        .args(["--json", "--peer"])
        .arg(format!("localhost@{}", server.local_addr().unwrap()));
    as_pid_1(&fetch)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) runs")
}

/// Stops a fetch running as PID 1 with `signal` once `at` bytes arrived; returns its exit code,
/// its report and the bytes it left on disk.
async fn stopped_at(
    server: &quicstrap::Server,
    id: &quicstrap::PartitionId,
    dst: &Path,
    at: u64,
    signal: i32,
) -> (i32, serde_json::Value, u64) {
    let fetch = fetch_as_pid_1(server, id, dst);
    let pid = pid_1_of(&fetch).await;
    wait_for(
        "the transfer to get far enough",
        Duration::from_secs(60),
        || received(dst) >= at,
    )
    .await;
    // SAFETY: signalling a process this test started, not yet reaped (its parent, unshare,
    // waits for it).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let (code, r) = report(fetch);
    assert!(
        !id.dir(dst).exists(),
        "a stopped fetch left a partition dir"
    );
    let left = temp_dirs(dst);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].join(JOURNAL_FILE).is_file(), "no journal");
    (code, r, received(dst))
}

/// Reruns the fetch as PID 1; it must complete and resume at least 90 % of `kept`. Prints the
/// scenario's CHAOS lines (time to recover: the rerun's wall time).
async fn rerun_resumes(
    scenario: &str,
    server: &quicstrap::Server,
    src: &Path,
    id: &quicstrap::PartitionId,
    dst: &Path,
    kept: u64,
) {
    let start = std::time::Instant::now();
    let (code, r) = report(fetch_as_pid_1(server, id, dst));
    assert_eq!(code, 0, "{r}");
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{r}");
    let resumed = attempts[0]["resumed_bytes"].as_u64().unwrap();
    assert!(
        resumed * 10 >= kept * 9,
        "resumed {resumed} of {kept} kept: {r}"
    );
    assert_eq!(attempts[0]["resent_bytes"], 0, "{r}");
    assert_same(&id.dir(src), &id.dir(dst));
    assert!(temp_dirs(dst).is_empty());
    let total = testkit::dir_bytes(&id.dir(src));
    let sent = attempts[0]["bytes"].as_u64().unwrap();
    chaos_outcome(scenario, true, start.elapsed(), 0);
    println!(
        "CHAOS_RESENT {scenario} bytes={}",
        (sent + resumed).saturating_sub(total)
    );
    println!("{scenario}: kept {kept} bytes, resumed {resumed}, sent {sent} of {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_as_pid_1_killed_mid_transfer_resumes_on_rerun() {
    let _turn = turn(Needs::Process).await;
    let (src, id, total) = source(500);
    let quic = slow_server(src.path()).await;
    let dst = tempfile::tempdir().unwrap();
    let (code, _, kept) = stopped_at(&quic, &id, dst.path(), total * 4 / 10, libc::SIGKILL).await;
    assert_ne!(code, 0, "killed");
    rerun_resumes("pid1_sigkill", &quic, src.path(), &id, dst.path(), kept).await;
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_as_pid_1_stopped_with_sigterm_suspends_and_resumes_on_rerun() {
    let _turn = turn(Needs::Process).await;
    let (src, id, total) = source(501);
    let quic = slow_server(src.path()).await;
    let dst = tempfile::tempdir().unwrap();
    let (code, r, kept) = stopped_at(&quic, &id, dst.path(), total * 4 / 10, libc::SIGTERM).await;
    // Suspended: its own exit code, a report that says so, no fallback.
    assert_eq!(code, 75, "{r}");
    assert_eq!(r["error_kind"], "cancelled", "{r}");
    assert_eq!(r["fallback"], "None", "{r}");
    assert!(r["error"].as_str().unwrap().contains("rerun"), "{r}");
    let last = r["attempts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["next_step"], "Suspend", "{r}");
    // The peer was told `Suspend`, not `Abort`: it kept the snapshot, so the rerun resumes in
    // one attempt with nothing sent again (an aborted snapshot is forgotten).
    rerun_resumes("pid1_sigterm", &quic, src.path(), &id, dst.path(), kept).await;
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_fetch_keeps_what_arrived_and_the_next_fetch_resumes_it() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = source(502);
    let quic = server(src.path(), |_| {}).await;
    let dst = tempfile::tempdir().unwrap();
    let f = slow_fetcher(5_000_000, |_| {});
    let (task, progress) = spawn_fetch(&f, &id, vec![peer(&quic)], dst.path());
    wait_bytes(&progress, total / 3).await;
    progress.cancel();
    let err = task.await.unwrap().expect_err("cancelled");
    assert_eq!(err.label(), "cancelled");
    assert_eq!(err.fallback(), quicstrap::client::Fallback::None);
    // Kept, unowned, with its journal: nothing open under it.
    let left = temp_dirs(dst.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].join(JOURNAL_FILE).is_file());
    assert!(open_fds_under(dst.path()).is_empty());
    // Counted as read; up to a 256 KiB buffer per file in flight (8) had not reached the disk.
    let kept = received(dst.path());
    assert!(kept + (2 << 20) >= total / 3, "kept {kept}");
    let r = fetcher(|_| {})
        .fetch(&id, &[peer(&quic)], dst.path())
        .await
        .unwrap();
    assert!(
        r.attempts[0].resumed_bytes * 10 >= kept * 9,
        "{:?}",
        r.attempts
    );
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_fetch_kept_goes_once_the_partition_is_found_present() {
    let _turn = turn(Needs::Process).await;
    let (src, id, total) = source(503);
    let quic = slow_server(src.path()).await;
    let dst = tempfile::tempdir().unwrap();
    stopped_at(&quic, &id, dst.path(), total / 4, libc::SIGKILL).await;
    // The partition came into place another way (a copy, a Kafka build).
    seed(dst.path(), &id, 100, 10, 100);
    let err = fetcher(|_| {})
        .fetch(&id, &[peer(&quic)], dst.path())
        .await
        .expect_err("the partition is there");
    assert_eq!(err.label(), "partition_exists");
    assert!(
        temp_dirs(dst.path()).is_empty(),
        "{:?}",
        temp_dirs(dst.path())
    );
    quic.shutdown().await;
}
