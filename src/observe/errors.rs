//! Observability, error log: a per-shard rate limit on the log lines that clients and
//! backends can cause (bad requests, failed connects), so a flood of bad input cannot flood
//! the log. What is held back is counted (`edgeshard_log_suppressed_total`) and summarised in
//! one line per second.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::stats::{bump, Stats};

/// A fixed one-second window of at most `rate` lines, per shard (no sharing, no atomics).
#[derive(Debug)]
pub struct ErrorLimiter {
    rate: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
    /// Held back since the last summary.
    held: Cell<u64>,
}

impl ErrorLimiter {
    pub fn new(rate: u32) -> ErrorLimiter {
        ErrorLimiter {
            rate,
            window: Cell::new(None),
            used: Cell::new(0),
            held: Cell::new(0),
        }
    }

    /// Whether one more line may be written now; a refusal is counted.
    pub fn allow(&self, stats: &Stats) -> bool {
        self.allow_at(Instant::now(), stats)
    }

    pub fn allow_at(&self, now: Instant, stats: &Stats) -> bool {
        let fresh = self
            .window
            .get()
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1));
        if fresh {
            self.window.set(Some(now));
            self.used.set(0);
        }
        if self.used.get() < self.rate {
            self.used.set(self.used.get() + 1);
            true
        } else {
            self.held.set(self.held.get() + 1);
            bump(&stats.log_suppressed);
            false
        }
    }

    /// Writes one summary line if anything was held back since the last call.
    pub fn report(&self, shard: usize, _stats: &Stats) {
        let held = self.held.replace(0);
        if held > 0 {
            tracing::warn!(
                shard,
                suppressed = held,
                "error log lines suppressed by log.error_rate"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_rate_lines_per_second() {
        let stats = Stats::new(0, 0);
        let l = ErrorLimiter::new(3);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| l.allow_at(t0, &stats)).count();
        assert_eq!(allowed, 3);
        assert_eq!(stats.log_suppressed.get(), 7);
        assert!(!l.allow_at(t0 + Duration::from_millis(999), &stats));
        assert!(l.allow_at(t0 + Duration::from_secs(1), &stats));
        assert_eq!(l.held.get(), 8);
        l.report(0, &stats);
        assert_eq!(l.held.get(), 0);
    }
}
