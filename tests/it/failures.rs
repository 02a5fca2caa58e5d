//! Failure paths: every rejection moves on, every broken transfer is cleaned up, and the
//! partition directory never appears unless everything validated (docs/design.md,
//! invariants *zero partial state* and *metadata after files*).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use quicstrap::client::{AttemptError, Fallback, FetchError, NextStep};
use quicstrap::store::partition::TableFormat;

fn rejected(a: &quicstrap::client::Attempt) -> &str {
    a.outcome.as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_not_found_and_format_mismatch_each_move_on() {
    let _turn = turn(Needs::Nothing).await;
    let empty = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(0, (3_000, 200, 1_000));
    let busy = server(src.path(), |c| c.snapshots.max_users = 0).await;
    let missing = server(empty.path(), |_| {}).await;
    let plain = server(empty.path(), |c| c.policy.table_format = TableFormat::Plain).await;
    let good = server(src.path(), |_| {}).await;
    let f = fetcher(|_| {});
    let report = f
        .fetch(
            &id,
            &[peer(&busy), peer(&missing), peer(&plain), peer(&good)],
            dst.path(),
        )
        .await
        .unwrap();
    let outcomes: Vec<_> = report.attempts.iter().map(rejected).collect();
    assert_eq!(outcomes, ["busy", "not_found", "format_mismatch", "ok"]);
    for a in &report.attempts[..3] {
        assert_eq!(a.next_step, Some(NextStep::NextPeer));
        assert_eq!(a.bytes, 0);
    }
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    for s in [busy, missing, plain, good] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_peers_failing_is_a_clear_error_calling_for_kafka() {
    let _turn = turn(Needs::Nothing).await;
    let empty = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let id = id(1);
    let missing = server(empty.path(), |_| {}).await;
    // A port nobody listens on: connection fails (times out).
    let dead = quicstrap::Peer::new("127.0.0.1:9".parse().unwrap());
    let f = fetcher(|c| c.policy.connect_timeout = Duration::from_millis(500));
    let err = f
        .fetch(&id, &[peer(&missing), dead], dst.path())
        .await
        .unwrap_err();
    match &err {
        FetchError::AllPeersFailed { attempts } => {
            assert_eq!(attempts.len(), 2);
            assert_eq!(attempts[0].outcome, "not_found");
            assert!(
                ["connect_timeout", "connect_failed"].contains(&attempts[1].outcome.as_str()),
                "{attempts:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.fallback(), Fallback::KafkaFromStart);
    assert!(err.to_string().contains("not_found"), "{err}");
    assert!(!id.dir(dst.path()).exists());
    let none = f.fetch(&id, &[], dst.path()).await.unwrap_err();
    assert!(matches!(none, FetchError::NoPeers));
    missing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_partition_is_never_touched() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(2, (1_000, 100, 1_000));
    let existing = id.dir(dst.path());
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("precious"), b"keep me").unwrap();
    let server = server(src.path(), |_| {}).await;
    let err = fetcher(|_| {})
        .fetch(&id, &[peer(&server)], dst.path())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::PartitionExists(_)), "{err}");
    assert_eq!(
        std::fs::read(existing.join("precious")).unwrap(),
        b"keep me"
    );
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 1);
    assert_eq!(server.stats().accepted.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_cleans_up_and_the_next_peer_succeeds() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (bad_src, id) = seeded(3, (20_000, 500, 5_000));
    let (good_src, _) = seeded(3, (20_000, 500, 5_000));
    let bad = server(bad_src.path(), |_| {}).await;
    let good = server(good_src.path(), |_| {}).await;
    poison_snapshot(&bad, &id).await;

    // Alone, the bad peer leaves nothing behind: no partition, no metadata, no temp dir.
    let f = fetcher(|_| {});
    let err = f.fetch(&id, &[peer(&bad)], dst.path()).await.unwrap_err();
    let attempts = all_failed(&err);
    assert_eq!(attempts[0].outcome, "checksum_mismatch");
    assert_eq!(attempts[0].next_step, Some(NextStep::CleanupThenNextPeer));
    assert!(!id.dir(dst.path()).exists(), "partition dir appeared");
    assert!(temp_dirs(dst.path()).is_empty(), "temp dir left");
    assert!(
        open_fds_under(dst.path()).is_empty(),
        "file handles left open"
    );

    // With a good peer after it, the fetch succeeds and equals the good source.
    let report = f
        .fetch(&id, &[peer(&bad), peer(&good)], dst.path())
        .await
        .unwrap();
    assert_eq!(report.attempts[0].outcome, "checksum_mismatch");
    assert_eq!(report.attempts[1].outcome, "ok");
    assert_same(&id.dir(good_src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    // The bad server saw an Abort, not a Done, and released the snapshot.
    let stats = bad.stats();
    wait_for("abort seen", Duration::from_secs(10), || {
        stats.failed.load(Ordering::Relaxed) >= 1 && bad.snapshots().users() == 0
    })
    .await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), 0);
    bad.shutdown().await;
    good.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shorter_than_announced_is_refused_and_cleaned_up() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (_src, id, bad) = served(4, (10_000, 500, 5_000), |_| {}).await;
    let lease = bad.snapshots().acquire(&id, Instant::now()).await.unwrap();
    lease
        .snapshot()
        .digests(quicstrap::store::checksum::ChecksumAlgo::Md5)
        .await
        .unwrap();
    // Break the hard link first so the source DB stays intact, then truncate the copy.
    let victim = largest_sst(&lease.snapshot().dir);
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    drop(lease);
    let err = fetcher(|_| {})
        .fetch(&id, &[peer(&bad)], dst.path())
        .await
        .unwrap_err();
    let attempts = all_failed(&err);
    assert!(
        ["stream_reset", "size_mismatch"].contains(&attempts[0].outcome.as_str()),
        "{attempts:?}"
    );
    assert!(!id.dir(dst.path()).exists());
    assert!(temp_dirs(dst.path()).is_empty());
    assert!(open_fds_under(dst.path()).is_empty());
    bad.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_fetch_leaves_nothing() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (_src, id, server) = served(5, (60_000, 1000, 10_000), |_| {}).await;
    // Slowed down so it is surely mid-file when dropped.
    let f = slow_fetcher(20_000_000, |_| {});
    let (task, progress) = spawn_fetch(&f, &id, vec![peer(&server)], dst.path());
    wait_bytes(&progress, 1 << 20).await;
    assert!(
        !temp_dirs(dst.path()).is_empty(),
        "no temp dir while receiving"
    );
    task.abort();
    let _ = task.await;
    // Cancellation drops the attempt: its temp dir goes at once; handles close as the aborted
    // file tasks unwind.
    assert!(
        temp_dirs(dst.path()).is_empty(),
        "temp dir left after cancel"
    );
    wait_for("handles closed", Duration::from_secs(5), || {
        open_fds_under(dst.path()).is_empty()
    })
    .await;
    assert!(!id.dir(dst.path()).exists());
    // The server notices and releases the snapshot.
    wait_for("snapshot released", Duration::from_secs(10), || {
        server.snapshots().users() == 0
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_by_the_node_suspends_keeping_what_arrived_and_asks_for_no_fallback() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(8, (60_000, 1000, 10_000));
    let (good_src, _) = seeded(8, (1_000, 100, 1_000));
    let slow = server(src.path(), |_| {}).await;
    let good = server(good_src.path(), |_| {}).await;
    let f = slow_fetcher(20_000_000, |_| {});
    let (task, progress) = spawn_fetch(&f, &id, vec![peer(&slow), peer(&good)], dst.path());
    wait_bytes(&progress, 1 << 20).await;
    progress.cancel();
    let err = task.await.unwrap().unwrap_err();
    match &err {
        FetchError::GaveUp {
            error, attempts, ..
        } => {
            assert_eq!(*error, AttemptError::Cancelled);
            assert_eq!(attempts.len(), 1, "moved on to another peer after a cancel");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(err.fallback(), Fallback::None);
    assert_eq!(
        err.attempts()[0].next_step,
        Some(quicstrap::client::NextStep::Suspend)
    );
    // A cancel through the handle waits for every file handle, then keeps what arrived (with
    // its journal) for a rerun to resume; nothing is open under it, no partition appears.
    let kept = temp_dirs(dst.path());
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0]
        .join(quicstrap::client::resume::JOURNAL_FILE)
        .is_file());
    assert!(open_fds_under(dst.path()).is_empty());
    assert!(!id.dir(dst.path()).exists());
    slow.shutdown().await;
    good.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_file_is_abandoned_without_leftovers() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(6, (100_000, 1000, 25_000));
    let (good_src, _) = seeded(6, (2_000, 100, 1_000));
    let victim = ServeProcess::start(src.path(), &[]);
    let good = server(good_src.path(), |_| {}).await;
    let f = slow_fetcher(30_000_000, |c| {
        c.policy.idle_timeout = Duration::from_secs(2);
        c.tuning.idle_timeout = Duration::from_secs(2);
    });
    let peers = vec![quicstrap::Peer::new(victim.addr), peer(&good)];
    let (task, progress) = spawn_fetch(&f, &id, peers, dst.path());
    wait_bytes(&progress, 4 << 20).await;
    victim.signal(libc::SIGKILL);
    let report = task.await.unwrap().expect("next peer succeeds");
    // The files are kept and the dead peer asked once more (it cannot be reached); the next
    // peer then serves the partition afresh, its files never mixed with the dead one's.
    // (The connection may still be open for the first retry: then that one times out too.)
    let a = &report.attempts;
    let victim_name = quicstrap::Peer::new(victim.addr).to_string();
    let (last, at_victim) = a.split_last().unwrap();
    assert!((3..=5).contains(&a.len()), "{a:?}");
    assert!(
        ["peer_gone", "idle_timeout"].contains(&a[0].outcome.as_str()),
        "{a:?}"
    );
    assert!(a[0].bytes > 0);
    assert_eq!(a[0].next_step, Some(quicstrap::client::NextStep::Resume));
    assert!(at_victim.iter().all(|x| x.peer == victim_name), "{a:?}");
    assert!(
        at_victim.last().unwrap().outcome.starts_with("connect_"),
        "{a:?}"
    );
    assert_eq!(last.outcome, "ok");
    assert_eq!(last.resumed_bytes, 0);
    assert!(last.resent_bytes >= 2 << 20, "{a:?}");
    assert_same(&id.dir(good_src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    assert!(open_fds_under(dst.path()).is_empty());
    good.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_transfer_gives_a_prompt_typed_error_and_releases_snapshots() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(7, (100_000, 1000, 25_000));
    let (good_src, _) = seeded(7, (2_000, 100, 1_000));
    let snaps = src.path().join(".snapshots");
    let mut stopping = ServeProcess::start(src.path(), &[]);
    let good = server(good_src.path(), |_| {}).await;
    // Long timeouts: only the server's typed close can end the attempt quickly.
    let f = slow_fetcher(30_000_000, |c| {
        c.policy.idle_timeout = Duration::from_secs(60);
        c.tuning.idle_timeout = Duration::from_secs(60);
    });
    let peers = vec![quicstrap::Peer::new(stopping.addr), peer(&good)];
    let (task, progress) = spawn_fetch(&f, &id, peers, dst.path());
    wait_bytes(&progress, 4 << 20).await;
    assert!(
        std::fs::read_dir(&snaps).unwrap().count() > 0,
        "no snapshot while serving"
    );
    stopping.signal(libc::SIGTERM);
    let report = task.await.unwrap().expect("next peer succeeds");
    assert_eq!(
        report.attempts[0].outcome, "peer_shutting_down",
        "{:?}",
        report.attempts
    );
    assert!(
        report.attempts[0].seconds < 30.0,
        "not prompt: {:?}",
        report.attempts[0]
    );
    assert_eq!(report.attempts[1].outcome, "ok");
    // The process exits cleanly and leaves no snapshot behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = stopping.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    // (The digests of SST files stay: they outlive every run, checked before use.)
    let left: Vec<_> = walk_files(&snaps)
        .into_iter()
        .filter(|p| !p.starts_with(snaps.join("digests")))
        .collect();
    assert!(left.is_empty(), "snapshot files left: {left:?}");
    // New requests to it are refused.
    let dst2 = tempfile::tempdir().unwrap();
    let f2 = fetcher(|c| c.policy.connect_timeout = Duration::from_millis(500));
    let err = f2
        .fetch(&id, &[quicstrap::Peer::new(stopping.addr)], dst2.path())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::AllPeersFailed { .. }));
    good.shutdown().await;
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if e.path().is_dir() {
            out.extend(walk_files(&e.path()));
        } else if e.file_name() != ".quicstrap-snapshots" && e.file_name() != ".quicstrap-lock" {
            out.push(e.path());
        }
    }
    out
}

/// Cleanup waits for the failed attempt's own file handles, not for every file the process
/// has open: a partition failing while another one is mid-file ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_does_not_wait_for_other_partitions_files() {
    let _turn = turn(Needs::Nothing).await;
    let slow_src = tempfile::tempdir().unwrap();
    let bad_src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (busy_id, bad_id) = (id(60), id(61));
    // One 40 MB file at 2 MB/s: a file handle open for ~20 s.
    seed(slow_src.path(), &busy_id, 40_000, 1000, 40_000);
    seed(bad_src.path(), &bad_id, 5_000, 500, 5_000);
    let slow = server(slow_src.path(), |c| {
        c.policy.write_limiter = quicstrap::control::pacing::RateLimiter::new(2_000_000)
    })
    .await;
    let bad = server(bad_src.path(), |_| {}).await;
    poison_snapshot(&bad, &bad_id).await;
    let f = std::sync::Arc::new(fetcher(|_| {}));
    let (busy_task, busy_progress) = spawn_fetch(&f, &busy_id, vec![peer(&slow)], dst.path());
    wait_bytes(&busy_progress, 1 << 20).await;

    let t0 = Instant::now();
    let err = f
        .fetch(&bad_id, &[peer(&bad)], dst.path())
        .await
        .unwrap_err();
    let took = t0.elapsed();
    let attempts = all_failed(&err);
    assert_eq!(attempts[0].outcome, "checksum_mismatch");
    assert!(
        !busy_task.is_finished(),
        "the other transfer had already ended: nothing was tested"
    );
    assert!(
        took < Duration::from_secs(10),
        "the failed attempt waited {took:?} for another partition's files"
    );
    assert!(!bad_id.dir(dst.path()).exists());

    busy_progress.cancel();
    let _ = busy_task.await;
    // Only the suspended transfer's files are left, kept for a resume with their journal.
    let left = temp_dirs(dst.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(&format!(".quicstrap-tmp-{}-", busy_id.partition)));
    assert!(left[0]
        .join(quicstrap::client::resume::JOURNAL_FILE)
        .is_file());
    assert!(open_fds_under(dst.path()).is_empty(), "file handles left");
}

/// A byte of an SST file changes on the serving disk without its identity changing (bit
/// rot: same inode, size and modification time), after the server cached the file's digest.
/// The next snapshot ships the cached digest with the changed bytes, and the client refuses
/// them: a cached digest can fail a transfer, never pass a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_under_its_cached_digest_is_caught() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id) = seeded(9, (20_000, 500, 5_000));
    // Every request makes a new snapshot, which takes SST digests from the cache.
    let s = server(src.path(), |c| c.snapshots.ttl = Duration::ZERO).await;
    let first = fetch_ok(&s, &id).await;
    assert_same(&id.dir(src.path()), &id.dir(first.path()));
    let sst = std::fs::read_dir(id.dir(src.path()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("an SST file");
    let started = Instant::now();
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let modified = std::fs::metadata(&sst).unwrap().modified().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&sst)
            .unwrap();
        let middle = f.metadata().unwrap().len() / 2;
        let mut byte = [0u8; 1];
        f.seek(SeekFrom::Start(middle)).unwrap();
        f.read_exact(&mut byte).unwrap();
        f.seek(SeekFrom::Start(middle)).unwrap();
        f.write_all(&[byte[0] ^ 0x20]).unwrap();
        f.set_modified(modified).unwrap();
        f.sync_all().unwrap();
    }
    let dst = tempfile::tempdir().unwrap();
    let err = fetcher(|_| {})
        .fetch(&id, &[peer(&s)], dst.path())
        .await
        .unwrap_err();
    let attempts = all_failed(&err);
    assert_eq!(attempts[0].outcome, "checksum_mismatch", "{attempts:?}");
    assert!(!id.dir(dst.path()).exists(), "partition dir appeared");
    assert!(temp_dirs(dst.path()).is_empty(), "temp dir left");
    assert!(
        s.stats().accepted.load(Ordering::Relaxed) >= 2,
        "the second fetch was served from a new snapshot"
    );
    chaos_outcome("cached_digest_file_flipped", true, started.elapsed(), 0);
    s.shutdown().await;
}
