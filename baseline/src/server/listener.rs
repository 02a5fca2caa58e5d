//! A running HTTPS listener: bound, started, and shut down so that every client hears why.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use quicstrap::net::admission::PerIpLimit;
use quicstrap::net::tls;
use quicstrap::server::ServerError;
use quicstrap::snapshot::SnapshotManager;
use quicstrap::store::lock::unpoisoned as lock;

use super::accept;
use super::state::{State, SHUTDOWN_GRACE};
use super::{HttpServerConfig, HttpStats};

/// A running HTTPS baseline listener.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<State>,
}

impl HttpServer {
    /// Binds and starts serving snapshots of `snapshots`.
    pub async fn start(
        cfg: HttpServerConfig,
        snapshots: SnapshotManager,
    ) -> Result<Self, ServerError> {
        let mut rustls_cfg = tls::server_config(&cfg.policy.identity, cfg.policy.live.clone())?;
        rustls_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(rustls_cfg));
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        if let Some(cc) = &cfg.congestion {
            // Fail at start, not on the first connection, when the kernel lacks the module.
            crate::set_tcp_congestion(&listener, cc).map_err(|e| {
                std::io::Error::new(e.kind(), format!("TCP congestion control {cc}: {e}"))
            })?;
        }
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let cfg_per_ip = cfg.max_connections_per_ip;
        let state = Arc::new(State {
            cfg,
            snapshots,
            sessions: Mutex::default(),
            stats: Arc::default(),
            shutting_down: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            per_ip: Arc::new(PerIpLimit::new(cfg_per_ip)),
        });
        let task = tokio::spawn(accept::accept_loop(
            listener,
            acceptor,
            state.clone(),
            shutdown,
        ));
        Ok(Self {
            addr,
            shutdown_tx,
            task,
            state,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.state.stats.clone()
    }

    /// Sessions holding a snapshot right now.
    pub fn sessions(&self) -> usize {
        lock(&self.state.sessions).len()
    }

    /// Stops accepting and ends every session (their snapshots are released).
    pub async fn shutdown(self) {
        // Before the sessions go, so no request in between sees its session missing.
        self.state.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.shutdown_tx.send(true);
        self.task.abort();
        let _ = self.task.await;
        lock(&self.state.sessions).clear();
        // A body still streaming finishes (its lease keeps the file), and the client's next
        // request on that connection then gets the typed refusal and closes: give them that
        // long, bounded, before the process goes away under them.
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.state.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
