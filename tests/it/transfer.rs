//! Happy paths over real QUIC on loopback: many files, an empty one, one larger than any
//! flow-control window; snapshots shared and reused; stale ones removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use quicstrap::client::RECEIPT_FILE;
use quicstrap::store::checksum::ChecksumAlgo;
use quicstrap::store::partition;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_many_files_including_an_empty_one_and_one_over_the_window() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    // ~40 MB in about 4 SSTs of ~10 MB, plus small metadata files and the checkpoint's
    // empty write-ahead log.
    let (src, id) = seeded(0, (40_000, 1000, 10_000));
    let server = server(src.path(), |_| {}).await;
    // Small windows, so one SST file is several times larger than any flow-control window.
    let f = fetcher(|c| {
        c.tuning.stream_window = 1 << 20;
        c.tuning.connection_window = 2 << 20;
    });
    let report = f
        .fetch(&id, &[peer(&server)], dst.path())
        .await
        .expect("fetch");
    let snap = server.snapshots().current(&id).await.unwrap();
    assert!(
        snap.files.iter().any(|f| f.size == 0),
        "no empty file in the snapshot"
    );
    assert!(
        snap.files.iter().any(|f| f.size > 2 << 20),
        "no file over the window"
    );
    assert!(
        snap.files
            .iter()
            .filter(|f| f.name.ends_with(".sst"))
            .count()
            >= 3
    );
    assert_eq!(report.files, snap.files.len());
    assert_eq!(report.attempts.len(), 1);
    assert_eq!(report.meta.offset, Some(39_999));
    let dir = id.dir(dst.path());
    for f in &snap.files {
        assert_eq!(
            std::fs::metadata(dir.join(&f.name)).unwrap().len(),
            f.size,
            "{}",
            f.name
        );
    }
    assert!(dir.join(RECEIPT_FILE).is_file());
    assert_eq!(assert_same(&id.dir(src.path()), &dir), 40_000);
    assert!(temp_dirs(dst.path()).is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_validation_works_too() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id, server) = served(1, (5_000, 200, 1_000), |_| {}).await;
    let f = fetcher(|c| c.policy.checksum = ChecksumAlgo::Blake3);
    f.fetch(&id, &[peer(&server)], dst.path()).await.unwrap();
    assert_eq!(assert_same(&id.dir(src.path()), &id.dir(dst.path())), 5_000);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_share_one_snapshot_and_its_digests() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, server) = served(2, (20_000, 500, 5_000), |_| {}).await;
    let peer = peer(&server);
    let f = Arc::new(fetcher(|_| {}));
    let dsts: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut tasks = Vec::new();
    for d in &dsts {
        let (f, id, peer, path) = (f.clone(), id.clone(), peer.clone(), d.path().to_owned());
        tasks.push(tokio::spawn(
            async move { f.fetch(&id, &[peer], &path).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().expect("fetch");
    }
    assert_eq!(server.snapshots().created(), 1, "one checkpoint for all");
    let snap = server.snapshots().current(&id).await.unwrap();
    // Digests come while the files are read to be sent: every file at most once per fetch
    // that started before its digest was known, and every digest known now.
    let size: u64 = snap.files.iter().map(|f| f.size).sum();
    let digested = snap.digest_bytes();
    assert!(
        (size..=4 * size).contains(&digested),
        "{digested} bytes digested for 4 fetches of {size}"
    );
    let manifest = snap.manifest(quicstrap::store::checksum::ChecksumAlgo::Md5);
    assert!(manifest.iter().all(|f| f.digest_known()));
    // A later request within the TTL reuses it as well, and digests nothing.
    let later = tempfile::tempdir().unwrap();
    f.fetch(&id, &[peer], later.path()).await.unwrap();
    assert_eq!(server.snapshots().created(), 1);
    assert_eq!(snap.digest_bytes(), digested);
    for d in &dsts {
        assert_same(&id.dir(src.path()), &id.dir(d.path()));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_unused_snapshots_are_removed_and_in_use_ones_kept() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, server) = served(3, (2_000, 100, 1_000), |c| {
        c.snapshots.ttl = Duration::from_secs(60)
    })
    .await;
    let mgr = server.snapshots().clone();
    let t0 = Instant::now();
    let lease = mgr.acquire(&id, t0).await.unwrap();
    let dir = lease.snapshot().dir.clone();
    assert!(dir.is_dir());
    // Stale but in use: the sweep keeps it.
    assert_eq!(mgr.collect(t0 + Duration::from_secs(120)).await, 0);
    assert!(dir.is_dir(), "a snapshot in use was deleted");
    // A request after the TTL gets a new snapshot; the old one goes with its last user.
    let newer = mgr
        .acquire(&id, t0 + Duration::from_secs(120))
        .await
        .unwrap();
    assert_ne!(newer.snapshot().dir, dir);
    assert!(dir.is_dir(), "replaced while still in use");
    drop(lease);
    assert!(
        !dir.exists(),
        "retired snapshot not deleted by its last user"
    );
    drop(newer);

    // Fresh and unused: kept; stale and unused: removed by the sweep.
    let t1 = t0 + Duration::from_secs(120);
    let lease = mgr.acquire(&id, t1).await.unwrap();
    let dir = lease.snapshot().dir.clone();
    drop(lease);
    assert_eq!(mgr.collect(t1 + Duration::from_secs(59)).await, 0);
    assert!(dir.is_dir());
    assert_eq!(mgr.collect(t1 + Duration::from_secs(61)).await, 1);
    assert!(!dir.exists());
    // After the sweep a new request makes a new snapshot.
    let before = mgr.created();
    let l = mgr
        .acquire(&id, t1 + Duration::from_secs(62))
        .await
        .unwrap();
    assert_eq!(mgr.created(), before + 1);
    drop(l);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_task_sweeps_on_its_own() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, server) = served(4, (1_000, 100, 1_000), |c| {
        c.snapshots.ttl = Duration::from_millis(100);
        c.snapshots.cleanup_interval = Duration::from_millis(100);
    })
    .await;
    let lease = server
        .snapshots()
        .acquire(&id, Instant::now())
        .await
        .unwrap();
    let dir = lease.snapshot().dir.clone();
    drop(lease);
    wait_for("sweep", Duration::from_secs(10), || !dir.exists()).await;
    // The server still serves; the next request makes a fresh snapshot.
    fetch_ok(&server, &id).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_db_without_offset_family_is_served_with_no_offset() {
    let _turn = turn(Needs::Nothing).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let id = id(5);
    {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, id.dir(src.path())).unwrap();
        for i in 0..100u32 {
            db.put(i.to_be_bytes(), b"v").unwrap();
        }
        db.flush().unwrap();
    }
    let server = server(src.path(), |_| {}).await;
    let report = fetcher(|_| {})
        .fetch(&id, &[peer(&server)], dst.path())
        .await
        .unwrap();
    assert_eq!(report.meta.offset, None);
    let db = partition::open_read_only(&id.dir(dst.path()), quicstrap::TableFormat::Block).unwrap();
    assert_eq!(
        db.get(7u32.to_be_bytes()).unwrap().as_deref(),
        Some(&b"v"[..])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_several_partitions() {
    let _turn = turn(Needs::Nothing).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let ids: Vec<_> = (10..14).map(id).collect();
    for i in &ids {
        seed(src.path(), i, 3_000, 300, 1_000);
    }
    let server = server(src.path(), |_| {}).await;
    let f = Arc::new(fetcher(|_| {}));
    let p = peer(&server);
    let tasks: Vec<_> = ids
        .iter()
        .map(|i| {
            let (f, i, p, d) = (f.clone(), i.clone(), p.clone(), dst.path().to_owned());
            tokio::spawn(async move { f.fetch(&i, &[p], &d).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for i in &ids {
        assert_same(&i.dir(src.path()), &i.dir(dst.path()));
    }
    let stats = server.stats();
    wait_for("four Done", Duration::from_secs(10), || {
        stats.completed.load(std::sync::atomic::Ordering::Relaxed) == 4
    })
    .await;
    assert_eq!(
        stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    server.shutdown().await;
}

/// The fetch policy's fsync signal hears each received file's fsync: the adaptive read
/// throttle's "the disk falls behind" input comes from the fetch that writes, not from a
/// process-wide global every fetcher of the process would share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fsync_signal_of_the_policy_hears_each_received_file() {
    use quicstrap::control::throttle::{LatencySignal, Signal};
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, server) = served(63, (2_000, 100, 500), |_| {}).await;
    // Any fsync at all is "over" a zero threshold.
    let heard = LatencySignal::new("fsync_latency", Duration::ZERO);
    let quiet = LatencySignal::new("fsync_latency", Duration::ZERO);
    let dst = tempfile::tempdir().unwrap();
    fetcher(|c| c.policy.fsync_latency = Some(heard.clone()))
        .fetch(&id, &[peer(&server)], dst.path())
        .await
        .unwrap();
    assert!(heard.overloaded(), "no fsync of a received file was timed");
    assert!(!heard.overloaded(), "a cycle's reading is taken once");
    // Another fetcher's signal hears nothing of this fetch.
    let other = tempfile::tempdir().unwrap();
    fetch_ok(&server, &id).await;
    fetcher(|_| {})
        .fetch(&id, &[peer(&server)], other.path())
        .await
        .unwrap();
    assert!(!quiet.overloaded() && !heard.overloaded());
}
