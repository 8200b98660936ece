//! Fault injection per operation: error answers (500/503), added latency,
//! dropped connections, and failing worker tasks (clone, start, delete, …).
//!
//! A rule names an operationId (`post_nodes_node_qemu_vmid_clone`) or `*`.
//! Every request draws from one seeded random source, so a seeded run
//! injects the same faults into the same sequence of requests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRule {
    /// An operationId from `openapi/pve.json`, or `*` for every operation.
    pub operation: String,
    /// Fraction (0–1) of requests answered with `status` instead.
    pub error_rate: f64,
    pub status: u16,
    /// The error text (reason phrase); PVE-like defaults per status.
    pub message: Option<String>,
    /// Added before answering (simulated milliseconds).
    pub latency_ms: u64,
    /// Fraction of requests whose connection is closed without an answer,
    /// before PVE acted on them.
    pub drop_rate: f64,
    /// Fraction of requests PVE carries out but whose answer is lost (the
    /// connection closes after the work is done): the client cannot tell
    /// this from `drop_rate`.
    pub lost_answer_rate: f64,
    /// Fraction of the worker tasks this operation starts that fail.
    pub task_failure_rate: f64,
    /// The failed task's error text; a PVE-like default per task type.
    pub task_error: Option<String>,
    /// A failed clone leaves its disks behind (as after a node crash), so
    /// orphaned volumes exist for a later VM with the same VMID.
    pub leave_orphans: bool,
    /// The rule expires after applying this many times.
    pub remaining: Option<u32>,
}

impl Default for FaultRule {
    fn default() -> Self {
        Self {
            operation: "*".into(),
            error_rate: 0.0,
            status: 503,
            message: None,
            latency_ms: 0,
            drop_rate: 0.0,
            lost_answer_rate: 0.0,
            task_failure_rate: 0.0,
            task_error: None,
            leave_orphans: false,
            remaining: None,
        }
    }
}

impl FaultRule {
    pub fn for_operation(operation: impl Into<String>) -> Self {
        Self { operation: operation.into(), ..Self::default() }
    }

    fn matches(&self, operation: &str) -> bool {
        self.operation == "*" || self.operation == operation
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub latency_ms: u64,
    pub drop_connection: bool,
    /// Carry the request out, then close the connection without the answer.
    pub lose_answer: bool,
    pub error: Option<(u16, String)>,
    /// The worker task the request starts fails with this text.
    pub task_failure: Option<TaskFailure>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    pub message: Option<String>,
    pub leave_orphans: bool,
}

#[derive(Debug)]
pub struct Faults {
    rules: Vec<(u64, FaultRule)>,
    next_id: u64,
    random: StdRng,
}

impl Faults {
    pub fn new(rules: Vec<FaultRule>, seed: Option<u64>) -> Self {
        let random = match seed {
            Some(seed) => StdRng::seed_from_u64(seed ^ 0x6661_756c_7473),
            None => StdRng::from_os_rng(),
        };
        let mut faults = Self { rules: Vec::new(), next_id: 1, random };
        for rule in rules {
            faults.add(rule);
        }
        faults
    }

    pub fn add(&mut self, rule: FaultRule) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.rules.push((id, rule));
        id
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.rules.len();
        self.rules.retain(|(rule_id, _)| *rule_id != id);
        self.rules.len() != before
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn list(&self) -> Vec<(u64, FaultRule)> {
        self.rules.clone()
    }

    /// Draws the fate of one request to `operation`.
    pub fn decide(&mut self, operation: &str) -> Decision {
        let mut decision = Decision::default();
        if self.rules.is_empty() {
            return decision;
        }
        let mut rules = std::mem::take(&mut self.rules);
        for (_, rule) in rules.iter_mut().filter(|(_, rule)| rule.matches(operation)) {
            let mut applied = false;
            if rule.latency_ms > 0 {
                decision.latency_ms += rule.latency_ms;
                applied = true;
            }
            if !decision.drop_connection && self.draw(rule.drop_rate) {
                decision.drop_connection = true;
                applied = true;
            }
            if !decision.drop_connection && !decision.lose_answer && self.draw(rule.lost_answer_rate) {
                decision.lose_answer = true;
                applied = true;
            }
            if decision.error.is_none() && self.draw(rule.error_rate) {
                let message = rule.message.clone().unwrap_or_else(|| default_message(rule.status).to_string());
                decision.error = Some((rule.status, message));
                applied = true;
            }
            if decision.task_failure.is_none() && self.draw(rule.task_failure_rate) {
                decision.task_failure =
                    Some(TaskFailure { message: rule.task_error.clone(), leave_orphans: rule.leave_orphans });
                applied = true;
            }
            if applied && let Some(remaining) = rule.remaining.as_mut() {
                *remaining = remaining.saturating_sub(1);
            }
        }
        rules.retain(|(_, rule)| rule.remaining != Some(0));
        self.rules = rules;
        decision
    }

    /// True with probability `rate` (0 for anything that is not a number in 0–1).
    fn draw(&mut self, rate: f64) -> bool {
        rate.is_finite() && rate > 0.0 && self.random.random_bool(rate.min(1.0))
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        595 => "Connection refused",
        596 => "Connection timed out",
        _ => "injected fault",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_by_operation_and_expire() {
        let mut faults = Faults::new(vec![], Some(1));
        faults.add(FaultRule { error_rate: 1.0, remaining: Some(2), ..FaultRule::for_operation("get_version") });
        assert_eq!(faults.decide("get_nodes"), Decision::default());
        assert_eq!(faults.decide("get_version").error, Some((503, "Service Unavailable".into())));
        assert!(faults.decide("get_version").error.is_some());
        assert_eq!(faults.decide("get_version"), Decision::default(), "expired after two");
        assert!(faults.list().is_empty());
    }

    #[test]
    fn seeded_rates_repeat() {
        let draw = || {
            let mut faults = Faults::new(vec![FaultRule { error_rate: 0.5, ..FaultRule::default() }], Some(42));
            (0..64).map(|_| faults.decide("x").error.is_some()).collect::<Vec<_>>()
        };
        let first = draw();
        assert_eq!(first, draw());
        let hits = first.iter().filter(|hit| **hit).count();
        assert!((16..=48).contains(&hits), "{hits}");
    }
}
