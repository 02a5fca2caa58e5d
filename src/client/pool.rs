//! The client's QUIC endpoint and its connections: one per peer, reused by every partition
//! fetched from it, with the table that routes the server's file streams to their transfer by
//! the transfer id in each stream's header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::lock::unpoisoned as lock;
use crate::peers::Peer;
use crate::protocol::{codes, FileHeader};
use crate::wire::FrameReader;

use super::error::AttemptError;

/// Largest file-stream header.
const MAX_HEADER_FRAME: usize = 1024;
/// Longest a file stream may take to name its transfer.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A transfer's file streams, as they arrive.
pub(crate) type FileStreams = mpsc::UnboundedReceiver<(FileHeader, quinn::RecvStream)>;
type Route = mpsc::UnboundedSender<(FileHeader, quinn::RecvStream)>;
type Routes = Arc<Mutex<HashMap<u64, Route>>>;
type ConnSlot = Arc<tokio::sync::Mutex<Option<Arc<PeerConn>>>>;

/// One QUIC connection to a peer, plus the table routing its file streams to transfers.
pub(crate) struct PeerConn {
    pub(crate) conn: quinn::Connection,
    routes: Routes,
}

impl PeerConn {
    fn new(conn: quinn::Connection) -> Arc<Self> {
        let routes: Routes = Arc::default();
        tokio::spawn(dispatch(conn.clone(), routes.clone()));
        Arc::new(Self { conn, routes })
    }

    /// Routes the file streams of `transfer_id` to the returned receiver until the guard drops.
    /// Registered before the request goes out, so a stream overtaking `Accept` still lands.
    pub(crate) fn route(&self, transfer_id: u64) -> (RouteGuard, FileStreams) {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.routes).insert(transfer_id, tx);
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
            let route = lock(&routes).get(&header.transfer_id).cloned();
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
        lock(&self.routes).remove(&self.id);
    }
}

/// The endpoint and one connection slot per peer; each slot has its own lock so a slow
/// handshake with one peer never delays fetches from another.
pub(crate) struct Pool {
    pub(crate) endpoint: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
    connect_timeout: Duration,
    conns: Mutex<HashMap<(SocketAddr, String), ConnSlot>>,
}

impl Pool {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        client_cfg: quinn::ClientConfig,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            endpoint,
            client_cfg,
            connect_timeout,
            conns: Mutex::default(),
        }
    }

    /// The live connection to `peer`, or a new one (connect + handshake, bounded by the
    /// connect timeout).
    pub(crate) async fn connection(&self, peer: &Peer) -> Result<Arc<PeerConn>, AttemptError> {
        let key = (peer.addr, peer.server_name.clone());
        let slot = lock(&self.conns).entry(key).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.conn.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        *slot = None;
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
        *slot = Some(pc.clone());
        Ok(pc)
    }
}
