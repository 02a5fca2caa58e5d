//! The fetch of one whole partition as a deterministic state machine: which peer to ask next,
//! whether to resume what a peer already sent, how long to pause first, and when to stop.
//!
//! [`ClientTransfer`](crate::transfer::ClientTransfer) holds the rules of *one* attempt at one
//! peer; [`FetchMachine`] holds the rules *between* attempts, for the whole partition. Like the
//! transfer machines it owns no socket, task or clock: the driver (quicstrap's fetcher) asks
//! [`FetchMachine::poll`] for the next [`Step`], carries it out, and reports each attempt's
//! [`Outcome`] with the `now` it read. Every rule below is one arm of
//! [`FetchMachine::attempt_ended`] or [`keeps`], tested on a simulated clock.
//!
//! # Decision table
//!
//! "Holder" is the peer the kept files came from (a resume can only ask it: replicas compact on
//! their own, so another peer's files differ). The files stay until another peer accepts (its
//! `Accept` is when the driver deletes them): a peer that cannot even be reached costs nothing. "Resume budget": at most
//! [`FetchRules::max_resumes`] attempts at the holder in a row without a byte arriving (in any
//! attempt), each
//! after a pause that doubles from [`FetchRules::backoff_first`] up to
//! [`FetchRules::backoff_max`], and none starting later than [`FetchRules::resume_window`]
//! after the kept files last grew (the servers keep a suspended snapshot that long). An attempt
//! that received bytes refills the budget.
//!
//! | outcome of the attempt | files kept ([`keeps`]) | next step |
//! |---|---|---|
//! | `Committed` | (committed) | `Done` |
//! | `Cancelled` (SIGTERM, the node's cancel) | yes | `Suspend`: no other peer, no fallback |
//! | `Local` (disk trouble) | yes | `GiveUp`: no peer helps |
//! | `Interrupted` (link down, idle, peer gone, stream reset) at the holder | yes | pause, then resume at the holder, within the budget; then next peer |
//! | `Unreachable` (connect failed or timed out) at the holder | yes | the peers not asked yet first (the files stay until one accepts), then pause and resume at the holder, within the budget |
//! | `Busy` at the holder | yes | pause, then resume at the holder, within the budget; then next peer |
//! | `TooSlow` (below the rate floor) at the holder | yes | as `Unreachable` |
//! | `ShuttingDown` at the holder | yes | as `Unreachable` (restarted, it answers `SnapshotGone`) |
//! | `SnapshotGone` (the holder no longer keeps the snapshot) | no | ask the same peer afresh, at once (once per peer) |
//! | `ResumedPrefixBad` (a file resumed from a held prefix failed its digest) | yes, but that file | resume at the same peer at once, within the budget |
//! | `Disproven` (digest, size or protocol failure of what this peer sent) | no | next peer |
//! | `Refused` (not found, wrong format or version) | no new files | next peer |
//! | any failure at a peer that never accepted | no new files; the holder's stay | next peer; with none left, pause and resume at the holder, within the budget |
//! | no peer left | — | `Exhausted` (the node falls back to Kafka) |
//!
//! A cancel between attempts (also during a pause) ends the fetch with `Suspend`.
//!
//! Deadlines follow progress, never the wall clock: an attempt ends when no byte arrives for
//! the idle limit ([`ClientTransfer`](crate::transfer::ClientTransfer)'s rule) or when it moves
//! slower than a [`RateFloor`] over a whole window. Both keep what arrived.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// A peer, as every part of the fetch names it: one canonical text form (`host:port`, or
/// `name@host:port` when its certificate name differs from its address), compared by value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    /// A peer named by its canonical text form.
    pub fn new(canonical: impl Into<String>) -> Self {
        Self(canonical.into())
    }

    /// The canonical text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an attempt at one peer ended, as far as the choice of the next step cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The partition is in place.
    Committed,
    /// The node asked to stop.
    Cancelled,
    /// Local trouble (a full disk, permissions): no other peer would help.
    Local,
    /// The transfer was cut off: the link went down, nothing arrived for the idle limit, the
    /// peer died or reset a stream. What validated is good.
    Interrupted,
    /// The peer could not be reached (connect failed or timed out).
    Unreachable,
    /// The peer is over its concurrency limit (Venice's 429): it may have room later.
    Busy,
    /// The transfer moved slower than the rate floor over a whole window.
    TooSlow,
    /// The peer is shutting down.
    ShuttingDown,
    /// A resume was refused: the peer no longer keeps that snapshot.
    SnapshotGone,
    /// A file resumed from a held prefix failed its digest: the prefix was bad, not the peer.
    ResumedPrefixBad,
    /// What the peer sent was wrong (digest, size, protocol).
    Disproven,
    /// The peer cannot serve this partition (not found, another format or version).
    Refused,
}

/// Whether the files an attempt leaves on disk are kept (journaled, resumable) after it
/// ended with `outcome`, or deleted at once. The "files kept" column of the decision table.
/// For [`Outcome::ResumedPrefixBad`] the driver deletes the one file whose prefix was bad.
pub fn keeps(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Cancelled
        | Outcome::Local
        | Outcome::Interrupted
        | Outcome::Unreachable
        | Outcome::Busy
        | Outcome::TooSlow
        | Outcome::ShuttingDown
        | Outcome::ResumedPrefixBad => true,
        Outcome::Committed | Outcome::SnapshotGone | Outcome::Disproven | Outcome::Refused => false,
    }
}

/// The machine's knobs: how long and how often it keeps asking the holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchRules {
    /// Attempts at the holder in a row that receive nothing before moving on (10).
    pub max_resumes: u32,
    /// First pause before asking the holder again (1 s); it doubles with every attempt in a
    /// row that received nothing.
    pub backoff_first: Duration,
    /// Longest pause (30 s).
    pub backoff_max: Duration,
    /// No resume starts later than this after the kept files last grew (10 min).
    pub resume_window: Duration,
}

impl Default for FetchRules {
    /// With these, the holder is asked for about four minutes of outage after a failure
    /// (pauses 1+2+4+8+16+30+30+30+30+30 s plus each attempt's connect timeout), which
    /// outlasts a cross-datacenter routing change, and never past the servers' window.
    fn default() -> Self {
        Self {
            max_resumes: 10,
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            resume_window: Duration::from_secs(10 * 60),
        }
    }
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask `peer`. With `resume`, offer it the kept files (they came from it); without, any
    /// kept files are deleted first and the peer sends everything.
    Attempt {
        /// Whom to ask.
        peer: PeerId,
        /// Offer the kept files.
        resume: bool,
    },
    /// Pause until then (or until a cancel), then poll again.
    Wait(Instant),
    /// The partition is in place.
    Done,
    /// Stopped by a cancel: keep what is on disk, start nothing else, no fallback.
    Suspend,
    /// Local trouble: stop; no peer can help.
    GiveUp,
    /// Every peer was asked and none could serve.
    Exhausted,
}

/// The state of one partition's fetch.
#[derive(Debug)]
pub struct FetchMachine {
    rules: FetchRules,
    /// Peers not asked yet, in order.
    queue: VecDeque<PeerId>,
    /// The peer the kept files came from, while files are kept.
    holder: Option<PeerId>,
    /// The attempt in flight (or about to start).
    current: Option<Step>,
    /// Where the fetch stands once it has ended.
    end: Option<Step>,
    /// Attempts at the holder in a row that received nothing.
    streak: u32,
    /// When the kept files last grew (or were first held).
    grew: Instant,
    /// A pause in force.
    pause: Option<Instant>,
    /// Peers asked afresh after `SnapshotGone` (at most once each).
    afresh: Vec<PeerId>,
    cancelled: bool,
    attempts: u32,
}

impl FetchMachine {
    /// A fetch from `peers` (in the order to try them). `holder` names the peer files kept by
    /// an earlier run came from: it is asked first, with a resume, whether or not it is in
    /// `peers` (a peer that left the list is not asked).
    pub fn new(
        peers: impl IntoIterator<Item = PeerId>,
        holder: Option<PeerId>,
        rules: FetchRules,
        now: Instant,
    ) -> Self {
        let mut queue: VecDeque<PeerId> = VecDeque::new();
        for p in peers {
            if !queue.contains(&p) {
                queue.push_back(p);
            }
        }
        let holder = holder.filter(|h| queue.contains(h));
        if let Some(h) = &holder {
            queue.retain(|p| p != h);
            queue.push_front(h.clone());
        }
        Self {
            rules,
            queue,
            holder,
            current: None,
            end: None,
            streak: 0,
            grew: now,
            pause: None,
            afresh: Vec::new(),
            cancelled: false,
            attempts: 0,
        }
    }

    /// The node asked to stop: the attempt in flight should end (it reports `Cancelled`), and
    /// nothing new starts.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// The peer the kept files came from, if files are kept.
    pub fn holder(&self) -> Option<&PeerId> {
        self.holder.as_ref()
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next step. An `Attempt` is handed out once; the driver reports its end with
    /// [`Self::attempt_ended`] before polling again (polling in between hands the same one).
    pub fn poll(&mut self, now: Instant) -> Step {
        if let Some(end) = &self.end {
            return end.clone();
        }
        if let Some(step) = &self.current {
            return step.clone();
        }
        if self.cancelled {
            return self.finish(Step::Suspend);
        }
        if let Some(until) = self.pause {
            if now < until {
                return Step::Wait(until);
            }
            self.pause = None;
        }
        let Some(peer) = self.queue.pop_front() else {
            return self.finish(Step::Exhausted);
        };
        // Another peer's snapshot differs: it starts from byte 0, and the holder's files go
        // once it accepts (the driver says so in `attempt_ended`).
        let resume = self.holder.as_ref() == Some(&peer);
        let step = Step::Attempt { peer, resume };
        self.attempts += 1;
        self.current = Some(step.clone());
        step
    }

    /// The attempt handed out last ended with `outcome`. `received` says whether any file byte
    /// arrived in it; `held` names the peer whose files the driver holds now (kept by this
    /// attempt, still kept from an earlier holder because this peer never accepted, or none:
    /// resume off, a journal that could not be saved, files proven wrong or replaced).
    pub fn attempt_ended(
        &mut self,
        outcome: Outcome,
        received: bool,
        held: Option<PeerId>,
        now: Instant,
    ) {
        let Some(Step::Attempt { peer, .. }) = self.current.take() else {
            return;
        };
        if received {
            // Bytes arrived: the budget starts over.
            self.streak = 0;
            self.grew = now;
        } else if held != self.holder {
            self.grew = now;
        }
        self.holder = held;
        match outcome {
            Outcome::Committed => {
                self.holder = None;
                self.finish(Step::Done);
                return;
            }
            Outcome::Cancelled => {
                self.finish(Step::Suspend);
                return;
            }
            Outcome::Local => {
                self.finish(Step::GiveUp);
                return;
            }
            _ => {}
        }
        if self.cancelled {
            self.finish(Step::Suspend);
            return;
        }
        let others_left = !self.queue.is_empty();
        let holds = self.holder.as_ref() == Some(&peer);
        match outcome {
            Outcome::SnapshotGone if !self.afresh.contains(&peer) => {
                // Expired, given up or restarted: the same peer, from byte 0, at once.
                self.afresh.push(peer.clone());
                self.queue.push_front(peer);
            }
            Outcome::ResumedPrefixBad if holds => self.again(peer, Duration::ZERO, now, true),
            Outcome::TooSlow | Outcome::ShuttingDown | Outcome::Unreachable
                if holds && others_left =>
            {
                // Someone else may do better; the kept files go only once another peer
                // accepts, and this one is asked again if none does.
                self.again(peer, Duration::ZERO, now, false);
            }
            Outcome::Interrupted
            | Outcome::Unreachable
            | Outcome::Busy
            | Outcome::TooSlow
            | Outcome::ShuttingDown
                if holds =>
            {
                let pause = self.backoff();
                self.again(peer, pause, now, true);
            }
            _ if !holds && !others_left => {
                // This peer never accepted: the holder's files are still good, ask it again.
                if let Some(h) = self.holder.clone() {
                    let pause = self.backoff();
                    self.again(h, pause, now, true);
                }
            }
            _ => {}
        }
    }

    /// The pause before the next attempt at the holder: doubling with the streak.
    fn backoff(&self) -> Duration {
        let doublings = self.streak.min(20);
        self.rules
            .backoff_first
            .saturating_mul(1u32 << doublings)
            .min(self.rules.backoff_max)
    }

    /// Asks `peer` (the holder) again — next (`first`) after `pause`, or after the peers still
    /// queued — if the budget allows; otherwise moves on.
    fn again(&mut self, peer: PeerId, pause: Duration, now: Instant, first: bool) {
        let start = now + pause;
        let within_window = start.saturating_duration_since(self.grew) <= self.rules.resume_window;
        if self.streak < self.rules.max_resumes && within_window {
            self.streak += 1;
            self.queue.retain(|p| p != &peer);
            if first {
                self.pause = (!pause.is_zero()).then_some(start);
                self.queue.push_front(peer);
            } else {
                self.queue.push_back(peer);
            }
        }
    }

    fn finish(&mut self, step: Step) -> Step {
        self.current = None;
        self.pause = None;
        self.end = Some(step.clone());
        step
    }
}

/// The slow-peer rule: an attempt that receives fewer than `min_rate` bytes per second over
/// a whole `window` is too slow for this peer to be worth waiting for. Never fires before one
/// window has passed, so a slow start (a digest, a congestion window opening) is no failure.
#[derive(Clone, Debug)]
pub struct RateFloor {
    min_rate: u64,
    window: Duration,
    /// (time, bytes received by then), oldest first, spanning at most one window.
    samples: VecDeque<(Instant, u64)>,
}

impl RateFloor {
    /// A floor of `min_rate` bytes/s over `window`; a rate of 0 never fires.
    pub fn new(min_rate: u64, window: Duration, now: Instant) -> Self {
        Self {
            min_rate,
            window,
            samples: VecDeque::from([(now, 0)]),
        }
    }

    /// `received` bytes have arrived in the attempt by `now`. True when the last whole window
    /// carried fewer than `min_rate × window` bytes.
    pub fn observe(&mut self, received: u64, now: Instant) -> bool {
        if self.min_rate == 0 || self.window.is_zero() {
            return false;
        }
        // Keep the newest sample at least one window old as the baseline.
        while self.samples.len() > 1
            && now.saturating_duration_since(self.samples[1].0) >= self.window
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, received));
        // Samples are taken often; keep a bounded number of them.
        if self.samples.len() > 1024 {
            self.samples.remove(1);
        }
        let (t0, b0) = self.samples[0];
        let span = now.saturating_duration_since(t0);
        if span < self.window {
            return false;
        }
        let need = (self.min_rate as f64 * span.as_secs_f64()) as u64;
        received.saturating_sub(b0) < need
    }
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> PeerId {
        PeerId::new(name)
    }

    fn rules() -> FetchRules {
        FetchRules::default()
    }

    fn attempt(peer: &str, resume: bool) -> Step {
        Step::Attempt {
            peer: p(peer),
            resume,
        }
    }

    fn held(peer: &str) -> Option<PeerId> {
        Some(p(peer))
    }

    /// Polls past any pause; returns the next step that is not one.
    fn step(m: &mut FetchMachine, now: &mut Instant) -> Step {
        loop {
            match m.poll(*now) {
                Step::Wait(until) => *now = until,
                s => return s,
            }
        }
    }

    #[test]
    fn committed_is_done() {
        let t = Instant::now();
        let mut m = FetchMachine::new([p("a"), p("b")], None, rules(), t);
        assert_eq!(m.poll(t), attempt("a", false));
        // Polling again before the end hands the same attempt.
        assert_eq!(m.poll(t), attempt("a", false));
        m.attempt_ended(Outcome::Committed, true, None, t);
        assert_eq!(m.poll(t), Step::Done);
        assert_eq!(m.attempts(), 1);
    }

    #[test]
    fn the_holder_of_kept_files_is_asked_first_with_a_resume() {
        let t = Instant::now();
        let mut m = FetchMachine::new([p("a"), p("b"), p("c")], held("c"), rules(), t);
        assert_eq!(m.poll(t), attempt("c", true));
        // A holder that left the list is not asked.
        let mut m = FetchMachine::new([p("a")], held("z"), rules(), t);
        assert_eq!(m.poll(t), attempt("a", false));
        assert_eq!(m.holder(), None);
    }

    #[test]
    fn cancel_suspends_with_files_kept_and_nothing_more_started() {
        let t = Instant::now();
        let mut m = FetchMachine::new([p("a"), p("b")], None, rules(), t);
        m.poll(t);
        m.cancel();
        m.attempt_ended(Outcome::Cancelled, true, held("a"), t);
        assert_eq!(m.poll(t), Step::Suspend);
        assert_eq!(m.holder(), Some(&p("a")));
        assert!(keeps(Outcome::Cancelled));
        // A cancel before any attempt, or during a pause, suspends too.
        let mut m = FetchMachine::new([p("a")], None, rules(), t);
        m.cancel();
        assert_eq!(m.poll(t), Step::Suspend);
        let mut m = FetchMachine::new([p("a")], None, rules(), t);
        m.poll(t);
        m.attempt_ended(Outcome::Interrupted, true, held("a"), t);
        assert!(matches!(m.poll(t), Step::Wait(_)));
        m.cancel();
        assert_eq!(m.poll(t), Step::Suspend);
    }

    #[test]
    fn local_trouble_gives_up_and_keeps_the_files() {
        let t = Instant::now();
        let mut m = FetchMachine::new([p("a"), p("b")], None, rules(), t);
        m.poll(t);
        m.attempt_ended(Outcome::Local, true, held("a"), t);
        assert_eq!(m.poll(t), Step::GiveUp);
        assert!(keeps(Outcome::Local));
        assert_eq!(m.holder(), Some(&p("a")));
    }

    #[test]
    fn an_interrupted_holder_is_asked_again_after_a_doubling_pause() {
        let t0 = Instant::now();
        let mut m = FetchMachine::new([p("a")], None, rules(), t0);
        m.poll(t0);
        m.attempt_ended(Outcome::Interrupted, true, held("a"), t0);
        assert_eq!(m.poll(t0), Step::Wait(t0 + Duration::from_secs(1)));
        let mut now = t0;
        assert_eq!(step(&mut m, &mut now), attempt("a", true));
        assert_eq!(now, t0 + Duration::from_secs(1));
        // The holder stays unreachable: 2, 4, 8, 16, 30, 30 ... s between attempts.
        let mut pauses = Vec::new();
        loop {
            m.attempt_ended(Outcome::Unreachable, false, held("a"), now);
            let before = now;
            match step(&mut m, &mut now) {
                Step::Attempt { peer, resume: true } if peer == p("a") => {
                    pauses.push((now - before).as_secs())
                }
                other => {
                    assert_eq!(other, Step::Exhausted);
                    break;
                }
            }
        }
        assert_eq!(pauses, [2, 4, 8, 16, 30, 30, 30, 30, 30]);
    }

    #[test]
    fn an_unreachable_holder_lets_the_others_try_first_and_is_asked_again_if_none_accepts() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = FetchMachine::new([p("a"), p("b"), p("c")], None, rules(), t0);
        m.poll(now);
        m.attempt_ended(Outcome::Interrupted, true, held("a"), now);
        assert_eq!(step(&mut m, &mut now), attempt("a", true));
        m.attempt_ended(Outcome::Unreachable, false, held("a"), now);
        // The others first, without a pause; a's files stay while nobody accepts.
        assert_eq!(m.poll(now), attempt("b", false));
        assert_eq!(m.holder(), Some(&p("a")));
        m.attempt_ended(Outcome::Unreachable, false, held("a"), now);
        assert_eq!(m.poll(now), attempt("c", false));
        m.attempt_ended(Outcome::Refused, false, held("a"), now);
        // Nobody accepted: back to a, with a resume.
        assert_eq!(step(&mut m, &mut now), attempt("a", true));
        // Had one accepted, its files would replace a's (the driver says so).
        let mut m = FetchMachine::new([p("a"), p("b")], held("a"), rules(), t0);
        m.poll(t0);
        m.attempt_ended(Outcome::Unreachable, false, held("a"), t0);
        assert_eq!(m.poll(t0), attempt("b", false));
        m.attempt_ended(Outcome::Interrupted, true, held("b"), t0);
        assert_eq!(m.holder(), Some(&p("b")));
        assert_eq!(step(&mut m, &mut now.clone()), attempt("b", true));
    }

    #[test]
    fn an_attempt_that_received_bytes_refills_the_resume_budget() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = FetchMachine::new([p("a")], None, rules(), t0);
        m.poll(now);
        // 30 interruptions, each after some progress: never given up.
        for _ in 0..30 {
            m.attempt_ended(Outcome::Interrupted, true, held("a"), now);
            assert_eq!(step(&mut m, &mut now), attempt("a", true));
            now += Duration::from_secs(5);
        }
        // A steady 1 s between them: the pause does not grow while bytes flow.
        m.attempt_ended(Outcome::Interrupted, true, held("a"), now);
        assert_eq!(m.poll(now), Step::Wait(now + Duration::from_secs(1)));
    }

    #[test]
    fn an_outage_of_three_minutes_is_outlasted_with_default_rules() {
        // Idle limit 60 s, connect timeout 10 s: the outage starts at 0 and ends at 180 s.
        let t0 = Instant::now();
        let outage_end = t0 + Duration::from_secs(180);
        let mut now = t0 + Duration::from_secs(60);
        let mut m = FetchMachine::new([p("a")], None, rules(), t0);
        m.poll(t0);
        m.attempt_ended(Outcome::Interrupted, true, held("a"), now);
        loop {
            match step(&mut m, &mut now) {
                Step::Attempt { resume: true, .. } if now >= outage_end => break,
                Step::Attempt { resume: true, .. } => {
                    now += Duration::from_secs(10);
                    m.attempt_ended(Outcome::Unreachable, false, held("a"), now);
                }
                other => panic!("gave up during the outage: {other:?}"),
            }
        }
    }

    #[test]
    fn no_resume_starts_past_the_window() {
        let t0 = Instant::now();
        let rules = FetchRules {
            resume_window: Duration::from_secs(20),
            ..rules()
        };
        let mut m = FetchMachine::new([p("a")], None, rules, t0);
        m.poll(t0);
        m.attempt_ended(Outcome::Interrupted, true, held("a"), t0);
        let mut now = t0 + Duration::from_secs(19);
        assert_eq!(step(&mut m, &mut now), attempt("a", true));
        now = t0 + Duration::from_secs(25);
        m.attempt_ended(Outcome::Unreachable, false, held("a"), now);
        assert_eq!(step(&mut m, &mut now), Step::Exhausted);
    }

    #[test]
    fn busy_holder_is_waited_for_and_busy_stranger_is_skipped() {
        let t = Instant::now();
        let mut now = t;
        let mut m = FetchMachine::new([p("a"), p("b")], held("a"), rules(), t);
        assert_eq!(m.poll(now), attempt("a", true));
        m.attempt_ended(Outcome::Busy, false, held("a"), now);
        assert!(matches!(m.poll(now), Step::Wait(_)));
        assert_eq!(step(&mut m, &mut now), attempt("a", true));
        let mut m = FetchMachine::new([p("a"), p("b")], None, rules(), t);
        m.poll(t);
        m.attempt_ended(Outcome::Busy, false, None, t);
        assert_eq!(m.poll(t), attempt("b", false));
    }

    #[test]
    fn a_slow_or_stopping_holder_gives_way_to_another_peer_but_is_kept_when_alone() {
        for outcome in [Outcome::TooSlow, Outcome::ShuttingDown] {
            let t = Instant::now();
            let mut now = t;
            let mut m = FetchMachine::new([p("a"), p("b")], None, rules(), t);
            m.poll(now);
            m.attempt_ended(outcome, true, held("a"), now);
            assert_eq!(step(&mut m, &mut now), attempt("b", false), "{outcome:?}");
            assert!(keeps(outcome));
            let mut m = FetchMachine::new([p("a")], None, rules(), t);
            m.poll(now);
            m.attempt_ended(outcome, true, held("a"), now);
            assert_eq!(step(&mut m, &mut now), attempt("a", true), "{outcome:?}");
        }
    }

    #[test]
    fn snapshot_gone_asks_the_same_peer_afresh_once() {
        let t = Instant::now();
        let mut m = FetchMachine::new([p("a"), p("b")], held("a"), rules(), t);
        assert_eq!(m.poll(t), attempt("a", true));
        m.attempt_ended(Outcome::SnapshotGone, false, None, t);
        assert!(!keeps(Outcome::SnapshotGone));
        assert_eq!(m.poll(t), attempt("a", false));
        // Gone again (a peer restarting in a loop): the next peer.
        m.attempt_ended(Outcome::SnapshotGone, false, None, t);
        assert_eq!(m.poll(t), attempt("b", false));
    }

    #[test]
    fn a_bad_resumed_prefix_asks_the_same_peer_again_at_once() {
        let t = Instant::now();
        let mut m = FetchMachine::new([p("a"), p("b")], held("a"), rules(), t);
        m.poll(t);
        m.attempt_ended(Outcome::ResumedPrefixBad, true, held("a"), t);
        assert!(keeps(Outcome::ResumedPrefixBad));
        assert_eq!(m.poll(t), attempt("a", true));
        // Not forever: the streak counts it (no byte arrived in these).
        for _ in 0..rules().max_resumes {
            m.attempt_ended(Outcome::ResumedPrefixBad, false, held("a"), t);
            m.poll(t);
        }
        assert_eq!(m.poll(t), attempt("b", false));
    }

    #[test]
    fn disproven_or_refused_moves_on_and_drops_the_files() {
        for outcome in [Outcome::Disproven, Outcome::Refused] {
            let t = Instant::now();
            let mut m = FetchMachine::new([p("a"), p("b")], held("a"), rules(), t);
            m.poll(t);
            m.attempt_ended(outcome, true, None, t);
            assert!(!keeps(outcome));
            assert_eq!(m.holder(), None);
            assert_eq!(m.poll(t), attempt("b", false), "{outcome:?}");
            m.attempt_ended(outcome, true, None, t);
            assert_eq!(m.poll(t), Step::Exhausted, "{outcome:?}");
        }
    }

    #[test]
    fn a_failure_at_a_peer_that_holds_nothing_moves_on_at_once() {
        for outcome in [
            Outcome::Interrupted,
            Outcome::Unreachable,
            Outcome::Busy,
            Outcome::TooSlow,
            Outcome::ShuttingDown,
        ] {
            let t = Instant::now();
            let mut m = FetchMachine::new([p("a"), p("b")], None, rules(), t);
            m.poll(t);
            // Nothing kept: resume off, or the journal could not be saved.
            m.attempt_ended(outcome, true, None, t);
            assert_eq!(m.poll(t), attempt("b", false), "{outcome:?}");
        }
    }

    #[test]
    fn duplicate_peers_are_asked_once() {
        let t = Instant::now();
        let mut m = FetchMachine::new([p("a"), p("a")], None, rules(), t);
        m.poll(t);
        m.attempt_ended(Outcome::Refused, false, None, t);
        assert_eq!(m.poll(t), Step::Exhausted);
    }

    #[test]
    fn the_rate_floor_fires_only_after_a_whole_slow_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = RateFloor::new(1000, s(10), t0);
        // Nothing for 9 s: not yet a whole window.
        assert!(!f.observe(0, t0 + s(9)));
        // 10 s, 5 000 bytes: below 1 000 B/s.
        assert!(f.observe(5_000, t0 + s(10)));
        // A steady 2 000 B/s from here on: never.
        let mut f = RateFloor::new(1000, s(10), t0);
        for i in 1..=60 {
            assert!(!f.observe(2_000 * i, t0 + s(i)), "at {i} s");
        }
        // Then it stalls to a trickle: fires once a whole window is slow.
        let base = 2_000 * 60;
        let mut fired = None;
        for i in 61..=90 {
            if f.observe(base + 100 * (i - 60), t0 + s(i)) {
                fired = Some(i);
                break;
            }
        }
        let fired = fired.expect("a trickle is too slow");
        assert!((65..=71).contains(&fired), "fired at {fired}");
        // A rate of 0 is off.
        let mut off = RateFloor::new(0, s(1), t0);
        assert!(!off.observe(0, t0 + s(100)));
    }
}
