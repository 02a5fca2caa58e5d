//! How much transfer data a process may buffer: per connection what its path can carry, and
//! all connections together no more than a process-wide cap.
//!
//! quinn keeps up to a connection's send window of unacknowledged data on the sending side and
//! up to its receive window of unread data on the receiving side. Windows fixed at what a fast
//! long path needs (96 MiB) let a serving node queue ~96 MiB per client on a slow path — bytes
//! that reach the wire no sooner for being queued — and thirty clients ~2.9 GiB, all of it
//! taken from the block cache and memtables of the storage node the engine is embedded in.
//!
//! A [`BufferBudget`] owns the windows of the connections that are transferring right now:
//! * each one's **need** comes from its path: a few congestion windows when sending, a few
//!   bandwidth-delay products (measured arrival rate × RTT) when receiving, between a floor
//!   and the configured connection window;
//! * the **cap** is shared by water-filling: a connection that needs less than an equal share
//!   gets what it needs, the rest is split evenly among the others, so none starves;
//! * every [`RESIZE_EVERY`] the needs are measured again and the windows reset, so a window
//!   follows its path as the path changes.
//!
//! Fixed per-transfer buffers outside quinn (the file reads waiting to be written, the receive
//! buffers) are reserved from the cap first, so the cap bounds everything the transfers hold.
//!
//! A shrink takes effect as the data already allowed drains: a sender's queue above its new
//! window drains at the path's rate, and flow-control credit a receiver granted cannot be
//! taken back, so it is used up as the reader reads. Until then the process may briefly hold
//! up to the windows it granted before a new transfer took its share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use quinn::VarInt;

use crate::net::congestion::paced;
use crate::store::lock::unpoisoned as lock;

/// How often windows are resized to their paths.
pub const RESIZE_EVERY: Duration = Duration::from_millis(200);
/// How many congestion windows (send) or bandwidth-delay products (receive) a window holds:
/// room for the path to keep growing between two resizes, and for the data held back by a
/// lost packet until its retransmission arrives.
const PATHS_WORTH: u64 = 4;
/// Default process-wide cap of each direction (`--max-send-buffer`, `--max-recv-buffer`).
pub const DEFAULT_CAP: u64 = 256 << 20;
/// Smallest window a share may shrink to however many connections split the cap: enough for
/// a few full-sized packets, so every connection keeps moving.
pub const MIN_SHARE: u64 = 64 << 10;

/// Which window of its connections a budget sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The send window (unacknowledged data): the serving side.
    Send,
    /// The receive window (unread data): the fetching side.
    Receive,
}

/// The process-wide bound on one direction's transfer buffers. Cheap to share behind the
/// `Arc` [`BufferBudget::new`] returns.
#[derive(Debug)]
pub struct BufferBudget {
    direction: Direction,
    cap: u64,
    floor: u64,
    ceiling: u64,
    idle: u64,
    state: Mutex<State>,
    granted: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    conns: HashMap<usize, Entry>,
    /// True while a resize task runs (it stops when no connection is left).
    resizing: bool,
}

#[derive(Debug)]
struct Entry {
    conn: quinn::Connection,
    /// Transfers on this connection holding a [`BudgetLease`].
    users: usize,
    /// Bytes those transfers hold outside quinn.
    reserved: u64,
    need: u64,
    window: u64,
    /// Bytes received off the wire at the last measurement (receive side).
    rx_bytes: u64,
    at: Instant,
}

impl BufferBudget {
    /// A budget of `cap` bytes for `direction`. A path's need lies between `floor` and
    /// `ceiling` (the configured connection window); a connection without a transfer is
    /// left at `idle`.
    pub fn new(direction: Direction, cap: u64, floor: u64, ceiling: u64, idle: u64) -> Arc<Self> {
        Arc::new(Self {
            direction,
            cap,
            floor: floor.min(ceiling),
            ceiling,
            idle: idle.min(ceiling),
            state: Mutex::default(),
            granted: AtomicU64::new(0),
        })
    }

    /// The cap.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes the transfers of this process may hold right now: the windows granted to
    /// connections with a transfer, plus the buffers those transfers reserved. Never above
    /// the cap unless so many connections share it that each is down to [`MIN_SHARE`].
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Connections with a transfer right now.
    pub fn connections(&self) -> usize {
        lock(&self.state).conns.len()
    }

    /// Counts a transfer on `conn` against the budget until the lease drops, with `reserve`
    /// bytes it holds outside quinn. The connection's window is sized at once.
    pub fn lease(self: &Arc<Self>, conn: &quinn::Connection, reserve: u64) -> BudgetLease {
        let key = conn.stable_id();
        let mut state = lock(&self.state);
        let entry = state.conns.entry(key).or_insert_with(|| Entry {
            conn: conn.clone(),
            users: 0,
            reserved: 0,
            need: self.floor,
            window: self.idle,
            rx_bytes: conn.stats().udp_rx.bytes,
            at: Instant::now(),
        });
        entry.users += 1;
        entry.reserved += reserve;
        self.rebalance(&mut state);
        if !state.resizing {
            state.resizing = true;
            tokio::spawn(resize(Arc::downgrade(self)));
        }
        BudgetLease {
            budget: self.clone(),
            key,
            reserve,
        }
    }

    fn release(&self, key: usize, reserve: u64) {
        let mut state = lock(&self.state);
        let Some(entry) = state.conns.get_mut(&key) else {
            return;
        };
        entry.users -= 1;
        entry.reserved = entry.reserved.saturating_sub(reserve);
        if entry.users == 0 {
            if let Some(e) = state.conns.remove(&key) {
                self.apply(&e.conn, self.idle);
            }
        }
        self.rebalance(&mut state);
    }

    /// Measures every connection's need again and reshares the cap.
    fn remeasure(&self) -> bool {
        let mut state = lock(&self.state);
        let now = Instant::now();
        for e in state.conns.values_mut() {
            let stats = e.conn.stats();
            let need = match self.direction {
                Direction::Send => send_need(stats.path.cwnd),
                Direction::Receive => {
                    let secs = now.duration_since(e.at).as_secs_f64().max(1e-3);
                    let rate = stats.udp_rx.bytes.saturating_sub(e.rx_bytes) as f64 / secs;
                    e.rx_bytes = stats.udp_rx.bytes;
                    receive_need(rate, e.conn.rtt(), e.need)
                }
            };
            e.at = now;
            e.need = need.clamp(self.floor, self.ceiling);
        }
        self.rebalance(&mut state);
        state.resizing = !state.conns.is_empty();
        state.resizing
    }

    /// Water-fills the cap over the needs and applies the windows that changed.
    fn rebalance(&self, state: &mut State) {
        let reserved: u64 = state.conns.values().map(|e| e.reserved).sum();
        let shares = water_fill(
            &state.conns.values().map(|e| e.need).collect::<Vec<_>>(),
            self.cap.saturating_sub(reserved),
        );
        let mut granted = reserved;
        for (e, share) in state.conns.values_mut().zip(shares) {
            let window = share.max(MIN_SHARE);
            if window != e.window {
                self.apply(&e.conn, window);
                e.window = window;
            }
            granted += window;
        }
        self.granted.store(granted, Ordering::Relaxed);
    }

    fn apply(&self, conn: &quinn::Connection, window: u64) {
        match self.direction {
            Direction::Send => conn.set_send_window(window),
            Direction::Receive => {
                conn.set_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX))
            }
        }
    }
}

/// The send window a path warrants: a few congestion windows (the default controller's is
/// about one bandwidth-delay product, quinn's bbr's about two), before the floor and ceiling.
/// The default controller's initial train ([`paced::UNPACED`], a window quinn does not pace,
/// with at most the initial window in flight) warrants only the floor.
pub fn send_need(cwnd: u64) -> u64 {
    if cwnd >= paced::UNPACED {
        return 0;
    }
    cwnd.saturating_mul(PATHS_WORTH)
}

/// The receive window a path warrants, from the rate data arrived at over the last interval
/// (bytes/s) and the RTT: a few bandwidth-delay products, before the floor and ceiling. While
/// the window itself limits the rate, each resize grows it by that factor, so a window never
/// holds its own path back for long. It halves at most per resize (`previous` is the last
/// need): one quiet interval (a stall, a loss episode) does not throw away a window the path
/// will want again a moment later.
pub fn receive_need(rate: f64, rtt: Duration, previous: u64) -> u64 {
    let bdp = rate * rtt.as_secs_f64();
    ((bdp * PATHS_WORTH as f64) as u64).max(previous / 2)
}

/// Keeps resizing until the budget is gone or has no connection left.
async fn resize(budget: Weak<BufferBudget>) {
    loop {
        tokio::time::sleep(RESIZE_EVERY).await;
        match budget.upgrade() {
            Some(b) if b.remeasure() => {}
            _ => return,
        }
    }
}

/// Shares of `total` for `needs`, in order: nobody gets more than it needs, and what the
/// modest leave is split evenly among the rest (max-min fairness).
pub fn water_fill(needs: &[u64], total: u64) -> Vec<u64> {
    let mut order: Vec<usize> = (0..needs.len()).collect();
    order.sort_by_key(|&i| needs[i]);
    let mut shares = vec![0; needs.len()];
    let mut left = total;
    for (k, &i) in order.iter().enumerate() {
        let even = left / (needs.len() - k) as u64;
        shares[i] = needs[i].min(even);
        left -= shares[i];
    }
    shares
}

/// A transfer counted against a [`BufferBudget`]; dropping it returns its connection to the
/// idle window once no other transfer uses it.
#[derive(Debug)]
pub struct BudgetLease {
    budget: Arc<BufferBudget>,
    key: usize,
    reserve: u64,
}

impl Drop for BudgetLease {
    fn drop(&mut self) {
        self.budget.release(self.key, self.reserve);
    }
}

/// Resident memory and its peak (`VmRSS`, `VmHWM`), bytes, of this process (`None`) or of
/// process `pid`; `None` where `/proc` does not tell.
pub fn process_rss(pid: Option<u32>) -> Option<(u64, u64)> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_fill_gives_the_modest_their_need_and_splits_the_rest() {
        assert_eq!(water_fill(&[10, 100, 100], 120), vec![10, 55, 55]);
        assert_eq!(water_fill(&[100, 10, 100], 120), vec![55, 10, 55]);
        // Enough for everyone: each gets its need, nothing more.
        assert_eq!(water_fill(&[10, 20], 1000), vec![10, 20]);
        // Not enough for anyone's need: even shares.
        assert_eq!(water_fill(&[50, 60, 70], 90), vec![30, 30, 30]);
        assert!(water_fill(&[], 90).is_empty());
    }

    #[test]
    fn shares_never_sum_past_the_total() {
        for n in 1..40u64 {
            let needs: Vec<u64> = (0..n).map(|i| (i * 7919) % 1000 + 1).collect();
            for total in [0, 1, 99, 1000, 12_345, 1 << 30] {
                let shares = water_fill(&needs, total);
                assert!(shares.iter().sum::<u64>() <= total);
                for (s, need) in shares.iter().zip(&needs) {
                    assert!(s <= need);
                }
            }
        }
    }

    #[test]
    fn needs_follow_the_path() {
        // bbr's cwnd on 200 Mbit/s x 150 ms is ~7.5 MB: four of them.
        assert_eq!(send_need(7_500_000), 30_000_000);
        assert_eq!(send_need(paced::UNPACED - 1), 4 * (paced::UNPACED - 1));
        // The paced controller's unpaced initial train.
        assert_eq!(send_need(paced::UNPACED), 0);
        // 25 MB/s over 150 ms: a BDP of 3.75 MB, four of them.
        let need = receive_need(25e6, Duration::from_millis(150), 0);
        assert!((14_900_000..=15_000_000).contains(&need), "{need}");
        // A window-limited path (8 MiB per 150 ms) is offered four times that next.
        let limited = receive_need((8 << 20) as f64 / 0.15, Duration::from_millis(150), 8 << 20);
        assert!(limited >= 4 * (8 << 20) - 4, "{limited}");
        // A quiet interval halves the need, no more.
        assert_eq!(
            receive_need(0.0, Duration::from_millis(150), 40 << 20),
            20 << 20
        );
    }

    #[test]
    fn process_rss_reads_proc() {
        let (rss, peak) = process_rss(None).expect("/proc/self/status");
        let (_, of_pid) = process_rss(Some(std::process::id())).expect("/proc/<pid>/status");
        assert!(of_pid > 0);
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
    }
}
