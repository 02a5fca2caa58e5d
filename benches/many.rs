//! Many partitions at once against one big one, on loopback: 64 partitions fetched
//! concurrently from 3 peers (one QUIC connection per peer) versus a single partition of the
//! same total size from one peer. The aggregate should keep ≥ 90 % of the single transfer's
//! throughput: per-partition costs (request, snapshot, manifest, commit) must not eat it.
//!
//! `cargo bench --bench many` (options: `--reps N` (3), `--mb N` total size (256)). Under
//! `cargo test` it runs a small smoke version. Pacing is off (the transport is measured, not
//! the 150 MB/s default limit).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use quicstrap::client::{FetchConfig, Fetcher};
use quicstrap::control::pacing::RateLimiter;
use quicstrap::net::tls::{self, AllowList};
use quicstrap::peers::Peer;
use quicstrap::server::{Server, ServerConfig};
use quicstrap::snapshot::DataDir;
use quicstrap::store::partition::{PartitionId, TableFormat};
use testkit::seed;

const VALUE: usize = 1000;

fn id(p: u32) -> PartitionId {
    PartitionId::new("many", 1, p).expect("store name")
}

async fn start(root: &Path, n: usize) -> Server {
    let mut cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls::dev::server().expect("dev identity"),
        AllowList::parse(tls::dev::ALLOW),
        TableFormat::Block,
        root.join(format!(".snapshots-{n}")),
    );
    cfg.policy.write_limiter = RateLimiter::unlimited();
    cfg.snapshots.max_users = 128;
    // One fetcher asks for every partition at once: the whole server is its share.
    cfg.snapshots.max_users_per_client = 128;
    Server::start(
        cfg,
        Arc::new(DataDir::new(root.to_owned(), TableFormat::Block)),
    )
    .await
    .expect("server")
}

fn fetcher() -> Arc<Fetcher> {
    let mut cfg = FetchConfig::new(tls::dev::client().expect("dev identity"));
    cfg.policy.read_limiter = RateLimiter::unlimited();
    cfg.order = quicstrap::peers::order::PeerOrder::Listed;
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    Arc::new(Fetcher::new(cfg).expect("fetcher"))
}

/// Fetches `ids` concurrently from `peers` into a fresh directory; returns (bytes, seconds)
/// and the directory, which the caller keeps until the end: deleting hundreds of files
/// between repetitions makes the next repetition's file creation slow on an ext4 without a
/// journal (it skips inodes deleted in the last 30 s), which would be the benchmark measuring
/// its own cleanup.
async fn fetch_all(ids: &[PartitionId], peers: &[Peer]) -> (u64, f64, tempfile::TempDir) {
    let dst = tempfile::tempdir().expect("tempdir");
    let f = fetcher();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let (f, id, peers, dst) = (f.clone(), id.clone(), peers.to_vec(), dst.path().to_owned());
        tasks.spawn(async move { f.fetch(&id, &peers, &dst).await });
    }
    let mut bytes = 0;
    while let Some(r) = tasks.join_next().await {
        bytes += r.expect("task").expect("fetch").bytes;
    }
    let secs = t0.elapsed().as_secs_f64();
    f.close().await;
    (bytes, secs, dst)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (reps, total_mb) = if bench {
        (opt("--reps", 3), opt("--mb", 256))
    } else {
        (1, 32)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let big_root = tempfile::tempdir().expect("tempdir");
        let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let total_records = total_mb * 1_000_000 / VALUE as u64;
        let per = total_records / 64;
        eprintln!("seeding 1 × {total_mb} MB and 64 × {} MB ...", per * VALUE as u64 / 1_000_000);
        seed::seed(&id(1000).dir(big_root.path()), TableFormat::Block, total_records, VALUE, 8192)
            .expect("seed");
        for p in 0..64u32 {
            let root = roots[p as usize % 3].path();
            seed::seed(&id(p).dir(root), TableFormat::Block, per, VALUE, 8192).expect("seed");
        }
        let big = start(big_root.path(), 0).await;
        let mut servers = Vec::new();
        for (n, r) in roots.iter().enumerate() {
            servers.push(start(r.path(), n + 1).await);
        }
        let peers: Vec<Peer> = servers
            .iter()
            .map(|s| Peer::new(s.local_addr().expect("addr")))
            .collect();
        let big_peer = [Peer::new(big.local_addr().expect("addr"))];
        let ids: Vec<PartitionId> = (0..64).map(id).collect();
        // Warm-up: snapshots and digests made once, untimed.
        let mut kept = vec![
            fetch_all(&[id(1000)], &big_peer).await.2,
            fetch_all(&ids, &peers).await.2,
        ];
        let (mut single, mut many) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let (b1, s1, d1) = fetch_all(&[id(1000)], &big_peer).await;
            let (b64, s64, d64) = fetch_all(&ids, &peers).await;
            kept.extend([d1, d64]);
            let (r1, r64) = (b1 as f64 / s1 / 1e6, b64 as f64 / s64 / 1e6);
            eprintln!("rep {rep}: single {r1:.1} MB/s, 64 partitions from 3 peers {r64:.1} MB/s ({:.0} %)", 100.0 * r64 / r1);
            single.push(r1);
            many.push(r64);
        }
        let med = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (m1, m64) = (med(single), med(many));
        println!(
            "single partition: {m1:.1} MB/s; 64 partitions from 3 peers: {m64:.1} MB/s; ratio {:.0} % (median of {reps})",
            100.0 * m64 / m1
        );
        big.shutdown().await;
        for s in servers {
            s.shutdown().await;
        }
        drop(kept);
    });
}
