//! One transfer on the server: the QUIC driver of [`ServerTransfer`].
//!
//! The machine holds the rules (what the request must be, when heartbeats go out, the order of
//! `Accept` and `Complete`, how long a silent client is waited for); this driver reads the
//! control stream, leases the snapshot, lists the manifest (digests where known), pushes the
//! files (digesting as it reads), and carries out what the machine asks.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::net::wire::{sleep_until, write_frame, FrameReader, WireError};
use crate::protocol::transfer::{
    heartbeat_interval, ServerAction, ServerEnd, ServerLimits, ServerTransfer,
};
use crate::protocol::{codes, ControlFrame, RejectReason, Request};
use crate::snapshot::{AcquireError, ClientKey, SnapshotLease};
use crate::store::lock::unpoisoned as lock;
use crate::store::partition::PartitionId;

use super::push::{push_files, Pace};
use super::shared::{Client, Shared};
use super::status::Listed;
use crate::snapshot::HELD_PER_FILE;

/// Largest request frame a server reads: a request is a few dozen bytes, a resume lists the
/// files still needed (a few bytes each, so tens of thousands fit). Read only from clients
/// that passed the handshake and the allow list.
pub const MAX_REQUEST_FRAME: usize = 1024 * 1024;

/// How a transfer ended, as the machine or the driver saw it.
enum Outcome {
    Rejected,
    Done,
    Failed(ServerEnd),
}

impl From<ServerEnd> for Outcome {
    fn from(end: ServerEnd) -> Self {
        match end {
            ServerEnd::Rejected(_) => Self::Rejected,
            ServerEnd::Done => Self::Done,
            other => Self::Failed(other),
        }
    }
}

/// A boxed future the driver polls alongside the control stream.
type Step<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The control stream of one transfer and its machine.
struct Control {
    machine: ServerTransfer,
    send: quinn::SendStream,
    reader: FrameReader,
    /// Why a frame could not be written, which ends the transfer.
    wire_error: Option<WireError>,
}

impl Control {
    /// Writes what the machine wants written; returns the first action for the driver.
    async fn next_action(&mut self, shared: &Shared) -> Option<ServerAction> {
        while let Some(action) = self.machine.poll_action() {
            match action {
                ServerAction::Send(frame) => {
                    if let ControlFrame::Reject(r) = &frame {
                        shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(reason = ?r.reason, message = %r.message, "request rejected");
                    }
                    if let Err(e) = write_frame(&mut self.send, &frame).await {
                        // The stream is gone: no later frame can be sent either.
                        let rejected = matches!(frame, ControlFrame::Reject(_));
                        if !rejected {
                            self.machine.fail(ServerEnd::ClientAborted(e.to_string()));
                            self.wire_error = Some(e);
                        }
                    }
                }
                ServerAction::FinishSend => {
                    let _ = self.send.finish();
                }
                ServerAction::StopReading => {
                    let _ = self.reader.recv.stop(codes::PROTOCOL.into());
                }
                other => return Some(other),
            }
        }
        None
    }
}

fn limits(shared: &Shared) -> ServerLimits {
    let cfg = &shared.cfg;
    ServerLimits {
        table_format: cfg.policy.table_format,
        request_timeout: cfg.request_timeout,
        idle: cfg.policy.idle_timeout,
        partition_timeout: cfg.partition_timeout,
    }
}

/// Serves one control stream: read the request, then serve or refuse it.
pub(super) async fn serve_control(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: Arc<Shared>,
    ids: Arc<Mutex<HashSet<u64>>>,
    who: Client,
) {
    let mut control = Control {
        machine: ServerTransfer::new(limits(&shared), Instant::now()),
        send,
        reader: FrameReader::new(recv, MAX_REQUEST_FRAME),
        wire_error: None,
    };
    tokio::select! {
        raw = control.reader.next_raw() => match raw {
            Ok(raw) => control.machine.handle_request(raw.as_deref()),
            Err(e) => {
                let decode = match &e {
                    WireError::Decode(d) => Some(d.clone()),
                    _ => None,
                };
                control.machine.handle_request_error(decode.as_ref(), e.to_string())
            }
        },
        _ = sleep_until(control.machine.poll_timeout()) => {
            control.machine.handle_timeout(Instant::now())
        }
    }
    let Some(ServerAction::Lease(req)) = control.next_action(&shared).await else {
        // Refused: the Reject is out.
        return;
    };
    if *shared.shutdown.borrow() {
        control
            .machine
            .handle_refused(RejectReason::ShuttingDown, "shutting down".into());
        control.next_action(&shared).await;
        return;
    }
    let live = &shared.cfg.policy.live;
    let allowed = who.cert.as_ref().map_or(true, |c| live.permits(c));
    let refusal = if *who.revoked.borrow() || !allowed {
        Some((
            RejectReason::NotAllowed,
            "this client is no longer allowed".to_owned(),
        ))
    } else if live.draining() {
        shared.stats.draining.fetch_add(1, Ordering::Relaxed);
        Some((
            RejectReason::Draining,
            "draining: no new transfers".to_owned(),
        ))
    } else if !live.store(&req.store).serve {
        shared.stats.disabled.fetch_add(1, Ordering::Relaxed);
        let msg = format!("store {} is not served here", req.store);
        Some((RejectReason::Disabled, msg))
    } else {
        None
    };
    if let Some((reason, msg)) = refusal {
        shared.store_metrics.record(&req.store, "refused", 0, None);
        control.machine.handle_refused(reason, msg);
        control.next_action(&shared).await;
        return;
    }
    if !lock(&ids).insert(req.transfer_id) {
        let msg = format!("transfer id {} already in use", req.transfer_id);
        control
            .machine
            .handle_refused(RejectReason::BadRequest, msg);
        control.next_action(&shared).await;
        return;
    }
    let id = PartitionId {
        store: req.store.clone(),
        version: req.store_version,
        partition: req.partition,
    };
    let span = tracing::info_span!(
        "serve",
        store = %id.store,
        version = id.version,
        partition = id.partition,
        peer = %conn.remote_address(),
        transfer = req.transfer_id
    );
    tracing::Instrument::instrument(
        serve_partition(&conn, &mut control, &req, &id, &shared, &who),
        span,
    )
    .await;
    lock(&ids).remove(&req.transfer_id);
}

/// Leases the snapshot and runs the transfer; a refusal to lease becomes a typed `Reject`.
async fn serve_partition(
    conn: &quinn::Connection,
    control: &mut Control,
    req: &Request,
    id: &PartitionId,
    shared: &Shared,
    who: &Client,
) {
    let client: &ClientKey = &who.key;
    let started = Instant::now();
    let stats = &shared.stats;
    let leased = match &req.resume {
        Some(r) => {
            shared
                .snapshots
                .acquire_for_resume(Some(client), id, r.snapshot, Instant::now())
                .await
        }
        None => {
            shared
                .snapshots
                .acquire_as(Some(client), id, Instant::now())
                .await
        }
    };
    let lease = match leased {
        Ok(l) => l,
        Err(e) => {
            let reason = e.reason();
            if reason == RejectReason::Busy {
                stats.busy.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(e, AcquireError::ClientBusy { .. }) {
                stats.busy_per_client.fetch_add(1, Ordering::Relaxed);
            }
            control.machine.handle_refused(reason, format!("{id}: {e}"));
            control.next_action(shared).await;
            shared.store_metrics.record(&id.store, "refused", 0, None);
            return;
        }
    };
    control.machine.handle_leased(Instant::now());
    let listed = shared
        .table
        .list(id, conn, who.name.clone(), req.resume.is_some());
    let outcome = run_transfer(conn, control, req, &lease, shared, &listed, who).await;
    let (sent, took) = (listed.sent.load(Ordering::Relaxed), Some(started.elapsed()));
    drop(listed);
    match outcome {
        Outcome::Rejected => {
            shared.store_metrics.record(&id.store, "refused", 0, None);
        }
        Outcome::Done => {
            shared
                .store_metrics
                .record(&id.store, "completed", sent, took);
            stats.completed.fetch_add(1, Ordering::Relaxed);
            let stats = conn.stats();
            let path = stats.path;
            // Datagrams per send call (GSO batching) and per receive call (GRO): what the
            // packet path costs in system calls, for BENCHMARKS.md and for an operator.
            tracing::info!(
                rtt_ms = path.rtt.as_secs_f64() * 1e3,
                mtu = path.current_mtu,
                cwnd = path.cwnd,
                lost_packets = path.lost_packets,
                sent_packets = path.sent_packets,
                udp_tx_datagrams = stats.udp_tx.datagrams,
                udp_tx_calls = stats.udp_tx.ios,
                udp_rx_datagrams = stats.udp_rx.datagrams,
                udp_rx_calls = stats.udp_rx.ios,
                "transfer done"
            );
        }
        Outcome::Failed(e) => {
            shared.store_metrics.record(&id.store, "failed", sent, took);
            stats.failed.fetch_add(1, Ordering::Relaxed);
            // An interrupted client may come back for the rest; one that gave up will not.
            if e.resumable() {
                shared
                    .snapshots
                    .keep_for_resume(lease.snapshot(), Instant::now());
            } else {
                lease.snapshot().release_resume();
            }
            tracing::info!(error = %e, resumable = e.resumable(), "transfer ended early");
            let code = match e {
                ServerEnd::ShuttingDown => codes::SHUTTING_DOWN,
                ServerEnd::Revoked => codes::REVOKED,
                _ => codes::ABORTED,
            };
            let _ = control.send.reset(code.into());
            let _ = control.reader.recv.stop(code.into());
        }
    }
    drop(lease);
}

/// Lists the manifest, accepts, pushes and closes, as the machine directs, while watching the control
/// stream (an `Abort` or a vanished client ends it), the clock, progress and shutdown.
async fn run_transfer(
    conn: &quinn::Connection,
    control: &mut Control,
    req: &Request,
    lease: &SnapshotLease,
    shared: &Shared,
    listed: &Listed<'_>,
    who: &Client,
) -> Outcome {
    let snap = lease.snapshot();
    // The digest cache is read on first use: a file read and a `stat` per file, off the
    // runtime's threads.
    let (listing, algo) = (snap.clone(), req.checksum);
    let mut digesting: Option<Step<'_, _>> = Some(Box::pin(async move {
        tokio::task::spawn_blocking(move || listing.manifest(algo)).await
    }));
    let mut pushing: Option<Step<'_, Result<(), ServerEnd>>> = None;
    // From `Accept` on this transfer sends: its connection's send window follows its path
    // within the process's budget, and its file reads are reserved from that budget up front.
    let mut _budget = None;
    let sent = listed.sent.clone();
    let mut revoked = who.revoked.clone();
    let progress = || (sent.load(Ordering::Relaxed), conn.stats().frame_tx.stream);
    let mut last = progress();
    let mut tick = tokio::time::interval(heartbeat_interval(shared.cfg.policy.idle_timeout));
    let mut shutdown = shared.shutdown.clone();
    loop {
        match control.next_action(shared).await {
            Some(ServerAction::PushFiles(plan)) => {
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                if req.resume.is_some() {
                    shared.stats.resumed.fetch_add(1, Ordering::Relaxed);
                }
                let reads = shared.files_in_flight() as u64 * HELD_PER_FILE;
                _budget = Some(shared.budget.lease(conn, reads));
                let total: u64 = plan
                    .iter()
                    .filter_map(|f| {
                        snap.files
                            .get(f.index as usize)
                            .map(|m| m.size.saturating_sub(f.offset))
                    })
                    .sum();
                listed.total.store(total, Ordering::Relaxed);
                let pace = Pace {
                    process: shared.cfg.policy.write_limiter.clone(),
                    live: shared.cfg.policy.live.clone(),
                    store: req.store.clone(),
                    revoked: who.revoked.clone(),
                };
                let transfer = (req.transfer_id, req.checksum);
                let push = push_files(conn, transfer, snap, plan, shared, sent.clone(), pace);
                pushing = Some(Box::pin(push));
                continue;
            }
            Some(ServerAction::End(end)) => {
                return match control.wire_error.take() {
                    Some(e) => Outcome::Failed(ServerEnd::StreamLost(e.to_string())),
                    None => end.into(),
                };
            }
            Some(other) => {
                return Outcome::Failed(ServerEnd::Protocol(format!("unexpected step {other:?}")))
            }
            None => {}
        }
        let wants_control = control.machine.wants_control();
        tokio::select! {
            d = async { digesting.as_mut().expect("guarded").await }, if digesting.is_some() => {
                digesting = None;
                let files = match d {
                    Ok(files) => files,
                    Err(e) => return Outcome::Failed(ServerEnd::LocalIo(e.to_string())),
                };
                let meta = snap.meta.clone();
                control.machine.handle_manifest(files, snap.snapshot_id, meta, Instant::now());
            }
            r = async { pushing.as_mut().expect("guarded").await }, if pushing.is_some() => {
                pushing = None;
                if let Err(e) = r {
                    return Outcome::Failed(e);
                }
                control.machine.handle_files_acked(Instant::now());
            }
            frame = control.reader.next_frame::<ControlFrame>(), if wants_control => match frame {
                Ok(Some(f)) => control.machine.handle_frame(f),
                Ok(None) => control.machine.handle_control_end(),
                Err(e) => return Outcome::Failed(ServerEnd::StreamLost(e.to_string())),
            },
            // The allow list dropped this client: no more bytes, nor a resume.
            // Only a revocation: the sender is dropped too when the connection simply ends,
            // and a lost connection is for a resume, not the end of the client's rights.
            Ok(_) = revoked.wait_for(|r| *r) => {
                return Outcome::Failed(ServerEnd::Revoked);
            }
            // Dropping `pushing` resets every file stream with SHUTTING_DOWN (`ResetOnDrop`).
            _ = shutdown.wait_for(|down| *down), if pushing.is_some() => {
                return Outcome::Failed(ServerEnd::ShuttingDown);
            }
            _ = tick.tick() => {
                let now = progress();
                if now != last {
                    last = now;
                    control.machine.handle_send_progress(Instant::now());
                }
            }
            _ = sleep_until(control.machine.poll_timeout()) => {
                control.machine.handle_timeout(Instant::now());
            }
        }
    }
}
