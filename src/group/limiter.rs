//! Backs off scale-up after repeated provisioning failures, so a broken
//! template or an unreachable network does not make the plugin create VMs
//! over and over (the seed plugin's worst failure mode).

use std::time::{Duration, Instant};

/// Capped exponential backoff keyed on consecutive failures.
#[derive(Debug, Clone)]
pub struct FailureLimiter {
    consecutive: u32,
    blocked_until: Option<Instant>,
    last_reason: Option<String>,
    base: Duration,
    cap: Duration,
}

impl FailureLimiter {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { consecutive: 0, blocked_until: None, last_reason: None, base, cap }
    }

    /// A provisioning attempt failed for `reason`.
    pub fn failure(&mut self, reason: &str, now: Instant) -> Duration {
        self.consecutive = self.consecutive.saturating_add(1);
        let factor = 2u32.saturating_pow(self.consecutive.saturating_sub(1).min(16));
        let delay = self.base.saturating_mul(factor).min(self.cap);
        self.blocked_until = Some(now + delay);
        self.last_reason = Some(reason.to_string());
        delay
    }

    /// An instance became ready: the problem is gone.
    pub fn success(&mut self) {
        self.consecutive = 0;
        self.blocked_until = None;
        self.last_reason = None;
    }

    /// `Some(explanation)` while scale-up should wait.
    pub fn blocked(&self, now: Instant) -> Option<String> {
        let until = self.blocked_until?;
        (now < until).then(|| {
            format!(
                "not creating instances for another {} s after {} failed attempt{} in a row; last failure: {}",
                (until - now).as_secs().max(1),
                self.consecutive,
                if self.consecutive == 1 { "" } else { "s" },
                self.last_reason.as_deref().unwrap_or("unknown")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_up_to_the_cap_and_resets() {
        let mut limiter = FailureLimiter::new(Duration::from_secs(10), Duration::from_secs(60));
        let now = Instant::now();
        assert!(limiter.blocked(now).is_none());
        assert_eq!(limiter.failure("template 9000 has no guest agent enabled", now), Duration::from_secs(10));
        assert_eq!(limiter.failure("x", now), Duration::from_secs(20));
        assert_eq!(limiter.failure("x", now), Duration::from_secs(40));
        assert_eq!(limiter.failure("agent never answered", now), Duration::from_secs(60));
        let message = limiter.blocked(now).unwrap();
        assert!(message.contains("4 failed attempts in a row; last failure: agent never answered"), "{message}");
        assert!(limiter.blocked(now + Duration::from_secs(61)).is_none());
        limiter.success();
        assert!(limiter.blocked(now).is_none());
        assert_eq!(limiter.failure("x", now), Duration::from_secs(10));
    }
}
