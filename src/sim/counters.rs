//! Request counters: the API cost of whatever talked to the simulator
//! (requests per operationId, answers per status, injected faults).

use std::collections::BTreeMap;
use std::sync::Mutex;

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
}

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

#[derive(Debug, Default)]
pub struct CounterSet(Mutex<Counters>);

impl CounterSet {
    pub fn update(&self, change: impl FnOnce(&mut Counters)) {
        if let Ok(mut counters) = self.0.lock() {
            change(&mut counters);
        }
    }

    pub fn request(&self, method: &str, operation: &str) {
        self.update(|c| {
            c.requests_total += 1;
            *c.by_operation.entry(operation.to_string()).or_default() += 1;
            *c.by_method.entry(method.to_string()).or_default() += 1;
        });
    }

    pub fn answered(&self, status: u16) {
        self.update(|c| *c.by_status.entry(status).or_default() += 1);
    }

    pub fn snapshot(&self) -> Counters {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        self.update(|c| *c = Counters::default());
    }
}
