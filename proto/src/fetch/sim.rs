//! A whole partition fetch in simulation: [`FetchMachine`], [`ClientTransfer`] and one
//! [`ServerTransfer`] per attempt wired to each other in-process on a simulated clock, over a
//! link that can go dark, with peers of a given rate that may forget their snapshot. The
//! "driver" here does what quicstrap's does — keeps or drops the files by [`keeps`], tells
//! the server `Suspend` or `Abort` — so every lifecycle rule runs end to end without a
//! socket, a thread or a sleep (quinn-proto's `Pair` is the model).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;
use crate::frame::{ControlFrame, FileEntry, FileHeader, FileStart, RejectReason};
use crate::transfer::{
    ClientAction, ClientFailure, ClientLimits, ClientTransfer, ResumeFrom, ServerAction,
    ServerLimits, ServerTransfer,
};
use crate::types::{PartitionMeta, SnapshotId, TableFormat};

const MB: u64 = 1_000_000;
/// The simulation's time step.
const DT: Duration = Duration::from_millis(50);

/// A peer: its snapshot, how fast it sends, and when it restarts (forgetting its snapshot).
struct SimPeer {
    id: PeerId,
    snapshot: SnapshotId,
    rate: u64,
    restarts_at: Option<Duration>,
}

/// What the client has on disk: bytes per manifest file, validated files, whose they are.
#[derive(Default)]
struct Disk {
    have: Vec<u64>,
    validated: Vec<bool>,
    from: Option<(PeerId, SnapshotId)>,
}

impl Disk {
    fn held(&self) -> u64 {
        self.have.iter().sum()
    }

    fn clear(&mut self) -> u64 {
        let dropped = self.held();
        *self = Self::default();
        dropped
    }
}

/// What one simulated fetch did.
#[derive(Debug, Default)]
struct Tally {
    /// File bytes that crossed the link.
    sent: u64,
    /// Bytes received before and thrown away (asked for again).
    resent: u64,
    /// Bytes kept from before that an attempt did not need again.
    resumed: u64,
    outcomes: Vec<Outcome>,
}

struct Sim {
    t0: Instant,
    now: Instant,
    files: Vec<FileEntry>,
    peers: Vec<SimPeer>,
    /// Intervals (from `t0`) when the link is dark.
    dark: Vec<(Duration, Duration)>,
    /// When the node cancels.
    cancel_at: Option<Duration>,
    client: ClientLimits,
    server: ServerLimits,
    connect_timeout: Duration,
    floor: (u64, Duration),
    rules: FetchRules,
    disk: Disk,
    tally: Tally,
}

/// File `i` of a manifest: a real partition's manifest starts with its `CURRENT`.
fn entry(i: usize, size: u64) -> FileEntry {
    FileEntry {
        name: if i == 0 {
            "CURRENT".into()
        } else {
            format!("{i:06}.sst")
        },
        size,
        digest: vec![0; 16],
    }
}

impl Sim {
    /// `files` of `size` bytes each, served by `peers` (name, bytes/s).
    fn new(files: usize, size: u64, peers: &[(&str, u64)]) -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            now: t0,
            files: (0..files).map(|i| entry(i, size)).collect(),
            peers: peers
                .iter()
                .enumerate()
                .map(|(i, (name, rate))| SimPeer {
                    id: PeerId::new(*name),
                    snapshot: SnapshotId([i as u8 + 1; 16]),
                    rate: *rate,
                    restarts_at: None,
                })
                .collect(),
            dark: Vec::new(),
            cancel_at: None,
            client: ClientLimits {
                idle: Duration::from_secs(60),
                ..ClientLimits::default()
            },
            server: ServerLimits {
                table_format: TableFormat::Block,
                request_timeout: Duration::from_secs(10),
                idle: Duration::from_secs(60),
                partition_timeout: Duration::from_secs(3600),
            },
            connect_timeout: Duration::from_secs(10),
            floor: (32 * 1024, Duration::from_secs(120)),
            rules: FetchRules::default(),
            disk: Disk::default(),
            tally: Tally::default(),
        }
    }

    fn total(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    fn up(&self) -> bool {
        let t = self.now - self.t0;
        !self.dark.iter().any(|(a, b)| t >= *a && t < *b)
    }

    fn cancelled(&self) -> bool {
        self.cancel_at.is_some_and(|c| self.now - self.t0 >= c)
    }

    fn peer(&mut self, id: &PeerId) -> &mut SimPeer {
        let now = self.now - self.t0;
        let p = self
            .peers
            .iter_mut()
            .find(|p| &p.id == id)
            .expect("known peer");
        if p.restarts_at.is_some_and(|at| now >= at) {
            // Restarted: its snapshots are gone, it cuts a new one.
            p.restarts_at = None;
            p.snapshot.0[15] ^= 0xff;
        }
        p
    }

    /// Runs the fetch to its end, with `holder` kept from an earlier run.
    fn fetch(&mut self, holder: Option<PeerId>) -> Step {
        let order: Vec<PeerId> = self.peers.iter().map(|p| p.id.clone()).collect();
        let mut m = FetchMachine::new(order, holder, self.rules, self.now);
        loop {
            if self.cancelled() {
                m.cancel();
            }
            match m.poll(self.now) {
                Step::Attempt { peer, resume } => {
                    let (outcome, received) = self.attempt(&peer, resume);
                    self.tally.outcomes.push(outcome);
                    let held = self.disk.from.as_ref().map(|(p, _)| p.clone());
                    m.attempt_ended(outcome, received > 0, held, self.now);
                }
                Step::Wait(until) => {
                    while self.now < until && !self.cancelled() {
                        self.now += DT;
                    }
                }
                end => return end,
            }
        }
    }

    /// One attempt at `peer`, as quicstrap's driver runs it. Returns the outcome and the file
    /// bytes received.
    fn attempt(&mut self, peer: &PeerId, resume: bool) -> (Outcome, u64) {
        // A fresh start at the same peer: what is on disk goes. Another peer's files go only
        // once this one accepts.
        let ours = self.disk.from.as_ref().is_some_and(|(p, _)| p == peer);
        if ours && !resume {
            self.tally.resent += self.disk.clear();
        }
        if !self.up() {
            self.now += self.connect_timeout;
            return (Outcome::Unreachable, 0);
        }
        let request = crate::transfer::script::request(crate::PROTOCOL_VERSION);
        let mut client = match self.disk.from.as_ref().filter(|_| ours) {
            Some((_, snapshot)) => {
                let files = (0..self.files.len())
                    .filter(|&i| !self.disk.validated[i])
                    .map(|i| FileStart {
                        index: i as u32,
                        offset: self.disk.have[i],
                    })
                    .collect();
                let from = ResumeFrom {
                    snapshot: *snapshot,
                    manifest: self.files.clone(),
                    files,
                };
                ClientTransfer::resume(request, from, self.client, self.now)
            }
            None => ClientTransfer::new(request, self.client, self.now),
        };
        let held_before = self.disk.held();
        let mut server = ServerTransfer::new(self.server, self.now);
        let (snapshot, rate) = {
            let p = self.peer(peer);
            (p.snapshot, p.rate)
        };
        let mut to_server: VecDeque<ControlFrame> = VecDeque::new();
        let mut to_client: VecDeque<ControlFrame> = VecDeque::new();
        let mut headers: VecDeque<FileHeader> = VecDeque::new();
        // Files the server pushes (index, next byte) and the ones the client receives.
        let mut pushing: Vec<(usize, u64)> = Vec::new();
        let mut receiving: Vec<usize> = Vec::new();
        let mut acked = false;
        let mut received = 0u64;
        let mut floor = RateFloor::new(self.floor.0, self.floor.1, self.now);
        loop {
            // The client's actions.
            while let Some(action) = client.poll_action() {
                match action {
                    ClientAction::Send(f) => to_server.push_back(f),
                    ClientAction::FinishSend => {}
                    ClientAction::Accepted => {
                        if !ours {
                            self.tally.resent += self.disk.clear();
                        }
                    }
                    ClientAction::ReceiveFile { index, offset, .. } => {
                        let i = index as usize;
                        if self.disk.have.is_empty() {
                            self.disk.have = vec![0; self.files.len()];
                            self.disk.validated = vec![false; self.files.len()];
                        }
                        assert_eq!(self.disk.have[i], offset, "resumed from the bytes on disk");
                        self.disk.from = Some((peer.clone(), client.snapshot().unwrap()));
                        receiving.push(i);
                    }
                    ClientAction::Commit(_) => {
                        assert!(self.disk.validated.iter().all(|v| *v));
                        assert_eq!(self.disk.held(), self.total());
                        client.handle_committed(Ok(()));
                    }
                    ClientAction::Fail(f) => {
                        let outcome = match f {
                            ClientFailure::Rejected { reason, .. } => match reason {
                                RejectReason::Busy => Outcome::Busy,
                                RejectReason::SnapshotGone => Outcome::SnapshotGone,
                                RejectReason::ShuttingDown | RejectReason::Draining => {
                                    Outcome::ShuttingDown
                                }
                                _ => Outcome::Refused,
                            },
                            ClientFailure::Protocol(_) => Outcome::Disproven,
                            ClientFailure::Unprepared(_) => Outcome::Busy,
                            ClientFailure::Idle(_) | ClientFailure::ConnectionClosed => {
                                Outcome::Interrupted
                            }
                        };
                        return self.end(peer, outcome, &mut client, received, held_before);
                    }
                }
            }
            if client.is_ended() && to_server.is_empty() {
                return (Outcome::Committed, received);
            }
            if self.cancelled() {
                return self.end(peer, Outcome::Cancelled, &mut client, received, held_before);
            }
            if floor.observe(received, self.now) {
                return self.end(peer, Outcome::TooSlow, &mut client, received, held_before);
            }
            // The server's actions.
            while let Some(action) = server.poll_action() {
                match action {
                    ServerAction::Send(f) => to_client.push_back(f),
                    ServerAction::FinishSend | ServerAction::StopReading => {}
                    ServerAction::Lease(req) => match req.resume {
                        Some(r) if r.snapshot != snapshot => {
                            server.handle_refused(RejectReason::SnapshotGone, "restarted".into())
                        }
                        _ => {
                            server.handle_leased(self.now);
                            server.handle_manifest(
                                self.files.clone(),
                                snapshot,
                                PartitionMeta::default(),
                                self.now,
                            );
                        }
                    },
                    ServerAction::PushFiles(plan) => {
                        for f in plan {
                            headers.push_back(FileHeader {
                                transfer_id: 1,
                                index: f.index,
                                offset: f.offset,
                            });
                            pushing.push((f.index as usize, f.offset));
                        }
                    }
                    ServerAction::End(_) => {}
                }
            }
            // The link: frames and bytes cross only while it is up.
            if self.up() {
                while let Some(f) = to_server.pop_front() {
                    match f {
                        ControlFrame::Request(_) => {
                            server.handle_request(Some(&postcard::to_stdvec(&f).unwrap()))
                        }
                        other => server.handle_frame(other),
                    }
                }
                while let Some(f) = to_client.pop_front() {
                    client.handle_frame(f, self.now);
                }
                while let Some(h) = headers.pop_front() {
                    client.handle_file_stream(h, self.now);
                }
                // One file at a time, at the peer's rate.
                let mut budget = (rate as f64 * DT.as_secs_f64()) as u64;
                for (i, next) in &mut pushing {
                    if budget == 0 || !receiving.contains(i) {
                        continue;
                    }
                    let size = self.files[*i].size;
                    let n = budget.min(size - *next);
                    *next += n;
                    budget -= n;
                    self.disk.have[*i] = *next;
                    received += n;
                    self.tally.sent += n;
                    if n > 0 {
                        client.handle_file_progress(self.now);
                        server.handle_send_progress(self.now);
                    }
                    if *next == size && !self.disk.validated[*i] {
                        self.disk.validated[*i] = true;
                        client.handle_file_done(*i as u32, size, self.now);
                    }
                }
                if !acked
                    && !pushing.is_empty()
                    && pushing.iter().all(|(i, n)| *n == self.files[*i].size)
                {
                    acked = true;
                    server.handle_files_acked(self.now);
                }
            }
            self.now += DT;
            if client.poll_timeout().is_some_and(|t| t <= self.now) {
                client.handle_timeout(self.now);
            }
            if server.poll_timeout().is_some_and(|t| t <= self.now) {
                server.handle_timeout(self.now);
            }
        }
    }

    /// Ends a failed attempt at `peer` as the driver does: its files kept by [`keeps`]
    /// (journaled) or dropped — another holder's stay — and the server told `Suspend` or
    /// `Abort`.
    fn end(
        &mut self,
        peer: &PeerId,
        outcome: Outcome,
        client: &mut ClientTransfer,
        received: u64,
        held_before: u64,
    ) -> (Outcome, u64) {
        if keeps(outcome) {
            client.suspend(format!("{outcome:?}"));
            // Counted once the peer took up the resume (it sent the rest).
            if received > 0 {
                self.tally.resumed += held_before;
            }
        } else {
            client.abort(format!("{outcome:?}"));
            if self.disk.from.as_ref().map_or(true, |(p, _)| p == peer) {
                self.tally.resent += self.disk.clear();
            }
        }
        (outcome, received)
    }
}

#[test]
fn a_slow_link_finishes_however_long_it_takes() {
    // 40 MB at 2 MB/s (16 Mbit/s): 20 s; a 10 s wall-clock deadline would have thrown it
    // away. No rule here looks at the clock, only at progress.
    let mut sim = Sim::new(10, 4 * MB, &[("a", 2 * MB)]);
    assert_eq!(sim.fetch(None), Step::Done);
    assert_eq!(sim.tally.outcomes, [Outcome::Committed]);
    assert_eq!(sim.tally.sent, sim.total());
    assert!(sim.now - sim.t0 >= Duration::from_secs(20));
}

#[test]
fn a_lost_connection_longer_than_the_idle_limit_resumes_where_it_stopped() {
    // The case: dark from 15 s to 40 s, idle limit 10 s on both sides.
    let mut sim = Sim::new(40, 5 * MB, &[("a", 5 * MB)]);
    sim.client.idle = Duration::from_secs(10);
    sim.server.idle = Duration::from_secs(10);
    sim.dark = vec![(Duration::from_secs(15), Duration::from_secs(40))];
    assert_eq!(sim.fetch(None), Step::Done);
    assert_eq!(sim.tally.outcomes[0], Outcome::Interrupted);
    assert_eq!(*sim.tally.outcomes.last().unwrap(), Outcome::Committed);
    // Nothing crossed twice: every resume asked for the rest only.
    assert_eq!(sim.tally.sent, sim.total());
    assert_eq!(sim.tally.resent, 0);
}

#[test]
fn an_outage_of_three_minutes_is_outlasted_with_the_default_limits() {
    let mut sim = Sim::new(40, 5 * MB, &[("a", 5 * MB)]);
    sim.dark = vec![(Duration::from_secs(10), Duration::from_secs(190))];
    assert_eq!(sim.fetch(None), Step::Done);
    assert!(sim.tally.outcomes.contains(&Outcome::Unreachable));
    assert_eq!(sim.tally.sent, sim.total());
}

#[test]
fn during_an_outage_the_other_peers_are_tried_without_losing_the_holders_files() {
    let mut sim = Sim::new(10, 5 * MB, &[("a", 5 * MB), ("b", 5 * MB)]);
    sim.rules.max_resumes = 2;
    sim.client.idle = Duration::from_secs(5);
    sim.server.idle = Duration::from_secs(5);
    sim.dark = vec![(Duration::from_secs(3), Duration::from_secs(25))];
    assert_eq!(sim.fetch(None), Step::Done);
    // a: interrupted, unreachable; b: unreachable (it never accepted, a's files stay); a
    // again once the link is back, for the rest only.
    assert_eq!(
        sim.tally.outcomes,
        [
            Outcome::Interrupted,
            Outcome::Unreachable,
            Outcome::Unreachable,
            Outcome::Committed
        ]
    );
    assert_eq!(sim.tally.resent, 0);
    assert_eq!(sim.tally.sent, sim.total());
}

#[test]
fn an_outage_longer_than_the_budget_ends_the_fetch_with_the_files_kept_for_a_rerun() {
    let mut sim = Sim::new(10, 5 * MB, &[("a", 5 * MB), ("b", 5 * MB)]);
    sim.rules.max_resumes = 2;
    sim.client.idle = Duration::from_secs(5);
    sim.server.idle = Duration::from_secs(5);
    sim.dark = vec![(Duration::from_secs(3), Duration::from_secs(600))];
    assert_eq!(sim.fetch(None), Step::Exhausted);
    let kept = sim.disk.held();
    assert!(kept >= 10 * MB, "kept {kept}");
    // The rerun, once the link is back, resumes them.
    sim.dark.clear();
    let holder = sim.disk.from.as_ref().map(|(p, _)| p.clone());
    sim.tally = Tally::default();
    assert_eq!(sim.fetch(holder), Step::Done);
    assert_eq!(sim.tally.sent, sim.total() - kept);
}

#[test]
fn a_cancel_suspends_with_the_files_kept_and_a_rerun_resumes_them() {
    let mut sim = Sim::new(10, 4 * MB, &[("a", 2 * MB), ("b", 2 * MB)]);
    sim.cancel_at = Some(Duration::from_secs(7));
    assert_eq!(sim.fetch(None), Step::Suspend);
    assert_eq!(sim.tally.outcomes, [Outcome::Cancelled]);
    // Nothing more was started: "b" was never asked.
    let kept = sim.disk.held();
    assert!(kept >= 12 * MB, "kept {kept}");
    let holder = sim.disk.from.as_ref().map(|(p, _)| p.clone());
    assert_eq!(holder, Some(PeerId::new("a")));
    // The rerun (a new machine, the journal naming the holder) asks for the rest only.
    sim.cancel_at = None;
    sim.tally = Tally::default();
    assert_eq!(sim.fetch(holder), Step::Done);
    assert_eq!(sim.tally.sent, sim.total() - kept);
    assert_eq!(sim.tally.resent, 0);
}

#[test]
fn a_snapshot_gone_after_a_restart_means_a_fresh_start_at_the_same_peer() {
    let mut sim = Sim::new(10, 4 * MB, &[("a", 4 * MB)]);
    sim.client.idle = Duration::from_secs(5);
    sim.server.idle = Duration::from_secs(5);
    sim.dark = vec![(Duration::from_secs(3), Duration::from_secs(20))];
    sim.peers[0].restarts_at = Some(Duration::from_secs(10));
    assert_eq!(sim.fetch(None), Step::Done);
    assert!(sim.tally.outcomes.contains(&Outcome::SnapshotGone));
    // What was kept is thrown away once, and everything is sent again after it.
    assert!(sim.tally.resent >= 8 * MB);
    assert_eq!(sim.tally.sent, sim.total() + sim.tally.resent);
}

#[test]
fn a_peer_below_the_rate_floor_gives_way_to_a_faster_one() {
    let mut sim = Sim::new(10, 4 * MB, &[("slow", 100_000), ("fast", 4 * MB)]);
    sim.floor = (500_000, Duration::from_secs(10));
    assert_eq!(sim.fetch(None), Step::Done);
    assert_eq!(sim.tally.outcomes, [Outcome::TooSlow, Outcome::Committed]);
    // The slow peer's bytes could not be resumed elsewhere (replicas differ).
    assert_eq!(sim.tally.resent, sim.tally.sent - sim.total());
}

#[test]
fn a_lone_peer_below_the_rate_floor_keeps_its_files_and_is_asked_for_the_rest() {
    let mut sim = Sim::new(4, MB, &[("slow", 100_000)]);
    sim.floor = (200_000, Duration::from_secs(10));
    assert_eq!(sim.fetch(None), Step::Done);
    assert_eq!(sim.tally.outcomes[0], Outcome::TooSlow);
    // Every attempt kept what arrived: nothing crossed twice.
    assert_eq!(sim.tally.sent, sim.total());
    assert_eq!(sim.tally.resent, 0);
}
