//! Unit tests of snapshot timing.

use super::policy::*;
use std::time::{Duration, Instant};

#[test]
fn reuse_and_collection_follow_the_ttl() {
    let t0 = Instant::now();
    let ttl = Duration::from_secs(3600);
    assert!(reusable(t0, t0 + Duration::from_secs(3599), ttl));
    assert!(!reusable(t0, t0 + ttl, ttl));
    assert!(!collectable(t0, t0 + Duration::from_secs(10), ttl, 0));
    assert!(!collectable(t0, t0 + ttl * 2, ttl, 1));
    assert!(collectable(t0, t0 + ttl * 2, ttl, 0));
}

#[test]
fn a_resume_is_served_while_in_use_or_within_the_window_never_past_the_ttl() {
    let t0 = Instant::now();
    let (window, ttl) = (Duration::from_secs(600), Duration::from_secs(3600));
    // Interrupted early: the whole window.
    let until = resume_until(t0, t0 + Duration::from_secs(60), window, ttl);
    assert_eq!(until, t0 + Duration::from_secs(660));
    assert!(resumable(0, Some(until), t0 + Duration::from_secs(659)));
    assert!(!resumable(0, Some(until), until));
    // Interrupted near the end of the TTL: only until the TTL.
    let late = resume_until(t0, t0 + Duration::from_secs(3500), window, ttl);
    assert_eq!(late, t0 + ttl);
    // Never held (or released by an Abort): only while in use.
    assert!(!resumable(0, None, t0));
    assert!(resumable(1, None, t0));
    assert!(resumable(2, Some(until), until + window));
}

mod manager {
    //! The manager's bounds, over a real data dir: what a request for a partition this host
    //! does not hold leaves behind, and the per-client share of users.

    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use crate::snapshot::{AcquireError, ClientKey, DataDir, SnapshotConfig, SnapshotManager};
    use crate::store::partition::{PartitionId, TableFormat};

    fn manager(root: &std::path::Path, tweak: impl FnOnce(&mut SnapshotConfig)) -> SnapshotManager {
        let mut cfg = SnapshotConfig::new(root.join(".snapshots"));
        tweak(&mut cfg);
        let source = Arc::new(DataDir::new(root.to_owned(), TableFormat::Block));
        SnapshotManager::new(cfg, source).unwrap()
    }

    /// A root holding partition `store_v1/0` of `records` records of `value_size` bytes.
    fn filled(records: u64, value_size: usize, per_flush: u64) -> (tempfile::TempDir, PartitionId) {
        let root = tempfile::tempdir().unwrap();
        let id = PartitionId::new("store", 1, 0).unwrap();
        let dir = id.dir(root.path());
        crate::store::partition::fixture::fill(
            &dir,
            TableFormat::Block,
            records,
            value_size,
            per_flush,
        );
        (root, id)
    }

    fn client(cert: &[u8], ip: &str) -> ClientKey {
        ClientKey::new(Some(cert), ip.parse::<IpAddr>().unwrap())
    }

    #[tokio::test]
    async fn requests_for_missing_partitions_leave_no_entry() {
        let root = tempfile::tempdir().unwrap();
        let mgr = manager(root.path(), |_| {});
        let who = client(b"cert", "192.0.2.1");
        for n in 0..1000u32 {
            let id = PartitionId::new(&format!("missing-{n}-{}", "x".repeat(100)), 1, n).unwrap();
            let got = mgr.acquire_as(Some(&who), &id, Instant::now()).await;
            assert!(matches!(got, Err(AcquireError::NotFound)), "{n}");
            let resume = mgr
                .acquire_for_resume(Some(&who), &id, Default::default(), Instant::now())
                .await;
            assert!(matches!(resume, Err(AcquireError::SnapshotGone(_))), "{n}");
        }
        assert_eq!(
            mgr.partitions(),
            0,
            "entries for partitions that do not exist"
        );
        assert_eq!(mgr.users(), 0);
        assert_eq!(
            mgr.inner.shares.keys(),
            0,
            "share counts of clients holding nothing"
        );
    }

    #[tokio::test]
    async fn one_client_gets_its_share_and_others_are_still_served() {
        let (root, id) = filled(100, 10, 100);
        let mgr = manager(root.path(), |c| {
            c.max_users = 5;
            c.max_users_per_client = 2;
        });
        let now = Instant::now();
        let a = client(b"node-a", "192.0.2.1");
        let held = [
            mgr.acquire_as(Some(&a), &id, now).await.unwrap(),
            mgr.acquire_as(Some(&a), &id, now).await.unwrap(),
        ];
        let over = mgr.acquire_as(Some(&a), &id, now).await;
        let Err(e @ AcquireError::ClientBusy { share: 2 }) = over else {
            panic!("{:?}", over.err())
        };
        assert_eq!(e.reason(), crate::protocol::RejectReason::Busy);
        assert!(e.to_string().contains("per-client share"), "{e}");
        // The same client from another /64, and another certificate at the same host, are
        // other clients; so is the node's own use without a client.
        let b = client(b"node-a", "2001:db8:0:1::7");
        let c = client(b"node-c", "192.0.2.1");
        let others = [
            mgr.acquire_as(Some(&b), &id, now).await.unwrap(),
            mgr.acquire_as(Some(&c), &id, now).await.unwrap(),
            mgr.acquire(&id, now).await.unwrap(),
        ];
        assert_eq!(mgr.users(), 5);
        // The host's cap still holds for everyone.
        let d = client(b"node-d", "192.0.2.9");
        assert!(matches!(
            mgr.acquire_as(Some(&d), &id, now).await,
            Err(AcquireError::Busy)
        ));
        drop(others);
        // One of a's leases ends: a has room again.
        let [first, _second] = held;
        drop(first);
        let again = mgr.acquire_as(Some(&a), &id, now).await.unwrap();
        drop((again, _second));
        assert_eq!(mgr.users(), 0);
        assert_eq!(mgr.inner.shares.keys(), 0);
        assert_eq!(
            mgr.partitions(),
            1,
            "the partition that exists keeps its entry"
        );
        assert_eq!(mgr.created(), 1, "one snapshot shared by every lease");
    }

    #[tokio::test]
    async fn the_sweep_drops_entries_of_partitions_no_longer_here() {
        let (root, id) = filled(100, 10, 100);
        let mgr = manager(root.path(), |_| {});
        let t0 = Instant::now();
        let lease = mgr.acquire(&id, t0).await.unwrap();
        drop(lease);
        // While its snapshot is fresh, the entry stays; once the sweep retires the snapshot,
        // the entry goes with it.
        assert_eq!(mgr.collect(t0).await, 0);
        assert_eq!(mgr.partitions(), 1);
        let later = t0 + mgr.config().ttl * 2;
        assert_eq!(mgr.collect(later).await, 1);
        assert_eq!(mgr.partitions(), 0);
    }

    #[tokio::test]
    async fn a_new_snapshot_of_unchanged_sst_files_reads_only_the_small_files_again() {
        use crate::store::checksum::ChecksumAlgo;
        let (root, id) = filled(20_000, 100, 1_000);
        let t0 = Instant::now();
        let (total, sst_bytes) = {
            let mgr = manager(root.path(), |_| {});
            let lease = mgr.acquire(&id, t0).await.unwrap();
            let snap = lease.snapshot().clone();
            let first = snap.digests(ChecksumAlgo::Md5).await.unwrap();
            let total: u64 = snap.files.iter().map(|f| f.size).sum();
            let sst: u64 = snap
                .files
                .iter()
                .filter(|f| f.name.ends_with(".sst"))
                .map(|f| f.size)
                .sum();
            assert_eq!(
                snap.digest_bytes(),
                total,
                "a cold snapshot reads everything"
            );
            // A later snapshot (past the TTL) of the same files.
            let later = t0 + mgr.config().ttl * 2;
            let again = mgr.acquire(&id, later).await.unwrap();
            assert_ne!(again.snapshot().snapshot_id, snap.snapshot_id);
            let second = again.snapshot().digests(ChecksumAlgo::Md5).await.unwrap();
            assert_eq!(second, first);
            assert_eq!(again.snapshot().digest_bytes(), total - sst);
            (total, sst)
        };
        assert!(sst_bytes > total / 2, "the partition is mostly SST files");
        // A restarted server (a new manager on the same root; reopening the database writes
        // a new MANIFEST and OPTIONS) keeps the SST digests.
        let mgr = manager(root.path(), |_| {});
        let lease = mgr.acquire(&id, Instant::now()).await.unwrap();
        let snap = lease.snapshot();
        let digests = snap.digests(ChecksumAlgo::Md5).await.unwrap();
        let now_total: u64 = snap.files.iter().map(|f| f.size).sum();
        let now_sst: u64 = snap
            .files
            .iter()
            .filter(|f| f.name.ends_with(".sst"))
            .map(|f| f.size)
            .sum();
        assert_eq!(now_sst, sst_bytes, "the same SST files");
        assert_eq!(snap.digest_bytes(), now_total - now_sst);
        // The digests taken from the cache are those of the files' bytes.
        for (f, d) in snap.files.iter().zip(digests.iter()) {
            let (_, want) =
                crate::store::checksum::digest_file(&snap.dir.join(&f.name), ChecksumAlgo::Md5)
                    .unwrap();
            assert_eq!(d, &want, "{}", f.name);
        }
        // BLAKE3 has its own entries: computed once, in full.
        let b3 = snap.digests(ChecksumAlgo::Blake3).await.unwrap();
        assert_eq!(b3.len(), digests.len());
        assert_eq!(snap.digest_bytes(), 2 * now_total - now_sst);
    }

    /// Everything a file's reader hands out, until its digest.
    async fn read_all(
        snap: &Arc<crate::snapshot::Snapshot>,
        index: usize,
        offset: u64,
    ) -> (Vec<u8>, Vec<u8>) {
        use crate::snapshot::Piece;
        let mut rx = snap.read_file(index, offset, crate::store::checksum::ChecksumAlgo::Md5);
        let mut bytes = Vec::new();
        loop {
            match rx.recv().await.unwrap().unwrap() {
                Piece::Data(d) => bytes.extend_from_slice(&d),
                Piece::Digest(d) => return (bytes, d),
            }
        }
    }

    #[tokio::test]
    async fn a_read_digests_its_file_once_covers_a_resumed_prefix_and_stops_when_left() {
        use crate::store::checksum::{digest_file, ChecksumAlgo};
        let (root, id) = filled(5_000, 1000, 5_000);
        let mgr = manager(root.path(), |_| {});
        let lease = mgr.acquire(&id, Instant::now()).await.unwrap();
        let snap = lease.snapshot().clone();
        let (big, _) = snap
            .files
            .iter()
            .enumerate()
            .max_by_key(|(_, f)| f.size)
            .unwrap();
        let size = snap.files[big].size;
        assert!(size > 1 << 20, "a file of several chunks ({size} bytes)");
        let (_, want) =
            digest_file(&snap.dir.join(&snap.files[big].name), ChecksumAlgo::Md5).unwrap();
        assert!(!snap.manifest(ChecksumAlgo::Md5)[big].digest_known());

        // A reader nobody takes from stops: it read no more than a few chunks.
        let mut rx = snap.read_file(big, 0, ChecksumAlgo::Md5);
        rx.recv().await.unwrap().unwrap();
        drop(rx);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(snap.digest_bytes() <= 8 * crate::snapshot::CHUNK as u64);
        assert!(!snap.manifest(ChecksumAlgo::Md5)[big].digest_known());

        // A resume from the middle: the digest still covers the whole file.
        let before = snap.digest_bytes();
        let (tail, digest) = read_all(&snap, big, size / 2).await;
        assert_eq!(tail.len() as u64, size - size / 2);
        assert_eq!(digest, want);
        assert_eq!(
            snap.digest_bytes() - before,
            size,
            "prefix and tail, once each"
        );
        // Known from now on: listed in the manifest, read without digesting again.
        assert_eq!(snap.manifest(ChecksumAlgo::Md5)[big].digest, want);
        let before = snap.digest_bytes();
        let (all, digest) = read_all(&snap, big, 0).await;
        assert_eq!((all.len() as u64, digest), (size, want));
        assert_eq!(snap.digest_bytes(), before);
    }
}
