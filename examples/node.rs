//! A storage node's life with quicstrap, end to end, against a real Kafka broker and a real
//! DNS server: the embedder's guide (crate docs, "Embedding in a storage node") as code.
//!
//! 1. The store's writers produce to its topic (4 partitions).
//! 2. Node A starts empty, recovers every partition it is assigned — no peer holds them yet,
//!    so Kafka alone builds them — and then serves them while following Kafka.
//! 3. A DNS server (dnsmasq, started here) publishes A as the holder of each partition.
//! 4. Node B recovers the same partitions: peers from DNS SRV records, a transfer from A,
//!    then catch-up to the high watermark; progress through the callback and the counters,
//!    Ctrl-C cancels. Then B follows Kafka too, and sees what the writers add.
//!
//! Run: `scripts/kafka.sh start`, then
//! `QUICSTRAP_KAFKA=127.0.0.1:19092 cargo run --release --example node`
//! (needs `dnsmasq`, which scripts/setup.sh installs; the test kit starts it). Exits non-zero
//! when anything differs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quicstrap::client::{FetchConfig, Fetcher};
use quicstrap::ingest::follow::FollowConfig;
use quicstrap::ingest::kafka::{KafkaConfig, KafkaWriter};
use quicstrap::jobs::bootstrap::{self, BootstrapPath};
use quicstrap::jobs::node::{Node, NodeConfig};
use quicstrap::jobs::recover::{
    recover, PartitionRecovery, RecoverConfig, RecoverProgress, Sources,
};
use quicstrap::net::tls::{self, AllowList};
use quicstrap::peers::dns::{srv_name, DnsSrv};
use quicstrap::peers::{Discovery, StaticPeers};
use quicstrap::server::ServerConfig;
use quicstrap::store::partition::{self, PartitionId, TableFormat};
use testkit::Dnsmasq;

type Error = Box<dyn std::error::Error>;

const PARTITIONS: u32 = 4;
const RECORDS: u64 = 20_000;
const DOMAIN: &str = "example.quicstrap.test";

#[tokio::main]
async fn main() -> Result<(), Error> {
    let brokers = std::env::var("QUICSTRAP_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let work = tempfile::tempdir()?;
    let store = format!("example_{}", std::process::id());
    let ids: Vec<_> = (0..PARTITIONS)
        .map(|p| PartitionId::new(&store, 1, p))
        .collect::<Result<_, _>>()?;
    let kafka = KafkaConfig::new(&brokers);

    // 1. The writers.
    let writer = KafkaWriter::new(&brokers)?;
    // Created as the store's writers would (an auto-created topic has one partition).
    writer
        .create_topic(&quicstrap::ingest::topic(&ids[0]), PARTITIONS)
        .await?;
    for id in &ids {
        write(&writer, id, 0..RECORDS).await?;
    }
    println!("produced {RECORDS} records to each of {PARTITIONS} partitions of {store}");

    // 2. Node A: nobody holds the partitions yet, so recovery builds them from Kafka alone.
    let a_root = work.path().join("node-a");
    let nobody = StaticPeers(Vec::new());
    let a = recover_node(&a_root, &ids, &nobody, &kafka).await?;
    for one in &a {
        expect(
            matches!(&one.outcome, Ok(r) if r.path == BootstrapPath::KafkaNoPeers),
            format!("A built {} from Kafka alone", one.partition),
        )?;
    }
    // ... then serves them, following Kafka so its snapshots stay current.
    let serve = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls::dev::server()?,
        AllowList::parse(tls::dev::ALLOW),
        TableFormat::Block,
        work.path().join("node-a-snapshots"),
    );
    let node_a = Node::prepare(NodeConfig {
        server: serve,
        data_dir: a_root.clone(),
        follow: Some(FollowConfig::new(kafka.clone())),
        also_listen: Vec::new(),
        adaptive_throttle: false,
    })
    .await?
    .start()
    .await?;
    let a_port = node_a.server().local_addr()?.port();
    println!("node A serves on 127.0.0.1:{a_port} and follows Kafka");

    // 3. DNS names A as the holder of every partition; the SRV target is its certificate's name.
    let dns = dns_server(work.path(), &ids, a_port)?;
    let discovery = DnsSrv::new(&[dns.addr], DOMAIN, Duration::from_secs(2));

    // 4. Node B: the same partitions, from A, found in DNS, then caught up.
    write(&writer, &ids[0], RECORDS..RECORDS + 500).await?;
    let b_root = work.path().join("node-b");
    let b = recover_node(&b_root, &ids, &discovery, &kafka).await?;
    for one in &b {
        expect(
            matches!(&one.outcome, Ok(r) if r.path == BootstrapPath::PeerTransfer),
            format!("B received {} from A", one.partition),
        )?;
    }
    // B follows Kafka from where each partition stands, and sees new records arrive.
    let follows: Vec<_> = ids
        .iter()
        .map(|id| {
            let (root, id, log) = (b_root.clone(), id.clone(), kafka.log(id));
            tokio::spawn(async move {
                let mut log = log.map_err(|e| e.to_string())?;
                let cfg = quicstrap::ingest::CatchUpConfig::default();
                bootstrap::follow(&root, &id, TableFormat::Block, &mut log, &cfg)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    write(&writer, &ids[1], RECORDS..RECORDS + 100).await?;
    let want = RECORDS + 99;
    let mut offset = None;
    for _ in 0..300 {
        offset = stored_offset(&ids[1].dir(&b_root))?;
        if offset == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect(
        offset == Some(want),
        format!("B follows Kafka (offset {offset:?})"),
    )?;
    for f in follows {
        f.abort();
    }
    node_a.shutdown().await;
    println!("done: B holds every partition, caught up and following");
    Ok(())
}

/// Recovers `ids` under `root` the way a node does on start: peers from `discovery`, change
/// logs from `kafka`, progress reported as partitions end, Ctrl-C cancels.
async fn recover_node(
    root: &Path,
    ids: &[PartitionId],
    discovery: &dyn Discovery,
    kafka: &KafkaConfig,
) -> Result<Vec<PartitionRecovery>, Error> {
    let mut fetch = FetchConfig::new(tls::dev::client()?);
    fetch.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    let fetcher = Fetcher::new(fetch)?;
    let mut cfg = RecoverConfig::default();
    // Below this lag a partition is replayed from Kafka rather than transferred: Venice's
    // 100 000 records by default, lowered here because the example's partitions are small.
    cfg.bootstrap.lag_threshold = 1_000;
    let progress = Arc::new(RecoverProgress::default());
    let cancel = {
        let progress = progress.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                progress.cancel();
            }
        })
    };
    let sources = Sources {
        fetcher: &fetcher,
        discovery,
        open_log: |id: &PartitionId| kafka.log(id),
    };
    let report = recover(&sources, root, ids, &cfg, &progress, |one| {
        let counts = progress.snapshot();
        match &one.outcome {
            Ok(r) => println!(
                "  {} valid via {:?} in {:.2} s ({}/{} done, {} bytes received)",
                one.partition, r.path, one.seconds, counts.valid, counts.total, counts.bytes
            ),
            Err(e) => println!("  {} failed: {e} ({})", one.partition, e.label()),
        }
    })
    .await;
    cancel.abort();
    fetcher.close().await;
    if let Some(bad) = report.failed().next() {
        return Err(format!("{} was not recovered", bad.partition).into());
    }
    Ok(report.partitions)
}

/// Produces records `range` to `id`'s topic partition.
async fn write(
    writer: &KafkaWriter,
    id: &PartitionId,
    range: std::ops::Range<u64>,
) -> Result<(), Error> {
    let records: Vec<_> = range
        .map(|i| (format!("key-{i:08}").into_bytes(), Some(vec![b'v'; 200])))
        .collect();
    let topic = quicstrap::ingest::topic(id);
    writer.send_all(&topic, id.partition, &records).await?;
    Ok(())
}

/// The offset stored inside a partition another task is writing.
fn stored_offset(dir: &Path) -> Result<Option<u64>, Error> {
    let db = partition::open_read_only(dir, TableFormat::Block)?;
    Ok(partition::read_meta(&db)?.offset)
}

fn expect(ok: bool, what: String) -> Result<(), Error> {
    if ok {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(format!("not so: {what}").into())
    }
}

/// Writes dnsmasq records naming `port` on 127.0.0.1 as the holder of every partition in
/// `ids`, and starts a dnsmasq answering them (the test kit's, shared with the tests).
fn dns_server(dir: &Path, ids: &[PartitionId], port: u16) -> Result<Dnsmasq, Error> {
    let host = "server.quicstrap.test";
    let mut conf = format!("local=/{DOMAIN}/\nhost-record={host},127.0.0.1\n");
    for id in ids {
        let name = srv_name(id, DOMAIN);
        let name = name.trim_end_matches('.');
        conf.push_str(&format!("srv-host={name},{host},{port},0,10\n"));
    }
    let file = dir.join("dnsmasq.conf");
    std::fs::write(&file, conf)?;
    Ok(Dnsmasq::start(&file, 5)?)
}
