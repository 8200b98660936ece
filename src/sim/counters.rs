//! Request counters: the API cost of whatever talked to the simulator
//! (requests per operationId, answers per status, injected faults).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub requests_total: u64,
    /// operationId → requests (`unknown` for paths no operation matches).
    pub by_operation: BTreeMap<String, u64>,
    /// HTTP method → requests, routed or not: tells a reader from a writer.
    #[serde(default)]
    pub by_method: BTreeMap<String, u64>,
    /// HTTP status → answers.
    pub by_status: BTreeMap<u16, u64>,
    /// operationId → HTTP status → answers the simulator gave as PVE would
    /// (injected faults and dropped connections are not among them): tells a
    /// request PVE refuses from a fault.
    #[serde(default)]
    pub answers_by_operation: BTreeMap<String, BTreeMap<u16, u64>>,
    /// operationId → `"<status> <message>"` → answers, for the answers of
    /// 400 and more that were not injected: why a request was refused.
    /// Numbers of three digits and more (VM ids, ports) read `N`, so that
    /// one reason is counted once.
    /// At most `MAX_REFUSAL_REASONS` reasons per operation; the rest are
    /// counted under `OTHER_REFUSALS`.
    #[serde(default)]
    pub refusals: BTreeMap<String, BTreeMap<String, u64>>,
    pub injected_errors: u64,
    pub dropped_connections: u64,
    /// Requests carried out whose answer was then lost (a closed connection).
    #[serde(default)]
    pub lost_answers: u64,
    /// Connections refused while the API was made unreachable.
    pub refused_connections: u64,
    /// Worker tasks started, per task type (`qmclone`, `qmstart`, …).
    pub tasks_started: BTreeMap<String, u64>,
    pub tasks_failed: u64,
    /// `/cluster/resources` answers serialised afresh, and answers served
    /// from kept bytes (the cluster had not changed since).
    #[serde(default)]
    pub resources_answers_built: u64,
    #[serde(default)]
    pub resources_answers_reused: u64,
    /// Guest items of those answers written afresh (the others were kept:
    /// their inputs had not changed).
    #[serde(default)]
    pub resources_items_serialised: u64,
    /// Time spent in the `/cluster/resources` handler building or reusing
    /// answers (not sending them), in nanoseconds.
    #[serde(default)]
    pub resources_server_nanos: u64,
    /// Connections accepted (refused ones aside), and the most open at one
    /// time: pveproxy keeps a process's worth of state per connection, so
    /// a client that opens hundreds at once costs the node (and itself).
    #[serde(default)]
    pub connections_accepted: u64,
    #[serde(default)]
    pub connections_open_peak: u64,
    /// The most API requests (`/_sim` ones aside) being answered at one time.
    #[serde(default)]
    pub requests_in_flight_peak: u64,
    /// The simulator's own lag, which a real PVE (separate worker processes)
    /// does not have. The longest the cluster state was held locked at once,
    /// in real microseconds: every request and task waits meanwhile.
    #[serde(default)]
    pub cluster_held_max_micros: u64,
    /// Task waits (clone copying, boot, …) that ended more than a simulated
    /// second (`LATE_WAKE_SECS`) after they were due, and the
    /// worst one's delay in simulated milliseconds. At a time scale of 20,
    /// one real second of a busy simulator is 20 simulated seconds in which
    /// no task moves and lock timeouts run out.
    #[serde(default)]
    pub task_waits_late: u64,
    #[serde(default)]
    pub task_wait_overrun_max_millis: u64,
}

/// A task wait ending later than this past its due time counts as late.
pub const LATE_WAKE_SECS: f64 = 1.0;

impl Counters {
    /// Requests to one operation.
    pub fn operation(&self, operation_id: &str) -> u64 {
        self.by_operation.get(operation_id).copied().unwrap_or(0)
    }

    /// Requests with a method other than GET (writes, and logins).
    pub fn non_get_requests(&self) -> u64 {
        self.by_method.iter().filter(|(method, _)| method.as_str() != "GET").map(|(_, count)| count).sum()
    }
}

/// How many distinct refusal reasons are kept per operation.
pub const MAX_REFUSAL_REASONS: usize = 16;
/// The key the reasons beyond [`MAX_REFUSAL_REASONS`] are counted under.
pub const OTHER_REFUSALS: &str = "(other reasons)";
/// Reasons are cut to this many characters.
const MAX_REASON_CHARS: usize = 200;

/// `reason` with every run of three digits and more replaced by `N`.
fn without_ids(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut digits = String::new();
    for c in reason.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 3 {
            out.push('N');
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Default)]
pub struct CounterSet {
    counters: Mutex<Counters>,
    /// What is under way now; the peaks live in `counters`, so that a reset
    /// starts them again from the present, not from zero.
    connections_open: AtomicU64,
    requests_in_flight: AtomicU64,
    /// Kept outside `counters`: taken on every release of the cluster lock.
    cluster_held_max_nanos: AtomicU64,
}

/// What a [`Underway`] counts while it lives.
#[derive(Debug, Clone, Copy)]
enum Gauge {
    Connection,
    Request,
}

/// A connection or request counted as under way until this is dropped.
#[derive(Debug)]
#[must_use = "the connection or request counts as under way only while this lives"]
pub struct Underway<'a> {
    set: &'a CounterSet,
    gauge: Gauge,
}

impl Drop for Underway<'_> {
    fn drop(&mut self) {
        self.set.gauge(self.gauge).fetch_sub(1, Ordering::Relaxed);
    }
}

impl CounterSet {
    pub fn update(&self, change: impl FnOnce(&mut Counters)) {
        if let Ok(mut counters) = self.counters.lock() {
            change(&mut counters);
        }
    }

    fn gauge(&self, gauge: Gauge) -> &AtomicU64 {
        match gauge {
            Gauge::Connection => &self.connections_open,
            Gauge::Request => &self.requests_in_flight,
        }
    }

    fn start(&self, gauge: Gauge) -> Underway<'_> {
        let now = self.gauge(gauge).fetch_add(1, Ordering::Relaxed) + 1;
        self.update(|c| match gauge {
            Gauge::Connection => {
                c.connections_accepted += 1;
                c.connections_open_peak = c.connections_open_peak.max(now);
            }
            Gauge::Request => c.requests_in_flight_peak = c.requests_in_flight_peak.max(now),
        });
        Underway { set: self, gauge }
    }

    /// A connection accepted; it counts as open while the result lives.
    pub fn connection_opened(&self) -> Underway<'_> {
        self.start(Gauge::Connection)
    }

    /// An API request begun; it counts as in flight while the result lives.
    pub fn request_begun(&self) -> Underway<'_> {
        self.start(Gauge::Request)
    }

    pub fn request(&self, method: &str, operation: &str) {
        self.update(|c| {
            c.requests_total += 1;
            *c.by_operation.entry(operation.to_string()).or_default() += 1;
            *c.by_method.entry(method.to_string()).or_default() += 1;
        });
    }

    /// An answer that is not the simulator's own (an injected fault).
    pub fn answered(&self, status: u16) {
        self.update(|c| *c.by_status.entry(status).or_default() += 1);
    }

    /// An answer the simulator gave as PVE would; `reason` is the error's
    /// message (and the parameters' problems) when it refused.
    pub fn answered_as_pve(&self, operation: &str, status: u16, reason: Option<&str>) {
        self.update(|c| {
            *c.by_status.entry(status).or_default() += 1;
            *c.answers_by_operation.entry(operation.to_string()).or_default().entry(status).or_default() += 1;
            if let Some(reason) = reason.filter(|_| status >= 400) {
                let reasons = c.refusals.entry(operation.to_string()).or_default();
                let mut key = format!("{status} {}", without_ids(reason));
                if let Some((cut, _)) = key.char_indices().nth(MAX_REASON_CHARS) {
                    key.truncate(cut);
                    key.push('…');
                }
                if !reasons.contains_key(&key) && reasons.len() >= MAX_REFUSAL_REASONS {
                    key = OTHER_REFUSALS.to_string();
                }
                *reasons.entry(key).or_default() += 1;
            }
        });
    }

    pub fn snapshot(&self) -> Counters {
        let mut snapshot = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        snapshot.cluster_held_max_micros = self.cluster_held_max_nanos.load(Ordering::Relaxed) / 1_000;
        snapshot
    }

    /// The cluster lock was held for `held`.
    pub fn cluster_held(&self, held: Duration) {
        let nanos = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        self.cluster_held_max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// A task wait ended `overrun` simulated seconds after it was due.
    pub fn task_woke(&self, overrun: f64) {
        if overrun > LATE_WAKE_SECS {
            let millis = (overrun * 1000.0) as u64;
            self.update(|c| {
                c.task_waits_late += 1;
                c.task_wait_overrun_max_millis = c.task_wait_overrun_max_millis.max(millis);
            });
        }
    }

    pub fn reset(&self) {
        let open = self.connections_open.load(Ordering::Relaxed);
        let in_flight = self.requests_in_flight.load(Ordering::Relaxed);
        self.update(|c| {
            *c = Counters { connections_open_peak: open, requests_in_flight_peak: in_flight, ..Counters::default() }
        });
        self.cluster_held_max_nanos.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_operation_and_reason_without_ids() {
        let counters = CounterSet::default();
        counters.answered_as_pve(
            "get_cluster_nextid",
            400,
            Some("Parameter verification failed. (vmid: VM 114 already exists)"),
        );
        counters.answered_as_pve(
            "get_cluster_nextid",
            400,
            Some("Parameter verification failed. (vmid: VM 2001 already exists)"),
        );
        counters.answered_as_pve("get_cluster_nextid", 200, None);
        counters.answered(503);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.answers_by_operation["get_cluster_nextid"], BTreeMap::from([(200, 1), (400, 2)]));
        assert_eq!(
            snapshot.refusals["get_cluster_nextid"],
            BTreeMap::from([("400 Parameter verification failed. (vmid: VM N already exists)".to_string(), 2)])
        );
        assert_eq!(snapshot.by_status, BTreeMap::from([(200, 1), (400, 2), (503, 1)]));
    }

    #[test]
    fn peaks_count_what_was_under_way_at_once_and_a_reset_starts_from_now() {
        let counters = CounterSet::default();
        let first = counters.connection_opened();
        let requests: Vec<_> = (0..3).map(|_| counters.request_begun()).collect();
        drop(requests);
        let _again = counters.request_begun();
        let snapshot = counters.snapshot();
        assert_eq!(
            (snapshot.connections_accepted, snapshot.connections_open_peak, snapshot.requests_in_flight_peak),
            (1, 1, 3)
        );
        counters.reset();
        drop(first);
        let snapshot = counters.snapshot();
        assert_eq!(
            (snapshot.connections_accepted, snapshot.connections_open_peak, snapshot.requests_in_flight_peak),
            (0, 1, 1),
            "the peaks start from what was under way at the reset"
        );
    }

    #[test]
    fn refusal_reasons_are_bounded_per_operation() {
        let counters = CounterSet::default();
        for i in 0..(MAX_REFUSAL_REASONS + 5) {
            counters.answered_as_pve("unknown", 501, Some(&format!("reason {}", "x".repeat(i))));
        }
        let reasons = &counters.snapshot().refusals["unknown"];
        assert_eq!(reasons.len(), MAX_REFUSAL_REASONS + 1);
        assert_eq!(reasons[OTHER_REFUSALS], 5);
    }
}
