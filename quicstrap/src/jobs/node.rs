//! A serving node assembled: everything `quicstrap serve` runs, as values an embedding process
//! can run the same way.
//!
//! Start-up goes in two steps so a caller can say what it found in between:
//! [`Node::prepare`] claims the data dir (one serving process per data dir: a second one would
//! open the same RocksDB instances and, with the default snapshot dir, wipe the first one's
//! live snapshots) and, when asked, starts every partition under it following its change log;
//! [`Prepared::start`] then starts the QUIC listeners over one set of snapshots, with the
//! adaptive throttle when asked. Metrics are served on request, last, over everything that
//! runs; [`Node::registry`] hands them out first, so a caller that runs more listeners over
//! the node's snapshots ([`Server::snapshots`]: the HTTPS baseline, in the CLI) adds theirs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::control::throttle::{CounterRatioSignal, Signal, Throttler};
use crate::ingest::follow::{self, FollowConfig, Followed};
use crate::jobs::admin::{NodeControl, Reload};
use crate::net::transport::Congestion;
use crate::server::{Server, ServerConfig, ServerError};
use crate::snapshot::DataDir;
use crate::store::lock::{DirLock, LockError};

/// The lock file a serving process holds in its data dir.
pub const DATA_DIR_LOCK: &str = ".quicstrap-serve.lock";

/// What a node serves and how.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The main QUIC listener. Every other listener copies its identity, allow list, table
    /// format and limits; its `snapshots.lock_wait` is also how long to wait for another
    /// process's lock on the data dir.
    pub server: ServerConfig,
    /// Root holding `<store>_v<version>/<partition>/` directories; created when missing.
    pub data_dir: PathBuf,
    /// Keep every partition under the data dir following its topic while serving it
    /// (`None`: serve what is on disk).
    pub follow: Option<FollowConfig>,
    /// More QUIC listeners over the same snapshots, each with its own congestion controller
    /// (`None`: the main listener's): one node can offer several side by side.
    pub also_listen: Vec<(SocketAddr, Option<Congestion>)>,
    /// Adapt the write limit around the rate it starts with, down when over half of the
    /// requests of a cycle were answered Busy.
    pub adaptive_throttle: bool,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data dir cannot be created.
    #[error("data dir {}: {source}", dir.display())]
    DataDir {
        /// The data dir.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Another process serves this data dir, or its lock file is unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Taking the lock did not finish (the runtime is shutting down).
    #[error(transparent)]
    LockTask(#[from] tokio::task::JoinError),
    /// The partitions under the data dir cannot be listed for following.
    #[error("data dir {}: {source}", dir.display())]
    Partitions {
        /// The data dir.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A QUIC listener did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A node whose data dir is claimed and whose partitions follow, its listeners not yet
/// started.
pub struct Prepared {
    cfg: NodeConfig,
    lock: DirLock,
    source: Arc<DataDir>,
    followed: Vec<Followed>,
}

/// A running node. Dropped, it stops without the graceful [`Node::shutdown`].
pub struct Node {
    server: Server,
    extra: Vec<Server>,
    throttler: Option<Arc<Throttler>>,
    followed: Vec<Followed>,
    metrics: Option<AbortOnDrop>,
    admin: Option<AbortOnDrop>,
    write_limiter: Arc<crate::control::pacing::RateLimiter>,
    // Held, not read: released last, once everything above has stopped.
    _lock: DirLock,
}

impl Node {
    /// Claims the data dir (waiting for another holder as long as the config says), then
    /// starts following when asked. Nothing listens yet.
    pub async fn prepare(cfg: NodeConfig) -> Result<Prepared, NodeError> {
        let data_dir = cfg.data_dir.clone();
        let wait = cfg.server.snapshots.lock_wait;
        let lock = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&data_dir).map_err(|source| NodeError::DataDir {
                dir: data_dir.clone(),
                source,
            })?;
            let lock = DirLock::acquire(&data_dir.join(DATA_DIR_LOCK), wait)?;
            // Temp dirs of fetches that died and that nothing can resume any more.
            let window = crate::protocol::fetch::FetchRules::default().resume_window;
            crate::client::workdir::sweep(&data_dir, window);
            Ok::<_, NodeError>(lock)
        })
        .await??;
        let format = cfg.server.policy.table_format;
        let source = Arc::new(DataDir::new(cfg.data_dir.clone(), format));
        let followed = match &cfg.follow {
            Some(fc) => follow::follow_all(&cfg.data_dir, format, fc, &source)
                .await
                .map_err(|source| NodeError::Partitions {
                    dir: cfg.data_dir.clone(),
                    source,
                })?,
            None => Vec::new(),
        };
        Ok(Prepared {
            cfg,
            lock,
            source,
            followed,
        })
    }

    /// The main QUIC listener.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The other QUIC listeners, in the order configured.
    pub fn extra(&self) -> &[Server] {
        &self.extra
    }

    /// The partitions following their change log.
    pub fn followed(&self) -> &[Followed] {
        &self.followed
    }

    /// The Prometheus metrics of everything this node runs, for [`Node::serve_metrics`]: a
    /// caller that runs more over the node adds its own before serving them.
    pub fn registry(&self) -> crate::metrics::Registry {
        use crate::metrics;
        let registry = metrics::Registry::new();
        metrics::register_server(&registry, &self.server, self.throttler.as_deref());
        self.server.store_metrics().register(&registry);
        metrics::register_process(&registry);
        let ingest: Vec<_> = self
            .followed
            .iter()
            .map(|f| (f.id.to_string(), f.stats.clone()))
            .collect();
        metrics::register_ingest(&registry, &ingest);
        registry
    }

    /// Serves `registry` (usually [`Node::registry`]) at `http://addr/metrics` until the node
    /// stops; returns the bound address.
    pub async fn serve_metrics(
        &mut self,
        addr: SocketAddr,
        registry: crate::metrics::Registry,
    ) -> std::io::Result<SocketAddr> {
        let (bound, task) = crate::metrics::serve(addr, registry).await?;
        self.metrics = Some(AbortOnDrop(task));
        Ok(bound)
    }

    /// The handle every operator action goes through (admin endpoint, reload, embedding
    /// code).
    pub fn control(&self) -> NodeControl {
        let table = self.server.table();
        NodeControl {
            live: self.server.live().clone(),
            write_limiter: self.write_limiter.clone(),
            throttler: self.throttler.clone(),
            snapshots: self.server.snapshots().clone(),
            transfers: Arc::new(move || table.statuses()),
        }
    }

    /// Serves the admin calls ([`NodeControl::handler`]) at `http://addr/` until the node
    /// stops; returns the bound address. The endpoint has no authentication: bind it to
    /// loopback (the CLI refuses another address unless told).
    pub async fn serve_admin(
        &mut self,
        addr: SocketAddr,
        reload: Option<Reload>,
    ) -> std::io::Result<SocketAddr> {
        let handler = self.control().handler(reload);
        let (bound, task) = crate::metrics::serve_calls(addr, handler).await?;
        self.admin = Some(AbortOnDrop(task));
        Ok(bound)
    }

    /// Stops every listener at once, so every client hears `shutting_down` without waiting
    /// for the other listeners' grace periods; then the data dir is released.
    pub async fn shutdown(self) {
        let Self { server, extra, .. } = self;
        tokio::join!(
            futures_util::future::join_all(extra.into_iter().map(Server::shutdown)),
            server.shutdown(),
        );
    }
}

impl Prepared {
    /// The partitions following their change log; a partition that did not open says why in
    /// its [`Followed::open_error`] (it is refused to peers as `stale` and retried).
    pub fn followed(&self) -> &[Followed] {
        &self.followed
    }

    /// Starts the listeners: the main one, the throttle over its write limiter, then the
    /// other QUIC listeners sharing its snapshots.
    pub async fn start(self) -> Result<Node, NodeError> {
        let Self {
            cfg,
            lock,
            source,
            followed,
        } = self;
        let main = cfg.server;
        let extra_cfgs: Vec<_> = cfg
            .also_listen
            .iter()
            .map(|(addr, congestion)| {
                let mut c = main.clone();
                c.listen = *addr;
                if let Some(cc) = congestion {
                    c.tuning.congestion = *cc;
                }
                c
            })
            .collect();
        let write_limiter = main.policy.write_limiter.clone();
        let base = write_limiter.rate();
        let server = Server::start(main, source).await?;
        let limiter = write_limiter.clone();
        let throttler = cfg.adaptive_throttle.then(|| {
            let (stats, all) = (server.stats(), server.stats());
            let busy = CounterRatioSignal::new(
                "busy_ratio",
                0.5,
                move || stats.busy.load(Ordering::Relaxed),
                move || all.accepted.load(Ordering::Relaxed) + all.rejected.load(Ordering::Relaxed),
            );
            Arc::new(Throttler::adaptive(
                write_limiter,
                base,
                vec![busy as Arc<dyn Signal>],
            ))
        });
        let mut extra = Vec::new();
        for c in extra_cfgs {
            extra.push(Server::start_sharing(c, &server).await?);
        }
        Ok(Node {
            server,
            extra,
            throttler,
            followed,
            metrics: None,
            admin: None,
            write_limiter: limiter,
            _lock: lock,
        })
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
