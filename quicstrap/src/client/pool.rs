//! The client's QUIC endpoint and its connections: one per peer, reused by every partition
//! fetched from it, with the table that routes the server's file streams to their transfer by
//! the transfer id in each stream's header. A connection no transfer has used for the pool's
//! idle time ([`crate::net::transport::TransportTuning::pool_idle`]) is closed, so a fetcher
//! between partitions holds no slot of a server's connection cap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::net::wire::FrameReader;
use crate::peers::Peer;
use crate::protocol::{codes, FileHeader};
use crate::store::lock::unpoisoned as lock;

use super::error::AttemptError;

/// Largest file-stream header.
const MAX_HEADER_FRAME: usize = 1024;
/// Longest a file stream may take to name its transfer.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A transfer's file streams, as they arrive.
pub(crate) type FileStreams = mpsc::UnboundedReceiver<(FileHeader, quinn::RecvStream)>;
type Route = mpsc::UnboundedSender<(FileHeader, quinn::RecvStream)>;
type Routes = Arc<Mutex<RouteTable>>;
type ConnSlot = Arc<tokio::sync::Mutex<Option<Arc<PeerConn>>>>;

/// The transfers of one connection, and when it was last used: a connection with no transfer
/// is idle from then on.
struct RouteTable {
    routes: HashMap<u64, Route>,
    /// When the connection was last handed out or its last transfer ended.
    last_used: Instant,
}

/// The reason a pooled connection is closed with when idle (code `OK`).
const IDLE_REASON: &[u8] = b"idle";

/// One QUIC connection to a peer, plus the table routing its file streams to transfers.
pub(crate) struct PeerConn {
    pub(crate) conn: quinn::Connection,
    routes: Routes,
}

impl PeerConn {
    fn new(conn: quinn::Connection) -> Arc<Self> {
        let routes: Routes = Arc::new(Mutex::new(RouteTable {
            routes: HashMap::new(),
            last_used: Instant::now(),
        }));
        tokio::spawn(dispatch(conn.clone(), routes.clone()));
        Arc::new(Self { conn, routes })
    }

    /// Routes the file streams of `transfer_id` to the returned receiver until the guard drops.
    /// Registered before the request goes out, so a stream overtaking `Accept` still lands.
    pub(crate) fn route(&self, transfer_id: u64) -> (RouteGuard, FileStreams) {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.routes).routes.insert(transfer_id, tx);
        let guard = RouteGuard {
            routes: self.routes.clone(),
            id: transfer_id,
        };
        (guard, rx)
    }
}

/// Accepts the server's file streams and hands each to its transfer.
async fn dispatch(conn: quinn::Connection, routes: Routes) {
    while let Ok(stream) = conn.accept_uni().await {
        let routes = routes.clone();
        tokio::spawn(async move {
            let mut reader = FrameReader::new(stream, MAX_HEADER_FRAME);
            let header = tokio::time::timeout(HEADER_TIMEOUT, reader.next_frame::<FileHeader>());
            let header = match header.await {
                Ok(Ok(Some(h))) => h,
                _ => {
                    let _ = reader.recv.stop(codes::PROTOCOL.into());
                    return;
                }
            };
            let route = lock(&routes).routes.get(&header.transfer_id).cloned();
            match route {
                Some(tx) => {
                    if let Err(mpsc::error::SendError((_, mut s))) = tx.send((header, reader.recv))
                    {
                        let _ = s.stop(codes::ABORTED.into());
                    }
                }
                None => {
                    let _ = reader.recv.stop(codes::ABORTED.into());
                }
            }
        });
    }
}

/// Removes a transfer's route when the attempt ends, however it ends.
pub(crate) struct RouteGuard {
    routes: Routes,
    id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut table = lock(&self.routes);
        table.routes.remove(&self.id);
        table.last_used = Instant::now();
    }
}

/// The endpoint and one connection slot per peer; each slot has its own lock so a slow
/// handshake with one peer never delays fetches from another.
pub(crate) struct Pool {
    pub(crate) endpoint: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
    connect_timeout: Duration,
    /// A connection no transfer has used for this long is closed.
    idle: Duration,
    conns: Mutex<HashMap<(SocketAddr, String), ConnSlot>>,
}

impl Pool {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        client_cfg: quinn::ClientConfig,
        connect_timeout: Duration,
        idle: Duration,
    ) -> Self {
        Self {
            endpoint,
            client_cfg,
            connect_timeout,
            idle,
            conns: Mutex::default(),
        }
    }

    /// The live connection to `peer`, or a new one (connect + handshake, bounded by the
    /// connect timeout). Handing one out counts as a use: its idle time starts again.
    pub(crate) async fn connection(&self, peer: &Peer) -> Result<Arc<PeerConn>, AttemptError> {
        let key = (peer.addr, peer.server_name.clone());
        let slot = lock(&self.conns).entry(key).or_default().clone();
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref() {
            if c.conn.close_reason().is_none() {
                lock(&c.routes).last_used = Instant::now();
                return Ok(c.clone());
            }
        }
        *held = None;
        let connecting = self
            .endpoint
            .connect_with(self.client_cfg.clone(), peer.addr, &peer.server_name)
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => return Err(AttemptError::ConnectTimeout),
            Ok(Err(e)) => return Err(AttemptError::Connect(e.to_string())),
            Ok(Ok(c)) => c,
        };
        let pc = PeerConn::new(conn);
        *held = Some(pc.clone());
        tokio::spawn(close_when_idle(
            slot.clone(),
            Arc::downgrade(&pc),
            self.idle,
        ));
        Ok(pc)
    }
}

/// Closes `pc` once no transfer has used it for `idle`, and empties its slot, unless it
/// closed or was replaced first. Decided under the slot's lock, which every hand-out takes:
/// a connection is never closed between being handed out and its transfer registering.
async fn close_when_idle(slot: ConnSlot, pc: Weak<PeerConn>, idle: Duration) {
    loop {
        let Some(live) = pc.upgrade() else { return };
        let conn = live.conn.clone();
        let due = {
            let table = lock(&live.routes);
            if table.routes.is_empty() {
                table.last_used + idle
            } else {
                Instant::now() + idle
            }
        };
        drop(live);
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            _ = conn.closed() => return,
        }
        let mut held = slot.lock().await;
        let Some(current) = held.as_ref() else { return };
        if !std::ptr::eq(Arc::as_ptr(current), pc.as_ptr()) {
            return;
        }
        let idle_now = {
            let table = lock(&current.routes);
            table.routes.is_empty() && table.last_used.elapsed() >= idle
        };
        if idle_now {
            tracing::debug!(peer = %current.conn.remote_address(), "idle connection closed");
            current.conn.close(codes::OK.into(), IDLE_REASON);
            *held = None;
            return;
        }
    }
}
