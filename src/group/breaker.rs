//! The scale-up breaker: holds scale-up back when provisioning fails
//! systematically (a template that never boots, a storage that is full), so
//! the plugin does not create and delete VMs over and over (the seed
//! plugin's worst failure mode), while sporadic failures among successes
//! never stop scale-up.
//!
//! - Closed: every Increase is served. It opens when the last
//!   `threshold` finished attempts all failed with the same cause.
//! - Open: Increase is held until the wait is over; then one instance is
//!   created as a probe, and others wait for its verdict.
//! - A success (of the probe or of any other instance) closes it; a failed
//!   probe opens it again with twice the wait, up to the cap.
//!
//! Only failures that say something about the template or the cluster feed
//! it: outages, 503s, dropped connections, VMID collisions and removals
//! Runner asked for are left out by the caller.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::failure::Cause;

/// What Increase may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// How many of the requested instances may be created.
    pub allowed: u32,
    /// The one allowed instance is the breaker's probe.
    pub probe: bool,
    /// Why fewer than requested are allowed, for Runner's log.
    pub held: Option<String>,
}

#[derive(Debug, Clone)]
enum State {
    Closed,
    Open { until: Instant, wait: Duration, since: Instant },
    Probing { wait: Duration, since: Instant },
}

/// The last failure that counted, for messages.
#[derive(Debug, Clone)]
struct LastFailure {
    cause: Cause,
    /// The failure as a person reads it, for the hold's message.
    reason: String,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    /// Causes of the most recent finished attempts, newest last; `None` is a success.
    recent: VecDeque<Option<Cause>>,
    threshold: usize,
    base: Duration,
    cap: Duration,
    state: State,
    last: Option<LastFailure>,
    /// Failures that counted since the breaker last closed.
    failures: u32,
}

impl Breaker {
    /// Opens after `threshold` failures of one cause in a row; waits `base`
    /// before the first probe, doubling up to `cap`.
    pub fn new(threshold: u32, base: Duration, cap: Duration) -> Self {
        Self {
            recent: VecDeque::new(),
            threshold: threshold.max(1) as usize,
            base,
            cap: cap.max(base),
            state: State::Closed,
            last: None,
            failures: 0,
        }
    }

    /// An instance became ready. Returns true when this closed the breaker.
    pub fn success(&mut self) -> bool {
        let was_open = !matches!(self.state, State::Closed);
        self.recent.clear();
        self.state = State::Closed;
        self.last = None;
        self.failures = 0;
        was_open
    }

    /// A provisioning attempt failed for `cause` (a short class such as
    /// `boot: no address`), described by `reason`. Returns the wait when
    /// this opened the breaker (or kept it open after a failed probe).
    pub fn failure(&mut self, cause: Cause, reason: &str, now: Instant) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        self.last = Some(LastFailure { cause, reason: reason.to_string() });
        self.recent.push_back(Some(cause));
        while self.recent.len() > self.threshold {
            self.recent.pop_front();
        }
        match self.state {
            State::Closed => {
                let systematic =
                    self.recent.len() == self.threshold && self.recent.iter().all(|recent| *recent == Some(cause));
                systematic.then(|| {
                    self.state = State::Open { until: now + self.base, wait: self.base, since: now };
                    self.base
                })
            }
            State::Probing { wait, since } => {
                let wait = wait.saturating_mul(2).min(self.cap);
                self.state = State::Open { until: now + wait, wait, since };
                Some(wait)
            }
            // An instance started before the breaker opened failed too.
            State::Open { .. } => None,
        }
    }

    /// The probe ended without a verdict (an outage, or Runner removed it):
    /// the next Increase may send another probe at once.
    pub fn probe_undecided(&mut self, now: Instant) {
        if let State::Probing { wait, since } = self.state {
            self.state = State::Open { until: now, wait, since };
        }
    }

    /// How many of `wanted` instances Increase may create now.
    pub fn admit(&mut self, wanted: u32, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission { allowed: wanted, probe: false, held: None },
            _ if wanted == 0 => Admission { allowed: 0, probe: false, held: None },
            State::Open { until, wait, since } if now >= until => {
                self.state = State::Probing { wait, since };
                let held = (wanted > 1).then(|| {
                    format!(
                        "could not create {} of {wanted} instances: scale-up is held after {}; creating one instance to test whether the cause is gone",
                        wanted - 1,
                        self.describe_cause()
                    )
                });
                Admission { allowed: 1, probe: true, held }
            }
            State::Open { until, .. } => Admission {
                allowed: 0,
                probe: false,
                held: Some(format!(
                    "could not create {wanted} instance{}: scale-up is held for another {} s after {}; the next attempt tests with one instance",
                    if wanted == 1 { "" } else { "s" },
                    (until - now).as_secs().max(1),
                    self.describe_cause()
                )),
            },
            State::Probing { .. } => Admission {
                allowed: 0,
                probe: false,
                held: Some(format!(
                    "could not create {wanted} instance{}: scale-up is held after {}, until the instance created to test the cause is ready",
                    if wanted == 1 { "" } else { "s" },
                    self.describe_cause()
                )),
            },
        }
    }

    /// Why scale-up is held and until when, or `None` when it is not.
    pub fn status(&self, now: Instant) -> Option<String> {
        match self.state {
            State::Closed => None,
            State::Open { until, .. } if until > now => Some(format!(
                "scale-up held for another {} s after {}",
                (until - now).as_secs().max(1),
                self.describe_cause()
            )),
            State::Open { .. } => Some(format!(
                "scale-up held after {}; the next Increase tests with one instance",
                self.describe_cause()
            )),
            State::Probing { .. } => Some(format!(
                "scale-up held after {}; one instance is testing whether the cause is gone",
                self.describe_cause()
            )),
        }
    }

    /// The breaker's state for metrics and `/status`.
    pub fn snapshot(&self, now: Instant) -> crate::telemetry::BreakerSnapshot {
        let (held, probing, next_attempt) = match self.state {
            State::Closed => (false, false, None),
            State::Open { until, .. } => {
                (true, false, Some(crate::telemetry::snapshot::unix_seconds(until.max(now), now)))
            }
            State::Probing { .. } => (true, true, None),
        };
        crate::telemetry::BreakerSnapshot {
            held,
            probing,
            next_attempt_unix: next_attempt,
            failures: self.failures,
            cause: self.last.as_ref().map(|last| last.cause.to_string()),
            message: self.status(now),
        }
    }

    /// Whether scale-up is held (open or probing).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed)
    }

    fn describe_cause(&self) -> String {
        match &self.last {
            Some(last) => format!(
                "{} failed attempt{} ({}); last failure: {}",
                self.failures,
                if self.failures == 1 { "" } else { "s" },
                last.cause,
                last.reason
            ),
            None => "repeated failures".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::failure::Step;

    const CLONE_FAILED: Cause = Cause { step: Step::Clone, class: "task failed" };
    const START_FAILED: Cause = Cause { step: Step::Start, class: "task failed" };
    const NO_ADDRESS: Cause = Cause { step: Step::Boot, class: "no address" };

    const S: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(3, 10 * S, 60 * S)
    }

    #[test]
    fn sporadic_failures_among_successes_never_hold_scale_up() {
        let mut breaker = breaker();
        let now = Instant::now();
        for round in 0..20 {
            if round % 7 == 3 {
                assert_eq!(breaker.failure(CLONE_FAILED, "qemu-img failed", now), None);
            } else {
                breaker.success();
            }
            assert_eq!(breaker.admit(4, now), Admission { allowed: 4, probe: false, held: None }, "round {round}");
        }
    }

    #[test]
    fn different_causes_in_a_row_do_not_open_it() {
        let mut breaker = breaker();
        let now = Instant::now();
        assert_eq!(breaker.failure(CLONE_FAILED, "x", now), None);
        assert_eq!(breaker.failure(START_FAILED, "x", now), None);
        assert_eq!(breaker.failure(NO_ADDRESS, "x", now), None);
        assert_eq!(breaker.failure(NO_ADDRESS, "x", now), None);
        assert!(!breaker.is_open());
        assert_eq!(breaker.failure(NO_ADDRESS, "x", now), Some(10 * S), "three of one cause in a row");
        assert!(breaker.is_open());
    }

    #[test]
    fn systematic_failure_opens_probes_with_one_and_closes_on_success() {
        let mut breaker = breaker();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(breaker.failure(NO_ADDRESS, "agent never answered", t0), None);
        }
        assert_eq!(breaker.failure(NO_ADDRESS, "agent never answered", t0), Some(10 * S));
        let held = breaker.admit(5, t0 + S);
        assert_eq!(held.allowed, 0);
        let message = held.held.unwrap();
        assert!(message.contains("held for another 9 s after 3 failed attempts (boot: no address)"), "{message}");
        assert!(message.contains("last failure: agent never answered"), "{message}");

        // The wait is over: one probe, the rest wait for it.
        let probe = breaker.admit(5, t0 + 10 * S);
        assert_eq!((probe.allowed, probe.probe), (1, true));
        assert!(probe.held.unwrap().starts_with("could not create 4 of 5 instances"));
        assert_eq!(breaker.admit(2, t0 + 11 * S).allowed, 0, "one probe at a time");

        // A failed probe doubles the wait.
        assert_eq!(breaker.failure(NO_ADDRESS, "agent never answered", t0 + 20 * S), Some(20 * S));
        assert_eq!(breaker.admit(1, t0 + 39 * S).allowed, 0);
        assert_eq!(breaker.admit(1, t0 + 40 * S).allowed, 1);
        assert_eq!(breaker.failure(NO_ADDRESS, "x", t0 + 40 * S), Some(40 * S));
        assert_eq!(breaker.admit(1, t0 + 80 * S).allowed, 1);
        assert_eq!(breaker.failure(NO_ADDRESS, "x", t0 + 80 * S), Some(60 * S), "capped");

        // The template is fixed: the next probe succeeds and closes it.
        assert_eq!(breaker.admit(3, t0 + 140 * S).allowed, 1);
        assert!(breaker.success());
        assert_eq!(breaker.admit(3, t0 + 141 * S), Admission { allowed: 3, probe: false, held: None });
        assert_eq!(breaker.status(t0 + 141 * S), None);
    }

    #[test]
    fn an_undecided_probe_lets_the_next_increase_probe_again() {
        let mut breaker = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            breaker.failure(START_FAILED, "x", now);
        }
        assert_eq!(breaker.admit(1, now + 10 * S).allowed, 1);
        breaker.probe_undecided(now + 11 * S);
        assert_eq!(breaker.admit(1, now + 11 * S).allowed, 1, "probe again at once");
        assert!(breaker.status(now + 11 * S).unwrap().contains("one instance is testing"));
    }
}
