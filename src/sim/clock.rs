//! The simulator's one clock. Everything timed (task durations, boot and
//! agent delays, `/cluster/resources` staleness, lock timeouts, ticket
//! lifetimes, the 401 delay, injected latency) is expressed in simulated
//! seconds and passes through here, so a time-scale factor speeds a whole
//! scenario up without changing its story.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Simulated time: seconds since the Unix epoch, as a float.
pub type SimTime = f64;

#[derive(Debug, Clone)]
pub struct Clock {
    origin: Instant,
    epoch_origin: f64,
    scale: f64,
}

impl Clock {
    /// `scale` simulated seconds pass per real second. `epoch_origin` fixes
    /// the simulated start time (for reproducible UPIDs); `None` starts at
    /// the real time.
    pub fn new(scale: f64, epoch_origin: Option<u64>) -> Self {
        let real_now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
        Self { origin: Instant::now(), epoch_origin: epoch_origin.map_or(real_now, |e| e as f64), scale }
    }

    pub fn now(&self) -> SimTime {
        self.epoch_origin + self.origin.elapsed().as_secs_f64() * self.scale
    }

    /// The real duration of `sim_secs` simulated seconds.
    pub fn real(&self, sim_secs: f64) -> Duration {
        if !sim_secs.is_finite() || sim_secs <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((sim_secs / self.scale).min(86_400.0 * 365.0))
    }

    pub async fn sleep(&self, sim_secs: f64) {
        let real = self.real(sim_secs);
        if !real.is_zero() {
            tokio::time::sleep(real).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_compresses_durations() {
        let clock = Clock::new(10.0, Some(1_700_000_000));
        assert_eq!(clock.real(5.0), Duration::from_millis(500));
        assert_eq!(clock.real(-1.0), Duration::ZERO);
        assert!(clock.now() >= 1_700_000_000.0 && clock.now() - 1_700_000_000.0 < 5.0);
        assert_eq!(Clock::new(0.0, None).real(2.0), Duration::from_secs(2), "a zero scale falls back to real time");
    }
}
