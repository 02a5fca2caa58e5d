//! QUIC connection migration: the client moves to a new UDP socket (new local port) in the
//! middle of a multi-file transfer; the transfer finishes without restarting and validates.

use std::sync::atomic::Ordering;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transfer_survives_a_change_of_client_address() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id, server) = served(0, (60_000, 1000, 10_000), |_| {}).await;
    // A read limit keeps the transfer going long enough to move mid-file.
    let f = slow_fetcher(30_000_000, |_| {});
    let before = f.local_addr().unwrap();
    let (task, progress) = spawn_fetch(&f, &id, vec![peer(&server)], dst.path());
    wait_bytes(&progress, 2 << 20).await;
    let at_move = progress.received.load(Ordering::Relaxed);
    let total = progress.total.load(Ordering::Relaxed);
    assert!(at_move < total, "transfer finished before the move");
    f.rebind("127.0.0.1:0".parse().unwrap()).unwrap();
    let moved = std::time::Instant::now();
    let after = f.local_addr().unwrap();
    assert_ne!(before.port(), after.port(), "socket did not change");
    let report = task.await.unwrap().expect("transfer survives migration");
    assert_eq!(
        report.attempts.len(),
        1,
        "transfer restarted: {:?}",
        report.attempts
    );
    assert_eq!(report.bytes, total);
    assert_eq!(server.stats().accepted.load(Ordering::Relaxed), 1);
    assert_eq!(server.stats().connections.load(Ordering::Relaxed), 1);
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    // For CHAOS.md (`scripts/chaos.sh`): from the move to the validated partition.
    println!(
        "CHAOS client_rebound_loopback ok=true recover_ms={} bytes_lost=0",
        moved.elapsed().as_millis()
    );
    server.shutdown().await;
}
