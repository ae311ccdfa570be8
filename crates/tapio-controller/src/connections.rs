//! The table of open client connections: admission under a total and a per-peer bound,
//! and eviction of connections that hold a slot without a request in progress.
//!
//! A connection is *waiting* from accept until its first request's headers are complete,
//! and again between keep-alive requests; it is *busy* while a request is handled and its
//! response written. Waiting connections cost the server nothing to drop (no request has
//! been seen, no answer is owed), so when a bound is reached the oldest waiting one is
//! closed to make room (once it has waited [`WAITING_GRACE`], so a fresh connection gets
//! the time to send its request). That is what keeps slowloris clients (headers trickled),
//! connect-and-say-nothing clients and idle-connection floods from starving health probes
//! and agents: they can hold a slot only until someone needs it.
//!
//! When no connection is waiting, the one that has been receiving its request body the
//! longest is cut, provided it has taken more than [`SLOW_BODY_GRACE`]: an agent's body
//! (at most the body limit) arrives in milliseconds, so a body still arriving after that
//! while others wait for a slot is a slow-body attack or a broken client. Its request was
//! never acknowledged, so cutting it loses nothing; a real agent retries it. Requests
//! being handled or answered are never cut: once every slot is busy that way, new clients
//! wait in the listen backlog until one frees. A single peer can hold at most the per-peer
//! bound; a new connection from a peer at its bound with nothing to evict is closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a request body may take to arrive before its connection may be cut to make
/// room for another client.
pub const SLOW_BODY_GRACE: Duration = Duration::from_secs(1);

/// How long a new or idle connection is safe from eviction: long enough for a client
/// that just connected to send its request head, so a flood of reconnecting clients
/// cannot close a probe's fresh connection before it says anything.
pub const WAITING_GRACE: Duration = Duration::from_millis(100);

/// Marks "not receiving a request body".
const NO_BODY: u64 = u64::MAX;

/// Marks "eviction has not cut this connection's request body".
const NOT_CUT: u64 = u64::MAX - 1;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is busy; the caller waits for [`Connections::freed`].
    Full,
    /// The peer holds its bound and none of its connections is waiting.
    PeerFull,
}

/// What admission did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A slot was free.
    Free,
    /// A waiting connection was closed to make room.
    Evicted,
}

/// Request activity of one connection, updated by its service and read by eviction.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    busy: AtomicUsize,
    /// Milliseconds since the table's epoch when the connection last became waiting.
    waiting_since_ms: AtomicU64,
    /// Milliseconds since the epoch when the current request's body started to arrive;
    /// [`NO_BODY`] when no body is arriving.
    body_since_ms: AtomicU64,
    /// The `body_since_ms` of the request whose slow body eviction chose to cut
    /// ([`NOT_CUT`] if none): only that request may be cut, not a later one.
    cut_body_since_ms: AtomicU64,
}

impl Activity {
    /// Marks a request in progress until the returned guard is dropped (after the
    /// response is written).
    /// `body_pending`: the request has a body still to arrive.
    pub fn begin(self: &Arc<Self>, body_pending: bool) -> BusyGuard {
        let since = if body_pending { millis_since(self.epoch) } else { NO_BODY };
        self.body_since_ms.store(since, Ordering::Release);
        self.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard { activity: Arc::clone(self) }
    }

    /// The request body has arrived (or failed): the request is no longer cuttable.
    pub fn body_done(&self) {
        self.body_since_ms.store(NO_BODY, Ordering::Release);
    }

    /// True while a request is in progress.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// True when the connection may be closed now without losing an answer: no request
    /// is in progress, or eviction cut it while its body was still arriving.
    pub fn may_drop(&self) -> bool {
        let cut = self.cut_body_since_ms.load(Ordering::Acquire);
        !self.is_busy() || (cut != NOT_CUT && self.body_since_ms.load(Ordering::Acquire) == cut)
    }
}

/// Ends a request's busy period when dropped.
#[derive(Debug)]
pub struct BusyGuard {
    activity: Arc<Activity>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.activity.body_since_ms.store(NO_BODY, Ordering::Release);
        self.activity.waiting_since_ms.store(millis_since(self.activity.epoch), Ordering::Release);
        self.activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Entry {
    peer: IpAddr,
    activity: Arc<Activity>,
    close: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_peer: HashMap<IpAddr, usize>,
    /// Most connections open at once since the last [`Connections::take_peak`].
    peak: usize,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&entry.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&entry.peer);
            }
        }
        Some(entry)
    }

    /// The connection to close to make room, among those of `peer` if given: the one
    /// that has waited longest without a request (for more than [`WAITING_GRACE`]), else
    /// the one whose request body has been arriving longest (for more than
    /// [`SLOW_BODY_GRACE`]).
    /// Returns its id and, for a slow body, when that body started.
    fn victim(&self, peer: Option<IpAddr>, now_ms: u64) -> Option<(u64, Option<u64>)> {
        let older_than = |since: u64, grace: Duration| {
            since != NO_BODY && u128::from(now_ms.saturating_sub(since)) > grace.as_millis()
        };
        let candidates = || self.conns.iter().filter(move |(_, e)| peer.is_none_or(|p| e.peer == p));
        let waiting = candidates()
            .filter(|(_, e)| !e.activity.is_busy())
            .map(|(id, e)| (*id, e.activity.waiting_since_ms.load(Ordering::Acquire)))
            .filter(|&(_, since)| older_than(since, WAITING_GRACE))
            .min_by_key(|&(_, since)| since)
            .map(|(id, _)| (id, None));
        waiting.or_else(|| {
            candidates()
                .map(|(id, e)| (*id, e.activity.body_since_ms.load(Ordering::Acquire)))
                .filter(|&(_, since)| older_than(since, SLOW_BODY_GRACE))
                .min_by_key(|&(_, since)| since)
                .map(|(id, since)| (id, Some(since)))
        })
    }

    /// Removes `id` and tells its task to close it (at once if it may be dropped);
    /// `slow_body` is when the body being cut started, if one is.
    fn evict(&mut self, (id, slow_body): (u64, Option<u64>)) {
        if let Some(e) = self.remove(id) {
            if let Some(since) = slow_body {
                e.activity.cut_body_since_ms.store(since, Ordering::Release);
            }
            e.close.notify_one();
        }
    }
}

/// The connection table. Shared by the accept loop and every connection task.
#[derive(Debug)]
pub struct Connections {
    table: Mutex<Table>,
    max_total: usize,
    max_per_peer: usize,
    epoch: Instant,
    freed: Notify,
}

/// A connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Connections>,
    id: u64,
    /// The connection's request activity.
    pub activity: Arc<Activity>,
    /// Notified when the connection should close (evicted, or the server shuts down).
    pub close: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let removed = self.table.lock().remove(self.id).is_some();
        if removed {
            self.table.freed.notify_one();
        }
    }
}

impl Connections {
    /// A table admitting at most `max_total` connections, `max_per_peer` from one address.
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table::default()),
            max_total,
            max_per_peer,
            epoch: Instant::now(),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Plain counters behind the lock: a panic elsewhere leaves them usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`, closing the oldest waiting connection (of that
    /// peer at the per-peer bound, of anyone at the total bound) when needed.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(Slot, Admitted), Refusal> {
        self.admit_at(peer, millis_since(self.epoch))
    }

    /// [`Connections::admit`] at `now_ms` since the table's epoch (tests give their own clock).
    fn admit_at(self: &Arc<Self>, peer: IpAddr, now_ms: u64) -> Result<(Slot, Admitted), Refusal> {
        let peer = peer.to_canonical();
        let mut t = self.lock();
        let mut how = Admitted::Free;
        if t.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            let victim = t.victim(Some(peer), now_ms).ok_or(Refusal::PeerFull)?;
            t.evict(victim);
            how = Admitted::Evicted;
        }
        if t.conns.len() >= self.max_total {
            let victim = t.victim(None, now_ms).ok_or(Refusal::Full)?;
            t.evict(victim);
            how = Admitted::Evicted;
        }
        let id = t.next_id;
        t.next_id += 1;
        let activity = Arc::new(Activity {
            epoch: self.epoch,
            busy: AtomicUsize::new(0),
            waiting_since_ms: AtomicU64::new(now_ms),
            body_since_ms: AtomicU64::new(NO_BODY),
            cut_body_since_ms: AtomicU64::new(NOT_CUT),
        });
        let close = Arc::new(Notify::new());
        t.conns.insert(id, Entry { peer, activity: Arc::clone(&activity), close: Arc::clone(&close) });
        *t.per_peer.entry(peer).or_insert(0) += 1;
        t.peak = t.peak.max(t.conns.len());
        drop(t);
        Ok((Slot { table: Arc::clone(self), id, activity, close }, how))
    }

    /// Resolves when a slot may have been freed (a connection ended).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }

    /// The most connections open at once since the last call, then resets it to now's.
    pub fn take_peak(&self) -> usize {
        let mut t = self.lock();
        let peak = t.peak;
        t.peak = t.conns.len();
        peak
    }

    /// Asks every connection to close: waiting ones at once, busy ones (bodies still
    /// arriving included) after their response.
    pub fn close_all(&self) {
        for e in self.lock().conns.values() {
            e.close.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn total_bound_evicts_the_oldest_waiting_connection() {
        let grace = WAITING_GRACE.as_millis() as u64;
        let table = Connections::new(2, 10);
        let (a, _) = table.admit_at(ip(1), 1_000).unwrap();
        let (b, _) = table.admit_at(ip(2), 1_020).unwrap();
        // Fresh connections are safe for a moment.
        assert_eq!(table.admit_at(ip(3), 1_020 + grace / 2).unwrap_err(), Refusal::Full);
        // Both have waited past the grace; a is older, so a goes.
        let (c, how) = table.admit_at(ip(3), 1_020 + grace + 1).unwrap();
        assert_eq!(how, Admitted::Evicted);
        assert_eq!(table.open(), 2);
        // The evicted slot's drop does not free a second slot.
        drop(a);
        assert_eq!(table.open(), 2);
        // With both remaining connections busy, nothing can be evicted.
        let _gb = b.activity.begin(false);
        let _gc = c.activity.begin(false);
        assert_eq!(table.admit(ip(4)).unwrap_err(), Refusal::Full);
        drop(_gb);
        // b waits again from when its request ended.
        let since = b.activity.waiting_since_ms.load(Ordering::Acquire);
        assert_eq!(table.admit_at(ip(4), since + grace / 2).unwrap_err(), Refusal::Full, "b waits, but only just");
        assert_eq!(
            table.admit_at(ip(4), since + grace + 1).unwrap().1,
            Admitted::Evicted,
            "b has waited, so it can go"
        );
    }

    #[test]
    fn per_peer_bound_takes_only_from_that_peer() {
        let table = Connections::new(10, 2);
        let (x1, _) = table.admit(ip(9)).unwrap();
        let (x2, _) = table.admit(ip(9)).unwrap();
        let (other, _) = table.admit(ip(1)).unwrap();
        let _g1 = x1.activity.begin(false);
        let _g2 = x2.activity.begin(false);
        assert_eq!(table.admit(ip(9)).unwrap_err(), Refusal::PeerFull);
        // Another peer is unaffected, and its waiting connection was not taken.
        let (_second, how) = table.admit(ip(1)).unwrap();
        assert_eq!(how, Admitted::Free);
        assert_eq!(table.open(), 4);
        drop(other);
        assert_eq!(table.open(), 3);
        // IPv4-mapped IPv6 is the same peer.
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped());
        assert_eq!(table.admit(mapped).unwrap_err(), Refusal::PeerFull);
    }

    #[test]
    fn a_slow_body_is_cut_only_after_the_grace_and_only_when_nothing_waits() {
        let table = Connections::new(2, 10);
        let (a, _) = table.admit(ip(1)).unwrap();
        let (b, _) = table.admit(ip(2)).unwrap();
        let ga = a.activity.begin(true); // body arriving
        let gb = b.activity.begin(false); // being handled
        let body_since = a.activity.body_since_ms.load(Ordering::Acquire);
        let grace = SLOW_BODY_GRACE.as_millis() as u64;
        assert_eq!(
            table.admit_at(ip(3), body_since + grace / 2).unwrap_err(),
            Refusal::Full,
            "within the grace nothing is cut"
        );
        let (_c, how) = table.admit_at(ip(3), body_since + grace + 1).unwrap();
        assert_eq!(how, Admitted::Evicted);
        assert!(a.activity.may_drop(), "the slow body was cut");
        assert!(!b.activity.may_drop(), "a request being handled is never cut");
        // Had that body arrived and a next request begun before the connection's task
        // acted on the cut, the next request would not be cut.
        drop(ga);
        // (In a later millisecond, as a real next request is: the cut one began a grace ago.)
        std::thread::sleep(std::time::Duration::from_millis(2));
        let _next = a.activity.begin(true);
        assert!(!a.activity.may_drop());
        // Once its body has arrived, a request is no longer cuttable.
        let (d, _) = (b, ());
        drop(gb);
        let _gd = d.activity.begin(true);
        d.activity.body_done();
        assert!(!d.activity.may_drop());
    }

    #[test]
    fn close_all_and_peak() {
        let table = Connections::new(4, 4);
        let (a, _) = table.admit(ip(1)).unwrap();
        let (b, _) = table.admit(ip(1)).unwrap();
        assert_eq!(table.take_peak(), 2);
        drop(b);
        assert_eq!(table.take_peak(), 2, "peak since the last call");
        assert_eq!(table.take_peak(), 1);
        table.close_all();
        // The notification is stored for the connection's task.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), a.close.notified()).await.unwrap()
        });
    }
}
