//! Feeds stage 4, *balance*: slow start. A backend that comes back (Unhealthy or Drained →
//! usable on the [`super::HealthBoard`], whose `ramp_from` is the origin) or is added gets
//! its weight ramped linearly from 1 to its configured weight over `slow_start`, so that a
//! cold cache or JIT is not hit with a full share at once. Pure: the balancer calls it with
//! `now` when it (re)computes weights.
//!
//! The ramp is never 0 (a weight-1 floor keeps the backend in rotation, so it warms up and
//! passive checks can see it), and it only ever scales *down*: the result is in
//! `[min(1, weight), weight]`.

use std::time::{Duration, Instant};

/// The weight to use at `now` for a backend of configured `weight` that became usable at
/// `since` (`None`: usable from the start, no ramp). `slow_start` zero disables the ramp.
pub fn effective_weight(
    weight: u32,
    since: Option<Instant>,
    slow_start: Duration,
    now: Instant,
) -> u32 {
    let Some(since) = since else {
        return weight;
    };
    if weight == 0 || slow_start.is_zero() {
        return weight;
    }
    let elapsed = now.saturating_duration_since(since);
    if elapsed >= slow_start {
        return weight;
    }
    // weight × elapsed / slow_start in integer nanoseconds: u32 × u64 fits in u128.
    let scaled = u128::from(weight) * elapsed.as_nanos() / slow_start.as_nanos();
    u32::try_from(scaled).unwrap_or(weight).clamp(1, weight)
}

/// Whether a backend that became usable at `since` is still ramping at `now` (the balancer
/// recomputes weights while any backend is, and can stop afterwards).
pub fn is_ramping(since: Option<Instant>, slow_start: Duration, now: Instant) -> bool {
    since.is_some_and(|s| now.saturating_duration_since(s) < slow_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S30: Duration = Duration::from_secs(30);

    #[test]
    fn no_origin_or_no_slow_start_is_full_weight() {
        let now = Instant::now();
        assert_eq!(effective_weight(10, None, S30, now), 10);
        assert_eq!(effective_weight(10, Some(now), Duration::ZERO, now), 10);
        assert!(!is_ramping(None, S30, now));
        assert!(!is_ramping(Some(now), Duration::ZERO, now));
    }

    #[test]
    fn ramps_linearly_with_floor_of_one() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(effective_weight(100, Some(t0), S30, t0), 1);
        assert_eq!(effective_weight(100, Some(t0), S30, at(3)), 10);
        assert_eq!(effective_weight(100, Some(t0), S30, at(15)), 50);
        assert_eq!(effective_weight(100, Some(t0), S30, at(29)), 96);
        assert_eq!(effective_weight(100, Some(t0), S30, at(30)), 100);
        assert_eq!(effective_weight(100, Some(t0), S30, at(3000)), 100);
        assert!(is_ramping(Some(t0), S30, at(29)));
        assert!(!is_ramping(Some(t0), S30, at(30)));
        // Weight 1 stays 1; weight 0 (disabled) stays 0.
        assert_eq!(effective_weight(1, Some(t0), S30, at(1)), 1);
        assert_eq!(effective_weight(0, Some(t0), S30, at(1)), 0);
        // A clock reading before the origin is the start of the ramp.
        if let Some(before) = t0.checked_sub(Duration::from_secs(5)) {
            assert_eq!(effective_weight(100, Some(t0), S30, before), 1);
        }
    }

    #[test]
    fn monotone_and_bounded_for_extreme_values() {
        let t0 = Instant::now();
        let mut last = 0;
        for ms in (0..=30_000).step_by(250) {
            let w = effective_weight(u32::MAX, Some(t0), S30, t0 + Duration::from_millis(ms));
            assert!(w >= last && w >= 1);
            last = w;
        }
        assert_eq!(last, u32::MAX);
        let week = Duration::from_secs(7 * 86_400);
        let w = effective_weight(u32::MAX, Some(t0), week, t0 + Duration::from_secs(86_400));
        assert!(w > 0 && w < u32::MAX);
    }
}
