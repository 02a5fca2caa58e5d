//! A node that embeds quicstrap: it serves the partitions it holds and fetches one it lacks,
//! here both in one process over loopback.
//!
//! Run: `cargo run --release --example embedded`

use std::net::SocketAddr;
use std::sync::Arc;

use quicstrap::client::{FetchConfig, Fetcher};
use quicstrap::net::tls::{self, AllowList};
use quicstrap::peers::Peer;
use quicstrap::server::{Server, ServerConfig};
use quicstrap::snapshot::DataDir;
use quicstrap::store::partition::{self, PartitionId, TableFormat};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = std::env::temp_dir().join(format!("quicstrap-example-{}", std::process::id()));
    let (source_root, dest_root) = (work.join("holder"), work.join("newcomer"));
    let id = PartitionId::new("profiles", 7, 3)?;

    // The node that holds the partition keeps its DB open and registers it with the server.
    let dir = id.dir(&source_root);
    testkit::seed::seed(&dir, TableFormat::Block, 20_000, 256, 5_000)?;
    let db = Arc::new(partition::open(&dir, TableFormat::Block)?);
    let source = Arc::new(DataDir::new(&source_root, TableFormat::Block));
    source.insert(id.clone(), db);
    let server = Server::start(
        ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            tls::dev::server()?,
            AllowList::parse(tls::dev::ALLOW),
            TableFormat::Block,
            work.join("snapshots"),
        ),
        source,
    )
    .await?;

    // The newcomer fetches it; peers would come from discovery in a real cluster.
    let fetcher = Fetcher::new(FetchConfig::new(tls::dev::client()?))?;
    let report = fetcher
        .fetch(&id, &[Peer::new(server.local_addr()?)], &dest_root)
        .await?;
    println!(
        "fetched {} from {}: {} files, {} bytes, offset {:?}; Kafka catch-up starts after it",
        report.partition, report.peer, report.files, report.bytes, report.meta.offset
    );

    fetcher.close().await;
    server.shutdown().await;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
