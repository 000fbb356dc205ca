//! A circuit breaker per target: closed while it answers; open after `failures` failures in a
//! row, so requests skip it; half-open once `cooldown` has passed, letting one request through
//! as a probe, whose success closes it and whose failure opens it again. Pure: the caller
//! passes the time.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Failures in a row that open the breaker.
    pub failures: u32,
    /// How long it stays open before a probe is let through.
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings { failures: 3, cooldown: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Breaker {
    failures: u32,
    opened: Option<Instant>,
    /// When the probe now in flight was let through.
    probe: Option<Instant>,
    /// Times it opened.
    pub trips: u64,
}

impl Breaker {
    pub fn state(&self, now: Instant, s: &BreakerSettings) -> BreakerState {
        match self.opened {
            None => BreakerState::Closed,
            Some(at) if now.duration_since(at) < s.cooldown => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to the target now. In half-open, one probe at a time (a
    /// probe that never reports back is replaced after another cooldown).
    pub fn allow(&mut self, now: Instant, s: &BreakerSettings) -> bool {
        match self.state(now, s) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if self.probe.is_some_and(|p| now.duration_since(p) < s.cooldown) {
                    return false;
                }
                self.probe = Some(now);
                true
            }
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.opened = None;
        self.probe = None;
    }

    pub fn failure(&mut self, now: Instant, s: &BreakerSettings) {
        self.failures = self.failures.saturating_add(1);
        let probing = self.opened.is_some();
        if probing || self.failures >= s.failures {
            if self.opened.is_none() || probing {
                self.trips += u64::from(self.opened.is_none());
            }
            self.opened = Some(now);
            self.probe = None;
        }
    }

    /// An active health check found the target down: open now.
    pub fn trip(&mut self, now: Instant) {
        if self.opened.is_none() {
            self.trips += 1;
        }
        self.opened = Some(now);
        self.probe = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_after_a_good_probe() {
        let s = BreakerSettings { failures: 3, cooldown: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.failure(t0, &s);
        b.failure(t0, &s);
        b.success();
        b.failure(t0, &s);
        b.failure(t0, &s);
        assert_eq!(b.state(t0, &s), BreakerState::Closed, "a success in between resets the count");
        b.failure(t0, &s);
        assert_eq!(b.state(t0, &s), BreakerState::Open);
        assert_eq!(b.trips, 1);
        assert!(!b.allow(t0 + Duration::from_secs(9), &s));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1, &s), BreakerState::HalfOpen);
        assert!(b.allow(t1, &s), "one probe");
        assert!(!b.allow(t1, &s), "only one");
        b.success();
        assert_eq!(b.state(t1, &s), BreakerState::Closed);
        assert!(b.allow(t1, &s));
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_whole_cooldown() {
        let s = BreakerSettings { failures: 1, cooldown: Duration::from_secs(5) };
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.failure(t0, &s);
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.allow(t1, &s));
        b.failure(t1, &s);
        assert_eq!(b.state(t1 + Duration::from_secs(4), &s), BreakerState::Open);
        assert_eq!(b.state(t1 + Duration::from_secs(5), &s), BreakerState::HalfOpen);
        assert_eq!(b.trips, 1, "still the same opening");
        // A probe that never reports is replaced after another cooldown.
        let t2 = t1 + Duration::from_secs(5);
        assert!(b.allow(t2, &s));
        assert!(!b.allow(t2 + Duration::from_secs(4), &s));
        assert!(b.allow(t2 + Duration::from_secs(5), &s));
        b.trip(t2);
        assert_eq!(b.state(t2, &s), BreakerState::Open);
    }
}
