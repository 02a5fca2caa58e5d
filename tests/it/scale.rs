//! Many partitions at once: 64 partitions from 3 peers, one QUIC connection per peer, every
//! partition validated, at most `max_partitions` received at a time (the rest queue).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_partitions_from_three_peers_over_one_connection_each() {
    let _turn = turn(Needs::Nothing).await;
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dst = tempfile::tempdir().unwrap();
    let ids: Vec<_> = (0..64).map(|p| id(100 + p)).collect();
    for (p, id) in ids.iter().enumerate() {
        seed(roots[p % 3].path(), id, 2_000, 300, 1_000);
    }
    let mut servers = Vec::new();
    for r in &roots {
        servers.push(server(r.path(), |_| {}).await);
    }
    let peers: Vec<_> = servers.iter().map(peer).collect();
    // A small turn limit, so the queueing is exercised too.
    let f = Arc::new(fetcher(|c| c.max_partitions = 8));
    let mut tasks = tokio::task::JoinSet::new();
    for id in &ids {
        let (f, id, peers, dst) = (f.clone(), id.clone(), peers.clone(), dst.path().to_owned());
        tasks.spawn(async move { (id.clone(), f.fetch(&id, &peers, &dst).await) });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.unwrap();
        let report = result.unwrap_or_else(|e| panic!("{id}: {e}"));
        let owner = (id.partition as usize - 100) % 3;
        assert_eq!(report.peer, peers[owner].to_string());
        assert_same(&id.dir(roots[owner].path()), &id.dir(dst.path()));
        done += 1;
    }
    assert_eq!(done, 64);
    assert!(temp_dirs(dst.path()).is_empty());
    for s in &servers {
        // Every partition, served or answered NotFound, went over one connection per peer.
        assert_eq!(s.stats().connections.load(Ordering::Relaxed), 1);
    }
    // Closing waits until every server has the client's Done.
    f.close().await;
    let served: u64 = servers
        .iter()
        .map(|s| s.stats().completed.load(Ordering::Relaxed))
        .sum();
    assert_eq!(served, 64);
    for s in servers {
        s.shutdown().await;
    }
}
